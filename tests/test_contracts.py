"""Contracts: model validation, canonical form, signatures, decisions, loading (protocol 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from gateway.contracts import (
    MAX_CONTRACT_FILE_BYTES,
    Contract,
    ContractDirLoader,
    ContractProblem,
    ContractSet,
    canonical_bytes,
    check_contract_bytes,
    check_contract_file,
    contract_json_schema,
    contract_schema_text,
    load_contract_dir,
    load_contract_file,
    main,
    sign_contract,
    verify_signatures,
)
from gateway.errors import SetupError
from gateway.fields import FieldFilter
from gateway.jose import detached_signature
from gateway.keys import PrivateKey, PublicKey, generate_private_keys
from gateway.yamlfiles import StrictYamlLoader, load_strict_yaml, yaml_problem

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "contracts" / "examples" / "benefits-income.yaml"
PROVIDER, CONSUMER, STRANGER = "tax-authority", "social-benefits", "police"
VALID_FROM = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
VALID_UNTIL = int(datetime(2027, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())
IN_2026 = VALID_FROM + 86_400

SigningKeysOf = Callable[[str], Sequence[PublicKey]]


def document(**changes: Any) -> dict[str, Any]:
    """The protocol's example contract as YAML would load it, with ``changes``."""
    doc: dict[str, Any] = {
        "id": "benefits-income-2026",
        "version": 3,
        "provider": PROVIDER,
        "consumer": CONSUMER,
        "service": "income-records",
        "purposes": [{"id": "benefit-eligibility", "legal_basis": "Social Security Act s.12"}],
        "fields": ["national_id", "year", "taxable_income"],
        "subject_field": "national_id",
        "requires_end_user": True,
        "valid_from": datetime(2026, 1, 1, tzinfo=UTC),
        "valid_until": datetime(2027, 12, 31, 23, 59, 59, tzinfo=UTC),
        "rate_limit": {"requests": 600, "per_seconds": 60},
        "max_request_bytes": 65536,
        "retention_days": 30,
        "status": "active",
    }
    doc.update(changes)
    return {key: value for key, value in doc.items() if value is not ...}


def contract(**changes: Any) -> Contract:
    """A validated (unsigned) contract."""
    return Contract.model_validate(document(**changes))


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    """A signing key per agency."""
    return {agency: generate_private_keys()[0] for agency in (PROVIDER, CONSUMER, STRANGER)}


@pytest.fixture(scope="module")
def registry(keys: dict[str, PrivateKey]) -> SigningKeysOf:
    """The trust registry's view: each agency's public signing keys; unknown agencies none."""
    listed = {agency: (key.public,) for agency, key in keys.items()}
    return lambda agency: listed.get(agency, ())


def signed(keys: dict[str, PrivateKey], base: Contract | None = None) -> Contract:
    """``base`` (default: the example) signed by both parties."""
    unsigned = base or contract()
    return sign_contract(
        sign_contract(unsigned, PROVIDER, keys[PROVIDER]), CONSUMER, keys[CONSUMER]
    )


def write(directory: Path, name: str, item: Contract | dict[str, Any]) -> Path:
    """Write a contract file as an operator would (times as quoted RFC 3339 text)."""
    data = item.model_dump(mode="json") if isinstance(item, Contract) else item
    path = directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


