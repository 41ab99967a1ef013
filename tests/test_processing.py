"""The Art. 30 record of processing: derived from the demo's signed contracts, in every format.

The demo network's files are written by ``build_network`` (no gateway runs);
the record is checked against the contracts themselves, read back from the
same files, so the test fails if the record and the contracts disagree.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.contracts import Contract, load_contract_file
from gateway.demo.network import (
    AGENCY_NAMES,
    BENEFITS,
    EXPIRED_CONTRACT,
    INCOME_CONTRACT,
    PERSON_CONTRACT,
    POPULATION,
    TAX,
    TAX_CONTRACT,
    build_network,
    demo_contracts,
)
from gateway.processing import (
    SECURITY_MEASURES,
    THIRD_COUNTRY_TRANSFERS,
    Activity,
    build_record,
    group_fields,
    parse_instant,
    render,
    render_markdown,
    render_text,
    utc_text,
)

CURRENT = (INCOME_CONTRACT, PERSON_CONTRACT, TAX_CONTRACT)


@dataclass(frozen=True)
class Demo:
    """A demo network on disk, and one directory holding every one of its contracts."""

    root: Path
    contracts: Path
    now: datetime

    @property
    def registry(self) -> Path:
        """The signed trust registry."""
        return self.root / "registry.jws"

    def contract(self, contract_id: str) -> Contract:
        """The signed contract ``contract_id``, read back from its file."""
        return load_contract_file(self.contracts / f"{contract_id}.yaml")


@dataclass(frozen=True)
class Result:
    """Exit status, stdout and stderr of one run of the command."""

    returncode: int
    stdout: str
    stderr: str


def run(*args: str | Path, process: bool = False) -> Result:
    """``gateway ARGS``, output captured; usage errors give their status.

    In this process by default; with ``process`` as the operator runs it,
    ``python -m gateway.cli`` in a subprocess, where a traceback would show.
    """
    if process:
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """The demo's files, with the contracts of all three agencies gathered in one directory."""
    root = tmp_path_factory.mktemp("processing")
    now = datetime.now(UTC).replace(microsecond=0)
    build_network(root, 8100, now)
    gathered = root / "all-contracts"
    gathered.mkdir()
    for agency in AGENCY_NAMES:
        for path in (root / agency / "contracts").glob("*.yaml"):
            shutil.copy(path, gathered / path.name)
    return Demo(root, gathered, now)


def record_of(
    demo: Demo, *args: str | Path, directory: Path | None = None, process: bool = False
) -> Result:
    """``gateway contracts record-of-processing`` on ``directory`` (default: every contract)."""
    return run(
        "contracts",
        "record-of-processing",
        "--dir",
        directory or demo.contracts,
        "--registry",
        demo.registry,
        "--at",
        utc_text(demo.now),
        *args,
        process=process,
    )


def text_blocks(text: str) -> dict[str, dict[str, str]]:
    """The text format's activities: heading's contract id -> label -> value."""
    blocks: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if ", purpose " in line and not line.startswith(" "):
            current = blocks.setdefault(line.split(" ", 1)[0], {"heading": line})
        elif current is not None and line.startswith("  "):
            label, value = line.strip().split("  ", 1)
            current[label] = value.strip()
        else:
            current = None
    return blocks


def markdown_blocks(text: str) -> dict[str, dict[str, str]]:
    """The Markdown format's activities: contract id -> table label -> cell."""
    blocks: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if line.startswith("### "):
            contract_id = line.split("`")[1]
            current = blocks.setdefault(contract_id, {"heading": line})
        elif current is not None and line.startswith("| ") and not line.startswith("| Art."):
            label, value = line.strip("| ").split(" | ", 1)
            current[label] = value
        elif line.startswith("#"):
            current = None
    return blocks


