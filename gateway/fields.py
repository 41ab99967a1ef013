"""The deny-by-default field filter of a contract (protocol section 4).

A contract lists field paths; the provider releases only those, at every
depth, and the consumer checks that nothing else arrived::

    a        keeps the whole value of a
    a.b      keeps b inside object a
    a[].b    keeps b inside every object element of array a

The paths are compiled once per contract into an immutable tree of rules and
applied to each backend answer. Everything here is pure: no I/O, and the
input is never mutated.
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


_WHOLE: Final = _Rule(_Kind.WHOLE)


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
    return _Rule(_Kind.OBJECT, _freeze(root))


def _freeze(level: dict[str, Any]) -> Mapping[str, _Rule]:
    return MappingProxyType(
        {
            name: _WHOLE if kind is _Kind.WHOLE else _Rule(kind, _freeze(subtree))
            for name, (kind, subtree) in level.items()
        }
    )


def _clone(value: Any) -> Any:
    """A deep copy of a JSON value, iterative so that deep nesting cannot overflow the stack."""
    if not isinstance(value, dict | list):
        return value
    root: dict[Any, Any] | list[Any] = {} if isinstance(value, dict) else []
    stack: list[tuple[dict[Any, Any] | list[Any], dict[Any, Any] | list[Any]]] = [(value, root)]
    while stack:
        source, target = stack.pop()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, item in items:
            copied: Any = item
            if isinstance(item, dict | list):
                copied = {} if isinstance(item, dict) else []
                stack.append((item, copied))
            if isinstance(target, dict):
                target[key] = copied
            else:
                target.append(copied)
    return root


def _filter_object(source: dict[Any, Any], rules: Mapping[str, _Rule]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for name, rule in rules.items():
        if name not in source:
            continue
        value = source[name]
        if rule.kind is _Kind.WHOLE:
            kept[name] = _clone(value)
        elif rule.kind is _Kind.OBJECT:
            if isinstance(value, dict):
                kept[name] = _filter_object(value, rule.children)
        elif isinstance(value, list):
            # Elements that are not objects cannot hold the named members: dropped.
            kept[name] = [
                _filter_object(item, rule.children) for item in value if isinstance(item, dict)
            ]
    return kept


def _collect_leaks(
    source: dict[Any, Any], rules: Mapping[str, _Rule], prefix: str, leaks: set[str]
) -> None:
    for name, value in source.items():
        path = f"{prefix}.{name}" if prefix else str(name)
        rule = rules.get(name) if isinstance(name, str) else None
        if rule is None:
            leaks.add(path)
        elif rule.kind is _Kind.OBJECT:
            if isinstance(value, dict):
                _collect_leaks(value, rule.children, path, leaks)
            else:
                leaks.add(path)
        elif rule.kind is _Kind.ARRAY:
            if not isinstance(value, list):
                leaks.add(path)
                continue
            for item in value:
                if isinstance(item, dict):
                    _collect_leaks(item, rule.children, path + _EACH, leaks)
                else:
                    leaks.add(path + _EACH)


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

    Build it once per contract with :meth:`compile`; :meth:`apply` is what
    the provider releases, :meth:`leaks` and :meth:`permits` are what the
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

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        """A new object holding only the listed paths of ``body``; ``body`` is not changed.

        A member used as an object (``a.b``) or array (``a[].b``) that holds
        another type is dropped whole, and so are array elements that are not
        objects; an object along a listed path is kept even when none of its
        listed members is present.
        """
        if not isinstance(body, dict):
            raise ValueError("the body to filter must be a JSON object")
        return _filter_object(body, self._root.children)

    def leaks(self, body: dict[str, Any]) -> list[str]:
        """The sorted paths in ``body`` that the contract does not release (empty when none).

        Names use the path vocabulary (``a[].b``); ``body`` passes exactly
        when ``apply(body) == body``.
        """
        if not isinstance(body, dict):
            raise ValueError("the body to check must be a JSON object")
        found: set[str] = set()
        _collect_leaks(body, self._root.children, "", found)
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
