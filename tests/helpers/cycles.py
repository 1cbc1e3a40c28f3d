"""What a piece of work leaves for the cyclic collector (issue 18: a job's objects should go with
their reference counts, not wait for a collection that walks the heap on the event loop)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def cyclic_garbage() -> Iterator[list[str]]:
    """Run the block with the collector off and `gc.DEBUG_SAVEALL`; after it, the list holds the
    type names of what only the collector could have freed (empty: nothing was in a cycle).
    What was garbage before the block is collected first, so it is not counted."""
    left: list[str] = []
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield left
        gc.collect()
        left.extend(sorted({type(o).__qualname__ for o in gc.garbage}))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
