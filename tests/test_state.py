"""Replay ids and rate-limit buckets shared by several processes (gateway.state, ADR 0006).

Each store is opened twice, as two worker processes would open it: two
connections (two pools for PostgreSQL) on one SQLite file or one schema.
What one spends, the other must see spent; one bucket serves both and gives
exactly the answers of the in-memory limiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from gateway.config import load_settings
from gateway.demo.network import TAX, build_network
from gateway.errors import Overloaded, SetupError
from gateway.jose import CLOCK_SKEW_SECONDS
from gateway.ratelimit import RateLimiter
from gateway.runtime import build_runtime
from gateway.state import (
    SharedState,
    SqliteSharedState,
    open_shared_state,
    resolve_state_store,
)
from tests.conftest import FIXED_NOW

STATE_KINDS = ("sqlite", "postgresql")
ISSUER = "social-benefits"


class Clock:
    """A settable clock for the housekeeping's idea of now."""

    def __init__(self, now: float = FIXED_NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=STATE_KINDS, ids=STATE_KINDS)
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store: a SQLite file that does not exist yet, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'state' / 'audit-state.db'}"
    return str(request.getfixturevalue("postgres_store_url"))


def new_state(url: str, clock: Callable[[], float], capacity: int = 1000) -> SharedState:
    """A store object for ``url`` (not opened)."""
    if url.startswith("sqlite:"):
        return SqliteSharedState(Path(url.removeprefix("sqlite:")), capacity=capacity, clock=clock)
    from gateway.state_postgres import PostgresSharedState

    return PostgresSharedState(url, capacity=capacity, clock=clock)


@contextlib.asynccontextmanager
async def two(
    url: str, clock: Callable[[], float], capacity: int = 1000
) -> AsyncIterator[tuple[SharedState, SharedState]]:
    """The store opened twice, as two workers open it."""
    first, second = new_state(url, clock, capacity), new_state(url, clock, capacity)
    await first.open()
    try:
        await second.open()
        try:
            yield first, second
        finally:
            await second.close()
    finally:
        await first.close()


class TestReplay:
    """A message id spent by one process is spent for all of them."""

    async def test_spent_in_one_is_spent_in_the_other(self, state_url: str) -> None:
        """First spend true, the same (iss, jti) again false, whichever process asks."""
        async with two(state_url, Clock()) as (a, b):
            now = FIXED_NOW
            assert await a.spend(ISSUER, "j1", now + 60, now) is True
            assert await b.spend(ISSUER, "j1", now + 60, now) is False
            assert await a.spend(ISSUER, "j1", now + 60, now) is False
            assert await b.spend("tax-authority", "j1", now + 60, now) is True
            assert await b.spend(ISSUER, "j2", now + 60, now) is True
            assert await a.spend(ISSUER, "j2", now + 60, now) is False

    async def test_window_is_exp_plus_skew(self, state_url: str) -> None:
        """An id is remembered until exp + 30 s, as by the memory cache, then may come again."""
        async with two(state_url, Clock()) as (a, b):
            exp = FIXED_NOW + 60
            assert await a.spend(ISSUER, "j1", exp, FIXED_NOW)
            assert not await b.spend(ISSUER, "j1", exp, exp + CLOCK_SKEW_SECONDS)
            assert await b.spend(ISSUER, "j1", exp + 200, exp + CLOCK_SKEW_SECONDS + 1)
            assert not await a.spend(ISSUER, "j1", exp + 200, exp + CLOCK_SKEW_SECONDS + 1)

    async def test_housekeeping_purges_and_counts(self, state_url: str) -> None:
        """Ended ids are deleted; len() is the count over all processes, as last counted."""
        clock = Clock()
        async with two(state_url, clock) as (a, b):
            for number in range(5):
                await a.spend(ISSUER, f"short-{number}", FIXED_NOW + 10, FIXED_NOW)
            for number in range(3):
                await b.spend(ISSUER, f"long-{number}", FIXED_NOW + 500, FIXED_NOW)
            await b.housekeep()
            assert len(b) == 8
            clock.now = FIXED_NOW + 10 + CLOCK_SKEW_SECONDS + 1
            await a.housekeep()
            assert len(a) == 3

    async def test_full_window_refuses_new_ids(self, state_url: str) -> None:
        """At capacity (as last counted) new ids are refused (503); known ids stay replays."""
        clock = Clock()
        async with two(state_url, clock, capacity=2) as (a, b):
            assert await a.spend(ISSUER, "j1", FIXED_NOW + 10, FIXED_NOW)
            assert await b.spend(ISSUER, "j2", FIXED_NOW + 10, FIXED_NOW)
            await a.housekeep()
            with pytest.raises(Overloaded) as refused:
                await a.spend(ISSUER, "j3", FIXED_NOW + 10, FIXED_NOW)
            assert refused.value.retry_after == CLOCK_SKEW_SECONDS
            assert await a.spend(ISSUER, "j2", FIXED_NOW + 10, FIXED_NOW) is False
            clock.now = FIXED_NOW + 10 + CLOCK_SKEW_SECONDS + 1
            await a.housekeep()
            assert await a.spend(ISSUER, "j3", FIXED_NOW + 100, int(clock.now))

    async def test_background_purge(self, tmp_path: Path) -> None:
        """The housekeeping task runs by itself every purge_seconds."""
        clock = Clock()
        state = SqliteSharedState(tmp_path / "s.db", capacity=1000, clock=clock, purge_seconds=0.02)
        await state.open()
        try:
            await state.spend(ISSUER, "j1", FIXED_NOW, FIXED_NOW)
            clock.now = FIXED_NOW + 100
            with sqlite3.connect(tmp_path / "s.db") as conn:
                for _ in range(200):
                    if conn.execute("SELECT COUNT(*) FROM replay_ids").fetchone()[0] == 0:
                        break
                    await asyncio.sleep(0.02)
                else:
                    pytest.fail("the ended id was never purged")
        finally:
            await state.close()


