"""Shared helpers for the audit log tests: store URLs for both stores, logs, tampering.

Test modules import the fixtures they use from here (``conftest.py`` is shared
with other work). ``store_url`` runs a test once over SQLite and once over
PostgreSQL; the PostgreSQL run asks for ``postgres_store_url`` lazily, so the
SQLite run never depends on a PostgreSQL server.

Tampering goes through a raw connection of its own (:func:`raw_db`), as an
attacker with write access to the database would, never through the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from gateway.audit.log import AuditLog, CheckpointPolicy
from gateway.audit.merkle import border_nodes, node_hash, root_from_border
from gateway.audit.note import NoteSigner
from gateway.audit.records import AuditRecord, Pseudonymizer, new_record_identity, record_time
from gateway.audit.store import AuditStore, SqliteAuditStore, StoredLeaf, open_store

STORE_KINDS = ["sqlite", "postgresql"]
AGENCY = "tax-authority"
ORIGIN = f"{AGENCY}/audit"
# 2026-11-26T12:00:00Z, as in conftest.FIXED_NOW.
T0 = 1_795_694_400.0
DAY = 86_400.0
SUBJECT = "19800101-1234"
END_USER = "officer-7"
AUDIT_KEY = bytes(range(32))
PSEUDONYMIZE = Pseudonymizer({1: AUDIT_KEY})


@pytest.fixture(params=STORE_KINDS, ids=STORE_KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty audit store: a fresh SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'audit.db'}"
    try:
        return str(request.getfixturevalue("postgres_store_url"))
    except pytest.FixtureLookupError:
        pytest.skip("postgres fixture not available yet")


def is_sqlite(url: str) -> bool:
    """Whether ``url`` names a SQLite store."""
    return url.startswith("sqlite:")


def sqlite_path(url: str) -> Path:
    """The file of an absolute ``sqlite://`` URL."""
    return Path(url.removeprefix("sqlite://"))


def new_store(url: str) -> AuditStore:
    """An unopened store for ``url`` (absolute URLs only: no base folder is needed)."""
    return open_store(url, Path(tempfile.gettempdir()))


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


def make_record(
    number: int = 0,
    *,
    contract: str = "benefits-income-2026",
    consumer: str = "social-benefits",
    subject: str | None = SUBJECT,
    pseudonymize: Pseudonymizer = PSEUDONYMIZE,
    kind: str = "exchange",
    outcome: str = "ok",
) -> AuditRecord:
    """An exchange record numbered ``number`` (its ``jti`` and time follow the number)."""
    return AuditRecord.model_validate(
        {
            **new_record_identity(),
            "time": record_time(T0 + number),
            "kind": kind,
            "direction": "inbound",
            "outcome": outcome,
            "status": 200 if outcome == "ok" else 403,
            "consumer": consumer,
            "provider": AGENCY,
            "service": "income-records",
            "contract": contract,
            "contract_version": 3,
            "purpose": "benefit-eligibility",
            "client": "caseworker-app",
            "end_user": pseudonymize(END_USER),
            "subject": None if subject is None else pseudonymize(subject),
            "fields": ["national_id", "year"],
            "jti": f"jti-{number}",
            "latency_us": 1234,
        }
    )


def make_log(
    url: str,
    *,
    signer: NoteSigner | None = None,
    every_records: int = 4,
    every_seconds: float = 3600.0,
    retention_check_seconds: float = 3600.0,
    retention_days: Callable[[str | None], int] = lambda _contract: 3650,
    clock: Callable[[], float] | None = None,
) -> AuditLog:
    """An unopened log over a new store for ``url``, signed by ``signer`` (fresh by default).

    The time-based checkpoint and retention task sleeps ``every_seconds``:
    an hour by default, so only tests that shorten it see it run.
    """
    return AuditLog(
        new_store(url),
        ORIGIN,
        signer or NoteSigner.generate(ORIGIN),
        retention_days=retention_days,
        policy=CheckpointPolicy(
            every_records=every_records,
            every_seconds=every_seconds,
            retention_check_seconds=retention_check_seconds,
        ),
        clock=clock or Clock(),
    )


