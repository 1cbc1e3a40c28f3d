"""The Device Client's reboot pattern (issue 13.3): its `reboot.sh` writes a lock file, calls
`reboot` and relies on the job being delivered again after the boot, when it finds the lock
and exits 0. Copied into the handler directory, it must work here too: its first run is taken
as the request for a reboot, the durable state recognises the re-delivery after the boot, and
the same step runs again to confirm.

A real `jobs-agent run` process on a real mosquitto. The device cannot reboot here: the stand-in
handler has the Device Client's structure (lock file, then `reboot`), with the boot time it
compares replaced by the boot id file the agent is configured to read, and `reboot` by a script
that records the call; the test changes the boot id and restarts the agent as a boot would.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from jobs_agent.emulator.embedded import Emulator
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    config_yaml,
    side_effects,
    terminal_statuses,
    wait_terminal,
    wait_until,
    write_handler,
)

THING = "gw-dc-reboot"


def _setup(tmp_path: Path, port: int, *, reboot_returns: bool) -> tuple[dict[str, object], Path]:
    runs = tmp_path / "runs.log"
    lock = tmp_path / "dc-reboot.lock"
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("boot-1\n")
    device_reboot = write_handler(
        tmp_path / "bin",
        "reboot",
        f"#!/bin/sh\necho $$ >> {tmp_path / 'device-reboots.log'}\n"
        + ("" if reboot_returns else "sleep 600\n"),
    )
    write_handler(
        tmp_path / "handlers",
        "reboot.sh",
        f"""#!/usr/bin/env sh
set -e
echo "reboot.sh user=$1" >> {runs}
if test -f {lock}; then
  LOCK_BOOT=$(cat {lock})
  rm {lock}
  if [ "$LOCK_BOOT" != "$(cat {boot_id})" ]; then echo "Reboot was successful"; exit 0; fi
  echo "Reboot failed"; exit 1
fi
cat {boot_id} > {lock}
{device_reboot}
""",
    )
    write_handler(tmp_path / "handlers", "after-boot", f"#!/bin/sh\necho after-boot >> {runs}\n")
    agent_reboot = write_handler(
        tmp_path / "bin", "agent-reboot", f"#!/bin/sh\necho x >> {tmp_path / 'agent-reboots'}\n"
    )
    config = agent_config(
        tmp_path,
        port,
        thing=THING,
        boot_id_path=boot_id,
        reboot_command=(str(agent_reboot),),
        stop_timeout_seconds=1,
    )
    (tmp_path / "config.yaml").write_text(config_yaml(config))
    document = {
        "version": "1.0",
        "includeStdOut": "true",
        "steps": [
            {
                "action": {
                    "name": "Reboot Device",
                    "type": "runHandler",
                    "input": {"handler": "reboot.sh"},
                    "runAsUser": "root",
                }
            },
            {"action": {"name": "Check", "type": "runHandler", "input": {"handler": "after-boot"}}},
        ],
    }
    return document, runs


def _boot(tmp_path: Path, number: int) -> None:
    (tmp_path / "boot_id").write_text(f"boot-{number}\n")


@pytest.mark.parametrize("rebooted", [True, False])
async def test_the_device_clients_reboot_sh_runs_again_after_the_boot(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator, rebooted: bool
) -> None:
    document, runs = _setup(tmp_path, mosquitto.port, reboot_returns=True)
    agent = AgentProcess(config_path=tmp_path / "config.yaml", workdir=tmp_path)
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("dc-reboot", [THING], document)
        await wait_until((tmp_path / "agent-reboots").exists, 20, "the agent's reboot command")
        # The job waits for the boot: step 2 has not run, nothing is final.
        assert side_effects(runs) == ["reboot.sh user=root"]
        assert str(emulator.service.execution("dc-reboot", THING).status) == "IN_PROGRESS"
        agent.signal(signal.SIGTERM)  # the shutdown stops the agent
        assert await agent.wait_exit() == 0
        if rebooted:
            _boot(tmp_path, 2)
        agent.start()
        await agent.wait_ready()
        execution = await wait_terminal(emulator, "dc-reboot", THING, timeout=30)
    finally:
        agent.kill()
    assert terminal_statuses(emulator, "dc-reboot") == [str(execution.status)]
    # The handler removes its lock when it confirms; without a reboot the agent decides alone
    # and the lock stays (docs/migrating-from-device-client.md says to remove it).
    assert (tmp_path / "dc-reboot.lock").exists() is not rebooted
    if rebooted:
        assert str(execution.status) == "SUCCEEDED", agent.log_text()
        assert side_effects(runs) == ["reboot.sh user=root", "reboot.sh user=root", "after-boot"]
        assert execution.status_details["stdout"] == "Reboot was successful"
    else:
        assert str(execution.status) == "FAILED"
        assert "did not reboot (boot id unchanged)" in execution.status_details["reason"]
        assert side_effects(runs) == ["reboot.sh user=root"]


async def test_a_reboot_that_takes_the_device_down_mid_step_is_recognised_after_the_boot(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """`reboot` does not return (the device goes down under the step): the agent is killed
    with its handler still running; after the boot the same step runs again and confirms."""
    document, runs = _setup(tmp_path, mosquitto.port, reboot_returns=False)
    reboots = tmp_path / "device-reboots.log"
    agent = AgentProcess(config_path=tmp_path / "config.yaml", workdir=tmp_path)
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("dc-down", [THING], document)
        await wait_until(reboots.exists, 20, "the handler's reboot call")
        agent.kill()  # power goes: the agent and its handler die with the device
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(reboots.read_text().split()[0]), signal.SIGKILL)
        _boot(tmp_path, 2)
        agent.start()
        await agent.wait_ready()
        execution = await wait_terminal(emulator, "dc-down", THING, timeout=30)
    finally:
        agent.kill()
    assert str(execution.status) == "SUCCEEDED", agent.log_text()
    assert side_effects(runs) == ["reboot.sh user=root", "reboot.sh user=root", "after-boot"]
    assert not (tmp_path / "agent-reboots").exists()  # the device rebooted by itself
    assert terminal_statuses(emulator, "dc-down") == ["SUCCEEDED"]
