"""Audit records and subject pseudonyms (protocol section 6).

A record never holds a body, a field value or a clear subject or end-user
id: subjects and end users appear as HMAC-SHA-256 pseudonyms under the
agency's audit key, released fields by name only.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any, Final, Literal

import orjson
import rfc8785
from pydantic import BaseModel, ConfigDict, field_validator

from gateway.errors import SetupError
from gateway.keys import b64url, b64url_decode, write_private_file

SCHEMA_VERSION: Final = 1
AUDIT_KEY_BYTES: Final = 32

RecordKind = Literal["exchange", "token", "refusal", "officer-query"]
# "local": an officer's query of this gateway's own log, not a message between gateways.
Direction = Literal["inbound", "outbound", "local"]
Outcome = Literal["ok", "refused", "error"]


class AuditRecord(BaseModel):
    """One audit record. Optional members are absent when they do not apply."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    # Set by the log's writer: a leaf names its own position, so rows swapped or
    # moved in the store are caught by reading one leaf, not only by the root.
    index: int | None = None
    record_id: str
    salt: str
    time: str
    kind: RecordKind
    direction: Direction
    outcome: Outcome
    status: int
    consumer: str | None = None
    provider: str | None = None
    service: str | None = None
    contract: str | None = None
    contract_version: int | None = None
    purpose: str | None = None
    legal_basis: str | None = None
    # The consumer's retention duty for the released data, as the contract set it.
    retention_days: int | None = None
    client: str | None = None
    end_user: str | None = None
    subject: str | None = None
    fields: list[str] | None = None
    problem: str | None = None
    detail: str | None = None
    jti: str | None = None
    req_hash: str | None = None
    resp_hash: str | None = None
    evidence: str | None = None
    latency_us: int | None = None
    officer: str | None = None
    query: dict[str, str] | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        """Escape text that is not valid Unicode (a non-UTF-8 header arrives as lone
        surrogates): one such record must not fail the group commit it shares."""
        if isinstance(value, str):
            return _storable(value)
        if isinstance(value, list):
            return [_storable(v) if isinstance(v, str) else v for v in value]
        if isinstance(value, dict):
            return {_storable(str(k)): _storable(v) if isinstance(v, str) else v
                    for k, v in value.items()}  # fmt: skip
        return value

    def leaf_bytes(self) -> bytes:
        """The stored bytes: RFC 8785 (JCS) canonical JSON without absent members."""
        return jcs_bytes(self.model_dump(exclude_none=True))

    def at_index(self, index: int) -> AuditRecord:
        """This record placed at ``index`` of the log."""
        return self.model_copy(update={"index": index})


# RFC 8785 writes numbers as IEEE 754 doubles do: integers beyond this lose digits.
_JCS_EXACT_INT: Final = 2**53 - 1


def jcs_bytes(members: Mapping[str, Any]) -> bytes:
    """RFC 8785 (JCS) bytes of a record's members, the fast way where it is the same.

    For what a record holds (text, integers, lists and maps of text), JCS is
    compact JSON with sorted keys and no ASCII escaping, which orjson writes
    (``OPT_SORT_KEYS``): its string escapes are ECMAScript's, and sorting by
    UTF-16 code units equals sorting by code points while keys are ASCII.
    Anything else (a non-ASCII key, a float, an integer past 2^53, a lone
    surrogate, which orjson refuses) goes through the rfc8785 library, which
    is exact but costs several times as much.
    """
    if _plain_json(members):
        with contextlib.suppress(TypeError):  # orjson.JSONEncodeError is one
            return orjson.dumps(members, option=orjson.OPT_SORT_KEYS)
    return bytes(rfc8785.dumps(members))


def _plain_json(value: object) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return -_JCS_EXACT_INT <= value <= _JCS_EXACT_INT
    if isinstance(value, list):
        return all(_plain_json(item) for item in value)
    if isinstance(value, dict):
        return all(
            isinstance(key, str) and key.isascii() and _plain_json(item)
            for key, item in value.items()
        )
    return False


