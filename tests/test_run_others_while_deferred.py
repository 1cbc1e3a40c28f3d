"""`jobs.run_others_while_deferred` (issue 16 item 1): while an execution is deferred, other
QUEUED executions run, one at a time, and the deferred one runs again when its wait ends.

End to end with real `jobs-agent run` processes on a real mosquitto against the emulator, the
agent's clock moved through `JOBS_AGENT_CLOCK_FILE` (tests/test_deferral.py's helpers); the
rules the engine follows (who gets the turn, what is taken by name, what a restart does with a
deferred and a running record) are pure and tested table by table below.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from jobs_agent.config import ConfigError, load_config
from jobs_agent.emulator.embedded import Emulator
from jobs_agent.engine.lifecycle import ExecutionState
from jobs_agent.engine.records import Deferral, ExecutionRecord
from jobs_agent.engine.recovery import RESTARTED_MID_STEP, Action, Fail, Limits, Run, Wait, recover
from jobs_agent.engine.turns import NEW_WORK, Turns, next_by_name, next_turn
from jobs_agent.vocabulary import ExecutionRef
from tests.fixtures.broker import Mosquitto
from tests.harness import wait_terminal, wait_until, write_handler
from tests.test_deferral import (
    THING,
    AgentClock,
    deferral_updates,
    epoch,
    seen,
    start_agent,
    statuses,
    wait_deferral,
)
from tests.test_deferral import emulator_clock as emulator_clock
from tests.test_deferral import emulator_options as emulator_options

DEFER_ONCE = """#!/bin/sh
# Defers once for {after} s ("not now"), then succeeds; each run is one line of {log}.
if ! grep -q "^{name} deferred" {log} 2>/dev/null; then
  echo "{name} deferred" >> {log}
  echo '{{"defer": {{"after": {after}, "reason": "{name} not now"}}}}' >&3
  exit $JOBS_AGENT_EXIT_DEFER
