"""The execution engine against the emulator over a real mosquitto broker, with real processes.

The agent runs in-process (paho transport to the broker) where the test only needs to observe
it, and as a real `jobs-agent run` process where it must be killed (see test_engine_kill.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from jobs_agent.emulator.clock import ManualClock
from jobs_agent.emulator.embedded import Emulator
from jobs_agent.emulator.readings import Readings
from jobs_agent.jobs import topics
from jobs_agent.jobs.status_details import validate_status_details
from jobs_agent.transport.paho import PahoTransport
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    agent_config,
    device_statuses,
    paho_connection,
    running_agent,
    side_effects,
    start_emulator,
    terminal_statuses,
    wait_pid_gone,
    wait_terminal,
    wait_until,
    write_handler,
)

THING = "gw-test"


@pytest.fixture
def emulator_options(readings: Readings) -> dict[str, object]:
    """Every test here that uses the `emulator` runs under each reading of the points AWS leaves
    silent (the shared `readings`)."""
    return {"readings": readings}


def _logging_handler(tmp_path: Path, name: str = "work") -> Path:
    log = tmp_path / "side-effects.log"
    write_handler(
        tmp_path / "handlers",
        name,
        f"""#!/bin/sh
echo "$JOBS_AGENT_JOB_ID $JOBS_AGENT_EXECUTION_NUMBER $$" >> {log}
echo "did the work"
""",
    )
    return log


async def test_jobs_run_one_at_a_time_in_order_and_are_reported_once(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    log = tmp_path / "overlap.log"
    write_handler(
        tmp_path / "handlers",
        "slow",
        f"""#!/bin/sh
echo "start $JOBS_AGENT_JOB_ID" >> {log}
printf '{{"percent": 50, "message": "half way"}}\\n' >&3
echo "end $JOBS_AGENT_JOB_ID" >> {log}
""",
    )
    config = agent_config(tmp_path, mosquitto.port)
    async with running_agent(config):
        for n in range(4):
            emulator.service.create_job(f"job-{n}", [THING], {"operation": "slow"})
        for n in range(4):
            execution = await wait_terminal(emulator, f"job-{n}", THING)
            assert str(execution.status) == "SUCCEEDED"
    lines = side_effects(log)
    # Never two at once: every start is followed by its own end, in creation order.
    assert lines == [f"{kind} job-{n}" for n in range(4) for kind in ("start", "end")]
    for n in range(4):
        assert terminal_statuses(emulator, f"job-{n}") == ["SUCCEEDED"]


async def test_invalid_document_is_rejected_with_reason_and_agent_keeps_serving(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    _logging_handler(tmp_path)
    config = agent_config(tmp_path, mosquitto.port)
    async with running_agent(config):
        emulator.service.create_job("bad", [THING], {"steps": "not a list", "version": "1.0"})
        emulator.service.create_job("unknown", [THING], {"operation": "no-such-handler"})
        emulator.service.create_job("good", [THING], {"operation": "work"})
        bad = await wait_terminal(emulator, "bad", THING)
        unknown = await wait_terminal(emulator, "unknown", THING)
        good = await wait_terminal(emulator, "good", THING)
    assert str(bad.status) == "REJECTED"
    assert "steps" in bad.status_details["reason"]
    assert str(unknown.status) == "REJECTED"
    assert "no handler named 'no-such-handler'" in unknown.status_details["reason"]
    assert str(good.status) == "SUCCEEDED"


async def test_failure_reports_reason_and_output_tail_within_limits(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    write_handler(
        tmp_path / "handlers",
        "noisy",
        """#!/bin/sh
i=0
while [ $i -lt 3000 ]; do echo "line $i of output"; i=$((i + 1)); done
echo "fatal: disk on fire" >&2
exit 7
""",
    )
    config = agent_config(tmp_path, mosquitto.port)
    async with running_agent(config):
        emulator.service.create_job(
            "noisy",
            [THING],
            {
                "version": "1.0",
                "includeStdOut": True,
                "steps": [
                    {
                        "action": {
                            "name": "Noisy",
                            "type": "runHandler",
                            "input": {"handler": "noisy"},
                        }
                    }
                ],
            },
        )
        execution = await wait_terminal(emulator, "noisy", THING)
    details = execution.status_details
    assert str(execution.status) == "FAILED"
    assert "exited with code 7" in details["reason"]
    assert "fatal: disk on fire" in details["stderr"]
    assert details["stdout"].endswith("line 2999 of output")
    assert validate_status_details(details) is None


async def test_progress_is_coalesced_and_latest_wins(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    write_handler(
        tmp_path / "handlers",
        "storm",
        """#!/bin/sh
i=1
while [ $i -le 2000 ]; do
    printf '{"percent": %d, "message": "tick %d"}\\n' $((i / 20)) "$i" >&3
    i=$((i + 1))
