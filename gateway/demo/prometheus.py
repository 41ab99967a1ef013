"""``gateway demo --with-prometheus``: a real Prometheus scraping the demo network.

The ``prometheus`` binary of Debian's ``prometheus`` package (the package
``.ci/install-promtool.sh`` installs for promtool) runs as a child process of
the demo. Everything it needs is written into ``<demo folder>/prometheus/``:

* ``prometheus.yml``: job ``gateway``, one target per gateway of ``demo.json``
  with its ``agency`` label (as ``deploy/prometheus/prometheus.yml`` has
  them), scraped and evaluated every second so that traffic shows at once;
* ``alerts.yml``: a copy of ``deploy/prometheus/alerts.yml``, refreshed at
  every start, as its rule file;
* ``data/``: the TSDB (``--storage.tsdb.path``), kept with the folder;
* ``prometheus.log``: what Prometheus writes.

It listens on ``127.0.0.1:<port base + 90>``. It is stopped with the demo:
SIGTERM, then SIGKILL if it has not exited after :data:`STOP_TIMEOUT_SECONDS`.
The demo never installs Prometheus: without the binary it says how to get
it and exits with status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final
from urllib.parse import quote, urlsplit

import aiohttp
import yaml

from gateway.errors import SetupError

# Prometheus listens on the demo's port base plus this (8190 by default).
PORT_OFFSET: Final = 90
# Scrape and rule evaluation interval: short, so a newcomer sees traffic at once.
SCRAPE_INTERVAL_SECONDS: Final = 1
READY_TIMEOUT_SECONDS: Final = 30.0
# Prometheus adds static targets on its first service discovery update (5 s after start).
SCRAPE_TIMEOUT_SECONDS: Final = 30.0
STOP_TIMEOUT_SECONDS: Final = 10.0
# Each call to its HTTP API; what holds the port may not be Prometheus, nor answer at all.
HTTP_TIMEOUT: Final = aiohttp.ClientTimeout(total=5)

# The project's alert rules; absent when the package is installed without the repository.
ALERTS: Final = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"

# A query to start with: the demo's traffic by agency, contract and outcome.
EXAMPLE_QUERY: Final = "sum by (agency, direction, contract, outcome) (gateway_exchanges_total)"

MISSING: Final = (
    "the prometheus binary is not on PATH. Install Debian's prometheus package, as root: "
    ".ci/install-promtool.sh (it also keeps the package's own server from running), or "
    "apt-get install --no-install-recommends prometheus and then "
    "systemctl disable --now prometheus; or put the prometheus binary of a release "
    "from https://prometheus.io/download/ on PATH"
)


def find_prometheus() -> str:
    """The ``prometheus`` binary on ``PATH``; a :class:`SetupError` saying how to get it."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise SetupError("--with-prometheus", MISSING)
    return binary


def prometheus_port(demo: dict[str, Any]) -> int:
    """The port Prometheus listens on for this demo: port base + 90."""
    return int(demo["port_base"]) + PORT_OFFSET


def prometheus_config(
    demo: dict[str, Any],
    *,
    rule_files: list[str],
    interval: int = SCRAPE_INTERVAL_SECONDS,
) -> dict[str, Any]:
    """The Prometheus configuration scraping every gateway of ``demo``."""
    every = f"{interval}s"
    return {
        "global": {
            "scrape_interval": every,
            "scrape_timeout": every,
            "evaluation_interval": every,
            "external_labels": {"environment": "demo"},
        },
        "rule_files": rule_files,
        "scrape_configs": [
            {
                "job_name": "gateway",
                "metrics_path": "/metrics",
                "scheme": "http",
                "static_configs": [
                    {"targets": [urlsplit(info["url"]).netloc], "labels": {"agency": agency}}
                    for agency, info in demo["agencies"].items()
                ],
            }
        ],
    }


def write_prometheus_files(
    directory: Path, demo: dict[str, Any], alerts: Path | None = ALERTS
) -> Path:
    """Write ``prometheus/`` into the demo folder (config, alert rules); the config's path.

    ``alerts`` is copied beside the config; when it does not exist the
    configuration has no rule files.
    """
    folder = directory / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    rule_files: list[str] = []
    if alerts is not None and alerts.is_file():
        shutil.copyfile(alerts, folder / "alerts.yml")
        rule_files.append("alerts.yml")
    config = folder / "prometheus.yml"
    text = yaml.safe_dump(prometheus_config(demo, rule_files=rule_files), sort_keys=False)
    source = f"# alerts.yml is a copy of {alerts}.\n" if rule_files else ""
    config.write_text(
        "# Written by `gateway demo --with-prometheus` at every start; edits are lost.\n"
        + source
        + text,
        encoding="utf-8",
    )
    return config


class PrometheusError(SetupError):
    """Prometheus did not start, or did not scrape the demo network."""