class TestModel:
    """The contract document and its defaults."""

    def test_example_file_loads(self) -> None:
        """The published example is a valid (unsigned) contract."""
        loaded = load_contract_file(EXAMPLE)
        assert loaded == contract(
            purposes=[
                {
                    "id": "benefit-eligibility",
                    "legal_basis": "Social Security Act s.12; GDPR Art. 6(1)(e)",
                }
            ]
        )
        assert loaded.signatures == ()

    def test_defaults(self) -> None:
        """Omitted optional members take the documented defaults."""
        minimal = contract(
            requires_end_user=...,
            rate_limit=...,
            max_request_bytes=...,
            status=...,
        )
        assert minimal.requires_end_user is True
        assert (minimal.rate_limit.requests, minimal.rate_limit.per_seconds) == (60, 60)
        assert minimal.max_request_bytes == 65536
        assert minimal.status == "active"
        assert minimal.signatures == ()

    def test_frozen_and_hashable(self) -> None:
        """A contract cannot be changed in place, and is a hashable value."""
        item = contract()
        with pytest.raises(ValidationError):
            item.version = 4  # type: ignore[misc]
        assert hash(item) == hash(contract())

    def test_quoted_times_are_accepted(self) -> None:
        """Quoted RFC 3339 text with Z is the same instant as a YAML timestamp."""
        assert contract(valid_from="2026-01-01T00:00:00Z") == contract()

    def test_decisions(self) -> None:
        """Purposes, legal basis, parties and the cached field filter."""
        item = contract()
        assert item.parties == (PROVIDER, CONSUMER)
        assert item.allows_purpose("benefit-eligibility")
        assert not item.allows_purpose("marketing")
        assert item.legal_basis("benefit-eligibility") == "Social Security Act s.12"
        assert item.legal_basis("marketing") is None
        assert item.field_filter is item.field_filter
        assert item.field_filter == FieldFilter.compile(item.fields)

    def test_contracts_share_what_they_repeat(self) -> None:
        """Parsed contracts hold one copy of repeated text and of each set of given fields.

        A gateway may hold 10,000 contracts; the memory a contract takes is most
        of what they cost it. Sharing must not change what any contract says.
        """
        texts = [
            yaml.safe_dump(document(id=f"contract-{n}", valid_from="2026-01-01T00:00:00Z"))
            for n in (1, 2)
        ]
        first, second = (check_contract_bytes("c.yaml", text.encode())[0] for text in texts)
        assert first is not None
        assert second is not None
        assert first.id != second.id
        for name in ("provider", "consumer", "service", "subject_field"):
            assert getattr(first, name) is getattr(second, name), name
        assert all(a is b for a, b in zip(first.fields, second.fields, strict=True))
        assert first.purposes[0].id is second.purposes[0].id
        assert first.purposes[0].legal_basis is second.purposes[0].legal_basis
        assert first.model_fields_set is second.model_fields_set
        assert first.rate_limit.model_fields_set is second.rate_limit.model_fields_set

        assert first.model_fields_set == set(document())

        fewer, fewer_too = (contract(id=name, status=...) for name in ("one-fewer", "two-fewer"))
        assert fewer.model_fields_set is fewer_too.model_fields_set
        assert fewer.model_fields_set == set(document()) - {"status"}
        changed = fewer.model_copy(update={"status": "revoked"})
        assert "status" in changed.model_fields_set
        assert "status" not in fewer_too.model_fields_set

    @pytest.mark.parametrize(
        ("now", "reason"),
        [
            (VALID_FROM - 1, "not yet valid"),
            (VALID_FROM, None),
            (IN_2026, None),
            (VALID_UNTIL, None),
            (VALID_UNTIL + 1, "expired"),
        ],
    )
    def test_validity_window_is_inclusive(self, now: int, reason: str | None) -> None:
        """In force from ``valid_from`` to ``valid_until``, both included."""
        assert contract().inactive_reason(now) == reason
        assert contract().in_force(now) is (reason is None)

    @pytest.mark.parametrize("status", ["suspended", "revoked"])
    def test_only_active_contracts_are_in_force(self, status: str) -> None:
        """Suspended and revoked contracts are valid documents but never in force."""
        assert contract(status=status).inactive_reason(IN_2026) == f"status is {status}"
        assert not contract(status=status).in_force(IN_2026)


LOCAL = timezone(timedelta(hours=1))


