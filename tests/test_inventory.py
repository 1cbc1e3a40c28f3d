"""Software inventory: what a job document says it installs, the local sources (a real file, a
real command, a Python plugin), the "already installed" check, and the `$package` report
against the emulator's shadow service and package catalog over a real mosquitto (read back
with boto3's GetThingShadow, as an operator or the catalog would)."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.emulator.embedded import Emulator
from jobs_agent.inventory.model import (
    InventoryError,
    JobPackages,
    PackageVersion,
    already_installed,
    parse_packages,
)
from jobs_agent.inventory.report import MAX_STATE_BYTES, plan_report, report_packages
from jobs_agent.inventory.sources import (
    MAX_SOURCE_BYTES,
    CommandSource,
    FileSource,
    PluginSource,
    read_inventory,
    sources_from_config,
)
from jobs_agent.jobs.client import JobsClient
from jobs_agent.shadow.client import ShadowClient, ShadowDocument
from jobs_agent.transport.paho import PahoTransport
from jobs_agent.transport.shared import SharedLink
from tests.emulator.conformance.conftest import client
from tests.fixtures.broker import Mosquitto
from tests.harness import paho_connection
from tests.helpers.users import throwaway_user

THING = "gw-inventory"
REGION = "eu-west-1"  # the conformance suite's, whose boto3 `client` is used here
VERSION_ARN = "arn:aws:iot:eu-west-1:123456789012:package/{}/version/{}"
ROLE = "arn:aws:iam::123456789012:role/PackageCatalogJobs"


def pkg(name: str, version: str | None, **attributes: str) -> PackageVersion:
    return PackageVersion(name, version, attributes)


# -- the document ------------------------------------------------------------------------------
def test_installs_is_the_package_shadow_shape() -> None:
    job = JobPackages.from_document(
        {
            "operation": "install",
            "installs": {
                "firmware": {"version": "2.1.0", "attributes": {"channel": "stable"}},
                "legacy-tool": None,
            },
        }
    )
    assert not job.reported_by_jobs
    assert job.to_report() == {
        "firmware": pkg("firmware", "2.1.0", channel="stable"),
        "legacy-tool": pkg("legacy-tool", None),
    }
    assert [p.to_reported() for p in job.to_report().values()] == [
        {"version": "2.1.0", "attributes": {"channel": "stable"}},
        None,
    ]
    assert job.targets() is None  # a removal cannot be confirmed from a local inventory


@pytest.mark.parametrize(
    ("installs", "message"),
    [
        ({"fw": {"version": "2.0", "build": "17"}}, "installs.fw.build: unknown key"),
        ({"fw": {"version": "2.0 beta"}}, "installs.fw.version: expected a version name"),
        ({"fw": {}}, "installs.fw.version: expected a version name"),
        ({"fw": "2.0"}, "installs.fw: expected an object"),
        ({"f/w": {"version": "1"}}, "installs: package name 'f/w'"),
        ({"fw": {"version": "1", "attributes": {"k": "a\nb"}}}, "installs.fw.attributes.k"),
        ({"fw": {"version": "1", "attributes": {"k": 1}}}, "installs.fw.attributes.k"),
        ({"fw": {"version": "1", "attributes": {"bad key": "v"}}}, "attribute name 'bad key'"),
        ({"fw": {"version": "1", "attributes": {"k": "x" * 3100}}}, "more than 3 KB"),
        (["fw"], "installs: expected an object of packages"),
    ],
)
def test_a_bad_installs_entry_names_its_path(installs: Any, message: str) -> None:
    with pytest.raises(InventoryError) as caught:
        JobPackages.from_document({"installs": installs})
    assert message in str(caught.value)


def test_destination_package_versions_mean_aws_reports() -> None:
    arns = [VERSION_ARN.format("firmware", "2.1.0"), VERSION_ARN.format("bootloader", "7")]
    job = JobPackages.from_document({"destinationPackageVersions": arns, "steps": []})
    assert job.reported_by_jobs
    assert job.to_report() == {}
    assert job.targets() == [pkg("firmware", "2.1.0"), pkg("bootloader", "7")]
    with_default = JobPackages.from_document(
        {"destinationPackageVersions": [VERSION_ARN.format("firmware", "$default")]}
    )
    assert with_default.targets() is None  # only the service knows what $default is


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {
                "destinationPackageVersions": [VERSION_ARN.format("fw", "2")],
                "installs": {"fw": {"version": "3"}},
            },
            "installs.fw.version: 3 but destinationPackageVersions deploys 2",
        ),
        (
            {
                "destinationPackageVersions": [VERSION_ARN.format("fw", "2")],
                "installs": {"app": {"version": "1"}}},
            "installs.app: not in destinationPackageVersions",
        ),
        ({"destinationPackageVersions": []}, "a list of 1 to 25 package version ARNs"),
        ({"destinationPackageVersions": ["fw@2"]}, "destinationPackageVersions[0]: expected arn"),
        (
            {"destinationPackageVersions": [VERSION_ARN.format("fw", "1")] * 2},
            "package fw is named twice",
        ),
    ],
)  # fmt: skip
def test_contradicting_package_fields_are_refused(document: Any, message: str) -> None:
    with pytest.raises(InventoryError) as caught:
        JobPackages.from_document(document)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("document", "installed", "expected"),
    [
        ({"installs": {"fw": {"version": "2.1.0"}}}, {"fw": pkg("fw", "2.1.0")}, True),
        ({"installs": {"fw": {"version": "2.1.0"}}}, {"fw": pkg("fw", "2.1.0", slot="b")}, True),
        ({"installs": {"fw": {"version": "2.1.0"}}}, {"fw": pkg("fw", "2.1")}, False),
        ({"installs": {"fw": {"version": "2.1.0"}}}, {"fw": pkg("fw", "2.2.0")}, False),
        ({"installs": {"fw": {"version": "2.1.0"}}}, {}, False),
        (
            {"installs": {"fw": {"version": "2"}, "app": {"version": "5"}}},
            {"fw": pkg("fw", "2"), "app": pkg("app", "4")},
            False,
        ),
        (
            {"destinationPackageVersions": [VERSION_ARN.format("fw", "2")]},
            {"fw": pkg("fw", "2")},
            True,
        ),
        (
            {"destinationPackageVersions": [VERSION_ARN.format("fw", "$null")]},
            {},
            False,
        ),
        ({"installs": {"fw": None}}, {}, False),
        ({"operation": "x"}, {"fw": pkg("fw", "2")}, False),
    ],
)
def test_already_installed(
    document: dict[str, Any], installed: dict[str, PackageVersion], expected: bool
) -> None:
    """Exact version names (no ordering: "2.1" is not "2.1.0"), attributes ignored; removals,
    `$default` and jobs that name nothing are never "already done"."""
    assert already_installed(JobPackages.from_document(document), installed) is expected


# -- local sources -------------------------------------------------------------------------------
def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


async def test_file_source_reads_a_trusted_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "inventory.json",
        json.dumps({"os": {"version": "12.4", "attributes": {"arch": "arm64"}}, "app": None}),
    )
    assert await FileSource(path).read() == {
        "os": pkg("os", "12.4", arch="arm64"),
        "app": pkg("app", None),
    }
    write(path, json.dumps({"os": {"version": "12.4", "vendor": "x"}}))
    with pytest.raises(InventoryError, match=rf"file {path}.os.vendor: unknown key"):
        await FileSource(path).read()
    write(path, "{not json")
    with pytest.raises(InventoryError, match="not JSON"):
        await FileSource(path).read()
    write(path, json.dumps({"a": {"version": "1", "attributes": {"k": "x" * MAX_SOURCE_BYTES}}}))
    with pytest.raises(InventoryError, match="more than 65536 bytes"):
        await FileSource(path).read()
    with pytest.raises(InventoryError, match="No such file"):
        await FileSource(tmp_path / "absent.json").read()


async def test_file_source_refuses_a_file_others_can_change(tmp_path: Path) -> None:
    """The inventory decides whether a job runs at all ("already installed"): a file another
    account can write is refused, naming it."""
    path = write(tmp_path / "inventory.json", json.dumps({"os": {"version": "1"}}), 0o666)
    with pytest.raises(InventoryError, match="is writable by others"):
        await FileSource(path).read()
    with throwaway_user("jinv") as user:
        owned = tmp_path / "owned"
        owned.mkdir()
        os.chown(owned, user.pw_uid, user.pw_gid)
        inside = write(owned / "inventory.json", json.dumps({"os": {"version": "1"}}))
        with pytest.raises(InventoryError, match=f"is owned by uid {user.pw_uid}"):
            await FileSource(inside).read()


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir(mode=0o755)
    return directory


def script(directory: Path, name: str, body: str) -> Path:
    return write(directory / name, "#!/bin/sh\n" + textwrap.dedent(body), 0o755)


async def test_command_source_runs_without_a_shell_or_the_agents_environment(
    bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "do-not-pass")
    command = script(
        bin_dir,
        "list-firmware",
        """\
        printf '{"fw": {"version": "%s", "attributes": {"env": "%s", "args": "%s"}}}' \\
            "$(cat /etc/hostname >/dev/null; echo 3.2.1)" "${SECRET_TOKEN:-none}:$PWD" "$*"
        """,
    )
    found = await CommandSource((str(command), "--json", "a b;c")).read()
    assert found == {"fw": pkg("fw", "3.2.1", env="none:/", args="--json a b;c")}


async def test_command_source_failures_say_why(bin_dir: Path) -> None:
    failing = script(bin_dir, "failing", "echo 'no database' >&2\nexit 3\n")
    with pytest.raises(InventoryError, match="exited with code 3: no database"):
        await CommandSource((str(failing),)).read()
    chatty = script(bin_dir, "chatty", "head -c 200000 /dev/zero | tr '\\0' x\n")
    with pytest.raises(InventoryError, match="more than 65536 bytes"):
        await CommandSource((str(chatty),)).read()
    with pytest.raises(InventoryError, match="must be an absolute path"):
        await CommandSource(("list-firmware",)).read()
    open_dir = bin_dir / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    swappable = script(open_dir, "inv", "echo '{}'\n")
    with pytest.raises(InventoryError, match="is writable by others"):
        await CommandSource((str(swappable),)).read()


async def test_command_source_is_killed_at_its_timeout(bin_dir: Path, tmp_path: Path) -> None:
    """The command and what it started in its session are killed; the read ends."""
    marker = tmp_path / "child.pid"
    slow = script(bin_dir, "slow", f"sleep 300 &\necho $! > {marker}\nwait\n")
    with pytest.raises(InventoryError, match=r"did not finish within 0.5 s \(killed\)"):
        await asyncio.wait_for(CommandSource((str(slow),), timeout=0.5).read(), 20)
    child = int(marker.read_text())
    async with asyncio.timeout(10):
        while _alive(child):
            await asyncio.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = "inventory_plugin_for_tests"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """\
            import asyncio

            async def firmware():
                await asyncio.sleep(0)
                return {"fw": {"version": "9"}}

            class Slots:
                def __init__(self, slot="a"):
                    self.slot = slot

                def read(self):
                    return {"rootfs": {"version": "1", "attributes": {"slot": self.slot}}}

            def broken():
                raise RuntimeError("no EEPROM")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name


