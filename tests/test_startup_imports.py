"""What `jobs-agent run` loads before its first request: only what it uses (issue 18).

Every module loaded at start-up costs start-up time and resident memory for the agent's whole
life on a gateway; the benchmark (`python -m benchmarks startup`) measures both, and this test
pins the two heavy loads that were taken out: the emulator (reached through `sim serve --help`'s
list of readings) and importlib.metadata (the plugin entry-point scan, now done at the first
plugin lookup).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, sys
from jobs_agent.cli import build_parser
from jobs_agent.config import load_config
from jobs_agent.dispatch.plugins import PluginRegistry

args = build_parser().parse_args(["run", "--config", sys.argv[1]])
load_config(args.config)
import jobs_agent.daemon, jobs_agent.transport.paho
registry = PluginRegistry.discover({})
loaded_at_start = sorted(sys.modules)
names = registry.names()  # the first lookup reads the entry points
print(json.dumps({"start": loaded_at_start, "names": names, "after": sorted(sys.modules)}))
"""


def test_the_agent_starts_without_the_emulator_or_the_entry_point_scan(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "thing_name": "gw-imports",
                "connection": {"transport": "paho", "endpoint": "127.0.0.1", "port": 1883},
                "jobs": {"handler_dir": str(tmp_path / "handlers")},
                "state_dir": str(tmp_path / "state"),
            }
        )
    )
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(config)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    loaded = json.loads(out)
    start = set(loaded["start"])
    assert "jobs_agent.emulator.readings" in start  # `sim serve --help` lists the readings
    assert not {"jobs_agent.emulator.service", "jobs_agent.emulator.core"} & start
    assert "importlib.metadata" not in start
    # The built-in plugins are there at the first lookup, with the entry points read then.
    assert {"download-file", "reboot"} <= set(loaded["names"])
    assert "importlib.metadata" in set(loaded["after"])
