"""The tamper-evident audit log (protocol section 6).

``records`` builds records (pure), ``merkle`` is the RFC 9162 tree math,
``note`` and ``checkpoint`` the C2SP signed checkpoints, ``store`` (SQLite)
and ``postgres`` keep them, ``log`` ties them together, ``verify`` audits a
whole store and ``query`` validates officers' searches. A response is
released only after :meth:`AuditLog.append` has returned.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.audit.log import AuditLog, AuditObserver, CheckpointPolicy
from gateway.audit.note import NoteSigner
from gateway.audit.records import AuditRecord, Pseudonymizer
from gateway.audit.store import open_store
from gateway.keys import load_log_key

if TYPE_CHECKING:
    from gateway.config import GatewaySettings

__all__ = ["AuditLog", "AuditObserver", "AuditRecord", "Pseudonymizer", "open_audit_log"]


def log_signer(settings: GatewaySettings) -> NoteSigner:
    """The checkpoint signer: the agency's Ed25519 log key, named ``{agency}/audit``."""
    path = settings.keys.log_key
    if path is None:  # pragma: no cover - config always resolves a default
        raise ValueError("no log key configured")
    key = load_log_key(path, settings.keys.passphrase())
    return NoteSigner(name=f"{settings.agency}/audit", private_key=key)


async def open_audit_log(
    settings: GatewaySettings, clock: Callable[[], float] = time.time
) -> AuditLog:
    """Open the configured store, check it against its last checkpoint, start the writer."""
    audit = settings.audit
    log = AuditLog(
        open_store(audit.store, settings.base_dir),
        f"{settings.agency}/audit",
        log_signer(settings),
        retention_days=audit.retention_for,
        policy=CheckpointPolicy(
            every_records=audit.checkpoint_every_records,
            every_seconds=audit.checkpoint_every_seconds,
            retention_check_seconds=audit.retention_check_seconds,
        ),
        clock=clock,
    )
    await log.open()
    return log
