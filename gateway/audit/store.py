"""Where the Merkle log lives: one small interface, an embedded SQLite store.

A store keeps three tables: the leaves (hash, bytes, and the few columns an
officer filters on), the perfect subtree hashes of the tree (so a proof or a
root costs O(log n) reads at any size), and the signed checkpoints.

Every batch is appended in one transaction that holds the log's single
sequencer (SQLite's write lock here, an advisory lock in PostgreSQL). Under
it the store reads the tree's size, and takes the tree's right border from
the store unless this store itself wrote the tree of exactly that size (the
:class:`BorderCache`): so several writers (processes or gateway instances)
still produce one contiguous tree, and a lone writer reads no border at all.
:func:`build_batch` is the pure part that both stores share.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, TypeVar
from urllib.parse import urlparse

from gateway.audit.merkle import (
    CompactRange,
    NodeKey,
    border_nodes,
    leaf_hash,
    root_from_border,
)
from gateway.audit.query import RecordQuery
from gateway.audit.records import AuditRecord
from gateway.errors import SetupError

_T = TypeVar("_T")

# The record members copied into columns so officers can filter without parsing leaves.
INDEXED_MEMBERS: Final = (
    "time",
    "kind",
    "consumer",
    "provider",
    "contract",
    "purpose",
    "outcome",
    "subject",
)
LEAF_COLUMNS: Final = ("idx", "leaf_hash", "leaf", *INDEXED_MEMBERS, "expires_at")


def schema_sql(*, integer: str, blob: str, sorted_text: str, table_suffix: str = "") -> str:
    """The three tables in one SQL dialect; only type names differ between stores.

    ``sorted_text`` must compare byte-wise: times are compared as text.
    """
    return f"""
CREATE TABLE IF NOT EXISTS audit_leaves (
    idx        {integer} PRIMARY KEY,
    leaf_hash  {blob} NOT NULL,
    leaf       {blob},
    time       {sorted_text},
    kind       TEXT,
    consumer   TEXT,
    provider   TEXT,
    contract   TEXT,
    purpose    TEXT,
    outcome    TEXT,
    subject    TEXT,
    expires_at {sorted_text}
);
CREATE INDEX IF NOT EXISTS audit_leaves_subject ON audit_leaves (subject);
CREATE INDEX IF NOT EXISTS audit_leaves_time ON audit_leaves (time);
CREATE INDEX IF NOT EXISTS audit_leaves_expiry ON audit_leaves (expires_at)
    WHERE leaf IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit_nodes (
    level INTEGER NOT NULL,
    idx   {integer} NOT NULL,
    hash  {blob} NOT NULL,
    PRIMARY KEY (level, idx)
){table_suffix};
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    size    {integer} PRIMARY KEY,
    root    {blob} NOT NULL,
    note    TEXT NOT NULL
);
"""


# SQLite's TEXT compares byte-wise (BINARY collation) already.
SQLITE_SCHEMA: Final = schema_sql(
    integer="INTEGER", blob="BLOB", sorted_text="TEXT", table_suffix=" WITHOUT ROWID"
)


class AuditStoreError(Exception):
    """The store could not do what was asked (I/O, lock, lost connection)."""


@dataclass(frozen=True)
class PendingEntry:
    """A record waiting for its index, and when its leaf bytes may be deleted."""

    record: AuditRecord
    expires_at: str | None


@dataclass(frozen=True)
class StoredLeaf:
    """One leaf as stored; ``leaf`` is None once retention deleted its bytes."""

    index: int
    leaf_hash: bytes
    leaf: bytes | None


@dataclass(frozen=True)
class StoredCheckpoint:
    """A signed checkpoint as stored: its size, root and the whole signed note."""

    size: int
    root: bytes
    note: str


@dataclass(frozen=True)
class Batch:
    """The rows one append transaction inserts, and the tree's right border after them."""

    leaves: list[tuple[object, ...]]
    nodes: list[tuple[int, int, bytes]]
    border: list[bytes]