class TestValidation:
    """Every refusal names the field and the reason."""

    @pytest.mark.parametrize(
        ("changes", "field", "reason"),
        [
            ({"id": "Benefits"}, "id", "pattern"),
            ({"id": "x" * 129}, "id", "pattern"),
            ({"version": 0}, "version", "greater than or equal to 1"),
            ({"version": "3"}, "version", "valid integer"),
            ({"version": 3.0}, "version", "valid integer"),
            ({"version": True}, "version", "valid integer"),
            ({"version": 2**53}, "version", "less than or equal"),
            ({"provider": "tax authority"}, "provider", "pattern"),
            ({"provider": "tax-authority\n"}, "provider", "pattern"),
            ({"consumer": PROVIDER}, "consumer", "must differ from provider"),
            ({"service": "a"}, "service", "pattern"),
            ({"purposes": []}, "purposes", "at least 1 item"),
            ({"purposes": {"id": "x"}}, "purposes", "must be a list"),
            (
                {"purposes": [{"id": "p1", "legal_basis": "x"}, {"id": "p1", "legal_basis": "y"}]},
                "purposes",
                "'p1' is listed",
            ),
            ({"purposes": [{"id": "P", "legal_basis": "x"}]}, "purposes[0].id", "pattern"),
            ({"purposes": [{"id": "p1", "legal_basis": "  "}]}, "purposes[0].legal_basis", ""),
            ({"purposes": [{"id": "p1"}]}, "purposes[0].legal_basis", "required field"),
            ({"fields": []}, "fields", "at least 1 item"),
            ({"fields": "national_id"}, "fields", "must be a list"),
            ({"fields": ["year", "a..b"]}, "fields[1]", "field path 'a..b'"),
            ({"fields": ["year", "year"]}, "fields", "'year' is listed more than once"),
            ({"fields": ["a.b", "a[].c"]}, "fields", "both as an object and as an array"),
            ({"fields": [3]}, "fields[0]", "valid string"),
            ({"subject_field": "person.id"}, "subject_field", "pattern"),
            ({"requires_end_user": "yes"}, "requires_end_user", "valid boolean"),
            ({"valid_from": datetime(2026, 1, 1)}, "valid_from", "UTC"),
            ({"valid_from": datetime(2026, 1, 1, tzinfo=LOCAL)}, "valid_from", "UTC"),
            ({"valid_from": "2026-01-01T01:00:00+01:00"}, "valid_from", "UTC date-time"),
            ({"valid_from": "2026-02-30T00:00:00Z"}, "valid_from", "day is out of range"),
            (
                {"valid_from": datetime(2026, 1, 1, 0, 0, 0, 5, tzinfo=UTC)},
                "valid_from",
                "whole seconds",
            ),
            ({"valid_from": datetime(2026, 1, 1, tzinfo=UTC).date()}, "valid_from", "date-time"),
            ({"valid_from": 1767225600}, "valid_from", "date-time"),
            ({"valid_until": datetime(2026, 1, 1, tzinfo=UTC)}, "valid_until", "later than"),
            ({"rate_limit": {"requests": 0, "per_seconds": 60}}, "rate_limit.requests", ">="),
            ({"rate_limit": {"requests": 1}}, "rate_limit.per_seconds", "required field"),
            ({"max_request_bytes": 0}, "max_request_bytes", "greater than or equal to 1"),
            ({"retention_days": ...}, "retention_days", "required field is missing"),
            ({"status": "paused"}, "status", "'active', 'suspended' or 'revoked'"),
            ({"colour": "blue"}, "colour", "unknown field"),
            (
                {"signatures": [{"agency": PROVIDER, "jws": str(n)} for n in range(3)]},
                "signatures",
                "at most 2",
            ),
            ({"signatures": [{"agency": PROVIDER}]}, "signatures[0].jws", "required field"),
        ],
    )
    def test_refusals_name_field_and_reason(
        self, tmp_path: Path, changes: dict[str, Any], field: str, reason: str
    ) -> None:
        """The problem (and the ``SetupError``) carry the file, the dotted field and why."""
        path = tmp_path / "contract.yaml"
        path.write_text(yaml.safe_dump(document(**changes)), encoding="utf-8")
        loaded, problems = check_contract_file(path)
        assert loaded is None
        assert [(p.source, p.field) for p in problems] == [(str(path), field)]
        assert reason.replace(">=", "greater than or equal") in problems[0].reason
        with pytest.raises(SetupError) as caught:
            load_contract_file(path)
        assert (caught.value.source, caught.value.field) == (str(path), field)
        assert str(caught.value).startswith(f"{path}: {field}: ")

    def test_text_must_be_utf8_encodable(self, tmp_path: Path) -> None:
        """A lone surrogate (YAML can write one as an escape) could not be canonicalised."""
        path = tmp_path / "c.yaml"
        text = yaml.safe_dump(document()).replace("Social Security Act s.12", r'"\ud800"')
        path.write_text(text, encoding="utf-8")
        _, problems = check_contract_file(path)
        assert [p.field for p in problems] == ["purposes[0].legal_basis"]

    def test_every_schema_error_is_reported(self, tmp_path: Path) -> None:
        """All problems of a file are listed, not only the first."""
        path = write(tmp_path, "c.yaml", document(version=0, status="x", extra=1, fields=...))
        loaded, problems = check_contract_file(path)
        assert loaded is None
        assert sorted(p.field or "" for p in problems) == ["extra", "fields", "status", "version"]
        with pytest.raises(SetupError, match=r"\(and 3 more problems\)"):
            load_contract_file(path)

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("id: [unclosed\n", "not valid YAML"),
            ("a: 1\n\tb: 2\n", "not valid YAML"),
            ("id: a\nid: b\n", "duplicate key 'id'"),
            ("base: &b {requests: 1}\nrate_limit: *b\n", "aliases are not allowed"),
            ("? [a, b]\n: 1\n", "unhashable key"),
            ("status: active\n<<: {version: 3}\n", "merge keys (<<) are not allowed"),
            ("- id: a\n", "must be a YAML mapping"),
            ("", "must be a YAML mapping"),
            ("just text", "must be a YAML mapping"),
            # Where libyaml is more lenient than PyYAML, PyYAML's refusal stands.
            ("version:\t3\n", "found character '\\t' that cannot start any token"),
            ("fields: [year?]\n", "expected ',' or ']'"),
            ("purposes: {a: 1, a: 2}\n", "duplicate key 'a'"),
            # A timestamp naming no instant is a refusal with its place, not a crash.
            ("valid_from: 2026-02-30T00:00:00Z\n", "day is out of range for month"),
        ],
    )
    def test_unusable_files(self, tmp_path: Path, text: str, reason: str) -> None:
        """Bad YAML is refused for the whole file (no field), with the position where known."""
        path = tmp_path / "c.yaml"
        path.write_text(text, encoding="utf-8")
        _, problems = check_contract_file(path)
        assert len(problems) == 1
        assert (problems[0].source, problems[0].field) == (str(path), None)
        assert reason in problems[0].reason
        if "mapping" not in reason:
            assert " at line " in problems[0].reason

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("[" * 5000 + "]" * 5000, "nested too deeply"),
            ("status: !!bool maybe\n", "a value cannot be read (KeyError('maybe'))"),
            ("version: !!int three\n", "a value cannot be read (ValueError("),
        ],
    )
    def test_parser_failures_refuse_the_file(self, tmp_path: Path, text: str, reason: str) -> None:
        """What PyYAML raises besides YAMLError refuses the file; it never stops a load."""
        path = tmp_path / "c.yaml"
        path.write_text(text, encoding="utf-8")
        loaded, problems = check_contract_file(path)
        assert loaded is None
        assert [(p.source, p.field) for p in problems] == [(str(path), None)]
        assert problems[0].reason.startswith(f"not valid YAML: {reason}")

    def test_invalid_utf8_is_refused(self, tmp_path: Path) -> None:
        """Bytes that are not text are a YAML error, not a crash."""
        path = tmp_path / "c.yaml"
        path.write_bytes(b"id: \xff\xfe\x00")
        _, problems = check_contract_file(path)
        assert problems[0].reason.startswith("not valid YAML")

    def test_size_bound(self, tmp_path: Path) -> None:
        """A file over the bound is refused before parsing."""
        path = tmp_path / "big.yaml"
        path.write_bytes(b"#" * (MAX_CONTRACT_FILE_BYTES + 1))
        _, problems = check_contract_file(path)
        assert problems == (ContractProblem(str(path), None, "larger than 1048576 bytes"),)

    def test_unreadable(self, tmp_path: Path) -> None:
        """A missing file is a problem, and a SetupError from the single-file loader."""
        _, problems = check_contract_file(tmp_path / "none.yaml")
        assert "cannot read the file" in problems[0].reason
        with pytest.raises(SetupError, match=r"none\.yaml: cannot read"):
            load_contract_file(tmp_path / "none.yaml")


