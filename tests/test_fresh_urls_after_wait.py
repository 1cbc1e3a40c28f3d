"""The seam between deferral and fresh presigned URLs (issues 16 and 17), end to end over a real
mosquitto with the emulator: a job that waited resumes with the service's copy of its document
fetched again (`Runner._refresh_after_wait`, registered with `Deferrals.on_resume`).

Time is moved, never waited for. The agent reads its wall clock (maintenance windows) from the
file `JOBS_AGENT_CLOCK_FILE` names; the emulator signs its presigned URLs on its `ManualClock`;
the S3 stand-in (tests/helpers/s3_standin.py, AWS itself cannot run here) refuses a signature
past its `X-Amz-Date` + `X-Amz-Expires` by the real clock. A job delivered "two hours ago" in the
service's time with URLs that live an hour thus holds URLs already expired when its window opens.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.config import AgentConfig
from jobs_agent.daemon import Agent
from jobs_agent.emulator.clock import ManualClock
from jobs_agent.emulator.embedded import Emulator
from jobs_agent.engine.lifecycle import ExecutionState
from jobs_agent.engine.store import Store
from jobs_agent.schedule.clock import ENV_VAR
from tests.fixtures.broker import Mosquitto
from tests.harness import agent_config, wait_terminal, wait_until
from tests.helpers.s3_standin import StandInServer, s3_standin
from tests.test_deferral import AgentClock, epoch, wait_deferral
from tests.test_fresh_urls import PAYLOAD, THING, download_document, running_agent

WINDOW = {"startTime": "cron(0 2 * * ? *)", "durationInMinutes": 60}
"""The job's own maintenance window: 02:00 UTC for an hour."""
SERVICE_LAG = 7200.0
"""How long before the window opens the job is delivered, in the service's time."""


@pytest.fixture
def emulator_clock() -> ManualClock:
    return ManualClock(time.time() - SERVICE_LAG)


@pytest.fixture
def emulator_options(emulator_clock: ManualClock) -> dict[str, object]:
    return {"clock": emulator_clock}


@pytest.fixture
def s3() -> Any:
    with s3_standin() as server:
        yield server


@pytest.fixture
def agent_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AgentClock:
    clock = AgentClock(tmp_path / "clock", epoch("2026-06-01T00:00:00Z"))
    monkeypatch.setenv(ENV_VAR, str(clock.path))  # the agent runs in this process
    return clock


def wait_config(tmp_path: Path, port: int) -> AgentConfig:
    """No step timeout: the service's clock jumps two hours at once, so a step timer the agent
    armed (and would renew every 0.4 of it in real time) is due at the emulator's next tick,
    and a loaded machine can let that tick time the job out before the agent's final update.
    The agent clears the step timer (`-1`) while it waits instead; timeouts are not tested here."""
    return agent_config(tmp_path, port, allow_http_downloads=True, step_timeout_minutes=None)


def windowed_download(url: str, target: Path) -> dict[str, Any]:
    return {**download_document(url, target), "maintenanceWindow": WINDOW}


async def test_a_download_deferred_past_its_urls_expiry_resumes_with_fresh_urls(
    tmp_path: Path,
    mosquitto: Mosquitto,
    emulator: Emulator,
    emulator_clock: ManualClock,
    agent_clock: AgentClock,
    s3: StandInServer,
) -> None:
    """Delivered at 00:00, two hours before its window; its URL lives an hour. When the window
    opens the job runs with the document fetched again (DescribeJobExecution), so the download
    starts with a freshly signed URL: one request, no renewal of its own, the right digest.
    (Without the resume hook the handler starts with the expired URL and has to renew it.)"""
    url = s3.put("/fw/app.bin", PAYLOAD.data)
    target = tmp_path / "app.bin"
    config = wait_config(tmp_path, mosquitto.port)
    async with running_agent(config):
        emulator.service.create_job(
            "late-1", [THING], windowed_download(url, target), presigned_expires_in_sec=3600
        )
        waiting = await wait_deferral(emulator, "late-1")
        assert waiting["deferred"] == "window"
        assert waiting["until"] == "2026-06-01T02:00:00Z"
        described = emulator.service.counters["DescribeJobExecution"]
        emulator_clock.advance(SERVICE_LAG)  # two hours pass for the service, and the device:
        agent_clock.set(epoch("2026-06-01T02:00:30Z"))
        execution = await wait_terminal(emulator, "late-1", THING, timeout=30)
    assert str(execution.status) == "SUCCEEDED", execution.status_details
    assert "deferred" not in execution.status_details
    assert "urlRenewals" not in execution.status_details  # the handler had a fresh URL
    assert target.read_bytes() == PAYLOAD.data
    assert emulator.service.counters["DescribeJobExecution"] == described + 1
    assert [(e.range, e.status) for e in s3.seen] == [(None, 200)]


