"""The strict JOSE layer: header rules, JSON rules, signatures, JWE, freshness (protocol 3.0)."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway import jose
from gateway.bodies import HandedBody
from gateway.errors import BadSignature, JoseError, MalformedJose
from gateway.jose import (
    ACCESS_TOKEN_LIFETIME,
    CLIENT_ASSERTION_LIFETIME,
    CLOCK_SKEW_SECONDS,
    MAX_COMPACT_BYTES,
    MAX_HEADER_BYTES,
    MESSAGE_LIFETIME,
    REFUSED_HEADERS,
    attach_payload,
    canonical_json,
    check_jwe_header,
    claim_type_problem,
    decrypt,
    detached_signature,
    embedded_json,
    encrypt,
    freshness_problem,
    is_int,
    normalize_typ,
    parse_jws,
    sign_jws,
    sign_jws_ascii,
    sign_jwt,
    strict_json_object,
)
from gateway.keys import (
    ENC_ALG,
    ENC_ENC,
    KeyAlgorithm,
    PrivateKey,
    b64url,
    b64url_decode,
    generate_private_keys,
)

TYP = "exchange-request+jwt"
JWE_TYP = "exchange-request+jwe"


def generate(alg: KeyAlgorithm = "ed25519", index: int = 0) -> PrivateKey:
    """A fresh key (signing by default, ``index`` 1 for encryption)."""
    return generate_private_keys(alg)[index]


def raw_signature(key: PrivateKey, data: bytes) -> bytes:
    """The JOSE signature of ``data`` with ``key``, made with ``cryptography`` directly."""
    native = key.key
    if isinstance(native, Ed25519PrivateKey):
        return native.sign(data)
    assert isinstance(native, ec.EllipticCurvePrivateKey)
    r, s = decode_dss_signature(native.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def make_jws(
    header: dict[str, Any] | bytes,
    key: PrivateKey,
    payload: bytes = b'{"iss":"a"}',
) -> str:
    """A compact JWS with exactly ``header`` (a dict, or raw JSON bytes), signed by ``key``."""
    header_bytes = header if isinstance(header, bytes) else json.dumps(header).encode()
    signing_input = f"{b64url(header_bytes)}.{b64url(payload)}"
    return f"{signing_input}.{b64url(raw_signature(key, signing_input.encode('ascii')))}"


def header_for(key: PrivateKey, **changes: Any) -> dict[str, Any]:
    """The normal header for ``key`` with ``changes`` (None removes a member)."""
    header: dict[str, Any] = {"typ": TYP, "alg": key.alg, "kid": key.kid}
    for name, value in changes.items():
        if value is None:
            header.pop(name, None)
        else:
            header[name] = value
    return header


def as_text(compact: str | bytes | bytearray) -> str:
    """A compact serialization as text (``encrypt`` makes the ASCII bytes sent)."""
    return compact if isinstance(compact, str) else compact.decode("ascii")


def replace_segment(compact: str | bytearray, index: int, segment: str) -> str:
    """``compact`` with segment ``index`` replaced."""
    parts = as_text(compact).split(".")
    parts[index] = segment
    return ".".join(parts)


def flip(segment: str, position: int = 0) -> str:
    """``segment`` decoded, one byte flipped at ``position``, re-encoded."""
    raw = bytearray(b64url_decode(segment))
    raw[position] ^= 0x01
    return b64url(bytes(raw))


def jwe_header(compact: str | bytearray) -> dict[str, Any]:
    """The decoded protected header of a compact JWE."""
    return dict(json.loads(b64url_decode(as_text(compact).split(".", maxsplit=1)[0])))


def with_jwe_header(compact: str | bytearray, **changes: Any) -> str:
    """``compact`` with its protected header changed (the tag then no longer matches)."""
    header = jwe_header(compact)
    for name, value in changes.items():
        if value is None:
            header.pop(name, None)
        else:
            header[name] = value
    return replace_segment(compact, 0, b64url(json.dumps(header).encode()))


class TestStrictJsonTaken:
    """strict_json_object_taken: the same parse, the body's bytes freed before it (memory)."""

    def test_bytes_freed_before_the_parse(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The only reference is given up and dropped once decoded, before parsing."""
        events: list[str] = []

        class Watched(bytearray):
            def __del__(self) -> None:
                events.append("bytes freed")

        parse = jose._strict_json_parse

        def watched_parse(text: str) -> dict[str, Any]:
            events.append("parse")
            return parse(text)

        monkeypatch.setattr(jose, "_strict_json_parse", watched_parse)
        box = HandedBody(Watched(b'{"a": [1, "x"]}'))
        assert jose.strict_json_object_taken(box.take) == {"a": [1, "x"]}
        assert events == ["bytes freed", "parse"]

    @pytest.mark.parametrize(
        "data", [b'{"a":1,"a":2}', b'{"a":1.5}', b"[1]", b"\xff", "\ufeff{}".encode()]
    )
    def test_refuses_as_strict_json_object(self, data: bytes) -> None:
        """Whatever strict_json_object refuses, with the same message."""
        with pytest.raises(MalformedJose) as expected:
            strict_json_object(data)
        with pytest.raises(MalformedJose) as taken:
            jose.strict_json_object_taken(HandedBody(bytearray(data)).take)
        assert str(taken.value) == str(expected.value)


class TestStrictJson:
    """Payload and header JSON: objects only, no duplicates, no floats, no NaN."""

    def test_object(self) -> None:
        """A plain object parses."""
        assert strict_json_object(b'{"a": 1, "b": [true, null, "x"]}') == {
            "a": 1,
            "b": [True, None, "x"],
        }

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ('{"a": 1, "a": 2}', "duplicate member"),
            ('{"a": {"b": 1, "b": 1}}', "duplicate member"),
            ('{"a": 1.5}', "integers"),
            ('{"a": 1e3}', "integers"),
            ('{"a": NaN}', "not JSON"),
            ('{"a": Infinity}', "not JSON"),
            ('{"a": -Infinity}', "not JSON"),
            ("[1]", "not a JSON object"),
            ('"x"', "not a JSON object"),
            ("{", "not strict JSON"),
            ("[" * 100_000, "not strict JSON"),
        ],
    )
    def test_refused(self, text: str, reason: str) -> None:
        """Each non-strict input is MalformedJose with its reason."""
        with pytest.raises(MalformedJose, match=reason):
            strict_json_object(text)

    def test_invalid_utf8(self) -> None:
        """Bytes that are not UTF-8 are refused."""
        with pytest.raises(MalformedJose):
            strict_json_object(b'{"a": "\xff"}')

    def test_canonical_json(self) -> None:
        """Compact separators, order as given, UTF-8 not escaped."""
        assert canonical_json({"b": 1, "a": "é"}) == '{"b":1,"a":"é"}'.encode()

    @settings(max_examples=300)
    @given(
        st.dictionaries(
            st.text(),
            st.recursive(
                st.none()
                | st.booleans()
                | st.integers(min_value=-(2**80), max_value=2**80)
                | st.text(),
                lambda inner: (
                    st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)
                ),
                max_leaves=20,
            ),
        )
    )
    def test_canonical_json_equals_the_standard_encoder(self, value: dict[str, Any]) -> None:
        """For every float-free JSON value the bytes are exactly the standard library's.

        Strict JSON refuses floats, so these are all the values we sign or hash;
        integers beyond 64 bits take the standard encoder's path.
        """
        expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        assert canonical_json(value) == expected
        assert strict_json_object(expected) == value

    @settings(max_examples=200)
    @given(
        st.dictionaries(
            st.text(),
            st.recursive(
                st.none() | st.integers(min_value=-(2**80), max_value=2**80) | st.text(),
                lambda inner: (
                    st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)
                ),
                max_leaves=20,
            ),
        )
    )
    def test_embedded_json_is_written_as_it_is(self, body: dict[str, Any]) -> None:
        """Claims holding a body encoded beforehand are the bytes of claims holding the body."""
        inline = {"iss": "a", "body": body, "status": 200}
        embedded = {"iss": "a", "body": embedded_json(canonical_json(body)), "status": 200}
        assert canonical_json(embedded) == canonical_json(inline)

    def test_canonical_json_refuses_what_it_always_refused(self) -> None:
        """A lone surrogate cannot be encoded as UTF-8, by either path."""
        with pytest.raises(UnicodeEncodeError):
            canonical_json({"a": "\ud800"})
        assert canonical_json({1: 2}) == b'{"1":2}'  # type: ignore[dict-item]


class TestNormalizeTyp:
    """typ is compared case-insensitively without an optional application/ prefix."""

    @pytest.mark.parametrize(
        "typ",
        ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+Jwt", "APPLICATION/AT+JWT"],
    )
    def test_forms(self, typ: str) -> None:
        """Every spelling normalises to the short lower-case form."""
        assert normalize_typ(typ) == "at+jwt"

    def test_non_string(self) -> None:
        """A non-string typ normalises to None."""
        assert normalize_typ(1) is None
        assert normalize_typ(None) is None

    def test_only_one_prefix(self) -> None:
        """Only one application/ prefix is removed."""
        assert normalize_typ("application/application/at+jwt") == "application/at+jwt"


class TestParseJws:
    """parse_jws: the 3.0 header rules for a compact JWS."""

    @pytest.mark.parametrize("alg", ["ed25519", "p256"])
    def test_sign_parse_verify(self, alg: KeyAlgorithm) -> None:
        """A JWS we sign parses, verifies and gives back its claims."""
        key = generate(alg)
        compact = sign_jwt({"iss": "a", "n": 1}, key, TYP)
        jws = parse_jws(compact, TYP)
        assert jws.header == {"typ": TYP, "alg": key.alg, "kid": key.kid}
        assert jws.kid == key.kid
        jws.verify(key.public)
        assert jws.claims() == {"iss": "a", "n": 1}
        assert jws.signing_input == compact.rsplit(".", 1)[0].encode()

    @pytest.mark.parametrize("name", sorted(REFUSED_HEADERS))
    def test_refused_headers(self, signing_key: PrivateKey, name: str) -> None:
        """Every header of REFUSED_HEADERS is refused, whatever its value."""
        compact = make_jws(header_for(signing_key, **{name: "x"}), signing_key)
        with pytest.raises(MalformedJose, match=f"refused header '{name}'"):
            parse_jws(compact, TYP)

    def test_refused_headers_are_the_protocol_list(self) -> None:
        """REFUSED_HEADERS is exactly protocol 3.0's list."""
        assert (
            frozenset({"crit", "b64", "zip", "jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256"})
            == REFUSED_HEADERS
        )

    @pytest.mark.parametrize(
        "alg", ["none", "None", "HS256", "HS512", "RS256", "PS256", "ES384", 1]
    )
    def test_alg_not_allowed(self, signing_key: PrivateKey, alg: object) -> None:
        """alg none, HMAC and everything outside the suite is refused at parse time."""
        compact = make_jws(header_for(signing_key, alg=alg), signing_key)
        with pytest.raises(MalformedJose, match="alg not allowed"):
            parse_jws(compact, TYP)

    def test_alg_missing(self, signing_key: PrivateKey) -> None:
        """A header without alg is refused."""
        with pytest.raises(MalformedJose, match="alg not allowed"):
            parse_jws(make_jws(header_for(signing_key, alg=None), signing_key), TYP)

    def test_unsigned_none_token(self, signing_key: PrivateKey) -> None:
        """The classic alg-none token with an empty signature is refused."""
        header = b64url(json.dumps(header_for(signing_key, alg="none")).encode())
        with pytest.raises(MalformedJose, match="alg not allowed"):
            parse_jws(f"{header}.{b64url(b'{}')}.", TYP)

    def test_typ_missing(self, signing_key: PrivateKey) -> None:
        """typ is required in every header."""
        with pytest.raises(MalformedJose, match="typ must be"):
            parse_jws(make_jws(header_for(signing_key, typ=None), signing_key), TYP)

    @pytest.mark.parametrize("typ", ["at+jwt", "JWT", "exchange-response+jwt", "", 5])
    def test_typ_wrong(self, signing_key: PrivateKey, typ: object) -> None:
        """A typ for another position is refused (RFC 8725 explicit typing)."""
        with pytest.raises(MalformedJose, match="typ must be"):
            parse_jws(make_jws(header_for(signing_key, typ=typ), signing_key), TYP)

    @pytest.mark.parametrize(
        "typ",
        [
            "EXCHANGE-REQUEST+JWT",
            "application/exchange-request+jwt",
            "Application/Exchange-Request+JWT",
        ],
    )
    def test_typ_case_and_prefix(self, signing_key: PrivateKey, typ: str) -> None:
        """typ matches case-insensitively, with or without application/."""
        compact = make_jws(header_for(signing_key, typ=typ), signing_key)
        parse_jws(compact, TYP).verify(signing_key.public)

    @pytest.mark.parametrize("kid", [None, 1, ["k"]])
    def test_kid_missing_or_not_string(self, signing_key: PrivateKey, kid: object) -> None:
        """kid must be a string."""
        header = header_for(signing_key)
        header.pop("kid")
        if kid is not None:
            header["kid"] = kid
        with pytest.raises(MalformedJose, match="kid missing"):
            parse_jws(make_jws(header, signing_key), TYP)

    @pytest.mark.parametrize(
        "header",
        [
            b'{"typ":"exchange-request+jwt","alg":"EdDSA","alg":"none","kid":"k"}',
            b'{"typ":"exchange-request+jwt","alg":"EdDSA","kid":"k","n":1.0}',
            b'{"typ":"exchange-request+jwt","alg":"EdDSA","kid":"k","n":NaN}',
            b'["typ"]',
            b"not json",
        ],
    )
    def test_header_json_rules(self, signing_key: PrivateKey, header: bytes) -> None:
        """Duplicate members, floats, NaN and non-objects are refused in headers."""
        with pytest.raises(MalformedJose):
            parse_jws(make_jws(header, signing_key), TYP)

    def test_payload_json_rules(self, signing_key: PrivateKey) -> None:
        """Duplicate members and floats are refused in payloads too."""
        for payload in (b'{"a":1,"a":2}', b'{"a":0.5}', b'{"a":NaN}', b"[]"):
            jws = parse_jws(make_jws(header_for(signing_key), signing_key, payload), TYP)
            jws.verify(signing_key.public)
            with pytest.raises(MalformedJose):
                jws.claims()

    @pytest.mark.parametrize("count", [1, 2, 4, 5])
    def test_segment_counts(self, signing_key: PrivateKey, count: int) -> None:
        """Anything but three segments is refused."""
        compact = sign_jwt({"a": 1}, signing_key, TYP)
        parts = (compact.split(".") * 2)[:count]
        with pytest.raises(MalformedJose, match="must have 3 parts"):
            parse_jws(".".join(parts), TYP)

    def test_not_text_or_bytes(self) -> None:
        """None, a number or a view are not compact serializations."""
        for value in (None, 5, memoryview(b"a.b.c")):
            with pytest.raises(MalformedJose, match="not a compact serialization"):
                parse_jws(value, TYP)

    def test_ascii_bytes_as_text(self, signing_key: PrivateKey) -> None:
        """The ASCII bytes of a JWS (as received) parse exactly as its text does."""
        compact = sign_jwt({"a": 1}, signing_key, TYP)
        for form in (compact.encode(), bytearray(compact.encode())):
            jws = parse_jws(form, TYP)
            jws.verify(signing_key.public)
            assert jws.take_claims() == {"a": 1}
        with pytest.raises(MalformedJose, match="header: not base64url: impossible length"):
            parse_jws(b"a.b.c", TYP)

    def test_too_large(self) -> None:
        """An object above MAX_COMPACT_BYTES is refused before splitting."""
        with pytest.raises(MalformedJose, match="too large"):
            parse_jws("a." + "A" * MAX_COMPACT_BYTES + ".b", TYP)

    def test_oversize_header(self, signing_key: PrivateKey) -> None:
        """A header segment above MAX_HEADER_BYTES is refused before decoding."""
        header = header_for(signing_key, pad="x" * MAX_HEADER_BYTES)
        with pytest.raises(MalformedJose, match="header too large"):
            parse_jws(make_jws(header, signing_key), TYP)

    def test_header_not_base64url(self, signing_key: PrivateKey) -> None:
        """A padded header segment is refused."""
        compact = make_jws(header_for(signing_key), signing_key)
        header, rest = compact.split(".", 1)
        with pytest.raises(MalformedJose, match="header"):
            parse_jws(f"{header}=.{rest}", TYP)

    @pytest.mark.parametrize("index", [1, 2])
    def test_payload_or_signature_not_base64url(self, signing_key: PrivateKey, index: int) -> None:
        """Payload and signature segments must be strict base64url."""
        compact = sign_jwt({"a": 1}, signing_key, TYP)
        bad = replace_segment(compact, index, compact.split(".")[index] + "=")
        with pytest.raises(MalformedJose, match="payload or signature"):
            parse_jws(bad, TYP)


class TestVerify:
    """UnverifiedJWS.verify: alg fixed by the key, signature over the exact input."""

    def test_take_claims_gives_up_the_payload_and_the_compact(
        self, signing_key: PrivateKey
    ) -> None:
        """Once verified, the claims are taken and nothing of the JWS is kept (memory).

        The bytes received are parsed where they are: the JWS holds them, not a copy.
        """
        freed: list[str] = []

        class Watched(bytearray):
            def __del__(self) -> None:
                freed.append("compact")

        jws = parse_jws(Watched(sign_jws_ascii(b'{"a":1}', signing_key, TYP)), TYP)
        jws.verify(signing_key.public)
        assert freed == []
        assert jws.take_claims() == {"a": 1}
        assert freed == ["compact"]
        assert (jws.compact, jws.payload) == (b"", b"")

    def test_other_key_refused(self, signing_key: PrivateKey) -> None:
        """A JWS does not verify with another key of the same type (another agency's)."""
        jws = parse_jws(sign_jwt({"a": 1}, signing_key, TYP), TYP)
        with pytest.raises(BadSignature, match="does not verify"):
            jws.verify(generate().public)

    def test_es256_header_on_ed25519_key(self, signing_key: PrivateKey) -> None:
        """A header naming ES256 cannot select verification with an Ed25519 key."""
        compact = make_jws(header_for(signing_key, alg="ES256"), signing_key)
        with pytest.raises(BadSignature, match="alg does not match"):
            parse_jws(compact, TYP).verify(signing_key.public)

    def test_eddsa_header_on_p256_key(self) -> None:
        """A header naming EdDSA (or Ed25519) cannot select an ES256 key."""
        p256 = generate("p256")
        ed = generate()
        for alg in ("EdDSA", "Ed25519"):
            compact = make_jws({"typ": TYP, "alg": alg, "kid": p256.kid}, ed)
            with pytest.raises(BadSignature, match="alg does not match"):
                parse_jws(compact, TYP).verify(p256.public)

    def test_encryption_key_never_verifies(self, signing_key: PrivateKey) -> None:
        """A key with use enc is refused as a verification key."""
        enc = generate("p256", 1)
        jws = parse_jws(sign_jwt({"a": 1}, signing_key, TYP), TYP)
        with pytest.raises(BadSignature, match="not a signing key"):
            jws.verify(enc.public)

    def test_rfc9864_ed25519_alg_accepted(self, signing_key: PrivateKey) -> None:
        """alg "Ed25519" (RFC 9864), signed with cryptography directly, verifies."""
        compact = make_jws(header_for(signing_key, alg="Ed25519"), signing_key)
        jws = parse_jws(compact, TYP)
        jws.verify(signing_key.public)
        assert jws.claims() == {"iss": "a"}

    @pytest.mark.parametrize("alg", ["ed25519", "p256"])
    def test_tampered_payload(self, alg: KeyAlgorithm) -> None:
        """One flipped payload byte and the signature fails."""
        key = generate(alg)
        compact = sign_jwt({"iss": "a"}, key, TYP)
        tampered = replace_segment(compact, 1, flip(compact.split(".")[1]))
        with pytest.raises(BadSignature):
            parse_jws(tampered, TYP).verify(key.public)

    @pytest.mark.parametrize("alg", ["ed25519", "p256"])
    def test_tampered_signature(self, alg: KeyAlgorithm) -> None:
        """One flipped signature byte and the signature fails."""
        key = generate(alg)
        compact = sign_jwt({"iss": "a"}, key, TYP)
        for position in (0, 31, 63):
            tampered = replace_segment(compact, 2, flip(compact.split(".")[2], position))
            with pytest.raises(BadSignature):
                parse_jws(tampered, TYP).verify(key.public)

    @pytest.mark.parametrize("alg", ["ed25519", "p256"])
    @pytest.mark.parametrize("length", [0, 63, 65, 72])
    def test_wrong_signature_length(self, alg: KeyAlgorithm, length: int) -> None:
        """A signature of the wrong length (e.g. DER ECDSA) is refused, not crashed on."""
        key = generate(alg)
        compact = replace_segment(sign_jwt({"a": 1}, key, TYP), 2, b64url(b"\x01" * length))
        with pytest.raises(BadSignature):
            parse_jws(compact, TYP).verify(key.public)

    def test_tampered_header(self, signing_key: PrivateKey) -> None:
        """A header changed after signing (still valid) fails verification."""
        compact = sign_jws(b"{}", signing_key, TYP)
        header = header_for(signing_key, typ="Exchange-Request+JWT")
        tampered = replace_segment(compact, 0, b64url(json.dumps(header).encode()))
        with pytest.raises(BadSignature):
            parse_jws(tampered, TYP).verify(signing_key.public)


class TestDetached:
    """Detached JWS (RFC 7515 appendix F), used by contract signatures."""

    def test_round_trip(self, signing_key: PrivateKey) -> None:
        """A detached signature re-attached to its payload verifies."""
        detached = detached_signature(b"payload", signing_key, "contract+jws")
        assert detached.split(".")[1] == ""
        jws = parse_jws(attach_payload(detached, b"payload"), "contract+jws")
        jws.verify(signing_key.public)
        assert jws.payload == b"payload"

    def test_other_payload_fails(self, signing_key: PrivateKey) -> None:
        """Attached to another payload, the signature fails."""
        detached = detached_signature(b"payload", signing_key, "contract+jws")
        jws = parse_jws(attach_payload(detached, b"other"), "contract+jws")
        with pytest.raises(BadSignature):
            jws.verify(signing_key.public)

    def test_attached_refused(self, signing_key: PrivateKey) -> None:
        """A JWS with a payload segment is not a detached signature."""
        with pytest.raises(MalformedJose, match="empty payload segment"):
            attach_payload(sign_jws(b"x", signing_key, "contract+jws"), b"x")


class TestJwe:
    """Compact JWE: ECDH-ES+A256KW / A256GCM, header rules, tamper detection."""

    @pytest.mark.parametrize("alg", ["ed25519", "p256"])
    def test_round_trip(self, alg: KeyAlgorithm) -> None:
        """X25519 and P-256 recipients decrypt what was encrypted to them."""
        recipient = generate(alg, 1)
        compact = as_text(encrypt(b"secret payload", recipient.public, JWE_TYP))
        header = jwe_header(compact)
        assert header["alg"] == ENC_ALG
        assert header["enc"] == ENC_ENC
        assert header["kid"] == recipient.kid
        assert header["typ"] == JWE_TYP
        assert header["cty"] == "JWT"
        assert header["epk"]["crv"] == ("X25519" if alg == "ed25519" else "P-256")
        assert decrypt(compact, [recipient], JWE_TYP) == b"secret payload"

    @pytest.mark.parametrize("size", [10, 500_000])
    def test_ascii_bytes_as_sent(self, encryption_key: PrivateKey, size: int) -> None:
        """``encrypt`` makes the ASCII bytes sent, which ``decrypt`` takes as they are."""
        compact = encrypt(b"y" * size, encryption_key.public, JWE_TYP)
        assert isinstance(compact, bytearray)
        assert compact.isascii()
        assert decrypt(compact, [encryption_key], JWE_TYP) == b"y" * size
        assert decrypt(bytes(compact), [encryption_key], JWE_TYP) == b"y" * size
        non_ascii = compact.replace(b".", "é.".encode(), 1)
        with pytest.raises(MalformedJose, match="header: not unpadded base64url"):
            decrypt(non_ascii, [encryption_key], JWE_TYP)

    def test_large_plaintext(self, encryption_key: PrivateKey) -> None:
        """A plaintext well above 64 KiB (a large but allowed body) round-trips."""
        plaintext = b"x" * (300 * 1024)
        compact = as_text(encrypt(plaintext, encryption_key.public, JWE_TYP))
        assert decrypt(compact, [encryption_key], JWE_TYP) == plaintext

    def test_key_ring_picks_by_kid(self, encryption_key: PrivateKey) -> None:
        """With several keys, the one named by kid decrypts (rotation overlap)."""
        old = generate("ed25519", 1)
        compact = as_text(encrypt(b"x", old.public, JWE_TYP))
        assert decrypt(compact, [encryption_key, old], JWE_TYP) == b"x"
        assert check_jwe_header(compact, [encryption_key, old], JWE_TYP).key == old

    def test_encrypt_to_signing_key_refused(self, signing_key: PrivateKey) -> None:
        """A signing key is never an encryption recipient."""
        with pytest.raises(MalformedJose, match="not an encryption key"):
            encrypt(b"x", signing_key.public, JWE_TYP)

    def test_wrong_kid(self, encryption_key: PrivateKey) -> None:
        """A JWE to another key (another kid) is refused before decryption."""
        compact = as_text(encrypt(b"x", generate("ed25519", 1).public, JWE_TYP))
        with pytest.raises(MalformedJose, match="not one of our encryption keys"):
            decrypt(compact, [encryption_key], JWE_TYP)

    def test_kid_relabelled_to_ours(self, encryption_key: PrivateKey) -> None:
        """A JWE to another key with our kid written in does not decrypt."""
        compact = as_text(encrypt(b"x", generate("ed25519", 1).public, JWE_TYP))
        relabelled = with_jwe_header(compact, kid=encryption_key.kid)
        with pytest.raises(MalformedJose, match="does not decrypt"):
            decrypt(relabelled, [encryption_key], JWE_TYP)

    @pytest.mark.parametrize(
        ("changes", "reason"),
        [
            ({"alg": "ECDH-ES"}, "alg/enc must be"),
            ({"alg": "ECDH-ES+A128KW"}, "alg/enc must be"),
            ({"alg": "RSA-OAEP"}, "alg/enc must be"),
            ({"alg": "dir"}, "alg/enc must be"),
            ({"alg": None}, "alg/enc must be"),
            ({"enc": "A128GCM"}, "alg/enc must be"),
            ({"enc": "A256CBC-HS512"}, "alg/enc must be"),
            ({"enc": None}, "alg/enc must be"),
            ({"epk": None}, "epk missing"),
            ({"epk": "key"}, "epk missing"),
            ({"zip": "DEF"}, "refused header 'zip'"),
            ({"jku": "https://evil.example/jwks"}, "refused header 'jku'"),
            ({"jwk": {"kty": "OKP"}}, "refused header 'jwk'"),
            ({"crit": ["exp"]}, "refused header 'crit'"),
            ({"x5u": "https://evil.example/cert"}, "refused header 'x5u'"),
            ({"typ": "exchange-response+jwe"}, "typ must be"),
            ({"typ": None}, "typ must be"),
            ({"kid": None}, "kid missing"),
            ({"cty": "json"}, "cty must be JWT"),
            ({"cty": 1}, "cty must be JWT"),
        ],
    )
    def test_header_refusals(
        self, encryption_key: PrivateKey, changes: dict[str, Any], reason: str
    ) -> None:
        """Each header violation is refused by the header check, before decryption."""
        compact = with_jwe_header(encrypt(b"x", encryption_key.public, JWE_TYP), **changes)
        with pytest.raises(MalformedJose, match=reason):
            decrypt(compact, [encryption_key], JWE_TYP)

    @pytest.mark.parametrize(
        "epk",
        [
            {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "OKP", "crv": "Ed25519", "x": "AA"},
            {"kty": "OKP", "x": "AA"},
            {},
        ],
    )
    def test_epk_of_another_type(self, encryption_key: PrivateKey, epk: dict[str, str]) -> None:
        """An epk that is not a key of the recipient key's type is refused."""
        compact = with_jwe_header(encrypt(b"x", encryption_key.public, JWE_TYP), epk=epk)
        with pytest.raises(MalformedJose, match="epk is not a key of the recipient"):
            decrypt(compact, [encryption_key], JWE_TYP)

    def test_epk_with_private_part(self, encryption_key: PrivateKey) -> None:
        """An epk carrying 'd' is refused."""
        compact = as_text(encrypt(b"x", encryption_key.public, JWE_TYP))
        epk = {**jwe_header(compact)["epk"], "d": b64url(b"\x01" * 32)}
        with pytest.raises(MalformedJose, match="epk carries a private key"):
            decrypt(with_jwe_header(compact, epk=epk), [encryption_key], JWE_TYP)

    def test_encrypt_to_low_order_key(self) -> None:
        """Encrypting to an all-zero (low-order) X25519 key fails as MalformedJose."""
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

        from gateway.keys import PublicKey

        weak = PublicKey(X25519PublicKey.from_public_bytes(bytes(32)), "enc")
        with pytest.raises(MalformedJose, match="cannot encrypt"):
            encrypt(b"x", weak, JWE_TYP)

    @pytest.mark.parametrize("cty", ["jwt", "application/JWT"])
    def test_cty_forms(self, encryption_key: PrivateKey, cty: str) -> None:
        """cty is normalised like typ (the header check alone: the tag no longer matches)."""
        compact = with_jwe_header(encrypt(b"x", encryption_key.public, JWE_TYP), cty=cty)
        assert check_jwe_header(compact, [encryption_key], JWE_TYP).key == encryption_key

    def test_cty_absent(self, encryption_key: PrivateKey) -> None:
        """cty is optional."""
        compact = with_jwe_header(encrypt(b"x", encryption_key.public, JWE_TYP), cty=None)
        assert check_jwe_header(compact, [encryption_key], JWE_TYP).key == encryption_key

    def test_typ_with_prefix_accepted(self, encryption_key: PrivateKey) -> None:
        """A JWE typ with application/ and other case passes the header check."""
        compact = as_text(encrypt(b"x", encryption_key.public, "Application/Exchange-Request+JWE"))
        assert decrypt(compact, [encryption_key], JWE_TYP) == b"x"

    @pytest.mark.parametrize(
        ("index", "name"), [(1, "encrypted key"), (2, "iv"), (3, "ciphertext"), (4, "tag")]
    )
    def test_tampered_segment(self, encryption_key: PrivateKey, index: int, name: str) -> None:
        """One flipped byte in the wrapped key, iv, ciphertext or tag: refused."""
        compact = as_text(encrypt(b"some plaintext", encryption_key.public, JWE_TYP))
        for position in (0, -1):
            tampered = replace_segment(compact, index, flip(compact.split(".")[index], position))
            with pytest.raises(MalformedJose, match="does not decrypt"):
                decrypt(tampered, [encryption_key], JWE_TYP)

    @pytest.mark.parametrize("index", [1, 2, 3, 4])
    def test_truncated_segment(self, encryption_key: PrivateKey, index: int) -> None:
        """A segment one byte short (or empty) is refused."""
        compact = as_text(encrypt(b"some plaintext", encryption_key.public, JWE_TYP))
        raw = b64url_decode(compact.split(".")[index])
        for shorter in (raw[:-1], b""):
            with pytest.raises(MalformedJose):
                decrypt(replace_segment(compact, index, b64url(shorter)), [encryption_key], JWE_TYP)

    def test_tampered_aad(self, encryption_key: PrivateKey) -> None:
        """An added protected-header member (the AAD) breaks the tag."""
        compact = with_jwe_header(encrypt(b"x", encryption_key.public, JWE_TYP), note="hi")
        with pytest.raises(MalformedJose, match="does not decrypt"):
            decrypt(compact, [encryption_key], JWE_TYP)

    def test_segments_swapped_between_messages(self, encryption_key: PrivateKey) -> None:
        """The ciphertext of one message under the header of another: refused."""
        one = as_text(encrypt(b"first", encryption_key.public, JWE_TYP)).split(".")
        two = as_text(encrypt(b"second", encryption_key.public, JWE_TYP)).split(".")
        with pytest.raises(MalformedJose, match="does not decrypt"):
            decrypt(".".join([*one[:3], *two[3:]]), [encryption_key], JWE_TYP)

    @pytest.mark.parametrize("count", [3, 4, 6])
    def test_segment_counts(self, encryption_key: PrivateKey, count: int) -> None:
        """A JWE has five segments."""
        parts = (as_text(encrypt(b"x", encryption_key.public, JWE_TYP)).split(".") * 2)[:count]
        with pytest.raises(MalformedJose, match="must have 5 parts"):
            decrypt(".".join(parts), [encryption_key], JWE_TYP)

    def test_jws_is_not_a_jwe(self, signing_key: PrivateKey, encryption_key: PrivateKey) -> None:
        """A JWS where a JWE is expected is refused."""
        with pytest.raises(MalformedJose):
            decrypt(sign_jwt({}, signing_key, TYP), [encryption_key], JWE_TYP)

    def test_every_failure_is_jose_error(self, encryption_key: PrivateKey) -> None:
        """Decryption failures surface only as MalformedJose (a JoseError)."""
        compact = as_text(encrypt(b"x", encryption_key.public, JWE_TYP))
        with pytest.raises(JoseError):
            decrypt(compact[:-3], [encryption_key], JWE_TYP)


class TestFreshness:
    """freshness_problem: iat <= now+30, exp > now-30, iat < exp <= iat+L, nbf <= now+30."""

    NOW = 1_795_694_400
    SKEW = CLOCK_SKEW_SECONDS

    def check(self, lifetime: int = MESSAGE_LIFETIME, **claims: object) -> str | None:
        return freshness_problem(claims, self.NOW, lifetime)

    def test_constants(self) -> None:
        """The protocol's skew and lifetimes."""
        assert CLOCK_SKEW_SECONDS == 30
        assert (CLIENT_ASSERTION_LIFETIME, ACCESS_TOKEN_LIFETIME, MESSAGE_LIFETIME) == (
            60,
            300,
            120,
        )

    def test_fresh(self) -> None:
        """iat now, exp now + L is fresh."""
        assert self.check(iat=self.NOW, exp=self.NOW + 120) is None

    def test_iat_skew_edge(self) -> None:
        """iat = now + 30 is accepted; now + 31 is in the future."""
        assert self.check(iat=self.NOW + self.SKEW, exp=self.NOW + self.SKEW + 1) is None
        assert self.check(iat=self.NOW + self.SKEW + 1, exp=self.NOW + self.SKEW + 2) == (
            "issued in the future"
        )

    def test_exp_skew_edge(self) -> None:
        """exp = now - 29 is accepted; exp = now - 30 has expired."""
        assert self.check(iat=self.NOW - 100, exp=self.NOW - self.SKEW + 1) is None
        assert self.check(iat=self.NOW - 100, exp=self.NOW - self.SKEW) == "expired"

    @pytest.mark.parametrize(
        "lifetime", [CLIENT_ASSERTION_LIFETIME, ACCESS_TOKEN_LIFETIME, MESSAGE_LIFETIME]
    )
    def test_lifetime_edge(self, lifetime: int) -> None:
        """exp = iat + L is accepted; iat + L + 1 is too long."""
        assert self.check(lifetime, iat=self.NOW, exp=self.NOW + lifetime) is None
        problem = self.check(lifetime, iat=self.NOW, exp=self.NOW + lifetime + 1)
        assert problem == f"lifetime must be positive and at most {lifetime} s"

    @pytest.mark.parametrize("delta", [0, -1])
    def test_iat_not_before_exp(self, delta: int) -> None:
        """iat >= exp is refused (zero or negative lifetime)."""
        problem = self.check(iat=self.NOW, exp=self.NOW + delta)
        assert problem is not None
        assert "lifetime" in problem

    def test_nbf(self) -> None:
        """nbf = now + 30 is accepted; now + 31 is not yet valid."""
        fresh = {"iat": self.NOW, "exp": self.NOW + 60}
        assert self.check(nbf=self.NOW + self.SKEW, **fresh) is None
        assert self.check(nbf=self.NOW + self.SKEW + 1, **fresh) == "not yet valid"
        assert self.check(nbf=self.NOW - 1000, **fresh) is None

    @pytest.mark.parametrize(
        "claims",
        [
            {"exp": NOW + 10},
            {"iat": NOW},
            {"iat": float(NOW), "exp": NOW + 10},
            {"iat": NOW, "exp": str(NOW + 10)},
            {"iat": True, "exp": NOW + 10},
            {"iat": NOW, "exp": NOW + 10, "nbf": None},
            {"iat": NOW, "exp": NOW + 10, "nbf": False},
        ],
    )
    def test_types(self, claims: dict[str, object]) -> None:
        """iat, exp and nbf must be integers (bool and float are not)."""
        assert freshness_problem(claims, self.NOW, 120) == "iat, exp and nbf must be integers"


class TestClaimTypes:
    """claim_type_problem: the first missing or wrongly typed claim."""

    SPEC: ClassVar[dict[str, type]] = {"iss": str, "iat": int, "body": dict, "fields": list}

    def test_valid(self) -> None:
        """All claims present and typed: None."""
        claims = {"iss": "a", "iat": 0, "body": {}, "fields": [], "extra": 1.5}
        assert claim_type_problem(claims, self.SPEC) is None

    def test_missing(self) -> None:
        """A missing claim is named."""
        assert claim_type_problem({"iss": "a"}, self.SPEC) == "claim 'iat' missing"

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("iss", 1),
            ("iss", None),
            ("iat", True),
            ("iat", False),
            ("iat", "1"),
            ("iat", 1.0),
            ("body", []),
            ("fields", {}),
            ("fields", "a"),
        ],
    )
    def test_wrong_type(self, name: str, value: object) -> None:
        """A wrongly typed claim is named; a bool is not an int."""
        claims: dict[str, object] = {"iss": "a", "iat": 0, "body": {}, "fields": []}
        claims[name] = value
        assert claim_type_problem(claims, self.SPEC) == f"claim {name!r} has the wrong type"

    def test_is_int(self) -> None:
        """is_int is true for ints only, not bools or floats."""
        assert is_int(0)
        assert is_int(-5)
        assert not is_int(True)
        assert not is_int(1.0)
        assert not is_int("1")


