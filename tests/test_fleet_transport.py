"""`sim fleet`'s devices: one SUBSCRIBE per device, their databases copied from one template,
and the devices kept off the cyclic collector.

Real parts: the session mosquitto broker, real `Fleet` devices (engines, SQLite stores, paho
connections) in this process, messages published through the broker to every filter. The two
`_settle` tests hand it the SUBACK outcomes a test broker cannot be made to give (a refused
filter, a count mismatch) as the transport's acknowledgement future would carry them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import os
import sqlite3
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from jobs_agent.config import ConnectionConfig
from jobs_agent.device import STATE_DATABASE
from jobs_agent.engine.store import Store
from jobs_agent.jobs.topics import device_subscriptions
from jobs_agent.sim import fleet as fleet_module
from jobs_agent.sim.fleet import Fleet, FleetOptions, _create_database, database_template
from jobs_agent.sim.fleet_transport import FleetTransport, _Batch, _settle
from jobs_agent.transport.base import Message, NotConnectedError, TransportError
from tests.fixtures.broker import Mosquitto


def _connection(broker: Mosquitto, client_id: str) -> ConnectionConfig:
    return ConnectionConfig(
        transport="paho", endpoint=broker.host, port=broker.port, tls=False, client_id=client_id
    )


async def test_subscriptions_asked_together_go_in_one_subscribe_and_each_works(
    mosquitto: Mosquitto,
) -> None:
    thing = f"ft-{uuid.uuid4().hex[:8]}"
    transport = FleetTransport(_connection(mosquitto, thing), thing)
    received: list[str] = []
    everything = asyncio.Event()
    filters = device_subscriptions(thing)
    # One topic under each filter (a `+` level filled in).
    topics = [f.replace("+", "job-1", 1).replace("+", "accepted") for f in filters]

    def on_message(message: Message) -> None:
        received.append(message.topic)
        if set(received) >= set(topics):
            everything.set()

    transport.set_message_callback(on_message)
    await transport.connect(timeout=10)
    try:
        await asyncio.gather(*(transport.subscribe(f) for f in filters))
        assert transport.subscribe_packets == 1
        for topic in topics:
            await transport.publish(topic, b"{}")
        await asyncio.wait_for(everything.wait(), 10)
        assert set(received) == set(topics)
        # A later subscription is a SUBSCRIBE of its own.
        await transport.subscribe(f"$aws/things/{thing}/shadow/get/accepted")
        assert transport.subscribe_packets == 2
    finally:
        await transport.disconnect()


async def test_a_fleet_subscribes_once_per_device_and_freezes_its_devices(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    options = FleetOptions(
        things=3,
        connection=_connection(mosquitto, "unused"),
        state_dir=tmp_path / "state",
        prefix=f"ff{uuid.uuid4().hex[:6]}-",
    )
    fleet = Fleet(options)
    frozen_before = gc.get_freeze_count()
    full: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(info["generation"])

    gc.callbacks.append(count)
    try:
        await fleet.start(timeout=30)
    finally:
        gc.callbacks.remove(count)
    try:
        # No full collection: connecting leaves next to no cyclic garbage, and one pass over
        # every object of the process cost 0.4 s at 1,000 things (fleet_heap.py's docstring).
        assert full == []
        assert gc.isenabled()
        assert gc.get_freeze_count() > frozen_before
        engines = {id(member.device.engine) for member in fleet.devices}
        tracked = {id(o) for generation in range(3) for o in gc.get_objects(generation)}
        assert not engines & tracked  # in the permanent generation: no collection walks them
        for member in fleet.devices:
            transport = member.device.transport
            assert isinstance(transport, FleetTransport)
            assert transport.subscribe_packets == 1
    finally:
        await fleet.stop()
    assert gc.get_freeze_count() == 0  # given back to the collector with the closed devices


def _subacks(*names: str) -> list[ReasonCode]:
    return [ReasonCode(PacketTypes.SUBACK, name) for name in names]


async def test_a_refused_filter_fails_only_its_own_subscribe() -> None:
    loop = asyncio.get_running_loop()
    batch = _Batch(["a/1", "a/2"], [loop.create_future(), loop.create_future()])
    done: asyncio.Future[object] = loop.create_future()
    done.set_result(_subacks("Granted QoS 1", "Not authorized"))
    _settle(batch, done)
    assert not batch.waiters[0].result().is_failure
    assert batch.waiters[1].result().is_failure


@pytest.mark.parametrize(
    "outcome",
    [NotConnectedError("connection lost"), _subacks("Granted QoS 1")],
    ids=["link lost", "fewer reason codes than filters"],
)
async def test_a_failed_batch_fails_every_caller(outcome: object) -> None:
    loop = asyncio.get_running_loop()
    batch = _Batch(["a/1", "a/2"], [loop.create_future(), loop.create_future()])
    done: asyncio.Future[object] = loop.create_future()
    if isinstance(outcome, BaseException):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)
    _settle(batch, done)
    for waiter in batch.waiters:
        with pytest.raises(TransportError):
            waiter.result()


def test_device_databases_are_copies_with_ids_of_their_own(tmp_path: Path) -> None:
    template = database_template(tmp_path / "template")
    assert not (tmp_path / "template").exists()
    paths = [tmp_path / name / STATE_DATABASE for name in ("a", "b")]
    for path in paths:
        _create_database(path, template)
    ids = []
    for path in paths:
        assert sorted(p.name for p in path.parent.iterdir()) == [STATE_DATABASE]
        store = Store(path, exclusive=True)
        try:
            ids.append(store.database_id)
            store.verify()  # the open database is the file at its path
        finally:
            store.close()
    assert len(set(ids)) == 2
    assert all(len(i) == 32 for i in ids)


def test_a_device_database_is_made_without_opening_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its id is written into the template's bytes: an UPDATE through SQLite cost 2.6 ms of CPU
    and 5 fdatasyncs a device while a fleet connected. The result is a whole database."""
    template = database_template(tmp_path / "template")
    paths = [tmp_path / name / STATE_DATABASE for name in ("a", "b")]
    opened: list[str] = []
    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: opened.append(str(a[0])))
    for path in paths:
        _create_database(path, template)
    monkeypatch.setattr(sqlite3, "connect", real_connect)
    assert opened == []
    ids = set()
    for path in paths:
        db = sqlite3.connect(str(path))
        try:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            ids.add(db.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()[0])
        finally:
            db.close()
    assert len(ids) == 2 and all(len(i) == 32 for i in ids)