done
""",
    )
    config = agent_config(tmp_path, mosquitto.port, progress_interval_seconds=0.5)
    async with running_agent(config):
        emulator.service.create_job("storm", [THING], {"operation": "storm"})
        await wait_terminal(emulator, "storm", THING)
    updates = [s for s in device_statuses(emulator, "storm") if s == "IN_PROGRESS"]
    # 2,000 progress calls, a handful of updates: bounded by the 0.5 s interval.
    assert 1 <= len(updates) <= 10
    reported = [
        h.status_details
        for h in emulator.service.history(job_id="storm")
        if str(h.to_status) == "IN_PROGRESS" and h.status_details
    ]
    assert all(validate_status_details(d) is None for d in reported)


async def test_cancel_while_running(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """A forced cancel stops the handler's whole process group within the grace period, and
    nothing more is reported for that execution."""
    pids = tmp_path / "pids"
    write_handler(
        tmp_path / "handlers",
        "stubborn",
        f"""#!/bin/sh
trap '' TERM
sleep 300 &
echo "$$ $!" > {pids}.tmp && mv {pids}.tmp {pids}
printf '{{"percent": 10, "message": "started"}}\\n' >&3
wait
""",
    )
    config = agent_config(tmp_path, mosquitto.port, kill_grace_seconds=1.0)
    async with running_agent(config) as agent:
        emulator.service.create_job("cancel-me", [THING], {"operation": "stubborn"})
        await emulator.service.wait_for_status("cancel-me", THING, "IN_PROGRESS")
        await wait_until(pids.exists, 10, "the handler to start")
        shell_pid, sleep_pid = (int(p) for p in pids.read_text().split())
        emulator.service.cancel_job("cancel-me", force=True)
        # The shell ignores SIGTERM: only the SIGKILL after the 1 s grace period ends it.
        assert await wait_pid_gone(shell_pid, 5.0), "handler survived the cancel"
        assert await wait_pid_gone(sleep_pid, 5.0), "the handler's child survived the cancel"
        await wait_until(
            lambda: agent.engine is not None and agent.engine.running_job is None,
            10,
            "the engine to let go of the job",
        )
        emulator.service.create_job("after", [THING], {"operation": "no-such-handler"})
        await wait_terminal(emulator, "after", THING)
    history = emulator.service.history(job_id="cancel-me")
    canceled_at = next(i for i, h in enumerate(history) if str(h.to_status) == "CANCELED")
    assert all(str(h.source) != "device" for h in history[canceled_at + 1 :])
    assert str(emulator.service.execution("cancel-me", THING).status) == "CANCELED"


async def test_step_timeout_renewed(
    tmp_path: Path, mosquitto: Mosquitto, readings: Readings
) -> None:
    """A job running longer than its step timeout is kept alive by heartbeats (emulator clock
    advanced past the timeout several times); without heartbeats the same job is TIMED_OUT."""
    release = tmp_path / "release"
    write_handler(
        tmp_path / "handlers",
        "long",
        f"""#!/bin/sh
while [ ! -e {release} ]; do sleep 0.05; done
""",
    )
    clock = ManualClock()
    emulator = await start_emulator(
        mosquitto.port, clock=clock, tick_seconds=None, readings=readings
    )
    service = emulator.service
    try:
        config = agent_config(tmp_path, mosquitto.port, step_timeout_minutes=1)
        async with running_agent(config, heartbeat_interval=0.2):
            service.create_job("renewed", [THING], {"operation": "long"})
            await service.wait_for_status("renewed", THING, "IN_PROGRESS")
            for _ in range(3):  # 3 x 40 s = 120 s: twice the 60 s step timeout
                seen = len(device_statuses(emulator, "renewed"))
                await service.wait_for(
                    lambda seen=seen: len(device_statuses(emulator, "renewed")) > seen, 10
                )
                clock.advance(40)
                service.tick()
            assert str(service.execution("renewed", THING).status) == "IN_PROGRESS"
            release.touch()
            execution = await wait_terminal(emulator, "renewed", THING)
            assert str(execution.status) == "SUCCEEDED"
        release.unlink()

        # The same job without heartbeats: the step timer expires.
        async with running_agent(config, heartbeat_interval=3600):
            service.create_job("expired", [THING], {"operation": "long"})
            await service.wait_for_status("expired", THING, "IN_PROGRESS")
            clock.advance(61 + readings.timeout_delay_seconds)  # up to 60 s late (a reading)
            assert service.tick() == 1
            execution = await wait_terminal(emulator, "expired", THING)
            assert str(execution.status) == "TIMED_OUT"
            # The engine notices (notify) and stops the handler; it reports nothing more.
            release.touch()
            emulator.service.create_job("next", [THING], {"operation": "long"})
            await wait_terminal(emulator, "next", THING)
        assert terminal_statuses(emulator, "expired") == ["TIMED_OUT"]
        assert "SUCCEEDED" not in device_statuses(emulator, "expired")
    finally:
        await emulator.stop()


async def test_broker_restart_mid_job_reports_once(
    tmp_path: Path, fresh_mosquitto: Mosquitto, readings: Readings
) -> None:
    """The broker goes away while a job runs; the handler keeps running, its outcome waits in
    the outbox, and it is reported exactly once when the broker is back."""
    release = tmp_path / "release"
    started = tmp_path / "started"
    write_handler(
        tmp_path / "handlers",
        "long",
        f"""#!/bin/sh
