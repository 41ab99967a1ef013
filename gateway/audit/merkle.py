"""RFC 9162 Merkle tree arithmetic for the audit log: hashes, proof shapes, checks.

The audit log is an append-only Merkle tree as defined by RFC 9162 (Certificate
Transparency 2.0), section 2.1: leaves and interior nodes are hashed with
different one-byte prefixes so a leaf can never pass for a node, and the tree
of n leaves splits at the largest power of two below n. Signed roots of that
tree let another agency check, from a few hashes, that a record is in the log
(inclusion) and that the log only ever grew (consistency). Subtree proofs, from
the IETF Merkle Tree Certificates draft (draft-davidben-tls-merkle-tree-certs),
do the same for an aligned slice of the log, so a checkpoint can vouch for one
batch of records without the rest.

This module is pure: no I/O, no clock. Storage code asks for a *plan* (which
nodes a proof is made of), fetches those nodes, and calls
:func:`assemble_proof`. Nodes are addressed as perfect subtrees
``(level, index)``, because only perfect subtrees never change once complete:
a store writes each one once, when :meth:`CompactRange.push` completes it. An
RFC 9162 node on the right edge of a tree whose size is not a power of two is
not perfect; it is the right fold of a few perfect ones (:func:`range_nodes`).

All four proof kinds are checked by one routine. A subtree consistency proof
shows that a known subtree ``[start, end)`` sits at that place in a tree of
``size`` leaves; an inclusion proof is the case of a one-leaf subtree, a
consistency proof the case of the subtree ``[0, first)``, and a subtree
inclusion proof an inclusion proof in the smaller tree the subtree is.

Everything a verifier receives is untrusted. Sizes and indices are Python
integers and so unbounded, while every other implementation stores them in 64
bits: values from 2**63 on are refused rather than reduced. Every failure,
malformed input included, raises :class:`ProofError` and nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Final

HASH_SIZE: Final = 32
EMPTY_ROOT: Final[bytes] = hashlib.sha256(b"").digest()

# First size or index refused: the largest a signed 64-bit store can hold, plus one.
_LIMIT: Final = 1 << 63

# (level, index): the perfect subtree of leaves [index * 2**level, (index + 1) * 2**level);
# level 0 is a leaf hash.
NodeKey = tuple[int, int]

_Range = tuple[int, int]  # leaves [lo, hi)


class ProofError(ValueError):
    """A proof that does not verify, or a malformed hash, size, index or proof."""


def leaf_hash(leaf: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || leaf)."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _check_int(name: str, value: object) -> int:
    # bool is an int subclass, but True as a tree size is a caller's bug, not a size.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProofError(f"{name} must be an integer, not {type(value).__name__}")
    if not 0 <= value < _LIMIT:
        raise ProofError(f"{name} {value} is outside [0, 2**63)")
    return value


def _check_hash(name: str, value: object) -> bytes:
    if not isinstance(value, bytes):
        raise ProofError(f"{name} must be bytes, not {type(value).__name__}")
    if len(value) != HASH_SIZE:
        raise ProofError(f"{name} is {len(value)} bytes, not {HASH_SIZE}")
    return value


def _check_hashes(name: str, values: object, expected: int | None = None) -> list[bytes]:
    # A bytes object is a Sequence too (of ints): a lone hash is not a list of hashes.
    if isinstance(values, bytes | bytearray | str) or not isinstance(values, Sequence):
        raise ProofError(f"{name} must be a sequence of hashes")
    # Counted before the hashes are looked at, so a huge list costs nothing.
    if expected is not None and len(values) != expected:
        raise ProofError(f"{name} has {len(values)} hashes, {expected} expected")
    return [_check_hash(f"{name}[{i}]", value) for i, value in enumerate(values)]


def _bit_ceil(n: int) -> int:
    """The smallest power of two >= n (n >= 1)."""
    return 1 << (n - 1).bit_length()


def _split(n: int) -> int:
    """RFC 9162's k: the largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_subtree(start: int, end: int) -> None:
    if start >= end:
        raise ProofError(f"subtree [{start}, {end}) is empty or reversed")
    if start % _bit_ceil(end - start):
        raise ProofError(f"subtree [{start}, {end}) is not aligned to its size")


