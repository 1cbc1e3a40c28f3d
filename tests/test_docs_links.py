"""The README and docs link to files that exist (the migration guide among them, issue 13.15)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def test_the_migration_guide_is_linked_from_the_readme() -> None:
    assert "(docs/migrating-from-device-client.md)" in (REPO / "README.md").read_text()
    guide = (REPO / "docs" / "migrating-from-device-client.md").read_text()
    for topic in ("runAsUser", "pathToHandler", "reboot.sh", "client id", "topicfilter/", "topic/"):
        assert topic in guide


def test_relative_links_point_at_files_that_exist() -> None:
    for document in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target, _anchor in LINK.findall(document.read_text()):
            if "://" in target:
                continue
            assert (document.parent / target).exists(), f"{document.name}: {target}"