# --------------------------------------------------------------------------------------
# The layer over cryptography primitives, cross-checked with independent libraries
# --------------------------------------------------------------------------------------

# P-256's field prime: a coordinate at or above it is not a reduced field element.
P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
KINDS: list[KeyAlgorithm] = ["ed25519", "p256"]
# Keys for the hypothesis properties (function-scoped fixtures do not mix with @given).
PROPERTY_KEYS: dict[str, PrivateKey] = {kind: generate(kind, 1) for kind in KINDS}
PROPERTY_JWES: dict[str, str] = {
    kind: as_text(encrypt(b'{"iss":"a","body":{"n":1}}', key.public, JWE_TYP))
    for kind, key in PROPERTY_KEYS.items()
}


def jwe_protected(recipient: PrivateKey, **extra: str) -> dict[str, str]:
    """The protected header our layer expects for ``recipient``, plus ``extra`` members."""
    return {
        "alg": ENC_ALG,
        "enc": ENC_ENC,
        "kid": recipient.kid,
        "typ": JWE_TYP,
        "cty": "JWT",
        **extra,
    }


def with_segment_bytes(compact: str | bytearray, index: int, raw: bytes) -> str:
    """``compact`` with segment ``index`` replaced by the encoding of ``raw``."""
    return replace_segment(compact, index, b64url(raw))


