"""Replay ids and rate-limit buckets shared by every process of one gateway.

One gateway process keeps both in memory (:class:`~gateway.replay.MemoryReplayCache`,
:class:`~gateway.ratelimit.RateLimiter`). When several processes answer for one
agency (``gateway serve --workers N``, or instances on one PostgreSQL audit
store), a message id spent in one process must be spent in all of them, and a
contract's rate limit must be one bucket, not one per process. A
:class:`SharedState` keeps both where every process sees them:

* :class:`SqliteSharedState`: one SQLite file beside the audit store (WAL,
  ``synchronous=NORMAL``), for the processes of one machine;
* :class:`~gateway.state_postgres.PostgresSharedState`: two tables in the
  audit store's PostgreSQL database, for several machines.

Each spend and each token taken is one short write transaction. The SQLite
statements run on the event loop itself (a thread hop would cost three times
the statement); they never wait there: the connection has no busy timeout, and
a statement that finds the file's write lock taken by another process is
retried after an ``asyncio.sleep``, so other requests go on meanwhile. Purging
expired ids, dropping refilled buckets, counting and WAL checkpoints (which
fsync) run on a thread of their own. A store that cannot be written refuses
the message with 503 ``overloaded``: a replay check that cannot be made fails
closed. See docs/adr/0006-worker-processes.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn, Protocol, TypeVar
from urllib.parse import urlparse

from gateway.errors import Overloaded, SetupError
from gateway.jose import CLOCK_SKEW_SECONDS
from gateway.observability import get_logger
from gateway.ratelimit import TokenBucket

if TYPE_CHECKING:
    from gateway.config import GatewaySettings

_T = TypeVar("_T")

# How long one spend or take may wait for another process's write lock before
# the message is refused (503); the lock is normally held for microseconds.
LOCK_WAIT_SECONDS: Final = 2.0
# Another process holds the write lock for some 20 us. A locked write is first retried
# this many times after the event loop ran the other ready tasks (no spinning: on a busy
# loop that is real work), then after sleeps of 1, 2, 4 ... 10 ms (the loop's timer
# cannot sleep less than a millisecond).
YIELDS_BEFORE_SLEEPING: Final = 3
# Purged at most this many rows per statement, so that no purge holds the write lock long.
PURGE_CHUNK: Final = 2000
# The number of remembered ids (the capacity check and the metric) is counted this often.
COUNT_EVERY_SECONDS: Final = 10.0

SQLITE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS replay_ids (
    issuer TEXT NOT NULL,
    jti    TEXT NOT NULL,
    until  INTEGER NOT NULL,
    PRIMARY KEY (issuer, jti)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS replay_ids_until ON replay_ids (until);
CREATE TABLE IF NOT EXISTS rate_buckets (
    contract    TEXT PRIMARY KEY,
    capacity    INTEGER NOT NULL,
    per_seconds INTEGER NOT NULL,
    tokens      REAL NOT NULL,
    updated     REAL NOT NULL
) WITHOUT ROWID;
"""

# A (issuer, jti) is new when no row holds it, or the row's window has ended
# (``until < now``, as the memory cache forgets it): one statement, one row changed.
_SPEND_SQL: Final = (
    "INSERT INTO replay_ids (issuer, jti, until) VALUES (?, ?, ?)"
    " ON CONFLICT (issuer, jti) DO UPDATE SET until = excluded.until"
    " WHERE replay_ids.until < ?"
)
# The common case of a take: the bucket exists with these limits and holds a token.
# The arithmetic is TokenBucket.take's, in the same order (both are IEEE doubles).
_TAKE_SQL: Final = (
    "UPDATE rate_buckets"
    " SET tokens = MIN(capacity, tokens + MAX(0, ?1 - updated) * (capacity * 1.0 / per_seconds))"
    " - 1, updated = MAX(updated, ?1)"
    " WHERE contract = ?2 AND capacity = ?3 AND per_seconds = ?4"
    " AND MIN(capacity, tokens + MAX(0, ?1 - updated) * (capacity * 1.0 / per_seconds)) >= 1"
)
_BUCKET_SQL: Final = (
    "SELECT capacity, per_seconds, tokens, updated FROM rate_buckets WHERE contract = ?"
)
_PUT_BUCKET_SQL: Final = (
    "INSERT INTO rate_buckets (contract, capacity, per_seconds, tokens, updated)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (contract) DO UPDATE SET"
    " capacity = excluded.capacity, per_seconds = excluded.per_seconds,"
    " tokens = excluded.tokens, updated = excluded.updated"
)
_PURGE_IDS_SQL: Final = (
    "DELETE FROM replay_ids WHERE (issuer, jti) IN"
    " (SELECT issuer, jti FROM replay_ids WHERE until < ? LIMIT ?)"
)
# A bucket untouched for per_seconds is full again: exactly what a missing bucket is.
_PURGE_BUCKETS_SQL: Final = "DELETE FROM rate_buckets WHERE updated + per_seconds <= ?"


