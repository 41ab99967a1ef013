"""The operational endpoints and the HTTP surface as a whole (protocol 3.5 and 7).

Probes, JWKS and metrics answer as documented; unknown routes and methods are
problem+json; and no garbage sent to any endpoint, in any header or body,
yields a 500 or leaks a traceback.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.demo.network import (
    BENEFITS,
    EXPIRED_CONTRACT,
    INCOME_CONTRACT,
    PERSON_CONTRACT,
    POPULATION,
    TAX,
)
from gateway.keys import thumbprint
from gateway.web.app import ReleasingResponse, outbound_session
from tests.conftest import LiveNetwork
from tests.wire import PROBLEM_PREFIX, PURPOSE, Peer, get, post

AGENCIES: Final = (POPULATION, TAX, BENEFITS)
ROUTES: Final = frozenset(
    {
        "/v1/token",
        "/v1/services/{service}",
        "/v1/exchange/{provider}/{service}",
        "/.well-known/jwks.json",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/audit/key",
        "/v1/audit/checkpoint",
        "/v1/audit/records",
        "/v1/audit/records/{index}",
        "/v1/audit/proof/inclusion",
        "/v1/audit/proof/consistency",
        "unmatched",
    }
)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client session per test."""
    async with aiohttp.ClientSession() as client:
        yield client


async def _cookies_sent_back(make_session: Callable[[], aiohttp.ClientSession]) -> list[str]:
    """The Cookie headers a server that sets a cookie receives on two calls by one session."""
    received: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        received.append(request.headers.get("Cookie", ""))
        response = web.json_response({})
        response.set_cookie("session", "peer-state")
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        # A host name, not an address: aiohttp's default jar ignores cookies of addresses.
        url = f"http://localhost:{server.port}/"
        async with make_session() as session:
            for _ in range(2):
                async with session.get(url) as response:
                    assert response.status == 200
    return received


async def test_outbound_session_keeps_no_cookies() -> None:
    """A peer's or backend's Set-Cookie is not stored nor sent back (the gateway keeps no state)."""
    assert await _cookies_sent_back(aiohttp.ClientSession) == ["", "session=peer-state"]
    assert await _cookies_sent_back(outbound_session) == ["", ""]


async def _bodies_alive_between_requests(response_class: type[web.Response]) -> list[str]:
    """What happened to each response's body, as seen between two keep-alive requests."""
    events: list[str] = []

    class Watched(bytearray):
        def __del__(self) -> None:
            events.append("body freed")

    async def handler(request: web.Request) -> web.Response:
        return response_class(body=Watched(bytes(range(256)) * 1_000))

    app = web.Application()
    app.router.add_get("/", handler)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.get(f"http://127.0.0.1:{server.port}/") as response:
                assert await response.read() == bytes(range(256)) * 1_000
                assert response.headers["Content-Length"] == "256000"
                assert "Transfer-Encoding" not in response.headers
            await asyncio.sleep(0.05)
            events.append("answered")
    return events


async def test_large_answers_are_let_go_once_written() -> None:
    """aiohttp keeps a connection's last response until its next request; ours keep no body.

    Written in pieces, the body arrives whole, with its Content-Length.
    """
    kept = await _bodies_alive_between_requests(web.Response)
    assert kept[:2] == ["answered", "body freed"]  # the first body outlived its answer
    released = await _bodies_alive_between_requests(ReleasingResponse)
    assert released == ["body freed", "answered", "body freed", "answered"]


@pytest.mark.parametrize("status", [204, 304])
async def test_bodyless_statuses_send_no_body(status: int) -> None:
    """A 204 or 304 answer carries no body, even one set on it."""

    async def handler(request: web.Request) -> web.Response:
        return ReleasingResponse(body=b"x" * 100_000, status=status)

    app = web.Application()
    app.router.add_get("/", handler)
    async with (
        TestServer(app, host="127.0.0.1") as server,
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{server.port}/") as response,
    ):
        assert response.status == status
        assert await response.read() == b""


