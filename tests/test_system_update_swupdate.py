"""SWUpdate specifics of the updater layer, with the real `swupdate -i` and libubootenv's tools
(tests/fixtures/swupdate.py): the boot environment step by step, refusals, and the checks the
layer makes before it lets SWUpdate run as root."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from jobs_agent_handlers.system_update import SwupdateConfig, SwupdateUpdater, UpdaterError
from jobs_agent_handlers.system_update.swupdate import kernel_parameter
from jobs_agent_handlers.system_update.ubootenv import UBootEnv
from tests.fixtures.swupdate import SwupdateDevice, swupdate_device  # noqa: F401 (fixture)
from tests.fixtures.updaters import update_pki  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

TRIAL_VARIABLES = ("boot_slot", "upgrade_available", "bootcount", "ustate")


def no_progress(percent: float | None, message: str) -> None:
    pass


def trial(device: SwupdateDevice) -> tuple[str, ...]:
    env = device.env()
    return tuple(env.get(name, "") for name in TRIAL_VARIABLES)


async def test_the_boot_environment_through_an_update_and_a_fallback(
    swupdate_device: SwupdateDevice,  # noqa: F811
) -> None:
    device = swupdate_device
    updater = device.updater()
    messages: list[str] = []
    assert trial(device) == ("A", "0", "0", "0")

    await updater.install(device.build_bundle(os.urandom(4096)), lambda _, m: messages.append(m))
    # SWUpdate itself wrote ustate=1 (installed), through its U-Boot interface, into this
    # device's environment: /etc/fw_env.config in its namespace is the device's.
    assert trial(device) == ("A", "0", "0", "1")
    assert "installing rootfs.img into slot B" in messages

    await updater.activate("B")
    assert trial(device) == ("B", "1", "0", "1")
    device.reboot()
    assert trial(device) == ("B", "1", "1", "1")
    await updater.mark_good()
    assert trial(device) == ("B", "0", "0", "0")

    # A second update, back into A, whose system never comes up.
    await updater.install(device.build_bundle(os.urandom(4096)), no_progress)
    await updater.activate("A")
    device.never_boots.add("A")
    assert device.reboot() == "B"
    assert trial(device) == ("B", "0", "0", "3"), "altbootcmd: back to B, update failed"
    assert await updater.fell_back("A")


async def test_mark_bad_before_the_reboot_undoes_the_activation(
    swupdate_device: SwupdateDevice,  # noqa: F811
) -> None:
    device = swupdate_device
    updater = device.updater()
    await updater.install(device.build_bundle(os.urandom(4096)), no_progress)
    await updater.activate("B")

    await updater.mark_bad("B")

    assert trial(device) == ("A", "0", "0", "3")
    assert device.reboot() == "A"


async def test_a_bundle_for_other_hardware_is_refused(
    swupdate_device: SwupdateDevice,  # noqa: F811
) -> None:
    data = os.urandom(4096)
    bundle = swupdate_device.build_bundle(data, revision="9.9")

    with pytest.raises(UpdaterError) as refused:
        await swupdate_device.updater().install(bundle, no_progress)

    assert str(refused.value).startswith("swupdate: exited with code 1: ")
    assert "compatib" in str(refused.value).lower()
    assert swupdate_device.slot_starts_with("B", bytes(4096))


async def test_a_tampered_image_is_refused(swupdate_device: SwupdateDevice) -> None:  # noqa: F811
    data = os.urandom(64 * 1024)
    bundle = swupdate_device.build_bundle(data)
    archive = bytearray(bundle.read_bytes())
    offset = archive.index(data[:64])
    archive[offset + 100] ^= 0xFF
    bundle.write_bytes(bytes(archive))

    with pytest.raises(UpdaterError, match="HASH mismatch"):
        await swupdate_device.updater().install(bundle, no_progress)
    assert swupdate_device.next_boot() == ("A", False)


def shared_dir(tmp_path: Path) -> Path:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    return shared


def symlink_to_private_dir(tmp_path: Path) -> Path:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    return tmp_path / "link"


@pytest.mark.parametrize("make_work_dir", [shared_dir, symlink_to_private_dir])
async def test_a_work_dir_that_is_not_private_is_refused(
    swupdate_device: SwupdateDevice,  # noqa: F811
    tmp_path: Path,
    make_work_dir: Callable[[Path], Path],
) -> None:
    updater = swupdate_device.updater(work_dir=make_work_dir(tmp_path))
    bundle = swupdate_device.build_bundle(os.urandom(4096))

    with pytest.raises(UpdaterError, match="must be a directory owned by the agent's user"):
        await updater.install(bundle, no_progress)
    assert swupdate_device.env()["ustate"] == "0", "swupdate ran"


async def test_a_switch_the_environment_did_not_take_is_an_error(
    swupdate_device: SwupdateDevice,  # noqa: F811
    tmp_path: Path,
) -> None:
    """fw_setenv 0.3 exits 0 for a script line it cannot parse; `true` stands in for that."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o700)
    env = UBootEnv(config=swupdate_device.fw_env_config, scratch_dir=scratch, setenv=("true",))

    with pytest.raises(UpdaterError, match="did not take the new values: boot_slot"):
        await env.write({"boot_slot": "B"})
    assert list(scratch.iterdir()) == [], "the script file was left behind"


