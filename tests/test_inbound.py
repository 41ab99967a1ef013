"""The provider side over HTTP: ``/v1/token`` (3.1) and ``/v1/services/{service}`` (3.3-3.5).

Every test speaks the wire protocol to the live tax-authority gateway as
social-benefits would, with social-benefits' private keys from the network
folder. Each refused request is built to fail exactly one check: everything
before that check in the protocol's order is valid.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from gateway.demo.network import (
    BENEFITS,
    EXPIRED_CONTRACT,
    INCOME_CONTRACT,
    PERSON_CONTRACT,
    POPULATION,
    TAX,
    TAX_CONTRACT,
)
from gateway.keys import b64url, b64url_decode
from gateway.tokens import (
    ACCESS_TOKEN_TYP,
    CLIENT_ASSERTION_TYP,
    Grant,
    issue_access_token,
    token_hash,
)
from tests.conftest import LiveNetwork
from tests.wire import (
    DROP,
    INCOME_FIELDS,
    PURPOSE,
    SERVICE,
    Answer,
    Peer,
    assert_problem,
    assert_token_error,
    assertion_claims,
    audit_path,
    audit_record,
    audit_records,
    custom_network,
    details,
    free_port,
    granted_version,
    hmac_jws,
    pieces,
    post,
    raw_jwe,
    raw_jws,
    republish_registry,
    rewrite_contract,
    standard_header,
    tamper_signature,
    wait_for_grant,
)

MIB = 1024 * 1024
REQUEST_TYP = "exchange-request+jwt"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client session per test."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def peer(network: LiveNetwork) -> Peer:
    """social-benefits speaking to tax-authority about its income contract."""
    return Peer(network)


@pytest.fixture
def subject(network: LiveNetwork) -> str:
    """A subject the tax backend knows."""
    return str(network.demo["subjects"][0])


@pytest.fixture
async def token(peer: Peer, session: aiohttp.ClientSession) -> str:
    """A fresh access token for the income contract."""
    return await peer.token(session)


def _grant(contract: str = INCOME_CONTRACT) -> Grant:
    return Grant(
        contract=contract,
        service=SERVICE,
        purpose=PURPOSE,
        fields=("national_id", "year", "taxable_income"),
        contract_version=1,
    )


def _segments(compact: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, payload, _ = compact.split(".")
    return json.loads(b64url_decode(head)), json.loads(b64url_decode(payload))


# -- /v1/token -------------------------------------------------------------------


class TestTokenGrant:
    """A valid token request is answered as protocol 3.1 and 3.2 say."""

    async def test_success_shape(self, peer: Peer, session: aiohttp.ClientSession) -> None:
        """200 JSON, no-store, Bearer, 300 s and G = the request plus fields and version."""
        answer = await peer.token_request(session)
        assert answer.status == 200
        assert answer.content_type == "application/json"
        assert "no-store" in answer.headers["Cache-Control"]
        body = answer.json
        assert set(body) == {"access_token", "token_type", "expires_in", "authorization_details"}
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 300
        assert body["authorization_details"] == [
            {
                "type": "data_exchange",
                "contract": INCOME_CONTRACT,
                "service": SERVICE,
                "purpose": PURPOSE,
                "fields": ["national_id", "year", "taxable_income"],
                "contract_version": 1,
            }
        ]

    async def test_access_token_claims(self, peer: Peer, session: aiohttp.ClientSession) -> None:
        """The token is an at+jwt of the provider, bound to the assertion's key (cnf.jkt)."""
        body = (await peer.token_request(session)).json
        header, claims = _segments(body["access_token"])
        provider_key = peer.keys_of(TAX).signing
        assert header == {"typ": ACCESS_TOKEN_TYP, "alg": provider_key.alg, "kid": provider_key.kid}
        assert claims["iss"] == claims["aud"] == TAX
        assert claims["sub"] == claims["client_id"] == BENEFITS
        assert 0 < claims["exp"] - claims["iat"] <= 300
        assert abs(claims["iat"] - time.time()) < 30
        assert len(b64url_decode(claims["jti"])) >= 16
        assert claims["cnf"] == {"jkt": peer.keys.signing.kid}
        assert claims["authorization_details"] == body["authorization_details"]

    async def test_ed25519_alg_name_is_accepted(
        self, peer: Peer, session: aiohttp.ClientSession
    ) -> None:
        """Receivers must accept the RFC 9864 name ``Ed25519`` for an Ed25519 key."""
        key = peer.keys.signing
        header = standard_header(CLIENT_ASSERTION_TYP, key, alg="Ed25519")
        assertion = raw_jws(header, _assertion_claims(), key)
        answer = await peer.token_request(session, peer.form(assertion))
        assert answer.status == 200, answer.raw

    async def test_typ_is_compared_leniently(
        self, peer: Peer, session: aiohttp.ClientSession
    ) -> None:
        """``typ`` is compared case-insensitively without an ``application/`` prefix."""
        key = peer.keys.signing
        header = standard_header("application/Client-Assertion+JWT", key)
        answer = await peer.token_request(
            session, peer.form(raw_jws(header, _assertion_claims(), key))
        )
        assert answer.status == 200, answer.raw

    async def test_grant_is_audited(self, peer: Peer, session: aiohttp.ClientSession) -> None:
        """A token grant writes one ``token`` record naming consumer, contract and purpose."""
        before = len(audit_records(audit_path(peer.net, TAX)))
        assert (await peer.token_request(session)).status == 200
        records = audit_records(audit_path(peer.net, TAX))[before:]
        assert len(records) == 1
        record = json.loads(records[0][1])
        assert record["kind"] == "token"
        assert record["outcome"] == "ok"
        assert record["consumer"] == BENEFITS
        assert record["contract"] == INCOME_CONTRACT
        assert record["purpose"] == PURPOSE


def _assertion_claims(**overrides: Any) -> dict[str, Any]:
    return assertion_claims(int(time.time()), **overrides)


