"""Exchange envelopes: a signed JWS inside a JWE, both ways (protocol 3.3, 3.4).

Sealing builds the claims, signs them with the sender's key and encrypts the
JWS to the recipient's first encryption key. Opening applies checks 2-5 of
3.3 (request) or the consumer's checks of 3.4 (response). Everything here is
pure: bytes, keys and ``now`` in, claims out or a typed refusal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

from gateway.errors import (
    BindingMismatch,
    EnvelopeInvalid,
    JoseError,
    SignatureInvalid,
    StaleMessage,
    UpstreamUnreachable,
)
from gateway.jose import (
    MESSAGE_LIFETIME,
    UnverifiedJWS,
    canonical_json,
    claim_type_problem,
    decrypt,
    embedded_json,
    encrypt,
    freshness_problem,
    parse_jws,
    sign_jws_ascii,
)
from gateway.keys import PrivateKey, PublicKey, b64url
from gateway.tokens import AccessToken, SigningKeyLookup, new_jti, token_hash

if TYPE_CHECKING:  # only its take() is called: no HTTP module in this pure one
    from gateway.bodies import HandedBody

REQUEST_JWE_TYP: Final = "exchange-request+jwe"
REQUEST_JWS_TYP: Final = "exchange-request+jwt"
RESPONSE_JWE_TYP: Final = "exchange-response+jwe"
RESPONSE_JWS_TYP: Final = "exchange-response+jwt"

_REQUEST_CLAIMS: Final[Mapping[str, type]] = {
    "iss": str,
    "aud": str,
    "jti": str,
    "iat": int,
    "exp": int,
    "ath": str,
    "svc": str,
    "contract": str,
    "purpose": str,
    "subject": str,
    "client": str,
    "body": dict,
}
_RESPONSE_CLAIMS: Final[Mapping[str, type]] = {
    "iss": str,
    "aud": str,
    "jti": str,
    "iat": int,
    "exp": int,
    "in_reply_to": str,
    "req_hash": str,
    "status": int,
    "fields": list,
    "body": dict,
    "audit": dict,
}


@dataclass(frozen=True)
class RequestBinding:
    """What the response to a request must name (3.4): its ``jti``, and its inner JWS's hash."""

    jti: str
    req_hash: str


@dataclass(frozen=True)
class SealedMessage:
    """A message ready to send: its compact JWE as the ASCII bytes sent, and its id.

    Of the inner JWS only the hash is kept (memory: it is larger than the
    body it signs).
    """

    jwe: bytearray
    jti: str
    jws_hash: str  # token_hash of the inner JWS

    @property
    def binding(self) -> RequestBinding:
        """What a response to this request must name, to keep once the message is sent."""
        return RequestBinding(jti=self.jti, req_hash=self.jws_hash)


@dataclass(frozen=True)
class OpenedMessage:
    """A decrypted message whose inner signature verified.

    The inner JWS itself is not kept, only what is needed of it: its hash
    (``req_hash`` / ``resp_hash``) and its signature (audit evidence). A large
    message's JWS is larger than its body's JSON (memory).
    """

    claims: Mapping[str, Any]
    signer: PublicKey
    jws_hash: str  # token_hash of the inner JWS
    signature: str  # the inner JWS's signature segment

    @property
    def jti(self) -> str:
        """The message id."""
        return str(self.claims["jti"])

    @property
    def body(self) -> dict[str, Any]:
        """The request or released body."""
        body: dict[str, Any] = self.claims["body"]
        return body

    def without_body(self) -> OpenedMessage:
        """This message with every claim but ``body``: what to keep once the body is handed on.

        Parsed, a body is several times its JSON (memory).
        """
        return replace(self, claims={name: v for name, v in self.claims.items() if name != "body"})


@dataclass(frozen=True)
class EncodedBody:
    """A message's body as its compact JSON, signed as it is.

    Encoded once (:meth:`of`), so that the parsed object, several times the
    size of its JSON, need not be kept while the message is signed and
    encrypted (memory). For a released body, the bytes hashed for the audit
    log (:attr:`hash`) are the bytes signed.
    """

    encoded: bytes

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> EncodedBody:
        """``body`` encoded as every signed payload is."""
        return cls(canonical_json(body))

    @property
    def hash(self) -> str:
        """base64url SHA-256 of the JSON: the provider's ``resp_hash`` evidence."""
        return b64url(hashlib.sha256(self.encoded).digest())


