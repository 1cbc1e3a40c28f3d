"""The installed import names are the agent's own, and every package folder is installed."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"jobs_agent": REPO / "agent", "jobs_agent_handlers": REPO / "handlers"}


def test_every_package_folder_is_listed_in_pyproject() -> None:
    """A package folder missing from the list would work in the editable test install and be
    absent from a wheel (the README's `pip install .`)."""
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = set()
    for name, folder in FOLDERS.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            on_disk.add(".".join((name, *parts)))
    assert listed == on_disk


def test_console_script_runs() -> None:
    """The README's commands use the `jobs-agent` script, not `python -m jobs_agent`."""
    import subprocess
    import sys

    script = Path(sys.executable).with_name("jobs-agent")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
