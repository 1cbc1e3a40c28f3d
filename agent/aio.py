"""Small asyncio helpers.

`asyncio.wait_for` on Python 3.11 swallows a cancellation that arrives just as the awaited
future completes (fixed in 3.12), which turns a stop request into a loop that never ends.
`asyncio.timeout()` does not have that race, so waits in loops go through `wait_event`.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until `event` is set or `timeout` passes; True if it was set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
