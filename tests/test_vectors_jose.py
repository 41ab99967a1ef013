"""Published JOSE test vectors run through the project's own JOSE layer.

The vectors come from outside the project (see ``tests/vectors/README.md``):
RFC 8037 and RFC 7520 examples (the IETF JOSE cookbook) and C2SP Wycheproof.
Every case goes through :mod:`gateway.jose` and :mod:`gateway.keys`; joserfc,
jwcrypto and ``cryptography`` are only used to cross-check.

What the tests prove, per source:

* RFC 8037: our Ed25519 signer reproduces the example signature byte for byte,
  our verifier accepts it, ``thumbprint`` gives the RFC's kid, and our layer
  refuses the X25519 ``ECDH-ES``/``A128GCM`` example (outside our suite) that
  two independent libraries and a from-primitives decryption all accept.
* RFC 7520: none of its examples is in our suite; each one is refused for
  that reason, its in-suite keys (P-256) parse and thumbprint like jwcrypto's,
  the others are refused as keys, and example 5.4 validates the ECDH-ES key
  wrapping helper used below to craft attack JWEs.
* Wycheproof: every ``valid`` case in our suite is accepted, every ``invalid``
  case is refused, and every case outside our suite is refused by our layer.

Two seams keep header policy apart from cryptography. The vectors carry no
``typ`` (and the JWE ones no ``kid``), which protocol 3.0 requires, so an
unmodified call refuses them all for that reason alone (tested as such). To
reach the checks behind it, ``typ_waived`` treats a *missing* ``typ`` as the
expected one and leaves every other parse rule in force, and
``jwe_header_check_bypassed`` lets :func:`gateway.jose.decrypt` reach its
decryption core, whose own algorithm check is then what is tested.

An ``epk`` whose ``kty`` is not the recipient key's (Wycheproof x25519_jwk
tcId 524-527, and the same for P-256) must be refused even when the sender
computed the ECDH correctly: the libraries would read it as the recipient's
key type, so :func:`gateway.jose.check_jwe_header` checks ``kty``/``crv``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from gateway import jose
from gateway.errors import BadSignature, JoseError, MalformedJose
from gateway.keys import (
    ENC_ALG,
    ENC_ENC,
    KeyAlgorithm,
    PrivateKey,
    PublicKey,
    b64url,
    b64url_decode,
    generate_private_keys,
    thumbprint,
)

VECTORS = Path(__file__).parent / "vectors"
COOKBOOK = VECTORS / "jose-cookbook"
WYCHEPROOF = VECTORS / "wycheproof"

# The signature algorithms a receiver accepts (protocol 2; "Ed25519" is RFC 9864's name).
SUITE_SIG_ALGS = frozenset({"EdDSA", "Ed25519", "ES256"})
# The typ our tests expect where a vector has none (see ``typ_waived``).
WAIVED_TYP = "vector+jwt"
# JWK members that only a private key has.
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})


def load(path: Path) -> Any:
    """One vector file as JSON."""
    return json.loads(path.read_text(encoding="utf-8"))


def case_id(test: Mapping[str, Any]) -> str:
    """A readable pytest id: ``tc<tcId>-<comment>``."""
    comment = re.sub(r"[^A-Za-z0-9]+", "-", str(test.get("comment", ""))).strip("-")
    return f"tc{test['tcId']}-{comment[:60]}" if comment else f"tc{test['tcId']}"


def wycheproof_cases(name: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every (group, test) pair of a Wycheproof file, in file order."""
    return [
        (group, test) for group in load(WYCHEPROOF / name)["testGroups"] for test in group["tests"]
    ]


def public_part(jwk: Mapping[str, Any]) -> dict[str, Any]:
    """The JWK without its private members."""
    return {name: value for name, value in jwk.items() if name not in PRIVATE_MEMBERS}


def relabelled(jwk: Mapping[str, Any], **members: str) -> dict[str, Any]:
    """``jwk`` with ``kid`` set to its RFC 7638 thumbprint (where one can be computed).

    Our JWK rule is ``kid`` = thumbprint (protocol 2), which vector keys named
    like ``kid-ec-sign`` never meet; relabelling them in memory lets
    :meth:`PublicKey.from_jwk` judge the key itself. ``members`` adds or
    overrides ``use``/``alg`` where the vector's key has none.
    """
    result = {**jwk, **members}
    # Not an OKP/EC key with all its members: from_jwk refuses it on its own grounds.
    with contextlib.suppress(KeyError, ValueError):
        result["kid"] = thumbprint(result)
    return result


def public_key_of(jwk: Mapping[str, Any], **members: str) -> PublicKey:
    """Our checked public key for a vector JWK (``ValueError`` when our layer refuses it)."""
    return PublicKey.from_jwk(relabelled(public_part(jwk), **members))


def p256_private_key(jwk: Mapping[str, Any]) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key of a JWK, checked against its public coordinates."""
    key = ec.derive_private_key(int.from_bytes(b64url_decode(jwk["d"]), "big"), ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    assert b64url(numbers.x.to_bytes(32, "big")) == jwk["x"]
    assert b64url(numbers.y.to_bytes(32, "big")) == jwk["y"]
    return key


def p256_public(key: PrivateKey) -> ec.EllipticCurvePublicKey:
    """The public half of one of our P-256 private keys."""
    assert isinstance(key.key, ec.EllipticCurvePrivateKey)
    return key.key.public_key()


@dataclass
class RawInputJWS(jose.UnverifiedJWS):
    """An :class:`UnverifiedJWS` over arbitrary message bytes.

    Wycheproof signature vectors sign raw (often non-ASCII) messages, which no
    compact serialization can carry as its signing input. Only the signing
    input is substituted: :meth:`verify` (alg binding to the key, the
    ``cryptography`` verification, error translation) runs unchanged.
    """

    message: bytes = b""

    @property
    def signing_input(self) -> bytes:
        """The vector's message instead of ``header.payload``."""
        return self.message


def jws_outcome(compact: str, key_source: Callable[[], PublicKey]) -> str:
    """Run a compact JWS through our layer: ``accepted`` or ``refused at <stage>: <why>``.

    Stages, in the order a receiver applies them: ``parse`` (:func:`parse_jws`:
    structure, strict base64url and JSON, refused headers, ``kid``, allowed
    ``alg``), ``key`` (the vector's key through :mod:`gateway.keys`), ``verify``.
    """
    try:
        unverified = jose.parse_jws(compact, WAIVED_TYP)
    except JoseError as exc:
        return f"refused at parse: {exc}"
    try:
        key = key_source()
    except ValueError as exc:
        return f"refused at key: {exc}"
    try:
        unverified.verify(key)
    except JoseError as exc:
        return f"refused at verify: {exc}"
    return "accepted"


def flip_first_byte(compact: str, segment: int) -> str:
    """``compact`` with the first byte of one segment changed (still canonical base64url)."""
    parts = compact.split(".")
    raw = b64url_decode(parts[segment])
    parts[segment] = b64url(bytes([raw[0] ^ 0x01]) + raw[1:])
    return ".".join(parts)


def header_of(compact: str) -> dict[str, Any] | None:
    """The protected header of a compact object, or None if it is not readable."""
    try:
        header = json.loads(b64url_decode(compact.split(".", maxsplit=1)[0]))
    except ValueError:
        return None
    return header if isinstance(header, dict) else None