YAML_CORNERS = [
    "a:\t1\n",
    "f: [a?, b]\n",
    "f: {a: 1?}\n",
    "k: |#\n  x\n",
    "a: !\n",
    "\ufeffa: 1\n",
    "a: 1\n\ufeff\n",
    "%YAML 1.1\n---\na: 1\n",
    "%FOO bar\n---\na: 1\n",
    'a: "\\ud800"\n',
    "f: [a:]\n",
    "f: {a:[1]}\n",
    "f: [a:b, 'c':d]\n",
    "a: b\r...:\r\n",
    "a: 1\r\nb: [x,\n  y]\n",
    "a: 'it''s'\nb: \"\\u00e9\\n\"\n",
    "- &a [1]\n- *a\n",
    "a: &x 1\n",
    "a: {b: 1, b: 2}\n",
    "1: a\n'1': b\n",
    "a: 2026-01-01T00:00:00Z\nb: 2026-01-01\nc: 0x1F\nd: 1_000\ne: .inf\nf: ~\ng: yes\n",
    "a: " + "[" * 20 + "]" * 20 + "\n",
]


@pytest.mark.parametrize("text", YAML_CORNERS)
def test_yaml_loading_is_the_reference_loaders(text: str) -> None:
    """Parsed with libyaml or not, a document gives what the pure-Python strict loader gives.

    These are the places where libyaml and PyYAML's own scanner are known to differ.
    (One difference remains, on purpose: libyaml parses nesting up to 1,000 levels,
    deeper than the reference can recurse; no such document is a valid contract.)
    """

    def outcome(load: Callable[[bytes | str], Any], data: bytes | str) -> tuple[str, str]:
        try:
            return ("parsed", repr(load(data)))
        except yaml.YAMLError as exc:
            return ("refused", yaml_problem(exc))

    def reference(data: bytes | str) -> Any:
        return yaml.load(data, Loader=StrictYamlLoader)  # noqa: S506 - a SafeLoader subclass

    for data in (text, text.encode("utf-8", "surrogatepass")):
        assert outcome(load_strict_yaml, data) == outcome(reference, data)


class TestCanonicalForm:
    """What both parties sign (RFC 8785 of the dump without ``signatures``)."""

    def test_canonical_bytes_of_the_example(self) -> None:
        """Sorted members, no whitespace, integers as integers, times ending in Z, defaults in."""
        assert canonical_bytes(contract(max_request_bytes=..., status=...)) == (
            b'{"consumer":"social-benefits","fields":["national_id","year","taxable_income"],'
            b'"id":"benefits-income-2026","max_request_bytes":65536,"provider":"tax-authority",'
            b'"purposes":[{"id":"benefit-eligibility","legal_basis":"Social Security Act s.12"}],'
            b'"rate_limit":{"per_seconds":60,"requests":600},"requires_end_user":true,'
            b'"retention_days":30,"service":"income-records","status":"active",'
            b'"subject_field":"national_id","valid_from":"2026-01-01T00:00:00Z",'
            b'"valid_until":"2027-12-31T23:59:59Z","version":3}'
        )

    def test_every_member_but_signatures_is_covered(self) -> None:
        """Defaults are dumped too, so changing one could never go unnoticed."""
        covered = json.loads(canonical_bytes(contract(requires_end_user=..., rate_limit=...)))
        assert set(covered) == set(Contract.model_fields) - {"signatures"}

    def test_stable_across_signing_and_reloading(self, tmp_path: Path, keys: Any) -> None:
        """Signatures do not change the canonical bytes; a file round trip does not either."""
        item = contract()
        both = signed(keys, item)
        assert canonical_bytes(both) == canonical_bytes(item)
        assert canonical_bytes(load_contract_file(write(tmp_path, "c.yaml", both))) == (
            canonical_bytes(item)
        )

    def test_years_before_1000_keep_four_digits(self) -> None:
        """RFC 3339 years are four digits."""
        early = contract(valid_from=datetime(999, 1, 1, tzinfo=UTC))
        assert b'"valid_from":"0999-01-01T00:00:00Z"' in canonical_bytes(early)