class TestTokenRequestErrors:
    """Malformed requests: ``invalid_request`` / ``unsupported_grant_type``, never problem+json."""

    @pytest.mark.parametrize(
        "parameter",
        ["grant_type", "client_assertion_type", "client_assertion", "authorization_details"],
    )
    async def test_missing_parameter(
        self, peer: Peer, session: aiohttp.ClientSession, parameter: str
    ) -> None:
        """Each of the four parameters is required."""
        answer = await peer.token_request(session, peer.form(**{parameter: DROP}))
        assert_token_error(answer, "invalid_request", 400)

    @pytest.mark.parametrize(
        "parameter", ["grant_type", "client_assertion", "authorization_details"]
    )
    async def test_repeated_parameter(
        self, peer: Peer, session: aiohttp.ClientSession, parameter: str
    ) -> None:
        """A parameter given twice is refused, even with the same value."""
        form = peer.form()
        form.append(next(pair for pair in form if pair[0] == parameter))
        assert_token_error(await peer.token_request(session, form), "invalid_request", 400)

    async def test_empty_parameter(self, peer: Peer, session: aiohttp.ClientSession) -> None:
        """An empty value counts as missing."""
        answer = await peer.token_request(session, peer.form(client_assertion=""))
        assert_token_error(answer, "invalid_request", 400)

    @pytest.mark.parametrize("grant_type", ["authorization_code", "password", "CLIENT_CREDENTIALS"])
    async def test_wrong_grant_type(
        self, peer: Peer, session: aiohttp.ClientSession, grant_type: str
    ) -> None:
        """Only ``client_credentials`` is granted."""
        answer = await peer.token_request(session, peer.form(grant_type=grant_type))
        assert_token_error(answer, "unsupported_grant_type", 400)

    @pytest.mark.parametrize(
        "value",
        [
            "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
            "jwt-bearer",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer ",
        ],
    )
    async def test_wrong_client_assertion_type(
        self, peer: Peer, session: aiohttp.ClientSession, value: str
    ) -> None:
        """``client_assertion_type`` must be the jwt-bearer URN exactly."""
        answer = await peer.token_request(session, peer.form(client_assertion_type=value))
        assert_token_error(answer, "invalid_request", 400)

    @pytest.mark.parametrize(
        "value",
        [
            "not json",
            json.dumps({"type": "data_exchange", "contract": INCOME_CONTRACT}),
            "[]",
            "[1]",
            '["data_exchange"]',
            "null",
            json.dumps([json.loads(details())[0], json.loads(details())[0]]),
            json.dumps(
                [{"type": "data_exchange", "contract": INCOME_CONTRACT, "service": SERVICE}]
            ),
            json.dumps(
                [{"type": "data_exchange", "contract": 7, "service": SERVICE, "purpose": PURPOSE}]
            ),
            "[" + "x" * 5000 + "]",
        ],
        ids=[
            "not-json",
            "object",
            "empty-array",
            "number",
            "string",
            "null",
            "two-objects",
            "no-purpose",
            "contract-not-string",
            "too-large",
        ],
    )
    async def test_authorization_details_not_one_object(
        self, peer: Peer, session: aiohttp.ClientSession, value: str
    ) -> None:
        """``authorization_details`` must be a JSON array of one well-formed object."""
        answer = await peer.token_request(session, peer.form(authorization_details=value))
        assert_token_error(answer, "invalid_request", 400)

    @pytest.mark.parametrize(
        ("content_type", "body"),
        [
            ("application/json", b'{"grant_type": "client_credentials"}'),
            ("application/x-www-form-urlencoded", b"grant_type=\xff\xfe"),
        ],
        ids=["json-body", "not-utf8"],
    )
    async def test_not_a_form(
        self, peer: Peer, session: aiohttp.ClientSession, content_type: str, body: bytes
    ) -> None:
        """The body must be a UTF-8 form."""
        answer = await _post_raw(session, peer, body, content_type)
        assert_token_error(answer, "invalid_request", 400)


async def _post_raw(
    session: aiohttp.ClientSession, peer: Peer, body: bytes, content_type: str
) -> Answer:
    return await post(
        session,
        f"{peer.provider_url}/v1/token",
        data=body,
        headers={"Content-Type": content_type},
    )


class TestTokenAuthorizationDetails:
    """Well-formed requests for grants the provider refuses: ``invalid_authorization_details``."""

    @pytest.mark.parametrize(
        "overrides",
        [
            {"type_": "data_access"},
            {"contract": "no-such-contract"},
            {"contract": PERSON_CONTRACT},
            {"contract": TAX_CONTRACT},
            {"contract": EXPIRED_CONTRACT},
            {"purpose": "marketing"},
            {"service": "person-basic"},
        ],
        ids=[
            "type-not-data-exchange",
            "unknown-contract",
            "contract-of-other-agencies-not-loaded",
            "contract-of-other-agencies-loaded-here",
            "expired-contract",
            "purpose-not-allowed",
            "other-service",
        ],
    )
    async def test_refused(
        self, peer: Peer, session: aiohttp.ClientSession, overrides: dict[str, str]
    ) -> None:
        """The grant is refused with 400 invalid_authorization_details."""
        value = details(**overrides)
        answer = await peer.token_request(session, peer.form(authorization_details=value))
        assert_token_error(answer, "invalid_authorization_details", 400)


def _refused_header_assertion(name: str, value: Any) -> Callable[[Peer], str]:
    def build(peer: Peer) -> str:
        key = peer.keys.signing
        header = standard_header(CLIENT_ASSERTION_TYP, key, **{name: value})
        return raw_jws(header, _assertion_claims(), key)

    return build


def _bad_signature(peer: Peer) -> str:
    return tamper_signature(peer.assertion())


def _wrong_typ(peer: Peer) -> str:
    key = peer.keys.signing
    return raw_jws(standard_header("JWT", key), _assertion_claims(), key)


def _access_token_typ(peer: Peer) -> str:
    key = peer.keys.signing
    return raw_jws(standard_header(ACCESS_TOKEN_TYP, key), _assertion_claims(), key)


def _no_typ(peer: Peer) -> str:
    key = peer.keys.signing
    return raw_jws(standard_header(CLIENT_ASSERTION_TYP, key, typ=DROP), _assertion_claims(), key)


def _alg_none(peer: Peer) -> str:
    header = standard_header(CLIENT_ASSERTION_TYP, peer.keys.signing, alg="none")
    return raw_jws(header, _assertion_claims(), signature=b"")


def _hs256_with_raw_public_key(peer: Peer) -> str:
    key = peer.keys.signing
    secret = key.public.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hmac_jws(
        standard_header(CLIENT_ASSERTION_TYP, key, alg="HS256"), _assertion_claims(), secret
    )


def _hs256_with_public_pem(peer: Peer) -> str:
    key = peer.keys.signing
    secret = key.public.key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hmac_jws(
        standard_header(CLIENT_ASSERTION_TYP, key, alg="HS256"), _assertion_claims(), secret
    )


def _es256_header_on_ed25519(peer: Peer) -> str:
    key = peer.keys.signing
    return raw_jws(
        standard_header(CLIENT_ASSERTION_TYP, key, alg="ES256"), _assertion_claims(), key
    )


def _jwk_of_attacker(peer: Peer) -> str:
    attacker = peer.revoked.signing
    header = standard_header(
        CLIENT_ASSERTION_TYP, attacker, kid=peer.keys.signing.kid, jwk=dict(attacker.public.jwk)
    )
    return raw_jws(header, _assertion_claims(), attacker)


def _kid_of_another_agency(peer: Peer) -> str:
    other = peer.keys_of(POPULATION).signing
    return raw_jws(standard_header(CLIENT_ASSERTION_TYP, other), _assertion_claims(), other)


