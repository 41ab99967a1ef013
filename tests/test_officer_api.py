"""The privacy officers' API over a live network with traffic (protocol section 6).

Every endpoint answers in the shape section 6 gives (verifier key and
checkpoint as text, records, proofs as JSON) and every filter selects what it
says, compared with the store read directly. Every refusal is problem+json
(3.5) with its status, name and ``audit_id``. Every call, answered or refused,
appends exactly one ``officer-query`` record naming the officer and what was
asked, where a subject appears only as its pseudonym. No answer and no
officer-query record holds a clear subject id or a client API key.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from yarl import URL

from gateway.audit.merkle import verify_consistency, verify_inclusion
from gateway.audit.records import Pseudonymizer, load_audit_key
from gateway.demo.backends import SUBJECTS
from gateway.demo.network import BENEFITS, POPULATION, TAX
from gateway.demo.scenario import run_scenario
from tests.conftest import LiveNetwork
from tests.wire import PURPOSE, Answer, assert_problem, audit_path, audit_records

AGENCIES: Final = (POPULATION, TAX, BENEFITS)
OFFICER: Final = "privacy-office"  # the demo's officer id at every agency
SUBJECT: Final = SUBJECTS[0]  # the demo scenario's subject

KEY: Final = "/v1/audit/key"
CHECKPOINT: Final = "/v1/audit/checkpoint"
RECORDS: Final = "/v1/audit/records"
RECORD: Final = "/v1/audit/records/{index}"
INCLUSION: Final = "/v1/audit/proof/inclusion"
CONSISTENCY: Final = "/v1/audit/proof/consistency"

# Members of exchange records that an officer-query record never has.
EXCHANGE_MEMBERS: Final = (
    "consumer",
    "provider",
    "service",
    "contract",
    "purpose",
    "client",
    "end_user",
    "fields",
    "jti",
    "evidence",
)

# Every officer API answer of this module, for the privacy checks at the end.
SEEN: list[Answer] = []


@dataclass
class Call:
    """One officer API call: the answer and the records it appended to the log."""

    answer: Answer
    appended: list[dict[str, Any]]

    @property
    def json(self) -> Any:
        """The answer's JSON body."""
        return self.answer.json

    def record(self) -> dict[str, Any]:
        """The one record the call appended."""
        assert len(self.appended) == 1, self.appended
        return self.appended[0]


# -- the network and its traffic ---------------------------------------------------


async def _exchange(session: aiohttp.ClientSession, net: LiveNetwork, subject: str) -> None:
    """A caseworker at social-benefits asks tax-authority about ``subject``."""
    benefits = net.agency(BENEFITS)
    async with session.post(
        f"{benefits['url']}/v1/exchange/{TAX}/income-records",
        json={"national_id": subject, "year": 2025},
        headers={
            "Authorization": f"Bearer {benefits['client_keys']['caseworker-app']}",
            "X-Purpose": PURPOSE,
            "X-End-User": "caseworker-17",
        },
    ) as response:
        assert response.status == 200, await response.text()


async def _traffic(net: LiveNetwork) -> None:
    await run_scenario(net.directory, net.demo, net.registry)
    async with aiohttp.ClientSession() as session:
        for subject in net.demo["subjects"][1:3]:
            await _exchange(session, net, subject)


@pytest.fixture(scope="module")
def net(network: LiveNetwork) -> LiveNetwork:
    """The shared live network after the demo scenario and exchanges about three subjects."""
    asyncio.run(_traffic(network))
    return network


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client session per test."""
    async with aiohttp.ClientSession() as client:
        yield client


def pseudonymizer(net: LiveNetwork, agency: str) -> Pseudonymizer:
    """The agency's audit key, to know what pseudonym a subject has in its log."""
    return load_audit_key(net.directory / net.agency(agency)["keys"] / "audit.key")


def log(net: LiveNetwork, agency: str) -> list[dict[str, Any]]:
    """Every record of the agency's store, read directly; position = index."""
    records: list[dict[str, Any]] = []
    for index, leaf in audit_records(audit_path(net, agency)):
        assert index == len(records)
        records.append(json.loads(leaf))
    return records


# -- calling the officer API ------------------------------------------------------

Query = Sequence[tuple[str, str]] | dict[str, str]


def bearer(net: LiveNetwork, agency: str) -> str:
    """The Authorization header of the agency's privacy officer."""
    return f"Bearer {net.agency(agency)['officer_key']}"


