"""The state database on a full filesystem.

The state directory is a real 8 MiB tmpfs (mounted for the test when the sandbox allows it, as
root) and the disk is filled with a real file until the kernel answers ENOSPC, so SQLite fails
exactly as it would on a full SD card. Where mounting is not allowed, the storage layer's write
is made to fail with the error SQLite gives on a full disk ("database or disk is full") instead:
that fallback is a simulation, and the test's output says which one ran.

What must hold: the agent logs a clear error naming the database and the cause, does not stop or
crash-loop (one task, retrying with back-off), loses no outcome (one decided before the disk
filled is delivered, exactly once, after space is freed), and starts no job while it cannot write
its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.engine.store import ExecutionKey, ExecutionState, Store, StoreError
from tests.helpers.agent_harness import (
    THING,
    Harness,
    captured_logs,
    make_config,
    make_handler_dir,
    running_agent,
    runs,
    write_script,
)


class DiskFault:
    """A filesystem for the state directory that can be filled and freed."""

    def __init__(self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.directory = directory
        self.filler = directory / "filler"
        self.full = False
        directory.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(directory)],
            capture_output=True,
            check=False,
        )
        self.real = result.returncode == 0
        if not self.real:
            # Every write, a transition's too, goes through `_write_locked`.
            original = Store._write_locked

            def write(
                store: Store,
                statements: list[tuple[str, tuple[Any, ...]]],
                transition: Any,
                *,
                durable: bool,
            ) -> None:
                if self.full:
                    raise StoreError(
                        f"cannot write the state database {store.path}: database or disk is full"
                    )
                original(store, statements, transition, durable=durable)

            monkeypatch.setattr(Store, "_write_locked", write)

    def fill(self) -> None:
        self.full = True
        if not self.real:
            return
        chunk = b"\0" * 65536
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (65536, 4096, 512, 1):
                try:
                    while True:
                        os.write(fd, chunk[:size])
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        assert os.statvfs(self.directory).f_bavail == 0

    def free(self) -> None:
        self.full = False
        if self.real:
            self.filler.unlink()

    def close(self) -> None:
        if self.real:
            subprocess.run(["umount", "-l", str(self.directory)], check=False)


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DiskFault]:
    fault = DiskFault(tmp_path / "state", monkeypatch)
    print("state directory:", "real tmpfs, filled with a file" if fault.real else "simulated")
    try:
        yield fault
    finally:
        fault.close()


WAIT_SCRIPT = """#!/bin/sh
printf '%s#%s\\n' "$JOBS_AGENT_JOB_ID" "$JOBS_AGENT_EXECUTION_NUMBER" >> {runs}
echo '{{"percent": 10, "message": "waiting for the test"}}' >&3
read line < {fifo}
echo done
"""


def setup(tmp_path: Path) -> Path:
    make_handler_dir(tmp_path)
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    write_script(
        tmp_path / "handlers",
        "wait.sh",
        WAIT_SCRIPT.format(runs=tmp_path / "runs.log", fifo=fifo),
    )
    return fifo


async def started(harness: Harness, job_id: str) -> None:
    """The handler runs: its progress reached the service."""
    await harness.service.wait_for(
        lambda: any(
            e.status_details.get("percent") == "10"
            for e in harness.service.history(job_id=job_id, thing=THING)
        ),
        timeout=10,
    )


async def release(fifo: Path) -> None:
    def write() -> None:
        with open(fifo, "w") as out:
            out.write("go\n")

    await asyncio.to_thread(write)


def db_errors(logs: Any) -> list[dict[str, Any]]:
    return logs.matching(lambda r: r.get("event", "").startswith("state database error"))


async def test_outcome_decided_before_the_disk_filled_is_delivered_once(
    tmp_path: Path, disk: DiskFault
) -> None:
    fifo = setup(tmp_path)
    config = make_config(tmp_path, state_dir=disk.directory, request_timeout_seconds=30.0)
    database = disk.directory / "state.db"
    with captured_logs("info") as logs:
        async with running_agent(tmp_path, config) as harness:
            harness.service.create_job("before", [THING], {"operation": "wait.sh"})
            await started(harness, "before")
            # The service becomes unreachable, the step ends: the outcome is decided and stored
            # in the outbox, but cannot be sent.
            harness.bus.set_online(False, client_id=THING)
            await release(fifo)
            await logs.wait_for(
                lambda r: r.get("event") == "outcome decided" and r.get("job_id") == "before"
            )
            disk.fill()
            harness.bus.set_online(True, client_id=THING)
            first = await logs.wait_for(lambda r: r in db_errors(logs))
            assert str(database) in first[0]["error"]  # the cause: see the next test
            assert first[0]["level"] == "error"
            # The report itself reached the service once; the agent could not record that.
            await harness.wait_terminal("before")
            assert harness.terminal_reports("before") == {1: 1}
            # While the state cannot be written, no new job is taken.
            harness.service.create_job("during", [THING], {"operation": "ok.sh"})
            seen = len(db_errors(logs))
            await logs.wait_for(lambda r: r in db_errors(logs), count=seen + 2, timeout=15)
            assert str(harness.service.execution("during", THING).status) == "QUEUED"
            assert "during#1" not in runs(tmp_path)
            harness.assert_alive()
            assert len(db_errors(logs)) < 20, "retrying without back-off"
            disk.free()
            assert harness.agent.engine is not None
            harness.agent.engine.wake()
            during = await harness.wait_terminal("during", timeout=20)
            assert str(during.status) == "SUCCEEDED", during
            assert harness.terminal_reports("before") == {1: 1}
            assert harness.terminal_reports("during") == {1: 1}
            assert runs(tmp_path) == {"before#1": 1, "during#1": 1}
            harness.assert_alive()
        outbox = Store(database).outbox()
        assert outbox == []


async def test_outcome_decided_while_the_disk_is_full_is_not_lost(
    tmp_path: Path, disk: DiskFault
) -> None:
    fifo = setup(tmp_path)
    config = make_config(tmp_path, state_dir=disk.directory)
    with captured_logs("info") as logs:
        async with running_agent(tmp_path, config) as harness:
            harness.service.create_job("running", [THING], {"operation": "wait.sh"})
            await started(harness, "running")
            harness.service.create_job("queued", [THING], {"operation": "ok.sh"})
            disk.fill()
            await release(fifo)
            await logs.wait_for(lambda r: r in db_errors(logs), count=2, timeout=15)
            assert str(harness.service.execution("queued", THING).status) == "QUEUED"
            harness.assert_alive()
            disk.free()
            assert harness.agent.engine is not None
            harness.agent.engine.wake()
            running = await harness.wait_terminal("running", timeout=20)
            await harness.wait_terminal("queued", timeout=20)
            assert harness.terminal_reports("running") == {1: 1}
            assert runs(tmp_path) == {"running#1": 1, "queued#1": 1}
            with contextlib.suppress(KeyError):
                print("reported:", running.status, running.status_details["reason"])
            assert str(running.status) == "SUCCEEDED", running.status_details


async def test_packages_of_a_job_decided_while_the_disk_is_full_are_not_lost(
    tmp_path: Path, disk: DiskFault
) -> None:
    """The software inventory rides with the outcome: what a SUCCEEDED job installed is recorded
    once the disk has room again, and reaches `$package`."""
    fifo = setup(tmp_path)
    config = make_config(tmp_path, state_dir=disk.directory)
    installs = {"firmware": {"version": "7"}}
    with captured_logs("info") as logs:
        async with running_agent(tmp_path, config) as harness:
            document = {"operation": "wait.sh", "installs": installs}
            harness.service.create_job("flash", [THING], document)
            await started(harness, "flash")
            disk.fill()
            await release(fifo)
            await logs.wait_for(lambda r: r in db_errors(logs), count=2, timeout=15)
            disk.free()
            assert harness.agent.engine is not None
            harness.agent.engine.wake()
            flashed = await harness.wait_terminal("flash", timeout=20)
            assert str(flashed.status) == "SUCCEEDED", flashed.status_details
            shadows = harness.service.shadows
            await harness.service.wait_for(
                lambda: shadows.document(THING, "$package") is not None, timeout=15
            )
            shown = shadows.document(THING, "$package")
            assert shown is not None and shown["state"]["reported"] == installs


def test_full_disk_error_names_the_cause(disk: DiskFault) -> None:
    if not disk.real:
        pytest.skip("needs a real full filesystem (tmpfs could not be mounted)")
    store = Store(disk.directory / "state.db")
    key = ExecutionKey("", "job-1", 1)
    try:
        store.record_received(key, {"operation": "x"}, 1, ExecutionState.STARTED)
        store.transition(key, ExecutionState.RUNNING, handler="x")
        store.decide(key, "SUCCEEDED", {"reason": "done"})
        disk.fill()
        with pytest.raises(StoreError) as info:
            store.reported(store.outbox()[0].id, key)
            store.settle()  # REPORTED waits for the next transaction (none: an idle agent's)
        message = str(info.value)
        assert str(disk.directory / "state.db") in message
        cause = message.replace(str(disk.directory / "state.db"), "")  # the path may say "full"
        assert "full" in cause, message
    finally:
        disk.free()
        store.close()