class TestSignatures:
    """Both parties sign; anything else is refused with a reason."""

    def test_both_parties_signed_verifies(self, keys: Any, registry: SigningKeysOf) -> None:
        """A contract signed by provider and consumer with registry keys passes."""
        both = signed(keys)
        assert [sig.agency for sig in both.signatures] == [PROVIDER, CONSUMER]
        assert verify_signatures(both, registry) == []

    def test_p256_keys(self) -> None:
        """ES256 signatures verify as well as EdDSA ones."""
        p256 = {agency: generate_private_keys("p256")[0] for agency in (PROVIDER, CONSUMER)}
        both = signed(p256)
        assert verify_signatures(both, lambda a: (p256[a].public,)) == []

    def test_resigning_replaces_and_keeps_order(self, keys: Any, registry: SigningKeysOf) -> None:
        """Signing again replaces that party's signature; the provider's stays first."""
        both = signed(keys)
        again = sign_contract(both, PROVIDER, generate_private_keys()[0])
        assert [sig.agency for sig in again.signatures] == [PROVIDER, CONSUMER]
        assert again.signatures[1] == both.signatures[1]
        (problem,) = verify_signatures(again, registry)
        assert problem.endswith(f"is not a registry signing key of {PROVIDER!r}")

    @pytest.mark.parametrize(
        "changes",
        [
            {"version": 4},
            {"fields": ["national_id", "year", "taxable_income", "address"]},
            {"purposes": [{"id": "benefit-eligibility", "legal_basis": "another law"}]},
            {"valid_until": datetime(2030, 1, 1, tzinfo=UTC)},
            {"status": "suspended"},
            {"requires_end_user": False},
            {"rate_limit": {"requests": 601, "per_seconds": 60}},
            {"consumer": STRANGER},
        ],
    )
    def test_any_change_after_signing_is_refused(
        self, keys: Any, registry: SigningKeysOf, changes: dict[str, Any]
    ) -> None:
        """Tampering with any member breaks both parties' signatures."""
        both = signed(keys)
        tampered = Contract.model_validate({**both.model_dump(), **changes})
        problems = verify_signatures(tampered, registry)
        assert len(problems) >= 2  # neither party's signature survives
        assert all(
            "does not verify" in p or "not a party" in p or "no signature" in p for p in problems
        )

    def test_key_of_the_wrong_party_is_refused(self, keys: Any, registry: SigningKeysOf) -> None:
        """The consumer's key cannot sign for the provider."""
        forged = sign_contract(
            sign_contract(contract(), PROVIDER, keys[CONSUMER]), CONSUMER, keys[CONSUMER]
        )
        (problem,) = verify_signatures(forged, registry)
        assert problem.startswith(f"signature of the provider {PROVIDER!r}: key ")
        assert problem.endswith(f"is not a registry signing key of {PROVIDER!r}")

    def test_missing_party_signature(self, keys: Any, registry: SigningKeysOf) -> None:
        """Each party must sign."""
        half = sign_contract(contract(), CONSUMER, keys[CONSUMER])
        assert verify_signatures(half, registry) == [f"no signature by the provider {PROVIDER!r}"]
        assert verify_signatures(contract(), registry) == [
            f"no signature by the provider {PROVIDER!r}",
            f"no signature by the consumer {CONSUMER!r}",
        ]

    def test_duplicate_and_non_party_signatures(self, keys: Any, registry: SigningKeysOf) -> None:
        """Two signatures by one party, or one by a stranger, are refused."""
        one = signed(keys).signatures[0].model_dump()
        twice = contract(signatures=[one, one])
        assert verify_signatures(twice, registry) == [
            f"more than one signature by the provider {PROVIDER!r}",
            f"no signature by the consumer {CONSUMER!r}",
        ]
        stranger = {"agency": STRANGER, "jws": one["jws"]}
        with_stranger = contract(signatures=[one, stranger])
        assert verify_signatures(with_stranger, registry)[0] == (
            f"signature by {STRANGER!r}, which is not a party to the contract"
        )

    def test_agency_unknown_to_the_registry(self, keys: Any) -> None:
        """No registry keys for a party: refused."""
        problems = verify_signatures(signed(keys), lambda agency: ())
        assert problems == [
            f"signature of the provider {PROVIDER!r}: the trust registry lists no signing key "
            f"of {PROVIDER!r}",
            f"signature of the consumer {CONSUMER!r}: the trust registry lists no signing key "
            f"of {CONSUMER!r}",
        ]

    def test_encryption_key_with_the_same_kid_is_not_used(self, keys: Any) -> None:
        """Only ``use: sig`` keys verify contracts."""
        _, enc = generate_private_keys()
        both = signed(keys)
        problems = verify_signatures(both, lambda agency: (enc.public,))
        assert all("is not a registry signing key" in p for p in problems)

    @pytest.mark.parametrize(
        ("make_jws", "reason"),
        [
            (lambda payload, key: "not-a-jws", "compact serialization must have 3 parts"),
            (
                lambda payload, key: detached_signature(payload, key, "contract+jws").replace(
                    "..", ".e30."
                ),
                "empty payload segment",
            ),
            (lambda payload, key: detached_signature(payload, key, "jwt"), "typ must be"),
            (
                lambda payload, key: detached_signature(payload + b" ", key, "contract+jws"),
                "does not verify",
            ),
        ],
    )
    def test_malformed_signatures(
        self,
        keys: Any,
        registry: SigningKeysOf,
        make_jws: Callable[[bytes, PrivateKey], str],
        reason: str,
    ) -> None:
        """Malformed, attached, wrongly typed or wrong-payload signatures are refused."""
        item = contract()
        jws = make_jws(canonical_bytes(item), keys[PROVIDER])
        half = sign_contract(
            contract(signatures=[{"agency": PROVIDER, "jws": jws}]), CONSUMER, keys[CONSUMER]
        )
        (problem,) = verify_signatures(half, registry)
        assert problem.startswith(f"signature of the provider {PROVIDER!r}: ")
        assert reason in problem

    def test_only_parties_sign_with_signing_keys(self, keys: Any) -> None:
        """A stranger, or an encryption key, cannot sign."""
        with pytest.raises(ValueError, match="neither the provider nor the consumer"):
            sign_contract(contract(), STRANGER, keys[STRANGER])
        with pytest.raises(ValueError, match="signing key"):
            sign_contract(contract(), PROVIDER, generate_private_keys()[1])

    def test_signing_drops_non_party_signatures(self, keys: Any) -> None:
        """A stranger's entry does not survive a party's signing."""
        stranger = {"agency": STRANGER, "jws": "x.y.z"}
        item = sign_contract(contract(signatures=[stranger]), PROVIDER, keys[PROVIDER])
        assert [sig.agency for sig in item.signatures] == [PROVIDER]