@pytest.mark.parametrize("agency", AGENCIES)
class TestProbes:
    """``/healthz`` and ``/readyz`` of every gateway."""

    async def test_healthz(
        self, network: LiveNetwork, session: aiohttp.ClientSession, agency: str
    ) -> None:
        """The process is up."""
        answer = await get(session, f"{network.url(agency)}/healthz")
        assert answer.status == 200
        assert answer.json == {"status": "ok"}

    async def test_readyz(
        self, network: LiveNetwork, session: aiohttp.ClientSession, agency: str
    ) -> None:
        """Registry, keys, contracts and audit store are ready, with nothing to report."""
        answer = await get(session, f"{network.url(agency)}/readyz")
        assert answer.status == 200
        assert answer.content_type == "application/json"
        assert answer.json == {"status": "ready", "problems": {}}


@pytest.mark.parametrize("agency", AGENCIES)
class TestJwks:
    """``/.well-known/jwks.json`` publishes the public keys the registry lists."""

    async def test_keys(
        self, network: LiveNetwork, session: aiohttp.ClientSession, agency: str
    ) -> None:
        """Every key has kid = RFC 7638 thumbprint, use and alg; no private part."""
        answer = await get(session, f"{network.url(agency)}/.well-known/jwks.json")
        assert answer.status == 200
        assert answer.content_type == "application/json"
        keys = answer.json["keys"]
        assert [key["use"] for key in keys] == ["sig", "enc"]
        for key in keys:
            assert key["kid"] == thumbprint(key)
            assert key["alg"] == {"sig": "EdDSA", "enc": "ECDH-ES+A256KW"}[key["use"]]
            assert "d" not in key
        entry = network.registry.agency(agency)
        assert entry is not None
        assert keys == [dict(key.jwk) for key in entry.keys]


class TestMetrics:
    """``/metrics`` is Prometheus text with bounded labels."""

    async def test_exposition(self, network: LiveNetwork, session: aiohttp.ClientSession) -> None:
        """Request counters by endpoint and outcome; no raw path ever becomes a label."""
        url = network.url(TAX)
        await post(session, f"{url}/v1/services/income-records", data=b"x")
        await get(session, f"{url}/no/such/path-3a7f9c")
        answer = await get(session, f"{url}/metrics")
        assert answer.status == 200
        assert answer.content_type == "text/plain"
        text = answer.raw.decode()
        assert "# TYPE gateway_requests_total counter" in text
        assert re.search(
            r'gateway_requests_total\{endpoint="/v1/services/\{service\}",outcome="token-invalid"\}',
            text,
        )
        assert "path-3a7f9c" not in text
        endpoints = set(re.findall(r'endpoint="([^"]*)"', text))
        assert endpoints <= ROUTES, endpoints - ROUTES


class TestRouting:
    """aiohttp's own refusals are problem+json too."""

    @pytest.mark.parametrize(
        "path", ["/", "/v1", "/v1/services", "/v1/exchange/tax-authority", "/v2/token"]
    )
    async def test_unknown_path(
        self, network: LiveNetwork, session: aiohttp.ClientSession, path: str
    ) -> None:
        """404 not-found."""
        answer = await post(session, network.url(TAX) + path, data=b"{}")
        assert answer.status == 404
        assert answer.content_type == "application/problem+json"
        assert answer.json["type"] == PROBLEM_PREFIX + "not-found"
        assert answer.json["status"] == 404

    @pytest.mark.parametrize(
        ("method", "path", "allowed"),
        [
            ("GET", "/v1/token", "POST"),
            ("PUT", "/v1/services/income-records", "POST"),
            ("DELETE", "/v1/exchange/tax-authority/income-records", "POST"),
            ("POST", "/healthz", "GET"),
            ("PATCH", "/.well-known/jwks.json", "GET"),
        ],
    )
    async def test_wrong_method(
        self,
        network: LiveNetwork,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        allowed: str,
    ) -> None:
        """405 method-not-allowed with ``Allow``."""
        async with session.request(method, network.url(TAX) + path) as response:
            body = await response.json(content_type=None)
            assert response.status == 405
            assert response.content_type == "application/problem+json"
            assert allowed in response.headers["Allow"]
        assert body["type"] == PROBLEM_PREFIX + "method-not-allowed"
        assert body["status"] == 405


