"""``gateway audit ...`` and ``gateway keys rotate-audit-key`` on a demo network's real logs.

One demo folder is made per module, as an operator makes it: ``gateway demo
--once`` (a subprocess), then more traffic about other data subjects through
the same network, so each subject has records of its own. Every test works on
a copy of that folder; tampering is done with :mod:`sqlite3` directly on the
copy's store, as an attacker with file access would do it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import getpass
import io
import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
import yaml

from gateway.audit.bundle import check_bundle
from gateway.audit.commands import TABLE_COLUMNS
from gateway.audit.merkle import leaf_hash
from gateway.audit.note import NoteSigner
from gateway.audit.records import load_audit_key
from gateway.cli import main
from gateway.demo import load_demo, running_network
from gateway.demo.network import BENEFITS, INCOME_CONTRACT, POPULATION, TAX
from gateway.observability import configure_logging
from gateway.tokens import CLIENT_ASSERTION_TYPE, GRANT_TYPE
from tests.conftest import free_port_base

INCOME_FIELDS: Final = ["national_id", "taxable_income", "year"]
BENEFIT_BASIS: Final = "Social Security Act s.12; GDPR Art. 6(1)(e)"
OFFICER: Final = f"cli:{getpass.getuser()}"
# A purpose that would clear the officer's terminal and forge a table row if printed raw.
EVIL: Final = "x\x1b[2J\x1b[31mFAKE\n99  2026-01-01T00:00:00.000Z  exchange  inbound  ok  forged"


@dataclass(frozen=True)
class Demo:
    """A demo folder after traffic, its ``demo.json`` and each agency's published log key."""

    directory: Path
    demo: dict[str, Any]
    verifier_keys: dict[str, str]

    def config(self, agency: str) -> Path:
        """The agency's ``gateway.yaml``."""
        return self.directory / agency / "gateway.yaml"

    def store(self, agency: str) -> Path:
        """The agency's SQLite audit store (``sqlite:audit.db`` beside its config)."""
        return self.directory / agency / "audit.db"

    def pseudonyms(self, agency: str, subject: str) -> list[str]:
        """``subject``'s pseudonyms under every epoch of the agency's audit key, newest first."""
        return load_audit_key(self.directory / "keys" / agency / "audit.key").all_pseudonyms(
            subject
        )

    @property
    def subjects(self) -> list[str]:
        """The demo's data subjects (clear national ids)."""
        return list(self.demo["subjects"])


@dataclass(frozen=True)
class Result:
    """Exit status and output of one command."""

    code: int
    out: str
    err: str


def gateway(capsys: pytest.CaptureFixture[str], *args: str | Path) -> Result:
    """Run ``gateway.cli.main`` in this process and capture what it printed."""
    capsys.readouterr()
    try:
        code = main([str(arg) for arg in args])
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def gateway_process(*args: str | Path, timeout: float = 60) -> Result:
    """Run the command as an operator does, in its own process."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *(str(arg) for arg in args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def assert_error(result: Result, *needles: str, one_line: bool = True) -> None:
    """Exit 1 with a ``gateway: ...`` line on stderr naming every needle; no traceback."""
    assert result.code == 1, result
    assert "Traceback" not in result.out + result.err
    lines = result.err.strip().splitlines()
    assert lines, result
    if one_line:
        assert len(lines) == 1, result.err
    assert lines[0].startswith("gateway: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# -- the store, read the way an auditor (or attacker) reads it -------------------


def connect(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """A plain connection to a store, closed on exit."""
    return contextlib.closing(sqlite3.connect(path))


def records(path: Path) -> dict[int, dict[str, Any]]:
    """Every record of a store by index."""
    with connect(path) as conn:
        rows = conn.execute("SELECT idx, leaf FROM audit_leaves ORDER BY idx").fetchall()
    return {int(index): json.loads(leaf) for index, leaf in rows}


def leaves(path: Path) -> dict[int, bytes]:
    """Every stored leaf's exact bytes by index."""
    with connect(path) as conn:
        rows = conn.execute("SELECT idx, leaf FROM audit_leaves ORDER BY idx").fetchall()
    return {int(index): bytes(leaf) for index, leaf in rows}


def counts(path: Path) -> tuple[int, int]:
    """(leaf rows, checkpoint rows) of a store."""
    with connect(path) as conn:
        leaves_ = conn.execute("SELECT COUNT(*) FROM audit_leaves").fetchone()[0]
        checkpoints = conn.execute("SELECT COUNT(*) FROM audit_checkpoints").fetchone()[0]
    return int(leaves_), int(checkpoints)


