"""Full verification of a stored log (``gateway audit verify``) over both stores.

Each tamper case is done the way an attacker with database access would: a
raw connection of its own, never the store. The report must name the first
bad index (or the range the tree can narrow it to) and say why.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import rfc8785

from gateway.audit import verify
from gateway.audit.checkpoint import Checkpoint, sign_checkpoint
from gateway.audit.merkle import leaf_hash
from gateway.audit.note import NoteSigner
from gateway.audit.store import AuditStore
from gateway.audit.verify import VerifyReport, verify_log
from tests.stores import (
    ORIGIN,
    LogFactory,
    RawDB,
    append_all,
    logs,
    make_record,
    nodes_of,
    opened_store,
    raw_db,
    store_url,
)

__all__ = ["logs", "store_url"]  # fixtures used by name

SIZE = 11  # checkpoints at 4 and 8 (every 4 records), and at 11 (close)


@pytest.fixture
async def signer(store_url: str, logs: LogFactory) -> NoteSigner:
    """The log key of a closed log of SIZE records in ``store_url``."""
    key = NoteSigner.generate(ORIGIN)
    log = await logs(store_url, signer=key, every_records=4)
    await append_all(log, [make_record(n) for n in range(SIZE)])
    await log.close()
    return key


@pytest.fixture
async def store(store_url: str, signer: NoteSigner) -> AsyncIterator[AuditStore]:
    """A store of its own over the written log, for verify_log."""
    async with opened_store(store_url) as opened:
        yield opened


async def run_verify(store: AuditStore, signer: NoteSigner) -> VerifyReport:
    return await verify_log(store, signer.verifier(), ORIGIN)


async def leaf_of(db: RawDB, index: int) -> bytes:
    ((leaf,),) = await db.fetch("SELECT leaf FROM audit_leaves WHERE idx = ?", index)
    assert isinstance(leaf, bytes)
    return leaf


async def set_leaf(db: RawDB, index: int, leaf: bytes, *, rehash: bool) -> None:
    if rehash:
        await db.execute(
            "UPDATE audit_leaves SET leaf = ?, leaf_hash = ? WHERE idx = ?",
            leaf,
            leaf_hash(leaf),
            index,
        )
    else:
        await db.execute("UPDATE audit_leaves SET leaf = ? WHERE idx = ?", leaf, index)


def altered(leaf: bytes) -> bytes:
    """The same record (same index) with another status, in canonical form."""
    record = json.loads(leaf)
    record["status"] = 500
    return bytes(rfc8785.dumps(record))


async def rewrite_tree(db: RawDB) -> None:
    """Recompute every stored node from the stored leaf hashes (a thorough attacker)."""
    rows = await db.fetch("SELECT idx, leaf_hash FROM audit_leaves ORDER BY idx")
    for (level, index), digest in nodes_of([row[1] for row in rows]).items():
        if level:
            await db.execute(
                "UPDATE audit_nodes SET hash = ? WHERE level = ? AND idx = ?", digest, level, index
            )


class TestSound:
    async def test_sound_log(self, store: AuditStore, signer: NoteSigner) -> None:
        """A log written by the gateway verifies: size and checkpoint count reported."""
        report = await run_verify(store, signer)
        assert report == VerifyReport(size=SIZE, checkpoints=3)
        assert report.ok

    @pytest.mark.parametrize("chunk", [1, 2, 3, 5])
    async def test_sound_log_in_small_chunks(
        self, store: AuditStore, signer: NoteSigner, chunk: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Reading the log in chunks of any size finds every stored node."""
        monkeypatch.setattr(verify, "CHUNK", chunk)
        assert (await run_verify(store, signer)).ok

    async def test_empty_store(self, store_url: str) -> None:
        """An empty store verifies: no records, no checkpoints."""
        async with opened_store(store_url) as store:
            report = await verify_log(store, NoteSigner.generate(ORIGIN).verifier(), ORIGIN)
        assert report == VerifyReport(size=0, checkpoints=0)
        assert report.ok

    async def test_other_key(self, store: AuditStore) -> None:
        """Against another log key no checkpoint verifies: not ok, no index to blame."""
        report = await run_verify(store, NoteSigner.generate(ORIGIN))
        assert not report.ok
        assert report.bad_index is None
        assert "does not verify" in (report.reason or "")

    async def test_other_origin(self, store: AuditStore, signer: NoteSigner) -> None:
        """The checkpoints are of this origin only."""
        report = await verify_log(store, signer.verifier(), "other-agency/audit")
        assert not report.ok
        assert "origin" in (report.reason or "")