def _seal(
    claims: Mapping[str, Any],
    signing_key: PrivateKey,
    recipient: PublicKey,
    jws_typ: str,
    jwe_typ: str,
) -> SealedMessage:
    # Bytes throughout: the JWS is encrypted as signed, the JWE sent as
    # encrypted, with no text made of either (memory).
    jws = sign_jws_ascii(canonical_json(claims), signing_key, jws_typ)
    jwe = encrypt(jws, recipient, jwe_typ)
    return SealedMessage(jwe=jwe, jti=str(claims["jti"]), jws_hash=token_hash(jws))


def seal_request(
    *,
    consumer: str,
    provider: str,
    service: str,
    contract: str,
    purpose: str,
    subject: str,
    client: str,
    end_user: str | None,
    body: EncodedBody,
    access_token: str,
    signing_key: PrivateKey,
    recipient: PublicKey,
    now: int,
) -> SealedMessage:
    """Seal an exchange request (3.3) to the provider's encryption key."""
    claims: dict[str, Any] = {
        "iss": consumer,
        "aud": provider,
        "jti": new_jti(),
        "iat": now,
        "exp": now + MESSAGE_LIFETIME,
        "ath": token_hash(access_token),
        "svc": service,
        "contract": contract,
        "purpose": purpose,
        "subject": subject,
        "client": client,
        "body": embedded_json(body.encoded),
    }
    if end_user is not None:
        claims["end_user"] = end_user
    return _seal(claims, signing_key, recipient, REQUEST_JWS_TYP, REQUEST_JWE_TYP)


def _decrypt_inner(
    jwe: bytearray, keys: Collection[PrivateKey], jwe_typ: str, jws_typ: str
) -> tuple[UnverifiedJWS, str]:
    """The inner JWS, split by ``parse_jws`` (its claims to be taken once), and its hash.

    ``jwe`` is the only reference left to the compact JWE: it is freed once
    decrypted, before the claims are parsed. The decrypted JWS is parsed as
    the bytes it is, with no text made of it (memory).
    """
    plaintext = decrypt(jwe, keys, jwe_typ)
    del jwe
    if not plaintext.isascii():
        raise EnvelopeInvalid("the envelope is not valid")
    return parse_jws(plaintext, jws_typ), token_hash(plaintext)


def _opened(
    inner: UnverifiedJWS, digest: str, claims: Mapping[str, Any], key: PublicKey
) -> OpenedMessage:
    # The signature's segment, as sent: strict base64url has one encoding.
    return OpenedMessage(
        claims=claims, signer=key, jws_hash=digest, signature=b64url(inner.signature)
    )


def _signature_problem(inner: UnverifiedJWS, key: PublicKey | None) -> str | None:
    """Why the request's JWS does not verify with ``key`` (the registry's), or None."""
    if key is None:
        return "the registry does not list that key for an active consumer"
    try:
        inner.verify(key)
    except JoseError as exc:
        return str(exc)
    return None


def open_request(
    jwe: HandedBody[bytearray],
    *,
    decryption_keys: Collection[PrivateKey],
    token: AccessToken,
    registry: SigningKeyLookup,
) -> OpenedMessage:
    """Checks 2 (``envelope-invalid``) and 3 (``signature-invalid``) of protocol 3.3.

    The compact JWE is taken from its box (memory, see :func:`_decrypt_inner`).
    """
    try:
        inner, digest = _decrypt_inner(
            jwe.take(), decryption_keys, REQUEST_JWE_TYP, REQUEST_JWS_TYP
        )
        if inner.kid != token.jkt:
            raise EnvelopeInvalid(
                "the envelope is not valid", audit_detail="inner kid is not the token's cnf.jkt"
            )
        # Check 3 is made before the claims are parsed, so that the JWS is
        # freed first (memory); its failure is reported after check 2's.
        key = registry.signing_key(token.consumer, inner.kid)
        signature_problem = _signature_problem(inner, key)
        claims = inner.take_claims()
    except JoseError as exc:
        raise EnvelopeInvalid("the envelope is not valid", audit_detail=str(exc)) from exc
    problem = claim_type_problem(claims, _REQUEST_CLAIMS)
    if problem is None and not isinstance(claims.get("end_user", ""), str):
        problem = "claim 'end_user' has the wrong type"
    if problem:
        raise EnvelopeInvalid(f"the request message is not valid: {problem}")
    if key is None or signature_problem:
        raise SignatureInvalid(
            "the request signature does not verify", audit_detail=signature_problem
        )
    return _opened(inner, digest, claims, key)


