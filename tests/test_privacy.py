"""Personal data and credentials never leave the exchange (protocol 1, 3.5, 6, 7).

Traffic with several subjects runs through a network of its own (successful
exchanges both ways, "no such record" answers and refusals of every kind,
from clients and from a peer speaking the wire protocol). Everything the
gateways emit on the side is captured: every log line (at debug level),
``/metrics`` of each gateway, every problem document, every audit record.
No subject id, client or officer API key, access token, or body value may
appear in any of them; the audit log holds subject pseudonyms instead.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest

from gateway.audit.records import load_audit_key
from gateway.demo.backends import PEOPLE
from gateway.demo.network import (
    BENEFITS,
    EXPIRED_CONTRACT,
    INCOME_CONTRACT,
    POPULATION,
    TAX,
)
from gateway.observability import configure_logging
from tests.conftest import LiveNetwork, live_network
from tests.wire import (
    DROP,
    END_USER,
    PURPOSE,
    Answer,
    Peer,
    audit_path,
    audit_records,
    get,
    post,
)

AGENCIES: Final = (POPULATION, TAX, BENEFITS)
# Subjects no backend knows: ids a caseworker might type.
UNKNOWN_SUBJECTS: Final = ("39912310001", "49001011234")
# Three base64url segments, the first a JSON header: any compact JWS or JWT.
COMPACT_JOSE: Final = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]{8,}")


@dataclass
class Traffic:
    """What the gateways emitted while the traffic ran."""

    net: LiveNetwork
    subjects: list[str]
    tokens: list[str] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    metrics: dict[str, str] = field(default_factory=dict)
    logs: str = ""

    def secrets(self) -> dict[str, str]:
        """Every value that must not appear, by a label for the failure message."""
        found = {f"subject {subject}": subject for subject in self.subjects}
        for agency in AGENCIES:
            entry = self.net.agency(agency)
            for client, key in entry["client_keys"].items():
                found[f"api key of {agency}/{client}"] = key
            found[f"officer key of {agency}"] = entry["officer_key"]
        for number, token in enumerate(self.tokens):
            found[f"access token #{number}"] = token
        for subject in self.subjects:
            person = PEOPLE.get(subject)
            if person is not None:
                found[f"name of {subject}"] = person["name"]
                found[f"bank account of {subject}"] = person["_iban"]
                found[f"street of {subject}"] = person["address"]["street"]
        return found

    def audit_leaves(self) -> dict[str, str]:
        """Every audit record of every gateway, as text."""
        return {
            f"{agency}#{index}": leaf.decode("utf-8")
            for agency in AGENCIES
            for index, leaf in audit_records(audit_path(self.net, agency))
        }


class Client:
    """Calls a gateway's /v1/exchange as one of its clients; keeps every answer."""

    def __init__(self, session: aiohttp.ClientSession, traffic: Traffic) -> None:
        self.session = session
        self.traffic = traffic

    async def exchange(
        self,
        body: dict[str, Any] | bytes,
        *,
        agency: str = BENEFITS,
        client: str = "caseworker-app",
        key: str | None = None,
        provider: str = TAX,
        service: str = "income-records",
        purpose: str = PURPOSE,
        end_user: str | None = END_USER,
        contract: str | None = None,
    ) -> Answer:
        """One call; the answer is recorded."""
        net = self.traffic.net
        headers = {
            "Authorization": f"Bearer {key or net.agency(agency)['client_keys'][client]}",
            "X-Purpose": purpose,
            "Content-Type": "application/json",
        }
        if end_user is not None:
            headers["X-End-User"] = end_user
        if contract is not None:
            headers["X-Contract"] = contract
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        url = f"{net.url(agency)}/v1/exchange/{provider}/{service}"
        answer = await post(self.session, url, data=data, headers=headers)
        self.traffic.answers.append(answer)
        return answer


