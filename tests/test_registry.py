"""The signed trust registry: source files, signing, verification, the holder."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.errors import SetupError
from gateway.jose import canonical_json, sign_jwt
from gateway.keys import (
    AgencyKeys,
    PrivateKey,
    PublicKey,
    b64url,
    b64url_decode,
    generate_private_keys,
    jwks_document,
    write_key_dir,
)
from gateway.registry import (
    MAX_REGISTRY_BYTES,
    AgencyEntry,
    Registry,
    RegistryError,
    RegistryHolder,
    build_registry_payload,
    normalize_gateway_url,
    sign_registry,
    verify_registry,
)

NOW = 1_795_000_000
DAY = 86400


@dataclass
class Network:
    """A registry source with three agencies' key directories, and an authority key."""

    root: Path
    source: Path
    authority: PrivateKey
    agencies: dict[str, AgencyKeys]

    @property
    def authority_keys(self) -> tuple[PublicKey, ...]:
        return (self.authority.public,)

    def signed(self, now: int = NOW) -> str:
        return sign_registry(build_registry_payload(self.source, now), self.authority)

    def payload(self, now: int = NOW) -> dict[str, Any]:
        return build_registry_payload(self.source, now)


def write_source(path: Path, agencies: list[dict[str, Any]], **top: Any) -> None:
    document = {"serial": 7, **top, "agencies": agencies}
    path.write_text(json.dumps(document), encoding="utf-8")  # JSON is YAML


def agency_source(agency_id: str, status: str = "active", **extra: Any) -> dict[str, Any]:
    return {
        "id": agency_id,
        "name": agency_id.replace("-", " ").title(),
        "gateway_url": f"http://127.0.0.1:81{len(agency_id):02d}/",
        "status": status,
        "jwks": f"{agency_id}/jwks.json",
        **extra,
    }


@pytest.fixture
def network(tmp_path: Path) -> Network:
    ids = {"tax-authority": "active", "social-benefits": "active", "old-agency": "suspended"}
    agencies = {
        agency_id: write_key_dir(
            tmp_path / agency_id, "p256" if agency_id == "old-agency" else "ed25519"
        )
        for agency_id in ids
    }
    source = tmp_path / "registry.yaml"
    write_source(source, [agency_source(i, s) for i, s in ids.items()])
    return Network(tmp_path, source, generate_private_keys()[0], agencies)


def forge(header: dict[str, Any], claims: dict[str, Any], key: PrivateKey | None = None) -> str:
    """A compact JWS with any header, Ed25519-signed by ``key`` (or with no signature)."""
    signing_input = f"{b64url(canonical_json(header))}.{b64url(canonical_json(claims))}"
    signature = b""
    if key is not None:
        assert isinstance(key.key, Ed25519PrivateKey)
        signature = key.key.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{b64url(signature)}"


