"""Several worker processes serving one port: ``gateway serve --workers N``.

The parent process checks the whole set-up once (config, keys, registry,
contracts, audit store, shared state: exactly what a worker loads), binds the
listening socket(s) itself and starts N workers, each a ``gateway serve``
process that inherits the socket and runs the ordinary aiohttp application
with its own :class:`~gateway.runtime.Runtime`. The kernel hands each new
connection to whichever worker accepts it first. Why one socket bound by the
parent and not ``SO_REUSEPORT`` is in docs/adr/0006-worker-processes.md.

The parent then only supervises:

* a worker tells it that it is ready by writing to a pipe once it listens;
* SIGTERM or SIGINT to the parent closes its copy of the socket and sends
  SIGTERM to every worker, which drains its requests and closes its audit log
  (a final checkpoint) as a single gateway does; one still running after
  ``limits.shutdown_grace_seconds`` plus a margin is killed;
* a worker that exits while no stop was asked for is started again after a
  back-off that doubles with each exit in a row (0.5 s up to 30 s) and starts
  over once a worker has run for a minute; every exit and restart is logged;
* a worker that exits (or hangs) before it is ready, five times in a row,
  means something the parent's check could not see is wrong: the parent
  stops the others and exits with status 1 and one line saying so;
* a worker whose parent is gone stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from gateway.config import MAX_WORKERS, GatewaySettings
from gateway.errors import SetupError
from gateway.metrics import MULTIPROCESS_ENV
from gateway.observability import get_logger

# What a worker writes to its ready pipe once it accepts connections.
READY: Final = b"ready\n"
BACKLOG: Final = 128  # aiohttp's own default for the sockets it binds


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def resolve_workers(value: int | str) -> int:
    """``N`` (1..64), or ``0`` / ``auto``: one per CPU, at most :data:`MAX_WORKERS`."""
    if value in (0, "0", "auto"):
        return min(cpu_count(), MAX_WORKERS)
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"workers must be a number from 0 to {MAX_WORKERS} or auto") from None
    if not 0 < count <= MAX_WORKERS:
        raise ValueError(f"workers must be a number from 0 to {MAX_WORKERS} or auto")
    return count


def bind_listeners(host: str, port: int, backlog: int = BACKLOG) -> list[socket.socket]:
    """Listening TCP sockets for ``host`` and ``port``, one per address, as aiohttp binds them.

    ``SetupError`` names the address when it cannot be bound (in use, not ours).
    """
    try:
        infos = socket.getaddrinfo(
            host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except OSError as exc:
        raise SetupError("listen.host", f"cannot resolve {host!r}: {exc}") from exc
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise SetupError(
                    "listen", f"cannot listen on {address[0]} port {port}: {exc.strerror}"
                ) from exc
            sock.listen(backlog)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def preflight(settings: GatewaySettings, workers: int) -> None:
    """Load everything a worker loads, then let it go: a problem is reported here, once.

    The audit store is opened and checked against its last checkpoint, and the
    shared state store is created, so that workers starting together find both.
    """
    from gateway.runtime import build_runtime  # noqa: PLC0415 - the runtime is heavy

    runtime = await build_runtime(settings, workers=workers)
    await runtime.close()


@dataclass(frozen=True)
class SupervisorPolicy:
    """How long workers get, and when the parent gives up on them."""

    start_timeout: float = 60.0
    max_start_failures: int = 5
    backoff_first: float = 0.5
    backoff_max: float = 30.0
    stable_seconds: float = 60.0
    stop_timeout: float = 25.0

    def backoff(self, exits_in_a_row: int) -> float:
        """Seconds before the restart after the ``exits_in_a_row``-th exit in a row."""
        return min(self.backoff_max, self.backoff_first * 2.0 ** max(0, exits_in_a_row - 1))


# (worker index, the ready pipe's write end, the listening sockets' fds) -> argv
WorkerCommand = Callable[[int, int, Sequence[int]], list[str]]


def worker_command(config: Path, count: int) -> WorkerCommand:
    """The argv of a worker: this interpreter running ``gateway serve`` in worker mode."""
    parent = os.getpid()

    def argv(index: int, ready_fd: int, fds: Sequence[int]) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--config",
            str(config),
            "--workers",
            str(count),
            "--worker-index",
            str(index),
            "--worker-of",
            str(parent),
            "--worker-fds",
            ",".join(str(fd) for fd in fds),
            "--worker-ready-fd",
            str(ready_fd),
        ]

    return argv


def describe_exit(code: int) -> str:
    """``status 1`` or ``signal SIGKILL`` from a returncode."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"status {code}"