async def call(
    session: aiohttp.ClientSession,
    net: LiveNetwork,
    agency: str,
    path: str,
    query: Query | None = None,
    *,
    authorization: str | bool | None = True,
) -> Call:
    """GET ``path`` (already percent-encoded) as the officer (or with ``authorization``)."""
    store = audit_path(net, agency)
    before = len(audit_records(store))
    target = net.url(agency) + path + (f"?{urlencode(query)}" if query else "")
    if authorization is True:
        authorization = bearer(net, agency)
    headers = {"Authorization": authorization} if isinstance(authorization, str) else {}
    # Sent exactly as written: some cases are deliberately odd percent-encodings.
    async with session.get(URL(target, encoded=True), headers=headers) as response:
        raw = await response.read()
        answer = Answer(response.status, dict(response.headers), raw, response.content_type)
    SEEN.append(answer)
    appended = [json.loads(leaf) for _, leaf in audit_records(store)[before:]]
    return Call(answer, appended)


async def ok(
    session: aiohttp.ClientSession,
    net: LiveNetwork,
    agency: str,
    path: str,
    query: Query | None = None,
) -> Call:
    """A call that must be answered 200 (no-store), with its one officer-query record."""
    done = await call(session, net, agency, path, query)
    assert done.answer.status == 200, done.answer.raw[:300]
    assert done.answer.headers.get("Cache-Control") == "no-store"
    record = done.record()
    assert record["outcome"] == "ok"
    assert record["status"] == 200
    assert record["officer"] == OFFICER
    return done


async def all_pages(
    session: aiohttp.ClientSession,
    net: LiveNetwork,
    agency: str,
    query: dict[str, str],
    *,
    subject: str | None = None,
) -> list[dict[str, Any]]:
    """Every record matching ``query`` (and ``subject``), following ``next_cursor`` to its
    end; each page is one call, recorded with what it asked (the subject as pseudonym)."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    asked = {} if subject is None else {"subject": subject}
    pseudonym = None if subject is None else pseudonymizer(net, agency)(subject)
    while True:
        sent = {**query, **cursor_of(cursor)}
        done = await ok(session, net, agency, RECORDS, {**sent, **asked})
        assert_officer_record(done.record(), RECORDS, query=sent, subject=pseudonym)
        page = done.json
        assert set(page) == {"records", "next_cursor"}
        items.extend(page["records"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def cursor_of(cursor: str | None) -> dict[str, str]:
    """The ``cursor`` parameter, or none."""
    return {} if cursor is None else {"cursor": cursor}


def indices(items: list[dict[str, Any]], below: int | None = None) -> list[int]:
    """The indices of served records, those under ``below`` only if given."""
    return [item["index"] for item in items if below is None or item["index"] < below]


def assert_officer_record(
    record: dict[str, Any],
    route: str,
    *,
    officer: str | None = OFFICER,
    status: int = 200,
    problem: str | None = None,
    query: dict[str, str] | None = None,
    subject: str | None = None,
) -> None:
    """``record`` is the officer-query record of one call of ``route``."""
    assert record["kind"] == "officer-query", record
    assert record["direction"] == "local"
    assert record.get("officer") == officer
    assert record["detail"] == route
    assert record["status"] == status
    assert record.get("problem") == problem
    assert record["outcome"] == ("ok" if problem is None else "refused")
    assert record.get("query") == query
    assert record.get("subject") == subject
    assert isinstance(record["latency_us"], int)
    assert not [member for member in EXCHANGE_MEMBERS if member in record], record


# -- RFC 9162 and C2SP, for checking answers -----------------------------------------


def leaf_hash(leaf: bytes) -> bytes:
    """SHA-256(0x00 || leaf)."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def tree_root(hashes: Sequence[bytes]) -> bytes:
    """RFC 9162 2.1.1 MTH over leaf hashes."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    split = 1 << ((len(hashes) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + tree_root(hashes[:split]) + tree_root(hashes[split:])).digest()


def store_hashes(net: LiveNetwork, agency: str) -> list[bytes]:
    """Leaf hashes of the store, read directly."""
    return [leaf_hash(leaf) for _, leaf in audit_records(audit_path(net, agency))]


@dataclass(frozen=True)
class Checkpoint:
    """A parsed, verified checkpoint."""

    origin: str
    size: int
    root: bytes


def open_checkpoint(note: str, verifier_key: str) -> Checkpoint:
    """Check the C2SP note's Ed25519 signature by ``verifier_key``; its three lines."""
    name, key_id, encoded = verifier_key.split("+", 2)
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(encoded)[1:])
    text, _, signatures = note.rpartition("\n\n")
    text += "\n"
    [line] = signatures.removesuffix("\n").split("\n")
    dash, signer, signature_b64 = line.split(" ")
    assert (dash, signer) == ("\u2014", name)
    signature = base64.b64decode(signature_b64, validate=True)
    assert signature[:4].hex() == key_id
    public.verify(signature[4:], text.encode())  # raises if it does not verify
    origin, size, root = text.removesuffix("\n").split("\n")
    assert size == str(int(size))
    return Checkpoint(origin, int(size), base64.b64decode(root, validate=True))