class SharedState(Protocol):
    """A replay cache and a set of rate-limit buckets that several processes share."""

    description: str

    async def open(self) -> None:
        """Connect, create what is missing, start the housekeeping; ``SetupError`` if unusable."""

    async def spend(self, issuer: str, jti: str, exp: int, now: int) -> bool:
        """Record (``issuer``, ``jti``) as spent until ``exp`` + skew; False if it was spent."""

    def __len__(self) -> int:
        """Ids remembered by all processes, as last counted."""

    async def acquire(self, contract: str, requests: int, per_seconds: int, now: float) -> int:
        """Take a token from ``contract``'s shared bucket; 0 or the ``Retry-After`` seconds."""

    def retain(self, contracts: set[str]) -> None:
        """Nothing to do: buckets are dropped once full again (a missing bucket is full)."""

    async def housekeep(self) -> None:
        """Purge ended ids and full buckets and count the ids now (the task does it regularly)."""

    async def close(self) -> None:
        """Stop the housekeeping and release the connections."""


def _busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # pragma: no cover - Python 3.11+ always sets it
        return "locked" in str(exc)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SqliteSharedState:
    """Replay ids and buckets in one SQLite file that the processes of a machine share."""

    def __init__(
        self,
        path: Path,
        *,
        capacity: int,
        clock: Callable[[], float] = time.time,
        purge_seconds: float = 1.0,
        lock_wait_seconds: float = LOCK_WAIT_SECONDS,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.path = path
        self.description = f"sqlite:{path}"
        self._capacity = capacity
        self._clock = clock
        self._purge_seconds = purge_seconds
        self._lock_wait = lock_wait_seconds
        # The event loop's connection: spends and takes, never a wait for a lock.
        self._conn: sqlite3.Connection | None = None
        # The housekeeping thread's connection: purges, counts, checkpoints.
        self._maintenance = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state")
        self._maint_conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._count = 0
        self._counted_at = float("-inf")
        self._full = False
        self._failing = False
        self._log = get_logger(component="state", store=self.description)

    # -- life cycle ----------------------------------------------------------

    async def open(self) -> None:
        """Create the file and tables if needed (WAL), then start the housekeeping."""
        try:
            await self._in_thread(self._open_maintenance)
            self._conn = self._connect(busy_timeout=0.0)
            await self._in_thread(self._recount)
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise SetupError(str(self.path), f"cannot open the shared state store: {exc}") from exc
        self._task = asyncio.create_task(self._housekeeping(), name="state-housekeeping")

    def _connect(self, *, busy_timeout: float) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, timeout=busy_timeout, check_same_thread=False
        )
        # NORMAL in WAL mode: a commit survives the process, maybe not the machine (ADR 0006).
        conn.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints fsync: the housekeeping thread runs them, never a spend.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        return conn

    def _open_maintenance(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect(busy_timeout=5.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SQLITE_SCHEMA)
        self._maint_conn = conn

    async def close(self) -> None:
        """Stop the housekeeping, close both connections."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        maint, self._maint_conn = self._maint_conn, None
        if maint is not None:
            with contextlib.suppress(sqlite3.Error, RuntimeError):
                await self._in_thread(maint.close)
        self._maintenance.shutdown(wait=True)

    async def _in_thread(self, work: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._maintenance, work)

    # -- the two operations ----------------------------------------------------

    def __len__(self) -> int:
        return self._count

    async def spend(self, issuer: str, jti: str, exp: int, now: int) -> bool:
        """One ``INSERT ... ON CONFLICT`` statement: True when it changed a row."""
        if self._full:
            # Forgetting an unexpired id would allow its replay: refuse new ones instead.
            if await self._write(self._exists, issuer, jti, now):
                return False
            raise Overloaded("the replay window is full", retry_after=CLOCK_SKEW_SECONDS)
        return await self._write(self._spend_sync, issuer, jti, exp + CLOCK_SKEW_SECONDS, now)

    def _spend_sync(self, issuer: str, jti: str, until: int, now: int) -> bool:
        cursor = self._open_conn().execute(_SPEND_SQL, (issuer, jti, until, now))
        return cursor.rowcount == 1

    def _exists(self, issuer: str, jti: str, now: int) -> bool:
        row = (
            self._open_conn()
            .execute(
                "SELECT 1 FROM replay_ids WHERE issuer = ? AND jti = ? AND until >= ?",
                (issuer, jti, now),
            )
            .fetchone()
        )
        return row is not None

    async def acquire(self, contract: str, requests: int, per_seconds: int, now: float) -> int:
        """One ``UPDATE`` when the bucket holds a token; else a short transaction."""
        granted = await self._write(self._take_fast, contract, requests, per_seconds, now)
        if granted:
            return 0
        return await self._write(self._take_slow, contract, requests, per_seconds, now)

    def _take_fast(self, contract: str, requests: int, per_seconds: int, now: float) -> bool:
        cursor = self._open_conn().execute(_TAKE_SQL, (float(now), contract, requests, per_seconds))
        return cursor.rowcount == 1

    def _take_slow(self, contract: str, requests: int, per_seconds: int, now: float) -> int:
        """No bucket, other limits, or no token: decide under the write lock, as the memory one."""
        conn = self._open_conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(_BUCKET_SQL, (contract,)).fetchone()
            if row is not None and (int(row[0]), int(row[1])) == (requests, per_seconds):
                bucket = TokenBucket(requests, per_seconds, float(row[2]), float(row[3]))
            else:
                bucket = TokenBucket.full(requests, per_seconds, now)
            wait = bucket.take(now)
            conn.execute(
                _PUT_BUCKET_SQL, (contract, requests, per_seconds, bucket.tokens, bucket.updated)
            )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return wait

    def retain(self, contracts: set[str]) -> None:
        """Nothing: the housekeeping drops each bucket once it is full again."""

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.OperationalError("the shared state store is closed")
        return self._conn

    async def _write(self, work: Callable[..., _T], *args: object) -> _T:
        """Run ``work`` on the loop; while another process holds the lock, sleep and retry."""
        first_busy: float | None = None
        attempts = 0
        while True:
            try:
                result = work(*args)
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    self._failed(exc)
                now = time.monotonic()
                if first_busy is None:
                    first_busy = now
                waited = now - first_busy
                if waited >= self._lock_wait:
                    self._failed(exc)
                if attempts < YIELDS_BEFORE_SLEEPING:
                    await asyncio.sleep(0)  # only let the other ready tasks run
                else:
                    await asyncio.sleep(min(0.001 * 2 ** (attempts - YIELDS_BEFORE_SLEEPING), 0.01))
                attempts += 1
                continue
            except sqlite3.Error as exc:
                self._failed(exc)
            if self._failing:
                self._failing = False
                self._log.info("state_store_recovered")
            return result

    def _failed(self, exc: sqlite3.Error) -> NoReturn:
        if not self._failing:
            self._failing = True
            self._log.error("state_store_failed", reason=str(exc))
        raise Overloaded("the replay window cannot be checked now", retry_after=1) from exc

    # -- housekeeping -------------------------------------------------------------

    async def housekeep(self) -> None:
        """One round of what the background task does every ``purge_seconds``, and a count."""
        await self._in_thread(lambda: self._purge(count=True))

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self._purge_seconds)
            try:
                await self._in_thread(self._purge)
            except sqlite3.Error as exc:
                self._log.warning("state_housekeeping_failed", reason=str(exc))

    def _purge(self, *, count: bool = False) -> None:
        """Delete ended ids in chunks and full buckets; count now and then; checkpoint."""
        conn = self._maint()
        now = int(self._clock())
        while conn.execute(_PURGE_IDS_SQL, (now, PURGE_CHUNK)).rowcount == PURGE_CHUNK:
            pass
        conn.execute(_PURGE_BUCKETS_SQL, (now,))
        if count or self._full or time.monotonic() - self._counted_at >= COUNT_EVERY_SECONDS:
            self._recount()
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _recount(self) -> None:
        row = self._maint().execute("SELECT COUNT(*) FROM replay_ids").fetchone()
        self._count = int(row[0])
        self._counted_at = time.monotonic()
        full = self._count >= self._capacity
        if full != self._full:
            self._full = full
            if full:
                self._log.warning("replay_window_full", entries=self._count)

    def _maint(self) -> sqlite3.Connection:
        if self._maint_conn is None:
            raise sqlite3.OperationalError("the shared state store is closed")
        return self._maint_conn


# -- which store -------------------------------------------------------------------


def resolve_state_store(settings: GatewaySettings, workers: int) -> str:
    """The store ``state.store`` names, ``auto`` resolved for ``workers`` processes.

    ``auto`` is ``memory`` for one process on a SQLite audit store, a SQLite
    file beside the audit store (``audit.db`` -> ``audit-state.db``) for
    several, and the audit store's own database when it is PostgreSQL (whose
    point is several gateway instances on one log).
    """
    configured = settings.state.store
    if configured == "memory" and workers > 1:
        raise SetupError(
            "state.store",
            f"memory is per process: with {workers} worker processes a message replayed to "
            "another worker would pass; use auto, sqlite:PATH or a postgresql:// URL",
        )
    if configured != "auto":
        return configured
    audit = settings.audit.store
    if urlparse(audit).scheme in ("postgresql", "postgres"):
        return audit
    if workers <= 1:
        return "memory"
    path = _sqlite_path(audit, settings.base_dir, "audit.store")
    suffix = path.suffix or ".db"
    return f"sqlite:{path.with_name(path.stem + '-state' + suffix)}"


def _sqlite_path(url: str, base_dir: Path, field: str) -> Path:
    parsed = urlparse(url)
    raw = parsed.path if parsed.netloc == "" else parsed.netloc + parsed.path
    if not raw:
        raise SetupError(field, "the sqlite URL names no file")
    path = Path(raw)
    return path if path.is_absolute() else base_dir / path


def open_shared_state(
    settings: GatewaySettings, workers: int, clock: Callable[[], float] = time.time
) -> SharedState | None:
    """The shared store for ``workers`` processes (not yet opened), or None for memory."""
    url = resolve_state_store(settings, workers)
    scheme = urlparse(url).scheme
    capacity = settings.limits.replay_cache_size
    purge = settings.state.purge_seconds
    if url == "memory":
        return None
    if scheme in ("postgresql", "postgres"):
        from gateway.state_postgres import PostgresSharedState  # noqa: PLC0415 - asyncpg

        return PostgresSharedState(url, capacity=capacity, clock=clock, purge_seconds=purge)
    if scheme == "sqlite":
        path = _sqlite_path(url, settings.base_dir, "state.store")
        return SqliteSharedState(path, capacity=capacity, clock=clock, purge_seconds=purge)
    raise SetupError(  # pragma: no cover - the config's validator allows only these
        "state.store", f"unsupported store {scheme!r}: use memory, sqlite or postgresql"
    )
