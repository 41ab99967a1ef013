"""Exchange benchmark: what a secured exchange costs next to plain plumbing and its crypto.

Every server is a separate process on 127.0.0.1 and wrk drives the load from
a process of its own, in one run, with the same request, record and
concurrency for each scenario:

- A: client -> backend;
- B: client -> plain aiohttp proxy -> plain aiohttp proxy -> backend;
- C: client -> consumer gateway -> provider gateway -> backend
  (``gateway serve --config``: full protocol, audit on both sides);
- F: the crypto of one exchange through the project's envelope and token
  code, and through bare ``cryptography`` primitives (the floor);
- P: client -> provider gateway -> backend, wrk sending requests sealed
  beforehand as a consumer gateway seals them (``bench/sealed.py``), to see
  one gateway scale with ``--workers``.

For each: throughput, latency percentiles, CPU seconds per request of every
process (``/proc``), peak RSS. A, B and C alternate over rounds; every
headline figure is the median of its per-round values. Scaling curves follow
(concurrency, ``--workers``, the provider alone at ``--workers`` 1 and N,
payload size, contracts loaded, audit log size), each restarting the gateways
on a config of its own; then memory at 1,000 connections and, only when asked
for, over a long steady run (``soak``). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from bench import crypto
from bench.audit import (
    RECORD_SPACING_MS,
    RETENTION_S,
    BulkLeaves,
    CountingStore,
    ExchangeRecords,
    build_log,
    filesystem_of,
    fsync_probe,
    machine_info,
)
from bench.gwmetrics import Samples, scrape, summarise
from bench.loadgen import (
    OK_ANSWER,
    Load,
    LoadError,
    LoadResult,
    PostLoad,
    children_cpu_seconds,
    find_wrk,
)
from bench.network import (
    CONSUMER,
    PROVIDER,
    BenchNetwork,
    Variant,
    build,
    ensure_contract_set,
    write_configs,
)
from bench.payloads import parse_size, record_bytes, request_bytes, size_label
from bench.procs import (
    MachineTimes,
    ProcessError,
    Server,
    cpu_delta,
    post,
    raise_open_files,
    stop_all,
)
from bench.report import headline, print_report, write_results
from bench.sealed import SealedLoad, send_one
from gateway.audit.log import AuditLog
from gateway.audit.note import NoteSigner
from gateway.audit.records import record_time
from gateway.audit.store import SqliteAuditStore
from gateway.jose import CLOCK_SKEW_SECONDS, MAX_COMPACT_BYTES, MESSAGE_LIFETIME

DESCRIPTION = (
    "exchange: direct (A), two plain proxies (B), two gateways (C), crypto floor (F);"
    " throughput, latency, CPU and memory per process, scaling curves"
)

ROOT: Final = Path(__file__).resolve().parent.parent
RESULTS: Final = Path(__file__).resolve().parent / "results"

SCENARIOS: Final = ("A", "B", "C")
# The processes each scenario passes through, client side first (the backend is last).
CHAIN: Final = {
    "A": ("backend",),
    "B": ("proxy-1", "proxy-2", "backend"),
    "C": ("consumer-gw", "provider-gw", "backend"),
    "P": ("provider-gw", "backend"),
}
HOPS: Final = {
    "A": (),
    "B": ("proxy-1", "proxy-2"),
    "C": ("consumer-gw", "provider-gw"),
    "P": ("provider-gw",),
}
PARTS: Final = (
    "crypto",
    "main",
    "concurrency",
    "workers",
    "provider-workers",
    "connections",
    "payload",
    "contracts",
    "audit",
    "soak",
)
# What a run without --only does: everything but the long soak.
DEFAULT_PARTS: Final = tuple(part for part in PARTS if part != "soak")
LOAD_PARTS: Final = frozenset(PARTS) - {"crypto"}
GATEWAYS: Final = {CONSUMER: "consumer-gw", PROVIDER: "provider-gw"}

# Payloads above this size are sent one exchange at a time (memory per exchange is the question).
LARGE_PAYLOAD: Final = 1024 * 1024
# JWE compact size of a payload, roughly: base64 of a JWS that holds base64 of the body.
JWE_EXPANSION: Final = (4 / 3) ** 2
READY_TIMEOUT: Final = 240.0
# The connections part: this many connections, far above limits.max_in_flight (256).
MANY_CONNECTIONS: Final = 1000
# A sealed request is valid 120 s after it is made: a run of P stays well inside that.
SEALED_RUN_MAX_SECONDS: Final = 60.0
# How long a provider remembers a spent jti (exp + skew): its replay window's fill time.
REPLAY_WINDOW: Final = MESSAGE_LIFETIME + CLOCK_SKEW_SECONDS
# The soak part: its steady state starts once the provider's replay window is full
# (it then forgets ids as fast as it learns them), 30 s after that; RSS is read every 10 s.
SOAK_WARMUP: Final = REPLAY_WINDOW + 30.0
SOAK_SAMPLE_EVERY: Final = 10.0
# What the soak reads from the provider's metrics beside each RSS sample.
PROVIDER_SAMPLES: Final = {
    "provider_replay_ids": "gateway_replay_cache_entries",
    "provider_exchanges": "gateway_exchanges_total",
}
# The side-by-side lanes of the contracts and audit curves: lane N's network at the port
# base + N x this (a network uses base+1..+22).
LANE_PORT_STEP: Final = 30
# Servers are idle when together they use at most this share of a core over the window
# (/proc counts CPU time in ticks of 10 ms).
IDLE_SHARE: Final = 0.1
IDLE_WINDOW: Final = 0.3
# A run during which other processes kept this much of a core busy is flagged as noisy;
# before each run the benchmark waits (within --quiet-wait) until they use less.
NOISY_CORES: Final = 0.15
QUIET_WINDOW: Final = 0.5


@dataclass(frozen=True)
class Settings:
    """The resolved options of one run."""

    quick: bool
    rounds: int
    seconds: float
    warmup: float
    curve_seconds: float
    concurrency: int
    payload: int
    concurrencies: tuple[int, ...]
    payloads: tuple[int, ...]
    contract_counts: tuple[int, ...]
    audit_records: int
    workers: int
    provider_workers: int
    connections_seconds: float
    soak_seconds: float
    payload_concurrency: int
    parts: tuple[str, ...]
    port_base: int
    output: Path
    directory: Path
    keep: bool
    wrk: str
    crypto_batches: int
    crypto_per_batch: int
    audit_appends: int
    quiet_wait: float
    curve_runs: int
    curve_slices: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """Defaults of the full run, or of ``--quick``, filled in."""
        quick = bool(args.quick)

        def pick(value: Any, full: Any, fast: Any) -> Any:
            return value if value is not None else (fast if quick else full)

        parts = tuple(args.only.split(",")) if args.only else DEFAULT_PARTS
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise SystemExit(f"--only: unknown part(s) {sorted(unknown)}; choose from {PARTS}")
        try:
            payloads = tuple(
                parse_size(text) for text in pick(args.payloads, "64K,1M,8M", "1M").split(",")
            )
        except ValueError as exc:
            raise SystemExit(f"--payloads: {exc}") from None
        settings = cls(
            quick=quick,
            rounds=pick(args.rounds, 3, 1),
            seconds=pick(args.seconds, 10.0, 4.0),
            warmup=pick(args.warmup, 2.0, 1.0),
            curve_seconds=pick(args.curve_seconds, 6.0, 3.0),
            concurrency=args.concurrency,
            payload=parse_size(args.payload),
            concurrencies=_ints(pick(args.concurrencies, "1,16,256", "1,256")),
            payloads=payloads,
            contract_counts=_ints(pick(args.contracts, "1000,10000", "1000")),
            audit_records=pick(args.audit_records, 1_000_000, 100_000),
            workers=args.workers,
            provider_workers=args.provider_workers or len(os.sched_getaffinity(0)),
            connections_seconds=pick(args.connections_seconds, 20.0, 8.0),
            soak_seconds=args.soak_seconds,
            payload_concurrency=args.payload_concurrency,
            parts=tuple(part for part in PARTS if part in parts),
            port_base=args.port_base,
            output=args.output,
            directory=(args.dir or Path(tempfile.gettempdir())).resolve(),
            keep=args.keep,
            wrk=args.wrk,
            crypto_batches=pick(None, 7, 3),
            crypto_per_batch=pick(None, 300, 150),
            audit_appends=pick(None, 4000, 1500),
            quiet_wait=pick(args.quiet_wait, 45.0, 10.0),
            curve_runs=pick(args.curve_runs, 4, 1),
            curve_slices=pick(None, 2, 1),
        )
        if settings.rounds < 1 or settings.seconds < 1 or settings.curve_seconds < 1:
            raise SystemExit("--rounds, --seconds and --curve-seconds must be at least 1")
        if settings.provider_workers < 2:
            raise SystemExit("--provider-workers must be at least 2 (it is compared with 1)")
        if settings.soak_seconds < SOAK_SAMPLE_EVERY or settings.connections_seconds < 1:
            raise SystemExit(
                f"--soak-seconds must be at least {SOAK_SAMPLE_EVERY:.0f},"
                " --connections-seconds at least 1"
            )
        return settings


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise SystemExit(f"not a list of whole numbers: {text!r}") from None
    if any(value < 1 for value in values):
        raise SystemExit(f"every value must be positive: {text!r}")
    return values


def _say(text: str = "") -> None:
    print(text, flush=True)


def _rounded(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits."""
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


