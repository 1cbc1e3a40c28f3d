"""A script job's objects are freed as it ends, by their reference counts: none is left in a
cycle for the cyclic collector, whose collections walk the live heap on the event loop (issue
18). Real script steps through the real sandbox, with the collector off and every collected
object kept (`gc.DEBUG_SAVEALL`), so that what a job leaves can be named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.harness import wait_until
from tests.helpers.agent_harness import (
    THING,
    make_config,
    make_handler_dir,
    running_agent,
    write_script,
)
from tests.helpers.cycles import cyclic_garbage


def _step(name: str, handler: str, **action: Any) -> dict[str, Any]:
    return {"action": {"name": name, "type": "runHandler", "input": {"handler": handler}, **action}}


JOBS: dict[str, tuple[dict[str, Any], str]] = {
    "progress": (
        {
            "version": "1.0",
            "includeStdOut": True,
            "steps": [_step("Progress", "progress.sh"), _step("Large", "large.sh")],
        },
        "SUCCEEDED",
    ),
    "failing": ({"version": "1.0", "steps": [_step("Fail", "fail.sh")]}, "FAILED"),
    "timed-out": (
        {"version": "1.0", "steps": [_step("Slow", "slow.sh", timeout=1)]},
        "FAILED",
    ),
}


async def test_a_script_job_leaves_nothing_for_the_cyclic_collector(tmp_path: Path) -> None:
    """Steps that report progress (fd 3), write more than the kept tail, fail, outlive their
    time limit, and are cancelled with their job: every pipe reader, the step's run and its
    job's context go with their last reference. 395 objects were left in cycles by these four
    jobs (about 93 by a one-step job): each pipe held a bound method of its reader, and through
    it the reader's sinks (`Tail`), the step's `_Run`, its callbacks and the job's context."""
    handlers = make_handler_dir(tmp_path)
    write_script(
        handlers,
        "progress.sh",
        'printf \'{"percent": 30, "message": "half"}\\n\' >&3\n'
        "printf 'not json\\n' >&3\necho done\n",
    )
    write_script(handlers, "large.sh", "seq 1 20000\necho oops >&2\n")
    write_script(handlers, "fail.sh", "echo failing >&2\nexit 3\n")
    write_script(handlers, "slow.sh", "exec sleep 30\n")
    started = tmp_path / "started"
    write_script(handlers, "waiting.sh", f"touch {started}\nexec sleep 30\n")
    config = make_config(tmp_path, kill_grace_seconds=0.2)
    async with running_agent(tmp_path, config) as harness:
        engine = harness.agent.engine
        assert engine is not None
        await harness.run_job("warm-up", {"operation": "ok.sh"})
        await wait_until(lambda: len(engine.outcomes) == 1, 15, "the warm-up job reported")
        with cyclic_garbage() as left:
            for number, (job_id, (document, status)) in enumerate(JOBS.items(), start=2):
                execution = await harness.run_job(job_id, document)
                assert str(execution.status) == status, execution.status_details
                await wait_until(lambda n=number: len(engine.outcomes) == n, 15, "the report")
            harness.service.create_job("canceled", [THING], {"operation": "waiting.sh"})
            await wait_until(started.exists, 15, "the step to start")
            harness.service.cancel_job("canceled", force=True)
            await harness.wait_terminal("canceled")
            await wait_until(lambda: engine.running_job is None, 15, "the job's end")
    assert left == []
