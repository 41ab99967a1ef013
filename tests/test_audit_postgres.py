"""The PostgreSQL audit store against a real PostgreSQL server.

Each test gets a fresh schema (``postgres_store_url``). Trees are checked
against a naive RFC 9162 recomputation from every leaf, so a store that
loses, repeats or misplaces a leaf or a node under concurrency is caught.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import random
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import asyncpg
import pytest

from gateway.audit.log import AuditLog
from gateway.audit.merkle import border_nodes, root_from_border
from gateway.audit.note import NoteSigner
from gateway.audit.postgres import COPY_THRESHOLD, SEQUENCER_LOCK_KEY, PostgresAuditStore
from gateway.audit.query import RecordQuery
from gateway.audit.records import AuditRecord, new_record_identity, record_time
from gateway.audit.store import (
    AuditStoreError,
    PendingEntry,
    SqliteAuditStore,
    StoredCheckpoint,
    open_store,
)
from gateway.errors import SetupError
from tests.stores import check_tree

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "s3cr3t-Pa55word"
BASE_TIME = 1_795_694_400  # 2026-11-26T12:00:00Z
CONSUMERS = ("social-benefits", "housing", "tax-authority")
SUBJECTS = ("subject-a", "subject-b", "subject-c", "subject-d")


def make_record(number: int) -> AuditRecord:
    """A record whose filter columns vary with ``number``."""
    return AuditRecord(
        **new_record_identity(),
        time=record_time(BASE_TIME + number),
        kind="exchange" if number % 5 else "refusal",
        direction="inbound",
        outcome="ok" if number % 5 else "refused",
        status=200 if number % 5 else 403,
        consumer=CONSUMERS[number % 3],
        provider="population-register",
        contract=f"contract-{number % 2}",
        purpose="benefit-eligibility",
        subject=SUBJECTS[number % 4],
        jti=f"jti-{number}",
    )


def entries(start: int, count: int, expires_at: str | None = None) -> list[PendingEntry]:
    """``count`` pending records numbered from ``start``."""
    return [PendingEntry(make_record(start + n), expires_at) for n in range(count)]


def mth(hashes: Sequence[bytes]) -> bytes:
    """RFC 9162 MTH, recursively, straight from the definition."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    split = 1 << ((len(hashes) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + mth(hashes[:split]) + mth(hashes[split:])).digest()


def assert_partition(placed: Sequence[tuple[int, int]], size: int) -> None:
    """``(first, count)`` pairs tile ``[0, size)`` without gap or overlap."""
    position = 0
    for first, count in sorted(placed):
        assert first == position
        position += count
    assert position == size