def median(values: Sequence[float]) -> float:
    """The median, rounded for the JSON."""
    return _rounded(statistics.median(values))


# -- the processes -------------------------------------------------------------


@dataclass
class Bench:
    """The network, the running servers and the files wrk sends."""

    settings: Settings
    network: BenchNetwork
    workdir: Path
    servers: dict[str, Server] = field(default_factory=dict)
    variant: Variant | None = None
    bodies: dict[int, Path] = field(default_factory=dict)
    headers_file: Path | None = None
    workers_available: str | None = None  # None: available; else why not
    startups: list[dict[str, Any]] = field(default_factory=list)
    quiet_budget: float = 0.0  # seconds left to wait for other processes to go quiet

    @property
    def logs(self) -> Path:
        """Where every process's output goes."""
        return self.workdir / "logs"

    def url(self, scenario: str) -> str:
        """The client's URL of ``scenario``."""
        if scenario == "A":
            return f"http://127.0.0.1:{self.network.backend_port}/income-records"
        if scenario == "B":
            return f"http://127.0.0.1:{self.network.proxy_ports[0]}/income-records"
        if scenario == "P":
            return self.network.service_url
        return self.network.exchange_url

    def body(self, size: int) -> Path:
        """The request body file of ``size`` bytes (asking for a record of the same size)."""
        if size not in self.bodies:
            path = self.workdir / "bodies" / f"request-{size}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(request_bytes(size))
            self.bodies[size] = path
        return self.bodies[size]

    def headers(self) -> Path:
        """The client's headers, one per line, for wrk."""
        if self.headers_file is None:
            self.headers_file = self.workdir / "headers.txt"
            lines = [f"{name}: {value}" for name, value in self.network.client_headers.items()]
            self.headers_file.write_text("\n".join(lines) + "\n")
        return self.headers_file

    def post_load(
        self, scenario: str, connections: int, payload: int, *, count_answers: bool = False
    ) -> PostLoad:
        """The client's request of ``payload`` bytes to ``scenario``, as wrk sends it."""
        return PostLoad(
            wrk=self.settings.wrk,
            url=self.url(scenario),
            connections=connections,
            body=self.body(payload),
            headers=self.headers(),
            log=self.logs / "wrk.log",
            count_answers=count_answers,
        )

    def start_plain(self, *, proxies: bool = True) -> None:
        """The backend and (unless ``proxies`` is false) the two proxy hops of B."""
        python = sys.executable
        backend_port = self.network.backend_port
        first, second = self.network.proxy_ports
        specs = {
            "backend": (["backend", "--port", str(backend_port)], backend_port),
            "proxy-2": (
                ["proxy", "--port", str(second), "--upstream", f"http://127.0.0.1:{backend_port}"],
                second,
            ),
            "proxy-1": (
                ["proxy", "--port", str(first), "--upstream", f"http://127.0.0.1:{second}"],
                first,
            ),
        }
        if not proxies:
            specs = {"backend": specs["backend"]}
        for name, (arguments, port) in specs.items():
            server = Server(
                name=name,
                command=[python, "-m", "bench.servers", *arguments],
                health_url=f"http://127.0.0.1:{port}/healthz",
                log_path=self.logs / f"{name}.log",
            )
            server.start(cwd=ROOT)
            self.servers[name] = server
        for name in specs:
            self.servers[name].wait_ready(60)

    def start_gateways(
        self, variant: Variant, agencies: Sequence[str] = tuple(GATEWAYS)
    ) -> dict[str, float]:
        """Both gateways (or those of ``agencies``) on the configs of ``variant``; seconds
        each took to be ready."""
        self.stop_gateways()
        paths = write_configs(self.network, variant)
        started = {agency: GATEWAYS[agency] for agency in agencies}
        for agency, name in started.items():
            port = self.network.gateway_port(agency)
            command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(paths[agency])]
            if variant.workers > 1:
                command += ["--workers", str(variant.workers)]
            server = Server(
                name=name,
                command=command,
                health_url=f"http://127.0.0.1:{port}/readyz",
                log_path=self.logs / f"{name}.log",
            )
            server.start(cwd=ROOT)
            self.servers[name] = server
        ready = {name: self.servers[name].wait_ready(READY_TIMEOUT) for name in started.values()}
        self.variant = variant
        self.startups.append(
            {"variant": variant.tag, "workers": variant.workers, **_rounded_map(ready)}
        )
        # Each worker's own readiness is not visible through one port: let them all start.
        if variant.workers > 1:
            time.sleep(2.0)
            for name in started.values():
                self.servers[name].refresh_members()
        return ready

    def stop_gateways(self) -> None:
        """Stop both gateways (their audit logs commit and checkpoint on SIGTERM)."""
        for name in GATEWAYS.values():
            server = self.servers.pop(name, None)
            if server is not None:
                server.stop()

    def stop(self) -> None:
        """Stop every server."""
        stop_all(self.servers.values())
        self.servers.clear()


def _rounded_map(values: dict[str, float]) -> dict[str, float]:
    return {key: _rounded(value) for key, value in values.items()}


def check_ports(network: BenchNetwork) -> None:
    """Refuse to start when one of the run's ports is taken."""
    ports = [
        network.gateway_port(CONSUMER),
        network.gateway_port(PROVIDER),
        network.backend_port,
        *network.proxy_ports,
    ]
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As the servers bind: connections of an earlier run in TIME_WAIT do not count.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise ProcessError(
                    f"port {port} on 127.0.0.1 is in use: pass another --port-base"
                ) from None


