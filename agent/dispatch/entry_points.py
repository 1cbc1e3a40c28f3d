"""Installed packages' entry points of one group: what `importlib.metadata.entry_points(group=)`
answers, read without it where the answer is plain.

importlib.metadata imports email, zipfile, csv and importlib.resources and makes a Distribution
object per installed package: about 20 ms at an agent's first job, which a gateway pays after
every start (issue 18). Where every package sits in a directory on `sys.path` as a
`NAME-VERSION.dist-info` (or `.egg-info`) directory, what it does is small, and it is done here
the same way: the directories of `sys.path` in order, each one's metadata directories in the
order `os.listdir` gives them, the first package of a (normalised) name winning over any later
one of the same name, and each winner's `entry_points.txt` read as importlib's `Sectioned` reads
it. Anything else is left to importlib.metadata itself, so the answer is always its answer: a
finder of distributions other than `PathFinder` on `sys.meta_path`, a zip archive or an `.egg`
on `sys.path`, a metadata directory whose name does not give its package's name (importlib then
reads the name from its METADATA), a file that is not UTF-8, a line importlib refuses.

Nothing is cached: the files are read at the lookup, as importlib reads them (no file of the
agent's own that another user could write).
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
from importlib.machinery import PathFinder
from typing import Any

Entry = tuple[str, str]
"""An entry point's name and value (`module:attr [extras]`)."""

_INFO_SUFFIXES = (".dist-info", ".egg-info")
_MISSING = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
"""What importlib's `PathDistribution.read_text` takes for "no such file"."""
_VALUE = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")
"""`importlib.metadata.EntryPoint.pattern`."""


class _Unsure(Exception):
    """Something importlib.metadata reads otherwise (or refuses): it answers instead."""


def group_entries(group: str) -> list[Entry]:
    """The entry points of `group`, in the order `importlib.metadata.entry_points` gives them
    (a later one of the same name is the one a lookup by name would keep)."""
    try:
        return _scan(group)
    except _Unsure:
        from importlib.metadata import entry_points

        return [(entry.name, entry.value) for entry in entry_points(group=group)]


def load(value: str) -> Any:
    """What the entry point `value` names, as `EntryPoint.load` finds it."""
    match = _VALUE.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not an entry point (module:attribute)")
    module = importlib.import_module(match.group("module"))
    attributes = filter(None, (match.group("attr") or "").split("."))
    return functools.reduce(getattr, attributes, module)


def _scan(group: str) -> list[Entry]:
    for finder in sys.meta_path:
        if finder is not PathFinder and getattr(finder, "find_distributions", None) is not None:
            raise _Unsure
    found: list[Entry] = []
    seen: set[str] = set()
    for root in list(sys.path):
        for name, info in _infos(root):
            if name not in seen:
                seen.add(name)
                found.extend(_entries(info, group))
    return found


def _infos(root: object) -> list[tuple[str, str]]:
    """The metadata directories in `root`: (normalised package name, path), listdir's order."""
    if not isinstance(root, str):
        raise _Unsure
    try:
        children = os.listdir(root or ".")
    except OSError:
        if os.path.isfile(root):
            raise _Unsure from None  # importlib reads it as a zip archive
        return []  # importlib finds nothing there either
    if os.path.basename(root).lower().endswith(".egg"):
        raise _Unsure
    infos = []
    for child in children:
        if not child.lower().endswith(_INFO_SUFFIXES):
            continue
        stem, suffix = os.path.splitext(child)
        if suffix not in _INFO_SUFFIXES:
            raise _Unsure  # e.g. `X.DIST-INFO`: importlib takes the name from its METADATA
        name = re.sub(r"[-_.]+", "-", stem.partition("-")[0]).lower().replace("-", "_")
        if not name:
            raise _Unsure  # importlib takes the name from its METADATA
        infos.append((name, os.path.join(root, child)))
    return infos


def _entries(info: str, group: str) -> list[Entry]:
    try:
        with open(os.path.join(info, "entry_points.txt"), encoding="utf-8") as file:
            text = file.read()
    except _MISSING:
        return []
    except (OSError, ValueError):
        raise _Unsure from None
    entries = []
    section = None
    for line in text.splitlines():
        value = line.strip()
        if not value or value.startswith("#"):
            continue
        if value.startswith("[") and value.endswith("]"):
            section = value.strip("[]")
        elif section is not None:
            name, equals, target = value.partition("=")
            if not equals:
                raise _Unsure  # importlib raises on it
            if section == group:
                entries.append((name.strip(), target.strip()))
    return entries
