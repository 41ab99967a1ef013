"""Running wrk: one measured load, its results, and what wrk itself cost.

wrk runs as a child process with a script of ``bench/wrk/``: ``post.lua``
builds one request once per thread (optionally counting every answer by
status and problem); ``requests.lua`` sends pre-built requests from a file,
each once. Both print their summary as one JSON line (``common.lua``). wrk's
own CPU time is that child's ``rusage`` (``RUSAGE_CHILDREN`` before and
after), so the report can show that the load generator is not what limits a
run.

A :class:`Load` is what one scenario's runs send: :class:`PostLoad` the same
request every time; ``bench.sealed.SealedLoad`` requests built before each run.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

SCRIPTS: Final = Path(__file__).resolve().parent / "wrk"
POST_SCRIPT: Final = SCRIPTS / "post.lua"
REQUESTS_SCRIPT: Final = SCRIPTS / "requests.lua"
MARKER: Final = "BENCH-JSON "
OK_ANSWER: Final = "200"


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
    # Answers by status and problem ("200", "503 overloaded"), where the script counted them.
    answers: dict[str, int] = field(default_factory=dict)
    handed_out: int = 0  # requests the script handed out (requests.lua)
    exhausted: bool = False  # the script ran out of requests: the run is not valid

    @property
    def throughput(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        """Requests that failed: timeouts, socket errors, and answers other than 200 where
        they were counted (else wrk's own count of statuses above 399)."""
        sockets = sum(count for name, count in self.errors.items() if name != "status")
        if self.answers:
            return sockets + sum(n for key, n in self.answers.items() if key != OK_ANSWER)
        return sockets + self.errors["status"]


class Load(Protocol):
    """What wrk sends in the runs of one scenario."""

    def prepare(self, seconds: float) -> None:
        """Get ready for a run of ``seconds`` (before the servers are measured)."""

    def run(self, seconds: float) -> LoadResult:
        """One wrk run of ``seconds``."""


@dataclass
class PostLoad:
    """The same POST (body and headers from files) from ``connections`` connections."""

    wrk: str
    url: str
    connections: int
    body: Path
    headers: Path
    log: Path | None = None
    count_answers: bool = False  # one Lua call per answer: only where the split matters

    def prepare(self, seconds: float) -> None:
        """Nothing to prepare: the request is built once by wrk."""

    def run(self, seconds: float) -> LoadResult:
        """One run of ``bench/wrk/post.lua``."""
        arguments = [str(self.body), str(self.headers)]
        if self.count_answers:
            arguments.append("count-answers")
        return run_wrk(
            self.wrk,
            self.url,
            connections=self.connections,
            seconds=seconds,
            script=POST_SCRIPT,
            arguments=arguments,
            log=self.log,
        )


def find_wrk(name: str) -> str:
    """The wrk executable, or LoadError saying how to install it."""
    found = shutil.which(name)
    if found is None:
        raise LoadError(
            f"{name!r} not found: run bench/install-wrk.sh as root (Debian's wrk package),"
            " or pass --wrk /path/to/wrk"
        )
    return found


def children_cpu_seconds() -> float:
    """User and system CPU seconds of this process's children that have ended (and been reaped)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def run_wrk(
    wrk: str,
    url: str,
    *,
    connections: int,
    seconds: float,
    script: Path,
    arguments: Sequence[str],
    timeout: float = 30.0,
    log: Path | None = None,
) -> LoadResult:
    """Run ``script`` with ``arguments`` against ``url`` from ``connections`` connections
    (one thread)."""
    command = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={max(1, round(timeout))}s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        *arguments,
    ]
    before = children_cpu_seconds()
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603 - wrk with arguments we built
        command, capture_output=True, text=True, check=False, timeout=seconds + timeout + 30
    )
    wall = time.perf_counter() - started
    cpu = children_cpu_seconds() - before
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
    return LoadResult(
        requests=int(summary["requests"]),
        seconds=summary["duration_us"] / 1e6,
        errors={name: int(count) for name, count in summary["errors"].items()},
        latency_us={name: float(value) for name, value in summary["latency_us"].items()},
        cpu_seconds=cpu,
        wall_seconds=wall,
        answers={key: int(count) for key, count in summary["answers"].items()},
        handed_out=int(summary["handed_out"]),
        exhausted=bool(summary["exhausted"]),
    )
