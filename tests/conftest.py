"""Suite-wide fixtures. The mosquitto broker fixtures live in tests/fixtures/broker.py."""

pytest_plugins = ["tests.fixtures.broker"]

import tests.hypothesis_profiles  # noqa: E402, F401  (registers the ci and long profiles)