class TestTamperedLeaves:
    @pytest.mark.parametrize("index", [0, 5, 9])
    async def test_byte_flipped(
        self, store_url: str, store: AuditStore, signer: NoteSigner, index: int
    ) -> None:
        """One byte of a stored leaf flipped: that index, its bytes do not match its hash."""
        async with raw_db(store_url) as db:
            leaf = bytearray(await leaf_of(db, index))
            leaf[len(leaf) // 2] ^= 0x01
            await set_leaf(db, index, bytes(leaf), rehash=False)
        report = await run_verify(store, signer)
        assert report.bad_index == index
        assert "do not match its leaf hash" in (report.reason or "")

    @pytest.mark.parametrize("index", [0, 4, 6])
    async def test_row_deleted(
        self, store_url: str, store: AuditStore, signer: NoteSigner, index: int
    ) -> None:
        """One row deleted: that index, missing."""
        async with raw_db(store_url) as db:
            await db.execute("DELETE FROM audit_leaves WHERE idx = ?", index)
        report = await run_verify(store, signer)
        assert report.bad_index == index
        assert "missing" in (report.reason or "")
        assert report.size == SIZE

    async def test_last_row_deleted(
        self, store_url: str, store: AuditStore, signer: NoteSigner
    ) -> None:
        """The last row deleted: the log is now shorter than its last checkpoint."""
        async with raw_db(store_url) as db:
            await db.execute("DELETE FROM audit_leaves WHERE idx = ?", SIZE - 1)
        report = await run_verify(store, signer)
        assert report.bad_index == SIZE - 1
        assert "truncated" in (report.reason or "")

    async def test_rows_swapped(
        self, store_url: str, store: AuditStore, signer: NoteSigner
    ) -> None:
        """Two rows' leaves and hashes swapped: the lower index, its record names the other."""
        async with raw_db(store_url) as db:
            rows = await db.fetch(
                "SELECT idx, leaf_hash, leaf FROM audit_leaves WHERE idx IN (2, 7) ORDER BY idx"
            )
            for (index, _, _), (_, digest, leaf) in zip(rows, reversed(rows), strict=True):
                await db.execute(
                    "UPDATE audit_leaves SET leaf_hash = ?, leaf = ? WHERE idx = ?",
                    digest,
                    leaf,
                    index,
                )
        report = await run_verify(store, signer)
        assert report.bad_index == 2
        assert "says it is index 7" in (report.reason or "")

    async def test_leaf_bytes_swapped(
        self, store_url: str, store: AuditStore, signer: NoteSigner
    ) -> None:
        """Two rows' leaf bytes swapped (hashes left): the lower index."""
        async with raw_db(store_url) as db:
            two, seven = await leaf_of(db, 2), await leaf_of(db, 7)
            await set_leaf(db, 2, seven, rehash=False)
            await set_leaf(db, 7, two, rehash=False)
        report = await run_verify(store, signer)
        assert report.bad_index == 2

    async def test_truncated(self, store_url: str, store: AuditStore, signer: NoteSigner) -> None:
        """The tail cut below the last checkpoint: the index is the new size."""
        async with raw_db(store_url) as db:
            await db.execute("DELETE FROM audit_leaves WHERE idx >= 6")
        report = await run_verify(store, signer)
        assert report.size == 6
        assert report.bad_index == 6
        assert "truncated" in (report.reason or "")

    @pytest.mark.parametrize(
        ("index", "named"),
        # A rewritten leaf with a matching hash passes its own checks; the first
        # stored node it changes is its pair's (level 1), which names both leaves.
        [(4, (4, 5)), (5, (4, 5)), (9, (8, 9)), (0, (0, 1))],
    )
    async def test_leaf_and_hash_rewritten(
        self,
        store_url: str,
        store: AuditStore,
        signer: NoteSigner,
        index: int,
        named: tuple[int, int],
    ) -> None:
        """A record rewritten with a consistent leaf hash: caught by the node stored with it."""
        async with raw_db(store_url) as db:
            await set_leaf(db, index, altered(await leaf_of(db, index)), rehash=True)
        report = await run_verify(store, signer)
        lowest, highest = named
        assert report.bad_index == lowest
        assert f"records {lowest} to {highest} do not match" in (report.reason or "")

    async def test_unpaired_last_leaf_rewritten(
        self, store_url: str, store: AuditStore, signer: NoteSigner
    ) -> None:
        """Leaf 10 of 11 completes no node: the checkpoint of 11 catches it."""
        async with raw_db(store_url) as db:
            await set_leaf(db, 10, altered(await leaf_of(db, 10)), rehash=True)
        report = await run_verify(store, signer)
        assert report.bad_index == 10
        assert "root its signed checkpoint has" in (report.reason or "")

    @pytest.mark.parametrize(("index", "named"), [(1, 3), (5, 7), (9, 10)])
    async def test_leaf_hash_and_tree_rewritten(
        self, store_url: str, store: AuditStore, signer: NoteSigner, index: int, named: int
    ) -> None:
        """Leaf, hash and every stored node rewritten: only a signed root catches it.

        The index named is the last of the first checkpoint (4, 8, 11) that covers the leaf.
        """
        async with raw_db(store_url) as db:
            await set_leaf(db, index, altered(await leaf_of(db, index)), rehash=True)
            await rewrite_tree(db)
        report = await run_verify(store, signer)
        assert report.bad_index == named
        assert "altered" in (report.reason or "")

    @pytest.mark.parametrize(
        ("leaf", "reason"),
        [
            (b"not json", "not a valid audit record"),
            (b'{"index": 3}', "not a valid audit record"),
            (None, "not in canonical"),
        ],
        ids=["garbage", "not-a-record", "not-canonical"],
    )
    async def test_rehashed_leaf_that_is_not_a_record(
        self,
        store_url: str,
        store: AuditStore,
        signer: NoteSigner,
        leaf: bytes | None,
        reason: str,
    ) -> None:
        """Bytes with a matching hash must still be this index's canonical record."""
        async with raw_db(store_url) as db:
            if leaf is None:
                leaf = json.dumps(json.loads(await leaf_of(db, 3)), indent=1).encode()
            await set_leaf(db, 3, leaf, rehash=True)
        report = await run_verify(store, signer)
        assert report.bad_index == 3
        assert reason in (report.reason or "")


class TestTamperedCheckpoints:
    async def test_note_altered(
        self, store_url: str, store: AuditStore, signer: NoteSigner
    ) -> None:
        """A checkpoint whose signed text was edited: bad signature, no index."""
        async with raw_db(store_url) as db:
            ((note,),) = await db.fetch("SELECT note FROM audit_checkpoints WHERE size = 8")
            edited = note.replace("\n8\n", "\n9\n", 1)
            assert edited != note
            await db.execute("UPDATE audit_checkpoints SET note = ? WHERE size = 8", edited)
        report = await run_verify(store, signer)
        assert not report.ok
        assert report.bad_index is None
        assert "checkpoint of 8 records does not verify" in (report.reason or "")

    async def test_note_by_another_key(
        self, store_url: str, store: AuditStore, signer: NoteSigner
    ) -> None:
        """A checkpoint re-signed by another key (same head): it does not verify."""
        async with raw_db(store_url) as db:
            ((root,),) = await db.fetch("SELECT root FROM audit_checkpoints WHERE size = 4")
            forged = sign_checkpoint(NoteSigner.generate(ORIGIN), Checkpoint(ORIGIN, 4, root))
            await db.execute("UPDATE audit_checkpoints SET note = ? WHERE size = 4", forged)
        report = await run_verify(store, signer)
        assert report.bad_index is None
        assert "checkpoint of 4 records does not verify" in (report.reason or "")

    async def test_row_disagrees_with_note(
        self, store_url: str, store: AuditStore, signer: NoteSigner
    ) -> None:
        """A checkpoint row whose root column was changed, note intact: refused."""
        async with raw_db(store_url) as db:
            await db.execute("UPDATE audit_checkpoints SET root = ? WHERE size = 8", bytes(32))
        report = await run_verify(store, signer)
        assert report.bad_index is None
        assert "disagrees with its note" in (report.reason or "")

    async def test_forged_checkpoint_of_a_longer_log(
        self, store_url: str, store: AuditStore, signer: NoteSigner
    ) -> None:
        """A properly signed checkpoint beyond the stored leaves means leaves were cut."""
        extra = sign_checkpoint(signer, Checkpoint(ORIGIN, SIZE + 5, bytes(32)))
        async with raw_db(store_url) as db:
            await db.execute(
                "INSERT INTO audit_checkpoints (size, root, note) VALUES (?, ?, ?)",
                SIZE + 5,
                bytes(32),
                extra,
            )
        report = await run_verify(store, signer)
        assert report.bad_index == SIZE
        assert "truncated" in (report.reason or "")