touch {started}
while [ ! -e {release} ]; do sleep 0.05; done
echo finished
""",
    )
    emulator = await start_emulator(fresh_mosquitto.port, readings=readings)
    try:
        config = agent_config(tmp_path, fresh_mosquitto.port)
        async with running_agent(config) as agent:
            emulator.service.create_job("through-outage", [THING], {"operation": "long"})
            await wait_until(started.exists, 15, "the handler to start")
            fresh_mosquitto.stop()
            release.touch()
            assert agent.engine is not None
            engine = agent.engine
            state = config.state_dir / "state.db"
            from jobs_agent.engine.store import Store

            def queued() -> bool:
                store = Store(state)
                try:
                    return len(store.outbox()) == 1
                finally:
                    store.close()

            await wait_until(queued, 15, "the outcome to wait in the outbox")
            assert engine.running_job is None
            fresh_mosquitto.start()
            execution = await wait_terminal(emulator, "through-outage", THING, timeout=30)
            assert str(execution.status) == "SUCCEEDED"
            await wait_until(lambda: not queued(), 10, "the outbox to empty")
        assert terminal_statuses(emulator, "through-outage") == ["SUCCEEDED"]
    finally:
        await emulator.stop()


async def test_duplicate_and_reordered_notify_next_never_start_a_job_twice(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """A hostile flood of stale, duplicated and re-ordered notify/notify-next events (with
    presigned URLs re-signed in every copy) while jobs run: each job runs exactly once."""
    log = _logging_handler(tmp_path)
    spammer = PahoTransport(paho_connection(mosquitto.port), "spammer")
    await spammer.connect(timeout=10)
    config = agent_config(tmp_path, mosquitto.port)
    document = {
        "operation": "work",
        "args": ["${aws:iot:s3-presigned-url:https://bucket.s3.amazonaws.com/fw.bin}"],
    }
    try:
        async with running_agent(config):
            for n in range(3):
                emulator.service.create_job(f"dup-{n}", [THING], document)
            for round_ in range(30):
                n = round_ % 3
                execution = {
                    "jobId": f"dup-{n}",
                    "status": "QUEUED",
                    "versionNumber": 1,
                    "executionNumber": 1,
                    "jobDocument": {
                        "operation": "work",
                        "args": [f"https://x/?X-Amz-Signature={round_}"],
                    },
                }
                await spammer.publish(
                    topics.notify_next_topic(THING),
                    json.dumps({"timestamp": 1, "execution": execution}).encode(),
                )
                await spammer.publish(
                    topics.notify_topic(THING),
                    json.dumps({"timestamp": 1, "jobs": {"QUEUED": [execution]}}).encode(),
                )
            for n in range(3):
                await wait_terminal(emulator, f"dup-{n}", THING)
        runs = side_effects(log)
        assert sorted(line.split()[0] for line in runs) == ["dup-0", "dup-1", "dup-2"]
        for n in range(3):
            assert terminal_statuses(emulator, f"dup-{n}") == ["SUCCEEDED"]
    finally:
        await spammer.disconnect()


async def test_namespaced_jobs_are_taken_with_describe_next_and_update(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    log = _logging_handler(tmp_path)
    config = agent_config(tmp_path, mosquitto.port, namespaces=("fleet-a",))
    async with running_agent(config):
        emulator.service.create_job("ns-job", [THING], {"operation": "work"}, namespace="fleet-a")
        emulator.service.create_job("default-job", [THING], {"operation": "work"})
        ns = await wait_terminal(emulator, "ns-job", THING)
        default = await wait_terminal(emulator, "default-job", THING)
    assert str(ns.status) == "SUCCEEDED" and str(default.status) == "SUCCEEDED"
    assert len(side_effects(log)) == 2
    counters = emulator.service.counters
    assert counters[topics.Operation.START_NEXT.value] >= 1  # default namespace
    assert counters[topics.Operation.DESCRIBE.value] >= 1  # $next in fleet-a


async def test_no_reboot_for_a_job_cancelled_just_before_it(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """The handler asks for a reboot, but the job was force-cancelled a moment earlier: the
    announcement is refused and the device is not rebooted."""
    requests = tmp_path / "reboots"
    fake_reboot = write_handler(
        tmp_path / "bin", "fake-reboot", f"#!/bin/sh\necho x >> {requests}\n"
    )
    package = tmp_path / "plugins"
    package.mkdir()
    (package / "cancel_then_reboot.py").write_text(
        "EMULATOR = None\n\n"
        "class CancelThenReboot:\n"
        "    name = 'cancel-then-reboot'\n"
        "    resumable = False\n\n"
        "    async def run(self, ctx):\n"
        "        EMULATOR.service.cancel_job(ctx.job_id, force=True)\n"
        "        ctx.request_reboot()\n"
    )
    import sys

    sys.path.insert(0, str(package))
    try:
        import cancel_then_reboot  # type: ignore[import-not-found]

        cancel_then_reboot.EMULATOR = emulator
        boot_id = tmp_path / "boot_id"
        boot_id.write_text("boot-1\n")
        config = agent_config(
            tmp_path,
            mosquitto.port,
            reboot_command=(str(fake_reboot),),
            boot_id_path=boot_id,
        )
        config = dataclasses.replace(
            config, handlers={"cancel-then-reboot": "cancel_then_reboot:CancelThenReboot"}
        )
        (tmp_path / "handlers").mkdir(mode=0o755, exist_ok=True)
        async with running_agent(config) as agent:
            emulator.service.create_job("no-reboot", [THING], {"operation": "cancel-then-reboot"})
            await wait_until(
                lambda: (
                    agent.engine is not None
                    and any(k.job_id == "no-reboot" for k in agent.engine.outcomes)
                ),
                15,
                "the engine to settle the job",
            )
            note = next(v for k, v in agent.engine.outcomes.items() if k.job_id == "no-reboot")
            assert note.startswith("not rebooted")
        assert not requests.exists()
        assert terminal_statuses(emulator, "no-reboot") == ["CANCELED"]
    finally:
        sys.path.remove(str(package))
        sys.modules.pop("cancel_then_reboot", None)


async def test_short_job_final_report_carries_its_last_progress(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    write_handler(
        tmp_path / "handlers",
        "quick",
        """#!/bin/sh