class TestSourceAndRoundTrip:
    def test_round_trip(self, network: Network) -> None:
        """A signed registry verifies and keeps every agency with its keys in order."""
        registry = verify_registry(network.signed(), network.authority_keys, NOW + 10)
        assert (registry.iss, registry.iat, registry.exp, registry.serial) == (
            "registry-authority",
            NOW,
            NOW + 30 * DAY,
            7,
        )
        tax = registry.agency("tax-authority")
        assert tax is not None
        assert tax.gateway_url == "http://127.0.0.1:8113"  # trailing slash dropped
        assert tax.keys == network.agencies["tax-authority"].public_keys()
        assert registry.is_active("tax-authority")
        assert registry.gateway_url("tax-authority") == "http://127.0.0.1:8113"

    def test_payload_shape(self, network: Network) -> None:
        """The payload is exactly the protocol's: no other members, JWKS members standard."""
        payload = network.payload()
        assert list(payload) == ["iss", "iat", "exp", "serial", "agencies"]
        entry = payload["agencies"][0]
        assert list(entry) == ["id", "name", "gateway_url", "status", "jwks"]
        assert entry["jwks"] == jwks_document(network.agencies["tax-authority"].public_keys())

    def test_source_options(self, network: Network) -> None:
        """``iss`` and ``valid_days`` are taken from the source."""
        write_source(network.source, [agency_source("tax-authority")], iss="auth", valid_days=2)
        payload = network.payload()
        assert (payload["iss"], payload["exp"]) == ("auth", NOW + 2 * DAY)

    def test_p256_authority(self, network: Network) -> None:
        """An ES256 authority key signs and verifies too."""
        authority = generate_private_keys("p256")[0]
        compact = sign_registry(network.payload(), authority)
        assert verify_registry(compact, (authority.public,), NOW).serial == 7

    def test_sign_refuses_encryption_key(self, network: Network) -> None:
        """Only a signing key may sign a registry."""
        with pytest.raises(SetupError, match="signing key"):
            sign_registry(network.payload(), generate_private_keys()[1])

    @pytest.mark.parametrize(
        ("change", "field", "reason"),
        [
            ({"id": "Tax"}, "agencies[0].id", "pattern"),
            ({"id": "t"}, "agencies[0].id", "pattern"),
            ({"id": "tax-authority\n"}, "agencies[0].id", "pattern"),
            ({"id": 2024}, "agencies[0].id", "valid string"),
            ({"gateway_url": "ftp://gw.example"}, "agencies[0].gateway_url", "http or https"),
            ({"gateway_url": "https://gw.example/?a=1"}, "agencies[0].gateway_url", "query"),
            ({"gateway_url": "https://gw.example#x"}, "agencies[0].gateway_url", "fragment"),
            ({"gateway_url": "https:///path"}, "agencies[0].gateway_url", "host"),
            ({"gateway_url": "https://u:p@gw.example"}, "agencies[0].gateway_url", "credentials"),
            ({"gateway_url": "https://gw.example:99999"}, "agencies[0].gateway_url", "port"),
            ({"gateway_url": "https://gw example"}, "agencies[0].gateway_url", "spaces"),
            ({"status": "paused"}, "agencies[0].status", "active"),
            ({"name": ""}, "agencies[0].name", "at least 1"),
            ({"colour": "red"}, "agencies[0].colour", "Extra inputs"),
            ({"jwks": "missing/jwks.json"}, "agencies[0].jwks", "cannot read"),
        ],
    )
    def test_bad_agency_field(
        self, network: Network, change: dict[str, Any], field: str, reason: str
    ) -> None:
        """Each bad agency field is named, with its reason, in a SetupError for the file."""
        write_source(network.source, [{**agency_source("tax-authority"), **change}])
        with pytest.raises(SetupError, match=reason) as caught:
            network.payload()
        assert caught.value.field == field
        assert caught.value.source == str(network.source)

    def test_duplicate_agency_id(self, network: Network) -> None:
        """Two agencies may not share an id."""
        entry = agency_source("tax-authority")
        write_source(network.source, [entry, {**entry, "jwks": "social-benefits/jwks.json"}])
        with pytest.raises(SetupError, match="duplicate agency id") as caught:
            network.payload()
        assert caught.value.field == "agencies[1].id"

    def test_shared_key(self, network: Network) -> None:
        """A key listed by two agencies is refused: it would speak for both."""
        write_source(
            network.source,
            [
                agency_source("tax-authority"),
                {**agency_source("other"), "jwks": "tax-authority/jwks.json"},
            ],
        )
        with pytest.raises(SetupError, match="also listed by 'tax-authority'") as caught:
            network.payload()
        assert caught.value.field == "agencies[1].jwks"

    @pytest.mark.parametrize(
        ("content", "reason"),
        [
            ("{", "not strict JSON"),
            ('{"keys": []}', "1 to 32 keys"),
            ("[1]", "not a JSON object"),
        ],
    )
    def test_bad_jwks_file(self, network: Network, content: str, reason: str) -> None:
        """A JWKS file that is not a usable JWKS names the field and file."""
        (network.root / "tax-authority" / "jwks.json").write_text(content, encoding="utf-8")
        with pytest.raises(SetupError, match=reason) as caught:
            network.payload()
        assert caught.value.field == "agencies[0].jwks"
        assert "jwks.json" in str(caught.value)

    def test_jwks_needs_both_uses(self, network: Network) -> None:
        """Every agency lists a signing and an encryption key."""
        keys = network.agencies["tax-authority"]
        only_sig = json.dumps(jwks_document([keys.signing.public]))
        (network.root / "tax-authority" / "jwks.json").write_text(only_sig, encoding="utf-8")
        with pytest.raises(SetupError, match="'sig' and one 'enc'"):
            network.payload()

    @pytest.mark.parametrize(
        ("content", "field", "reason"),
        [
            ("serial: [1\n", None, "not valid YAML at line"),
            ("- 1\n- 2\n", None, "YAML mapping"),
            ("? [1]\n: 2\n", None, "unhashable key"),
            ("serial: 1\nserial: 2\nagencies: []\n", None, "duplicate key 'serial'"),
            ("agencies: []\n", "serial", "required"),
            ("serial: -1\nagencies: []\n", "serial", "greater than or equal"),
            ("serial: '7'\nagencies: []\n", "serial", "valid integer"),
            ("serial: 1\nvalid_days: 0\nagencies: []\n", "valid_days", "greater"),
            ("serial: 1\nagencies: []\nextra: 1\n", "extra", "Extra inputs"),
        ],
    )
    def test_bad_source_file(
        self, network: Network, content: str, field: str | None, reason: str
    ) -> None:
        """Source problems name the file and the field, never a traceback."""
        network.source.write_text(content, encoding="utf-8")
        with pytest.raises(SetupError, match=reason) as caught:
            network.payload()
        assert caught.value.field == field
        assert str(caught.value).startswith(str(network.source))

    def test_missing_and_oversized_source(self, network: Network) -> None:
        """An unreadable or oversized source is refused by name."""
        with pytest.raises(SetupError, match="cannot read"):
            build_registry_payload(network.root / "nope.yaml", NOW)
        network.source.write_bytes(b"#" * (MAX_REGISTRY_BYTES + 1))
        with pytest.raises(SetupError, match="larger than"):
            network.payload()

    def test_empty_registry_is_valid(self, network: Network) -> None:
        """An authority may publish a registry without agencies."""
        write_source(network.source, [])
        compact = sign_registry(network.payload(), network.authority)
        assert verify_registry(compact, network.authority_keys, NOW).agencies == {}