async def test_plugin_source(plugin_module: str) -> None:
    assert await PluginSource(f"{plugin_module}:firmware").read() == {"fw": pkg("fw", "9")}
    assert await PluginSource(f"{plugin_module}:Slots", {"slot": "b"}).read() == {
        "rootfs": pkg("rootfs", "1", slot="b")
    }
    with pytest.raises(InventoryError, match="RuntimeError: no EEPROM"):
        await PluginSource(f"{plugin_module}:broken").read()
    with pytest.raises(InventoryError, match="cannot load it"):
        await PluginSource(f"{plugin_module}:absent").read()


async def test_sources_merge_in_order_and_a_failure_loses_nothing_else(
    tmp_path: Path, bin_dir: Path, plugin_module: str
) -> None:
    listing = write(
        tmp_path / "apps.json",
        json.dumps({"app": {"version": "1.0"}, "fw": {"version": "from-file"}}),
    )
    firmware = script(bin_dir, "fw", """echo '{"fw": {"version": "from-command"}}'\n""")
    sources = sources_from_config(
        [
            {"file": str(listing)},
            {"command": [str(firmware)], "timeout_seconds": 5},
            {"file": str(tmp_path / "missing.json")},
            {"plugin": f"{plugin_module}:Slots", "settings": {"slot": "b"}},
        ]
    )
    reading = await read_inventory(sources)
    assert reading.packages == {
        "app": pkg("app", "1.0"),
        "fw": pkg("fw", "from-command"),
        "rootfs": pkg("rootfs", "1", slot="b"),
    }
    assert len(reading.errors) == 1 and "missing.json" in reading.errors[0]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([{"file": "relative.json"}], "inventory.sources[0].file: expected an absolute path"),
        ([{"command": "/bin/inv --json"}], "command: expected a list of strings (no shell)"),
        ([{"file": "/a", "command": ["/b"]}], "exactly one of file, command, plugin"),
        ([{"command": ["/b"], "timeout_seconds": 0}], "timeout_seconds: expected a number"),
        ([{"plugin": "mod.func"}], 'plugin: expected "package.module:name"'),
        ([{"file": "/a", "timeout_seconds": 3}], "timeout_seconds: unknown key for a file"),
        ({"file": "/a"}, "inventory.sources: expected a list"),
    ],
)
def test_source_configuration_errors(config: Any, message: str) -> None:
    with pytest.raises(InventoryError) as caught:
        sources_from_config(config)
    assert message in str(caught.value)


