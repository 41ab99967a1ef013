"""The audit log: one record per exchange, token grant and refusal (protocol 6).

``records`` builds records (pure); ``store`` makes them durable. A response is
released only after :meth:`AuditLog.append` has returned.
"""

from gateway.audit.records import AuditRecord, Pseudonymizer
from gateway.audit.store import AuditLog, SqliteAuditLog, open_audit_log

__all__ = ["AuditLog", "AuditRecord", "Pseudonymizer", "SqliteAuditLog", "open_audit_log"]