# -- garbage never yields a 500 ------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """One hand-made HTTP request."""

    agency: str
    method: str
    path: str
    headers: tuple[tuple[str, bytes], ...]
    body: bytes


def send_raw(network: LiveNetwork, request: Raw) -> tuple[int, bytes]:
    """Send ``request`` byte for byte with http.client; the status and body."""
    host, port = network.url(request.agency).removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest(request.method, request.path, skip_accept_encoding=True)
        for name, value in request.headers:
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(request.body)))
        connection.endheaders(request.body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


PATHS: Final = (
    "/v1/token",
    "/v1/services/income-records",
    "/v1/services/person-basic",
    "/v1/services/no-such-service",
    "/v1/exchange/tax-authority/income-records",
    "/v1/exchange/population-registry/person-basic",
    "/v1/exchange/no-such-agency/x",
    "/healthz",
    "/readyz",
    "/metrics",
    "/.well-known/jwks.json",
    "/nowhere",
)
HEADER_NAMES: Final = (
    "X-Contract",
    "X-End-User",
    "Accept",
    "Transfer-Encoding-Not",
    "X-Anything",
)
TOKEN_PARAMETERS: Final = (
    "grant_type",
    "client_assertion_type",
    "client_assertion",
    "authorization_details",
)
_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=60)


def _texts() -> st.SearchStrategy[bytes]:
    return _TEXT.map(lambda text: text.encode("utf-8"))


def _raw_values() -> st.SearchStrategy[bytes]:
    return st.binary(max_size=60).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def garbage(
    draw: st.DrawFn,
    values: st.SearchStrategy[bytes],
    keys: dict[str, tuple[str, ...]],
    subjects: tuple[str, ...],
) -> Raw:
    """A request with random method, path, headers and body, often nearly valid."""
    path = draw(st.sampled_from(PATHS))
    consumers = (BENEFITS, BENEFITS, TAX) if path.startswith("/v1/exchange/") else AGENCIES
    agency = draw(st.sampled_from(consumers))
    if draw(st.integers(0, 7)) == 0:
        path = path + "/" + draw(st.from_regex(r"[A-Za-z0-9%._~-]{0,20}", fullmatch=True))
    credentials = st.sampled_from([*keys[agency], "garbage", ""]).map(lambda key: key.encode())
    headers: dict[str, bytes] = {}
    if draw(st.integers(0, 4)):
        headers["Authorization"] = draw(
            st.one_of(credentials.map(lambda key: b"Bearer " + key), values)
        )
    if draw(st.integers(0, 3)):
        headers["X-Purpose"] = draw(
            st.one_of(st.sampled_from([b"benefit-eligibility", b"tax-assessment"]), values)
        )
    if draw(st.booleans()):
        headers["X-End-User"] = draw(values)
    if draw(st.integers(0, 3)):
        headers["Content-Type"] = draw(
            st.one_of(
                st.sampled_from(
                    [b"application/jose", b"application/json", b"application/x-www-form-urlencoded"]
                ),
                values,
            )
        )
    headers.update(draw(st.dictionaries(st.sampled_from(HEADER_NAMES), values, max_size=2)))
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | _TEXT,
        lambda children: (
            st.lists(children, max_size=3) | st.dictionaries(_TEXT, children, max_size=3)
        ),
        max_leaves=8,
    )
    subject = st.one_of(st.sampled_from(subjects), _TEXT, st.integers())
    body = draw(
        st.one_of(
            st.binary(max_size=2048),
            json_values.map(lambda value: json.dumps(value).encode()),
            st.fixed_dictionaries(
                {"national_id": subject},
                optional={"year": st.one_of(st.integers(), _TEXT), "x": json_values},
            ).map(lambda value: json.dumps(value).encode()),
            st.lists(st.tuples(st.sampled_from(TOKEN_PARAMETERS) | _TEXT, _TEXT), max_size=5).map(
                lambda form: urlencode(form).encode()
            ),
        )
    )
    return Raw(
        agency=agency,
        method=draw(st.sampled_from(["POST", "POST", "POST", "POST", "GET", "PUT"])),
        path=path,
        headers=tuple(headers.items()),
        body=body,
    )


