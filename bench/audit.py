"""Audit log benchmark: group commit against one commit per record; proofs at 10^6 records.

Part 1 (appends) sends the same kind of realistic exchange records to the same
store, with the same durable settings, through the same :class:`AuditLog` in
two modes: strictly one at a time (each append awaited before the next, so
each is its own transaction and its own fsync: what a per-record-commit design
costs), and from C concurrent tasks (the log's single writer commits whatever
is waiting in one transaction). The modes alternate over a few rounds so a
drifting fsync time weighs on both; the figure is the ratio of the throughputs.

Part 2 (proofs) builds one SQLite log of 10^6 records through the store's own
append path (``append_batch``: border read, ``build_batch``, inserts, one
transaction per 32,768 records), with leaf bytes filled into a template of
the record model's own JCS output instead of serialised one by one. It then
times inclusion proofs, consistency proofs and roots against tree sizes
10^3 ... 10^6 of that one log, counts the store reads each makes, and checks
every proof it times against roots computed independently while building.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import importlib.util
import itertools
import json
import math
import os
import platform
import random
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from bench.report import table
from gateway.audit.log import MAX_BATCH, AuditLog, CheckpointPolicy
from gateway.audit.merkle import CompactRange, NodeKey, leaf_hash
from gateway.audit.merkle import verify_consistency as merkle_verify_consistency
from gateway.audit.merkle import verify_inclusion as merkle_verify_inclusion
from gateway.audit.note import NoteSigner
from gateway.audit.records import AuditRecord, Pseudonymizer, record_time
from gateway.audit.store import (
    AppendQueue,
    AuditStore,
    AuditStoreError,
    PendingEntry,
    SqliteAuditStore,
    StoredCheckpoint,
    build_batch,
)
from gateway.errors import SetupError
from gateway.keys import b64url

DESCRIPTION = (
    "audit log: append throughput with group commit vs one commit per record, "
    "and proof time at 10^3..10^6 records"
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
ORIGIN = "bench.example/audit"

# Defaults of the full run and of --quick.
FULL = {"records": 1_000_000, "single": 2_000, "group": 20_000, "samples": 1_000}
QUICK = {"records": 100_000, "single": 500, "group": 5_000, "samples": 300}
WARMUP_APPENDS = 50
WARMUP_PROOFS = 50
BUILD_BATCH = 32_768
SUBJECTS = 65_536  # distinct subject pseudonyms in the bulk log
END_USERS = 512  # distinct caseworkers
RECORD_SPACING_MS = 50  # bulk records are 20 per second of log time
BASE_TIME = 1_795_694_400  # 2026-11-26T12:00:00Z: fixed, so runs compare
RETENTION_S = 30 * 86_400  # the example contract's retention_days

# An exchange as the inbound pipeline records it, with every member an exchange has
# (contracts/examples/benefits-income.yaml); the per-exchange values are filled per record.
EXCHANGE_CONSTANTS: dict[str, Any] = {
    "kind": "exchange",
    "direction": "inbound",
    "outcome": "ok",
    "status": 200,
    "consumer": "social-benefits",
    "provider": "tax-authority",
    "service": "income-records",
    "contract": "benefits-income-2026",
    "contract_version": 3,
    "purpose": "benefit-eligibility",
    "legal_basis": "Social Security Act s.12; GDPR Art. 6(1)(e)",
    "client": "caseworker-app",
    "fields": ["national_id", "year", "taxable_income"],
}


_Value = TypeVar("_Value")


class SkipError(Exception):
    """A part of the benchmark that cannot run here; the message says why."""


# -- small helpers -----------------------------------------------------------


def _percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (not empty)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def _round(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits (JSON stays readable)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def _timing(seconds: Sequence[float]) -> dict[str, float]:
    return {
        "samples": len(seconds),
        "median_ms": _round(statistics.median(seconds) * 1e3),
        "p99_ms": _round(_percentile(seconds, 0.99) * 1e3),
        "mean_ms": _round(statistics.fmean(seconds) * 1e3),
        "max_ms": _round(max(seconds) * 1e3),
    }


def _say(text: str = "") -> None:
    print(text, flush=True)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# -- machine and file system facts -------------------------------------------


def filesystem_of(path: Path) -> dict[str, str]:
    """The mount holding ``path``: device, type and options (from /proc/mounts)."""
    target = str(path.resolve())
    best: dict[str, str] = {"mount_point": "?", "type": "unknown", "device": "?", "options": ""}
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 4:
                continue
            device, point, kind, options = parts[:4]
            point = point.replace("\\040", " ")
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best["mount_point"].replace("?", "")):
                best = {"mount_point": point, "type": kind, "device": device, "options": options}
    return best


def fsync_probe(directory: Path, rounds: int = 100) -> dict[str, float]:
    """Time ``rounds`` appends of 4 KiB, each followed by fsync, in ``directory``."""
    path = directory / "fsync-probe"
    took = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        block = os.urandom(4096)
        for _ in range(rounds):
            os.write(fd, block)
            started = time.perf_counter()
            os.fsync(fd)
            took.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {
        "rounds": rounds,
        "median_ms": _round(statistics.median(took) * 1e3),
        "p99_ms": _round(_percentile(took, 0.99) * 1e3),
    }


def machine_info() -> dict[str, Any]:
    """CPU, memory, Python and SQLite versions of this machine."""
    cpu_model = platform.processor() or "unknown"
    memory_mb = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.partition(":")[2].strip()
                break
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = int(line.split()[1]) // 1024
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": cpu_model,
        "memory_mb": memory_mb,
        "load_average_1m": _round(os.getloadavg()[0], 3),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "sqlite_version": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }


# -- records -----------------------------------------------------------------


def _random_token(size: int) -> str:
    return b64url(secrets.token_bytes(size))


class ExchangeRecords:
    """Realistic exchange records: fresh identities, pseudonymised subjects and end users."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.pseudonymize = Pseudonymizer({1: secrets.token_bytes(32)})
        self._users = [self.pseudonymize(f"caseworker-{n:04d}") for n in range(END_USERS)]

    def record(self, now: float) -> AuditRecord:
        """One exchange record, as ``write_audit`` builds it, at time ``now``."""
        rng = self._rng
        return AuditRecord(
            record_id=_random_token(16),
            salt=_random_token(16),
            time=record_time(now),
            **EXCHANGE_CONSTANTS,
            end_user=rng.choice(self._users),
            subject=self.pseudonymize(f"{rng.randrange(10**9):09d}"),
            jti=_random_token(16),
            req_hash=_random_token(32),
            resp_hash=_random_token(32),
            evidence=_random_token(64),
            latency_us=rng.randrange(2_000, 90_000),
        )


