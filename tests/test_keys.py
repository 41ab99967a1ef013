"""Agency keys: files, JWKs, thumbprints and strict base64url (protocol section 2)."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import SetupError
from gateway.keys import (
    ENC_ALG,
    ENCRYPTION_FILE,
    JWKS_FILE,
    MAX_JWKS_KEYS,
    SIG_ALG_ED25519,
    SIG_ALG_ES256,
    SIGNING_FILE,
    AgencyKeys,
    KeyAlgorithm,
    PrivateKey,
    PublicKey,
    b64url,
    b64url_decode,
    generate_private_keys,
    jwks_document,
    load_agency_keys,
    load_private_key,
    load_public_key_file,
    parse_jwks,
    private_key_pem,
    thumbprint,
    write_key_dir,
    write_private_file,
)

# RFC 8037 appendix A.2 public key and its A.3 RFC 7638 thumbprint.
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_KID = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def public_pem(key: PrivateKey) -> bytes:
    """The SubjectPublicKeyInfo PEM of ``key``'s public half."""
    return key.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class TestBase64url:
    """Strict base64url without padding (RFC 7515 section 2)."""

    @pytest.mark.parametrize("data", [b"", b"\x00", b"\xff\xfe", b"abc", b"\xfb\xff\xbf"])
    def test_round_trip(self, data: bytes) -> None:
        """Encoding then decoding gives the bytes back, without padding characters."""
        text = b64url(data)
        assert "=" not in text
        assert b64url_decode(text) == data

    def test_url_safe_alphabet(self) -> None:
        """The URL-safe alphabet is used: '-' and '_' rather than '+' and '/'."""
        assert b64url(b"\xfb\xff\xbf") == "-_-_"

    @pytest.mark.parametrize(
        "text",
        [
            "YQ==",  # padded
            "YQ=",  # partly padded
            "YR",  # non-zero trailing bits: decodes to b"a" but is not canonical
            "+/+/",  # standard alphabet
            "Y Q",  # whitespace silently skipped by the stdlib
            "Y!Q",  # non-alphabet character silently skipped by the stdlib
            "A",  # impossible length
            "YQ\n",
        ],
    )
    def test_refuses_non_canonical(self, text: str) -> None:
        """Padding, other alphabets, skipped characters and spare bits are refused."""
        with pytest.raises(ValueError, match="base64url"):
            b64url_decode(text)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=64))
    def test_round_trip_property(self, data: bytes) -> None:
        """Every byte string survives encode/decode."""
        assert b64url_decode(b64url(data)) == data

    @settings(max_examples=300, deadline=None)
    @given(
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/= .!\n")
    )
    def test_only_canonical_accepted(self, text: str) -> None:
        """Any string is either refused or the one canonical encoding of what it decodes to."""
        try:
            raw = b64url_decode(text)
        except ValueError:
            return
        assert b64url(raw) == text

    def test_ascii_bytes_as_text(self) -> None:
        """ASCII bytes (a compact form as sent) decode exactly as their text does."""
        for text in ("YQ", "YWI", "YWJj", "_-8", ""):
            assert b64url_decode(text.encode()) == b64url_decode(text)
            assert b64url_decode(bytearray(text.encode())) == b64url_decode(text)
        for bad in (b"YR", b"Y", b"YQ==", b"a+b/", "é".encode(), b"YQ\x00"):
            with pytest.raises(ValueError, match="base64url"):
                b64url_decode(bad)

    def test_refuses_other_types(self) -> None:
        """Neither text nor bytes: refused, not decoded."""
        for value in (None, 5, memoryview(b"YQ"), ["YQ"]):
            with pytest.raises(ValueError, match="base64url"):
                b64url_decode(value)  # type: ignore[arg-type]