class TestRateLimits:
    """One bucket per contract, whichever process takes from it."""

    async def test_one_bucket_for_both(self, state_url: str) -> None:
        """3 requests a minute are 3 in all, not 3 per process."""
        async with two(state_url, Clock()) as (a, b):
            now = float(FIXED_NOW)
            assert await a.acquire("c1", 3, 60, now) == 0
            assert await b.acquire("c1", 3, 60, now) == 0
            assert await a.acquire("c1", 3, 60, now) == 0
            assert await b.acquire("c1", 3, 60, now) == 20
            assert await a.acquire("c1", 3, 60, now) == 20
            assert await b.acquire("c2", 3, 60, now) == 0
            assert await a.acquire("c1", 3, 60, now + 20) == 0

    async def test_same_answers_as_the_memory_limiter(self, state_url: str) -> None:
        """A random sequence of takes by two processes: exactly RateLimiter's answers."""
        rng = random.Random(20261126)  # noqa: S311 - a test sequence, not a secret
        memory = RateLimiter()
        async with two(state_url, Clock()) as (a, b):
            now = float(FIXED_NOW)
            for _ in range(300):
                now += rng.choice((0, 0, 0, 1, 2, 7))
                contract = rng.choice(("c1", "c2"))
                requests, per = rng.choice(((3, 60), (3, 60), (3, 60), (5, 10)))
                store = rng.choice((a, b))
                expected = memory.take(contract, requests, per, now)
                got = await store.acquire(contract, requests, per, now)
                assert got == expected, (contract, requests, per, now)

    async def test_full_buckets_are_dropped(self, state_url: str) -> None:
        """A bucket untouched for per_seconds is full again: the housekeeping deletes it."""
        clock = Clock()
        async with two(state_url, clock) as (a, b):
            assert await a.acquire("c1", 1, 60, float(FIXED_NOW)) == 0
            assert await b.acquire("c1", 1, 60, float(FIXED_NOW + 30)) == 30
            a.retain(set())  # nothing to do: a missing bucket is a full one
            clock.now = FIXED_NOW + 90
            await a.housekeep()
            if state_url.startswith("sqlite:"):
                path = state_url.removeprefix("sqlite:")
                with contextlib.closing(sqlite3.connect(path)) as conn:
                    assert conn.execute("SELECT COUNT(*) FROM rate_buckets").fetchone()[0] == 0
            assert await b.acquire("c1", 1, 60, float(FIXED_NOW + 90)) == 0
            assert await a.acquire("c1", 1, 60, float(FIXED_NOW + 90)) == 60


