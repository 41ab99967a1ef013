"""Client assertions and purpose-bound, key-bound access tokens (protocol 3.1, 3.2).

Pure functions: they take keys, a key lookup and ``now``, and return or raise.
The replay check of client assertions is stateful and lives with the caller.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from gateway.errors import JoseError, TokenInvalid, TokenRequestError
from gateway.jose import (
    ACCESS_TOKEN_LIFETIME,
    CLIENT_ASSERTION_LIFETIME,
    claim_type_problem,
    freshness_problem,
    parse_jws,
    sign_jwt,
)
from gateway.keys import PrivateKey, PublicKey, b64url

CLIENT_ASSERTION_TYP: Final = "client-assertion+jwt"
ACCESS_TOKEN_TYP: Final = "at+jwt"  # noqa: S105 - a media type, not a secret
CLIENT_ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GRANT_TYPE: Final = "client_credentials"
DETAILS_TYPE: Final = "data_exchange"

# The authorization_details parameter is one small object; anything larger is abuse.
MAX_AUTHORIZATION_DETAILS_BYTES: Final = 4096

_ASSERTION_CLAIMS: Final[Mapping[str, type]] = {
    "iss": str,
    "sub": str,
    "aud": str,
    "jti": str,
    "iat": int,
    "exp": int,
}
_TOKEN_CLAIMS: Final[Mapping[str, type]] = {
    **_ASSERTION_CLAIMS,
    "client_id": str,
    "cnf": dict,
    "authorization_details": list,
}


class SigningKeyLookup(Protocol):
    """What token and envelope checks need from the trust registry."""

    def signing_key(self, agency_id: str, kid: str) -> PublicKey | None:
        """The signing key ``kid`` if the active agency ``agency_id`` lists it."""


def new_jti() -> str:
    """A fresh message or token id: 128 random bits, base64url."""
    return b64url(secrets.token_bytes(16))


def token_hash(compact: str | bytes | bytearray) -> str:
    """base64url(SHA-256(ASCII bytes of a compact serialization)): ``ath`` and ``req_hash``.

    Given the bytes already (a decrypted inner JWS), no ASCII copy is made (memory).
    """
    data = compact.encode("ascii") if isinstance(compact, str) else compact
    return b64url(hashlib.sha256(data).digest())


@dataclass(frozen=True)
class RequestedGrant:
    """What a consumer asks for in ``authorization_details`` (RFC 9396)."""

    contract: str
    service: str
    purpose: str

    def to_json(self) -> dict[str, str]:
        """The object as sent on the wire."""
        return {
            "type": DETAILS_TYPE,
            "contract": self.contract,
            "service": self.service,
            "purpose": self.purpose,
        }


@dataclass(frozen=True)
class Grant:
    """A granted ``authorization_details`` object G: the request plus fields and version."""

    contract: str
    service: str
    purpose: str
    fields: tuple[str, ...]
    contract_version: int

    def to_json(self) -> dict[str, Any]:
        """G as carried in the token response and the access token."""
        return {
            "type": DETAILS_TYPE,
            "contract": self.contract,
            "service": self.service,
            "purpose": self.purpose,
            "fields": list(self.fields),
            "contract_version": self.contract_version,
        }

    @classmethod
    def from_json(cls, value: object) -> Grant:
        """Parse G; ``ValueError`` names the member that is wrong."""
        if not isinstance(value, Mapping) or value.get("type") != DETAILS_TYPE:
            raise ValueError("authorization_details entry must be a data_exchange object")
        problem = claim_type_problem(
            value,
            {
                "contract": str,
                "service": str,
                "purpose": str,
                "fields": list,
                "contract_version": int,
            },
        )
        if problem:
            raise ValueError(f"authorization_details: {problem}")
        fields = value["fields"]
        if not all(isinstance(path, str) for path in fields):
            raise ValueError("authorization_details: fields must be strings")
        return cls(
            contract=value["contract"],
            service=value["service"],
            purpose=value["purpose"],
            fields=tuple(fields),
            contract_version=value["contract_version"],
        )


def parse_authorization_details(text: str) -> RequestedGrant:
    """Parse the form parameter: a JSON array of exactly one data_exchange object.

    A malformed parameter is ``invalid_request``; a well-formed object of
    another ``type`` is ``invalid_authorization_details`` (protocol 3.1).
    """
    if len(text) > MAX_AUTHORIZATION_DETAILS_BYTES:
        raise TokenRequestError("invalid_request", "authorization_details is too large")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise TokenRequestError("invalid_request", "authorization_details is not JSON") from exc
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
        raise TokenRequestError(
            "invalid_request", "authorization_details must be a JSON array of one object"
        )
    entry = value[0]
    if entry.get("type") != DETAILS_TYPE:
        raise TokenRequestError(
            "invalid_authorization_details", "authorization_details type must be data_exchange"
        )
    for name in ("contract", "service", "purpose"):
        if not isinstance(entry.get(name), str) or not entry[name]:
            raise TokenRequestError(
                "invalid_request", f"authorization_details.{name} must be a non-empty string"
            )
    return RequestedGrant(
        contract=entry["contract"], service=entry["service"], purpose=entry["purpose"]
    )


def make_client_assertion(
    consumer: str, provider: str, key: PrivateKey, now: int, jti: str | None = None
) -> str:
    """A single-use client assertion (3.1) by ``consumer`` for ``provider``, valid 60 s."""
    claims = {
        "iss": consumer,
        "sub": consumer,
        "aud": provider,
        "jti": jti or new_jti(),
        "iat": now,
        "exp": now + CLIENT_ASSERTION_LIFETIME,
    }
    return sign_jwt(claims, key, CLIENT_ASSERTION_TYP)


@dataclass(frozen=True)
class VerifiedAssertion:
    """A client assertion that passed every stateless check of 3.1."""

    consumer: str
    jti: str
    exp: int
    key: PublicKey


def verify_client_assertion(
    assertion: str, provider: str, registry: SigningKeyLookup, now: int
) -> VerifiedAssertion:
    """Check a client assertion's header, signature, claims and freshness.

    Any failure is ``invalid_client``; the precise reason goes to the audit
    log only. The caller must still spend the ``jti`` (single use).
    """

    def refuse(reason: str) -> TokenRequestError:
        return TokenRequestError(
            "invalid_client", "client authentication failed", audit_detail=reason
        )

    try:
        jws = parse_jws(assertion, CLIENT_ASSERTION_TYP)
        claims = jws.claims()
    except JoseError as exc:
        raise refuse(f"assertion: {exc}") from exc
    problem = claim_type_problem(claims, _ASSERTION_CLAIMS)
    if problem:
        raise refuse(problem)
    if claims["iss"] != claims["sub"]:
        raise refuse("iss differs from sub")
    key = registry.signing_key(claims["iss"], jws.kid)
    if key is None:
        raise refuse("kid is not a registry key of an active iss")
    try:
        jws.verify(key)
    except JoseError as exc:
        raise refuse(f"assertion: {exc}") from exc
    if claims["aud"] != provider:
        raise refuse("aud is not this provider")
    stale = freshness_problem(claims, now, CLIENT_ASSERTION_LIFETIME)
    if stale:
        raise refuse(f"assertion {stale}")
    return VerifiedAssertion(consumer=claims["iss"], jti=claims["jti"], exp=claims["exp"], key=key)


def issue_access_token(
    *, provider: str, key: PrivateKey, consumer: str, jkt: str, grant: Grant, now: int
) -> str:
    """A purpose-bound access token (3.2) for ``consumer``, bound to key ``jkt``, valid 300 s."""
    claims = {
        "iss": provider,
        "sub": consumer,
        "client_id": consumer,
        "aud": provider,
        "iat": now,
        "exp": now + ACCESS_TOKEN_LIFETIME,
        "jti": new_jti(),
        "cnf": {"jkt": jkt},
        "authorization_details": [grant.to_json()],
    }
    return sign_jwt(claims, key, ACCESS_TOKEN_TYP)


@dataclass(frozen=True)
class AccessToken:
    """A verified access token of this provider."""

    compact: str
    consumer: str
    jti: str
    exp: int
    jkt: str
    grant: Grant
    # What a cached token is checked against again when it is reused.
    iat: int = 0
    nbf: int | None = None
    kid: str = ""

    def freshness_problem(self, now: int) -> str | None:
        """Why this token is no longer fresh at ``now`` (3.0, L = 300 s), or None."""
        times: dict[str, int] = {"iat": self.iat, "exp": self.exp}
        if self.nbf is not None:
            times["nbf"] = self.nbf
        return freshness_problem(times, now, ACCESS_TOKEN_LIFETIME)


def verify_access_token(
    compact: str, provider: str, own_keys: Sequence[PublicKey], now: int
) -> AccessToken:
    """Check an access token of ours (3.0, 3.2); any failure is ``token-invalid``.

    The detail returned to the peer is generic (crypto failures stay opaque);
    the reason is kept for the audit log.
    """

    def refuse(reason: str) -> TokenInvalid:
        return TokenInvalid("the access token is not valid", audit_detail=reason)

    try:
        jws = parse_jws(compact, ACCESS_TOKEN_TYP)
        key = next((k for k in own_keys if k.kid == jws.kid), None)
        if key is None:
            raise refuse("kid is not one of our signing keys")
        jws.verify(key)
        claims = jws.claims()
    except JoseError as exc:
        raise refuse(str(exc)) from exc
    problem = claim_type_problem(claims, _TOKEN_CLAIMS)
    if problem:
        raise refuse(problem)
    if claims["iss"] != provider or claims["aud"] != provider:
        raise refuse("iss or aud is not this provider")
    if claims["client_id"] != claims["sub"]:
        raise refuse("client_id differs from sub")
    jkt = claims["cnf"].get("jkt")
    if not isinstance(jkt, str):
        raise refuse("cnf.jkt missing")
    details = claims["authorization_details"]
    if len(details) != 1:
        raise refuse("authorization_details must hold one grant")
    try:
        grant = Grant.from_json(details[0])
    except ValueError as exc:
        raise refuse(str(exc)) from exc
    stale = freshness_problem(claims, now, ACCESS_TOKEN_LIFETIME)
    if stale:
        raise refuse(f"token {stale}")
    return AccessToken(
        compact=compact,
        consumer=claims["sub"],
        jti=claims["jti"],
        exp=claims["exp"],
        jkt=jkt,
        grant=grant,
        iat=claims["iat"],
        nbf=claims.get("nbf"),
        kid=jws.kid,
    )


# Tokens live 300 s; at thousands of exchanges a second a few thousand distinct
# tokens are live at once. Beyond this many the oldest entries make room.
VERIFIED_TOKEN_CACHE_SIZE: Final = 10_000


class VerifiedTokenCache:
    """Access tokens already verified, by SHA-256 of the compact form, until they expire.

    Protocol 3.2 lets a provider skip the signature check of a token it has
    verified before. A hit is checked again for freshness and for its
    signing key still being one of ours; a refused token is never cached, so
    garbage costs a full check every time. The token binds nothing by itself:
    every request still needs an envelope signed by the ``cnf.jkt`` key.
    """

    def __init__(self, capacity: int = VERIFIED_TOKEN_CACHE_SIZE) -> None:
        self._capacity = capacity
        self._tokens: dict[bytes, AccessToken] = {}

    def __len__(self) -> int:
        return len(self._tokens)

    def verify(
        self, compact: str, provider: str, own_keys: Sequence[PublicKey], now: int
    ) -> tuple[AccessToken, bool]:
        """:func:`verify_access_token`, from the cache where it can; also whether it was a hit."""
        digest = hashlib.sha256(compact.encode("utf-8", "surrogatepass")).digest()
        cached = self._tokens.get(digest)
        if cached is not None:
            if cached.freshness_problem(now) is None and any(
                key.kid == cached.kid for key in own_keys
            ):
                return cached, True
            del self._tokens[digest]
        token = verify_access_token(compact, provider, own_keys, now)
        if len(self._tokens) >= self._capacity:
            self._make_room(now)
        self._tokens[digest] = token
        return token, False

    def _make_room(self, now: int) -> None:
        expired = [digest for digest, token in self._tokens.items() if token.freshness_problem(now)]
        for digest in expired:
            del self._tokens[digest]
        # Still full: drop the oldest half (dicts keep insertion order).
        if len(self._tokens) >= self._capacity:
            for digest in list(self._tokens)[: max(1, len(self._tokens) // 2)]:
                del self._tokens[digest]
