"""The narrow JOSE layer every message goes through (protocol section 3.0).

Signatures use pyjwt's algorithm implementations and JWE uses joserfc; this
module only adds the protocol's strict rules around them: exact ``typ``,
``alg`` fixed by the key, ``kid`` expected for the position, refused headers,
strict base64url and JSON (no duplicate members, no floats). Nothing here
performs I/O; nothing here trusts a header to choose a key or an algorithm.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

from cryptography.exceptions import InvalidKey, InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwe
from joserfc.errors import JoseError as JoserfcError
from joserfc.jwe import JWERegistry
from joserfc.jwk import ECKey, OKPKey
from jwt.algorithms import Algorithm, ECAlgorithm, OKPAlgorithm
from jwt.exceptions import InvalidKeyError

from gateway.errors import BadSignature, MalformedJose
from gateway.keys import ENC_ALG, ENC_ENC, PrivateKey, PublicKey, b64url, b64url_decode

# Headers the protocol refuses in every object (3.0): no extensions, no
# compression, and no header may carry or locate a key other than the JWE epk.
REFUSED_HEADERS: Final = frozenset(
    {"crit", "b64", "zip", "jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256"}
)

# A compact object larger than this is refused before any parsing (DoS bound);
# the service body limit (protocol 3.3) is enforced earlier and is smaller.
MAX_COMPACT_BYTES: Final = 16 * 1024 * 1024

# A header larger than this is not one of ours.
MAX_HEADER_BYTES: Final = 4096

_SIGNERS: Final[Mapping[str, Algorithm]] = {
    "EdDSA": OKPAlgorithm(),
    "Ed25519": OKPAlgorithm(),
    "ES256": ECAlgorithm(ECAlgorithm.SHA256, ec.SECP256R1),
}


def normalize_typ(typ: object) -> str | None:
    """``typ`` compared case-insensitively without an ``application/`` prefix."""
    if not isinstance(typ, str):
        return None
    lowered = typ.lower()
    return lowered.removeprefix("application/")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate member {key!r}")
        result[key] = value
    return result


def _reject_float(text: str) -> Any:
    raise ValueError("numbers must be integers")


def _reject_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def strict_json_object(data: bytes | str) -> dict[str, Any]:
    """Parse a JSON object: no duplicate members, no floats, no NaN/Infinity."""
    try:
        value = json.loads(
            data,
            object_pairs_hook=_reject_duplicates,
            parse_float=_reject_float,
            parse_constant=_reject_constant,
        )
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedJose(f"not strict JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise MalformedJose("not a JSON object")
    escaped = b"\\u" in data if isinstance(data, bytes) else "\\u" in data
    if escaped:
        # A lone surrogate escape parses but is no Unicode text: it could not
        # be hashed, pseudonymised or signed again. Re-encoding finds one.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise MalformedJose("a string holds a lone surrogate escape") from exc
    return value


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON for payloads we sign (member order as given)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _segments(compact: object, count: int) -> list[str]:
    if not isinstance(compact, str):
        raise MalformedJose("not a compact serialization string")
    if len(compact) > MAX_COMPACT_BYTES:
        raise MalformedJose("object too large")
    parts = compact.split(".")
    if len(parts) != count:
        raise MalformedJose(f"compact serialization must have {count} parts")
    return parts


def _header(segment: str) -> dict[str, Any]:
    if len(segment) > MAX_HEADER_BYTES:
        raise MalformedJose("header too large")
    try:
        raw = b64url_decode(segment)
    except ValueError as exc:
        raise MalformedJose(f"header: {exc}") from exc
    return strict_json_object(raw)


def _check_common_header(header: Mapping[str, Any], expected_typ: str) -> None:
    refused = REFUSED_HEADERS.intersection(header)
    if refused:
        raise MalformedJose(f"refused header {sorted(refused)[0]!r}")
    if normalize_typ(header.get("typ")) != expected_typ:
        raise MalformedJose(f"typ must be {expected_typ!r}")
    if not isinstance(header.get("kid"), str):
        raise MalformedJose("kid missing")


@dataclass(frozen=True)
class UnverifiedJWS:
    """A compact JWS split and header-checked, its signature not yet verified."""

    compact: str
    header: Mapping[str, Any]
    payload: bytes
    signature: bytes

    @property
    def kid(self) -> str:
        """The signer's ``kid`` from the header (checked to be a string)."""
        return str(self.header["kid"])

    @property
    def signing_input(self) -> bytes:
        """``BASE64URL(header) || '.' || BASE64URL(payload)`` as ASCII."""
        return self.compact.rsplit(".", 1)[0].encode("ascii")

    def claims(self) -> dict[str, Any]:
        """The payload as a strict JSON object (call only after :meth:`verify`)."""
        return strict_json_object(self.payload)

    def verify(self, key: PublicKey) -> None:
        """Verify with ``key``: its ``alg`` must match the header and the signature hold."""
        if key.use != "sig":
            raise BadSignature("key is not a signing key")
        alg = self.header.get("alg")
        if not isinstance(alg, str) or not key.accepts_alg(alg):
            raise BadSignature(f"alg does not match the key's {key.alg}")
        signer = _SIGNERS[alg]
        try:
            valid = signer.verify(self.signing_input, key.key, self.signature)
        except (InvalidKeyError, ValueError, TypeError) as exc:
            raise BadSignature("signature does not verify") from exc
        if not valid:
            raise BadSignature("signature does not verify")