def check_request_binding(
    request: OpenedMessage,
    token: AccessToken,
    *,
    provider: str,
    service: str,
    subject_field: str | None,
) -> None:
    """Check 4 of 3.3 (``binding-mismatch``): the message belongs to its token and path.

    ``subject_field`` is the contract's; ``None`` when the contract is no
    longer known, which check 7 then refuses.
    """
    claims = request.claims
    mismatches = [
        ("ath", claims["ath"] == token_hash(token.compact)),
        ("iss", claims["iss"] == token.consumer),
        ("aud", claims["aud"] == provider),
        ("svc", claims["svc"] == service == token.grant.service),
        ("contract", claims["contract"] == token.grant.contract),
        ("purpose", claims["purpose"] == token.grant.purpose),
    ]
    if subject_field is not None:
        mismatches.append(("subject", request.body.get(subject_field) == claims["subject"]))
    for claim, matches in mismatches:
        if not matches:
            raise BindingMismatch(f"claim '{claim}' does not match the token or request")


def check_fresh(request: OpenedMessage, now: int) -> None:
    """Check 5 of 3.3 (``stale-message``): the message is fresh, L = 120 s."""
    stale = freshness_problem(request.claims, now, MESSAGE_LIFETIME)
    if stale:
        raise StaleMessage(f"the message is not fresh: {stale}")


def seal_response(
    *,
    provider: str,
    consumer: str,
    request: OpenedMessage,
    status: int,
    fields: list[str],
    body: EncodedBody,
    audit: Mapping[str, Any],
    signing_key: PrivateKey,
    recipient: PublicKey,
    now: int,
) -> SealedMessage:
    """Seal an exchange response (3.4) to the consumer's encryption key."""
    claims = {
        "iss": provider,
        "aud": consumer,
        "jti": new_jti(),
        "iat": now,
        "exp": now + MESSAGE_LIFETIME,
        "in_reply_to": request.jti,
        "req_hash": request.jws_hash,
        "status": status,
        "fields": sorted(fields),
        "body": embedded_json(body.encoded),
        "audit": dict(audit),
    }
    return _seal(claims, signing_key, recipient, RESPONSE_JWS_TYP, RESPONSE_JWE_TYP)


# Given the released ``fields`` claim and ``body``, the reason they exceed the
# contract, or None when everything released is within it.
ReleaseCheck = Callable[[list[str], Mapping[str, Any]], str | None]


def open_response(
    jwe: HandedBody[bytearray],
    *,
    decryption_keys: Collection[PrivateKey],
    registry: SigningKeyLookup,
    provider: str,
    consumer: str,
    request: RequestBinding,
    within_contract: ReleaseCheck,
    now: int,
) -> OpenedMessage:
    """The consumer's checks of 3.4, before its client sees anything.

    3.0 rules, a signature by a registry key of the provider, ``aud``,
    freshness, ``in_reply_to``, ``req_hash`` and released fields within the
    contract. Any failure is ``upstream-unreachable`` (the provider answered
    badly); the reason goes to the audit log. The compact JWE is taken from
    its box (memory, see :func:`_decrypt_inner`).
    """

    def refuse(reason: str) -> UpstreamUnreachable:
        return UpstreamUnreachable(
            "the provider's response failed verification", audit_detail=reason
        )

    try:
        inner, digest = _decrypt_inner(
            jwe.take(), decryption_keys, RESPONSE_JWE_TYP, RESPONSE_JWS_TYP
        )
        key = registry.signing_key(provider, inner.kid)
        if key is None:
            raise refuse("response signed by a key the registry does not list for the provider")
        inner.verify(key)
        claims = inner.take_claims()
    except (JoseError, EnvelopeInvalid) as exc:
        raise refuse(f"response: {exc}") from exc
    problem = claim_type_problem(claims, _RESPONSE_CLAIMS) or freshness_problem(
        claims, now, MESSAGE_LIFETIME
    )
    if problem:
        raise refuse(f"response {problem}")
    if claims["iss"] != provider or claims["aud"] != consumer:
        raise refuse("response iss or aud mismatch")
    if not 200 <= claims["status"] < 500:
        raise refuse("response status is not an answer (200-499)")
    if claims["in_reply_to"] != request.jti:
        raise refuse("in_reply_to is not our request")
    if claims["req_hash"] != request.req_hash:
        raise refuse("req_hash is not our request")
    if not all(isinstance(path, str) for path in claims["fields"]):
        raise refuse("fields must be strings")
    leak = within_contract(claims["fields"], claims["body"])
    if leak:
        raise refuse(f"released data exceeds the contract: {leak}")
    return _opened(inner, digest, claims, key)
