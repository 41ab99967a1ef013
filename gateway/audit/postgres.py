"""The PostgreSQL audit store: the same three tables as SQLite, shared by many gateways.

Several gateway processes may append to one log in one database: every
append (and every checkpoint) runs in one READ COMMITTED transaction that
first takes a transaction-scoped advisory lock, the log's sequencer, and only
then reads the tree's size and right border. READ COMMITTED matters: each
statement sees what committed before it started, so the reads after the lock
see the previous holder's rows (under REPEATABLE READ the snapshot would date
from the lock statement, taken before the wait ended).

The tables live in the first schema of the connection's ``search_path``. To
pick a schema, put it in the URL as libpq does, ``?options=-csearch_path%3Dname``
(asyncpg sends ``options`` in the startup packet, so the same URL works with
psql); asyncpg also sends any other unknown query parameter as a server
setting, so ``?search_path=name`` works too (but not with libpq).
``synchronous_commit`` is left as the server has it: the server's default,
``on``, is what makes a returned append durable.

Rows go in inside the append's transaction: a pipelined ``executemany`` for
small batches, ``COPY`` from :data:`COPY_THRESHOLD` rows on, whichever is
faster at that size. ``time`` and ``expires_at`` compare bytewise
(``COLLATE "C"``), as in SQLite, whatever the database's locale.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Final
from urllib.parse import unquote, unquote_plus

import asyncpg

from gateway.audit.merkle import NodeKey, border_nodes, root_from_border
from gateway.audit.query import RecordQuery
from gateway.audit.store import (
    LEAF_COLUMNS,
    AppendQueue,
    AuditStoreError,
    BorderCache,
    PendingEntry,
    StoredCheckpoint,
    StoredLeaf,
    build_batch,
    drain_async,
    expire_sql,
    find_sql,
    insert_leaves_sql,
    schema_sql,
)
from gateway.errors import SetupError

# The sequencer: pg_advisory_xact_lock's 64-bit key, the first 8 bytes (signed,
# big-endian) of SHA-256("gateway-audit"). One key per database: two logs kept
# in two schemas of one database share it, which only serialises their appends.
SEQUENCER_LOCK_KEY: Final = int.from_bytes(
    hashlib.sha256(b"gateway-audit").digest()[:8], "big", signed=True
)

POOL_MIN_SIZE: Final = 1
POOL_MAX_SIZE: Final = 4
CONNECT_TIMEOUT: Final = 10.0
# A statement (a wait for the sequencer included) that takes longer fails the call:
# the log then answers AuditUnavailable instead of holding every exchange.
COMMAND_TIMEOUT: Final = 30.0
# How long close() lets running calls finish before it cuts their connections.
CLOSE_TIMEOUT: Final = 10.0

# From this many rows COPY inserts faster than a pipelined executemany (measured
# on loopback: 0.64 against 0.78 ms for 1 leaf, 12.6 against 7.6 ms for 512).
COPY_THRESHOLD: Final = 32

_INT64_MAX: Final = (1 << 63) - 1

POSTGRES_SCHEMA: Final = schema_sql(integer="BIGINT", blob="BYTEA", sorted_text='TEXT COLLATE "C"')

_LOCK_SQL: Final = "SELECT pg_advisory_xact_lock($1)"
_SIZE_SQL: Final = "SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_leaves"
_NODE_COLUMNS: Final = ("level", "idx", "hash")
_INSERT_NODES_SQL: Final = "INSERT INTO audit_nodes (level, idx, hash) VALUES ($1, $2, $3)"
_LAST_CHECKPOINT_SQL: Final = "SELECT COALESCE(MAX(size), 0) FROM audit_checkpoints"
_HASHES_SQL: Final = """
SELECT 0, idx, leaf_hash FROM audit_leaves WHERE idx = ANY($1::bigint[])
UNION ALL
SELECT n.level, n.idx, n.hash
FROM audit_nodes AS n
JOIN unnest($2::integer[], $3::bigint[]) AS k (level, idx)
    ON n.level = k.level AND n.idx = k.idx
