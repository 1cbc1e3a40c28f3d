"""Python calls counted by (file, function), for the tests that hold a path to a budget of calls
(a count, where a timing would be noise on a shared machine)."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any


class Calls:
    """Calls made by code whose file starts with one of `prefixes`, on the thread counting; a C
    call is charged to the Python code that made it."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self.prefixes = prefixes
        self.by_name: Counter[tuple[str, str]] = Counter()

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if not frame.f_code.co_filename.startswith(self.prefixes):
            return
        if event == "call":
            self.by_name[(Path(frame.f_code.co_filename).name, frame.f_code.co_name)] += 1
        elif event == "c_call":
            self.by_name[("builtin", getattr(arg, "__qualname__", repr(arg)))] += 1

    @contextmanager
    def counting(self) -> Iterator[None]:
        sys.setprofile(self._profile)
        try:
            yield
        finally:
            sys.setprofile(None)

    @property
    def total(self) -> int:
        return sum(self.by_name.values())

    def of(self, file: str, function: str | None = None) -> int:
        """Calls of `function` in `file`, or of every function in it."""
        return sum(
            n
            for (name, called), n in self.by_name.items()
            if name == file and function in (None, called)
        )
