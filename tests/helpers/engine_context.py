"""An `EngineJobContext` with the engine's directory layout, for tests of the job's files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from jobs_agent.engine.context import EngineJobContext
from jobs_agent.vocabulary import ExecutionRef


def engine_context(
    jobs: Path | str, job_id: str = "j1", execution_number: int = 1
) -> EngineJobContext:
    """As `JobFiles.dirs` lays it out below `jobs` (`state_dir/jobs`): strings, no `Path`
    built (a test may count them)."""
    base = f"{jobs}/default/{job_id}"
    return EngineJobContext(
        key=ExecutionRef(None, job_id, execution_number),
        thing_name="gw",
        document={},
        checkpoint_data=None,
        resumed=False,
        rebooted=False,
        log=cast(Any, None),
        scratch_dir=f"{base}/scratch-{execution_number}",
        state_dir=f"{base}/state",
        store=cast(Any, None),
        reporter=cast(Any, None),
    )
