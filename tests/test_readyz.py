"""``/readyz`` names what keeps the gateway from serving exchanges, and recovers (protocol 7).

Not ready (503) while the trust registry has expired or no longer lists this
agency as active, while the registry does not list our own signing or
encryption key (or lists, as the key peers encrypt to, one we do not hold),
and while the audit store cannot be written. Contract problems are reported
but never make the gateway not ready: a refused file leaves the last good set
in force, and an agency with no contract in force still serves its JWKS,
token refusals and officer API (the contract expiry metrics and alerts cover
that case). ``/healthz`` answers 200 throughout.

Most cases run one gateway in-process (a real ``Runtime`` over a demo
network's files, with a clock the test moves); one runs a live network and
changes the registry file under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.config import load_settings
from gateway.demo import demo_registry
from gateway.demo.network import BENEFITS, TAX, build_network
from gateway.keys import AgencyKeys, generate_private_keys
from gateway.runtime import Runtime, build_runtime
from gateway.web.app import create_app
from tests.conftest import LiveNetwork, free_port_base
from tests.stores import break_writes, heal_writes
from tests.wire import Answer, Peer, get, republish_registry

READY: Final = {"status": "ready", "problems": {}}


class MovableClock:
    """A clock the test sets; it starts at the real time."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Gateway:
    """One gateway served in-process, over the files of a demo network."""

    runtime: Runtime
    url: str
    net: LiveNetwork
    clock: MovableClock
    session: aiohttp.ClientSession

    async def ready(self) -> Answer:
        """``GET /readyz``."""
        return await get(self.session, f"{self.url}/readyz")

    async def assert_not_ready(self, component: str, *needles: str) -> dict[str, str]:
        """503 naming ``component``, its text holding every needle; the problems."""
        answer = await self.ready()
        assert answer.status == 503, answer.raw
        assert answer.content_type == "application/json"
        assert answer.json["status"] == "not-ready"
        problems: dict[str, str] = answer.json["problems"]
        assert component in problems, problems
        for needle in needles:
            assert needle in problems[component], problems
        live = await get(self.session, f"{self.url}/healthz")
        assert (live.status, live.json) == (200, {"status": "ok"})
        return problems

    async def assert_ready(self, **reported: str) -> None:
        """200; only the ``reported`` components (a needle each) have anything to say."""
        answer = await self.ready()
        assert answer.status == 200, answer.raw
        assert answer.json["status"] == "ready"
        problems = answer.json["problems"]
        assert set(problems) == set(reported), problems
        for component, needle in reported.items():
            assert needle in problems[component], problems


@contextlib.asynccontextmanager
async def gateway_in_process(directory: Path, agency: str = TAX) -> AsyncIterator[Gateway]:
    """Write a demo network into ``directory`` and serve ``agency``'s gateway in this loop.

    Only that one gateway runs; ``net.url(agency)`` points at it, so a
    :class:`~tests.wire.Peer` can talk to it as a peer gateway would.
    """
    demo = build_network(directory, free_port_base(), datetime.now(UTC))
    clock = MovableClock()
    runtime = await build_runtime(load_settings(directory / agency / "gateway.yaml"), clock)
    server = TestServer(create_app(runtime))
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    demo["agencies"][agency]["url"] = url
    net = LiveNetwork(directory=directory, demo=demo, registry=demo_registry(directory))
    try:
        async with aiohttp.ClientSession() as session:
            yield Gateway(runtime=runtime, url=url, net=net, clock=clock, session=session)
    finally:
        await server.close()
        await runtime.close()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    """The tax authority's gateway, in-process."""
    async with gateway_in_process(tmp_path / "network") as served:
        yield served


async def test_ready(gateway: Gateway) -> None:
    """A freshly started gateway is ready, with nothing to report."""
    answer = await gateway.ready()
    assert (answer.status, answer.json) == (200, READY)


async def test_registry_expired(gateway: Gateway) -> None:
    """Past the registry's ``exp`` nothing a peer signs can be trusted: not ready."""
    gateway.clock.offset = gateway.runtime.registry.expires_in(int(time.time())) + 1
    await gateway.assert_not_ready("registry", "expired")
    gateway.clock.offset = 0
    await gateway.assert_ready()


async def _republish(net: LiveNetwork, runtime: Runtime, status: str) -> None:
    republish_registry(net, {runtime.agency: status})
    await runtime.reload()


async def test_agency_not_active(gateway: Gateway) -> None:
    """A registry that suspends this agency: not ready until it is active again."""
    runtime = gateway.runtime
    await _republish(gateway.net, runtime, "suspended")
    problems = await gateway.assert_not_ready("registry", "not active")
    # Our own signatures on the contracts stop verifying: they leave force too (reported).
    assert "contracts" in problems
    assert "keys" not in problems
    await _republish(gateway.net, runtime, "active")
    await gateway.assert_ready()


