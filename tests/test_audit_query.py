"""Officers' searches of the log: parameter validation, bound SQL, paging over both stores."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Callable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.log import AuditLog
from gateway.audit.query import (
    EQUALITY_FILTERS,
    MAX_LIMIT,
    QUERY_PARAMETERS,
    QueryError,
    RecordQuery,
    encode_cursor,
    parse_query,
)
from gateway.audit.records import Pseudonymizer, record_time
from gateway.audit.store import SQLITE_SCHEMA, find_sql
from tests.stores import (
    SUBJECT,
    T0,
    LogFactory,
    append_all,
    logs,
    make_record,
    store_url,
)

__all__ = ["logs", "store_url"]  # fixtures used by name

KEY_1 = bytes(range(32))
KEY_2 = bytes(range(32, 64))


def clear(value: str) -> list[str]:
    """A stand-in for Pseudonymizer.all_pseudonyms: marks the id so the test can see it."""
    return [f"p1({value})", f"p2({value})"]


def raw_cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


class TestParseQuery:
    def test_defaults(self) -> None:
        """No parameters: every record, oldest first, 100 a page; empty values are absent."""
        query = parse_query({"consumer": "", "order": "", "limit": ""}, clear)
        assert query == RecordQuery()
        assert (query.order, query.limit, query.after) == ("asc", 100, None)

    def test_filters(self) -> None:
        """Every filter is carried; the subject becomes its pseudonyms; times are normalised."""
        params = {name: f"value-{name}" for name in EQUALITY_FILTERS}
        query = parse_query(
            {
                **params,
                "subject": SUBJECT,
                "since": "2026-11-26T13:00:00+01:00",
                "until": "2026-11-26T12:30:00.5Z",
                "limit": "7",
                "order": "desc",
            },
            clear,
        )
        for name in EQUALITY_FILTERS:
            assert getattr(query, name) == f"value-{name}"
        assert query.subjects == (f"p1({SUBJECT})", f"p2({SUBJECT})")
        assert query.since == "2026-11-26T12:00:00.000Z"
        assert query.until == "2026-11-26T12:30:00.500Z"
        assert (query.limit, query.order) == (7, "desc")

    @pytest.mark.parametrize(
        ("params", "message"),
        [
            ({"body": "x"}, "body: not a filter"),
            ({"consumer": "a", "zzz": "1", "aaa": "2"}, "aaa: not a filter"),
            ({"index": "1"}, "index: not a filter"),
            ({"order": "ASC"}, "order: must be asc or desc"),
            ({"order": "random"}, "order: must be asc or desc"),
            ({"limit": "0"}, "limit: must be a whole number"),
            ({"limit": str(MAX_LIMIT + 1)}, "limit: must be a whole number"),
            ({"limit": "-1"}, "limit: must be a whole number"),
            ({"limit": "1.5"}, "limit: must be a whole number"),
            ({"limit": " 5"}, "limit: must be a whole number"),
            ({"limit": "ten"}, "limit: must be a whole number"),
            ({"limit": "9" * 5000}, "limit: must be a whole number"),  # int() refuses
            ({"limit": "\u00b2"}, "limit: must be a whole number"),  # isdigit, but int() refuses
            ({"limit": "\u0663"}, "limit: must be a whole number"),  # Arabic-Indic three
            ({"since": "yesterday"}, "since: not an RFC 3339 time"),
            ({"until": "2026-13-01T00:00:00Z"}, "until: not an RFC 3339 time"),
            ({"since": "2026-11-26T12:00:00"}, "since: the time needs a UTC offset"),
            ({"since": "2026-11-26"}, "since: the time needs a UTC offset"),
            ({"since": "0001-01-01T00:00:00+14:00"}, "since: the time is out of range"),
            ({"until": "9999-12-31T23:59:59-14:00"}, "until: the time is out of range"),
        ],
    )
    def test_refused(self, params: dict[str, str], message: str) -> None:
        """Each bad parameter is a QueryError naming it."""
        with pytest.raises(QueryError, match=message):
            parse_query(params, clear)

    @pytest.mark.parametrize("limit", ["1", "42", str(MAX_LIMIT)])
    def test_limits(self, limit: str) -> None:
        assert parse_query({"limit": limit}, clear).limit == int(limit)

    def test_times_compare_as_text(self) -> None:
        """Stored times are fixed-width, so text order is time order, even before year 1000."""
        early = parse_query({"since": "0999-01-01T00:00:00Z"}, clear).since
        assert early == "0999-01-01T00:00:00.000Z"
        assert early < record_time(T0)
        assert record_time(-1) < record_time(0) < record_time(T0)

    @pytest.mark.parametrize("order", ["asc", "desc"])
    @pytest.mark.parametrize("index", [0, 1, 41, (1 << 63) - 1])
    def test_cursor_round_trip(self, order: str, index: int) -> None:
        """A cursor continues after the index it was made from, in its order."""
        cursor = parse_query({"order": order}, clear).next_cursor(index)
        assert cursor == encode_cursor(index, order)
        assert "=" not in cursor
        assert parse_query({"order": order, "cursor": cursor}, clear).after == index

    def test_cursor_of_the_other_order(self) -> None:
        """A cursor issued for ascending order is refused for descending, and the reverse."""
        with pytest.raises(QueryError, match="other order"):
            parse_query({"order": "desc", "cursor": encode_cursor(5, "asc")}, clear)
        with pytest.raises(QueryError, match="other order"):
            parse_query({"cursor": encode_cursor(5, "desc")}, clear)

    @pytest.mark.parametrize(
        "cursor",
        [
            "!!!",
            "a",
            raw_cursor("asc:"),
            raw_cursor("asc:-1"),
            raw_cursor("asc:+1"),
            raw_cursor("asc:1:2"),
            raw_cursor("asc:" + "9" * 20),
            raw_cursor("asc:" + "9" * 5000),
            raw_cursor(f"asc:{1 << 63}"),  # past what a store's 64-bit index holds
            raw_cursor("asc:\u0663"),
            base64.urlsafe_b64encode(b"asc:\xff").decode(),
        ],
    )
    def test_garbage_cursor(self, cursor: str) -> None:
        """Anything but a cursor this gateway issued is refused as such."""
        with pytest.raises(QueryError, match="cursor"):
            parse_query({"cursor": cursor}, clear)

    @settings(max_examples=300, deadline=None)
    @given(
        st.dictionaries(
            st.sampled_from(sorted(QUERY_PARAMETERS)),
            st.one_of(
                st.text(max_size=30),
                st.from_regex(r"[0-9\u00b2\u0663 +-]{0,5}", fullmatch=True),
                st.datetimes().map(lambda moment: moment.isoformat() + "Z"),
                st.datetimes().map(lambda moment: moment.isoformat() + "+14:00"),
                st.datetimes().map(lambda moment: moment.isoformat() + "-14:00"),
                st.integers(-5, 1 << 64).map(lambda n: raw_cursor(f"asc:{n}")),
            ),
        )
    )
    def test_only_query_errors(self, params: dict[str, str]) -> None:
        """Whatever an officer sends, the result is a valid query or a QueryError."""
        try:
            query = parse_query(params, clear)
        except QueryError:
            return
        assert 1 <= query.limit <= MAX_LIMIT
        assert query.after is None or 0 <= query.after < 1 << 63


# -- bound values only ---------------------------------------------------------------

_TEXT = st.text(max_size=20)


@st.composite
def queries(draw: st.DrawFn) -> RecordQuery:
    members: dict[str, object] = {
        name: draw(st.none() | _TEXT) for name in (*EQUALITY_FILTERS, "since", "until")
    }
    members["subjects"] = tuple(draw(st.lists(_TEXT, max_size=3)))
    members["after"] = draw(st.none() | st.integers(0, (1 << 63) - 1))
    members["order"] = draw(st.sampled_from(["asc", "desc"]))
    members["limit"] = draw(st.integers(1, MAX_LIMIT))
    return RecordQuery.model_validate(members)


def _shape(query: RecordQuery) -> RecordQuery:
    """The same filters with every value replaced by a constant."""
    update: dict[str, object] = {
        name: "v" for name in (*EQUALITY_FILTERS, "since", "until") if getattr(query, name)
    }
    update["subjects"] = tuple("v" for _ in query.subjects)
    if query.after is not None:
        update["after"] = 0
    return query.model_copy(update=update)


def _expected_values(query: RecordQuery) -> list[object]:
    values: list[object] = [
        getattr(query, name) for name in EQUALITY_FILTERS if getattr(query, name) is not None
    ]
    values += list(query.subjects)
    values += [value for value in (query.since, query.until) if value is not None]
    if query.after is not None:
        values.append(query.after)
    return values


_DB = sqlite3.connect(":memory:")
_DB.executescript(SQLITE_SCHEMA)
_DB.execute(
    "INSERT INTO audit_leaves (idx, leaf_hash, leaf, consumer, subject, time)"
    " VALUES (0, x'00', x'00', 'a', 's', '2026-11-26T12:00:00.000Z')"
)


class TestWhere:
    @settings(max_examples=300, deadline=None)
    @given(queries())
    def test_values_are_bound(self, query: RecordQuery) -> None:
        """The SQL text depends on which filters are set, never on their values."""
        marks: Callable[[int], str] = lambda n: f"${n}"  # noqa: E731
        where, values = query.where(marks)
        shape_where, _ = _shape(query).where(marks)
        assert where == shape_where
        assert values == _expected_values(query)
        assert where.count("$") == len(values)
        assert where == "TRUE" or all(f"${n}" in where for n in range(1, len(values) + 1))
        sql, bound = find_sql(query, lambda _n: "?")
        assert sql == find_sql(_shape(query), lambda _n: "?")[0]
        rows = _DB.execute(sql, bound).fetchall()  # runs: the text is always valid SQL
        assert len(rows) <= 1

    def test_injection_text_is_data(self) -> None:
        """A quote in a filter value is a value like any other: it matches nothing."""
        query = RecordQuery(consumer="a' OR '1'='1", subjects=("x') OR 1=1 --",))
        sql, values = find_sql(query, lambda _n: "?")
        assert "1=1" not in sql
        assert "'" not in sql
        assert _DB.execute(sql, values).fetchall() == []
        assert _DB.execute(*find_sql(RecordQuery(consumer="a"), lambda _n: "?")).fetchall()

    def test_clauses(self) -> None:
        """Each filter is its own clause, joined with AND; the cursor bound follows the order."""
        asc = RecordQuery(consumer="c", subjects=("s1", "s2"), since="t0", until="t1", after=9)
        where, values = asc.where(lambda n: f"${n}")
        assert where == (
            "consumer = $1 AND subject IN ($2, $3) AND time >= $4 AND time < $5 AND idx > $6"
        )
        assert values == ["c", "s1", "s2", "t0", "t1", 9]
        desc = RecordQuery(after=9, order="desc")
        assert desc.where(lambda n: f"${n}") == ("idx < $1", [9])
        assert RecordQuery().where(lambda n: f"${n}") == ("TRUE", [])


# -- paging through both stores -------------------------------------------------------


def _record_of(number: int) -> dict[str, object]:
    """What record ``number`` of the paging log holds."""
    return {
        "consumer": "abc"[number % 3],
        "outcome": "refused" if number % 4 == 0 else "ok",
        "subject": (SUBJECT, "other", None)[number % 5 % 3],
        "time": T0 + number,
    }


COUNT = 30


async def paging_log(url: str, logs: LogFactory) -> AuditLog:
    log = await logs(url, every_records=1000)
    records = []
    for number in range(COUNT):
        spec = _record_of(number)
        records.append(
            make_record(
                number,
                consumer=str(spec["consumer"]),
                outcome=str(spec["outcome"]),
                subject=spec["subject"] if isinstance(spec["subject"], str) else None,
            )
        )
    await append_all(log, records)
    return log


async def page_all(
    log: AuditLog, params: Mapping[str, str], pseudonyms: Callable[[str], list[str]]
) -> list[int]:
    """Every index a search returns, following next cursors page by page."""
    seen: list[int] = []
    cursor: str | None = None
    for _ in range(COUNT + 2):
        query = parse_query({**params, **({"cursor": cursor} if cursor else {})}, pseudonyms)
        page = await log.find(query)
        assert len(page) <= query.limit
        seen += [leaf.index for leaf in page]
        if len(page) < query.limit:
            return seen
        cursor = query.next_cursor(page[-1].index)
    raise AssertionError("paging did not end")


SEARCHES: list[tuple[dict[str, str], Callable[[dict[str, object]], bool]]] = [
    ({}, lambda _r: True),
    ({"consumer": "a"}, lambda r: r["consumer"] == "a"),
    (
        {"consumer": "b", "outcome": "refused"},
        lambda r: (r["consumer"], r["outcome"]) == ("b", "refused"),
    ),
    (
        {"since": "2026-11-26T12:00:05Z", "until": "2026-11-26T12:00:20Z"},
        lambda r: T0 + 5 <= float(str(r["time"])) < T0 + 20,
    ),
    ({"subject": SUBJECT}, lambda r: r["subject"] == SUBJECT),
    ({"subject": "nobody"}, lambda _r: False),
    ({"kind": "exchange", "purpose": "benefit-eligibility"}, lambda _r: True),
    ({"provider": "someone-else"}, lambda _r: False),
]


class TestPaging:
    @pytest.mark.parametrize("order", ["asc", "desc"])
    @pytest.mark.parametrize("limit", [1, 4, 7, 100])
    async def test_every_match_exactly_once(
        self, store_url: str, logs: LogFactory, order: str, limit: int
    ) -> None:
        """Following cursors returns each matching record once, in the order asked."""
        log = await paging_log(store_url, logs)
        # tests.stores makes records with the epoch-1 key KEY_1.
        pseudonymize = Pseudonymizer({1: KEY_1})
        for params, matches in SEARCHES:
            expected = [n for n in range(COUNT) if matches(_record_of(n))]
            if order == "desc":
                expected.reverse()
            got = await page_all(
                log, {**params, "order": order, "limit": str(limit)}, pseudonymize.all_pseudonyms
            )
            assert got == expected, params

    async def test_cursor_at_the_largest_index(self, store_url: str, logs: LogFactory) -> None:
        """The largest cursor a store can hold runs as a query in both orders."""
        log = await logs(store_url)
        await append_all(log, [make_record(n) for n in range(3)])
        last = (1 << 63) - 1
        assert await log.find(RecordQuery(after=last)) == []
        found = await log.find(RecordQuery(after=last, order="desc"))
        assert [leaf.index for leaf in found] == [2, 1, 0]

    async def test_subject_under_every_live_epoch(self, store_url: str, logs: LogFactory) -> None:
        """After a key rotation a subject is found under both epochs, until one is dropped."""
        log = await logs(store_url)
        epoch_1 = Pseudonymizer({1: KEY_1})
        both = Pseudonymizer({1: KEY_1, 2: KEY_2})
        epoch_2 = Pseudonymizer({2: KEY_2})
        assert both(SUBJECT) == epoch_2(SUBJECT) != epoch_1(SUBJECT)
        await append_all(log, [make_record(n, pseudonymize=epoch_1) for n in range(3)])
        await append_all(log, [make_record(n, pseudonymize=both) for n in range(3, 6)])
        await log.append(make_record(6, pseudonymize=both, subject="someone-else"))

        async def found(pseudonymize: Pseudonymizer) -> list[int]:
            return await page_all(log, {"subject": SUBJECT}, pseudonymize.all_pseudonyms)

        assert await found(both) == [0, 1, 2, 3, 4, 5]
        assert await found(epoch_1) == [0, 1, 2]
        assert await found(epoch_2) == [3, 4, 5]
        query = parse_query({"subject": SUBJECT}, both.all_pseudonyms)
        assert query.subjects == (epoch_2(SUBJECT), epoch_1(SUBJECT))