class TestVerification:
    def test_tampered_payload(self, network: Network) -> None:
        """A changed payload no longer matches the signature."""
        header, _, signature = network.signed().split(".")
        payload = network.payload()
        payload["serial"] = 8
        with pytest.raises(RegistryError, match="signature"):
            verify_registry(
                f"{header}.{b64url(canonical_json(payload))}.{signature}",
                network.authority_keys,
                NOW,
            )

    def test_tampered_signature(self, network: Network) -> None:
        """A changed signature does not verify."""
        header, payload, signature = network.signed().split(".")
        raw = bytearray(b64url_decode(signature))
        raw[0] ^= 1
        with pytest.raises(RegistryError, match="signature"):
            verify_registry(f"{header}.{payload}.{b64url(bytes(raw))}", network.authority_keys, NOW)

    def test_wrong_authority(self, network: Network) -> None:
        """A registry signed by another key is refused, whatever it claims."""
        other = generate_private_keys()[0]
        with pytest.raises(RegistryError, match="authority key"):
            verify_registry(sign_registry(network.payload(), other), network.authority_keys, NOW)

    def test_authority_kid_reused_by_wrong_key(self, network: Network) -> None:
        """A header naming the authority's kid but signed by another key fails."""
        other = generate_private_keys()[0]
        header = {"typ": "registry+jwt", "alg": "EdDSA", "kid": network.authority.kid}
        compact = forge(header, network.payload(), other)
        with pytest.raises(RegistryError, match="signature does not verify"):
            verify_registry(compact, network.authority_keys, NOW)

    def test_forged_token_with_right_key_verifies(self, network: Network) -> None:
        """The hand-built tokens of the next tests are refused for their header alone."""
        header = {"typ": "registry+jwt", "alg": "EdDSA", "kid": network.authority.kid}
        compact = forge(header, network.payload(), network.authority)
        assert verify_registry(compact, network.authority_keys, NOW).serial == 7

    @pytest.mark.parametrize(
        ("extra", "reason"),
        [
            ({"typ": "JWT"}, "typ"),
            ({"typ": "contract+jws"}, "typ"),
            ({"alg": "none"}, "alg not allowed"),
            ({"alg": "HS256"}, "alg not allowed"),
            ({"jku": "https://evil.example/jwks"}, "jku"),
            ({"jwk": {"kty": "OKP"}}, "jwk"),
            ({"crit": ["exp"]}, "crit"),
            ({"x5c": ["AAAA"]}, "x5c"),
            ({"alg": "ES256"}, "alg does not match"),
        ],
    )
    def test_refused_headers(self, network: Network, extra: dict[str, Any], reason: str) -> None:
        """Header rules of 3.0 apply to the registry too (RFC 8725)."""
        header = {"typ": "registry+jwt", "alg": "EdDSA", "kid": network.authority.kid, **extra}
        compact = forge(header, network.payload(), network.authority)
        with pytest.raises(RegistryError, match=reason):
            verify_registry(compact, network.authority_keys, NOW)

    def test_unsigned_alg_none(self, network: Network) -> None:
        """``alg: none`` with an empty signature is refused."""
        header = {"typ": "registry+jwt", "alg": "none", "kid": network.authority.kid}
        with pytest.raises(RegistryError, match="alg"):
            verify_registry(forge(header, network.payload()), network.authority_keys, NOW)

    @pytest.mark.parametrize(
        ("now", "reason"),
        [
            (NOW + 30 * DAY, "expired"),
            (NOW + 40 * DAY, "expired"),
            (NOW - 31, "future"),
        ],
    )
    def test_time_window(self, network: Network, now: int, reason: str) -> None:
        """Expired or future registries are refused; 30 s of skew on ``iat``."""
        compact = network.signed()
        assert verify_registry(compact, network.authority_keys, NOW - 30).iat == NOW
        with pytest.raises(RegistryError, match=reason):
            verify_registry(compact, network.authority_keys, now)

    def test_serial_floor(self, network: Network) -> None:
        """A serial below ``min_serial`` is refused; equal is accepted."""
        compact = network.signed()
        assert verify_registry(compact, network.authority_keys, NOW, min_serial=7).serial == 7
        with pytest.raises(RegistryError, match="lower than 8") as caught:
            verify_registry(compact, network.authority_keys, NOW, min_serial=8)
        assert caught.value.field == "serial"

    def test_serial_against_current(self, network: Network) -> None:
        """Lower serial refused; equal serial only with the identical payload."""
        keys = network.authority_keys
        held = verify_registry(network.signed(), keys, NOW)
        assert verify_registry(network.signed(), keys, NOW, current=held).serial == 7
        with pytest.raises(RegistryError, match="other content"):
            verify_registry(network.signed(NOW + 1), keys, NOW + 1, current=held)
        payload = network.payload()
        payload["serial"] = 6
        with pytest.raises(RegistryError, match="lower than the held 7"):
            verify_registry(sign_registry(payload, network.authority), keys, NOW, current=held)

    @pytest.mark.parametrize(
        ("change", "field", "reason"),
        [
            ({"serial": "7"}, None, "'serial' has the wrong type"),
            ({"iat": True}, None, "'iat' has the wrong type"),
            ({"agencies": {}}, None, "'agencies' has the wrong type"),
            ({"iss": None}, None, "'iss' has the wrong type"),
            ({"nbf": NOW}, "nbf", "unknown claim"),
            ({"exp": NOW}, "exp", "after iat"),
            ({"serial": -1}, "serial", "negative"),
            ({"agencies": [1]}, "agencies[0]", "valid dictionary"),
        ],
    )
    def test_bad_claims(
        self, network: Network, change: dict[str, Any], field: str | None, reason: str
    ) -> None:
        """Claims are strictly typed and closed."""
        compact = sign_jwt({**network.payload(), **change}, network.authority, "registry+jwt")
        with pytest.raises(RegistryError, match=reason) as caught:
            verify_registry(compact, network.authority_keys, NOW)
        assert caught.value.field == field
        assert caught.value.source == "registry"

    def test_missing_claim(self, network: Network) -> None:
        """A missing claim is named."""
        payload = network.payload()
        del payload["serial"]
        compact = sign_registry(payload, network.authority)
        with pytest.raises(RegistryError, match="'serial' missing"):
            verify_registry(compact, network.authority_keys, NOW)

    def test_float_refused(self, network: Network) -> None:
        """Numbers in a signed object are integers."""
        compact = sign_jwt({**network.payload(), "iat": 1.5}, network.authority, "registry+jwt")
        with pytest.raises(RegistryError, match="integers"):
            verify_registry(compact, network.authority_keys, NOW)

    @pytest.mark.parametrize(
        ("change", "field", "reason"),
        [
            ({"id": "BAD"}, "agencies[0].id", "pattern"),
            ({"status": 1}, "agencies[0].status", "active"),
            ({"gateway_url": "https://gw.example?x"}, "agencies[0].gateway_url", "query"),
            ({"extra": 1}, "agencies[0].extra", "Extra inputs"),
            ({"jwks": {"keys": "none"}}, "agencies[0].jwks", "'keys' array"),
            ({"jwks": []}, "agencies[0].jwks", "valid dictionary"),
        ],
    )
    def test_bad_wire_agency(
        self, network: Network, change: dict[str, Any], field: str, reason: str
    ) -> None:
        """Agency entries in a signed registry are checked like the source."""
        payload = network.payload()
        payload["agencies"][0] = {**payload["agencies"][0], **change}
        compact = sign_registry(payload, network.authority)
        with pytest.raises(RegistryError, match=reason) as caught:
            verify_registry(compact, network.authority_keys, NOW)
        assert caught.value.field == field

    def test_wire_duplicates(self, network: Network) -> None:
        """Duplicate ids and shared keys are refused in a signed registry too."""
        payload = network.payload()
        payload["agencies"][1] = {**payload["agencies"][1], "id": "tax-authority"}
        with pytest.raises(RegistryError, match="duplicate agency id"):
            verify_registry(sign_registry(payload, network.authority), network.authority_keys, NOW)
        payload = network.payload()
        payload["agencies"][1] = {**payload["agencies"][1], "jwks": payload["agencies"][0]["jwks"]}
        with pytest.raises(RegistryError, match="also listed"):
            verify_registry(sign_registry(payload, network.authority), network.authority_keys, NOW)

    def test_oversized_and_garbage(self, network: Network) -> None:
        """Oversized or non-JWS input is refused before any crypto."""
        with pytest.raises(RegistryError, match="larger than"):
            verify_registry("a" * (MAX_REGISTRY_BYTES + 1), network.authority_keys, NOW)
        with pytest.raises(RegistryError, match="3 parts"):
            verify_registry("garbage", network.authority_keys, NOW)