class BulkRecord:
    """Stands in for an :class:`AuditRecord` in ``build_batch``: its leaf, already serialised.

    ``build_batch`` asks a record for ``at_index(index).leaf_bytes()`` and the
    indexed members; this one answers with leaf bytes filled into a template
    of the model's own JCS output (checked against the model in
    :meth:`BulkLeaves.batch`), which costs microseconds instead of tens.
    """

    __slots__ = ("expires_at", "index", "leaf", "subject", "time")

    kind = EXCHANGE_CONSTANTS["kind"]
    consumer = EXCHANGE_CONSTANTS["consumer"]
    provider = EXCHANGE_CONSTANTS["provider"]
    contract = EXCHANGE_CONSTANTS["contract"]
    purpose = EXCHANGE_CONSTANTS["purpose"]
    outcome = EXCHANGE_CONSTANTS["outcome"]

    def __init__(self, index: int, leaf: bytes, subject: str, when: str, expires_at: str) -> None:
        self.index = index
        self.leaf = leaf
        self.subject = subject
        self.time = when
        self.expires_at = expires_at

    def at_index(self, index: int) -> BulkRecord:
        """This record, which was generated for ``index`` and no other."""
        if index != self.index:
            raise RuntimeError(f"bulk record {self.index} placed at {index}")
        return self

    def leaf_bytes(self) -> bytes:
        """The leaf as the model would serialise it."""
        return self.leaf


# The per-record values of a bulk leaf, in order, with their lengths in one random b64url run.
_BULK_TOKENS = (
    ("record_id", 22),
    ("salt", 22),
    ("jti", 22),
    ("req_hash", 43),
    ("resp_hash", 43),
    ("evidence", 86),
)
_BULK_RUN = 240  # 180 random bytes in base64url: covers the 238 characters above


