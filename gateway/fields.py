"""The deny-by-default field filter of a contract (protocol section 4).

A contract lists field paths; the provider releases only those, at every
depth, and the consumer checks that nothing else arrived::

    a        keeps the whole value of a
    a.b      keeps b inside object a
    a[].b    keeps b inside every object element of array a

The paths are compiled once per contract into an immutable tree of rules and
applied to each backend answer, which the provider filters in place. There
is no I/O here; only ``FieldFilter.apply_in_place`` changes its argument.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, Final, NamedTuple

__all__ = [
    "FIELD_PATH_PATTERN",
    "MAX_PATH_DEPTH",
    "MAX_PATH_LENGTH",
    "FieldFilter",
    "PathSegment",
    "parse_field_path",
]

_NAME: Final = r"[A-Za-z_][A-Za-z0-9_-]*"
_NAME_RE: Final = re.compile(_NAME)

# The grammar of a path as one regular expression, published in the contract
# JSON Schema; `parse_field_path` applies it segment by segment to say why.
FIELD_PATH_PATTERN: Final = rf"^(?:{_NAME}(?:\[\])?\.)*{_NAME}$"

# Bounds that keep compiling and applying a filter cheap; no real record
# needs deeper or longer names.
MAX_PATH_LENGTH: Final = 256
MAX_PATH_DEPTH: Final = 16

_EACH: Final = "[]"


class PathSegment(NamedTuple):
    """One step of a field path: a member ``name``, and ``each`` when followed by ``[]``."""

    name: str
    each: bool


def parse_field_path(path: str) -> tuple[PathSegment, ...]:
    """Split and check a field path; ``ValueError`` names the path and the reason."""
    if not isinstance(path, str) or not path:
        raise ValueError("a field path must be a non-empty string")
    if len(path) > MAX_PATH_LENGTH:
        raise ValueError(f"field path {path!r} is longer than {MAX_PATH_LENGTH} characters")
    parts = path.split(".")
    if len(parts) > MAX_PATH_DEPTH:
        raise ValueError(f"field path {path!r} is deeper than {MAX_PATH_DEPTH} segments")
    segments = []
    for part in parts:
        each = part.endswith(_EACH)
        name = part.removesuffix(_EACH)
        if not _NAME_RE.fullmatch(name):
            raise ValueError(
                f"field path {path!r}: segment {part!r} must be a name "
                "(letters, digits, '_' or '-', not starting with a digit or '-'), "
                "optionally followed by '[]'"
            )
        segments.append(PathSegment(name, each))
    if segments[-1].each:
        raise ValueError(
            f"field path {path!r} must not end in '[]': "
            f"name {path.removesuffix(_EACH)!r} to keep the whole array"
        )
    return tuple(segments)


class _Kind(Enum):
    WHOLE = "whole"  # a listed path ends here: keep the value as it is
    OBJECT = "object"  # the value must be an object; keep only the named members
    ARRAY = "array"  # the value must be an array; keep only the named members of each object


@dataclass(frozen=True)
class _Rule:
    kind: _Kind
    children: Mapping[str, _Rule] = field(default_factory=lambda: MappingProxyType({}))
    # The children not kept whole, whose values the filter walks into.
    containers: tuple[tuple[str, _Rule], ...] = ()


_WHOLE: Final = _Rule(_Kind.WHOLE)


def _rule(kind: _Kind, children: Mapping[str, _Rule]) -> _Rule:
    containers = tuple((name, rule) for name, rule in children.items() if rule is not _WHOLE)
    return _Rule(kind, children, containers)


def _compile_tree(parsed: Iterable[tuple[str, tuple[PathSegment, ...]]]) -> _Rule:
    # Build with plain dicts first: {name: (kind, subtree)}.
    root: dict[str, Any] = {}
    for path, segments in parsed:
        level = root
        for position, segment in enumerate(segments):
            last = position == len(segments) - 1
            kind = _Kind.WHOLE if last else _Kind.ARRAY if segment.each else _Kind.OBJECT
            existing = level.get(segment.name)
            if existing is None or kind is _Kind.WHOLE:
                # A whole value subsumes anything deeper listed under it.
                existing = level[segment.name] = (kind, {})
            elif existing[0] is _Kind.WHOLE:
                break
            elif existing[0] is not kind:
                prefix = ".".join(s.name + (_EACH if s.each else "") for s in segments[:position])
                where = f"{prefix}.{segment.name}" if prefix else segment.name
                raise ValueError(
                    f"field path {path!r}: {where!r} is used both as an object and as an array"
                )
            level = existing[1]
    return _rule(_Kind.OBJECT, _freeze(root))


def _freeze(level: dict[str, Any]) -> Mapping[str, _Rule]:
    return MappingProxyType(
        {
            name: _WHOLE if kind is _Kind.WHOLE else _rule(kind, _freeze(subtree))
            for name, (kind, subtree) in level.items()
        }
    )


def _filter_in_place(target: dict[Any, Any], rule: _Rule) -> None:
    listed = rule.children
    # Set comparisons of key views run in C: the common case, nothing to remove, is cheap.
    if not target.keys() <= listed.keys():
        for name in [name for name in target if name not in listed]:
            del target[name]
    for name, child in rule.containers:
        if name not in target:
            continue
        value = target[name]
        if child.kind is _Kind.OBJECT and isinstance(value, dict):
            _filter_in_place(value, child)
        elif child.kind is _Kind.ARRAY and isinstance(value, list):
            _filter_each_in_place(value, child)
        else:
            del target[name]  # not the container its path needs: dropped whole


def _filter_each_in_place(items: list[Any], rule: _Rule) -> None:
    listed = rule.children.keys()
    all_objects = True
    for item in items:
        if not isinstance(item, dict):
            all_objects = False
        elif rule.containers or not item.keys() <= listed:
            _filter_in_place(item, rule)
    if not all_objects:
        # Elements that are not objects cannot hold the named members: dropped.
        items[:] = [item for item in items if isinstance(item, dict)]


def _collect_leaks(source: dict[Any, Any], rule: _Rule, prefix: str, leaks: set[str]) -> None:
    listed = rule.children
    if not source.keys() <= listed.keys():
        leaks.update(
            f"{prefix}.{name}" if prefix else str(name) for name in source if name not in listed
        )
    for name, child in rule.containers:
        if name not in source:
            continue
        value = source[name]
        path = f"{prefix}.{name}" if prefix else name
        if child.kind is _Kind.OBJECT and isinstance(value, dict):
            _collect_leaks(value, child, path, leaks)
        elif child.kind is _Kind.ARRAY and isinstance(value, list):
            _collect_each_leaks(value, child, path + _EACH, leaks)
        else:
            leaks.add(path)


def _collect_each_leaks(items: list[Any], rule: _Rule, path: str, leaks: set[str]) -> None:
    listed = rule.children.keys()
    for item in items:
        if not isinstance(item, dict):
            leaks.add(path)
        elif rule.containers or not item.keys() <= listed:
            _collect_leaks(item, rule, path, leaks)


def _present(value: Any, segments: tuple[PathSegment, ...]) -> bool:
    """Whether ``segments`` reach at least one value in ``value``."""
    if not segments:
        return True
    if not isinstance(value, dict) or segments[0].name not in value:
        return False
    member = value[segments[0].name]
    if not segments[0].each:
        return _present(member, segments[1:])
    return isinstance(member, list) and any(_present(item, segments[1:]) for item in member)


@dataclass(frozen=True)
class FieldFilter:
    """A contract's field paths compiled into an immutable filter.

    Build it once per contract with :meth:`compile`; :meth:`apply_in_place`
    is what the provider releases, :meth:`leaks` and :meth:`permits` are what the
    consumer checks on arrival.
    """

    paths: tuple[str, ...]
    _parsed: tuple[tuple[str, tuple[PathSegment, ...]], ...] = field(repr=False, compare=False)
    _root: _Rule = field(repr=False, compare=False)

    @classmethod
    def compile(cls, paths: Iterable[str]) -> FieldFilter:
        """Compile ``paths`` (duplicates ignored); ``ValueError`` names a bad or conflicting one.

        Conflicting means one path uses a member as an object (``a.b``) and
        another as an array (``a[].c``): the filter could not say which to keep.
        """
        unique = tuple(sorted(set(paths)))
        parsed = tuple((path, parse_field_path(path)) for path in unique)
        return cls(paths=unique, _parsed=parsed, _root=_compile_tree(parsed))

    def apply_in_place(self, body: dict[str, Any]) -> dict[str, Any]:
        """Remove from ``body`` every path the contract does not list; returns ``body``.

        The body is changed where it is, not copied: the provider owns the
        backend's parsed answer, and a copy's containers would cost about
        twice its JSON (memory). Kept values stay the same objects, members
        keep their order.

        A member used as an object (``a.b``) or array (``a[].b``) that holds
        another type is dropped whole, and so are array elements that are not
        objects; an object along a listed path is kept even when none of its
        listed members is present.
        """
        if not isinstance(body, dict):
            raise ValueError("the body to filter must be a JSON object")
        _filter_in_place(body, self._root)
        return body

    def leaks(self, body: dict[str, Any]) -> list[str]:
        """The sorted paths in ``body`` that the contract does not release (empty when none).

        Names use the path vocabulary (``a[].b``); ``body`` passes exactly
        when ``apply_in_place`` would leave it unchanged.
        """
        if not isinstance(body, dict):
            raise ValueError("the body to check must be a JSON object")
        found: set[str] = set()
        _collect_leaks(body, self._root, "", found)
        return sorted(found)

    def released_paths(self, body: dict[str, Any]) -> list[str]:
        """The contract's paths present in ``body``, sorted: the ``fields`` claim (protocol 3.4).

        ``a[].b`` counts as present when at least one element of ``a`` holds ``b``.
        """
        return [path for path, segments in self._parsed if _present(body, segments)]

    def permits(self, paths: Iterable[str]) -> bool:
        """True when every one of ``paths`` is one of the contract's paths."""
        allowed = frozenset(self.paths)
        return all(path in allowed for path in paths)