async def test_a_booted_slot_the_config_does_not_know_is_an_error(
    swupdate_device: SwupdateDevice,  # noqa: F811
) -> None:
    swupdate_device.cmdline.write_text("console=ttyS0 root=/dev/nfs\n")

    with pytest.raises(UpdaterError, match=r"root=/dev/nfs is none of the slots' values"):
        await swupdate_device.updater().inactive_slot()


def work_dir_of(base: Path, socket_path_bytes: int) -> Path:
    """A directory under `base` where `<it>/swupdateprog` is `socket_path_bytes` long."""
    pad = socket_path_bytes - len(os.fsencode(base / "x" / "swupdateprog")) + 1
    assert pad >= 1, base
    return base / ("w" * pad)


async def test_a_work_dir_at_the_socket_path_limit_installs(
    swupdate_device: SwupdateDevice,  # noqa: F811
) -> None:
    """The limit is SWUpdate's own: at 106 bytes its sockets bind and the install goes
    through (at 107, one short of `sun_path`'s room, it failed with only "swupdate_async_start
    returns -1", as every install did under pytest-xdist, whose paths are longer); from 107
    the config is refused (next test)."""
    work_dir = work_dir_of(swupdate_device.work_dir.parent, 106)
    work_dir.mkdir(mode=0o700)
    data = os.urandom(4096)
    await swupdate_device.updater(work_dir=work_dir).install(
        swupdate_device.build_bundle(data), no_progress
    )
    assert swupdate_device.slot_starts_with("B", data)


def test_a_work_dir_too_long_for_swupdates_sockets_is_refused(tmp_path: Path) -> None:
    slots = {"A": "/dev/a", "B": "/dev/b"}
    ok = work_dir_of(tmp_path, 106)
    SwupdateConfig(slots=slots, ca_certificate=Path("/ca.pem"), work_dir=ok)
    too_long = work_dir_of(tmp_path, 107)
    with pytest.raises(ValueError, match=r"at most 106 bytes; .* makes 107: choose a shorter"):
        SwupdateConfig(slots=slots, ca_certificate=Path("/ca.pem"), work_dir=too_long)


def test_kernel_parameters_are_read_as_the_kernel_does() -> None:
    cmdline = 'console=ttyS0 root=/dev/mmcblk0p2 quiet "dyndbg=x y" root=/dev/mmcblk0p3 ro\n'
    assert kernel_parameter(cmdline, "root") == "/dev/mmcblk0p3"
    assert kernel_parameter(cmdline, "dyndbg") == "x y"
    assert kernel_parameter(cmdline, "rauc.slot") is None
    assert kernel_parameter('root=/dev/sda1 bad="quote', "root") == "/dev/sda1"


