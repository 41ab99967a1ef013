"""The audit log under the failures it must survive: kill -9 under load, an unwritable store.

Acceptance lines of the tamper-evident log:

* a provider killed with SIGKILL in the middle of concurrent exchanges
  restarts on the same store; every exchange a client received as 200 has its
  provider record, the provider's indices have no gap, and ``gateway audit
  verify`` passes;
* when a gateway cannot write its audit store, exchanges are refused with
  503 ``audit-unavailable`` and no data leaves; once it can write again,
  exchanges succeed and ``/readyz`` recovers. This holds on the provider side
  and on the consumer side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
import yaml
from aiohttp import web

from gateway.audit.records import load_audit_key
from gateway.config import load_settings
from gateway.demo.backends import PEOPLE, backend_app
from gateway.demo.network import BENEFITS, SERVICES, TAX, build_network
from gateway.observability import configure_logging
from gateway.web.server import serve
from tests.conftest import LiveNetwork, free_port_base
from tests.wire import (
    PROBLEM_PREFIX,
    Answer,
    Peer,
    assert_problem,
    audit_path,
    get,
    post,
)

CLIENTS: Final = 12
LOAD_SECONDS: Final = 1.5
AFTER_KILL_SECONDS: Final = 0.3
# What a problem document may hold; anything else in a refusal would be data.
PROBLEM_MEMBERS: Final = {"type", "title", "status", "detail", "audit_id"}


# -- helpers -----------------------------------------------------------------------


def store_records(path: Path) -> dict[int, dict[str, Any]]:
    """Every record of a store by index, read with a separate connection."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT idx, leaf FROM audit_leaves ORDER BY idx").fetchall()
    return {int(index): json.loads(leaf) for index, leaf in rows}


async def exchange(session: aiohttp.ClientSession, demo: dict[str, Any], subject: str) -> Answer:
    """A client of social-benefits asks for ``subject``'s income from the tax authority."""
    benefits = demo["agencies"][BENEFITS]
    headers = {
        "Authorization": f"Bearer {benefits['client_keys']['caseworker-app']}",
        "X-Purpose": "benefit-eligibility",
        "X-End-User": "caseworker-17",
    }
    return await post(
        session,
        f"{benefits['url']}/v1/exchange/{TAX}/income-records",
        json={"national_id": subject, "year": 2025},
        headers=headers,
    )


def assert_no_data(answer: Answer, subject: str) -> None:
    """A 503 ``audit-unavailable`` problem that carries nothing about ``subject``."""
    document = assert_problem(answer, "audit-unavailable", 503, audited=False)
    assert set(document) <= PROBLEM_MEMBERS, document
    person = PEOPLE[subject]
    for secret in (subject, str(person["_income"]), person["_employer"], person["_iban"]):
        assert secret.encode() not in answer.raw, secret
    assert b"taxable_income" not in answer.raw
    assert b"national_id" not in answer.raw


@contextlib.contextmanager
def write_lock(store: Path) -> Iterator[None]:
    """Hold the SQLite write lock of ``store`` on a connection of our own.

    This is what any other writer does to the file (a backup tool, a stuck
    migration, a second process): ``BEGIN EXCLUSIVE`` takes the database's
    single write lock (in WAL mode readers go on). The gateway's writer then
    waits its busy timeout (5 s) and its commit fails. As root, chmod cannot
    make the file unwritable, so the lock is the real way to refuse writes.
    """
    conn = sqlite3.connect(store, isolation_level=None, timeout=10)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        conn.close()


async def wait_ready(
    session: aiohttp.ClientSession, url: str, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll ``/readyz`` until 200 (and fail early if ``process`` died)."""
    deadline = time.monotonic() + 20
    while True:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the gateway exited with status {process.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            answer = await get(session, f"{url}/readyz")
            if answer.status == 200:
                return
        assert time.monotonic() < deadline, f"{url} did not become ready"
        await asyncio.sleep(0.05)


# -- gateways in this process and in their own ----------------------------------------


@contextlib.contextmanager
def in_process(
    directory: Path, demo: dict[str, Any], gateways: Sequence[str], backends: Sequence[str]
) -> Iterator[None]:
    """Serve some gateways and backends of a demo from a background thread's event loop."""
    configure_logging("warning", "json")
    started = threading.Event()
    stop: list[asyncio.Event] = []
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()

    async def main() -> None:
        stop.append(asyncio.Event())
        runners: list[web.AppRunner] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            for agency in backends:
                runner = web.AppRunner(backend_app(SERVICES[agency]), access_log=None)
                await runner.setup()
                port = demo["agencies"][agency]["backend_port"]
                await web.TCPSite(runner, "127.0.0.1", port).start()
                runners.append(runner)
            for agency in gateways:
                settings = load_settings(directory / demo["agencies"][agency]["config"])
                tasks.append(asyncio.create_task(serve(settings, stop=stop[0])))
            async with aiohttp.ClientSession() as session:
                for agency in gateways:
                    await wait_ready(session, demo["agencies"][agency]["url"])
            started.set()
            await stop[0].wait()
        finally:
            stop[0].set()
            await asyncio.gather(*tasks, return_exceptions=True)
            for runner in runners:
                await runner.cleanup()

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported to the test thread
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=run, name="in-process-gateways", daemon=True)
    thread.start()
    started.wait(timeout=60)
    try:
        if failure:
            raise failure[0]
        yield
    finally:
        if stop:
            loop.call_soon_threadsafe(stop[0].set)
        thread.join(timeout=60)
        loop.close()


