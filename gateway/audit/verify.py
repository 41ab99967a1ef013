"""A full audit of the stored log: every leaf, every tree node, every checkpoint.

``gateway audit verify`` runs this. It trusts nothing in the store: it
recomputes each leaf hash from the leaf bytes, checks that each leaf names its
own index, rebuilds the tree from the leaf hashes, compares every perfect
subtree hash stored at write time, and checks every checkpoint's signature
and root against the rebuilt tree (which also proves each checkpoint
consistent with every earlier one). It stops at the first bad index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import rfc8785
from pydantic import ValidationError

from gateway.audit.checkpoint import open_checkpoint
from gateway.audit.merkle import CompactRange, leaf_hash
from gateway.audit.note import NoteError, NoteVerifier
from gateway.audit.records import AuditRecord
from gateway.audit.store import AuditStore, StoredCheckpoint, StoredLeaf

CHUNK = 10_000


@dataclass(frozen=True)
class VerifyReport:
    """What a full verification found; ``bad_index`` is None when the log is sound."""

    size: int
    checkpoints: int
    bad_index: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return self.bad_index is None and self.reason is None


class _Bad(Exception):
    def __init__(self, index: int | None, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


def check_leaf(stored: StoredLeaf) -> None:
    """Check one leaf's bytes against its hash and its own index; raise on the first fault."""
    if stored.leaf is None:
        return  # past retention: only the hash is kept, the tree checks it
    if leaf_hash(stored.leaf) != stored.leaf_hash:
        raise _Bad(stored.index, "the record's bytes do not match its leaf hash")
    try:
        record = AuditRecord.model_validate(json.loads(stored.leaf))
    except (ValueError, ValidationError) as exc:
        raise _Bad(stored.index, "the record is not a valid audit record") from exc
    if record.index != stored.index:
        raise _Bad(stored.index, f"the record says it is index {record.index}: rows were moved")
    # The rfc8785 library, not the writer's fast path: the check stays independent of it.
    if bytes(rfc8785.dumps(record.model_dump(exclude_none=True))) != stored.leaf:
        raise _Bad(stored.index, "the record is not in canonical (RFC 8785) form")


async def verify_log(store: AuditStore, verifier: NoteVerifier, origin: str) -> VerifyReport:
    """Verify the whole log in ``store`` against the log key ``verifier``."""
    # Checkpoints first: the size read after them covers them even while a gateway appends.
    checkpoints = await store.checkpoints()
    size = await store.size()
    try:
        await _verify(store, verifier, origin, size, checkpoints)
    except _Bad as bad:
        return VerifyReport(size, len(checkpoints), bad.index, bad.reason)
    return VerifyReport(size, len(checkpoints))


async def _verify(
    store: AuditStore,
    verifier: NoteVerifier,
    origin: str,
    size: int,
    checkpoints: list[StoredCheckpoint],
) -> None:
    pending = list(checkpoints)
    for stored in pending:
        _check_signature(stored, verifier, origin)
    if pending and pending[-1].size > size:
        raise _Bad(
            size,
            f"the log was truncated: a checkpoint covers {pending[-1].size} records, "
            f"the store holds {size}",
        )
    tree = CompactRange()
    while pending and pending[0].size == 0:
        _check_root(pending.pop(0), tree)
    for start in range(0, size, CHUNK):
        end = min(start + CHUNK, size)
        leaves = await store.leaves(start, end)
        expected_nodes = await _stored_nodes(store, start, end)
        for offset in range(end - start):
            index = start + offset
            if offset >= len(leaves) or leaves[offset].index != index:
                raise _Bad(index, "the record is missing: rows were deleted")
            check_leaf(leaves[offset])
            for level, node_index, digest in tree.push(leaves[offset].leaf_hash):
                if expected_nodes.get((level, node_index)) != digest:
                    first = node_index << level
                    raise _Bad(
                        first,
                        f"records {first} to {((node_index + 1) << level) - 1} do not match "
                        "the tree written with them: a leaf hash was rewritten",
                    )
            while pending and pending[0].size == tree.size:
                _check_root(pending.pop(0), tree)


async def _stored_nodes(store: AuditStore, start: int, end: int) -> dict[tuple[int, int], bytes]:
    """The stored perfect-subtree hashes that pushing leaves ``[start, end)`` can complete."""
    nodes: dict[tuple[int, int], bytes] = {}
    level = 1
    while (1 << level) <= end:
        for index, digest in await store.nodes(level, start >> level, (end >> level) + 1):
            nodes[(level, index)] = digest
        level += 1
    return nodes


def _check_signature(stored: StoredCheckpoint, verifier: NoteVerifier, origin: str) -> None:
    try:
        signed = open_checkpoint(verifier, stored.note, origin)
    except (NoteError, ValueError) as exc:
        raise _Bad(None, f"the checkpoint of {stored.size} records does not verify: {exc}") from exc
    if signed.size != stored.size or signed.root != stored.root:
        raise _Bad(None, f"the checkpoint row of {stored.size} records disagrees with its note")


def _check_root(stored: StoredCheckpoint, tree: CompactRange) -> None:
    if tree.root() != stored.root:
        raise _Bad(
            max(stored.size - 1, 0),
            f"the tree of the first {stored.size} records does not have the root its signed "
            "checkpoint has: a record before it was altered",
        )
