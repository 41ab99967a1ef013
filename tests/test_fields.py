"""The deny-by-default field filter (protocol section 4, ``fields``; 3.4 ``fields`` claim)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.fields import (
    MAX_PATH_DEPTH,
    MAX_PATH_LENGTH,
    FieldFilter,
    PathSegment,
    parse_field_path,
)

# A record as a tax backend might answer it.
RECORD: dict[str, Any] = {
    "national_id": "19800101-1234",
    "year": 2025,
    "taxable_income": 51000,
    "address": {"street": "Main St 1", "city": "Springfield", "geo": {"lat": 1, "lon": 2}},
    "employers": [
        {"name": "Acme", "income": 40000, "tax_id": "X1"},
        {"name": "Beta", "income": 11000, "tax_id": "X2"},
        "not an object",
    ],
    "notes": None,
}


def _released(fil: FieldFilter, body: dict[str, Any]) -> dict[str, Any]:
    """What ``fil`` releases of a copy of ``body`` (the filter works in place)."""
    return fil.apply_in_place(copy.deepcopy(body))


class TestParseFieldPath:
    """The path grammar: dotted names, ``[]`` only as a segment suffix, never at the end."""

    @pytest.mark.parametrize(
        ("path", "segments"),
        [
            ("a", (PathSegment("a", each=False),)),
            ("a.b", (PathSegment("a", each=False), PathSegment("b", each=False))),
            ("a[].b", (PathSegment("a", each=True), PathSegment("b", each=False))),
            (
                "_x-1.y_2[].Z",
                (PathSegment("_x-1", False), PathSegment("y_2", True), PathSegment("Z", False)),
            ),
        ],
    )
    def test_valid_paths(self, path: str, segments: tuple[PathSegment, ...]) -> None:
        """Valid paths split into named segments, ``each`` marking ``[]``."""
        assert parse_field_path(path) == segments

    @pytest.mark.parametrize(
        ("path", "reason"),
        [
            ("", "non-empty"),
            ("a.", "segment ''"),
            (".a", "segment ''"),
            ("a..b", "segment ''"),
            ("1a", "segment '1a'"),
            ("-a", "segment '-a'"),
            ("a b", "segment 'a b'"),
            ("a[]b.c", "segment 'a[]b'"),
            ("a[][].b", "segment 'a[][]'"),
            ("[].a", "segment '[]'"),
            ("a.é", "segment 'é'"),
            ("a[]", "must not end in '[]'"),
            ("a.b[]", "must not end in '[]'"),
            ("a" * (MAX_PATH_LENGTH + 1), "longer than"),
            (".".join(["a"] * (MAX_PATH_DEPTH + 1)), "deeper than"),
        ],
    )
    def test_invalid_paths_name_the_path_and_reason(self, path: str, reason: str) -> None:
        """Each refusal says which path and why."""
        with pytest.raises(ValueError, match="field path") as caught:
            parse_field_path(path)
        assert reason in str(caught.value)
        if path and len(path) <= MAX_PATH_LENGTH:
            assert repr(path) in str(caught.value)

    def test_not_a_string(self) -> None:
        """A non-string is refused rather than crashing."""
        with pytest.raises(ValueError, match="non-empty string"):
            parse_field_path(3)  # type: ignore[arg-type]

    def test_limits_are_inclusive(self) -> None:
        """Exactly the maximum length and depth are accepted."""
        assert len(parse_field_path(".".join(["a"] * MAX_PATH_DEPTH))) == MAX_PATH_DEPTH
        assert parse_field_path("a" * MAX_PATH_LENGTH)[0].name == "a" * MAX_PATH_LENGTH


class TestCompile:
    """Compiling a contract's paths once into an immutable filter."""

    def test_paths_are_sorted_and_unique(self) -> None:
        """Duplicates collapse; the path list is sorted."""
        assert FieldFilter.compile(["b", "a[].d.e", "b", "a[].c"]).paths == (
            "a[].c",
            "a[].d.e",
            "b",
        )

    def test_object_and_array_conflict_is_refused(self) -> None:
        """One member cannot be both an object (``a.b``) and an array (``a[].c``)."""
        with pytest.raises(ValueError, match="'a' is used both as an object and as an array"):
            FieldFilter.compile(["a.b", "a[].c"])
        with pytest.raises(ValueError, match=r"'x\[\].a' is used both"):
            FieldFilter.compile(["x[].a[].b", "x[].a.c"])

    def test_whole_value_subsumes_conflicting_deeper_paths(self) -> None:
        """Under a whole path, deeper paths add nothing and cannot conflict."""
        fil = FieldFilter.compile(["a", "a.b", "a[].c"])
        assert _released(fil, {"a": [1, {"z": 2}]}) == {"a": [1, {"z": 2}]}

    def test_invalid_path_is_refused(self) -> None:
        """A bad path fails compilation with the parser's message."""
        with pytest.raises(ValueError, match=r"field path 'a\.\.b'"):
            FieldFilter.compile(["ok", "a..b"])

    def test_filter_is_immutable(self) -> None:
        """The compiled filter is a frozen value."""
        fil = FieldFilter.compile(["a"])
        with pytest.raises(AttributeError):
            fil.paths = ("b",)  # type: ignore[misc]
        assert fil == FieldFilter.compile(["a", "a"])


