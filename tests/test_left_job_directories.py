"""A job directory (`state_dir/jobs/<namespace>/<jobId>`) outlives its execution only until the
agent's next start: the agent records REPORTED, then removes the directory, and one killed in
between left it for ever (nothing looked at it again: the record is finished, the service never
offers the execution again). Its `state` folder, which the handlers' documentation promises
"empty when the job starts", was then handed to the job's next execution (a retry) with what
the ended one wrote in it. A directory of no record at all goes too; those of unfinished
records stay.

The kill is placed by the engine's crash points (`JOBS_AGENT_CRASH_AT=reported`: right after
REPORTED is written); a real `jobs-agent run`, real mosquitto, real files.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from jobs_agent.emulator.embedded import Emulator
from jobs_agent.engine.async_store import AsyncStore
from jobs_agent.engine.lifecycle import ExecutionState
from jobs_agent.engine.orphans import remove_left_job_directories
from jobs_agent.engine.store import Store
from jobs_agent.vocabulary import ExecutionRef, JobExecutionStatus
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    config_yaml,
    side_effects,
    wait_terminal,
    wait_until,
    write_handler,
)

THING = f"gw-leftdirs-{os.getpid()}"


async def test_a_directory_left_by_a_crash_after_reported_is_removed_at_the_next_start(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """Execution 1 fails (retried once) and leaves a file in its state folder; the agent is
    killed right after recording REPORTED. The restarted agent removes that directory, and two
    of no record, before the retry runs: the retry finds its state folder empty (before: it
    found execution 1's file, and the directories stayed)."""
    seen = tmp_path / "seen.log"
    write_handler(
        tmp_path / "handlers",
        "h",
        f"""#!/bin/sh
n=$JOBS_AGENT_EXECUTION_NUMBER
if [ -e "$JOBS_AGENT_STATE_DIR/mine" ]; then echo "run $n: not empty" >> {seen}
else echo "run $n: empty" >> {seen}; fi
touch "$JOBS_AGENT_STATE_DIR/mine"
[ "$n" = 1 ] && exit 3
exit 0
""",
    )
    config = agent_config(tmp_path, mosquitto.port, thing=THING)
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    agent = AgentProcess(config_path=path, workdir=tmp_path)
    jobs = config.state_dir / "jobs"
    service = emulator.service
    try:
        service.create_job(
            "retried",
            [THING],
            {"operation": "h"},
            retry_config=[{"failureType": "FAILED", "numberOfRetries": 1}],
        )
        agent.start(JOBS_AGENT_CRASH_AT="reported")
        assert await agent.wait_exit(timeout=30) == -signal.SIGKILL, agent.log_text()
        assert str(service.execution("retried", THING, 1).status) == "FAILED"
        assert (jobs / "default" / "retried" / "state" / "mine").exists()  # what the kill left
        for orphan in ("default/never-recorded/scratch-1", "fleet-a/other/state"):
            (jobs / orphan).mkdir(parents=True)
            (jobs / orphan / "file").write_text("left")
        agent.start()
        await agent.wait_ready()
        await service.wait_for_status("retried", THING, "SUCCEEDED", 2, timeout=30)
        assert side_effects(seen) == ["run 1: empty", "run 2: empty"]
        assert not (jobs / "default" / "never-recorded").exists()
        assert not (jobs / "fleet-a" / "other").exists()
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()


async def test_the_directories_of_unfinished_records_stay(tmp_path: Path) -> None:
    """Every state a record can be in, each with a job directory: those of an execution taken
    and not finished (running, deferred, awaiting a reboot, received) or decided and not yet
    reported stay; those of a reported or cancelled one go. The agent's spare (`.recycled`)
    stays."""
    state_dir = tmp_path / "state"
    jobs = state_dir / "jobs"
    store = Store(_made(state_dir) / "state.db")
    refs = {name: ExecutionRef(None, name, 1) for name in ("running", "decided", "reported")}
    refs["cancelled"] = ExecutionRef("fleet-a", "cancelled", 1)
    refs["received"] = ExecutionRef("fleet-a", "received", 1)
    try:
        for name, ref in refs.items():
            state = ExecutionState.RECEIVED if name == "received" else ExecutionState.STARTED
            store.record_received(ref, {"operation": "h"}, 1, state)
        store.transition(refs["running"], ExecutionState.RUNNING)
        store.decide(refs["decided"], JobExecutionStatus.FAILED, {"reason": "no"})
        store.decide(refs["reported"], JobExecutionStatus.FAILED, {"reason": "no"})
        (entry,) = [e for e in store.outbox() if e.key == refs["reported"]]
        store.reported(entry.id, refs["reported"])
        store.cancelled(refs["cancelled"], "ended by the service")
    finally:
        store.close()
    for ref in refs.values():
        (jobs / (ref.namespace or "default") / ref.job_id / "state").mkdir(parents=True)
    (jobs / ".recycled" / "state").mkdir(parents=True)
    async_store = AsyncStore(state_dir / "state.db")
    try:
        removed = await remove_left_job_directories(state_dir, async_store)
    finally:
        await async_store.close()
    assert sorted(removed) == [
        str(jobs / "default" / "reported"),
        str(jobs / "fleet-a" / "cancelled"),
    ]
    assert sorted(p.relative_to(jobs).as_posix() for p in jobs.glob("*/*")) == [
        ".recycled/state",
        "default/decided",
        "default/running",
        "fleet-a/received",
    ]


def _made(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return path


async def test_the_directory_of_an_execution_ended_while_the_agent_was_down_is_removed(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """Killed while the step runs; the job is cancelled before the agent is back. The restarted
    agent closes the record at its first reconciliation and removes the job's directory then,
    as it does for a job cancelled while it runs (before: the record was closed, the directory
    kept until a start after that one)."""
    started = tmp_path / "started"
    write_handler(
        tmp_path / "handlers",
        "h",
        f"""#!/bin/sh
[ "$JOBS_AGENT_JOB_ID" = next ] && exit 0
touch "$JOBS_AGENT_STATE_DIR/mine" && touch {started}
exec sleep 300
""",
    )
    config = agent_config(tmp_path, mosquitto.port, thing=THING)
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    agent = AgentProcess(config_path=path, workdir=tmp_path)
    job_dir = config.state_dir / "jobs" / "default" / "gone"
    service = emulator.service
    try:
        agent.start()
        await agent.wait_ready()
        service.create_job("gone", [THING], {"operation": "h"})
        await wait_until(started.exists, 20, "the step to start")
        agent.signal(signal.SIGKILL)
        await agent.wait_exit()
        service.cancel_job("gone", force=True)
        assert (job_dir / "state" / "mine").exists()
        agent.start()
        await agent.wait_ready()
        service.create_job("next", [THING], {"operation": "h"})  # taken after reconciling
        execution = await wait_terminal(emulator, "next", THING)
        assert str(execution.status) == "SUCCEEDED"
        assert str(service.execution("gone", THING).status) == "CANCELED"
        assert not job_dir.exists()
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()
