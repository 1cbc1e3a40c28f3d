"""One agent per state directory (issue 12.9) and `jobs-agent status` telling whether it is
alive (issue 13.10): real `jobs-agent run` processes on a real mosquitto, real signals, the
`status` command as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from jobs_agent.emulator.embedded import Emulator
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    config_yaml,
    wait_terminal,
    wait_until,
    write_handler,
)

THING = "gw-lock"


def _agent(tmp_path: Path, mosquitto: Mosquitto) -> AgentProcess:
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(agent_config(tmp_path, mosquitto.port, thing=THING)))
    return AgentProcess(config_path=path, workdir=tmp_path)


def cli(*args: str, config: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(
        [sys.executable, "-m", "jobs_agent", *args, "--config", str(config)],
        text=True,
        timeout=60,
        check=False,
        **kw,
    )


async def test_a_second_agent_on_the_same_state_dir_exits_2_naming_the_first(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    write_handler(tmp_path / "handlers", "ok", "#!/bin/sh\necho ok\n")
    first = _agent(tmp_path, mosquitto)
    try:
        first.start()
        await first.wait_ready()
        assert first.process is not None
        second = await asyncio.to_thread(cli, "run", config=first.config_path)
        assert second.returncode == 2, second.stderr
        assert f"another jobs-agent (pid {first.process.pid}) is already running" in second.stderr
        assert first.process.poll() is None
        # The first agent was not disturbed: its connection and its jobs carry on.
        emulator.service.create_job("after", [THING], {"operation": "ok"})
        execution = await wait_terminal(emulator, "after", THING)
        assert str(execution.status) == "SUCCEEDED"
    finally:
        first.kill()
    # The kernel released the lock with the process: a new agent starts at once.
    third = _agent(tmp_path, mosquitto)
    third.workdir = tmp_path / "third"
    third.workdir.mkdir()
    try:
        third.start()
        await third.wait_ready()
    finally:
        third.kill()


async def test_status_tells_alive_connected_and_where_the_output_log_is(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    started = tmp_path / "started"
    write_handler(
        tmp_path / "handlers",
        "wait",
        f"#!/bin/sh\necho working\necho $$ > {started}\nsleep 600\n",
    )
    agent = _agent(tmp_path, mosquitto)
    try:
        agent.start()
        await agent.wait_ready()
        assert agent.process is not None
        pid = agent.process.pid
        emulator.service.create_job("long", [THING], {"operation": "wait"})
        await wait_until(started.exists, 20, "the handler to start")

        def shows_connected() -> bool:
            report = json.loads(cli("status", "--json", config=agent.config_path).stdout)
            return bool(report["agent"].get("connected"))

        await wait_until(shows_connected, 20, "status to show the agent connected")
        text = cli("status", config=agent.config_path)
        assert text.returncode == 0, text.stderr
        assert f"agent: running, pid {pid}, last heartbeat" in text.stdout
        assert "connected (paho 127.0.0.1)" in text.stdout
        log = tmp_path / "state" / "logs" / "long-1.log"
        assert "running: long#1 [running] handler wait" in text.stdout
        assert f"output log: {log}" in text.stdout
        report = json.loads(cli("status", "--json", config=agent.config_path).stdout)
        assert report["agent"]["running"] is True and report["agent"]["pid"] == pid
        assert report["running"][0]["output_log"] == str(log)

        agent.process.send_signal(signal.SIGKILL)
        agent.process.wait(timeout=10)
        dead = cli("status", config=agent.config_path)
        assert "agent: NOT RUNNING (no process holds the state directory's lock)" in dead.stdout
        assert "interrupted (the agent is not running): long#1" in dead.stdout
        report = json.loads(cli("status", "--json", config=agent.config_path).stdout)
        assert report["agent"]["running"] is False and report["agent"]["connected"] is False
    finally:
        agent.kill()
        if started.exists():  # the handler outlives a SIGKILLed agent (its own session)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(started.read_text()), signal.SIGKILL)


def test_status_without_a_database_fails_and_survives_a_closed_pipe(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"thing_name: gw\nconnection: {{transport: local}}\nstate_dir: {tmp_path / 'state'}\n"
    )
    missing = cli("status", config=config)
    assert missing.returncode == 1
    assert "no state database at" in missing.stdout
    # A reader that went away (`status | head`): no traceback, the shell's SIGPIPE status.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        closed = cli("status", config=config, stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert "Traceback" not in closed.stderr and "BrokenPipeError" not in closed.stderr
    assert closed.returncode == 141


def test_status_watch_shows_the_status_again_until_interrupted(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"thing_name: gw\nconnection: {{transport: local}}\nstate_dir: {tmp_path / 'state'}\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs_agent", "status", "--watch", "0.05", "--config", str(config)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        shown = 0
        while shown < 2:  # two snapshots: it keeps watching (here: for a database to appear)
            line = process.stdout.readline()
            assert line, "status --watch ended by itself"
            shown += line.startswith("(every 0.05 s; Ctrl-C to stop)")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 130
    finally:
        process.kill()