def p256_point_with_small_x() -> tuple[int, int]:
    """A P-256 point whose x is small, so that x + p still fits in 32 bytes."""
    for x in range(1, 1000):
        rhs = (x**3 - 3 * x + P256_B) % P256_P
        y = pow(rhs, (P256_P + 1) // 4, P256_P)  # p = 3 mod 4
        if y * y % P256_P == rhs:
            return x, y
    raise AssertionError("no point found")


class TestJweCrossLibrary:
    """JWEs of this layer open in joserfc and jwcrypto, and theirs open here."""

    APU = b64url(b"social-benefits")
    APV = b64url(b"tax-authority")

    @pytest.mark.parametrize("kind", KINDS)
    def test_ours_decrypts_in_joserfc(self, kind: KeyAlgorithm) -> None:
        """joserfc (restricted to the suite) opens what we seal."""
        from joserfc import jwe as joserfc_jwe
        from joserfc.jwk import ECKey, OKPKey

        recipient = generate(kind, 1)
        compact = as_text(encrypt(b"for joserfc", recipient.public, JWE_TYP))
        key = (ECKey if kind == "p256" else OKPKey).import_key(recipient.key)
        result = joserfc_jwe.decrypt_compact(compact, key, algorithms=[ENC_ALG, ENC_ENC])
        assert result.plaintext == b"for joserfc"
        assert result.protected["kid"] == recipient.kid

    @pytest.mark.parametrize("kind", KINDS)
    def test_ours_decrypts_in_jwcrypto(self, kind: KeyAlgorithm) -> None:
        """jwcrypto opens what we seal."""
        from jwcrypto import jwe as jwcrypto_jwe
        from jwcrypto.jwk import JWK

        recipient = generate(kind, 1)
        compact = as_text(encrypt(b"for jwcrypto", recipient.public, JWE_TYP))
        token = jwcrypto_jwe.JWE()
        token.deserialize(compact, JWK.from_pyca(recipient.key))
        assert token.payload == b"for jwcrypto"

    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("party_info", [False, True])
    def test_joserfc_jwe_decrypts_here(self, kind: KeyAlgorithm, party_info: bool) -> None:
        """joserfc's ECDH-ES+A256KW/A256GCM, with or without apu/apv, opens here."""
        from joserfc import jwe as joserfc_jwe
        from joserfc.jwk import ECKey, OKPKey

        recipient = generate(kind, 1)
        extra = {"apu": self.APU, "apv": self.APV} if party_info else {}
        key = (ECKey if kind == "p256" else OKPKey).import_key(recipient.public.key)
        compact = joserfc_jwe.encrypt_compact(
            jwe_protected(recipient, **extra), b"from joserfc", key, algorithms=[ENC_ALG, ENC_ENC]
        )
        assert (jwe_header(compact).get("apu") == self.APU) is party_info
        assert decrypt(compact, [recipient], JWE_TYP) == b"from joserfc"

    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("party_info", [False, True])
    def test_jwcrypto_jwe_decrypts_here(self, kind: KeyAlgorithm, party_info: bool) -> None:
        """jwcrypto's ECDH-ES+A256KW/A256GCM, with or without apu/apv, opens here."""
        from jwcrypto import jwe as jwcrypto_jwe
        from jwcrypto.common import json_encode
        from jwcrypto.jwk import JWK

        recipient = generate(kind, 1)
        extra = {"apu": self.APU, "apv": self.APV} if party_info else {}
        token = jwcrypto_jwe.JWE(
            b"from jwcrypto", protected=json_encode(jwe_protected(recipient, **extra))
        )
        token.add_recipient(JWK(**recipient.public.jwk))
        compact = token.serialize(compact=True)
        assert (jwe_header(compact).get("apv") == self.APV) is party_info
        assert decrypt(compact, [recipient], JWE_TYP) == b"from jwcrypto"

    @pytest.mark.parametrize("kind", KINDS)
    def test_party_info_is_bound(self, kind: KeyAlgorithm) -> None:
        """apu/apv enter the KDF: a JWE made with other party info does not open.

        jwcrypto seals with one apu; the header then names another (the tag
        would fail anyway, so the header check alone is also run on it).
        """
        from jwcrypto import jwe as jwcrypto_jwe
        from jwcrypto.common import json_encode
        from jwcrypto.jwk import JWK

        recipient = generate(kind, 1)
        token = jwcrypto_jwe.JWE(
            b"x", protected=json_encode(jwe_protected(recipient, apu=self.APU))
        )
        token.add_recipient(JWK(**recipient.public.jwk))
        changed = with_jwe_header(token.serialize(compact=True), apu=self.APV)
        assert check_jwe_header(changed, [recipient], JWE_TYP).key == recipient
        with pytest.raises(MalformedJose, match="does not decrypt"):
            decrypt(changed, [recipient], JWE_TYP)

    @pytest.mark.parametrize("name", ["apu", "apv"])
    @pytest.mark.parametrize("value", ["AA=", "A", "a+b", 5, ["AA"]])
    def test_party_info_must_be_base64url(
        self, encryption_key: PrivateKey, name: str, value: object
    ) -> None:
        """A present apu/apv that is not strict base64url is refused."""
        compact = with_jwe_header(encrypt(b"x", encryption_key.public, JWE_TYP), **{name: value})
        with pytest.raises(MalformedJose, match=f"{name} is not base64url"):
            decrypt(compact, [encryption_key], JWE_TYP)

    @pytest.mark.parametrize("kind", KINDS)
    def test_empty_plaintext(self, kind: KeyAlgorithm) -> None:
        """An empty plaintext round-trips (and joserfc agrees; jwcrypto refuses any)."""
        from joserfc import jwe as joserfc_jwe
        from joserfc.jwk import ECKey, OKPKey

        recipient = generate(kind, 1)
        compact = as_text(encrypt(b"", recipient.public, JWE_TYP))
        assert compact.split(".")[3] == ""
        assert decrypt(compact, [recipient], JWE_TYP) == b""
        key = (ECKey if kind == "p256" else OKPKey).import_key(recipient.key)
        result = joserfc_jwe.decrypt_compact(compact, key, algorithms=[ENC_ALG, ENC_ENC])
        assert result.plaintext in (b"", None)

    def test_fresh_ephemeral_key_iv_and_cek(self, encryption_key: PrivateKey) -> None:
        """Two seals of the same plaintext share no epk, encrypted key, IV or ciphertext."""
        one = as_text(encrypt(b"same", encryption_key.public, JWE_TYP)).split(".")
        two = as_text(encrypt(b"same", encryption_key.public, JWE_TYP)).split(".")
        for index in range(5):
            assert one[index] != two[index]

    @pytest.mark.parametrize("kind", KINDS)
    def test_header_members(self, kind: KeyAlgorithm) -> None:
        """The protected header is exactly the protocol's, plus a public epk of our curve."""
        recipient = generate(kind, 1)
        header = jwe_header(as_text(encrypt(b"x", recipient.public, JWE_TYP)))
        epk = header.pop("epk")
        assert header == jwe_protected(recipient)
        if kind == "p256":
            assert set(epk) == {"kty", "crv", "x", "y"}
            assert (epk["kty"], epk["crv"]) == ("EC", "P-256")
            assert len(b64url_decode(epk["x"])) == len(b64url_decode(epk["y"])) == 32
        else:
            assert epk == {"kty": "OKP", "crv": "X25519", "x": epk["x"]}
            assert len(b64url_decode(epk["x"])) == 32


class TestJweBinaryMembers:
    """Exact lengths and strict base64url of the binary segments and the epk."""

    @pytest.mark.parametrize(
        ("index", "name", "lengths"),
        [
            (1, "encrypted key", [0, 8, 24, 32, 39, 41, 48]),
            (2, "iv", [0, 8, 11, 13, 16]),
            (4, "tag", [0, 4, 8, 12, 15, 17, 32]),
        ],
    )
    def test_wrong_lengths(
        self, encryption_key: PrivateKey, index: int, name: str, lengths: list[int]
    ) -> None:
        """An encrypted key other than 40 bytes, an IV other than 12, a tag other than 16."""
        compact = as_text(encrypt(b"some plaintext", encryption_key.public, JWE_TYP))
        for length in lengths:
            bad = with_segment_bytes(compact, index, bytes(range(length)))
            with pytest.raises(MalformedJose, match=f"{name} must be"):
                decrypt(bad, [encryption_key], JWE_TYP)

    @pytest.mark.parametrize("index", [1, 2, 3, 4])
    @pytest.mark.parametrize("suffix", ["=", "==", "+", "/", " ", "!"])
    def test_segments_not_base64url(
        self, encryption_key: PrivateKey, index: int, suffix: str
    ) -> None:
        """Padding or characters outside base64url in any binary segment: refused."""
        compact = as_text(encrypt(b"some plaintext", encryption_key.public, JWE_TYP))
        bad = replace_segment(compact, index, compact.split(".")[index] + suffix)
        with pytest.raises(MalformedJose, match="not base64url"):
            decrypt(bad, [encryption_key], JWE_TYP)

    def test_non_canonical_base64url_refused(self, encryption_key: PrivateKey) -> None:
        """An IV whose last character carries non-zero unused bits is refused."""
        compact = as_text(encrypt(b"x", encryption_key.public, JWE_TYP))
        iv = compact.split(".")[2]  # 12 bytes: 16 characters, no unused bits; use the tag
        tag = compact.split(".")[4]  # 16 bytes: 22 characters, 4 unused bits in the last
        assert len(iv) == 16
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = alphabet.index(tag[-1])
        bad_tag = tag[:-1] + alphabet[last | 1]
        assert b64url_decode(tag) == b64url_decode(tag[:-1] + alphabet[last])
        with pytest.raises(MalformedJose, match="tag is not base64url"):
            decrypt(replace_segment(compact, 4, bad_tag), [encryption_key], JWE_TYP)

    def test_invalid_p256_epk_point(self) -> None:
        """An epk point off P-256 is refused before any key agreement."""
        recipient = generate("p256", 1)
        compact = as_text(encrypt(b"x", recipient.public, JWE_TYP))
        epk = jwe_header(compact)["epk"]
        y = int.from_bytes(b64url_decode(epk["y"]), "big")
        off_curve = {**epk, "y": b64url(((y + 1) % P256_P).to_bytes(32, "big"))}
        with pytest.raises(MalformedJose, match="not a P-256 point"):
            decrypt(with_jwe_header(compact, epk=off_curve), [recipient], JWE_TYP)

    def test_unreduced_p256_coordinate(self) -> None:
        """A coordinate x + p (same point modulo p) is refused: one encoding per point."""
        recipient = generate("p256", 1)
        compact = as_text(encrypt(b"x", recipient.public, JWE_TYP))
        x, y = p256_point_with_small_x()
        canonical = {"kty": "EC", "crv": "P-256", "y": b64url(y.to_bytes(32, "big"))}
        # The reduced point is accepted up to the tag (the JWE was not made with it) ...
        reduced = {**canonical, "x": b64url(x.to_bytes(32, "big"))}
        with pytest.raises(MalformedJose, match=r"does not decrypt: (InvalidTag|InvalidUnwrap)"):
            decrypt(with_jwe_header(compact, epk=reduced), [recipient], JWE_TYP)
        # ... the unreduced one is refused as a point.
        unreduced = {**canonical, "x": b64url((x + P256_P).to_bytes(32, "big"))}
        with pytest.raises(MalformedJose, match="not a P-256 point"):
            decrypt(with_jwe_header(compact, epk=unreduced), [recipient], JWE_TYP)

    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("length", [0, 31, 33, 64])
    def test_epk_coordinate_lengths(self, kind: KeyAlgorithm, length: int) -> None:
        """epk coordinates are exactly 32 bytes (X25519 x; P-256 x and y)."""
        recipient = generate(kind, 1)
        compact = as_text(encrypt(b"x", recipient.public, JWE_TYP))
        epk = jwe_header(compact)["epk"]
        for name in ("x", "y") if kind == "p256" else ("x",):
            bad = {**epk, name: b64url(b"\x01" * length)}
            with pytest.raises(MalformedJose, match=f"epk {name} must be 32 bytes"):
                decrypt(with_jwe_header(compact, epk=bad), [recipient], JWE_TYP)

    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("value", [None, 7, "AA=", "not base64!"])
    def test_epk_coordinate_not_base64url(self, kind: KeyAlgorithm, value: object) -> None:
        """A missing, non-string or non-base64url epk coordinate is refused."""
        recipient = generate(kind, 1)
        compact = as_text(encrypt(b"x", recipient.public, JWE_TYP))
        epk = {**jwe_header(compact)["epk"], "x": value}
        if value is None:
            del epk["x"]
        with pytest.raises(MalformedJose, match="epk x is not base64url"):
            decrypt(with_jwe_header(compact, epk=epk), [recipient], JWE_TYP)

    @pytest.mark.parametrize("point", [bytes(32), b"\x01" + bytes(31), b"\xe0\xeb\x7a\x7c" * 8])
    def test_low_order_x25519_epk(self, encryption_key: PrivateKey, point: bytes) -> None:
        """A low-order X25519 epk (all-zero shared secret, RFC 7748 6.1) is MalformedJose."""
        compact = as_text(encrypt(b"x", encryption_key.public, JWE_TYP))
        epk = {"kty": "OKP", "crv": "X25519", "x": b64url(point)}
        with pytest.raises(MalformedJose, match="does not decrypt"):
            decrypt(with_jwe_header(compact, epk=epk), [encryption_key], JWE_TYP)

    def test_zero_epk_names_the_reason(self, encryption_key: PrivateKey) -> None:
        """The all-zero point is refused for what it is, not by a tag mismatch."""
        compact = as_text(encrypt(b"x", encryption_key.public, JWE_TYP))
        epk = {"kty": "OKP", "crv": "X25519", "x": b64url(bytes(32))}
        with pytest.raises(MalformedJose, match="low-order epk"):
            decrypt(with_jwe_header(compact, epk=epk), [encryption_key], JWE_TYP)

    def test_decrypt_core_refuses_other_algorithms(
        self, encryption_key: PrivateKey, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With the header check out of the way, the core still uses and accepts only the suite."""
        from gateway import jose

        def bypass(compact: object, keys: Any, expected_typ: str) -> jose.JWEHeader:
            return jose.JWEHeader(header={}, key=next(iter(keys)))

        monkeypatch.setattr(jose, "check_jwe_header", bypass)
        compact = as_text(encrypt(b"x", encryption_key.public, JWE_TYP))
        assert decrypt(compact, [encryption_key], JWE_TYP) == b"x"
        for changes, reason in (
            ({"alg": "ECDH-ES"}, "alg/enc must be"),
            ({"enc": "A128GCM"}, "alg/enc must be"),
            ({"zip": "DEF"}, "zip and crit are refused"),
            ({"crit": ["x"]}, "zip and crit are refused"),
            ({"epk": None}, "epk missing"),
        ):
            with pytest.raises(MalformedJose, match=reason):
                decrypt(with_jwe_header(compact, **changes), [encryption_key], JWE_TYP)
        signing = generate("ed25519")
        with pytest.raises(MalformedJose, match="not an encryption key"):
            decrypt(compact, [signing], JWE_TYP)


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class TestJweCorruptionProperties:
    """Any single change to a valid JWE is refused, and only ever as MalformedJose."""

    @settings(max_examples=300, deadline=None)
    @given(
        kind=st.sampled_from(KINDS),
        data=st.data(),
        replacement=st.characters(codec="utf-8") | st.sampled_from(ALPHABET + "."),
    )
    def test_any_character_changed(self, kind: str, data: st.DataObject, replacement: str) -> None:
        """One character of the compact form replaced by another: refused."""
        compact = PROPERTY_JWES[kind]
        position = data.draw(st.integers(min_value=0, max_value=len(compact) - 1))
        assume(compact[position] != replacement)
        corrupted = compact[:position] + replacement + compact[position + 1 :]
        with pytest.raises(MalformedJose):
            decrypt(corrupted, [PROPERTY_KEYS[kind]], JWE_TYP)

    @settings(max_examples=300, deadline=None)
    @given(
        kind=st.sampled_from(KINDS),
        index=st.integers(min_value=0, max_value=4),
        data=st.data(),
        mask=st.integers(min_value=1, max_value=255),
    )
    def test_any_byte_changed(self, kind: str, index: int, data: st.DataObject, mask: int) -> None:
        """One byte of any segment's decoded value XORed with a non-zero mask: refused."""
        compact = PROPERTY_JWES[kind]
        raw = bytearray(b64url_decode(compact.split(".")[index]))
        position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[position] ^= mask
        with pytest.raises(MalformedJose):
            decrypt(with_segment_bytes(compact, index, bytes(raw)), [PROPERTY_KEYS[kind]], JWE_TYP)

    @settings(max_examples=200, deadline=None)
    @given(
        kind=st.sampled_from(KINDS),
        index=st.integers(min_value=1, max_value=4),
        raw=st.binary(max_size=64),
    )
    def test_any_segment_replaced(self, kind: str, index: int, raw: bytes) -> None:
        """Arbitrary bytes in place of a binary segment: refused, never another exception."""
        compact = PROPERTY_JWES[kind]
        assume(b64url(raw) != compact.split(".")[index])
        with pytest.raises(MalformedJose):
            decrypt(with_segment_bytes(compact, index, raw), [PROPERTY_KEYS[kind]], JWE_TYP)

    @settings(max_examples=200, deadline=None)
    @given(text=st.text(max_size=300))
    def test_arbitrary_text(self, text: str) -> None:
        """Any text at all: MalformedJose, never another exception."""
        with pytest.raises(MalformedJose):
            decrypt(text, list(PROPERTY_KEYS.values()), JWE_TYP)


class TestSignatureCrossLibrary:
    """ES256 (raw r||s) and EdDSA against pyjwt in both directions."""

    @pytest.mark.parametrize(("kind", "alg"), [("p256", "ES256"), ("ed25519", "EdDSA")])
    def test_pyjwt_signature_verifies_here(self, kind: KeyAlgorithm, alg: str) -> None:
        """A JWS signed by pyjwt verifies with this layer."""
        import jwt

        signer = generate(kind)
        compact = jwt.encode(
            {"iss": "a", "n": 1}, signer.key, algorithm=alg, headers={"typ": TYP, "kid": signer.kid}
        )
        jws = parse_jws(compact, TYP)
        assert len(jws.signature) == 64
        jws.verify(signer.public)
        assert jws.claims() == {"iss": "a", "n": 1}

    @pytest.mark.parametrize("kind", KINDS)
    def test_our_signature_verifies_in_pyjwt(self, kind: KeyAlgorithm) -> None:
        """A JWS signed here verifies in pyjwt, with the alg pyjwt expects."""
        import jwt

        signer = generate(kind)
        compact = sign_jwt({"iss": "a", "n": 1}, signer, TYP)
        decoded = jwt.api_jws.decode_complete(compact, signer.public.key, algorithms=[signer.alg])
        assert decoded["header"] == {"typ": TYP, "alg": signer.alg, "kid": signer.kid}
        assert json.loads(decoded["payload"]) == {"iss": "a", "n": 1}

    def test_es256_signature_is_raw_r_s(self) -> None:
        """Our ES256 signature is r || s, each 32 bytes big-endian, verifying as DER."""
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

        signer = generate("p256")
        jws = parse_jws(sign_jws(b"{}", signer, TYP), TYP)
        assert len(jws.signature) == 64
        r = int.from_bytes(jws.signature[:32], "big")
        s = int.from_bytes(jws.signature[32:], "big")
        public = signer.public.key
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(encode_dss_signature(r, s), jws.signing_input, ec.ECDSA(hashes.SHA256()))

    def test_der_signature_refused(self) -> None:
        """The DER form of a valid ES256 signature is not a JWS signature."""
        signer = generate("p256")
        compact = sign_jws(b"{}", signer, TYP)
        native = signer.key
        assert isinstance(native, ec.EllipticCurvePrivateKey)
        der = native.sign(compact.rsplit(".", 1)[0].encode(), ec.ECDSA(hashes.SHA256()))
        with pytest.raises(BadSignature, match="does not verify"):
            parse_jws(replace_segment(compact, 2, b64url(der)), TYP).verify(signer.public)

    @pytest.mark.parametrize("which", ["r", "s"])
    @pytest.mark.parametrize("value", ["zero", "n", "max"])
    def test_es256_out_of_range(self, which: str, value: str) -> None:
        """r or s equal to 0, to the group order n, or 2^256 - 1: refused."""
        order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
        number = {"zero": 0, "n": order, "max": 2**256 - 1}[value]
        signer = generate("p256")
        compact = sign_jws(b"{}", signer, TYP)
        signature = bytearray(b64url_decode(compact.split(".")[2]))
        start = 0 if which == "r" else 32
        signature[start : start + 32] = number.to_bytes(32, "big")
        with pytest.raises(BadSignature, match="does not verify"):
            parse_jws(replace_segment(compact, 2, b64url(bytes(signature))), TYP).verify(
                signer.public
            )

    def test_signer_refuses_a_key_of_another_type(self) -> None:
        """The EdDSA signer never signs with a P-256 key, nor ES256 with an Ed25519 key."""
        from gateway import jose

        with pytest.raises(TypeError):
            jose._SIGNERS["EdDSA"].sign(b"x", generate("p256").key)
        with pytest.raises(TypeError):
            jose._SIGNERS["ES256"].sign(b"x", generate("ed25519").key)


class TestStrictJsonUnchanged:
    """strict_json_object: json.loads' results, on strict UTF-8 only (RFC 8259 8.1)."""

    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            (b'{"a":"\\u00e9"}', {"a": "é"}),  # a valid escape
            (b'{"a":"\\ud83d\\ude00"}', {"a": "\U0001f600"}),  # a surrogate pair
            ('{"a":"é"}'.encode(), {"a": "é"}),  # UTF-8 itself
        ],
    )
    def test_accepted(self, data: bytes, expected: dict[str, Any]) -> None:
        assert strict_json_object(data) == expected

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            ('\ufeff{"a":1}', "byte order mark"),
            (b'\xef\xbb\xbf{"a":1}', "byte order mark"),
            ('{"a":1}'.encode("utf-16-le"), "not strict JSON"),  # not UTF-8
            (b'{"a":"\xed\xa0\x80"}', "not strict JSON"),  # a lone surrogate, encoded
            (b'{"a":"\xe9"}', "not strict JSON"),  # Latin-1
            ('{"a":"\ud800"}', "not strict JSON"),  # a lone surrogate in text
            ('{"a":"\\ud800"}', "lone surrogate"),
            (b'{"a":["\\udfff"]}', "lone surrogate"),
            (b'{"a":{"b":1,"c":2,"b":3}}', "duplicate member 'b'"),
            (b'{"a":-0.0}', "integers"),
            (b'{"a":"\x01"}', "not strict JSON"),
        ],
    )
    def test_refused(self, data: bytes | str, reason: str) -> None:
        with pytest.raises(MalformedJose, match=reason):
            strict_json_object(data)

    @settings(max_examples=300, deadline=None)
    @given(
        value=st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(st.text(max_size=5), children, max_size=4)
            ),
            max_leaves=20,
        )
    )
    def test_same_as_json_loads_on_strict_input(self, value: Any) -> None:
        """On JSON without floats or duplicates, the result is json.loads' result."""
        text = json.dumps({"v": value})
        if "\\ud" in text.lower():
            return  # lone surrogates are refused on purpose (tested above)
        assert strict_json_object(text) == json.loads(text)
        assert strict_json_object(text.encode()) == json.loads(text)