class TestApplyInPlace:
    """What the provider releases."""

    def test_protocol_example(self) -> None:
        """The section 4 example keeps exactly the three listed members."""
        fil = FieldFilter.compile(["national_id", "year", "taxable_income"])
        assert _released(fil, RECORD) == {
            "national_id": "19800101-1234",
            "year": 2025,
            "taxable_income": 51000,
        }

    def test_nested_object_and_array_paths(self) -> None:
        """``a.b`` keeps b in a; ``a[].b`` keeps b in each object element, others dropped."""
        fil = FieldFilter.compile(["address.city", "address.geo.lat", "employers[].income"])
        assert _released(fil, RECORD) == {
            "address": {"city": "Springfield", "geo": {"lat": 1}},
            "employers": [{"income": 40000}, {"income": 11000}],
        }

    def test_whole_value_wins_over_deeper_path(self) -> None:
        """``a`` listed keeps all of a even with ``a.b`` listed too."""
        fil = FieldFilter.compile(["address.city", "address"])
        assert _released(fil, RECORD) == {"address": RECORD["address"]}

    @pytest.mark.parametrize(
        ("paths", "body"),
        [
            (["a.b"], {"a": [{"b": 1}]}),
            (["a.b"], {"a": "text"}),
            (["a.b"], {"a": None}),
            (["a[].b"], {"a": {"b": 1}}),
            (["a[].b"], {"a": "text"}),
            (["a.b.c"], {"a": {"b": 7}}),
        ],
    )
    def test_wrong_types_along_a_path_are_dropped(
        self, paths: list[str], body: dict[str, Any]
    ) -> None:
        """A member that is not the object/array its path needs is dropped entirely."""
        released = _released(FieldFilter.compile(paths), body)
        assert "b" not in str(released.get("a", {}))
        assert released in ({}, {"a": {}})

    def test_empty_containers_along_a_path_are_kept(self) -> None:
        """An object or element on a listed path stays, empty, when its members are absent."""
        fil = FieldFilter.compile(["a.b", "c[].d"])
        assert _released(fil, {"a": {"x": 1}, "c": [{"y": 2}, 3]}) == {"a": {}, "c": [{}]}

    def test_missing_members_are_simply_absent(self) -> None:
        """Listed paths need not be present."""
        assert _released(FieldFilter.compile(["a", "b.c"]), {"z": 1}) == {}

    def test_filters_in_place_without_copying(self) -> None:
        """The body itself is changed and returned; kept values are the same objects."""
        body = copy.deepcopy(RECORD)
        address, employers = body["address"], body["employers"]
        released = FieldFilter.compile(["address", "employers[].name"]).apply_in_place(body)
        assert released is body
        assert released["address"] is address
        assert released["employers"] is employers
        assert body == {
            "address": RECORD["address"],
            "employers": [{"name": "Acme"}, {"name": "Beta"}],
        }

    def test_members_keep_their_order(self) -> None:
        """The released JSON lists members as the backend did, not in the contract's order."""
        fil = FieldFilter.compile(["a", "b", "c"])
        assert list(fil.apply_in_place({"c": 1, "x": 0, "a": 2, "b": 3})) == ["c", "a", "b"]

    def test_deeply_nested_whole_value_does_not_overflow(self) -> None:
        """A kept value is not walked: nesting deeper than the stack is fine."""
        deep: Any = "leaf"
        for _ in range(5000):
            deep = [{"k": deep}]
        released = FieldFilter.compile(["a"]).apply_in_place({"a": deep, "b": 1})
        assert released == {"a": deep}
        assert released["a"] is deep

    def test_body_must_be_an_object(self) -> None:
        """Only a JSON object can be filtered or checked."""
        fil = FieldFilter.compile(["a"])
        with pytest.raises(ValueError, match="JSON object"):
            _released(fil, [{"a": 1}])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="JSON object"):
            fil.leaks("a")  # type: ignore[arg-type]