class TestSqliteLocks:
    """A write lock held by another process is waited for without blocking the event loop."""

    @staticmethod
    def _hold_lock(path: Path, seconds: float, held: threading.Event) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            held.set()
            time.sleep(seconds)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    async def test_waits_for_the_lock_off_the_loop(self, tmp_path: Path) -> None:
        """A spend waits while another connection holds the lock; other tasks run meanwhile."""
        path = tmp_path / "s.db"
        state = SqliteSharedState(path, capacity=1000)
        await state.open()
        try:
            held = threading.Event()
            holder = threading.Thread(target=self._hold_lock, args=(path, 0.3, held))
            holder.start()
            await asyncio.to_thread(held.wait, 5)
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            ticker = asyncio.create_task(tick())
            started = time.monotonic()
            assert await state.spend(ISSUER, "j1", FIXED_NOW + 60, FIXED_NOW)
            assert await state.acquire("c1", 2, 60, float(FIXED_NOW)) == 0
            waited = time.monotonic() - started
            ticker.cancel()
            holder.join()
            assert waited >= 0.1, waited
            assert ticks >= 5, "the event loop was blocked while the spend waited"
        finally:
            await state.close()

    async def test_lock_held_too_long_refuses(self, tmp_path: Path) -> None:
        """Past lock_wait_seconds the message is refused (503 overloaded), then all is well."""
        path = tmp_path / "s.db"
        state = SqliteSharedState(path, capacity=1000, lock_wait_seconds=0.1)
        await state.open()
        try:
            held = threading.Event()
            holder = threading.Thread(target=self._hold_lock, args=(path, 0.5, held))
            holder.start()
            await asyncio.to_thread(held.wait, 5)
            with pytest.raises(Overloaded):
                await state.spend(ISSUER, "j1", FIXED_NOW + 60, FIXED_NOW)
            with pytest.raises(Overloaded):
                await state.acquire("c1", 2, 60, float(FIXED_NOW))
            holder.join()
            assert await state.spend(ISSUER, "j1", FIXED_NOW + 60, FIXED_NOW)
        finally:
            await state.close()

    async def test_closed_store_refuses(self, tmp_path: Path) -> None:
        """A store that cannot be used fails closed: 503, never a pass."""
        state = SqliteSharedState(tmp_path / "s.db", capacity=1000)
        await state.open()
        await state.close()
        with pytest.raises(Overloaded):
            await state.spend(ISSUER, "j1", FIXED_NOW + 60, FIXED_NOW)

    async def test_unusable_file(self, tmp_path: Path) -> None:
        """A path that cannot hold a database is a SetupError naming it."""
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        state = SqliteSharedState(blocker / "s.db", capacity=1000)
        with pytest.raises(SetupError, match="cannot open the shared state store"):
            await state.open()
        garbage = tmp_path / "garbage.db"
        garbage.write_bytes(b"this is not a database" * 100)
        with pytest.raises(SetupError, match=r"garbage\.db"):
            await SqliteSharedState(garbage, capacity=1000).open()

    def test_capacity_positive(self, tmp_path: Path) -> None:
        """A window that can hold nothing is a setup mistake."""
        with pytest.raises(ValueError, match="capacity"):
            SqliteSharedState(tmp_path / "s.db", capacity=0)


async def test_postgres_open_failure_hides_the_password() -> None:
    """An unreachable PostgreSQL is a SetupError that never shows the password."""
    from gateway.state_postgres import PostgresSharedState

    state = PostgresSharedState("postgresql://gateway:s3cret-pw@127.0.0.1:1/gateway", capacity=1000)
    with pytest.raises(SetupError) as caught:
        await state.open()
    assert "s3cret-pw" not in str(caught.value)
    assert "state.store" in str(caught.value)
    assert "s3cret-pw" not in state.description
    with pytest.raises(Overloaded):
        await state.spend(ISSUER, "j1", FIXED_NOW + 60, FIXED_NOW)


# -- where the state lives ------------------------------------------------------------


def _settings(tmp_path: Path, **sections: dict[str, object]) -> Path:
    """The tax authority's config of a demo network in ``tmp_path``, with ``sections`` merged."""
    config = tmp_path / TAX / "gateway.yaml"
    if not config.exists():
        build_network(tmp_path, 30000, datetime.now(UTC))
    document = yaml.safe_load(config.read_text())
    for name, values in sections.items():
        document.setdefault(name, {}).update(values)
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    return config


