"""Reading YAML that the gateway trusts: contracts, the registry source, config.

PyYAML's safe loader silently keeps the last of two duplicate keys (a second
``status:`` would win) and expands aliases and merge keys. The files here
decide what is enforced, so each of those is refused instead.
"""

from __future__ import annotations

from typing import Any

import yaml


class StrictYamlLoader(yaml.SafeLoader):
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


def load_strict_yaml(data: bytes | str) -> Any:
    """Parse YAML with :class:`StrictYamlLoader`; ``yaml.YAMLError`` names the problem."""
    return yaml.load(data, Loader=StrictYamlLoader)  # noqa: S506 - a SafeLoader subclass


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line naming what is wrong in a YAML text and where, for error messages."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or "unreadable"
    return f"not valid YAML{where}: {problem}"