# -- the report, planned --------------------------------------------------------------------------
def test_report_sends_only_what_differs_and_never_removes_what_it_does_not_list() -> None:
    current = ShadowDocument(
        version=4,
        reported={
            "fw": {"version": "2.0", "attributes": {"slot": "a"}},
            "jobs-managed": {"version": "7"},
            "old": {"version": "0.1"},
        },
    )
    plan = plan_report(
        current,
        {
            "fw": pkg("fw", "2.0", slot="a"),
            "app": pkg("app", "1.1"),
            "old": pkg("old", None),
        },
    )
    assert plan.patch == {"old": None, "app": {"version": "1.1"}}
    assert plan.omitted == ()
    assert plan_report(current, {"fw": pkg("fw", "2.0")}).patch == {}  # attributes kept
    assert plan_report(current, {"fw": pkg("fw", "2.0", slot="b")}).patch == {
        "fw": {"version": "2.0", "attributes": {"slot": "b"}}
    }


def test_report_that_would_not_fit_leaves_whole_packages_out() -> None:
    packages = {
        f"pkg-{i:03}": pkg(f"pkg-{i:03}", "1.0.0", description="x" * 60) for i in range(200)
    }
    packages["zz-firmware"] = pkg("zz-firmware", "9")
    plan = plan_report(None, packages, priority=["zz-firmware"])
    assert plan.size <= MAX_STATE_BYTES
    assert "zz-firmware" in plan.patch  # the job's package first
    assert plan.omitted and set(plan.omitted) | set(plan.patch) == set(packages)
    assert all(entry["attributes"]["description"] == "x" * 60 for entry in plan.patch.values()
               if "attributes" in entry)  # fmt: skip