class TestContractSet:
    """Lookups over verified contracts."""

    def test_lookups(self) -> None:
        """By id, by route, and the contracts that fit a purpose now."""
        first = contract(id="c-one")
        second = contract(id="c-two", purposes=[{"id": "fraud", "legal_basis": "x"}])
        other = contract(id="c-three", service="other-service")
        old = contract(id="c-old", status="suspended")
        contracts = ContractSet.of([second, first, other, old])
        assert len(contracts) == 4
        assert contracts.ids() == ("c-old", "c-one", "c-three", "c-two")
        assert [c.id for c in contracts] == list(contracts.ids())
        assert contracts.get("c-one") is first
        assert contracts.get("c-none") is None
        route = {"provider": PROVIDER, "consumer": CONSUMER, "service": "income-records"}
        assert contracts.between(**route) == (old, first, second)
        assert contracts.between(provider=CONSUMER, consumer=PROVIDER, service="x") == ()
        fit = contracts.fitting(**route, purpose="benefit-eligibility", now=IN_2026)
        assert fit == (first,)
        assert contracts.fitting(**route, purpose="fraud", now=VALID_UNTIL + 1) == ()

    def test_duplicate_ids_are_refused(self) -> None:
        """Ids are unique in a set."""
        with pytest.raises(ValueError, match="'c-one' appears more than once"):
            ContractSet.of([contract(id="c-one"), contract(id="c-one", version=4)])


class TestLoadDirectory:
    """The gateway's loader: keep the good, report the bad, never raise for one file."""

    def test_mixed_directory(self, tmp_path: Path, keys: Any, registry: SigningKeysOf) -> None:
        """Valid, invalid, unsigned, duplicate and inactive files, each handled as documented."""
        good = write(tmp_path, "good.yaml", signed(keys, contract(id="good")))
        also = write(tmp_path, "also.yml", signed(keys, contract(id="also", status="revoked")))
        bad_schema = write(tmp_path, "bad-schema.yaml", document(version=0))
        unsigned = write(tmp_path, "unsigned.yaml", contract(id="unsigned"))
        dup_a = write(tmp_path, "dup-a.yaml", signed(keys, contract(id="dup")))
        dup_b = write(tmp_path, "dup-b.yaml", signed(keys, contract(id="dup", version=4)))
        broken = tmp_path / "broken.yaml"
        broken.write_text("id: [", encoding="utf-8")
        (tmp_path / "notes.txt").write_text("not a contract", encoding="utf-8")
        (tmp_path / ".editor-swap.yaml").write_text("junk: [", encoding="utf-8")
        (tmp_path / "folder.yaml").mkdir()

        loaded = load_contract_dir(tmp_path, registry, IN_2026)

        assert loaded.contracts.ids() == ("also", "good")
        assert dict(loaded.not_in_force) == {"also": "status is revoked"}
        assert {(p.source, p.field) for p in loaded.problems} == {
            (str(bad_schema), "version"),
            (str(broken), None),
            (str(unsigned), "signatures"),
            (str(dup_a), "id"),
            (str(dup_b), "id"),
        }
        dup_reasons = [p.reason for p in loaded.problems if p.field == "id"]
        assert dup_reasons[0] == (
            f"contract id 'dup' is also declared in {dup_b}; neither file is loaded"
        )
        assert [str(p) for p in loaded.problems if p.source == str(unsigned)] == [
            f"{unsigned}: signatures: no signature by the provider {PROVIDER!r}",
            f"{unsigned}: signatures: no signature by the consumer {CONSUMER!r}",
        ]
        assert good.exists()
        assert also.exists()

    def test_expired_contracts_are_loaded_but_not_in_force(
        self, tmp_path: Path, keys: Any, registry: SigningKeysOf
    ) -> None:
        """An expired contract is a valid document: loaded, reported as not in force."""
        write(tmp_path, "c.yaml", signed(keys))
        loaded = load_contract_dir(tmp_path, registry, VALID_UNTIL + 1)
        assert loaded.contracts.ids() == ("benefits-income-2026",)
        assert dict(loaded.not_in_force) == {"benefits-income-2026": "expired"}
        assert loaded.problems == ()

    def test_missing_directory_raises(self, tmp_path: Path, registry: SigningKeysOf) -> None:
        """Only a directory that cannot be listed is a SetupError."""
        with pytest.raises(SetupError, match="cannot list contracts"):
            load_contract_dir(tmp_path / "absent", registry, IN_2026)