@pytest.fixture
async def store(postgres_store_url: str) -> AsyncIterator[PostgresAuditStore]:
    """An open store in the test's own schema."""
    opened = PostgresAuditStore(postgres_store_url)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def admin(postgres_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A second connection to the server, outside any store."""
    conn = await asyncpg.connect(postgres_url)
    yield conn
    await conn.close()


def schema_of(url: str) -> str:
    """The schema ``postgres_store_url`` selected (also its application_name)."""
    return url.rsplit("application_name=", 1)[1]


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TestSchema:
    """Tables are created in the selected schema, idempotently."""

    async def test_tables_in_selected_schema(
        self, store: PostgresAuditStore, postgres_store_url: str, admin: asyncpg.Connection
    ) -> None:
        """The three tables and their indexes live in the URL's schema, with 64-bit indices."""
        schema = schema_of(postgres_store_url)
        rows = await admin.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = $1",
            schema,
        )
        types = {(row[0], row[1]): row[2] for row in rows}
        assert types[("audit_leaves", "idx")] == "bigint"
        assert types[("audit_leaves", "leaf_hash")] == "bytea"
        assert types[("audit_leaves", "subject")] == "text"
        assert types[("audit_nodes", "idx")] == "bigint"
        assert types[("audit_nodes", "hash")] == "bytea"
        assert types[("audit_checkpoints", "size")] == "bigint"
        collations = await admin.fetch(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = $1 AND collation_name = 'C'",
            schema,
        )
        assert {row[0] for row in collations} == {"time", "expires_at"}
        indexes = {
            row[0]
            for row in await admin.fetch(
                "SELECT indexname FROM pg_indexes WHERE schemaname = $1", schema
            )
        }
        assert {"audit_leaves_subject", "audit_leaves_time", "audit_leaves_expiry"} <= indexes
        public = await admin.fetchval(
            "SELECT count(*) FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_name LIKE 'audit_%'"
        )
        assert public == 0

    async def test_reopen_keeps_the_log(self, postgres_store_url: str) -> None:
        """Opening again (a second gateway, or a restart) creates nothing and loses nothing."""
        first = PostgresAuditStore(postgres_store_url)
        await first.open()
        await first.open()  # already open: nothing happens
        await first.append_batch(entries(0, 3))
        second = PostgresAuditStore(postgres_store_url)
        await second.open()
        assert await second.size() == 3
        await first.close()
        await second.close()

    async def test_open_store_url(self, postgres_store_url: str) -> None:
        """``open_store`` hands postgresql:// URLs to this store."""
        assert isinstance(open_store(postgres_store_url, Path()), PostgresAuditStore)
        assert PASSWORD not in repr(PostgresAuditStore(f"postgresql://u:{PASSWORD}@h/db"))

    def test_lock_key(self) -> None:
        """The sequencer's key is derived from the name, not chosen by hand."""
        digest = hashlib.sha256(b"gateway-audit").digest()
        assert int.from_bytes(digest[:8], "big", signed=True) == SEQUENCER_LOCK_KEY
        assert -(2**63) <= SEQUENCER_LOCK_KEY < 2**63