def _kid_not_in_registry(peer: Peer) -> str:
    revoked = peer.revoked.signing
    return raw_jws(standard_header(CLIENT_ASSERTION_TYP, revoked), _assertion_claims(), revoked)


def _claims_variant(**overrides: Any) -> Callable[[Peer], str]:
    def build(peer: Peer) -> str:
        return peer.assertion(**overrides)

    return build


def _float_iat(peer: Peer) -> str:
    key = peer.keys.signing
    claims = _assertion_claims()
    payload = json.dumps({**claims, "iat": claims["iat"] + 0.5}).encode()
    return raw_jws(standard_header(CLIENT_ASSERTION_TYP, key), payload, key)


def _duplicate_member(peer: Peer) -> str:
    key = peer.keys.signing
    claims = _assertion_claims()
    text = json.dumps(claims)[:-1] + ', "aud": "' + TAX + '"}'
    return raw_jws(standard_header(CLIENT_ASSERTION_TYP, key), text.encode(), key)


def _now() -> int:
    return int(time.time())


ASSERTION_ATTACKS: dict[str, Callable[[Peer], str]] = {
    "bad-signature": _bad_signature,
    "wrong-typ": _wrong_typ,
    "access-token-typ": _access_token_typ,
    "no-typ": _no_typ,
    "alg-none": _alg_none,
    "hs256-raw-public-key": _hs256_with_raw_public_key,
    "hs256-public-pem": _hs256_with_public_pem,
    "es256-header-on-ed25519-key": _es256_header_on_ed25519,
    "jku-header": _refused_header_assertion("jku", "https://attacker.example/jwks.json"),
    "jwk-header-own-key": lambda peer: _refused_header_assertion(
        "jwk", dict(peer.keys.signing.public.jwk)
    )(peer),
    "jwk-header-attacker-key": _jwk_of_attacker,
    "x5u-header": _refused_header_assertion("x5u", "https://attacker.example/cert.pem"),
    "x5c-header": _refused_header_assertion("x5c", ["MIIB"]),
    "x5t-header": _refused_header_assertion("x5t", "AAAA"),
    "x5t#S256-header": _refused_header_assertion("x5t#S256", "AAAA"),
    "crit-header": _refused_header_assertion("crit", ["exp"]),
    "b64-header": _refused_header_assertion("b64", True),
    "zip-header": _refused_header_assertion("zip", "DEF"),
    "kid-of-another-agency": _kid_of_another_agency,
    "kid-not-in-registry": _kid_not_in_registry,
    "no-kid": lambda peer: raw_jws(
        standard_header(CLIENT_ASSERTION_TYP, peer.keys.signing, kid=DROP),
        _assertion_claims(),
        peer.keys.signing,
    ),
    "iss-differs-from-sub": _claims_variant(sub=POPULATION),
    "unknown-iss": lambda peer: peer.assertion(iss="no-such-agency", sub="no-such-agency"),
    "wrong-aud": _claims_variant(aud=POPULATION),
    "aud-as-array": _claims_variant(aud=[TAX]),
    "expired": lambda peer: peer.assertion(iat=_now() - 400, exp=_now() - 340),
    "issued-in-future": lambda peer: peer.assertion(iat=_now() + 400, exp=_now() + 460),
    "lifetime-over-60s": lambda peer: peer.assertion(exp=_now() + 600),
    "not-yet-valid": _claims_variant(nbf=_now() + 3600),
    "missing-jti": _claims_variant(jti=DROP),
    "missing-exp": _claims_variant(exp=DROP),
    "iat-as-string": _claims_variant(iat=str(_now())),
    "float-iat": _float_iat,
    "duplicate-member": _duplicate_member,
    "not-a-jws": lambda peer: "not-a-jws",
    "jwe-instead-of-jws": lambda peer: raw_jwe(peer.assertion().encode(), peer.recipient),
}


class TestClientAssertion:
    """Any failure of the client assertion is 401 ``invalid_client``."""

    @pytest.mark.parametrize("attack", sorted(ASSERTION_ATTACKS))
    async def test_refused(self, peer: Peer, session: aiohttp.ClientSession, attack: str) -> None:
        """The assertion is refused; the rest of the request is valid."""
        assertion = ASSERTION_ATTACKS[attack](peer)
        answer = await peer.token_request(session, peer.form(assertion))
        assert_token_error(answer, "invalid_client", 401)

    async def test_assertion_is_single_use(
        self, peer: Peer, session: aiohttp.ClientSession
    ) -> None:
        """The same assertion a second time is refused."""
        form = peer.form()
        assert (await peer.token_request(session, form)).status == 200
        assert_token_error(await peer.token_request(session, form), "invalid_client", 401)

    async def test_jti_is_single_use_across_assertions(
        self, peer: Peer, session: aiohttp.ClientSession
    ) -> None:
        """The replay key is (iss, jti): a new assertion reusing a jti is refused."""
        jti = b64url(os.urandom(16))
        first = peer.assertion(jti=jti)
        assert (await peer.token_request(session, peer.form(first))).status == 200
        second = peer.assertion(jti=jti, iat=_now() - 1, exp=_now() + 50)
        assert_token_error(
            await peer.token_request(session, peer.form(second)), "invalid_client", 401
        )


class TestTokenRefusalsAreAudited:
    """Every refusal on /v1/token writes one audit record (protocol 6)."""

    @pytest.mark.parametrize(
        "case",
        [
            "bad-signature",
            "missing-parameter",
            "wrong-purpose",
            "not-a-form",
        ],
    )
    async def test_one_record_per_refusal(
        self, peer: Peer, session: aiohttp.ClientSession, case: str
    ) -> None:
        """The provider's log grows by one ``refusal`` record."""
        path = audit_path(peer.net, TAX)
        before = len(audit_records(path))
        if case == "bad-signature":
            answer = await peer.token_request(session, peer.form(_bad_signature(peer)))
        elif case == "missing-parameter":
            answer = await peer.token_request(session, peer.form(grant_type=DROP))
        elif case == "wrong-purpose":
            value = details(purpose="marketing")
            answer = await peer.token_request(session, peer.form(authorization_details=value))
        else:
            answer = await _post_raw(session, peer, b"{}", "application/json")
        assert answer.status in (400, 401)
        records = audit_records(path)[before:]
        assert len(records) == 1, records
        record = json.loads(records[0][1])
        assert record["kind"] == "refusal"
        assert record["problem"] == answer.json["error"]


# -- /v1/services/{service}: before the checks ------------------------------------------