def distrusting(registry: SigningKeysOf, agency: str) -> SigningKeysOf:
    """``registry`` as a later registry that no longer lists ``agency``'s keys."""

    def keys_of(name: str) -> Sequence[PublicKey]:
        return () if name == agency else registry(name)

    return keys_of


class CountingLoader(ContractDirLoader):
    """A loader that records, by file name or contract id, what it parses and verifies."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.parses: list[str] = []
        self.checks: list[str] = []

    def parse(
        self, source: str, data: bytes
    ) -> tuple[Contract | None, tuple[ContractProblem, ...]]:
        self.parses.append(Path(source).name)
        return super().parse(source, data)

    def verify(self, contract: Contract, signing_keys_of: SigningKeysOf) -> list[str]:
        self.checks.append(contract.id)
        return super().verify(contract, signing_keys_of)

    def done(self) -> tuple[list[str], list[str]]:
        """What was parsed and verified since the last call, sorted."""
        work = (sorted(self.parses), sorted(self.checks))
        self.parses, self.checks = [], []
        return work


class TestDirLoader:
    """Loading again: only changed files are parsed, the result is always a full load's."""

    def test_unchanged_files_are_not_parsed_again(
        self, tmp_path: Path, keys: Any, registry: SigningKeysOf
    ) -> None:
        """A second load reads but neither parses nor verifies; one edit costs one file."""
        for name in ("aa", "bb", "cc"):
            write(tmp_path, f"{name}.yaml", signed(keys, contract(id=name)))
        loader = CountingLoader(tmp_path)
        first = loader.load(registry, IN_2026)
        assert loader.done() == (["aa.yaml", "bb.yaml", "cc.yaml"], ["aa", "bb", "cc"])
        assert first == load_contract_dir(tmp_path, registry, IN_2026)
        again = loader.load(registry, IN_2026)
        assert loader.done() == ([], [])
        assert again == first
        assert [again.contracts.get(i) is first.contracts.get(i) for i in ("aa", "bb", "cc")] == [
            True
        ] * 3
        write(tmp_path, "bb.yaml", signed(keys, contract(id="bb", version=4)))
        edited = loader.load(registry, IN_2026)
        assert loader.done() == (["bb.yaml"], ["bb"])
        assert edited == load_contract_dir(tmp_path, registry, IN_2026)
        assert edited.contracts.get("bb") == signed(keys, contract(id="bb", version=4))

    def test_a_rewrite_keeping_size_and_mtime_is_seen(
        self, tmp_path: Path, keys: Any, registry: SigningKeysOf
    ) -> None:
        """Files are compared by content, not by (mtime, size), which a quick rewrite can keep."""
        path = write(tmp_path, "c.yaml", signed(keys, contract(version=3)))
        loader = CountingLoader(tmp_path)
        loader.load(registry, IN_2026)
        loader.done()
        before = path.stat()
        write(tmp_path, "c.yaml", signed(keys, contract(version=4)))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert (path.stat().st_size, path.stat().st_mtime_ns) == (
            before.st_size,
            before.st_mtime_ns,
        )
        loaded = loader.load(registry, IN_2026)
        assert loader.done() == (["c.yaml"], ["benefits-income-2026"])
        found = loaded.contracts.get("benefits-income-2026")
        assert found is not None
        assert found.version == 4

    def test_signatures_are_checked_again_when_a_partys_keys_change(
        self, tmp_path: Path, keys: Any, registry: SigningKeysOf
    ) -> None:
        """Checks are reused while the parties' keys stay; a changed key re-checks its contracts.

        A new trust registry that keeps the keys (another agency, a later
        expiry) costs nothing; one that changes an agency's keys re-checks
        exactly the contracts that agency is a party to, without parsing.
        """
        write(tmp_path, "aa.yaml", signed(keys, contract(id="aa")))
        write(tmp_path, "bb.yaml", signed(keys, contract(id="bb")))
        stranger = sign_contract(
            sign_contract(contract(id="cc", consumer=STRANGER), PROVIDER, keys[PROVIDER]),
            STRANGER,
            keys[STRANGER],
        )
        write(tmp_path, "cc.yaml", stranger)
        loader = CountingLoader(tmp_path)
        loader.load(registry, IN_2026)
        loader.done()
        # The same keys from another callable (a new registry object): nothing to check.
        same_keys = {agency: registry(agency) for agency in (PROVIDER, CONSUMER, STRANGER)}
        again = loader.load(lambda agency: same_keys.get(agency, ()), IN_2026)
        assert again.contracts.ids() == ("aa", "bb", "cc")
        assert loader.done() == ([], [])
        # The consumer's key rotated: its two contracts are checked, and refused.
        rotated_key = generate_private_keys()[0].public
        rotated = {**same_keys, CONSUMER: (rotated_key,)}
        refused = loader.load(lambda agency: rotated.get(agency, ()), IN_2026)
        assert loader.done() == ([], ["aa", "bb"])
        assert refused == load_contract_dir(
            tmp_path, lambda agency: rotated.get(agency, ()), IN_2026
        )
        assert refused.contracts.ids() == ("cc",)
        assert {(Path(p.source).name, p.field) for p in refused.problems} == {
            ("aa.yaml", "signatures"),
            ("bb.yaml", "signatures"),
        }
        # The consumer no longer trusted at all (no keys): checked again, still refused.
        distrusted = distrusting(registry, CONSUMER)
        assert loader.load(distrusted, IN_2026).contracts.ids() == ("cc",)
        assert loader.done() == ([], ["aa", "bb"])
        # Back to the first keys: checked again and accepted.
        assert loader.load(registry, IN_2026).contracts.ids() == ("aa", "bb", "cc")
        assert loader.done() == ([], ["aa", "bb"])

    def test_every_step_gives_what_a_full_load_gives(
        self, tmp_path: Path, keys: Any, registry: SigningKeysOf
    ) -> None:
        """Bad files, duplicates, removals and fixes: each load equals a fresh full load."""
        loader = CountingLoader(tmp_path)

        def step() -> Any:
            loaded = loader.load(registry, IN_2026)
            assert loaded == load_contract_dir(tmp_path, registry, IN_2026)
            return loaded

        write(tmp_path, "good.yaml", signed(keys, contract(id="good")))
        write(tmp_path, "idle.yaml", signed(keys, contract(id="idle", status="suspended")))
        assert step().contracts.ids() == ("good", "idle")
        broken = tmp_path / "broken.yaml"
        broken.write_text("id: [", encoding="utf-8")
        write(tmp_path, "unsigned.yaml", contract(id="unsigned"))
        loaded = step()
        assert {(Path(p.source).name, p.field) for p in loaded.problems} == {
            ("broken.yaml", None),
            ("unsigned.yaml", "signatures"),
        }
        assert loader.done()[0] == ["broken.yaml", "good.yaml", "idle.yaml", "unsigned.yaml"]
        # Unchanged bad files are neither parsed nor verified again, and still reported.
        assert step().problems == loaded.problems
        assert loader.done() == ([], [])
        # A second file declaring "good" refuses both; removing it brings the first back.
        dup = write(tmp_path, "dup.yaml", signed(keys, contract(id="good", version=4)))
        loaded = step()
        assert loaded.contracts.ids() == ("idle",)
        assert [Path(p.source).name for p in loaded.problems if p.field == "id"] == [
            "dup.yaml",
            "good.yaml",
        ]
        assert loader.done() == (["dup.yaml"], [])
        dup.unlink()
        assert step().contracts.ids() == ("good", "idle")
        assert loader.done() == ([], [])
        broken.unlink()
        (tmp_path / "unsigned.yaml").unlink()
        loaded = step()
        assert (loaded.contracts.ids(), loaded.problems) == (("good", "idle"), ())
        assert dict(loaded.not_in_force) == {"idle": "status is suspended"}
        # A file that becomes unreadable is reported, then parsed again once readable.
        big = tmp_path / "good.yaml"
        text = big.read_bytes()
        big.write_bytes(b"#" * (MAX_CONTRACT_FILE_BYTES + 1))
        assert [p.reason for p in step().problems] == ["larger than 1048576 bytes"]
        big.write_bytes(text)
        assert step().contracts.ids() == ("good", "idle")
        assert loader.done() == (["good.yaml"], ["good"])

    def test_verified_reuses_the_checks_of_the_last_load(
        self, tmp_path: Path, keys: Any, registry: SigningKeysOf
    ) -> None:
        """Contracts from the last load are not checked again under the same parties' keys."""
        write(tmp_path, "aa.yaml", signed(keys, contract(id="aa")))
        loader = CountingLoader(tmp_path)
        in_force = loader.load(registry, IN_2026).contracts
        elsewhere = signed(keys, contract(id="elsewhere"))
        loader.done()
        kept = loader.verified([*in_force, elsewhere], registry)
        assert kept.ids() == ("aa", "elsewhere")
        assert loader.done() == ([], ["elsewhere"])
        untrusted = distrusting(registry, PROVIDER)
        assert loader.verified(in_force, untrusted).ids() == ()
        assert loader.done() == ([], ["aa"])