def range_nodes(start: int, end: int) -> list[NodeKey]:
    """The perfect subtrees whose right fold is the RFC 9162 hash of leaves ``[start, end)``.

    ``[start, end)`` must be a node of some tree: ``start`` a multiple of the
    smallest power of two >= ``end - start``. The result splits ``end - start``
    into descending powers of two, left to right; it is empty for an empty range.
    """
    _check_int("start", start)
    _check_int("end", end)
    if end < start:
        raise ProofError(f"range [{start}, {end}) is reversed")
    if end > start:
        _check_subtree(start, end)
    width, position, nodes = end - start, start, []
    for level in reversed(range(width.bit_length())):
        if (width >> level) & 1:
            nodes.append((level, position >> level))
            position += 1 << level
    return nodes


def fold_right(hashes: Sequence[bytes]) -> bytes:
    """``H(h0, H(h1, ... H(h[k-2], h[k-1])))``: the hash of adjacent subtrees, largest first."""
    checked = _check_hashes("hashes", hashes)
    if not checked:
        raise ProofError("nothing to fold: no hashes")
    result = checked[-1]
    for left in reversed(checked[:-1]):
        result = node_hash(left, result)
    return result


def border_nodes(size: int) -> list[NodeKey]:
    """The perfect subtrees making up a tree of ``size`` leaves (``[]`` for 0)."""
    return range_nodes(0, size)


def root_from_border(border: Sequence[bytes]) -> bytes:
    """The root of a tree from the hashes of its :func:`border_nodes`."""
    checked = _check_hashes("border", border)
    return fold_right(checked) if checked else EMPTY_ROOT


