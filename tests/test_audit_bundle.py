"""Offline proof bundles: one record, its inclusion proof and a signed checkpoint.

A bundle must convince someone holding only the log's verifier key, and any
change to any field must make it fail with a BundleError naming the field.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from gateway.audit.bundle import (
    BUNDLE_FORMAT,
    BundleError,
    CheckedRecord,
    check_bundle,
    make_bundle,
)
from gateway.audit.checkpoint import Checkpoint, sign_checkpoint
from gateway.audit.merkle import leaf_hash
from gateway.audit.note import NoteSigner
from gateway.audit.records import record_time
from gateway.audit.store import StoredCheckpoint, StoredLeaf
from tests.stores import (
    DAY,
    ORIGIN,
    Clock,
    LogFactory,
    append_all,
    logs,
    make_record,
    mth,
    naive_path,
    store_url,
)

__all__ = ["logs", "store_url"]  # fixtures used by name

SIGNER = NoteSigner.generate(ORIGIN)
KEY = SIGNER.verifier_key()
SIZE = 7
INDEX = 3


def signed_tree(
    leaves: list[bytes], size: int | None = None
) -> tuple[list[bytes], StoredCheckpoint]:
    """Leaf hashes and a checkpoint signed by SIGNER of the first ``size`` leaves."""
    hashes = [leaf_hash(leaf) for leaf in leaves]
    size = len(leaves) if size is None else size
    root = mth(hashes[:size])
    note = sign_checkpoint(SIGNER, Checkpoint(ORIGIN, size, root))
    return hashes, StoredCheckpoint(size, root, note)


def bundle_of(
    leaves: list[bytes | None], index: int, hashes: list[bytes], cp: StoredCheckpoint
) -> dict[str, Any]:
    stored = StoredLeaf(index, hashes[index], leaves[index])
    return make_bundle(ORIGIN, stored, naive_path(index, hashes[: cp.size]), cp)


LEAVES = [make_record(n).at_index(n).leaf_bytes() for n in range(SIZE)]
HASHES, CHECKPOINT = signed_tree(LEAVES)
_, EARLIER = signed_tree(LEAVES, 5)


@pytest.fixture
def bundle() -> dict[str, Any]:
    """A fresh valid bundle of record INDEX in the tree of SIZE records."""
    made = bundle_of(list(LEAVES), INDEX, HASHES, CHECKPOINT)
    assert check_bundle(made, KEY).index == INDEX
    return made


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _flip(text: str, at: int = 10) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[at % len(raw)] ^= 0x01
    return _b64(bytes(raw))


Mutation = Callable[[dict[str, Any]], None]


def _set(name: str, value: object) -> Mutation:
    def mutate(bundle: dict[str, Any]) -> None:
        bundle[name] = value

    return mutate


def _proof(change: Callable[[list[str]], object]) -> Mutation:
    def mutate(bundle: dict[str, Any]) -> None:
        bundle["inclusion_proof"] = change(list(bundle["inclusion_proof"]))

    return mutate


def _flip_proof(position: int) -> Mutation:
    def change(proof: list[str]) -> list[str]:
        proof[position] = _flip(proof[position])
        return proof

    return _proof(change)


def _edit(name: str, change: Callable[[Any], Any]) -> Mutation:
    def mutate(bundle: dict[str, Any]) -> None:
        bundle[name] = change(bundle[name])

    return mutate


def _resign(bundle: dict[str, Any]) -> None:
    other = NoteSigner.generate(ORIGIN)
    bundle["checkpoint"] = sign_checkpoint(other, Checkpoint(ORIGIN, SIZE, CHECKPOINT.root))


def _earlier_checkpoint(bundle: dict[str, Any]) -> None:
    # A genuine checkpoint of the same log, but not of the tree the proof is for.
    bundle["checkpoint"] = EARLIER.note
    bundle["tree_size"] = EARLIER.size


def _record(change: Callable[[dict[str, Any]], None]) -> Mutation:
    def mutate(bundle: dict[str, Any]) -> None:
        change(bundle["record"])

    return mutate


CORRUPTIONS: list[tuple[str, Mutation, str]] = [
    ("leaf-byte", _edit("leaf", _flip), "leaf: its bytes do not hash"),
    ("leaf-last-byte", _edit("leaf", lambda v: _flip(v, -1)), "leaf: its bytes do not hash"),
    ("leaf-not-base64", _set("leaf", "***"), "leaf: not valid base64"),
    ("leaf-not-text", _set("leaf", 5), "leaf: must be base64"),
    ("leaf-hash", _edit("leaf_hash", _flip), "inclusion_proof"),
    ("leaf-hash-of-another", _set("leaf_hash", _b64(HASHES[INDEX + 1])), "inclusion_proof"),
    ("leaf-hash-short", _set("leaf_hash", _b64(bytes(31))), "inclusion_proof"),
    ("leaf-hash-absent", _set("leaf_hash", None), "leaf_hash: must be base64"),
    ("proof-0", _flip_proof(0), "inclusion_proof"),
    ("proof-1", _flip_proof(1), "inclusion_proof"),
    ("proof-2", _flip_proof(2), "inclusion_proof"),
    ("proof-dropped", _proof(lambda p: p[:-1]), "inclusion_proof"),
    ("proof-extra", _proof(lambda p: [*p, p[0]]), "inclusion_proof"),
    ("proof-reversed", _proof(lambda p: p[::-1]), "inclusion_proof"),
    ("proof-not-list", _proof(",".join), "inclusion_proof: must be a list"),
    ("proof-not-base64", _proof(lambda p: [*p[:-1], "%%"]), "inclusion_proof: not valid base64"),
    ("index-next", _edit("index", lambda i: i + 1), "inclusion_proof"),
    ("index-previous", _edit("index", lambda i: i - 1), "inclusion_proof"),
    ("index-outside", _set("index", SIZE), "inclusion_proof"),
    ("index-huge", _set("index", 1 << 64), "inclusion_proof"),
    ("index-negative", _set("index", -1), "index: must be a whole number"),
    ("index-text", _set("index", "3"), "index: must be a whole number"),
    ("index-bool", _set("index", True), "index: must be a whole number"),
    ("index-float", _set("index", 3.5), "index: must be a whole number"),
    ("tree-size-larger", _edit("tree_size", lambda n: n + 1), "tree_size: differs"),
    ("tree-size-smaller", _edit("tree_size", lambda n: n - 1), "tree_size: differs"),
    ("tree-size-absent", _set("tree_size", None), "tree_size: must be a whole number"),
    (
        "checkpoint-size",
        _edit("checkpoint", lambda t: t.replace(f"\n{SIZE}\n", "\n8\n", 1)),
        "checkpoint:",
    ),
    (
        "checkpoint-root",
        _edit("checkpoint", lambda t: t.replace(_b64(CHECKPOINT.root), _b64(bytes(32)))),
        "checkpoint:",
    ),
    ("checkpoint-origin", _edit("checkpoint", lambda t: "x" + t), "checkpoint:"),
    (
        "checkpoint-unsigned",
        _edit("checkpoint", lambda t: t.split("\n\n")[0] + "\n"),
        "checkpoint:",
    ),
    (
        "checkpoint-signature",
        _edit("checkpoint", lambda t: t[:-6] + ("A" if t[-6] != "A" else "B") + t[-5:]),
        "checkpoint:",
    ),
    ("checkpoint-other-key", _resign, "checkpoint:"),
    ("checkpoint-absent", _set("checkpoint", None), "checkpoint: must be"),
    ("checkpoint-earlier", _earlier_checkpoint, "inclusion_proof"),
    ("record-edited", _record(lambda r: r.update(status=500)), "record: differs"),
    ("record-index", _record(lambda r: r.update(index=4)), "record: differs"),
    ("record-absent", _set("record", None), "record: differs"),
    ("origin", _set("origin", "other-agency/audit"), "origin: differs"),
    ("format", _set("format", "gateway-audit-proof/2"), f"not a {BUNDLE_FORMAT} bundle"),
]


class TestRoundTrip:
    def test_every_index(self) -> None:
        """A bundle of each record of the tree checks, also after a trip through JSON."""
        for index in range(SIZE):
            made = bundle_of(list(LEAVES), index, HASHES, CHECKPOINT)
            assert made["format"] == BUNDLE_FORMAT
            assert made["origin"] == ORIGIN
            assert base64.b64decode(made["leaf"]) == LEAVES[index]
            checked = check_bundle(json.loads(json.dumps(made)), KEY)
            assert checked == CheckedRecord(index, SIZE, ORIGIN, json.loads(LEAVES[index]))

    def test_single_record_tree(self) -> None:
        """A tree of one record: an empty proof."""
        hashes, checkpoint = signed_tree(LEAVES[:1])
        made = bundle_of(list(LEAVES), 0, hashes, checkpoint)
        assert made["inclusion_proof"] == []
        assert check_bundle(made, KEY).index == 0

    async def test_from_a_log(self, store_url: str, logs: LogFactory) -> None:
        """Bundles made from a live log's reads, proofs and checkpoint check, expired or not."""
        clock = Clock()
        log = await logs(
            store_url,
            clock=clock,
            retention_days=lambda contract: 1 if contract == "short" else 3650,
            every_records=1000,
        )
        contracts = ["short" if n in (2, 5) else "long" for n in range(9)]
        await append_all(log, [make_record(n, contract=c) for n, c in enumerate(contracts)])
        checkpoint = await log.latest_checkpoint()
        assert checkpoint.size == 9
        clock.advance(2 * DAY)
        assert await log.store.expire(record_time(clock())) == 2
        key = log.verifier.verifier_key()
        for index, contract in enumerate(contracts):
            stored = await log.read(index)
            made = make_bundle(
                ORIGIN, stored, await log.inclusion_proof(index, checkpoint.size), checkpoint
            )
            checked = check_bundle(json.loads(json.dumps(made)), key)
            assert (checked.index, checked.tree_size, checked.origin) == (index, 9, ORIGIN)
            if contract == "short":
                # Past retention the bundle still proves the leaf hash, and nothing more.
                assert made["leaf"] is None
                assert made["record"] is None
                assert checked.record is None
                with pytest.raises(BundleError, match="inclusion_proof"):
                    check_bundle({**made, "leaf_hash": _flip(made["leaf_hash"])}, key)
            else:
                assert checked.record is not None
                assert checked.record["jti"] == f"jti-{index}"
            with pytest.raises(BundleError, match="checkpoint"):
                check_bundle(made, KEY)  # another log's key