async def latest_checkpoint(
    session: aiohttp.ClientSession, net: LiveNetwork, agency: str
) -> Checkpoint:
    """The agency's latest checkpoint, verified with its published key."""
    key = (await ok(session, net, agency, KEY)).answer.raw.decode().removesuffix("\n")
    note = (await ok(session, net, agency, CHECKPOINT)).answer.raw.decode()
    return open_checkpoint(note, key)


# -- success shapes -------------------------------------------------------------------


@pytest.mark.parametrize("agency", AGENCIES)
async def test_verifier_key(session: aiohttp.ClientSession, net: LiveNetwork, agency: str) -> None:
    """``name+keyid+base64(0x01 || key)``, text/plain; the key id is the C2SP hash."""
    done = await ok(session, net, agency, KEY)
    assert done.answer.content_type == "text/plain"
    text = done.answer.raw.decode("ascii")
    assert text.endswith("\n")
    assert text.count("\n") == 1
    name, key_id, encoded = text.removesuffix("\n").split("+", 2)
    assert name == f"{agency}/audit"
    assert len(key_id) == 8
    assert key_id == key_id.lower()
    material = base64.b64decode(encoded, validate=True)
    assert base64.b64encode(material).decode() == encoded
    assert len(material) == 33
    assert material[0] == 0x01
    digest = hashlib.sha256(name.encode() + b"\n" + material).digest()
    assert digest[:4].hex() == key_id
    assert_officer_record(done.record(), KEY)


@pytest.mark.parametrize("agency", AGENCIES)
async def test_checkpoint(session: aiohttp.ClientSession, net: LiveNetwork, agency: str) -> None:
    """A signed note: origin ``{agency}/audit``, size, root of the log's first ``size`` leaves."""
    key = (await ok(session, net, agency, KEY)).answer.raw.decode().removesuffix("\n")
    done = await ok(session, net, agency, CHECKPOINT)
    assert done.answer.content_type == "text/plain"
    note = done.answer.raw.decode("utf-8")
    lines = note.split("\n")
    assert lines[0] == f"{agency}/audit"
    assert lines[3] == ""
    assert lines[4].startswith(f"\u2014 {agency}/audit ")
    assert lines[5:] == [""]
    checkpoint = open_checkpoint(note, key)
    assert checkpoint.origin == f"{agency}/audit"
    hashes = store_hashes(net, agency)
    assert 0 < checkpoint.size <= len(hashes)
    assert tree_root(hashes[: checkpoint.size]) == checkpoint.root
    assert_officer_record(done.record(), CHECKPOINT)


@pytest.mark.parametrize("agency", AGENCIES)
async def test_records_document(
    session: aiohttp.ClientSession, net: LiveNetwork, agency: str
) -> None:
    """``{"records": [{index, leaf, leaf_hash, record}], "next_cursor"}``: leaf = JCS bytes."""
    stored = audit_records(audit_path(net, agency))
    done = await ok(session, net, agency, RECORDS, {"limit": "2"})
    assert done.answer.content_type == "application/json"
    assert set(done.json) == {"records", "next_cursor"}
    assert len(done.json["records"]) == 2
    assert isinstance(done.json["next_cursor"], str)
    assert_officer_record(done.record(), RECORDS, query={"limit": "2"})
    everything = await all_pages(session, net, agency, {"limit": "1000"})
    served = {item["index"]: item for item in everything}
    assert indices(everything) == sorted(served)
    for index, leaf in stored:
        item = served[index]
        assert set(item) == {"index", "leaf", "leaf_hash", "record"}
        assert base64.b64decode(item["leaf"], validate=True) == leaf
        assert base64.b64decode(item["leaf_hash"], validate=True) == leaf_hash(leaf)
        assert item["record"] == json.loads(leaf)
        assert item["record"]["index"] == index


