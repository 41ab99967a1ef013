"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys.

The audit log publishes its tree heads as signed notes so that another agency,
a witness or an auditor can check them with the tools the transparency-log
world already uses (golang.org/x/mod/sumdb/note, transparency-dev), without
trusting or reading any gateway code. Byte-level compatibility with that
reference implementation is therefore the whole point: the known answer in
``tests/vectors/signed-note/`` is reproduced byte for byte.

Where the reference implementation is lenient, this module is stricter, so
that one note has exactly one accepted spelling: base64 must be canonical,
verifier key ids are lower-case hex, names may not hold control characters,
and every signature by the verifier's own key must verify (the reference
checks only the first one). Nothing here performs I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

ALG_ED25519: Final = 0x01
"""Signature type byte of Ed25519 in key ids and key strings (C2SP signed-note)."""

MAX_SIGNATURES: Final = 100
"""Most signature lines a note may carry; the spec requires accepting at least 16."""

ED25519_SIGNATURE_BYTES: Final = 64
ED25519_KEY_BYTES: Final = 32

_SIGNATURE_PREFIX: Final = "\u2014 "  # em dash, space
_PRIVATE_PREFIX: Final = "PRIVATE+KEY+"
_HEX_DIGITS: Final = frozenset("0123456789abcdef")
# Control characters other than newline: forbidden anywhere in a note.
_CONTROL: Final = re.compile(r"[\x00-\x09\x0b-\x1f]")


class NoteError(ValueError):
    """A note, key string or key name that is malformed or does not verify."""


def _utf8(text: str, what: str) -> bytes:
    # A Python str may hold lone surrogates, which have no UTF-8 form and so
    # could never be signed or appear in a received note.
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise NoteError(f"{what} is not valid UTF-8 (it holds a lone surrogate)") from error


def check_key_name(name: str) -> None:
    """Refuse a key name the signed-note format cannot carry.

    A name must be non-empty, valid UTF-8, and hold no Unicode space and no
    ``+`` (which separates the parts of a key string). Control characters are
    refused too: no note holding one can be opened.
    """
    if not name:
        raise NoteError("key name is empty")
    if "+" in name:
        raise NoteError(f"key name {name!r} contains '+'")
    # str.isspace is Go's unicode.IsSpace plus U+001C-U+001F, which are
    # control characters and refused anyway.
    if any(ch.isspace() or ch < " " for ch in name):
        raise NoteError(f"key name {name!r} contains a space or control character")
    _utf8(name, "key name")


def _key_id(name: str, public_key: Ed25519PublicKey) -> int:
    digest = hashlib.sha256(
        _utf8(name, "key name") + b"\n" + bytes([ALG_ED25519]) + _raw_public(public_key)
    ).digest()
    return int.from_bytes(digest[:4], "big")


def key_id_for(name: str, public_key: Ed25519PublicKey) -> int:
    """The Ed25519 key id: SHA-256(name || 0x0A || 0x01 || public key)[:4], big-endian."""
    check_key_name(name)
    return _key_id(name, public_key)


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    # Canonical standard base64 only: padded, no whitespace, zero trailing
    # bits. Go's decoder tolerates non-zero trailing bits; refusing them means
    # a note cannot be re-spelled and still verify.
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise NoteError(f"{what} is not standard padded base64") from error
    if _b64encode(raw) != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _split_key(text: str, what: str) -> tuple[str, int, bytes]:
    """Split ``name+hex8+base64(type || key)`` and check all but the key id."""
    # Neither the name nor the id holds '+', so the first two '+' are the
    # separators; base64 may hold more.
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise NoteError(f"{what} is not of the form name+keyid+key")
    name, id_hex, key_b64 = parts
    check_key_name(name)
    if len(id_hex) != 8 or not set(id_hex) <= _HEX_DIGITS:
        raise NoteError(f"{what} key id {id_hex!r} is not 8 lower-case hex digits")
    raw = _b64decode(key_b64, f"{what} key")
    if not raw:
        raise NoteError(f"{what} key is empty")
    if raw[0] != ALG_ED25519:
        raise NoteError(f"{what} key type 0x{raw[0]:02x} is not Ed25519 (0x01)")
    if len(raw) != 1 + ED25519_KEY_BYTES:
        raise NoteError(f"{what} Ed25519 key is {len(raw) - 1} bytes, not {ED25519_KEY_BYTES}")
    return name, int(id_hex, 16), raw[1:]