class LogFactory(Protocol):
    """``await logs(url, **make_log options)``: an open log, closed after the test."""

    def __call__(self, url: str, **options: Any) -> Awaitable[AuditLog]: ...


@pytest.fixture
async def logs() -> AsyncIterator[LogFactory]:
    """Open logs with :func:`make_log`'s options; every one is closed after the test."""
    opened: list[AuditLog] = []

    async def factory(url: str, **options: Any) -> AuditLog:
        log = make_log(url, **options)
        await log.open()
        opened.append(log)
        return log

    yield factory
    for log in opened:
        with contextlib.suppress(Exception):
            await log.close()


@contextlib.asynccontextmanager
async def opened_store(url: str) -> AsyncIterator[AuditStore]:
    """A store of its own over ``url`` (no log, no startup check), closed afterwards."""
    store = new_store(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def append_all(log: AuditLog, records: Sequence[AuditRecord]) -> list[int]:
    """Append ``records`` one after the other (one transaction each); their indices."""
    return [await log.append(record) for record in records]


async def all_leaves(store: AuditStore) -> list[StoredLeaf]:
    """Every stored leaf, by index."""
    return await store.leaves(0, await store.size())


# -- a raw connection, as an attacker or a failing disk would have -----------------


class RawDB:
    """A connection of its own to the store's database; SQL is written with ``?`` marks."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None

    async def __aenter__(self) -> RawDB:
        if is_sqlite(self.url):
            self._sqlite = sqlite3.connect(sqlite_path(self.url), isolation_level=None, timeout=5)
        else:
            import asyncpg

            self._pg = await asyncpg.connect(self.url)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            await self._pg.close()

    @staticmethod
    def _numbered(sql: str) -> str:
        parts = sql.split("?")
        return parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], start=1))

    async def execute(self, sql: str, *args: object) -> None:
        """Run one statement."""
        if self._sqlite is not None:
            self._sqlite.execute(sql, args)
        else:
            await self._pg.execute(self._numbered(sql), *args)

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """Run one query; its rows as tuples (blobs as bytes)."""
        if self._sqlite is not None:
            rows = self._sqlite.execute(sql, args).fetchall()
        else:
            rows = [tuple(row) for row in await self._pg.fetch(self._numbered(sql), *args)]
        return [
            tuple(bytes(v) if isinstance(v, bytes | memoryview) else v for v in r) for r in rows
        ]


def raw_db(url: str) -> RawDB:
    """``async with raw_db(url) as db``: a raw connection to the store's database."""
    return RawDB(url)


# -- making writes fail for real ------------------------------------------------

PG_REFUSE = "audit_test_refuse_writes"


async def break_writes(log: AuditLog, url: str) -> None:
    """Make every leaf write of ``log``'s store fail inside the database.

    SQLite: ``PRAGMA query_only`` on the store's own writing connection (on its
    writer thread, where that connection is used): SQLite then refuses every
    write as on read-only storage, which chmod cannot produce when tests run
    as root. PostgreSQL: a ``CHECK (false)`` constraint that existing rows need
    not meet (``NOT VALID``) but every new leaf fails.
    """
    if is_sqlite(url):
        await _sqlite_writer_pragma(log, "PRAGMA query_only=ON")
    else:
        async with raw_db(url) as db:
            await db.execute(
                f"ALTER TABLE audit_leaves ADD CONSTRAINT {PG_REFUSE} CHECK (false) NOT VALID"
            )


async def heal_writes(log: AuditLog, url: str) -> None:
    """Undo :func:`break_writes`."""
    if is_sqlite(url):
        await _sqlite_writer_pragma(log, "PRAGMA query_only=OFF")
    else:
        async with raw_db(url) as db:
            await db.execute(f"ALTER TABLE audit_leaves DROP CONSTRAINT {PG_REFUSE}")


@contextlib.asynccontextmanager
async def sequencer_held(url: str) -> AsyncIterator[None]:
    """Hold the store's sequencer from a connection of its own, as another writer would.

    SQLite: the file's write lock (``BEGIN IMMEDIATE``); PostgreSQL: the log's
    advisory lock. A store's append waits for it (SQLite: up to its 5 s busy timeout).
    """
    async with raw_db(url) as db:
        if is_sqlite(url):
            await db.execute("BEGIN IMMEDIATE")
        else:
            from gateway.audit.postgres import SEQUENCER_LOCK_KEY

            await db.execute("BEGIN")
            await db.execute("SELECT pg_advisory_xact_lock(?)", SEQUENCER_LOCK_KEY)
        try:
            yield
        finally:
            await db.execute("ROLLBACK")


async def _sqlite_writer_pragma(log: AuditLog, pragma: str) -> None:
    store = log.store
    assert isinstance(store, SqliteAuditStore)
    # Private: the fault is injected below the store's interface, on its own thread.
    conn = store._write_conn
    assert conn is not None
    await asyncio.get_running_loop().run_in_executor(store._writer, conn.execute, pragma)


# -- checking a stored tree ------------------------------------------------------


async def check_tree(store: AuditStore, size: int) -> list[bytes]:
    """Assert ``store`` holds one contiguous, consistent tree of ``size`` leaves."""
    assert await store.size() == size
    assert await store.count() == size
    leaves = await store.leaves(0, size)
    assert [leaf.index for leaf in leaves] == list(range(size))
    hashes = []
    for leaf in leaves:
        assert leaf.leaf is not None
        assert leaf.leaf_hash == hashlib.sha256(b"\x00" + leaf.leaf).digest()
        assert json.loads(leaf.leaf)["index"] == leaf.index
        hashes.append(leaf.leaf_hash)
    keys = border_nodes(size)
    found = await store.hashes(keys)
    assert root_from_border([found[key] for key in keys]) == mth(hashes)
    # Every perfect subtree the tree has is stored once, with the right hash.
    for level in range(1, size.bit_length()):
        width = 1 << level
        expected = [(i, mth(hashes[i * width : (i + 1) * width])) for i in range(size >> level)]
        assert await store.nodes(level, 0, size) == expected
    assert await store.nodes(size.bit_length(), 0, size) == []
    return hashes


# -- RFC 9162 section 2.1, written out naively as the reference ------------------


def mth(hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over leaf hashes (RFC 9162 2.1.1)."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return node_hash(mth(hashes[:k]), mth(hashes[k:]))


def naive_path(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) (RFC 9162 2.1.3.1)."""
    n = len(hashes)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*naive_path(m, hashes[:k]), mth(hashes[k:])]
    return [*naive_path(m - k, hashes[k:]), mth(hashes[:k])]


def naive_consistency(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) (RFC 9162 2.1.4.1)."""

    def subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
        n = len(d)
        if m == n:
            return [] if b else [mth(d)]
        k = 1 << ((n - 1).bit_length() - 1)
        if m <= k:
            return [*subproof(m, d[:k], b), mth(d[k:])]
        return [*subproof(m - k, d[k:], False), mth(d[:k])]

    return subproof(m, hashes, True)


def nodes_of(hashes: Sequence[bytes]) -> dict[tuple[int, int], bytes]:
    """Every perfect subtree hash ``(level, index)`` of a tree of these leaf hashes."""
    nodes = {(0, i): digest for i, digest in enumerate(hashes)}
    level, width = 1, 2
    while width <= len(hashes):
        for index in range(len(hashes) // width):
            nodes[(level, index)] = node_hash(
                nodes[(level - 1, 2 * index)], nodes[(level - 1, 2 * index + 1)]
            )
        level, width = level + 1, width * 2
    return nodes


__all__ = [
    "AGENCY",
    "DAY",
    "ORIGIN",
    "T0",
    "Clock",
    "LogFactory",
    "all_leaves",
    "append_all",
    "break_writes",
    "check_tree",
    "heal_writes",
    "is_sqlite",
    "logs",
    "make_log",
    "make_record",
    "mth",
    "naive_consistency",
    "naive_path",
    "nodes_of",
    "opened_store",
    "raw_db",
    "sequencer_held",
    "store_url",
]
