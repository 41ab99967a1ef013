"""Durable audit storage behind a small interface.

:class:`AuditLog` is the seam the exchange pipeline depends on. The embedded
default, :class:`SqliteAuditLog`, keeps records in a SQLite file in WAL mode
with ``synchronous=FULL``: an append returns only after its transaction is on
disk. One writer thread group-commits whatever appends are waiting, so
concurrent exchanges share one fsync instead of queueing for their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import urlparse

from gateway.audit.records import AuditRecord
from gateway.errors import AuditUnavailable, SetupError

# Appends committed in one transaction at most; bounds one batch's latency.
MAX_BATCH: Final = 512

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS audit_records (
    idx  INTEGER PRIMARY KEY,
    leaf BLOB NOT NULL
)
"""


class AuditLog(Protocol):
    """Append-only, durable audit storage."""

    async def append(self, record: AuditRecord) -> int:
        """Store ``record`` durably and return its index; ``AuditUnavailable`` if it cannot."""

    async def size(self) -> int:
        """How many records the log holds."""

    async def read(self, index: int) -> bytes:
        """The stored leaf bytes of record ``index``."""

    def healthy(self) -> bool:
        """False once a write has failed and the store has not recovered."""

    async def close(self) -> None:
        """Finish pending appends and release the store."""


class SqliteAuditLog:
    """The embedded audit store: one SQLite file, one writer thread, group commit."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._next_index = 0
        self._pending: list[tuple[bytes, asyncio.Future[int]]] = []
        self._wakeup: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._healthy = True
        self._closing = False

    async def open(self) -> None:
        """Open (or create) the file and start the writer."""
        loop = asyncio.get_running_loop()
        try:
            self._next_index = await loop.run_in_executor(self._executor, self._open_sync)
        except sqlite3.Error as exc:
            raise SetupError(str(self._path), f"cannot open the audit store: {exc}") from exc
        self._wakeup = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(self._wakeup), name="audit-writer")

    def _open_sync(self) -> int:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(_SCHEMA)
        self._conn = conn
        row = conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_records").fetchone()
        return int(row[0])

    def healthy(self) -> bool:
        """False after a failed write until a later write succeeds."""
        return self._healthy

    async def append(self, record: AuditRecord) -> int:
        """Queue ``record`` for the next group commit and wait until it is durable."""
        if self._writer is None or self._wakeup is None or self._closing:
            raise AuditUnavailable("the audit log is not open")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((record.leaf_bytes(), future))
        self._wakeup.set()
        return await future

    async def _write_loop(self, wakeup: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not (self._closing and not self._pending):
            await wakeup.wait()
            wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                leaves = [leaf for leaf, _ in batch]
                try:
                    first = await loop.run_in_executor(self._executor, self._commit, leaves)
                except sqlite3.Error:
                    self._healthy = False
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(
                                AuditUnavailable("the audit log cannot be written")
                            )
                    continue
                self._healthy = True
                for offset, (_, future) in enumerate(batch):
                    if not future.done():
                        future.set_result(first + offset)

    def _commit(self, leaves: list[bytes]) -> int:
        conn = self._conn
        if conn is None:
            raise sqlite3.OperationalError("audit store closed")
        first = self._next_index
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO audit_records (idx, leaf) VALUES (?, ?)",
                [(first + offset, leaf) for offset, leaf in enumerate(leaves)],
            )
            conn.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self._next_index = first + len(leaves)
        return first

    async def size(self) -> int:
        """How many records are committed."""
        return self._next_index

    async def read(self, index: int) -> bytes:
        """The leaf bytes of record ``index``; ``KeyError`` if there is none."""
        if self._conn is None:
            raise KeyError(index)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._read_sync, index)

    def _read_sync(self, index: int) -> bytes:
        conn = self._conn
        if conn is None:  # closed while the read waited for the writer thread
            raise KeyError(index)
        row = conn.execute("SELECT leaf FROM audit_records WHERE idx = ?", (index,)).fetchone()
        if row is None:
            raise KeyError(index)
        return bytes(row[0])

    async def close(self) -> None:
        """Let pending appends commit, stop the writer, close the file."""
        if self._writer is not None and self._wakeup is not None:
            self._closing = True
            self._wakeup.set()
            await self._writer
            self._writer = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)


async def open_audit_log(url: str, base_dir: Path) -> AuditLog:
    """Open the store a URL names: ``sqlite:///abs/path.db`` or ``sqlite:relative.db``."""
    parsed = urlparse(url)
    if parsed.scheme != "sqlite":
        raise SetupError("audit.store", f"unsupported store scheme {parsed.scheme!r}: use sqlite")
    raw = parsed.path if parsed.netloc == "" else parsed.netloc + parsed.path
    if not raw:
        raise SetupError("audit.store", "the sqlite URL names no file")
    path = Path(raw)
    log = SqliteAuditLog(path if path.is_absolute() else base_dir / path)
    await log.open()
    return log
