"""Fresh presigned URLs for script steps (issue 16 item 4, the script door; docs/design/deferral.md
section 4): a step asks with `{"refreshUrls": true}` on its progress pipe, the agent fetches the
document again and answers its `JOBS_AGENT_URL_<n>` on the reply pipe (fd 4).

Real parts: mosquitto, the emulator (which signs a document's presigned URLs anew at every
delivery), real `jobs-agent run` processes, and a local HTTP server standing in for S3
(tests/helpers/s3_standin.py: AWS itself cannot run here) that refuses an expired signature with
403 as S3 does.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.config import AgentConfig
from jobs_agent.dispatch.context import LocalJobContext
from jobs_agent.dispatch.scripts import message_handler
from jobs_agent.emulator.embedded import Emulator
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    config_yaml,
    wait_terminal,
    write_handler,
)
from tests.helpers.s3_standin import Payload, Plan, StandInServer, s3_standin

THING = "gw-scripturl"
PAYLOAD = Payload(bytes(range(256)) * 2048)  # 512 KiB
DOWNLOAD_FILE = "arn:aws:iot:us-east-1::jobtemplate/AWS-Download-File:1.0"


@pytest.fixture
def s3() -> Iterator[StandInServer]:
    with s3_standin() as server:
        yield server


@contextlib.asynccontextmanager
async def agent_process(
    tmp_path: Path, config: AgentConfig, *jobs_lines: str
) -> AsyncIterator[AgentProcess]:
    """A real `jobs-agent run` (with more `jobs:` options as YAML lines), stopped with SIGTERM
    at the end."""
    path = tmp_path / "config.yaml"
    text = config_yaml(config)
    path.write_text(text.replace("jobs:\n", "jobs:\n" + "".join(f"  {x}\n" for x in jobs_lines)))
    agent = AgentProcess(config_path=path, workdir=tmp_path)
    try:
        agent.start()
        await agent.wait_ready()
        yield agent
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()


def presigned(url: str) -> str:
    return "${aws:iot:s3-presigned-url:" + url + "}"


def ranges(s3: StandInServer) -> list[tuple[int, str | None, int]]:
    """(which signature, Range, status) of every request, signatures numbered from 0."""
    order = s3.signatures()
    return [(order.index(e.signature or ""), e.range, e.status) for e in s3.seen]


async def test_the_download_file_template_outlives_its_url_through_the_reply_pipe(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator, s3: StandInServer
) -> None:
    """AWS-Download-File (our download-file.sh, a script step): the URL's signature runs out a
    third of the way through. The script asks the agent on its progress pipe, the agent fetches
    the document again (DescribeJobExecution) and answers the step's fresh `JOBS_AGENT_URL_1` on
    fd 4, and the download continues from the bytes it has to the right digest.
    (Before: FAILED, HTTP 403.)"""
    url = s3.put("/fw/app.bin", PAYLOAD.data)
    cut = len(PAYLOAD.data) // 3
    s3.plans.append(Plan(cut_after=cut))
    target = tmp_path / "app.bin"
    config = agent_config(tmp_path, mosquitto.port, thing=THING, allow_http_downloads=True)
    async with agent_process(tmp_path, config) as agent:
        described = emulator.service.counters["DescribeJobExecution"]
        emulator.service.create_job(
            "dl-1",
            [THING],
            job_template_arn=DOWNLOAD_FILE,
            document_parameters={"downloadUrl": presigned(url), "filePath": str(target)},
        )
        execution = await wait_terminal(emulator, "dl-1", THING, timeout=30)
        assert str(execution.status) == "SUCCEEDED", (execution.status_details, agent.log_text())
        log_text = agent.log_text()
    assert target.read_bytes() == PAYLOAD.data
    assert PAYLOAD.sha256 is not None
    assert ranges(s3) == [(0, None, 200), (0, f"bytes={cut}-", 403), (1, f"bytes={cut}-", 206)]
    assert emulator.service.counters["DescribeJobExecution"] == described + 1
    # No URL was ever written to a file of the step (document.json aside, which is the
    # delivered copy): the fresh signature is nowhere in the agent's state directory.
    fresh = s3.signatures()[1]
    assert fresh not in log_text
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            assert fresh.encode() not in path.read_bytes(), path


GREEDY = """#!/usr/bin/python3
import json, os, sys
progress = os.fdopen(int(os.environ["JOBS_AGENT_PROGRESS_FD"]), "w", buffering=1)
replies = os.fdopen(int(os.environ["JOBS_AGENT_REPLY_FD"]), "r")
url = os.environ[sys.argv[2][4:]]
for attempt in range(1, 10):
    progress.write(json.dumps({"refreshUrls": True}) + "\\n")
    reply = json.loads(replies.readline())
    if not reply["refreshed"]:
        print(f"refused at request {attempt}: {reply['reason']}", file=sys.stderr)
        sys.exit(1)
    fresh = reply["environment"]["JOBS_AGENT_URL_1"]
    assert fresh != url and fresh.split("?")[0] == url.split("?")[0], (fresh, url)
    url = fresh
