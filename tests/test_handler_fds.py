"""A handler gets exactly four descriptors: stdin, stdout, stderr and the progress pipe.

awscrt opens its sockets and its epoll instance without close-on-exec, so a handler started by
an agent on that transport used to inherit the TLS connection to the broker (and could write into
the MQTT stream, even as another user). The real `jobs-agent run` over awscrt with mTLS against
mosquitto runs a handler that lists what it has open.
"""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import pytest

from jobs_agent.emulator.embedded import Emulator
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    awscrt_connection,
    config_yaml,
    wait_terminal,
    write_handler,
)

THING = "gw-fds"
LIST_FDS = """#!/usr/bin/python3
import os
open_fds = []
for fd in range(1024):
    try:
        os.fstat(fd)
    except OSError:
        continue
    open_fds.append(fd)
print(" ".join(map(str, open_fds)))
"""


@pytest.mark.parametrize("transport", ["awscrt", "paho"])
async def test_handlers_get_only_stdio_and_the_progress_pipe(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator, transport: str
) -> None:
    write_handler(tmp_path / "handlers", "fds", LIST_FDS)
    config = agent_config(tmp_path, mosquitto.port, thing=THING)
    if transport == "awscrt":
        config = dataclasses.replace(config, connection=awscrt_connection(mosquitto))
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    agent = AgentProcess(config_path=path, workdir=tmp_path)
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("fds", [THING], {"operation": "fds", "includeStdOut": True})
        execution = await wait_terminal(emulator, "fds", THING)
        assert str(execution.status) == "SUCCEEDED", agent.log_text()
        assert execution.status_details["stdout"] == "0 1 2 3"
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()
