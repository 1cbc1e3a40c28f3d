"""The fuzz tests' Hypothesis profile is derandomized under CI (the project's rule: a random
failure in CI is a bug found, pinned, never noise), and explores new examples elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def derandomized(environment: dict[str, str]) -> str:
    code = (
        "import tests.hypothesis_profiles; from hypothesis import settings;"
        " print(settings.default.derandomize)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "HYPOTHESIS_PROFILE")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**env, **environment},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_the_ci_profile_is_derandomized_under_ci_only() -> None:
    assert derandomized({"CI": "true"}) == "True"
    assert derandomized({}) == "False"
    assert derandomized({"CI": "true", "HYPOTHESIS_PROFILE": "long"}) == "False"
