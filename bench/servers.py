"""The plain processes of the exchange benchmark: a JSON backend and a plain proxy hop.

``python -m bench.servers backend --port P`` answers every ``POST`` with a
record of the size the request asks for (``record_bytes``, see
:mod:`bench.payloads`): it reads and parses the request as a real backend
would, and sends prepared bytes back.

``python -m bench.servers proxy --port P --upstream URL`` is scenario B's
hop: it reads the request, forwards it with the same method, path, body and
headers to ``URL`` through one pooled aiohttp session (the gateway's own
connector settings), and returns the upstream's status, content type and
body. No security, no parsing: the plumbing a gateway hop cannot avoid.

Both answer ``GET /healthz`` and stop on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Final

import aiohttp
from aiohttp import web

from bench.payloads import MAX_SIZE, MIN_SIZE, record_bytes

# Request headers a proxy hop passes on (everything the gateway's client sends).
FORWARDED: Final = (
    "Content-Type",
    "Authorization",
    "X-Purpose",
    "X-End-User",
    "X-Contract",
    "Accept",
)

# Bodies up to the largest payload the benchmark sends, JWE-expanded.
CLIENT_MAX_SIZE: Final = 2 * MAX_SIZE

RECORDS: Final = web.AppKey("records", dict[int, bytes])
SESSION: Final = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM: Final = web.AppKey("upstream", str)


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``."""
    return web.json_response({"status": "ok"})


async def record(request: web.Request) -> web.Response:
    """``POST /{anything}``: the record of ``record_bytes`` bytes (1 KiB by default)."""
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError:
        return web.json_response({"error": "body must be JSON"}, status=400)
    size = body.get("record_bytes", 1024) if isinstance(body, dict) else 1024
    if not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        return web.json_response({"error": "record_bytes out of range"}, status=400)
    records = request.app[RECORDS]
    data = records.get(size)
    if data is None:
        data = records[size] = record_bytes(size)
    return web.Response(body=data, content_type="application/json")


def backend_app() -> web.Application:
    """The backend: one route for every path."""
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app[RECORDS] = {}
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/{path:.*}", record)
    return app


async def forward(request: web.Request) -> web.Response:
    """Pass the request to the upstream and its answer back."""
    raw = await request.read()
    headers = {name: request.headers[name] for name in FORWARDED if name in request.headers}
    url = request.app[UPSTREAM] + request.path_qs
    async with request.app[SESSION].post(url, data=raw, headers=headers) as response:
        body = await response.read()
        return web.Response(
            body=body,
            status=response.status,
            headers={"Content-Type": response.headers.get("Content-Type", "application/json")},
        )


def proxy_app(upstream: str) -> web.Application:
    """A proxy hop to ``upstream`` (``http://host:port``, no path)."""
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app[UPSTREAM] = upstream.rstrip("/")

    async def session_context(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, ttl_dns_cache=300)
        app[SESSION] = aiohttp.ClientSession(connector=connector)
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session_context)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/{path:.*}", forward)
    return app


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve ``app`` until SIGTERM or SIGINT."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await web.TCPSite(runner, host, port).start()
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.servers backend|proxy ...``."""
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__)
    kinds = parser.add_subparsers(dest="kind", required=True)
    backend = kinds.add_parser("backend", help="the JSON backend")
    backend.add_argument("--host", default="127.0.0.1")
    backend.add_argument("--port", type=int, required=True)
    proxy = kinds.add_parser("proxy", help="a plain proxy hop")
    proxy.add_argument("--host", default="127.0.0.1")
    proxy.add_argument("--port", type=int, required=True)
    proxy.add_argument("--upstream", required=True, help="http://host:port of the next hop")
    args = parser.parse_args(argv)
    app = backend_app() if args.kind == "backend" else proxy_app(args.upstream)
    asyncio.run(serve(app, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