class TestLookups:
    def test_inactive_agency_has_no_trust(self, network: Network) -> None:
        """A suspended agency is listed but has no trusted key or URL."""
        registry = verify_registry(network.signed(), network.authority_keys, NOW)
        old = network.agencies["old-agency"]
        entry = registry.agency("old-agency")
        assert entry is not None
        assert entry.status == "suspended"
        assert not registry.is_active("old-agency")
        assert registry.signing_key("old-agency", old.signing.kid) is None
        assert registry.signing_keys("old-agency") == ()
        assert registry.encryption_key("old-agency") is None
        assert registry.gateway_url("old-agency") is None

    def test_unknown_agency(self, network: Network) -> None:
        """An unlisted agency has nothing."""
        registry = verify_registry(network.signed(), network.authority_keys, NOW)
        assert registry.agency("nobody") is None
        assert not registry.is_active("nobody")
        assert registry.signing_key("nobody", "kid") is None
        assert registry.signing_keys("nobody") == ()
        assert registry.encryption_key("nobody") is None
        assert registry.gateway_url("nobody") is None

    def test_key_trusted_only_for_its_agency(self, network: Network) -> None:
        """A signing key is found for the agency that lists it, not for another."""
        registry = verify_registry(network.signed(), network.authority_keys, NOW)
        tax = network.agencies["tax-authority"]
        assert registry.signing_key("tax-authority", tax.signing.kid) == tax.signing.public
        assert registry.signing_key("social-benefits", tax.signing.kid) is None
        # An encryption key is never returned as a signing key.
        assert registry.signing_key("tax-authority", tax.encryption.kid) is None
        assert registry.signing_keys("tax-authority") == (tax.signing.public,)

    def test_encryption_key_preference_and_rotation(self, network: Network) -> None:
        """The first ``enc`` key listed is used; every listed ``sig`` key verifies."""
        tax = network.agencies["tax-authority"]
        new_sig, new_enc = generate_private_keys()
        jwks = jwks_document(
            [tax.signing.public, new_enc.public, new_sig.public, tax.encryption.public]
        )
        (network.root / "tax-authority" / "jwks.json").write_text(json.dumps(jwks), "utf-8")
        registry = verify_registry(network.signed(), network.authority_keys, NOW)
        assert registry.encryption_key("tax-authority") == new_enc.public
        assert registry.signing_keys("tax-authority") == (tax.signing.public, new_sig.public)
        assert registry.signing_key("tax-authority", new_sig.kid) == new_sig.public

    def test_registry_built_by_hand(self) -> None:
        """A Registry can be built directly; its mapping cannot be changed afterwards."""
        signing, _ = generate_private_keys()
        entry = AgencyEntry("tax-authority", "Tax", "https://gw", "active", (signing.public,))
        registry = Registry("auth", NOW, NOW + 1, 1, {"tax-authority": entry})
        assert registry.encryption_key("tax-authority") is None
        assert registry.signing_key("tax-authority", signing.kid) == signing.public
        with pytest.raises(TypeError):
            registry.agencies["x"] = entry  # type: ignore[index]

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("https://gw.example/", "https://gw.example"),
            ("https://gw.example/base//", "https://gw.example/base"),
            ("http://127.0.0.1:8101", "http://127.0.0.1:8101"),
        ],
    )
    def test_normalize_gateway_url(self, url: str, expected: str) -> None:
        """Trailing slashes are dropped; the rest is kept."""
        assert normalize_gateway_url(url) == expected