class BorderCache:
    """The right border of the tree this store last committed, keyed by its size.

    Trees only grow, and one sequencer orders every writer, so a tree read
    under the sequencer with the size this store last committed is the tree
    it committed: its border need not be read back. Any other size (another
    writer appended) misses, and the border comes from the store.
    """

    __slots__ = ("_border", "_size")

    def __init__(self) -> None:
        """An empty cache: the first batch reads its border from the store."""
        self._size = -1
        self._border: list[bytes] = []

    def get(self, size: int) -> list[bytes] | None:
        """The border of the tree of ``size`` leaves, if this store committed that tree."""
        return self._border if size == self._size else None

    def committed(self, size: int, batch: Batch) -> None:
        """``batch`` was committed at ``size``: remember the border after it."""
        self._size = size + len(batch.leaves)
        self._border = batch.border


def build_batch(first: int, border: Sequence[bytes], entries: Sequence[PendingEntry]) -> Batch:
    """Place ``entries`` at ``first``, ``first + 1``, ... of the tree with right border ``border``.

    Returns the leaf rows (in :data:`LEAF_COLUMNS` order) and every perfect
    subtree hash the new leaves complete.
    """
    tree = CompactRange.from_border(first, border)
    leaves: list[tuple[object, ...]] = []
    nodes: list[tuple[int, int, bytes]] = []
    for offset, entry in enumerate(entries):
        index = first + offset
        record = entry.record.at_index(index)
        leaf = record.leaf_bytes()
        digest = leaf_hash(leaf)
        nodes.extend(tree.push(digest))
        columns = tuple(getattr(record, name) for name in INDEXED_MEMBERS)
        leaves.append((index, digest, leaf, *columns, entry.expires_at))
    return Batch(leaves, nodes, tree.border())


class AppendQueue(Protocol):
    """Where a store's writer takes pending appends from and reports each commit.

    Both methods may be called from a store's own writer thread. ``take`` and
    ``settle`` alternate: each ``settle`` reports the batch of the ``take``
    before it.
    """

    def take(self) -> Sequence[PendingEntry]:
        """The next batch to commit in one transaction; empty when the writer should stop."""

    def settle(self, outcome: int | Exception) -> None:
        """The last batch taken was committed from index ``outcome``, or failed with it."""


async def drain_async(
    queue: AppendQueue, append_batch: Callable[[Sequence[PendingEntry]], Awaitable[int]]
) -> None:
    """Commit ``queue``'s batches one transaction each until it is empty (async stores)."""
    while entries := queue.take():
        try:
            first = await append_batch(entries)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the batch is not durable
            queue.settle(exc)
        else:
            queue.settle(first)


# SQL both stores share. Only constant column names and ``mark(n)`` placeholders are
# formatted into the text; every value is bound.
Mark = Callable[[int], str]


def insert_leaves_sql(mark: Mark) -> str:
    """``INSERT`` of one leaf row in :data:`LEAF_COLUMNS` order."""
    marks = ", ".join(mark(n) for n in range(1, len(LEAF_COLUMNS) + 1))
    return f"INSERT INTO audit_leaves ({', '.join(LEAF_COLUMNS)}) VALUES ({marks})"  # noqa: S608


def find_sql(query: RecordQuery, mark: Mark) -> tuple[str, list[object]]:
    """The ``SELECT`` of one page of ``query`` and its bound values."""
    where, values = query.where(mark)
    sql = (
        f"SELECT idx, leaf_hash, leaf FROM audit_leaves WHERE {where}"  # noqa: S608
        f" ORDER BY idx {'ASC' if query.order == 'asc' else 'DESC'} LIMIT {int(query.limit)}"
    )
    return sql, values


def expire_sql(mark: Mark) -> str:
    """Delete the bytes and filter columns of leaves whose retention ended; keep the hash."""
    # The time stays: officers still see that a record existed then, and what it was is gone.
    cleared = ", ".join(f"{name} = NULL" for name in ("leaf", *INDEXED_MEMBERS) if name != "time")
    return (
        f"UPDATE audit_leaves SET {cleared}"  # noqa: S608
        f" WHERE leaf IS NOT NULL AND expires_at <= {mark(1)}"
    )


