"""`jobs-agent config check` checks what the configuration points at on this device (issue
13.6) and warns when a broker is reached without TLS or credentials while documents need no
signature (issue 12.10). A real `jobs-agent` process on real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "jobs_agent", "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def device(tmp_path: Path) -> Path:
    for name in ("device.pem.crt", "private.pem.key", "ca.pem"):
        (tmp_path / name).write_text("x")
    (tmp_path / "handlers").mkdir(mode=0o755)
    (tmp_path / "handlers").chmod(0o755)
    return tmp_path


def awscrt(device: Path, extra: str = "") -> str:
    return (
        "thing_name: gw-001\n"
        "connection:\n  transport: awscrt\n  endpoint: abc-ats.iot.eu-west-1.amazonaws.com\n"
        f"  cert: {device}/device.pem.crt\n  key: {device}/private.pem.key\n  ca: {device}/ca.pem\n"
        f"jobs:\n  handler_dir: {device}/handlers\n{extra}"
    )


def test_a_complete_device_passes(device: Path) -> None:
    result = check(device, awscrt(device))
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout and "WARNING" not in result.stderr
    # The effective settings include the ones the file leaves at their defaults, a section the
    # agent builds only when used (`system_update:`) too.
    assert "  jobs.kill_grace_seconds = 10.0\n" in result.stdout
    assert "  system_update.install_timeout_seconds = 3600.0\n" in result.stdout


def test_missing_certificate_key_and_ca_are_named(device: Path) -> None:
    (device / "device.pem.crt").unlink()
    (device / "ca.pem").unlink()
    (device / "ca.pem").mkdir()
    result = check(device, awscrt(device))
    assert result.returncode == 2
    assert f"connection.cert: {device}/device.pem.crt: no such file" in result.stderr
    assert f"connection.ca: {device}/ca.pem: not a regular file" in result.stderr
    assert "configuration INVALID on this device: 2 problem(s)" in result.stderr


def test_a_handler_directory_that_is_missing_or_open_to_others_is_named(device: Path) -> None:
    missing = check(device, awscrt(device).replace("/handlers", "/nowhere"))
    assert missing.returncode == 2
    assert f"jobs.handler_dir: {device}/nowhere: no such directory" in missing.stderr
    (device / "handlers").chmod(0o777)
    open_dir = check(device, awscrt(device))
    assert open_dir.returncode == 2
    assert (
        f"jobs.handler_dir: handler directory {device}/handlers is writable by others"
        " (mode 0777)" in open_dir.stderr
    )
    (device / "handlers").chmod(0o755)
    script = device / "handlers" / "x.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o666)
    loose = check(device, awscrt(device))
    assert f"handler {script} is writable by others (mode 0666)" in loose.stderr
    assert f"{script} is not executable" in loose.stderr


def test_a_plugin_that_does_not_import_is_named(device: Path) -> None:
    result = check(device, awscrt(device, "handlers:\n  flash: no_such_plugin_module:Flash\n"))
    assert result.returncode == 2
    assert "handlers.flash: cannot load handler no_such_plugin_module:Flash: No module named" in (
        result.stderr
    )


def test_an_inventory_source_that_cannot_be_read_is_named(device: Path) -> None:
    good = device / "packages.json"
    good.write_text('{"firmware": {"version": "2.1.0"}}')
    good.chmod(0o644)
    open_to_all = device / "others.json"
    open_to_all.write_text('{"app": {"version": "1"}}')
    open_to_all.chmod(0o666)
    sources = f"inventory:\n  sources:\n    - file: {good}\n    - file: {open_to_all}\n"
    result = check(device, awscrt(device) + sources)
    assert result.returncode == 2
    assert f"inventory.sources[1]: file {open_to_all}:" in result.stderr
    assert "inventory.sources[0]" not in result.stderr


@pytest.mark.parametrize(
    ("connection", "warned"),
    [
        ("tls: false\n", "without TLS and credentials"),
        ("tls: false\n  username: gw\n  password: pw\n", "without TLS"),
        ("tls: true\n", "without credentials"),
        ("tls: true\n  username: gw\n  password: pw\n", None),
    ],
)
def test_a_broker_without_tls_or_credentials_is_warned_about(
    device: Path, connection: str, warned: str | None
) -> None:
    text = (
        "thing_name: gw-001\nconnection:\n  transport: paho\n  endpoint: 127.0.0.1\n"
        f"  port: 1883\n  {connection}jobs:\n  handler_dir: {device}/handlers\n"
    )
    result = check(device, text)
    assert result.returncode == 0, result.stderr
    if warned is None:
        assert "WARNING" not in result.stderr
    else:
        assert (
            f"WARNING: connection: the broker 127.0.0.1:1883 is reached {warned} and"
            " jobs.require_signature is false" in result.stderr
        )
        assert "which runs as root" in result.stderr
        assert "warning(s) above" in result.stdout
    (device / "pub.pem").write_text("x")
    signed = check(
        device, text + f"  require_signature: true\n  trusted_keys: [{device}/pub.pem]\n"
    )
    assert "WARNING: connection" not in signed.stderr


@pytest.mark.parametrize(
    ("value", "meaning"),
    [("false", "refuses root even where"), ("true", "changes nothing")],
)
def test_the_deprecated_allow_root_of_earlier_versions_is_accepted_with_a_warning(
    device: Path, value: str, meaning: str
) -> None:
    """An upgraded gateway whose file still has `allow_root` must start: a configuration error
    would take the whole fleet offline, and with it the remote way to fix the file."""
    result = check(device, awscrt(device, f"  allow_root: {value}\n"))
    assert result.returncode == 0, result.stderr
    assert "jobs.allow_root is deprecated" in result.stderr and meaning in result.stderr


def test_what_a_system_update_would_trip_on_is_named(device: Path) -> None:
    """A health check that cannot run would roll every update back; SWUpdate without its
    certificate cannot check a bundle: both are found before the first update."""
    extra = (
        "system_update:\n"
        f"  health_commands: [[{device}/no-such-check], [/bin/true]]\n"
        "  swupdate_slots: {A: /dev/mmcblk0p2, B: /dev/mmcblk0p3}\n"
    )
    result = check(device, awscrt(device, extra))
    assert result.returncode == 2
    assert f"system_update.health_commands[0]: {device}/no-such-check: not found" in result.stderr
    assert "health_commands[1]" not in result.stderr
    assert "system_update.swupdate_ca_certificate: required" in result.stderr
