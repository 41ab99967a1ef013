"""Running a gateway: start, reload in the background, shut down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from aiohttp import web

from gateway.config import GatewaySettings
from gateway.errors import SetupError
from gateway.observability import get_logger
from gateway.runtime import Clock, build_runtime, reload_forever
from gateway.web.app import create_app
from gateway.workers import READY, address_of

# How often a worker checks that the process that started it is still there.
PARENT_CHECK_SECONDS = 1.0

# Net new container objects between two young-generation collections (CPython: 700).
YOUNG_COLLECTION_THRESHOLD = 10_000

T = TypeVar("T")
EventLoopChoice = Literal["auto", "uvloop", "asyncio"]


def event_loop_factory(
    choice: EventLoopChoice,
) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for ``listen.event_loop`` (None: asyncio's own loop).

    ``auto`` takes uvloop where it is installed: its transports and loop cost
    a gateway measurably less CPU per exchange (docs/performance.md). Asking
    for ``uvloop`` where it is missing is a setup error, not a silent fallback.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional at import time: not on every platform
    except ImportError as exc:
        if choice == "uvloop":
            raise SetupError("listen.event_loop", "uvloop is not installed") from exc
        return None
    return uvloop.new_event_loop


def run_on_event_loop(main: Coroutine[Any, Any, T], choice: EventLoopChoice) -> T:
    """Run ``main`` to completion on a new loop of the kind ``choice`` names."""
    with asyncio.Runner(loop_factory=event_loop_factory(choice)) as runner:
        return runner.run(main)


@dataclass(frozen=True)
class WorkerRole:
    """What a worker of ``gateway serve --workers N`` got from its parent (gateway.workers)."""

    index: int
    count: int
    parent_pid: int
    sockets: tuple[socket.socket, ...]
    ready_fd: int


async def serve(
    settings: GatewaySettings,
    *,
    stop: asyncio.Event | None = None,
    clock: Clock = time.time,
    worker: WorkerRole | None = None,
    tune_gc: bool = False,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``), then finish in-flight exchanges and close.

    On shutdown the listener closes first, requests already being handled
    get ``limits.shutdown_grace_seconds`` to finish, and the audit store
    commits what is pending before the process exits. A ``worker`` serves the
    sockets its parent bound, says when it is ready, and stops if the parent
    goes away.
    """
    log = get_logger(agency=settings.agency)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    runtime = await build_runtime(settings, clock, workers=worker.count if worker else 1)
    app = create_app(runtime)
    runner = web.AppRunner(
        app, shutdown_timeout=settings.limits.shutdown_grace_seconds, access_log=None
    )
    tasks: list[asyncio.Task[None]] = []
    try:
        await runner.setup()
        if tune_gc:
            tune_collector_for_serving()
        tasks.append(asyncio.create_task(reload_forever(runtime), name="reload"))
        listen = f"{settings.listen.host}:{settings.listen.port}"
        if worker is None:
            try:
                await web.TCPSite(runner, settings.listen.host, settings.listen.port).start()
            except OSError as exc:
                raise SetupError("listen", f"cannot listen on {listen}: {exc.strerror}") from exc
        else:
            for sock in worker.sockets:
                await web.SockSite(runner, sock).start()
            listen = ", ".join(address_of(sock) for sock in worker.sockets)
            tasks.append(asyncio.create_task(_watch_parent(worker.parent_pid, stop), name="parent"))
        log.info(
            "gateway_started",
            listen=listen,
            public_url=str(settings.public_url),
            contracts=len(runtime.contracts.current),
            # "kernel": inotify reports changes; "polling": every file stat-ed each reload.
            contract_changes="kernel" if runtime.contracts.watch.kernel_told else "polling",
            registry_serial=runtime.trusted().serial,
            state="memory" if runtime.state is None else runtime.state.description,
            event_loop=type(loop).__module__.partition(".")[0],
        )
        if worker is not None:
            _say_ready(worker.ready_fd)
        await stop.wait()
        log.info("gateway_stopping")
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()
        await runtime.close()
        log.info("gateway_stopped")


def tune_collector_for_serving() -> None:
    """Set the cyclic garbage collector up for a process that serves until it exits.

    Freeze the start-up heap: keys, the registry and every loaded contract
    live as long as the process. Left in the collector's oldest generation,
    each full collection under load walks them all again: with 10,000
    contracts that was a pause of a noticeable fraction of a second, the tail
    of the contracts curve. Garbage is collected first, so nothing
    unreachable is frozen.

    Then collect the young generation only after
    :data:`YOUNG_COLLECTION_THRESHOLD` more container objects than were freed,
    not CPython's 700. The objects of the exchanges in flight are short-lived
    and freed by reference counting, but at 64 connections they alone exceed
    700, so the collector ran hundreds of times a minute, found almost no
    cycles and cost about 3 % of each gateway's CPU. Cyclic garbage (an
    exception's traceback) is still collected, a little later.

    Only ``gateway serve`` should do this, not a program that runs
    :func:`serve` among other work.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, oldest)


def _say_ready(fd: int) -> None:
    """Tell the parent this worker accepts connections (a parent gone is no error here)."""
    with contextlib.suppress(OSError):
        os.write(fd, READY)
    with contextlib.suppress(OSError):
        os.close(fd)


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    """Stop when the parent that supervises this worker is gone (the worker was re-parented)."""
    while True:
        await asyncio.sleep(PARENT_CHECK_SECONDS)
        if os.getppid() != parent:
            break
    get_logger().warning("supervisor_gone", parent=parent)
    stop.set()