@dataclass(frozen=True)
class NoteVerifier:
    """An Ed25519 verifier key: checks notes for a signature by this one key.

    The key id is the one the spec derives from name and public key;
    construction refuses any other, so a verifier cannot be misconfigured
    into accepting a signature line labelled with the wrong id.
    """

    name: str
    key_id: int
    # Keys are unhashable; name and key id identify the key for hashing.
    public_key: Ed25519PublicKey = field(hash=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)
        expected = _key_id(self.name, self.public_key)
        if self.key_id != expected:
            raise NoteError(
                f"key id {self.key_id:08x} does not match name {self.name!r} "
                f"and public key (expected {expected:08x})"
            )

    @classmethod
    def from_verifier_key(cls, text: str) -> NoteVerifier:
        """Parse a verifier key ``name+hex8+base64(0x01 || public key)``."""
        name, key_id, raw = _split_key(text, "verifier key")
        public_key = Ed25519PublicKey.from_public_bytes(raw)
        return cls(name=name, key_id=key_id, public_key=public_key)

    def verifier_key(self) -> str:
        """This key as a verifier key string."""
        raw = bytes([ALG_ED25519]) + _raw_public(self.public_key)
        return f"{self.name}+{self.key_id:08x}+{_b64encode(raw)}"

    def verify(self, note: str | bytes) -> str:
        """Return the text of ``note`` if it holds a valid signature by this key.

        Signatures by other keys (another name or another key id) are ignored,
        but must still be well-formed signature lines. Every signature by this
        key must verify; a note with none raises :class:`NoteError`, as does
        any malformed note.
        """
        if isinstance(note, bytes):
            try:
                message = note.decode("utf-8")
            except UnicodeDecodeError as error:
                raise NoteError("note is not valid UTF-8") from error
        else:
            message = note
            _utf8(message, "note")
        if _CONTROL.search(message):
            raise NoteError("note contains a control character other than newline")
        # The text may hold blank lines; the signatures follow the last one.
        split = message.rfind("\n\n")
        if split < 0:
            raise NoteError("note has no blank line before its signatures")
        text, block = message[: split + 1], message[split + 2 :]
        if not block:
            raise NoteError("note has no signature lines")
        if not block.endswith("\n"):
            raise NoteError("note does not end in a newline")
        lines = block[:-1].split("\n")
        if len(lines) > MAX_SIGNATURES:
            raise NoteError(f"note has {len(lines)} signatures, more than {MAX_SIGNATURES}")

        signed = text.encode("utf-8")
        verified = False
        for line in lines:
            name, key_id, signature = _parse_signature_line(line)
            if name != self.name or key_id != self.key_id:
                continue  # the spec requires ignoring unknown keys
            if len(signature) != ED25519_SIGNATURE_BYTES:
                raise NoteError(f"signature by {name}+{key_id:08x} has the wrong length")
            try:
                self.public_key.verify(signature, signed)
            except InvalidSignature as error:
                raise NoteError(f"signature by {name}+{key_id:08x} does not verify") from error
            verified = True
        if not verified:
            raise NoteError(f"note has no signature by {self.name}+{self.key_id:08x}")
        return text


def _parse_signature_line(line: str) -> tuple[str, int, bytes]:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise NoteError(f"note line {line[:40]!r} is not a signature line")
    name, space, encoded = line[len(_SIGNATURE_PREFIX) :].partition(" ")
    if not space or not encoded:
        raise NoteError(f"signature line {line[:40]!r} has no signature")
    check_key_name(name)
    raw = _b64decode(encoded, f"signature by {name}")
    if len(raw) < 5:
        raise NoteError(f"signature by {name} is shorter than a key id and one byte")
    return name, int.from_bytes(raw[:4], "big"), raw[4:]


@dataclass(frozen=True)
class NoteSigner:
    """An Ed25519 signer key. Its signer key string is a secret."""

    name: str
    # Never in reprs; keys are unhashable, so the name alone hashes.
    private_key: Ed25519PrivateKey = field(repr=False, hash=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        """A signer with a fresh random key."""
        return cls(name=name, private_key=Ed25519PrivateKey.generate())

    @classmethod
    def from_signer_key(cls, text: str) -> NoteSigner:
        """Parse a signer key ``PRIVATE+KEY+name+hex8+base64(0x01 || seed)``."""
        if not text.startswith(_PRIVATE_PREFIX):
            raise NoteError("signer key does not start with PRIVATE+KEY+")
        name, key_id, seed = _split_key(text[len(_PRIVATE_PREFIX) :], "signer key")
        signer = cls(name=name, private_key=Ed25519PrivateKey.from_private_bytes(seed))
        # The id is computed from the public key, known only after derivation.
        if signer.key_id != key_id:
            raise NoteError(
                f"signer key id {key_id:08x} does not match its name and key "
                f"(expected {signer.key_id:08x})"
            )
        return signer

    @property
    def key_id(self) -> int:
        """The key id of this key's public half."""
        return _key_id(self.name, self.private_key.public_key())

    def verifier(self) -> NoteVerifier:
        """The verifier for this key."""
        public_key = self.private_key.public_key()
        return NoteVerifier(name=self.name, key_id=self.key_id, public_key=public_key)

    def verifier_key(self) -> str:
        """The public verifier key string for this key."""
        return self.verifier().verifier_key()

    def signer_key(self) -> str:
        """The secret signer key string for this key."""
        seed = self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        encoded = _b64encode(bytes([ALG_ED25519]) + seed)
        return f"{_PRIVATE_PREFIX}{self.name}+{self.key_id:08x}+{encoded}"

    def sign(self, text: str) -> str:
        """Sign ``text`` and return the whole signed note.

        The text must end in a newline and be a valid note text (UTF-8, no
        control character but newline), so that every note signed here opens.
        """
        if not text.endswith("\n"):
            raise NoteError("note text does not end in a newline")
        if _CONTROL.search(text):
            raise NoteError("note text contains a control character other than newline")
        signature = self.private_key.sign(_utf8(text, "note text"))
        encoded = _b64encode(self.key_id.to_bytes(4, "big") + signature)
        return f"{text}\n{_SIGNATURE_PREFIX}{self.name} {encoded}\n"


def verifier_key_for(name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key string for an Ed25519 public key under ``name``."""
    return NoteVerifier(
        name=name, key_id=key_id_for(name, public_key), public_key=public_key
    ).verifier_key()
