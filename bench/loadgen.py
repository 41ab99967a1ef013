"""Running wrk: one measured load, its results, and what wrk itself cost.

wrk runs as a child process with ``bench/wrk/post.lua``, which builds the
request once per thread and prints its summary as one JSON line. wrk's own
CPU time is that child's ``rusage`` (``RUSAGE_CHILDREN`` before and after),
so the report can show that the load generator is not what limits a run.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

LUA_SCRIPT: Final = Path(__file__).resolve().parent / "wrk" / "post.lua"
MARKER: Final = "BENCH-JSON "


class LoadError(RuntimeError):
    """wrk is missing, failed, or printed no results."""


@dataclass(frozen=True)
class LoadResult:
    """What one wrk run measured."""

    requests: int
    seconds: float
    errors: dict[str, int]
    latency_us: dict[str, float]
    cpu_seconds: float
    wall_seconds: float

    @property
    def throughput(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        """Requests that failed: non-2xx/3xx answers, timeouts, socket errors."""
        return sum(self.errors.values())


def find_wrk(name: str) -> str:
    """The wrk executable, or LoadError saying how to install it."""
    found = shutil.which(name)
    if found is None:
        raise LoadError(
            f"{name!r} not found: run bench/install-wrk.sh as root (Debian's wrk package),"
            " or pass --wrk /path/to/wrk"
        )
    return found


def run_wrk(
    wrk: str,
    url: str,
    *,
    connections: int,
    seconds: float,
    body: Path,
    headers: Path,
    timeout: float = 30.0,
    log: Path | None = None,
) -> LoadResult:
    """POST ``body`` with ``headers`` to ``url`` from ``connections`` connections (one thread)."""
    command = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={max(1, round(timeout))}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(body),
        str(headers),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603 - wrk with arguments we built
        command, capture_output=True, text=True, check=False, timeout=seconds + timeout + 30
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if log is not None:
        with log.open("a") as handle:
            handle.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}\n")
    line = next(
        (text for text in done.stdout.splitlines() if text.startswith(MARKER)),
        None,
    )
    if done.returncode != 0 or line is None:
        raise LoadError(
            f"wrk failed (status {done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
        )
    summary: dict[str, Any] = json.loads(line.removeprefix(MARKER))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return LoadResult(
        requests=int(summary["requests"]),
        seconds=summary["duration_us"] / 1e6,
        errors={name: int(count) for name, count in summary["errors"].items()},
        latency_us={name: float(value) for name, value in summary["latency_us"].items()},
        cpu_seconds=cpu,
        wall_seconds=wall,
    )