class TestCommand:
    """The command on the demo's signed contracts, in each format."""

    def test_text(self, demo: Demo) -> None:
        """One block per contract: its released fields exactly, controller, recipient, state."""
        result = record_of(demo)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        blocks = text_blocks(result.stdout)
        assert set(blocks) == {*CURRENT, EXPIRED_CONTRACT}
        for contract_id, block in blocks.items():
            contract = demo.contract(contract_id)
            assert set(block["(c) personal data"].split("; ")) == set(contract.fields)
            controller = f"{contract.provider} ({AGENCY_NAMES[contract.provider]})"
            assert block["(a) controller"] == controller
            recipient = f"{contract.consumer} ({AGENCY_NAMES[contract.consumer]})"
            assert block["(d) recipients"].startswith(recipient + ";")
            assert block["legal basis"] == contract.purposes[0].legal_basis
            assert block["(f) time limits"].startswith(f"{contract.retention_days} days")
            assert f"derived from service {contract.service}" in block["(c) data subjects"]
            assert block["(e) third countries"] == THIRD_COUNTRY_TRANSFERS
        assert blocks[EXPIRED_CONTRACT]["heading"].endswith("[EXPIRED]")
        assert blocks[EXPIRED_CONTRACT]["validity"].endswith("(expired)")
        for contract_id in CURRENT:
            assert "[" not in blocks[contract_id]["heading"]
            assert blocks[contract_id]["validity"].endswith("(in force)")
        in_force, not_in_force = result.stdout.split("Not in force at", 1)
        assert EXPIRED_CONTRACT not in in_force
        assert all(contract_id not in not_in_force for contract_id in CURRENT)
        for measure in SECURITY_MEASURES:
            assert f"- {measure}" in result.stdout

    def test_json_matches_the_contracts(self, demo: Demo) -> None:
        """The JSON parses and every entry is the signed contract's data."""
        result = record_of(demo, "--format", "json")
        assert result.returncode == 0, result.stderr
        record = json.loads(result.stdout)
        assert record["at"] == utc_text(demo.now)
        assert record["agency"] is None
        assert "4 signed contract(s)" in record["source"]
        states = {a["contract"]: a["state"] for a in record["in_force"] + record["not_in_force"]}
        assert states == {**dict.fromkeys(CURRENT, "in force"), EXPIRED_CONTRACT: "expired"}
        assert [a["contract"] for a in record["not_in_force"]] == [EXPIRED_CONTRACT]
        assert all(a["in_force"] for a in record["in_force"])
        assert not record["not_in_force"][0]["in_force"]
        for activity in record["in_force"] + record["not_in_force"]:
            self.assert_matches(activity, demo.contract(activity["contract"]))
        assert record["security_measures"] == list(SECURITY_MEASURES)
        assert record["third_country_transfers"] == THIRD_COUNTRY_TRANSFERS

    @staticmethod
    def assert_matches(activity: dict[str, Any], contract: Contract) -> None:
        """One JSON activity against the contract it was derived from."""
        (purpose,) = contract.purposes
        assert activity["contract_version"] == contract.version
        assert activity["service"] == contract.service
        assert activity["purpose"] == purpose.id
        assert activity["legal_basis"] == purpose.legal_basis
        assert activity["controller"] == {
            "id": contract.provider,
            "name": AGENCY_NAMES[contract.provider],
        }
        assert activity["recipient"] == {
            "id": contract.consumer,
            "name": AGENCY_NAMES[contract.consumer],
        }
        assert activity["released_fields"] == list(contract.fields)
        grouped = [path for group in activity["personal_data"] for path in group["paths"]]
        assert sorted(grouped) == sorted(contract.fields)
        assert activity["subject_field"] == contract.subject_field
        assert activity["retention_days"] == contract.retention_days
        assert activity["valid_from"] == utc_text(contract.valid_from)
        assert activity["valid_until"] == utc_text(contract.valid_until)
        assert activity["status"] == contract.status

    def test_markdown(self, demo: Demo) -> None:
        """A table per contract with exactly its fields, and the expired one marked."""
        result = record_of(demo, "--format", "markdown")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("# Record of processing activities")
        blocks = markdown_blocks(result.stdout)
        assert set(blocks) == {*CURRENT, EXPIRED_CONTRACT}
        for contract_id, block in blocks.items():
            contract = demo.contract(contract_id)
            fields = {cell.strip("`") for cell in block["(c) personal data"].split("; ")}
            assert fields == set(contract.fields)
            assert block["(a) controller"] == (
                f"`{contract.provider}` ({AGENCY_NAMES[contract.provider]})"
            )
            assert block["(d) recipients"].startswith(
                f"`{contract.consumer}` ({AGENCY_NAMES[contract.consumer]});"
            )
        assert blocks[EXPIRED_CONTRACT]["heading"].endswith("(EXPIRED)")
        in_force, not_in_force = result.stdout.split("## Not in force", 1)
        assert f"`{EXPIRED_CONTRACT}`" in not_in_force
        assert f"`{EXPIRED_CONTRACT}`" not in in_force

    def test_at_moves_validity(self, demo: Demo) -> None:
        """In mid-2024 the 2024 contract is in force and the current ones are not yet valid."""
        result = record_of(demo, "--format", "json", "--at", "2024-06-01T12:00:00+02:00")
        assert result.returncode == 0, result.stderr
        record = json.loads(result.stdout)
        assert record["at"] == "2024-06-01T10:00:00Z"
        assert [a["contract"] for a in record["in_force"]] == [EXPIRED_CONTRACT]
        assert {a["contract"]: a["state"] for a in record["not_in_force"]} == dict.fromkeys(
            CURRENT, "not yet valid"
        )

    @pytest.mark.parametrize(
        ("role", "expected"),
        [
            ("controller", {INCOME_CONTRACT, EXPIRED_CONTRACT}),
            ("recipient", {TAX_CONTRACT}),
            ("any", {INCOME_CONTRACT, EXPIRED_CONTRACT, TAX_CONTRACT}),
        ],
    )
    def test_agency_and_role(self, demo: Demo, role: str, expected: set[str]) -> None:
        """``--agency`` keeps the contracts where it discloses, receives, or either."""
        result = record_of(demo, "--format", "json", "--agency", TAX, "--role", role)
        assert result.returncode == 0, result.stderr
        record = json.loads(result.stdout)
        assert (record["agency"], record["role"]) == (TAX, role)
        activities = record["in_force"] + record["not_in_force"]
        assert {a["contract"] for a in activities} == expected
        for activity in activities:
            assert TAX in (activity["controller"]["id"], activity["recipient"]["id"])
        text = record_of(demo, "--agency", TAX, "--role", role).stdout
        scope = {"any": "controller or recipient"}.get(role, role)
        assert f"for agency {TAX} as {scope}." in text
        assert set(text_blocks(text)) == expected

    def test_one_agency_directory(self, demo: Demo) -> None:
        """An agency's own contract directory, as its gateway loads it."""
        result = record_of(demo, "--format", "json", directory=demo.root / POPULATION / "contracts")
        assert result.returncode == 0, result.stderr
        record = json.loads(result.stdout)
        assert {a["contract"] for a in record["in_force"]} == {PERSON_CONTRACT, TAX_CONTRACT}
        assert record["not_in_force"] == []
        assert {a["controller"]["id"] for a in record["in_force"]} == {POPULATION}
        assert {a["recipient"]["id"] for a in record["in_force"]} == {BENEFITS, TAX}
        text = record_of(demo, directory=demo.root / POPULATION / "contracts").stdout
        assert "Not in force at" in text
        assert "(none)" in text