# -- the report, against the emulator ------------------------------------------------------------
@pytest.fixture
def emulator_options() -> dict[str, object]:
    return {"tick_seconds": None, "http_port": 0}


@pytest.fixture
async def device(emulator: Emulator, mosquitto: Mosquitto) -> AsyncIterator[SharedLink]:
    transport = PahoTransport(paho_connection(mosquitto.port), THING)
    await transport.connect(timeout=10)
    link = SharedLink(transport)
    try:
        yield link
    finally:
        link.close()
        await transport.disconnect()


@pytest.fixture
async def shadows(device: SharedLink) -> AsyncIterator[ShadowClient]:
    client = ShadowClient(device.view(), THING, request_timeout=5)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


def get_package_shadow(emulator: Emulator, thing: str = THING) -> dict[str, Any]:
    assert emulator.http_endpoint is not None
    data = client("iot-data", emulator.http_endpoint)
    body = data.get_thing_shadow(thingName=thing, shadowName="$package")["payload"].read()
    document: dict[str, Any] = json.loads(body)
    return document


async def test_report_is_the_documented_document_and_idempotent(
    shadows: ShadowClient, emulator: Emulator
) -> None:
    packages = {"os": pkg("os", "12.4", arch="arm64"), "app": pkg("app", "1.0")}
    result = await report_packages(shadows, packages)
    assert result.sent == {
        "app": {"version": "1.0"},
        "os": {"version": "12.4", "attributes": {"arch": "arm64"}},
    }
    shown = await asyncio.to_thread(get_package_shadow, emulator)
    assert set(shown) == {"state", "version", "timestamp"}
    assert shown["state"] == {
        "reported": {
            "os": {"version": "12.4", "attributes": {"arch": "arm64"}},
            "app": {"version": "1.0"},
        }
    }
    writes = emulator.service.counters["UpdateThingShadow"]
    again = await report_packages(shadows, packages)
    assert again.sent == {} and again.version == result.version
    assert emulator.service.counters["UpdateThingShadow"] == writes  # nothing sent
    gone = await report_packages(shadows, {"app": pkg("app", None)})
    assert gone.sent == {"app": None}
    shown = await asyncio.to_thread(get_package_shadow, emulator)
    assert shown["state"]["reported"] == {
        "os": {"version": "12.4", "attributes": {"arch": "arm64"}}
    }


