"""RAUC specifics of the updater layer, with the real RAUC 1.8 service (tests/fixtures/rauc.py):
what RAUC itself records, its refusals, and what happens when its service is not there."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from jobs_agent_handlers.system_update import RaucUpdater, UpdaterError
from jobs_agent_handlers.system_update.rauc import RaucStatus
from tests.fixtures.rauc import RaucDevice, rauc_device  # noqa: F401 (fixture)
from tests.fixtures.updaters import require_tools, update_pki  # noqa: F401 (fixture)
from tests.harness import wait_until

pytestmark = pytest.mark.slow


def no_progress(percent: float | None, message: str) -> None:
    pass


async def test_rauc_records_the_switch_the_commit_and_the_rollback(
    rauc_device: RaucDevice,  # noqa: F811
) -> None:
    updater = rauc_device.updater()
    percents: list[float | None] = []
    await updater.install(
        rauc_device.build_bundle(os.urandom(4096)), lambda percent, _: percents.append(percent)
    )
    assert percents == sorted(percents) and percents[-1] == 100.0

    status = await updater.status()
    assert status.primary == "rootfs.0", "installing switched the boot (activate-installed?)"
    assert status.by_bootname("B").boot_status == "bad", "RAUC marks a slot bad before writing it"

    await updater.activate("B")
    assert (await updater.status()).primary == "rootfs.1"
    rauc_device.reboot()
    await updater.mark_good()
    status = await updater.status()
    assert (status.booted, status.by_bootname("B").boot_status) == ("B", "good")

    await updater.mark_bad("B")
    assert (await updater.status()).by_bootname("B").boot_status == "bad"
    assert rauc_device.reboot() == "A"
    assert (await updater.status()).booted == "A"


async def test_a_bundle_for_another_device_is_refused(
    rauc_device: RaucDevice,  # noqa: F811
) -> None:
    bundle = rauc_device.build_bundle(os.urandom(4096), compatible="someone-elses-device")

    with pytest.raises(UpdaterError) as refused:
        await rauc_device.updater().install(bundle, no_progress)

    assert str(refused.value).startswith("rauc install: exited with code 1: ")
    assert "Compatible mismatch" in str(refused.value)
    assert rauc_device.slot_starts_with("B", bytes(4096))


async def test_a_damaged_bundle_is_refused(rauc_device: RaucDevice) -> None:  # noqa: F811
    bundle = rauc_device.build_bundle(os.urandom(64 * 1024))
    data = bytearray(bundle.read_bytes())
    data[1000] ^= 0xFF
    bundle.write_bytes(bytes(data))

    with pytest.raises(UpdaterError, match="signature verification failed"):
        await rauc_device.updater().install(bundle, no_progress)
    assert rauc_device.next_boot() == ("A", False)


async def test_an_unknown_slot_is_an_error_and_changes_nothing(
    rauc_device: RaucDevice,  # noqa: F811
) -> None:
    with pytest.raises(UpdaterError, match="no slot has the bootname 'C'"):
        await rauc_device.updater().activate("C")
    assert rauc_device.next_boot() == ("A", False)


async def test_without_the_rauc_service_the_error_says_so() -> None:
    require_tools("rauc")
    updater = RaucUpdater(dbus_address="unix:path=/nonexistent/bus", command_timeout=10)

    with pytest.raises(UpdaterError) as failed:
        await updater.booted_slot()

    assert str(failed.value).startswith("rauc status: exited with code 1: ")
    assert "D-Bus" in str(failed.value) or "Could not connect" in str(failed.value)


def test_the_status_of_rauc_1_8_is_read() -> None:
    """The JSON of `rauc status --output-format=json`, as RAUC 1.8 printed it on this device."""
    status = RaucStatus.parse(
        '{"compatible":"x","variant":"","booted":"A","boot_primary":"rootfs.1","slots":['
        '{"rootfs.1":{"class":"rootfs","device":"/x/b","type":"raw","bootname":"B",'
        '"state":"inactive","parent":null,"mountpoint":null,"boot_status":"bad"}},'
        '{"appfs.0":{"class":"appfs","device":"/x/c","type":"raw","bootname":null,'
        '"state":"active","parent":"rootfs.0","mountpoint":null,"boot_status":null}},'
        '{"rootfs.0":{"class":"rootfs","device":"/x/a","type":"raw","bootname":"A",'
        '"state":"booted","parent":null,"mountpoint":null,"boot_status":"good"}}]}'
    )

    assert (status.booted, status.primary) == ("A", "rootfs.1")
    assert status.other().name == "rootfs.1"
    assert status.by_bootname("A").boot_status == "good"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[]", "no list of slots"),
        ('{"slots": [{"rootfs.0": {"bootname": "A"}}]}', "no class"),
        ('{"booted": 3, "slots": []}', "booted: expected a string"),
        ("not json", "Expecting value"),
    ],
)
def test_unexpected_status_output_is_an_error(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        RaucStatus.parse(text)


def test_a_device_that_cannot_tell_its_booted_slot_has_no_inactive_slot() -> None:
    status = RaucStatus.parse(
        '{"booted": null, "slots": [{"rootfs.0": {"class": "rootfs", "bootname": "A"}}]}'
    )
    with pytest.raises(ValueError, match="cannot tell the booted slot"):
        status.other()


async def test_an_install_that_outlived_its_client_is_waited_for(
    rauc_device: RaucDevice,  # noqa: F811
) -> None:
    """An agent killed mid-install leaves RAUC's service installing (killing the client does
    not stop it), and until it is done the service refuses every request, `status` included
    ("already processing a different method"). The next run waits that out and installs.

    The earlier install is held deterministically: the bootloader backend, which RAUC calls
    to mark the target slot bad before writing it, blocks its first such call on a FIFO until
    the test opens it."""
    gate, blocked = rauc_device.directory / "gate", rauc_device.directory / "blocked"
    os.mkfifo(gate)
    backend = rauc_device.directory / "bootloader-backend"
    original = backend.read_text()
    backend.write_text(
        original.replace(
            "exec ",
            f'if [ "$1" = set-state ] && [ ! -e {blocked} ]; then touch {blocked}; cat {gate}; fi\n'
            "exec ",
            1,
        )
    )
    bundle = rauc_device.build_bundle(b"new system" * 1000)
    try:
        await _install_after_a_killed_client(rauc_device, bundle, blocked, gate)
    finally:
        _open_gate(gate)  # never leave RAUC's service stuck with the bundle mounted


def _open_gate(gate: Path) -> None:
    """Let the blocked backend call go on (if one is blocked), without waiting for one."""
    try:
        descriptor = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # no reader: nothing is blocked (or the FIFO is gone)
        return
    try:
        os.write(descriptor, b"go\n")
    finally:
        os.close(descriptor)


async def _install_after_a_killed_client(
    rauc_device: RaucDevice,  # noqa: F811
    bundle: Path,
    blocked: Path,
    gate: Path,
) -> None:
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": rauc_device.dbus_address}
    client = await asyncio.create_subprocess_exec(
        "rauc", "install", str(bundle), env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await wait_until(blocked.exists, 20, "the first install to reach the bootloader")
    client.kill()  # the agent that ran it dies; the service goes on
    await client.wait()

    updater = rauc_device.updater()
    said: list[str] = []
    install = asyncio.create_task(updater.install(bundle, lambda _, message: said.append(message)))
    await wait_until(lambda: any("busy" in m for m in said), 20, "the updater to wait")
    assert not install.done()
    _open_gate(gate)  # the earlier install goes on and ends
    assert await asyncio.wait_for(install, 60) == "B"
    assert rauc_device.slot_starts_with("B", b"new system")
    assert (await updater.status()).primary == "rootfs.0"  # installed, not activated