class TestCommandErrors:
    """Problems the operator can fix: a clear message, exit 1, no traceback, no record."""

    def test_missing_directory(self, demo: Demo, tmp_path: Path) -> None:
        """A directory that does not exist is named in one line."""
        missing = tmp_path / "no-such-dir"
        result = record_of(demo, directory=missing)
        assert result.returncode == 1
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert str(missing) in lines[0]
        assert "cannot list contracts" in lines[0]

    @pytest.mark.parametrize("process", [False, True])
    def test_tampered_contract(self, demo: Demo, tmp_path: Path, process: bool) -> None:
        """A field added after signing: the file is named, and no partial record is written."""
        directory = tmp_path / "contracts"
        shutil.copytree(demo.contracts, directory)
        path = directory / f"{INCOME_CONTRACT}.yaml"
        document = yaml.safe_load(path.read_text())
        document["fields"] = [*document["fields"], "bank_account"]
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        done = record_of(demo, directory=directory, process=process)
        assert done.returncode == 1
        assert done.stdout == ""
        assert "Traceback" not in done.stderr
        assert f"{path}: signatures: signature of the provider '{TAX}'" in done.stderr
        assert "does not verify" in done.stderr
        assert "no record of processing written: 1 contract file(s)" in done.stderr

    def test_unknown_agency(self, demo: Demo) -> None:
        """An agency the registry does not list is refused rather than giving an empty record."""
        result = record_of(demo, "--agency", "no-such-agency")
        assert result.returncode == 1
        assert result.stdout == ""
        assert "no-such-agency" in result.stderr
        assert "trust registry" in result.stderr

    def test_bad_instant(self, demo: Demo) -> None:
        """``--at`` that is not RFC 3339 is a usage error (exit 2)."""
        result = record_of(demo, "--at", "2026-01-01")
        assert result.returncode == 2
        assert "RFC 3339" in result.stderr

    def test_missing_registry(self, demo: Demo, tmp_path: Path) -> None:
        """The same registry checks as ``contracts validate``: an unreadable one is one line."""
        result = run(
            "contracts",
            "record-of-processing",
            "--dir",
            demo.contracts,
            "--registry",
            tmp_path / "registry.jws",
            "--authority-key",
            demo.root / "authority.jwks.json",
        )
        assert result.returncode == 1
        assert "cannot read the registry" in result.stderr
        assert "Traceback" not in result.stderr