def _storable(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def record_time(now: float) -> str:
    """RFC 3339 UTC time with milliseconds, ending in ``Z``."""
    moment = datetime.fromtimestamp(now, UTC)
    # Every field zero-padded (times must compare as text), without strftime:
    # two of these are written per audit record.
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
        f".{moment.microsecond // 1000:03d}Z"
    )


def new_record_identity() -> dict[str, str]:
    """A fresh ``record_id`` and 128-bit ``salt`` (so a leaf hash reveals nothing)."""
    return {"record_id": b64url(secrets.token_bytes(16)), "salt": b64url(secrets.token_bytes(16))}


class Pseudonymizer:
    """HMAC-SHA-256 pseudonyms under the audit key: findable by who knows the id.

    The key rotates by epoch. New records use the newest epoch's key; a search
    tries every epoch still listed, so records stay findable until their
    epoch's key is removed, after which nobody can link them to an id.
    """

    def __init__(self, keys: Mapping[int, bytes]) -> None:
        if not keys:
            raise ValueError("no audit key")
        for epoch, key in keys.items():
            if epoch < 1:
                raise ValueError(f"audit key epoch {epoch} is not a positive number")
            if len(key) < AUDIT_KEY_BYTES:
                raise ValueError(f"the audit key must be at least {AUDIT_KEY_BYTES} bytes")
        self._keys = dict(sorted(keys.items()))
        self.epoch = max(self._keys)

    @property
    def epochs(self) -> tuple[int, ...]:
        """Every live epoch, oldest first."""
        return tuple(self._keys)

    def __call__(self, value: str) -> str:
        """base64url(HMAC-SHA-256(current epoch key, value))."""
        return self._pseudonym(self._keys[self.epoch], value)

    def all_pseudonyms(self, value: str) -> list[str]:
        """``value``'s pseudonym under every live epoch key, newest first."""
        return [self._pseudonym(self._keys[epoch], value) for epoch in reversed(self._keys)]

    @staticmethod
    def _pseudonym(key: bytes, value: str) -> str:
        return b64url(hmac.new(key, value.encode("utf-8"), sha256).digest())


def _key_line(epoch: int) -> bytes:
    return f"{epoch} {b64url(secrets.token_bytes(AUDIT_KEY_BYTES))}\n".encode()


def generate_audit_key(path: Path) -> None:
    """Write a new audit key file holding epoch 1 (base64url text, mode 0600)."""
    write_private_file(path, _key_line(1))


def rotate_audit_key(path: Path) -> int:
    """Append a key for the next epoch to the audit key file; the new epoch."""
    current = load_audit_key(path)
    epoch = current.epoch + 1
    staged = path.with_name(path.name + ".new")
    staged.unlink(missing_ok=True)
    write_private_file(staged, path.read_bytes() + _key_line(epoch))
    # A rename is atomic: a crash leaves the old file or the new one, never half.
    staged.replace(path)
    return epoch


def parse_audit_keys(text: str) -> dict[int, bytes]:
    """Parse an audit key file: lines of ``EPOCH KEY``; a lone ``KEY`` line is epoch 1."""
    keys: dict[int, bytes] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 1:
            parts = ["1", parts[0]]
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"line {number} is not 'EPOCH KEY'")
        epoch = int(parts[0])
        if epoch in keys:
            raise ValueError(f"line {number} repeats epoch {epoch}")
        keys[epoch] = b64url_decode(parts[1])
    return keys


def load_audit_key(path: Path) -> Pseudonymizer:
    """Load the audit key file written by :func:`generate_audit_key`."""
    try:
        text = path.read_text(encoding="ascii")
        return Pseudonymizer(parse_audit_keys(text))
    except OSError as exc:
        raise SetupError(str(path), f"cannot read the audit key ({exc.strerror})") from exc
    except ValueError as exc:
        raise SetupError(str(path), f"not an audit key: {exc}") from exc
