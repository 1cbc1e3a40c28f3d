"""The always-on chaos run (20 jobs, a couple of faults of each kind) and the checker's rules.

The run is the same driver as `python -m benchmarks chaos` with everything real: mosquitto, the
emulator over paho, a TCP proxy, `python -m jobs_agent run` processes killed with SIGKILL, handler
scripts and the resumable plugin writing a side-effect log. The checker tests feed it small
hand-made histories, so each rule is shown to catch what it is meant to catch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from benchmarks.chaos import ChaosOptions, ChaosReport, run_chaos
from benchmarks.chaos_check import Change, SideEffect, check, parse_side_effects
from benchmarks.chaos_infra import AgentProcess
from benchmarks.chaos_setup import FAILING_EXIT, JobSpec
from tests.fixtures.broker import Mosquitto, find_mosquitto
from tests.harness import agent_config, config_yaml


def _require_mosquitto() -> None:
    if find_mosquitto() is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto not installed; CI is set, so this is an error, not a skip")
        pytest.skip("mosquitto not installed")


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_chaos_smoke_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    _require_mosquitto()
    report = await run_chaos(
        ChaosOptions(
            jobs=20,
            seed=20251,
            fault_interval=0.6,
            min_faults=14,
            drain_timeout=60.0,
            workdir=tmp_path / "chaos",
            results=None,
        )
    )
    detail = f"{report.summary()}\nproblems: {report.problems}\nnotes: {report.notes}"
    assert report.drained, detail
    assert (report.lost, report.duplicated, report.wrong_status) == (0, 0, 0), detail
    assert report.cancel_violations == 0, detail
    assert (report.outbox_left, report.agent_crashes) == (0, 0), detail
    assert report.agent_stop_code == 0, detail
    # Every kind of fault really happened (two shuffled decks of seven).
    assert report.kills >= 2, detail
    assert report.broker_restarts >= 1, detail
    assert report.drops >= 2, detail
    assert report.throttle_bursts >= 1 and report.throttles >= 1, detail
    assert sum(sum(c.values()) for c in report.outcomes.values()) == 20, detail
    assert report.agent_status_read, detail  # else "stranded 0" was never looked at
    assert report.stranded == 0, detail
    assert report.active_left == 0, detail


async def test_the_driver_stops_a_just_started_agent_cleanly(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The run's last fault may restart the agent just before the drain stops it: the driver's
    SIGTERM must wait for READY=1, or it lands before the agent handles it (exit -15)."""
    config = tmp_path / "config.yaml"
    config.write_text(config_yaml(agent_config(tmp_path, mosquitto.port)))
    exits: list[tuple[int, int]] = []
    agent = AgentProcess(
        [sys.executable, "-m", "jobs_agent", "run", "--config", str(config)],
        dict(os.environ),
        tmp_path / "agent.log",
        lambda pid, code: exits.append((pid, code)),
    )
    await agent.start()
    try:
        assert await agent.stop(timeout=30.0) == 0, (tmp_path / "agent.log").read_text()
    finally:
        await agent.close()
    assert exits == []


# -- the checker's rules, on hand-made records ----------------------------------------------------
QUICK = JobSpec("q", "quick", {}, (0,))
RESUMABLE = JobSpec("r", "resumable", {}, ())
FAILING = JobSpec("f", "failing", {}, (0,))


def _change(job: str, t: float, status: str, source: str = "device", **details: str) -> Change:
    return Change(t, job, 1, status, source, details)


def _effect(job: str, step: int, event: str, t: float, pid: int = 10, ppid: int = 1) -> SideEffect:
    return SideEffect(job, 1, step, event, pid, ppid, t)


def _run(
    specs: list[JobSpec],
    history: list[Change],
    effects: list[SideEffect],
    kills: tuple[float, ...] = (),
    cancels: dict[str, float] | None = None,
    status: dict[str, object] | None = None,
) -> dict[str, int]:
    verdict = check(
        specs,
        history,
        effects,
        interruptions=kills,
        cancels=cancels or {},
        agent_status=status,
        max_restarts_per_job=3,
    )
    return {c: verdict.count(c) for c in ("lost", "duplicated", "wrong", "cancel")}


def _queued(job: str) -> Change:
    return _change(job, 0.0, "QUEUED", "control")


def test_clean_run_has_no_problems() -> None:
    history = [_queued("q"), _change("q", 1, "IN_PROGRESS"), _change("q", 2, "SUCCEEDED")]
    effects = [_effect("q", 0, "start", 1.1), _effect("q", 0, "end", 1.2)]
    assert _run([QUICK], history, effects) == {"lost": 0, "duplicated": 0, "wrong": 0, "cancel": 0}


def test_job_without_terminal_status_is_lost() -> None:
    assert _run([QUICK], [_queued("q"), _change("q", 1, "IN_PROGRESS")], [])["lost"] == 1


def test_step_started_twice_is_duplicated() -> None:
    history = [_queued("q"), _change("q", 1, "IN_PROGRESS"), _change("q", 5, "SUCCEEDED")]
    effects = [
        _effect("q", 0, "start", 1.1, pid=10),
        _effect("q", 0, "start", 3.0, pid=11),
        _effect("q", 0, "end", 3.1, pid=11),
    ]
    assert _run([QUICK], history, effects, kills=(2.0,))["duplicated"] == 1