class TestWhere:
    """``state.store``: auto, memory, sqlite:PATH, postgresql://..."""

    def test_auto(self, tmp_path: Path) -> None:
        """Memory for one process, a file beside the audit store for several."""
        settings = load_settings(_settings(tmp_path))
        assert resolve_state_store(settings, 1) == "memory"
        beside = tmp_path / TAX / "audit-state.db"
        assert resolve_state_store(settings, 2) == f"sqlite:{beside}"
        assert open_shared_state(settings, 1) is None
        state = open_shared_state(settings, 4)
        assert isinstance(state, SqliteSharedState)
        assert state.path == beside

    def test_auto_with_postgresql(self, tmp_path: Path) -> None:
        """A PostgreSQL audit store: its database, even for one process (instances share it)."""
        url = "postgresql://gateway@db.example/gateway"
        settings = load_settings(_settings(tmp_path, audit={"store": url}))
        assert resolve_state_store(settings, 1) == url
        assert resolve_state_store(settings, 3) == url
        from gateway.state_postgres import PostgresSharedState

        assert isinstance(open_shared_state(settings, 1), PostgresSharedState)

    def test_explicit(self, tmp_path: Path) -> None:
        """memory stays memory; a relative sqlite path is beside the config."""
        settings = load_settings(_settings(tmp_path, state={"store": "memory"}))
        assert resolve_state_store(settings, 1) == "memory"
        with pytest.raises(SetupError, match="replayed to another worker would pass"):
            resolve_state_store(settings, 8)
        settings = load_settings(_settings(tmp_path, state={"store": "sqlite:run/state.db"}))
        state = open_shared_state(settings, 1)
        assert isinstance(state, SqliteSharedState)
        assert state.path == tmp_path / TAX / "run" / "state.db"

    @pytest.mark.parametrize(
        ("store", "message"),
        [("redis://cache", "state.store must be"), ("sqlite:", "names no file")],
    )
    def test_refused(self, tmp_path: Path, store: str, message: str) -> None:
        """Anything else is refused when the config is loaded."""
        with pytest.raises(SetupError, match=message):
            load_settings(_settings(tmp_path, state={"store": store}))

    async def test_runtime_uses_it(self, tmp_path: Path) -> None:
        """A runtime built for two workers spends ids and takes tokens in the shared file."""
        settings = load_settings(_settings(tmp_path))
        runtime = await build_runtime(settings, workers=2)
        try:
            assert isinstance(runtime.state, SqliteSharedState)
            assert runtime.replay is runtime.state
            assert runtime.rate_limiter is runtime.state
            assert await runtime.replay.spend(ISSUER, "j1", FIXED_NOW + 60, FIXED_NOW)
        finally:
            await runtime.close()
        other = await build_runtime(settings, workers=2)
        try:
            assert not await other.replay.spend(ISSUER, "j1", FIXED_NOW + 60, FIXED_NOW)
        finally:
            await other.close()

    async def test_runtime_on_postgresql(self, tmp_path: Path, postgres_store_url: str) -> None:
        """With a PostgreSQL audit store, instances share the window even with one worker each."""
        from gateway.state_postgres import PostgresSharedState

        settings = load_settings(_settings(tmp_path, audit={"store": postgres_store_url}))
        first, second = await build_runtime(settings), await build_runtime(settings)
        try:
            assert isinstance(first.state, PostgresSharedState)
            assert await first.replay.spend(ISSUER, "j1", FIXED_NOW + 60, FIXED_NOW)
            assert not await second.replay.spend(ISSUER, "j1", FIXED_NOW + 60, FIXED_NOW)
            assert await second.rate_limiter.acquire("c1", 1, 60, FIXED_NOW) == 0
            assert await first.rate_limiter.acquire("c1", 1, 60, FIXED_NOW) == 60
        finally:
            await first.close()
            await second.close()

    async def test_runtime_state_failure_closes_the_audit_log(self, tmp_path: Path) -> None:
        """A state store that cannot open fails the start, and the audit log is released."""
        blocker = tmp_path / "blocker"
        blocker.write_text("a file, not a directory")
        settings = load_settings(
            _settings(tmp_path, state={"store": f"sqlite:{blocker / 'state.db'}"})
        )
        with pytest.raises(SetupError, match="shared state store"):
            await build_runtime(settings)
