"""Reading YAML that the gateway trusts: contracts, the registry source, config.

PyYAML's safe loader silently keeps the last of two duplicate keys (a second
``status:`` would win) and expands aliases and merge keys. The files here
decide what is enforced, so each of those is refused instead.

Parsing runs on libyaml (PyYAML's C extension) when it is installed: the
pure-Python scanner is about ten times slower, and start-up parses every
contract file. The pure-Python :class:`StrictYamlLoader` stays the
reference, and what is accepted, and what it parses to, is exactly what it
gives: libyaml only sees documents without the characters where the two
parsers are known to differ, and any document libyaml refuses is parsed
again by the reference (so a refusal carries its message and position, and
what only libyaml refuses, such as an unknown ``%`` directive, is accepted).
"""

from __future__ import annotations

import re
from typing import Any, Final

import yaml


class _StrictMappings(yaml.constructor.SafeConstructor):
    """The mapping checks shared by the pure-Python and the C loader."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # the safe constructor refuses non-scalar keys itself
            problem = (
                "merge keys (<<) are not allowed"
                if key_node.tag.endswith(":merge")
                else f"duplicate key {key_node.value!r}"
                if (key_node.tag, key_node.value) in seen
                else None
            )
            if problem:
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            seen.add((key_node.tag, key_node.value))
        return super().construct_mapping(node, deep=deep)


def _construct_timestamp(loader: yaml.SafeLoader | yaml.CSafeLoader, node: yaml.ScalarNode) -> Any:
    # A timestamp of the right shape may name no instant (30 February): PyYAML
    # raises ValueError, which is refused here with its position instead.
    try:
        return yaml.constructor.SafeConstructor.construct_yaml_timestamp(loader, node)
    except ValueError as exc:
        raise yaml.constructor.ConstructorError(None, None, str(exc), node.start_mark) from None


class StrictYamlLoader(yaml.SafeLoader, _StrictMappings):
    """The safe loader, refusing what a trusted document must not be ambiguous about.

    Duplicate keys (YAML keeps the last one silently; another party's parser
    may keep the first), merge keys (YAML 1.2 parsers do not know them) and
    aliases (which also allow "billion laughs").
    """

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]  # untyped stub
            raise yaml.composer.ComposerError(None, None, "aliases are not allowed", mark)
        return super().compose_node(parent, index)


# add_constructor copies the table for the class, so SafeLoader itself is unchanged.
StrictYamlLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


if yaml.__with_libyaml__:

    class _CStrictYamlLoader(yaml.CSafeLoader, _StrictMappings):
        """libyaml's safe loader with the mapping checks of :class:`StrictYamlLoader`.

        Aliases need no check of their own: a document with a ``*`` never
        reaches it (:func:`_libyaml_agrees`).
        """

    _CStrictYamlLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)
    _FAST_LOADER: type[Any] | None = _CStrictYamlLoader
else:  # pragma: no cover - PyYAML is normally installed with libyaml
    _FAST_LOADER = None

# Where libyaml and PyYAML's own scanner disagree, both ways: a tab between
# tokens ("a:<tab>1"), "?" in a plain scalar of a flow collection ("[a?]"),
# a comment right after a block scalar header ("|#"), the tag "!" on an
# empty value, a byte order mark after the start; and the features around
# them (directives, anchors, aliases) that contracts do not use. A document
# with any of these characters goes to the reference loader. (In bytes: the
# UTF-8 and UTF-16 byte order marks; a UTF-16 text has each ASCII character
# as one of its bytes, so the ASCII ones are found there too.)
_REFERENCE_ONLY_TEXT: Final = re.compile("[\t?!|>%&*\ufeff]")
_REFERENCE_ONLY_BYTES: Final = re.compile(b"[\t?!|>%&*]|\xef\xbb\xbf|\xff\xfe|\xfe\xff")


def _libyaml_agrees(data: bytes | str) -> bool:
    """Whether ``data`` keeps to the plain YAML on which libyaml and PyYAML agree."""
    if isinstance(data, str):
        return _REFERENCE_ONLY_TEXT.search(data) is None
    return _REFERENCE_ONLY_BYTES.search(data) is None


def load_strict_yaml(data: bytes | str) -> Any:
    """Parse YAML with :class:`StrictYamlLoader`'s rules; ``yaml.YAMLError`` names the problem.

    Whatever else PyYAML raises on a bad document (``RecursionError`` for
    deep nesting, ``ValueError`` or ``KeyError`` for a value an explicit tag
    cannot take, such as ``!!bool maybe``) is a ``YAMLError`` here too: one
    bad file must refuse that file, not stop the loading of the others.
    """
    try:
        if _FAST_LOADER is not None and _libyaml_agrees(data):
            try:
                return yaml.load(data, Loader=_FAST_LOADER)  # noqa: S506 - a CSafeLoader subclass
            except yaml.YAMLError:
                pass  # the reference loader below refuses it with its own message, or accepts it
        return yaml.load(data, Loader=StrictYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        raise
    except RecursionError:
        raise yaml.MarkedYAMLError(problem="nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - see the docstring: any failure refuses the document
        raise yaml.MarkedYAMLError(problem=f"a value cannot be read ({exc!r})") from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line naming what is wrong in a YAML text and where, for error messages."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or "unreadable"
    return f"not valid YAML{where}: {problem}"