async def _clients(traffic: Traffic, session: aiohttp.ClientSession) -> None:
    """Clients of social-benefits and tax-authority: answers and local refusals."""
    call = Client(session, traffic).exchange
    known = traffic.subjects[:5]
    for subject in known:
        assert (await call({"national_id": subject, "year": 2025})).status == 200
    for subject in known[:3]:
        answer = await call({"national_id": subject}, provider=POPULATION, service="person-basic")
        assert answer.status == 200
    answer = await call(
        {"national_id": known[3]},
        agency=TAX,
        client="assessment-app",
        provider=POPULATION,
        service="person-basic",
        purpose="tax-assessment",
    )
    assert answer.status == 200
    for subject in UNKNOWN_SUBJECTS:
        assert (await call({"national_id": subject, "year": 2025})).status == 404
    refusals = [
        await call({"national_id": known[1]}, end_user=None),
        await call({"national_id": known[2]}, purpose="marketing"),
        await call(
            {"national_id": known[3]},
            client="reporting-batch",
            provider=POPULATION,
            service="person-basic",
        ),
        await call({"national_id": known[4]}, key="not-a-client-key"),
        await call(f'{{"national_id": "{known[0]}", "year": 2025.5}}'.encode()),
        await call({"nationalId": known[0]}),
        await call({"national_id": known[1]}, contract=EXPIRED_CONTRACT),
        await call({"national_id": UNKNOWN_SUBJECTS[0]}, provider="no-such-agency"),
    ]
    assert all(400 <= answer.status < 500 for answer in refusals), [a.raw for a in refusals]


async def _peer(traffic: Traffic, session: aiohttp.ClientSession) -> None:
    """social-benefits speaking the wire protocol to tax-authority: served and refused."""
    peer = Peer(traffic.net)
    subject, other = traffic.subjects[0], traffic.subjects[1]
    token = await peer.token(session)
    second = await peer.token(session)
    traffic.tokens += [token, second]
    sealed = peer.seal(peer.claims(token, subject))
    cases = [
        (sealed.jwe, token),
        (sealed.jwe, token),  # replay
        (peer.seal(peer.claims(token, subject, body={"national_id": other})).jwe, token),
        (peer.seal(peer.claims(second, subject, iat=1, exp=100)).jwe, second),
        (peer.seal(peer.claims(token, other, client=DROP)).jwe, token),
        (peer.seal(peer.claims(token, other, end_user=DROP)).jwe, token),
        (peer.seal(peer.claims(second, UNKNOWN_SUBJECTS[1])).jwe, "garbage"),
        (peer.seal(peer.claims(token, subject), signing_key=peer.revoked.signing).jwe, token),
        (peer.seal(peer.claims(token, subject, ath="x" * 43)).jwe, token),
    ]
    statuses = []
    for jwe, bearer in cases:
        answer = await peer.send(session, jwe, bearer)
        statuses.append(answer.status)
        if answer.status != 200:
            traffic.answers.append(answer)
    assert statuses[0] == 200
    assert all(400 <= status < 500 for status in statuses[1:]), statuses
    unknown = await peer.send(session, sealed.jwe, token, service="no-such-service")
    assert unknown.status == 404
    denied = await peer.token_request(
        session, peer.form(authorization_details=json.dumps([{"type": subject}]))
    )
    assert denied.status == 400
    traffic.answers += [unknown, denied]


async def _run(traffic: Traffic) -> None:
    async with aiohttp.ClientSession() as session:
        await _clients(traffic, session)
        await _peer(traffic, session)
        for agency in AGENCIES:
            answer = await get(session, f"{traffic.net.url(agency)}/metrics")
            assert answer.status == 200
            traffic.metrics[agency] = answer.raw.decode()


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    """Run the traffic once on a network of its own, capturing every log line."""
    with live_network(tmp_path_factory.mktemp("privacy") / "network") as net:
        subjects = [*net.demo["subjects"], *UNKNOWN_SUBJECTS]
        captured = Traffic(net=net, subjects=subjects)
        stream = io.StringIO()
        configure_logging("debug", "json", stream)
        try:
            asyncio.run(_run(captured))
        finally:
            configure_logging("warning", "json")
        captured.logs = stream.getvalue()
        yield captured