def _sqlite_memory_used() -> Callable[[], int]:
    """SQLite's own count of the bytes it holds (not Python's: tracemalloc never sees them)."""
    try:
        library = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
    except OSError:
        pytest.skip("no shared SQLite library to ask")
    used = library.sqlite3_memory_used
    used.restype = ctypes.c_int64
    return lambda: int(used())


def test_an_open_device_database_holds_under_100_kb_of_sqlite_memory(tmp_path: Path) -> None:
    """A fleet holds one open store per thing. With SQLite's default 4 kB pages each held
    162 kB (the page cache's first allocation alone 20 pages), half of what a thing cost;
    the fleet's databases have 1 kB pages (`fleet.PAGE_SIZE`)."""
    memory_used = _sqlite_memory_used()
    template = database_template(tmp_path / "template")
    paths = [tmp_path / f"t{n}" / STATE_DATABASE for n in range(50)]
    for path in paths:
        _create_database(path, template)
    before = memory_used()
    stores = [Store(path, exclusive=True, hold_marker=False) for path in paths]
    try:
        per_store = (memory_used() - before) / len(stores)
        for store in stores:
            store.active()
            store.outbox()
    finally:
        for store in stores:
            store.close()
    assert per_store < 100 * 1024, per_store


def test_an_existing_device_database_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "thing" / STATE_DATABASE
    store = Store(path, exclusive=True)
    kept = store.database_id
    store.close()
    _create_database(path, database_template(tmp_path / "template"))
    store = Store(path, exclusive=True)
    try:
        assert store.database_id == kept
    finally:
        store.close()


def _open_files(path: Path) -> list[str]:
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            found.append(os.readlink(fd))
    return [f for f in found if f.startswith(str(path))]


def test_a_fleet_store_marks_start_next_without_holding_the_marker_open(tmp_path: Path) -> None:
    """The marker's contents are those of a gateway's store at every step; only no descriptor
    is held for it (a fleet's things are counted in descriptors)."""
    path = tmp_path / "thing" / STATE_DATABASE
    marker = path.with_name(STATE_DATABASE + ".taking")
    marker.parent.mkdir()
    marker.write_text("an earlier database's")
    store = Store(path, exclusive=True, hold_marker=False)
    try:
        store.taken()  # nothing was asked by this store: an earlier agent's marker goes
        assert not marker.exists()
        for _ in range(2):
            store.begin_taking()
            assert store.was_taking()
            assert marker.read_text() == store.database_id
            assert str(marker) not in _open_files(tmp_path)
            store.taken()
            assert not store.was_taking()
            assert marker.read_bytes() == b""  # emptied, not unlinked (none made per job)
        assert sorted(_open_files(tmp_path)) == [str(path), f"{path}-wal"]
        elsewhere = tmp_path / "elsewhere"
        elsewhere.write_text("kept")
        store.begin_taking()
        marker.unlink()
        marker.symlink_to(elsewhere)  # the marker is never emptied through a link
        with pytest.raises(OSError):
            store.taken()
        assert elsewhere.read_text() == "kept"
    finally:
        store.close()


async def test_a_fleets_stores_are_spread_over_single_worker_threads(
    mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One store thread for the whole fleet made every device's fsyncs wait in one line (on
    this disk 8 threads do ~10x the fdatasyncs per second of one); each device still keeps one
    single-worker thread, so its own writes stay in order."""
    monkeypatch.setattr(fleet_module, "STORE_THREADS", 2)
    options = FleetOptions(
        things=3,
        connection=_connection(mosquitto, "unused"),
        state_dir=tmp_path / "state",
        prefix=f"fs{uuid.uuid4().hex[:6]}-",
    )
    fleet = Fleet(options)
    await fleet.start(timeout=30)
    try:
        executors = [member.device.store._executor for member in fleet.devices]
        assert all(isinstance(e, ThreadPoolExecutor) and e._max_workers == 1 for e in executors)
        assert executors[0] is executors[2]
        assert executors[0] is not executors[1]
    finally:
        await fleet.stop()
