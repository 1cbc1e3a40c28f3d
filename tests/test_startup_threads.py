"""The threads a started agent keeps (issue 18): none for its state database before a job.

Every thread a gateway's agent starts stays for its whole life, with a stack and, once it
allocates, a glibc arena of its own (the resident memory after start-up that `python -m
benchmarks startup` measures). The store's worker is started by the first call that must not
run on the loop; before a job there is none: the start-up inventory report's reads of the
packages run on the loop, as the store's other reads.
"""

from __future__ import annotations

import os
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
    wait_until,
    write_handler,
)

THING = "gw-threads"
THREADS_HOOK = """
import os, signal, threading


def _write_threads(signum, frame):
    path = os.environ["JOBS_AGENT_TEST_THREADS"]
    with open(path + ".tmp", "w") as out:
        out.write("\\n".join(thread.name for thread in threading.enumerate()))
    os.replace(path + ".tmp", path)


signal.signal(signal.SIGUSR1, _write_threads)
"""
"""A `sitecustomize` for the agent's process: on SIGUSR1 (which the agent does not use) it
writes the names of its Python threads."""


async def thread_names(agent: AgentProcess, dump: Path) -> list[str]:
    dump.unlink(missing_ok=True)
    agent.signal(signal.SIGUSR1)
    await wait_until(dump.exists, 20, "the agent's list of threads")
    return dump.read_text().split("\n")


async def test_an_idle_agent_has_started_no_worker_for_its_state_database(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """A real `jobs-agent run` over paho, idle after its first request (STATUS=idle), made its
    start-up inventory report, and has no thread of its store (it had one: four threads after
    start-up, three now); every thread it has is one of Python's. Its first job runs and is
    reported once."""
    write_handler(tmp_path / "handlers", "hello", "#!/bin/sh\necho hello\n")
    config = agent_config(tmp_path, mosquitto.port, thing=THING)
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(THREADS_HOOK)
    dump = tmp_path / "threads.txt"
    python_path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": python_path, "JOBS_AGENT_TEST_THREADS": str(dump)}
    agent = AgentProcess(config_path=path, workdir=tmp_path, env=env)
    try:
        agent.start()
        await agent.wait_ready()
        await agent.wait_message("STATUS=idle")
        assert agent.process is not None
        names = await thread_names(agent, dump)
        assert not [name for name in names if name.startswith("jobs-agent-store")], names
        assert len(os.listdir(f"/proc/{agent.process.pid}/task")) == len(names), names
        emulator.service.create_job("first", [THING], {"operation": "hello"})
        execution = await wait_terminal(emulator, "first", THING)
        assert str(execution.status) == "SUCCEEDED", execution.status_details
        assert terminal_statuses(emulator, "first") == ["SUCCEEDED"]
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()