class CompactRange:
    """Right border of a tree being built: O(log n) hashes."""

    __slots__ = ("_border", "_size")

    def __init__(self) -> None:
        """An empty tree."""
        self._size = 0
        self._border: list[bytes] = []

    @classmethod
    def from_border(cls, size: int, border: Sequence[bytes]) -> CompactRange:
        """Resume a tree of ``size`` leaves from the hashes of ``border_nodes(size)``."""
        _check_int("size", size)
        compact = cls()
        compact._border = _check_hashes("border", border, size.bit_count())
        compact._size = size
        return compact

    @property
    def size(self) -> int:
        """Number of leaves pushed."""
        return self._size

    def border(self) -> list[bytes]:
        """The hashes of ``border_nodes(self.size)``, left to right."""
        return list(self._border)

    def push(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Append one leaf hash; return the perfect nodes it completed.

        The nodes come as ``(level, index, hash)``, lowest level first, level 0
        (the leaf itself) excluded: exactly what a store must write once.
        """
        carry = _check_hash("leaf hash", leaf_hash)
        if self._size + 1 >= _LIMIT:
            raise ProofError("the tree is full")
        completed: list[tuple[int, int, bytes]] = []
        level, index = 0, self._size
        # Like the carries of a binary increment: each trailing 1 bit of the old
        # size is a perfect subtree on the border that the new leaf completes.
        while index & 1:
            carry = node_hash(self._border.pop(), carry)
            level, index = level + 1, index >> 1
            completed.append((level, index, carry))
        self._border.append(carry)
        self._size += 1
        return completed

    def root(self) -> bytes:
        """The RFC 9162 root of the tree so far (:data:`EMPTY_ROOT` when empty)."""
        return root_from_border(self._border)


def _proof_shape(start: int, end: int, size: int) -> tuple[_Range | None, list[_Range]]:
    """The leaf ranges of the hashes in the draft's SUBTREE_PROOF(start, end, D[0:size]).

    Returns ``(seed, siblings)``. ``siblings`` are the nodes beside the path
    from the subtree up to the root, lowest first. ``seed`` is the lowest node
    on that path inside the subtree, sent first when the subtree is not itself
    a node of the tree; it is None when it is, as its hash is then the known
    subtree root. Walks down from the root, like the recursive definitions of
    RFC 9162 2.1.4.1 and the draft; ``[start, end)`` must be a valid subtree
    with ``end <= size``.
    """
    siblings: list[_Range] = []
    lo, hi, known = 0, size, True
    while (lo, hi) != (start, end):
        mid = lo + _split(hi - lo)
        if end <= mid:
            siblings.append((mid, hi))
            hi = mid
        elif start >= mid:
            siblings.append((lo, mid))
            lo = mid
        else:
            # The subtree straddles the split, which alignment allows only when
            # it starts at lo: the left half is inside it, its right part
            # [mid, end) is carried on, and the subtree is not a node here.
            siblings.append((lo, mid))
            lo = start = mid
            known = False
    siblings.reverse()
    return (None if known else (lo, hi)), siblings


def _plan(shape: tuple[_Range | None, list[_Range]]) -> list[list[NodeKey]]:
    seed, siblings = shape
    ranges = ([seed] if seed is not None else []) + siblings
    return [range_nodes(lo, hi) for lo, hi in ranges]


def inclusion_proof_plan(index: int, size: int) -> list[list[NodeKey]]:
    """RFC 9162 2.1.3.1 PATH(index, D[0:size]), each proof hash as its :func:`range_nodes`.

    Lowest first, in proof order. Raises :class:`ProofError` unless ``0 <= index < size``.
    """
    _check_int("index", index)
    _check_int("size", size)
    if index >= size:
        raise ProofError(f"index {index} is not in a tree of {size} leaves")
    return _plan(_proof_shape(index, index + 1, size))


def consistency_proof_plan(first: int, second: int) -> list[list[NodeKey]]:
    """RFC 9162 2.1.4.1 PROOF(first, D[0:second]), each proof hash as its :func:`range_nodes`.

    Raises :class:`ProofError` unless ``0 < first <= second``; empty when they are equal.
    """
    _check_int("first", first)
    _check_int("second", second)
    if not 0 < first <= second:
        raise ProofError(f"no consistency proof from {first} to {second} leaves")
    return _plan(_proof_shape(0, first, second))


def assemble_proof(
    plan: Sequence[Sequence[NodeKey]], lookup: Mapping[NodeKey, bytes]
) -> list[bytes]:
    """The proof hashes for ``plan``, from the perfect nodes in ``lookup``."""
    proof = []
    for element in plan:
        try:
            hashes = [lookup[key] for key in element]
        except KeyError as missing:
            raise ProofError(f"node {missing.args[0]} is missing") from None
        proof.append(fold_right(hashes))
    return proof


def plan_keys(plan: Sequence[Sequence[NodeKey]]) -> set[NodeKey]:
    """Every node a store must fetch to assemble ``plan``."""
    return {key for element in plan for key in element}


def _fold_proof(
    start: int, end: int, size: int, proof: Sequence[bytes], subtree_root: bytes
) -> tuple[bytes, bytes]:
    """Rebuild (subtree root, tree root) from a subtree consistency proof.

    Both roots climb the same path from the seed: every sibling goes into the
    tree root, only left siblings inside ``[start, end)`` into the subtree root.
    The caller has checked the sizes (a valid subtree of the tree) and ``subtree_root``.
    """
    seed, siblings = _proof_shape(start, end, size)
    hashes = _check_hashes("proof", proof, len(siblings) + (seed is not None))
    if seed is None:
        lo, first = start, subtree_root
    else:
        lo, first = seed[0], hashes.pop(0)
    second = first
    for (sibling_lo, _), sibling in zip(siblings, hashes, strict=True):
        if sibling_lo < lo:
            second = node_hash(sibling, second)
            if sibling_lo >= start:
                first = node_hash(sibling, first)
            lo = sibling_lo
        else:
            second = node_hash(second, sibling)
    return first, second


def _require_equal_roots(proof: Sequence[bytes], first: bytes, second: bytes) -> None:
    if not isinstance(proof, Sequence) or isinstance(proof, (bytes, str)) or len(proof) != 0:
        raise ProofError("the proof must be empty")
    if not isinstance(first, bytes) or first != second:
        raise ProofError("the roots differ")


def _compare(name: str, computed: bytes, expected: bytes) -> None:
    if computed != _check_hash(name, expected):
        raise ProofError(f"the proof does not lead to the {name}")


def root_from_inclusion_proof(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root an RFC 9162 inclusion proof leads to (RFC 9162 2.1.3.2)."""
    _check_int("index", index)
    _check_int("size", size)
    if index >= size:
        raise ProofError(f"index {index} is not in a tree of {size} leaves")
    _check_hash("leaf hash", leaf_hash)
    return _fold_proof(index, index + 1, size, proof, leaf_hash)[1]


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with ``root``."""
    _compare("root", root_from_inclusion_proof(index, size, leaf_hash, proof), root)


def verify_consistency(
    first: int, second: int, proof: Sequence[bytes], first_root: bytes, second_root: bytes
) -> None:
    """Check that the tree of ``first`` leaves is a prefix of the tree of ``second``.

    RFC 9162 2.1.4.2; requires ``0 < first <= second`` (nothing is consistent
    with an empty tree in a way worth proving), and an empty proof when equal.
    """
    _check_int("first", first)
    _check_int("second", second)
    if not 0 < first <= second:
        raise ProofError(f"no consistency proof from {first} to {second} leaves")
    if first == second:
        # RFC 9162 2.1.4.2 step 1: same size, empty proof, and the roots must be equal.
        _require_equal_roots(proof, first_root, second_root)
        return
    _check_hash("first root", first_root)
    computed_first, computed_second = _fold_proof(0, first, second, proof, first_root)
    _compare("first root", computed_first, first_root)
    _compare("second root", computed_second, second_root)


def verify_subtree_inclusion(  # noqa: PLR0917 - the positional signature callers share
    index: int, start: int, end: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the subtree ``[start, end)`` with ``root``.

    The subtree must be valid (``0 <= start < end``, ``start`` a multiple of the
    smallest power of two >= ``end - start``) and hold ``index``.
    """
    _check_int("index", index)
    _check_int("start", start)
    _check_int("end", end)
    _check_subtree(start, end)
    if not start <= index < end:
        raise ProofError(f"index {index} is not in subtree [{start}, {end})")
    # An aligned subtree has the shape of a tree of end - start leaves.
    verify_inclusion(index - start, end - start, leaf_hash, proof, root)


def verify_subtree_consistency(  # noqa: PLR0917 - the positional signature callers share
    start: int, end: int, size: int, proof: Sequence[bytes], subtree_root: bytes, root: bytes
) -> None:
    """Check that the subtree ``[start, end)`` with ``subtree_root`` is in the tree with ``root``.

    The subtree must be valid (``0 <= start < end``, ``start`` a multiple of the
    smallest power of two >= ``end - start``) and ``end <= size``.
    """
    _check_int("start", start)
    _check_int("end", end)
    _check_int("size", size)
    if start == end <= size:
        # The empty subtree is in every tree: its root is the empty hash, its proof empty
        # (as the transparency-dev reference and its vectors have it).
        _require_equal_roots(proof, subtree_root, EMPTY_ROOT)
        return
    if start == 0 and end == size:
        # The subtree is the whole tree: nothing to prove but equal roots.
        _require_equal_roots(proof, subtree_root, root)
        return
    _check_subtree(start, end)
    if end > size:
        raise ProofError(f"subtree [{start}, {end}) is not in a tree of {size} leaves")
    _check_hash("subtree root", subtree_root)
    computed_subtree, computed_root = _fold_proof(start, end, size, proof, subtree_root)
    _compare("subtree root", computed_subtree, subtree_root)
    _compare("root", computed_root, root)
