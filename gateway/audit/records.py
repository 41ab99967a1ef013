"""Audit records and subject pseudonyms (protocol section 6).

A record never holds a body, a field value or a clear subject or end-user
id: subjects and end users appear as HMAC-SHA-256 pseudonyms under the
agency's audit key, released fields by name only.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Final, Literal

import rfc8785
from pydantic import BaseModel, ConfigDict

from gateway.errors import SetupError
from gateway.keys import b64url, b64url_decode, write_private_file

SCHEMA_VERSION: Final = 1
AUDIT_KEY_BYTES: Final = 32

RecordKind = Literal["exchange", "token", "refusal", "officer-query"]
Direction = Literal["inbound", "outbound"]
Outcome = Literal["ok", "refused", "error"]


class AuditRecord(BaseModel):
    """One audit record. Optional members are absent when they do not apply."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
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

    def leaf_bytes(self) -> bytes:
        """The stored bytes: RFC 8785 (JCS) canonical JSON without absent members."""
        return bytes(rfc8785.dumps(self.model_dump(exclude_none=True)))


def record_time(now: float) -> str:
    """RFC 3339 UTC time with milliseconds, ending in ``Z``."""
    moment = datetime.fromtimestamp(now, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def new_record_identity() -> dict[str, str]:
    """A fresh ``record_id`` and 128-bit ``salt`` (so a leaf hash reveals nothing)."""
    return {"record_id": b64url(secrets.token_bytes(16)), "salt": b64url(secrets.token_bytes(16))}


class Pseudonymizer:
    """HMAC-SHA-256 pseudonyms under the audit key: findable by who knows the id."""

    def __init__(self, key: bytes) -> None:
        if len(key) < AUDIT_KEY_BYTES:
            raise ValueError(f"the audit key must be at least {AUDIT_KEY_BYTES} bytes")
        self._key = key

    def __call__(self, value: str) -> str:
        """base64url(HMAC-SHA-256(audit key, value))."""
        return b64url(hmac.new(self._key, value.encode("utf-8"), sha256).digest())


def generate_audit_key(path: Path) -> None:
    """Write a new random audit key (base64url text, mode 0600)."""
    write_private_file(path, (b64url(secrets.token_bytes(AUDIT_KEY_BYTES)) + "\n").encode())


def load_audit_key(path: Path) -> Pseudonymizer:
    """Load the audit key written by :func:`generate_audit_key`."""
    try:
        text = path.read_text(encoding="ascii").strip()
        return Pseudonymizer(b64url_decode(text))
    except OSError as exc:
        raise SetupError(str(path), f"cannot read the audit key ({exc.strerror})") from exc
    except ValueError as exc:
        raise SetupError(str(path), f"not an audit key: {exc}") from exc
