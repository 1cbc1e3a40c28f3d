"""Hypothesis strategies for job documents: random JSON and structure-aware mutations of the
shapes the agent accepts (Device Client `steps` documents, the legacy `{operation, args}` form,
documents built from the AWS managed templates)."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

PLACEHOLDER_USER = "${aws:iot:parameter:runAsUser}"
PLACEHOLDER_PATH = "${aws:iot:parameter:pathToHandler}"
KNOWN_KEYS = (
    "version",
    "steps",
    "finalStep",
    "includeStdOut",
    "conditions",
    "operation",
    "type",
    "args",
    "path",
    "runAsUser",
    "allowStdErr",
    "timeout",
    "action",
    "name",
    "input",
    "handler",
    "command",
    "ignoreStepFailure",
    "url",
    "sha256",
)
NASTY_STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udcff",
    "..",
    "../ok.sh",
    "../../etc/passwd",
    "/bin/sh",
    "/",
    ".",
    "ok.sh/",
    "x" * 300,
    "é" * 200,
    "default",
    "default\x00",
    PLACEHOLDER_PATH,
    PLACEHOLDER_USER,
    "${aws:iot:s3-presigned-url:https://b.s3.amazonaws.com/k}",
    "root",
    "nobody",
    "no-such-user-x",
    "runHandler",
    "runCommand",
    "true",
    "false",
    "1.0",
    "2.0",
    "NaN",
    "-1",
    "٣",
    "echo,a\\,b",
    "rm -rf,/",
    "a" * 5000,
    "$(touch /tmp/pwned)",
    "`id`",
    "; id",
    "\n",
    "\u202e",
    "\ufeff",
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=20),
    st.sampled_from(NASTY_STRINGS),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=12), st.sampled_from(NASTY_STRINGS))
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(keys, children, max_size=6),
    ),
    max_leaves=30,
)
random_documents = st.dictionaries(keys, json_values, max_size=8)


def _action(kind: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"action": {"name": "Step", "type": kind, "input": data, **extra}}


VALID_TEMPLATES: tuple[dict[str, Any], ...] = (
    {
        "version": "1.0",
        "includeStdOut": "true",
        "steps": [
            _action("runHandler", {"handler": "ok.sh", "args": ["a", "b"], "path": "default"}),
            _action("runCommand", {"command": "echo,hello\\,world"}, ignoreStepFailure=True),
        ],
        "finalStep": _action("runCommand", {"command": "true"}, allowStdErr=2, timeout=30),
    },
    {"operation": "ok.sh", "args": ["x"], "allowStdErr": 1, "includeStdOut": True},
    {"type": "ok.sh", "path": "default"},
    # AWS-Run-Command
    {
        "version": "1.0",
        "steps": [
            _action("runCommand", {"command": "echo,run"}, runAsUser=PLACEHOLDER_USER),
        ],
    },
    # AWS-Download-File (our script of that name stands behind it)
    {
        "version": "1.0",
        "steps": [
            _action(
                "runHandler",
                {
                    "handler": "download-file.sh",
                    "args": ["${aws:iot:s3-presigned-url:https://b.s3.amazonaws.com/k}", "/tmp/f"],
                    "path": PLACEHOLDER_PATH,
                },
                runAsUser=PLACEHOLDER_USER,
            )
        ],
    },
    # AWS-Install-Application
    {
        "version": "1.0",
        "steps": [
            _action(
                "runHandler",
                {"handler": "install-packages.sh", "args": ["lftp"], "path": PLACEHOLDER_PATH},
                runAsUser=PLACEHOLDER_USER,
            )
        ],
    },
    # AWS-Reboot
    {
        "version": "1.0",
        "steps": [
            _action(
                "runHandler",
                {"handler": "reboot.sh", "path": PLACEHOLDER_PATH},
                runAsUser=PLACEHOLDER_USER,
            )
        ],
    },
    {"operation": "download-file", "url": "https://example.com/f", "path": "/tmp/f"},
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place inside `value` (dict keys and list indexes), the root first."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document with one to four structure-aware mutations."""
    document = copy.deepcopy(draw(st.sampled_from(VALID_TEMPLATES)))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(document)))
        target = _get(document, path)
        operation = draw(
            st.sampled_from(("replace", "delete", "insert", "wrap", "duplicate", "retype"))
        )
        if not path:
            if operation in ("insert", "delete") or not isinstance(target, dict):
                document[draw(keys)] = draw(json_values)
            continue
        parent = _get(document, path[:-1])
        last = path[-1]
        if operation == "replace":
            parent[last] = draw(json_values)
        elif operation == "delete":
            del parent[last]
        elif operation == "insert" and isinstance(target, dict):
            target[draw(keys)] = draw(json_values)
        elif operation == "insert" and isinstance(target, list):
            target.insert(draw(st.integers(0, len(target))), draw(json_values))
        elif operation == "wrap":
            parent[last] = draw(st.sampled_from(([target], {"action": target}, {"x": target})))
        elif operation == "duplicate" and isinstance(target, list):
            target.extend(copy.deepcopy(target) * draw(st.integers(1, 3)))
        else:
            parent[last] = (
                draw(st.sampled_from(NASTY_STRINGS)) if draw(st.booleans()) else (draw(scalars))
            )
    return document


any_document = st.one_of(random_documents, mutated_documents())
