"""``gateway demo``: a live three-agency network on this machine.

Files are written once into the demo folder (keys, registry, contracts,
configs, ``demo.json``); the gateways and backends then run in this process,
each on its own loopback port, exactly as ``gateway serve`` would run them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.config import load_settings
from gateway.demo.backends import backend_app
from gateway.demo.network import BENEFITS, SERVICES, TAX, build_network
from gateway.demo.prometheus import Prometheus, find_prometheus, report_scraped, running_prometheus
from gateway.demo.scenario import render_table, run_scenario
from gateway.errors import SetupError
from gateway.keys import load_public_key_file
from gateway.observability import configure_logging
from gateway.registry import Registry, verify_registry
from gateway.web.server import serve

# How long the network may take to report ready before the demo gives up.
READY_TIMEOUT_SECONDS = 20.0


def load_demo(directory: Path) -> dict[str, Any]:
    """The ``demo.json`` of an existing demo folder."""
    try:
        document: dict[str, Any] = json.loads((directory / "demo.json").read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise SetupError(str(directory / "demo.json"), "not a demo folder") from exc
    return document


def demo_registry(directory: Path) -> Registry:
    """The demo's verified trust registry."""
    authority = load_public_key_file(directory / "authority.jwks.json", "sig")
    compact = (directory / "registry.jws").read_text("ascii").strip()
    return verify_registry(compact, authority, int(datetime.now(UTC).timestamp()))


@contextlib.asynccontextmanager
async def running_network(directory: Path, demo: dict[str, Any]) -> AsyncIterator[None]:
    """Start every backend and gateway of the demo; stop them all on exit."""
    runners: list[web.AppRunner] = []
    stop = asyncio.Event()
    gateways: list[asyncio.Task[None]] = []
    try:
        for agency, info in demo["agencies"].items():
            if info.get("backend_port"):
                runner = web.AppRunner(backend_app(SERVICES[agency]), access_log=None)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", info["backend_port"]).start()
                runners.append(runner)
        for agency, info in demo["agencies"].items():
            settings = load_settings(directory / info["config"])
            gateways.append(asyncio.create_task(serve(settings, stop=stop), name=agency))
        await _wait_ready(demo, gateways)
        yield
    finally:
        stop.set()
        results = await asyncio.gather(*gateways, return_exceptions=True)
        for runner in runners:
            await runner.cleanup()
        for result in results:
            if isinstance(result, Exception):
                raise result


async def _wait_ready(demo: dict[str, Any], gateways: list[asyncio.Task[None]]) -> None:
    deadline = asyncio.get_running_loop().time() + READY_TIMEOUT_SECONDS
    async with aiohttp.ClientSession() as session:
        for info in demo["agencies"].values():
            while True:
                for task in gateways:
                    if task.done() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{info['url']}/readyz") as response:
                        if response.status == 200:
                            break
                if asyncio.get_running_loop().time() > deadline:
                    raise SetupError(info["url"], "the gateway did not become ready")
                await asyncio.sleep(0.05)


def _print_welcome(directory: Path, demo: dict[str, Any], prometheus: Prometheus | None) -> None:
    benefits = demo["agencies"][BENEFITS]
    subject = demo["subjects"][0]
    print(f"\nDemo network in {directory}")
    for agency, info in demo["agencies"].items():
        print(f"  {agency:<20} {info['url']}   config {directory / info['config']}")
    print("\nAsk the tax authority for a person's income, as the benefits caseworker app:\n")
    print(
        f"  curl -s -X POST {benefits['url']}/v1/exchange/{TAX}/income-records \\\n"
        f"    -H 'Authorization: Bearer {benefits['client_keys']['caseworker-app']}' \\\n"
        f"    -H 'X-Purpose: benefit-eligibility' -H 'X-End-User: caseworker-17' \\\n"
        f"    -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"national_id": "{subject}", "year": 2025}}\'\n'
    )
    tax = demo["agencies"][TAX]
    print("Then, as the tax authority's privacy officer, see every access to that person:\n")
    print(
        f"  curl -s '{tax['url']}/v1/audit/records?subject={subject}' \\\n"
        f"    -H 'Authorization: Bearer {tax['officer_key']}'\n"
        f"  gateway audit subject-report {subject} --config {directory / tax['config']}\n"
        f"  gateway audit verify --config {directory / tax['config']}\n"
    )
    if prometheus is not None:
        print(prometheus.welcome())
    print("Press Ctrl-C to stop.")


async def run_demo(
    *,
    directory: Path | None,
    port_base: int,
    scenario: bool,
    once: bool,
    with_prometheus: bool = False,
) -> int:
    """Set up (or reuse) the demo folder, run the network, run the scenario.

    ``with_prometheus`` also runs Prometheus scraping the network
    (:mod:`gateway.demo.prometheus`); with ``once`` it prints what Prometheus
    counted once it has scraped every gateway twice after the scenario.
    """
    binary = find_prometheus() if with_prometheus else None
    folder = directory or Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    configure_logging("warning" if once else "info", "console")
    if (folder / "demo.json").exists():
        demo = load_demo(folder)
        if demo.get("port_base") != port_base:
            raise SetupError(
                str(folder / "demo.json"),
                f"this folder was set up for --port-base {demo.get('port_base')}",
            )
    else:
        demo = build_network(folder, port_base, datetime.now(UTC))
    failures = 0
    async with (
        running_network(folder, demo),
        running_prometheus(binary, folder, demo) as prometheus,
    ):
        if scenario or once:
            rows = await run_scenario(folder, demo, demo_registry(folder))
            print(render_table(rows), flush=True)
            failures = sum(not row.ok for row in rows)
            print(f"\n{len(rows) - failures} passed, {failures} failed", flush=True)
        if once:
            if prometheus is not None:
                await report_scraped(prometheus, time.time())
            return 1 if failures else 0
        _print_welcome(folder, demo, prometheus)
        sys.stdout.flush()
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stopped.set)
        await stopped.wait()
    return 0
