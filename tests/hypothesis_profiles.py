"""Hypothesis profiles for the fuzz tests (tests/test_fuzz_*.py).

`ci` (the default) keeps the whole fuzz set under a minute: each test takes a share of
`max_examples` (see `examples`), a few thousand examples in total. `long` is the same tests with
100,000 as the base, for a soak run: `pytest tests/test_fuzz_* --hypothesis-profile=long`.
No deadline: end-to-end examples run real processes and their time varies with the machine.
Under CI (the `CI` environment variable set, as `.ci/run` runs) `ci` is derandomized: every CI
run tries the same examples, so a failure there is a bug to pin with `@example`, never a roll of
the dice that the next run may not repeat; exploring new examples is for local runs and `long`.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

BASE_EXAMPLES = {"ci": 1000, "long": 100_000}

for _name, _count in BASE_EXAMPLES.items():
    settings.register_profile(
        _name,
        max_examples=_count,
        deadline=None,
        derandomize=_name == "ci" and bool(os.environ.get("CI")),
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    )

settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def examples(share: float) -> int:
    """This test's share of the active profile's budget (read when the test module is imported,
    which is after pytest's `--hypothesis-profile` option was applied)."""
    return max(1, round(settings.default.max_examples * share))
