"""Every process a handler starts is stopped with its step, including those that call setsid.

Both containments that can run here are tested with real processes: a cgroup v2 per step (this
machine has a writable unified hierarchy) and the agent as child subreaper. The sweep after an
agent restart is tested with a real `jobs-agent run` killed by SIGKILL while a handler's escaped
process (new session, emptied environment) is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest

from jobs_agent.config import AgentConfig, JobsConfig
from jobs_agent.dispatch import Dispatcher
from jobs_agent.dispatch.containment import ContainmentError, containment_for
from jobs_agent.dispatch.context import LocalJobContext
from jobs_agent.emulator.embedded import Emulator
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    config_yaml,
    wait_terminal,
    wait_until,
    write_handler,
)

THING = "gw-contain"


def alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone). A process that ends
    between the open and the read makes the read fail with ESRCH: gone too."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


def _kill_groups(state_dir: Path) -> None:
    """After a failed test: what its agents left in their job groups goes (by cgroup.kill)."""
    record = state_dir / "cgroup-base"
    base = Path(record.read_text().strip()) if record.exists() else None
    if base is None or not base.is_dir():
        return
    for group in [p for p in base.iterdir() if p.is_dir()]:
        with contextlib.suppress(OSError):
            (group / "cgroup.kill").write_text("1")


def require_cgroup(state_dir: Path) -> None:
    try:
        containment_for("cgroup", state_dir)
    except ContainmentError as exc:
        pytest.skip(f"no writable cgroup v2 hierarchy here: {exc}")


def _setup(tmp_path: Path, body: str, **jobs: object) -> tuple[Dispatcher, LocalJobContext]:
    handler_dir = tmp_path / "handlers"
    write_handler(handler_dir, "h", "#!/bin/sh\n" + body)
    (tmp_path / "scratch").mkdir()
    config = AgentConfig(
        thing_name="gw",
        state_dir=tmp_path / "state",
        jobs=JobsConfig(handler_dir=handler_dir, kill_grace_seconds=0.5, **jobs),  # type: ignore[arg-type]
    )
    ctx = LocalJobContext(
        document={"operation": "h"}, scratch_dir=tmp_path / "scratch", state_dir=tmp_path
    )
    return Dispatcher(config), ctx


ESCAPE = """setsid sh -c 'trap "" TERM HUP; echo $$ > {pids}.tmp; mv {pids}.tmp {pids}; \
while :; do sleep 1; done' > /dev/null 2>&1 < /dev/null &
while [ ! -e {pids} ]; do sleep 0.01; done
"""


@pytest.mark.parametrize("case", ["builtin-sha2", "no-builtin", "hashlib-loaded"])
def test_the_cgroup_base_is_named_after_the_state_directorys_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """The base's tag is the SHA-256 of the resolved state directory, as hashlib gives it, so an
    agent finds the groups its predecessors left there: through the interpreter's own SHA-2
    when hashlib is not loaded (it would load OpenSSL's digests for the agent's life, issue
    18), through hashlib when it is (paho imports it) or when the interpreter has no SHA-2 of
    its own."""
    import hashlib

    from jobs_agent.dispatch import containment

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    data = str(tmp_path.resolve()).encode() + "/é".encode()
    expected = hashlib.sha256(data).hexdigest()
    tag = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
    if case != "hashlib-loaded":
        monkeypatch.delitem(sys.modules, "hashlib")
    if case == "no-builtin":

        def no_builtin(name: str) -> object:
            raise ImportError(name)

        monkeypatch.setattr(containment.importlib, "import_module", no_builtin)
    assert containment.sha256_hex(data) == expected
    assert ("hashlib" in sys.modules) == (case != "builtin-sha2")
    require_cgroup(state_dir)
    base = Path((state_dir / "cgroup-base").read_text().strip())
    assert base.name == f"jobs-agent.{tag}"


async def test_cgroup_a_process_that_left_the_session_ends_with_the_step(tmp_path: Path) -> None:
    require_cgroup(tmp_path / "state")
    pids = tmp_path / "pids"
    dispatcher, ctx = _setup(tmp_path, ESCAPE.format(pids=pids), containment="cgroup")
    outcome = await dispatcher.run(dispatcher.resolve(ctx.document), ctx)
    assert outcome.status == "SUCCEEDED", outcome
    assert not alive(int(pids.read_text()))


async def test_cgroup_a_timed_out_step_takes_its_escaped_processes_along(tmp_path: Path) -> None:
    require_cgroup(tmp_path / "state")
    pids = tmp_path / "pids"
    dispatcher, ctx = _setup(
        tmp_path,
        ESCAPE.format(pids=pids) + "sleep 300\n",
        containment="cgroup",
        handler_timeout_seconds=1.0,
    )
    outcome = await dispatcher.run(dispatcher.resolve(ctx.document), ctx)
    assert outcome.details["reason"] == 'step 1 "h": timed out after 1 s'
    assert not alive(int(pids.read_text()))


SUBREAPER_AGENT = """
import asyncio, sys
from pathlib import Path
from jobs_agent.config import AgentConfig, JobsConfig
from jobs_agent.dispatch import Dispatcher
from jobs_agent.dispatch.context import LocalJobContext

