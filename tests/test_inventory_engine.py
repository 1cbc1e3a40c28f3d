"""The software inventory in the engine (issue 16 item 5), end to end over a real mosquitto with
the emulator's shadow service: a job's `installs` reach the reserved named shadow `$package`
after it SUCCEEDS, through a durable outbox that retries across a broker restart and an agent
restart; a job with `destinationPackageVersions` leaves `$package` to AWS; a job whose versions
are installed already SUCCEEDS without running; the start-up report reads the local sources."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.config import ConfigError, config_from_data
from jobs_agent.daemon import Agent
from jobs_agent.emulator.embedded import Emulator
from jobs_agent.inventory.settings import InventorySettings
from jobs_agent.inventory.sources import FileSource
from jobs_agent.transport.base import Message
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    config_yaml,
    running_agent,
    side_effects,
    start_emulator,
    wait_terminal,
    wait_until,
    write_handler,
)

THING = "gw-test"
ARN = "arn:aws:iot:eu-west-1:123456789012:package/{}/version/{}"


def reported(emulator: Emulator) -> dict[str, Any] | None:
    """The `reported` section of the emulator's `$package` shadow (None: no shadow)."""
    document = emulator.service.shadows.document(THING, "$package")
    if document is None:
        return None
    section = document.get("state", {}).get("reported")
    return dict(section) if section is not None else None


def work_handler(tmp_path: Path) -> Path:
    """A handler that records that it ran."""
    log = tmp_path / "ran.log"
    write_handler(tmp_path / "handlers", "work", f'#!/bin/sh\necho "$JOBS_AGENT_JOB_ID" >> {log}\n')
    return log


class SilentShadows:
    """AWS's shadow service not answering (a stand-in: the emulator's shadow route is wrapped
    so that requests are dropped while `silent`); everything else is the real emulator."""

    def __init__(self, emulator: Emulator) -> None:
        routes = emulator.link._routes
        self.original: Callable[[Message], None] = routes["shadow"]
        self.silent = True
        self.dropped = 0
        routes["shadow"] = self._route

    def _route(self, message: Message) -> None:
        if self.silent:
            self.dropped += 1
            return
        self.original(message)