class TestAppend:
    """Appends under the sequencer: contiguous indices, one consistent tree."""

    async def test_contiguous(self, store: PostgresAuditStore) -> None:
        """Batches of every size, executemany and COPY alike, land one after another."""
        sizes = [1, 2, 5, COPY_THRESHOLD - 1, COPY_THRESHOLD, 100, 1]
        firsts = []
        for number, size in enumerate(sizes):
            firsts.append(await store.append_batch(entries(number * 1000, size)))
        assert firsts == [sum(sizes[:n]) for n in range(len(sizes))]
        await check_tree(store, sum(sizes))

    async def test_empty_batch(self, store: PostgresAuditStore) -> None:
        """An empty batch adds nothing and names the next index."""
        assert await store.append_batch([]) == 0
        await store.append_batch(entries(0, 2))
        assert await store.append_batch([]) == 2
        await check_tree(store, 2)

    async def test_leaf_columns(
        self, store: PostgresAuditStore, postgres_store_url: str, admin: asyncpg.Connection
    ) -> None:
        """The filter columns hold the record's members, expires_at the retention end."""
        await store.append_batch(entries(1, 1, "2036-11-26T12:00:00.000Z"))
        row = await admin.fetchrow(
            f"SELECT * FROM {schema_of(postgres_store_url)}.audit_leaves"  # noqa: S608
        )
        assert row is not None
        record = make_record(1)
        assert row["idx"] == 0
        assert row["time"] == record.time
        assert row["consumer"] == record.consumer
        assert row["subject"] == record.subject
        assert row["kind"] == "exchange"
        assert row["expires_at"] == "2036-11-26T12:00:00.000Z"

    async def test_two_stores_interleaved(self, postgres_store_url: str) -> None:
        """Two pools (two gateways) appending at once still build one contiguous tree."""
        stores = [PostgresAuditStore(postgres_store_url) for _ in range(2)]
        for each in stores:
            await each.open()
        rng = random.Random(7)  # noqa: S311 - batch sizes, not secrets
        sizes = [rng.choice((1, 1, 2, 3, 8, 40)) for _ in range(40)]

        async def append(number: int, size: int) -> tuple[int, int, int]:
            owner = number % 2
            first = await stores[owner].append_batch(entries(number * 100, size))
            return first, size, owner

        placed = await asyncio.gather(*(append(n, size) for n, size in enumerate(sizes)))
        total = sum(sizes)
        assert_partition([(first, size) for first, size, _ in placed], total)
        owners = [owner for _, _, owner in sorted(placed)]
        switches = sum(1 for a, b in itertools.pairwise(owners) if a != b)
        assert switches >= 2, "the two stores did not interleave"
        for each in stores:
            await check_tree(each, total)
        for each in stores:
            await each.close()

    async def test_two_processes(self, postgres_store_url: str, store: PostgresAuditStore) -> None:
        """Two OS processes appending to one schema at once: one contiguous log."""
        batches = 30
        code = "import sys; from tests.test_audit_postgres import worker; worker(sys.argv[1:])"
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                code,
                postgres_store_url,
                str(number),
                str(batches),
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for number in range(2)
        ]
        # Both have opened their store before either appends.
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line == b"ready\n", line
        outputs = await asyncio.gather(
            *(asyncio.wait_for(proc.communicate(b"go\n"), 120) for proc in procs)
        )
        placed: list[tuple[int, int]] = []
        for proc, (out, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, err.decode()
            placed += [(first, count) for first, count in json.loads(out)]
        total = sum(count for _, count in placed)
        assert len(placed) == 2 * batches
        assert_partition(placed, total)
        await check_tree(store, total)


def worker(argv: list[str]) -> None:
    """Child process of ``test_two_processes``: ``URL NUMBER BATCHES``; prints its placements."""
    url, number, batches = argv[0], int(argv[1]), int(argv[2])

    async def main() -> list[tuple[int, int]]:
        own = PostgresAuditStore(url)
        await own.open()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        rng = random.Random(number)  # noqa: S311 - batch sizes, not secrets
        placed = []
        for batch in range(batches):
            size = rng.choice((1, 2, 3, 5, 40))
            first = await own.append_batch(entries(number * 10_000 + batch * 100, size))
            placed.append((first, size))
        await own.close()
        return placed

    print(json.dumps(asyncio.run(main())), flush=True)


class TestReads:
    """hashes, leaves, nodes and find."""

    async def test_hashes(self, store: PostgresAuditStore) -> None:
        """Leaf and node hashes by key; keys not stored (or not storable) are absent."""
        await store.append_batch(entries(0, 6))
        leaves = [leaf.leaf_hash for leaf in await store.leaves(0, 6)]
        found = await store.hashes([(0, 0), (0, 5), (1, 2), (2, 0), (0, 6), (1, 3), (2, 1)])
        assert found == {
            (0, 0): leaves[0],
            (0, 5): leaves[5],
            (1, 2): mth(leaves[4:6]),
            (2, 0): mth(leaves[0:4]),
        }
        assert await store.hashes([]) == {}
        assert await store.hashes([(0, -1), (0, 2**70), (70, 0), (-1, 0)]) == {}

    async def test_leaves_and_nodes_ranges(self, store: PostgresAuditStore) -> None:
        """Half-open ranges, by index; empty and out-of-range ranges are empty."""
        await store.append_batch(entries(0, 9))
        assert [leaf.index for leaf in await store.leaves(3, 6)] == [3, 4, 5]
        assert await store.leaves(6, 3) == []
        assert [leaf.index for leaf in await store.leaves(-5, 2)] == [0, 1]
        assert [leaf.index for leaf in await store.leaves(7, 2**80)] == [7, 8]
        assert [index for index, _ in await store.nodes(1, 1, 3)] == [1, 2]
        assert [index for index, _ in await store.nodes(3, 0, 2**80)] == [0]
        assert await store.nodes(0, 0, 9) == []
        assert await store.nodes(99, 0, 9) == []

    async def test_find(self, store: PostgresAuditStore) -> None:
        """Filters, both orders, limits and cursors select what a scan of the records does."""
        records = [make_record(n) for n in range(40)]
        await store.append_batch([PendingEntry(record, None) for record in records])

        def expect(
            match: Callable[[AuditRecord], bool], order: str = "asc", limit: int = 100
        ) -> list[int]:
            hits = [n for n, record in enumerate(records) if match(record)]
            return (hits if order == "asc" else hits[::-1])[:limit]

        async def found(**members: object) -> list[int]:
            return [leaf.index for leaf in await store.find(RecordQuery.model_validate(members))]

        assert await found() == list(range(40))
        assert await found(consumer="housing") == expect(lambda r: r.consumer == "housing")
        assert await found(kind="refusal", outcome="refused") == expect(
            lambda r: r.kind == "refusal"
        )
        assert await found(subjects=("subject-a", "subject-c")) == expect(
            lambda r: r.subject in ("subject-a", "subject-c")
        )
        since, until = record_time(BASE_TIME + 10), record_time(BASE_TIME + 20)
        assert await found(since=since, until=until) == list(range(10, 20))
        assert await found(order="desc", limit=5) == [39, 38, 37, 36, 35]
        assert await found(after=30) == list(range(31, 40))
        assert await found(after=5, order="desc") == [4, 3, 2, 1, 0]
        assert await found(consumer="housing", contract="contract-1", order="desc", limit=2) == (
            expect(lambda r: r.consumer == "housing" and r.contract == "contract-1", "desc", 2)
        )
        assert await found(consumer="nobody") == []
        leaf = (await store.find(RecordQuery(limit=1)))[0]
        assert leaf.leaf == records[0].at_index(0).leaf_bytes()

    async def test_same_answers_as_sqlite(self, store: PostgresAuditStore, tmp_path: Path) -> None:
        """The reference store and this one agree on every read of the same records."""
        sqlite = SqliteAuditStore(tmp_path / "audit.db")
        await sqlite.open()
        try:
            batches = [entries(0, 3), entries(3, 50), entries(53, 7)]
            for batch in batches:
                assert await store.append_batch(batch) == await sqlite.append_batch(batch)
            size = await store.size()
            assert await sqlite.size() == size == 60
            assert await store.leaves(0, size) == await sqlite.leaves(0, size)
            for level in range(1, 7):
                assert await store.nodes(level, 0, size) == await sqlite.nodes(level, 0, size)
            keys = [*border_nodes(size), (0, 59), (3, 6), (5, 2)]
            assert await store.hashes(keys) == await sqlite.hashes(keys)
            for members in (
                {},
                {"consumer": "housing", "order": "desc"},
                {"subjects": ("subject-b",), "limit": 4},
                {"since": record_time(BASE_TIME + 20), "after": 25},
                {"kind": "refusal", "order": "desc", "after": 40},
            ):
                query = RecordQuery.model_validate(members)
                assert await store.find(query) == await sqlite.find(query)

            def sign(size: int, root: bytes) -> str:
                return f"{size} {root.hex()}"

            assert await store.add_checkpoint(sign) == await sqlite.add_checkpoint(sign)
            assert await store.expire(
                record_time(BASE_TIME + 86400 * 10000)
            ) == await sqlite.expire(record_time(BASE_TIME + 86400 * 10000))
        finally:
            await sqlite.close()


class TestCheckpoints:
    """Checkpoints are signed under the sequencer, only when the tree grew."""

    async def test_only_when_grown(self, store: PostgresAuditStore) -> None:
        """None for an empty or unchanged tree or one below min_size; else the signed root."""
        signed: list[tuple[int, bytes]] = []

        def sign(size: int, root: bytes) -> str:
            signed.append((size, root))
            return f"note {size}"

        assert await store.add_checkpoint(sign) is None
        assert await store.latest_checkpoint() is None
        await store.append_batch(entries(0, 3))
        hashes = [leaf.leaf_hash for leaf in await store.leaves(0, 3)]
        first = await store.add_checkpoint(sign)
        assert first == StoredCheckpoint(3, mth(hashes), "note 3")
        assert signed == [(3, mth(hashes))]
        assert await store.add_checkpoint(sign) is None
        await store.append_batch(entries(3, 4))
        assert await store.add_checkpoint(sign, min_size=10) is None
        await store.append_batch(entries(7, 3))
        second = await store.add_checkpoint(sign, min_size=10)
        assert second is not None
        assert second.size == 10
        assert second.root == mth(await check_tree(store, 10))
        assert await store.checkpoints() == [first, second]
        assert await store.latest_checkpoint() == second

    async def test_two_stores_race(self, postgres_store_url: str) -> None:
        """Two gateways checkpointing the same tree: exactly one checkpoint is written."""
        stores = [PostgresAuditStore(postgres_store_url) for _ in range(2)]
        for each in stores:
            await each.open()
        await stores[0].append_batch(entries(0, 5))
        results = await asyncio.gather(
            *(each.add_checkpoint(lambda size, _root: f"note {size}") for each in stores * 3)
        )
        assert len([result for result in results if result is not None]) == 1
        assert [c.size for c in await stores[1].checkpoints()] == [5]
        for each in stores:
            await each.close()

    async def test_sign_failure_writes_nothing(self, store: PostgresAuditStore) -> None:
        """An exception from the signer is the caller's own and rolls the checkpoint back."""
        await store.append_batch(entries(0, 2))

        def sign(_size: int, _root: bytes) -> str:
            raise RuntimeError("signer offline")

        with pytest.raises(RuntimeError, match="signer offline"):
            await store.add_checkpoint(sign)
        assert await store.checkpoints() == []


class TestExpire:
    """Retention deletes leaf bytes and filter columns, never hashes."""

    async def test_expire(
        self, store: PostgresAuditStore, postgres_store_url: str, admin: asyncpg.Connection
    ) -> None:
        """Expired rows lose bytes and filters (not time or hash); the tree is unchanged."""
        await store.append_batch(entries(0, 4, "2027-01-01T00:00:00.000Z"))
        await store.append_batch(entries(4, 3, "2030-01-01T00:00:00.000Z"))
        await store.append_batch(entries(7, 1, None))
        before = await store.leaves(0, 8)
        root = root_from_border(list((await store.hashes(border_nodes(8))).values()))
        assert await store.expire("2026-12-31T00:00:00.000Z") == 0
        assert await store.expire("2027-01-01T00:00:00.000Z") == 4
        assert await store.expire("2028-01-01T00:00:00.000Z") == 0
        after = await store.leaves(0, 8)
        assert [leaf.leaf for leaf in after[:4]] == [None] * 4
        assert after[4:] == before[4:]
        assert [leaf.leaf_hash for leaf in after] == [leaf.leaf_hash for leaf in before]
        keys = border_nodes(8)
        assert root_from_border([(await store.hashes(keys))[key] for key in keys]) == root
        rows = await admin.fetch(
            f"SELECT * FROM {schema_of(postgres_store_url)}.audit_leaves"  # noqa: S608
            " WHERE idx < 4 ORDER BY idx"
        )
        for number, row in enumerate(rows):
            assert row["time"] == make_record(number).time
            for name in ("leaf", "kind", "consumer", "provider", "contract", "purpose"):
                assert row[name] is None
            assert row["outcome"] is None
            assert row["subject"] is None
        assert [leaf.index for leaf in await store.find(RecordQuery(consumer="housing"))] == [4, 7]
        assert await store.expire("2099-01-01T00:00:00.000Z") == 3
        assert await store.count() == await store.size() == 8


async def _backends(admin: asyncpg.Connection, application: str) -> list[int]:
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", application
    )
    return [int(row[0]) for row in rows]