class TestThumbprint:
    """RFC 7638 SHA-256 thumbprints: the kid rule."""

    def test_rfc8037_ed25519_value(self) -> None:
        """The RFC 8037 A.3 example key has the RFC's thumbprint."""
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}
        assert thumbprint(jwk) == RFC8037_KID

    def test_ignores_other_members(self) -> None:
        """Only the required members count: kid, use, alg and order change nothing."""
        jwk = {"x": RFC8037_X, "use": "sig", "alg": "EdDSA", "kid": "k", "crv": "Ed25519"}
        assert thumbprint({**jwk, "kty": "OKP"}) == RFC8037_KID

    def test_public_key_kid_is_thumbprint(self) -> None:
        """A PublicKey built from the RFC key has the RFC kid and our alg/use."""
        raw = b64url_decode(RFC8037_X)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}
        key = PublicKey.from_jwk({**jwk, "kid": RFC8037_KID, "use": "sig", "alg": "EdDSA"})
        assert key.kid == RFC8037_KID
        assert key.alg == SIG_ALG_ED25519
        assert key.jwk["x"] == b64url(raw)

    def test_ec_thumbprint_uses_y(self) -> None:
        """An EC thumbprint depends on y as well as x."""
        jwk = dict(generate_private_keys("p256")[0].public.jwk)
        other = {**jwk, "y": b64url(b"\x00" * 32)}
        assert thumbprint(jwk) != thumbprint(other)

    @pytest.mark.parametrize("member", ["crv", "x"])
    def test_missing_member(self, member: str) -> None:
        """A JWK without a required member has no thumbprint."""
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}
        del jwk[member]
        with pytest.raises(ValueError, match=f"'{member}' missing"):
            thumbprint(jwk)

    def test_unsupported_kty(self) -> None:
        """RSA and other key types have no thumbprint here."""
        with pytest.raises(ValueError, match="unsupported kty"):
            thumbprint({"kty": "RSA", "n": "x", "e": "AQAB"})


class TestGenerate:
    """Fresh key pairs of both supported families."""

    @pytest.mark.parametrize(
        ("alg", "sig_alg", "kty"),
        [("ed25519", SIG_ALG_ED25519, "OKP"), ("p256", SIG_ALG_ES256, "EC")],
    )
    def test_generate(self, alg: KeyAlgorithm, sig_alg: str, kty: str) -> None:
        """Signing and encryption keys have the right use, alg, kty and thumbprint kid."""
        signing, encryption = generate_private_keys(alg)
        assert (signing.use, signing.alg) == ("sig", sig_alg)
        assert (encryption.use, encryption.alg) == ("enc", ENC_ALG)
        for key in (signing, encryption):
            assert key.public.jwk["kty"] == kty
            assert key.kid == thumbprint(key.public.jwk)
            assert key.public.jwk["kid"] == key.kid

    def test_unknown_algorithm(self) -> None:
        """Only ed25519 and p256 can be generated."""
        with pytest.raises(ValueError, match="unknown key algorithm"):
            generate_private_keys("rsa")  # type: ignore[arg-type]

    def test_keys_are_fresh(self) -> None:
        """Two generations give different keys."""
        assert generate_private_keys()[0].kid != generate_private_keys()[0].kid

    def test_wrong_use_for_key_type(self) -> None:
        """An Ed25519 key cannot encrypt and an X25519 key cannot sign."""
        with pytest.raises(ValueError, match="cannot encrypt"):
            PrivateKey(Ed25519PrivateKey.generate(), "enc")
        with pytest.raises(ValueError, match="cannot sign"):
            PrivateKey(X25519PrivateKey.generate(), "sig")

    def test_other_curves_refused(self) -> None:
        """Only P-256 EC keys are supported."""
        with pytest.raises(ValueError, match="P-256"):
            PrivateKey(ec.generate_private_key(ec.SECP384R1()), "sig")

    def test_agency_key_ring(self) -> None:
        """The ring publishes signing, encryption, then previous keys; all enc keys decrypt."""
        signing, encryption = generate_private_keys()
        old_sig, old_enc = generate_private_keys()
        ring = AgencyKeys(signing=signing, encryption=encryption, previous=(old_enc, old_sig))
        assert ring.decryption == (encryption, old_enc)
        assert ring.public_keys() == (
            signing.public,
            encryption.public,
            old_enc.public,
            old_sig.public,
        )
        assert jwks_document(ring.public_keys())["keys"][0]["kid"] == signing.kid


