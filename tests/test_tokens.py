"""Client assertions (3.1) and purpose-bound, key-bound access tokens (3.2)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import pytest

from gateway.errors import TokenInvalid, TokenRequestError
from gateway.jose import sign_jwt
from gateway.keys import PrivateKey, PublicKey, b64url, b64url_decode, generate_private_keys
from gateway.tokens import (
    ACCESS_TOKEN_TYP,
    CLIENT_ASSERTION_TYP,
    MAX_AUTHORIZATION_DETAILS_BYTES,
    AccessToken,
    Grant,
    RequestedGrant,
    SigningKeyLookup,
    VerifiedTokenCache,
    issue_access_token,
    make_client_assertion,
    new_jti,
    parse_authorization_details,
    token_hash,
    verify_access_token,
    verify_client_assertion,
)

PROVIDER = "tax-authority"
CONSUMER = "social-benefits"
OTHER = "health-agency"

GRANT = Grant(
    contract="benefits-income-2026",
    service="income-records",
    purpose="benefit-eligibility",
    fields=("national_id", "year", "taxable_income"),
    contract_version=3,
)


class KeyLookup:
    """A registry stand-in: signing keys by agency id, nothing else."""

    def __init__(self, keys: dict[str, Iterable[PublicKey]]) -> None:
        self._keys = {agency: {k.kid: k for k in listed} for agency, listed in keys.items()}

    def signing_key(self, agency_id: str, kid: str) -> PublicKey | None:
        """The key ``kid`` if ``agency_id`` lists it."""
        return self._keys.get(agency_id, {}).get(kid)


@pytest.fixture
def consumer_key() -> PrivateKey:
    """The consumer agency's signing key."""
    return generate_private_keys()[0]


@pytest.fixture
def other_key() -> PrivateKey:
    """Another agency's signing key (registered, but not for the consumer)."""
    return generate_private_keys("p256")[0]


@pytest.fixture
def lookup(consumer_key: PrivateKey, other_key: PrivateKey) -> KeyLookup:
    """The registry: the consumer's and another agency's signing keys."""
    return KeyLookup({CONSUMER: [consumer_key.public], OTHER: [other_key.public]})


