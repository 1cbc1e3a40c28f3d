"""Suite-wide fixtures. The mosquitto broker fixtures live in tests/fixtures/broker.py."""

pytest_plugins = ["tests.fixtures.broker"]