class TestConsumerChecks:
    """What the consumer verifies on arrival: ``fields`` claim and body."""

    FILTER = FieldFilter.compile(["address.city", "employers[].income", "year"])

    def test_leaks_names_every_unlisted_path(self) -> None:
        """Each path outside the contract is reported in the path vocabulary, sorted."""
        assert self.FILTER.leaks(RECORD) == [
            "address.geo",
            "address.street",
            "employers[]",
            "employers[].name",
            "employers[].tax_id",
            "national_id",
            "notes",
            "taxable_income",
        ]

    def test_leaks_reports_wrong_container_types(self) -> None:
        """A member that should be an object or array but is not is a leak."""
        assert self.FILTER.leaks({"address": "x", "employers": {"income": 1}}) == [
            "address",
            "employers",
        ]

    def test_filtered_body_has_no_leaks(self) -> None:
        """What the provider releases passes the consumer's check."""
        assert self.FILTER.leaks(_released(self.FILTER, RECORD)) == []

    def test_non_string_keys_are_leaks(self) -> None:
        """A key that is not a string cannot be a listed name."""
        assert self.FILTER.leaks({1: "x"}) == ["1"]  # type: ignore[dict-item]

    def test_released_paths_are_the_present_listed_paths(self) -> None:
        """The ``fields`` claim: listed paths present in the body, sorted."""
        released = _released(self.FILTER, RECORD)
        assert self.FILTER.released_paths(released) == [
            "address.city",
            "employers[].income",
            "year",
        ]
        assert self.FILTER.released_paths({"employers": [{}, {"income": 1}]}) == [
            "employers[].income"
        ]
        assert self.FILTER.released_paths({"employers": [{}], "address": {}}) == []
        assert self.FILTER.released_paths({"employers": {"income": 1}}) == []

    def test_permits(self) -> None:
        """Every path of a ``fields`` claim must be one of the contract's."""
        assert self.FILTER.permits(["year", "address.city"])
        assert self.FILTER.permits([])
        assert not self.FILTER.permits(["year", "address"])
        assert not self.FILTER.permits(["employers[].name"])


# Property tests: random JSON over a small alphabet so that paths often hit.

NAMES = ["a", "b", "c", "d"]
scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=3)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from([*NAMES, "x-y"]), inner, max_size=4)
    ),
    max_leaves=15,
)
bodies = st.dictionaries(st.sampled_from(NAMES), json_values, max_size=4)


def _join(parts: list[tuple[str, bool]]) -> str:
    """A valid path from (name, each) pairs; the last segment never takes ``[]``."""
    return ".".join([name + ("[]" if each else "") for name, each in parts[:-1]] + [parts[-1][0]])


paths = st.lists(st.tuples(st.sampled_from(NAMES), st.booleans()), min_size=1, max_size=4).map(
    _join
)
path_lists = st.lists(paths, min_size=1, max_size=6)

# The strategies are small, but gates run beside other jobs: timing is not what we test.
PROPERTIES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _tokens(path: str) -> tuple[str, ...]:
    out: list[str] = []
    for segment in parse_field_path(path):
        out.append(segment.name)
        if segment.each:
            out.append("[]")
    return tuple(out)


def _concrete_paths(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every node of a JSON value as tokens: member names, ``[]`` for array elements."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _concrete_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for item in value:
            found += _concrete_paths(item, (*prefix, "[]"))
    return found


def _values_at(value: Any, tokens: tuple[str, ...]) -> list[Any]:
    if not tokens:
        return [value]
    head, rest = tokens[0], tokens[1:]
    if head == "[]":
        return (
            [v for item in value for v in _values_at(item, rest)] if isinstance(value, list) else []
        )
    if isinstance(value, dict) and head in value:
        return _values_at(value[head], rest)
    return []


def _compile_or_none(listed: list[str]) -> FieldFilter | None:
    try:
        return FieldFilter.compile(listed)
    except ValueError:
        return None  # object/array conflict: refused by design


@PROPERTIES
@given(bodies, path_lists)
def test_output_holds_only_covered_paths(body: dict[str, Any], listed: list[str]) -> None:
    """Every node of the output lies on a listed path or inside a whole listed value."""
    fil = _compile_or_none(listed)
    if fil is None:
        return
    allowed = [_tokens(path) for path in fil.paths]
    for node in _concrete_paths(fil.apply_in_place(body)):
        assert any(node == rule[: len(node)] or rule == node[: len(rule)] for rule in allowed), node


@PROPERTIES
@given(bodies, path_lists)
def test_filter_is_idempotent_and_leak_free(body: dict[str, Any], listed: list[str]) -> None:
    """Filtering twice changes nothing; the output never leaks; leaks() agrees with the filter."""
    fil = _compile_or_none(listed)
    if fil is None:
        return
    original = copy.deepcopy(body)
    once = fil.apply_in_place(body)
    assert once is body
    assert _released(fil, once) == once
    assert fil.leaks(once) == []
    assert (fil.leaks(original) == []) == (once == original)


@PROPERTIES
@given(bodies, path_lists)
def test_listed_values_are_preserved_exactly(body: dict[str, Any], listed: list[str]) -> None:
    """Every value a listed path reaches in the input is released unchanged and in order."""
    fil = _compile_or_none(listed)
    if fil is None:
        return
    released = _released(fil, body)
    for path in fil.paths:
        assert _values_at(released, _tokens(path)) == _values_at(body, _tokens(path))
    present = [path for path in fil.paths if _values_at(released, _tokens(path))]
    assert fil.released_paths(released) == present
    assert fil.permits(fil.released_paths(released))
