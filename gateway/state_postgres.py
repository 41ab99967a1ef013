"""Replay ids and rate-limit buckets in PostgreSQL, shared by gateway instances on many machines.

The tables ``replay_ids`` and ``rate_buckets`` live beside the audit tables
(the first schema of the connection's ``search_path``). A spend is one
``INSERT ... ON CONFLICT ... RETURNING`` statement, a take one ``UPDATE`` when
the bucket holds a token, else one short transaction that locks the bucket's
row. The sessions run with ``synchronous_commit = off``, the counterpart of
SQLite's ``synchronous=NORMAL``: a commit can be lost only with the server's
machine, never half-applied (ADR 0006).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Final

import asyncpg

from gateway.audit.postgres import _url_secrets
from gateway.errors import Overloaded, SetupError
from gateway.jose import CLOCK_SKEW_SECONDS
from gateway.observability import get_logger
from gateway.ratelimit import TokenBucket
from gateway.state import COUNT_EVERY_SECONDS

# CREATE TABLE IF NOT EXISTS races with itself across sessions: serialised by this lock.
SCHEMA_LOCK_KEY: Final = int.from_bytes(
    hashlib.sha256(b"gateway-state").digest()[:8], "big", signed=True
)
POOL_MAX_SIZE: Final = 8
CONNECT_TIMEOUT: Final = 10.0
# A spend or take slower than this refuses its message (503) rather than hold it.
COMMAND_TIMEOUT: Final = 5.0

POSTGRES_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS replay_ids (
    issuer TEXT NOT NULL,
    jti    TEXT NOT NULL,
    until  BIGINT NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX IF NOT EXISTS replay_ids_until ON replay_ids (until);
CREATE TABLE IF NOT EXISTS rate_buckets (
    contract    TEXT PRIMARY KEY,
    capacity    INTEGER NOT NULL,
    per_seconds INTEGER NOT NULL,
    tokens      DOUBLE PRECISION NOT NULL,
    updated     DOUBLE PRECISION NOT NULL
);
"""
_SPEND_SQL: Final = (
    "INSERT INTO replay_ids (issuer, jti, until) VALUES ($1, $2, $3)"
    " ON CONFLICT (issuer, jti) DO UPDATE SET until = EXCLUDED.until"
    " WHERE replay_ids.until < $4 RETURNING 1"
)
_EXISTS_SQL: Final = "SELECT 1 FROM replay_ids WHERE issuer = $1 AND jti = $2 AND until >= $3"
_REFILLED: Final = (
    "LEAST(capacity, tokens + GREATEST(0, $1::float8 - updated) * (capacity::float8 / per_seconds))"
)
_TAKE_SQL: Final = (
    f"UPDATE rate_buckets SET tokens = {_REFILLED} - 1,"  # noqa: S608 - constant text
    " updated = GREATEST(updated, $1::float8)"
    f" WHERE contract = $2 AND capacity = $3 AND per_seconds = $4 AND {_REFILLED} >= 1"
    " RETURNING 1"
)
_NEW_BUCKET_SQL: Final = (
    "INSERT INTO rate_buckets (contract, capacity, per_seconds, tokens, updated)"
    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (contract) DO NOTHING"
)
_LOCK_BUCKET_SQL: Final = (
    "SELECT capacity, per_seconds, tokens, updated FROM rate_buckets WHERE contract = $1 FOR UPDATE"
)
_PUT_BUCKET_SQL: Final = (
    "UPDATE rate_buckets SET capacity = $2, per_seconds = $3, tokens = $4, updated = $5"
    " WHERE contract = $1"
)
_FOREIGN: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


