"""What a chaos run puts on disk before it starts: handlers, plugin, fake reboot, agent config.

Everything lives in one work directory so that a failed run can be kept and replayed. Handler
scripts append one line per event to a side-effect log (the checker counts how often each
non-resumable step ran from it); the line format is shared with `chaos_plugin`:

    jobId executionNumber step event pid ppid time

`ppid` of a script is the agent process that started it, which lets the checker tell which agent
instance ran a step (and spot handlers that outlived a killed agent).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

THING = f"chaos-thing-{os.getpid()}"
"""One per driver process: a restarted agent stops whatever carries its job's marks (thing, job
id, execution number) machine-wide, so two chaos runs at once (the same seed makes the same job
ids) must not share a thing name, or one run's restart kills the other's handlers."""
PLUGIN_NAME = "chaos-resumable"
KIND_WEIGHTS: dict[str, float] = {
    "quick": 30,
    "long": 15,
    "resumable": 15,
    "reboot": 8,
    "failing": 16,
    "invalid": 16,
}
FAILING_EXIT = 3

_NOTE = """#!/bin/sh
# Written by benchmarks/chaos.py for one chaos run.
LOG='{log}'
note() {{
    echo "$JOBS_AGENT_JOB_ID $JOBS_AGENT_EXECUTION_NUMBER $JOBS_AGENT_STEP $1 $$ $PPID \
$(date +%s.%N)" >> "$LOG"
}}
note start
"""

SCRIPTS: dict[str, str] = {
    "chaos-quick.sh": "note end\n",
    # argv: [handler, runAsUser, ticks]; one progress line per 0.1 s tick
    "chaos-long.sh": """n=${2:-10}
i=0
while [ "$i" -lt "$n" ]; do
    sleep 0.1
    i=$((i + 1))
    echo "{\\"percent\\": $((i * 100 / n)), \\"message\\": \\"tick $i\\"}" >&3
done
note end
""",
    "chaos-fail.sh": f"note end\necho 'chaos: failing on purpose' >&2\nexit {FAILING_EXIT}\n",
    "chaos-reject.sh": "note end\nexit 90\n",
    "chaos-reboot.sh": "note end\nexit 91\n",
    "chaos-after-reboot.sh": """if [ "$JOBS_AGENT_REBOOTED" != 1 ]; then
    note not-rebooted
    exit 4
