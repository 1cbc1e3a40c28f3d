"""Suite-wide fixtures. The mosquitto broker fixtures live in tests/fixtures/broker.py, the
emulator served over it in tests/fixtures/emulator.py, the release of cgroup bases after each
test in tests/fixtures/cgroups.py, the logging set-up restored after a test that changes it in
tests/fixtures/logs.py."""

pytest_plugins = [
    "tests.fixtures.cgroups",
    "tests.fixtures.broker",
    "tests.fixtures.emulator",
    "tests.fixtures.logs",
]

import tests.hypothesis_profiles  # noqa: E402, F401  (registers the ci and long profiles)