async def main(base: Path) -> None:
    config = AgentConfig(thing_name="gw", state_dir=base / "state", jobs=JobsConfig(
        handler_dir=base / "handlers", kill_grace_seconds=0.5, containment="subreaper",
        handler_timeout_seconds=float(sys.argv[2])))
    dispatcher = Dispatcher(config)
    ctx = LocalJobContext(document={"operation": "h"}, scratch_dir=base / "scratch",
                          state_dir=base)
    outcome = await dispatcher.run(dispatcher.resolve(ctx.document), ctx)
    print(outcome.status, outcome.details.get("reason", ""))

asyncio.run(main(Path(sys.argv[1])))
"""


@pytest.mark.parametrize("timeout", [60.0, 1.0])
async def test_subreaper_a_process_that_left_the_session_ends_with_the_step(
    tmp_path: Path, timeout: float
) -> None:
    """In its own process: the subreaper mark is for the whole agent process."""
    pids = tmp_path / "pids"
    body = ESCAPE.format(pids=pids) + ("sleep 300\n" if timeout < 10 else "")
    write_handler(tmp_path / "handlers", "h", "#!/bin/sh\n" + body)
    (tmp_path / "scratch").mkdir()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SUBREAPER_AGENT,
        str(tmp_path),
        str(timeout),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    expected = "SUCCEEDED " if timeout > 10 else 'FAILED step 1 "h": timed out after 1 s'
    assert out.decode().strip().splitlines()[-1] == expected.strip()
    assert not alive(int(pids.read_text()))


@pytest.mark.parametrize("containment", ["cgroup", "subreaper"])
async def test_the_sweep_after_a_restart_stops_escaped_processes(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator, containment: str
) -> None:
    """The agent is SIGKILLed while the step runs; its escaped process lives on. The restarted
    agent reports the step FAILED and leaves nothing of it running. With the cgroup, even a
    process that also emptied its environment is found; the subreaper finds leftovers by the
    environment they inherited (docs/security.md says so)."""
    if containment == "cgroup":
        require_cgroup(tmp_path / "state")
    pids = tmp_path / "pids"
    environment = "env -i " if containment == "cgroup" else ""
    write_handler(
        tmp_path / "handlers",
        "h",
        f"""#!/bin/sh
{environment}setsid sh -c 'echo $$ > {pids}.tmp; mv {pids}.tmp {pids}; exec sleep 300' \
> /dev/null 2>&1 < /dev/null &
sleep 300
""",
    )
    config = agent_config(tmp_path, mosquitto.port, thing=THING, containment=containment)
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    agent = AgentProcess(config_path=path, workdir=tmp_path)
    escaped = 0
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("escape", [THING], {"operation": "h"})
        await wait_until(pids.exists, 20, "the escaped process")
        escaped = int(pids.read_text())
        agent.signal(signal.SIGKILL)
        await agent.wait_exit()
        assert alive(escaped)  # the dead agent stopped nothing
        agent.start()
        await agent.wait_ready()
        execution = await wait_terminal(emulator, "escape", THING)
        assert str(execution.status) == "FAILED"
        assert execution.status_details["reason"] == "agent restarted while the step was running"
        await wait_until(lambda: not alive(escaped), 10, "the escaped process to be stopped")
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()
        _kill_groups(tmp_path / "state")
        if escaped and alive(escaped):
            os.kill(escaped, signal.SIGKILL)


async def test_the_steps_of_a_job_cancelled_while_the_agent_was_down_are_stopped(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """SIGKILLed mid-step; the job is cancelled (forced) before the agent is back. The restarted
    agent closes the execution without reporting it, stops what is left of the step, and leaves
    no job group behind."""
    require_cgroup(tmp_path / "state")
    pids = tmp_path / "pids"
    write_handler(
        tmp_path / "handlers",
        "h",
        f"""#!/bin/sh
env -i setsid sh -c 'echo $$ > {pids}.tmp; mv {pids}.tmp {pids}; exec sleep 300' \
> /dev/null 2>&1 < /dev/null &
sleep 300
""",
    )
    config = agent_config(tmp_path, mosquitto.port, thing=THING, containment="cgroup")
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    agent = AgentProcess(config_path=path, workdir=tmp_path)
    escaped = 0
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("gone", [THING], {"operation": "h"})
        await wait_until(pids.exists, 20, "the escaped process")
        escaped = int(pids.read_text())
        agent.signal(signal.SIGKILL)
        await agent.wait_exit()
        emulator.service.cancel_job("gone", force=True)
        base = Path((tmp_path / "state" / "cgroup-base").read_text().strip())
        assert (base / "default.gone.1").is_dir()  # what the dead agent left
        agent.start()
        await agent.wait_ready()
        await wait_until(lambda: not alive(escaped), 10, "the escaped process to be stopped")
        # A zombie counts as gone; its cgroup can be removed only once the kernel releases it.
        await wait_until(lambda: not base.exists(), 10, "no job group left behind")
        assert str(emulator.service.execution("gone", THING).status) == "CANCELED"
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()
        _kill_groups(tmp_path / "state")
        if escaped and alive(escaped):
            os.kill(escaped, signal.SIGKILL)
