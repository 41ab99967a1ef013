"""Offline proof that one record is in the log: record, inclusion proof, checkpoint.

A bundle is one JSON file anyone can check with public data only (the log's
C2SP verifier key): the checkpoint's signature, that the leaf bytes hash to
the leaf hash, and that the inclusion proof leads from that hash to the signed
root. Pure: no I/O; the CLI reads and writes the files.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.audit.checkpoint import Checkpoint, open_checkpoint
from gateway.audit.merkle import ProofError, leaf_hash, verify_inclusion
from gateway.audit.note import NoteError, NoteVerifier
from gateway.audit.store import StoredCheckpoint, StoredLeaf

BUNDLE_FORMAT: Final = "gateway-audit-proof/1"


class BundleError(ValueError):
    """The bundle does not prove what it claims; the message says which check failed."""


@dataclass(frozen=True)
class CheckedRecord:
    """What a valid bundle proves: this record (None past retention) is leaf ``index``."""

    index: int
    tree_size: int
    origin: str
    record: dict[str, Any] | None


def b64(data: bytes) -> str:
    """Standard base64 with padding (C2SP and tlog proofs use it)."""
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise BundleError(f"{name}: must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleError(f"{name}: not valid base64") from exc


def leaf_document(stored: StoredLeaf) -> dict[str, Any]:
    """A served record: its index, exact leaf bytes (base64), leaf hash and parsed form.

    Past retention only the leaf hash is left: ``leaf`` and ``record`` are null.
    """
    return {
        "index": stored.index,
        "leaf": None if stored.leaf is None else b64(stored.leaf),
        "leaf_hash": b64(stored.leaf_hash),
        "record": None if stored.leaf is None else json.loads(stored.leaf),
    }


def make_bundle(
    origin: str, stored: StoredLeaf, proof: list[bytes], checkpoint: StoredCheckpoint
) -> dict[str, Any]:
    """The bundle for leaf ``stored`` in the tree ``checkpoint`` signs."""
    return {
        "format": BUNDLE_FORMAT,
        "origin": origin,
        **leaf_document(stored),
        "tree_size": checkpoint.size,
        "inclusion_proof": [b64(digest) for digest in proof],
        "checkpoint": checkpoint.note,
    }


def _whole(bundle: Mapping[str, Any], name: str) -> int:
    value = bundle.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BundleError(f"{name}: must be a whole number")
    return value


def check_bundle(bundle: object, verifier_key: str) -> CheckedRecord:
    """Verify a bundle with the log's verifier key alone; ``BundleError`` names the failure."""
    if not isinstance(bundle, Mapping) or bundle.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"not a {BUNDLE_FORMAT} bundle")
    try:
        verifier = NoteVerifier.from_verifier_key(verifier_key)
    except NoteError as exc:
        raise BundleError(f"--key: {exc}") from exc
    note = bundle.get("checkpoint")
    if not isinstance(note, str):
        raise BundleError("checkpoint: must be the signed checkpoint text")
    try:
        checkpoint: Checkpoint = open_checkpoint(verifier, note, verifier.name)
    except (NoteError, ValueError) as exc:
        raise BundleError(f"checkpoint: {exc}") from exc
    if bundle.get("origin") != checkpoint.origin:
        raise BundleError("origin: differs from the origin the checkpoint signs")
    index, tree_size = _whole(bundle, "index"), _whole(bundle, "tree_size")
    if tree_size != checkpoint.size:
        raise BundleError("tree_size: differs from the size the checkpoint signs")
    digest = _unb64(bundle.get("leaf_hash"), "leaf_hash")
    proof = bundle.get("inclusion_proof")
    if not isinstance(proof, list):
        raise BundleError("inclusion_proof: must be a list of base64 hashes")
    hashes = [_unb64(item, "inclusion_proof") for item in proof]
    try:
        verify_inclusion(index, tree_size, digest, hashes, checkpoint.root)
    except ProofError as exc:
        raise BundleError(f"inclusion_proof: {exc}") from exc
    if bundle.get("leaf") is None:
        # A record shown without the bytes it came from would be an unproven claim.
        if bundle.get("record") is not None:
            raise BundleError("record: given without the leaf bytes it must match")
        return CheckedRecord(index, tree_size, checkpoint.origin, None)
    leaf = _unb64(bundle.get("leaf"), "leaf")
    if leaf_hash(leaf) != digest:
        raise BundleError("leaf: its bytes do not hash to leaf_hash")
    try:
        record = json.loads(leaf)
    except ValueError as exc:  # not UTF-8 or not JSON: only a dishonest log signs that
        raise BundleError("leaf: not a JSON record") from exc
    if not isinstance(record, dict) or record.get("index") != index:
        raise BundleError("leaf: the record does not name this index")
    if bundle.get("record") != record:
        raise BundleError("record: differs from the leaf bytes")
    return CheckedRecord(index, tree_size, checkpoint.origin, record)