class BulkLeaves:
    """Leaf bytes of exchange records at consecutive indices, fast."""

    def __init__(self, rng: random.Random, records: ExchangeRecords) -> None:
        self._rng = rng
        self._subjects = [records.pseudonymize(f"{n:09d}") for n in range(SUBJECTS)]
        self._users = [records.pseudonymize(f"caseworker-{n:04d}") for n in range(END_USERS)]
        self._latencies = [rng.randrange(2_000, 90_000) for _ in range(4096)]
        self._second = -1
        self._stamps = ("", "")
        self.template = self._template()
        self.checked = 0

    @staticmethod
    def _values(
        index: int, when: str, run: str, *, subject: str, user: str, latency: int
    ) -> dict[str, Any]:
        values: dict[str, Any] = {"index": index, "time": when, "subject": subject}
        offset = 0
        for name, length in _BULK_TOKENS:
            values[name] = run[offset : offset + length]
            offset += length
        values["end_user"] = user
        values["latency_us"] = latency
        return values

    def _template(self) -> str:
        """The model's JCS output with a ``str.format`` field for every per-record value."""
        index_marker = 7_777_777_777_001
        markers: dict[str, Any] = {
            "index": index_marker,
            "time": "@time@",
            "subject": "@subject@",
            "end_user": "@end_user@",
            "latency_us": 7_777_777_777_002,
            **{name: f"@{name}@" for name, _ in _BULK_TOKENS},
        }
        record = AuditRecord(
            **{key: value for key, value in markers.items() if key != "index"},
            **EXCHANGE_CONSTANTS,
        ).at_index(index_marker)
        text = record.leaf_bytes().decode("utf-8").replace("{", "{{").replace("}", "}}")
        for name, marker in markers.items():
            literal = str(marker) if isinstance(marker, int) else f'"{marker}"'
            slot = "{" + name + "}"
            replacement = slot if isinstance(marker, int) else f'"{slot}"'
            if text.count(literal) != 1:
                raise RuntimeError(f"the record model's leaf holds {literal} not exactly once")
            text = text.replace(literal, replacement)
        return text

    def _time(self, index: int) -> tuple[str, str]:
        """The record's RFC 3339 time and its expiry (30 days later), for ``index``."""
        second, millis = divmod(BASE_TIME * 1000 + index * RECORD_SPACING_MS, 1000)
        if second != self._second:
            self._second = second
            self._stamps = (
                record_time(second)[:-4],
                record_time(second + RETENTION_S)[:-4],
            )
        suffix = f"{millis:03d}Z"
        return self._stamps[0] + suffix, self._stamps[1] + suffix

    def batch(self, start: int, count: int) -> list[BulkRecord]:
        """Records for ``start .. start + count - 1``; the first is checked against the model."""
        runs = base64.urlsafe_b64encode(os.urandom(count * _BULK_RUN * 3 // 4)).decode("ascii")
        subjects = self._rng.choices(self._subjects, k=count)
        users = self._rng.choices(self._users, k=count)
        latencies = self._rng.choices(self._latencies, k=count)
        fill = self.template.format
        out = []
        for offset in range(count):
            index = start + offset
            when, expires = self._time(index)
            run = runs[offset * _BULK_RUN : (offset + 1) * _BULK_RUN]
            values = self._values(
                index,
                when,
                run,
                subject=subjects[offset],
                user=users[offset],
                latency=latencies[offset],
            )
            leaf = fill(**values).encode("ascii")
            out.append(BulkRecord(index, leaf, subjects[offset], when, expires))
        self._check(out[0], runs[:_BULK_RUN], users[0], latencies[0])
        return out

    def _check(self, bulk: BulkRecord, run: str, user: str, latency: int) -> None:
        values = self._values(
            bulk.index, bulk.time, run, subject=bulk.subject, user=user, latency=latency
        )
        index = values.pop("index")
        model = AuditRecord(**values, **EXCHANGE_CONSTANTS).at_index(index).leaf_bytes()
        if model != bulk.leaf:
            raise RuntimeError(f"bulk leaf {index} differs from the record model's bytes")
        self.checked += 1


# -- a store that counts what the log asks of it -----------------------------


class _CountingQueue:
    """An :class:`AppendQueue` that notes the size of each batch taken (from any thread)."""

    def __init__(self, inner: AppendQueue, batches: list[int]) -> None:
        self._inner = inner
        self._batches = batches

    def take(self) -> Sequence[PendingEntry]:
        entries = self._inner.take()
        if entries:
            self._batches.append(len(entries))
        return entries

    def settle(self, outcome: int | Exception) -> None:
        self._inner.settle(outcome)


class CountingStore:
    """Wraps an :class:`AuditStore`; counts transactions, store calls and rows read."""

    def __init__(self, inner: AuditStore) -> None:
        self.inner = inner
        self.batches: list[int] = []
        self.checkpoints_signed = 0
        self.calls = 0
        self.rows = 0

    def reset(self) -> None:
        """Forget the counts so far."""
        self.batches = []
        self.checkpoints_signed = 0
        self.calls = 0
        self.rows = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append_batch(self, entries: Sequence[PendingEntry]) -> int:
        """One transaction of ``len(entries)`` records."""
        self.batches.append(len(entries))
        return await self.inner.append_batch(entries)

    async def append_pending(self, queue: AppendQueue) -> None:
        """The log's group commits: the inner store drains ``queue``, each batch counted."""
        await self.inner.append_pending(_CountingQueue(queue, self.batches))

    async def add_checkpoint(
        self, sign: Callable[[int, bytes], str], min_size: int = 1
    ) -> StoredCheckpoint | None:
        """A checkpoint transaction (the log signs one every 1,000 records)."""
        stored = await self.inner.add_checkpoint(sign, min_size)
        self.checkpoints_signed += stored is not None
        return stored

    async def size(self) -> int:
        """One read (one SELECT)."""
        self.calls += 1
        self.rows += 1
        return await self.inner.size()

    async def hashes(self, keys: Collection[NodeKey]) -> dict[NodeKey, bytes]:
        """One call reading ``len(keys)`` rows (in SQLite, one SELECT each)."""
        self.calls += 1
        self.rows += len(keys)
        return await self.inner.hashes(keys)


def _log(store: AuditStore, policy: CheckpointPolicy | None = None) -> AuditLog:
    return AuditLog(store, ORIGIN, NoteSigner.generate(ORIGIN), policy=policy)


# -- part 1: appends ---------------------------------------------------------


@dataclass(frozen=True)
class AppendPlan:
    """How many records each mode appends, from how many tasks, in how many rounds."""

    single: int
    group: int
    concurrency: int
    rounds: int = 4


@dataclass
class ModeTotals:
    """What one mode did over every round."""

    records: int = 0
    seconds: float = 0.0
    batches: list[int] = field(default_factory=list)
    checkpoints: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(
        self, records: int, seconds: float, latencies: list[float], store: CountingStore
    ) -> float:
        """Count one round; its records per second."""
        self.records += records
        self.seconds += seconds
        self.batches += store.batches
        self.checkpoints += store.checkpoints_signed
        self.latencies += latencies
        return records / seconds

    def result(self, mode: str) -> dict[str, Any]:
        """The mode's figures over every round."""
        return {
            "mode": mode,
            "records": self.records,
            "seconds": _round(self.seconds),
            "records_per_s": _round(self.records / self.seconds),
            "transactions": len(self.batches),
            "checkpoint_transactions": self.checkpoints,
            "mean_batch": _round(statistics.fmean(self.batches)) if self.batches else 0,
            "max_batch": max(self.batches, default=0),
            "append_latency_p50_ms": _round(statistics.median(self.latencies) * 1e3),
            "append_latency_p99_ms": _round(_percentile(self.latencies, 0.99) * 1e3),
        }


async def _append_one_by_one(log: AuditLog, records: Sequence[AuditRecord]) -> list[float]:
    latencies = []
    for record in records:
        started = time.perf_counter()
        await log.append(record)
        latencies.append(time.perf_counter() - started)
    return latencies


async def _append_concurrently(
    log: AuditLog, records: Sequence[AuditRecord], concurrency: int
) -> list[float]:
    latencies: list[float] = []
    pending = iter(records)

    async def appender() -> None:
        for record in pending:  # one iterator shared by every task
            started = time.perf_counter()
            await log.append(record)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(appender() for _ in range(concurrency)))
    return latencies


def _chunks(items: Sequence[_Value], parts: int) -> list[Sequence[_Value]]:
    """``items`` in ``parts`` consecutive slices of nearly equal length."""
    bounds = [len(items) * part // parts for part in range(parts + 1)]
    return [items[lo:hi] for lo, hi in itertools.pairwise(bounds)]


async def bench_appends(
    store: AuditStore,
    plan: AppendPlan,
    records: ExchangeRecords,
    describe: Callable[[], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """Per-record commits and group commit, through one :class:`AuditLog` on ``store``.

    The two modes alternate over ``plan.rounds`` rounds, so a drift of the
    disk's fsync time (common on shared machines) weighs on both alike.
    ``describe`` is called once the store is open and returns its durability settings.
    """
    counting = CountingStore(store)
    # Records are built before the clock starts: building is the caller's work, alike in both.
    now = time.time()
    warmup = [records.record(now) for _ in range(WARMUP_APPENDS)]
    single = [records.record(now) for _ in range(plan.single)]
    group = [records.record(now) for _ in range(plan.group)]
    leaf_sizes = [len(record.at_index(10**6).leaf_bytes()) for record in single[:200]]
    one, grouped, rounds = ModeTotals(), ModeTotals(), []
    log = _log(counting)  # the default checkpoint policy: one signed every 1,000 records
    await log.open()
    try:
        settings = await describe()
        await _append_one_by_one(log, warmup)
        rounds_of = max(1, min(plan.rounds, plan.single))
        pairs = zip(_chunks(single, rounds_of), _chunks(group, rounds_of), strict=True)
        for single_part, group_part in pairs:
            counting.reset()
            started = time.perf_counter()
            latencies = await _append_one_by_one(log, single_part)
            single_rate = one.add(
                len(single_part), time.perf_counter() - started, latencies, counting
            )
            counting.reset()
            started = time.perf_counter()
            latencies = await _append_concurrently(log, group_part, plan.concurrency)
            group_rate = grouped.add(
                len(group_part), time.perf_counter() - started, latencies, counting
            )
            rounds.append(
                {
                    "single_records_per_s": _round(single_rate),
                    "group_records_per_s": _round(group_rate),
                    "group_over_single": _round(group_rate / single_rate),
                }
            )
        expected = WARMUP_APPENDS + plan.single + plan.group
        size, count = await store.size(), await store.count()
        if not size == count == expected:
            raise RuntimeError(f"the log holds {size} records ({count} rows), not {expected}")
    finally:
        await log.close()
    single_result = one.result("one commit per record")
    group_result = grouped.result(f"group commit (C={plan.concurrency})")
    return {
        "store": settings,
        "single": single_result,
        "group": group_result,
        "group_over_single": _round(group_result["records_per_s"] / single_result["records_per_s"]),
        "rounds": rounds,
        "leaf_bytes_mean": round(statistics.fmean(leaf_sizes)),
        "max_batch_setting": MAX_BATCH,
    }


def serialisation_cost(records: ExchangeRecords, count: int = 2_000) -> dict[str, Any]:
    """CPU time of ``build_batch`` per record (JCS leaf, hashes, tree nodes): no I/O.

    The log's single writer does this for every record, so it bounds group
    commit's throughput on one core whatever the disk.
    """
    now = time.time()
    entries = [PendingEntry(records.record(now), None) for _ in range(count)]
    started = time.process_time()
    build_batch(0, [], entries)
    per_record = (time.process_time() - started) / count
    return {
        "build_batch_us_per_record": _round(per_record * 1e6),
        "records_per_s_ceiling_one_core": _round(1 / per_record),
    }


async def run_sqlite_appends(
    workdir: Path, plan: AppendPlan, records: ExchangeRecords
) -> dict[str, Any]:
    """Part 1 on a fresh SQLite store in ``workdir``."""
    path = workdir / "appends.db"
    store = SqliteAuditStore(path)

    async def describe() -> dict[str, Any]:
        facts: dict[str, Any] = {"kind": "sqlite", "path": str(path)}
        # The writing connection's own settings (synchronous is per connection).
        conn = getattr(store, "_write_conn", None)
        if isinstance(conn, sqlite3.Connection):
            levels = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
            facts["journal_mode"] = conn.execute("PRAGMA journal_mode").fetchone()[0]
            synchronous = conn.execute("PRAGMA synchronous").fetchone()[0]
            facts["synchronous"] = levels.get(synchronous, str(synchronous))
        facts["filesystem"] = filesystem_of(workdir)
        return facts

    return await bench_appends(store, plan, records, describe)


# -- part 1 on PostgreSQL ----------------------------------------------------


def _load_test_pg() -> Any:
    """``tests/pg.py`` of this repository, imported by path; SkipError if it is not there."""
    path = ROOT / "tests" / "pg.py"
    if not path.is_file():
        raise SkipError("GATEWAY_TEST_POSTGRES_URL is unset and tests/pg.py does not exist")
    spec = importlib.util.spec_from_file_location("_bench_tests_pg", path)
    if spec is None or spec.loader is None:
        raise SkipError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.asynccontextmanager
async def postgres_url(workdir: Path) -> AsyncIterator[tuple[str, str]]:
    """A PostgreSQL URL with no audit tables yet, and where it comes from.

    ``GATEWAY_TEST_POSTGRES_URL`` if set (in a new schema, dropped afterwards),
    else a throwaway server started by ``tests/pg.py``. Raises SkipError
    when neither is possible.
    """
    import asyncpg  # noqa: PLC0415 - only PostgreSQL runs need it

    given = os.environ.get("GATEWAY_TEST_POSTGRES_URL")
    if given:
        schema = f"bench_audit_{os.getpid()}_{secrets.token_hex(4)}"
        try:
            conn = await asyncpg.connect(given, timeout=10)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise SkipError(f"GATEWAY_TEST_POSTGRES_URL is not reachable: {exc}") from None
        try:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            separator = "&" if "?" in given else "?"
            try:
                yield (
                    f"{given}{separator}options=-csearch_path%3D{schema}",
                    f"GATEWAY_TEST_POSTGRES_URL, schema {schema} (dropped afterwards)",
                )
            finally:
                await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            await conn.close()
        return
    pg = _load_test_pg()
    try:
        url, stop = await asyncio.to_thread(pg.start_postgres, workdir)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        raise SkipError(f"cannot start a PostgreSQL server with tests/pg.py: {exc}") from None
    try:
        yield url, "throwaway server started by tests/pg.py (fsync=on, synchronous_commit=on)"
    finally:
        await asyncio.to_thread(stop)


async def _postgres_settings(url: str) -> dict[str, Any]:
    import asyncpg  # noqa: PLC0415 - only PostgreSQL runs need it

    facts: dict[str, Any] = {"kind": "postgresql"}
    conn = await asyncpg.connect(url, timeout=10)
    try:
        for name in (
            "server_version",
            "fsync",
            "synchronous_commit",
            "wal_sync_method",
            "full_page_writes",
            "commit_delay",
        ):
            facts[name] = await conn.fetchval(f"SHOW {name}")
        with contextlib.suppress(asyncpg.PostgresError):  # needs pg_read_all_settings
            data = await conn.fetchval("SHOW data_directory")
            facts["data_directory"] = data
            facts["filesystem"] = filesystem_of(Path(data))
    finally:
        await conn.close()
    return facts


async def run_postgres_appends(
    workdir: Path, plan: AppendPlan, records: ExchangeRecords
) -> dict[str, Any]:
    """Part 1 on PostgreSQL; ``{"skipped": reason}`` when there is no server to use."""
    try:
        from gateway.audit.postgres import PostgresAuditStore  # noqa: PLC0415
    except ImportError as exc:
        return {"skipped": f"the PostgreSQL store cannot be imported: {exc}"}
    try:
        async with postgres_url(workdir) as (url, source):

            async def describe() -> dict[str, Any]:
                return {**await _postgres_settings(url), "source": source}

            try:
                return await bench_appends(PostgresAuditStore(url), plan, records, describe)
            except (SetupError, AuditStoreError) as exc:
                return {"skipped": f"the PostgreSQL store failed: {exc}"}
    except SkipError as exc:
        return {"skipped": str(exc)}


# -- part 2: proofs at scale -------------------------------------------------


def proof_sizes(total: int) -> list[int]:
    """10^3, 10^4, ... up to ``total``, and ``total`` itself."""
    sizes = [10**exponent for exponent in range(3, 19) if 10**exponent <= total]
    if total not in sizes:
        sizes.append(total)
    return sizes


async def build_log(
    path: Path, total: int, wanted: Collection[int], bulk: BulkLeaves
) -> tuple[dict[str, Any], dict[int, bytes]]:
    """Append ``total`` records to a new SQLite store at ``path`` in large transactions.

    Returns the build figures and the roots at the sizes in ``wanted``, computed
    from the leaves in memory, apart from the store (a reference to check against).
    """
    store = SqliteAuditStore(path)
    await store.open()
    reference = CompactRange()
    wanted = set(wanted)
    roots: dict[int, bytes] = {}
    generate_s = store_s = 0.0
    leaf_bytes = transactions = 0
    report_every = max(total // 4, 1)
    started = time.perf_counter()
    try:
        for start in range(0, total, BUILD_BATCH):
            count = min(BUILD_BATCH, total - start)
            began = time.perf_counter()
            entries = []
            for record in bulk.batch(start, count):
                reference.push(leaf_hash(record.leaf))
                if reference.size in wanted:
                    roots[reference.size] = reference.root()
                leaf_bytes += len(record.leaf)
                # A BulkRecord stands in for the AuditRecord build_batch would serialise.
                entries.append(PendingEntry(record, record.expires_at))  # type: ignore[arg-type]
            stored = time.perf_counter()
            first = await store.append_batch(entries)
            done = time.perf_counter()
            generate_s += stored - began
            store_s += done - stored
            transactions += 1
            if first != start:
                raise RuntimeError(f"the store placed batch {start} at {first}")
            if (start + count) // report_every != start // report_every or start + count == total:
                rate = (start + count) / (done - started)
                _say(f"  built {start + count:>10,} of {total:,} records ({rate:,.0f}/s)")
    finally:
        await store.close()
    elapsed = time.perf_counter() - started
    files = [path, path.with_name(path.name + "-wal")]
    return {
        "records": total,
        "seconds": _round(elapsed),
        "records_per_s": _round(total / elapsed),
        "store_append_seconds": _round(store_s),
        "generate_and_reference_seconds": _round(generate_s),
        "transactions": transactions,
        "records_per_transaction": BUILD_BATCH,
        "leaf_bytes_mean": round(leaf_bytes / total),
        "database_bytes": sum(f.stat().st_size for f in files if f.exists()),
        "leaves_checked_against_model": bulk.checked,
        "path": "store.append_batch (border read, build_batch, inserts, one transaction)",
    }, roots


@dataclass
class OpTimes:
    """The timed calls of one operation at one tree size."""

    took: list[float] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)

    async def time(self, counting: CountingStore, call: Awaitable[_Value]) -> _Value:
        """Await ``call``, recording how long it took and what it read from the store."""
        counting.reset()
        started = time.perf_counter()
        value = await call
        self.took.append(time.perf_counter() - started)
        self.calls.append(counting.calls)
        self.rows.append(counting.rows)
        return value

    def result(self) -> dict[str, Any]:
        """Timings, store calls, rows read and proof lengths; every call was verified."""
        return {
            **_timing(self.took),
            "store_calls_mean": _round(statistics.fmean(self.calls)),
            "rows_read_mean": _round(statistics.fmean(self.rows)),
            "rows_read_max": max(self.rows),
            "proof_hashes_mean": _round(statistics.fmean(self.hashes)) if self.hashes else None,
            "proof_hashes_max": max(self.hashes, default=None),
            "verified": len(self.took),
        }


async def _inclusion(
    log: AuditLog, counting: CountingStore, times: OpTimes, *, index: int, size: int, root: bytes
) -> None:
    proof = await times.time(counting, log.inclusion_proof(index, size))
    times.hashes.append(len(proof))
    stored = await log.read(index)  # the leaf, untimed, to verify the proof with
    if stored.leaf is None or json.loads(stored.leaf)["index"] != index:
        raise RuntimeError(f"leaf {index} does not name its own index")
    digest = leaf_hash(stored.leaf)
    if digest != stored.leaf_hash:
        raise RuntimeError(f"leaf {index} does not match its stored hash")
    merkle_verify_inclusion(index, size, digest, proof, root)


async def measure_proofs(
    path: Path,
    *,
    sizes: Sequence[int],
    roots: dict[int, bytes],
    firsts: dict[int, list[int]],
    samples: int,
    rng: random.Random,
) -> list[dict[str, Any]]:
    """Time proofs and roots at each of ``sizes`` of the log at ``path``; verify each.

    The sizes take turns, one call each, so whatever else the machine does
    while the benchmark runs weighs on every size alike.
    """
    counting = CountingStore(SqliteAuditStore(path))
    quiet = CheckpointPolicy(
        every_records=1 << 62, every_seconds=3600.0, retention_check_seconds=3600.0
    )
    log = _log(counting, quiet)
    inclusion = {size: OpTimes() for size in sizes}
    consistency = {size: OpTimes() for size in sizes}
    root = {size: OpTimes() for size in sizes}
    await log.open()
    try:
        for _ in range(WARMUP_PROOFS):
            for size in sizes:
                await log.inclusion_proof(rng.randrange(size), size)
        for _ in range(samples):
            for size in sizes:
                index = rng.randrange(size)
                await _inclusion(
                    log, counting, inclusion[size], index=index, size=size, root=roots[size]
                )
        for turn in range(max(len(each) for each in firsts.values())):
            for size in sizes:
                first = firsts[size][turn]
                proof = await consistency[size].time(counting, log.consistency_proof(first, size))
                consistency[size].hashes.append(len(proof))
                merkle_verify_consistency(first, size, proof, roots[first], roots[size])
        for _ in range(max(samples // 5, 50)):
            for size in sizes:
                if await root[size].time(counting, log.root(size)) != roots[size]:
                    raise RuntimeError(f"the store's root at {size} differs from the reference")
    finally:
        await log.close()
    results = []
    for size in sizes:
        row: dict[str, Any] = {
            "size": size,
            "log2_size": _round(math.log2(size)),
            "inclusion": inclusion[size].result(),
            "consistency": consistency[size].result(),
            "root": root[size].result(),
        }
        results.append(row)
        _say(
            f"  size {size:>10,}: inclusion {row['inclusion']['median_ms']:.3f} ms,"
            f" consistency {row['consistency']['median_ms']:.3f} ms,"
            f" root {row['root']['median_ms']:.3f} ms (medians)"
        )
    return results


def growth(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How much each operation's median time and reads grew from the first size to the last."""
    small, large = results[0], results[-1]
    out: dict[str, Any] = {
        "from_size": small["size"],
        "to_size": large["size"],
        "log2_ratio": _round(math.log2(large["size"]) / math.log2(small["size"])),
        "linear_ratio": _round(large["size"] / small["size"]),
    }
    for op in ("inclusion", "consistency", "root"):
        out[op] = _round(large[op]["median_ms"] / small[op]["median_ms"], 3)
        out[f"{op}_rows_read"] = _round(
            large[op]["rows_read_mean"] / small[op]["rows_read_mean"], 3
        )
    if len(results) >= 3:
        # Median inclusion time against log2(size): a straight line is logarithmic growth.
        levels = [math.log2(row["size"]) for row in results]
        medians = [row["inclusion"]["median_ms"] for row in results]
        fit = statistics.linear_regression(levels, medians)
        out["inclusion_fit"] = {
            "ms_per_doubling": _round(fit.slope),
            "ms_at_one_leaf": _round(fit.intercept),
            "r_squared": _round(statistics.correlation(levels, medians) ** 2, 3),
        }
    return out


async def run_proofs(
    workdir: Path, total: int, samples: int, rng: random.Random, records: ExchangeRecords
) -> dict[str, Any]:
    """Part 2: build a log of ``total`` records, then time and verify proofs at each size."""
    sizes = proof_sizes(total)
    # Consistency proofs start from random earlier sizes, chosen now so the build
    # can compute their reference roots on the way.
    firsts = {size: [rng.randint(1, size) for _ in range(max(samples // 2, 1))] for size in sizes}
    wanted = set(sizes).union(*firsts.values())
    path = workdir / "proofs.db"
    _say(f"Building a SQLite log of {total:,} records in {path} ...")
    built, roots = await build_log(path, total, wanted, BulkLeaves(rng, records))
    # Let the kernel write back what the build left dirty and free what it allocated,
    # so neither lands in the timings (each is reported).
    started = time.perf_counter()
    await asyncio.to_thread(os.sync)
    built["sync_seconds_after"] = _round(time.perf_counter() - started)
    gc.collect()
    _say(f"Timing proofs at sizes {', '.join(f'{s:,}' for s in sizes)} ...")
    results = await measure_proofs(
        path, sizes=sizes, roots=roots, firsts=firsts, samples=samples, rng=rng
    )
    return {"store": "sqlite", "build": built, "sizes": results, "growth": growth(results)}


# -- the command -------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m bench audit``."""
    parser.add_argument(
        "--records",
        type=int,
        help="size of the log built for proofs (default 1,000,000; --quick: 100,000)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=64, help="concurrent appenders in group mode (64)"
    )
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgresql", "both"),
        default="both",
        help="where to measure appends (both; PostgreSQL is skipped if no server can be had)."
        " Proofs are always measured on SQLite",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller counts: 10^5 records, 500/5,000 appends"
    )
    parser.add_argument("--single", type=int, help="appends one at a time (2,000; --quick: 500)")
    parser.add_argument("--group", type=int, help="appends in group mode (20,000; --quick: 5,000)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="the two append modes alternate over this many rounds (4)",
    )
    parser.add_argument(
        "--samples", type=int, help="inclusion proofs timed per size (1,000; --quick: 300)"
    )
    parser.add_argument(
        "--only", choices=("appends", "proofs"), help="run one part of the benchmark"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        help="where the stores are created (default: the system temporary directory);"
        " its file system decides what an fsync costs",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help="results folder (bench/results)"
    )
    parser.add_argument("--seed", type=int, default=2026, help="seed of the sampled indices")
    parser.add_argument("--keep", action="store_true", help="keep the stores afterwards")


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


@dataclass(frozen=True)
class Settings:
    """The resolved options of one run."""

    records: int
    samples: int
    plan: AppendPlan
    stores: tuple[str, ...]
    parts: tuple[str, ...]
    directory: Path
    output: Path
    seed: int
    keep: bool
    quick: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """Defaults filled in from the full or the quick set."""
        base = QUICK if args.quick else FULL
        stores = ("sqlite", "postgresql") if args.store == "both" else (args.store,)
        parts = (args.only,) if args.only else ("appends", "proofs")
        settings = cls(
            records=_given(args.records, base["records"]),
            samples=_given(args.samples, base["samples"]),
            plan=AppendPlan(
                single=_given(args.single, base["single"]),
                group=_given(args.group, base["group"]),
                concurrency=args.concurrency,
                rounds=args.rounds,
            ),
            stores=stores,
            parts=parts,
            directory=(args.dir or Path(tempfile.gettempdir())).resolve(),
            output=args.output,
            seed=args.seed,
            keep=args.keep,
            quick=args.quick,
        )
        if settings.records < 2:
            raise SystemExit("--records must be at least 2")
        if settings.samples < 1 or settings.plan.concurrency < 1:
            raise SystemExit("--samples and --concurrency must be positive")
        if min(settings.plan.single, settings.plan.group, settings.plan.rounds) < 1:
            raise SystemExit("--single, --group and --rounds must be positive")
        return settings


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print its tables, write its JSON results; 0 on success."""
    settings = Settings.from_args(args)
    settings.directory.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-audit-", dir=settings.directory))
    try:
        results = asyncio.run(_run(settings, workdir))
    finally:
        if settings.keep:
            _say(f"Stores kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    _report(results)
    latest, dated = _write(results, settings.output)
    _say(f"\nResults: {latest} and {dated}")
    return 0


async def _run(settings: Settings, workdir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    rng = random.Random(settings.seed)  # noqa: S311 - sampling indices, not secrets
    records = ExchangeRecords(rng)
    fsync = fsync_probe(workdir)
    results: dict[str, Any] = {
        "benchmark": "audit",
        "started_at": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": settings.quick,
        "settings": {
            "records": settings.records,
            "single_appends": settings.plan.single,
            "group_appends": settings.plan.group,
            "concurrency": settings.plan.concurrency,
            "rounds": settings.plan.rounds,
            "samples_per_size": settings.samples,
            "stores": list(settings.stores),
            "parts": list(settings.parts),
            "seed": settings.seed,
        },
        "machine": {
            **machine_info(),
            "store_dir": str(settings.directory),
            "store_filesystem": filesystem_of(workdir),
            "fsync_4k": fsync,
        },
    }
    _say(
        f"Stores in {workdir} ({results['machine']['store_filesystem']['type']});"
        f" fsync of 4 KiB there: median {fsync['median_ms']} ms, p99 {fsync['p99_ms']} ms"
    )
    if "appends" in settings.parts:
        appends: dict[str, Any] = {"writer_cpu": serialisation_cost(records)}
        if "sqlite" in settings.stores:
            _say(
                f"Appends on SQLite: {settings.plan.single:,} one by one and"
                f" {settings.plan.group:,} from {settings.plan.concurrency} tasks,"
                f" alternating over {settings.plan.rounds} rounds ..."
            )
            appends["sqlite"] = await run_sqlite_appends(workdir, settings.plan, records)
            results["group_over_single_sqlite"] = appends["sqlite"]["group_over_single"]
        if "postgresql" in settings.stores:
            _say("Appends on PostgreSQL ...")
            appends["postgresql"] = await run_postgres_appends(workdir, settings.plan, records)
            if "skipped" in appends["postgresql"]:
                _say(f"  skipped: {appends['postgresql']['skipped']}")
            else:
                ratio = appends["postgresql"]["group_over_single"]
                results["group_over_single_postgresql"] = ratio
        results["appends"] = appends
    if "proofs" in settings.parts:
        proofs = await run_proofs(workdir, settings.records, settings.samples, rng, records)
        results["proofs"] = proofs
        by_size = {row["size"]: row for row in proofs["sizes"]}
        at_million = by_size.get(10**6)
        results["inclusion_proof_ms_at_1e6"] = (
            at_million["inclusion"]["median_ms"] if at_million else None
        )
        results["inclusion_proof_p99_ms_at_1e6"] = (
            at_million["inclusion"]["p99_ms"] if at_million else None
        )
        results["proof_growth_1e3_to_1e6"] = (
            _round(
                at_million["inclusion"]["median_ms"] / by_size[1000]["inclusion"]["median_ms"], 3
            )
            if at_million and 1000 in by_size
            else None
        )
    results["machine"]["fsync_4k_at_end"] = fsync_probe(workdir)
    results["machine"]["load_average_1m_at_end"] = _round(os.getloadavg()[0], 3)
    results["runtime_s"] = _round(time.perf_counter() - started)
    return _headline_first(results)


def _headline_first(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers first in the JSON, details after."""
    first = (
        "benchmark",
        "started_at",
        "quick",
        "runtime_s",
        "group_over_single_sqlite",
        "group_over_single_postgresql",
        "inclusion_proof_ms_at_1e6",
        "inclusion_proof_p99_ms_at_1e6",
        "proof_growth_1e3_to_1e6",
    )
    ordered = {key: results[key] for key in first if key in results}
    machine = results["machine"]
    ordered["cpu_count"] = machine["cpu_count"]
    ordered["python"] = machine["python"]
    ordered["sqlite_version"] = machine["sqlite_version"]
    ordered.update({key: value for key, value in results.items() if key not in ordered})
    return ordered


def _write(results: dict[str, Any], output: Path) -> tuple[Path, Path]:
    output.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2) + "\n"
    stamp = datetime.strptime(results["started_at"], "%Y-%m-%dT%H:%M:%SZ")
    dated = output / f"audit-{stamp:%Y%m%d-%H%M%S}.json"
    latest = output / "audit-latest.json"
    dated.write_text(text)
    latest.write_text(text)
    return latest, dated


def _report(results: dict[str, Any]) -> None:
    machine = results["machine"]
    fs = machine["store_filesystem"]
    _say()
    _say(
        f"Machine: {machine['cpu_count']} CPUs ({machine['cpu_model']}),"
        f" Python {machine['python']},"
        f" SQLite {machine['sqlite_version']}; stores on {fs['type']} ({fs['device']}),"
        f" fsync of 4 KiB: median {machine['fsync_4k']['median_ms']} ms at start,"
        f" {machine['fsync_4k_at_end']['median_ms']} ms at end; load average"
        f" {machine['load_average_1m']} at start, {machine['load_average_1m_at_end']} at end"
    )
    appends = results.get("appends", {})
    rows: list[tuple[object, ...]] = []
    stores = {name: result for name, result in appends.items() if name != "writer_cpu"}
    for store, result in stores.items():
        if "skipped" in result:
            _say(f"{store}: skipped, {result['skipped']}")
            continue
        for key in ("single", "group"):
            mode = result[key]
            rows.append(
                (
                    store,
                    mode["mode"],
                    mode["records"],
                    mode["seconds"],
                    mode["records_per_s"],
                    mode["transactions"],
                    mode["mean_batch"],
                    mode["append_latency_p50_ms"],
                    mode["append_latency_p99_ms"],
                )
            )
    if rows:
        _say("\nAppend throughput (same store, same durable settings, same records)")
        headers: tuple[str, ...] = (
            "store",
            "mode",
            "records",
            "s",
            "records/s",
            "txns",
            "batch",
            "p50 ms",
            "p99 ms",
        )
        _say(table(headers, rows, _cell))
        for store, result in stores.items():
            if "skipped" not in result:
                settings = result["store"]
                durability = ", ".join(
                    f"{key}={settings[key]}"
                    for key in (
                        "journal_mode",
                        "synchronous",
                        "fsync",
                        "synchronous_commit",
                        "wal_sync_method",
                    )
                    if key in settings
                )
                each = [r["group_over_single"] for r in result["rounds"]]
                _say(
                    f"{store}: group commit / one commit per record ="
                    f" {result['group_over_single']}x (rounds {min(each)}x..{max(each)}x;"
                    f" {durability}; leaf {result['leaf_bytes_mean']} bytes)"
                )
    if "writer_cpu" in appends:
        cpu = appends["writer_cpu"]
        _say(
            f"Writer CPU per record (build_batch: JCS leaf, hashes, nodes):"
            f" {cpu['build_batch_us_per_record']} us, a ceiling of"
            f" {cpu['records_per_s_ceiling_one_core']:,.0f} records/s on one core"
        )
    proofs = results.get("proofs")
    if proofs:
        built = proofs["build"]
        _say(
            f"\nProofs (one SQLite log of {built['records']:,} records, built in"
            f" {built['seconds']} s = {built['records_per_s']:,.0f} records/s,"
            f" {built['database_bytes'] / 1e6:,.0f} MB, leaf {built['leaf_bytes_mean']} bytes);"
            " every timed proof verified"
        )
        rows = []
        for row in proofs["sizes"]:
            for op in ("inclusion", "consistency", "root"):
                figures = row[op]
                rows.append(
                    (
                        row["size"],
                        op,
                        figures["median_ms"],
                        figures["p99_ms"],
                        figures["store_calls_mean"],
                        figures["rows_read_mean"],
                        figures["proof_hashes_mean"] if op != "root" else "-",
                        figures["samples"],
                    )
                )
        headers = ("size", "operation", "median ms", "p99 ms", "calls", "rows read", "hashes", "n")
        _say(table(headers, rows, _cell))
        grown = proofs["growth"]
        _say(
            f"Growth {grown['from_size']:,} -> {grown['to_size']:,} records (median time):"
            f" inclusion {grown['inclusion']}x, consistency {grown['consistency']}x,"
            f" root {grown['root']}x; log2 ratio {grown['log2_ratio']}x,"
            f" linear would be {grown['linear_ratio']:,.0f}x"
        )
        if "inclusion_fit" in grown:
            fit = grown["inclusion_fit"]
            _say(
                f"Inclusion median = {fit['ms_at_one_leaf']} ms + {fit['ms_per_doubling']} ms"
                f" x log2(size) (r^2 {fit['r_squared']}): a fixed cost per call plus one"
                " more row read per tree level"
            )
    _say("\nHeadline")
    for key in (
        "group_over_single_sqlite",
        "group_over_single_postgresql",
        "inclusion_proof_ms_at_1e6",
        "inclusion_proof_p99_ms_at_1e6",
        "proof_growth_1e3_to_1e6",
    ):
        if key in results:
            _say(f"  {key}: {results[key]}")
    _say(f"  runtime_s: {results['runtime_s']}")