def matching(path: Path, **members: Any) -> list[int]:
    """Indices of the records having every member of ``members``, ascending."""
    return [
        index
        for index, record in records(path).items()
        if all(record.get(name) == value for name, value in members.items())
    ]


# -- building the demo ----------------------------------------------------------------


async def _exchange(
    session: aiohttp.ClientSession,
    demo: dict[str, Any],
    consumer: str,
    provider: str,
    subject: str,
) -> None:
    """One allowed exchange about ``subject``; it must succeed."""
    agency = demo["agencies"][consumer]
    if consumer == BENEFITS:
        key, purpose = agency["client_keys"]["caseworker-app"], "benefit-eligibility"
    else:
        key, purpose = agency["client_keys"]["assessment-app"], "tax-assessment"
    service = "income-records" if provider == TAX else "person-basic"
    body: dict[str, Any] = {"national_id": subject}
    if provider == TAX:
        body["year"] = 2025
    headers = {
        "Authorization": f"Bearer {key}",
        "X-Purpose": purpose,
        "X-End-User": "caseworker-17",
    }
    url = f"{agency['url']}/v1/exchange/{provider}/{service}"
    async with session.post(url, json=body, headers=headers) as response:
        assert response.status == 200, await response.text()


async def _more_traffic(directory: Path) -> dict[str, str]:
    """Exchanges about subjects 1 and 2; each agency's verifier key from the officer API."""
    demo = load_demo(directory)
    subjects = demo["subjects"]
    keys: dict[str, str] = {}
    async with running_network(directory, demo), aiohttp.ClientSession() as session:
        await _exchange(session, demo, BENEFITS, TAX, subjects[1])
        await _exchange(session, demo, BENEFITS, TAX, subjects[1])
        await _exchange(session, demo, BENEFITS, POPULATION, subjects[1])
        await _exchange(session, demo, BENEFITS, TAX, subjects[2])
        await _exchange(session, demo, TAX, POPULATION, subjects[2])
        # Anyone can reach /v1/token: its refusal records what was asked, unauthenticated.
        details = [{"type": "data_exchange", "contract": "c", "service": "s", "purpose": EVIL}]
        form = {
            "grant_type": GRANT_TYPE,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": "not.a.jwt",
            "authorization_details": json.dumps(details),
        }
        async with session.post(f"{demo['agencies'][TAX]['url']}/v1/token", data=form) as answer:
            assert answer.status == 401
        for agency, info in demo["agencies"].items():
            headers = {"Authorization": f"Bearer {info['officer_key']}"}
            async with session.get(f"{info['url']}/v1/audit/key", headers=headers) as response:
                assert response.status == 200
                keys[agency] = (await response.text()).strip()
    return keys


