"""The `system-update` handler end to end: a real `jobs-agent run` process on a real mosquitto,
the real RAUC (its service on a private D-Bus, slots that are files, the custom bootloader of
tests/fixtures/rauc_bootloader.py) and a signed bundle built in the test, served over HTTP.

A reboot is what the device would do: the agent's reboot command only records the call; the
test then "cuts the power" (kills the agent), lets the simulated bootloader pick the slot
(`device.reboot()`), changes the boot id the agent reads, and starts the agent again. Kills in
a phase use the handler's crash hook (`JOBS_AGENT_CRASH_AT=system-update:PHASE`: a SIGKILL
right after the phase is written, before its side effect), so every kill lands at an exact line.

Each test asserts the final status and statusDetails, the slots' states (what the bootloader
boots next, what the slot holds) and what the device reported when (the emulator's history).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import json
import os
import secrets
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.device import STATE_DATABASE
from jobs_agent.emulator.embedded import Emulator
from jobs_agent.engine.store import ExecutionRecord, Store
from jobs_agent.vocabulary import ExecutionRef
from tests.fixtures.broker import Mosquitto
from tests.fixtures.rauc import RaucDevice, rauc_device  # noqa: F401 (fixture)
from tests.fixtures.swupdate import SwupdateDevice, swupdate_device  # noqa: F401 (fixture)
from tests.fixtures.updaters import update_pki  # noqa: F401 (fixture)
from tests.harness import (
    AgentProcess,
    agent_config,
    config_yaml,
    terminal_statuses,
    wait_pid_gone,
    wait_terminal,
    wait_until,
    write_handler,
)
from tests.helpers.s3_standin import Plan, s3_standin
from tests.helpers.streams import create_stream

pytestmark = pytest.mark.slow

THING_PREFIX = "gw-ab"
"""Each test's thing name is unique (`Gateway.thing`): the restarted agent stops whatever
carries its job's marks (thing, job id, execution number), so two runs of these tests at once
on one machine must never share them."""
PAYLOAD = b"new system " * 20_000


class _Files(http.server.SimpleHTTPRequestHandler):
    """Serves the directory; `/held/NAME` sends half of NAME, then holds the connection until
    the server's `release` event (a download in progress, for as long as the test wants)."""

    release: threading.Event

    def do_GET(self) -> None:
        if not self.path.startswith("/held/"):
            super().do_GET()
            return
        data = (Path(self.directory) / self.path.removeprefix("/held/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.release.wait(60)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A plain HTTP file server on a directory (the agent allows http:// in these tests)."""
    directory = tmp_path / "www"
    directory.mkdir()

    release = threading.Event()

    def handler(*args: Any) -> _Files:
        files = _Files.__new__(_Files)
        files.release = release
        files.__init__(*args, directory=str(directory))  # type: ignore[misc]
        return files

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield directory, server.server_address[1]
    release.set()
    server.shutdown()
    server.server_close()


@dataclass
class Gateway:
    """The device around the agent: boot id, reboot command, health marker, the RAUC device."""

    tmp_path: Path
    device: Any
    """A RaucDevice or a SwupdateDevice (tests/fixtures)."""
    emulator: Emulator
    agent: AgentProcess
    thing: str
    boots: int = 1

    @property
    def reboot_calls(self) -> int:
        path = self.tmp_path / "reboots.log"
        return len(path.read_text().splitlines()) if path.exists() else 0

    async def wait_reboot_call(self, count: int) -> None:
        await self.wait_device(lambda: self.reboot_calls >= count, f"reboot command call {count}")

    async def wait_device(self, predicate: Callable[[], bool], what: str) -> None:
        """`wait_until` for the device's side (a file the updater or the agent makes), saying
        on a timeout what the service and the agent said: a wait that only timed out left
        nothing to find the cause of a failure seen once in CI."""
        try:
            await wait_until(predicate, 60, what)
        except TimeoutError as exc:
            reports = [
                {"status": str(h.to_status), **h.status_details}
                for h in self.emulator.service.history()
            ]
            raise AssertionError(
                f"{exc}\nreports: {reports[-5:]}\nagent log:\n{self.agent.log_text()}"
            ) from None

    def power_cycle(self, *, boot: bool = True) -> str | None:
        """The power goes; the bootloader boots a slot (unless `boot` is false: the agent
        restarts on the same boot). Returns the booted slot."""
        self.agent.kill()
        if not boot:
            return None
        booted = self.device.reboot()
        self.boots += 1
        (self.tmp_path / "boot_id").write_text(f"boot-{self.boots}\n")
        return booted

    async def start(self, **env: str) -> None:
        self.agent.start(**env)
        await self.agent.wait_ready()

    def configure(self, **options: Any) -> None:
        """Change `system_update:` options in the agent's configuration (read at its start)."""
        config = self.tmp_path / "config.yaml"
        lines = config.read_text().splitlines(keepends=True)
        for key, value in options.items():
            lines = [
                f"  {key}: {json.dumps(value)}\n" if line.startswith(f"  {key}:") else line
                for line in lines
            ]
        config.write_text("".join(lines))

    def healthy(self, value: bool) -> None:
        marker = self.tmp_path / "healthy"
        if value:
            marker.write_text("ok\n")
        else:
            marker.unlink(missing_ok=True)

    def device_reports(self, job_id: str) -> list[dict[str, str]]:
        return [
            {"status": str(h.to_status), **h.status_details}
            for h in self.emulator.service.history(job_id=job_id)
            if str(h.source) == "device"
        ]

    def record(self, job_id: str) -> ExecutionRecord | None:
        """The agent's own record of the execution (read once the agent is stopped)."""
        store = Store(self.tmp_path / "state" / STATE_DATABASE)
        try:
            return store.get(ExecutionRef(None, job_id, 1))
        finally:
            store.close()

    def record_state(self, job_id: str) -> str | None:
        """The state of the agent's record, read beside the running agent (read-only)."""
        database = self.tmp_path / "state" / STATE_DATABASE
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            row = connection.execute(
                "SELECT state FROM executions WHERE job_id = ?", (job_id,)
            ).fetchone()
        finally:
            connection.close()
        return str(row[0]) if row else None

    async def wait_record_state(self, job_id: str, state: str) -> None:
        await wait_until(lambda: self.record_state(job_id) == state, 60, f"record {state}")

    def phases_reported(self, job_id: str) -> list[str]:
        """The `phase` of each device update, repeats removed."""
        seen: list[str] = []
        for report in self.device_reports(job_id):
            phase = report.get("phase")
            if phase and (not seen or seen[-1] != phase):
                seen.append(phase)
        return seen


def _system_update_yaml(updater_options: dict[str, Any], health: Path) -> str:
    """The `system_update:` section; values as JSON, which YAML reads as they are."""
    options = {
        **updater_options,
        "health_commands": [["test", "-e", str(health)]],
        # Long enough for an agent restarted during verify on a loaded machine; the tests of
        # a failing check shorten it (`Gateway.configure`).
        "health_deadline_seconds": 60,
        "health_interval_seconds": 0.1,
    }
    return "system_update:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in options.items())


@contextlib.contextmanager
def _gateway(
    tmp_path: Path,
    port: int,
    emulator: Emulator,
    device: RaucDevice | SwupdateDevice,
    updater_options: dict[str, Any],
) -> Iterator[Gateway]:
    (tmp_path / "boot_id").write_text("boot-1\n")
    thing = f"{THING_PREFIX}-{secrets.token_hex(4)}"
    reboot = write_handler(
        tmp_path / "bin",
        "reboot",
        f"#!/bin/sh\necho reboot >> {tmp_path / 'reboots.log'}\n"
        f"test -e {tmp_path / 'reboot-fails'} && exit 1\nexit 0\n",
    )
    config = agent_config(
        tmp_path,
        port,
        thing=thing,
        boot_id_path=tmp_path / "boot_id",
        reboot_command=(str(reboot),),
        stop_timeout_seconds=1,
        allow_http_downloads=True,
    )
    text = config_yaml(config) + _system_update_yaml(updater_options, tmp_path / "healthy")
    (tmp_path / "config.yaml").write_text(text)
    agent = AgentProcess(config_path=tmp_path / "config.yaml", workdir=tmp_path)
    gateway = Gateway(tmp_path, device, emulator, agent, thing)
    gateway.healthy(True)
    try:
        yield gateway
    finally:
        agent.kill()


@pytest.fixture
def gateway(
    tmp_path: Path,
    mosquitto: Mosquitto,
    emulator: Emulator,
    rauc_device: RaucDevice,  # noqa: F811
    files: tuple[Path, int],
) -> Iterator[Gateway]:
    options = {"rauc_dbus_address": rauc_device.dbus_address}
    with _gateway(tmp_path, mosquitto.port, emulator, rauc_device, options) as gateway:
        yield gateway


@pytest.fixture
def swupdate_gateway(
    tmp_path: Path,
    mosquitto: Mosquitto,
    emulator: Emulator,
    swupdate_device: SwupdateDevice,  # noqa: F811
    files: tuple[Path, int],
) -> Iterator[Gateway]:
    config = swupdate_device.config()
    options = {
        "swupdate_slots": dict(config.slots),
        "swupdate_ca_certificate": str(config.ca_certificate),
        "swupdate_hardware": config.hardware,
        "swupdate_bootloader": config.bootloader,
        "swupdate_fw_env_config": str(config.fw_env_config),
        "swupdate_cmdline_path": str(config.cmdline_path),
        "swupdate_command": list(config.swupdate_command),
    }
    with _gateway(tmp_path, mosquitto.port, emulator, swupdate_device, options) as gateway:
        yield gateway


def _in_order(expected: list[str], gateway: Gateway, job_id: str) -> bool:
    """The phases were reported in this order (progress is coalesced: a short phase between
    two reports may not show, so the others are looked for as a subsequence)."""
    reported = iter(gateway.phases_reported(job_id))
    return all(phase in reported for phase in expected)


def _document(
    files: tuple[Path, int], device: RaucDevice | SwupdateDevice, updater: str = "rauc"
) -> dict[str, Any]:
    directory, port = files
    bundle = device.build_bundle(PAYLOAD)
    (directory / bundle.name).write_bytes(bundle.read_bytes())
    return {
        "operation": "system-update",
        "updater": updater,
        "url": f"http://127.0.0.1:{port}/{bundle.name}",
        "sha256": hashlib.sha256(bundle.read_bytes()).hexdigest(),
    }


async def test_an_update_is_committed_once_the_new_system_is_healthy(
    gateway: Gateway, files: tuple[Path, int]
) -> None:
    device, emulator = gateway.device, gateway.emulator
    await gateway.start()
    emulator.service.create_job("ab-ok", [gateway.thing], _document(files, device))
    await gateway.wait_reboot_call(1)
    # Switched, not committed: B boots next on trial, A still runs; nothing final yet.
    assert device.next_boot() == ("B", True)
    assert device.slot_starts_with("B", PAYLOAD)
    assert str(emulator.service.execution("ab-ok", gateway.thing).status) == "IN_PROGRESS"
    announced = gateway.device_reports("ab-ok")[-1]
    assert announced["reboot"] == "requested"
    assert announced["phase"] == "reboot"
    assert (announced["fromSlot"], announced["toSlot"]) == ("A", "B")

    assert gateway.power_cycle() == "B"
    await gateway.start()
    execution = await wait_terminal(emulator, "ab-ok", gateway.thing, timeout=60)

    assert str(execution.status) == "SUCCEEDED", gateway.agent.log_text()
    details = execution.status_details
    assert (details["slot"], details["previousSlot"], details["phase"]) == ("B", "A", "commit")
    assert details["reboot"] == "done"
    assert device.next_boot() == ("B", False)  # committed: no more tries counted
    assert device.boot_state()["slots"]["B"]["state"] == "good"
    assert device.attempts == ["A", "B"]
    assert terminal_statuses(emulator, "ab-ok") == ["SUCCEEDED"]
    # verify with no health checks configured ends at once: its progress report is coalesced
    # into commit's (as `_in_order` allows for short phases); commit is only reachable through
    # verify (phases.TRANSITIONS, enforced when written).
    assert _in_order(["download", "install", "reboot", "commit"], gateway, "ab-ok")


async def test_the_bundle_can_come_from_a_stream_over_mqtt(
    gateway: Gateway, files: tuple[Path, int]
) -> None:
    """For devices without HTTPS to S3: the bundle in blocks over the agent's MQTT connection
    (MQTT-based file delivery, the emulator's streams), the same sha256 rule."""
    device, emulator = gateway.device, gateway.emulator
    document = _document(files, device)
    bundle = (files[0] / document.pop("url").rsplit("/", 1)[1]).read_bytes()
    create_stream(emulator.service, "os-2", {0: bundle})
    document["stream"] = {"streamId": "os-2", "fileId": 0, "blockSize": 1024}
    await gateway.start()
    emulator.service.create_job("ab-stream", [gateway.thing], document)
    await gateway.wait_reboot_call(1)
    assert device.next_boot() == ("B", True)
    assert gateway.power_cycle() == "B"
    await gateway.start()
    execution = await wait_terminal(emulator, "ab-stream", gateway.thing, timeout=60)

    assert str(execution.status) == "SUCCEEDED", gateway.agent.log_text()
    assert device.slot_starts_with("B", PAYLOAD)
    assert device.next_boot() == ("B", False)
    assert any(
        r.get("phase") == "download" and r.get("message", "").endswith("blocks")
        for r in gateway.device_reports("ab-stream")
    )


async def test_a_bundle_url_that_expires_mid_download_is_fetched_again(
    gateway: Gateway, files: tuple[Path, int]
) -> None:
    """The bundle behind a presigned URL (the S3 stand-in, tests/helpers/s3_standin.py: AWS
    itself cannot run here) whose signature runs out a third of the way through: the next
    request gets 403, the agent fetches the job document again, and the download continues
    from the bytes it has with the new URL, the way `download-file` does (the same code); the
    bundle is installed. (Before: REJECTED, "path: expected an absolute file path, got None":
    the download code was handed the whole system-update document fetched again.)"""
    device, emulator = gateway.device, gateway.emulator
    document = _document(files, device)
    bundle = (files[0] / document["url"].rsplit("/", 1)[1]).read_bytes()
    with s3_standin() as s3:
        url = s3.put("/os/update.raucb", bundle)
        cut = len(bundle) // 3
        s3.plans.append(Plan(cut_after=cut))
        document["url"] = "${aws:iot:s3-presigned-url:" + url + "}"
        await gateway.start()
        described = emulator.service.counters["DescribeJobExecution"]
        emulator.service.create_job("ab-presigned", [gateway.thing], document)
        await wait_until(
            lambda: gateway.reboot_calls >= 1 or bool(terminal_statuses(emulator, "ab-presigned")),
            60,
            "the reboot command, or an outcome",
        )
        execution = emulator.service.execution("ab-presigned", gateway.thing)
        assert str(execution.status) == "IN_PROGRESS", execution.status_details
        order = s3.signatures()
        seen = [(order.index(e.signature or ""), e.range, e.status) for e in s3.seen]
    assert seen == [(0, None, 200), (0, f"bytes={cut}-", 403), (1, f"bytes={cut}-", 206)]
    assert emulator.service.counters["DescribeJobExecution"] == described + 1
    assert device.next_boot() == ("B", True)
    assert device.slot_starts_with("B", PAYLOAD)


async def test_a_failing_health_check_rolls_back_to_the_old_slot(
    gateway: Gateway, files: tuple[Path, int]
) -> None:
    device, emulator = gateway.device, gateway.emulator
    await gateway.start()
    emulator.service.create_job("ab-sick", [gateway.thing], _document(files, device))
    await gateway.wait_reboot_call(1)
    gateway.healthy(False)  # the new system lacks what the check looks for
    gateway.configure(health_deadline_seconds=1.5)
    assert gateway.power_cycle() == "B"
    await gateway.start()
    # The checks fail until the deadline: slot B is marked bad and the agent reboots again.
    await gateway.wait_reboot_call(2)
    assert device.next_boot() == ("A", False)
    assert device.boot_state()["slots"]["B"]["state"] == "bad"
    assert str(emulator.service.execution("ab-sick", gateway.thing).status) == "IN_PROGRESS"
    assert gateway.device_reports("ab-sick")[-1]["phase"] == "rollback_reboot"
    assert gateway.power_cycle() == "A"
    await gateway.start()
    execution = await wait_terminal(emulator, "ab-sick", gateway.thing, timeout=60)

    assert str(execution.status) == "FAILED", gateway.agent.log_text()
    details = execution.status_details
    assert details["reason"].startswith(f"health check test -e {gateway.tmp_path / 'healthy'}")
    assert details["phase"] == "verify"
    assert details["rolledBackBy"] == "agent"
    assert (details["fromSlot"], details["toSlot"]) == ("A", "B")
    assert device.attempts == ["A", "B", "A"]
    assert terminal_statuses(emulator, "ab-sick") == ["FAILED"]
    assert _in_order(["install", "reboot", "verify", "rollback_reboot"], gateway, "ab-sick")


async def test_a_new_slot_that_never_boots_is_rolled_back_by_the_bootloader(
    gateway: Gateway, files: tuple[Path, int]
) -> None:
    device, emulator = gateway.device, gateway.emulator
    await gateway.start()
    emulator.service.create_job("ab-dead", [gateway.thing], _document(files, device))
    await gateway.wait_reboot_call(1)
    device.never_boots.add("B")  # a kernel panic: the agent never runs on B
    assert gateway.power_cycle() == "A"
    assert device.attempts == ["A", "B", "B", "B", "A"]
    await gateway.start()
    execution = await wait_terminal(emulator, "ab-dead", gateway.thing, timeout=60)

    assert str(execution.status) == "FAILED", gateway.agent.log_text()
    details = execution.status_details
    assert details["reason"] == "rolled back by the bootloader"
    assert details["rolledBackBy"] == "bootloader"
    assert details["phase"] == "reboot"
    assert device.fallbacks == [{"from": "B", "to": "A"}]
    assert device.next_boot() == ("A", False)
    assert gateway.reboot_calls == 1  # the agent did not reboot again
    assert terminal_statuses(emulator, "ab-dead") == ["FAILED"]


BEFORE_THE_BOOT = ["download", "install", "activate", "reboot"]
AFTER_THE_BOOT = ["verify", "commit"]


@pytest.mark.parametrize("phase", BEFORE_THE_BOOT + AFTER_THE_BOOT)
async def test_an_agent_killed_in_any_phase_resumes_the_update(
    gateway: Gateway, files: tuple[Path, int], phase: str
) -> None:
    """SIGKILL right after the phase is written, before what it announces; the agent restarts
    on the same boot and the update goes on from that phase, to the same end."""
    device, emulator = gateway.device, gateway.emulator
    crash = {"JOBS_AGENT_CRASH_AT": f"system-update:{phase}"}
    await gateway.start(**(crash if phase in BEFORE_THE_BOOT else {}))
    emulator.service.create_job("ab-kill", [gateway.thing], _document(files, device))
    if phase in BEFORE_THE_BOOT:
        assert await gateway.agent.wait_exit(60) == -9
        assert gateway.reboot_calls == 0
        await gateway.start()
    await gateway.wait_reboot_call(1)
    assert device.next_boot() == ("B", True)
    assert gateway.power_cycle() == "B"
    await gateway.start(**(crash if phase in AFTER_THE_BOOT else {}))
    if phase in AFTER_THE_BOOT:
        assert await gateway.agent.wait_exit(60) == -9
        await gateway.start()
    execution = await wait_terminal(emulator, "ab-kill", gateway.thing, timeout=60)

    assert str(execution.status) == "SUCCEEDED", gateway.agent.log_text()
    assert execution.status_details["slot"] == "B"
    assert device.next_boot() == ("B", False)
    assert device.slot_starts_with("B", PAYLOAD)
    assert device.attempts == ["A", "B"]  # one reboot, whatever was killed
    assert gateway.reboot_calls == 1
    assert terminal_statuses(emulator, "ab-kill") == ["SUCCEEDED"]


async def test_an_agent_killed_before_it_ran_the_reboot_command_asks_for_it_again(
    gateway: Gateway, files: tuple[Path, int]
) -> None:
    """The engine's own crash point: AWAITING_REBOOT is recorded, the reboot command has not
    run. Restarted on the same boot, the engine does not decide FAILED for a job past its switch
    (as it does for others): the handler sees the boot id unchanged and asks again."""
    device, emulator = gateway.device, gateway.emulator
    await gateway.start(JOBS_AGENT_CRASH_AT="awaiting_reboot")
    emulator.service.create_job("ab-kill-ar", [gateway.thing], _document(files, device))
    assert await gateway.agent.wait_exit(60) == -9
    assert gateway.reboot_calls == 0
    await gateway.start()
    await gateway.wait_reboot_call(1)
    assert gateway.power_cycle() == "B"
    await gateway.start()
    execution = await wait_terminal(emulator, "ab-kill-ar", gateway.thing, timeout=60)

    assert str(execution.status) == "SUCCEEDED", gateway.agent.log_text()
    assert device.next_boot() == ("B", False)
    assert device.attempts == ["A", "B"]
    assert terminal_statuses(emulator, "ab-kill-ar") == ["SUCCEEDED"]


async def test_an_agent_killed_while_rauc_installs_waits_for_it_and_installs_again(
    gateway: Gateway, files: tuple[Path, int]
) -> None:
    """A real kill in the middle of `rauc install`: RAUC's service goes on with it and refuses
    every request until it is done. The restarted agent waits, installs again, and the update
    goes on. The install is held at a known point: the bootloader backend blocks its first
    `set-state` call (RAUC marks the target slot bad before writing it) on a FIFO."""
    device, emulator = gateway.device, gateway.emulator
    gate, blocked = gateway.tmp_path / "gate", gateway.tmp_path / "blocked"
    os.mkfifo(gate)
    backend = device.directory / "bootloader-backend"
    backend.write_text(
        backend.read_text().replace(
            "exec ",
            f'if [ "$1" = set-state ] && [ ! -e {blocked} ]; then touch {blocked}; cat {gate}; fi\n'
            "exec ",
            1,
        )
    )
    try:
        await gateway.start()
        emulator.service.create_job("ab-kill-mid", [gateway.thing], _document(files, device))
        await gateway.wait_device(blocked.exists, "rauc install to reach the bootloader")
        gateway.agent.kill()
        await gateway.start()
        await emulator.service.wait_for(
            lambda: any(
                "busy" in r.get("message", "") for r in gateway.device_reports("ab-kill-mid")
            ),
            30,
        )
    finally:
        _open_gate(gate)
    await gateway.wait_reboot_call(1)
    assert gateway.power_cycle() == "B"
    await gateway.start()
    execution = await wait_terminal(emulator, "ab-kill-mid", gateway.thing, timeout=60)

    assert str(execution.status) == "SUCCEEDED", gateway.agent.log_text()
    assert device.slot_starts_with("B", PAYLOAD)
    assert device.next_boot() == ("B", False)
    assert terminal_statuses(emulator, "ab-kill-mid") == ["SUCCEEDED"]


def _open_gate(gate: Path) -> None:
    """Let a blocked backend call go on, if one is blocked (never waits for a reader)."""
    try:
        descriptor = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        os.write(descriptor, b"go\n")
    finally:
        os.close(descriptor)


@pytest.mark.parametrize("phase", ["rollback", "rollback_reboot"])
async def test_an_agent_killed_during_a_rollback_finishes_it(
    gateway: Gateway, files: tuple[Path, int], phase: str
) -> None:
    device, emulator = gateway.device, gateway.emulator
    await gateway.start()
    emulator.service.create_job("ab-kill-rb", [gateway.thing], _document(files, device))
    await gateway.wait_reboot_call(1)
    gateway.healthy(False)
    gateway.configure(health_deadline_seconds=1.5)
    assert gateway.power_cycle() == "B"
    await gateway.start(JOBS_AGENT_CRASH_AT=f"system-update:{phase}")
    assert await gateway.agent.wait_exit(60) == -9
    await gateway.start()
    await gateway.wait_reboot_call(2)
    assert gateway.power_cycle() == "A"
    await gateway.start()
    execution = await wait_terminal(emulator, "ab-kill-rb", gateway.thing, timeout=60)

    assert str(execution.status) == "FAILED", gateway.agent.log_text()
    assert execution.status_details["phase"] == "verify"
    assert execution.status_details["reason"].startswith("health check")
    assert device.next_boot() == ("A", False)
    assert device.attempts == ["A", "B", "A"]
    assert gateway.reboot_calls == 2
    assert terminal_statuses(emulator, "ab-kill-rb") == ["FAILED"]


async def test_a_cancel_before_the_switch_stops_the_update_and_changes_nothing(
    gateway: Gateway, files: tuple[Path, int]
) -> None:
    device, emulator = gateway.device, gateway.emulator
    document = _document(files, device)
    document["url"] = document["url"].replace("/update-", "/held/update-")
    await gateway.start()
    emulator.service.create_job("ab-cancel", [gateway.thing], document)
    await emulator.service.wait_for(
        lambda: any(
            r.get("phase") == "download" and r.get("message", "").endswith("bytes")
            for r in gateway.device_reports("ab-cancel")
        ),
        30,
    )
    emulator.service.cancel_job("ab-cancel", force=True)
    await gateway.wait_record_state("ab-cancel", "cancelled")
    gateway.agent.signal(signal.SIGTERM)
    assert await gateway.agent.wait_exit() == 0

    assert str(emulator.service.execution("ab-cancel", gateway.thing).status) == "CANCELED"
    assert not [r for r in gateway.device_reports("ab-cancel") if r["status"] != "IN_PROGRESS"]
    assert device.next_boot() == ("A", False)
    assert not device.slot_starts_with("B", PAYLOAD[:64])
    assert gateway.reboot_calls == 0
    record = gateway.record("ab-cancel")
    assert record is not None and str(record.state) == "cancelled"


async def test_a_cancel_after_the_switch_is_not_obeyed_the_update_is_carried_to_its_end(
    gateway: Gateway, files: tuple[Path, int]
) -> None:
    """The service ends the execution (a forced cancel) while the device reboots into the new
    slot. Past the switch the agent carries the update on: verify and commit on the new slot.
    The service shows CANCELED and takes no report; the outcome stays in the agent's record
    (and its log), with the service's answer as the note."""
    device, emulator = gateway.device, gateway.emulator
    await gateway.start()
    emulator.service.create_job("ab-late-cancel", [gateway.thing], _document(files, device))
    await gateway.wait_reboot_call(1)
    emulator.service.cancel_job("ab-late-cancel", force=True)
    assert gateway.power_cycle() == "B"
    await gateway.start()
    await gateway.wait_record_state("ab-late-cancel", "reported")
    gateway.agent.signal(signal.SIGTERM)
    assert await gateway.agent.wait_exit() == 0

    assert str(emulator.service.execution("ab-late-cancel", gateway.thing).status) == "CANCELED"
    reports = gateway.device_reports("ab-late-cancel")
    assert all(r["status"] == "IN_PROGRESS" for r in reports)
    assert device.boot_state()["slots"]["B"]["state"] == "good"
    record = gateway.record("ab-late-cancel")
    assert record is not None
    assert str(record.state) == "reported"
    assert str(record.outcome_status) == "SUCCEEDED"
    assert record.outcome_details is not None and record.outcome_details["slot"] == "B"
    assert record.note is not None and "CANCELED" in record.note


async def test_a_reboot_that_never_happens_after_the_switch_is_rolled_back(
    gateway: Gateway, files: tuple[Path, int]
) -> None:
    """The reboot command fails (twice): the engine does not decide FAILED on its own for a
    job past its switch; the handler asks once more, then gives the new slot up."""
    device, emulator = gateway.device, gateway.emulator
    (gateway.tmp_path / "reboot-fails").write_text("")
    await gateway.start()
    emulator.service.create_job("ab-noboot", [gateway.thing], _document(files, device))
    execution = await wait_terminal(emulator, "ab-noboot", gateway.thing, timeout=60)

    assert str(execution.status) == "FAILED", gateway.agent.log_text()
    details = execution.status_details
    assert details["reason"].startswith("the device did not reboot into slot B (asked 2 times")
    assert (details["phase"], details["rolledBackBy"]) == ("reboot", "agent")
    assert gateway.reboot_calls == 2
    assert device.next_boot() == ("A", False)
    assert device.boot_state()["slots"]["B"]["state"] == "bad"
    assert device.attempts == ["A"]
    assert terminal_statuses(emulator, "ab-noboot") == ["FAILED"]


# -- SWUpdate: the same handler, the U-Boot environment in files ---------------------------------
async def test_swupdate_an_update_is_committed_once_healthy(
    swupdate_gateway: Gateway, files: tuple[Path, int]
) -> None:
    gateway = swupdate_gateway
    device, emulator = gateway.device, gateway.emulator
    await gateway.start()
    emulator.service.create_job("sw-ok", [gateway.thing], _document(files, device, "swupdate"))
    await gateway.wait_reboot_call(1)
    assert device.next_boot() == ("B", True)
    assert device.env()["ustate"] == "1"  # SWUpdate's own "installed"
    assert device.slot_starts_with("B", PAYLOAD)
    assert gateway.power_cycle() == "B"
    await gateway.start()
    execution = await wait_terminal(emulator, "sw-ok", gateway.thing, timeout=60)

    assert str(execution.status) == "SUCCEEDED", gateway.agent.log_text()
    assert (execution.status_details["slot"], execution.status_details["phase"]) == ("B", "commit")
    assert device.next_boot() == ("B", False)
    assert device.env()["ustate"] == "0"
    assert device.attempts == ["A", "B"]
    assert terminal_statuses(emulator, "sw-ok") == ["SUCCEEDED"]
    # SWUpdate installs this small image within one progress interval, so its `install` report
    # may be coalesced away (seen under load); the install itself is pinned by the slot above.
    assert _in_order(["reboot", "commit"], gateway, "sw-ok")


async def test_swupdate_a_failing_health_check_rolls_back(
    swupdate_gateway: Gateway, files: tuple[Path, int]
) -> None:
    gateway = swupdate_gateway
    device, emulator = gateway.device, gateway.emulator
    await gateway.start()
    emulator.service.create_job("sw-sick", [gateway.thing], _document(files, device, "swupdate"))
    await gateway.wait_reboot_call(1)
    gateway.healthy(False)
    gateway.configure(health_deadline_seconds=1.5)
    assert gateway.power_cycle() == "B"
    await gateway.start()
    await gateway.wait_reboot_call(2)
    assert device.next_boot() == ("A", False)
    assert device.env()["ustate"] == "3"
    assert gateway.power_cycle() == "A"
    await gateway.start()
    execution = await wait_terminal(emulator, "sw-sick", gateway.thing, timeout=60)

    assert str(execution.status) == "FAILED", gateway.agent.log_text()
    details = execution.status_details
    assert details["reason"].startswith("health check")
    assert (details["phase"], details["rolledBackBy"]) == ("verify", "agent")
    assert device.attempts == ["A", "B", "A"]
    assert terminal_statuses(emulator, "sw-sick") == ["FAILED"]


async def test_swupdate_a_slot_that_never_boots_is_rolled_back_by_the_bootloader(
    swupdate_gateway: Gateway, files: tuple[Path, int]
) -> None:
    gateway = swupdate_gateway
    device, emulator = gateway.device, gateway.emulator
    await gateway.start()
    emulator.service.create_job("sw-dead", [gateway.thing], _document(files, device, "swupdate"))
    await gateway.wait_reboot_call(1)
    device.never_boots.add("B")
    assert gateway.power_cycle() == "A"
    await gateway.start()
    execution = await wait_terminal(emulator, "sw-dead", gateway.thing, timeout=60)

    assert str(execution.status) == "FAILED", gateway.agent.log_text()
    assert execution.status_details["reason"] == "rolled back by the bootloader"
    assert execution.status_details["rolledBackBy"] == "bootloader"
    assert device.fallbacks == [{"from": "B", "to": "A"}]
    assert device.next_boot() == ("A", False)
    assert gateway.reboot_calls == 1
    assert terminal_statuses(emulator, "sw-dead") == ["FAILED"]


async def test_swupdate_left_running_by_a_killed_agent_is_stopped_before_the_install_again(
    swupdate_gateway: Gateway, files: tuple[Path, int]
) -> None:
    """`swupdate -i` runs in its own session: a SIGKILL of the agent leaves it writing the slot.
    The restarted agent recognises it by the job's marks in its environment and stops it before
    it installs again, so two installs never write the slot at once. The first run is held
    before swupdate starts, by a wrapper that waits on a FIFO (only its first call)."""
    gateway = swupdate_gateway
    device, emulator = gateway.device, gateway.emulator
    gate, blocked, pid_file = (gateway.tmp_path / name for name in ("gate", "blocked", "held.pid"))
    os.mkfifo(gate)
    wrapper = (
        f"if [ ! -e {blocked} ]; then touch {blocked}; echo $$ > {pid_file}; cat {gate}; fi;"
        ' exec "$@"'
    )
    command = ["sh", "-c", wrapper, "held-swupdate", *device.config().swupdate_command]
    gateway.configure(swupdate_command=command)
    try:
        await gateway.start()
        emulator.service.create_job(
            "sw-kill-mid", [gateway.thing], _document(files, device, "swupdate")
        )
        await gateway.wait_device(pid_file.exists, "swupdate to start")
        await wait_until(lambda: pid_file.read_text().strip() != "", 10, "its pid")
        held = int(pid_file.read_text())
        gateway.agent.kill()
        await gateway.start()
        assert await wait_pid_gone(held, 30), "the restarted agent left the old swupdate running"
    finally:
        _open_gate(gate)
    await gateway.wait_reboot_call(1)
    assert gateway.power_cycle() == "B"
    await gateway.start()
    execution = await wait_terminal(emulator, "sw-kill-mid", gateway.thing, timeout=60)

    assert str(execution.status) == "SUCCEEDED", gateway.agent.log_text()
    assert device.slot_starts_with("B", PAYLOAD)
    assert device.next_boot() == ("B", False)
    assert terminal_statuses(emulator, "sw-kill-mid") == ["SUCCEEDED"]


async def test_exec_installs_and_activates_then_gives_the_slot_up_as_it_never_reboots(
    gateway: Gateway, files: tuple[Path, int]
) -> None:
    """`jobs-agent exec` runs the document through the same code but never reboots: the
    handler asks twice, sees the boot id unchanged, and marks the new slot bad."""
    device = gateway.device
    document = gateway.tmp_path / "job.json"
    document.write_text(json.dumps(_document(files, device)))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jobs_agent", "exec", str(document),
        "--config", str(gateway.tmp_path / "config.yaml"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    text = output.decode()
    assert process.returncode == 1, text
    assert "the device did not reboot into slot B (asked 2 times" in text
    assert device.slot_starts_with("B", PAYLOAD)
    assert device.next_boot() == ("A", False)
    assert device.boot_state()["slots"]["B"]["state"] == "bad"
