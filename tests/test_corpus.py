"""The field corpus (issue 13, "Done when"): the AWS IoT Device Client's own sample job
documents (both schemas) and documents rendered from every AWS managed template with the
parameters operators fill in (re:Post examples included), each with the status and the
statusDetails keys it must end with under the default configuration.

Each document in tests/corpus/ runs through a real `jobs-agent run` process, a real mosquitto
and the emulator. The handlers the documents name that need the network (downloads, package
installs) or a real init system (services, reboot) are stand-ins written here: they record the
argv they got (`[handler, runAsUser, args...]`, the Device Client's convention) so that what the
real handler would have been asked to do is checked. The Device Client's reboot.sh stand-in
keeps its structure (a lock file, then `reboot`); a reboot is a restart of the agent with a new
boot id. Everything else (echo, mkdir, ls, printf, apt-get --version) runs for real.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.emulator.embedded import Emulator
from jobs_agent.jobs.status_details import validate_status_details
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

CORPUS = Path(__file__).resolve().parent / "corpus"
CASES = sorted(path.stem for path in CORPUS.glob("*.json"))
THING = "gw-corpus"
NEEDS_NETWORK_OR_INIT = {
    "device-client": ("download-file.sh", "install-packages.sh", "remove-packages.sh"),
    "templates": (
        "download-file.sh",
        "install-packages.sh",
        "remove-packages.sh",
        "start-services.sh",
        "stop-services.sh",
        "restart-services.sh",
    ),
}


def _record(calls: Path) -> str:
    return (
        f'{{ printf \'%s\' "$(basename "$0")"; for a in "$@"; do printf \' [%s]\' "$a"; done;'
        f" echo; }} >> {calls}\n"
    )


def _handler_dir(tmp_path: Path, kind: str) -> Path:
    directory = tmp_path / "handlers"
    calls = tmp_path / "calls.log"
    for name in NEEDS_NETWORK_OR_INIT[kind]:
        write_handler(
            directory,
            name,
            f"#!/usr/bin/env sh\nset -e\n{_record(calls)}"
            f'echo "stand-in for {name} (no network or init system here): $*"\n',
        )
        (directory / name).chmod(0o700)  # as the Device Client's setup instructions do
    if kind == "device-client":
        lock = tmp_path / "dc-reboot.lock"
        boot_id = tmp_path / "boot_id"
        write_handler(
            directory,
            "reboot.sh",
            f"""#!/usr/bin/env sh
set -e
{_record(calls)}echo "Running reboot.sh"
if test -f {lock}; then
  echo "Found lock file"
  LOCK_BOOT=$(cat {lock})
  rm {lock}
  if [ "$LOCK_BOOT" != "$(cat {boot_id})" ]; then echo "Reboot was successful"; exit 0; fi
  echo "Reboot failed"
  exit 1
fi
cat {boot_id} > {lock}
echo "stand-in for reboot: the agent's reboot command reboots this device"
""",
        )
        (directory / "reboot.sh").chmod(0o700)
    return directory


@pytest.mark.parametrize("name", CASES)
async def test_corpus_document(
    name: str, tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    case: dict[str, Any] = json.loads((CORPUS / f"{name}.json").read_text())
    expect = case["expect"]
    handler_dir = _handler_dir(tmp_path, case["handlerDir"])
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("boot-1\n")
    reboots = tmp_path / "agent-reboots.log"
    agent_reboot = write_handler(tmp_path / "bin", "reboot", f"#!/bin/sh\necho x >> {reboots}\n")
    config = agent_config(
        tmp_path,
        mosquitto.port,
        thing=THING,
        handler_dir=handler_dir,
        boot_id_path=boot_id,
        reboot_command=(str(agent_reboot),),
    )
    (tmp_path / "config.yaml").write_text(config_yaml(config))
    agent = AgentProcess(config_path=tmp_path / "config.yaml", workdir=tmp_path)
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job(name, [THING], case["document"])
        if expect.get("reboots"):
            await wait_until(reboots.exists, 30, "the agent's reboot command")
            agent.signal(signal.SIGTERM)  # the shutdown
            assert await agent.wait_exit() == 0
            boot_id.write_text("boot-2\n")  # the device came back
            agent.start()
            await agent.wait_ready()
        execution = await wait_terminal(emulator, name, THING, timeout=30)
    finally:
        agent.kill()
    details = dict(execution.status_details)
    assert str(execution.status) == expect["status"], (details, agent.log_text())
    assert sorted(details) == expect["statusDetailsKeys"], details
    assert validate_status_details(details) is None
    if "reason" in expect:
        assert details["reason"] == expect["reason"]
    assert side_effects(tmp_path / "calls.log") == expect.get("handlerCalls", [])
    assert terminal_statuses(emulator, name) == [expect["status"]]
    assert side_effects(reboots) == (["x"] if expect.get("reboots") else [])


def test_the_corpus_covers_every_sample_and_managed_template() -> None:
    sources = " ".join(json.loads((CORPUS / f"{n}.json").read_text())["source"] for n in CASES)
    for sample in ("download-file", "echo", "install-packages", "reboot", "remove-packages"):
        assert f"sample-job-docs/{sample}.json" in sources
    assert "sample-job-docs/run-shellcommand.json" in sources
    for sample in ("download-file", "echo", "install-packages", "remove-packages"):
        assert f"old-schema-job-docs/{sample}.json" in sources
    for template in (
        "AWS-Download-File",
        "AWS-Install-Application",
        "AWS-Remove-Application",
        "AWS-Start-Application",
        "AWS-Stop-Application",
        "AWS-Restart-Application",
        "AWS-Reboot",
        "AWS-Run-Command",
    ):
        assert template in sources