async def test_report_keeps_what_others_wrote_and_survives_a_concurrent_write(
    shadows: ShadowClient, emulator: Emulator
) -> None:
    """AWS IoT Jobs (here: the service writing `$package` directly) changes the shadow between
    the agent's read and its write: the write's version is stale (409), the agent reads again
    and writes what is still missing, keeping the other writer's package."""
    service = emulator.service.shadows
    service.update(THING, "$package", {"state": {"reported": {"fw": {"version": "1"}}}})
    original_get = shadows.get
    raced = False

    async def get_then_race(name: str | None) -> ShadowDocument:
        nonlocal raced
        document = await original_get(name)
        if not raced:
            raced = True
            service.update(THING, "$package", {"state": {"reported": {"boot": {"version": "7"}}}})
        return document

    shadows.get = get_then_race  # type: ignore[method-assign]
    writes = emulator.service.counters["UpdateThingShadow"]
    result = await report_packages(shadows, {"app": pkg("app", "3")})
    assert raced
    # the race's write, the agent's refused write (409) and its second, accepted one
    assert emulator.service.counters["UpdateThingShadow"] == writes + 3
    assert result.sent == {"app": {"version": "3"}}
    shown = await asyncio.to_thread(get_package_shadow, emulator)
    assert shown["state"]["reported"] == {
        "fw": {"version": "1"},
        "boot": {"version": "7"},
        "app": {"version": "3"},
    }


async def test_a_report_too_large_for_the_shadow_is_accepted_without_the_overflow(
    shadows: ShadowClient, emulator: Emulator
) -> None:
    emulator.service.shadows.update(
        THING, "$package", {"state": {"reported": {"big": {"version": "1", "attributes": {
            "notes": "n" * 3000}}}}}
    )  # fmt: skip
    packages = {f"lib{i:03}": pkg(f"lib{i:03}", "1.0.0", license="MIT") for i in range(150)}
    result = await report_packages(shadows, packages)
    assert result.omitted
    shown = await asyncio.to_thread(get_package_shadow, emulator)
    reported = shown["state"]["reported"]
    assert reported["big"]["attributes"]["notes"] == "n" * 3000
    assert set(reported) == {"big", *result.sent}
    assert set(result.sent).isdisjoint(result.omitted)
    size = len(json.dumps({"desired": None, "reported": reported}, separators=(",", ":")))
    assert size <= MAX_STATE_BYTES