class TestCorruption:
    @pytest.mark.parametrize(
        ("mutate", "message"),
        [pytest.param(m, msg, id=name) for name, m, msg in CORRUPTIONS],
    )
    def test_refused(self, bundle: dict[str, Any], mutate: Mutation, message: str) -> None:
        """Each single-field change is refused with a BundleError naming what failed."""
        changed = copy.deepcopy(bundle)
        mutate(changed)
        assert changed != bundle
        with pytest.raises(BundleError, match=message):
            check_bundle(changed, KEY)

    @pytest.mark.parametrize(
        "field",
        [
            "leaf",
            "leaf_hash",
            "index",
            "tree_size",
            "checkpoint",
            "inclusion_proof",
            "origin",
            "format",
        ],
    )
    def test_field_missing(self, bundle: dict[str, Any], field: str) -> None:
        """A bundle without one of its fields is refused (leaf: only with record gone too)."""
        changed = {name: value for name, value in bundle.items() if name != field}
        with pytest.raises(BundleError):
            check_bundle(changed, KEY)

    @pytest.mark.parametrize(
        ("key", "message"),
        [
            (NoteSigner.generate(ORIGIN).verifier_key(), "checkpoint:"),
            (NoteSigner.generate("other-agency/audit").verifier_key(), "checkpoint:"),
            ("not a key", "--key"),
            (KEY[:-4], "--key"),
        ],
        ids=["same-name-other-key", "other-name", "malformed", "truncated"],
    )
    def test_wrong_key(self, bundle: dict[str, Any], key: str, message: str) -> None:
        """Checked against any key but the log's, the bundle is refused."""
        with pytest.raises(BundleError, match=message):
            check_bundle(bundle, key)

    @pytest.mark.parametrize("value", [None, [], "bundle", 7])
    def test_not_a_bundle(self, value: object) -> None:
        with pytest.raises(BundleError, match="not a"):
            check_bundle(value, KEY)