@pytest.fixture
def typ_waived(monkeypatch: pytest.MonkeyPatch) -> None:
    """Treat a *missing* ``typ`` as ``WAIVED_TYP``; every other header rule stays.

    A present but wrong ``typ`` is still refused. The fixture checks that the
    waiver takes effect (a typ-less Wycheproof ES256 JWS parses), so the tests
    using it cannot pass because everything is refused for the missing typ.
    """
    real = jose.normalize_typ
    monkeypatch.setattr(jose, "normalize_typ", lambda typ: WAIVED_TYP if typ is None else real(typ))
    jose.parse_jws(WYCHEPROOF_JWS_ES256_VALID, WAIVED_TYP)


@pytest.fixture
def jwe_header_check_bypassed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let :func:`decrypt` skip :func:`check_jwe_header` and use the first key given.

    What remains is decrypt's core: ``ECDH-ES+A256KW`` / ``A256GCM`` from
    ``cryptography`` primitives, refusing a header that names anything else,
    and every foreign error translated to ``MalformedJose``. This is
    defence in depth: it must refuse out-of-suite algorithms on its own.
    """

    def bypass(compact: object, keys: Any, expected_typ: str) -> jose.JWEHeader:
        return jose.JWEHeader(header={}, key=next(iter(keys)))

    monkeypatch.setattr(jose, "check_jwe_header", bypass)


# --------------------------------------------------------------------------------------
# ECDH-ES+AxxxKW from primitives: validated on RFC 7520 5.4, then used to craft attacks.
# --------------------------------------------------------------------------------------


def concat_kdf(shared_secret: bytes, algorithm_id: str, bits: int) -> bytes:
    """RFC 7518 4.6.2 Concat KDF with empty ``apu``/``apv``."""

    def prefixed(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    other_info = prefixed(algorithm_id.encode("ascii")) + prefixed(b"") + prefixed(b"")
    other_info += bits.to_bytes(4, "big")
    return ConcatKDFHash(hashes.SHA256(), bits // 8, other_info).derive(shared_secret)


def craft_jwe(
    shared_secret: bytes, epk: Mapping[str, Any], kid: str, plaintext: bytes = b"vector"
) -> str:
    """A compact ``ECDH-ES+A256KW``/``A256GCM`` JWE with our header, for a given ECDH result.

    This is what an attacker who knows (or forces) the shared secret can build:
    every header member is the one our layer expects, so only the key
    agreement decides whether :func:`gateway.jose.decrypt` accepts it.
    """
    header = {"alg": ENC_ALG, "enc": ENC_ENC, "kid": kid, "cty": "JWT", "typ": WAIVED_TYP}
    protected = b64url(json.dumps({**header, "epk": dict(epk)}).encode("utf-8"))
    kek = concat_kdf(shared_secret, ENC_ALG, 256)
    cek, iv = os.urandom(32), os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    parts = (aes_key_wrap(kek, cek), iv, sealed[:-16], sealed[-16:])
    return ".".join([protected, *(b64url(part) for part in parts)])


def p256_epk(public: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The JWK of a P-256 public key."""
    numbers = public.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


# Loaded once for the parametrizations below.
WYCHEPROOF_JWS = wycheproof_cases("json_web_signature_test.json")
WYCHEPROOF_JWK = wycheproof_cases("json_web_key_test.json")
WYCHEPROOF_JWE = wycheproof_cases("json_web_encryption_test.json")
WYCHEPROOF_ED25519 = wycheproof_cases("ed25519_test.json")
WYCHEPROOF_ES256 = wycheproof_cases("ecdsa_secp256r1_sha256_p1363_test.json")
WYCHEPROOF_X25519_JWK = wycheproof_cases("x25519_jwk_test.json")
WYCHEPROOF_AES_GCM = [
    (group, test)
    for group, test in wycheproof_cases("aes_gcm_test.json")
    if (group["keySize"], group["ivSize"], group["tagSize"]) == (256, 96, 128)
]
WYCHEPROOF_AES_KW = [
    (group, test)
    for group, test in wycheproof_cases("aes_wrap_test.json")
    if group["keySize"] == 256
]
WYCHEPROOF_JWS_ES256_VALID = next(t["jws"] for _, t in WYCHEPROOF_JWS if t["tcId"] == 18)