async def test_a_jobs_installs_reach_package_after_it_succeeds(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    ran = work_handler(tmp_path)
    config = agent_config(tmp_path, mosquitto.port)
    installs = {"firmware": {"version": "2.1.0", "attributes": {"channel": "stable"}}}
    async with running_agent(config):
        emulator.service.create_job("fw-1", [THING], {"operation": "work", "installs": installs})
        execution = await wait_terminal(emulator, "fw-1", THING)
        await wait_until(lambda: reported(emulator) is not None, 10, "$package")
    assert str(execution.status) == "SUCCEEDED"
    assert side_effects(ran) == ["fw-1"]
    assert reported(emulator) == installs


async def test_a_job_with_destination_package_versions_leaves_package_alone(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """AWS IoT Jobs reports such a job (here it is not configured to, so nothing may write):
    the agent stays silent, then and in its start-up report after a restart; the next job's own
    `installs` (and the configured source) are all `$package` shows, and the destination's
    version is still known to the device (a second deployment skips)."""
    ran = work_handler(tmp_path)
    config = agent_config(tmp_path, mosquitto.port)
    arns = [ARN.format("firmware", "3.0.0")]
    deployed = {"operation": "work", "destinationPackageVersions": arns}
    async with running_agent(config):
        emulator.service.create_job("catalog-1", [THING], deployed)
        assert str((await wait_terminal(emulator, "catalog-1", THING)).status) == "SUCCEEDED"
        own = {"operation": "work", "installs": {"app": {"version": "4"}}}
        emulator.service.create_job("own-1", [THING], own)
        assert str((await wait_terminal(emulator, "own-1", THING)).status) == "SUCCEEDED"
        await wait_until(lambda: reported(emulator) is not None, 10, "$package")
        emulator.service.create_job("catalog-2", [THING], deployed)
        again = await wait_terminal(emulator, "catalog-2", THING)
    assert reported(emulator) == {"app": {"version": "4"}}
    assert emulator.service.counters["UpdateThingShadow"] == 1
    source = tmp_path / "inventory.json"
    source.write_text(json.dumps({"os": {"version": "12"}}))
    os.chmod(source, 0o644)
    restarted = dataclasses.replace(
        config, inventory=InventorySettings(sources=(FileSource(source),))
    )
    async with running_agent(restarted):
        await wait_until(lambda: "os" in (reported(emulator) or {}), 10, "the start-up report")
    assert reported(emulator) == {"app": {"version": "4"}, "os": {"version": "12"}}
    assert str(again.status) == "SUCCEEDED"
    assert again.status_details["reason"] == "already installed: firmware 3.0.0"
    assert side_effects(ran) == ["catalog-1", "own-1"]


async def test_an_installed_version_skips_the_steps(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """The configured source (a real root-owned file) says firmware 2.1.0: a job installing it
    SUCCEEDS without running and says why; one installing 2.2.0 runs; a malformed `installs`
    is REJECTED naming the key. The start-up report put the file's packages in `$package`."""
    ran = work_handler(tmp_path)
    source = tmp_path / "inventory.json"
    source.write_text(json.dumps({"firmware": {"version": "2.1.0"}, "os": {"version": "12"}}))
    os.chmod(source, 0o644)
    config = dataclasses.replace(
        agent_config(tmp_path, mosquitto.port),
        inventory=InventorySettings(sources=(FileSource(source),)),
    )
    async with running_agent(config):
        await wait_until(lambda: reported(emulator) is not None, 10, "the start-up report")
        assert reported(emulator) == {"firmware": {"version": "2.1.0"}, "os": {"version": "12"}}
        same = {"operation": "work", "installs": {"firmware": {"version": "2.1.0"}}}
        emulator.service.create_job("same", [THING], same)
        skipped = await wait_terminal(emulator, "same", THING)
        newer = {"operation": "work", "installs": {"firmware": {"version": "2.2.0"}}}
        emulator.service.create_job("newer", [THING], newer)
        updated = await wait_terminal(emulator, "newer", THING)
        bad = {"operation": "work", "installs": {"firmware": {"version": "2.2.0", "url": "x"}}}
        emulator.service.create_job("bad", [THING], bad)
        rejected = await wait_terminal(emulator, "bad", THING)
    assert str(skipped.status) == "SUCCEEDED"
    assert skipped.status_details == {"reason": "already installed: firmware 2.1.0"}
    assert str(updated.status) == "SUCCEEDED"
    assert str(rejected.status) == "REJECTED"
    assert rejected.status_details["reason"] == (
        "installs.firmware.url: unknown key (only version and attributes)"
    )
    assert side_effects(ran) == ["newer"]


async def test_the_package_report_is_retried_across_a_broker_restart(
    tmp_path: Path, fresh_mosquitto: Mosquitto
) -> None:
    """The shadow service does not answer: the job's outcome is delivered (it comes first), the
    report waits; the broker restarts, the shadow service answers again, and the report lands."""
    emulator = await start_emulator(fresh_mosquitto.port)
    try:
        shadows = SilentShadows(emulator)
        work_handler(tmp_path)
        config = agent_config(tmp_path, fresh_mosquitto.port, request_timeout_seconds=0.5)
        async with running_agent(config):
            installs = {"firmware": {"version": "5"}}
            emulator.service.create_job("fw", [THING], {"operation": "work", "installs": installs})
            assert str((await wait_terminal(emulator, "fw", THING)).status) == "SUCCEEDED"
            await wait_until(lambda: shadows.dropped >= 1, 10, "a report attempt")
            await asyncio.to_thread(fresh_mosquitto.restart)
            shadows.silent = False
            await wait_until(lambda: reported(emulator) is not None, 20, "$package")
        assert reported(emulator) == installs
    finally:
        await emulator.stop()


async def test_the_package_report_survives_an_agent_restart(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """A real `jobs-agent run`: the report could not be delivered before the agent stopped; the
    next agent (with the start-up report turned off, so only the durable outbox can send it)
    delivers it."""
    shadows = SilentShadows(emulator)
    work_handler(tmp_path)
    config = agent_config(tmp_path, mosquitto.port, request_timeout_seconds=0.5)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(config_yaml(config) + "inventory:\n  report_on_start: false\n")
    agent = AgentProcess(config_path, tmp_path)
    installs = {"firmware": {"version": "6", "attributes": {"board": "rev-b"}}}
    emulator.service.create_job("fw", [THING], {"operation": "work", "installs": installs})
    agent.start()
    try:
        await agent.wait_ready()
        assert str((await wait_terminal(emulator, "fw", THING)).status) == "SUCCEEDED"
        await wait_until(lambda: shadows.dropped >= 1, 10, "a report attempt")
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
        shadows.silent = False
        assert reported(emulator) is None
        shown = subprocess.run(
            [sys.executable, "-m", "jobs_agent", "status", "--json", "--config", str(config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert json.loads(shown.stdout)["packages"] == [
            {
                "name": "firmware",
                "version": "6",
                "attributes": {"board": "rev-b"},
                "waiting_for_package_shadow": True,
            }
        ]
        agent.start()
        await agent.wait_ready()
        await wait_until(lambda: reported(emulator) is not None, 20, "$package")
    finally:
        if agent.process is not None and agent.process.poll() is None:
            agent.signal(signal.SIGTERM)
            with contextlib.suppress(Exception):
                await agent.wait_exit()
        agent.kill()
    assert reported(emulator) == installs


def test_the_inventory_section_is_routed_and_checked() -> None:
    base = {"thing_name": THING, "connection": {"transport": "local"}}
    section = {"sources": [{"file": "/etc/packages.json"}], "report_on_start": False}
    config = config_from_data({**base, "inventory": section})
    source = FileSource(Path("/etc/packages.json"))
    assert config.inventory == InventorySettings((source,), report_on_start=False)
    expected = r"inventory\.sources\[0\]\.file: expected an absolute path"
    with pytest.raises(ConfigError, match=expected):
        config_from_data({**base, "inventory": {"sources": [{"file": "packages.json"}]}})
    with pytest.raises(ConfigError, match=r"inventory\.report: unknown key"):
        config_from_data({**base, "inventory": {"report": True}})


def test_a_reload_keeps_the_inventory_as_started(tmp_path: Path) -> None:
    """The sources are handed to the engine at start: a SIGHUP reload says so, never pretends."""
    config = agent_config(tmp_path, 1883)
    changed = dataclasses.replace(config, inventory=InventorySettings(report_on_start=False))
    kept = Agent(config)._keep_restart_only_settings(changed)
    assert kept.inventory == config.inventory
