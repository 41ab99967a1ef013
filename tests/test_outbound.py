"""The agency side over HTTP: ``POST /v1/exchange/{provider}/{service}`` (protocol 5).

A client of social-benefits calls its own gateway with its API key; the
gateway gets a token, seals the request, verifies the answer and releases
only the contract's fields, or refuses with problem+json (its own refusal or
the provider's, passed through).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest

from gateway.bodies import HandedBody
from gateway.config import load_settings
from gateway.demo.backends import PEOPLE
from gateway.demo.network import (
    BENEFITS,
    EXPIRED_CONTRACT,
    INCOME_CONTRACT,
    PERSON_CONTRACT,
    POPULATION,
    TAX,
    TAX_CONTRACT,
)
from gateway.errors import UpstreamUnreachable
from gateway.outbound import ClientRequest, Consumer, HttpPeerTransport
from gateway.runtime import build_runtime
from tests.conftest import LiveNetwork
from tests.wire import (
    END_USER,
    INCOME_FIELDS,
    PURPOSE,
    Answer,
    Peer,
    assert_problem,
    audit_path,
    audit_record,
    audit_records,
    count_records,
    granted_version,
    pieces,
    post,
    rewrite_contract,
    wait_for_grant,
)

MIB = 1024 * 1024
_DEFAULT: Any = object()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client session per test."""
    async with aiohttp.ClientSession() as client:
        yield client


def client_key(net: LiveNetwork, client: str = "caseworker-app", agency: str = BENEFITS) -> str:
    """The API key of one of an agency's clients."""
    key: str = net.agency(agency)["client_keys"][client]
    return key


