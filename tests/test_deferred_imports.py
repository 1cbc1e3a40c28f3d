"""A module the daemon defers (commands/deferred.py) is not loaded by its import, and is the
real module from the first read of one of its names, on every path a reader can take to it.
Each case runs in a fresh interpreter, whose sys.modules is its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys, threading
from jobs_agent.commands.deferred import defer

defer("urllib.request")
import urllib.request  # as paho's client does
import urllib.request as aliased
seen = {"loaded_by_import": "http.client" in sys.modules}
# What a scan of sys.modules asks (inspect.getmodule) does not load it.
seen["file_before"] = getattr(aliased, "__file__", None)
seen["loaded_by_scan"] = "http.client" in sys.modules
barrier = threading.Barrier(4)
found = []

def read():
    barrier.wait()
    found.append(urllib.request.getproxies)

threads = [threading.Thread(target=read) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
from urllib.request import getproxies, urlopen
real = sys.modules["urllib.request"]
seen["loaded_by_use"] = "http.client" in sys.modules
seen["one_function"] = len({id(f) for f in found} | {id(getproxies)}) == 1
seen["real_in_modules"] = type(real).__name__ == "module" and real.__file__.endswith("request.py")
seen["package_names_it"] = urllib.request is real
seen["alias_reads_it"] = aliased.urlopen is urlopen is real.urlopen
print(json.dumps(seen))
"""


def test_a_deferred_module_loads_at_its_first_use_not_at_its_import() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert json.loads(out) == {
        "loaded_by_import": False,
        "file_before": None,
        "loaded_by_scan": False,
        "loaded_by_use": True,
        "one_function": True,
        "real_in_modules": True,
        "package_names_it": True,
        "alias_reads_it": True,
    }


def test_a_module_loaded_already_is_left_as_it_is() -> None:
    probe = (
        "import sys, urllib.request\n"
        "from jobs_agent.commands.deferred import defer\n"
        "real = sys.modules['urllib.request']\n"
        "defer('urllib.request')\n"
        "assert sys.modules['urllib.request'] is real is urllib.request\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)


ENTRY = """
import json, sys
from jobs_agent import cli

try:
    cli.main(["run", "--help"])  # what `jobs-agent run` imports, then the help
except SystemExit:
    pass
deferred = sorted(n for n, m in sys.modules.items() if type(m).__name__ == "_Deferred")
print(json.dumps(deferred))
"""


def test_jobs_agent_run_defers_what_its_libraries_import_for_nothing(tmp_path: Path) -> None:
    """`jobs-agent run` in an interpreter as an installed package starts it (no editable
    install's finder, whose `pathlib` would import `ipaddress` before `cli.main`): each module
    the daemon defers is still a stand-in once the command's modules, structlog and `pathlib`
    are imported."""
    from jobs_agent.commands.deferred import UNUSED

    links = tmp_path / "path"
    links.mkdir()
    (links / "jobs_agent").symlink_to(REPO / "agent")
    (links / "jobs_agent_handlers").symlink_to(REPO / "handlers")
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(links), *site])}
    out = subprocess.run(
        [sys.executable, "-S", "-c", ENTRY],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    ).stdout
    assert json.loads(out.splitlines()[-1]) == [
        "ipaddress",
        "structlog.threadlocal",
        "urllib.request",
    ]
    assert sorted(UNUSED) == ["ipaddress", "structlog.threadlocal", "urllib.request"]
