"""The agent's cgroup base (`<own cgroup>/jobs-agent.<tag>`, containment.py) is the agent's for
as long as it runs, and goes with a clean exit: it stayed for ever before (the test suite left
24,828 empty ones on one machine, one per test agent). A base that still holds a process stays
(the kernel refuses to remove a populated cgroup; the next start sweeps it). Its record in the
state directory (`cgroup-base`) is written only when it changed: it was written at every start,
a write on the flash each time.

Real `jobs-agent run` processes, real signals, real cgroups on this machine's unified hierarchy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from jobs_agent.dispatch.containment import CgroupContainment, containment_for, release
from jobs_agent.emulator.embedded import Emulator
from tests.fixtures.broker import Mosquitto
from tests.harness import AgentProcess, agent_config, config_yaml, wait_terminal, write_handler
from tests.test_containment import alive, require_cgroup
from tests.test_exec_cli import exec_here, write_doc

THING = f"gw-cgbase-{os.getpid()}"


def _base(state_dir: Path) -> Path:
    return Path((state_dir / "cgroup-base").read_text().strip())


async def test_a_clean_exit_removes_the_agents_cgroup_base(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """A script job runs in its step's cgroup below the base, then SIGTERM: the agent exits 0
    and its base is gone (before: left, empty, for ever)."""
    state_dir = tmp_path / "state"
    require_cgroup(state_dir)
    release(state_dir)  # the test's own set-up: only the agent's base counts
    write_handler(tmp_path / "handlers", "h", "#!/bin/sh\necho done\n")
    config = agent_config(tmp_path, mosquitto.port, thing=THING, containment="cgroup")
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    agent = AgentProcess(config_path=path, workdir=tmp_path)
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("in-a-cgroup", [THING], {"operation": "h"})
        execution = await wait_terminal(emulator, "in-a-cgroup", THING)
        assert str(execution.status) == "SUCCEEDED"
        base = _base(state_dir)
        assert base.is_dir()  # the step ran below it, and it stays while the agent runs
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
        assert not base.exists(), agent.log_text()
    finally:
        agent.kill()
        release(state_dir)


def test_a_base_that_holds_a_process_is_not_removed(tmp_path: Path) -> None:
    """A process still in a job's cgroup (nothing stopped it): the release leaves that cgroup
    and the base, and the process runs on; once it has ended, the release removes both."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    require_cgroup(state_dir)
    chosen = containment_for("cgroup", state_dir)
    assert isinstance(chosen, CgroupContainment)
    group = chosen.base / "default.kept.1"
    empty = chosen.base / "default.empty.1"
    os.makedirs(group)
    os.makedirs(empty)
    kept = subprocess.Popen(["sleep", "300"])
    (group / "cgroup.procs").write_text(str(kept.pid))
    try:
        assert kept.pid in [int(p) for p in (group / "cgroup.procs").read_text().split()]
        assert chosen.release() is False
        assert group.is_dir() and chosen.base.is_dir()
        assert not empty.exists()  # an empty job cgroup goes
        assert alive(kept.pid)
    finally:
        with contextlib.suppress(OSError):
            (group / "cgroup.kill").write_text("1")
        kept.wait(timeout=10)
    assert _released_once_empty(chosen)
    assert not chosen.base.exists()


def _released_once_empty(chosen: CgroupContainment) -> bool:
    """The kernel releases a killed process's cgroup a moment after it is reaped: ask until it
    has (EBUSY meanwhile), as `_remove_cgroup` does; a bounded number of times."""
    for _ in range(500):
        if chosen.release():
            return True
        os.sched_yield()
    return False


def test_the_cgroup_base_is_recorded_only_when_it_changed(tmp_path: Path) -> None:
    """Two set-ups for one state directory (two agent starts): the second finds the same base
    recorded and does not write the file again (its mtime, set to 0 between, stays 0; before:
    rewritten at every start). A record of another base is replaced, and that base swept."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    require_cgroup(state_dir)
    record = state_dir / "cgroup-base"
    first = _base(state_dir)
    release(state_dir)
    os.utime(record, ns=(0, 0))
    try:
        containment_for("cgroup", state_dir)
        assert record.stat().st_mtime_ns == 0
        assert _base(state_dir) == first
        release(state_dir)
        elsewhere = first.parent / f"{first.name}-elsewhere"
        record.write_text(f"{elsewhere}\n")
        chosen = containment_for("cgroup", state_dir)
        assert _base(state_dir) == first
        assert isinstance(chosen, CgroupContainment) and chosen.previous_bases == (elsewhere,)
    finally:
        release(state_dir)


def test_jobs_agent_exec_leaves_no_cgroup_base(tmp_path: Path) -> None:
    """`jobs-agent exec` runs a script step in a cgroup below a base of its own state directory
    (a new temporary one per run without `--state-dir`): the base goes when the run ends
    (before: one left per run, for ever)."""
    state_dir = tmp_path / "st"
    require_cgroup(state_dir)
    release(state_dir)
    marker = tmp_path / "marker"
    result = exec_here(tmp_path, write_doc(tmp_path, marker), "--state-dir", str(state_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert marker.exists()
    assert not _base(state_dir).exists()
