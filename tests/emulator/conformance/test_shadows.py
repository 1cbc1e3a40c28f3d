"""Device Shadow service: classic and named shadows, `$package`, over MQTT and `iot-data` REST.

Pages (developer guide, https://docs.aws.amazon.com/iot/latest/developerguide/PAGE):
device-shadow-document.html ("Device Shadow service documents", "Shadow document examples"),
device-shadow-mqtt.html ("Device Shadow MQTT topics"), device-shadow-data-flow.html
("Interacting with shadows"), device-shadow-error-messages.html, device-shadow-rest-api.html,
and the Software Package Catalog's preparing-to-use-software-package-catalog.html ("Reserved
named shadow"). A raw MQTT peer on the in-process bus publishes what a device publishes; boto3's
`iot-data` client drives the REST API.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from jobs_agent.emulator import JobsService, ManualClock
from jobs_agent.emulator.embedded import EmbeddedEmulator
from jobs_agent.emulator.http_api import HttpApi
from jobs_agent.emulator.shadows import ShadowError
from jobs_agent.emulator.store import StateStore
from jobs_agent.transport.base import Message
from jobs_agent.transport.local import LocalBus, LocalTransport
from tests.emulator.conformance.conftest import client

T0 = 1_700_000_000


class ShadowPeer:
    """A raw MQTT client on the bus subscribed to every shadow topic of one thing."""

    def __init__(self, bus: LocalBus, thing: str) -> None:
        self.thing = thing
        self.transport = LocalTransport(bus, f"peer-{thing}")
        self.messages: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.transport.set_message_callback(self._on)

    def _on(self, message: Message) -> None:
        self.messages.put_nowait((message.topic, json.loads(message.payload)))

    async def start(self) -> None:
        await self.transport.connect(5)
        await self.transport.subscribe(f"$aws/things/{self.thing}/shadow/#")

    def prefix(self, name: str | None) -> str:
        base = f"$aws/things/{self.thing}/shadow"
        return base if name is None else f"{base}/name/{name}"

    async def publish(self, name: str | None, verb: str, body: Any) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.transport.publish(f"{self.prefix(name)}/{verb}", payload)

    async def collect(self, name: str | None, verb: str, body: Any) -> dict[str, Any]:
        """Publish, then gather what comes back until the request's final answer, fenced by a
        `get` (the front end answers in order): {suffix: payload} of the replies."""
        await self.publish(name, verb, body)
        await self.publish(name, "get", {"clientToken": "fence"})
        got: dict[str, Any] = {}
        async with asyncio.timeout(2):
            while True:
                topic, payload = await self.messages.get()
                if not topic.startswith(self.prefix(name) + "/"):
                    continue
                suffix = topic[len(self.prefix(name)) + 1 :]
                if suffix in ("get", "update", "delete"):
                    continue  # our own requests
                if suffix.startswith("get/") and payload.get("clientToken") == "fence":
                    got["fence"] = payload
                    return got
                got[suffix] = payload


@pytest.fixture
async def shadow_emulator(clock: ManualClock) -> AsyncIterator[EmbeddedEmulator]:
    async with EmbeddedEmulator(LocalBus(), clock=clock, tick_seconds=None) as emu:
        yield emu


@pytest.fixture
async def peer(shadow_emulator: EmbeddedEmulator) -> AsyncIterator[ShadowPeer]:
    device = ShadowPeer(shadow_emulator.bus, "dev1")
    await device.start()
    yield device
    await device.transport.disconnect()


@pytest.fixture
def iot_data(shadow_emulator: EmbeddedEmulator) -> Iterator[Any]:
    api = HttpApi(shadow_emulator.service, "127.0.0.1", 0)
    api.start()
    assert api.endpoint is not None
    try:
        yield client("iot-data", api.endpoint)
    finally:
        api.stop()


async def test_update_is_accepted_with_metadata_version_and_documents(peer: ShadowPeer) -> None:
    """/update/accepted holds the request's state with a timestamp per field, the new version
    (the first is 1) and the clientToken; /update/documents has `current` (and `previous` once
    there was one); /get/accepted the whole document (device-shadow-document.html, Response
    state documents; device-shadow-mqtt.html /update/accepted, /update/documents)."""
    first = await peer.collect(
        None, "update", {"state": {"reported": {"temp": 20}}, "clientToken": "a"}
    )
    assert first["update/accepted"] == {
        "state": {"reported": {"temp": 20}},
        "metadata": {"reported": {"temp": {"timestamp": T0}}},
        "version": 1,
        "timestamp": T0,
        "clientToken": "a",
    }
    assert "previous" not in first["update/documents"]
    assert first["update/documents"]["current"]["state"] == {"reported": {"temp": 20}}
    second = await peer.collect(None, "update", {"state": {"reported": {"hum": [1, 2]}}})
    assert second["update/accepted"]["version"] == 2
    assert second["update/accepted"]["metadata"] == {
        "reported": {"hum": [{"timestamp": T0}, {"timestamp": T0}]}
    }
    documents = second["update/documents"]
    assert documents["previous"]["version"] == 1
    assert documents["previous"]["state"] == {"reported": {"temp": 20}}
    assert documents["current"]["version"] == 2
    assert documents["current"]["state"] == {"reported": {"temp": 20, "hum": [1, 2]}}
    fence = second["fence"]
    assert fence["state"] == {"reported": {"temp": 20, "hum": [1, 2]}}
    assert fence["version"] == 2
    assert fence["metadata"]["reported"]["temp"] == {"timestamp": T0}


async def test_delta_holds_every_desired_value_that_differs(peer: ShadowPeer) -> None:
    """/update/delta carries all desired attributes that differ from reported, whether from
    this update or stored, a nested difference with its path to the root, arrays compared
    whole; reported-only attributes are left out (device-shadow-mqtt.html /update/delta;
    device-shadow-document.html Delta state)."""
    await peer.collect(
        None,
        "update",
        {"state": {"reported": {"color": "GREEN", "engine": "ON", "lights": {"r": 1, "g": 0}}}},
    )
    got = await peer.collect(
        None,
        "update",
        {"state": {"desired": {"color": "RED", "lights": {"r": 1, "g": 255}, "tags": ["a"]}}},
    )
    delta = got["update/delta"]
    assert delta["state"] == {"color": "RED", "lights": {"g": 255}, "tags": ["a"]}
    assert delta["metadata"] == {
        "color": {"timestamp": T0},
        "lights": {"g": {"timestamp": T0}},
        "tags": [{"timestamp": T0}],
    }
    assert delta["version"] == 2
    assert got["fence"]["state"]["delta"] == delta["state"]
    # A report that resolves part of it: no delta message (the request has no desired state),
    # and the stored delta shrinks.
    reported = await peer.collect(None, "update", {"state": {"reported": {"color": "RED"}}})
    assert "update/delta" not in reported
    assert reported["fence"]["state"]["delta"] == {"lights": {"g": 255}, "tags": ["a"]}


async def test_null_removes_a_field_or_a_whole_section(peer: ShadowPeer) -> None:
    """ "Fields with a value of null are removed from the shadow document"; setting `desired`
    to null removes it (device-shadow-data-flow.html Deleting shadow data;
    device-shadow-document.html Empty shadow document properties)."""
    await peer.collect(
        None, "update", {"state": {"desired": {"a": 1, "b": 2}, "reported": {"a": 1}}}
    )
    got = await peer.collect(None, "update", {"state": {"desired": {"b": None}}})
    assert got["fence"]["state"] == {"desired": {"a": 1}, "reported": {"a": 1}}
    got = await peer.collect(None, "update", {"state": {"desired": None}})
    assert got["fence"]["state"] == {"reported": {"a": 1}}
    assert "desired" not in got["fence"]["metadata"]


async def test_a_stale_version_is_a_version_conflict(peer: ShadowPeer) -> None:
    """ "the service rejects the request with an HTTP 409 conflict response code if the current
    version of the state document does not match the version supplied" (device-shadow-data-
    flow.html Optimistic locking); the error document echoes the clientToken."""
    await peer.collect(None, "update", {"state": {"desired": {"colors": ["RED"]}}})
    got = await peer.collect(
        None,
        "update",
        {"state": {"desired": {"colors": ["BLUE"]}}, "version": 0, "clientToken": "x"},
    )
    assert got["update/rejected"] == {
        "code": 409,
        "message": "Version conflict",
        "timestamp": T0,
        "clientToken": "x",
    }
    ok = await peer.collect(
        None, "update", {"state": {"desired": {"colors": ["BLUE"]}}, "version": 1}
    )
    assert ok["update/accepted"]["version"] == 2


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        (b"{not json", 400, "Invalid JSON"),
        (b"[1, 2]", 400, "Invalid JSON"),
        ({"clientToken": "t"}, 400, "Missing required node: state"),
        ({"state": 5}, 400, "State node must be an object"),
        ({"state": {"desired": [1]}}, 400, "Desired node must be an object"),
        ({"state": {"reported": "x"}}, 400, "Reported node must be an object"),
        ({"state": {"reported": {}}, "version": "1"}, 400, "Invalid version"),
        ({"state": {"reported": {}}, "clientToken": "x" * 65}, 400, "Invalid clientToken"),
        (
            {"state": {"reported": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}},
            400,
            "JSON contains too many levels of nesting; maximum is 6",
        ),
        ({"state": {"delta": {"a": 1}}}, 400, "State contains an invalid node"),
        ({"state": {"reported": {"list": [1, None]}}}, 400, "State contains an invalid node"),
        (
            {"state": {"reported": {"big": "x" * 8200}}},
            413,
            "The payload exceeds the maximum size allowed",
        ),
        (
            b'{"state": {"reported": {"a": "\xff"}}}',
            415,
            "Unsupported documented encoding; supported encoding is UTF-8",
        ),
    ],
)
async def test_refused_updates_carry_the_documented_error(
    peer: ShadowPeer, payload: Any, code: int, message: str
) -> None:
    """The error table: codes and messages (device-shadow-error-messages.html; 8 KB and six
    levels: diagnosing-shadows.html and the service quotas; arrays "can't have null values",
    device-shadow-document.html)."""
    got = await peer.collect(None, "update", payload)
    assert "update/accepted" not in got
    rejected = got["update/rejected"]
    assert (rejected["code"], rejected["message"]) == (code, message)
    assert rejected["timestamp"] == T0


async def test_the_state_limit_counts_the_merged_document(peer: ShadowPeer) -> None:
    """The 8 KB is the stored desired and reported state, not the one request: "AWS IoT merges
    the current payload to the existing shadow document" (diagnosing-shadows.html: only the
    desired and reported data count, metadata does not)."""
    await peer.collect(None, "update", {"state": {"reported": {"a": "x" * 5000}}})
    got = await peer.collect(None, "update", {"state": {"reported": {"b": "y" * 5000}}})
    assert got["update/rejected"]["code"] == 413
    assert got["fence"]["version"] == 1  # the refused update changed nothing


async def test_delete_and_create_again(peer: ShadowPeer, clock: ManualClock) -> None:
    """/delete answers `{"version", "timestamp"}`; the shadow is then not found ("No shadow
    exists with name"); "If you create a device shadow document that has the same name as one
    that was deleted within the past 48 hours, the version number of the new device shadow
    document will follow that of the deleted one" (device-shadow-data-flow.html DELETE,
    device-shadow-error-messages.html 404)."""
    for value in (1, 2, 3):
        await peer.collect("cfg", "update", {"state": {"reported": {"v": value}}})
    got = await peer.collect("cfg", "delete", {"clientToken": "d"})
    assert got["delete/accepted"] == {"version": 3, "timestamp": T0, "clientToken": "d"}
    missing = await peer.collect("cfg", "get", {"clientToken": "g"})
    assert missing["get/rejected"]["code"] == 404
    assert missing["get/rejected"]["message"] == "No shadow exists with name: cfg"
    again = await peer.collect("cfg", "update", {"state": {"reported": {"v": 9}}})
    assert again["update/accepted"]["version"] == 4
    assert "previous" not in again["update/documents"]
    await peer.collect("cfg", "delete", {})
    clock.advance(48 * 3600 + 1)
    later = await peer.collect("cfg", "update", {"state": {"reported": {"v": 10}}})
    assert later["update/accepted"]["version"] == 1
    nothing = await peer.collect("never", "delete", {})
    assert nothing["delete/rejected"]["code"] == 404


async def test_named_shadows_are_apart_from_the_classic_one(
    peer: ShadowPeer, iot_data: Any
) -> None:
    """A named shadow has its own topics (`.../shadow/name/NAME/...`) and document; the
    classic shadow "does not appear" in ListNamedShadowsForThing (device-shadow-mqtt.html
    ShadowTopicPrefix; device-shadow-rest-api.html ListNamedShadowsForThing)."""
    await peer.collect(None, "update", {"state": {"reported": {"where": "classic"}}})
    got = await peer.collect("net", "update", {"state": {"reported": {"where": "net"}}})
    assert got["fence"]["state"] == {"reported": {"where": "net"}}
    await peer.collect("zz", "update", {"state": {"reported": {}}})
    listed = await asyncio.to_thread(iot_data.list_named_shadows_for_thing, thingName="dev1")
    assert listed["results"] == ["net", "zz"]
    page = await asyncio.to_thread(
        iot_data.list_named_shadows_for_thing, thingName="dev1", pageSize=1
    )
    assert page["results"] == ["net"]
    assert "nextToken" in page


async def test_the_rest_api_reads_and_writes_the_same_documents(
    peer: ShadowPeer, iot_data: Any
) -> None:
    """UpdateThingShadow returns the /accepted document and "AWS IoT will also publish an MQTT
    message to the .../update/delta topic"; GetThingShadow "includes the delta"; errors are
    the HTTP codes of the error page; DeleteThingShadow answers `{"version", "timestamp"}`
    (device-shadow-rest-api.html; device-shadow-data-flow.html Updating a shadow using the API;
    botocore iot-data's exception shapes)."""
    reply = await asyncio.to_thread(
        iot_data.update_thing_shadow,
        thingName="dev1",
        shadowName="cfg",
        payload=json.dumps({"state": {"desired": {"mode": "eco"}}}).encode(),
    )
    accepted = json.loads(reply["payload"].read())
    assert accepted["state"] == {"desired": {"mode": "eco"}}
    assert accepted["version"] == 1
    published: dict[str, Any] = {}
    async with asyncio.timeout(2):
        while "update/documents" not in published:
            topic, payload = await peer.messages.get()
            published[topic.rsplit("/cfg/", 1)[-1]] = payload
    assert published["update/accepted"] == accepted
    assert published["update/delta"]["state"] == {"mode": "eco"}
    got = await asyncio.to_thread(iot_data.get_thing_shadow, thingName="dev1", shadowName="cfg")
    document = json.loads(got["payload"].read())
    assert document["state"] == {"desired": {"mode": "eco"}, "delta": {"mode": "eco"}}
    with pytest.raises(iot_data.exceptions.ConflictException):
        await asyncio.to_thread(
            iot_data.update_thing_shadow,
            thingName="dev1",
            shadowName="cfg",
            payload=json.dumps({"state": {"reported": {}}, "version": 7}).encode(),
        )
    with pytest.raises(iot_data.exceptions.InvalidRequestException):
        await asyncio.to_thread(
            iot_data.update_thing_shadow, thingName="dev1", shadowName="cfg", payload=b"nope"
        )
    deleted = await asyncio.to_thread(
        iot_data.delete_thing_shadow, thingName="dev1", shadowName="cfg"
    )
    assert json.loads(deleted["payload"].read()) == {"version": 1, "timestamp": T0}
    with pytest.raises(iot_data.exceptions.ResourceNotFoundException):
        await asyncio.to_thread(iot_data.get_thing_shadow, thingName="dev1", shadowName="cfg")


async def test_the_package_shadow_takes_only_version_and_attributes(peer: ShadowPeer) -> None:
    """`$package` "doesn't update with metadata, and uses only the version and attributes
    keywords. Update requests that include other keywords, such as description, will receive
    an error response under the rejected topic"; its shape is
    `{"state": {"reported": {"<packageName>": {"version": "", "attributes": {}}}}, "version",
    "timestamp"}` (preparing-to-use-software-package-catalog.html, Reserved named shadow)."""
    report = {
        "state": {
            "reported": {
                "firmware": {"version": "1.2.0", "attributes": {"os": "linux"}},
                "agent": {"version": "0.1.0"},
            }
        },
        "clientToken": "p",
    }
    got = await peer.collect("$package", "update", report)
    accepted = got["update/accepted"]
    assert accepted == {
        "state": report["state"],
        "version": 1,
        "timestamp": T0,
        "clientToken": "p",
    }
    assert "metadata" not in got["update/documents"]["current"]
    assert got["fence"] == {
        "state": report["state"],
        "version": 1,
        "timestamp": T0,
        "clientToken": "fence",
    }
    refused = await peer.collect(
        "$package",
        "update",
        {"state": {"reported": {"firmware": {"version": "2", "description": "x"}}}},
    )
    assert refused["update/rejected"]["code"] == 400
    refused = await peer.collect(
        "$package", "update", {"state": {"reported": {"firmware": {"version": 2}}}}
    )
    assert refused["update/rejected"]["code"] == 400
    removed = await peer.collect("$package", "update", {"state": {"reported": {"agent": None}}})
    assert removed["fence"]["state"] == {
        "reported": {"firmware": {"version": "1.2.0", "attributes": {"os": "linux"}}}
    }


def test_shadows_survive_a_restart_with_state(tmp_path: Any) -> None:
    """`sim serve --state PATH` keeps shadows (and their versions) across restarts, as it keeps
    jobs (the emulator's persistence, docs/emulator.md)."""
    path = tmp_path / "state.db"
    store = StateStore(path)
    first = JobsService(ManualClock(), store=store)
    first.shadows.update("t", "$package", {"state": {"reported": {"p": {"version": "1"}}}})
    first.shadows.update("t", None, {"state": {"desired": {"x": 1}}})
    first.shadows.update("t", None, {"state": {"desired": {"x": 2}}})
    store.close()
    store = StateStore(path)
    try:
        second = JobsService(ManualClock(), store=store)
        assert second.shadows.get("t", "$package")["state"] == {"reported": {"p": {"version": "1"}}}
        document = second.shadows.get("t")
        assert document["version"] == 2
        assert document["state"]["desired"] == {"x": 2}
        with pytest.raises(ShadowError):
            second.shadows.get("t", "other")
    finally:
        store.close()