async def test_record_by_index(session: aiohttp.ClientSession, net: LiveNetwork) -> None:
    """``/v1/audit/records/{index}`` is the same document as in the list."""
    listed = (await ok(session, net, TAX, RECORDS, {"limit": "5"})).json["records"]
    for item in listed:
        done = await ok(session, net, TAX, f"/v1/audit/records/{item['index']}")
        assert done.answer.content_type == "application/json"
        assert done.json == item
        assert_officer_record(done.record(), RECORD, query={"index": str(item["index"])})


# -- filters ----------------------------------------------------------------------------


@pytest.mark.parametrize("agency", [TAX, BENEFITS])
@pytest.mark.parametrize("member", ["consumer", "provider", "contract", "purpose", "outcome"])
async def test_equality_filter(
    session: aiohttp.ClientSession, net: LiveNetwork, agency: str, member: str
) -> None:
    """Each filter selects exactly the records with that value (compared with the store)."""
    snapshot = log(net, agency)
    values = sorted({record[member] for record in snapshot if member in record})
    assert values, f"no {member} in the {agency} log"
    for value in [*values, "no-such-value"]:
        expected = [index for index, record in enumerate(snapshot) if record.get(member) == value]
        served = await all_pages(session, net, agency, {member: value, "limit": "1000"})
        assert indices(served, len(snapshot)) == expected, (member, value)
        assert all(item["record"][member] == value for item in served)


@pytest.mark.parametrize("agency", AGENCIES)
async def test_subject_filter(
    session: aiohttp.ClientSession, net: LiveNetwork, agency: str
) -> None:
    """``subject`` takes a clear id and matches its pseudonym; the lookup records only that."""
    pseudonyms = pseudonymizer(net, agency)
    for subject in net.demo["subjects"][:3]:
        snapshot = log(net, agency)
        expected = [
            index
            for index, record in enumerate(snapshot)
            if record.get("subject") in pseudonyms.all_pseudonyms(subject)
        ]
        served = await all_pages(session, net, agency, {"limit": "1000"}, subject=subject)
        assert indices(served, len(snapshot)) == expected
        assert subject.encode() not in SEEN[-1].raw
        assert subject not in json.dumps(log(net, agency)[-1])
    # The scenario's subject reached every gateway.
    first = net.demo["subjects"][0]
    found = await ok(session, net, agency, RECORDS, {"subject": first})
    assert any(item["record"]["kind"] != "officer-query" for item in found.json["records"])


async def test_a_subject_lookup_is_found_by_the_next_one(
    session: aiohttp.ClientSession, net: LiveNetwork
) -> None:
    """An officer's lookup of a subject is itself a record about that subject."""
    stranger = "".join(secrets.choice("0123456789") for _ in range(11))
    first = await ok(session, net, POPULATION, RECORDS, {"subject": stranger})
    assert first.json == {"records": [], "next_cursor": None}
    second = await ok(session, net, POPULATION, RECORDS, {"subject": stranger})
    [item] = second.json["records"]
    assert item["record"] == first.record()


async def test_time_filters(session: aiohttp.ClientSession, net: LiveNetwork) -> None:
    """``since`` is inclusive, ``until`` exclusive; any RFC 3339 offset means the same instant."""
    snapshot = log(net, BENEFITS)
    times = sorted({record["time"] for record in snapshot})
    assert len(times) >= 3
    since, until = times[1], times[-2]

    def shifted(text: str) -> str:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
        return moment.astimezone(timezone(timedelta(hours=2))).isoformat(timespec="milliseconds")

    cases: list[tuple[dict[str, str], Callable[[str], bool]]] = [
        ({"since": since}, lambda t: t >= since),
        ({"until": until}, lambda t: t < until),
        ({"since": since, "until": until}, lambda t: since <= t < until),
        ({"since": shifted(since), "until": shifted(until)}, lambda t: since <= t < until),
    ]
    for query, keep in cases:
        expected = [index for index, record in enumerate(snapshot) if keep(record["time"])]
        served = await all_pages(session, net, BENEFITS, {**query, "limit": "1000"})
        assert indices(served, len(snapshot)) == expected, query