async def test_a_document_changed_during_the_wait_fails_the_job_before_it_runs(
    tmp_path: Path,
    mosquitto: Mosquitto,
    emulator: Emulator,
    emulator_clock: ManualClock,
    agent_clock: AgentClock,
    s3: StandInServer,
) -> None:
    """The job's document changes in the cloud while the job waits for its window (a stand-in
    for a changed or compromised job: neither AWS nor the emulator can change a created job's
    document, so the test rewrites the emulator's record). Its URLs are still valid, but the
    copy fetched at the resume differs beyond them: FAILED with the reason, nothing downloaded.
    (Without the resume hook the download ran with the old copy and SUCCEEDED.)"""
    emulator_clock.advance(SERVICE_LAG)  # the service's time is now: the URLs stay valid
    url = s3.put("/fw/app.bin", PAYLOAD.data)
    target = tmp_path / "app.bin"
    config = agent_config(tmp_path, mosquitto.port, allow_http_downloads=True)
    async with running_agent(config):
        emulator.service.create_job("late-2", [THING], windowed_download(url, target))
        await wait_deferral(emulator, "late-2")
        job = emulator.service._jobs["late-2"]
        job.document = {**job.document, "path": str(tmp_path / "elsewhere.bin")}
        job.document_text = json.dumps(job.document)
        agent_clock.set(epoch("2026-06-01T02:00:30Z"))
        execution = await wait_terminal(emulator, "late-2", THING, timeout=30)
    assert str(execution.status) == "FAILED"
    assert execution.status_details["reason"] == (
        "the job document changed while it ran: the copy fetched again for fresh URLs differs"
        " beyond its presigned URLs; not used"
    )
    assert s3.seen == []
    assert not target.exists()
    assert not (tmp_path / "elsewhere.bin").exists()


async def test_a_wait_taken_up_again_after_a_restart_also_resumes_with_fresh_urls(
    tmp_path: Path,
    mosquitto: Mosquitto,
    emulator: Emulator,
    emulator_clock: ManualClock,
    agent_clock: AgentClock,
    s3: StandInServer,
) -> None:
    """The agent stops while the job waits for its window and starts again (its record says
    DEFERRED: the wait goes on, `recovery.Wait`); the copy delivered to the restarted agent is
    as old as the first in the service's time. When the window opens, the job runs with the
    document fetched again: no renewal by the handler, one request, the right digest."""
    url = s3.put("/fw/app.bin", PAYLOAD.data)
    target = tmp_path / "app.bin"
    config = wait_config(tmp_path, mosquitto.port)
    async with running_agent(config):
        emulator.service.create_job(
            "late-3", [THING], windowed_download(url, target), presigned_expires_in_sec=3600
        )
        await wait_deferral(emulator, "late-3")
    assert str(emulator.service.execution("late-3", THING).status) == "IN_PROGRESS"
    async with running_agent(config):
        await wait_deferral(emulator, "late-3", 1)  # announced again by the restarted agent
        described = emulator.service.counters["DescribeJobExecution"]
        emulator_clock.advance(SERVICE_LAG)
        agent_clock.set(epoch("2026-06-01T02:00:30Z"))
        execution = await wait_terminal(emulator, "late-3", THING, timeout=30)
    assert str(execution.status) == "SUCCEEDED", execution.status_details
    assert "urlRenewals" not in execution.status_details
    assert target.read_bytes() == PAYLOAD.data
    assert emulator.service.counters["DescribeJobExecution"] == described + 1
    assert [(e.range, e.status) for e in s3.seen] == [(None, 200)]


async def test_a_stop_while_the_document_is_fetched_again_launches_nothing_and_waits_not(
    tmp_path: Path,
    mosquitto: Mosquitto,
    emulator: Emulator,
    emulator_clock: ManualClock,
    agent_clock: AgentClock,
    s3: StandInServer,
) -> None:
    """The window opens and the agent asks for the document again before the run; the
    question goes unanswered (the link up, the request timeout an hour). A stop then ends the
    agent at once (before: it waited for the answer, still running 15 s after the stop), with
    nothing launched: no download, the record still DEFERRED for the next start to take up."""
    url = s3.put("/fw/app.bin", PAYLOAD.data)
    target = tmp_path / "app.bin"
    config = agent_config(
        tmp_path,
        mosquitto.port,
        allow_http_downloads=True,
        step_timeout_minutes=None,
        request_timeout_seconds=3600,
    )
    agent = Agent(config)
    run = asyncio.create_task(agent.run())
    service = emulator.service
    try:
        async with asyncio.timeout(15):
            await agent.ready.wait()
        service.create_job(
            "late-4", [THING], windowed_download(url, target), presigned_expires_in_sec=3600
        )
        await wait_deferral(emulator, "late-4")
        service.lose_next("DescribeJobExecution")
        emulator_clock.advance(SERVICE_LAG)
        agent_clock.set(epoch("2026-06-01T02:00:30Z"))
        await wait_until(lambda: service.counters["lost"] == 1, 15, "the document asked again")
        agent.request_stop()
        async with asyncio.timeout(15):
            assert await run == 0
    finally:
        if not run.done():
            agent.request_stop()
            agent.request_stop()
            run.cancel()
    assert s3.seen == []
    assert not target.exists()
    assert str(service.execution("late-4", THING).status) == "IN_PROGRESS"
    store = Store(config.state_dir / "state.db")
    try:
        states = [record.state for record in store.active()]
    finally:
        store.close()
    assert states == [ExecutionState.DEFERRED]
