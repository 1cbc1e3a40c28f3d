"""Where the documentation is silent or contradicts itself, both readings, each pinned.

The default (`DOCUMENTED`) is tested throughout the suite; here each point is run under both of
its readings and the difference between them is asserted.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from jobs_agent.emulator import JobsService, ManualClock
from jobs_agent.emulator.embedded import EmbeddedEmulator
from jobs_agent.emulator.readings import (
    ALTERNATIVE,
    DOCUMENTED,
    READINGS,
    describe,
    parse_readings,
)
from jobs_agent.emulator.templates import MANAGED_TEMPLATES
from jobs_agent.jobs.errors import ErrorCode
from jobs_agent.transport.local import LocalBus
from tests.emulator.conformance.conftest import DOC, REGION, Device


def service_with(clock: ManualClock, **changes: object) -> JobsService:
    return JobsService(clock, readings=dataclasses.replace(DOCUMENTED, **changes))


def test_every_reading_is_in_the_docs_table() -> None:
    """docs/emulator.md's table names each switch with all its values."""
    from pathlib import Path

    table = (Path(__file__).parents[3] / "docs" / "emulator.md").read_text()
    for reading in READINGS:
        choices = "\\|".join(reading.values)  # a | in a Markdown table cell is escaped
        assert f"`{reading.name}={choices}`" in table, reading.name


def test_every_reading_parses_and_prints_back() -> None:
    assert parse_readings(describe(ALTERNATIVE)) == ALTERNATIVE
    assert parse_readings([]) == DOCUMENTED
    for reading in READINGS:
        assert getattr(ALTERNATIVE, reading.field) != getattr(DOCUMENTED, reading.field)
    with pytest.raises(ValueError, match="takes on-time"):
        parse_readings(["timeout=sometimes"])


@pytest.mark.parametrize("notify_on_start", [True, False])
async def test_notify_on_queued_to_in_progress(clock: ManualClock, notify_on_start: bool) -> None:
    """Jobs notifications (jobs-comm-notifications.html): the criteria publish a
    ListNotification when an execution "changes to a non-terminal status (IN_PROGRESS or
    QUEUED)"; the worked example says "When job1 starts to execute ... No notifications are
    published"."""
    readings = dataclasses.replace(DOCUMENTED, notify_on_start=notify_on_start)
    async with EmbeddedEmulator(
        LocalBus(), clock=clock, tick_seconds=None, readings=readings
    ) as emu:
        device = Device(emu.bus, "dev1")
        await device.start()
        emu.service.create_job("j", ["dev1"], DOC)
        await device.published()
        emu.service.start_next("dev1")
        notifies = device.topics(await device.published(), "notify")
        assert len(notifies) == (1 if notify_on_start else 0)


@pytest.mark.parametrize("delay", [0, 60])
def test_timeout_fires_on_time_or_up_to_60_seconds_late(clock: ManualClock, delay: int) -> None:
    """ "The actual job execution timeout can occur up to 60 seconds later than the estimated
    duration" (API_DescribeJobExecution.html, approximateSecondsBeforeTimedOut)."""
    service = service_with(clock, timeout_delay_seconds=delay)
    service.create_job("j", ["t"], DOC)
    service.start_next("t", step_timeout_minutes=1)
    clock.advance(60)
    assert service.tick() == (1 if delay == 0 else 0)
    if delay:
        clock.advance(delay)
        assert service.tick() == 1


@pytest.mark.parametrize("present", [True, False])
async def test_seconds_before_timed_out_over_mqtt(clock: ManualClock, present: bool) -> None:
    """JobExecution has approximateSecondsBeforeTimedOut in the API reference
    (API_iot-jobs-data_JobExecution.html) but not in the MQTT page's JobExecution
    (jobs-mqtt-https-api.html)."""
    readings = dataclasses.replace(DOCUMENTED, mqtt_seconds_before_timed_out=present)
    async with EmbeddedEmulator(
        LocalBus(), clock=clock, tick_seconds=None, readings=readings
    ) as emu:
        device = Device(emu.bus, "dev1")
        await device.start()
        emu.service.create_job("j", ["dev1"], DOC, in_progress_timeout_minutes=5)
        _, reply = await device.request("start-next")
        assert ("approximateSecondsBeforeTimedOut" in reply["execution"]) is present


@pytest.mark.parametrize("merge", [False, True])
def test_status_details_replaced_or_merged(clock: ManualClock, merge: bool) -> None:
    """ "If not specified, the statusDetails are unchanged" is all the UpdateJobExecution page
    says (API_iot-jobs-data_UpdateJobExecution.html)."""
    service = service_with(clock, merge_status_details=merge)
    service.create_job("j", ["t"], DOC)
    service.start_next("t", status_details={"a": "1"})
    service.update("t", "j", "IN_PROGRESS", status_details={"b": "2"})
    expected = {"a": "1", "b": "2"} if merge else {"b": "2"}
    assert service.execution("j", "t").status_details == expected


@pytest.mark.parametrize(
    "code", [ErrorCode.INVALID_STATE_TRANSITION, ErrorCode.TERMINAL_STATE_REACHED]
)
def test_update_after_a_forced_cancel(clock: ManualClock, code: ErrorCode) -> None:
    """A force-canceled device "is unable to update the job execution status"
    (API_CancelJobExecution.html) without saying with which error."""
    from jobs_agent.emulator import ServiceError

    service = service_with(clock, update_after_force_cancel=code)
    service.create_job("j", ["t"], DOC)
    service.start_next("t")
    service.cancel_job("j", force=True)
    with pytest.raises(ServiceError) as info:
        service.update("t", "j", "SUCCEEDED")
    assert info.value.code is code


@pytest.mark.parametrize("listed", [True, False])
def test_get_pending_lists_or_filters_in_progress(clock: ManualClock, listed: bool) -> None:
    """The API references return inProgressJobs; the limits page says "Out of the 10 pending
    job executions, executions that are IN_PROGRESS will be filtered from the result"
    (job-limits.html)."""
    service = service_with(clock, pending_lists_in_progress=listed)
    for n in range(11):
        service.create_job(f"j{n:02d}", ["t"], DOC)
    service.start_next("t")
    in_progress, queued = service.get_pending("t")
    assert [e.job_id for e in in_progress] == (["j00"] if listed else [])
    assert len(queued) == 9


@pytest.mark.parametrize("empty", [True, False])
def test_managed_template_optional_parameters(clock: ManualClock, empty: bool) -> None:
    """The guide says what the Device Client does when runAsUser or pathToHandler is "not
    specified during job creation", not what the rendered document holds
    (job-templates-managed.html)."""
    service = service_with(clock, template_optional_parameters_empty=empty)
    service.create_job("j", ["t"], job_template_arn=MANAGED_TEMPLATES["AWS-Reboot"].arn(REGION))
    action = json.loads(service.job_document("j"))["steps"][0]["action"]
    assert action["runAsUser"] == ("" if empty else "${aws:iot:parameter:runAsUser}")