printf '{"percent": 60, "message": "verified image"}\\n' >&3
""",
    )
    config = agent_config(tmp_path, mosquitto.port, progress_interval_seconds=60)
    async with running_agent(config):
        emulator.service.create_job("quick", [THING], {"operation": "quick"})
        execution = await wait_terminal(emulator, "quick", THING)
    assert str(execution.status) == "SUCCEEDED"
    assert execution.status_details["message"] == "verified image"
    assert execution.status_details["percent"] == "100"


async def test_a_job_directory_is_made_only_when_the_handler_asks_for_it(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """Most plugins never use their scratch or state directory: making and removing both for
    every job was a tenth of a plugin job's cost (issue 18). They are made on first use, and
    a handler that asks finds them there."""
    package = tmp_path / "plugins"
    package.mkdir()
    (package / "dir_probe.py").write_text(
        "from pathlib import Path\n\n"
        "class DirProbe:\n"
        "    async def run(self, ctx):\n"
        "        base = Path(ctx.document['base']) / ctx.job_id\n"
        "        before = base.exists()\n"
        "        if not ctx.document['use']:\n"
        "            return {'before': str(before)}\n"
        "        scratch, state = ctx.scratch_dir, ctx.state_dir\n"
        "        (scratch / 'x').write_text('x')\n"
        "        return {'before': str(before), 'made': str(scratch.is_dir() and state.is_dir())}\n"
    )
    import sys

    sys.path.insert(0, str(package))
    try:
        config = dataclasses.replace(
            agent_config(tmp_path, mosquitto.port), handlers={"probe": "dir_probe:DirProbe"}
        )
        (tmp_path / "handlers").mkdir(mode=0o755, exist_ok=True)
        base = str(config.state_dir / "jobs" / "default")
        async with running_agent(config):
            emulator.service.create_job(
                "lazy", [THING], {"operation": "probe", "base": base, "use": False}
            )
            lazy = await wait_terminal(emulator, "lazy", THING)
            emulator.service.create_job(
                "asks", [THING], {"operation": "probe", "base": base, "use": True}
            )
            asks = await wait_terminal(emulator, "asks", THING)
        assert str(lazy.status) == "SUCCEEDED" and lazy.status_details["before"] == "False"
        assert str(asks.status) == "SUCCEEDED", asks.status_details
        assert asks.status_details["before"] == "False" and asks.status_details["made"] == "True"
        assert not (config.state_dir / "jobs" / "default" / "asks").exists()  # removed after
    finally:
        sys.path.remove(str(package))
        sys.modules.pop("dir_probe", None)