def params(cases: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[Any]:
    """``pytest.param`` per case with its readable id."""
    return [pytest.param(group, test, id=case_id(test)) for group, test in cases]


# --------------------------------------------------------------------------------------
# RFC 8037 (jose-cookbook/curve25519)
# --------------------------------------------------------------------------------------

RFC8037_JWS = load(COOKBOOK / "curve25519" / "jws.json")
RFC8037_ECDH = load(COOKBOOK / "curve25519" / "ecdh-es.json")
# RFC 8037 appendix A.3: the RFC 7638 thumbprint of the appendix A.1/A.2 Ed25519 key.
# The vector file holds the key but not this value, so it is quoted from the RFC.
RFC8037_A3_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


class TestRfc8037Ed25519:
    """RFC 8037 A.1-A.5: the Ed25519 key, its thumbprint and the EdDSA signature."""

    key = RFC8037_JWS["input"]["key"]
    private = Ed25519PrivateKey.from_private_bytes(b64url_decode(key["d"]))

    def test_thumbprint_is_the_rfc_value(self) -> None:
        """``thumbprint`` (the kid rule) and our key objects give RFC 8037 A.3's kid."""
        from jwcrypto.jwk import JWK

        assert thumbprint(self.key) == RFC8037_A3_THUMBPRINT
        assert JWK(**self.key).thumbprint() == RFC8037_A3_THUMBPRINT  # independent check
        ours = PrivateKey(self.private, "sig")
        assert ours.kid == RFC8037_A3_THUMBPRINT
        assert ours.public.jwk["x"] == self.key["x"]  # d -> x as in RFC 8032
        assert public_key_of(self.key, alg="EdDSA").kid == RFC8037_A3_THUMBPRINT

    def test_signature_is_reproduced_byte_for_byte(self) -> None:
        """The layer's own EdDSA signer (cryptography) gives the RFC's deterministic signature."""
        signing = RFC8037_JWS["signing"]
        assert signing["sig-input"] == RFC8037_JWS["output"]["compact"].rsplit(".", 1)[0]
        signature = jose._SIGNERS["EdDSA"].sign(signing["sig-input"].encode("ascii"), self.private)
        assert b64url(signature) == signing["sig"]

    def _unverified(self, compact: str) -> jose.UnverifiedJWS:
        """Split with the project's strict decoders; no typ/kid header policy applied."""
        header_b64, payload_b64, signature_b64 = compact.split(".")
        return jose.UnverifiedJWS(
            compact=compact.encode("ascii"),
            header=jose.strict_json_object(b64url_decode(header_b64)),
            payload=b64url_decode(payload_b64),
            signature=b64url_decode(signature_b64),
        )

    def test_example_verifies(self) -> None:
        """``UnverifiedJWS.verify`` accepts the RFC's JWS with the RFC's key."""
        unverified = self._unverified(RFC8037_JWS["output"]["compact"])
        unverified.verify(public_key_of(self.key, alg="EdDSA"))
        assert unverified.payload.decode("utf-8") == RFC8037_JWS["input"]["payload"]

    @pytest.mark.parametrize("segment", [1, 2])
    def test_tampered_example_is_refused(self, segment: int) -> None:
        """One changed payload or signature byte and verification fails."""
        tampered = flip_first_byte(RFC8037_JWS["output"]["compact"], segment)
        with pytest.raises(BadSignature):
            self._unverified(tampered).verify(public_key_of(self.key, alg="EdDSA"))

    def test_example_key_cannot_verify_as_another_algorithm(self) -> None:
        """``alg`` is bound to the key: a P-256 key never verifies an EdDSA JWS."""
        other = generate_private_keys("p256")[0].public
        with pytest.raises(BadSignature, match="alg does not match"):
            self._unverified(RFC8037_JWS["output"]["compact"]).verify(other)

    def test_header_policy_refuses_the_example(self) -> None:
        """Protocol 3.0: the RFC's header has neither ``typ`` nor ``kid``: refused as is."""
        with pytest.raises(MalformedJose, match="typ"):
            jose.parse_jws(RFC8037_JWS["output"]["compact"], WAIVED_TYP)


class TestRfc8037X25519:
    """RFC 8037 ECDH-ES with X25519 (``alg`` ECDH-ES, ``enc`` A128GCM).

    The example is outside our suite (direct ECDH-ES, A128GCM), so our layer
    must refuse it even with the right key. Its ``encrypting_key`` section is
    not the one used for ``output`` (its ``epk`` ``d`` does not give its ``x``,
    and neither matches the protected ``epk``; ``reproducible`` is false), so
    only the recipient key, the protected header and the output are used.
    """

    key = RFC8037_ECDH["input"]["key"]
    private = X25519PrivateKey.from_private_bytes(b64url_decode(key["d"]))
    compact = RFC8037_ECDH["output"]["compact"]
    plaintext = RFC8037_ECDH["input"]["plaintext"].encode("utf-8")

    def test_recipient_key_parses_and_derives(self) -> None:
        """d -> x per RFC 7748, and the public JWK parses as an encryption key."""
        from jwcrypto.jwk import JWK

        ours = PrivateKey(self.private, "enc")
        assert ours.public.jwk["x"] == self.key["x"]
        parsed = public_key_of(self.key, alg=ENC_ALG)
        assert parsed.kid == ours.kid == JWK(**public_part(self.key)).thumbprint()

    def test_independent_decryptions_agree(self) -> None:
        """joserfc, jwcrypto and a from-primitives decryption all recover the plaintext."""
        from joserfc import jwe as joserfc_jwe
        from joserfc.jwk import OKPKey
        from jwcrypto import jwe as jwcrypto_jwe
        from jwcrypto.jwk import JWK

        result = joserfc_jwe.decrypt_compact(
            self.compact, OKPKey.import_key(self.private), algorithms=["ECDH-ES", "A128GCM"]
        )
        assert result.plaintext == self.plaintext

        token = jwcrypto_jwe.JWE()
        token.deserialize(self.compact, JWK(**self.key))
        assert token.payload == self.plaintext

        protected, encrypted_key, iv, ciphertext, tag = self.compact.split(".")
        assert encrypted_key == ""  # direct key agreement: the CEK is the KDF output
        epk = json.loads(b64url_decode(protected))["epk"]
        shared = self.private.exchange(X25519PublicKey.from_public_bytes(b64url_decode(epk["x"])))
        cek = concat_kdf(shared, "A128GCM", 128)
        sealed = b64url_decode(ciphertext) + b64url_decode(tag)
        assert AESGCM(cek).decrypt(b64url_decode(iv), sealed, protected.encode()) == self.plaintext

    def test_our_layer_refuses_it(self, typ_waived: None) -> None:
        """Refused for its algorithms, even with the right key and ``typ`` waived."""
        with pytest.raises(MalformedJose, match="alg/enc must be"):
            jose.decrypt(self.compact, [PrivateKey(self.private, "enc")], WAIVED_TYP)

    def test_our_layer_refuses_it_as_is(self) -> None:
        """And, without any waiver, for its missing ``typ`` (protocol 3.0)."""
        with pytest.raises(MalformedJose, match="typ"):
            jose.decrypt(self.compact, [PrivateKey(self.private, "enc")], WAIVED_TYP)


# --------------------------------------------------------------------------------------
# RFC 7520 (jose-cookbook/jws, jose-cookbook/jwe)
# --------------------------------------------------------------------------------------

COOKBOOK_JWS = {path.stem: load(path) for path in sorted((COOKBOOK / "jws").glob("*.json"))}
COOKBOOK_JWE = {path.stem: load(path) for path in sorted((COOKBOOK / "jwe").glob("*.json"))}


def cookbook_keys() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every JWK in the RFC 7520 and RFC 8037 examples, named by example."""
    examples = {**COOKBOOK_JWS, **COOKBOOK_JWE, "rfc8037-jws": RFC8037_JWS}
    examples["rfc8037-ecdh-es"] = RFC8037_ECDH
    for name, example in examples.items():
        keys = example["input"].get("key", [])
        for index, key in enumerate(keys if isinstance(keys, list) else [keys]):
            yield f"{name}-key{index}", key
        if name == "rfc8037-ecdh-es":  # its encrypting_key section is inconsistent (see above)
            continue
        encrypting = example.get("encrypting_key", [])
        for index, entry in enumerate(encrypting if isinstance(encrypting, list) else [encrypting]):
            if "epk" in entry:
                yield f"{name}-epk{index}", entry["epk"]


def in_our_suite(key: Mapping[str, Any]) -> bool:
    """Ed25519, X25519 or P-256: the key types of protocol 2."""
    return (key.get("kty"), key.get("crv")) in {
        ("OKP", "Ed25519"),
        ("OKP", "X25519"),
        ("EC", "P-256"),
    }


def our_alg(key: Mapping[str, Any]) -> dict[str, str]:
    """The ``use``/``alg`` our layer assigns to such a key."""
    if key.get("crv") == "Ed25519":
        return {"use": "sig", "alg": "EdDSA"}
    use = key.get("use", "enc")
    return {"use": use, "alg": ENC_ALG if use == "enc" else "ES256"}


class TestRfc7520:
    """RFC 7520: which examples apply to our suite, and what our layer does with each.

    None applies: its signatures are RS256, PS384, ES512 (P-521) and HS256, its
    encryptions RSA1_5, RSA-OAEP, PBES2, ECDH-ES+A128KW (P-384), direct
    ECDH-ES (P-256, A128CBC-HS256), dir, A256GCMKW, A128KW (one with ``zip``).
    Each is refused by our layer for its algorithm (or a refused header). The
    vector set has no nested sign-then-encrypt example (RFC 7520 section 6);
    nesting is tested with jwcrypto at the end of this module.
    """

    @pytest.mark.parametrize("name", sorted(COOKBOOK_JWS))
    def test_jws_example_is_refused(self, name: str, typ_waived: None) -> None:
        """Every JWS example (compact or JSON) is refused by :func:`parse_jws`."""
        example = COOKBOOK_JWS[name]
        algs = example["input"]["alg"]  # 4.8 has one per signature
        assert SUITE_SIG_ALGS.isdisjoint(algs if isinstance(algs, list) else [algs])
        output = example["output"]
        if "compact" in output:
            with pytest.raises(MalformedJose, match="alg not allowed"):
                jose.parse_jws(output["compact"], WAIVED_TYP)
        for form in ("json", "json_flat"):  # the JSON serializations are not ours either
            if form in output:
                with pytest.raises(MalformedJose):
                    jose.parse_jws(json.dumps(output[form]), WAIVED_TYP)

    @pytest.mark.parametrize("name", sorted(COOKBOOK_JWE))
    def test_jwe_example_is_refused(self, name: str, typ_waived: None) -> None:
        """Every JWE example is refused by :func:`decrypt`, whatever key we hold."""
        example = COOKBOOK_JWE[name]
        algs = (example["input"]["alg"], example["input"]["enc"])
        assert algs != (ENC_ALG, ENC_ENC)
        recipient = example["input"].get("key")
        if isinstance(recipient, dict) and in_our_suite(recipient):  # 5.5: the real P-256 key
            keys = [PrivateKey(p256_private_key(recipient), "enc")]
        else:
            keys = [generate_private_keys("ed25519")[1]]
        output = example["output"]
        if "compact" in output:
            header = header_of(output["compact"])
            assert header is not None
            reason = "alg/enc must be"  # unless an earlier 3.0 rule already refuses it:
            if "zip" in header:
                reason = "refused header 'zip'"
            elif "kid" not in header:  # 5.3, PBES2: no kid
                reason = "kid missing"
            with pytest.raises(MalformedJose, match=reason):
                jose.decrypt(output["compact"], keys, WAIVED_TYP)
        for form in ("json", "json_flat"):
            if form in output:
                with pytest.raises(MalformedJose):
                    jose.decrypt(json.dumps(output[form]), keys, WAIVED_TYP)

    @pytest.mark.parametrize("jwk", [pytest.param(jwk, id=name) for name, jwk in cookbook_keys()])
    def test_cookbook_keys(self, jwk: dict[str, Any]) -> None:
        """Keys of our types parse, match jwcrypto's thumbprint and their ``d``; others are refused.

        As published (``kid`` a name, ``d`` present) every key is refused: a
        JWKS carries public keys whose ``kid`` is their thumbprint.
        """
        from jwcrypto.jwk import JWK

        with pytest.raises(ValueError, match=r"'d'|'kid'|unsupported"):
            PublicKey.from_jwk(jwk)
        if not in_our_suite(jwk):
            with pytest.raises(ValueError, match="unsupported"):
                public_key_of(jwk, use=jwk.get("use", "sig"), alg=jwk.get("alg", "none"))
            return
        parsed = public_key_of(jwk, **our_alg(jwk))
        assert parsed.kid == thumbprint(jwk) == JWK(**public_part(jwk)).thumbprint()
        if "d" in jwk:
            raw = b64url_decode(jwk["d"])
            private: Any
            if jwk["crv"] == "Ed25519":
                private = Ed25519PrivateKey.from_private_bytes(raw)
            elif jwk["crv"] == "X25519":
                private = X25519PrivateKey.from_private_bytes(raw)
            else:
                private = p256_private_key(jwk)
            assert PrivateKey(private, parsed.use).kid == parsed.kid

    def test_ecdh_es_key_wrap_example_from_primitives(self) -> None:
        """RFC 7520 5.4 (ECDH-ES+A128KW, P-384) recomputed from primitives.

        Validates ``concat_kdf`` and the key-wrap construction that
        ``craft_jwe`` uses for the attack JWEs below, on a published vector.
        """
        example = COOKBOOK_JWE[
            "5_4.key_agreement_with_key_wrapping_using_ecdh-es_and_aes-keywrap_with_aes-gcm"
        ]
        recipient = example["input"]["key"]
        private = ec.derive_private_key(
            int.from_bytes(b64url_decode(recipient["d"]), "big"), ec.SECP384R1()
        )
        epk = example["encrypting_key"]["epk"]
        point = b"\x04" + b64url_decode(epk["x"]) + b64url_decode(epk["y"])
        ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), point)
        kek = concat_kdf(private.exchange(ec.ECDH(), ephemeral), "ECDH-ES+A128KW", 128)
        encrypted_key = b64url_decode(example["encrypting_key"]["encrypted_key"])
        assert aes_key_wrap(kek, b64url_decode(example["generated"]["cek"])) == encrypted_key
        protected, _, iv, ciphertext, tag = example["output"]["compact"].split(".")
        cek = aes_key_unwrap(kek, encrypted_key)
        sealed = b64url_decode(ciphertext) + b64url_decode(tag)
        plaintext = AESGCM(cek).decrypt(b64url_decode(iv), sealed, protected.encode("ascii"))
        assert plaintext.decode("utf-8") == example["input"]["plaintext"]


# --------------------------------------------------------------------------------------
# Wycheproof: Ed25519 and ECDSA P-256 (P1363) signatures through UnverifiedJWS.verify
# --------------------------------------------------------------------------------------


class TestWycheproofEd25519:
    """ed25519_test.json: every valid signature verifies, every invalid one is refused.

    Run through :meth:`UnverifiedJWS.verify` with the group's public JWK parsed
    by :meth:`PublicKey.from_jwk`, under both names receivers accept.
    """

    @pytest.mark.parametrize("alg", ["EdDSA", "Ed25519"])
    @pytest.mark.parametrize(("group", "test"), params(WYCHEPROOF_ED25519))
    def test_case(self, group: dict[str, Any], test: dict[str, Any], alg: str) -> None:
        jwk = group["publicKeyJwk"]
        assert b64url_decode(jwk["x"]) == bytes.fromhex(group["publicKey"]["pk"])
        key = public_key_of(jwk, use="sig", alg="EdDSA")
        jws = RawInputJWS(
            compact="",
            header={"alg": alg, "kid": key.kid},
            payload=b"",
            signature=bytes.fromhex(test["sig"]),
            message=bytes.fromhex(test["msg"]),
        )
        if test["result"] == "valid":
            jws.verify(key)
        else:
            assert test["result"] == "invalid"
            with pytest.raises(BadSignature):
                jws.verify(key)


def es256_public_jwk(group: Mapping[str, Any]) -> dict[str, str]:
    """The group's P-256 key as a JWK, from its uncompressed point."""
    point = bytes.fromhex(group["publicKey"]["uncompressed"])
    assert point[0] == 4  # uncompressed
    assert len(point) == 65
    return {"kty": "EC", "crv": "P-256", "x": b64url(point[1:33]), "y": b64url(point[33:])}


class TestWycheproofEs256:
    """ecdsa_secp256r1_sha256_p1363_test.json: ES256 (raw r||s) through ``verify``.

    Every valid signature verifies and every invalid one (wrong sizes, r or s
    zero or out of range, modified integers) is refused with ``BadSignature``.
    """

    @pytest.mark.parametrize(("group", "test"), params(WYCHEPROOF_ES256))
    def test_case(self, group: dict[str, Any], test: dict[str, Any]) -> None:
        assert group["sha"] == "SHA-256"
        key = public_key_of(es256_public_jwk(group), use="sig", alg="ES256")
        jws = RawInputJWS(
            compact="",
            header={"alg": "ES256", "kid": key.kid},
            payload=b"",
            signature=bytes.fromhex(test["sig"]),
            message=bytes.fromhex(test["msg"]),
        )
        if test["result"] == "valid":
            jws.verify(key)
        else:
            assert test["result"] == "invalid"
            with pytest.raises(BadSignature):
                jws.verify(key)


# --------------------------------------------------------------------------------------
# Wycheproof: JSON Web Signature / JSON Web Key / JSON Web Encryption
# --------------------------------------------------------------------------------------


def jws_in_suite(test: Mapping[str, Any]) -> bool:
    """A case whose header names one of our signature algorithms."""
    header = header_of(test["jws"])
    return header is not None and header.get("alg") in SUITE_SIG_ALGS


def group_key_source(group: Mapping[str, Any]) -> Callable[[], PublicKey]:
    """Our public key for a JWS group's key, as a receiver would parse it."""
    jwk = group.get("public") or group["private"]
    return lambda: public_key_of(jwk)


class TestWycheproofJws:
    """json_web_signature_test.json through :func:`parse_jws` and ``verify``.

    ``valid`` cases in our suite (ES256) are accepted; every ``invalid`` case
    (modified parts, missing parts, ``alg: none``, HS256 with the EC key's
    bytes, an embedded attacker ``jwk``, out-of-range r/s, an encryption key)
    is refused; ``valid`` cases outside our suite (HS*, RS*, PS*, ES512) are
    refused too, at parse time for their ``alg`` unless malformed first.
    """

    @pytest.mark.parametrize(("group", "test"), params(WYCHEPROOF_JWS))
    def test_case(self, group: dict[str, Any], test: dict[str, Any], typ_waived: None) -> None:
        outcome = jws_outcome(test["jws"], group_key_source(group))
        if test["result"] == "valid" and jws_in_suite(test):
            assert outcome == "accepted"
        else:
            assert outcome.startswith("refused"), outcome
        if test["result"] == "valid" and not jws_in_suite(test):
            header = header_of(test["jws"])
            if header is not None:  # otherwise refused for its non-strict base64url header
                assert outcome == "refused at parse: alg not allowed"

    @pytest.mark.parametrize(("group", "test"), params(WYCHEPROOF_JWS))
    def test_header_policy_refuses_every_case(
        self, group: dict[str, Any], test: dict[str, Any]
    ) -> None:
        """Without the waiver, protocol 3.0 alone refuses all of them (no ``typ``)."""
        with pytest.raises(MalformedJose):
            jose.parse_jws(test["jws"], WAIVED_TYP)

    @pytest.mark.parametrize("tc_id", [354, 356])
    def test_encryption_key_never_verifies(self, tc_id: int) -> None:
        """tcId 354/356: the EC key is an encryption key; as ours, it cannot verify.

        The JWK-level refusal (``use``/``alg``/``key_ops``) is covered by
        ``test_case``; this checks ``verify``'s own use check with the same
        key material, which is the one that signed tcId 18.
        """
        group, test = next((g, t) for g, t in WYCHEPROOF_JWS if t["tcId"] == tc_id)
        jwk = public_part(group["public"])
        signing = public_key_of({**jwk, "use": "sig"}, use="sig", alg="ES256")
        as_enc_key = PublicKey(key=signing.key, use="enc")
        unverified = jose.UnverifiedJWS(
            compact=test["jws"].encode("ascii"),
            header=json.loads(b64url_decode(test["jws"].split(".")[0])),
            payload=b64url_decode(test["jws"].split(".")[1]),
            signature=b64url_decode(test["jws"].split(".")[2]),
        )
        unverified.verify(signing)  # the same key as a signing key accepts it ...
        with pytest.raises(BadSignature, match="not a signing key"):
            unverified.verify(as_enc_key)  # ... as an encryption key it never does


# Why json_web_key_test.json's EC keys are refused by PublicKey.from_jwk (relabelled kid).
JWK_REFUSAL_REASONS = {
    19: "'alg' must be 'ES256'",  # alg ES521 on a P-256 key
    20: "'alg' must be 'ES256'",  # alg ES224 on a P-256 key
    21: "'alg' must be 'ECDH-ES\\+A256KW'",  # use enc with alg ES256
    22: "not a valid P-256 public key",  # point not on the curve
    23: "unsupported key type",  # crv P-384 with P-256 coordinates
    24: "unsupported key type",  # kty RSA with EC members
}


class TestWycheproofJwk:
    """json_web_key_test.json: keys and key sets our layer must refuse.

    The key set goes through :func:`parse_jwks` (``kid`` relabelled to the
    thumbprint so that the key itself is judged), then the JWS through
    :func:`parse_jws` and ``verify``. No case is in our suite: symmetric, RSA
    and mislabelled EC keys are all refused, each for its own reason.
    """

    @pytest.mark.parametrize(("group", "test"), params(WYCHEPROOF_JWK))
    def test_case(self, group: dict[str, Any], test: dict[str, Any], typ_waived: None) -> None:
        from gateway.keys import parse_jwks

        keyset = group.get("public") or group["private"]

        def key_source() -> PublicKey:
            return parse_jwks({"keys": [relabelled(jwk) for jwk in keyset["keys"]]})[0]

        outcome = jws_outcome(test["jws"], key_source)
        assert outcome.startswith("refused"), outcome
        if test["result"] == "valid":  # HS*/RS256: out of suite
            assert not jws_in_suite(test)
            assert outcome == "refused at parse: alg not allowed"
        if test["tcId"] in JWK_REFUSAL_REASONS:
            with pytest.raises(ValueError, match=JWK_REFUSAL_REASONS[test["tcId"]]):
                key_source()


def jwe_in_suite(test: Mapping[str, Any]) -> bool:
    """A case whose header is ``ECDH-ES+A256KW``/``A256GCM``."""
    header = header_of(test["jwe"])
    return header is not None and (header.get("alg"), header.get("enc")) == (ENC_ALG, ENC_ENC)


def jwe_recipient(group: Mapping[str, Any]) -> PrivateKey | None:
    """Our private key for the group's key, or None when our layer cannot hold it."""
    jwk = group["private"]
    if (jwk.get("kty"), jwk.get("crv")) == ("EC", "P-256"):
        return PrivateKey(p256_private_key(jwk), "enc")
    with pytest.raises(ValueError, match="unsupported"):  # RSA, symmetric: not a key type of ours
        public_key_of(jwk)
    return None


class TestWycheproofJwe:
    """json_web_encryption_test.json through :func:`gateway.jose.decrypt`.

    One case is in our suite (tcId 66, ECDH-ES+A256KW/A256GCM on P-256): it
    decrypts. Every other case (other algorithms, truncated tags, modified or
    missing parts, an invalid curve point, JSON serialization) is refused.
    """

    @pytest.mark.parametrize(("group", "test"), params(WYCHEPROOF_JWE))
    def test_core(
        self, group: dict[str, Any], test: dict[str, Any], jwe_header_check_bypassed: None
    ) -> None:
        """Decryption core alone (header check bypassed): only our suite decrypts."""
        recipient = jwe_recipient(group) or generate_private_keys("ed25519")[1]
        if test["result"] == "valid" and jwe_in_suite(test):
            assert jose.decrypt(test["jwe"], [recipient], WAIVED_TYP) == bytes.fromhex(test["pt"])
        elif test["result"] == "valid":  # out of suite: the core's alg/enc check is the reason
            with pytest.raises(MalformedJose, match="alg/enc must be"):
                jose.decrypt(test["jwe"], [recipient], WAIVED_TYP)
        else:
            with pytest.raises(MalformedJose):
                jose.decrypt(test["jwe"], [recipient], WAIVED_TYP)

    @pytest.mark.parametrize(
        ("part", "change"),
        [
            (4, "truncate1"),
            (4, "truncate4"),
            (4, "truncate8"),
            (4, "extend1"),
            (4, "flip"),
            (3, "flip"),
            (3, "truncate1"),
            (3, "empty"),
            (2, "flip"),
            (2, "empty"),
            (1, "flip"),
            (1, "empty"),
        ],
    )
    def test_in_suite_case_modified(
        self, part: int, change: str, jwe_header_check_bypassed: None
    ) -> None:
        """tcId 66 with Wycheproof's modifications applied to our own suite.

        The file's tag-truncation cases (63-65) use A128GCM, which the
        allow-list refuses before any tag is checked; these apply the same
        changes (and more) to the one in-suite case, so that the A256GCM tag
        and the A256KW unwrap are what refuse them.
        """
        group, test = next((g, t) for g, t in WYCHEPROOF_JWE if t["tcId"] == 66)
        recipient = PrivateKey(p256_private_key(group["private"]), "enc")
        parts = test["jwe"].split(".")
        raw = b64url_decode(parts[part])
        if change == "flip":
            raw = bytes([raw[0] ^ 0x01]) + raw[1:]
        elif change == "extend1":
            raw += b"\x00"
        elif change == "empty":
            raw = b""
        else:
            raw = raw[: -int(change.removeprefix("truncate"))]
        parts[part] = b64url(raw)
        with pytest.raises(MalformedJose):
            jose.decrypt(".".join(parts), [recipient], WAIVED_TYP)

    @pytest.mark.parametrize(("group", "test"), params(WYCHEPROOF_JWE))
    def test_header_policy_refuses_every_case(
        self, group: dict[str, Any], test: dict[str, Any]
    ) -> None:
        """The full :func:`decrypt` refuses them all: no ``typ``/``kid`` (protocol 3.0)."""
        recipient = jwe_recipient(group) or generate_private_keys("ed25519")[1]
        with pytest.raises(MalformedJose):
            jose.decrypt(test["jwe"], [recipient], WAIVED_TYP)

    def test_in_suite_case_decrypts_with_a_conforming_header(self) -> None:
        """tcId 66's key and crypto, behind a header that passes every 3.0 rule.

        The vector's own header cannot be changed (it is authenticated), so
        the same recipient key receives a JWE crafted with the vector's epk
        scheme: proof that the full path, not just the core, accepts P-256.
        """
        group, _ = next((g, t) for g, t in WYCHEPROOF_JWE if t["tcId"] == 66)
        recipient = PrivateKey(p256_private_key(group["private"]), "enc")
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        shared = ephemeral.exchange(ec.ECDH(), p256_public(recipient))
        compact = craft_jwe(shared, p256_epk(ephemeral.public_key()), recipient.kid, b"foo")
        assert jose.decrypt(compact, [recipient], WAIVED_TYP) == b"foo"

    def test_invalid_curve_point_is_refused_before_decryption(self) -> None:
        """tcId 51's off-curve epk, in a JWE that is otherwise fully in our suite.

        Refused when the point is imported (a ``ValueError`` from the curve
        check), not later by a tag mismatch: no ECDH is computed with it.
        """
        _, test = next((g, t) for g, t in WYCHEPROOF_JWE if t["tcId"] == 51)
        epk = json.loads(b64url_decode(test["jwe"].split(".")[0]))["epk"]
        recipient = generate_private_keys("p256")[1]
        compact = craft_jwe(os.urandom(32), epk, recipient.kid)
        with pytest.raises(MalformedJose, match="ValueError"):
            jose.decrypt(compact, [recipient], WAIVED_TYP)


# --------------------------------------------------------------------------------------
# Wycheproof x25519_jwk_test.json: X25519 epk values through decrypt, and JWK parsing
# --------------------------------------------------------------------------------------


def x25519_params() -> list[Any]:
    """Params for x25519_jwk_test.json, one per case."""
    return [pytest.param(test, id=case_id(test)) for _, test in WYCHEPROOF_X25519_JWK]


def lenient_shared_secret(private: X25519PrivateKey, public_jwk: Mapping[str, Any]) -> bytes:
    """The ECDH result a lax implementation would use for an invalid epk.

    Crafting the attack JWE with it makes the test fail if decryption goes
    through, so a refusal can only come from checking the epk, not from a
    wrong key. Zero when ``x`` is not a 32-byte value.
    """
    try:
        raw = b64url_decode(public_jwk.get("x", ""))
        if len(raw) == 32:
            return private.exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError:
        pass
    return bytes(32)


class TestWycheproofX25519:
    """x25519_jwk_test.json: each public key as the epk of a JWE to our X25519 key.

    The JWE is crafted with the vector's shared secret, so a ``valid`` case
    decrypting proves our layer computes RFC 7748 X25519 correctly (edge
    cases included); a low-order epk (all-zero secret, RFC 7748 6.1) is
    refused; twist and non-canonical points ("acceptable") decrypt to the
    right value; ``invalid`` epks (wrong kty/crv, missing members) are refused
    even when crafted with the secret a lax implementation would compute.
    """

    @pytest.mark.parametrize("test", x25519_params())
    def test_epk_through_decrypt(self, test: dict[str, Any]) -> None:
        private = X25519PrivateKey.from_private_bytes(b64url_decode(test["private"]["d"]))
        recipient = PrivateKey(private, "enc")
        if test["result"] == "invalid":
            shared = lenient_shared_secret(private, test["public"])
        else:
            shared = bytes.fromhex(test["shared"])
        compact = craft_jwe(shared, test["public"], recipient.kid)
        if test["result"] == "invalid" or "ZeroSharedSecret" in test["flags"]:
            with pytest.raises(MalformedJose):
                jose.decrypt(compact, [recipient], WAIVED_TYP)
        else:
            assert jose.decrypt(compact, [recipient], WAIVED_TYP) == b"vector"

    @pytest.mark.parametrize(
        "test", [pytest.param(t, id=case_id(t)) for _, t in WYCHEPROOF_X25519_JWK]
    )
    def test_public_jwk_parsing(self, test: dict[str, Any]) -> None:
        """:meth:`PublicKey.from_jwk` on the case's public JWK (as an encryption key).

        X25519 values parse (RFC 7748 takes any 32 bytes); invalid JWKs are
        refused, except tcId 519, a genuine P-256 key, which our layer accepts
        as a P-256 encryption key (it is refused as an X25519 epk above).
        """
        public = test["public"]
        if test["result"] != "invalid" or test["tcId"] == 519:
            parsed = public_key_of(public, use="enc", alg=ENC_ALG)
            assert parsed.jwk["crv"] == public["crv"]
        else:
            with pytest.raises(ValueError, match=r"unsupported key type|'x' is missing"):
                public_key_of(public, use="enc", alg=ENC_ALG)

    def test_encrypt_to_a_low_order_key_fails(self) -> None:
        """Encrypting to a low-order key would give a JWE anyone can open: it must fail.

        ``cryptography`` refuses the all-zero X25519 result, so :func:`encrypt`
        raises (``MalformedJose``, "cannot encrypt to that key") and produces nothing.
        """
        low_order = {
            t["public"]["x"] for _, t in WYCHEPROOF_X25519_JWK if "ZeroSharedSecret" in t["flags"]
        }
        assert len(low_order) >= 10
        for x in sorted(low_order):
            recipient = PublicKey(X25519PublicKey.from_public_bytes(b64url_decode(x)), "enc")
            with pytest.raises((ValueError, JoseError)):
                jose.encrypt(b"secret", recipient, WAIVED_TYP)


class TestEpkKeyType:
    """Derived (not a vector): the tcId 524-527 case on P-256 recipients too.

    An epk whose ``kty`` is not ``EC`` is refused for a P-256 key even when
    the sender computed the ECDH correctly.
    """

    @pytest.mark.parametrize("kty", ["", "OKP", "RSA", "oct"])
    def test_mislabelled_kty_is_refused(self, kty: str) -> None:
        recipient = generate_private_keys("p256")[1]
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        shared = ephemeral.exchange(ec.ECDH(), p256_public(recipient))
        epk = {**p256_epk(ephemeral.public_key()), "kty": kty}
        with pytest.raises(MalformedJose):
            jose.decrypt(craft_jwe(shared, epk, recipient.kid), [recipient], WAIVED_TYP)

    def test_correct_kty_is_accepted(self) -> None:
        """Control for the above: the same construction with ``kty: EC`` decrypts."""
        recipient = generate_private_keys("p256")[1]
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        shared = ephemeral.exchange(ec.ECDH(), p256_public(recipient))
        compact = craft_jwe(shared, p256_epk(ephemeral.public_key()), recipient.kid)
        assert jose.decrypt(compact, [recipient], WAIVED_TYP) == b"vector"


# --------------------------------------------------------------------------------------
# Wycheproof AES-GCM and AES key wrap: the primitives under our JWE
# --------------------------------------------------------------------------------------


class TestWycheproofPrimitives:
    """The AES-256-GCM (96-bit IV, 128-bit tag) and AES-256 key wrap under A256GCM/A256KW.

    Run against ``cryptography``, which our JWE layer uses for both, so that a
    broken dependency is caught here rather than in an exchange.
    """

    @pytest.mark.parametrize(("group", "test"), params(WYCHEPROOF_AES_GCM))
    def test_aes_gcm(self, group: dict[str, Any], test: dict[str, Any]) -> None:
        aead = AESGCM(bytes.fromhex(test["key"]))
        iv, aad = bytes.fromhex(test["iv"]), bytes.fromhex(test["aad"])
        sealed = bytes.fromhex(test["ct"] + test["tag"])
        if test["result"] == "valid":
            assert aead.encrypt(iv, bytes.fromhex(test["msg"]), aad) == sealed
            assert aead.decrypt(iv, sealed, aad) == bytes.fromhex(test["msg"])
        else:
            assert test["result"] == "invalid"
            with pytest.raises(InvalidTag):
                aead.decrypt(iv, sealed, aad)

    @pytest.mark.parametrize(("group", "test"), params(WYCHEPROOF_AES_KW))
    def test_aes_key_wrap(self, group: dict[str, Any], test: dict[str, Any]) -> None:
        kek, key, wrapped = (bytes.fromhex(test[name]) for name in ("key", "msg", "ct"))
        if test["result"] == "valid":
            assert aes_key_wrap(kek, key) == wrapped
            assert aes_key_unwrap(kek, wrapped) == key
        elif test["result"] == "invalid":
            with pytest.raises((InvalidUnwrap, ValueError)):
                aes_key_unwrap(kek, wrapped)
        else:  # "acceptable" (an 8-byte key): refusing is fine, a wrong result is not
            with contextlib.suppress(InvalidUnwrap, ValueError):
                assert aes_key_unwrap(kek, wrapped) == key


# --------------------------------------------------------------------------------------
# Round trips with an independent implementation (jwcrypto)
# --------------------------------------------------------------------------------------

PAYLOAD = b'{"iss":"tax-authority","aud":"social-benefits","n":1}'
KINDS = ["ed25519", "p256"]


def vector_signers() -> dict[str, PrivateKey]:
    """Signing keys from the vectors: RFC 8037's Ed25519 key, Wycheproof's ES256 key."""
    ed25519 = Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC8037_JWS["input"]["key"]["d"]))
    es256 = next(g for g, _ in WYCHEPROOF_JWS if g["comment"] == "es256")["private"]
    return {
        "rfc8037-ed25519": PrivateKey(ed25519, "sig"),
        "wycheproof-p256": PrivateKey(p256_private_key(es256), "sig"),
    }