fi
echo "{name} ran" >> {log}
exit 0
"""
QUICK = """#!/bin/sh
echo "{name} ran" >> {log}
"""
BLOCKING = """#!/bin/sh
# Runs until the test creates {go}.
echo "{name} started" >> {log}
while [ ! -f {go} ]; do sleep 0.05; done
echo "{name} ran" >> {log}
"""
NOON = "2026-06-01T12:00:00Z"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def status(emulator: Emulator, job_id: str) -> str:
    return str(emulator.service.execution(job_id, THING).status)


def setting(on: bool) -> tuple[str, ...]:
    return (f"run_others_while_deferred: {'true' if on else 'false'}",)


@pytest.mark.parametrize("run_others", [False, True], ids=["off", "on"])
async def test_a_second_job_runs_while_the_first_is_deferred_only_when_allowed(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator, run_others: bool
) -> None:
    """Off (the default's behaviour): the second job waits until the deferred one has run
    again and succeeded. On: the second job runs and SUCCEEDS while the first stays deferred
    (IN_PROGRESS, its wait untouched), then the first resumes when its hour has passed."""
    order = tmp_path / "order.log"
    handlers = tmp_path / "handlers"
    write_handler(handlers, "first", DEFER_ONCE.format(name="first", after=3600, log=order))
    write_handler(handlers, "second", QUICK.format(name="second", log=order))
    clock = AgentClock(tmp_path / "clock", epoch(NOON))
    agent = start_agent(tmp_path, mosquitto.port, clock, jobs_lines=setting(run_others))
    try:
        await agent.wait_ready()
        emulator.service.create_job("first-1", [THING], {"operation": "first"})
        announced = await wait_deferral(emulator, "first-1")
        assert announced["until"] == "2026-06-01T13:00:00Z"
        emulator.service.create_job("second-1", [THING], {"operation": "second"})
        if run_others:
            second = await wait_terminal(emulator, "second-1", THING, timeout=30)
            assert str(second.status) == "SUCCEEDED"
            assert status(emulator, "first-1") == "IN_PROGRESS"
            assert lines(order) == ["first deferred", "second ran"]
            assert deferral_updates(emulator, "first-1")[-1]["until"] == announced["until"]
        else:
            # An absence: the second job is given the time it takes when allowed (well under
            # a second here), several times over, and must still be queued.
            with pytest.raises(TimeoutError):
                await emulator.service.wait_for(lambda: status(emulator, "second-1") != "QUEUED", 3)
            assert lines(order) == ["first deferred"]
        clock.set(epoch("2026-06-01T13:00:01Z"))
        first = await wait_terminal(emulator, "first-1", THING, timeout=30)
        second = await wait_terminal(emulator, "second-1", THING, timeout=30)
    finally:
        agent.kill()
    assert (str(first.status), str(second.status)) == ("SUCCEEDED", "SUCCEEDED")
    expected = (
        ["first deferred", "second ran", "first ran"]
        if run_others
        else ["first deferred", "first ran", "second ran"]
    )
    assert lines(order) == expected
    assert "TIMED_OUT" not in statuses(emulator, "first-1")


async def test_a_restart_with_a_deferred_and_a_running_record_recovers_both(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """A power cut (kill -9) while a second job runs beside a deferred one. After the restart
    (same boot: an agent restart) the deferred one waits on, its `until` unchanged; the
    interrupted script step is FAILED, never rerun (recovery's rule for a step that is not
    resumable); a job queued meanwhile is taken by name and SUCCEEDS while the first still
    waits; then the first resumes and SUCCEEDS."""
    order = tmp_path / "order.log"
    handlers = tmp_path / "handlers"
    go = tmp_path / "go"
    write_handler(handlers, "first", DEFER_ONCE.format(name="first", after=3600, log=order))
    write_handler(handlers, "blocker", BLOCKING.format(name="blocker", go=go, log=order))
    write_handler(handlers, "third", QUICK.format(name="third", log=order))
    clock = AgentClock(tmp_path / "clock", epoch(NOON))
    agent = start_agent(tmp_path, mosquitto.port, clock, jobs_lines=setting(True))
    try:
        await agent.wait_ready()
        emulator.service.create_job("first-1", [THING], {"operation": "first"})
        await wait_deferral(emulator, "first-1")
        emulator.service.create_job("blocker-1", [THING], {"operation": "blocker"})
        await wait_until(lambda: "blocker started" in lines(order), 30, "the blocker to run")

        agent.kill()  # a power cut of the agent alone: the boot id stays
        await agent.wait_exit()
        emulator.service.create_job("third-1", [THING], {"operation": "third"})
        before = seen(emulator, "first-1")
        agent.start()
        await agent.wait_ready()
        again = await wait_deferral(emulator, "first-1", before)
        assert again["until"] == "2026-06-01T13:00:00Z"
        blocker = await wait_terminal(emulator, "blocker-1", THING, timeout=30)
        third = await wait_terminal(emulator, "third-1", THING, timeout=30)
        assert str(blocker.status) == "FAILED"
        assert blocker.status_details["reason"] == RESTARTED_MID_STEP
        assert str(third.status) == "SUCCEEDED"
        assert status(emulator, "first-1") == "IN_PROGRESS"

        clock.set(epoch("2026-06-01T13:00:01Z"))
        first = await wait_terminal(emulator, "first-1", THING, timeout=30)
    finally:
        go.touch()
        agent.kill()
    assert str(first.status) == "SUCCEEDED"
    assert lines(order) == ["first deferred", "blocker started", "third ran", "first ran"]
    assert "TIMED_OUT" not in statuses(emulator, "first-1")


async def test_cancelling_the_deferred_job_while_another_runs_ends_its_wait(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """The deferred execution is cancelled (force) while another job's handler runs: its wait
    ends at once (recorded CANCELLED), the running job is not disturbed and SUCCEEDS, and the
    cancelled one never runs again, even once its time has come."""
    order = tmp_path / "order.log"
    handlers = tmp_path / "handlers"
    go = tmp_path / "go"
    write_handler(handlers, "first", DEFER_ONCE.format(name="first", after=3600, log=order))
    write_handler(handlers, "blocker", BLOCKING.format(name="blocker", go=go, log=order))
    write_handler(handlers, "last", QUICK.format(name="last", log=order))
    clock = AgentClock(tmp_path / "clock", epoch(NOON))
    agent = start_agent(tmp_path, mosquitto.port, clock, jobs_lines=setting(True))
    try:
        await agent.wait_ready()
        emulator.service.create_job("first-1", [THING], {"operation": "first"})
        await wait_deferral(emulator, "first-1")
        emulator.service.create_job("blocker-1", [THING], {"operation": "blocker"})
        await wait_until(lambda: "blocker started" in lines(order), 30, "the blocker to run")

        emulator.service.cancel_job("first-1", force=True)
        await wait_until(
            lambda: "the service ended the deferred execution" in agent.log_text(),
            30,
            "the deferred wait to end",
        )
        assert lines(order) == ["first deferred", "blocker started"]  # still running
        go.touch()
        blocker = await wait_terminal(emulator, "blocker-1", THING, timeout=30)
        assert str(blocker.status) == "SUCCEEDED"

        clock.set(epoch("2026-06-01T13:00:01Z"))
        emulator.service.create_job("last-1", [THING], {"operation": "last"})
        last = await wait_terminal(emulator, "last-1", THING, timeout=30)  # start-next again
    finally:
        go.touch()
        agent.kill()
    assert str(last.status) == "SUCCEEDED"
    assert status(emulator, "first-1") == "CANCELED"
    assert lines(order) == ["first deferred", "blocker started", "blocker ran", "last ran"]


async def test_two_deferred_jobs_both_wait_and_run_earliest_wake_first(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """A job that defers while another is deferred: both wait. When both waits are over while
    a third job runs, the one whose wait ended first (12:30, though deferred second) runs
    first, then the other (13:00)."""
    order = tmp_path / "order.log"
    handlers = tmp_path / "handlers"
    go = tmp_path / "go"
    write_handler(handlers, "late", DEFER_ONCE.format(name="late", after=3600, log=order))
    write_handler(handlers, "early", DEFER_ONCE.format(name="early", after=1800, log=order))
    write_handler(handlers, "blocker", BLOCKING.format(name="blocker", go=go, log=order))
    clock = AgentClock(tmp_path / "clock", epoch(NOON))
    agent = start_agent(tmp_path, mosquitto.port, clock, jobs_lines=setting(True))
    try:
        await agent.wait_ready()
        emulator.service.create_job("late-1", [THING], {"operation": "late"})
        assert (await wait_deferral(emulator, "late-1"))["until"] == "2026-06-01T13:00:00Z"
        emulator.service.create_job("early-1", [THING], {"operation": "early"})
        assert (await wait_deferral(emulator, "early-1"))["until"] == "2026-06-01T12:30:00Z"
        emulator.service.create_job("blocker-1", [THING], {"operation": "blocker"})
        await wait_until(lambda: "blocker started" in lines(order), 30, "the blocker to run")

        clock.set(epoch("2026-06-01T13:00:01Z"))  # both waits are over; the turn is taken
        await wait_until(
            lambda: agent.log_text().count("the job runs when the running one ends") >= 2,
            30,
            "both deferred jobs to ask for the turn",
        )
        go.touch()
        for job_id in ("blocker-1", "early-1", "late-1"):
            execution = await wait_terminal(emulator, job_id, THING, timeout=30)
            assert str(execution.status) == "SUCCEEDED", job_id
    finally:
        go.touch()
        agent.kill()
    assert lines(order) == [
        "late deferred",
        "early deferred",
        "blocker started",
        "blocker ran",
        "early ran",
        "late ran",
    ]


# -- the rules, table by table -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("asks", "chosen"),
    [
        ([], None),
        ([(NEW_WORK, 0)], 0),
        ([(NEW_WORK, 0), (2e9, 1)], 1),  # a deferred job that is ready goes before new work
        ([(2e9, 0), (1.9e9, 1)], 1),  # earliest wake first, whoever asked first
        ([(2e9, 3), (2e9, 1)], 1),  # a tie: the first to ask
        ([(NEW_WORK, 0), (2e9, 2), (1.5e9, 5)], 2),
    ],
)
def test_who_gets_the_turn(asks: list[tuple[float, int]], chosen: int | None) -> None:
    assert next_turn(asks) == chosen


A, B, C, D = (ExecutionRef(None, f"job-{x}", 1) for x in "abcd")


@pytest.mark.parametrize(
    ("in_progress", "queued", "aside", "taken"),
    [
        ([A], [], {A}, None),  # only the deferred one: nothing to take
        ([A], [B, C], {A}, (B, True)),  # the service's queue order
        ([A, B], [C], {A}, (B, False)),  # in progress first (a restart's running record)
        ([B, A], [C], {A, B}, (C, True)),  # two deferred, a third queued
        ([], [A, D], {A}, (D, True)),  # never one waiting aside, whatever the service says
    ],
)
def test_what_is_taken_by_name(
    in_progress: list[ExecutionRef],
    queued: list[ExecutionRef],
    aside: set[ExecutionRef],
    taken: tuple[ExecutionRef, bool] | None,
) -> None:
    assert next_by_name(in_progress, queued, aside) == taken


def _record(ref: ExecutionRef, state: ExecutionState, **fields: object) -> ExecutionRecord:
    base = ExecutionRecord(
        key=ref,
        state=state,
        document={"operation": "x"},
        version_number=1,
        handler="x",
        resumable=False,
        step=0,
        checkpoint=None,
        boot_id=None,
        restarts=0,
        progress=None,
        outcome_status=None,
        outcome_details=None,
        note=None,
        received_at=0.0,
        updated_at=0.0,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


DEFERRED = _record(
    A, ExecutionState.DEFERRED, deferral=Deferral("handler", 2e9, "battery low", 1.9e9)
)
RESTART: list[tuple[str, list[ExecutionRecord], list[Action]]] = [
    (
        "deferred + a script that ran: wait on, FAILED",
        [DEFERRED, _record(B, ExecutionState.RUNNING)],
        [Wait("handler", 2e9, "battery low"), Fail(RESTARTED_MID_STEP, stop_leftovers=True)],
    ),
    (
        "deferred + a resumable handler: wait on, resumed",
        [DEFERRED, _record(B, ExecutionState.RUNNING, resumable=True)],
        [Wait("handler", 2e9, "battery low"), Run(resumed=True, restarts=1, stop_leftovers=True)],
    ),
    (
        "deferred + one taken by name, not yet in progress on the record",
        [DEFERRED, _record(B, ExecutionState.RECEIVED)],
        [Wait("handler", 2e9, "battery low"), Run()],
    ),
    (
        "two deferred: both wait on",
        [DEFERRED, _record(B, ExecutionState.DEFERRED, deferral=Deferral("consent", None, "?", 1))],
        [Wait("handler", 2e9, "battery low"), Wait("consent", None, "?")],
    ),
]


@pytest.mark.parametrize(
    ("records", "actions"), [r[1:] for r in RESTART], ids=[r[0] for r in RESTART]
)
def test_a_restart_recovers_each_record_on_its_own(
    records: list[ExecutionRecord], actions: list[Action]
) -> None:
    """Recovery is per record: a deferred execution beside a running one changes neither's
    meaning (the engine then waits for the one aside and takes the other by name)."""
    limits = Limits(max_agent_restarts=3)
    assert [recover(r, "boot-a", limits) for r in records] == actions


async def test_the_turn_goes_to_the_earliest_ready_and_back() -> None:
    """`Turns` hands the one turn out: held by new work, asked for by two deferred executions
    (13:00 first, then 12:30): released, it goes to 12:30, then 13:00, then new work again."""
    woken: list[int] = []
    turns = Turns(lambda: None, lambda: woken.append(1))
    holder = turns.ask(NEW_WORK)
    assert holder.done()
    late, early = turns.ask(2e9), turns.ask(1.9e9)
    work = turns.ask(NEW_WORK)
    assert not (late.done() or early.done() or work.done())
    turns.release()
    assert early.done() and not late.done()
    turns.withdraw(early)  # given, then given back (its execution was cancelled meanwhile)
    assert late.done() and not work.done()
    turns.release()
    assert work.done()
    turns.release()
    async with turns.turn(NEW_WORK):
        blocked = turns.ask(1.0)
        await asyncio.sleep(0)
        assert not blocked.done()
    assert blocked.done()
    assert woken


async def test_a_reload_that_switches_it_off_holds_new_work_while_one_waits_aside(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """SIGHUP applies the setting from the next job taken: switched off while an execution
    waits aside, nothing else is taken until that one has run (the setting's meaning), and
    the waiting one is not disturbed."""
    order = tmp_path / "order.log"
    handlers = tmp_path / "handlers"
    write_handler(handlers, "first", DEFER_ONCE.format(name="first", after=3600, log=order))
    write_handler(handlers, "second", QUICK.format(name="second", log=order))
    clock = AgentClock(tmp_path / "clock", epoch(NOON))
    agent = start_agent(tmp_path, mosquitto.port, clock, jobs_lines=setting(True))
    try:
        await agent.wait_ready()
        emulator.service.create_job("first-1", [THING], {"operation": "first"})
        await wait_deferral(emulator, "first-1")
        config = tmp_path / "config.yaml"
        config.write_text(config.read_text().replace(setting(True)[0], setting(False)[0]))
        agent.signal(signal.SIGHUP)
        await agent.wait_message("STATUS=configuration reloaded")
        emulator.service.create_job("second-1", [THING], {"operation": "second"})
        with pytest.raises(TimeoutError):  # an absence: see the first test
            await emulator.service.wait_for(lambda: status(emulator, "second-1") != "QUEUED", 3)
        clock.set(epoch("2026-06-01T13:00:01Z"))
        first = await wait_terminal(emulator, "first-1", THING, timeout=30)
        second = await wait_terminal(emulator, "second-1", THING, timeout=30)
    finally:
        agent.kill()
    assert (str(first.status), str(second.status)) == ("SUCCEEDED", "SUCCEEDED")
    assert lines(order) == ["first deferred", "first ran", "second ran"]


@pytest.mark.parametrize(("value", "expected"), [(None, False), ("true", True), ("false", False)])
def test_the_setting_reaches_the_engine_false_by_default(
    tmp_path: Path, value: str | None, expected: bool
) -> None:
    path = tmp_path / "config.yaml"
    jobs = "" if value is None else f"jobs:\n  run_others_while_deferred: {value}\n"
    path.write_text("thing_name: gw\n" + jobs)
    assert load_config(path, environ={}).engine_settings().run_others_while_deferred is expected


def test_config_check_names_the_key_and_the_line_of_a_bad_value(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("thing_name: gw\njobs:\n  run_others_while_deferred: sometimes\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert "jobs.run_others_while_deferred" in str(caught.value)
    assert "line 3" in str(caught.value)
    checked = subprocess.run(
        [sys.executable, "-m", "jobs_agent", "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode != 0
    assert "jobs.run_others_while_deferred" in checked.stdout + checked.stderr


@pytest.mark.parametrize("lost", ["GetPendingJobExecutions", "DescribeJobExecution"])
async def test_a_stop_while_a_job_is_looked_for_by_name_ends_the_agent(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator, lost: str
) -> None:
    """A job waits aside, so the next one is looked for by name: GetPendingJobExecutions, then
    DescribeJobExecution of the one chosen, reads whose loss changes nothing (nothing is taken
    before the start by name). One goes unanswered (the request timeout an hour): a SIGTERM
    ends the agent at once (before: it waited for the answer, still running 15 s after)."""
    order = tmp_path / "order.log"
    handlers = tmp_path / "handlers"
    write_handler(handlers, "first", DEFER_ONCE.format(name="first", after=3600, log=order))
    write_handler(handlers, "second", QUICK.format(name="second", log=order))
    clock = AgentClock(tmp_path / "clock", epoch(NOON))
    agent = start_agent(
        tmp_path, mosquitto.port, clock, jobs_lines=setting(True), request_timeout_seconds=3600
    )
    service = emulator.service
    try:
        await agent.wait_ready()
        service.create_job("first-1", [THING], {"operation": "first"})
        await wait_deferral(emulator, "first-1")
        service.lose_next(lost)
        service.create_job("second-1", [THING], {"operation": "second"})
        await wait_until(lambda: service.counters["lost"] == 1, 15, f"the {lost} lost")
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit(timeout=15) == 0
    finally:
        agent.kill()
    assert lines(order) == ["first deferred"]
    assert status(emulator, "second-1") == "QUEUED"
