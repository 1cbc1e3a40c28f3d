"""The A/B updater layer against the real updaters: RAUC 1.8 (its service on a private D-Bus,
a custom bootloader backend) and SWUpdate 2022.12 (`swupdate -i`, a U-Boot environment in files),
each on a throwaway device whose slots are files (tests/fixtures/rauc.py, swupdate.py).

Every scenario runs on both: install into the inactive slot, the switch, the commit, the rollback
asked for, the rollback the bootloader does on its own when the new slot never boots, and the
refusal of a bundle signed by a key the device does not trust. A reboot is the fixture's
simulated bootloader: it applies what the updater asked for, as the firmware would at power-on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import pytest

from jobs_agent_handlers.system_update import SystemUpdater, UpdaterError
from tests.fixtures.rauc import RaucDevice, rauc_device  # noqa: F401 (fixture)
from tests.fixtures.rauc_bootloader import MAX_TRIES
from tests.fixtures.swupdate import BOOTLIMIT, SwupdateDevice, swupdate_device  # noqa: F401
from tests.fixtures.updaters import Signer, UpdatePki, update_pki  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

PAYLOAD_SIZE = 256 * 1024


class Device(Protocol):
    """What both device fixtures offer."""

    never_boots: set[str]

    @property
    def attempts(self) -> list[str]: ...
    @property
    def fallbacks(self) -> list[dict[str, str]]: ...

    def updater(self) -> SystemUpdater: ...
    def build_bundle(self, payload: bytes, *, signer: Signer | None = None) -> Path: ...
    def reboot(self) -> str: ...
    def next_boot(self) -> tuple[str, bool]: ...
    def slot_starts_with(self, slot: str, payload: bytes) -> bool: ...


@pytest.fixture(params=["rauc", "swupdate"])
def device(request: pytest.FixtureRequest) -> Device:
    device: Device = request.getfixturevalue(f"{request.param}_device")
    return device


def payload() -> bytes:
    return os.urandom(PAYLOAD_SIZE)


async def install(device: Device, data: bytes) -> tuple[str, list[tuple[float | None, str]]]:
    updates: list[tuple[float | None, str]] = []
    slot = await device.updater().install(
        device.build_bundle(data), lambda percent, message: updates.append((percent, message))
    )
    return slot, updates


async def switch_to_new_slot(device: Device) -> bytes:
    """Install into B, activate it and reboot into it: the state a verify phase starts from."""
    data = payload()
    await install(device, data)
    await device.updater().activate("B")
    assert device.reboot() == "B"
    return data


async def test_install_writes_the_inactive_slot_and_leaves_the_boot_order(device: Device) -> None:
    updater = device.updater()
    assert await updater.booted_slot() == "A"
    assert await updater.inactive_slot() == "B"
    data = payload()

    slot, updates = await install(device, data)

    assert slot == "B"
    assert device.slot_starts_with("B", data)
    assert device.slot_starts_with("A", bytes(PAYLOAD_SIZE)), "the running slot was written"
    assert device.next_boot() == ("A", False), "install alone must not switch the boot"
    assert updates, "no progress from the updater"
    assert device.reboot() == "A"


async def test_activate_then_reboot_boots_the_new_slot_on_trial(device: Device) -> None:
    await install(device, payload())
    updater = device.updater()

    await updater.activate("B")

    assert device.next_boot() == ("B", True)
    assert device.reboot() == "B"
    assert await updater.booted_slot() == "B"
    assert not await updater.fell_back("B")
    assert await updater.inactive_slot() == "A"


async def test_mark_good_commits_the_new_slot(device: Device) -> None:
    data = await switch_to_new_slot(device)
    updater = device.updater()

    await updater.mark_good()

    assert device.next_boot() == ("B", False)
    # More reboots than the bootloader's tries: a slot still on trial would have been left.
    for _ in range(max(MAX_TRIES, BOOTLIMIT) + 2):
        assert device.reboot() == "B"
    assert device.slot_starts_with("B", data)
    # The next update goes to the other slot, the one the device came from.
    assert await updater.inactive_slot() == "A"
    second = payload()
    slot, _ = await install(device, second)
    assert slot == "A"
    assert device.slot_starts_with("A", second)
    assert device.slot_starts_with("B", data)


async def test_mark_bad_then_reboot_rolls_back(device: Device) -> None:
    await switch_to_new_slot(device)
    updater = device.updater()

    await updater.mark_bad("B")

    assert device.next_boot() == ("A", False)
    assert device.reboot() == "A"
    assert await updater.booted_slot() == "A"
    assert await updater.fell_back("B")
    assert device.next_boot() == ("A", False)
    assert device.reboot() == "A", "the bad slot came back"


async def test_a_slot_that_never_boots_is_rolled_back_by_the_try_counter(device: Device) -> None:
    await install(device, payload())
    updater = device.updater()
    await updater.activate("B")
    device.never_boots.add("B")

    booted = device.reboot()

    assert booted == "A"
    # Three tries of B, each a failed boot, then the fallback to A.
    assert device.attempts[-4:] == ["B", "B", "B", "A"]
    assert device.fallbacks == [{"from": "B", "to": "A"}]
    assert await updater.fell_back("B")
    assert await updater.booted_slot() == "A"
    assert device.next_boot() == ("A", False)
    assert device.reboot() == "A"


async def test_a_bundle_signed_by_an_untrusted_key_is_refused(
    device: Device,
    update_pki: UpdatePki,  # noqa: F811 (the fixture)
) -> None:
    data = payload()
    bundle = device.build_bundle(data, signer=update_pki.rogue)

    with pytest.raises(UpdaterError) as refused:
        await device.updater().install(bundle, lambda percent, message: None)

    message = str(refused.value)
    assert "signature" in message.lower(), message
    assert device.slot_starts_with("B", bytes(PAYLOAD_SIZE)), "the refused bundle was written"
    assert device.next_boot() == ("A", False)