class PostgresSharedState:
    """The shared replay cache and buckets in the audit store's PostgreSQL database."""

    def __init__(
        self,
        url: str,
        *,
        capacity: int,
        clock: Callable[[], float] = time.time,
        purge_seconds: float = 1.0,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self._url = url
        self._secrets = _url_secrets(url)
        self.description = f"postgresql {self._redact(url)}"
        self._capacity = capacity
        self._clock = clock
        self._purge_seconds = purge_seconds
        self._pool: asyncpg.Pool | None = None
        self._task: asyncio.Task[None] | None = None
        self._count = 0
        self._counted_at = float("-inf")
        self._full = False
        self._failing = False
        self._log = get_logger(component="state", store="postgresql")

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # -- life cycle ----------------------------------------------------------

    async def open(self) -> None:
        """Connect, create the tables, count, start the housekeeping."""
        pool: asyncpg.Pool | None = None
        try:
            pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=POOL_MAX_SIZE,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
                server_settings={"synchronous_commit": "off"},
            )
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_KEY)
                await conn.execute(POSTGRES_SCHEMA)
            self._pool = pool
            await self._housekeep(count=True)
        except (*_FOREIGN, ValueError, TypeError) as exc:
            self._pool = None
            if pool is not None:
                pool.terminate()
            text = self._redact(str(exc).strip() or type(exc).__name__)
            raise SetupError(
                "state.store", f"cannot open the PostgreSQL shared state store: {text}"
            ) from None
        self._task = asyncio.create_task(self._housekeeping(), name="state-housekeeping")

    async def close(self) -> None:
        """Stop the housekeeping and close the pool."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), CONNECT_TIMEOUT)
            except _FOREIGN:
                pool.terminate()

    @contextlib.contextmanager
    def _refusing(self) -> Iterator[None]:
        """Any failure of the store refuses the message (503): a replay check fails closed."""
        try:
            yield
        except _FOREIGN as exc:
            if not self._failing:
                self._failing = True
                self._log.error("state_store_failed", reason=self._redact(str(exc)))
            raise Overloaded("the replay window cannot be checked now", retry_after=1) from None
        if self._failing:
            self._failing = False
            self._log.info("state_store_recovered")

    def _open_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise Overloaded("the replay window cannot be checked now", retry_after=1)
        return self._pool

    # -- the two operations ----------------------------------------------------

    def __len__(self) -> int:
        return self._count

    async def spend(self, issuer: str, jti: str, exp: int, now: int) -> bool:
        """One upsert: True when it inserted or renewed an ended row."""
        pool = self._open_pool()
        with self._refusing():
            if self._full:
                if await pool.fetchval(_EXISTS_SQL, issuer, jti, now) is not None:
                    return False
                raise Overloaded("the replay window is full", retry_after=CLOCK_SKEW_SECONDS)
            changed = await pool.fetchval(_SPEND_SQL, issuer, jti, exp + CLOCK_SKEW_SECONDS, now)
        return changed is not None

    async def acquire(self, contract: str, requests: int, per_seconds: int, now: float) -> int:
        """One ``UPDATE`` when a token is there; else a transaction holding the row's lock."""
        pool = self._open_pool()
        with self._refusing():
            if await pool.fetchval(_TAKE_SQL, float(now), contract, requests, per_seconds):
                return 0
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    _NEW_BUCKET_SQL, contract, requests, per_seconds, float(requests), float(now)
                )
                row = await conn.fetchrow(_LOCK_BUCKET_SQL, contract)
                if row is not None and (row[0], row[1]) == (requests, per_seconds):
                    bucket = TokenBucket(requests, per_seconds, float(row[2]), float(row[3]))
                else:
                    bucket = TokenBucket.full(requests, per_seconds, now)
                wait = bucket.take(now)
                await conn.execute(
                    _PUT_BUCKET_SQL,
                    contract,
                    requests,
                    per_seconds,
                    float(bucket.tokens),
                    float(bucket.updated),
                )
        return wait

    def retain(self, contracts: set[str]) -> None:
        """Nothing: the housekeeping drops each bucket once it is full again."""

    # -- housekeeping -------------------------------------------------------------

    async def housekeep(self) -> None:
        """One round of what the background task does every ``purge_seconds``, and a count."""
        with self._refusing():
            await self._housekeep(count=True)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self._purge_seconds)
            try:
                await self._housekeep(count=False)
            except _FOREIGN as exc:
                self._log.warning("state_housekeeping_failed", reason=self._redact(str(exc)))

    async def _housekeep(self, *, count: bool) -> None:
        pool = self._pool
        if pool is None:
            return
        now = int(self._clock())
        await pool.execute("DELETE FROM replay_ids WHERE until < $1", now)
        await pool.execute("DELETE FROM rate_buckets WHERE updated + per_seconds <= $1", float(now))
        if count or self._full or time.monotonic() - self._counted_at >= COUNT_EVERY_SECONDS:
            self._count = int(await pool.fetchval("SELECT COUNT(*) FROM replay_ids"))
            self._counted_at = time.monotonic()
            full = self._count >= self._capacity
            if full and not self._full:
                self._log.warning("replay_window_full", entries=self._count)
            self._full = full