class TestBeforeTheChecks:
    """``unknown-service`` and ``payload-too-large`` come before check 1."""

    async def test_unknown_service_first(self, peer: Peer, session: aiohttp.ClientSession) -> None:
        """An unknown service is 404 even with a garbage token, type and body."""
        answer = await peer.send(
            session, b"garbage", "garbage", content_type="text/plain", service="no-such-service"
        )
        assert_problem(answer, "unknown-service", 404)

    async def test_unknown_service_with_valid_request(
        self, peer: Peer, session: aiohttp.ClientSession, token: str, subject: str
    ) -> None:
        """A valid request for a service the provider does not offer is still 404."""
        sealed = peer.seal(peer.claims(token, subject, svc="person-basic"))
        answer = await peer.send(session, sealed.jwe, token, service="person-basic")
        assert_problem(answer, "unknown-service", 404)

    async def test_too_large_by_content_length(
        self, peer: Peer, session: aiohttp.ClientSession
    ) -> None:
        """A body over 1 MiB is 413 before the token is looked at."""
        answer = await peer.send(session, b"a" * (MIB + 1), None)
        assert answer.status == 413
        assert_problem(answer, "payload-too-large", 413)

    async def test_too_large_while_reading(
        self, peer: Peer, session: aiohttp.ClientSession
    ) -> None:
        """A chunked body (no Content-Length) is cut off at the limit too."""
        answer = await peer.send(session, pieces(b"a" * (MIB + 1), count=4), "garbage")
        assert_problem(answer, "payload-too-large", 413)

    async def test_exactly_the_limit_is_not_too_large(
        self, peer: Peer, session: aiohttp.ClientSession
    ) -> None:
        """1 MiB exactly passes the size check and fails the next one (token)."""
        answer = await peer.send(session, b"a" * MIB, None)
        assert_problem(answer, "token-invalid", 401)


# -- check 1: token-invalid -------------------------------------------------------


def _expired_token(peer: Peer) -> str:
    return issue_access_token(
        provider=TAX,
        key=peer.keys_of(TAX).signing,
        consumer=BENEFITS,
        jkt=peer.keys.signing.kid,
        grant=_grant(),
        now=_now() - 400,
    )


def _token_with_typ(peer: Peer, typ: str) -> str:
    key = peer.keys_of(TAX).signing
    now = _now()
    claims = {
        "iss": TAX,
        "sub": BENEFITS,
        "client_id": BENEFITS,
        "aud": TAX,
        "iat": now,
        "exp": now + 300,
        "jti": b64url(os.urandom(16)),
        "cnf": {"jkt": peer.keys.signing.kid},
        "authorization_details": [_grant().to_json()],
    }
    return raw_jws(standard_header(typ, key), claims, key)


def _token_signed_by(peer: Peer, agency: str) -> str:
    return issue_access_token(
        provider=TAX,
        key=peer.keys_of(agency).signing,
        consumer=BENEFITS,
        jkt=peer.keys.signing.kid,
        grant=_grant(),
        now=_now(),
    )


def _token_for_audience(peer: Peer, audience: str) -> str:
    return issue_access_token(
        provider=audience,
        key=peer.keys_of(TAX).signing,
        consumer=BENEFITS,
        jkt=peer.keys.signing.kid,
        grant=_grant(),
        now=_now(),
    )


class TestCheck1TokenInvalid:
    """Check 1: a valid access token of this provider is present."""

    @pytest.mark.parametrize(
        "case",
        [
            "missing",
            "empty-bearer",
            "basic-scheme",
            "garbage",
            "tampered",
            "expired",
            "wrong-typ",
            "client-assertion-typ",
            "signed-by-consumer",
            "other-audience",
            "other-provider",
        ],
    )
    async def test_refused(
        self,
        peer: Peer,
        session: aiohttp.ClientSession,
        token: str,
        subject: str,
        case: str,
    ) -> None:
        """401 token-invalid, though the envelope is valid for the real token."""
        sealed = peer.seal(peer.claims(token, subject))
        headers: dict[str, str] = {"Content-Type": "application/jose"}
        bad: str | None
        if case == "other-provider":
            other = Peer(
                peer.net, provider=POPULATION, service="person-basic", contract=PERSON_CONTRACT
            )
            bad = await other.token(session)
        else:
            bad = {
                "missing": None,
                "empty-bearer": "",
                "basic-scheme": None,
                "garbage": "garbage",
                "tampered": tamper_signature(token),
                "expired": _expired_token(peer),
                "wrong-typ": _token_with_typ(peer, "JWT"),
                "client-assertion-typ": _token_with_typ(peer, CLIENT_ASSERTION_TYP),
                "signed-by-consumer": _token_signed_by(peer, BENEFITS),
                "other-audience": _token_for_audience(peer, POPULATION),
            }[case]
        if case == "basic-scheme":
            headers["Authorization"] = f"Basic {token}"
        elif bad is not None:
            headers["Authorization"] = f"Bearer {bad}"
        answer = await post(session, peer.service_url, data=sealed.jwe, headers=headers)
        assert_problem(answer, "token-invalid", 401)


# -- check 2: envelope-invalid ----------------------------------------------------


def _inner(peer: Peer, claims: dict[str, Any], **header: Any) -> str:
    key = peer.keys.signing
    return raw_jws(standard_header(REQUEST_TYP, key, **header), claims, key)


def _payload_inner(peer: Peer, payload: bytes) -> str:
    key = peer.keys.signing
    return raw_jws(standard_header(REQUEST_TYP, key), payload, key)