@pytest.mark.parametrize(
    ("slots", "error"),
    [
        ({"A": "/dev/a"}, "two slots"),
        ({"A": "/dev/a", "B": "/dev/a"}, "different command line values"),
        ({"A": "/dev/a", "B,x": "/dev/b"}, "not a slot name"),
        ({"A": "/dev/a", "B": "/dev/b c"}, "without spaces"),
    ],
)
def test_a_config_that_cannot_describe_an_ab_device_is_refused(
    slots: dict[str, str], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        SwupdateConfig(slots=slots, ca_certificate=Path("/ca.pem"), work_dir=Path("/w"))


async def test_unknown_slots_are_refused_before_the_environment_is_touched() -> None:
    updater = SwupdateUpdater(
        SwupdateConfig(
            slots={"A": "/dev/a", "B": "/dev/b"},
            ca_certificate=Path("/ca.pem"),
            work_dir=Path("/nonexistent"),
            fw_setenv_command=("false",),
        )
    )
    with pytest.raises(UpdaterError, match="no slot 'C'"):
        await updater.activate("C")


async def test_a_missing_bundle_is_an_error_and_not_retried(
    swupdate_device: SwupdateDevice,  # noqa: F811
) -> None:
    messages: list[str] = []

    with pytest.raises(UpdaterError, match=r"Unable to open /nonexistent/update\.swu"):
        await swupdate_device.updater().install(
            Path("/nonexistent/update.swu"), lambda _, m: messages.append(m)
        )
    assert not any("again" in message for message in messages)


RACE_STAND_IN = """#!/bin/sh
# SWUpdate 2022.12's -i race (module docstring of swupdate.py), which cannot be provoked on
# demand: the first run ends as the race leaves it, the next ones install for real.
if [ ! -e "{marker}" ]; then
    touch "{marker}"
    echo "[INFO ] : SWUPDATE running :  Installation in progress"
    echo "[INFO ] : SWUPDATE running :  [endupdate] : SWUpdate was successful !"
    exit 1
fi
exec "$@"
"""


async def test_a_run_cut_short_by_swupdates_race_is_run_again(
    swupdate_device: SwupdateDevice,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The real swupdate behind a stand-in that plays the race once (RACE_STAND_IN)."""
    stand_in = tmp_path / "swupdate-race"
    stand_in.write_text(RACE_STAND_IN.format(marker=tmp_path / "raced"))
    stand_in.chmod(0o755)
    command = (str(stand_in), *swupdate_device.swupdate_command)
    updater = swupdate_device.updater(swupdate_command=command)
    data = os.urandom(4096)
    messages: list[str] = []

    slot = await updater.install(
        swupdate_device.build_bundle(data), lambda _, m: messages.append(m)
    )

    assert slot == "B"
    assert swupdate_device.slot_starts_with("B", data)
    assert any("exited before its installer finished" in message for message in messages)


async def test_a_run_the_race_cuts_short_every_time_is_an_error(
    swupdate_device: SwupdateDevice,  # noqa: F811
    tmp_path: Path,
) -> None:
    stand_in = tmp_path / "swupdate-race"
    stand_in.write_text(RACE_STAND_IN.format(marker="/nonexistent/marker"))
    stand_in.chmod(0o755)
    updater = swupdate_device.updater(swupdate_command=(str(stand_in),))

    with pytest.raises(UpdaterError, match="ended before its installer reported a result, 3 times"):
        await updater.install(swupdate_device.build_bundle(os.urandom(4096)), no_progress)


# What a cut-short run printed when its installer was still at work as the process exited (seen
# by making a real swupdate exit while its installer opened sw-description.sig; one such run
# failed a CI run of test_a_tampered_image_is_refused): the client's notice, then the errors of
# an installer torn down under it, for a bundle that is fine.
TORN_DOWN_STAND_IN = """#!/bin/sh
if [ ! -e "{marker}" ]; then
    touch "{marker}"
    echo "[TRACE] : SWUPDATE running :  [extract_file_to_tmp] : 	filename sw-description.sig"
    echo "[INFO ] : SWUPDATE running :  [endupdate] : SWUpdate was successful !"
    echo "[ERROR] : SWUPDATE failed [0] ERROR : $TMPDIR/sw-description.sig cannot be opened" >&2
    echo "[ERROR] : SWUPDATE failed [0] ERROR : Compatible SW not found" >&2
    echo "[ERROR] : SWUPDATE failed [1] Image invalid or corrupted. Not installing ..." >&2
    echo "[INFO ] : No SWUPDATE running :  Waiting for requests..."
    exit 1
fi
exec "$@"
"""


async def test_errors_of_an_installer_torn_down_by_the_race_are_not_a_verdict(
    swupdate_device: SwupdateDevice,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The real swupdate behind a stand-in that plays, once, a run the race cut short while its
    installer was at work (TORN_DOWN_STAND_IN)."""
    stand_in = tmp_path / "swupdate-torn-down"
    stand_in.write_text(TORN_DOWN_STAND_IN.format(marker=tmp_path / "raced"))
    stand_in.chmod(0o755)
    command = (str(stand_in), *swupdate_device.swupdate_command)
    updater = swupdate_device.updater(swupdate_command=command)
    data = os.urandom(4096)
    messages: list[str] = []

    slot = await updater.install(
        swupdate_device.build_bundle(data), lambda _, m: messages.append(m)
    )

    assert slot == "B"
    assert swupdate_device.slot_starts_with("B", data)
    assert any("exited before its installer finished" in message for message in messages)


ENDED_FIRST_STAND_IN = """#!/bin/sh
echo run >> "{runs}"
echo "[INFO ] : No SWUPDATE running :  Waiting for requests..."
echo "[INFO ] : SWUPDATE running :  [endupdate] : SWUpdate was successful !"
echo "[ERROR] : SWUPDATE failed [0] ERROR : HASH mismatch : 01 <--> 02" >&2
echo "[ERROR] : SWUPDATE failed [1] Image invalid or corrupted. Not installing ..." >&2
exit 1
"""


async def test_a_verdict_the_installer_gave_before_the_client_gave_up_stands(
    swupdate_device: SwupdateDevice,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The race, but the installer had ended (and said why it refused) before the client gave
    up: that is SWUpdate's answer, given once, not a run to repeat (ENDED_FIRST_STAND_IN)."""
    stand_in = tmp_path / "swupdate-ended-first"
    runs = tmp_path / "runs"
    stand_in.write_text(ENDED_FIRST_STAND_IN.format(runs=runs))
    stand_in.chmod(0o755)
    updater = swupdate_device.updater(swupdate_command=(str(stand_in),))

    with pytest.raises(UpdaterError, match="HASH mismatch : 01 <--> 02"):
        await updater.install(swupdate_device.build_bundle(os.urandom(4096)), no_progress)
    assert runs.read_text() == "run\n"


async def test_the_boot_switch_works_before_any_install(
    swupdate_device: SwupdateDevice,  # noqa: F811
) -> None:
    """After an agent restart the work directory may not exist yet; activate must not care."""
    updater = swupdate_device.updater()
    work_dir = updater.config.work_dir
    assert not work_dir.exists()

    await updater.activate("B")

    assert trial(swupdate_device) == ("B", "1", "0", "0")
    assert work_dir.stat().st_mode & 0o777 == 0o700
    assert list(work_dir.iterdir()) == []
