"""The narrow JOSE layer every message goes through (protocol section 3.0).

Written directly over the ``cryptography`` package's primitives and narrow to
exactly the protocol suite (section 2): JWS ``EdDSA`` (also named
``Ed25519``, RFC 9864) with Ed25519 keys and ``ES256`` (raw ``r || s``) with
P-256 keys; JWE in compact serialization only, ``ECDH-ES+A256KW`` (Concat KDF,
RFC 3394 key wrap) with ``A256GCM``, to X25519 or P-256 keys. No other
algorithm exists here, and no cryptographic arithmetic either: only
``cryptography``'s ECDH, Concat KDF, AES key wrap, AES-GCM, Ed25519 and ECDSA
are composed. Around them this module applies the protocol's strict rules:
exact ``typ``, ``alg`` fixed by the key, ``kid`` expected for the position,
refused headers, strict base64url and JSON (no duplicate members, no floats),
exact lengths of every binary member. Nothing here performs I/O; nothing here
trusts a header to choose a key or an algorithm.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeGuard

import orjson
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from gateway.errors import BadSignature, MalformedJose
from gateway.keys import (
    ENC_ALG,
    ENC_ENC,
    PrivateKey,
    PrivateKeyObject,
    PublicKey,
    PublicKeyObject,
    b64url,
    b64url_ascii,
    b64url_decode,
)

# What the ``cryptography`` primitives, hashlib and binascii read from: a view
# of a larger buffer passes without being copied.
_Buffer = bytes | bytearray | memoryview

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

# Sizes fixed by the suite: P-256 and X25519 coordinates, ES256 and Ed25519
# signatures, the A256GCM key, IV and tag, and an A256KW-wrapped 256-bit key.
_COORDINATE_BYTES: Final = 32
_SIGNATURE_BYTES: Final = 64
_CEK_BYTES: Final = 32
_IV_BYTES: Final = 12
_TAG_BYTES: Final = 16
_WRAPPED_CEK_BYTES: Final = _CEK_BYTES + 8

_ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())
_ECDH: Final = ec.ECDH()


class _EdDSA:
    """JWS ``EdDSA``/``Ed25519`` (RFC 8037): the 64-byte RFC 8032 signature."""

    def sign(self, data: _Buffer, key: PrivateKeyObject) -> bytes:
        if not isinstance(key, Ed25519PrivateKey):
            raise TypeError("EdDSA signs with an Ed25519 key")
        return key.sign(data)

    def verify(self, data: _Buffer, key: PublicKeyObject, signature: _Buffer) -> bool:
        if not isinstance(key, Ed25519PublicKey) or len(signature) != _SIGNATURE_BYTES:
            return False
        try:
            key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


class _ES256:
    """JWS ``ES256`` (RFC 7518 3.4): ECDSA P-256 SHA-256, signature ``r || s``, 32 bytes each."""

    def sign(self, data: _Buffer, key: PrivateKeyObject) -> bytes:
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise TypeError("ES256 signs with a P-256 key")
        r, s = decode_dss_signature(key.sign(data, _ECDSA_SHA256))
        return r.to_bytes(_COORDINATE_BYTES, "big") + s.to_bytes(_COORDINATE_BYTES, "big")

    def verify(self, data: _Buffer, key: PublicKeyObject, signature: _Buffer) -> bool:
        if (
            not isinstance(key, ec.EllipticCurvePublicKey)
            or not isinstance(key.curve, ec.SECP256R1)
            or len(signature) != _SIGNATURE_BYTES
        ):
            return False
        r = int.from_bytes(signature[:_COORDINATE_BYTES], "big")
        s = int.from_bytes(signature[_COORDINATE_BYTES:], "big")
        try:
            key.verify(encode_dss_signature(r, s), data, _ECDSA_SHA256)
        except (InvalidSignature, ValueError):
            return False
        return True


_EDDSA: Final = _EdDSA()
_SIGNERS: Final[Mapping[str, _EdDSA | _ES256]] = {
    "EdDSA": _EDDSA,
    "Ed25519": _EDDSA,
    "ES256": _ES256(),
}


def normalize_typ(typ: object) -> str | None:
    """``typ`` compared case-insensitively without an ``application/`` prefix."""
    if not isinstance(typ, str):
        return None
    lowered = typ.lower()
    return lowered.removeprefix("application/")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate member {key!r}")
            seen.add(key)
    return result


def _reject_float(text: str) -> Any:
    raise ValueError("numbers must be integers")


def _reject_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


# One decoder for every call: ``json.loads`` with hooks builds a new one each time.
_STRICT_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_reject_duplicates,
    parse_float=_reject_float,
    parse_constant=_reject_constant,
)


def strict_json_object(data: bytes | bytearray | str) -> dict[str, Any]:
    """Parse a JSON object: UTF-8 without BOM, no duplicate members, no floats, no NaN/Infinity.

    Bytes must be strict UTF-8 (RFC 8259 section 8.1): an encoded lone
    surrogate, another encoding or a byte order mark is refused, as text
    holding a lone surrogate is.
    """
    return _strict_json_parse(_strict_json_text(data))


def strict_json_object_taken(take: Callable[[], bytes | bytearray | str]) -> dict[str, Any]:
    """:func:`strict_json_object` of what ``take()`` gives up (a body's only reference).

    Its bytes are freed once decoded, before the parse, which makes objects
    several times their size; a caller passing the bytes themselves keeps
    them alive through it (memory).
    """
    return _strict_json_parse(_strict_json_text(take()))


def _strict_json_text(data: bytes | bytearray | str) -> str:
    """The first half of :func:`strict_json_object`: the JSON text, checked."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        if not isinstance(text, str):
            raise TypeError(f"JSON must be bytes or text, not {type(data).__name__}")
        # A lone surrogate in text cannot be signed or hashed again; text
        # decoded from strict UTF-8 holds none, so only given text is encoded.
        if text is data and not text.isascii():
            text.encode("utf-8")
        if text.startswith("\ufeff"):
            raise ValueError("a byte order mark is not allowed")
    except (ValueError, UnicodeError, RecursionError) as exc:
        raise MalformedJose(f"not strict JSON: {exc}") from exc
    return text


def _strict_json_parse(text: str) -> dict[str, Any]:
    """The second half of :func:`strict_json_object`: the checked text parsed.

    Apart, so that the bytes the text was decoded from can be freed before
    parsing (memory).
    """
    try:
        value = _STRICT_DECODER.decode(text)
    except (ValueError, UnicodeError, RecursionError) as exc:
        raise MalformedJose(f"not strict JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise MalformedJose("not a JSON object")
    escaped = "\\u" in text
    if escaped:
        # A lone surrogate escape parses but is no Unicode text: it could not
        # be hashed, pseudonymised or signed again. Re-encoding finds one.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise MalformedJose("a string holds a lone surrogate escape") from exc
    return value


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON in member order: what we sign, hash and send.

    The bytes are those of ``json.dumps(value, separators=(",", ":"),
    ensure_ascii=False)`` for every value our parsers produce (no floats:
    strict JSON refuses them). orjson writes them several times faster; what
    it refuses (integers beyond 64 bits, non-string keys, lone surrogates)
    goes to the standard encoder, which fails or succeeds as it always did.
    A value from :func:`embedded_json` is written as it is.
    """
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def embedded_json(encoded: bytes) -> Any:
    """JSON already encoded by :func:`canonical_json`, which then writes it as it is.

    For a large value that is both hashed and signed: encoded once, and its
    parsed form need not be kept until the signature is made.
    """
    return orjson.Fragment(encoded)


def _compact_text(compact: object) -> str:
    if not isinstance(compact, str):
        raise MalformedJose("not a compact serialization string")
    if len(compact) > MAX_COMPACT_BYTES:
        raise MalformedJose("object too large")
    return compact


def _segments(compact: object, count: int) -> list[str]:
    parts = _compact_text(compact).split(".")
    if len(parts) != count:
        raise MalformedJose(f"compact serialization must have {count} parts")
    return parts


# A compact serialization as parsed: its bytes (ASCII when well formed).
_Compact = bytes | bytearray

# Where a segment is in its compact serialization: (start, end).
_Bounds = tuple[int, int]


def _compact_bytes(compact: object) -> _Compact:
    """A compact serialization's bytes: the ASCII bytes as received, or text's UTF-8.

    Bytes are parsed where they are, with no text made of them (memory). Text
    that is not ASCII stays refusable: UTF-8 puts no dot inside a character,
    and a segment with any non-ASCII byte is not base64url.
    """
    if isinstance(compact, str):
        if len(compact) > MAX_COMPACT_BYTES:
            raise MalformedJose("object too large")
        return compact.encode("utf-8", "surrogatepass")
    if not isinstance(compact, bytes | bytearray):
        raise MalformedJose("not a compact serialization string")
    if len(compact) > MAX_COMPACT_BYTES:
        raise MalformedJose("object too large")
    return compact


def _segment_bounds(compact: object, count: int) -> tuple[_Compact, list[_Bounds]]:
    """The checks of :func:`_segments`, and where the segments are rather than copies of them.

    A large segment is then decoded a slice at a time from the compact form
    (:func:`_b64url_decoded_slices`), never copied whole (memory).
    """
    data = _compact_bytes(compact)
    bounds: list[_Bounds] = []
    start = 0
    for _ in range(count - 1):
        end = data.find(b".", start)
        if end < 0:
            break
        bounds.append((start, end))
        start = end + 1
    if len(bounds) != count - 1 or data.find(b".", start) >= 0:
        raise MalformedJose(f"compact serialization must have {count} parts")
    bounds.append((start, len(data)))
    return data, bounds


def _segment(data: _Compact, bounds: _Bounds) -> _Compact:
    start, end = bounds
    return data[start:end]


# Large values are base64url-coded a slice at a time: encoded this many bytes
# at a time (a multiple of 3, so that only the last slice has padding), and
# decoded this many characters at a time (a multiple of 4, so that every slice
# is whole base64 quanta). The slices are small; only the result is full size.
_ENCODE_SLICE_BYTES: Final = 3 * 64 * 1024
_DECODE_SLICE_CHARS: Final = 4 * 64 * 1024


def _b64url_length(size: int) -> int:
    """The length of the unpadded base64url text of ``size`` bytes."""
    return (4 * size + 2) // 3


def _slices(data: _Buffer) -> Iterator[memoryview]:
    """``data`` in views of ``_ENCODE_SLICE_BYTES`` (the last may be shorter): no copies."""
    view = memoryview(data)
    for start in range(0, len(view), _ENCODE_SLICE_BYTES):
        yield view[start : start + _ENCODE_SLICE_BYTES]


class _CompactBuffer:
    """A compact serialization written segment by segment into one buffer of its size.

    Each segment is base64url-coded a slice at a time straight into place: no
    temporary of a segment's size, no copy to join, no text made of the bytes
    (memory: a large message's compact form is the largest object in hand).
    """

    def __init__(self, *sizes: int, first: bytes = b"") -> None:
        """Room for ``first`` (a segment already coded) and the segments of ``sizes`` raw bytes."""
        dots = len(sizes) - (0 if first else 1)
        self.data = bytearray(len(first) + dots + sum(map(_b64url_length, sizes)))
        self.data[: len(first)] = first
        self._at = len(first)

    def _put(self, ascii_text: _Buffer) -> None:
        end = self._at + len(ascii_text)
        self.data[self._at : end] = ascii_text
        self._at = end

    def segment(self, raw: _Buffer) -> None:
        """Append ``BASE64URL(raw)``, after a dot unless it is the first segment."""
        self.coded_slices(_slices(raw))

    def coded_slices(self, pieces: Iterator[_Buffer]) -> None:
        """Append one segment made of ``pieces``: each but the last a multiple of 3 bytes."""
        if self._at:
            self._put(b".")
        for piece in pieces:
            self._put(b64url_ascii(piece))

    @property
    def written(self) -> memoryview:
        """A view of what is written so far (a signing input, before its signature)."""
        return memoryview(self.data)[: self._at]


def _b64url_decode_segment(data: _Compact, bounds: _Bounds) -> _Compact:
    """``b64url_decode`` of a segment: a large one into one buffer, a slice at a time.

    No copy of the segment is made, and no list of decoded slices to join
    (memory).
    """
    start, end = bounds
    if end - start <= _DECODE_SLICE_CHARS:
        return b64url_decode(_segment(data, bounds))
    decoded = bytearray((end - start) * 3 // 4)
    at = 0
    for piece in _b64url_decoded_slices(data, bounds):
        decoded[at : at + len(piece)] = piece
        at += len(piece)
    return decoded


def _b64url_decoded_slices(data: _Compact, bounds: _Bounds) -> Iterator[bytes]:
    """``b64url_decode`` of a segment, a slice at a time, with exactly its errors.

    Each slice but the last is whole quanta, so the slices decode alone and
    one fails exactly when the whole segment would; the whole segment is then
    decoded for the very error it gives.
    """
    start, end = bounds
    try:
        for at in range(start, end, _DECODE_SLICE_CHARS):
            yield b64url_decode(data[at : min(at + _DECODE_SLICE_CHARS, end)])
    except ValueError:
        b64url_decode(_segment(data, bounds))
        raise


def _header(segment: _Compact) -> dict[str, Any]:
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


@dataclass
class UnverifiedJWS:
    """A compact JWS split and header-checked, its signature not yet verified.

    Not frozen for one reason: :meth:`take_claims` gives the payload's bytes
    and the compact form up, so a large message's claims, their text, its
    payload's bytes and its JWS are not all alive at once (memory).
    """

    compact: _Compact
    header: Mapping[str, Any]
    payload: _Compact
    signature: _Compact

    @property
    def kid(self) -> str:
        """The signer's ``kid`` from the header (checked to be a string)."""
        return str(self.header["kid"])

    @property
    def signing_input(self) -> _Buffer:
        """``BASE64URL(header) || '.' || BASE64URL(payload)`` as ASCII: a view, not a copy."""
        return memoryview(self.compact)[: self.compact.rindex(b".")]

    def claims(self) -> dict[str, Any]:
        """The payload as a strict JSON object (call only after :meth:`verify`)."""
        return strict_json_object(self.payload)

    def take_claims(self) -> dict[str, Any]:
        """:meth:`claims`, once, after :meth:`verify`: the payload and the compact are given up.

        Neither is then alive through the parse, which makes objects several
        times their size (memory).
        """
        return strict_json_object_taken(self._give_up)

    def _give_up(self) -> _Compact:
        """The payload, with it and the compact form dropped from this JWS."""
        payload, self.payload, self.compact = self.payload, b"", b""
        return payload

    def verify(self, key: PublicKey) -> None:
        """Verify with ``key``: its ``alg`` must match the header and the signature hold."""
        if key.use != "sig":
            raise BadSignature("key is not a signing key")
        alg = self.header.get("alg")
        if not isinstance(alg, str) or not key.accepts_alg(alg):
            raise BadSignature(f"alg does not match the key's {key.alg}")
        signer = _SIGNERS.get(alg)
        # The signing input is made only once the key fits: a large copy otherwise.
        if signer is None or not signer.verify(self.signing_input, key.key, self.signature):
            raise BadSignature("signature does not verify")


def parse_jws(compact: object, expected_typ: str) -> UnverifiedJWS:
    """Split a compact JWS and apply the 3.0 header rules for position ``expected_typ``."""
    data, (header_at, payload_at, signature_at) = _segment_bounds(compact, 3)
    header = _header(_segment(data, header_at))
    _check_common_header(header, expected_typ)
    alg = header.get("alg")
    if alg not in _SIGNERS:
        raise MalformedJose("alg not allowed")
    try:
        payload = _b64url_decode_segment(data, payload_at)
        signature = _b64url_decode_segment(data, signature_at)
    except ValueError as exc:
        raise MalformedJose(f"payload or signature: {exc}") from exc
    return UnverifiedJWS(compact=data, header=header, payload=payload, signature=signature)


def sign_jws_ascii(payload: bytes, key: PrivateKey, typ: str) -> bytearray:
    """:func:`sign_jws` as ASCII bytes: what an envelope encrypts, no text made of it (memory).

    The signing input is written into the buffer that then takes its
    signature: no join copies it (memory).
    """
    header = canonical_json({"typ": typ, "alg": key.alg, "kid": key.kid})
    compact = _CompactBuffer(len(header), len(payload), _SIGNATURE_BYTES)
    compact.segment(header)
    compact.segment(payload)
    del payload  # a caller's temporary payload is freed before the signature (memory)
    compact.segment(_SIGNERS[key.alg].sign(compact.written, key.key))
    return compact.data


def sign_jws(payload: bytes, key: PrivateKey, typ: str) -> str:
    """A compact JWS of ``payload`` with header ``{"typ", "alg", "kid"}``, signed by ``key``."""
    return sign_jws_ascii(payload, key, typ).decode("ascii")


def sign_jwt(claims: Mapping[str, Any], key: PrivateKey, typ: str) -> str:
    """A compact JWS of the JSON ``claims`` (see :func:`sign_jws`)."""
    return sign_jws_ascii(canonical_json(claims), key, typ).decode("ascii")


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


# ECDH-ES+A256KW (RFC 7518 4.6): the KEK is Concat KDF (NIST SP 800-56A) with
# SHA-256 over Z, with OtherInfo = AlgorithmID || PartyUInfo || PartyVInfo ||
# SuppPubInfo, each of the first three a 32-bit big-endian length and its bytes.
def _length_prefixed(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


_ALGORITHM_ID: Final = _length_prefixed(ENC_ALG.encode("ascii"))
_SUPP_PUB_INFO: Final = (_CEK_BYTES * 8).to_bytes(4, "big")
# Our JWEs carry neither apu nor apv (both empty): their OtherInfo is a constant.
_OTHER_INFO: Final = _ALGORITHM_ID + _length_prefixed(b"") + _length_prefixed(b"") + _SUPP_PUB_INFO


def _key_encryption_key(shared_secret: bytes, other_info: bytes) -> bytes:
    return ConcatKDFHash(hashes.SHA256(), _CEK_BYTES, other_info).derive(shared_secret)


def _p256_epk(public: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = public.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(_COORDINATE_BYTES, "big")),
        "y": b64url(numbers.y.to_bytes(_COORDINATE_BYTES, "big")),
    }


def _sender_agreement(recipient: PublicKeyObject) -> tuple[dict[str, str], bytes]:
    """A fresh ephemeral key of the recipient's curve: its public JWK and Z."""
    if isinstance(recipient, X25519PublicKey):
        ephemeral = X25519PrivateKey.generate()
        shared = ephemeral.exchange(recipient)  # ValueError for a low-order key
        x = b64url(ephemeral.public_key().public_bytes_raw())
        return {"kty": "OKP", "crv": "X25519", "x": x}, shared
    if isinstance(recipient, ec.EllipticCurvePublicKey) and isinstance(
        recipient.curve, ec.SECP256R1
    ):
        ephemeral_ec = ec.generate_private_key(ec.SECP256R1())
        shared = ephemeral_ec.exchange(_ECDH, recipient)
        return _p256_epk(ephemeral_ec.public_key()), shared
    raise ValueError("not an X25519 or P-256 key")


def encrypt(plaintext: _Buffer, recipient: PublicKey, typ: str) -> bytearray:
    """A compact JWE (``ECDH-ES+A256KW``, ``A256GCM``) of ``plaintext`` to ``recipient``, as ASCII.

    A large plaintext is encrypted a slice at a time, each slice's ciphertext
    coded straight into the compact form: no ciphertext of the plaintext's
    size is made, and no text of the result (memory).
    """
    if recipient.use != "enc":
        raise MalformedJose("recipient key is not an encryption key")
    try:
        epk, shared = _sender_agreement(recipient.key)
    except ValueError as exc:
        # A low-order X25519 recipient key yields no shared secret.
        raise MalformedJose("cannot encrypt to that key") from exc
    header = {
        "alg": ENC_ALG,
        "enc": ENC_ENC,
        "kid": recipient.kid,
        "cty": "JWT",
        "typ": typ,
        "epk": epk,
    }
    protected = b64url_ascii(canonical_json(header))
    cek = os.urandom(_CEK_BYTES)
    iv = os.urandom(_IV_BYTES)
    compact = _CompactBuffer(
        _WRAPPED_CEK_BYTES, _IV_BYTES, len(plaintext), _TAG_BYTES, first=protected
    )
    compact.segment(aes_key_wrap(_key_encryption_key(shared, _OTHER_INFO), cek))
    compact.segment(iv)
    if len(plaintext) <= _ENCODE_SLICE_BYTES:
        # One call is fastest, and its copy is small.
        sealed = memoryview(AESGCM(cek).encrypt(iv, plaintext, protected))
        compact.segment(sealed[:-_TAG_BYTES])
        compact.segment(sealed[-_TAG_BYTES:])
        return compact.data
    encryptor = Cipher(algorithms.AES(cek), modes.GCM(iv)).encryptor()
    encryptor.authenticate_additional_data(protected)
    # GCM is a stream mode: each slice's ciphertext is exactly the slice's
    # size, so every piece but the last is whole base64 quanta.
    compact.coded_slices(encryptor.update(piece) for piece in _slices(plaintext))
    encryptor.finalize()
    compact.segment(encryptor.tag)
    return compact.data


@dataclass(frozen=True)
class JWEHeader:
    """The checked protected header of a compact JWE, and the key it names."""

    header: Mapping[str, Any]
    key: PrivateKey


@dataclass(frozen=True)
class _SplitJWEHeader(JWEHeader):
    """What :func:`check_jwe_header` split, so that :func:`decrypt` splits nothing twice."""

    compact: _Compact = field(repr=False, compare=False)
    bounds: Sequence[_Bounds] = field(repr=False, compare=False)


def check_jwe_header(compact: object, keys: Collection[PrivateKey], expected_typ: str) -> JWEHeader:
    """Apply 3.0 to a JWE header and pick our key by its ``kid``."""
    data, bounds = _segment_bounds(compact, 5)
    header = _header(_segment(data, bounds[0]))
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
            return _SplitJWEHeader(header=header, key=key, compact=data, bounds=bounds)
    raise MalformedJose("kid is not one of our encryption keys")


def _check_epk(epk: Mapping[str, Any], key: PrivateKey) -> None:
    # The epk is read as our key's type whatever its kty says; an epk that
    # claims another type is refused (Wycheproof x25519_jwk 524-527).
    expected = key.public.jwk
    if epk.get("kty") != expected["kty"] or epk.get("crv") != expected["crv"]:
        raise MalformedJose("epk is not a key of the recipient key's type")
    if "d" in epk:
        raise MalformedJose("epk carries a private key")


def _decoded(segment: object, name: str) -> bytes:
    if not isinstance(segment, str | bytes | bytearray):
        raise MalformedJose(f"does not decrypt: {name} is not base64url")
    try:
        return b64url_decode(segment)
    except ValueError as exc:
        raise MalformedJose(f"does not decrypt: {name} is not base64url") from exc


def _fixed_bytes(segment: object, name: str, size: int) -> bytes:
    raw = _decoded(segment, name)
    if len(raw) != size:
        raise MalformedJose(f"does not decrypt: {name} must be {size} bytes")
    return raw


def _recipient_agreement(epk: Mapping[str, Any], key: PrivateKey) -> bytes:
    """Z between our ``key`` and the sender's ``epk``, read as a key of our key's curve."""
    _check_epk(epk, key)
    native = key.key
    if isinstance(native, X25519PrivateKey):
        peer = X25519PublicKey.from_public_bytes(
            _fixed_bytes(epk.get("x"), "epk x", _COORDINATE_BYTES)
        )
        try:
            return native.exchange(peer)
        except ValueError as exc:
            # RFC 7748 6.1: a low-order point gives the all-zero secret.
            raise MalformedJose(f"does not decrypt: low-order epk ({type(exc).__name__})") from exc
    if isinstance(native, ec.EllipticCurvePrivateKey) and isinstance(native.curve, ec.SECP256R1):
        x = _fixed_bytes(epk.get("x"), "epk x", _COORDINATE_BYTES)
        y = _fixed_bytes(epk.get("y"), "epk y", _COORDINATE_BYTES)
        try:
            # Refuses a point off the curve (invalid-curve attacks) and a
            # coordinate that is not reduced modulo p.
            peer_ec = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
        except ValueError as exc:
            raise MalformedJose(
                f"does not decrypt: epk is not a P-256 point ({type(exc).__name__})"
            ) from exc
        return native.exchange(_ECDH, peer_ec)
    raise MalformedJose("does not decrypt: not an X25519 or P-256 key")


def _other_info(header: Mapping[str, Any]) -> bytes:
    if "apu" not in header and "apv" not in header:
        return _OTHER_INFO
    apu = _decoded(header.get("apu", ""), "apu")
    apv = _decoded(header.get("apv", ""), "apv")
    return _ALGORITHM_ID + _length_prefixed(apu) + _length_prefixed(apv) + _SUPP_PUB_INFO


def _gcm_decrypt(
    cek: bytes, iv: bytes, tag: bytes, aad: _Compact, *, compact: _Compact, ciphertext_at: _Bounds
) -> _Compact:
    """A256GCM decryption of the ciphertext segment of ``compact``; ``InvalidTag`` if forged.

    A large ciphertext is decoded and decrypted a slice at a time straight
    into the plaintext's buffer: no copy of its segment and no ciphertext of
    its size (memory). The plaintext is returned only once the tag verified.
    """
    start, end = ciphertext_at
    if end - start <= _DECODE_SLICE_CHARS:
        return AESGCM(cek).decrypt(iv, b64url_decode(compact[start:end]) + tag, aad)
    decryptor = Cipher(algorithms.AES(cek), modes.GCM(iv, tag)).decryptor()
    decryptor.authenticate_additional_data(aad)
    plaintext = bytearray((end - start) * 3 // 4)
    at = 0
    for piece in _b64url_decoded_slices(compact, ciphertext_at):
        decrypted = decryptor.update(piece)
        plaintext[at : at + len(decrypted)] = decrypted
        at += len(decrypted)
    decryptor.finalize()
    return plaintext


def _open(
    compact: _Compact, bounds: Sequence[_Bounds], header: Mapping[str, Any], key: PrivateKey
) -> _Compact:
    """ECDH-ES+A256KW / A256GCM decryption of a split compact JWE with ``key``.

    It does not rely on the header check having run: whatever the header
    says, only the suite's algorithms are used, and a header naming others,
    or compression or extensions, is refused.
    """
    if key.use != "enc":
        raise MalformedJose("does not decrypt: not an encryption key")
    if header.get("alg") != ENC_ALG or header.get("enc") != ENC_ENC:
        raise MalformedJose(f"does not decrypt: alg/enc must be {ENC_ALG}/{ENC_ENC}")
    if "zip" in header or "crit" in header:
        raise MalformedJose("does not decrypt: zip and crit are refused")
    epk = header.get("epk")
    if not isinstance(epk, Mapping):
        raise MalformedJose("does not decrypt: epk missing")
    protected_at, encrypted_key_at, iv_at, ciphertext_at, tag_at = bounds
    encrypted_key = _fixed_bytes(
        _segment(compact, encrypted_key_at), "encrypted key", _WRAPPED_CEK_BYTES
    )
    iv = _fixed_bytes(_segment(compact, iv_at), "iv", _IV_BYTES)
    tag = _fixed_bytes(_segment(compact, tag_at), "tag", _TAG_BYTES)
    other_info = _other_info(header)
    kek = _key_encryption_key(_recipient_agreement(epk, key), other_info)
    try:
        cek = aes_key_unwrap(kek, encrypted_key)
    except InvalidUnwrap as exc:
        raise MalformedJose("does not decrypt: InvalidUnwrap") from exc
    aad = _segment(compact, protected_at)
    try:
        return _gcm_decrypt(cek, iv, tag, aad, compact=compact, ciphertext_at=ciphertext_at)
    except ValueError as exc:
        raise MalformedJose("does not decrypt: ciphertext is not base64url") from exc
    except InvalidTag as exc:
        raise MalformedJose("does not decrypt: InvalidTag") from exc


def decrypt(compact: object, keys: Collection[PrivateKey], expected_typ: str) -> _Compact:
    """Decrypt a compact JWE addressed to one of ``keys``; any failure is ``MalformedJose``.

    ``compact`` is the ASCII bytes as received (as :func:`encrypt` makes
    them), parsed where they are, or its text.
    """
    data = _compact_bytes(compact)
    checked = check_jwe_header(data, keys, expected_typ)
    if isinstance(checked, _SplitJWEHeader) and checked.compact is data:
        bounds, header = checked.bounds, checked.header
    else:  # a JWEHeader not made by check_jwe_header for this object: split it here
        data, bounds = _segment_bounds(data, 5)
        header = _header(_segment(data, bounds[0]))
    try:
        return _open(data, bounds, header, checked.key)
    except MalformedJose:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise MalformedJose(f"does not decrypt: {type(exc).__name__}") from exc


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