def b64url_error(segment: str) -> str:
    """The message of the ``ValueError`` that ``b64url_decode`` raises for ``segment``."""
    with pytest.raises(ValueError, match="base64url") as info:
        b64url_decode(segment)
    return str(info.value)


class TestLargeValues:
    """Values past one slice of the base64url work are coded exactly as small ones are.

    Large segments are encoded and decoded a slice at a time (so that no
    whole copy of them is made), small ones in one go: the bytes on the
    wire, the values read back and every refusal are the same either way.
    """

    from gateway.jose import _DECODE_SLICE_CHARS as DECODE_SLICE
    from gateway.jose import _ENCODE_SLICE_BYTES as ENCODE_SLICE

    # Around one slice (bytes encoded, their text decoded), two, and well past.
    SIZES: ClassVar[list[int]] = [
        ENCODE_SLICE - 1,
        ENCODE_SLICE,
        ENCODE_SLICE + 1,
        DECODE_SLICE * 3 // 4 + 2,
        2 * ENCODE_SLICE + 2,
        700_001,
    ]

    @pytest.mark.parametrize("size", SIZES)
    def test_jws_bytes_and_round_trip(self, size: int) -> None:
        """An Ed25519 JWS is the plain construction's, byte for byte, and parses back."""
        key = generate("ed25519")
        payload = bytes(range(256)) * (size // 256) + b"\xff" * (size % 256)
        compact = sign_jws(payload, key, TYP)
        header = canonical_json({"typ": TYP, "alg": key.alg, "kid": key.kid})
        assert compact == make_jws(header, key, payload)
        jws = parse_jws(compact, TYP)
        assert jws.payload == payload
        jws.verify(key.public)

    @pytest.mark.parametrize("size", SIZES)
    @pytest.mark.parametrize("kind", KINDS)
    def test_jwe_round_trip(self, size: int, kind: KeyAlgorithm) -> None:
        """A large JWE decrypts, its segments canonical base64url, and jwcrypto opens it."""
        from jwcrypto import jwe as jwcrypto_jwe
        from jwcrypto.jwk import JWK

        recipient = generate(kind, 1)
        plaintext = bytes(range(256)) * (size // 256) + b"\x00" * (size % 256)
        compact = as_text(encrypt(plaintext, recipient.public, JWE_TYP))
        assert decrypt(compact, [recipient], JWE_TYP) == plaintext
        segments = compact.split(".")
        assert [b64url(b64url_decode(segment)) for segment in segments] == segments
        assert len(b64url_decode(segments[3])) == size
        token = jwcrypto_jwe.JWE()
        token.deserialize(compact, JWK.from_pyca(recipient.key))
        assert token.payload == plaintext

    @pytest.mark.parametrize("size", SIZES)
    def test_joserfc_jwe_decrypts_here(self, size: int) -> None:
        """A large JWE sealed by joserfc opens here (the sliced decryption)."""
        from joserfc import jwe as joserfc_jwe
        from joserfc.jwk import OKPKey

        recipient = generate("ed25519", 1)
        plaintext = bytes(range(256)) * (size // 256) + b"\x01" * (size % 256)
        compact = joserfc_jwe.encrypt_compact(
            jwe_protected(recipient),
            plaintext,
            OKPKey.import_key(recipient.public.key),
            algorithms=[ENC_ALG, ENC_ENC],
        )
        assert decrypt(compact, [recipient], JWE_TYP) == plaintext

    def test_forged_large_ciphertext(self) -> None:
        """One flipped byte of a large ciphertext fails the tag: no plaintext comes back."""
        recipient = generate("ed25519", 1)
        compact = as_text(encrypt(b"x" * 500_000, recipient.public, JWE_TYP))
        for position in (0, 300_000, 499_999):
            forged = replace_segment(compact, 3, flip(compact.split(".")[3], position))
            with pytest.raises(MalformedJose, match="InvalidTag"):
                decrypt(forged, [recipient], JWE_TYP)

    def corruptions(self, segment: str) -> list[str]:
        """``segment`` with a bad character at slice edges, or an impossible length."""
        edges = [0, self.DECODE_SLICE - 1, self.DECODE_SLICE, len(segment) // 2, len(segment) - 1]
        corrupted = [
            segment[:at] + bad + segment[at + 1 :]
            for at in edges
            for bad in ("*", "+", "/", "=", "é", " ")
        ]
        corrupted.append(segment + "A" * (5 - len(segment) % 4))  # length 1 mod 4
        corrupted.append(segment[:-1] + ("B" if segment[-1] != "B" else "C"))  # spare bits
        return [candidate for candidate in corrupted if candidate != segment]

    def test_jws_payload_refusals(self) -> None:
        """A corrupted large payload is refused with the error its whole segment gives."""
        key = generate("ed25519")
        compact = sign_jws(b"x" * 500_000, key, TYP)
        header, payload, signature = compact.split(".")
        for corrupted in self.corruptions(payload):
            expected = f"payload or signature: {b64url_error(corrupted)}"
            with pytest.raises(MalformedJose) as info:
                parse_jws(f"{header}.{corrupted}.{signature}", TYP)
            assert str(info.value) == expected

    def test_jwe_ciphertext_refusals(self) -> None:
        """A corrupted large ciphertext segment is refused as not base64url."""
        recipient = generate("ed25519", 1)
        compact = as_text(encrypt(b"x" * 500_000, recipient.public, JWE_TYP))
        segments = compact.split(".")
        for corrupted in self.corruptions(segments[3]):
            b64url_error(corrupted)  # the plain decoder refuses it too
            with pytest.raises(MalformedJose) as info:
                decrypt(replace_segment(compact, 3, corrupted), [recipient], JWE_TYP)
            assert str(info.value) == "does not decrypt: ciphertext is not base64url"

    def test_ciphertext_of_the_wrong_length(self) -> None:
        """A large ciphertext one quantum short or long decodes, and fails the tag."""
        recipient = generate("ed25519", 1)
        compact = as_text(encrypt(b"x" * 500_000, recipient.public, JWE_TYP))
        ciphertext = compact.split(".")[3]
        for changed in (ciphertext[4:], ciphertext[:4] + ciphertext):
            with pytest.raises(MalformedJose, match="InvalidTag"):
                decrypt(replace_segment(compact, 3, changed), [recipient], JWE_TYP)
