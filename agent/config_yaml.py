"""The configuration file's YAML, read into plain data with the line of every key.

A module of its own so that PyYAML is imported only when a text has to be parsed: a start whose
file is unchanged takes the parse from `config_cache` and never loads it (17 ms of a cold start
and 0.9 MB resident for the agent's whole life, issue 18).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import SafeConstructor


class YamlProblem(Exception):
    """The text is not a configuration's YAML; the message is the operator's, without the
    file's name (the caller adds it)."""


class DuplicateKey(YamlProblem):
    """A key given twice: the message names the key and its line, as it always has, without
    the file's name."""


def _located(node: yaml.Node, lines: dict[str, int], path: str, scalars: SafeConstructor) -> Any:
    """Turn a composed YAML node into plain data, remembering the line of every key.

    A scalar is built by `yaml.safe_load`'s own constructor from the node the composer already
    resolved, as `safe_load` would build it: serialising each scalar and loading it again would
    run a whole emitter, scanner and parser per key (issue 18: most of a start's config parse).
    """
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _located(key_node, lines, path, scalars)
            key_path = f"{path}.{key}" if path else str(key)
            lines[key_path] = key_node.start_mark.line + 1
            if key in result:
                raise DuplicateKey(
                    f"{key_path}: duplicate key (line {key_node.start_mark.line + 1})"
                )
            result[key] = _located(value_node, lines, key_path, scalars)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_located(item, lines, f"{path}[{i}]", scalars) for i, item in enumerate(node.value)]
    return scalars.construct_document(node)


def parse_yaml(text: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The file's settings as plain data, and where each key came from ("line 7")."""
    lines: dict[str, int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return {}, {}
        if not isinstance(node, yaml.MappingNode):
            raise YamlProblem("expected a mapping of settings at the top level")
        # A node no safe constructor builds (a merge key `<<`, an unknown tag) is refused
        # here too, with its line, not raised out of the configuration's reading.
        data = _located(node, lines, "", SafeConstructor())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlProblem(f"not valid YAML: {problem}{where}") from None
    return data, {key: f"line {line}" for key, line in lines.items()}


def scalar(raw: str) -> Any:
    """An environment override's value, read as YAML (a scalar or a flow collection); the raw
    text when it is not YAML."""
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def shown(value: Any) -> str:
    """A value in an error message, as it would be written in the file."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