async def test_a_job_with_destination_package_versions_leaves_package_to_aws(
    device: SharedLink, shadows: ShadowClient, emulator: Emulator
) -> None:
    """The whole rule on the wire: the operator deploys with `destinationPackageVersions` and
    copies it into the document; the device sees the copy (and nothing else of the list:
    DescribeJobExecution has no such field), stays silent, and AWS IoT Jobs writes `$package`
    when the execution SUCCEEDS. A job without the list has the agent report its `installs`."""
    assert emulator.http_endpoint is not None
    iot = client("iot", emulator.http_endpoint)
    data = client("iot-jobs-data", emulator.http_endpoint)

    def catalog() -> None:
        iot.create_package(packageName="firmware")
        iot.create_package_version(packageName="firmware", versionName="2.1.0")
        iot.update_package_version(packageName="firmware", versionName="2.1.0", action="PUBLISH")
        iot.update_package_configuration(
            versionUpdateByJobsConfig={"enabled": True, "roleArn": ROLE}
        )
        arns = [VERSION_ARN.format("firmware", "2.1.0")]
        iot.create_job(
            jobId="catalog-deploy",
            targets=[f"arn:aws:iot:{REGION}:123456789012:thing/{THING}"],
            document=json.dumps({"operation": "flash", "destinationPackageVersions": arns}),
            destinationPackageVersions=arns,
        )

    await asyncio.to_thread(catalog)
    jobs = JobsClient(device.view(), THING, request_timeout=5)
    await jobs.start()
    try:
        execution = await jobs.start_next()
        assert execution is not None and execution.job_document is not None
        seen = await asyncio.to_thread(
            data.describe_job_execution, thingName=THING, jobId="catalog-deploy"
        )
        assert "destinationPackageVersions" not in seen["execution"]
        job = JobPackages.from_document(execution.job_document)
        assert job.reported_by_jobs and job.to_report() == {}
        assert job.targets() == [pkg("firmware", "2.1.0")]
        writes = emulator.service.counters["UpdateThingShadow"]
        await jobs.update("catalog-deploy", "SUCCEEDED")
        async with asyncio.timeout(10):
            while emulator.service.shadows.document(THING, "$package") is None:
                await asyncio.sleep(0.01)
        assert emulator.service.counters["UpdateThingShadow"] == writes + 1  # AWS's one write
        shown = await asyncio.to_thread(get_package_shadow, emulator)
        assert shown["state"] == {"reported": {"firmware": {"version": "2.1.0"}}}
        installed = {"firmware": pkg("firmware", "2.1.0")}
        assert already_installed(job, installed)  # a second deployment would skip its steps

        emulator.service.create_job(
            "own-deploy", [THING], {"operation": "flash", "installs": {"app": {"version": "4"}}}
        )
        execution = await jobs.start_next()
        assert execution is not None and execution.job_document is not None
        own = JobPackages.from_document(execution.job_document)
        await jobs.update("own-deploy", "SUCCEEDED")
        await report_packages(shadows, own.to_report(), priority=list(own.installs))
        shown = await asyncio.to_thread(get_package_shadow, emulator)
        assert shown["state"]["reported"] == {
            "firmware": {"version": "2.1.0"},
            "app": {"version": "4"},
        }
    finally:
        await jobs.close()


def test_parse_packages_is_the_one_checker() -> None:
    """Sources, documents and reports share one checker: the catalog's limits."""
    assert parse_packages({"a.b-c_d": {"version": "1.0-rc.1"}}, "x") == {
        "a.b-c_d": pkg("a.b-c_d", "1.0-rc.1")
    }