def test_restart_failure_needs_a_kill_while_the_job_ran() -> None:
    reason = {"reason": "agent restarted while the step was running"}
    history = [_queued("q"), _change("q", 1, "IN_PROGRESS"), _change("q", 5, "FAILED", **reason)]
    effects = [_effect("q", 0, "start", 1.1)]
    assert _run([QUICK], history, effects, kills=(3.0,))["wrong"] == 0
    assert _run([QUICK], history, effects, kills=(0.5, 6.0))["wrong"] == 1


def test_success_without_the_side_effect_is_wrong() -> None:
    history = [_queued("q"), _change("q", 1, "IN_PROGRESS"), _change("q", 2, "SUCCEEDED")]
    assert _run([QUICK], history, [_effect("q", 0, "start", 1.1)])["wrong"] == 1


def test_failing_job_must_fail_with_its_own_exit_code() -> None:
    good = {"reason": f'step 1 "fail": exited with code {FAILING_EXIT}'}
    bad = {"reason": "exited with code 7"}
    effects = [_effect("f", 0, "start", 1.1), _effect("f", 0, "end", 1.2)]
    for details, wrong in ((good, 0), (bad, 1)):
        history = [
            _queued("f"),
            _change("f", 1, "IN_PROGRESS"),
            _change("f", 2, "FAILED", **details),
        ]
        assert _run([FAILING], history, effects)["wrong"] == wrong


def test_resume_behind_a_committed_checkpoint_is_duplicated() -> None:
    history = [_queued("r"), _change("r", 1, "IN_PROGRESS"), _change("r", 9, "SUCCEEDED")]
    effects = [
        _effect("r", 0, "begin", 1.0),
        _effect("r", 0, "commit", 1.2),
        _effect("r", 1, "begin", 1.3),
        _effect("r", 1, "commit", 1.5),
        _effect("r", 1, "resume", 3.0),  # went back: chunk 1 was committed
        _effect("r", 1, "begin", 3.1),
        _effect("r", 1, "commit", 3.2),
        _effect("r", 2, "end", 3.3),
    ]
    assert _run([RESUMABLE], history, effects, kills=(2.0,))["duplicated"] == 2
    allowed = [*effects[:4], _effect("r", 2, "resume", 3.0), _effect("r", 2, "end", 3.3)]
    assert _run([RESUMABLE], history, allowed, kills=(2.0,)) == {
        "lost": 0,
        "duplicated": 0,
        "wrong": 0,
        "cancel": 0,
    }


def test_canceled_job_must_be_canceled_by_the_driver_and_stay_silent() -> None:
    history = [_queued("q"), _change("q", 1, "IN_PROGRESS"), _change("q", 2, "CANCELED", "control")]
    assert _run([QUICK], history, [])["wrong"] == 1
    assert _run([QUICK], history, [], cancels={"q": 1.9})["wrong"] == 0
    late = [*history, _change("q", 3, "SUCCEEDED")]
    assert _run([QUICK], late, [], cancels={"q": 1.9})["cancel"] == 1
    agent = {
        "outbox": [],
        "running": [],
        "recent": [{"job_id": "q", "state": "reported", "status": "SUCCEEDED", "note": None}],
    }
    assert _run([QUICK], history, [], cancels={"q": 1.9}, status=agent)["cancel"] == 1


def test_agent_record_left_running_for_an_ended_execution_is_stranded() -> None:
    history = [_queued("q"), _change("q", 1, "IN_PROGRESS"), _change("q", 2, "CANCELED", "control")]
    agent = {
        "outbox": [],
        "running": [{"job_id": "q", "state": "running"}],
        "recent": [],
    }
    verdict = check(
        [QUICK],
        history,
        [],
        interruptions=(),
        cancels={"q": 1.9},
        agent_status=agent,
        max_restarts_per_job=3,
    )
    assert verdict.count("stranded") == 1
    assert verdict.active_left == 1 and not verdict.ok


def test_reboot_requested_after_the_cancel_is_counted() -> None:
    reboot = JobSpec("b", "reboot", {}, (0, 1))
    history = [_queued("b"), _change("b", 1, "IN_PROGRESS"), _change("b", 2, "CANCELED", "control")]
    verdict = check(
        [reboot],
        history,
        [],
        interruptions=(),
        cancels={"b": 1.9},
        agent_status=None,
        max_restarts_per_job=3,
        reboot_requests=(1.5, 2.5),
    )
    assert verdict.reboots_after_cancel == 1


def test_a_run_passes_only_if_the_agent_stopped_cleanly_and_its_state_was_read() -> None:
    """A run whose `jobs-agent status --json` failed after the drain made none of the agent-side
    checks (stranded, outbox, active records), and one whose agent had to be killed on stop (or
    died of the SIGTERM) hung or crashed: neither passes, whatever the service's history says."""

    def report(**agent: object) -> ChaosReport:
        return ChaosReport(seed=1, jobs=1, drained=True, **agent)  # type: ignore[arg-type]

    assert not report().ok  # passed before: the status was never read, the stop never checked
    assert not report(agent_stop_code=None, agent_status_read=True).ok  # killed: it hung
    assert not report(agent_stop_code=-15, agent_status_read=True).ok
    assert not report(agent_stop_code=0, agent_status_read=False).ok
    assert report(agent_stop_code=0, agent_status_read=True).ok


def test_side_effect_lines_parse_and_garbage_is_skipped() -> None:
    text = "job-1 1 0 start 42 7 1795238446.847317693\nhalf a line\n"
    assert parse_side_effects(text) == [
        SideEffect("job-1", 1, 0, "start", 42, 7, 1795238446.847317693)
    ]