class TestKeyFiles:
    """PEM key files: mode 0600, no overwrite, passphrases."""

    @pytest.mark.parametrize("alg", ["ed25519", "p256"])
    def test_round_trip(self, tmp_path: Path, alg: KeyAlgorithm) -> None:
        """Keys written by write_key_dir load back identical, and the JWKS matches them."""
        written = write_key_dir(tmp_path / "keys", alg)
        loaded = load_agency_keys(tmp_path / "keys")
        assert loaded.signing.kid == written.signing.kid
        assert loaded.encryption.kid == written.encryption.kid
        assert loaded.signing.public == written.signing.public
        published = json.loads((tmp_path / "keys" / JWKS_FILE).read_text())
        assert parse_jwks(published) == written.public_keys()

    def test_private_files_are_0600(self, tmp_path: Path) -> None:
        """Both PEM files are created readable by the owner only."""
        write_key_dir(tmp_path)
        for name in (SIGNING_FILE, ENCRYPTION_FILE):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600

    def test_refuses_overwrite(self, tmp_path: Path) -> None:
        """A second generation into the same folder is refused, the old key kept."""
        first = write_key_dir(tmp_path)
        with pytest.raises(SetupError, match="refusing to overwrite"):
            write_key_dir(tmp_path)
        assert load_agency_keys(tmp_path).signing.kid == first.signing.kid

    def test_write_private_file_refuses_existing(self, tmp_path: Path) -> None:
        """write_private_file never replaces a file."""
        target = tmp_path / "a" / "secret"
        write_private_file(target, b"one")
        with pytest.raises(SetupError) as info:
            write_private_file(target, b"two")
        assert info.value.source == str(target)
        assert target.read_bytes() == b"one"

    def test_write_private_file_refuses_dangling_symlink(self, tmp_path: Path) -> None:
        """A dangling symlink where the key goes is refused with SetupError, not followed."""
        link = tmp_path / "signing.pem"
        link.symlink_to(tmp_path / "elsewhere.pem")
        with pytest.raises(SetupError, match="refusing to overwrite"):
            write_private_file(link, b"key")
        assert not (tmp_path / "elsewhere.pem").exists()

    def test_write_private_file_uncreatable(self, tmp_path: Path) -> None:
        """A folder that cannot be created (a file is in the way) is a SetupError, not OSError."""
        (tmp_path / "file").write_bytes(b"")
        with pytest.raises(SetupError, match="cannot create the key file"):
            write_private_file(tmp_path / "file" / "sub" / "key.pem", b"key")

    @pytest.mark.parametrize("alg", ["ed25519", "p256"])
    def test_encrypted_round_trip(self, tmp_path: Path, alg: KeyAlgorithm) -> None:
        """With a passphrase the PEMs are encrypted and load with the same passphrase."""
        written = write_key_dir(tmp_path, alg, passphrase=b"correct horse")
        assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / SIGNING_FILE).read_bytes()
        loaded = load_agency_keys(tmp_path, passphrase=b"correct horse")
        assert loaded.signing.kid == written.signing.kid
        assert loaded.encryption.kid == written.encryption.kid

    def test_unencrypted_without_passphrase(self, tmp_path: Path) -> None:
        """Without a passphrase the PEM is plain PKCS#8."""
        write_key_dir(tmp_path)
        assert b"-----BEGIN PRIVATE KEY-----" in (tmp_path / SIGNING_FILE).read_bytes()

    def test_wrong_passphrase(self, tmp_path: Path) -> None:
        """A wrong passphrase is a SetupError that says so."""
        write_key_dir(tmp_path, passphrase=b"right")
        with pytest.raises(SetupError, match="wrong passphrase") as info:
            load_private_key(tmp_path / SIGNING_FILE, "sig", b"wrong")
        assert info.value.source == str(tmp_path / SIGNING_FILE)

    def test_missing_passphrase(self, tmp_path: Path) -> None:
        """An encrypted key without a configured passphrase says to configure one."""
        write_key_dir(tmp_path, passphrase=b"right")
        with pytest.raises(SetupError, match="configure its passphrase"):
            load_private_key(tmp_path / SIGNING_FILE, "sig")

    def test_passphrase_for_plain_key(self, tmp_path: Path) -> None:
        """A passphrase given for an unencrypted key is reported, not ignored."""
        write_key_dir(tmp_path)
        with pytest.raises(SetupError, match="not encrypted but a passphrase was given"):
            load_private_key(tmp_path / SIGNING_FILE, "sig", b"unneeded")

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing key file is a SetupError naming the file."""
        with pytest.raises(SetupError, match="cannot read key file") as info:
            load_private_key(tmp_path / "absent.pem", "sig")
        assert info.value.source == str(tmp_path / "absent.pem")

    def test_not_a_pem(self, tmp_path: Path) -> None:
        """Garbage is refused as not a PKCS#8 PEM."""
        path = tmp_path / "bad.pem"
        path.write_bytes(b"not a key")
        with pytest.raises(SetupError, match="not a PKCS#8 PEM"):
            load_private_key(path, "sig")

    def test_rsa_refused(self, tmp_path: Path) -> None:
        """An RSA key is an unsupported key type."""
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path = tmp_path / "rsa.pem"
        path.write_bytes(
            rsa_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        with pytest.raises(SetupError, match="unsupported key type"):
            load_private_key(path, "sig")

    def test_wrong_use_in_file(self, tmp_path: Path) -> None:
        """An X25519 file loaded as the signing key is refused."""
        write_key_dir(tmp_path)
        with pytest.raises(SetupError, match="a sig key cannot be of this type"):
            load_private_key(tmp_path / ENCRYPTION_FILE, "sig")

    def test_previous_encryption_keys(self, tmp_path: Path) -> None:
        """Older key folders contribute their encryption keys to the decryption ring."""
        old = write_key_dir(tmp_path / "old")
        new = write_key_dir(tmp_path / "new")
        ring = load_agency_keys(tmp_path / "new", previous_dirs=[tmp_path / "old"])
        assert [k.kid for k in ring.decryption] == [new.encryption.kid, old.encryption.kid]

    def test_private_key_pem_empty_passphrase_is_plain(self) -> None:
        """An empty passphrase means no encryption (nothing to configure)."""
        pem = private_key_pem(generate_private_keys()[0], b"")
        assert b"ENCRYPTED" not in pem


def jwk_of(key: PrivateKey, **changes: Any) -> dict[str, Any]:
    """The public JWK of ``key`` with ``changes`` applied (None removes a member)."""
    jwk: dict[str, Any] = dict(key.public.jwk)
    for name, value in changes.items():
        if value is None:
            jwk.pop(name, None)
        else:
            jwk[name] = value
    return jwk


class TestFromJwk:
    """One public JWK, checked: kid = thumbprint, use and alg fixed by the key."""

    @pytest.mark.parametrize("alg", ["ed25519", "p256"])
    def test_accepts_our_own(self, alg: KeyAlgorithm) -> None:
        """Our published JWKs parse back to equal keys."""
        for key in generate_private_keys(alg):
            assert PublicKey.from_jwk(key.public.jwk) == key.public

    def test_not_an_object(self) -> None:
        """A JWK must be a JSON object."""
        with pytest.raises(ValueError, match="JSON object"):
            PublicKey.from_jwk(["kty"])  # type: ignore[arg-type]

    def test_kid_mismatch(self) -> None:
        """A kid that is not the thumbprint is refused (no relabelling)."""
        key = generate_private_keys()[0]
        other = generate_private_keys()[0]
        with pytest.raises(ValueError, match="thumbprint"):
            PublicKey.from_jwk(jwk_of(key, kid=other.kid))
        with pytest.raises(ValueError, match="thumbprint"):
            PublicKey.from_jwk(jwk_of(key, kid=None))

    @pytest.mark.parametrize(
        ("alg", "index", "wrong"),
        [
            ("ed25519", 0, "ES256"),
            ("ed25519", 0, "Ed25519"),  # receivers accept it in a header, not in a JWKS
            ("p256", 0, "EdDSA"),
            ("p256", 1, "ECDH-ES"),
            ("ed25519", 1, "ECDH-ES+A128KW"),
        ],
    )
    def test_wrong_alg(self, alg: KeyAlgorithm, index: int, wrong: str) -> None:
        """An alg other than the one fixed by the key is refused."""
        key = generate_private_keys(alg)[index]
        with pytest.raises(ValueError, match="'alg' must be"):
            PublicKey.from_jwk(jwk_of(key, alg=wrong))

    def test_alg_missing(self) -> None:
        """alg is required."""
        with pytest.raises(ValueError, match="'alg' must be"):
            PublicKey.from_jwk(jwk_of(generate_private_keys()[0], alg=None))

    @pytest.mark.parametrize("use", [None, "SIG", "both", 1])
    def test_use_missing_or_wrong(self, use: object) -> None:
        """use must be present and 'sig' or 'enc'."""
        with pytest.raises(ValueError, match="'use' must be"):
            PublicKey.from_jwk(jwk_of(generate_private_keys()[0], use=use))

    @pytest.mark.parametrize(
        ("alg", "index", "use"), [("ed25519", 0, "enc"), ("ed25519", 1, "sig")]
    )
    def test_use_not_for_key_type(self, alg: KeyAlgorithm, index: int, use: str) -> None:
        """An Ed25519 key labelled enc, or an X25519 key labelled sig, is refused."""
        with pytest.raises(ValueError, match="cannot"):
            PublicKey.from_jwk(jwk_of(generate_private_keys(alg)[index], use=use))

    def test_private_part_refused(self) -> None:
        """A JWK with 'd' is a private key and never accepted as a public one."""
        with pytest.raises(ValueError, match="private part"):
            PublicKey.from_jwk(jwk_of(generate_private_keys()[0], d=b64url(b"\x01" * 32)))

    @pytest.mark.parametrize(
        ("alg", "index", "member", "size"),
        [
            ("ed25519", 0, "x", 31),
            ("ed25519", 0, "x", 33),
            ("ed25519", 1, "x", 31),
            ("p256", 0, "x", 31),
            ("p256", 0, "y", 33),
        ],
    )
    def test_wrong_sizes(self, alg: KeyAlgorithm, index: int, member: str, size: int) -> None:
        """Coordinates of the wrong length are refused."""
        key = generate_private_keys(alg)[index]
        with pytest.raises(ValueError, match=f"'{member}' must be 32 bytes"):
            PublicKey.from_jwk(jwk_of(key, **{member: b64url(b"\x01" * size)}))

    @pytest.mark.parametrize("member", ["x", "y"])
    def test_coordinate_missing(self, member: str) -> None:
        """A missing or non-string coordinate is refused."""
        key = generate_private_keys("p256")[0]
        with pytest.raises(ValueError, match=f"'{member}' is missing"):
            PublicKey.from_jwk(jwk_of(key, **{member: None}))
        with pytest.raises(ValueError, match=f"'{member}' is missing"):
            PublicKey.from_jwk(jwk_of(key, **{member: 12}))

    def test_coordinate_not_base64url(self) -> None:
        """A padded coordinate is refused."""
        key = generate_private_keys()[0]
        with pytest.raises(ValueError, match="base64url"):
            PublicKey.from_jwk(jwk_of(key, x=key.public.jwk["x"] + "="))

    @pytest.mark.parametrize(
        ("kty", "crv"),
        [("RSA", None), ("OKP", "Ed448"), ("OKP", "X448"), ("EC", "P-384"), ("EC", "secp256k1")],
    )
    def test_unknown_kty_or_crv(self, kty: str, crv: str | None) -> None:
        """Key types and curves outside the protocol are refused."""
        with pytest.raises(ValueError, match="unsupported key type"):
            PublicKey.from_jwk(jwk_of(generate_private_keys()[0], kty=kty, crv=crv))

    def test_invalid_p256_point(self) -> None:
        """A P-256 (x, y) that is not on the curve is refused."""
        key = generate_private_keys("p256")[0]
        y = int.from_bytes(b64url_decode(key.public.jwk["y"]), "big")
        off_curve = b64url(((y + 1) % 2**256).to_bytes(32, "big"))
        with pytest.raises(ValueError, match="not a valid P-256 public key"):
            PublicKey.from_jwk(jwk_of(key, y=off_curve))

    def test_accepts_ed25519_for_rfc9864(self) -> None:
        """An EdDSA key also accepts the RFC 9864 name in a header, and nothing else."""
        signing = generate_private_keys()[0].public
        assert signing.accepts_alg("EdDSA")
        assert signing.accepts_alg("Ed25519")
        assert not signing.accepts_alg("ES256")
        es = generate_private_keys("p256")[0].public
        assert es.accepts_alg("ES256")
        assert not es.accepts_alg("Ed25519")


class TestParseJwks:
    """A JWKS: bounded, each key checked, order kept."""

    def test_order_kept(self) -> None:
        """Keys come back in listed order (preference order)."""
        keys = [*generate_private_keys(), *generate_private_keys("p256")]
        parsed = parse_jwks(jwks_document(k.public for k in keys))
        assert [k.kid for k in parsed] == [k.kid for k in keys]

    @pytest.mark.parametrize(
        "document", [None, [], {}, {"keys": {}}, {"keys": "x"}, "keys", {"keys": []}]
    )
    def test_shape(self, document: object) -> None:
        """Not an object with a non-empty 'keys' array: refused."""
        with pytest.raises(ValueError, match="JWKS must"):
            parse_jwks(document)

    def test_upper_bound(self) -> None:
        """At most MAX_JWKS_KEYS keys; one more is refused before parsing any."""
        one = dict(generate_private_keys()[0].public.jwk)
        assert len(parse_jwks({"keys": [one] * MAX_JWKS_KEYS})) == MAX_JWKS_KEYS
        with pytest.raises(ValueError, match=f"1 to {MAX_JWKS_KEYS} keys"):
            parse_jwks({"keys": [one] * (MAX_JWKS_KEYS + 1)})

    def test_position_named(self) -> None:
        """A bad entry is reported with its position."""
        good = dict(generate_private_keys()[0].public.jwk)
        with pytest.raises(ValueError, match=r"keys\[1\]: 'use' must be"):
            parse_jwks({"keys": [good, {**good, "use": "x"}]})


class TestLoadPublicKeyFile:
    """Trusted public keys from a JWKS file or a PEM."""

    def test_jwks_filtered_by_use(self, tmp_path: Path) -> None:
        """From a JWKS, only keys of the requested use are returned."""
        keys = write_key_dir(tmp_path)
        assert load_public_key_file(tmp_path / JWKS_FILE) == (keys.signing.public,)
        assert load_public_key_file(tmp_path / JWKS_FILE, "enc") == (keys.encryption.public,)

    def test_jwks_without_that_use(self, tmp_path: Path) -> None:
        """A JWKS with no key of the requested use is refused."""
        path = tmp_path / "jwks.json"
        path.write_text(json.dumps(jwks_document([generate_private_keys()[1].public])))
        with pytest.raises(SetupError, match="holds no key with use 'sig'"):
            load_public_key_file(path)

    @pytest.mark.parametrize(
        ("alg", "index", "use"),
        [("ed25519", 0, "sig"), ("p256", 0, "sig"), ("ed25519", 1, "enc"), ("p256", 1, "enc")],
    )
    def test_pem(self, tmp_path: Path, alg: KeyAlgorithm, index: int, use: str) -> None:
        """A public-key PEM gives that key with the requested use."""
        key = generate_private_keys(alg)[index]
        path = tmp_path / "authority.pem"
        path.write_bytes(public_pem(key))
        assert load_public_key_file(path, use) == (key.public,)  # type: ignore[arg-type]

    def test_pem_wrong_use(self, tmp_path: Path) -> None:
        """An X25519 PEM is not a signing key."""
        path = tmp_path / "x.pem"
        path.write_bytes(public_pem(generate_private_keys()[1]))
        with pytest.raises(SetupError, match="not a usable public key"):
            load_public_key_file(path, "sig")

    def test_rsa_pem_refused(self, tmp_path: Path) -> None:
        """An RSA public key is refused."""
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path = tmp_path / "rsa.pem"
        path.write_bytes(
            rsa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        with pytest.raises(SetupError, match="unsupported key type"):
            load_public_key_file(path)

    @pytest.mark.parametrize("content", [b"{not json", b"garbage", b'{"keys": []}', b"  {}"])
    def test_unusable(self, tmp_path: Path, content: bytes) -> None:
        """Invalid JSON, an invalid JWKS or a non-PEM is a SetupError."""
        path = tmp_path / "key"
        path.write_bytes(content)
        with pytest.raises(SetupError, match="not a usable public key"):
            load_public_key_file(path)

    def test_missing(self, tmp_path: Path) -> None:
        """A missing file is a SetupError naming it."""
        with pytest.raises(SetupError, match="cannot read key file"):
            load_public_key_file(tmp_path / "nope.json")