def assertion_claims(now: int, **changes: Any) -> dict[str, Any]:
    """Valid client assertion claims with ``changes`` (None removes a claim)."""
    claims: dict[str, Any] = {
        "iss": CONSUMER,
        "sub": CONSUMER,
        "aud": PROVIDER,
        "jti": "assertion-1",
        "iat": now,
        "exp": now + 60,
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(name)
        else:
            claims[name] = value
    return claims


def refused_assertion(
    assertion: str, lookup: SigningKeyLookup, now: int, provider: str = PROVIDER
) -> TokenRequestError:
    """The TokenRequestError raised for ``assertion``, checked to be opaque invalid_client."""
    with pytest.raises(TokenRequestError) as info:
        verify_client_assertion(assertion, provider, lookup, now)
    error = info.value
    assert error.error == "invalid_client"
    assert error.status == 401
    assert error.description == "client authentication failed"
    assert error.to_json() == {
        "error": "invalid_client",
        "error_description": "client authentication failed",
    }
    return error


class TestHelpers:
    """jti generation and the ath/req_hash hash."""

    def test_new_jti(self) -> None:
        """A jti is 128 random bits in base64url; two are never equal."""
        jtis = {new_jti() for _ in range(100)}
        assert len(jtis) == 100
        assert all(len(b64url_decode(jti)) == 16 for jti in jtis)

    def test_token_hash(self) -> None:
        """token_hash is base64url(SHA-256(ASCII bytes)) without padding."""
        expected = b64url(hashlib.sha256(b"a.b.c").digest())
        assert token_hash("a.b.c") == expected
        assert token_hash(b"a.b.c") == expected  # the same from the bytes
        assert "=" not in expected

    def test_requested_grant_json(self) -> None:
        """The authorization_details object as sent."""
        assert RequestedGrant("c", "s", "p").to_json() == {
            "type": "data_exchange",
            "contract": "c",
            "service": "s",
            "purpose": "p",
        }

    def test_grant_round_trip(self) -> None:
        """G serialises and parses back equal."""
        assert Grant.from_json(GRANT.to_json()) == GRANT
        assert GRANT.to_json()["fields"] == ["national_id", "year", "taxable_income"]

    @pytest.mark.parametrize(
        ("change", "reason"),
        [
            ({"type": "other"}, "data_exchange object"),
            ({"contract": None}, "claim 'contract' missing"),
            ({"contract_version": "3"}, "'contract_version' has the wrong type"),
            ({"contract_version": True}, "'contract_version' has the wrong type"),
            ({"fields": "a"}, "'fields' has the wrong type"),
            ({"fields": ["a", 1]}, "fields must be strings"),
        ],
    )
    def test_grant_refusals(self, change: dict[str, Any], reason: str) -> None:
        """A malformed G names what is wrong."""
        value = {**GRANT.to_json(), **change}
        value = {k: v for k, v in value.items() if v is not None}
        with pytest.raises(ValueError, match=reason):
            Grant.from_json(value)

    def test_grant_not_an_object(self) -> None:
        """G must be an object."""
        with pytest.raises(ValueError, match="data_exchange object"):
            Grant.from_json([GRANT.to_json()])


class TestClientAssertion:
    """verify_client_assertion: every failure is an opaque invalid_client."""

    def test_round_trip(self, now: int, consumer_key: PrivateKey, lookup: KeyLookup) -> None:
        """A fresh assertion verifies and yields consumer, jti, exp and the signing key."""
        assertion = make_client_assertion(CONSUMER, PROVIDER, consumer_key, now, jti="j-1")
        verified = verify_client_assertion(assertion, PROVIDER, lookup, now)
        assert verified.consumer == CONSUMER
        assert verified.jti == "j-1"
        assert verified.exp == now + 60
        assert verified.key == consumer_key.public

    def test_generated_jti(self, now: int, consumer_key: PrivateKey, lookup: KeyLookup) -> None:
        """Without a jti a fresh random one is used each time."""
        first = make_client_assertion(CONSUMER, PROVIDER, consumer_key, now)
        second = make_client_assertion(CONSUMER, PROVIDER, consumer_key, now)
        assert (
            verify_client_assertion(first, PROVIDER, lookup, now).jti
            != verify_client_assertion(second, PROVIDER, lookup, now).jti
        )

    def test_p256_consumer(self, now: int, other_key: PrivateKey, lookup: KeyLookup) -> None:
        """An ES256 assertion of an agency with a P-256 key verifies."""
        assertion = make_client_assertion(OTHER, PROVIDER, other_key, now)
        assert verify_client_assertion(assertion, PROVIDER, lookup, now).consumer == OTHER

    def test_wrong_typ(self, now: int, consumer_key: PrivateKey, lookup: KeyLookup) -> None:
        """An access token (at+jwt) is not a client assertion."""
        assertion = sign_jwt(assertion_claims(now), consumer_key, ACCESS_TOKEN_TYP)
        error = refused_assertion(assertion, lookup, now)
        assert "typ" in error.audit_detail

    def test_iss_differs_from_sub(
        self, now: int, consumer_key: PrivateKey, lookup: KeyLookup
    ) -> None:
        """iss must equal sub."""
        claims = assertion_claims(now, sub=OTHER)
        error = refused_assertion(sign_jwt(claims, consumer_key, CLIENT_ASSERTION_TYP), lookup, now)
        assert error.audit_detail == "iss differs from sub"

    def test_unknown_kid(self, now: int, lookup: KeyLookup) -> None:
        """A key the registry does not list is refused."""
        stranger = generate_private_keys()[0]
        assertion = make_client_assertion(CONSUMER, PROVIDER, stranger, now)
        error = refused_assertion(assertion, lookup, now)
        assert error.audit_detail == "kid is not a registry key of an active iss"

    def test_kid_of_another_agency(
        self, now: int, other_key: PrivateKey, lookup: KeyLookup
    ) -> None:
        """Kid injection: a registered key of another agency cannot speak for the consumer."""
        assertion = make_client_assertion(CONSUMER, PROVIDER, other_key, now)
        error = refused_assertion(assertion, lookup, now)
        assert error.audit_detail == "kid is not a registry key of an active iss"

    def test_unknown_agency(self, now: int, consumer_key: PrivateKey, lookup: KeyLookup) -> None:
        """An iss the registry does not list (or not active) is refused."""
        assertion = make_client_assertion("unknown-agency", PROVIDER, consumer_key, now)
        refused_assertion(assertion, lookup, now)

    def test_aud_mismatch(self, now: int, consumer_key: PrivateKey, lookup: KeyLookup) -> None:
        """An assertion for another provider is refused."""
        assertion = make_client_assertion(CONSUMER, "other-provider", consumer_key, now)
        error = refused_assertion(assertion, lookup, now)
        assert error.audit_detail == "aud is not this provider"

    def test_expired(self, now: int, consumer_key: PrivateKey, lookup: KeyLookup) -> None:
        """An assertion past exp + 30 s is refused."""
        assertion = make_client_assertion(CONSUMER, PROVIDER, consumer_key, now)
        verify_client_assertion(assertion, PROVIDER, lookup, now + 60 + 29)
        error = refused_assertion(assertion, lookup, now + 60 + 30)
        assert error.audit_detail == "assertion expired"

    def test_issued_in_future(self, now: int, consumer_key: PrivateKey, lookup: KeyLookup) -> None:
        """An assertion issued more than 30 s ahead is refused."""
        assertion = make_client_assertion(CONSUMER, PROVIDER, consumer_key, now + 31)
        error = refused_assertion(assertion, lookup, now)
        assert error.audit_detail == "assertion issued in the future"

    def test_lifetime_over_60(self, now: int, consumer_key: PrivateKey, lookup: KeyLookup) -> None:
        """exp more than 60 s after iat is refused; exactly 60 s is fine."""
        long = assertion_claims(now, exp=now + 61)
        error = refused_assertion(sign_jwt(long, consumer_key, CLIENT_ASSERTION_TYP), lookup, now)
        assert "at most 60 s" in error.audit_detail

    def test_signature_tampered(
        self, now: int, consumer_key: PrivateKey, lookup: KeyLookup
    ) -> None:
        """A changed signature byte is refused, with the reason only in audit_detail."""
        assertion = make_client_assertion(CONSUMER, PROVIDER, consumer_key, now)
        head, payload, signature = assertion.split(".")
        raw = bytearray(b64url_decode(signature))
        raw[0] ^= 1
        error = refused_assertion(f"{head}.{payload}.{b64url(bytes(raw))}", lookup, now)
        assert "signature does not verify" in error.audit_detail
        assert "signature" not in error.description

    def test_payload_swapped(self, now: int, consumer_key: PrivateKey, lookup: KeyLookup) -> None:
        """Claims changed after signing (a longer exp) fail the signature."""
        assertion = make_client_assertion(CONSUMER, PROVIDER, consumer_key, now)
        head, _, signature = assertion.split(".")
        payload = b64url(json.dumps(assertion_claims(now, jti="other")).encode())
        error = refused_assertion(f"{head}.{payload}.{signature}", lookup, now)
        assert "does not verify" in error.audit_detail

    @pytest.mark.parametrize("missing", ["iss", "sub", "aud", "jti", "iat", "exp"])
    def test_missing_claim(
        self, now: int, consumer_key: PrivateKey, lookup: KeyLookup, missing: str
    ) -> None:
        """Every assertion claim is required."""
        claims = assertion_claims(now, **{missing: None})
        error = refused_assertion(sign_jwt(claims, consumer_key, CLIENT_ASSERTION_TYP), lookup, now)
        assert error.audit_detail == f"claim {missing!r} missing"

    def test_wrong_claim_type(self, now: int, consumer_key: PrivateKey, lookup: KeyLookup) -> None:
        """aud must be a single string (not an array)."""
        claims = assertion_claims(now, aud=[PROVIDER])
        error = refused_assertion(sign_jwt(claims, consumer_key, CLIENT_ASSERTION_TYP), lookup, now)
        assert error.audit_detail == "claim 'aud' has the wrong type"

    def test_not_a_jws(self, now: int, lookup: KeyLookup) -> None:
        """Garbage is refused the same opaque way."""
        error = refused_assertion("not-a-jwt", lookup, now)
        assert error.audit_detail.startswith("assertion:")

    def test_float_claim(self, now: int, consumer_key: PrivateKey, lookup: KeyLookup) -> None:
        """A float exp is refused (numbers are integers)."""
        claims = assertion_claims(now, exp=now + 59.5)
        error = refused_assertion(sign_jwt(claims, consumer_key, CLIENT_ASSERTION_TYP), lookup, now)
        assert "integers" in error.audit_detail


class TestAuthorizationDetails:
    """parse_authorization_details: a JSON array of exactly one data_exchange object."""

    VALID = '[{"type":"data_exchange","contract":"c-1","service":"s-1","purpose":"p-1"}]'

    def test_valid(self) -> None:
        """One well-formed object gives the requested grant."""
        assert parse_authorization_details(self.VALID) == RequestedGrant("c-1", "s-1", "p-1")

    def test_extra_members_ignored(self) -> None:
        """Members beyond the four are ignored (RFC 9396 allows extensions)."""
        text = '[{"type":"data_exchange","contract":"c","service":"s","purpose":"p","x":1}]'
        assert parse_authorization_details(text) == RequestedGrant("c", "s", "p")

    @pytest.mark.parametrize(
        ("text", "error"),
        [
            ("not json", "invalid_request"),
            ("", "invalid_request"),
            ('{"type":"data_exchange"}', "invalid_request"),
            ("[]", "invalid_request"),
            (
                '[{"type":"data_exchange","contract":"c","service":"s","purpose":"p"},'
                '{"type":"data_exchange","contract":"c","service":"s","purpose":"p"}]',
                "invalid_request",
            ),
            ('["data_exchange"]', "invalid_request"),
            ("[[]]", "invalid_request"),
            (
                '[{"type":"payment","contract":"c","service":"s","purpose":"p"}]',
                "invalid_authorization_details",
            ),
            ('[{"contract":"c","service":"s","purpose":"p"}]', "invalid_authorization_details"),
            ('[{"type":"data_exchange","service":"s","purpose":"p"}]', "invalid_request"),
            ('[{"type":"data_exchange","contract":"c","purpose":"p"}]', "invalid_request"),
            ('[{"type":"data_exchange","contract":"c","service":"s"}]', "invalid_request"),
            (
                '[{"type":"data_exchange","contract":"","service":"s","purpose":"p"}]',
                "invalid_request",
            ),
            (
                '[{"type":"data_exchange","contract":1,"service":"s","purpose":"p"}]',
                "invalid_request",
            ),
        ],
    )
    def test_refused(self, text: str, error: str) -> None:
        """Malformed is invalid_request (400); another type is invalid_authorization_details."""
        with pytest.raises(TokenRequestError) as info:
            parse_authorization_details(text)
        assert info.value.error == error
        assert info.value.status == 400

    def test_oversize(self) -> None:
        """More than MAX_AUTHORIZATION_DETAILS_BYTES is refused before parsing."""
        padded = self.VALID[:-2] + ',"pad":"' + "x" * MAX_AUTHORIZATION_DETAILS_BYTES + '"}]'
        with pytest.raises(TokenRequestError, match="too large") as info:
            parse_authorization_details(padded)
        assert info.value.error == "invalid_request"

    def test_exactly_at_limit(self) -> None:
        """A parameter of exactly the limit is still parsed."""
        filler = MAX_AUTHORIZATION_DETAILS_BYTES - len(self.VALID) - len(',"pad":""')
        text = self.VALID[:-2] + ',"pad":"' + "x" * filler + '"}]'
        assert len(text) == MAX_AUTHORIZATION_DETAILS_BYTES
        assert parse_authorization_details(text).contract == "c-1"

    def test_deep_nesting(self) -> None:
        """A deeply nested array within the size limit is invalid_request, not a crash."""
        with pytest.raises(TokenRequestError) as info:
            parse_authorization_details("[" * 4000)
        assert info.value.error == "invalid_request"


@pytest.fixture
def provider_key() -> PrivateKey:
    """The provider's own signing key, which signs its access tokens."""
    return generate_private_keys()[0]


def token_claims(now: int, jkt: str, **changes: Any) -> dict[str, Any]:
    """Valid access token claims with ``changes`` (None removes a claim)."""
    claims: dict[str, Any] = {
        "iss": PROVIDER,
        "sub": CONSUMER,
        "client_id": CONSUMER,
        "aud": PROVIDER,
        "iat": now,
        "exp": now + 300,
        "jti": "token-1",
        "cnf": {"jkt": jkt},
        "authorization_details": [GRANT.to_json()],
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(name)
        else:
            claims[name] = value
    return claims


def refused_token(compact: str, keys: list[PublicKey], now: int) -> TokenInvalid:
    """The TokenInvalid raised for ``compact``, checked to be opaque token-invalid."""
    with pytest.raises(TokenInvalid) as info:
        verify_access_token(compact, PROVIDER, keys, now)
    error = info.value
    assert error.problem == "token-invalid"
    assert error.status == 401
    assert error.detail == "the access token is not valid"
    return error


class TestAccessToken:
    """issue_access_token / verify_access_token."""

    def test_round_trip(self, now: int, provider_key: PrivateKey, consumer_key: PrivateKey) -> None:
        """An issued token verifies with the provider's key and carries grant, jkt, consumer."""
        token = issue_access_token(
            provider=PROVIDER,
            key=provider_key,
            consumer=CONSUMER,
            jkt=consumer_key.kid,
            grant=GRANT,
            now=now,
        )
        verified = verify_access_token(token, PROVIDER, [provider_key.public], now)
        assert verified.compact == token
        assert verified.consumer == CONSUMER
        assert verified.jkt == consumer_key.kid
        assert verified.grant == GRANT
        assert verified.exp == now + 300
        assert len(b64url_decode(verified.jti)) == 16

    def test_rotation(self, now: int, provider_key: PrivateKey) -> None:
        """A token signed by an older key still listed verifies."""
        newer = generate_private_keys("p256")[0]
        token = sign_jwt(token_claims(now, "jkt"), provider_key, ACCESS_TOKEN_TYP)
        keys = [newer.public, provider_key.public]
        assert verify_access_token(token, PROVIDER, keys, now).jkt == "jkt"

    def test_valid_until_skew(self, now: int, provider_key: PrivateKey) -> None:
        """A token is accepted up to exp + 29 s and refused at exp + 30 s."""
        token = sign_jwt(token_claims(now, "jkt"), provider_key, ACCESS_TOKEN_TYP)
        verify_access_token(token, PROVIDER, [provider_key.public], now + 329)
        error = refused_token(token, [provider_key.public], now + 330)
        assert error.audit_detail == "token expired"

    def test_client_assertion_as_token(
        self, now: int, provider_key: PrivateKey, consumer_key: PrivateKey
    ) -> None:
        """A client assertion (even one signed by our key) is not an access token."""
        assertion = make_client_assertion(CONSUMER, PROVIDER, provider_key, now)
        error = refused_token(assertion, [provider_key.public], now)
        assert "typ" in error.audit_detail
        other = make_client_assertion(CONSUMER, PROVIDER, consumer_key, now)
        refused_token(other, [provider_key.public], now)

    def test_signed_by_another_key(self, now: int, provider_key: PrivateKey) -> None:
        """A token signed by a key not ours (consumer-forged) is refused."""
        forger = generate_private_keys()[0]
        token = sign_jwt(token_claims(now, "jkt"), forger, ACCESS_TOKEN_TYP)
        error = refused_token(token, [provider_key.public], now)
        assert error.audit_detail == "kid is not one of our signing keys"

    def test_our_kid_other_signature(self, now: int, provider_key: PrivateKey) -> None:
        """A forged token naming our kid fails signature verification."""
        forger = generate_private_keys()[0]
        genuine = sign_jwt(token_claims(now, "jkt"), provider_key, ACCESS_TOKEN_TYP)
        forged = sign_jwt(token_claims(now, "jkt", jti="x"), forger, ACCESS_TOKEN_TYP)
        mixed = ".".join([genuine.split(".")[0], *forged.split(".")[1:]])
        error = refused_token(mixed, [provider_key.public], now)
        assert "does not verify" in error.audit_detail

    @pytest.mark.parametrize(("claim", "value"), [("iss", OTHER), ("aud", OTHER)])
    def test_iss_or_aud_mismatch(
        self, now: int, provider_key: PrivateKey, claim: str, value: str
    ) -> None:
        """A token whose iss or aud is not this provider is refused."""
        token = sign_jwt(token_claims(now, "jkt", **{claim: value}), provider_key, ACCESS_TOKEN_TYP)
        error = refused_token(token, [provider_key.public], now)
        assert error.audit_detail == "iss or aud is not this provider"

    def test_other_provider(self, now: int, provider_key: PrivateKey) -> None:
        """A token issued for us is not valid at another provider with the same key."""
        token = sign_jwt(token_claims(now, "jkt"), provider_key, ACCESS_TOKEN_TYP)
        with pytest.raises(TokenInvalid):
            verify_access_token(token, OTHER, [provider_key.public], now)

    def test_client_id_differs(self, now: int, provider_key: PrivateKey) -> None:
        """client_id must equal sub."""
        token = sign_jwt(token_claims(now, "jkt", client_id=OTHER), provider_key, ACCESS_TOKEN_TYP)
        error = refused_token(token, [provider_key.public], now)
        assert error.audit_detail == "client_id differs from sub"

    def test_cnf_missing(self, now: int, provider_key: PrivateKey) -> None:
        """A token without cnf is refused (it would not be key-bound)."""
        token = sign_jwt(token_claims(now, "jkt", cnf=None), provider_key, ACCESS_TOKEN_TYP)
        error = refused_token(token, [provider_key.public], now)
        assert error.audit_detail == "claim 'cnf' missing"

    @pytest.mark.parametrize("cnf", [{}, {"jkt": 1}, {"jwk": {}}])
    def test_cnf_jkt_missing(self, now: int, provider_key: PrivateKey, cnf: dict[str, Any]) -> None:
        """cnf must carry a string jkt."""
        token = sign_jwt(token_claims(now, "jkt", cnf=cnf), provider_key, ACCESS_TOKEN_TYP)
        error = refused_token(token, [provider_key.public], now)
        assert error.audit_detail == "cnf.jkt missing"

    @pytest.mark.parametrize("count", [0, 2])
    def test_grant_count(self, now: int, provider_key: PrivateKey, count: int) -> None:
        """Exactly one grant: none or two are refused."""
        details = [GRANT.to_json()] * count
        claims = token_claims(now, "jkt", authorization_details=details)
        if count == 0:
            claims["authorization_details"] = []
        token = sign_jwt(claims, provider_key, ACCESS_TOKEN_TYP)
        error = refused_token(token, [provider_key.public], now)
        assert error.audit_detail == "authorization_details must hold one grant"

    def test_malformed_grant(self, now: int, provider_key: PrivateKey) -> None:
        """A grant without contract_version is refused."""
        grant = {k: v for k, v in GRANT.to_json().items() if k != "contract_version"}
        claims = token_claims(now, "jkt", authorization_details=[grant])
        token = sign_jwt(claims, provider_key, ACCESS_TOKEN_TYP)
        error = refused_token(token, [provider_key.public], now)
        assert "contract_version" in error.audit_detail

    def test_lifetime_over_300(self, now: int, provider_key: PrivateKey) -> None:
        """A token valid longer than 300 s is refused."""
        token = sign_jwt(token_claims(now, "jkt", exp=now + 301), provider_key, ACCESS_TOKEN_TYP)
        error = refused_token(token, [provider_key.public], now)
        assert "at most 300 s" in error.audit_detail

    def test_expired(self, now: int, provider_key: PrivateKey) -> None:
        """A token long past exp is refused."""
        token = sign_jwt(token_claims(now - 1000, "jkt"), provider_key, ACCESS_TOKEN_TYP)
        error = refused_token(token, [provider_key.public], now)
        assert error.audit_detail == "token expired"

    @pytest.mark.parametrize(
        "missing", ["iss", "sub", "client_id", "aud", "iat", "exp", "jti", "authorization_details"]
    )
    def test_missing_claim(self, now: int, provider_key: PrivateKey, missing: str) -> None:
        """Every token claim is required."""
        claims = token_claims(now, "jkt", **{missing: None})
        token = sign_jwt(claims, provider_key, ACCESS_TOKEN_TYP)
        error = refused_token(token, [provider_key.public], now)
        assert error.audit_detail == f"claim {missing!r} missing"

    def test_garbage(self, now: int, provider_key: PrivateKey) -> None:
        """A non-JWT bearer value is token-invalid."""
        refused_token("Bearer nonsense", [provider_key.public], now)

    def test_detail_is_opaque(self, now: int, provider_key: PrivateKey) -> None:
        """The peer sees one generic detail whatever failed; the reason is audit-only."""
        token = sign_jwt(token_claims(now, "jkt", client_id=OTHER), provider_key, ACCESS_TOKEN_TYP)
        error = refused_token(token, [provider_key.public], now)
        assert "client_id" not in str(error.to_problem())


class CountingCache(VerifiedTokenCache):
    """A real cache that also counts how many lookups were hits."""

    def __init__(self, capacity: int = 10_000) -> None:
        super().__init__(capacity)
        self.hits = 0

    def verify(
        self, compact: str, provider: str, own_keys: Iterable[PublicKey], now: int
    ) -> tuple[AccessToken, bool]:
        token, hit = super().verify(compact, provider, list(own_keys), now)
        self.hits += hit
        return token, hit


class TestVerifiedTokenCache:
    """VerifiedTokenCache: protocol 3.2's cache of verified tokens, by hash, until exp."""

    def test_second_use_is_a_hit_with_the_same_token(
        self, now: int, provider_key: PrivateKey
    ) -> None:
        """The same compact token is verified once; the hit returns an equal result."""
        cache = VerifiedTokenCache()
        token = sign_jwt(token_claims(now, "jkt"), provider_key, ACCESS_TOKEN_TYP)
        first, hit = cache.verify(token, PROVIDER, [provider_key.public], now)
        assert not hit
        second, hit = cache.verify(token, PROVIDER, [provider_key.public], now + 10)
        assert hit
        assert second == first == verify_access_token(token, PROVIDER, [provider_key.public], now)

    def test_expiry_applies_to_a_cached_token(self, now: int, provider_key: PrivateKey) -> None:
        """A cached token is refused, as a fresh one would be, from exp + 30 s."""
        cache = VerifiedTokenCache()
        token = sign_jwt(token_claims(now, "jkt"), provider_key, ACCESS_TOKEN_TYP)
        cache.verify(token, PROVIDER, [provider_key.public], now)
        assert cache.verify(token, PROVIDER, [provider_key.public], now + 329)[1]
        with pytest.raises(TokenInvalid) as info:
            cache.verify(token, PROVIDER, [provider_key.public], now + 330)
        assert info.value.audit_detail == "token expired"
        assert len(cache) == 0

    def test_key_no_longer_ours_is_checked_again(self, now: int, provider_key: PrivateKey) -> None:
        """A hit needs the signing key to still be one of ours; otherwise the full check refuses."""
        cache = VerifiedTokenCache()
        token = sign_jwt(token_claims(now, "jkt"), provider_key, ACCESS_TOKEN_TYP)
        cache.verify(token, PROVIDER, [provider_key.public], now)
        newer = generate_private_keys()[0]
        with pytest.raises(TokenInvalid) as info:
            cache.verify(token, PROVIDER, [newer.public], now)
        assert info.value.audit_detail == "kid is not one of our signing keys"

    def test_refused_tokens_are_not_cached(self, now: int, provider_key: PrivateKey) -> None:
        """A bad token is checked in full every time it is presented."""
        cache = VerifiedTokenCache()
        bad = sign_jwt(token_claims(now, "jkt", aud=OTHER), provider_key, ACCESS_TOKEN_TYP)
        for _ in range(2):
            with pytest.raises(TokenInvalid):
                cache.verify(bad, PROVIDER, [provider_key.public], now)
        assert len(cache) == 0

    def test_a_changed_byte_is_another_token(self, now: int, provider_key: PrivateKey) -> None:
        """A token differing from a cached one in its signature is not served from the cache."""
        cache = VerifiedTokenCache()
        token = sign_jwt(token_claims(now, "jkt"), provider_key, ACCESS_TOKEN_TYP)
        cache.verify(token, PROVIDER, [provider_key.public], now)
        head, _, signature = token.rpartition(".")
        flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
        refused_token(f"{head}.{flipped}", [provider_key.public], now)
        with pytest.raises(TokenInvalid):
            cache.verify(f"{head}.{flipped}", PROVIDER, [provider_key.public], now)

    def test_bounded(self, now: int, provider_key: PrivateKey) -> None:
        """A full cache drops expired tokens first, then the oldest half; it never grows past."""
        cache = CountingCache(capacity=4)
        old = [
            sign_jwt(token_claims(now - 200, "jkt", jti=f"old-{i}"), provider_key, ACCESS_TOKEN_TYP)
            for i in range(2)
        ]
        for token in old:
            cache.verify(token, PROVIDER, [provider_key.public], now - 200)
        fresh = [
            sign_jwt(token_claims(now, "jkt", jti=f"new-{i}"), provider_key, ACCESS_TOKEN_TYP)
            for i in range(6)
        ]
        for token in fresh[:2]:
            cache.verify(token, PROVIDER, [provider_key.public], now)
        # Full at 4; at now + 150 the two old tokens are expired and make room.
        cache.verify(fresh[2], PROVIDER, [provider_key.public], now + 150)
        assert len(cache) == 3
        for token in fresh[:3]:
            cache.verify(token, PROVIDER, [provider_key.public], now + 150)
        assert cache.hits == 3
        for token in fresh[3:]:
            cache.verify(token, PROVIDER, [provider_key.public], now + 150)
            assert len(cache) <= 4