def parse_jws(compact: object, expected_typ: str) -> UnverifiedJWS:
    """Split a compact JWS and apply the 3.0 header rules for position ``expected_typ``."""
    header_b64, payload_b64, signature_b64 = _segments(compact, 3)
    header = _header(header_b64)
    _check_common_header(header, expected_typ)
    alg = header.get("alg")
    if alg not in _SIGNERS:
        raise MalformedJose("alg not allowed")
    try:
        payload = b64url_decode(payload_b64)
        signature = b64url_decode(signature_b64)
    except ValueError as exc:
        raise MalformedJose(f"payload or signature: {exc}") from exc
    return UnverifiedJWS(compact=str(compact), header=header, payload=payload, signature=signature)


def sign_jws(payload: bytes, key: PrivateKey, typ: str) -> str:
    """A compact JWS of ``payload`` with header ``{"typ", "alg", "kid"}``, signed by ``key``."""
    header = canonical_json({"typ": typ, "alg": key.alg, "kid": key.kid})
    signing_input = f"{b64url(header)}.{b64url(payload)}"
    signature = _SIGNERS[key.alg].sign(signing_input.encode("ascii"), key.key)
    return f"{signing_input}.{b64url(signature)}"


def sign_jwt(claims: Mapping[str, Any], key: PrivateKey, typ: str) -> str:
    """A compact JWS of the JSON ``claims`` (see :func:`sign_jws`)."""
    return sign_jws(canonical_json(claims), key, typ)


def detached_signature(payload: bytes, key: PrivateKey, typ: str) -> str:
    """A detached compact JWS (RFC 7515 appendix F): the payload segment left empty."""
    header_b64, _, signature_b64 = sign_jws(payload, key, typ).split(".")
    return f"{header_b64}..{signature_b64}"


def attach_payload(detached: str, payload: bytes) -> str:
    """Put ``payload`` back into a detached compact JWS for verification."""
    header_b64, payload_b64, signature_b64 = _segments(detached, 3)
    if payload_b64:
        raise MalformedJose("a detached signature must have an empty payload segment")
    return f"{header_b64}.{b64url(payload)}.{signature_b64}"


def _joserfc_key(key: PublicKey | PrivateKey) -> Any:
    cached = _JOSERFC_KEYS.get((key.kid, isinstance(key, PrivateKey)))
    if cached is not None:
        return cached
    native = key.key
    imported = (
        ECKey.import_key(native)
        if isinstance(native, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey)
        else OKPKey.import_key(native)
    )
    if len(_JOSERFC_KEYS) >= _JOSERFC_CACHE_SIZE:
        _JOSERFC_KEYS.clear()
    _JOSERFC_KEYS[(key.kid, isinstance(key, PrivateKey))] = imported
    return imported


class _GatewayJWERegistry(JWERegistry):
    # joserfc caps ciphertext at 64 KiB by default; our bound is the compact
    # size limit, enforced before parsing (and the body limits before that).
    max_ciphertext_length = MAX_COMPACT_BYTES


# Importing a key into joserfc costs more than using it; keys are few.
_JOSERFC_CACHE_SIZE: Final = 4096
_JOSERFC_KEYS: dict[tuple[str, bool], Any] = {}
_JWE_REGISTRY: Final = _GatewayJWERegistry(algorithms=[ENC_ALG, ENC_ENC])


def encrypt(plaintext: bytes, recipient: PublicKey, typ: str) -> str:
    """A compact JWE (``ECDH-ES+A256KW``, ``A256GCM``) of ``plaintext`` to ``recipient``."""
    if recipient.use != "enc":
        raise MalformedJose("recipient key is not an encryption key")
    header = {"alg": ENC_ALG, "enc": ENC_ENC, "kid": recipient.kid, "cty": "JWT", "typ": typ}
    try:
        return str(
            jwe.encrypt_compact(header, plaintext, _joserfc_key(recipient), registry=_JWE_REGISTRY)
        )
    except ValueError as exc:
        # A low-order X25519 recipient key yields no shared secret.
        raise MalformedJose("cannot encrypt to that key") from exc