class TestSchema:
    """The published JSON Schema is generated from the model."""

    def test_schema_file_is_current(self) -> None:
        """contracts/schema.json must be regenerated after any model change."""
        stored = (REPO / "contracts" / "schema.json").read_text(encoding="utf-8")
        assert stored == contract_schema_text(), (
            "contracts/schema.json is stale: run `python -m gateway.contracts`"
        )

    def test_schema_content(self) -> None:
        """Draft 2020-12, closed objects, the required members."""
        schema = contract_json_schema()
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["additionalProperties"] is False
        assert set(schema["required"]) == {
            "id",
            "version",
            "provider",
            "consumer",
            "service",
            "purposes",
            "fields",
            "subject_field",
            "valid_from",
            "valid_until",
            "retention_days",
        }
        assert schema["properties"]["fields"]["minItems"] == 1

    def test_main_writes_the_schema(self, tmp_path: Path) -> None:
        """``python -m gateway.contracts PATH`` regenerates the file."""
        target = tmp_path / "schema.json"
        assert main([str(target)]) == 0
        assert target.read_text(encoding="utf-8") == contract_schema_text()


def test_pure_modules_do_no_network_io() -> None:
    """Contracts and fields never pull in the web stack."""
    code = "import sys, gateway.contracts, gateway.fields; sys.exit('aiohttp' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