async def test_keys_not_in_registry(gateway: Gateway) -> None:
    """Keys the registry does not list: peers can neither verify us nor encrypt to us."""
    runtime = gateway.runtime
    listed = runtime.keys
    signing, encryption = generate_private_keys()
    runtime.keys = AgencyKeys(signing=signing, encryption=encryption)
    problems = await gateway.assert_not_ready(
        "keys", "signing key is not listed", "encryption key is not listed", "does not hold"
    )
    assert set(problems) == {"keys"}
    runtime.keys = listed
    await gateway.assert_ready()


async def test_encryption_key_not_in_registry(gateway: Gateway) -> None:
    """A new encryption key switched to before the registry lists it is reported."""
    runtime = gateway.runtime
    listed = runtime.keys
    _, encryption = generate_private_keys()
    # The registry's key is still held (a rotation's previous folder): only the new one is unlisted.
    runtime.keys = AgencyKeys(
        signing=listed.signing, encryption=encryption, previous=(listed.encryption,)
    )
    problems = await gateway.assert_not_ready("keys", "encryption key is not listed")
    assert "does not hold" not in problems["keys"]
    assert "signing" not in problems["keys"]
    # Without the previous folder, what peers encrypt to cannot be decrypted any more.
    runtime.keys = AgencyKeys(signing=listed.signing, encryption=encryption)
    await gateway.assert_not_ready("keys", "encryption key is not listed", "does not hold")
    runtime.keys = listed
    await gateway.assert_ready()


async def test_audit_store_failing(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed commit makes the gateway not ready; the next good commit makes it ready."""
    peer = Peer(gateway.net)
    log, url = gateway.runtime.audit, gateway.runtime.settings.audit.store
    await break_writes(log, url)
    answer = await peer.token_request(gateway.session)
    assert answer.status == 503
    await gateway.assert_not_ready("audit", "cannot be written")
    await heal_writes(log, url)
    # Nothing is written until the next request: still not ready.
    await gateway.assert_not_ready("audit")
    assert (await peer.token_request(gateway.session)).status == 200
    await gateway.assert_ready()


async def test_contract_file_refused(gateway: Gateway) -> None:
    """A refused contract file is reported, but the last good set stays in force: ready."""
    bad = gateway.runtime.settings.contracts.dir / "broken.yaml"
    bad.write_text("id: [not, a, contract\n", encoding="utf-8")
    await gateway.runtime.reload()
    await gateway.assert_ready(contracts="1 contract files refused")
    bad.unlink()
    await gateway.runtime.reload()
    await gateway.assert_ready()


async def test_no_contract_in_force(gateway: Gateway, tmp_path: Path) -> None:
    """No contract in force is reported, and the gateway stays ready (documented choice)."""
    directory = gateway.runtime.settings.contracts.dir
    kept = tmp_path / "kept"
    shutil.move(directory, kept)
    directory.mkdir()
    await gateway.runtime.reload()
    assert len(gateway.runtime.contracts.current) == 0
    await gateway.assert_ready(contracts="no contract is in force")
    shutil.rmtree(directory)
    shutil.move(kept, directory)
    await gateway.runtime.reload()
    await gateway.assert_ready()


async def test_several_reasons_at_once(gateway: Gateway) -> None:
    """Every component that is not ready is named, each with its own sentence."""
    runtime = gateway.runtime
    listed = runtime.keys
    signing, encryption = generate_private_keys()
    runtime.keys = AgencyKeys(signing=signing, encryption=encryption)
    gateway.clock.offset = runtime.registry.expires_in(int(time.time())) + 1
    problems = await gateway.assert_not_ready("registry", "expired")
    assert "keys" in problems
    runtime.keys = listed
    gateway.clock.offset = 0
    await gateway.assert_ready()


async def test_live_registry_reload(fresh_network: LiveNetwork) -> None:
    """On a running network: suspend an agency in the registry file, then restore it."""
    net = fresh_network
    url = f"{net.url(BENEFITS)}/readyz"

    async def wait_for(status: int) -> Answer:
        deadline = time.monotonic() + 15
        async with aiohttp.ClientSession() as session:
            while True:
                answer = await get(session, url)
                if answer.status == status:
                    return answer
                assert time.monotonic() < deadline, answer.raw
                await asyncio.sleep(0.2)

    republish_registry(net, {BENEFITS: "suspended"})
    answer = await wait_for(503)
    assert "not active" in answer.json["problems"]["registry"]
    republish_registry(net, {BENEFITS: "active"})
    answer = await wait_for(200)
    assert answer.json == READY
