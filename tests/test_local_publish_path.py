"""The local bus's per-message path (issue 18): a publish on a kept route costs the bus two
Python calls of its own, not five, and asks for the thread once.

A local job publishes eight messages (two by the agent, six by the emulator), and each went
through `_publish`, `_session_for`, `_route`, `_schedule_delivery` and `_schedule`, asking for
the thread's ident two or three times. These tests count those calls on a real bus and loop,
and check the paths the merged steps still take: a client on another loop's thread gets every
message in order, a client whose link is down gets its messages on resume, and a publish on a
link that is down is refused as before.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.transport import local
from jobs_agent.transport.base import Message, NotConnectedError
from jobs_agent.transport.local import LocalBus, LocalTransport
from tests.helpers.calls import Calls

LOCAL = (str(Path(local.__file__)),)
TOPIC = "$aws/things/t1/jobs/notify"


async def _client(bus: LocalBus, client_id: str, heard: list[str]) -> LocalTransport:
    transport = LocalTransport(bus, client_id)
    transport.set_message_callback(lambda message: heard.append(message.payload.decode()))
    await transport.connect(5)
    await transport.subscribe("$aws/things/+/jobs/#")
    return transport


async def test_a_publish_on_a_kept_route_makes_two_calls_of_the_bus_and_one_thread_ask() -> None:
    bus = LocalBus()
    heard_a: list[str] = []
    heard_b: list[str] = []
    publisher = LocalTransport(bus, "publisher")
    await publisher.connect(5)
    await _client(bus, "a", heard_a)
    await _client(bus, "b", heard_b)
    await publisher.publish(TOPIC, b"warm")  # the route is kept from here on
    calls = Calls(LOCAL)
    with calls.counting():
        for index in range(10):
            bus._publish(publisher, TOPIC, str(index).encode())
    own = {name: n for (file, name), n in calls.by_name.items() if file == "local.py"}
    assert own == {"_publish": 10, "_schedule_delivery": 20}, calls.by_name
    assert calls.by_name[("builtin", "get_ident")] == 10, calls.by_name
    async with asyncio.timeout(10):
        while len(heard_a) < 11 or len(heard_b) < 11:
            await asyncio.sleep(0)  # lets the loop run the deliveries; the count decides
    expected = ["warm", *(str(index) for index in range(10))]
    assert heard_a == expected
    assert heard_b == expected


async def test_a_client_on_another_loop_s_thread_gets_every_message_in_order() -> None:
    bus = LocalBus()
    publisher = LocalTransport(bus, "publisher")
    await publisher.connect(5)
    heard: list[str] = []
    subscribed = threading.Event()
    done = threading.Event()
    stop: list[Any] = []

    async def other_loop() -> None:
        transport = LocalTransport(bus, "other")

        def received(message: Message) -> None:
            heard.append(message.payload.decode())
            if len(heard) == 50:
                done.set()

        transport.set_message_callback(received)
        await transport.connect(5)
        await transport.subscribe(TOPIC)
        stopped = asyncio.Event()
        stop.append((asyncio.get_running_loop(), stopped))
        subscribed.set()
        await stopped.wait()
        await transport.disconnect()

    thread = threading.Thread(target=asyncio.run, args=(other_loop(),))
    thread.start()
    try:
        assert await asyncio.to_thread(subscribed.wait, 10)
        for index in range(50):
            await publisher.publish(TOPIC, str(index).encode())
        assert await asyncio.to_thread(done.wait, 10)
    finally:
        if stop:
            loop, stopped = stop[0]
            loop.call_soon_threadsafe(stopped.set)
        await asyncio.to_thread(thread.join, 10)
    assert heard == [str(index) for index in range(50)]


async def test_a_client_whose_link_is_down_gets_its_messages_on_resume() -> None:
    bus = LocalBus()
    publisher = LocalTransport(bus, "publisher")
    await publisher.connect(5)
    heard: list[str] = []
    await _client(bus, "down", heard)
    bus.set_online(False, client_id="down")
    for index in range(3):
        await publisher.publish(TOPIC, str(index).encode())
    assert heard == []
    bus.set_online(True, client_id="down")
    async with asyncio.timeout(10):
        while len(heard) < 3:
            await asyncio.sleep(0)  # lets the loop run the deliveries; the count decides
    assert heard == ["0", "1", "2"]


async def test_a_publish_on_a_link_that_is_down_is_refused() -> None:
    bus = LocalBus()
    publisher = LocalTransport(bus, "publisher")
    await publisher.connect(5)
    bus.set_online(False, client_id="publisher")
    with pytest.raises(NotConnectedError, match="not connected to the local bus"):
        await publisher.publish(TOPIC, b"x")
    assert bus.published == 0