def _garbage(network: LiveNetwork, values: st.SearchStrategy[bytes]) -> st.SearchStrategy[Raw]:
    keys = {agency: tuple(network.agency(agency)["client_keys"].values()) for agency in AGENCIES}
    return garbage(values, keys, tuple(network.demo["subjects"]))


def _sync_token(network: LiveNetwork, peer: Peer) -> str:
    headers = (("Content-Type", b"application/x-www-form-urlencoded"),)
    request = Raw(TAX, "POST", "/v1/token", headers, urlencode(peer.form()).encode())
    status, body = send_raw(network, request)
    assert status == 200, body
    token: str = json.loads(body)["access_token"]
    return token


def _mutations(compact: str) -> st.SearchStrategy[bytes]:
    """``compact`` flipped, cut, spliced or re-segmented at random positions."""
    raw = compact.encode()
    segments = compact.split(".")
    index = st.integers(0, max(len(raw) - 1, 0))

    def flip(position: int, bit: int) -> bytes:
        changed = bytearray(raw)
        changed[position] ^= 1 << bit
        return bytes(changed)

    return st.one_of(
        st.builds(flip, index, st.integers(0, 6)),
        index.map(lambda position: raw[:position]),
        st.builds(lambda a, b: raw[:a] + raw[b:], index, index),
        st.permutations(segments).map(lambda parts: ".".join(parts).encode()),
        st.builds(
            lambda position, text: raw[:position] + text + raw[position:],
            index,
            st.binary(max_size=8).map(lambda value: value.replace(b"\r", b"").replace(b"\n", b"")),
        ),
        st.integers(0, len(segments) - 1).map(
            lambda drop: ".".join(part for i, part in enumerate(segments) if i != drop).encode()
        ),
    )


def _assert_handled(status: int, body: bytes) -> None:
    assert status < 500, (status, body[:300])
    assert b"Traceback" not in body
    assert b'File "' not in body