class Prometheus:
    """One Prometheus child process scraping a demo network."""

    def __init__(
        self, binary: str, directory: Path, demo: dict[str, Any], port: int | None = None
    ) -> None:
        self.binary = binary
        self.directory = directory
        self.demo = demo
        self.port = prometheus_port(demo) if port is None else port
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = directory / "prometheus"
        self.config = self.folder / "prometheus.yml"
        self.log = self.folder / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def command(self) -> list[str]:
        """The command line that starts it."""
        return [
            self.binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # Links in the UI and alerts point at where it really listens.
            f"--web.external-url={self.url}/",
        ]

    def start(self) -> None:
        """Write the files and start the process (not yet ready: :meth:`wait_ready`)."""
        write_prometheus_files(self.directory, self.demo)
        self._log_file = self.log.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own fixed arguments
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
        )

    def _check_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            status = None if self.process is None else self.process.returncode
            raise PrometheusError(
                str(self.log), f"prometheus exited (status {status}): {self.last_log_line()}"
            )

    def last_log_line(self) -> str:
        """The last line Prometheus wrote (why it stopped, usually)."""
        try:
            lines = self.log.read_text("utf-8", errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "no log"

    async def wait_ready(self, within: float = READY_TIMEOUT_SECONDS) -> None:
        """Return once ``/-/ready`` answers 200; :class:`PrometheusError` if it exits first."""
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while True:
                self._check_running()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.url}/-/ready") as response:
                        if response.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise PrometheusError(self.url, f"Prometheus was not ready in {within:.0f} s")
                await asyncio.sleep(0.1)

    async def api(self, session: aiohttp.ClientSession, path: str, **params: str) -> Any:
        """The ``data`` of a successful Prometheus HTTP API answer."""
        async with session.get(f"{self.url}{path}", params=params) as response:
            document = await response.json()
        if response.status != 200 or document.get("status") != "success":
            raise PrometheusError(self.url, f"{path}: {document.get('error', response.status)}")
        return document["data"]

    async def targets(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        """The active targets, as ``/api/v1/targets`` lists them."""
        data = await self.api(session, "/api/v1/targets", state="active")
        targets: list[dict[str, Any]] = data["activeTargets"]
        return targets

    async def wait_scraped(
        self,
        after: float,
        *,
        scrapes: int = 2,
        within: float = SCRAPE_TIMEOUT_SECONDS,
    ) -> list[dict[str, Any]]:
        """Wait until every gateway was scraped successfully ``scrapes`` times after ``after``.

        ``after`` is a Unix time (``time.time()``). Scrapes of one target are
        one interval apart, so when the last one started more than
        ``scrapes - 1`` intervals after ``after``, that many started after it;
        a target's ``lastScrape`` changes only once that scrape's samples are
        stored. The targets, as at the end.
        """
        expected = {urlsplit(info["url"]).netloc for info in self.demo["agencies"].values()}
        since = after + (scrapes - 1) * SCRAPE_INTERVAL_SECONDS
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
            while True:
                self._check_running()
                targets = await self.targets(session)
                done = {
                    target["labels"]["instance"]
                    for target in targets
                    if target["health"] == "up"
                    and datetime.fromisoformat(target["lastScrape"]).timestamp() > since
                }
                if expected <= done:
                    return targets
                if time.monotonic() > deadline:
                    missing = ", ".join(sorted(expected - done))
                    raise PrometheusError(
                        self.url, f"gateways not scraped in {within:.0f} s: {missing}"
                    )
                await asyncio.sleep(0.2)

    async def exchange_counts(self) -> list[tuple[str, str, str, int]]:
        """(agency, direction, outcome, count) of ``gateway_exchanges_total``, as stored."""
        query = "sum by (agency, direction, outcome) (gateway_exchanges_total)"
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
            data = await self.api(session, "/api/v1/query", query=query)
        rows = [
            (
                sample["metric"].get("agency", ""),
                sample["metric"].get("direction", ""),
                sample["metric"].get("outcome", ""),
                int(float(sample["value"][1])),
            )
            for sample in data["result"]
        ]
        return sorted(rows)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit status."""
        process = self.process
        status = None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            status = process.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return status

    def welcome(self) -> str:
        """The lines of the demo's welcome text about Prometheus."""
        rules = (
            "evaluates the alert rules of deploy/prometheus/alerts.yml"
            if (self.folder / "alerts.yml").is_file()
            else "has no alert rules (deploy/prometheus/alerts.yml was not found)"
        )
        return (
            f"Prometheus scrapes every gateway every {SCRAPE_INTERVAL_SECONDS} s and {rules}."
            " The demo's traffic:\n\n"
            f"  {self.url}/graph?g0.expr={quote(EXAMPLE_QUERY)}&g0.tab=1\n\n"
            "  (Alerts, and Status -> Targets, are in its menu)\n"
            f"  config {self.config}\n  log    {self.log}\n"
        )


def render_counts(url: str, rows: list[tuple[str, str, str, int]]) -> str:
    """What ``--once`` prints of Prometheus' view of the traffic."""
    header = ("agency", "direction", "outcome", "exchanges")
    lines = [header, *((a, d, o, str(c)) for a, d, o, c in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    table = "\n".join(
        "  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip()
        for line in lines
    )
    return f"\nPrometheus ({url}) scraped every gateway twice after the scenario:\n{table}"


async def report_scraped(prometheus: Prometheus, after: float) -> None:
    """``--once``: wait for two scrapes of every gateway after ``after``, print the counts."""
    await prometheus.wait_scraped(after)
    print(render_counts(prometheus.url, await prometheus.exchange_counts()), flush=True)


def _terminate_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.asynccontextmanager
async def running_prometheus(
    binary: str | None, directory: Path, demo: dict[str, Any]
) -> AsyncIterator[Prometheus | None]:
    """Run Prometheus for the demo while inside (nothing, yielding None, without ``binary``).

    Until the demo installs its own handlers, SIGTERM is handled like
    Ctrl-C, so that a demo stopped while starting still stops Prometheus.
    """
    if binary is None:
        yield None
        return
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    if main:
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    prometheus = Prometheus(binary, directory, demo)
    try:
        prometheus.start()
        await prometheus.wait_ready()
        yield prometheus
    finally:
        prometheus.stop()
        if main and signal.getsignal(signal.SIGTERM) is _terminate_as_interrupt:
            signal.signal(signal.SIGTERM, previous)


__all__ = [
    "PORT_OFFSET",
    "Prometheus",
    "PrometheusError",
    "find_prometheus",
    "prometheus_config",
    "report_scraped",
    "running_prometheus",
    "write_prometheus_files",
]
