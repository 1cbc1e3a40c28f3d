"""What an agent's first job loads: only what that job's document needs (issue 18).

An agent loads the dispatcher at its first job, not at start-up, and every operator pays that
first job's imports after every start (42-58 ms against the perfect agent's 3-4 ms, round 16).
A plugin's job runs no process: it must not load the Device Client schema, the sandbox, the
spawn path or the step machinery, nor importlib.metadata for the plugins' entry points; the
first script job loads them and runs as before.
"""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

from jobs_agent.emulator.embedded import Emulator
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    config_yaml,
    terminal_statuses,
    wait_terminal,
    write_handler,
)
from tests.test_startup_imports import hooked_env, loaded_modules

THING = "gw-first-job"
PLUGIN = """
class Quiet:
    async def run(self, ctx):
        return {"ran": "quiet"}
"""
SCRIPT_MACHINERY = {
    "jobs_agent.dispatch.devicec",
    "jobs_agent.dispatch.steps",
    "jobs_agent.dispatch.process",
    "jobs_agent.dispatch.spawn",
    "jobs_agent.dispatch.scripts",
    "jobs_agent.dispatch.pipes",
    "jobs_agent.dispatch.launcher",
    "jobs_agent.dispatch.signing",
    "difflib",
    "importlib.metadata",
    "zipfile",
    "csv",
}
"""What a plugin's job has no use for: the step machinery, signing (no signature required),
importlib.metadata's entry-point scan (`dispatch.entry_points`) and what they import (email
too, but paho imports that at start-up)."""


async def test_a_first_plugin_job_loads_no_script_machinery_and_a_script_job_then_runs(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """A real `jobs-agent run` on a real broker: its first job, a Python plugin's, succeeds
    without loading the step machinery; a script job after it loads that and succeeds too."""
    write_handler(tmp_path / "handlers", "hello", "#!/bin/sh\necho hello\n")
    config = agent_config(tmp_path, mosquitto.port, thing=THING)
    config = dataclasses.replace(config, handlers={"quiet": "first_job_plugin:Quiet"})
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    env, dump = hooked_env(tmp_path)
    (tmp_path / "hook" / "first_job_plugin.py").write_text(PLUGIN)
    agent = AgentProcess(config_path=path, workdir=tmp_path, env=env)
    try:
        agent.start()
        await agent.wait_ready()
        await agent.wait_message("STATUS=idle")
        emulator.service.create_job("plugin-first", [THING], {"operation": "quiet"})
        execution = await wait_terminal(emulator, "plugin-first", THING)
        assert str(execution.status) == "SUCCEEDED", execution.status_details
        assert execution.status_details == {"ran": "quiet"}
        after_plugin = await loaded_modules(agent, dump)
        assert {"jobs_agent.dispatch.router", "first_job_plugin"} <= after_plugin
        loaded = SCRIPT_MACHINERY & after_plugin
        assert not loaded, sorted(loaded)

        emulator.service.create_job("script-next", [THING], {"operation": "hello"})
        execution = await wait_terminal(emulator, "script-next", THING)
        assert str(execution.status) == "SUCCEEDED", execution.status_details
        assert terminal_statuses(emulator, "script-next") == ["SUCCEEDED"]
        after_script = await loaded_modules(agent, dump)
        assert {
            "jobs_agent.dispatch.devicec",
            "jobs_agent.dispatch.steps",
            "jobs_agent.dispatch.process",
        } <= after_script
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()