class TestGarbage:
    """Whatever arrives, the answer is a refusal or an answer, never a crash."""

    @settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def test_utf8_garbage(self, network: LiveNetwork, data: st.DataObject) -> None:
        """Random UTF-8 headers and random bodies to every endpoint: never a 5xx."""
        request = data.draw(_garbage(network, _texts()))
        _assert_handled(*send_raw(network, request))

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def test_near_valid_client_requests(self, network: LiveNetwork, data: st.DataObject) -> None:
        """A valid client key with random purpose, contract, end user and body: never a 5xx."""
        key = data.draw(st.sampled_from(sorted(network.agency(BENEFITS)["client_keys"].values())))
        headers = {"Authorization": f"Bearer {key}".encode(), "Content-Type": b"application/json"}
        optional = {
            "X-Purpose": st.sampled_from([PURPOSE, "marketing", ""]) | _TEXT,
            "X-Contract": st.sampled_from([INCOME_CONTRACT, PERSON_CONTRACT, EXPIRED_CONTRACT])
            | _TEXT,
            "X-End-User": _TEXT,
        }
        for name, values in optional.items():
            if data.draw(st.integers(0, 3)):
                headers[name] = data.draw(values).encode()
        subject = st.sampled_from(network.demo["subjects"]) | _TEXT | st.integers()
        body = data.draw(
            st.fixed_dictionaries(
                {"national_id": subject},
                optional={"year": st.integers() | _TEXT, "extra": _TEXT | st.integers()},
            )
        )
        path = data.draw(
            st.sampled_from(
                [
                    "/v1/exchange/tax-authority/income-records",
                    "/v1/exchange/population-registry/person-basic",
                    "/v1/exchange/tax-authority/person-basic",
                ]
            )
        )
        request = Raw(BENEFITS, "POST", path, tuple(headers.items()), json.dumps(body).encode())
        _assert_handled(*send_raw(network, request))

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def test_mutated_envelopes(self, network: LiveNetwork, data: st.DataObject) -> None:
        """A valid token with a valid request mangled at random: a refusal, never a 5xx."""
        peer = Peer(network)
        token = _sync_token(network, peer)
        subject = network.demo["subjects"][0]
        sealed = peer.seal(peer.claims(token, subject)).jwe
        mutated = data.draw(_mutations(sealed))
        headers = (
            ("Authorization", f"Bearer {token}".encode()),
            ("Content-Type", b"application/jose"),
        )
        request = Raw(TAX, "POST", "/v1/services/income-records", headers, mutated)
        _assert_handled(*send_raw(network, request))

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def test_mutated_token_requests(self, network: LiveNetwork, data: st.DataObject) -> None:
        """A valid token request with one parameter mangled, dropped or repeated: never 5xx."""
        peer = Peer(network)
        form = peer.form()
        position = data.draw(st.integers(0, len(form) - 1))
        name, value = form[position]
        action = data.draw(st.sampled_from(["mutate", "drop", "repeat", "replace"]))
        if action == "mutate":
            form[position] = (name, data.draw(_mutations(value)).decode("latin-1"))
        elif action == "drop":
            del form[position]
        elif action == "repeat":
            form.append((name, data.draw(_TEXT)))
        else:
            form[position] = (name, data.draw(_TEXT))
        headers = (("Content-Type", b"application/x-www-form-urlencoded"),)
        request = Raw(TAX, "POST", "/v1/token", headers, urlencode(form).encode())
        status, body = send_raw(network, request)
        _assert_handled(status, body)
        assert status == 200 or json.loads(body)["error"]

    @settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    @example(data=None)
    def test_raw_byte_garbage(self, network: LiveNetwork, data: Any) -> None:
        """Random header bytes (obs-text included) and random bodies: never a 5xx."""
        if data is None:  # the first reported case, always tried
            request = Raw(
                BENEFITS,
                "POST",
                "/v1/exchange/tax-authority/income-records",
                (("Authorization", b"Bearer \xff"),),
                b"{}",
            )
        else:
            request = data.draw(_garbage(network, _raw_values()))
        _assert_handled(*send_raw(network, request))

    @pytest.mark.parametrize(
        ("header", "value"),
        [
            ("Authorization", b"Bearer \xff"),
            ("X-Purpose", b"benefit-\xe9ligibility"),
            ("X-End-User", b"caseworker-\xff"),
        ],
    )
    def test_non_utf8_header_on_exchange(
        self, network: LiveNetwork, header: str, value: bytes
    ) -> None:
        """A valid client request with one header that is not UTF-8 is refused, not a 500."""
        key = network.agency(BENEFITS)["client_keys"]["caseworker-app"]
        headers = {
            "Authorization": f"Bearer {key}".encode(),
            "X-Purpose": PURPOSE.encode(),
            "X-End-User": b"caseworker-17",
            "Content-Type": b"application/json",
        }
        headers[header] = value
        body = json.dumps({"national_id": network.demo["subjects"][0], "year": 2025}).encode()
        request = Raw(
            BENEFITS,
            "POST",
            "/v1/exchange/tax-authority/income-records",
            tuple(headers.items()),
            body,
        )
        _assert_handled(*send_raw(network, request))
