"""Processes of the exchange benchmark: start, wait until ready, measure, stop.

Every server is its own OS process (a gateway started with ``--workers N``
may be several); what it costs is read from ``/proc``: CPU time as
``utime + stime`` of the process and every descendant alive at the start and
end of a measurement, peak resident memory as ``VmHWM`` (reset before each
measurement through ``/proc/<pid>/clear_refs``). Only processes this module
started are ever signalled, by their process id.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
PAGE_KB: Final = os.sysconf("SC_PAGE_SIZE") // 1024


class ProcessError(RuntimeError):
    """A process of the benchmark failed to start or died; the message says which and why."""


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces or parentheses.
    return text[text.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (with the pid, its identity)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def cpu_times(pid: int) -> tuple[float, float] | None:
    """User and system CPU seconds of ``pid`` so far (its threads included)."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def children_of() -> dict[int, list[int]]:
    """Every process's children, from one pass over ``/proc``."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def process_tree(pid: int, tree: Mapping[int, Sequence[int]] | None = None) -> list[int]:
    """``pid`` and all its descendants."""
    tree = children_of() if tree is None else tree
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(tree.get(current, ()))
    return found


def memory_kb(pid: int) -> dict[str, int]:
    """``VmHWM`` (peak resident) and ``VmRSS`` of ``pid`` in KiB; empty if it is gone."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                found[name] = int(value.split()[0])
    return found


def reset_peak(pid: int) -> None:
    """Reset ``VmHWM`` of ``pid`` to its current RSS (Linux 4.0+; ignored where refused)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass(frozen=True)
class MachineTimes:
    """The first line of ``/proc/stat``: busy and total jiffies of all CPUs."""

    busy: int
    total: int

    @classmethod
    def now(cls) -> MachineTimes:
        """Read it now."""
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        total = sum(values[:8])  # guest time is already counted in user
        return cls(busy=total - idle, total=total)

    def busy_seconds_since(self, earlier: MachineTimes) -> float:
        """CPU seconds all CPUs were busy between ``earlier`` and this reading."""
        return (self.busy - earlier.busy) / CLOCK_TICKS

    def busy_share_since(self, earlier: MachineTimes) -> float:
        """The share of all CPUs' time that was busy between ``earlier`` and this reading."""
        total = self.total - earlier.total
        return (self.busy - earlier.busy) / total if total else 0.0


@dataclass
class Server:
    """One started server (with its workers, if any) and how to reach and stop it."""

    name: str
    command: list[str]
    health_url: str
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    members: dict[int, int] = field(default_factory=dict)  # pid -> start time
    started_at: float = 0.0  # time.perf_counter() at start
    ready_seconds: float | None = None

    @property
    def pid(self) -> int:
        """The top process id."""
        if self.popen is None:
            raise ProcessError(f"{self.name} is not running")
        return self.popen.pid

    def start(self, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> None:
        """Start the process in ``cwd``, its output going to :attr:`log_path`."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started_at = time.perf_counter()
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                start_new_session=True,  # a Ctrl-C of the benchmark reaches only the benchmark
            )
        self.members = {}

    def alive(self) -> bool:
        """True while the top process runs."""
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the process's output, for error messages."""
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:])
        return ""

    def wait_ready(self, timeout: float) -> float:
        """Poll :attr:`health_url` until it answers 200; the seconds since :meth:`start`."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if not self.alive():
                raise ProcessError(
                    f"{self.name} exited with status {self.popen and self.popen.returncode}"
                    f" before it was ready; its log ({self.log_path}) ends:\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError, urllib.error.URLError, TimeoutError),
                urllib.request.urlopen(self.health_url, timeout=2) as answer,  # noqa: S310
            ):
                if answer.status == 200:
                    self.refresh_members()
                    self.ready_seconds = time.perf_counter() - self.started_at
                    return self.ready_seconds
            time.sleep(0.05)
        raise ProcessError(
            f"{self.name} was not ready within {timeout:.0f} s; its log ends:\n{self.log_tail()}"
        )

    def refresh_members(self) -> None:
        """Remember the process and its descendants (workers), with their start times."""
        for pid in process_tree(self.pid):
            started = start_time(pid)
            if started is not None:
                self.members.setdefault(pid, started)

    def live_members(self) -> list[int]:
        """The remembered processes still running as themselves (not a reused pid)."""
        return [pid for pid, started in self.members.items() if start_time(pid) == started]

    def cpu(self) -> dict[int, tuple[float, float]]:
        """User and system CPU seconds so far of every live member process."""
        self.refresh_members()
        found = {}
        for pid in self.live_members():
            times = cpu_times(pid)
            if times is not None:
                found[pid] = times
        return found

    def reset_peaks(self) -> None:
        """Reset the peak RSS of every member."""
        for pid in self.live_members():
            reset_peak(pid)

    def memory(self) -> dict[str, float]:
        """Peak and current RSS in MiB: the largest member's and the members' sum."""
        readings = [memory_kb(pid) for pid in self.live_members()]
        peaks = [r.get("VmHWM", 0) for r in readings]
        now = [r.get("VmRSS", 0) for r in readings]
        return {
            "processes": len(readings),
            "peak_rss_mb": round(max(peaks, default=0) / 1024, 1),
            "peak_rss_sum_mb": round(sum(peaks) / 1024, 1),
            "rss_mb": round(max(now, default=0) / 1024, 1),
            "rss_sum_mb": round(sum(now) / 1024, 1),
        }

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the top process, then SIGKILL it and any member left behind."""
        if self.popen is None:
            return
        if self.alive():
            self.refresh_members()
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=grace)
        deadline = time.monotonic() + grace
        while self.live_members() and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self.live_members():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.popen = None
        self.members = {}


def post(
    url: str, body: bytes | bytearray, headers: Mapping[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """POST ``body`` (JSON unless ``headers`` set another Content-Type); status, headers, body."""
    request = urllib.request.Request(  # noqa: S310 - loopback URLs we built
        url, data=body, headers={"Content-Type": "application/json", **headers}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def raise_open_files(wanted: int) -> dict[str, int]:
    """Raise this process's soft limit of open files towards ``wanted`` (at most the hard
    limit), so that the servers and wrk started after it inherit it; the limits now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return {"soft": soft, "hard": hard}


def cpu_delta(
    before: Mapping[int, tuple[float, float]], after: Mapping[int, tuple[float, float]]
) -> tuple[float, float]:
    """User and system seconds between two :meth:`Server.cpu` readings (new ones from zero)."""
    user = sum(times[0] - before.get(pid, (0.0, 0.0))[0] for pid, times in after.items())
    system = sum(times[1] - before.get(pid, (0.0, 0.0))[1] for pid, times in after.items())
    return user, system


def stop_all(servers: Iterable[Server]) -> None:
    """Stop every server (each by its own process id)."""
    for server in servers:
        with contextlib.suppress(ProcessError, OSError, subprocess.SubprocessError):
            server.stop()