class TestFailures:
    """Every failure is an AuditStoreError (or SetupError on open), and never shows a password."""

    async def test_connection_killed_mid_append(
        self, store: PostgresAuditStore, postgres_store_url: str, admin: asyncpg.Connection
    ) -> None:
        """A backend terminated while its append waits for the sequencer: AuditStoreError,
        nothing half-written, and the next append succeeds on a fresh connection."""
        await store.append_batch(entries(0, 2))
        await admin.execute("SELECT pg_advisory_lock($1)", SEQUENCER_LOCK_KEY)
        task = asyncio.create_task(store.append_batch(entries(2, 3)))
        application = schema_of(postgres_store_url)
        waiting: list[int] = []
        for _ in range(200):
            waiting = [
                int(row[0])
                for row in await admin.fetch(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE application_name = $1 AND wait_event_type = 'Lock'",
                    application,
                )
            ]
            if waiting:
                break
            await asyncio.sleep(0.02)
        assert len(waiting) == 1, "the append never waited for the sequencer"
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", waiting[0])
        with pytest.raises(AuditStoreError) as caught:
            await asyncio.wait_for(task, 30)
        assert type(caught.value) is AuditStoreError
        assert not isinstance(caught.value, asyncpg.PostgresError | asyncpg.InterfaceError)
        assert str(caught.value).startswith("PostgreSQL: ")
        await admin.execute("SELECT pg_advisory_unlock($1)", SEQUENCER_LOCK_KEY)
        assert await store.append_batch(entries(2, 3)) == 2
        await check_tree(store, 5)

    async def test_idle_connections_killed(
        self, store: PostgresAuditStore, postgres_store_url: str, admin: asyncpg.Connection
    ) -> None:
        """Every pooled connection cut: at most one call fails (AuditStoreError), then it heals."""
        await store.append_batch(entries(0, 1))
        application = schema_of(postgres_store_url)
        for pid in await _backends(admin, application):
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
        failures = 0
        for _ in range(3):
            try:
                await store.append_batch(entries(1, 1))
                break
            except AuditStoreError:
                failures += 1
        assert failures <= 1
        await check_tree(store, 2)

    async def test_server_statement_error(
        self, store: PostgresAuditStore, postgres_store_url: str, admin: asyncpg.Connection
    ) -> None:
        """An error the server reports (here: the tables are gone) is an AuditStoreError."""
        await admin.execute(f"DROP TABLE {schema_of(postgres_store_url)}.audit_checkpoints")
        with pytest.raises(AuditStoreError, match="audit_checkpoints"):
            await store.checkpoints()
        await admin.execute(f"DROP TABLE {schema_of(postgres_store_url)}.audit_nodes")
        with pytest.raises(AuditStoreError):
            await store.append_batch(entries(0, 2))

    async def test_missing_border_node(
        self, store: PostgresAuditStore, postgres_store_url: str, admin: asyncpg.Connection
    ) -> None:
        """A store whose tree lost a node refuses to append rather than build a wrong tree.

        The writer that built the tree keeps its border in memory; another
        writer (here a second store, as another worker) reads it and refuses.
        """
        await store.append_batch(entries(0, 4))
        await admin.execute(
            f"DELETE FROM {schema_of(postgres_store_url)}.audit_nodes"  # noqa: S608
        )
        other = PostgresAuditStore(postgres_store_url)
        await other.open()
        try:
            with pytest.raises(AuditStoreError, match="border node"):
                await other.append_batch(entries(4, 1))
        finally:
            await other.close()
        assert await store.size() == 4

    async def test_closed(self, postgres_store_url: str) -> None:
        """After close every call is an AuditStoreError; closing again is harmless."""
        closed = PostgresAuditStore(postgres_store_url)
        await closed.open()
        await closed.close()
        await closed.close()
        calls = [
            closed.append_batch(entries(0, 1)),
            closed.size(),
            closed.count(),
            closed.hashes([(0, 0)]),
            closed.leaves(0, 1),
            closed.nodes(1, 0, 1),
            closed.find(RecordQuery()),
            closed.add_checkpoint(lambda size, _root: str(size)),
            closed.checkpoints(),
            closed.latest_checkpoint(),
            closed.expire("2030-01-01T00:00:00.000Z"),
        ]
        for call in calls:
            with pytest.raises(AuditStoreError, match="closed"):
                await call

    async def test_close_during_a_call(
        self,
        store: PostgresAuditStore,
        admin: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A call still waiting when the store closes fails with AuditStoreError."""
        monkeypatch.setattr("gateway.audit.postgres.CLOSE_TIMEOUT", 0.2)
        await admin.execute("SELECT pg_advisory_lock($1)", SEQUENCER_LOCK_KEY)
        try:
            task = asyncio.create_task(store.append_batch(entries(0, 1)))
            await asyncio.sleep(0.2)
            await store.close()
            with pytest.raises(AuditStoreError):
                await asyncio.wait_for(task, 30)
        finally:
            await admin.execute("SELECT pg_advisory_unlock($1)", SEQUENCER_LOCK_KEY)

    async def test_command_timeout(
        self, postgres_store_url: str, admin: asyncpg.Connection
    ) -> None:
        """An append stuck behind another holder of the sequencer fails in time."""
        impatient = PostgresAuditStore(postgres_store_url, command_timeout=0.3)
        await impatient.open()
        await admin.execute("SELECT pg_advisory_lock($1)", SEQUENCER_LOCK_KEY)
        try:
            with pytest.raises(AuditStoreError):
                await impatient.append_batch(entries(0, 1))
        finally:
            await admin.execute("SELECT pg_advisory_unlock($1)", SEQUENCER_LOCK_KEY)
        assert await impatient.append_batch(entries(0, 1)) == 0
        await impatient.close()

    async def test_unreachable(self) -> None:
        """Nothing listening: SetupError naming the store, without the password."""
        url = f"postgresql://gateway:{PASSWORD}@127.0.0.1:{closed_port()}/audit"
        with pytest.raises(SetupError) as caught:
            await PostgresAuditStore(url, connect_timeout=5).open()
        assert caught.value.source == "audit.store"
        assert "cannot open the PostgreSQL audit store" in str(caught.value)
        assert PASSWORD not in str(caught.value)
        assert caught.value.__cause__ is None
        assert caught.value.__suppress_context__

    @pytest.mark.parametrize(
        "url",
        [
            f"postgresql://gateway:{PASSWORD}@127.0.0.1:notaport/audit",
            f"postgresql://gateway:{PASSWORD}@127.0.0.1:5432/audit?sslmode=sometimes",
            f"postgresql://gateway@127.0.0.1:5432/audit?password={PASSWORD}&sslmode=bogus",
            f"postgresql://gateway:{PASSWORD}@[::1/audit",
        ],
    )
    async def test_bad_url(self, url: str) -> None:
        """A malformed URL: SetupError, and the password is in neither message nor cause."""
        with pytest.raises(SetupError) as caught:
            await PostgresAuditStore(url, connect_timeout=5).open()
        assert PASSWORD not in str(caught.value)
        assert caught.value.__cause__ is None

    async def test_refused_by_server(self, postgres_url: str) -> None:
        """A database that does not exist: the server's reason, without the password."""
        base = postgres_url.split("//", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
        url = f"postgresql://postgres:{PASSWORD}@{base}/no_such_database"
        with pytest.raises(SetupError, match="no_such_database") as caught:
            await PostgresAuditStore(url).open()
        assert PASSWORD not in str(caught.value)

    async def test_no_create_privilege(
        self, postgres_store_url: str, admin: asyncpg.Connection
    ) -> None:
        """A role that may not create tables in its schema: SetupError with the server's reason."""
        schema = schema_of(postgres_store_url)
        role = f"r_{schema}"
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        try:
            scheme, _, rest = postgres_store_url.partition("://")
            url = f"{scheme}://{role}:{PASSWORD}@{rest.rpartition('@')[2]}"
            with pytest.raises(SetupError, match="permission denied") as caught:
                await PostgresAuditStore(url).open()
            assert PASSWORD not in str(caught.value)
        finally:
            await admin.execute(f"REVOKE ALL ON SCHEMA {schema} FROM {role}")
            await admin.execute(f"DROP ROLE {role}")

    async def test_schema_missing(self, postgres_url: str) -> None:
        """A search_path naming no existing schema: SetupError, nothing created."""
        separator = "&" if "?" in postgres_url else "?"
        url = f"{postgres_url}{separator}options=-csearch_path%3Dno_such_schema"
        with pytest.raises(SetupError, match="no schema"):
            await PostgresAuditStore(url).open()


async def test_audit_log_on_postgres(postgres_store_url: str) -> None:
    """The Merkle log itself on this store: appends, a checkpoint, and a checked reopen."""
    signer = NoteSigner.generate("audit.example.gov/log")
    log = AuditLog(PostgresAuditStore(postgres_store_url), "audit.example.gov/log", signer)
    await log.open()
    indices = await asyncio.gather(*(log.append(make_record(n)) for n in range(12)))
    assert sorted(indices) == list(range(12))
    await log.close()
    again = AuditLog(PostgresAuditStore(postgres_store_url), "audit.example.gov/log", signer)
    await again.open()
    latest = await again.latest_checkpoint()
    assert latest.size == 12
    assert await again.root(12) == latest.root
    await again.close()