@dataclass(frozen=True)
class JWEHeader:
    """The checked protected header of a compact JWE, and the key it names."""

    header: Mapping[str, Any]
    key: PrivateKey


def check_jwe_header(compact: object, keys: Collection[PrivateKey], expected_typ: str) -> JWEHeader:
    """Apply 3.0 to a JWE header and pick our key by its ``kid``."""
    header = _header(_segments(compact, 5)[0])
    _check_common_header(header, expected_typ)
    if header.get("alg") != ENC_ALG or header.get("enc") != ENC_ENC:
        raise MalformedJose(f"alg/enc must be {ENC_ALG}/{ENC_ENC}")
    epk = header.get("epk")
    if not isinstance(epk, Mapping):
        raise MalformedJose("epk missing")
    cty = header.get("cty")
    if cty is not None and normalize_typ(cty) != "jwt":
        raise MalformedJose("cty must be JWT")
    for key in keys:
        if key.kid == header["kid"]:
            _check_epk(epk, key)
            return JWEHeader(header=header, key=key)
    raise MalformedJose("kid is not one of our encryption keys")


def _check_epk(epk: Mapping[str, Any], key: PrivateKey) -> None:
    # The libraries read the epk as our key's type whatever its kty says;
    # an epk that claims another type is refused (Wycheproof x25519_jwk 524-527).
    expected = {name: key.public.jwk[name] for name in ("kty", "crv")}
    if {name: epk.get(name) for name in expected} != expected:
        raise MalformedJose("epk is not a key of the recipient key's type")
    if "d" in epk:
        raise MalformedJose("epk carries a private key")


def decrypt(compact: object, keys: Collection[PrivateKey], expected_typ: str) -> bytes:
    """Decrypt a compact JWE addressed to one of ``keys``; any failure is ``MalformedJose``."""
    checked = check_jwe_header(compact, keys, expected_typ)
    try:
        result = jwe.decrypt_compact(
            str(compact), _joserfc_key(checked.key), registry=_JWE_REGISTRY
        )
    except (JoserfcError, InvalidTag, InvalidKey, ValueError, TypeError, KeyError) as exc:
        raise MalformedJose(f"does not decrypt: {type(exc).__name__}") from exc
    plaintext = result.plaintext
    if not isinstance(plaintext, bytes):
        raise MalformedJose("empty plaintext")
    return plaintext


# Clock skew tolerated on every time check (protocol 3.0).
CLOCK_SKEW_SECONDS: Final = 30

# Maximum lifetimes L of 3.0, by position.
CLIENT_ASSERTION_LIFETIME: Final = 60
ACCESS_TOKEN_LIFETIME: Final = 300
MESSAGE_LIFETIME: Final = 120


def is_int(value: object) -> TypeGuard[int]:
    """A JSON integer (``bool`` is not one, though Python says it is an ``int``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def claim_type_problem(claims: Mapping[str, Any], spec: Mapping[str, type]) -> str | None:
    """The first claim of ``spec`` missing from ``claims`` or of the wrong JSON type."""
    for name, expected in spec.items():
        if name not in claims:
            return f"claim {name!r} missing"
        value = claims[name]
        valid = is_int(value) if expected is int else isinstance(value, expected)
        if not valid:
            return f"claim {name!r} has the wrong type"
    return None


def freshness_problem(claims: Mapping[str, Any], now: int, lifetime: int) -> str | None:
    """Why the ``iat``/``exp``/``nbf`` of ``claims`` are not fresh at ``now``, or None.

    Fresh means ``iat <= now + skew``, ``exp > now - skew``,
    ``iat < exp <= iat + lifetime`` and ``nbf`` (if present) ``<= now + skew``.
    """
    iat, exp, nbf = claims.get("iat"), claims.get("exp"), claims.get("nbf", now)
    if not (is_int(iat) and is_int(exp) and is_int(nbf)):
        return "iat, exp and nbf must be integers"
    if iat > now + CLOCK_SKEW_SECONDS:
        return "issued in the future"
    if exp <= now - CLOCK_SKEW_SECONDS:
        return "expired"
    if not iat < exp <= iat + lifetime:
        return f"lifetime must be positive and at most {lifetime} s"
    if nbf > now + CLOCK_SKEW_SECONDS:
        return "not yet valid"
    return None