@contextlib.contextmanager
def gateway_process(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``gateway serve --config`` in its own process; killed on exit whatever happened."""
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def kill9(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL: no signal handler, no shutdown, no final checkpoint."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL


def run_command(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The ``gateway`` command in its own process (as an operator runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *(str(arg) for arg in args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- kill -9 under load ---------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """What one client call got back from the consumer gateway."""

    subject: str
    status: int
    headers: dict[str, str]
    after_kill: bool


@dataclass
class Load:
    """Clients calling the consumer until ``stop``; ``killed`` marks calls after the kill."""

    session: aiohttp.ClientSession
    demo: dict[str, Any]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    killed: asyncio.Event = field(default_factory=asyncio.Event)
    received: list[Received] = field(default_factory=list)

    async def client(self, number: int) -> None:
        """One client: exchange after exchange, each about the next subject."""
        subjects = self.demo["subjects"]
        call = 0
        while not self.stop.is_set():
            subject = subjects[(number + call) % len(subjects)]
            call += 1
            answer = await exchange(self.session, self.demo, subject)
            self.received.append(
                Received(subject, answer.status, dict(answer.headers), self.killed.is_set())
            )


async def test_kill9_under_load(tmp_path: Path) -> None:
    """SIGKILL the provider mid-load: every 200 has its provider record; no gap; verify OK.

    The tax authority runs as its own OS process (``gateway serve``); the
    consumer gateway and the tax backend run in this process. Twelve clients
    call the consumer for a while, the provider is killed with SIGKILL while
    they are running, the clients run on against the dead provider, and the
    provider is started again on the same store.
    """
    directory = tmp_path / "net"
    demo = build_network(directory, free_port_base(), datetime.now(UTC))
    config = directory / demo["agencies"][TAX]["config"]
    document = yaml.safe_load(config.read_text())
    document["log"]["level"] = "warning"  # an info line per exchange is noise here
    config.write_text(yaml.safe_dump(document))
    provider_store = directory / TAX / "audit.db"
    consumer_store = directory / BENEFITS / "audit.db"
    log = tmp_path / "provider.log"
    provider_url = demo["agencies"][TAX]["url"]

    with in_process(directory, demo, [BENEFITS], [TAX]):
        async with aiohttp.ClientSession() as session:
            with gateway_process(config, log) as first:
                await wait_ready(session, provider_url, first)
                load = Load(session, demo)
                clients = [asyncio.create_task(load.client(n)) for n in range(CLIENTS)]
                try:
                    await asyncio.sleep(LOAD_SECONDS)
                    kill9(first)
                    load.killed.set()
                    await asyncio.sleep(AFTER_KILL_SECONDS)
                finally:
                    load.stop.set()
                    await asyncio.gather(*clients)
                received = load.received
            size_at_crash = len(store_records(provider_store))
            # The store as the crash left it (no final checkpoint) is already sound.
            crashed = await asyncio.to_thread(run_command, "audit", "verify", "--config", config)
            assert crashed.returncode == 0, (crashed.stdout, crashed.stderr)

            with gateway_process(config, log) as second:
                await wait_ready(session, provider_url, second)
                after = await exchange(session, demo, demo["subjects"][0])
                assert after.status == 200, after.raw
                verified = await asyncio.to_thread(
                    run_command, "audit", "verify", "--config", config
                )

    served = [r for r in received if r.status == 200 and not r.after_kill]
    assert len(served) >= 20, f"only {len(served)} exchanges served before the kill"
    assert any(r.after_kill and r.status != 200 for r in received), "the kill hit no traffic"
    assert all(r.status in (200, 429, 502) for r in received), {r.status for r in received}

    provider = store_records(provider_store)
    consumer = store_records(consumer_store)
    # Contiguous: indices 0..n-1, none missing, none past the end.
    assert list(provider) == list(range(len(provider)))
    assert int(after.headers["X-Provider-Audit-Index"]) >= size_at_crash
    pseudonymize = load_audit_key(directory / "keys" / TAX / "audit.key")
    provider_indices = set()
    for answer in [*(r for r in received if r.status == 200), _as_received(after, demo)]:
        index = int(answer.headers["X-Provider-Audit-Index"])
        provider_indices.add(index)
        record = provider[index]  # the record of every 200 survived the kill
        assert record["index"] == index
        assert (record["kind"], record["direction"], record["outcome"]) == (
            "exchange",
            "inbound",
            "ok",
        )
        assert record["consumer"] == BENEFITS
        assert record["jti"] == answer.headers["X-Exchange-Id"]
        assert record["subject"] == pseudonymize(answer.subject)
        mine = consumer[int(answer.headers["X-Audit-Index"])]
        assert mine["jti"] == record["jti"]
        assert mine["req_hash"] == record["req_hash"]
    assert len(provider_indices) == len(served) + 1 + sum(
        r.status == 200 and r.after_kill for r in received
    )

    assert verified.returncode == 0, (verified.stdout, verified.stderr, log.read_text())
    assert f"audit log {TAX}/audit: OK, " in verified.stdout


def _as_received(answer: Answer, demo: dict[str, Any]) -> Received:
    return Received(demo["subjects"][0], answer.status, dict(answer.headers), after_kill=False)


# -- fail-closed --------------------------------------------------------------------------------


async def test_provider_store_unwritable(fresh_network: LiveNetwork) -> None:
    """The provider's store is locked: 503 ``audit-unavailable``, nothing served, nothing logged.

    The provider's writer waits its 5 s busy timeout, then the append fails.
    Both the consumer's client and a peer speaking to the provider directly
    get a problem document, never the sealed answer; the consumer logs the
    refusal. After the lock is released both succeed again and ``/readyz``
    recovers.
    """
    net = fresh_network
    subject = net.demo["subjects"][1]
    store = audit_path(net, TAX)
    peer = Peer(net)
    async with aiohttp.ClientSession() as session:
        warm = await exchange(session, net.demo, subject)  # the consumer now holds a token
        assert warm.status == 200, warm.raw
        token = await peer.token(session)
        sealed = peer.seal(peer.claims(token, subject))
        with write_lock(store):
            started = time.monotonic()
            via_consumer, direct = await asyncio.gather(
                exchange(session, net.demo, subject), peer.send(session, sealed.jwe, token)
            )
            assert time.monotonic() - started >= 4.5  # the busy timeout, not some other failure
            provider_ready = await get(session, f"{net.url(TAX)}/readyz")
            consumer_ready = await get(session, f"{net.url(BENEFITS)}/readyz")
        assert_no_data(via_consumer, subject)
        assert_no_data(direct, subject)
        assert direct.content_type != "application/jose"
        assert "X-Provider-Audit-Index" not in via_consumer.headers
        assert provider_ready.status == 503
        assert "audit" in provider_ready.json["problems"]
        assert consumer_ready.status == 200

        records = store_records(store)
        assert sealed.jti not in {record.get("jti") for record in records.values()}
        assert list(records) == list(range(len(records)))
        consumer_records = store_records(audit_path(net, BENEFITS))
        refusal = consumer_records[max(consumer_records)]
        assert (refusal["kind"], refusal["status"]) == ("refusal", 503)
        assert refusal["problem"] == "audit-unavailable"
        assert refusal["detail"] == "provider refused: audit-unavailable"

        again = await exchange(session, net.demo, subject)
        assert again.status == 200, again.raw
        assert again.json["national_id"] == subject
        retry = peer.seal(peer.claims(token, subject))
        answer = await peer.send(session, retry.jwe, token)
        assert answer.status == 200, answer.raw
        assert peer.open(answer, retry)["body"]["national_id"] == subject
        ready = await get(session, f"{net.url(TAX)}/readyz")
        assert ready.status == 200, ready.raw


async def test_consumer_store_unwritable(fresh_network: LiveNetwork) -> None:
    """The consumer's own store is locked: its client gets 503 and no data.

    The provider answers (and logs its side); the consumer cannot log its
    record of the answer, so it does not pass the data on. Its refusal record
    cannot be written either, so the client waits two busy timeouts (~10 s).
    """
    net = fresh_network
    subject = net.demo["subjects"][2]
    async with aiohttp.ClientSession() as session:
        warm = await exchange(session, net.demo, subject)
        assert warm.status == 200, warm.raw
        provider_before = len(store_records(audit_path(net, TAX)))
        consumer_before = len(store_records(audit_path(net, BENEFITS)))
        with write_lock(audit_path(net, BENEFITS)):
            answer = await exchange(session, net.demo, subject)
            consumer_ready = await get(session, f"{net.url(BENEFITS)}/readyz")
            provider_ready = await get(session, f"{net.url(TAX)}/readyz")
        assert_no_data(answer, subject)
        assert answer.json["type"] == PROBLEM_PREFIX + "audit-unavailable"
        for header in ("X-Audit-Index", "X-Provider-Audit-Index", "X-Exchange-Id"):
            assert header not in answer.headers
        assert consumer_ready.status == 503
        assert "audit" in consumer_ready.json["problems"]
        assert provider_ready.status == 200
        # The provider released the sealed answer to the consumer gateway, and logged that.
        provider = store_records(audit_path(net, TAX))
        assert len(provider) == provider_before + 1
        assert provider[provider_before]["kind"] == "exchange"
        assert len(store_records(audit_path(net, BENEFITS))) == consumer_before

        again = await exchange(session, net.demo, subject)
        assert again.status == 200, again.raw
        assert again.json["national_id"] == subject
        assert int(again.headers["X-Audit-Index"]) == consumer_before
        ready = await get(session, f"{net.url(BENEFITS)}/readyz")
        assert ready.status == 200, ready.raw