class TestDishonestTree:
    """Bundles over trees the gateway would never write, but whose checkpoint is validly signed."""

    def test_leaf_naming_another_index(self) -> None:
        """A signed leaf that names another index does not prove this one."""
        leaves: list[bytes | None] = list(LEAVES)
        leaves[INDEX] = make_record(INDEX).at_index(INDEX + 1).leaf_bytes()
        hashes, checkpoint = signed_tree([leaf or b"" for leaf in leaves])
        with pytest.raises(BundleError, match="does not name this index"):
            check_bundle(bundle_of(leaves, INDEX, hashes, checkpoint), KEY)

    @pytest.mark.parametrize("leaf", [b"not json", b"\xff\xfe", b"[3]", b'"3"'])
    def test_leaf_not_a_record(self, leaf: bytes) -> None:
        """A signed leaf that is not a JSON record is refused as such, not with a crash."""
        leaves = list(LEAVES)
        leaves[INDEX] = leaf
        hashes, checkpoint = signed_tree(leaves)
        # make_bundle parses the leaf it serves, so the bad bytes are put in afterwards.
        made = bundle_of(list(LEAVES), INDEX, hashes, checkpoint)
        made["leaf"] = base64.b64encode(leaf).decode()
        made["record"] = None
        with pytest.raises(BundleError, match="leaf:"):
            check_bundle(made, KEY)

    def test_record_without_leaf(self, bundle: dict[str, Any]) -> None:
        """With the leaf bytes gone a record shown beside the hash is an unproven claim."""
        expired = {**bundle, "leaf": None}
        with pytest.raises(BundleError, match="record: given without the leaf"):
            check_bundle(expired, KEY)
        checked = check_bundle({**expired, "record": None}, KEY)
        assert checked.record is None
        assert checked.index == INDEX
