"""Shared fixtures: fixed clocks, fresh keys, and live demo networks on loopback.

A live network is the real thing: the demo's files written by the same code
an operator runs, three gateways and two backends serving HTTP on 127.0.0.1,
each with its own SQLite audit store. It runs in a background thread with its
own event loop, so any test (sync or async) can talk to it over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.demo import demo_registry, running_network
from gateway.demo.network import build_network
from gateway.keys import PrivateKey, generate_private_keys
from gateway.observability import configure_logging
from gateway.registry import Registry

# A fixed instant for pure tests: 2026-11-26T12:00:00Z.
FIXED_NOW = 1795694400


@pytest.fixture
def now() -> int:
    """A fixed clock reading for pure logic tests."""
    return FIXED_NOW


@pytest.fixture
def signing_key() -> PrivateKey:
    """A fresh Ed25519 signing key."""
    return generate_private_keys("ed25519")[0]


@pytest.fixture
def encryption_key() -> PrivateKey:
    """A fresh X25519 encryption key."""
    return generate_private_keys("ed25519")[1]


def _ports_free(base: int) -> bool:
    for offset in (1, 2, 3, 11, 12, 13):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", base + offset))
            except OSError:
                return False
    return True


_next_base = [21000]


def free_port_base() -> int:
    """A port base whose gateway and backend ports (base+1..3, base+11..13) are free."""
    while True:
        _next_base[0] += 20
        if _ports_free(_next_base[0]):
            return _next_base[0]


@dataclass
class LiveNetwork:
    """A running demo network: its folder, ``demo.json`` and registry."""

    directory: Path
    demo: dict[str, Any]
    registry: Registry

    def agency(self, agency_id: str) -> dict[str, Any]:
        """The ``demo.json`` entry of ``agency_id``."""
        entry: dict[str, Any] = self.demo["agencies"][agency_id]
        return entry

    def url(self, agency_id: str) -> str:
        """The gateway URL of ``agency_id``."""
        return str(self.agency(agency_id)["url"])


@contextlib.contextmanager
def live_network(directory: Path) -> Iterator[LiveNetwork]:
    """Build a demo network in ``directory`` and serve it from a background thread."""
    configure_logging("warning", "json")
    demo = build_network(directory, free_port_base(), datetime.now(UTC))
    started = threading.Event()
    stop: list[asyncio.Event] = []
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()

    async def main() -> None:
        stop.append(asyncio.Event())
        async with running_network(directory, demo):
            started.set()
            await stop[0].wait()

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=run, name="live-network", daemon=True)
    thread.start()
    started.wait(timeout=60)
    if failure:
        raise failure[0]
    try:
        yield LiveNetwork(directory=directory, demo=demo, registry=demo_registry(directory))
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(timeout=60)
        loop.close()
        if failure:
            raise failure[0]


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Log lines (info and up, JSON) written while the test runs.

    Ask for it after any live network fixture: starting one sets logging up again.
    """
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    try:
        yield stream
    finally:
        configure_logging("warning", "json")


@pytest.fixture(scope="session")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNetwork]:
    """One live network shared by the tests that do not change its files."""
    with live_network(tmp_path_factory.mktemp("network")) as handle:
        yield handle


@pytest.fixture
def fresh_network(tmp_path: Path) -> Iterator[LiveNetwork]:
    """A live network of its own, for tests that edit registry, contracts or stores."""
    with live_network(tmp_path / "network") as handle:
        yield handle


# -- PostgreSQL ----------------------------------------------------------------
# One server per test run: $GATEWAY_TEST_POSTGRES_URL (.ci/run starts one with
# .ci/postgres.sh), else one started here with tests/pg.py; each test that asks
# for postgres_store_url gets a fresh schema of its own, dropped afterwards.

from collections.abc import AsyncIterator  # noqa: E402 - kept beside its only users


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a PostgreSQL server's empty ``gateway_test`` database."""
    import os

    from tests.pg import find_postgres_bin, start_postgres

    configured = os.environ.get("GATEWAY_TEST_POSTGRES_URL")
    if configured:
        yield configured
        return
    if find_postgres_bin() is None:
        pytest.skip("PostgreSQL 15 server binaries not found")
    url, stop = start_postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield url
    finally:
        stop()


def with_search_path(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (libpq's ``options``, which asyncpg sends too).

    The schema also becomes the ``application_name``, so a test can find its
    store's connections in ``pg_stat_activity``.
    """
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}&application_name={schema}"


@pytest.fixture
async def postgres_store_url(postgres_url: str) -> AsyncIterator[str]:
    """A URL selecting a fresh empty schema ``t_<random>``, dropped after the test."""
    import secrets

    import asyncpg

    schema = f"t_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    yield with_search_path(postgres_url, schema)
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()