@pytest.mark.parametrize("agency", AGENCIES)
async def test_paging_ascending(
    session: aiohttp.ClientSession, net: LiveNetwork, agency: str
) -> None:
    """Pages of ``limit`` records, oldest first, until ``next_cursor`` is null."""
    size = len(log(net, agency))
    items = await all_pages(session, net, agency, {"limit": "3"})
    served = indices(items)
    assert served == sorted(set(served))
    assert served[:size] == list(range(size))
    # The default order is ascending too.
    page = (await ok(session, net, agency, RECORDS, {"limit": "3"})).json
    assert indices(page["records"]) == [0, 1, 2]
    assert isinstance(page["next_cursor"], str)


async def test_paging_descending(session: aiohttp.ClientSession, net: LiveNetwork) -> None:
    """``order=desc`` starts at the newest record and pages down to index 0."""
    size = len(log(net, TAX))
    items = await all_pages(session, net, TAX, {"limit": "4", "order": "desc"})
    served = indices(items)
    assert served == sorted(set(served), reverse=True)
    assert served[0] >= size - 1
    assert served[-size:] == list(range(size - 1, -1, -1))


async def test_paging_with_a_filter(session: aiohttp.ClientSession, net: LiveNetwork) -> None:
    """Filters hold on every page, both ways; each page names its cursor in the record."""
    snapshot = log(net, BENEFITS)
    expected = [i for i, record in enumerate(snapshot) if record.get("outcome") == "refused"]
    assert len(expected) > 2
    for order, ordered in (("asc", expected), ("desc", expected[::-1])):
        cursor: str | None = None
        served: list[int] = []
        while True:
            query = {"outcome": "refused", "limit": "2", "order": order, **cursor_of(cursor)}
            done = await ok(session, net, BENEFITS, RECORDS, query)
            assert len(done.json["records"]) <= 2
            assert_officer_record(done.record(), RECORDS, query=query)
            served += indices(done.json["records"])
            cursor = done.json["next_cursor"]
            if cursor is None:
                break
        assert [index for index in served if index < len(snapshot)] == ordered


async def test_cursor_of_the_other_order_is_refused(
    session: aiohttp.ClientSession, net: LiveNetwork
) -> None:
    """A cursor continues the order it was issued for only."""
    cursor = (await ok(session, net, TAX, RECORDS, {"limit": "1"})).json["next_cursor"]
    done = await call(session, net, TAX, RECORDS, {"cursor": cursor, "order": "desc"})
    document = assert_problem(done.answer, "bad-request", 400)
    assert document["audit_id"] == done.record()["index"]


# -- proofs -----------------------------------------------------------------------------