@pytest.fixture(scope="module")
def demo_source(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """``gateway demo --once`` plus more traffic, all gateways stopped (stores closed)."""
    directory = tmp_path_factory.mktemp("audit-cli") / "demo"
    ran = gateway_process(
        "demo", "--dir", directory, "--port-base", str(free_port_base()), "--once"
    )
    assert ran.code == 0, ran
    configure_logging("warning", "json")
    keys = asyncio.run(_more_traffic(directory))
    return Demo(directory, load_demo(directory), keys)


@pytest.fixture
def net(demo_source: Demo, tmp_path: Path) -> Demo:
    """A copy of the demo folder this test may change."""
    directory = tmp_path / "demo"
    shutil.copytree(demo_source.directory, directory)
    return Demo(directory, demo_source.demo, demo_source.verifier_keys)


# -- verify ------------------------------------------------------------------------------


def _flip_leaf_byte(path: Path, size: int) -> int:
    index = 3
    with connect(path) as conn, conn:
        leaf = bytearray(
            conn.execute("SELECT leaf FROM audit_leaves WHERE idx = ?", (index,)).fetchone()[0]
        )
        leaf[len(leaf) // 2] ^= 0x01
        conn.execute("UPDATE audit_leaves SET leaf = ? WHERE idx = ?", (bytes(leaf), index))
    return index


def _delete_row(path: Path, size: int) -> int:
    index = 4
    with connect(path) as conn, conn:
        conn.execute("DELETE FROM audit_leaves WHERE idx = ?", (index,))
    return index


def _swap_rows(path: Path, size: int) -> int:
    first, second = 2, 5
    with connect(path) as conn, conn:
        select = "SELECT leaf_hash, leaf FROM audit_leaves WHERE idx = ?"
        a = conn.execute(select, (first,)).fetchone()
        b = conn.execute(select, (second,)).fetchone()
        update = "UPDATE audit_leaves SET leaf_hash = ?, leaf = ? WHERE idx = ?"
        conn.execute(update, (*b, first))
        conn.execute(update, (*a, second))
    return first


def _truncate_tail(path: Path, size: int) -> int:
    keep = size - 3
    with connect(path) as conn, conn:
        conn.execute("DELETE FROM audit_leaves WHERE idx >= ?", (keep,))
    return keep


TAMPERS: Final[dict[str, Callable[[Path, int], int]]] = {
    "flip-one-leaf-byte": _flip_leaf_byte,
    "delete-one-row": _delete_row,
    "swap-two-rows": _swap_rows,
    "truncate-tail": _truncate_tail,
}


class TestVerify:
    """``gateway audit verify``: OK on a sound log, the first bad index on a tampered one."""

    @pytest.mark.parametrize("agency", [TAX, BENEFITS, POPULATION])
    def test_sound_log(self, net: Demo, capsys: pytest.CaptureFixture[str], agency: str) -> None:
        """Exit 0 and the counts of records and checkpoints that are really in the store."""
        size, checkpoints = counts(net.store(agency))
        assert size > 3
        assert checkpoints >= 1
        before = leaves(net.store(agency))
        result = gateway(capsys, "audit", "verify", "--config", net.config(agency))
        assert result.code == 0, result
        assert result.out.strip() == (
            f"audit log {agency}/audit: OK, {size} records, {checkpoints} checkpoints verified"
        )
        assert leaves(net.store(agency)) == before  # verify changes nothing

    @pytest.mark.parametrize("tamper", list(TAMPERS))
    def test_tampered_copy(
        self, net: Demo, capsys: pytest.CaptureFixture[str], tamper: str
    ) -> None:
        """Each tamper makes verify exit 1 naming exactly the first index it spoiled."""
        store = net.store(TAX)
        size, _ = counts(store)
        assert size >= 10
        bad = TAMPERS[tamper](store, size)
        result = gateway(capsys, "audit", "verify", "--config", net.config(TAX))
        assert result.code == 1, result
        assert "Traceback" not in result.out + result.err
        assert f"audit log {TAX}/audit: BAD at index {bad}: " in result.out, result.out
        if tamper == "truncate-tail":
            assert "truncated" in result.out

    def test_published_key(self, net: Demo, capsys: pytest.CaptureFixture[str]) -> None:
        """``--key`` with the key the officer API publishes verifies; another key fails."""
        published = net.verifier_keys[TAX]
        assert published.startswith(f"{TAX}/audit+")
        ok = gateway(capsys, "audit", "verify", "--config", net.config(TAX), "--key", published)
        assert ok.code == 0, ok
        assert " OK, " in ok.out
        impostor = NoteSigner.generate(f"{TAX}/audit").verifier_key()
        for wrong in (impostor, net.verifier_keys[BENEFITS]):
            result = gateway(capsys, "audit", "verify", "--config", net.config(TAX), "--key", wrong)
            assert result.code == 1, (wrong, result)
            assert "BAD at checkpoints" in result.out
            assert "does not verify" in result.out

    def test_corrupt_page(self, net: Demo, capsys: pytest.CaptureFixture[str]) -> None:
        """A store SQLite itself cannot read: exit 1 with one line, not a traceback."""
        store = net.store(TAX)
        with connect(store) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            (root,) = conn.execute(
                "SELECT rootpage FROM sqlite_master WHERE name = 'audit_leaves'"
            ).fetchone()
        data = bytearray(store.read_bytes())
        start = (root - 1) * page_size
        data[start : start + 12] = b"\xff" * 12  # the leaves table's b-tree page header
        store.write_bytes(bytes(data))
        result = gateway(capsys, "audit", "verify", "--config", net.config(TAX))
        assert_error(result, f"{TAX}/audit", "malformed")

    def test_missing_store_is_not_a_sound_log(
        self, net: Demo, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A deleted store is an error, not "OK, 0 records"; and verify does not create one."""
        store = net.store(TAX)
        store.unlink()
        result = gateway(capsys, "audit", "verify", "--config", net.config(TAX))
        assert_error(result, str(store), "no audit store")
        assert not store.exists()
        query = gateway(capsys, "audit", "query", "--config", net.config(TAX))
        assert_error(query, str(store))
        assert not store.exists()


def test_gateway_refuses_to_start_on_truncated_log(net: Demo) -> None:
    """``gateway serve`` on a log shorter than its checkpoint exits 1 at once, naming it."""
    store = net.store(TAX)
    size, _ = counts(store)
    _truncate_tail(store, size)
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(net.config(TAX))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 1, (out, err)
    assert "Traceback" not in out + err
    assert f"gateway: {TAX}/audit: the audit log is shorter than its last checkpoint" in err
    assert f"({size - 3} records, checkpoint of {size})" in err
    assert "truncated" in err


# -- query --------------------------------------------------------------------------------


class TestQuery:
    """``gateway audit query``: filters, three formats, subjects by pseudonym, itself logged."""

    FILTER: Final = ("--kind", "exchange", "--consumer", BENEFITS, "--provider", TAX)

    def expected(self, net: Demo) -> list[int]:
        """Indices of inbound exchanges from social-benefits in the tax store."""
        return matching(net.store(TAX), kind="exchange", consumer=BENEFITS, provider=TAX)

    def test_jsonl(self, net: Demo, capsys: pytest.CaptureFixture[str]) -> None:
        """One JSON object a line: index, exact leaf bytes, leaf hash, parsed record."""
        expected = self.expected(net)
        assert len(expected) >= 5
        result = gateway(
            capsys, "audit", "query", "--config", net.config(TAX), *self.FILTER, "--format", "jsonl"
        )
        assert result.code == 0, result
        stored = leaves(net.store(TAX))
        documents = [json.loads(line) for line in result.out.splitlines()]
        assert [doc["index"] for doc in documents] == expected
        for doc in documents:
            leaf = base64.b64decode(doc["leaf"])
            assert leaf == stored[doc["index"]]
            assert base64.b64decode(doc["leaf_hash"]) == leaf_hash(leaf)
            assert doc["record"] == json.loads(leaf)
            record = doc["record"]
            assert (record["kind"], record["consumer"], record["provider"]) == (
                "exchange",
                BENEFITS,
                TAX,
            )
            assert record["contract"] == INCOME_CONTRACT
            assert record["fields"] == INCOME_FIELDS

    def test_csv(self, net: Demo, capsys: pytest.CaptureFixture[str]) -> None:
        """CSV with the table's header; the csv module reads back the same rows."""
        expected = self.expected(net)
        result = gateway(
            capsys, "audit", "query", "--config", net.config(TAX), *self.FILTER, "--format", "csv"
        )
        assert result.code == 0, result
        rows = list(csv.reader(io.StringIO(result.out)))
        assert tuple(rows[0]) == TABLE_COLUMNS
        body = [dict(zip(TABLE_COLUMNS, row, strict=True)) for row in rows[1:]]
        assert [int(row["index"]) for row in body] == expected
        stored = records(net.store(TAX))
        for row in body:
            record = stored[int(row["index"])]
            assert row["time"] == record["time"]
            assert row["kind"] == "exchange"
            assert row["direction"] == "inbound"
            assert row["outcome"] == "ok"
            assert row["contract"] == INCOME_CONTRACT
            assert row["purpose"] == "benefit-eligibility"
            assert row["fields"].split(",") == INCOME_FIELDS

    def test_table(self, net: Demo, capsys: pytest.CaptureFixture[str]) -> None:
        """An aligned table: a header line, then one line per record in index order."""
        expected = self.expected(net)
        result = gateway(
            capsys, "audit", "query", "--config", net.config(TAX), *self.FILTER, "--format", "table"
        )
        assert result.code == 0, result
        lines = result.out.splitlines()
        assert lines[0].split() == list(TABLE_COLUMNS)
        assert [int(line.split()[0]) for line in lines[1:]] == expected
        for line in lines[1:]:
            cells = line.split()
            assert cells[2:5] == ["exchange", "inbound", "ok"]
            assert cells[-1] == ",".join(INCOME_FIELDS)

    def test_order_limit_and_no_match(self, net: Demo, capsys: pytest.CaptureFixture[str]) -> None:
        """``--order desc --limit 2`` gives the last two; a filter matching nothing, a header."""
        expected = self.expected(net)
        result = gateway(
            capsys,
            "audit",
            "query",
            "--config",
            net.config(TAX),
            *self.FILTER,
            "--order",
            "desc",
            "--limit",
            "2",
            "--format",
            "jsonl",
        )
        assert result.code == 0, result
        assert [json.loads(line)["index"] for line in result.out.splitlines()] == expected[::-1][:2]
        for form in ("table", "csv", "jsonl"):
            empty = gateway(
                capsys,
                "audit",
                "query",
                "--config",
                net.config(TAX),
                "--consumer",
                "no-such-agency",
                "--format",
                form,
            )
            assert empty.code == 0, (form, empty)
            assert "Traceback" not in empty.err
            assert len(empty.out.splitlines()) == (0 if form == "jsonl" else 1), empty.out

    def test_control_characters_are_escaped(
        self, net: Demo, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A requester-chosen purpose with a newline and escapes prints as escaped text."""
        (index,) = matching(net.store(TAX), purpose=EVIL)
        for form in ("table", "csv", "jsonl"):
            result = gateway(
                capsys, "audit", "query", "--config", net.config(TAX), "--format", form
            )
            assert result.code == 0, result
            assert "\x1b" not in result.out, form
            if form == "table":
                lines = result.out.splitlines()
                assert not any(line.startswith("99 ") for line in lines)
                (row,) = [line for line in lines if line.startswith(f"{index} ")]
                assert "x\\x1b[2J\\x1b[31mFAKE\\n99" in row
            if form == "csv":
                rows = list(csv.reader(io.StringIO(result.out)))
                escaped = EVIL.encode("unicode_escape").decode()  # jsonl keeps the exact text
                assert [row[-2] for row in rows if row[0] == str(index)] == [escaped]
            if form == "jsonl":
                documents = [json.loads(line) for line in result.out.splitlines()]
                assert [d["record"]["purpose"] for d in documents if d["index"] == index] == [EVIL]

    def test_subject_matches_by_pseudonym(
        self, net: Demo, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``--subject`` takes a clear id and finds exactly the records under its pseudonym."""
        subject = net.subjects[1]
        (pseudonym,) = net.pseudonyms(TAX, subject)
        before = matching(net.store(TAX), subject=pseudonym)
        assert len(matching(net.store(TAX), subject=pseudonym, kind="exchange")) == 2
        result = gateway(
            capsys,
            "audit",
            "query",
            "--config",
            net.config(TAX),
            "--subject",
            subject,
            "--format",
            "jsonl",
        )
        assert result.code == 0, result
        found = [json.loads(line) for line in result.out.splitlines()]
        # The query's own record (appended first) names the subject by pseudonym too.
        after = matching(net.store(TAX), subject=pseudonym)
        assert [doc["index"] for doc in found] == after
        assert len(after) == len(before) + 1
        assert all(doc["record"]["subject"] == pseudonym for doc in found)
        assert subject not in result.out

    def test_query_is_logged_without_clear_subject(
        self, net: Demo, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The query appends an officer-query record first: who, what, the pseudonym only."""
        subject = net.subjects[2]
        size, _ = counts(net.store(TAX))
        result = gateway(
            capsys,
            "audit",
            "query",
            "--config",
            net.config(TAX),
            "--subject",
            subject,
            "--kind",
            "exchange",
        )
        assert result.code == 0, result
        stored = leaves(net.store(TAX))
        assert len(stored) == size + 1
        leaf = stored[size]
        record = json.loads(leaf)
        assert record["kind"] == "officer-query"
        assert record["direction"] == "local"
        assert record["officer"] == OFFICER
        assert record["index"] == size
        assert record["subject"] == net.pseudonyms(TAX, subject)[0]
        assert record["query"] == {"kind": "exchange", "order": "asc"}
        assert subject.encode() not in leaf
        # The record it added is listed in the table only when the filters select it.
        assert str(size) not in [line.split()[0] for line in result.out.splitlines()[1:]]

    def test_bad_filter(self, net: Demo, capsys: pytest.CaptureFixture[str]) -> None:
        """An unusable filter is one line on stderr naming it."""
        result = gateway(
            capsys, "audit", "query", "--config", net.config(TAX), "--since", "yesterday"
        )
        assert_error(result, "since", "RFC 3339")
        for limit in ("0", "-1"):
            result = gateway(
                capsys, "audit", "query", "--config", net.config(TAX), "--limit", limit
            )
            assert_error(result, "--limit")


# -- prove and check-proof -----------------------------------------------------------------


def _flip_b64(value: str) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode("ascii")


def _tamper_leaf(bundle: dict[str, Any]) -> None:
    bundle["leaf"] = _flip_b64(bundle["leaf"])


def _tamper_proof_hash(bundle: dict[str, Any]) -> None:
    bundle["inclusion_proof"][0] = _flip_b64(bundle["inclusion_proof"][0])


def _tamper_checkpoint(bundle: dict[str, Any]) -> None:
    lines = bundle["checkpoint"].split("\n")
    lines[2] = _flip_b64(lines[2])  # the root hash line
    bundle["checkpoint"] = "\n".join(lines)


def _tamper_record(bundle: dict[str, Any]) -> None:
    bundle["record"]["purpose"] = "marketing"


BUNDLE_TAMPERS: Final[dict[str, Callable[[dict[str, Any]], None]]] = {
    "leaf-byte": _tamper_leaf,
    "proof-hash": _tamper_proof_hash,
    "checkpoint-root": _tamper_checkpoint,
    "parsed-record": _tamper_record,
}


class TestProof:
    """``gateway audit prove`` writes a bundle ``check-proof`` verifies with public data only."""

    def prove(self, net: Demo, capsys: pytest.CaptureFixture[str], index: int) -> Path:
        """``audit prove INDEX --out FILE``; the file."""
        out = net.directory / f"proof-{index}.json"
        result = gateway(
            capsys, "audit", "prove", str(index), "--config", net.config(TAX), "--out", out
        )
        assert result.code == 0, result
        return out

    def check(self, capsys: pytest.CaptureFixture[str], path: Path, key: str) -> Result:
        """``audit check-proof FILE --key KEY``."""
        return gateway(capsys, "audit", "check-proof", path, "--key", key)

    def test_prove_and_check(self, net: Demo, capsys: pytest.CaptureFixture[str]) -> None:
        """The bundle holds the stored leaf; it checks with the published key."""
        index = matching(net.store(TAX), kind="exchange")[0]
        path = self.prove(net, capsys, index)
        bundle = json.loads(path.read_text())
        assert base64.b64decode(bundle["leaf"]) == leaves(net.store(TAX))[index]
        assert bundle["tree_size"] > index
        result = self.check(capsys, path, net.verifier_keys[TAX])
        assert result.code == 0, result
        assert result.out.startswith(f"proof OK: record content is index {index} of {TAX}/audit")
        # prove is an officer query too: logged before it answered
        last = records(net.store(TAX))[max(records(net.store(TAX)))]
        assert last["kind"] == "officer-query"
        assert last["officer"] == OFFICER
        assert last["query"] == {"index": str(index)}

    @pytest.mark.parametrize("tamper", list(BUNDLE_TAMPERS))
    def test_tampered_bundle(
        self, net: Demo, capsys: pytest.CaptureFixture[str], tamper: str
    ) -> None:
        """Any changed byte of leaf, proof, checkpoint or record makes it INVALID (exit 1)."""
        path = self.prove(net, capsys, 3)
        bundle = json.loads(path.read_text())
        assert bundle["inclusion_proof"], "index 3 of a larger tree has a non-empty proof"
        BUNDLE_TAMPERS[tamper](bundle)
        path.write_text(json.dumps(bundle))
        result = self.check(capsys, path, net.verifier_keys[TAX])
        assert result.code == 1, result
        assert result.out.startswith("proof INVALID: ")
        assert "Traceback" not in result.out + result.err

    def test_wrong_key(self, net: Demo, capsys: pytest.CaptureFixture[str]) -> None:
        """Another log's key, or an impostor key of the same name: INVALID."""
        path = self.prove(net, capsys, 3)
        impostor = NoteSigner.generate(f"{TAX}/audit").verifier_key()
        for key in (net.verifier_keys[BENEFITS], impostor):
            result = self.check(capsys, path, key)
            assert result.code == 1, (key, result)
            assert result.out.startswith("proof INVALID: checkpoint: ")

    def test_index_beyond_the_log(self, net: Demo, capsys: pytest.CaptureFixture[str]) -> None:
        """No record there: one clear line, no traceback, no bundle written."""
        out = net.directory / "nothing.json"
        for index in ("100000", "-1"):
            result = gateway(
                capsys, "audit", "prove", index, "--config", net.config(TAX), "--out", out
            )
            assert_error(result, "audit prove", f"the log has no record {index}")
        assert not out.exists()


# -- subject-report ----------------------------------------------------------------------------


class TestSubjectReport:
    """``gateway audit subject-report ID``: the citizen's view of who accessed their data."""

    def test_text(self, net: Demo, capsys: pytest.CaptureFixture[str]) -> None:
        """Every exchange about the subject with purpose, legal basis and fields; no others."""
        subject, other = net.subjects[1], net.subjects[2]
        (pseudonym,) = net.pseudonyms(TAX, subject)
        mine = matching(net.store(TAX), subject=pseudonym, kind="exchange")
        theirs = matching(net.store(TAX), subject=net.pseudonyms(TAX, other)[0])
        assert len(mine) == 2
        assert theirs
        result = gateway(capsys, "audit", "subject-report", subject, "--config", net.config(TAX))
        assert result.code == 0, result
        out = result.out
        listed = [
            int(line.split()[0][1:].rstrip(":"))
            for line in out.splitlines()
            if line.startswith("#")
        ]
        everything = matching(net.store(TAX), subject=pseudonym)  # with the report's own record
        assert listed == everything
        assert f"({len(everything)} records)" in out.splitlines()[0]
        for index in mine:
            paragraph = out.split(f"#{index} ", 1)[1].split("\n#", 1)[0]
            assert f"exchange (ok): {BENEFITS} -> {TAX}" in paragraph
            assert f"purpose benefit-eligibility under contract {INCOME_CONTRACT}" in paragraph
            assert f"legal basis: {BENEFIT_BASIS}" in paragraph
            assert f"fields released: {', '.join(INCOME_FIELDS)}" in paragraph
        for index in theirs:
            assert f"#{index} " not in out
        assert subject not in out
        assert other not in out

    def test_json_bundles_check(self, net: Demo, capsys: pytest.CaptureFixture[str]) -> None:
        """Each access is a proof bundle that ``check_bundle`` accepts with the published key."""
        subject, other = net.subjects[2], net.subjects[1]
        (pseudonym,) = net.pseudonyms(TAX, subject)
        result = gateway(
            capsys,
            "audit",
            "subject-report",
            subject,
            "--config",
            net.config(TAX),
            "--format",
            "json",
        )
        assert result.code == 0, result
        document = json.loads(result.out)
        assert document["origin"] == f"{TAX}/audit"
        assert document["verifier_key"] == net.verifier_keys[TAX]
        accesses = document["accesses"]
        assert [b["index"] for b in accesses] == matching(net.store(TAX), subject=pseudonym)
        exchanges = [b for b in accesses if b["record"]["kind"] == "exchange"]
        # One inbound from social-benefits, one outbound to the population registry.
        assert {(b["record"]["direction"], b["record"]["consumer"]) for b in exchanges} == {
            ("inbound", BENEFITS),
            ("outbound", TAX),
        }
        assert [b["index"] for b in exchanges] == matching(
            net.store(TAX), subject=pseudonym, kind="exchange"
        )
        for bundle in accesses:
            checked = check_bundle(bundle, net.verifier_keys[TAX])
            assert checked.index == bundle["index"]
            assert checked.record is not None
            assert checked.record["subject"] == pseudonym
        for bundle in exchanges:
            assert bundle["record"]["purpose"]
            assert bundle["record"]["legal_basis"]
            assert bundle["record"]["fields"]
        assert net.pseudonyms(TAX, other)[0] not in result.out
        assert subject not in result.out


# -- audit key rotation --------------------------------------------------------------------------


async def _exchange_after_restart(directory: Path, subject: str) -> int:
    """Start the network again, make one income exchange; the provider's audit index."""
    demo = load_demo(directory)
    benefits = demo["agencies"][BENEFITS]
    headers = {
        "Authorization": f"Bearer {benefits['client_keys']['caseworker-app']}",
        "X-Purpose": "benefit-eligibility",
        "X-End-User": "caseworker-17",
    }
    url = f"{benefits['url']}/v1/exchange/{TAX}/income-records"
    async with running_network(directory, demo), aiohttp.ClientSession() as session:
        body = {"national_id": subject, "year": 2025}
        async with session.post(url, json=body, headers=headers) as response:
            assert response.status == 200, await response.text()
            return int(response.headers["X-Provider-Audit-Index"])


def test_rotate_audit_key(net: Demo, capsys: pytest.CaptureFixture[str]) -> None:
    """New records use the new epoch's pseudonym; ``--subject`` finds both epochs."""
    subject = net.subjects[1]
    key_file = net.directory / "keys" / TAX / "audit.key"
    (old,) = net.pseudonyms(TAX, subject)
    old_records = matching(net.store(TAX), subject=old, kind="exchange")
    assert len(old_records) == 2
    rotated = gateway(capsys, "keys", "rotate-audit-key", "--file", key_file)
    assert rotated.code == 0, rotated
    assert "epoch 2" in rotated.out
    new, old_again = net.pseudonyms(TAX, subject)
    assert old_again == old
    assert new != old
    configure_logging("warning", "json")
    index = asyncio.run(_exchange_after_restart(net.directory, subject))
    record = records(net.store(TAX))[index]
    assert record["kind"] == "exchange"
    assert record["subject"] == new
    result = gateway(
        capsys,
        "audit",
        "query",
        "--config",
        net.config(TAX),
        "--subject",
        subject,
        "--kind",
        "exchange",
        "--format",
        "jsonl",
    )
    assert result.code == 0, result
    found = [json.loads(line) for line in result.out.splitlines()]
    assert [doc["index"] for doc in found] == [*old_records, index]
    assert [doc["record"]["subject"] for doc in found] == [old, old, new]
    verified = gateway(capsys, "audit", "verify", "--config", net.config(TAX))
    assert verified.code == 0, verified


# -- operator mistakes ----------------------------------------------------------------------------


class TestErrors:
    """Mistakes an operator can fix: exit 1, one ``gateway: ...`` line, no traceback."""

    def test_missing_config(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Every config-taking command names the missing file."""
        missing = tmp_path / "nowhere" / "gateway.yaml"
        for command in (
            ("verify",),
            ("query",),
            ("prove", "0"),
            ("subject-report", "38001010000"),
        ):
            result = gateway(capsys, "audit", *command, "--config", missing)
            assert_error(result, str(missing))

    def test_bad_config(self, net: Demo, capsys: pytest.CaptureFixture[str]) -> None:
        """A config that does not parse, or names an unknown store scheme."""
        config = net.config(TAX)
        document = yaml.safe_load(config.read_text())
        config.write_text("agency: [unclosed\n")
        # The YAML error's own text follows on more lines (PyYAML's snippet and caret).
        result = gateway(capsys, "audit", "verify", "--config", config)
        assert_error(result, str(config), "not valid YAML", one_line=False)
        document["audit"]["store"] = "mysql://localhost/audit"
        config.write_text(yaml.safe_dump(document))
        assert_error(gateway(capsys, "audit", "query", "--config", config), "audit.store")
        document["audit"] = {"stroe": "sqlite:audit.db"}
        config.write_text(yaml.safe_dump(document))
        assert_error(gateway(capsys, "audit", "verify", "--config", config), "stroe")

    def test_bad_verifier_key(self, net: Demo, capsys: pytest.CaptureFixture[str]) -> None:
        """A string that is no verifier key is a usage error for verify and for check-proof."""
        result = gateway(
            capsys, "audit", "verify", "--config", net.config(TAX), "--key", "nonsense"
        )
        assert_error(result, "--key")
        bundle = net.directory / "proof.json"
        proved = gateway(
            capsys, "audit", "prove", "1", "--config", net.config(TAX), "--out", bundle
        )
        assert proved.code == 0, proved
        result = gateway(capsys, "audit", "check-proof", bundle, "--key", "nonsense")
        assert_error(result, "--key")

    def test_bad_bundle_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A missing or non-JSON bundle file."""
        key = NoteSigner.generate(f"{TAX}/audit").verifier_key()
        missing = tmp_path / "missing.json"
        assert_error(gateway(capsys, "audit", "check-proof", missing, "--key", key), str(missing))
        garbage = tmp_path / "garbage.json"
        garbage.write_text("{not json")
        assert_error(gateway(capsys, "audit", "check-proof", garbage, "--key", key), "not a JSON")

    def test_in_a_real_process(self, net: Demo, tmp_path: Path) -> None:
        """The same one-line errors from the console command in its own process."""
        missing = tmp_path / "gateway.yaml"
        assert_error(gateway_process("audit", "verify", "--config", missing), str(missing))
        result = gateway_process("audit", "verify", "--config", net.config(TAX), "--key", "x")
        assert_error(result, "--key")


@pytest.fixture(autouse=True)
def _quiet_logging() -> Iterator[None]:
    """Commands that start gateways may reconfigure logging; restore the tests' setting."""
    yield
    configure_logging("warning", "json")