def _leaks(secrets: dict[str, str], texts: dict[str, str]) -> list[str]:
    return [
        f"{label} in {where}"
        for where, text in texts.items()
        for label, secret in secrets.items()
        if secret in text
    ]


class TestNothingLeaks:
    """No subject id, key, token or body value in anything the gateways emit."""

    def test_logs(self, traffic: Traffic) -> None:
        """Every log line (debug level, JSON) is free of personal data and credentials."""
        lines = traffic.logs.splitlines()
        events = [json.loads(line)["event"] for line in lines]
        assert events.count("exchange") >= 20, events
        assert (
            _leaks(traffic.secrets(), {f"log line {n}": line for n, line in enumerate(lines)}) == []
        )
        assert COMPACT_JOSE.search(traffic.logs) is None

    def test_metrics(self, traffic: Traffic) -> None:
        """``/metrics`` of every gateway is free of them too."""
        assert all("gateway_requests_total" in text for text in traffic.metrics.values())
        assert _leaks(traffic.secrets(), traffic.metrics) == []

    def test_problem_documents(self, traffic: Traffic) -> None:
        """No refusal's body (problem+json or OAuth error) carries them."""
        refusals = {
            f"answer {n} ({answer.status})": answer.raw.decode()
            for n, answer in enumerate(traffic.answers)
            if answer.status >= 400
        }
        assert len(refusals) >= 15
        assert _leaks(traffic.secrets(), refusals) == []

    def test_audit_records(self, traffic: Traffic) -> None:
        """Audit records of all three gateways hold no clear id, key, token or body."""
        leaves = traffic.audit_leaves()
        assert len(leaves) >= 40
        assert _leaks(traffic.secrets(), leaves) == []
        for where, leaf in leaves.items():
            assert COMPACT_JOSE.search(leaf) is None, where

    def test_audit_records_hold_pseudonyms(self, traffic: Traffic) -> None:
        """Subjects appear as HMAC pseudonyms under each agency's own audit key."""
        net = traffic.net
        subject = traffic.subjects[0]
        pseudonyms = {}
        for agency in (TAX, BENEFITS):
            pseudonymize = load_audit_key(net.directory / "keys" / agency / "audit.key")
            pseudonyms[agency] = pseudonymize(subject)
            records = [json.loads(leaf) for _, leaf in audit_records(audit_path(net, agency))]
            exchanges = [
                record
                for record in records
                if record["kind"] == "exchange" and record.get("subject") == pseudonyms[agency]
            ]
            assert exchanges, agency
            assert all(record.get("contract") for record in exchanges)
        assert pseudonyms[TAX] != pseudonyms[BENEFITS]

    def test_logs_say_what_happened(self, traffic: Traffic) -> None:
        """The logs are useful without personal data: direction, outcome, status, index."""
        exchanges = [
            record
            for record in map(json.loads, traffic.logs.splitlines())
            if record["event"] == "exchange"
        ]
        outcomes = {(record["direction"], record["outcome"]) for record in exchanges}
        assert ("outbound", "ok") in outcomes
        assert ("inbound", "ok") in outcomes
        assert ("inbound", "replay") in outcomes
        assert ("outbound", "forbidden") in outcomes


def test_contract_ids_are_not_personal(traffic: Traffic) -> None:
    """Sanity: the secrets list is non-trivial, so the checks above mean something."""
    secrets = traffic.secrets()
    assert sum(label.startswith("subject ") for label in secrets) == len(traffic.subjects) >= 7
    assert any(label.startswith("access token") for label in secrets)
    assert any(label.startswith("name of ") for label in secrets)
    assert INCOME_CONTRACT not in secrets.values()
    assert Path(traffic.net.directory).is_dir()