def vector_recipients() -> dict[str, tuple[PrivateKey, dict[str, Any]]]:
    """Encryption keys from the vectors, with their published JWK (for jwcrypto)."""
    bob = RFC8037_ECDH["input"]["key"]
    meriadoc = COOKBOOK_JWE["5_5.key_agreement_using_ecdh-es_with_aes-cbc-hmac-sha2"]
    p256 = meriadoc["input"]["key"]
    return {
        "rfc8037-x25519": (
            PrivateKey(X25519PrivateKey.from_private_bytes(b64url_decode(bob["d"])), "enc"),
            bob,
        ),
        "rfc7520-p256": (PrivateKey(p256_private_key(p256), "enc"), p256),
    }


class TestJwcryptoInterop:
    """Our JWS/JWE against jwcrypto in both directions, and nested sign-then-encrypt.

    Proves that a gateway built on another standard library interoperates:
    headers, signatures (EdDSA/Ed25519, ES256 raw r||s) and ECDH-ES+A256KW
    with A256GCM (X25519 and P-256) mean the same to both.
    """

    @pytest.mark.parametrize("kind", KINDS)
    def test_our_jws_verifies_in_jwcrypto(self, kind: KeyAlgorithm) -> None:
        from jwcrypto import jws
        from jwcrypto.jwk import JWK

        signer = generate_private_keys(kind)[0]
        compact = jose.sign_jws(PAYLOAD, signer, "exchange-request+jwt")
        token = jws.JWS()
        token.deserialize(compact)
        token.verify(JWK(**signer.public.jwk), alg=signer.alg)
        assert token.payload == PAYLOAD
        assert token.jose_header == {
            "typ": "exchange-request+jwt",
            "alg": signer.alg,
            "kid": signer.kid,
        }

    @pytest.mark.parametrize(
        ("kind", "alg"), [("ed25519", "EdDSA"), ("ed25519", "Ed25519"), ("p256", "ES256")]
    )
    def test_jwcrypto_jws_verifies_with_ours(self, kind: KeyAlgorithm, alg: str) -> None:
        from jwcrypto import jws
        from jwcrypto.common import json_encode
        from jwcrypto.jwk import JWK

        signer = generate_private_keys(kind)[0]
        token = jws.JWS(PAYLOAD)
        header = {"alg": alg, "typ": "exchange-request+jwt", "kid": signer.kid}
        token.add_signature(JWK.from_pyca(signer.key), alg=alg, protected=json_encode(header))
        compact = token.serialize(compact=True)
        unverified = jose.parse_jws(compact, "exchange-request+jwt")
        unverified.verify(signer.public)
        assert unverified.payload == PAYLOAD
        with pytest.raises(BadSignature):
            jose.parse_jws(flip_first_byte(compact, 2), "exchange-request+jwt").verify(
                signer.public
            )

    @pytest.mark.parametrize("kind", KINDS)
    def test_our_jwe_decrypts_in_jwcrypto(self, kind: KeyAlgorithm) -> None:
        from jwcrypto import jwe
        from jwcrypto.jwk import JWK

        recipient = generate_private_keys(kind)[1]
        compact = jose.encrypt(PAYLOAD, recipient.public, "exchange-response+jwe")
        token = jwe.JWE()
        token.deserialize(compact.decode("ascii"), JWK.from_pyca(recipient.key))
        assert token.payload == PAYLOAD
        header = json.loads(token.objects["protected"])
        expected = {"alg": ENC_ALG, "enc": ENC_ENC, "kid": recipient.kid, "cty": "JWT"}
        assert {name: header[name] for name in expected} == expected
        assert header["typ"] == "exchange-response+jwe"

    @pytest.mark.parametrize("kind", KINDS)
    def test_jwcrypto_jwe_decrypts_with_ours(self, kind: KeyAlgorithm) -> None:
        from jwcrypto import jwe
        from jwcrypto.common import json_encode
        from jwcrypto.jwk import JWK

        recipient = generate_private_keys(kind)[1]
        protected = {
            "alg": ENC_ALG,
            "enc": ENC_ENC,
            "typ": "exchange-response+jwe",
            "kid": recipient.kid,
            "cty": "JWT",
        }
        token = jwe.JWE(PAYLOAD, protected=json_encode(protected))
        token.add_recipient(JWK(**recipient.public.jwk))
        compact = token.serialize(compact=True)
        assert jose.decrypt(compact, [recipient], "exchange-response+jwe") == PAYLOAD

    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize(
        ("alg", "enc"),
        [
            ("ECDH-ES", "A256GCM"),
            ("ECDH-ES+A128KW", "A256GCM"),
            ("ECDH-ES+A256KW", "A128GCM"),
            ("ECDH-ES+A256KW", "A256CBC-HS512"),
        ],
    )
    def test_jwcrypto_jwe_outside_our_suite_is_refused(
        self, kind: KeyAlgorithm, alg: str, enc: str
    ) -> None:
        """A well-formed JWE to our own key, with another alg or enc: refused."""
        from jwcrypto import jwe
        from jwcrypto.common import json_encode
        from jwcrypto.jwk import JWK

        recipient = generate_private_keys(kind)[1]
        protected = {"alg": alg, "enc": enc, "typ": "t", "kid": recipient.kid, "cty": "JWT"}
        token = jwe.JWE(PAYLOAD, protected=json_encode(protected))
        token.add_recipient(JWK(**recipient.public.jwk))
        with pytest.raises(MalformedJose, match="alg/enc must be"):
            jose.decrypt(token.serialize(compact=True), [recipient], "t")

    @pytest.mark.parametrize("recipient_name", sorted(vector_recipients()))
    @pytest.mark.parametrize("signer_name", sorted(vector_signers()))
    def test_nested_ours_to_jwcrypto(self, signer_name: str, recipient_name: str) -> None:
        """Sign-then-encrypt by us (vector keys), opened and verified by jwcrypto."""
        from jwcrypto import jwe, jws
        from jwcrypto.jwk import JWK

        signer = vector_signers()[signer_name]
        recipient, recipient_jwk = vector_recipients()[recipient_name]
        # As an envelope is sealed: the JWS's ASCII bytes encrypted, the JWE's sent.
        inner = jose.sign_jws_ascii(PAYLOAD, signer, "exchange-request+jwt")
        outer = jose.encrypt(inner, recipient.public, "exchange-request+jwe")
        envelope = jwe.JWE()
        envelope.deserialize(outer.decode("ascii"), JWK(**recipient_jwk))
        assert json.loads(envelope.objects["protected"])["cty"] == "JWT"
        signed = jws.JWS()
        signed.deserialize(envelope.payload.decode("ascii"))
        signed.verify(JWK(**signer.public.jwk), alg=signer.alg)
        assert signed.payload == PAYLOAD

    @pytest.mark.parametrize("recipient_name", sorted(vector_recipients()))
    @pytest.mark.parametrize("signer_name", sorted(vector_signers()))
    def test_nested_jwcrypto_to_ours(self, signer_name: str, recipient_name: str) -> None:
        """Sign-then-encrypt by jwcrypto (vector keys), opened and verified by us."""
        from jwcrypto import jwe, jws
        from jwcrypto.common import json_encode
        from jwcrypto.jwk import JWK

        signer = vector_signers()[signer_name]
        recipient, _ = vector_recipients()[recipient_name]
        signed = jws.JWS(PAYLOAD)
        header = {"alg": signer.alg, "typ": "exchange-request+jwt", "kid": signer.kid}
        signed.add_signature(JWK.from_pyca(signer.key), protected=json_encode(header))
        protected = {
            "alg": ENC_ALG,
            "enc": ENC_ENC,
            "typ": "exchange-request+jwe",
            "kid": recipient.kid,
            "cty": "JWT",
        }
        envelope = jwe.JWE(signed.serialize(compact=True), protected=json_encode(protected))
        envelope.add_recipient(JWK(**recipient.public.jwk))
        plaintext = jose.decrypt(
            envelope.serialize(compact=True), [recipient], "exchange-request+jwe"
        )
        inner = jose.parse_jws(plaintext.decode("ascii"), "exchange-request+jwt")
        assert inner.kid == signer.kid
        inner.verify(signer.public)
        assert inner.claims() == json.loads(PAYLOAD)