ENVELOPE_CASES: dict[str, Callable[[Peer, str, str], str]] = {
    "not-a-jwe": lambda peer, token, subject: "hello",
    "jws-instead-of-jwe": lambda peer, token, subject: peer.seal(peer.claims(token, subject)).jws,
    "jwe-to-another-agency": lambda peer, token, subject: (
        peer.seal(
            peer.claims(token, subject), recipient=peer.net.registry.encryption_key(POPULATION)
        ).jwe
    ),
    "jwe-our-kid-other-key": lambda peer, token, subject: raw_jwe(
        _inner(peer, peer.claims(token, subject)).encode(),
        peer.net.registry.encryption_key(POPULATION),  # type: ignore[arg-type]
        kid=peer.recipient.kid,
    ),
    "jwe-wrong-typ": lambda peer, token, subject: raw_jwe(
        _inner(peer, peer.claims(token, subject)).encode(),
        peer.recipient,
        typ="exchange-response+jwe",
    ),
    "jwe-no-typ": lambda peer, token, subject: raw_jwe(
        _inner(peer, peer.claims(token, subject)).encode(), peer.recipient, typ=DROP
    ),
    "jwe-zip": lambda peer, token, subject: raw_jwe(
        _inner(peer, peer.claims(token, subject)).encode(), peer.recipient, zip="DEF"
    ),
    "jwe-jku": lambda peer, token, subject: raw_jwe(
        _inner(peer, peer.claims(token, subject)).encode(),
        peer.recipient,
        jku="https://attacker.example/jwks",
    ),
    "jwe-crit": lambda peer, token, subject: raw_jwe(
        _inner(peer, peer.claims(token, subject)).encode(), peer.recipient, crit=["exp"]
    ),
    "jwe-enc-a128gcm": lambda peer, token, subject: raw_jwe(
        _inner(peer, peer.claims(token, subject)).encode(), peer.recipient, enc="A128GCM"
    ),
    "jwe-alg-dir": lambda peer, token, subject: raw_jwe(
        _inner(peer, peer.claims(token, subject)).encode(), peer.recipient, alg="dir"
    ),
    "jwe-no-epk": lambda peer, token, subject: raw_jwe(
        _inner(peer, peer.claims(token, subject)).encode(), peer.recipient, epk=DROP
    ),
    "plaintext-not-a-jws": lambda peer, token, subject: raw_jwe(b"hello", peer.recipient),
    "inner-kid-not-jkt": lambda peer, token, subject: (
        peer.seal(peer.claims(token, subject), signing_key=peer.revoked.signing).jwe
    ),
    "inner-no-kid": lambda peer, token, subject: raw_jwe(
        _inner(peer, peer.claims(token, subject), kid=DROP).encode(), peer.recipient
    ),
    "inner-wrong-typ": lambda peer, token, subject: raw_jwe(
        _inner(peer, peer.claims(token, subject), typ="JWT").encode(), peer.recipient
    ),
    "inner-response-typ": lambda peer, token, subject: raw_jwe(
        _inner(peer, peer.claims(token, subject), typ="exchange-response+jwt").encode(),
        peer.recipient,
    ),
    "inner-alg-none": lambda peer, token, subject: raw_jwe(
        raw_jws(
            standard_header(REQUEST_TYP, peer.keys.signing, alg="none"),
            peer.claims(token, subject),
            signature=b"",
        ).encode(),
        peer.recipient,
    ),
    "inner-hs256": lambda peer, token, subject: raw_jwe(
        hmac_jws(
            standard_header(REQUEST_TYP, peer.keys.signing, alg="HS256"),
            peer.claims(token, subject),
            peer.keys.signing.public.key.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            ),
        ).encode(),
        peer.recipient,
    ),
    "inner-crit": lambda peer, token, subject: raw_jwe(
        _inner(peer, peer.claims(token, subject), crit=["svc"]).encode(), peer.recipient
    ),
    "inner-jwk": lambda peer, token, subject: raw_jwe(
        _inner(peer, peer.claims(token, subject), jwk=dict(peer.keys.signing.public.jwk)).encode(),
        peer.recipient,
    ),
    "inner-zip": lambda peer, token, subject: raw_jwe(
        _inner(peer, peer.claims(token, subject), zip="DEF").encode(), peer.recipient
    ),
    "payload-not-object": lambda peer, token, subject: raw_jwe(
        _payload_inner(peer, b"[1, 2]").encode(), peer.recipient
    ),
    "payload-float": lambda peer, token, subject: raw_jwe(
        _payload_inner(
            peer,
            json.dumps({**peer.claims(token, subject), "iat": _now() + 0.5}).encode(),
        ).encode(),
        peer.recipient,
    ),
    "payload-float-in-body": lambda peer, token, subject: raw_jwe(
        _payload_inner(
            peer,
            json.dumps(
                peer.claims(token, subject, body={"national_id": subject, "year": 2025.0})
            ).encode(),
        ).encode(),
        peer.recipient,
    ),
    "payload-duplicate-member": lambda peer, token, subject: raw_jwe(
        _payload_inner(
            peer, (json.dumps(peer.claims(token, subject))[:-1] + ', "svc": "x"}').encode()
        ).encode(),
        peer.recipient,
    ),
    "body-not-object": lambda peer, token, subject: (
        peer.seal(peer.claims(token, subject, body=[subject])).jwe
    ),
    "subject-not-string": lambda peer, token, subject: (
        peer.seal(peer.claims(token, subject, subject=7)).jwe
    ),
    "end-user-not-string": lambda peer, token, subject: (
        peer.seal(peer.claims(token, subject, end_user=17)).jwe
    ),
    "iat-as-string": lambda peer, token, subject: (
        peer.seal(peer.claims(token, subject, iat=str(_now()))).jwe
    ),
    "exp-as-bool": lambda peer, token, subject: (
        peer.seal(peer.claims(token, subject, exp=True)).jwe
    ),
}

REQUIRED_CLAIMS = (
    "iss",
    "aud",
    "jti",
    "iat",
    "exp",
    "ath",
    "svc",
    "contract",
    "purpose",
    "subject",
    "client",
    "body",
)


class TestCheck2EnvelopeInvalid:
    """Check 2: a JWE to us, wrapping a JWS by the token's key, with every claim typed."""

    @pytest.mark.parametrize("case", sorted(ENVELOPE_CASES))
    async def test_refused(
        self,
        peer: Peer,
        session: aiohttp.ClientSession,
        token: str,
        subject: str,
        case: str,
    ) -> None:
        """400 envelope-invalid."""
        body = ENVELOPE_CASES[case](peer, token, subject)
        assert_problem(await peer.send(session, body, token), "envelope-invalid", 400)

    @pytest.mark.parametrize("claim", REQUIRED_CLAIMS)
    async def test_missing_claim(
        self,
        peer: Peer,
        session: aiohttp.ClientSession,
        token: str,
        subject: str,
        claim: str,
    ) -> None:
        """Every claim of 3.3 but ``end_user`` is required."""
        sealed = peer.seal(peer.claims(token, subject, **{claim: DROP}))
        assert_problem(await peer.send(session, sealed.jwe, token), "envelope-invalid", 400)

    @pytest.mark.parametrize(
        "content_type", [None, "application/json", "text/plain", "application/jose+json"]
    )
    async def test_wrong_content_type(
        self,
        peer: Peer,
        session: aiohttp.ClientSession,
        token: str,
        subject: str,
        content_type: str | None,
    ) -> None:
        """A valid JWE with the wrong (or a default) media type is refused."""
        sealed = peer.seal(peer.claims(token, subject))
        answer = await peer.send(session, sealed.jwe, token, content_type=content_type)
        assert_problem(answer, "envelope-invalid", 400)

    async def test_hand_built_jwe_is_accepted(
        self, peer: Peer, session: aiohttp.ClientSession, token: str, subject: str
    ) -> None:
        """The raw JWE builder makes standard objects: without a fault it is served."""
        sealed = peer.seal(peer.claims(token, subject))
        answer = await peer.send(session, raw_jwe(sealed.jws.encode(), peer.recipient), token)
        assert answer.status == 200, answer.raw

    @pytest.mark.parametrize("claim", ["subject", "end_user", "client"])
    async def test_lone_surrogate_in_claim(
        self,
        peer: Peer,
        session: aiohttp.ClientSession,
        token: str,
        subject: str,
        claim: str,
    ) -> None:
        """A payload with an escaped lone surrogate is not UTF-8 JSON text: envelope-invalid."""
        bad = "\ud800"
        overrides: dict[str, Any] = {claim: bad}
        if claim == "subject":
            overrides["body"] = {"national_id": bad, "year": 2025}
        claims = peer.claims(token, subject, **overrides)
        payload = json.dumps(claims).encode("ascii")  # "\ud800" as an ASCII escape
        jwe = raw_jwe(_payload_inner(peer, payload).encode(), peer.recipient)
        assert_problem(await peer.send(session, jwe, token), "envelope-invalid", 400)