"""
# Everything asyncpg, the socket or a timeout can raise; translated to AuditStoreError.
_FOREIGN: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

_Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


def _mark(n: int) -> str:
    return f"${n}"


_INSERT_LEAVES_SQL: Final = insert_leaves_sql(_mark)
_EXPIRE_SQL: Final = expire_sql(_mark)


def _url_secrets(url: str) -> list[str]:
    """The password of ``url`` as written and decoded, from its user part and its query.

    Parsed by hand, not with urlsplit, so that a URL too broken to parse still
    has its password found (and kept out of every message).
    """
    rest = url.partition("://")[2]
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    userinfo, at, _ = netloc.rpartition("@")
    found = {userinfo.partition(":")[2]} if at else set()
    query = url.partition("?")[2].partition("#")[0]
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if unquote_plus(name) == "password":
            found |= {value, unquote_plus(value)}
    found |= {unquote(secret) for secret in found}
    found.discard("")
    # Longest first, so a password that contains another is replaced whole.
    return sorted(found, key=len, reverse=True)


class PostgresAuditStore:
    """The audit store in PostgreSQL (asyncpg): a small pool, an advisory-lock sequencer."""

    def __init__(
        self,
        url: str,
        *,
        min_size: int = POOL_MIN_SIZE,
        max_size: int = POOL_MAX_SIZE,
        connect_timeout: float = CONNECT_TIMEOUT,
        command_timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        self._url = url
        self._secrets = _url_secrets(url)
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        self._border_cache = BorderCache()

    def __repr__(self) -> str:
        return f"PostgresAuditStore({self._redact(self._url)!r})"

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _describe(self, exc: BaseException) -> str:
        text = str(exc).strip() or type(exc).__name__
        return self._redact(text)

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except _FOREIGN as exc:
            raise AuditStoreError(f"PostgreSQL: {self._describe(exc)}") from exc

    def _open_pool(self) -> asyncpg.Pool:
        pool = self._pool
        if pool is None:
            raise AuditStoreError("the audit store is closed")
        return pool

    # -- life cycle --------------------------------------------------------

    async def open(self) -> None:
        """Connect the pool and create the tables; ``SetupError`` if the database is unusable."""
        if self._pool is not None:
            return
        pool: asyncpg.Pool | None = None
        try:
            pool = await asyncpg.create_pool(
                self._url,
                min_size=self._min_size,
                max_size=self._max_size,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
            )
            async with pool.acquire() as conn, conn.transaction(isolation="read_committed"):
                # CREATE ... IF NOT EXISTS races with itself across sessions: serialise it.
                await conn.execute(_LOCK_SQL, SEQUENCER_LOCK_KEY)
                schema = await conn.fetchval("SELECT current_schema()")
                if schema is None:
                    raise SetupError(
                        "audit.store",
                        "cannot open the PostgreSQL audit store: no schema of the"
                        " search_path exists",
                    )
                await conn.execute(POSTGRES_SCHEMA)
        except (*_FOREIGN, ValueError, TypeError) as exc:
            if pool is not None:
                pool.terminate()
            # The cause is not chained: asyncpg's message may quote the URL.
            raise SetupError(
                "audit.store",
                f"cannot open the PostgreSQL audit store: {self._describe(exc)}",
            ) from None
        except BaseException:
            if pool is not None:
                pool.terminate()
            raise
        self._pool = pool

    async def close(self) -> None:
        """Close the pool; calls still running get ``AuditStoreError``, later ones too."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
        except _FOREIGN:
            # A call that would not finish, or a connection already broken: cut them all.
            pool.terminate()
        except BaseException:
            pool.terminate()
            raise

    # -- the sequencer -----------------------------------------------------

    async def append_batch(self, entries: Sequence[PendingEntry]) -> int:
        """Append ``entries`` under the advisory lock in one transaction; the first index."""
        pool = self._open_pool()
        with self._translated():
            async with pool.acquire() as conn, conn.transaction(isolation="read_committed"):
                await conn.execute(_LOCK_SQL, SEQUENCER_LOCK_KEY)
                first = int(await conn.fetchval(_SIZE_SQL))
                border = self._border_cache.get(first)
                if border is None:
                    border = await self._border(conn, first)
                batch = build_batch(first, border, entries)
                await _insert(conn, "audit_leaves", LEAF_COLUMNS, _INSERT_LEAVES_SQL, batch.leaves)
                await _insert(conn, "audit_nodes", _NODE_COLUMNS, _INSERT_NODES_SQL, batch.nodes)
        # Only now is the transaction committed; a failure or cancellation above skips this.
        self._border_cache.committed(first, batch)
        return first

    async def append_pending(self, queue: AppendQueue) -> None:
        """Commit ``queue``'s batches, one transaction each, until it is empty."""
        await drain_async(queue, self.append_batch)

    async def add_checkpoint(
        self, sign: Callable[[int, bytes], str], min_size: int = 1
    ) -> StoredCheckpoint | None:
        """Under the advisory lock, sign the current tree if it grew past the last checkpoint."""
        pool = self._open_pool()
        with self._translated():
            async with pool.acquire() as conn, conn.transaction(isolation="read_committed"):
                await conn.execute(_LOCK_SQL, SEQUENCER_LOCK_KEY)
                size = int(await conn.fetchval(_SIZE_SQL))
                last = int(await conn.fetchval(_LAST_CHECKPOINT_SQL))
                if size < max(min_size, last + 1):
                    return None
                root = root_from_border(await self._border(conn, size))
                note = sign(size, root)
                await conn.execute(
                    "INSERT INTO audit_checkpoints (size, root, note) VALUES ($1, $2, $3)",
                    size,
                    root,
                    note,
                )
        return StoredCheckpoint(size, root, note)

    async def _border(self, conn: _Conn, size: int) -> list[bytes]:
        keys = border_nodes(size)
        found = await _fetch_hashes(conn, keys)
        missing = [key for key in keys if key not in found]
        if missing:
            raise AuditStoreError(
                f"the stored tree of {size} leaves lacks its border node {missing[0]}"
            )
        return [found[key] for key in keys]

    # -- reads -------------------------------------------------------------

    async def size(self) -> int:
        """The next index: one past the largest stored."""
        pool = self._open_pool()
        with self._translated():
            return int(await pool.fetchval(_SIZE_SQL))

    async def count(self, below: int | None = None) -> int:
        """How many leaf rows exist with index < ``below`` (all if None)."""
        limit = min(below, 1 << 62) if below is not None else 1 << 62
        pool = self._open_pool()
        with self._translated():
            return int(
                await pool.fetchval("SELECT COUNT(*) FROM audit_leaves WHERE idx < $1", limit)
            )

    async def hashes(self, keys: Collection[NodeKey]) -> dict[NodeKey, bytes]:
        """Stored hashes of ``keys`` (level 0 from the leaves); missing keys are absent."""
        pool = self._open_pool()
        with self._translated():
            async with pool.acquire() as conn:
                return await _fetch_hashes(conn, keys)

    async def leaves(self, start: int, end: int) -> list[StoredLeaf]:
        """Leaves in ``[start, end)``, by index."""
        pool = self._open_pool()
        start, end = _clamp(start), _clamp(end)
        with self._translated():
            rows = await pool.fetch(
                "SELECT idx, leaf_hash, leaf FROM audit_leaves"
                " WHERE idx >= $1 AND idx < $2 ORDER BY idx",
                start,
                end,
            )
        return [_stored_leaf(row) for row in rows]

    async def nodes(self, level: int, start: int, end: int) -> list[tuple[int, bytes]]:
        """Stored hashes of one level in ``[start, end)``, by index."""
        pool = self._open_pool()
        if not 0 < level < 64:
            return []
        start, end = _clamp(start), _clamp(end)
        with self._translated():
            rows = await pool.fetch(
                "SELECT idx, hash FROM audit_nodes"
                " WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
                level,
                start,
                end,
            )
        return [(int(row[0]), bytes(row[1])) for row in rows]

    async def find(self, query: RecordQuery) -> list[StoredLeaf]:
        """One page of leaves matching ``query``, in its order."""
        pool = self._open_pool()
        sql, values = find_sql(query, _mark)
        with self._translated():
            rows = await pool.fetch(sql, *values)
        return [_stored_leaf(row) for row in rows]

    async def checkpoints(self) -> list[StoredCheckpoint]:
        """Every checkpoint, smallest first."""
        pool = self._open_pool()
        with self._translated():
            rows = await pool.fetch("SELECT size, root, note FROM audit_checkpoints ORDER BY size")
        return [_stored_checkpoint(row) for row in rows]

    async def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The checkpoint of the largest tree."""
        pool = self._open_pool()
        with self._translated():
            row = await pool.fetchrow(
                "SELECT size, root, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1"
            )
        return None if row is None else _stored_checkpoint(row)

    # -- retention ---------------------------------------------------------

    async def expire(self, now: str) -> int:
        """Delete expired leaf bytes and filter columns (``time`` and the hash stay)."""
        pool = self._open_pool()
        with self._translated():
            status = await pool.execute(_EXPIRE_SQL, now)
        # The command tag is "UPDATE <rows>".
        return int(status.rsplit(" ", 1)[-1])


async def _insert(
    conn: _Conn,
    table: str,
    columns: Sequence[str],
    sql: str,
    rows: Sequence[tuple[object, ...]],
) -> None:
    """Insert ``rows`` inside the caller's transaction: COPY for many, a pipeline for few."""
    if len(rows) >= COPY_THRESHOLD:
        await conn.copy_records_to_table(table, records=rows, columns=list(columns))
    elif rows:
        await conn.executemany(sql, rows)


async def _fetch_hashes(conn: _Conn, keys: Collection[NodeKey]) -> dict[NodeKey, bytes]:
    # Keys outside what the columns hold cannot be stored: they are simply missing.
    leaves = [index for level, index in keys if level == 0 and 0 <= index <= _INT64_MAX]
    inner = [(level, index) for level, index in keys if 0 < level < 64 and 0 <= index <= _INT64_MAX]
    if not leaves and not inner:
        return {}
    rows = await conn.fetch(
        _HASHES_SQL,
        leaves,
        [level for level, _ in inner],
        [index for _, index in inner],
    )
    return {(int(row[0]), int(row[1])): bytes(row[2]) for row in rows}


def _clamp(index: int) -> int:
    return min(max(index, 0), _INT64_MAX)


def _stored_leaf(row: asyncpg.Record) -> StoredLeaf:
    leaf = row[2]
    return StoredLeaf(int(row[0]), bytes(row[1]), None if leaf is None else bytes(leaf))


def _stored_checkpoint(row: asyncpg.Record) -> StoredCheckpoint:
    return StoredCheckpoint(int(row[0]), bytes(row[1]), str(row[2]))