async def exchange(
    session: aiohttp.ClientSession,
    net: LiveNetwork,
    body: Any = _DEFAULT,
    *,
    provider: str = TAX,
    service: str = "income-records",
    key: str | None = _DEFAULT,
    purpose: str | None = PURPOSE,
    end_user: str | None = END_USER,
    contract: str | None = None,
    agency: str = BENEFITS,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """A client's call to its own gateway; ``None`` leaves a header out."""
    sent: dict[str, str] = dict(headers or {})
    if key is _DEFAULT:
        key = client_key(net)
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    if purpose is not None:
        sent["X-Purpose"] = purpose
    if end_user is not None:
        sent["X-End-User"] = end_user
    if contract is not None:
        sent["X-Contract"] = contract
    if body is _DEFAULT:
        body = {"national_id": net.demo["subjects"][0], "year": 2025}
    if isinstance(body, Mapping):
        body = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    data = io.BytesIO(body) if isinstance(body, bytes) else body
    url = f"{net.url(agency)}/v1/exchange/{provider}/{service}"
    return await post(session, url, data=data, headers=sent)


class TestSuccess:
    """A permitted exchange returns the verified, filtered body."""

    async def test_income(self, network: LiveNetwork, session: aiohttp.ClientSession) -> None:
        """Only the contract's fields, with the ids that trace the exchange."""
        subject = network.demo["subjects"][1]
        answer = await exchange(session, network, {"national_id": subject, "year": 2025})
        assert answer.status == 200, answer.raw
        assert answer.content_type == "application/json"
        body = answer.json
        assert set(body) == set(INCOME_FIELDS)
        assert body["national_id"] == subject
        assert body["year"] == 2025
        assert answer.headers["X-Contract"] == INCOME_CONTRACT
        exchange_id = answer.headers["X-Exchange-Id"]
        assert len(exchange_id) >= 22
        index = int(answer.headers["X-Audit-Index"])
        record = audit_record(audit_path(network, BENEFITS), index)
        assert record["kind"] == "exchange"
        assert record["direction"] == "outbound"
        assert record["outcome"] == "ok"
        assert record["jti"] == exchange_id
        assert record["client"] == "caseworker-app"
        assert record["fields"] == list(INCOME_FIELDS)
        provider_index = int(answer.headers["X-Provider-Audit-Index"])
        provider_record = audit_record(audit_path(network, TAX), provider_index)
        assert provider_record["jti"] == exchange_id
        assert provider_record["direction"] == "inbound"

    async def test_person(self, network: LiveNetwork, session: aiohttp.ClientSession) -> None:
        """The person contract releases name-free basics only."""
        subject = network.demo["subjects"][2]
        answer = await exchange(
            session, network, {"national_id": subject}, provider=POPULATION, service="person-basic"
        )
        assert answer.status == 200, answer.raw
        assert set(answer.json) == {"national_id", "birth_date", "municipality"}
        assert answer.headers["X-Contract"] == PERSON_CONTRACT

    async def test_named_contract(
        self, network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """``X-Contract`` naming the fitting contract is accepted."""
        answer = await exchange(session, network, contract=INCOME_CONTRACT)
        assert answer.status == 200, answer.raw
        assert answer.headers["X-Contract"] == INCOME_CONTRACT

    async def test_other_agency_as_consumer(
        self, network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """tax-authority consumes too: its assessment app asks the population register."""
        subject = network.demo["subjects"][3]
        answer = await exchange(
            session,
            network,
            {"national_id": subject},
            agency=TAX,
            provider=POPULATION,
            service="person-basic",
            key=client_key(network, "assessment-app", TAX),
            purpose="tax-assessment",
        )
        assert answer.status == 200, answer.raw
        assert set(answer.json) == {"national_id", "name", "address"}
        assert answer.headers["X-Contract"] == TAX_CONTRACT

    async def test_backend_404_passes_through(
        self, network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """ "No such record" reaches the client as 404 with nothing released."""
        answer = await exchange(session, network, {"national_id": "00000000000", "year": 2025})
        assert answer.status == 404
        assert answer.content_type == "application/json"
        assert answer.json == {}
        assert answer.headers["X-Contract"] == INCOME_CONTRACT
        assert int(answer.headers["X-Audit-Index"]) >= 0

    @pytest.mark.parametrize("framing", ["content-length", "chunked"])
    async def test_body_arriving_in_parts(
        self, network: LiveNetwork, session: aiohttp.ClientSession, framing: str
    ) -> None:
        """A request body written in two parts is read whole."""
        body = json.dumps({"national_id": network.demo["subjects"][0], "year": 2025}).encode()
        headers = {"Content-Type": "application/json"}
        if framing == "content-length":
            headers["Content-Length"] = str(len(body))
        answer = await exchange(session, network, pieces(body), headers=headers)
        assert answer.status == 200, answer.raw


class TestUnauthorized:
    """No or unknown client key: 401 unauthorized."""

    @pytest.mark.parametrize(
        "authorization",
        [None, "Bearer not-a-real-key", "Bearer ", "Basic {key}", "{key}", "bearer  {key}x"],
        ids=["missing", "unknown-key", "empty", "basic-scheme", "no-scheme", "altered-key"],
    )
    async def test_refused(
        self, network: LiveNetwork, session: aiohttp.ClientSession, authorization: str | None
    ) -> None:
        """Refused before anything else, audited."""
        headers = {}
        if authorization is not None:
            headers["Authorization"] = authorization.format(key=client_key(network))
        answer = await exchange(session, network, key=None, headers=headers)
        assert_problem(answer, "unauthorized", 401)

    async def test_officer_key_is_not_a_client_key(
        self, network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """The privacy officer's key does not authorize exchanges."""
        answer = await exchange(session, network, key=network.agency(BENEFITS)["officer_key"])
        assert_problem(answer, "unauthorized", 401)


class TestBadRequest:
    """Malformed client requests: 400 bad-request."""

    async def test_missing_purpose(
        self, network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """``X-Purpose`` is required."""
        assert_problem(await exchange(session, network, purpose=None), "bad-request", 400)

    @pytest.mark.parametrize(
        "body",
        [
            b"not json",
            b"",
            b"[1, 2]",
            b'"a string"',
            b"null",
            b'{"national_id": "3", "year": 2025.0}',
            b'{"national_id": "3", "year": 1e3}',
            b'{"national_id": "3", "year": NaN}',
            b'{"national_id": "3", "national_id": "4"}',
            b"\xff\xfe{}",
        ],
        ids=[
            "not-json",
            "empty",
            "array",
            "string",
            "null",
            "float",
            "exponent",
            "nan",
            "duplicate-member",
            "not-utf8",
        ],
    )
    async def test_body_not_a_json_object_of_integers(
        self, network: LiveNetwork, session: aiohttp.ClientSession, body: bytes
    ) -> None:
        """The body must be a strict JSON object (no floats, no duplicates)."""
        assert_problem(await exchange(session, network, body), "bad-request", 400)

    @pytest.mark.parametrize(
        "body",
        [{"year": 2025}, {"national_id": 30008024773}, {"national_id": ""}, {"nationalId": "3"}],
        ids=["missing", "number", "empty", "other-name"],
    )
    async def test_subject_field_missing(
        self, network: LiveNetwork, session: aiohttp.ClientSession, body: dict[str, Any]
    ) -> None:
        """The contract's subject_field must name the subject as a non-empty string."""
        assert_problem(await exchange(session, network, body), "bad-request", 400)

    async def test_missing_end_user(
        self, network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """The demo contracts require an end user: refused locally, nothing sent on."""
        before = count_records(audit_path(network, TAX), direction="inbound")
        assert_problem(await exchange(session, network, end_user=None), "bad-request", 400)
        assert count_records(audit_path(network, TAX), direction="inbound") == before

    @pytest.mark.parametrize("where", ["subject", "other-member"])
    async def test_lone_surrogate_in_body(
        self, network: LiveNetwork, session: aiohttp.ClientSession, where: str
    ) -> None:
        """A JSON string that is not Unicode text is a malformed body, not a 500."""
        subject = network.demo["subjects"][0]
        body = (
            b'{"national_id": "\\ud800", "year": 2025}'
            if where == "subject"
            else f'{{"national_id": "{subject}", "note": "\\udcff"}}'.encode()
        )
        assert_problem(await exchange(session, network, body), "bad-request", 400)


class TestForbidden:
    """A client may only use the contracts its configuration lists: 403 forbidden."""

    async def test_fitting_contract_not_listed(
        self, network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """reporting-batch may not use the person contract."""
        answer = await exchange(
            session,
            network,
            {"national_id": network.demo["subjects"][0]},
            provider=POPULATION,
            service="person-basic",
            key=client_key(network, "reporting-batch"),
        )
        assert_problem(answer, "forbidden", 403)

    @pytest.mark.parametrize("contract", [EXPIRED_CONTRACT, TAX_CONTRACT, "no-such-contract"])
    async def test_named_contract_not_listed(
        self, network: LiveNetwork, session: aiohttp.ClientSession, contract: str
    ) -> None:
        """Naming a contract outside the client's list is forbidden, whatever it is."""
        key = client_key(network, "reporting-batch")
        answer = await exchange(session, network, key=key, contract=contract)
        assert_problem(answer, "forbidden", 403)


class TestContractDenied:
    """No contract in force fits: 403 contract-denied, before any token is asked for."""

    @pytest.mark.parametrize(
        ("overrides", "provider", "service"),
        [
            ({"purpose": "marketing"}, TAX, "income-records"),
            ({"contract": EXPIRED_CONTRACT}, TAX, "income-records"),
            ({"contract": INCOME_CONTRACT}, POPULATION, "person-basic"),
            ({"contract": PERSON_CONTRACT, "purpose": "marketing"}, POPULATION, "person-basic"),
            ({}, "no-such-agency", "income-records"),
            ({"contract": INCOME_CONTRACT}, "no-such-agency", "income-records"),
            ({}, TAX, "no-such-service"),
        ],
        ids=[
            "wrong-purpose",
            "expired-contract-named",
            "contract-for-another-provider",
            "named-contract-wrong-purpose",
            "unknown-provider",
            "unknown-provider-named-contract",
            "unknown-service",
        ],
    )
    async def test_refused(
        self,
        network: LiveNetwork,
        session: aiohttp.ClientSession,
        overrides: dict[str, Any],
        provider: str,
        service: str,
    ) -> None:
        """Refused locally with an audit id."""
        answer = await exchange(session, network, provider=provider, service=service, **overrides)
        assert_problem(answer, "contract-denied", 403)


class TestProviderRefusals:
    """The provider's refusal reaches the client unchanged (its document and audit id)."""

    async def test_refusals_pass_through(
        self, fresh_network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """A replaced contract, then its new rate limit, as the provider reports them."""
        net = fresh_network
        assert (await exchange(session, net)).status == 200
        rewrite_contract(
            net, INCOME_CONTRACT, version=2, rate_limit={"requests": 1, "per_seconds": 60}
        )
        await wait_for_grant(Peer(net), session, lambda answer: granted_version(answer) == 2)

        # The cached token names version 1: the provider refuses it, the client sees that.
        denied = await exchange(session, net)
        document = assert_problem(denied, "contract-denied", 403)
        record = audit_record(audit_path(net, TAX), document["audit_id"])
        assert (record["direction"], record["problem"]) == ("inbound", "contract-denied")
        local = json.loads(audit_records(audit_path(net, BENEFITS))[-1][1])
        assert (local["direction"], local["problem"]) == ("outbound", "contract-denied")

        # The refused token was dropped: a new one (version 2) is fetched and used.
        assert (await exchange(session, net)).status == 200

        limited = await exchange(session, net)
        document = assert_problem(limited, "rate-limited", 429)
        assert limited.headers["Retry-After"].isdigit()
        assert int(limited.headers["Retry-After"]) >= 1
        record = audit_record(audit_path(net, TAX), document["audit_id"])
        assert record["problem"] == "rate-limited"

    async def test_refused_token_is_renewed(
        self, fresh_network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """After the provider refuses the cached token (contract replaced), a new one is used."""
        net = fresh_network
        assert (await exchange(session, net)).status == 200
        rewrite_contract(net, INCOME_CONTRACT, version=2)
        await wait_for_grant(Peer(net), session, lambda answer: granted_version(answer) == 2)
        tokens_before = count_records(audit_path(net, TAX), kind="token")
        refused = await exchange(session, net)
        assert refused.status >= 400
        assert refused.content_type == "application/problem+json"
        assert (await exchange(session, net)).status == 200
        assert count_records(audit_path(net, TAX), kind="token") == tokens_before + 1

    async def test_token_refused_as_invalid_is_renewed_once(
        self, fresh_network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """The provider refuses the token (token-invalid): a new one carries the same body."""
        net = fresh_network
        runtime = await build_runtime(load_settings(net.directory / BENEFITS / "gateway.yaml"))
        spoiler = _TokenSpoiler(HttpPeerTransport(session, timeout=10))
        subject = net.demo["subjects"][0]
        try:
            result = await Consumer(runtime, spoiler).exchange(income_request(net, subject))
        finally:
            await runtime.close()
        assert spoiler.statuses == [401, 200], "one refusal, then one renewed try"
        assert result.status == 200
        assert json.loads(result.body.encoded)["national_id"] == subject
        provider_records = [json.loads(leaf) for _, leaf in audit_records(audit_path(net, TAX))]
        refusals = [record for record in provider_records if record["kind"] == "refusal"]
        assert [record["problem"] for record in refusals] == ["token-invalid"]

    async def test_body_over_the_gateway_limit(
        self, network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """Over 1 MiB: 413 payload-too-large, audited like every refusal."""
        body = b'{"national_id": "' + b"3" * MIB + b'"}'
        assert_problem(await exchange(session, network, body), "payload-too-large", 413)


def income_request(net: LiveNetwork, subject: str) -> ClientRequest:
    """A caseworker's request for ``subject``'s income, as the consumer's handler passes it on."""
    return ClientRequest(
        api_key=client_key(net),
        provider=TAX,
        service="income-records",
        purpose=PURPOSE,
        contract=None,
        end_user=END_USER,
        body=HandedBody(json.dumps({"national_id": subject, "year": 2025}).encode()),
    )


class _TokenSpoiler:
    """A peer transport whose first exchange carries a token the provider cannot verify."""

    def __init__(self, inner: HttpPeerTransport) -> None:
        self._inner = inner
        self.statuses: list[int] = []

    async def post(
        self, url: str, *, data: bytes | Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[int, str, bytes, Mapping[str, str]]:
        """POST through the real transport; the first service call with a spoilt token."""
        if "/v1/services/" not in url:
            return await self._inner.post(url, data=data, headers=headers)
        if not self.statuses:
            headers = {**headers, "Authorization": headers["Authorization"][:-8] + "AAAAAAAA"}
        answer = await self._inner.post(url, data=data, headers=headers)
        self.statuses.append(answer[0])
        return answer


class TestResponseChecks:
    """3.4: the consumer checks the provider's answer before its client sees anything."""

    async def test_release_beyond_the_consumers_contract(
        self, fresh_network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """The provider's copy releases one more field: 502, and the client gets nothing."""
        net = fresh_network
        fields = ["national_id", "year", "taxable_income", "bank_account"]
        rewrite_contract(net, INCOME_CONTRACT, version=2, fields=fields)
        await wait_for_grant(Peer(net), session, lambda answer: granted_version(answer) == 2)
        subject = net.demo["subjects"][0]
        answer = await exchange(session, net, {"national_id": subject, "year": 2025})
        assert_problem(answer, "upstream-unreachable", 502)
        assert PEOPLE[subject]["_iban"].encode() not in answer.raw
        released = [
            json.loads(leaf)
            for _, leaf in audit_records(audit_path(net, TAX))
            if json.loads(leaf)["kind"] == "exchange"
        ]
        assert released[-1]["fields"] == sorted(fields)
        local = json.loads(audit_records(audit_path(net, BENEFITS))[-1][1])
        assert (local["kind"], local["problem"]) == ("refusal", "upstream-unreachable")


class TestTokenCache:
    """The consumer reuses its access token while it is fresh."""

    async def test_one_grant_for_two_exchanges(
        self, fresh_network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """Two exchanges, one token grant in the provider's audit log."""
        for subject in fresh_network.demo["subjects"][:2]:
            answer = await exchange(session, fresh_network, {"national_id": subject})
            assert answer.status == 200, answer.raw
        provider_log = audit_path(fresh_network, TAX)
        assert count_records(provider_log, kind="token") == 1
        assert count_records(provider_log, kind="exchange", outcome="ok") == 2
        assert count_records(audit_path(fresh_network, POPULATION), kind="token") == 0

    async def test_token_renewed_ahead_while_requests_go_on(
        self, fresh_network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """Within a minute of its expiry a token is renewed once, in the background: requests
        meanwhile go out with the old one at once, later ones with the new one."""
        net = fresh_network
        desk = _TokenDesk(HttpPeerTransport(session, timeout=10), first_expires_in=45)
        subject = net.demo["subjects"][0]
        async with _consumer(net, desk) as consumer:
            assert (await consumer.exchange(income_request(net, subject))).status == 200
            first = desk.granted[0]
            desk.hold = asyncio.Event()
            desk.answered.clear()
            for _ in range(3):  # the renewal is held: none of these may wait for it
                result = await asyncio.wait_for(
                    consumer.exchange(income_request(net, subject)), timeout=10
                )
                assert result.status == 200
            assert desk.asked == 2, "one renewal for the three requests"
            assert desk.sent == [first] * 4
            desk.hold.set()
            # The renewal stores the token as soon as its answer is back, before this wakes.
            await asyncio.wait_for(desk.answered.wait(), timeout=10)
            assert (await consumer.exchange(income_request(net, subject))).status == 200
        assert desk.sent[-1] == desk.granted[1] != first
        assert desk.asked == 2, "the new token is good for 300 s: no renewal yet"
        assert count_records(audit_path(net, TAX), kind="token") == 2

    async def test_failed_renewal_is_logged_and_not_repeated(
        self,
        fresh_network: LiveNetwork,
        session: aiohttp.ClientSession,
        captured: io.StringIO,
    ) -> None:
        """A refused renewal leaves the old token in use and is not asked again on each request."""
        net = fresh_network
        desk = _TokenDesk(HttpPeerTransport(session, timeout=10), first_expires_in=45)
        subject = net.demo["subjects"][0]
        async with _consumer(net, desk) as consumer:
            assert (await consumer.exchange(income_request(net, subject))).status == 200
            desk.refuse = True
            desk.answered.clear()
            assert (await consumer.exchange(income_request(net, subject))).status == 200
            await asyncio.wait_for(desk.answered.wait(), timeout=10)
            for _ in range(2):
                assert (await consumer.exchange(income_request(net, subject))).status == 200
        assert (desk.asked, desk.refused) == (2, 1)
        assert desk.sent == [desk.granted[0]] * 4
        failures = [
            line
            for line in map(json.loads, captured.getvalue().splitlines())
            if line["event"] == "token_renewal_failed"
        ]
        assert len(failures) == 1
        assert failures[0]["level"] == "warning"
        assert (failures[0]["provider"], failures[0]["contract"]) == (TAX, INCOME_CONTRACT)
        assert failures[0]["problem"] == "upstream-unreachable"
        assert subject not in captured.getvalue()

    async def test_token_near_its_expiry_is_replaced_before_sending(
        self, fresh_network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """With less than 30 s left a token is not sent: the request waits for a new one."""
        net = fresh_network
        desk = _TokenDesk(HttpPeerTransport(session, timeout=10), first_expires_in=20)
        subject = net.demo["subjects"][0]
        async with _consumer(net, desk) as consumer:
            for _ in range(2):
                assert (await consumer.exchange(income_request(net, subject))).status == 200
        assert desk.asked == 2
        assert desk.sent == desk.granted


class _TokenDesk:
    """A peer transport that records the tokens granted and sent, and can hold or refuse
    token requests; the first grant can be made to look shorter than it is."""

    def __init__(self, inner: HttpPeerTransport, *, first_expires_in: int) -> None:
        self._inner = inner
        self._first_expires_in = first_expires_in
        self.asked = 0  # token requests made
        self.refused = 0
        self.granted: list[str] = []
        self.sent: list[str] = []  # the token of each service call
        self.hold: asyncio.Event | None = None
        self.refuse = False
        self.answered = asyncio.Event()  # set as each token request is answered or refused

    async def post(
        self, url: str, *, data: bytes | Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[int, str, bytes, Mapping[str, str]]:
        """POST through the real transport, or refuse as an unreachable provider would."""
        if not url.endswith("/v1/token"):
            self.sent.append(headers["Authorization"].removeprefix("Bearer "))
            return await self._inner.post(url, data=data, headers=headers)
        self.asked += 1
        if self.hold is not None:
            await self.hold.wait()
        if self.refuse:
            self.refused += 1
            self.answered.set()
            raise UpstreamUnreachable("the provider gateway could not be reached")
        status, content_type, raw, answer_headers = await self._inner.post(
            url, data=data, headers=headers
        )
        answer = json.loads(raw)
        if not self.granted:
            answer["expires_in"] = self._first_expires_in
        self.granted.append(answer["access_token"])
        self.answered.set()
        return status, content_type, json.dumps(answer).encode(), answer_headers


@contextlib.asynccontextmanager
async def _consumer(net: LiveNetwork, transport: _TokenDesk) -> AsyncIterator[Consumer]:
    """The consumer pipeline of social-benefits over ``transport``, closed afterwards."""
    runtime = await build_runtime(load_settings(net.directory / BENEFITS / "gateway.yaml"))
    consumer = Consumer(runtime, transport)
    try:
        yield consumer
    finally:
        await consumer.close()
        await runtime.close()
