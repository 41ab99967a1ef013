"""C2SP tlog-checkpoint bodies (https://c2sp.org/tlog-checkpoint) as signed notes.

A checkpoint commits the audit log to its Merkle tree head (origin, tree size,
RFC 6962 root hash). Using the standard body format means witnesses, monitors
and other agencies can cosign and check our tree heads with their existing
tools, and we can check theirs. Parsing is strict, so one tree head has exactly
one spelling: a second spelling of the same head would be a second signed
statement to reason about. Nothing here performs I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Final

from gateway.audit.note import NoteSigner, NoteVerifier

ROOT_BYTES: Final = 32
MAX_TREE_SIZE: Final = 2**64 - 1
"""Tree sizes are unsigned 64-bit, as in transparency-dev/formats."""

# ASCII digits only: Python's int() would also take "+1", " 1", "1_0" and
# non-ASCII digits.
_SIZE: Final = re.compile(r"0|[1-9][0-9]{0,19}")
# Control characters, newline included: a field is exactly one line.
_CONTROL: Final = re.compile(r"[\x00-\x1f]")


class CheckpointError(ValueError):
    """A checkpoint body that is malformed, or not from the expected log."""


def _check_line(value: str, what: str) -> None:
    if not isinstance(value, str):
        raise CheckpointError(f"{what} is not a string")
    if not value:
        raise CheckpointError(f"{what} is empty")
    if _CONTROL.search(value):
        raise CheckpointError(f"{what} {value[:40]!r} contains a newline or control character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise CheckpointError(f"{what} is not valid UTF-8") from error


@dataclass(frozen=True)
class Checkpoint:
    """One tree head of a log: its origin, size and root hash.

    The origin is any non-empty line (the spec recommends, but does not
    require, a schema-less URL). Extension lines are opaque, non-empty, and
    rarely wanted: monitors cannot audit them.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "checkpoint origin")
        # bool is an int subclass; True is not a tree size.
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise CheckpointError("checkpoint size is not an integer")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError(f"checkpoint size {self.size} is not an unsigned 64-bit integer")
        if not isinstance(self.root, bytes) or len(self.root) != ROOT_BYTES:
            raise CheckpointError(f"checkpoint root is not {ROOT_BYTES} bytes")
        if not isinstance(self.extensions, tuple):
            raise CheckpointError("checkpoint extensions are not a tuple")
        for extension in self.extensions:
            _check_line(extension, "checkpoint extension line")

    def body(self) -> str:
        """The note text: origin, size and base64 root, then extension lines."""
        root = base64.b64encode(self.root).decode("ascii")
        lines = (self.origin, str(self.size), root, *self.extensions)
        return "".join(f"{line}\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body, refusing every non-canonical spelling.

        The size is decimal without leading zeros (``0`` for the empty tree),
        the root canonical padded standard base64 of exactly 32 bytes, and no
        line may be empty.
        """
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint body does not end in a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError("checkpoint body has fewer than three lines")
        origin, size_text, root_text, *extensions = lines
        if not origin:
            raise CheckpointError("checkpoint origin is empty")
        if not _SIZE.fullmatch(size_text):
            raise CheckpointError(
                f"checkpoint size {size_text[:40]!r} is not a decimal without leading zeros"
            )
        size = int(size_text)
        if size > MAX_TREE_SIZE:
            raise CheckpointError(f"checkpoint size {size} is not an unsigned 64-bit integer")
        root = _decode_root(root_text)
        for number, extension in enumerate(extensions, start=4):
            if not extension:
                raise CheckpointError(f"checkpoint line {number} is empty")
        return cls(origin=origin, size=size, root=root, extensions=tuple(extensions))


def _decode_root(text: str) -> bytes:
    try:
        root = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise CheckpointError("checkpoint root is not standard padded base64") from error
    # Re-encoding catches non-zero trailing bits, the one laxity left.
    if base64.b64encode(root).decode("ascii") != text:
        raise CheckpointError("checkpoint root is not canonical base64")
    if len(root) != ROOT_BYTES:
        raise CheckpointError(f"checkpoint root is {len(root)} bytes, not {ROOT_BYTES}")
    return root


def sign_checkpoint(signer: NoteSigner, checkpoint: Checkpoint) -> str:
    """Sign a checkpoint; returns the signed note."""
    return signer.sign(checkpoint.body())


def open_checkpoint(verifier: NoteVerifier, note: str | bytes, origin: str) -> Checkpoint:
    """Verify a signed checkpoint and return it if it is from log ``origin``.

    The signature is checked before the body is parsed, so nothing
    unauthenticated is interpreted. Raises :class:`~gateway.audit.note.NoteError`
    for a note that does not verify and :class:`CheckpointError` for a body
    that is not a checkpoint or names another origin.
    """
    checkpoint = Checkpoint.parse(verifier.verify(note))
    if checkpoint.origin != origin:
        raise CheckpointError(
            f"checkpoint origin {checkpoint.origin[:40]!r} is not the expected {origin[:40]!r}"
        )
    return checkpoint
