"""What the awscrt backend costs per message, on a real mTLS connection to mosquitto: counted,
not timed (the behaviour itself is tests/test_transport.py's suite)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tests.fixtures.broker import Mosquitto
from tests.test_transport import AwscrtBackend, Inbox, _awscrt

MESSAGES = 5


async def test_crt_callbacks_keep_one_python_thread_state(
    mosquitto_factory: Callable[[], Mosquitto],
) -> None:
    """Each CRT callback into Python used to build a Python thread state and delete it on
    return (a 16 KiB frame stack mapped and unmapped each time, about 7 per job). A
    `threading.local` lives in the thread state, so what one callback on the CRT thread stores
    there is seen by the next one only when the state is kept."""
    backend = AwscrtBackend(mosquitto_factory(), _awscrt)
    local = threading.local()
    seen: list[int | None] = []
    try:
        transport = backend.make("gw-thread-state")
        real = transport._crt_publish_received  # type: ignore[attr-defined]

        def spy(data: Any) -> None:
            seen.append(getattr(local, "calls", None))
            local.calls = len(seen)
            real(data)

        transport._crt_publish_received = spy  # type: ignore[attr-defined]
        inbox = Inbox(transport)
        await transport.connect(timeout=10.0)
        await transport.subscribe("state/#")
        for index in range(MESSAGES):
            await transport.publish(f"state/{index}", b"x")
            assert (await inbox.next()).topic == f"state/{index}"
    finally:
        await backend.close()
    assert seen == [None, *range(1, MESSAGES)]