# --------------------------------------------------------------------------------------
# Inventory: the number of cases per file and category, as reported
# --------------------------------------------------------------------------------------


def test_case_inventory() -> None:
    """How many cases each file contributes, per category (keeps the report honest)."""

    def categorize(cases: list[Any], in_suite: Callable[[dict[str, Any]], bool]) -> Counter[str]:
        counts: Counter[str] = Counter()
        for _, test in cases:
            if test["result"] == "valid":
                counts["valid in suite" if in_suite(test) else "valid out of suite"] += 1
            else:
                counts[test["result"]] += 1
        return counts

    assert categorize(WYCHEPROOF_ED25519, lambda t: True) == {"valid in suite": 88, "invalid": 63}
    assert categorize(WYCHEPROOF_ES256, lambda t: True) == {"valid in suite": 173, "invalid": 89}
    assert categorize(WYCHEPROOF_JWS, jws_in_suite) == {
        "valid in suite": 2,
        "valid out of suite": 44,
        "invalid": 355,
    }
    assert categorize(WYCHEPROOF_JWK, jws_in_suite) == {"valid out of suite": 5, "invalid": 21}
    assert categorize(WYCHEPROOF_JWE, jwe_in_suite) == {
        "valid in suite": 1,
        "valid out of suite": 64,
        "invalid": 74,
    }
    assert categorize(WYCHEPROOF_X25519_JWK, lambda t: True) == {
        "valid in suite": 264,
        "acceptable": 254,
        "invalid": 13,
    }
    assert categorize(WYCHEPROOF_AES_GCM, lambda t: True) == {"valid in suite": 39, "invalid": 27}
    assert categorize(WYCHEPROOF_AES_KW, lambda t: True) == {
        "valid in suite": 13,
        "invalid": 54,
        "acceptable": 1,
    }