@dataclass
class _Slot:
    index: int
    process: asyncio.subprocess.Process | None = None
    ready: bool = False
    exits_in_a_row: int = 0
    start_failures: int = 0
    restarts: int = 0
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Start ``count`` workers on ``listeners``; restart, stop and give up as documented."""

    def __init__(
        self,
        count: int,
        listeners: Sequence[socket.socket],
        command: WorkerCommand,
        *,
        policy: SupervisorPolicy | None = None,
        agency: str = "",
        metrics_dir: Path | None = None,
    ) -> None:
        self.count = count
        self.listeners = list(listeners)
        self.command = command
        self.policy = policy or SupervisorPolicy()
        # Where the workers' metrics live (prometheus_client's multiprocess mode), if anywhere.
        self.metrics_dir = metrics_dir
        self.slots = [_Slot(index) for index in range(count)]
        self.failure: str | None = None
        self.unclean: list[str] = []
        self._stopping: asyncio.Event | None = None
        self._stopping_late: list[asyncio.subprocess.Process] = []
        self._log = get_logger(agency=agency, component="supervisor")

    def request_stop(self) -> None:
        """Begin a graceful stop (what SIGTERM and SIGINT do)."""
        if self._stopping is not None and not self._stopping.is_set():
            self._log.info("workers_stopping")
            self._stopping.set()

    async def run(self) -> int:
        """Supervise until stopped or given up; 0 when every worker stopped cleanly."""
        self._stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, self.request_stop)
                installed.append(signum)
        address = ", ".join(address_of(sock) for sock in self.listeners)
        self._log.info("workers_starting", workers=self.count, listen=address, pid=os.getpid())
        slots = [
            asyncio.create_task(self._supervise(slot), name=f"worker-{slot.index}")
            for slot in self.slots
        ]
        try:
            await self._stopping.wait()
            # New connections are refused once the workers closed their copies too.
            for sock in self.listeners:
                sock.close()
            await self._stop_all()
            _, late = await asyncio.wait(slots, timeout=self.policy.stop_timeout)
            if late:  # only workers started during the stop can still run
                for process in self._stopping_late:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    self.unclean.append(f"pid {process.pid}: started while stopping")
                await asyncio.wait(late)
        finally:
            for task in slots:
                task.cancel()
            await asyncio.gather(*slots, return_exceptions=True)
            for signum in installed:
                loop.remove_signal_handler(signum)
        if self.failure is not None:
            self._log.error("workers_failed", reason=self.failure)
            return 1
        self._log.info("workers_stopped", unclean=len(self.unclean))
        return 1 if self.unclean else 0

    async def _stop_all(self) -> None:
        running = [
            slot.process
            for slot in self.slots
            if slot.process is not None and slot.process.returncode is None
        ]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(process.wait()) for process in running]
        if not waits:
            return
        _, late = await asyncio.wait(waits, timeout=self.policy.stop_timeout)
        for process in running:
            if process.returncode is None:
                self._log.error("worker_stop_timeout", pid=process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        if late:
            await asyncio.wait(late)
        for process in running:
            code = process.returncode or 0
            # Killed by the SIGTERM itself: it had not installed its handlers, so served nothing.
            if code not in (0, -signal.SIGTERM):
                self.unclean.append(f"pid {process.pid}: {describe_exit(code)}")

    async def _supervise(self, slot: _Slot) -> None:
        stopping = self._stopping
        assert stopping is not None  # noqa: S101 - set by run() before this task exists
        while not stopping.is_set():
            ready, code, lived = await self._run_once(slot)
            if stopping.is_set():
                return
            stable = lived >= self.policy.stable_seconds
            slot.exits_in_a_row = 1 if stable else slot.exits_in_a_row + 1
            slot.start_failures = 0 if ready else slot.start_failures + 1
            if slot.start_failures >= self.policy.max_start_failures:
                self.failure = (
                    f"worker {slot.index} did not start {slot.start_failures} times in a row "
                    f"(last: {code}); its own messages say why"
                )
                self.request_stop()
                return
            delay = self.policy.backoff(slot.exits_in_a_row)
            self._log.error(
                "worker_exited",
                worker=slot.index,
                pid=slot.pids[-1] if slot.pids else None,
                exit=code,
                ready=ready,
                restart_in=delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            slot.restarts += 1

    async def _run_once(self, slot: _Slot) -> tuple[bool, str, float]:
        """Start the slot's worker and wait for it to exit: (was ready, how it ended, uptime)."""
        read_fd, write_fd = os.pipe()
        fds = [sock.fileno() for sock in self.listeners]
        env = None
        if self.metrics_dir is not None:
            env = {**os.environ, MULTIPROCESS_ENV: str(self.metrics_dir)}
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command(slot.index, write_fd, fds), pass_fds=(*fds, write_fd), env=env
            )
        except OSError as exc:
            os.close(read_fd)
            return False, f"could not start: {exc.strerror}", 0.0
        finally:
            os.close(write_fd)
        slot.process = process
        slot.pids.append(process.pid)
        self._log.info("worker_started", worker=slot.index, pid=process.pid)
        if self._stopping is not None and self._stopping.is_set():
            # Started while the others were being stopped: stop it too, and wait for it.
            self._stopping_late.append(process)
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        ready_signal = _read_ready(read_fd)
        exited = asyncio.create_task(process.wait())
        started = time.monotonic()
        ready = False
        try:
            either: list[asyncio.Future[Any]] = [ready_signal, exited]
            await asyncio.wait(
                either,
                timeout=self.policy.start_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            ready = ready_signal.done() and ready_signal.result()
            if ready:
                self._log.info("worker_ready", worker=slot.index, pid=process.pid)
                slot.ready = True
                started = time.monotonic()
            elif not exited.done() and not (self._stopping and self._stopping.is_set()):
                self._log.error("worker_start_timeout", worker=slot.index, pid=process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            code = await exited
        finally:
            slot.ready = False
            ready_signal.cancel()
        if self.metrics_dir is not None:
            # Its in-flight gauge goes; its counters stay in the sums, which never go back.
            from prometheus_client.multiprocess import mark_process_dead  # noqa: PLC0415

            mark_process_dead(process.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
        return ready, describe_exit(code), time.monotonic() - started


def _read_ready(fd: int) -> asyncio.Future[bool]:
    """A future set when the worker writes :data:`READY` (True) or closes the pipe (False)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bool] = loop.create_future()
    os.set_blocking(fd, False)
    received = bytearray()

    def done(value: bool) -> None:
        loop.remove_reader(fd)
        os.close(fd)
        if not future.done():
            future.set_result(value)

    def readable() -> None:
        try:
            chunk = os.read(fd, 64)
        except BlockingIOError:
            return
        except OSError:
            done(False)
            return
        received.extend(chunk)
        if received.startswith(READY):
            done(True)
        elif not chunk or len(received) >= len(READY):
            done(False)

    def cancelled(_: asyncio.Future[bool]) -> None:
        if future.cancelled():
            loop.remove_reader(fd)
            os.close(fd)

    loop.add_reader(fd, readable)
    future.add_done_callback(cancelled)
    return future


def address_of(sock: socket.socket) -> str:
    """``host:port`` (``[host]:port`` for IPv6) a listening socket is bound to."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run_workers(config: Path, settings: GatewaySettings, count: int) -> int:
    """``gateway serve --workers N`` (N > 1): check, bind, supervise; the exit status."""
    asyncio.run(preflight(settings, count))
    listeners = bind_listeners(settings.listen.host, settings.listen.port)
    policy = SupervisorPolicy(stop_timeout=settings.limits.shutdown_grace_seconds + 15.0)
    metrics_dir = Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
    supervisor = Supervisor(
        count,
        listeners,
        worker_command(config.resolve(), count),
        policy=policy,
        agency=settings.agency,
        metrics_dir=metrics_dir,
    )
    try:
        code = asyncio.run(supervisor.run())
    finally:
        for sock in listeners:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if supervisor.failure is not None:
        print(f"gateway: {supervisor.failure}", file=sys.stderr)
    return code