print("never refused")
"""


async def test_a_script_asking_for_more_refreshes_than_allowed_fails_with_the_reason(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """jobs.max_document_refreshes 2: the script's first two requests get fresh URLs (each
    newly signed, same object), the third is refused with the reason, and the job FAILS with
    it whatever the script then does."""
    write_handler(tmp_path / "handlers", "greedy", GREEDY)
    config = agent_config(tmp_path, mosquitto.port, thing=THING)
    async with agent_process(tmp_path, config, "max_document_refreshes: 2") as agent:
        emulator.service.create_job(
            "greedy-1",
            [THING],
            {"operation": "greedy", "args": [presigned("https://fw.s3.amazonaws.com/a.bin")]},
        )
        execution = await wait_terminal(emulator, "greedy-1", THING)
        assert str(execution.status) == "FAILED", agent.log_text()
    limit = (
        "the job document was fetched again 2 times for fresh URLs in this run, the limit"
        " (jobs.max_document_refreshes); giving up"
    )
    assert execution.status_details["reason"] == f'step 1 "greedy": {limit}'
    assert execution.status_details["stderr"].strip() == f"refused at request 3: {limit}"


LIST_FDS = """#!/usr/bin/python3
import fcntl, os, stat
fds = []
for fd in range(1024):
    try:
        os.fstat(fd)
    except OSError:
        continue
    fds.append(fd)
seen = [" ".join(map(str, fds)), os.environ.get("JOBS_AGENT_REPLY_FD", "-")]
if 4 in fds:
    fifo = stat.S_ISFIFO(os.fstat(4).st_mode)
    seen.append("fifo" if fifo else "other")
    seen.append("read-only" if fcntl.fcntl(4, fcntl.F_GETFL) & 3 == os.O_RDONLY else "writable")
    os.set_blocking(4, False)
    try:
        seen.append(f"data {os.read(4, 100)!r}")
    except BlockingIOError:
        seen.append("nothing yet")
print(" | ".join(seen))
"""


async def test_only_a_step_with_presigned_urls_gets_the_reply_pipe_and_nothing_on_it(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """The documented fd list: a step without presigned URLs keeps exactly 0 1 2 3; a step
    with one gets fd 4 too (JOBS_AGENT_REPLY_FD=4), the read end of a pipe, on which nothing
    arrives unless it asks (still open: the agent holds the write end while the step runs)."""
    write_handler(tmp_path / "handlers", "fds", LIST_FDS)
    config = agent_config(tmp_path, mosquitto.port, thing=THING)
    async with agent_process(tmp_path, config):
        emulator.service.create_job("plain", [THING], {"operation": "fds", "includeStdOut": True})
        plain = await wait_terminal(emulator, "plain", THING)
        emulator.service.create_job(
            "signed",
            [THING],
            {
                "operation": "fds",
                "args": [presigned("https://fw.s3.amazonaws.com/a.bin")],
                "includeStdOut": True,
            },
        )
        signed = await wait_terminal(emulator, "signed", THING)
    assert str(plain.status) == "SUCCEEDED", plain.status_details
    assert plain.status_details["stdout"] == "0 1 2 3 | -"
    assert str(signed.status) == "SUCCEEDED", signed.status_details
    assert signed.status_details["stdout"] == "0 1 2 3 4 | 4 | fifo | read-only | nothing yet"


ASK_ONCE = """#!/bin/sh
echo '{"refreshUrls": true}' >&3
read -r reply <&4
echo "$reply"
"""


def test_without_a_service_the_answer_says_no_refresh(tmp_path: Path) -> None:
    """A real `jobs-agent exec` (no service): the step's request is answered that there is no
    refresh here, and its own exit decides the outcome."""
    handlers = tmp_path / "handlers"
    write_handler(handlers, "ask", ASK_ONCE)
    document = {
        "operation": "ask",
        "args": ["https://fw.s3.amazonaws.com/a.bin?X-Amz-Signature=" + "ab" * 32],
        "includeStdOut": True,
    }
    (tmp_path / "doc.json").write_text(json.dumps(document))
    (tmp_path / "config.yaml").write_text(
        f"connection: {{transport: local}}\nstate_dir: {tmp_path / 'state'}\n"
    )
    command = [sys.executable, "-m", "jobs_agent", "exec", str(tmp_path / "doc.json")]
    result = subprocess.run(
        [*command, "--config", str(tmp_path / "config.yaml"), "--handler-dir", str(handlers)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    details = json.loads(result.stdout[result.stdout.index("{") : result.stdout.rindex("}") + 1])
    assert json.loads(details["stdout"]) == {
        "refreshed": False,
        "reason": "no service to fetch the job document again from here (jobs-agent exec)",
    }
    assert result.stdout.rstrip().endswith("status: SUCCEEDED")


async def test_a_refresh_request_is_answered_only_where_the_step_has_a_reply_pipe(
    tmp_path: Path,
) -> None:
    """The progress line's key: `refreshUrls: true` goes to the step's answerer; without one
    (a step with no presigned URL, hence no fd 4), or with another value, it is ignored with a
    warning the handler author sees."""
    ctx = LocalJobContext(document={}, scratch_dir=tmp_path / "s", state_dir=tmp_path / "t")
    warnings: list[str] = []
    asked: list[bool] = []

    async def no_checkpoint(_data: Any) -> None:
        raise AssertionError("no checkpoint expected")

    async def answer() -> None:
        asked.append(True)

    without = message_handler(ctx, no_checkpoint, warn=warnings.append)
    await without({"refreshUrls": True})
    answering = message_handler(ctx, no_checkpoint, warn=warnings.append, on_refresh=answer)
    await answering({"refreshUrls": "please"})
    assert asked == []
    await answering({"refreshUrls": True})
    assert asked == [True]
    assert warnings == [
        '"refreshUrls": this step has no presigned URL in its environment to renew'
        " (and so no reply pipe)",
        '"refreshUrls" must be true',
    ]