@pytest.mark.parametrize("agency", AGENCIES)
async def test_inclusion_proof(
    session: aiohttp.ClientSession, net: LiveNetwork, agency: str
) -> None:
    """``{index, tree_size, hashes}``; it leads from the leaf to the checkpoint's root."""
    checkpoint = await latest_checkpoint(session, net, agency)
    hashes = store_hashes(net, agency)
    size = checkpoint.size
    for index in sorted({0, size // 2, size - 1}):
        query = {"index": str(index), "tree_size": str(size)}
        done = await ok(session, net, agency, INCLUSION, query)
        assert done.answer.content_type == "application/json"
        proof = done.json
        assert set(proof) == {"index", "tree_size", "hashes"}
        assert (proof["index"], proof["tree_size"]) == (index, size)
        path = [base64.b64decode(item, validate=True) for item in proof["hashes"]]
        verify_inclusion(index, size, hashes[index], path, checkpoint.root)
        assert_officer_record(done.record(), INCLUSION, query=query)


@pytest.mark.parametrize("agency", AGENCIES)
async def test_consistency_proof(
    session: aiohttp.ClientSession, net: LiveNetwork, agency: str
) -> None:
    """``{first, second, hashes}``; earlier trees are prefixes of the checkpoint's."""
    checkpoint = await latest_checkpoint(session, net, agency)
    hashes = store_hashes(net, agency)
    second = checkpoint.size
    for first in sorted({1, second // 2 or 1, second - 1 or 1, second}):
        query = {"first": str(first), "second": str(second)}
        done = await ok(session, net, agency, CONSISTENCY, query)
        assert done.answer.content_type == "application/json"
        proof = done.json
        assert set(proof) == {"first", "second", "hashes"}
        assert (proof["first"], proof["second"]) == (first, second)
        path = [base64.b64decode(item, validate=True) for item in proof["hashes"]]
        verify_consistency(first, second, path, tree_root(hashes[:first]), checkpoint.root)
        assert_officer_record(done.record(), CONSISTENCY, query=query)


# -- refusals ---------------------------------------------------------------------------

BIG: Final = str(10**15)  # far beyond any test log


@dataclass(frozen=True)
class Refusal:
    """One refused call and the record it must leave."""

    path: str
    query: tuple[tuple[str, str], ...]
    status: int
    problem: str
    route: str
    logged: dict[str, str] | None = None
    auth: str = "officer"
    agency: str = BENEFITS


REFUSALS: Final = {
    # -- who asks
    "no-authorization": Refusal(KEY, (), 401, "unauthorized", KEY, auth="none"),
    "empty-bearer": Refusal(CHECKPOINT, (), 401, "unauthorized", CHECKPOINT, auth="empty"),
    "basic-scheme": Refusal(RECORDS, (), 401, "unauthorized", RECORDS, auth="basic"),
    "unknown-key": Refusal("/v1/audit/records/0", (), 401, "unauthorized", RECORD, auth="unknown"),
    "another-agencys-officer": Refusal(
        INCLUSION,
        (("index", "0"), ("tree_size", "1")),
        401,
        "unauthorized",
        INCLUSION,
        auth="foreign",
        agency=TAX,
    ),
    "client-key": Refusal(
        RECORDS, (("subject", SUBJECT),), 403, "forbidden", RECORDS, auth="client"
    ),
    "client-key-tax": Refusal(
        CONSISTENCY,
        (("first", "1"), ("second", "1")),
        403,
        "forbidden",
        CONSISTENCY,
        auth="client",
        agency=TAX,
    ),
    # -- records
    "unknown-filter": Refusal(RECORDS, (("national_id", SUBJECT),), 400, "bad-request", RECORDS),
    "limit-zero": Refusal(RECORDS, (("limit", "0"),), 400, "bad-request", RECORDS, {"limit": "0"}),
    "limit-too-large": Refusal(
        RECORDS, (("limit", "1001"),), 400, "bad-request", RECORDS, {"limit": "1001"}
    ),
    "limit-not-a-number": Refusal(
        RECORDS, (("limit", "ten"),), 400, "bad-request", RECORDS, {"limit": "ten"}
    ),
    "limit-superscript-digit": Refusal(
        RECORDS, (("limit", "\u00b2"),), 400, "bad-request", RECORDS, {"limit": "\u00b2"}
    ),
    "order": Refusal(
        RECORDS, (("order", "sideways"),), 400, "bad-request", RECORDS, {"order": "sideways"}
    ),
    "since-not-a-time": Refusal(
        RECORDS, (("since", "yesterday"),), 400, "bad-request", RECORDS, {"since": "yesterday"}
    ),
    "until-without-offset": Refusal(
        RECORDS,
        (("until", "2026-01-01T00:00:00"),),
        400,
        "bad-request",
        RECORDS,
        {"until": "2026-01-01T00:00:00"},
    ),
    "since-before-year-1-in-utc": Refusal(
        RECORDS,
        (("since", "0001-01-01T00:00:00+01:00"),),
        400,
        "bad-request",
        RECORDS,
        {"since": "0001-01-01T00:00:00+01:00"},
    ),
    "cursor-not-issued": Refusal(
        RECORDS,
        (("cursor", "not-a-cursor!"),),
        400,
        "bad-request",
        RECORDS,
        {"cursor": "not-a-cursor!"},
    ),
    "repeated-parameter": Refusal(
        RECORDS, (("consumer", TAX), ("consumer", BENEFITS)), 400, "bad-request", RECORDS
    ),
    "value-too-long": Refusal(RECORDS, (("consumer", "x" * 257),), 400, "bad-request", RECORDS),
    # -- one record
    "index-not-a-number": Refusal("/v1/audit/records/abc", (), 400, "bad-request", RECORD),
    "index-negative": Refusal("/v1/audit/records/-1", (), 400, "bad-request", RECORD),
    "index-exponent": Refusal("/v1/audit/records/1e3", (), 400, "bad-request", RECORD),
    "index-superscript-digit": Refusal("/v1/audit/records/%C2%B2", (), 400, "bad-request", RECORD),
    "index-20-digits": Refusal(f"/v1/audit/records/{'1' * 20}", (), 400, "bad-request", RECORD),
    "unknown-record": Refusal(
        f"/v1/audit/records/{BIG}", (), 404, "not-found", RECORD, {"index": BIG}
    ),
    "record-beyond-64-bits": Refusal(
        f"/v1/audit/records/{'9' * 19}", (), 404, "not-found", RECORD, {"index": "9" * 19}
    ),
    "record-at-2**63-1": Refusal(
        f"/v1/audit/records/{2**63 - 1}", (), 404, "not-found", RECORD, {"index": str(2**63 - 1)}
    ),
    # -- inclusion proofs
    "inclusion-without-index": Refusal(
        INCLUSION, (("tree_size", "1"),), 400, "bad-request", INCLUSION, {"tree_size": "1"}
    ),
    "inclusion-index-not-a-number": Refusal(
        INCLUSION,
        (("index", "one"), ("tree_size", "1")),
        400,
        "bad-request",
        INCLUSION,
        {"index": "one", "tree_size": "1"},
    ),
    "inclusion-index-at-tree-size": Refusal(
        INCLUSION,
        (("index", "1"), ("tree_size", "1")),
        400,
        "bad-request",
        INCLUSION,
        {"index": "1", "tree_size": "1"},
    ),
    "inclusion-empty-tree": Refusal(
        INCLUSION,
        (("index", "0"), ("tree_size", "0")),
        400,
        "bad-request",
        INCLUSION,
        {"index": "0", "tree_size": "0"},
    ),
    "inclusion-beyond-the-log": Refusal(
        INCLUSION,
        (("index", "0"), ("tree_size", BIG)),
        400,
        "bad-request",
        INCLUSION,
        {"index": "0", "tree_size": BIG},
    ),
    "inclusion-beyond-64-bits": Refusal(
        INCLUSION,
        (("index", "0"), ("tree_size", str(2**63))),
        400,
        "bad-request",
        INCLUSION,
        {"index": "0", "tree_size": str(2**63)},
    ),
    "inclusion-repeated-parameter": Refusal(
        INCLUSION,
        (("index", "0"), ("index", "0"), ("tree_size", "1")),
        400,
        "bad-request",
        INCLUSION,
    ),
    # -- consistency proofs
    "consistency-first-zero": Refusal(
        CONSISTENCY,
        (("first", "0"), ("second", "1")),
        400,
        "bad-request",
        CONSISTENCY,
        {"first": "0", "second": "1"},
    ),
    "consistency-first-after-second": Refusal(
        CONSISTENCY,
        (("first", "2"), ("second", "1")),
        400,
        "bad-request",
        CONSISTENCY,
        {"first": "2", "second": "1"},
    ),
    "consistency-beyond-the-log": Refusal(
        CONSISTENCY,
        (("first", "1"), ("second", BIG)),
        400,
        "bad-request",
        CONSISTENCY,
        {"first": "1", "second": BIG},
    ),
    "consistency-without-second": Refusal(
        CONSISTENCY, (("first", "1"),), 400, "bad-request", CONSISTENCY, {"first": "1"}
    ),
    "consistency-second-not-a-number": Refusal(
        CONSISTENCY,
        (("first", "1"), ("second", "two")),
        400,
        "bad-request",
        CONSISTENCY,
        {"first": "1", "second": "two"},
    ),
    "consistency-repeated-parameter": Refusal(
        CONSISTENCY,
        (("first", "1"), ("second", "1"), ("second", "2")),
        400,
        "bad-request",
        CONSISTENCY,
    ),
}


def authorization_for(net: LiveNetwork, refusal: Refusal) -> str | bool | None:
    """The Authorization header a refusal case sends (None: none at all)."""
    entry = net.agency(refusal.agency)
    return {
        "officer": True,
        "none": None,
        "empty": "Bearer ",
        "basic": f"Basic {entry['officer_key']}",
        "unknown": f"Bearer {secrets.token_urlsafe(24)}",
        "foreign": bearer(net, BENEFITS if refusal.agency != BENEFITS else TAX),
        "client": f"Bearer {next(iter(entry['client_keys'].values()), '')}",
    }[refusal.auth]


@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_refusal(session: aiohttp.ClientSession, net: LiveNetwork, case: str) -> None:
    """problem+json with status, name and audit_id; one officer-query record; no-store."""
    refusal = REFUSALS[case]
    done = await call(
        session,
        net,
        refusal.agency,
        refusal.path,
        refusal.query,
        authorization=authorization_for(net, refusal),
    )
    document = assert_problem(done.answer, refusal.problem, refusal.status)
    assert done.answer.headers.get("Cache-Control") == "no-store"
    record = done.record()
    assert document["audit_id"] == record["index"]
    officer = OFFICER if refusal.auth == "officer" else None
    assert_officer_record(
        record,
        refusal.route,
        officer=officer,
        status=refusal.status,
        problem=refusal.problem,
        query=refusal.logged,
    )
    # The detail may name a parameter and a size, never echo what the officer typed.
    for _, value in refusal.query:
        if (len(value) > 8 and not value.isdigit()) or value == SUBJECT:
            assert value not in document["detail"]


# -- privacy ----------------------------------------------------------------------------


def spellings(value: str) -> Iterator[bytes]:
    """``value`` as is, URL-encoded, hex, and base64/base64url at each byte alignment."""
    raw = value.encode()
    yield raw
    yield urlencode({"": value})[1:].encode()
    yield raw.hex().encode()
    for offset in range(3):
        padded = b"\0" * offset + raw
        end = len(padded) // 3 * 4
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(padded)[4 if offset else 0 : end]
            if len(text) >= 8:
                yield text


def secrets_of(net: LiveNetwork) -> dict[str, str]:
    """Every clear subject id and client API key of the network, by a label."""
    found = {f"subject {subject}": subject for subject in net.demo["subjects"]}
    for agency in AGENCIES:
        for client, key in net.agency(agency)["client_keys"].items():
            found[f"client key {agency}/{client}"] = key
    return found


def leaks(net: LiveNetwork, texts: dict[str, bytes]) -> list[tuple[str, str]]:
    """(secret, where) for every secret found in any of ``texts``."""
    return [
        (label, where)
        for label, value in secrets_of(net).items()
        for spelling in spellings(value)
        for where, text in texts.items()
        if spelling in text
    ]


async def test_no_clear_subject_or_client_key_anywhere(
    session: aiohttp.ClientSession, net: LiveNetwork
) -> None:
    """Answers and officer-query records hold no clear subject id and no client API key,
    even when an officer puts an id where it does not belong or a client key is sent."""
    subjects = net.demo["subjects"]
    for agency in AGENCIES:
        client_keys = list(net.agency(BENEFITS)["client_keys"].values())
        for subject in subjects:
            await ok(session, net, agency, RECORDS, {"subject": subject})
            await call(session, net, agency, RECORDS, {"subject": subject, "limit": "0"})
            await call(session, net, agency, RECORDS, [("subject", subject)] * 2)
            await call(session, net, agency, RECORDS, {"national_id": subject})
            await call(session, net, agency, RECORDS, {"subject": subject, "order": "x"})
            await call(
                session, net, agency, INCLUSION, {"index": "0", "tree_size": "1", "s": subject}
            )
            await call(
                session, net, agency, CONSISTENCY, {"first": "1", "second": "1", "s": subject}
            )
            await call(session, net, agency, f"/v1/audit/records/x{subject}")
        for key in client_keys:
            await call(
                session,
                net,
                agency,
                RECORDS,
                {"subject": subjects[0]},
                authorization=f"Bearer {key}",
            )
            await call(session, net, agency, KEY, {"cursor": key})
        await all_pages(session, net, agency, {"limit": "1000"})
        await latest_checkpoint(session, net, agency)

    answers: dict[str, bytes] = {}
    for number, answer in enumerate(SEEN):
        answers[f"answer #{number}"] = answer.raw + json.dumps(dict(answer.headers)).encode()
        if answer.content_type == "application/json" and answer.status == 200:
            document = answer.json
            for item in document.get("records", [document]):
                if item.get("leaf"):
                    answers[f"answer #{number} leaf {item['index']}"] = base64.b64decode(
                        item["leaf"]
                    )
    assert not leaks(net, answers)

    records: dict[str, bytes] = {}
    for agency in AGENCIES:
        for index, leaf in audit_records(audit_path(net, agency)):
            if json.loads(leaf)["kind"] == "officer-query":
                records[f"{agency}#{index}"] = leaf
    assert len(records) > 100
    assert not leaks(net, records)