class AuditStore(Protocol):
    """Durable storage of the Merkle log; every method may raise ``AuditStoreError``."""

    async def open(self) -> None:
        """Connect and create the tables if they do not exist."""

    async def append_batch(self, entries: Sequence[PendingEntry]) -> int:
        """Append ``entries`` in one transaction under the sequencer; the first index."""

    async def append_pending(self, queue: AppendQueue) -> None:
        """Commit the batches ``queue`` gives, one transaction each, until it gives none.

        A failed batch is settled with its error and the next one is tried.
        """

    async def size(self) -> int:
        """How many leaves are committed (the next index)."""

    async def count(self, below: int | None = None) -> int:
        """How many leaf rows exist with index < ``below`` (all if None).

        ``count(below=n) == n`` for any ``n`` read from ``size()`` unless rows were
        deleted: every index below a committed one is committed (one sequencer).
        """

    async def hashes(self, keys: Collection[NodeKey]) -> dict[NodeKey, bytes]:
        """The stored hashes of ``keys`` (level 0: leaf hashes); missing keys are absent."""

    async def leaves(self, start: int, end: int) -> list[StoredLeaf]:
        """The stored leaves with ``start <= index < end``, by index."""

    async def nodes(self, level: int, start: int, end: int) -> list[tuple[int, bytes]]:
        """Stored ``(index, hash)`` of one level with ``start <= index < end``, by index."""

    async def find(self, query: RecordQuery) -> list[StoredLeaf]:
        """One page of leaves matching ``query``, in its order."""

    async def add_checkpoint(
        self, sign: Callable[[int, bytes], str], min_size: int = 1
    ) -> StoredCheckpoint | None:
        """Under the sequencer, sign the current tree if it grew; the new checkpoint or None."""

    async def checkpoints(self) -> list[StoredCheckpoint]:
        """Every stored checkpoint, smallest first."""

    async def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The checkpoint of the largest tree, if any."""

    async def expire(self, now: str) -> int:
        """Delete leaf bytes (and filter columns but time) whose retention ended by ``now``."""

    async def close(self) -> None:
        """Release connections; pending calls fail with ``AuditStoreError``."""


# The longest the SQLite writer thread commits batch after batch before it lets the
# other work on its connection (checkpoints, retention) run.
DRAIN_MAX_SECONDS: Final = 1.0


def _sqlite_mark(_: int) -> str:
    return "?"


class SqliteAuditStore:
    """The embedded store: one SQLite file in WAL mode with ``synchronous=FULL``.

    A write thread owns the writing connection and a read thread its own, so
    officer queries never wait behind a commit. ``BEGIN IMMEDIATE`` takes the
    file's write lock, the sequencer for every process sharing the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-write")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-read")
        self._write_conn: sqlite3.Connection | None = None
        self._read_conn: sqlite3.Connection | None = None
        self._closed = False
        self._border = BorderCache()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=5.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    async def open(self) -> None:
        """Create the file and tables if needed; ``SetupError`` if the file is unusable."""
        try:
            await self._run(self._writer, self._open_writer)
            await self._run(self._reader, self._open_reader)
        except AuditStoreError as exc:
            await self.close()
            raise SetupError(str(self.path), f"cannot open the audit store: {exc}") from exc

    def _open_writer(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if "audit_records" in tables:
            conn.close()
            raise sqlite3.DatabaseError(
                "it holds a plain audit table from before the Merkle log; "
                "archive it and start a new store"
            )
        conn.executescript(SQLITE_SCHEMA)
        self._write_conn = conn

    def _open_reader(self) -> None:
        self._read_conn = self._connect()

    async def _run(self, executor: ThreadPoolExecutor, work: Callable[[], _T]) -> _T:
        if self._closed:
            raise AuditStoreError("the audit store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, work)
        except (sqlite3.Error, OSError, OverflowError) as exc:
            raise AuditStoreError(str(exc)) from exc
        except RuntimeError as exc:
            if self._closed:  # the executor shut down while the call waited
                raise AuditStoreError("the audit store is closed") from exc
            raise

    def _conn(self, conn: sqlite3.Connection | None) -> sqlite3.Connection:
        if conn is None:
            raise sqlite3.OperationalError("the audit store is closed")
        return conn

    async def append_batch(self, entries: Sequence[PendingEntry]) -> int:
        """Append in one ``BEGIN IMMEDIATE`` transaction; the first index."""
        return await self._run(self._writer, lambda: self._append_sync(entries))

    async def append_pending(self, queue: AppendQueue) -> None:
        """Commit ``queue``'s batches in the write thread, taking each as the last commits.

        The thread goes straight from one commit to the next batch, so a busy
        event loop delays only the delivery of results, never the next commit.
        It returns after :data:`DRAIN_MAX_SECONDS` even under constant load, so
        that checkpoints and retention, queued for the same connection, get
        their turn.
        """
        await self._run(self._writer, lambda: self._drain_sync(queue))

    def _drain_sync(self, queue: AppendQueue) -> None:
        deadline = time.monotonic() + DRAIN_MAX_SECONDS
        while entries := queue.take():
            try:
                first = self._append_sync(entries)
            except (sqlite3.Error, OSError, OverflowError) as exc:
                queue.settle(AuditStoreError(str(exc)))
            except Exception as exc:  # noqa: BLE001 - a bug fails this batch, not the writer
                queue.settle(exc)
            else:
                queue.settle(first)
            if time.monotonic() >= deadline:
                return

    def _append_sync(self, entries: Sequence[PendingEntry]) -> int:
        conn = self._conn(self._write_conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            first = _sqlite_size(conn)
            border = self._border.get(first)
            batch = build_batch(
                first, _sqlite_border(conn, first) if border is None else border, entries
            )
            conn.executemany(insert_leaves_sql(_sqlite_mark), batch.leaves)
            conn.executemany(
                "INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)", batch.nodes
            )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self._border.committed(first, batch)
        return first

    async def size(self) -> int:
        """The next index: one past the largest stored."""
        return await self._run(self._reader, lambda: _sqlite_size(self._conn(self._read_conn)))

    async def count(self, below: int | None = None) -> int:
        """How many leaf rows exist with index < ``below`` (all if None)."""
        limit = min(below, 1 << 62) if below is not None else 1 << 62

        def work() -> int:
            row = self._conn(self._read_conn).execute(
                "SELECT COUNT(*) FROM audit_leaves WHERE idx < ?", (limit,)
            )
            return int(row.fetchone()[0])

        return await self._run(self._reader, work)

    async def hashes(self, keys: Collection[NodeKey]) -> dict[NodeKey, bytes]:
        """Stored hashes of ``keys``."""
        return await self._run(
            self._reader, lambda: _sqlite_hashes(self._conn(self._read_conn), keys)
        )

    async def leaves(self, start: int, end: int) -> list[StoredLeaf]:
        """Leaves in ``[start, end)``."""
        end = min(end, (1 << 63) - 1)  # SQLite integers are signed 64-bit

        def work() -> list[StoredLeaf]:
            rows = self._conn(self._read_conn).execute(
                "SELECT idx, leaf_hash, leaf FROM audit_leaves"
                " WHERE idx >= ? AND idx < ? ORDER BY idx",
                (start, end),
            )
            return [_stored_leaf(row) for row in rows]

        return await self._run(self._reader, work)

    async def nodes(self, level: int, start: int, end: int) -> list[tuple[int, bytes]]:
        """Stored hashes of one level in ``[start, end)``."""

        def work() -> list[tuple[int, bytes]]:
            rows = self._conn(self._read_conn).execute(
                "SELECT idx, hash FROM audit_nodes"
                " WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx",
                (level, start, end),
            )
            return [(int(index), bytes(digest)) for index, digest in rows]

        return await self._run(self._reader, work)

    async def find(self, query: RecordQuery) -> list[StoredLeaf]:
        """One page of matching leaves."""
        sql, values = find_sql(query, _sqlite_mark)

        def work() -> list[StoredLeaf]:
            return [_stored_leaf(row) for row in self._conn(self._read_conn).execute(sql, values)]

        return await self._run(self._reader, work)

    async def add_checkpoint(
        self, sign: Callable[[int, bytes], str], min_size: int = 1
    ) -> StoredCheckpoint | None:
        """Sign the current tree under the write lock if it is larger than the last checkpoint."""
        return await self._run(self._writer, lambda: self._checkpoint_sync(sign, min_size))

    def _checkpoint_sync(
        self, sign: Callable[[int, bytes], str], min_size: int
    ) -> StoredCheckpoint | None:
        conn = self._conn(self._write_conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            size = _sqlite_size(conn)
            row = conn.execute("SELECT COALESCE(MAX(size), 0) FROM audit_checkpoints").fetchone()
            if size < max(min_size, int(row[0]) + 1):
                conn.execute("ROLLBACK")
                return None
            root = root_from_border(_sqlite_border(conn, size))
            note = sign(size, root)
            conn.execute(
                "INSERT INTO audit_checkpoints (size, root, note) VALUES (?, ?, ?)",
                (size, root, note),
            )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return StoredCheckpoint(size, root, note)

    async def checkpoints(self) -> list[StoredCheckpoint]:
        """Every checkpoint, smallest first."""

        def work() -> list[StoredCheckpoint]:
            rows = self._conn(self._read_conn).execute(
                "SELECT size, root, note FROM audit_checkpoints ORDER BY size"
            )
            return [StoredCheckpoint(int(s), bytes(r), str(n)) for s, r, n in rows]

        return await self._run(self._reader, work)

    async def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The largest checkpoint."""

        def work() -> StoredCheckpoint | None:
            row = (
                self._conn(self._read_conn)
                .execute(
                    "SELECT size, root, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1"
                )
                .fetchone()
            )
            return None if row is None else StoredCheckpoint(int(row[0]), bytes(row[1]), row[2])

        return await self._run(self._reader, work)

    async def expire(self, now: str) -> int:
        """Delete expired leaf bytes and filter columns; the leaf hash stays."""

        def work() -> int:
            cursor = self._conn(self._write_conn).execute(expire_sql(_sqlite_mark), (now,))
            return int(cursor.rowcount)

        return await self._run(self._writer, work)

    async def close(self) -> None:
        """Close both connections and stop the threads."""
        for executor, name in ((self._writer, "_write_conn"), (self._reader, "_read_conn")):
            conn = getattr(self, name)
            setattr(self, name, None)
            if conn is not None:
                with contextlib.suppress(AuditStoreError):
                    await self._run(executor, conn.close)
            executor.shutdown(wait=True)
        self._closed = True


def _sqlite_size(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_leaves").fetchone()[0])


def _sqlite_border(conn: sqlite3.Connection, size: int) -> list[bytes]:
    """The hashes of ``border_nodes(size)``; a missing one is a database fault, not a KeyError."""
    keys = border_nodes(size)
    found = _sqlite_hashes(conn, keys)
    missing = [key for key in keys if key not in found]
    if missing:
        raise sqlite3.DatabaseError(
            f"the stored tree of {size} leaves lacks its border node {missing[0]}"
        )
    return [found[key] for key in keys]


def _sqlite_hashes(conn: sqlite3.Connection, keys: Collection[NodeKey]) -> dict[NodeKey, bytes]:
    found: dict[NodeKey, bytes] = {}
    for level, index in keys:
        if level == 0:
            row = conn.execute("SELECT leaf_hash FROM audit_leaves WHERE idx = ?", (index,))
        else:
            row = conn.execute(
                "SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?", (level, index)
            )
        value = row.fetchone()
        if value is not None:
            found[(level, index)] = bytes(value[0])
    return found


def _stored_leaf(row: tuple[int, bytes, bytes | None]) -> StoredLeaf:
    index, digest, leaf = row
    return StoredLeaf(int(index), bytes(digest), None if leaf is None else bytes(leaf))


def open_store(url: str, base_dir: Path) -> AuditStore:
    """The store a URL names: ``sqlite:relative.db``, ``sqlite:///abs.db`` or ``postgresql://...``."""
    parsed = urlparse(url)
    if parsed.scheme in ("postgresql", "postgres"):
        # asyncpg is loaded only by agencies that use PostgreSQL.
        from gateway.audit.postgres import PostgresAuditStore  # noqa: PLC0415

        return PostgresAuditStore(url)
    if parsed.scheme != "sqlite":
        raise SetupError(
            "audit.store", f"unsupported store scheme {parsed.scheme!r}: use sqlite or postgresql"
        )
    raw = parsed.path if parsed.netloc == "" else parsed.netloc + parsed.path
    if not raw:
        raise SetupError("audit.store", "the sqlite URL names no file")
    path = Path(raw)
    return SqliteAuditStore(path if path.is_absolute() else base_dir / path)
