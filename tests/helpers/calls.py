"""Python calls counted by (file, function), for the tests that hold a path to a budget of calls
(a count, where a timing would be noise on a shared machine)."""

from __future__ import annotations

import asyncio
import gc
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
        """Count meanwhile, with the cyclic garbage collector held off: a collection inside
        the window runs the finalizers of whatever earlier tests of the same worker left in
        cycles (paho's `Client.__del__`: four counted calls per client), which is no cost of
        the path counted and came with the suite's load (2,251 calls against 2,199 in
        test_a_message_costs_the_device_s_paho_client_few_calls)."""
        enabled = gc.isenabled()
        gc.disable()
        sys.setprofile(self._profile)
        try:
            yield
        finally:
            sys.setprofile(None)
            if enabled:
                gc.enable()

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


@contextmanager
def loop_asks(watched: tuple[str, ...]) -> Iterator[list[str]]:
    """Asks for the running loop (a `getpid` system call each on Python 3.11) made by code in
    files ending with one of `watched`, as "file:function", on the thread counting."""
    asks: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        name = getattr(arg, "__name__", "")
        if (
            event == "c_call"
            and frame.f_code.co_filename.endswith(watched)
            and name in ("get_running_loop", "_get_running_loop")
        ):
            asks.append(f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_code.co_name}")

    sys.setprofile(profile)
    try:
        yield asks
    finally:
        sys.setprofile(None)


@contextmanager
def timers_armed() -> Iterator[list[float]]:
    """The deadlines of the timers armed on the running loop (its `call_at`) meanwhile."""
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        armed.append(when)
        return call_at(when, callback, *args, **kwargs)

    loop.call_at = counting  # type: ignore[method-assign]
    try:
        yield armed
    finally:
        del loop.call_at
