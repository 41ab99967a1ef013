"""Running a gateway: start, reload in the background, shut down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

from aiohttp import web

from gateway.config import GatewaySettings
from gateway.observability import get_logger
from gateway.runtime import Clock, build_runtime, reload_forever
from gateway.web.app import create_app


async def serve(
    settings: GatewaySettings,
    *,
    stop: asyncio.Event | None = None,
    clock: Clock = time.time,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``), then finish in-flight exchanges and close.

    On shutdown the listener closes first, requests already being handled
    get ``limits.shutdown_grace_seconds`` to finish, and the audit store
    commits what is pending before the process exits.
    """
    log = get_logger(agency=settings.agency)
    runtime = await build_runtime(settings, clock)
    app = create_app(runtime)
    runner = web.AppRunner(
        app, shutdown_timeout=settings.limits.shutdown_grace_seconds, access_log=None
    )
    await runner.setup()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    reloader = asyncio.create_task(reload_forever(runtime), name="reload")
    try:
        site = web.TCPSite(runner, settings.listen.host, settings.listen.port)
        await site.start()
        log.info(
            "gateway_started",
            listen=f"{settings.listen.host}:{settings.listen.port}",
            public_url=str(settings.public_url),
            contracts=len(runtime.contracts.current),
            registry_serial=runtime.trusted().serial,
        )
        await stop.wait()
        log.info("gateway_stopping")
    finally:
        reloader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reloader
        await runner.cleanup()
        await runtime.audit.close()
        log.info("gateway_stopped")
