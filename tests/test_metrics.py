"""``/metrics``: the full metric set, its values against the audit log, bounded labels.

A network of its own runs a scenario of allowed and refused exchanges, token
grants and refusals, a replay and a rate limit; then every metric family of
docs/operations.md ("Metrics") is checked for its type and labels, and the values for
what happened: exchanges per contract and outcome equal the exchange and
refusal records of each gateway's audit log, refusals per problem equal the
refusal records, the audit tree size equals the store's size. The state
gauges are checked on a runtime with a fixed clock and no traffic at all.
Ten thousand requests naming ten thousand distinct subjects (with random
message ids, purposes, contract names and service names) leave the set of
exposed series exactly as it was.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
import prometheus_client
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway.config import load_settings
from gateway.contracts import load_contract_file, sign_contract
from gateway.demo.network import (
    BENEFITS,
    EXPIRED_CONTRACT,
    INCOME_CONTRACT,
    PERSON_CONTRACT,
    POPULATION,
    TAX,
    TAX_CONTRACT,
    build_network,
)
from gateway.errors import TokenRequestError, known_problem_names
from gateway.keys import load_agency_keys
from gateway.metrics import GatewayMetrics, Phases, problem_label
from gateway.runtime import Runtime, build_runtime
from tests.conftest import LiveNetwork
from tests.test_web import Raw, send_raw
from tests.wire import (
    END_USER,
    PURPOSE,
    Answer,
    Peer,
    audit_path,
    audit_records,
    custom_network,
    get,
    post,
)

AGENCIES: Final = (POPULATION, TAX, BENEFITS)
PERSON_LIMIT: Final = 3  # the person contract's rate limit in this network, per minute
OAUTH_ERRORS: Final = frozenset(TokenRequestError.STATUSES)
LABEL_VALUES_OK: Final = known_problem_names() | OAUTH_ERRORS | {"ok", "upstream-other"}

# docs/operations.md, "Metrics": name -> (type, label names); the agency that exposes samples.
FAMILIES: Final[Mapping[str, tuple[str, tuple[str, ...], str]]] = {
    "gateway_build_info": ("gauge", ("version", "agency"), TAX),
    "gateway_requests_total": ("counter", ("endpoint", "outcome"), TAX),
    "gateway_request_duration_seconds": ("histogram", ("endpoint",), TAX),
    "gateway_in_flight_requests": ("gauge", (), TAX),
    "gateway_exchanges_total": (
        "counter",
        ("direction", "peer", "service", "contract", "purpose", "outcome"),
        TAX,
    ),
    "gateway_refusals_total": ("counter", ("direction", "problem"), TAX),
    "gateway_exchange_duration_seconds": ("histogram", ("direction", "service"), TAX),
    "gateway_exchange_phase_seconds": ("histogram", ("direction", "phase"), TAX),
    "gateway_backend_duration_seconds": ("histogram", ("service", "outcome"), TAX),
    "gateway_tokens_issued_total": ("counter", ("consumer", "contract", "purpose"), TAX),
    "gateway_token_cache_total": ("counter", ("result",), BENEFITS),
    "gateway_replay_cache_entries": ("gauge", (), TAX),
    "gateway_rate_limited_total": ("counter", ("contract",), POPULATION),
    "gateway_audit_appends_total": ("counter", (), TAX),
    "gateway_audit_batch_size": ("histogram", (), TAX),
    "gateway_audit_append_duration_seconds": ("histogram", (), TAX),
    "gateway_audit_tree_size": ("gauge", (), TAX),
    "gateway_audit_last_checkpoint_timestamp_seconds": ("gauge", (), TAX),
    "gateway_audit_checkpoint_age_seconds": ("gauge", (), TAX),
    "gateway_audit_store_errors_total": ("counter", (), TAX),
    "gateway_audit_store_up": ("gauge", (), TAX),
    "gateway_contracts_loaded": ("gauge", ("status",), TAX),
    "gateway_contract_expiry_seconds": ("gauge", ("contract",), TAX),
    "gateway_registry_expiry_seconds": ("gauge", (), TAX),
    "gateway_key_expiry_seconds": ("gauge", ("use",), TAX),
    "gateway_registry_serial": ("gauge", (), TAX),
    "gateway_registry_last_reload_timestamp_seconds": ("gauge", (), TAX),
    "gateway_reload_failures_total": ("counter", ("source",), TAX),
}


# -- reading /metrics ----------------------------------------------------------------


@dataclass
class Scrape:
    """One ``/metrics`` answer, parsed."""

    text: str
    families: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for family in text_string_to_metric_families(self.text):
            self.families[family.name] = family

    def family(self, name: str) -> Any:
        """The family of metric ``name`` (``_total`` names are counters' families)."""
        return self.families[name.removesuffix("_total")]

    def samples(self, name: str, **labels: str) -> list[Sample]:
        """Samples named exactly ``name`` whose labels include ``labels``."""
        family = self.families.get(name.removesuffix("_total"))
        for suffix in ("_bucket", "_count", "_sum"):
            if family is None and name.endswith(suffix):
                family = self.families.get(name.removesuffix(suffix))
        if family is None:
            return []
        return [
            sample
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the matching samples (0 when there are none)."""
        return sum(sample.value for sample in self.samples(name, **labels))

    def by(self, name: str, *keys: str, **labels: str) -> Counter[tuple[str, ...]]:
        """Matching sample values summed by the label values ``keys``."""
        found: Counter[tuple[str, ...]] = Counter()
        for sample in self.samples(name, **labels):
            if sample.value:
                found[tuple(sample.labels[key] for key in keys)] += int(sample.value)
        return found

    def series(self) -> set[str]:
        """Every exposed series: name and labels of each sample line."""
        return {
            line.split(" ")[0] if "}" not in line else line[: line.rindex("}") + 1]
            for line in self.text.splitlines()
            if line and not line.startswith("#")
        }


async def scrape(session: aiohttp.ClientSession, url: str) -> Scrape:
    """``GET /metrics`` of the gateway at ``url``."""
    answer = await get(session, f"{url}/metrics")
    assert answer.status == 200, answer.raw[:200]
    return Scrape(answer.raw.decode())


def audit_leaves(net: LiveNetwork, agency: str) -> list[dict[str, Any]]:
    """Every record of ``agency``'s audit store."""
    return [json.loads(leaf) for _, leaf in audit_records(audit_path(net, agency))]


def audited_exchanges(records: list[dict[str, Any]]) -> Counter[tuple[str, ...]]:
    """Exchange and exchange-refusal records by (direction, contract, outcome)."""
    found: Counter[tuple[str, ...]] = Counter()
    for record in records:
        if record["kind"] == "exchange":
            outcome = "ok"
        elif record["kind"] == "refusal" and record["problem"] not in OAUTH_ERRORS:
            outcome = record["problem"]
        else:
            continue
        found[(record["direction"], record.get("contract") or "unknown", outcome)] += 1
    return found


# -- the network and its scenario -----------------------------------------------------


def _limit_person_contract(directory: Path, demo: dict[str, Any]) -> None:
    """Give the person contract a rate limit of PERSON_LIMIT a minute (both parties' copies)."""
    for party in (POPULATION, BENEFITS):
        path = directory / party / "contracts" / f"{PERSON_CONTRACT}.yaml"
        current = load_contract_file(path)
        changed = current.model_copy(
            update={
                "rate_limit": current.rate_limit.model_copy(update={"requests": PERSON_LIMIT}),
                "signatures": (),
            }
        )
        for agency in changed.parties:
            keys = load_agency_keys(directory / demo["agencies"][agency]["keys"])
            changed = sign_contract(changed, agency, keys.signing)
        path.write_text(yaml.safe_dump(changed.model_dump(mode="json"), sort_keys=False))


@dataclass
class Client:
    """A client of social-benefits calling ``/v1/exchange`` with one session."""

    net: LiveNetwork
    session: aiohttp.ClientSession

    async def exchange(
        self,
        subject: str,
        *,
        client: str = "caseworker-app",
        key: str | None = None,
        provider: str = TAX,
        service: str = "income-records",
        purpose: str = PURPOSE,
        contract: str | None = None,
        body: bytes | io.BytesIO | None = None,
    ) -> Answer:
        """One call through the social-benefits gateway."""
        benefits = self.net.agency(BENEFITS)
        headers = {
            "Authorization": f"Bearer {key or benefits['client_keys'][client]}",
            "X-Purpose": purpose,
            "X-End-User": END_USER,
            "Content-Type": "application/json",
        }
        if contract is not None:
            headers["X-Contract"] = contract
        data = body if body is not None else json.dumps({"national_id": subject, "year": 2025})
        return await post(
            self.session,
            f"{benefits['url']}/v1/exchange/{provider}/{service}",
            data=data,
            headers=headers,
        )


def new_subject() -> str:
    """A random 11-digit person id no backend knows."""
    return f"{secrets.randbelow(10**11):011d}"


async def _scenario(net: LiveNetwork) -> None:
    subjects = net.demo["subjects"]
    async with aiohttp.ClientSession() as session:
        client = Client(net, session)
        for subject in subjects[:3]:
            assert (await client.exchange(subject)).status == 200
        # Three allowed by the person contract's limit, then two refused by it.
        person = [
            await client.exchange(subject, provider=POPULATION, service="person-basic")
            for subject in subjects[:5]
        ]
        assert [answer.status for answer in person] == [200] * PERSON_LIMIT + [429, 429]
        refusals = {
            "contract-denied": await client.exchange(subjects[0], purpose="marketing"),
            "forbidden": await client.exchange(
                subjects[0], client="reporting-batch", provider=POPULATION, service="person-basic"
            ),
            "unauthorized": await client.exchange(subjects[0], key="not-a-client-key"),
            "bad-request": await client.exchange(subjects[0], body=b'{"nationalId": "1"}'),
            "payload-too-large": await client.exchange(
                subjects[0], body=io.BytesIO(b" " * (1024 * 1024 + 1))
            ),
        }
        expired = await client.exchange(subjects[1], contract=EXPIRED_CONTRACT)
        unknown_provider = await client.exchange(subjects[1], provider="no-such-agency")
        for name, answer in refusals.items():
            assert answer.problem == name, (name, answer.status, answer.raw[:200])
        assert expired.problem == unknown_provider.problem == "contract-denied"
        # social-benefits speaking the wire protocol to tax-authority.
        peer = Peer(net)
        token = await peer.token(session)
        sealed = peer.seal(peer.claims(token, subjects[2]))
        assert (await peer.send(session, sealed.jwe, token)).status == 200
        assert (await peer.send(session, sealed.jwe, token)).problem == "replay"
        assert (await peer.send(session, sealed.jwe, "garbage")).problem == "token-invalid"
        fresh = peer.seal(peer.claims(token, subjects[3]))
        unknown = await peer.send(session, fresh.jwe, token, service="no-such-service")
        assert unknown.problem == "unknown-service"
        assert (await peer.token_request(session, [("grant_type", "x")])).status == 400
        denied = await peer.token_request(
            session,
            peer.form(authorization_details=json.dumps([{"type": "nothing"}])),
        )
        assert denied.status == 400


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNetwork]:
    """A network of this module's own, after the scenario ran."""
    directory = tmp_path_factory.mktemp("metrics") / "network"
    with custom_network(directory, _limit_person_contract) as handle:
        asyncio.run(_scenario(handle))
        yield handle


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client session per test."""
    async with aiohttp.ClientSession() as client:
        yield client


async def scrape_all(net: LiveNetwork, session: aiohttp.ClientSession) -> dict[str, Scrape]:
    """``/metrics`` of every gateway of ``net``."""
    return {agency: await scrape(session, net.url(agency)) for agency in AGENCIES}


# -- the families ------------------------------------------------------------------------


class TestFamilies:
    """Every metric of the contract is exposed with its type and labels."""

    async def test_types_and_labels(self, net: LiveNetwork, session: aiohttp.ClientSession) -> None:
        """Each family exists on every gateway; its samples carry exactly its labels."""
        scrapes = await scrape_all(net, session)
        for name, (kind, labels, agency) in FAMILIES.items():
            for each, found in scrapes.items():
                family = found.family(name)
                assert family.type == kind, (each, name, family.type)
            samples = [
                sample
                for sample in scrapes[agency].family(name).samples
                if not sample.name.endswith("_created")
            ]
            assert samples, (agency, name)
            for sample in samples:
                names = set(sample.labels) - {"le"}
                assert names == set(labels), (name, sample)

    async def test_label_values_are_bounded(
        self, net: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """Outcomes and problems are known names; peers, contracts, purposes known ids."""
        scrapes = await scrape_all(net, session)
        agencies = {*AGENCIES, "unknown"}
        contracts = {INCOME_CONTRACT, PERSON_CONTRACT, TAX_CONTRACT, EXPIRED_CONTRACT, "unknown"}
        for found in scrapes.values():
            for sample in found.samples("gateway_exchanges_total"):
                labels = sample.labels
                assert labels["outcome"] in LABEL_VALUES_OK, labels
                assert labels["peer"] in agencies, labels
                assert labels["contract"] in contracts, labels
                assert labels["purpose"] in {PURPOSE, "tax-assessment", "unknown"}, labels
                assert labels["service"] in {"income-records", "person-basic", "unknown"}
            for sample in found.samples("gateway_refusals_total"):
                assert sample.labels["problem"] in LABEL_VALUES_OK, sample
            for sample in found.samples("gateway_exchange_phase_seconds_count"):
                assert sample.labels["phase"] in {"crypto", "backend", "audit", "upstream"}

    def test_audit_log_knows_no_prometheus(self) -> None:
        """The audit package reports through an observer; it imports no prometheus_client."""
        code = (
            "import sys, gateway.audit, gateway.audit.log\n"
            "print(sorted(m for m in sys.modules if m.startswith('prometheus_client')))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert result.stdout.strip() == "[]"

    def test_no_global_registry(self) -> None:
        """Nothing of the gateway lands in prometheus_client's process-wide registry."""
        names = {metric.name for metric in prometheus_client.REGISTRY.collect()}
        assert not {name for name in names if name.startswith("gateway_")}


# -- values against what happened ---------------------------------------------------------


class TestExchanges:
    """Exchange counts are the audit log's counts."""

    async def test_exchanges_match_the_audit_log(
        self, net: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """Per gateway, exchanges by direction, contract and outcome = its audit records."""
        scrapes = await scrape_all(net, session)
        for agency in AGENCIES:
            counted = scrapes[agency].by(
                "gateway_exchanges_total", "direction", "contract", "outcome"
            )
            assert counted == audited_exchanges(audit_leaves(net, agency)), agency
        benefits = scrapes[BENEFITS].by("gateway_exchanges_total", "contract", "outcome")
        assert benefits[(INCOME_CONTRACT, "ok")] == 3
        assert benefits[(PERSON_CONTRACT, "ok")] == PERSON_LIMIT
        assert benefits[(PERSON_CONTRACT, "rate-limited")] == 2
        for problem in ("forbidden", "unauthorized", "payload-too-large"):
            assert benefits[("unknown", problem)] == 1, problem
        assert benefits[(INCOME_CONTRACT, "bad-request")] == 1  # found once the contract was
        assert benefits[("unknown", "contract-denied")] == 3

    async def test_labels_of_an_allowed_exchange(
        self, net: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """Both sides name the peer, service, contract and purpose of an allowed exchange."""
        scrapes = await scrape_all(net, session)
        labels = {"service": "income-records", "contract": INCOME_CONTRACT, "purpose": PURPOSE}
        inbound = scrapes[TAX].value(
            "gateway_exchanges_total",
            direction="inbound",
            peer=BENEFITS,
            outcome="ok",
            **labels,
        )
        outbound = scrapes[BENEFITS].value(
            "gateway_exchanges_total", direction="outbound", peer=TAX, outcome="ok", **labels
        )
        assert outbound == 3
        assert inbound == outbound + 1  # the peer's own exchange
        assert not scrapes[TAX].samples("gateway_exchanges_total", direction="outbound")
        assert not scrapes[BENEFITS].samples("gateway_exchanges_total", direction="inbound")

    async def test_refusals_by_problem(
        self, net: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """Refusals by direction and problem = refusal records, token refusals included."""
        scrapes = await scrape_all(net, session)
        for agency in AGENCIES:
            records = audit_leaves(net, agency)
            audited = Counter(
                (record["direction"], record["problem"])
                for record in records
                if record["kind"] == "refusal"
            )
            counted = scrapes[agency].by("gateway_refusals_total", "direction", "problem")
            assert counted == audited, agency
        tax = scrapes[TAX].by("gateway_refusals_total", "problem")
        assert tax[("replay",)] == tax[("token-invalid",)] == tax[("unknown-service",)] == 1
        assert tax[("invalid_request",)] == tax[("invalid_authorization_details",)] == 1

    async def test_durations_count_every_exchange(
        self, net: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """The duration histogram has one observation per counted exchange."""
        scrapes = await scrape_all(net, session)
        for agency in AGENCIES:
            found = scrapes[agency]
            for direction in ("inbound", "outbound"):
                assert found.value(
                    "gateway_exchange_duration_seconds_count", direction=direction
                ) == found.value("gateway_exchanges_total", direction=direction)

    async def test_phases(self, net: LiveNetwork, session: aiohttp.ClientSession) -> None:
        """The provider spends time in crypto, backend and audit; the consumer upstream."""
        scrapes = await scrape_all(net, session)
        tax, benefits = scrapes[TAX], scrapes[BENEFITS]

        def phases(found: Scrape, direction: str) -> set[str]:
            return {
                sample.labels["phase"]
                for sample in found.samples(
                    "gateway_exchange_phase_seconds_count", direction=direction
                )
                if sample.value
            }

        assert phases(tax, "inbound") == {"crypto", "backend", "audit"}
        assert phases(benefits, "outbound") == {"crypto", "upstream", "audit"}
        # Every exchange the provider served called the backend once.
        served = tax.value("gateway_exchanges_total", direction="inbound", outcome="ok")
        assert (
            tax.value(
                "gateway_backend_duration_seconds_count", service="income-records", outcome="ok"
            )
            == served
        )
        assert (
            tax.value("gateway_exchange_phase_seconds_count", direction="inbound", phase="backend")
            == served
        )
        crypto = tax.value("gateway_exchange_phase_seconds_sum", phase="crypto")
        assert 0 < crypto < tax.value("gateway_exchange_duration_seconds_sum")

    async def test_tokens_and_cache(self, net: LiveNetwork, session: aiohttp.ClientSession) -> None:
        """Tokens issued = token records; each consumer cache miss asked for one token."""
        scrapes = await scrape_all(net, session)
        issued_to_benefits = 0.0
        for provider in (TAX, POPULATION):
            records = audit_leaves(net, provider)
            granted = Counter(
                (record["consumer"], record["contract"], record["purpose"])
                for record in records
                if record["kind"] == "token"
            )
            counted = scrapes[provider].by(
                "gateway_tokens_issued_total", "consumer", "contract", "purpose"
            )
            assert counted == granted, provider
            issued_to_benefits += scrapes[provider].value(
                "gateway_tokens_issued_total", consumer=BENEFITS
            )
        benefits = scrapes[BENEFITS]
        misses = benefits.value("gateway_token_cache_total", result="miss")
        hits = benefits.value("gateway_token_cache_total", result="hit")
        peer_tokens = 1  # the wire-protocol peer's own token request
        assert misses == issued_to_benefits - peer_tokens == 2  # one per (provider, contract)
        # Every exchange that reached the token step looked the cache up once.
        reached = benefits.value("gateway_exchange_phase_seconds_count", phase="upstream")
        assert hits + misses == reached
        before = hits
        client = Client(net, session)
        for subject in net.demo["subjects"][3:5]:
            assert (await client.exchange(subject)).status == 200
        after = await scrape(session, net.url(BENEFITS))
        assert after.value("gateway_token_cache_total", result="hit") == before + 2
        assert after.value("gateway_token_cache_total", result="miss") == misses

    async def test_rate_limited(self, net: LiveNetwork, session: aiohttp.ClientSession) -> None:
        """The provider counts rate-limit refusals per contract."""
        found = await scrape(session, net.url(POPULATION))
        assert found.by("gateway_rate_limited_total", "contract") == {(PERSON_CONTRACT,): 2}
        assert found.value("gateway_refusals_total", problem="rate-limited") == 2


class TestAuditMetrics:
    """The audit log's metrics agree with its store."""

    async def test_tree_size_and_appends(
        self, net: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """Tree size = records in the store = appends; every append timed and batched."""
        scrapes = await scrape_all(net, session)
        for agency, found in scrapes.items():
            size = len(audit_records(audit_path(net, agency)))
            assert size > 0
            assert found.value("gateway_audit_tree_size") == size, agency
            assert found.value("gateway_audit_appends_total") == size
            assert found.value("gateway_audit_batch_size_sum") == size
            assert found.value("gateway_audit_append_duration_seconds_count") == size
            assert 1 <= found.value("gateway_audit_batch_size_count") <= size
            assert found.value("gateway_audit_store_up") == 1
            assert found.value("gateway_audit_store_errors_total") == 0

    async def test_checkpoint_time(self, net: LiveNetwork, session: aiohttp.ClientSession) -> None:
        """The last checkpoint is recent (the log checkpoints every 10 s by default)."""
        found = await scrape(session, net.url(TAX))
        last = found.value("gateway_audit_last_checkpoint_timestamp_seconds")
        age = found.value("gateway_audit_checkpoint_age_seconds")
        assert time.time() - 60 < last <= time.time()
        assert 0 <= age < 60
        assert math.isclose(time.time() - last, age, abs_tol=5)


# -- state gauges without traffic ------------------------------------------------------


@dataclass
class FakeClock:
    """A clock that moves only when told."""

    now: float

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def quiet(tmp_path: Path) -> AsyncIterator[tuple[Runtime, FakeClock]]:
    """The tax authority's runtime on a fixed clock; no request ever reaches it."""
    build_network(tmp_path, 30000, datetime.now(UTC))
    clock = FakeClock(float(int(time.time())))
    runtime = await build_runtime(load_settings(tmp_path / TAX / "gateway.yaml"), clock)
    yield runtime, clock
    await runtime.close()


def _sample(runtime: Runtime, name: str, **labels: str) -> float | None:
    return runtime.metrics.registry.get_sample_value(name, labels)


class TestStateGauges:
    """Gauges computed at scrape time are right without any traffic."""

    async def test_expiries_follow_the_clock(self, quiet: tuple[Runtime, FakeClock]) -> None:
        """Contract, registry and key expiry are ``valid_until/exp - now`` at each scrape."""
        runtime, clock = quiet
        registry = runtime.trusted()
        for elapsed in (0.0, 3600.0, 400 * 86400.0):
            clock.now += elapsed
            for contract in runtime.contracts.current:
                expected = contract.valid_until.timestamp() - clock.now
                found = _sample(runtime, "gateway_contract_expiry_seconds", contract=contract.id)
                assert found == expected, contract.id
            assert _sample(runtime, "gateway_registry_expiry_seconds") == registry.exp - clock.now
            for use in ("sig", "enc"):
                found = _sample(runtime, "gateway_key_expiry_seconds", use=use)
                assert found == registry.exp - clock.now, use

    async def test_contracts_by_status(self, quiet: tuple[Runtime, FakeClock]) -> None:
        """Each status has a sample; they change with time alone."""
        runtime, clock = quiet

        def statuses() -> dict[str, float | None]:
            return {
                status: _sample(runtime, "gateway_contracts_loaded", status=status)
                for status in ("in_force", "expired", "not_yet_valid", "suspended", "revoked")
            }

        # The tax authority holds its two provider contracts and its own consumer contract.
        assert statuses() == {
            "in_force": 2,
            "expired": 1,
            "not_yet_valid": 0,
            "suspended": 0,
            "revoked": 0,
        }
        clock.now += 400 * 86400
        assert statuses()["in_force"] == 0
        assert statuses()["expired"] == 3

    async def test_registry_audit_and_replay(self, quiet: tuple[Runtime, FakeClock]) -> None:
        """Serial, last reload, an empty audit log, an empty replay cache."""
        runtime, clock = quiet
        started = clock.now
        assert _sample(runtime, "gateway_registry_serial") == 1
        assert _sample(runtime, "gateway_registry_last_reload_timestamp_seconds") == started
        assert _sample(runtime, "gateway_replay_cache_entries") == 0
        assert _sample(runtime, "gateway_audit_tree_size") == 0
        assert _sample(runtime, "gateway_audit_store_up") == 1
        # An empty log needs no checkpoint: it is covered from the moment it opens.
        assert _sample(runtime, "gateway_audit_last_checkpoint_timestamp_seconds") == started
        clock.now += 42
        assert _sample(runtime, "gateway_audit_checkpoint_age_seconds") == 42
        await runtime.audit.checkpoint()
        assert _sample(runtime, "gateway_audit_checkpoint_age_seconds") == 0
        assert _sample(runtime, "gateway_audit_last_checkpoint_timestamp_seconds") == clock.now

    async def test_unlisted_keys(self, quiet: tuple[Runtime, FakeClock], tmp_path: Path) -> None:
        """Keys the registry does not list expire "now": -1."""
        runtime, _ = quiet
        runtime.keys = load_agency_keys(tmp_path / "keys" / "social-benefits-revoked")
        assert _sample(runtime, "gateway_key_expiry_seconds", use="sig") == -1
        assert _sample(runtime, "gateway_key_expiry_seconds", use="enc") == -1


# -- isolation and bounded labels ------------------------------------------------------


class TestIsolation:
    """Instances never share values; unvalidated values never become labels."""

    def test_two_instances(self) -> None:
        """Two GatewayMetrics in one process: separate registries, separate values."""
        first, second = GatewayMetrics("a"), GatewayMetrics("b")
        first.observe("/v1/token", "ok", 0.01)
        first.token_cache_lookup(hit=True)
        assert first.registry is not second.registry
        labels = {"endpoint": "/v1/token", "outcome": "ok"}
        assert first.registry.get_sample_value("gateway_requests_total", labels) == 1
        assert second.registry.get_sample_value("gateway_requests_total", labels) is None
        hit = {"result": "hit"}
        assert first.registry.get_sample_value("gateway_token_cache_total", hit) == 1
        assert second.registry.get_sample_value("gateway_token_cache_total", hit) == 0
        assert b'agency="b"' in second.render()
        assert b'agency="a"' not in second.render()

    async def test_gateways_of_one_network(
        self, net: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """Three gateways in one process: each its own build info and its own counts."""
        scrapes = await scrape_all(net, session)
        for agency, found in scrapes.items():
            assert {s.labels["agency"] for s in found.samples("gateway_build_info")} == {agency}
        assert scrapes[POPULATION].value("gateway_rate_limited_total") == 2
        assert scrapes[TAX].value("gateway_rate_limited_total") == 0
        tax_size = scrapes[TAX].value("gateway_audit_tree_size")
        assert tax_size != scrapes[BENEFITS].value("gateway_audit_tree_size")

    async def test_non_utf8_purpose_of_an_unknown_client(
        self, net: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """Refused as unauthorized, audited without the purpose, counted as "unknown"."""
        before = await scrape(session, net.url(BENEFITS))
        request = Raw(
            BENEFITS,
            "POST",
            f"/v1/exchange/{TAX}/income-records",
            (("X-Purpose", b"\x80"), ("Authorization", b"Bearer nobody")),
            b"{}",
        )
        status, body = await asyncio.to_thread(send_raw, net, request)
        assert status == 401, body
        records = audit_leaves(net, BENEFITS)
        assert records[-1]["problem"] == "unauthorized"
        assert "purpose" not in records[-1]
        after = await scrape(session, net.url(BENEFITS))
        labels = {"purpose": "unknown", "outcome": "unauthorized"}
        counted = after.value("gateway_exchanges_total", **labels)
        assert counted == before.value("gateway_exchanges_total", **labels) + 1

    async def test_unvalidated_values_become_unknown(
        self, quiet: tuple[Runtime, FakeClock]
    ) -> None:
        """Values not in the registry, configuration or contracts are "unknown"."""
        runtime, _ = quiet
        metrics = runtime.metrics
        metrics.exchange(
            "inbound",
            "some-peer-problem",
            seconds=0.1,
            phases=Phases(),
            peer="12345678901",
            service="../etc/passwd",
            contract="subject-12345678901",
            purpose="anything",
        )
        metrics.exchange(
            "inbound",
            "ok",
            seconds=0.1,
            phases=Phases(),
            peer=BENEFITS,
            service="income-records",
            contract=INCOME_CONTRACT,
            purpose="not-a-purpose-of-it",
        )
        metrics.token_request("made_up_error")
        metrics.rate_limit("12345678901")
        text = metrics.render().decode()
        assert "12345678901" not in text
        assert "passwd" not in text
        assert "made_up_error" not in text
        unknown = {"peer": "unknown", "service": "unknown", "contract": "unknown"}
        assert (
            _sample(
                runtime,
                "gateway_exchanges_total",
                direction="inbound",
                purpose="unknown",
                outcome="upstream-other",
                **unknown,
            )
            == 1
        )
        assert (
            _sample(
                runtime,
                "gateway_exchanges_total",
                direction="inbound",
                peer=BENEFITS,
                service="income-records",
                contract=INCOME_CONTRACT,
                purpose="unknown",
                outcome="ok",
            )
            == 1
        )
        assert _sample(runtime, "gateway_rate_limited_total", contract="unknown") == 1
        assert problem_label("replay") == "replay"
        assert problem_label("urn:evil") == "upstream-other"


# -- cardinality -----------------------------------------------------------------------


ROUNDS: Final = 10_000
FULL_EXCHANGES: Final = 300  # well under the income contract's 600 a minute
CONCURRENCY: Final = 48  # well under the gateways' max_in_flight (256)


# Request n of the mix names subject SUBJECTS[n]: 11 random digits, all distinct.
SUBJECTS: Final = [f"7{n:05d}{secrets.randbelow(10**5):05d}" for n in range(ROUNDS + 100)]


def _garbage() -> str:
    return secrets.token_urlsafe(12)


async def _one_request(net: LiveNetwork, session: aiohttp.ClientSession, number: int) -> Answer:
    """Request ``number`` of the mix, naming a subject of its own."""
    subject = SUBJECTS[number]
    client = Client(net, session)
    kind = number % 7
    if number < FULL_EXCHANGES or kind == 0:
        if number < FULL_EXCHANGES:
            return await client.exchange(subject)
        return await client.exchange(subject, purpose=_garbage())
    if kind == 1:
        return await client.exchange(subject, contract=_garbage())
    if kind == 2:
        return await client.exchange(subject, provider=_garbage())
    if kind == 3:
        return await client.exchange(subject, service=_garbage())
    tax = net.url(TAX)
    if kind == 4:
        return await post(session, f"{tax}/v1/services/{_garbage()}", data=subject.encode())
    if kind == 5:
        headers = {"Authorization": f"Bearer {_garbage()}", "Content-Type": "application/jose"}
        return await post(
            session, f"{tax}/v1/services/income-records", data=subject.encode(), headers=headers
        )
    form = {"grant_type": "client_credentials", "client_assertion": subject, "jti": _garbage()}
    return await post(session, f"{tax}/v1/token", data=form)


async def _run_mix(net: LiveNetwork, numbers: range) -> Counter[int]:
    statuses: Counter[int] = Counter()
    queue = iter(numbers)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for number in queue:
                statuses[(await _one_request(net, session, number)).status] += 1

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return statuses


async def test_series_do_not_grow_with_subjects(
    net: LiveNetwork, session: aiohttp.ClientSession
) -> None:
    """10,000 requests, 10,000 distinct subjects and random names: not one new series."""
    # A few of each kind first: every series this mix can create exists afterwards.
    assert len(set(SUBJECTS)) == len(SUBJECTS)
    warm = await _run_mix(net, range(ROUNDS, ROUNDS + 7 * 3))
    assert set(warm) <= {200, 400, 401, 403, 404}, warm
    await scrape_all(net, session)  # so that the scrape's own request series exist too
    before = await scrape_all(net, session)
    statuses = await _run_mix(net, range(ROUNDS))
    after = await scrape_all(net, session)
    assert sum(statuses.values()) == ROUNDS
    assert set(statuses) <= {200, 400, 401, 403, 404}, statuses
    for agency in AGENCIES:
        assert after[agency].series() == before[agency].series(), agency
        assert len(after[agency].series()) > 100
    # The traffic was counted, with the same series.
    served = after[BENEFITS].value("gateway_exchanges_total", outcome="ok")
    assert served == before[BENEFITS].value("gateway_exchanges_total", outcome="ok") + (
        FULL_EXCHANGES
    )
    refused = after[BENEFITS].value("gateway_refusals_total")
    assert refused - before[BENEFITS].value("gateway_refusals_total") == sum(
        1 for n in range(FULL_EXCHANGES, ROUNDS) if n % 7 <= 3
    )
    assert after[TAX].value("gateway_refusals_total") - before[TAX].value(
        "gateway_refusals_total"
    ) == sum(1 for n in range(FULL_EXCHANGES, ROUNDS) if n % 7 >= 4)
    text = "".join(found.text for found in after.values())
    assert not [subject for subject in SUBJECTS if subject in text]