fi
note end
""",
}

FAKE_REBOOT = """#!/bin/sh
# The agent's jobs.reboot_command in a chaos run: record the request; the driver "reboots".
echo "$(date +%s.%N)" >> '{requests}'
"""


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    kind: str
    document: dict[str, Any]
    steps: tuple[int, ...]
    """Steps (script protocol `JOBS_AGENT_STEP`) whose `end` a SUCCEEDED outcome requires."""


@dataclass(frozen=True)
class Layout:
    root: Path
    handler_dir: Path
    plugin_dir: Path
    state_dir: Path
    side_effects: Path
    reboot_requests: Path
    boot_id: Path
    config: Path
    agent_log: Path
    faults_log: Path


def make_layout(root: Path) -> Layout:
    layout = Layout(
        root=root,
        handler_dir=root / "handlers",
        plugin_dir=root / "plugins",
        state_dir=root / "state",
        side_effects=root / "side-effects.log",
        reboot_requests=root / "reboot-requests.log",
        boot_id=root / "boot_id",
        config=root / "agent.yaml",
        agent_log=root / "agent.log",
        faults_log=root / "faults.log",
    )
    for directory in (layout.handler_dir, layout.plugin_dir, layout.state_dir):
        directory.mkdir(parents=True, exist_ok=True)
        # The agent refuses handlers in a directory writable by group or others.
        directory.chmod(0o755)
    for log in (layout.side_effects, layout.reboot_requests):
        log.touch()
    layout.boot_id.write_text(str(uuid.uuid4()) + "\n", encoding="ascii")
    for name, body in SCRIPTS.items():
        path = layout.handler_dir / name
        path.write_text(_NOTE.format(log=layout.side_effects) + body, encoding="utf-8")
        path.chmod(0o755)
    reboot = layout.root / "fake-reboot"
    reboot.write_text(FAKE_REBOOT.format(requests=layout.reboot_requests), encoding="utf-8")
    reboot.chmod(0o755)
    shutil.copyfile(
        Path(__file__).with_name("chaos_plugin.py"), layout.plugin_dir / "chaos_plugin.py"
    )
    return layout


def config_supports_boot_id_path() -> bool:
    """Reboot jobs need a boot id the driver controls (config `jobs.boot_id_path`)."""
    from jobs_agent.config import JobsConfig

    return "boot_id_path" in {f.name for f in dataclasses.fields(JobsConfig)}


def write_config(layout: Layout, proxy_port: int, *, reboot: bool) -> None:
    """An agent configured for fast recovery: short timeouts, quick reconnects, 1 s kill grace."""
    jobs: dict[str, Any] = {
        "handler_dir": str(layout.handler_dir),
        "request_timeout_seconds": 5,
        "progress_interval_seconds": 0.2,
        "handler_timeout_seconds": 60,
        "kill_grace_seconds": 1,
        "stop_timeout_seconds": 5,
        "reboot_command": [str(layout.root / "fake-reboot")],
    }
    if reboot:
        jobs["boot_id_path"] = str(layout.boot_id)
    config = {
        "thing_name": THING,
        "connection": {
            "transport": "paho",
            "endpoint": "127.0.0.1",
            "port": proxy_port,
            "tls": False,
            "keepalive_seconds": 30,
            "session_expiry_seconds": 300,
            "reconnect_min_seconds": 0.1,
            "reconnect_max_seconds": 1.0,
        },
        "jobs": jobs,
        "handlers": {PLUGIN_NAME: "chaos_plugin:ResumableChunks"},
        "state_dir": str(layout.state_dir),
        "log": {"level": "info", "format": "json"},
    }
    # JSON is YAML: no need for a YAML writer.
    layout.config.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    layout.config.chmod(0o600)


def agent_environment(layout: Layout) -> dict[str, str]:
    """The driver's environment minus any JOBS_AGENT_* override (a stray JOBS_AGENT_CRASH_AT
    would change what is measured), plus the plugin directory and the side-effect log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBS_AGENT_")}
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([str(layout.plugin_dir), repo])
    env["CHAOS_SIDE_EFFECT_LOG"] = str(layout.side_effects)
    return env


def agent_command(layout: Layout, *args: str) -> list[str]:
    return [sys.executable, "-m", "jobs_agent", *args, "--config", str(layout.config)]


def _step(name: str, handler: str, *args: str) -> dict[str, Any]:
    return {
        "action": {
            "name": name,
            "type": "runHandler",
            "input": {"handler": handler, "args": list(args), "path": "default"},
        }
    }


def _document(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"version": "1.0", "steps": list(steps)}


def make_jobs(count: int, seed: int, rng: random.Random, *, reboot: bool) -> list[JobSpec]:
    weights = {k: w for k, w in KIND_WEIGHTS.items() if reboot or k != "reboot"}
    kinds = rng.choices(list(weights), weights=list(weights.values()), k=count)
    specs: list[JobSpec] = []
    for index, kind in enumerate(kinds):
        job_id = f"chaos-{seed}-{index:04d}-{kind}"
        steps: tuple[int, ...] = (0,)
        if kind == "quick":
            document = _document(_step("quick", "chaos-quick.sh"))
        elif kind == "long":
            ticks = rng.randint(5, 20)
            document = _document(_step("long", "chaos-long.sh", str(ticks)))
        elif kind == "failing":
            document = _document(_step("fail", "chaos-fail.sh"))
        elif kind == "reboot":
            document = _document(
                _step("before", "chaos-reboot.sh"), _step("after", "chaos-after-reboot.sh")
            )
            steps = (0, 1)
        elif kind == "resumable":
            document = {
                "operation": PLUGIN_NAME,
                "chunks": rng.randint(3, 8),
                "chunkSeconds": round(rng.uniform(0.1, 0.3), 2),
            }
            steps = ()
        elif index % 2:
            kind = "invalid"
            document = _document(_step("refuse", "chaos-reject.sh"))
        else:
            kind = "invalid"
            document = {
                "version": "1.0",
                "steps": [{"action": {"name": "bad", "type": "runTeleport", "input": {}}}],
            }
            steps = ()
        specs.append(JobSpec(job_id, kind, document, steps))
    return specs