def source_state() -> dict[str, Any]:
    """The commit measured and any uncommitted change to ``gateway/`` (it is measured too)."""

    def git(*arguments: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(  # noqa: S603 - git with fixed arguments
                ["git", *arguments],  # noqa: S607 - git from PATH, as a developer runs it
                capture_output=True,
                text=True,
                check=False,
                cwd=ROOT,
                timeout=30,
            )
            if done.returncode == 0:
                return done.stdout
        return ""

    changed = [line[3:] for line in git("status", "--porcelain", "--", "gateway").splitlines()]
    return {"commit": git("rev-parse", "HEAD").strip() or None, "gateway_uncommitted": changed}


def workers_support() -> str | None:
    """None when ``gateway serve`` takes ``--workers``; otherwise why it cannot be measured."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=60,
    )
    if "--workers" in done.stdout:
        return None
    return "this version of `gateway serve` has no --workers option"


# -- one measurement -------------------------------------------------------------


def wait_quiet(bench: Bench) -> tuple[float, float]:
    """Wait, within the run's budget, until other processes leave the machine quiet.

    Our servers are idle when this is called, so what keeps the CPUs busy is
    someone else (another test run on a shared machine). Returns the seconds
    waited and the cores the others kept busy at the last look.
    """
    started = time.perf_counter()
    while True:
        before = MachineTimes.now()
        time.sleep(QUIET_WINDOW)
        others = MachineTimes.now().busy_seconds_since(before) / QUIET_WINDOW
        waited = time.perf_counter() - started
        if others <= NOISY_CORES or waited >= bench.quiet_budget:
            break
    bench.quiet_budget = max(0.0, bench.quiet_budget - waited)
    return waited, others


def wait_idle(servers: Iterable[Server], timeout: float = 60.0) -> float:
    """Wait until the servers together use under a tenth of a core; the seconds waited."""
    servers = list(servers)
    started = time.perf_counter()
    window = IDLE_WINDOW
    while time.perf_counter() - started < timeout:
        before = [server.cpu() for server in servers]
        time.sleep(window)
        after = [server.cpu() for server in servers]
        used = sum(sum(cpu_delta(b, a)) for b, a in zip(before, after, strict=True))
        if used <= IDLE_SHARE * window:
            break
    return time.perf_counter() - started


def scrape_gateways(bench: Bench, scenario: str) -> dict[str, Samples]:
    """The metrics of interest of the gateways ``scenario`` passes (single-process only)."""
    if bench.variant is not None and bench.variant.workers > 1:
        return {}
    return {
        name: scrape(f"http://127.0.0.1:{bench.network.gateway_port(agency)}/metrics")
        for agency, name in GATEWAYS.items()
        if name in HOPS[scenario]
    }


def check_answers(bench: Bench, size: int, scenarios: Sequence[str] = SCENARIOS) -> None:
    """One request per scenario: 200 and exactly the backend's record (C: released whole)."""
    expected = json.loads(record_bytes(size))
    body = bench.body(size).read_bytes()
    for scenario in scenarios:
        status, headers, raw = post(bench.url(scenario), body, bench.network.client_headers)
        if status != 200:
            raise ProcessError(
                f"scenario {scenario}: status {status} for a {size_label(size)} request:"
                f" {raw[:300]!r}"
            )
        if json.loads(raw) != expected:
            raise ProcessError(f"scenario {scenario}: the answer is not the backend's record")
        if scenario == "C" and not (
            "X-Audit-Index" in headers and "X-Provider-Audit-Index" in headers
        ):
            raise ProcessError("scenario C: the answer carries no audit indexes")


def _warm_up(load: Load, scenario: str, seconds: float) -> None:
    """A run that is not measured, so that the servers' pools, caches and heaps are warm."""
    load.prepare(seconds)
    warm = load.run(seconds)
    if warm.requests and warm.failed >= warm.requests:
        raise ProcessError(
            f"scenario {scenario}: every warm-up request failed ({warm.errors}, {warm.answers})"
        )


def measure(
    bench: Bench,
    scenario: str,
    *,
    connections: int,
    payload: int,
    seconds: float,
    warmup: float,
    label: str = "",
    sender: Load | None = None,
) -> dict[str, Any]:
    """One wrk run of ``scenario``, with CPU and memory of every process around it.

    ``sender`` is what wrk sends (default: the client's request of ``payload``
    bytes from ``connections`` connections); it prepares each run after the
    servers went idle and the machine quiet, before anything is read.
    """
    source = sender or bench.post_load(scenario, connections, payload)
    if warmup > 0:
        _warm_up(source, scenario, warmup)
    servers = bench.servers
    # Requests the warm-up left in flight must not be counted against this run.
    wait_idle(servers.values())
    quiet_wait, others_before = wait_quiet(bench)
    source.prepare(seconds)
    scraped = scrape_gateways(bench, scenario)
    rss_before, peak_before = _read_before(servers)
    cpu_before = _cpu_now(servers)
    machine_before = MachineTimes.now()
    load = source.run(seconds)
    machine_after = MachineTimes.now()
    machine_busy = machine_after.busy_share_since(machine_before)
    machine_busy_s = machine_after.busy_seconds_since(machine_before)
    cpu_during = _cpu_now(servers)
    if load.requests == 0:
        raise ProcessError(f"scenario {scenario}: no request completed ({load.errors})")
    # wrk stops with one request outstanding on each connection; the servers finish
    # those anyway. Their work is counted, and so are they: CPU per request is
    # (CPU until idle again) / (completed + connections), with no bias from requests
    # cut at either end of the run, however slow each one is.
    drained = wait_idle(servers.values())
    cpu_after = _cpu_now(servers)
    gateway_view = summarise(scraped, scrape_gateways(bench, scenario)) if scraped else {}
    served = load.requests + connections
    taken = _Readings(cpu_before, cpu_during, cpu_after, rss_before, peak_before)
    processes, servers_cpu = taken.figures(servers, served, load.seconds)
    every_cpu = servers_cpu + load.cpu_seconds
    latency = load.latency_us
    other = max(0.0, machine_busy_s - every_cpu) / load.wall_seconds
    result: dict[str, Any] = {
        **_load_figures(
            bench,
            scenario,
            label=label,
            connections=connections,
            payload=payload,
            load=load,
            drained=drained,
        ),
        **_chain_figures(scenario, processes, served),
        **_machine_figures(
            wrk_cpu=load.cpu_seconds,
            seconds=load.seconds,
            every_cpu=every_cpu,
            busy=machine_busy,
            other=other,
            others_before=others_before,
            quiet_wait=quiet_wait,
        ),
    }
    result["wrk"]["cpu_us_per_request"] = _rounded(load.cpu_seconds / load.requests * 1e6)
    if gateway_view:
        result["gateway_metrics"] = gateway_view
    if load.answers:
        result["answers"] = load.answers
    if load.handed_out:
        result["requests_handed_out"] = load.handed_out
        result["requests_exhausted"] = load.exhausted
    failed = f", {load.failed} FAILED {load.errors}" if load.failed else ""
    if load.answers and set(load.answers) != {OK_ANSWER}:
        failed = f", answers {load.answers}, errors {load.errors}"
    if load.exhausted:
        failed += ", RAN OUT OF REQUESTS (not valid)"
    noisy = f", OTHER PROCESSES {other:.2f} cores" if other >= NOISY_CORES else ""
    _say(
        f"  {scenario} c={connections:<3} {size_label(payload):>7} {label:<14}"
        f" {load.throughput:8.1f} req/s  p50 {latency['p50'] / 1e3:7.2f} ms"
        f"  p99 {latency['p99'] / 1e3:7.2f} ms  chain CPU"
        f" {result['chain_cpu_us_per_request']:7.0f} us/req  wrk"
        f" {result['wrk']['share_of_machine'] * 100:4.1f}% of the machine,"
        f" machine busy {machine_busy * 100:3.0f}%{failed}{noisy}"
    )
    return result


_CpuTimes = dict[str, dict[int, tuple[float, float]]]


def _cpu_now(servers: dict[str, Server]) -> _CpuTimes:
    """Each server's CPU seconds so far, per member process."""
    return {name: server.cpu() for name, server in servers.items()}


@dataclass(frozen=True)
class _Readings:
    """What was read of every server around one run: CPU before, at its end, once idle; RSS."""

    cpu_before: _CpuTimes
    cpu_during: _CpuTimes
    cpu_after: _CpuTimes
    rss_before: dict[str, float]
    peak_before: dict[str, float]

    def figures(
        self, servers: dict[str, Server], served: int, seconds: float
    ) -> tuple[dict[str, Any], float]:
        """Each server's CPU per request, cores busy and memory; the CPU all used in the run."""
        processes: dict[str, Any] = {}
        during_total = 0.0
        for name, server in servers.items():
            user, system = cpu_delta(self.cpu_before[name], self.cpu_after[name])
            used = user + system
            during = sum(cpu_delta(self.cpu_before[name], self.cpu_during[name]))
            during_total += during
            memory = server.memory()
            processes[name] = {
                "cpu_s": _rounded(used),
                "system_share": _rounded(system / used, 3) if used else 0.0,
                "cpu_us_per_request": _rounded(used / served * 1e6),
                "cores_busy": _rounded(during / seconds, 3),
                "peak_rss_mb": memory["peak_rss_mb"],
                "peak_rss_sum_mb": memory["peak_rss_sum_mb"],
                "rss_before_mb": self.rss_before[name],
                "peak_rss_before_run_mb": self.peak_before[name],
                "peak_over_before_mb": _rounded(memory["peak_rss_sum_mb"] - self.rss_before[name]),
                "processes": memory["processes"],
            }
        return processes, during_total


def _read_before(servers: dict[str, Server]) -> tuple[dict[str, float], dict[str, float]]:
    """Each server's RSS now (after resetting its peak) and its peak RSS before the reset."""
    # The peak since the last reset (the warm-up's, on fresh servers), then this run's.
    peak_before = {name: server.memory()["peak_rss_sum_mb"] for name, server in servers.items()}
    for server in servers.values():
        server.reset_peaks()
    rss_before = {name: server.memory()["rss_mb"] for name, server in servers.items()}
    return rss_before, peak_before


def _load_figures(
    bench: Bench,
    scenario: str,
    *,
    label: str,
    connections: int,
    payload: int,
    load: LoadResult,
    drained: float,
) -> dict[str, Any]:
    """What wrk measured of one run, with what ran it."""
    latency = load.latency_us
    return {
        "scenario": scenario,
        "label": label,
        "connections": connections,
        "payload_bytes": payload,
        "variant": bench.variant.tag if bench.variant else None,
        "workers": bench.variant.workers if bench.variant else 1,
        "seconds": _rounded(load.seconds),
        "requests": load.requests,
        "requests_served": load.requests + connections,
        "drain_seconds": _rounded(drained, 3),
        "failed": load.failed,
        "errors": load.errors,
        "throughput_rps": _rounded(load.throughput),
        "latency_ms": {
            name: _rounded(latency[name] / 1e3)
            for name in ("p50", "p75", "p90", "p99", "p99.9", "mean", "max")
        },
    }


def _machine_figures(
    *,
    wrk_cpu: float,
    seconds: float,
    every_cpu: float,
    busy: float,
    other: float,
    others_before: float,
    quiet_wait: float,
) -> dict[str, Any]:
    """wrk's CPU over a run of ``seconds``, how busy the machine was, and with what else."""
    return {
        "wrk": {
            "cpu_s": _rounded(wrk_cpu),
            "cores_busy": _rounded(wrk_cpu / seconds, 3),
            "share_of_machine": _rounded(wrk_cpu / (seconds * (os.cpu_count() or 1)), 3),
            "share_of_cpu_used": _rounded(wrk_cpu / every_cpu, 3) if every_cpu else 0.0,
        },
        "machine_busy_share": _rounded(busy, 3),
        # CPU the machine spent on anything but our servers and wrk (another test run, say).
        "other_cores_busy": _rounded(other, 3),
        "other_cores_busy_before": _rounded(others_before, 3),
        "quiet_wait_seconds": _rounded(quiet_wait, 3),
    }


def _chain_figures(scenario: str, processes: dict[str, Any], served: int) -> dict[str, Any]:
    """CPU per request of ``scenario``'s hops and whole chain; the chain's processes."""
    in_chain = CHAIN[scenario]
    chain_cpu = sum(processes[name]["cpu_s"] for name in in_chain if name in processes)
    hop_cpu = sum(processes[name]["cpu_s"] for name in HOPS[scenario] if name in processes)
    return {
        "hops_cpu_us_per_request": _rounded(hop_cpu / served * 1e6),
        "chain_cpu_us_per_request": _rounded(chain_cpu / served * 1e6),
        "processes": {name: processes[name] for name in in_chain if name in processes},
        "idle_processes_cpu_s": _rounded(
            sum(entry["cpu_s"] for name, entry in processes.items() if name not in in_chain)
        ),
    }


# -- the parts ---------------------------------------------------------------------


_Item = TypeVar("_Item")


def _rotations(items: tuple[_Item, ...], rounds: int) -> Iterator[tuple[_Item, ...]]:
    """``items`` in a rotated order each round, so that none always runs first."""
    for number in range(rounds):
        shift = number % len(items)
        yield items[shift:] + items[:shift]


def part_main(bench: Bench) -> dict[str, list[dict[str, Any]]]:
    """A, B and C at the main concurrency and payload, over rounds."""
    settings = bench.settings
    _say(
        f"\nA, B, C: {settings.rounds} round(s) of {settings.seconds:.0f} s each,"
        f" c={settings.concurrency}, {size_label(settings.payload)} request and record"
    )
    runs: dict[str, list[dict[str, Any]]] = {scenario: [] for scenario in SCENARIOS}
    for number, order in enumerate(_rotations(SCENARIOS, settings.rounds), 1):
        for scenario in order:
            result = measure(
                bench,
                scenario,
                connections=settings.concurrency,
                payload=settings.payload,
                seconds=settings.seconds,
                warmup=settings.warmup,
                label=f"round {number}",
            )
            result["round"] = number
            runs[scenario].append(result)
    return runs


def part_concurrency(bench: Bench) -> list[dict[str, Any]]:
    """B and C at each concurrency of the curve (the main one comes from the rounds)."""
    settings = bench.settings
    _say(f"\nConcurrency curve: B and C at c = {', '.join(map(str, settings.concurrencies))}")
    results = []
    for connections in settings.concurrencies:
        for scenario in ("B", "C"):
            results.append(
                measure(
                    bench,
                    scenario,
                    connections=connections,
                    payload=settings.payload,
                    seconds=settings.curve_seconds,
                    warmup=min(settings.warmup, 2.0),
                    label="concurrency",
                )
            )
    return results


def part_workers(bench: Bench, variant: Variant) -> list[dict[str, Any]]:
    """C with both gateways at ``--workers N``, as many rounds as the main part."""
    settings = bench.settings
    _say(f"\nWorkers: both gateways at --workers {settings.workers}")
    bench.start_gateways(replace(variant, workers=settings.workers))
    check_answers(bench, settings.payload, ("C",))
    results = []
    for number in range(1, settings.rounds + 1):
        result = measure(
            bench,
            "C",
            connections=settings.concurrency,
            payload=settings.payload,
            seconds=settings.seconds,
            warmup=settings.warmup,
            label=f"workers {settings.workers}",
        )
        result["round"] = number
        results.append(result)
    return results


def _sealed_load(bench: Bench, workers: int) -> SealedLoad:
    """Requests sealed before each run of P at ``--workers`` ``workers``."""
    settings = bench.settings
    return SealedLoad(
        network=bench.network,
        wrk=settings.wrk,
        url=bench.url("P"),
        connections=settings.concurrency,
        payload=settings.payload,
        workers=workers,
        path=bench.workdir / f"sealed-workers-{workers}.txt",
        log=bench.logs / "wrk.log",
    )


def _check_provider(bench: Bench) -> None:
    """One sealed request straight to the provider: it must answer 200."""
    status, raw = send_one(bench.network, bench.settings.payload)
    if status != 200:
        raise ProcessError(f"scenario P: status {status} for a sealed request: {raw[:300]!r}")


def part_provider_workers(bench: Bench) -> list[dict[str, Any]]:
    """The provider gateway alone at ``--workers`` 1 and N, the order rotating each round.

    The consumer gateway is stopped: wrk sends requests sealed before each run
    (each once) straight to the provider, so the provider, the backend and wrk
    have the machine. A run that ran out of requests is repeated with twice as
    many.
    """
    settings = bench.settings
    counts = (1, settings.provider_workers)
    seconds = min(settings.seconds, SEALED_RUN_MAX_SECONDS)
    _say(
        f"\nProvider alone at --workers 1 and {counts[1]}: {settings.rounds} round(s) of"
        f" {seconds:.0f} s, c={settings.concurrency}, requests sealed before each run"
    )
    loads = {workers: _sealed_load(bench, workers) for workers in counts}
    running = None
    results = []
    for number, order in enumerate(_rotations(counts, settings.rounds), 1):
        for workers in order:
            if workers != running:
                bench.start_gateways(Variant(workers=workers), agencies=(PROVIDER,))
                _check_provider(bench)
                running = workers
            for attempt in (1, 2):
                result = measure(
                    bench,
                    "P",
                    connections=settings.concurrency,
                    payload=settings.payload,
                    seconds=seconds,
                    warmup=settings.warmup,
                    label=f"workers {workers}",
                    sender=loads[workers],
                )
                result["attempts"] = attempt
                if not result.get("requests_exhausted"):
                    break
            result.update(round=number, sealing=loads[workers].generations[-1])
            results.append(result)
    bench.stop_gateways()
    return results


def _answer_split(result: dict[str, Any]) -> dict[str, Any]:
    """Answers of a run counted by status: 200, 503 ``overloaded``, anything else."""
    answers = result["answers"]
    ok = answers.get(OK_ANSWER, 0)
    overloaded = answers.get("503 overloaded", 0)
    sockets = sum(count for name, count in result["errors"].items() if name != "status")
    total = sum(answers.values()) + sockets
    other = total - ok - overloaded
    seconds = result["seconds"]
    return {
        "ok": ok,
        "overloaded": overloaded,
        "other": other,
        "other_answers": {
            key: count for key, count in answers.items() if key not in (OK_ANSWER, "503 overloaded")
        },
        "socket_errors": sockets,
        "ok_share": _rounded(ok / total, 3) if total else 0.0,
        "overloaded_share": _rounded(overloaded / total, 3) if total else 0.0,
        "ok_rps": _rounded(ok / seconds),
        "overloaded_rps": _rounded(overloaded / seconds),
    }


def _measure_fresh(
    bench: Bench, sender: Load, *, connections: int, seconds: float, warmup: float, label: str
) -> dict[str, Any]:
    """C on freshly started gateways (the default config), once one exchange is checked.

    ``rss_fresh_mb`` is each server's RSS before the warm-up.
    """
    bench.start_gateways(Variant())
    check_answers(bench, bench.settings.payload, ("C",))
    fresh = {name: server.memory()["rss_sum_mb"] for name, server in bench.servers.items()}
    result = measure(
        bench,
        "C",
        connections=connections,
        payload=bench.settings.payload,
        seconds=seconds,
        warmup=warmup,
        label=label,
        sender=sender,
    )
    result["rss_fresh_mb"] = fresh
    return result


def part_connections(bench: Bench) -> dict[str, Any]:
    """C at 1,000 connections on fresh gateways: memory, and what admission control answers.

    The gateways admit ``limits.max_in_flight`` (256) requests at a time and
    answer the rest 503 ``overloaded`` at once; every answer is counted.
    """
    settings = bench.settings
    _say(
        f"\nConnections: C at {MANY_CONNECTIONS:,} connections for"
        f" {settings.connections_seconds:.0f} s on fresh gateways"
    )
    result = _measure_fresh(
        bench,
        bench.post_load("C", MANY_CONNECTIONS, settings.payload, count_answers=True),
        connections=MANY_CONNECTIONS,
        seconds=settings.connections_seconds,
        warmup=settings.warmup,
        label=f"{MANY_CONNECTIONS:,} conn",
    )
    result["answer_split"] = _answer_split(result)
    # The peak at this many connections: during the run or its warm-up (fresh processes).
    result["peak_rss_mb"] = {
        name: max(entry["peak_rss_sum_mb"], entry["peak_rss_before_run_mb"])
        for name, entry in result["processes"].items()
    }
    return result


@dataclass
class RssSampler:
    """A load that reads some servers' resident memory every ``every`` seconds of each run.

    With ``provider_metrics`` (the provider's ``/metrics`` URL), each sample
    also holds the provider's replay window (ids remembered) and its count of
    exchanges: a step in its RSS can then be told apart from a rate that rose
    (the window holds what the last 150 s brought, and the allocator keeps its
    largest size).
    """

    load: Load
    servers: dict[str, Server]  # the bench's, looked up at each sample (restarts replace them)
    names: tuple[str, ...]
    provider_metrics: str | None = None
    every: float = SOAK_SAMPLE_EVERY
    samples: list[dict[str, float]] = field(default_factory=list)  # of the last run

    def prepare(self, seconds: float) -> None:
        """Whatever the load prepares."""
        self.load.prepare(seconds)

    def run(self, seconds: float) -> LoadResult:
        """The load's run, in a thread, with a sample at its start, every ``every`` s, its end."""
        self.samples = []
        started = time.perf_counter()
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(self.load.run, seconds)
            while True:
                self._sample(time.perf_counter() - started)
                due = self.every * len(self.samples) - (time.perf_counter() - started)
                try:
                    result = running.result(timeout=max(0.0, due))
                except TimeoutError:
                    continue
                self._sample(time.perf_counter() - started)
                return result

    def _sample(self, at: float) -> None:
        sample = {"at_s": round(at, 1)}
        for name in self.names:
            sample[name] = self.servers[name].memory()["rss_sum_mb"]
        if self.provider_metrics is not None:
            found = scrape(self.provider_metrics)
            # Empty when the scrape failed: left out, not read as 0. (A labelled
            # counter has no series before its first exchange: that is a 0.)
            for key, metric in PROVIDER_SAMPLES.items() if found else ():
                sample[key] = sum(value for (name, _), value in found.items() if name == metric)
        self.samples.append(sample)

    def growth(self) -> dict[str, dict[str, Any]]:
        """Per server: RSS change over the samples of the last run."""
        return {
            name: _rss_change([(sample["at_s"], sample[name]) for sample in self.samples])
            for name in self.names
        }


def _rss_change(points: Sequence[tuple[float, float]]) -> dict[str, float]:
    """RSS at the first and last (time, MB) point, growth in percent, least-squares trend."""
    times, values = zip(*points, strict=True)
    first, last = values[0], values[-1]
    slope = statistics.linear_regression(times, values).slope if len(values) > 2 else 0.0
    return {
        "start_mb": first,
        "end_mb": last,
        "max_mb": max(values),
        "growth_percent": _rounded((last - first) / first * 100, 3) if first else 0.0,
        "trend_mb_per_10_min": _rounded(slope * 600, 3),
    }


def part_soak(bench: Bench) -> dict[str, Any]:
    """C at the main concurrency for ``--soak-seconds`` on fresh gateways, RSS read every 10 s.

    The steady state starts after a warm-up long enough for the provider's
    replay window to fill (:data:`SOAK_WARMUP`); growth is from the first
    sample of the steady run to the last. What the warm-up added is kept too
    (``rss_fresh_mb``).
    """
    settings = bench.settings
    _say(
        f"\nSoak: C at c={settings.concurrency} for {settings.soak_seconds:.0f} s after"
        f" {SOAK_WARMUP:.0f} s of warm-up, RSS every {SOAK_SAMPLE_EVERY:.0f} s"
    )
    sampler = RssSampler(
        bench.post_load("C", settings.concurrency, settings.payload),
        bench.servers,
        (*GATEWAYS.values(), "backend"),
        provider_metrics=f"http://127.0.0.1:{bench.network.gateway_port(PROVIDER)}/metrics",
    )
    result = _measure_fresh(
        bench,
        sampler,
        connections=settings.concurrency,
        seconds=settings.soak_seconds,
        warmup=SOAK_WARMUP,
        label="soak",
    )
    result["rss"] = sampler.growth()
    result["rss_samples"] = sampler.samples
    result["rss_sample_every_s"] = SOAK_SAMPLE_EVERY
    result["warmup_seconds"] = SOAK_WARMUP
    return result


def expected_jwe_bytes(payload: int) -> int:
    """About how large the JWE carrying a body of ``payload`` bytes is."""
    return int(payload * JWE_EXPANSION) + 4096


def part_payload(bench: Bench) -> list[dict[str, Any]]:
    """B and C for each payload size, with the gateways' body limits raised to fit."""
    settings = bench.settings
    sizes = sorted({settings.payload, *settings.payloads})
    fitting = [size for size in sizes if expected_jwe_bytes(size) <= MAX_COMPACT_BYTES]
    largest = max(fitting)
    limit = max(1024 * 1024, 2 * expected_jwe_bytes(largest))
    _say(
        f"\nPayload curve: {', '.join(size_label(size) for size in sizes)}"
        f" (gateways restarted with limits.max_body_bytes = {limit:,})"
    )
    bench.start_gateways(Variant(max_body_bytes=limit))
    # First, on the fresh gateways: what one exchange of the largest payload adds to
    # each gateway's resident memory (one at a time, nothing sent before).
    memory = measure(
        bench,
        "C",
        connections=1,
        payload=largest,
        seconds=settings.curve_seconds,
        warmup=0,
        label="memory, fresh",
    )
    memory["memory_run"] = True
    if memory["failed"]:
        raise ProcessError(f"the {size_label(largest)} exchanges failed: {memory['errors']}")
    results: list[dict[str, Any]] = []
    for size in sizes:
        if size not in fitting:
            reason = (
                f"a {size_label(size)} body makes a JWE of about"
                f" {expected_jwe_bytes(size) / 2**20:.1f} MiB, over the protocol's"
                f" {MAX_COMPACT_BYTES // 2**20} MiB bound on a compact object (gateway/jose.py"
                " MAX_COMPACT_BYTES): the gateways refuse it by design"
            )
            _say(f"  {size_label(size)}: skipped: {reason}")
            results.append({"payload_bytes": size, "skipped": reason})
            continue
        check_answers(bench, size, ("B", "C"))
        connections = settings.payload_concurrency if size <= LARGE_PAYLOAD else 1
        seconds = settings.curve_seconds if size <= LARGE_PAYLOAD else settings.curve_seconds * 1.5
        for scenario in ("B", "C"):
            if scenario == "C" and size == largest and connections == 1:
                results.append(memory)  # the same measurement: one at a time, this size
                continue
            result = measure(
                bench,
                scenario,
                connections=connections,
                payload=size,
                seconds=seconds,
                warmup=min(settings.warmup, 2.0),
                label="payload",
            )
            results.append(result)
        if "crypto" in settings.parts:
            per_batch = max(2, min(100, (256 * 1024) // size))
            results[-1]["crypto"] = crypto.measure(size, batches=3, per_batch=per_batch)
    if memory not in results:
        results.append(memory)
    return results


def part_contracts(bench: Bench, now: datetime) -> list[dict[str, Any]]:
    """C with 10 contracts loaded and with each larger set, side by side."""
    counts = sorted({10, *bench.settings.contract_counts})
    _say(f"\nContracts loaded: {', '.join(f'{count:,}' for count in counts)}, side by side")
    return _side_by_side(
        bench,
        "contracts",
        [
            _Point(Variant(contracts=count), f"{count:,} contracts", {"contracts": count})
            for count in counts
        ],
        now,
    )


@dataclass(frozen=True)
class _Point:
    """One point of a flatness curve: its gateways' variant, its label, what its results add."""

    variant: Variant
    label: str
    extra: dict[str, Any]


_Lane = tuple[_Point, Bench]


def _side_by_side(
    bench: Bench,
    name: str,
    points: Sequence[_Point],
    now: datetime,
    prepare: Callable[[BenchNetwork, _Point], None] | None = None,
) -> list[dict[str, Any]]:
    """C on every point at once, each point on a network and gateways of its own.

    Why at once: this host's speed moves within seconds. Measured one after
    the other, even two identical gateway pairs differed by 10-40 % between
    runs of 4 s back to back, which hid any difference under 5 % between
    points. Loaded at the same time, the points share the host's good and
    bad moments, and each lane's CPU per exchange is measured under the
    same conditions: their ratio is the points' difference in cost. Their
    throughputs are each lane's while it shares the machine, which the
    scheduler does not split evenly (a lane whose gateways wait more leaves
    CPU to the others), so that ratio is noisier per slice and leans towards
    1. What is left is each start's own luck: two identical pairs started
    together still differed by up to 7 % over a whole run. So the
    gateways are started afresh ``curve_runs`` times, each time in the
    reverse order of the time before (starting and loading), and measured
    ``curve_slices`` times per start.

    Each lane has its own network (keys, registry, contract set, backend, its
    ports ``LANE_PORT_STEP`` above the last), so the lanes differ only in
    their point's variant; ``prepare`` adds what a point needs to its network
    before anything starts. Each lane is loaded from half the main
    concurrency. The main network's gateways are stopped meanwhile.
    """
    settings = bench.settings
    bench.stop_gateways()
    lanes: list[_Lane] = []
    results: dict[str, list[dict[str, Any]]] = {point.label: [] for point in points}
    try:
        for number, point in enumerate(points, 1):
            folder = bench.workdir / f"{name}-lane-{number}"
            network = build(folder / "net", settings.port_base + LANE_PORT_STEP * number, now)
            check_ports(network)
            signing = ensure_contract_set(network, point.variant.contracts, now)
            if signing > 0.5:
                _say(f"  {point.label}: contracts signed in {signing:.1f} s")
            if prepare is not None:
                prepare(network, point)
            lane = Bench(settings=settings, network=network, workdir=folder)
            lane.start_plain(proxies=False)
            lanes.append((point, lane))
        connections = max(1, settings.concurrency // 2)
        for launch in range(1, settings.curve_runs + 1):
            order = lanes if launch % 2 else lanes[::-1]
            ready = {}
            for point, lane in order:
                ready[point.label] = _rounded_map(lane.start_gateways(point.variant))
                check_answers(lane, settings.payload, ("C",))
            _warm_up_lanes(order, connections, settings.warmup)
            for number in range(1, settings.curve_slices + 1):
                measured = _measure_lanes(bench, order, connections, settings.curve_seconds)
                for (point, _), result in zip(order, measured, strict=True):
                    result.update(point.extra, launch=launch, slice=number, lanes=len(order))
                    result["ready_seconds"] = ready[point.label]
                    results[point.label].append(result)
            for _, lane in order:
                lane.stop_gateways()
    finally:
        for _, lane in lanes:
            lane.stop()
            bench.startups.extend(lane.startups)
    return [result for point in points for result in results[point.label]]


def _lane_loads(order: Sequence[_Lane], connections: int) -> list[Load]:
    """Each lane's client request at ``connections`` connections."""
    payload = order[0][1].settings.payload
    return [lane.post_load("C", connections, payload) for _, lane in order]


def _run_at_once(loads: Sequence[Load], seconds: float) -> list[LoadResult]:
    """Every load's wrk run, all at the same time."""
    for load in loads:
        load.prepare(seconds)
    with ThreadPoolExecutor(len(loads)) as pool:
        return list(pool.map(lambda load: load.run(seconds), loads))


def _warm_up_lanes(order: Sequence[_Lane], connections: int, seconds: float) -> None:
    """All lanes loaded at once, not measured: pools, caches and heaps warm."""
    warmed = _run_at_once(_lane_loads(order, connections), seconds)
    for (point, _), warm in zip(order, warmed, strict=True):
        if warm.requests and warm.failed >= warm.requests:
            raise ProcessError(f"{point.label}: every warm-up request failed ({warm.errors})")


def _measure_lanes(
    bench: Bench, order: Sequence[_Lane], connections: int, seconds: float
) -> list[dict[str, Any]]:
    """One slice: every lane loaded at once, each lane's figures as :func:`measure` gives them.

    wrk's CPU is that of every lane's wrk together (their rusage is only
    known once all have ended).
    """
    servers = [lane.servers for _, lane in order]
    everyone = [server for each in servers for server in each.values()]
    loads = _lane_loads(order, connections)
    wait_idle(everyone)
    quiet_wait, others_before = wait_quiet(bench)
    memory_before = [_read_before(each) for each in servers]
    cpu_before = [_cpu_now(each) for each in servers]
    wrk_before = children_cpu_seconds()
    machine_before = MachineTimes.now()
    outcomes = _run_at_once(loads, seconds)
    machine_after = MachineTimes.now()
    wrk_cpu = children_cpu_seconds() - wrk_before
    cpu_during = [_cpu_now(each) for each in servers]
    drained = wait_idle(everyone)
    cpu_after = [_cpu_now(each) for each in servers]
    results = []
    servers_cpu = 0.0
    for index, ((point, lane), load) in enumerate(zip(order, outcomes, strict=True)):
        if load.requests == 0:
            raise ProcessError(f"{point.label}: no request completed ({load.errors})")
        served = load.requests + connections
        rss_before, peak_before = memory_before[index]
        readings = _Readings(
            cpu_before[index], cpu_during[index], cpu_after[index], rss_before, peak_before
        )
        processes, used = readings.figures(servers[index], served, load.seconds)
        servers_cpu += used
        results.append(
            {
                **_load_figures(
                    lane,
                    "C",
                    label=point.label,
                    connections=connections,
                    payload=lane.settings.payload,
                    load=load,
                    drained=drained,
                ),
                **_chain_figures("C", processes, served),
            }
        )
    wall = max(load.wall_seconds for load in outcomes)
    every_cpu = servers_cpu + wrk_cpu
    other = max(0.0, machine_after.busy_seconds_since(machine_before) - every_cpu) / wall
    busy = machine_after.busy_share_since(machine_before)
    shared = _machine_figures(
        wrk_cpu=wrk_cpu,
        seconds=wall,
        every_cpu=every_cpu,
        busy=busy,
        other=other,
        others_before=others_before,
        quiet_wait=quiet_wait,
    )
    shared["wrk"]["of"] = "every lane's wrk together"
    noisy = f", OTHER PROCESSES {other:.2f} cores" if other >= NOISY_CORES else ""
    for result in results:
        result.update(shared)
        failed = f", {result['failed']} FAILED {result['errors']}" if result["failed"] else ""
        _say(
            f"  C c={connections:<3} {result['label']:<16} {result['throughput_rps']:8.1f} req/s"
            f"  p50 {result['latency_ms']['p50']:7.2f} ms  p99 {result['latency_ms']['p99']:7.2f}"
            f" ms  gateways' CPU {result['hops_cpu_us_per_request']:7.0f} us/req{failed}"
        )
    _say(
        f"    (at once; machine busy {busy * 100:3.0f}%,"
        f" wrk {shared['wrk']['share_of_machine'] * 100:.1f}% of the machine{noisy})"
    )
    return results


class _RecentBulkLeaves(BulkLeaves):
    """Bulk leaves dated up to now (not at bench.audit's fixed date), so none expire mid-run."""

    def __init__(self, rng: random.Random, records: ExchangeRecords, total: int) -> None:
        super().__init__(rng, records)
        self._base_ms = int(time.time() * 1000) - total * RECORD_SPACING_MS

    def _time(self, index: int) -> tuple[str, str]:
        second, millis = divmod(self._base_ms + index * RECORD_SPACING_MS, 1000)
        if second != self._second:
            self._second = second
            self._stamps = (record_time(second)[:-4], record_time(second + RETENTION_S)[:-4])
        suffix = f"{millis:03d}Z"
        return self._stamps[0] + suffix, self._stamps[1] + suffix


def part_audit(bench: Bench, now: datetime) -> list[dict[str, Any]]:
    """C on empty audit logs and on logs of ``audit_records`` records (both gateways), side by
    side."""
    settings = bench.settings
    total = settings.audit_records
    name = f"audit-{total}.db"
    _say(f"\nAudit log size: 0 and {total:,} records in each gateway's log, side by side")
    log_built: dict[str, Any] = {}
    made: list[Path] = []

    def prepare(network: BenchNetwork, point: _Point) -> None:
        if point.variant.audit_db != name:
            return
        provider_db = network.agency_dir(PROVIDER) / name
        consumer_db = network.agency_dir(CONSUMER) / name
        made.extend((provider_db, consumer_db))
        started = time.perf_counter()
        rng = random.Random(2026)  # noqa: S311 - synthetic records, not secrets
        built, _ = asyncio.run(
            build_log(provider_db, total, (), _RecentBulkLeaves(rng, ExchangeRecords(rng), total))
        )
        shutil.copyfile(provider_db, consumer_db)
        build_seconds = time.perf_counter() - started
        # The copy's pages are still being written back: the first rounds would
        # wait for that disk traffic behind their own fsyncs.
        os.sync()
        sync_seconds = time.perf_counter() - started - build_seconds
        _say(
            f"  built and copied in {build_seconds:.0f} s"
            f" ({built['database_bytes'] / 1e9:.2f} GB), written back in {sync_seconds:.1f} s"
        )
        log_built.update(
            built, seconds_with_copy=_rounded(build_seconds), sync_seconds=_rounded(sync_seconds)
        )

    try:
        results = _side_by_side(
            bench,
            "audit",
            [
                _Point(Variant(audit_db=db), f"{records:,} records", {"audit_records": records})
                for records, db in ((0, "audit-empty.db"), (total, name))
            ],
            now,
            prepare,
        )
    finally:
        for path in made:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    path.with_name(path.name + suffix).unlink()
    results[-1]["build"] = log_built
    return results


async def _append_cost(path: Path, count: int, concurrency: int) -> tuple[float, float]:
    """CPU seconds per record of building and appending ``count`` records; the mean batch."""
    store = CountingStore(SqliteAuditStore(path))
    origin = "bench.example/audit"
    log = AuditLog(store, origin, NoteSigner.generate(origin))
    await log.open()
    records = ExchangeRecords(random.Random(7))  # noqa: S311 - synthetic records
    try:
        for _ in range(100):  # warm up: first statements, first checkpoint lock
            await log.append(records.record(time.time()))
        store.reset()
        pending = iter(range(count))

        async def appender() -> None:
            for _ in pending:  # one iterator shared by every task
                await log.append(records.record(time.time()))

        started = time.process_time()
        await asyncio.gather(*(appender() for _ in range(concurrency)))
        used = time.process_time() - started
        batches = list(store.batches)
    finally:
        await log.close()
    return used / count, statistics.fmean(batches) if batches else 0.0


def audit_append_cost(workdir: Path, count: int, rounds: int = 3) -> dict[str, Any]:
    """What one audit append costs in CPU, with group commit from 64 tasks and one by one.

    As ``write_audit`` does it: build the record (pseudonyms, identity, time),
    then append it through :class:`AuditLog` to a SQLite store with the shipped
    durable settings (WAL, ``synchronous=FULL``); the writer thread's CPU is in
    ``process_time``. Group commit from 64 tasks is the cheapest an append gets
    (the limit of ``c_cpu_over_limit`` uses it); one by one, each append is its
    own transaction and fsync, which is what a lightly loaded gateway pays.
    """
    modes: dict[str, dict[str, Any]] = {}
    for mode, concurrency, appends in (("group", 64, count), ("single", 1, max(200, count // 4))):
        costs, batches = [], []
        for number in range(rounds):
            path = workdir / f"append-cost-{mode}-{number}.db"
            cost, batch = asyncio.run(_append_cost(path, appends, concurrency))
            costs.append(cost)
            batches.append(batch)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    Path(f"{path}{suffix}").unlink()
        modes[mode] = {
            "cpu_us_per_append": _rounded(statistics.median(costs) * 1e6),
            "rounds_us": [_rounded(cost * 1e6) for cost in costs],
            "mean_batch": _rounded(statistics.fmean(batches), 3),
            "appends_per_round": appends,
            "concurrency": concurrency,
        }
    return {
        "cpu_us_per_append": modes["group"]["cpu_us_per_append"],
        "cpu_us_per_append_one_by_one": modes["single"]["cpu_us_per_append"],
        "appends_per_exchange": 2,
        "modes": modes,
        "store": "sqlite (WAL, synchronous=FULL), default checkpoint policy",
    }


# -- the command ---------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m bench exchange``."""
    parser.add_argument(
        "--quick", action="store_true", help="one round of 4 s, fewer curve points: about 2 min"
    )
    parser.add_argument("--rounds", type=int, help="rounds of A, B, C (3; --quick: 1)")
    parser.add_argument("--seconds", type=float, help="seconds per measured run (10; --quick: 4)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds before each run (2; 1)")
    parser.add_argument("--curve-seconds", type=float, help="seconds per curve point (6; 3)")
    parser.add_argument(
        "--curve-runs",
        type=int,
        help="starts of the side-by-side gateways of the contracts and audit curves, whose"
        " flatness is a target (4; --quick: 1)",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="connections of A, B, C (64)")
    parser.add_argument("--payload", default="1K", help="request and record size of A, B, C (1K)")
    parser.add_argument("--concurrencies", help="concurrency curve (1,16,256; --quick: 1,256)")
    parser.add_argument(
        "--payloads",
        help="payload curve, beside --payload (64K,1M,8M; --quick: 1M);"
        " 10M cannot pass the protocol's 16 MiB compact bound and is reported as skipped",
    )
    parser.add_argument(
        "--payload-concurrency",
        type=int,
        default=8,
        help="connections for payloads up to 1 MiB (8); larger ones go one at a time",
    )
    parser.add_argument("--contracts", help="contract set sizes beside 10 (1000,10000; 1000)")
    parser.add_argument(
        "--audit-records", type=int, help="records of the large audit logs (10^6; 10^5)"
    )
    parser.add_argument("--workers", type=int, default=2, help="--workers of the workers part (2)")
    parser.add_argument(
        "--provider-workers",
        type=int,
        help="--workers N of the provider-workers part, compared with 1 (the CPUs: "
        f"{len(os.sched_getaffinity(0))})",
    )
    parser.add_argument(
        "--connections-seconds",
        type=float,
        help=f"seconds of the run at {MANY_CONNECTIONS:,} connections (20; --quick: 8)",
    )
    parser.add_argument(
        "--soak-seconds",
        type=float,
        default=600.0,
        help="seconds of the soak part's steady run, after 30 s of warm-up (600);"
        " the soak runs only when --only names it",
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated parts to run, of {','.join(PARTS)} (default: all but soak)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="seconds the whole run may wait, before measurements, for other processes"
        " to leave the machine quiet (45; --quick: 10)",
    )
    parser.add_argument("--port-base", type=int, default=18700, help="ports used: base+2..+22")
    parser.add_argument("--wrk", default=os.environ.get("WRK", "wrk"), help="the wrk executable")
    parser.add_argument(
        "--dir", type=Path, help="where the run's folder is made (default: the temp dir)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder and logs")


def estimate_seconds(settings: Settings) -> float:
    """About how long the run takes on a 2-core machine."""
    # Each run also waits for idle servers before and after it (about a second).
    run = settings.seconds + settings.warmup + 1.2
    curve = settings.curve_seconds + min(settings.warmup, 2.0) + 1.2
    total = 10.0 + settings.quiet_wait / 2
    parts = settings.parts
    if "crypto" in parts:
        total += 10
    if "main" in parts:
        total += 3 * settings.rounds * run + 5
    if "concurrency" in parts:
        total += 2 * len(settings.concurrencies) * curve
    if "workers" in parts:
        total += settings.rounds * run + 5
    if "provider-workers" in parts:
        # Two runs a round, each sealing its requests first (a few seconds), restarts.
        sealed_run = min(settings.seconds, SEALED_RUN_MAX_SECONDS) + settings.warmup + 5
        total += 2 * settings.rounds * sealed_run + (settings.rounds + 1) * 4
    if "connections" in parts:
        total += settings.connections_seconds + settings.warmup + 8
    if "payload" in parts:
        total += 2 * (len(settings.payloads) + 1) * curve * 1.3 + 10
    # The lanes start afresh for each of curve_runs starts, then run curve_slices slices at once.
    starts = settings.curve_runs * (settings.warmup + settings.curve_slices * (curve - 0.8))
    if "contracts" in parts:
        counts = sorted({10, *settings.contract_counts})
        # Signing, and each start: 10,000 contracts take about 10 s to load.
        total += sum(counts) * 0.001 + settings.curve_runs * (sum(counts) * 0.001 + len(counts))
        total += starts
    if "audit" in parts:
        total += starts + settings.curve_runs * 3 + settings.audit_records / 15_000
    if "soak" in parts:
        total += SOAK_WARMUP + settings.soak_seconds + 8
    return total


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print its tables, write its JSON; 0 on success."""
    settings = Settings.from_args(args)
    try:
        settings = replace(settings, wrk=find_wrk(settings.wrk))
    except LoadError as exc:
        print(f"bench exchange: {exc}", file=sys.stderr)
        return 1
    settings.directory.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-exchange-", dir=settings.directory))
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    _say(
        f"Exchange benchmark in {workdir}: parts {', '.join(settings.parts)};"
        f" about {estimate_seconds(settings) / 60:.0f} min on 2 cores"
    )
    bench: Bench | None = None
    keep = settings.keep
    try:
        network = build(workdir / "net", settings.port_base, started_at)
        check_ports(network)
        bench = Bench(
            settings=settings, network=network, workdir=workdir, quiet_budget=settings.quiet_wait
        )
        results = _run(bench, started_at)
    except (ProcessError, LoadError) as exc:
        keep = True
        print(f"bench exchange: {exc}", file=sys.stderr)
        print(f"  run folder and process logs kept: {workdir}", file=sys.stderr)
        return 1
    except BaseException:
        keep = True
        print(f"bench exchange: run folder and process logs kept: {workdir}", file=sys.stderr)
        raise
    finally:
        if bench is not None:
            bench.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["runtime_s"] = _rounded(time.perf_counter() - started)
    results = headline(results)
    print_report(results)
    latest, dated = write_results(results, settings.output)
    _say(f"\nResults: {latest} and {dated}")
    if settings.keep:
        _say(f"Run folder kept: {workdir}")
    return 0


def _with_workers(
    bench: Bench, title: str, part: Callable[[], list[dict[str, Any]]]
) -> list[dict[str, Any]] | dict[str, str]:
    """``part()``, or why it is not measured where ``gateway serve`` has no ``--workers``."""
    if bench.workers_available is None:
        return part()
    _say(f"\n{title}: not measured: {bench.workers_available}")
    return {"skipped": bench.workers_available}


def _run(bench: Bench, started_at: datetime) -> dict[str, Any]:
    settings = bench.settings
    workdir = bench.workdir
    results: dict[str, Any] = {
        "benchmark": "exchange",
        "started_at": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": settings.quick,
        # Other parts than the default set: written as only-latest.json, not latest.json.
        "partial": settings.parts != DEFAULT_PARTS,
        "settings": {
            "rounds": settings.rounds,
            "seconds": settings.seconds,
            "warmup_seconds": settings.warmup,
            "curve_seconds": settings.curve_seconds,
            "concurrency": settings.concurrency,
            "payload_bytes": settings.payload,
            "concurrencies": list(settings.concurrencies),
            "payloads": list(settings.payloads),
            "payload_concurrency": settings.payload_concurrency,
            "contract_counts": list(settings.contract_counts),
            "audit_records": settings.audit_records,
            "curve_runs": settings.curve_runs,
            "workers": settings.workers,
            "provider_workers": settings.provider_workers,
            "many_connections": MANY_CONNECTIONS,
            "connections_seconds": settings.connections_seconds,
            "soak_seconds": settings.soak_seconds,
            "parts": list(settings.parts),
            "wrk": settings.wrk,
            "wrk_threads": 1,
            "quiet_wait_budget_seconds": settings.quiet_wait,
        },
        "source": source_state(),
        "machine": {
            **machine_info(),
            "run_dir_filesystem": filesystem_of(workdir),
            "fsync_4k": fsync_probe(workdir),
        },
    }
    ensure_contract_set(bench.network, 10, started_at)
    if "crypto" in settings.parts:
        _say("\nF: crypto of one exchange (project code and bare primitives) ...")
        results["crypto"] = crypto.measure(
            settings.payload, batches=settings.crypto_batches, per_batch=settings.crypto_per_batch
        )
        results["crypto"]["primitives_us"] = crypto.primitives()
        project = results["crypto"]["project"]["cpu_us_per_exchange"]
        floor = results["crypto"]["floor"]["cpu_us_per_exchange"]
        _say(f"  project {project:.0f} us, floor {floor:.0f} us of CPU per exchange")
        _say("Audit append CPU (build + group commit from 64 tasks, SQLite, FULL) ...")
        results["audit_append"] = audit_append_cost(workdir, settings.audit_appends)
        appended = results["audit_append"]
        _say(
            f"  {appended['cpu_us_per_append']:.0f} us per append with group commit,"
            f" {appended['cpu_us_per_append_one_by_one']:.0f} us one by one"
        )
    if not LOAD_PARTS & set(settings.parts):
        return results
    if "connections" in settings.parts:
        # wrk and the consumer gateway hold a socket per connection, and more.
        results["settings"]["open_files_limit"] = raise_open_files(4 * MANY_CONNECTIONS + 1024)
    bench.workers_available = workers_support()
    _say("\nStarting the backend, two proxies and two gateways ...")
    bench.start_plain()
    default = Variant()
    bench.start_gateways(default)
    check_answers(bench, settings.payload)
    curves: dict[str, Any] = {}
    # Each load part: where its results go, under which key, and what runs it.
    runners: dict[str, tuple[dict[str, Any], str, Callable[[], Any]]] = {
        "main": (results, "scenarios", lambda: part_main(bench)),
        "concurrency": (curves, "concurrency", lambda: part_concurrency(bench)),
        "workers": (
            curves,
            "workers",
            lambda: _with_workers(bench, "Workers", lambda: part_workers(bench, default)),
        ),
        "provider-workers": (
            curves,
            "provider_workers",
            lambda: _with_workers(bench, "Provider workers", lambda: part_provider_workers(bench)),
        ),
        "connections": (results, "connections", lambda: part_connections(bench)),
        "payload": (curves, "payload", lambda: part_payload(bench)),
        "contracts": (curves, "contracts", lambda: part_contracts(bench, started_at)),
        "audit": (curves, "audit_log", lambda: part_audit(bench, started_at)),
        "soak": (results, "soak", lambda: part_soak(bench)),
    }
    part_seconds: dict[str, float] = {}
    for part in settings.parts:
        if part in runners:
            place, key, runner = runners[part]
            started = time.perf_counter()
            place[key] = runner()
            part_seconds[part] = _rounded(time.perf_counter() - started)
    results["part_seconds"] = part_seconds
    results["curves"] = curves
    results["gateway_startups"] = bench.startups
    results["quiet_wait_seconds_used"] = _rounded(settings.quiet_wait - bench.quiet_budget)
    results["machine"]["fsync_4k_at_end"] = fsync_probe(workdir)
    results["machine"]["load_average_1m_at_end"] = _rounded(os.getloadavg()[0], 3)
    return results
