"""The final statusDetails keep the outcome's own keys when a handler's progress details
already fill the 10 pairs the API allows (issue 12.12). Real agent and emulator."""

from __future__ import annotations

from pathlib import Path

from jobs_agent.jobs.status_details import validate_status_details
from tests.helpers.agent_harness import make_handler_dir, running_agent, write_script


async def test_reason_stdout_and_stderr_survive_ten_progress_details(tmp_path: Path) -> None:
    make_handler_dir(tmp_path)
    details = ", ".join(f'"d{i}": {i}' for i in range(10))
    write_script(
        tmp_path / "handlers",
        "busy.sh",
        f'echo \'{{"percent": 70, "message": "m", "details": {{{details}}}}}\' >&3\n'
        "echo out; echo err >&2; exit 4\n",
    )
    document = {
        "version": "1.0",
        "includeStdOut": "true",
        "steps": [
            {"action": {"name": "busy", "type": "runHandler", "input": {"handler": "busy.sh"}}}
        ],
    }
    async with running_agent(tmp_path) as harness:
        execution = await harness.run_job("busy", document)
    final = dict(execution.status_details)
    assert str(execution.status) == "FAILED"
    assert validate_status_details(final) is None
    assert list(final)[:3] == ["reason", "stdout", "stderr"]
    assert final["reason"] == 'step 1 "busy": exited with code 4'
    assert (final["stdout"], final["stderr"]) == ("out", "err")
    assert len(final) == 10  # the rest is filled with the last progress