class TestPure:
    """``gateway.processing`` on the demo's contract models, without files."""

    NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)

    def record_of(self, **options: Any) -> list[Activity]:
        """Every activity of the demo contracts' record at NOW."""
        record = build_record(
            demo_contracts(self.NOW), at=int(self.NOW.timestamp()), names=AGENCY_NAMES, **options
        )
        return [*record.in_force, *record.not_in_force]

    def test_one_activity_per_purpose(self) -> None:
        """A contract with two purposes gives two activities, each with its legal basis."""
        contract = demo_contracts(self.NOW)[0]
        document = contract.model_dump()
        document["purposes"] = [
            {"id": "benefit-eligibility", "legal_basis": "Act A"},
            {"id": "fraud-check", "legal_basis": "Act B"},
        ]
        two = Contract.model_validate(document)
        record = build_record([two], at=int(self.NOW.timestamp()))
        assert [(a.purpose, a.legal_basis) for a in record.in_force] == [
            ("benefit-eligibility", "Act A"),
            ("fraud-check", "Act B"),
        ]
        assert record.in_force[0].controller.name is None  # no registry names given
        lines = render_text(record).splitlines()
        controllers = [line for line in lines if "(a) controller" in line]
        assert len(controllers) == 2
        assert all(line.endswith(f"  {two.provider}") for line in controllers)

    def test_states(self) -> None:
        """Suspended and expired contracts are out of force, with the reason."""
        contracts = demo_contracts(self.NOW)
        suspended = Contract.model_validate({**contracts[0].model_dump(), "status": "suspended"})
        record = build_record([suspended, *contracts[1:]], at=int(self.NOW.timestamp()))
        states = {a.contract: a.state for a in record.not_in_force}
        assert states == {INCOME_CONTRACT: "status is suspended", EXPIRED_CONTRACT: "expired"}
        assert "[STATUS IS SUSPENDED]" in render_text(record)

    def test_contract_measures(self) -> None:
        """The contract's own limits are part of its entry; the end-user duty only when set."""
        contract = demo_contracts(self.NOW)[0]
        relaxed = Contract.model_validate({**contract.model_dump(), "requires_end_user": False})
        at = int(self.NOW.timestamp())
        (strict,) = build_record([contract], at=at).in_force
        (loose,) = build_record([relaxed], at=at).in_force
        assert strict.contract_measures.startswith("at most 600 requests per 60 s;")
        assert "official on whose behalf" in strict.contract_measures
        assert "official" not in loose.contract_measures

    def test_role_without_agency_keeps_everything(self) -> None:
        """``role`` only narrows when an agency is named."""
        assert len(self.record_of(role="recipient")) == 4
        assert {a.contract for a in self.record_of(agency=BENEFITS, role="recipient")} == {
            INCOME_CONTRACT,
            PERSON_CONTRACT,
            EXPIRED_CONTRACT,
        }
        assert self.record_of(agency=BENEFITS, role="controller") == []

    def test_group_fields(self) -> None:
        """Paths are grouped by their top-level member, arrays included."""
        groups = group_fields(["address.street", "name", "children[].name", "address.city"])
        assert [(g.category, g.paths) for g in groups] == [
            ("address", ("address.city", "address.street")),
            ("children", ("children[].name",)),
            ("name", ("name",)),
        ]

    def test_nested_fields_in_text_and_markdown(self) -> None:
        """A category with several paths lists each of them."""
        contract = demo_contracts(self.NOW)[0]
        nested = Contract.model_validate(
            {**contract.model_dump(), "fields": ["national_id", "address.street", "address.city"]}
        )
        record = build_record([nested], at=int(self.NOW.timestamp()))
        assert "address (address.city, address.street); national_id" in render_text(record)
        assert "`address` (`address.city`, `address.street`); `national_id`" in render_markdown(
            record
        )

    def test_markdown_escapes_free_text(self) -> None:
        """A legal basis with a pipe or a newline cannot break the table."""
        contract = demo_contracts(self.NOW)[0]
        odd = Contract.model_validate(
            {
                **contract.model_dump(),
                "purposes": [{"id": "benefit-eligibility", "legal_basis": "Act | s.1\n<b>x</b>"}],
            }
        )
        record = build_record([odd], at=int(self.NOW.timestamp()))
        row = next(
            line for line in render(record, "markdown").splitlines() if "legal basis" in line
        )
        assert row == r"| legal basis | Act \| s.1 \<b\>x\</b\> |"
        text_rows = [line for line in render(record, "text").splitlines() if "legal basis" in line]
        assert text_rows == [text_rows[0]]
        assert text_rows[0].endswith("  Act | s.1 <b>x</b>")

    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("2026-01-01T00:00:00Z", 1767225600),
            ("2026-01-01t00:00:00z", 1767225600),
            ("2026-01-01T01:00:00+01:00", 1767225600),
            ("2026-01-01T00:00:00.999999999Z", 1767225600),
        ],
    )
    def test_parse_instant(self, text: str, seconds: int) -> None:
        """RFC 3339 with Z or an offset; fractions are dropped."""
        assert parse_instant(text) == seconds

    @pytest.mark.parametrize(
        "text", ["2026-01-01", "2026-01-01T00:00:00", "now", "2026-13-01T00:00:00Z"]
    )
    def test_parse_instant_refuses(self, text: str) -> None:
        """No local times, no dates alone, no impossible dates."""
        with pytest.raises(ValueError, match=r"."):
            parse_instant(text)