def set_file(path: Path, text: str, tick: int) -> None:
    """Write ``text`` and give the file a distinct mtime (coarse clocks in CI)."""
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(tick * 10**9, tick * 10**9))


class TestHolder:
    @pytest.fixture
    def holder(self, network: Network) -> RegistryHolder:
        path = network.root / "registry.jws"
        set_file(path, network.signed(), 1)
        holder = RegistryHolder(path, network.authority_keys)
        holder.load(NOW)
        return holder

    def test_load_and_unchanged(self, holder: RegistryHolder) -> None:
        """After load the registry is in force; an untouched file is not re-read."""
        assert holder.current.serial == 7
        assert holder.last_success == float(NOW)
        assert holder.expires_in(NOW + 10) == 30 * DAY - 10
        result = holder.maybe_reload(NOW + 5)
        assert (result.outcome, result.serial, result.error) == ("unchanged", 7, None)
        assert holder.last_success == float(NOW)

    def test_touched_file_with_same_content(self, network: Network, holder: RegistryHolder) -> None:
        """The same payload re-read is accepted and reported unchanged."""
        path = network.root / "registry.jws"
        set_file(path, path.read_text("utf-8") + "\n", 2)
        result = holder.maybe_reload(NOW + 5)
        assert result.outcome == "unchanged"
        assert holder.last_success == float(NOW + 5)

    @pytest.mark.parametrize("kind", ["garbage", "bad-signature", "lower-serial", "same-serial"])
    def test_keeps_last_good(self, network: Network, holder: RegistryHolder, kind: str) -> None:
        """A refused file never replaces the registry in force; a good one later does."""
        path = network.root / "registry.jws"
        held = holder.current
        payload = network.payload(NOW + 60)
        bad = {
            "garbage": "not a registry",
            "bad-signature": sign_registry(payload, generate_private_keys()[0]),
            "lower-serial": sign_registry({**payload, "serial": 6}, network.authority),
            "same-serial": sign_registry(payload, network.authority),
        }[kind]
        set_file(path, bad, 2)
        result = holder.maybe_reload(NOW + 60)
        assert result.outcome == "failed"
        assert result.serial == 7
        assert holder.current is held
        assert holder.reload_failures == 1
        assert holder.last_error == result.error
        assert result.error is not None
        # The refused file is not re-read (nor re-counted) until it changes.
        assert holder.maybe_reload(NOW + 61).outcome == "unchanged"
        assert holder.reload_failures == 1

        set_file(path, sign_registry({**payload, "serial": 8}, network.authority), 3)
        result = holder.maybe_reload(NOW + 62)
        assert (result.outcome, result.serial) == ("reloaded", 8)
        assert holder.current.serial == 8
        assert holder.last_error is None
        assert holder.last_success == float(NOW + 62)

    def test_missing_non_ascii_and_oversized(
        self, network: Network, holder: RegistryHolder
    ) -> None:
        """Unreadable files are failures with a reason; the registry stays."""
        path = network.root / "registry.jws"
        path.write_bytes("é".encode())
        os.utime(path, ns=(2 * 10**9, 2 * 10**9))
        assert "non-ASCII" in str(holder.maybe_reload(NOW).error)
        with path.open("wb") as handle:
            handle.truncate(MAX_REGISTRY_BYTES + 1)
        assert "larger than" in str(holder.maybe_reload(NOW).error)
        path.unlink()
        assert "cannot read" in str(holder.maybe_reload(NOW).error)
        assert holder.maybe_reload(NOW).outcome == "unchanged"
        assert holder.reload_failures == 3
        assert holder.current.serial == 7

    def test_force_rereads(self, network: Network, holder: RegistryHolder) -> None:
        """``force`` re-reads a refused file, e.g. one issued slightly in the future."""
        path = network.root / "registry.jws"
        early = sign_registry({**network.payload(NOW + 120), "serial": 9}, network.authority)
        set_file(path, early, 2)
        assert holder.maybe_reload(NOW).outcome == "failed"
        assert holder.maybe_reload(NOW + 120).outcome == "unchanged"
        assert holder.maybe_reload(NOW + 120, force=True).outcome == "reloaded"
        assert holder.current.serial == 9

    def test_first_load_failure(self, network: Network) -> None:
        """A first load that fails raises, and nothing is in force."""
        holder = RegistryHolder(network.root / "absent.jws", network.authority_keys)
        with pytest.raises(RegistryError, match="no registry loaded"):
            holder.maybe_reload(NOW)
        with pytest.raises(RegistryError, match="cannot read") as caught:
            holder.load(NOW)
        assert caught.value.source == str(network.root / "absent.jws")
        assert holder.reload_failures == 1
        assert holder.last_error == str(caught.value)
        with pytest.raises(RegistryError, match="no registry loaded"):
            _ = holder.current

    def test_min_serial_at_start(self, network: Network) -> None:
        """A holder started with a remembered serial refuses an older file."""
        path = network.root / "registry.jws"
        set_file(path, network.signed(), 1)
        with pytest.raises(RegistryError, match="lower than 8"):
            RegistryHolder(path, network.authority_keys, min_serial=8).load(NOW)

    def test_check_changes_nothing_until_applied(
        self, network: Network, holder: RegistryHolder
    ) -> None:
        """``check`` (which may run in a worker thread) only reports; ``apply`` puts it in force."""
        path = network.root / "registry.jws"
        held = holder.current
        set_file(
            path, sign_registry({**network.payload(NOW + 60), "serial": 8}, network.authority), 2
        )
        check = holder.check(NOW + 60)
        assert check.based_on is held
        assert isinstance(check.found, Registry)
        assert check.found.serial == 8
        assert holder.current is held
        assert holder.last_success == float(NOW)
        # Not applied, so the file still counts as changed.
        assert holder.check(NOW + 60).found is not None
        result = holder.apply(check, NOW + 60)
        assert (result.outcome, result.serial) == ("reloaded", 8)
        assert holder.current is check.found
        assert holder.last_success == float(NOW + 60)
        assert holder.check(NOW + 61).found is None

    def test_refusal_counts_only_when_applied(
        self, network: Network, holder: RegistryHolder
    ) -> None:
        """A refused file is counted once, by ``apply``, not by ``check``."""
        path = network.root / "registry.jws"
        set_file(path, "not a registry", 2)
        check = holder.check(NOW)
        assert isinstance(check.found, RegistryError)
        assert (holder.reload_failures, holder.last_error) == (0, None)
        result = holder.apply(check, NOW)
        assert result.outcome == "failed"
        assert holder.reload_failures == 1
        assert holder.last_error == str(check.found)

    def test_stale_check_is_dropped(self, network: Network, holder: RegistryHolder) -> None:
        """A check made against a registry no longer held changes nothing."""
        path = network.root / "registry.jws"
        payload = network.payload(NOW + 60)
        set_file(path, sign_registry({**payload, "serial": 8}, network.authority), 2)
        stale = holder.check(NOW + 60)
        assert holder.maybe_reload(NOW + 60).outcome == "reloaded"
        set_file(path, sign_registry({**payload, "serial": 9}, network.authority), 3)
        result = holder.apply(stale, NOW + 61)
        assert (result.outcome, result.serial) == ("unchanged", 8)
        assert holder.current.serial == 8
        # The newer file was not marked as seen: the next poll reads it.
        assert holder.maybe_reload(NOW + 62).serial == 9