# -- checks 3 to 8 ---------------------------------------------------------------


class TestCheck3SignatureInvalid:
    """Check 3: the inner JWS verifies with the key the token is bound to."""

    async def test_forged_kid(
        self, peer: Peer, session: aiohttp.ClientSession, token: str, subject: str
    ) -> None:
        """Signed by another key, with the token's jkt as kid: 401 signature-invalid."""
        forger = peer.revoked.signing
        header = standard_header(REQUEST_TYP, forger, kid=peer.keys.signing.kid)
        jws = raw_jws(header, peer.claims(token, subject), forger)
        answer = await peer.send(session, raw_jwe(jws.encode(), peer.recipient), token)
        assert_problem(answer, "signature-invalid", 401)

    async def test_tampered_signature(
        self, peer: Peer, session: aiohttp.ClientSession, token: str, subject: str
    ) -> None:
        """A flipped signature bit: 401 signature-invalid."""
        jws = tamper_signature(peer.seal(peer.claims(token, subject)).jws)
        answer = await peer.send(session, raw_jwe(jws.encode(), peer.recipient), token)
        assert_problem(answer, "signature-invalid", 401)


class TestCheck3AgencySuspended:
    """Check 3 also asks the registry: the signer must be an active agency now."""

    async def test_consumer_suspended_after_its_token_was_issued(
        self, fresh_network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """A token from before the suspension no longer helps: 401 signature-invalid."""
        peer = Peer(fresh_network)
        subject = str(fresh_network.demo["subjects"][0])
        token = await peer.token(session)
        republish_registry(fresh_network, {BENEFITS: "suspended"})
        refused = await wait_for_grant(peer, session, lambda answer: answer.status != 200)
        assert_token_error(refused, "invalid_client", 401)
        sealed = peer.seal(peer.claims(token, subject))
        assert_problem(await peer.send(session, sealed.jwe, token), "signature-invalid", 401)


class TestCheck4BindingMismatch:
    """Check 4: the message belongs to its token, its path and its body."""

    @pytest.mark.parametrize(
        "case",
        [
            "ath-of-another-token",
            "iss",
            "aud",
            "svc",
            "contract",
            "purpose",
            "subject-differs-from-body",
            "subject-missing-from-body",
        ],
    )
    async def test_refused(
        self,
        peer: Peer,
        session: aiohttp.ClientSession,
        token: str,
        subject: str,
        case: str,
    ) -> None:
        """401 binding-mismatch."""
        other_subject = str(peer.net.demo["subjects"][1])
        cases: dict[str, dict[str, Any]] = {
            "iss": {"iss": POPULATION},
            "aud": {"aud": POPULATION},
            "svc": {"svc": "person-basic"},
            "contract": {"contract": EXPIRED_CONTRACT},
            "purpose": {"purpose": "marketing"},
            "subject-differs-from-body": {"body": {"national_id": other_subject, "year": 2025}},
            "subject-missing-from-body": {"body": {"year": 2025}},
        }
        overrides = dict(cases.get(case, {}))
        if case == "ath-of-another-token":
            overrides["ath"] = token_hash(await peer.token(session))
        sealed = peer.seal(peer.claims(token, subject, **overrides))
        assert_problem(await peer.send(session, sealed.jwe, token), "binding-mismatch", 401)


class TestCheck5StaleMessage:
    """Check 5: the message is fresh (L = 120 s, skew 30 s)."""

    @pytest.mark.parametrize(
        ("iat", "exp"),
        [(-400, -280), (400, 520), (0, 600), (0, 0), (0, -10), (-200, -31)],
        ids=[
            "expired",
            "future",
            "lifetime-over-120s",
            "exp-equals-iat",
            "exp-before-iat",
            "exp-31s-ago",
        ],
    )
    async def test_refused(
        self,
        peer: Peer,
        session: aiohttp.ClientSession,
        token: str,
        subject: str,
        *,
        iat: int,
        exp: int,
    ) -> None:
        """401 stale-message."""
        now = _now()
        sealed = peer.seal(peer.claims(token, subject, iat=now + iat, exp=now + exp))
        assert_problem(await peer.send(session, sealed.jwe, token), "stale-message", 401)

    async def test_within_skew_is_fresh(
        self, peer: Peer, session: aiohttp.ClientSession, token: str, subject: str
    ) -> None:
        """Issued 20 s in the future (within the 30 s skew) is accepted."""
        now = _now()
        sealed = peer.seal(peer.claims(token, subject, iat=now + 20, exp=now + 100))
        assert (await peer.send(session, sealed.jwe, token)).status == 200


class TestCheck6Replay:
    """Check 6: (iss, jti) is used once, whatever the outcome."""

    async def test_same_jwe_twice(
        self, peer: Peer, session: aiohttp.ClientSession, token: str, subject: str
    ) -> None:
        """The second send of a served request is 409 replay."""
        sealed = peer.seal(peer.claims(token, subject))
        assert (await peer.send(session, sealed.jwe, token)).status == 200
        assert_problem(await peer.send(session, sealed.jwe, token), "replay", 409)

    async def test_same_jti_new_envelope(
        self, peer: Peer, session: aiohttp.ClientSession, token: str, subject: str
    ) -> None:
        """The replay key is the jti, not the envelope bytes."""
        claims = peer.claims(token, subject)
        assert (await peer.send(session, peer.seal(claims).jwe, token)).status == 200
        again = peer.seal({**claims, "iat": claims["iat"] - 1, "exp": claims["exp"] - 1})
        assert_problem(await peer.send(session, again.jwe, token), "replay", 409)

    async def test_jti_spent_by_a_refusal_after_check_6(
        self, peer: Peer, session: aiohttp.ClientSession, token: str, subject: str
    ) -> None:
        """A message refused at check 7 cannot be sent again: its jti is spent."""
        sealed = peer.seal(peer.claims(token, subject, end_user=DROP))
        assert_problem(await peer.send(session, sealed.jwe, token), "contract-denied", 403)
        assert_problem(await peer.send(session, sealed.jwe, token), "replay", 409)


class TestCheck7ContractDenied:
    """Check 7: the contract is in force at the token's version and allows the request."""

    @pytest.mark.parametrize("end_user", [DROP, ""])
    async def test_end_user_required(
        self,
        peer: Peer,
        session: aiohttp.ClientSession,
        token: str,
        subject: str,
        end_user: object,
    ) -> None:
        """The demo contracts require an end user: 403 contract-denied."""
        sealed = peer.seal(peer.claims(token, subject, end_user=end_user))
        assert_problem(await peer.send(session, sealed.jwe, token), "contract-denied", 403)

    async def test_larger_than_the_contract_allows(
        self, peer: Peer, session: aiohttp.ClientSession, token: str, subject: str
    ) -> None:
        """A JWE over max_request_bytes (64 KiB) but under 1 MiB: 413 at check 7."""
        body = {"national_id": subject, "year": 2025, "pad": "x" * 70_000}
        jwe = peer.seal(peer.claims(token, subject, body=body)).jwe.encode()
        assert 65_536 < len(jwe) < MIB
        headers = {"Content-Length": str(len(jwe))}
        answer = await peer.send(session, pieces(jwe), token, headers=headers)
        assert_problem(answer, "payload-too-large", 413)


class TestSuccess:
    """A request that passes every check is answered per 3.4."""

    async def test_served(
        self, peer: Peer, session: aiohttp.ClientSession, token: str, subject: str
    ) -> None:
        """200 application/jose; exactly the contract's fields; an audit index."""
        sealed = peer.seal(peer.claims(token, subject))
        answer = await peer.send(session, sealed.jwe, token)
        assert answer.status == 200, answer.raw
        assert answer.content_type == "application/jose"
        assert "no-store" in answer.headers.get("Cache-Control", "")
        header = json.loads(b64url_decode(answer.raw.decode().split(".")[0]))
        assert header["typ"] == "exchange-response+jwe"
        assert header["kid"] == peer.keys.encryption.kid
        claims = peer.open(answer, sealed)
        assert claims["status"] == 200
        assert claims["fields"] == list(INCOME_FIELDS)
        assert set(claims["body"]) == set(INCOME_FIELDS)
        assert claims["body"]["national_id"] == subject
        assert claims["in_reply_to"] == sealed.jti
        assert claims["req_hash"] == token_hash(sealed.jws)
        audit = claims["audit"]
        assert isinstance(audit["index"], int)
        assert audit["origin"] == f"{TAX}/audit"
        record = audit_record(audit_path(peer.net, TAX), audit["index"])
        assert record["kind"] == "exchange"
        assert record["outcome"] == "ok"
        assert record["jti"] == sealed.jti
        assert record["fields"] == list(INCOME_FIELDS)
        assert subject not in json.dumps(record)

    async def test_no_such_record_is_an_answer(
        self, peer: Peer, session: aiohttp.ClientSession, token: str
    ) -> None:
        """A backend 404 is signed like any other answer, with nothing released."""
        sealed = peer.seal(peer.claims(token, "00000000000"))
        answer = await peer.send(session, sealed.jwe, token)
        assert answer.status == 200
        claims = peer.open(answer, sealed)
        assert claims["status"] == 404
        assert claims["body"] == {}
        assert claims["fields"] == []

    @pytest.mark.parametrize("framing", ["content-length", "chunked"])
    async def test_body_arriving_in_parts(
        self, peer: Peer, session: aiohttp.ClientSession, token: str, subject: str, framing: str
    ) -> None:
        """A valid request whose bytes arrive in two writes is read whole and served."""
        jwe = peer.seal(peer.claims(token, subject)).jwe.encode()
        headers = {"Content-Length": str(len(jwe))} if framing == "content-length" else {}
        answer = await peer.send(session, pieces(jwe), token, headers=headers)
        assert answer.status == 200, answer.raw

    async def test_token_is_reusable(
        self, peer: Peer, session: aiohttp.ClientSession, token: str, subject: str
    ) -> None:
        """One token serves several messages (each with its own jti)."""
        for _ in range(2):
            sealed = peer.seal(peer.claims(token, subject))
            assert (await peer.send(session, sealed.jwe, token)).status == 200

    async def test_lenient_typ_and_ed25519_name(
        self, peer: Peer, session: aiohttp.ClientSession, token: str, subject: str
    ) -> None:
        """``application/``-prefixed, mixed-case typ and alg ``Ed25519`` are accepted."""
        jws = _inner(
            peer,
            peer.claims(token, subject),
            typ="application/Exchange-Request+JWT",
            alg="Ed25519",
        )
        jwe = raw_jwe(jws.encode(), peer.recipient, typ="application/EXCHANGE-REQUEST+JWE")
        assert (await peer.send(session, jwe, token)).status == 200


class TestCheckOrder:
    """A request failing several checks is refused at the first one."""

    @pytest.mark.parametrize(
        ("faults", "expected"),
        [
            (("token", "envelope"), ("token-invalid", 401)),
            (("envelope", "binding"), ("envelope-invalid", 400)),
            (("signature", "binding"), ("signature-invalid", 401)),
            (("binding", "stale"), ("binding-mismatch", 401)),
            (("stale", "end_user"), ("stale-message", 401)),
        ],
        ids=[
            "token+envelope",
            "envelope+binding",
            "signature+binding",
            "binding+stale",
            "stale+end_user",
        ],
    )
    async def test_first_failure_wins(
        self,
        peer: Peer,
        session: aiohttp.ClientSession,
        token: str,
        subject: str,
        *,
        faults: tuple[str, str],
        expected: tuple[str, int],
    ) -> None:
        """The problem of the earliest failing check is reported."""
        now = _now()
        overrides: dict[str, Any] = {}
        if "binding" in faults:
            overrides["purpose"] = "marketing"
        if "stale" in faults:
            overrides.update(iat=now - 400, exp=now - 280)
        if "end_user" in faults:
            overrides["end_user"] = DROP
        if "envelope" in faults:
            overrides["client"] = DROP
        key = peer.revoked.signing if "signature" in faults else peer.keys.signing
        header = standard_header(REQUEST_TYP, key, kid=peer.keys.signing.kid)
        jws = raw_jws(header, peer.claims(token, subject, **overrides), key)
        jwe = raw_jwe(jws.encode(), peer.recipient)
        answer = await peer.send(session, jwe, "garbage" if "token" in faults else token)
        assert_problem(answer, *expected)


# -- changes of contract files (their own networks) ---------------------------------------


class TestContractChanges:
    """Contracts edited while the gateway runs (each test on a network of its own)."""

    async def test_token_of_a_replaced_or_suspended_contract(
        self, fresh_network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """A token issued before the contract changed is refused with contract-denied."""
        peer = Peer(fresh_network)
        subject = str(fresh_network.demo["subjects"][0])
        old = await peer.token(session)
        rewrite_contract(fresh_network, INCOME_CONTRACT, version=2)
        fresh = await wait_for_grant(peer, session, lambda answer: granted_version(answer) == 2)
        sealed = peer.seal(peer.claims(old, subject))
        assert_problem(await peer.send(session, sealed.jwe, old), "contract-denied", 403)
        current = fresh.json["access_token"]
        sealed = peer.seal(peer.claims(current, subject))
        assert (await peer.send(session, sealed.jwe, current)).status == 200

        rewrite_contract(fresh_network, INCOME_CONTRACT, version=3, status="suspended")
        refused = await wait_for_grant(peer, session, lambda answer: answer.status != 200)
        assert_token_error(refused, "invalid_authorization_details", 400)
        sealed = peer.seal(peer.claims(current, subject))
        assert_problem(await peer.send(session, sealed.jwe, current), "contract-denied", 403)

    async def test_rate_limited(
        self, fresh_network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """With 2 requests per 60 s the third is 429 with Retry-After in whole seconds."""
        peer = Peer(fresh_network)
        subject = str(fresh_network.demo["subjects"][0])
        rewrite_contract(
            fresh_network,
            INCOME_CONTRACT,
            version=2,
            rate_limit={"requests": 2, "per_seconds": 60},
        )
        answer = await wait_for_grant(peer, session, lambda answer: granted_version(answer) == 2)
        token = answer.json["access_token"]
        statuses = []
        for _ in range(2):
            sealed = peer.seal(peer.claims(token, subject))
            statuses.append((await peer.send(session, sealed.jwe, token)).status)
        assert statuses == [200, 200]
        sealed = peer.seal(peer.claims(token, subject))
        limited = await peer.send(session, sealed.jwe, token)
        assert_problem(limited, "rate-limited", 429)
        retry_after = limited.headers["Retry-After"]
        assert retry_after.isdigit()
        assert 1 <= int(retry_after) <= 60


# -- backend failures (a network whose provider calls a test backend) --------------------------

BACKEND_HITS: list[dict[str, str]] = []


async def _faulty_records(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    BACKEND_HITS.append({name: request.headers.get(name, "") for name in _CONTEXT_HEADERS})
    mode = body.get("mode", "ok")
    subject = body.get("national_id")
    if mode == "status-500":
        return web.json_response({"error": "boom"}, status=500)
    if mode == "status-503":
        return web.json_response({"error": "down"}, status=503)
    if mode == "not-json":
        return web.Response(text="<html>oops</html>", content_type="text/html")
    if mode == "array":
        return web.json_response([subject])
    if mode == "float":
        return web.json_response({"national_id": subject, "taxable_income": 1.5})
    if mode == "empty":
        return web.Response(status=204)
    if mode == "slow":
        await asyncio.sleep(1.5)
    return web.json_response(
        {
            "national_id": subject,
            "year": 2025,
            "taxable_income": 100,
            "bank_account": "EE001",
            "year_detail": {"taxable_income": 1},
        },
        status=int(body.get("status", 200)),
    )


_CONTEXT_HEADERS = ("X-Consumer", "X-Contract", "X-Purpose", "X-Exchange-Id")


def _faulty_backend() -> web.Application:
    app = web.Application()
    app.router.add_post("/records", _faulty_records)
    return app


@pytest.fixture(scope="module")
def faulty_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNetwork]:
    """A network whose tax-authority calls a test backend with a 1 s timeout.

    Well under the slow mode's 1.5 s, and far above a prompt answer even on a
    loaded 2-core CI machine (0.3 s once timed out a prompt answer there).
    """
    port = free_port()

    def prepare(directory: Path, demo: dict[str, Any]) -> None:
        path = directory / demo["agencies"][TAX]["config"]
        config = yaml.safe_load(path.read_text())
        config["services"][SERVICE] = {
            "backend_url": f"http://127.0.0.1:{port}/records",
            "timeout_seconds": 1.0,
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))

    folder = tmp_path_factory.mktemp("faulty") / "network"
    with custom_network(folder, prepare, {port: _faulty_backend}) as net:
        yield net


class TestBackendFailures:
    """3.4: a failing backend is 502 backend-error, a slow one 504 backend-timeout."""

    @pytest.mark.parametrize(
        ("mode", "problem", "status"),
        [
            ("status-500", "backend-error", 502),
            ("status-503", "backend-error", 502),
            ("not-json", "backend-error", 502),
            ("array", "backend-error", 502),
            ("float", "backend-error", 502),
            ("empty", "backend-error", 502),
            ("slow", "backend-timeout", 504),
        ],
    )
    async def test_refused(
        self,
        faulty_network: LiveNetwork,
        session: aiohttp.ClientSession,
        mode: str,
        problem: str,
        status: int,
    ) -> None:
        """The provider answers with the problem and an audit id."""
        peer = Peer(faulty_network)
        subject = str(faulty_network.demo["subjects"][0])
        token = await peer.token(session)
        body = {"national_id": subject, "mode": mode}
        sealed = peer.seal(peer.claims(token, subject, body=body))
        document = assert_problem(await peer.send(session, sealed.jwe, token), problem, status)
        record = audit_record(audit_path(faulty_network, TAX), document["audit_id"])
        assert record["problem"] == problem
        assert record["outcome"] == "error"
        # Refused after the body went to the backend: the message is still named in full.
        assert record["jti"] == sealed.jti
        assert record["req_hash"] == token_hash(sealed.jws)
        assert record["client"] == peer.claims(token, subject)["client"]
        assert isinstance(record["subject"], str)
        assert record["subject"] != subject

    async def test_answer_is_filtered_and_context_sent(
        self, faulty_network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """Only contract fields are released; the backend sees the contract context."""
        peer = Peer(faulty_network)
        subject = str(faulty_network.demo["subjects"][0])
        token = await peer.token(session)
        sealed = peer.seal(peer.claims(token, subject, body={"national_id": subject}))
        answer = await peer.send(session, sealed.jwe, token)
        assert answer.status == 200, answer.raw
        claims = peer.open(answer, sealed)
        assert claims["body"] == {"national_id": subject, "year": 2025, "taxable_income": 100}
        assert BACKEND_HITS[-1] == {
            "X-Consumer": BENEFITS,
            "X-Contract": INCOME_CONTRACT,
            "X-Purpose": PURPOSE,
            "X-Exchange-Id": sealed.jti,
        }

    async def test_backend_4xx_is_an_answer(
        self, faulty_network: LiveNetwork, session: aiohttp.ClientSession
    ) -> None:
        """A status below 500 with a JSON object is signed and carried in ``status``."""
        peer = Peer(faulty_network)
        subject = str(faulty_network.demo["subjects"][0])
        token = await peer.token(session)
        body = {"national_id": subject, "status": 409}
        sealed = peer.seal(peer.claims(token, subject, body=body))
        answer = await peer.send(session, sealed.jwe, token)
        assert answer.status == 200
        assert peer.open(answer, sealed)["status"] == 409
