"""Live reloading: a refused registry or contract file never weakens what is enforced."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import pytest
import yaml

from gateway.backend import HttpBackend
from gateway.config import load_settings
from gateway.demo import demo_registry
from gateway.demo.network import BENEFITS, INCOME_CONTRACT, TAX, build_network
from gateway.errors import Overloaded
from gateway.inbound import Provider
from gateway.keys import load_private_key
from gateway.registry import build_registry_payload, sign_registry
from gateway.replay import MemoryReplayCache
from gateway.runtime import Runtime, build_runtime
from tests.conftest import LiveNetwork
from tests.wire import Peer

FORM = "application/x-www-form-urlencoded"


@pytest.fixture
async def tax_runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    """The tax authority's runtime over a freshly written demo network (no HTTP)."""
    build_network(tmp_path, 30000, datetime.now(UTC))
    runtime = await build_runtime(load_settings(tmp_path / TAX / "gateway.yaml"))
    yield runtime
    await runtime.audit.close()


def _failures(runtime: Runtime, source: str) -> float:
    value = runtime.metrics.registry.get_sample_value(
        "gateway_reload_failures_total", {"source": source}
    )
    return value or 0.0


async def test_bad_contract_file_keeps_the_previous_set(tax_runtime: Runtime) -> None:
    """A new bad file is refused, reported and counted; the contracts in force stay."""
    before = set(tax_runtime.contracts.current.ids())
    bad = tax_runtime.settings.contracts.dir / "broken.yaml"
    bad.write_text("id: [not, a, contract\n", encoding="utf-8")
    tax_runtime.reload()
    assert set(tax_runtime.contracts.current.ids()) == before
    assert any("broken.yaml" in problem for problem in tax_runtime.contracts.problems)
    assert _failures(tax_runtime, "contracts") == 1
    bad.unlink()
    tax_runtime.reload()
    assert tax_runtime.contracts.problems == ()
    assert set(tax_runtime.contracts.current.ids()) == before


async def test_contract_of_untrusted_signer_leaves_force(tax_runtime: Runtime) -> None:
    """When the registry stops listing a party's key, its contracts are dropped at once."""
    directory = tax_runtime.settings.base_dir.parent
    source = yaml.safe_load((directory / "registry.yaml").read_text(encoding="utf-8"))
    source["serial"] = 2
    # social-benefits now publishes its "revoked" key folder's keys instead of its real ones.
    for agency in source["agencies"]:
        if agency["id"] == BENEFITS:
            agency["jwks"] = "keys/social-benefits-revoked/jwks.json"
    (directory / "registry.yaml").write_text(yaml.safe_dump(source), encoding="utf-8")
    authority = load_private_key(directory / "authority" / "signing.pem", "sig")
    payload = build_registry_payload(directory / "registry.yaml", tax_runtime.now())
    (directory / "registry.jws").write_text(sign_registry(payload, authority), encoding="ascii")
    assert tax_runtime.contract(INCOME_CONTRACT) is not None
    tax_runtime.reload()
    assert tax_runtime.trusted().serial == 2
    assert tax_runtime.contract(INCOME_CONTRACT) is None
    assert _failures(tax_runtime, "contracts") == 1


async def test_garbage_registry_keeps_the_last_good_one(tax_runtime: Runtime) -> None:
    """A registry file that does not verify is refused; the one in force stays."""
    serial = tax_runtime.trusted().serial
    registry_path = tax_runtime.settings.registry.path
    registry_path.write_text("not.a.registry", encoding="ascii")
    tax_runtime.reload()
    assert tax_runtime.trusted().serial == serial
    assert tax_runtime.registry.last_error
    assert _failures(tax_runtime, "registry") == 1


async def test_token_refused_by_full_replay_cache_is_audited(tmp_path: Path) -> None:
    """A token request refused because the replay cache is full is on the record and counted."""
    demo = build_network(tmp_path, 30000, datetime.now(UTC))
    runtime = await build_runtime(load_settings(tmp_path / TAX / "gateway.yaml"))
    try:
        runtime.replay = MemoryReplayCache(1)
        runtime.replay.spend_now("someone", "filler", int(time.time()) + 600, int(time.time()))
        net = LiveNetwork(tmp_path, demo, demo_registry(tmp_path))
        raw = urlencode(Peer(net).form()).encode()
        with pytest.raises(Overloaded) as refused:
            await Provider(runtime, HttpBackend(None)).token(FORM, raw)  # type: ignore[arg-type]
        stored = await runtime.audit.read(refused.value.audit_id or 0)
        assert stored.leaf is not None
        record = json.loads(stored.leaf)
        assert (record["kind"], record["problem"], record["status"]) == (
            "refusal",
            "overloaded",
            503,
        )
        assert (
            runtime.metrics.registry.get_sample_value(
                "gateway_refusals_total", {"direction": "inbound", "problem": "overloaded"}
            )
            == 1
        )
    finally:
        await runtime.audit.close()
