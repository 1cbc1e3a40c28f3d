"""The plugins' entry points, read without importlib.metadata, are the ones it finds (issue 18).

Each test runs a fresh interpreter with throwaway installed distributions (dist-info and
egg-info directories, a zip archive) on temporary `sys.path` entries before the real ones, and
compares `dispatch.entry_points.group_entries` and the registry's plugins with what
`importlib.metadata.entry_points` answers in the same process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

GROUP = "jobs_agent.handlers"

PROBE = """
import json, sys
sys.path[:0] = json.loads(sys.argv[1])
from jobs_agent.dispatch.entry_points import group_entries
from jobs_agent.dispatch.plugins import PluginRegistry

group = sys.argv[2]
ours = group_entries(group)
registry = PluginRegistry.discover({})
plugins = {name: registry.source(name) for name in registry.names()}
metadata_before = "importlib.metadata" in sys.modules
from importlib.metadata import entry_points
theirs = [(entry.name, entry.value) for entry in entry_points(group=group)]
print(json.dumps({"ours": ours, "theirs": theirs, "plugins": plugins,
                  "metadata_before": metadata_before}))
"""


def dist(root: Path, directory: str, entry_points: str | None) -> None:
    info = root / directory
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {directory.split('-')[0]}\n")
    if entry_points is not None:
        (info / "entry_points.txt").write_text(entry_points)


def probe(paths: list[Path], group: str = GROUP) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([str(p) for p in paths]), group],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    result["ours"] = [tuple(pair) for pair in result["ours"]]
    result["theirs"] = [tuple(pair) for pair in result["theirs"]]
    return result


def test_the_same_plugins_as_importlib_metadata_a_shadowed_package_left_out(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    dist(
        first,
        "acme_plugins-1.0.dist-info",
        "# a comment\n\n[console_scripts]\nacme = acme.cli:main\n"
        "[jobs_agent.handlers]\nflash = acme.flash:Flash\n  shared=acme.shared:Handler [extra]\n",
    )
    dist(first, "nothing-1.0.dist-info", None)  # no entry_points.txt
    # The same package (its name normalised: `Acme.Plugins` is `acme_plugins`) further down
    # sys.path: shadowed, none of its entry points counts.
    dist(second, "Acme.Plugins-2.0.dist-info", "[jobs_agent.handlers]\nflash = old:Flash\n")
    dist(second, "Acme.Plugins-2.0.dist-info-x", None)  # not a metadata directory
    # Another package naming the same plugin: later in importlib's order, so it is the one
    # kept by name.
    dist(second, "other-0.1.egg-info", "[jobs_agent.handlers]\nshared = other.mod:Shared\n")
    dist(second, "third-3.dist-info", "[jobs_agent.handlers]\ndeep = third.a:B.c\n")

    found = probe([first, second, tmp_path / "missing"])

    assert found["ours"] == found["theirs"]
    assert found["ours"][:2] == [
        ("flash", "acme.flash:Flash"),
        ("shared", "acme.shared:Handler [extra]"),
    ]
    # The second directory's in the order os.listdir gives them, as importlib's.
    assert set(found["ours"][2:4]) == {("shared", "other.mod:Shared"), ("deep", "third.a:B.c")}
    plugins = found["plugins"]
    assert plugins["flash"] == "acme.flash:Flash"
    assert plugins["shared"] == "other.mod:Shared"
    assert plugins["deep"] == "third.a:B.c"
    assert {"download-file", "reboot", "system-update"} <= set(plugins)
    assert not found["metadata_before"]  # importlib.metadata was not needed


def test_what_importlib_reads_otherwise_is_left_to_it(tmp_path: Path) -> None:
    """A zip archive or an egg on sys.path, and a metadata directory whose name does not give
    its package's: importlib.metadata answers, the same answer."""
    archive = tmp_path / "zipped.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("zipped-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: zipped\n")
        zipped.writestr("zipped-1.0.dist-info/entry_points.txt", f"[{GROUP}]\nz = z.mod:Z\n")
    found = probe([archive])
    assert found["ours"] == found["theirs"]
    assert ("z", "z.mod:Z") in found["ours"]
    assert found["metadata_before"]

    egg = tmp_path / "legacy-1.0-py3.11.egg"
    (egg / "EGG-INFO").mkdir(parents=True)
    (egg / "EGG-INFO" / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: legacy\n")
    (egg / "EGG-INFO" / "entry_points.txt").write_text(f"[{GROUP}]\nold = legacy.mod:Old\n")
    found = probe([egg])
    assert found["ours"] == found["theirs"]
    assert ("old", "legacy.mod:Old") in found["ours"]
    assert found["metadata_before"]

    upper = tmp_path / "upper"
    dist(upper, "Shouty-1.0.DIST-INFO", f"[{GROUP}]\nshout = s:S\n")
    found = probe([upper])
    assert found["ours"] == found["theirs"]
    assert ("shout", "s:S") in found["ours"]
    assert found["metadata_before"]


def test_a_line_importlib_refuses_is_refused_the_same(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    dist(broken, "broken-1.0.dist-info", f"[{GROUP}]\nno equals sign here\n")
    run = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([str(broken)]), GROUP],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "importlib/metadata" in run.stderr  # raised by importlib itself, as before


def test_load_finds_what_an_entry_point_names() -> None:
    from jobs_agent.dispatch.entry_points import load

    assert load("os.path:join") is __import__("os").path.join
    assert load("os.path") is __import__("os").path
    assert load("json:JSONDecoder.decode [extra]") is __import__("json").JSONDecoder.decode
