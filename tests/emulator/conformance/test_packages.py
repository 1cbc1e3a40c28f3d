"""Software Package Catalog: packages, versions, the package configuration, and jobs with
`destinationPackageVersions` writing the reserved named shadow `$package`.

Pages: developer guide preparing-to-use-software-package-catalog.html (version lifecycle,
default version, version attributes, reserved named shadow) and preparing-jobs-for-service-
package-catalog.html (substitution parameters, `$default`, naming packages when deploying,
`$null`); API reference API_CreatePackage.html, API_CreatePackageVersion.html,
API_UpdatePackage.html, API_UpdatePackageVersion.html, API_DeletePackage.html,
API_DeletePackageVersion.html, API_UpdatePackageConfiguration.html,
API_VersionUpdateByJobsConfig.html and API_CreateJob.html (destinationPackageVersions).
boto3's `iot` client drives them; a raw MQTT peer plays the device.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jobs_agent.emulator import JobsService
from jobs_agent.emulator.embedded import EmbeddedEmulator
from jobs_agent.emulator.http_api import HttpApi
from jobs_agent.emulator.model import ExecutionStatus
from tests.emulator.conformance.conftest import ARN, Device, client

ROLE = "arn:aws:iam::123456789012:role/PackageCatalogJobs"
VERSION_ARN = "arn:aws:iot:eu-west-1:123456789012:package/{}/version/{}"


def publish(iot: Any, package: str, version: str, **attributes: str) -> None:
    iot.create_package_version(
        packageName=package, versionName=version, attributes=attributes or {"k": "v"}
    )
    iot.update_package_version(packageName=package, versionName=version, action="PUBLISH")


def test_version_lifecycle(iot: Any) -> None:
    """draft -> published -> deprecated -> published; attributes and the artifact change only
    in draft, the description always; only a published or deprecated version can be the
    default (preparing-to-use-software-package-catalog.html, Package version lifecycle and
    Default version; API_UpdatePackageVersion.html)."""
    created = iot.create_package(packageName="fw", description="firmware")
    assert created["packageArn"] == "arn:aws:iot:eu-west-1:123456789012:package/fw"
    version = iot.create_package_version(
        packageName="fw", versionName="1.0.0", attributes={"os": "linux"}, description="one"
    )
    assert version["status"] == "DRAFT"
    assert version["packageVersionArn"] == VERSION_ARN.format("fw", "1.0.0")
    with pytest.raises(iot.exceptions.ConflictException):
        iot.update_package(packageName="fw", defaultVersionName="1.0.0")
    iot.update_package_version(packageName="fw", versionName="1.0.0", attributes={"os": "rtos"})
    iot.update_package_version(packageName="fw", versionName="1.0.0", action="PUBLISH")
    with pytest.raises(iot.exceptions.ConflictException):
        iot.update_package_version(packageName="fw", versionName="1.0.0", attributes={"a": "b"})
    iot.update_package_version(packageName="fw", versionName="1.0.0", description="still ok")
    iot.update_package(packageName="fw", defaultVersionName="1.0.0")
    assert iot.get_package(packageName="fw")["defaultVersionName"] == "1.0.0"
    iot.update_package_version(packageName="fw", versionName="1.0.0", action="DEPRECATE")
    got = iot.get_package_version(packageName="fw", versionName="1.0.0")
    assert (got["status"], got["attributes"], got["description"]) == (
        "DEPRECATED",
        {"os": "rtos"},
        "still ok",
    )
    with pytest.raises(iot.exceptions.ConflictException):
        iot.update_package_version(packageName="fw", versionName="1.0.0", action="DEPRECATE")
    iot.update_package_version(packageName="fw", versionName="1.0.0", action="PUBLISH")
    listed = iot.list_package_versions(packageName="fw", status="PUBLISHED")
    assert [v["versionName"] for v in listed["packageVersionSummaries"]] == ["1.0.0"]


def test_deleting_needs_the_versions_gone_and_no_default(iot: Any) -> None:
    """ "If you use an API call to delete software packages, you must delete the package
    versions first"; a default version must be unnamed before it is deleted; deleting what is
    not there succeeds (neither Delete operation lists ResourceNotFoundException)
    (preparing-to-use-software-package-catalog.html, Deleting a software package)."""
    iot.create_package(packageName="app")
    publish(iot, "app", "2.0")
    iot.update_package(packageName="app", defaultVersionName="2.0")
    with pytest.raises(iot.exceptions.ValidationException):
        iot.delete_package(packageName="app")
    with pytest.raises(iot.exceptions.ValidationException):
        iot.delete_package_version(packageName="app", versionName="2.0")
    iot.update_package(packageName="app", unsetDefaultVersion=True)
    iot.delete_package_version(packageName="app", versionName="2.0")
    iot.delete_package(packageName="app")
    iot.delete_package(packageName="app")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.get_package(packageName="app")


def test_names_attributes_and_repeats_are_checked(iot: Any) -> None:
    """packageName/versionName `[a-zA-Z0-9-_.]+`, attributes 3 KB in all, the same name twice
    is a ConflictException unless the request repeats its clientToken (API_CreatePackage.html,
    API_CreatePackageVersion.html; version attributes 3KB: preparing-to-use-software-package-
    catalog.html)."""
    iot.create_package(packageName="p", clientToken="c" * 36)
    iot.create_package(packageName="p", clientToken="c" * 36)  # a retried request
    with pytest.raises(iot.exceptions.ConflictException):
        iot.create_package(packageName="p")
    with pytest.raises(iot.exceptions.ValidationException):
        iot.create_package_version(packageName="p", versionName="1", attributes={"a": "x" * 3100})
    with pytest.raises(iot.exceptions.ValidationException):
        iot.create_package_version(packageName="missing", versionName="1")
    for index in range(3):
        iot.create_package(packageName=f"q{index}")
    first = iot.list_packages(maxResults=2)
    second = iot.list_packages(maxResults=2, nextToken=first["nextToken"])
    names = [p["packageName"] for p in first["packageSummaries"] + second["packageSummaries"]]
    assert names == ["p", "q0", "q1", "q2"]


def test_create_job_checks_its_destination_versions(iot: Any) -> None:
    """ "The package version must be in either the Published or Deprecated state when the job
    deploys"; up to 25 ARNs; `$default` names the package's default version, shown as given
    with beforeSubstitution (API_CreateJob.html destinationPackageVersions;
    preparing-jobs-for-service-package-catalog.html, Package Version and DescribeJob
    views)."""
    iot.create_package(packageName="fw")
    iot.create_package_version(packageName="fw", versionName="draft")
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_job(
            jobId="j0",
            targets=[ARN.format("t")],
            document="{}",
            destinationPackageVersions=[VERSION_ARN.format("fw", "draft")],
        )
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.create_job(
            jobId="j1",
            targets=[ARN.format("t")],
            document="{}",
            destinationPackageVersions=[VERSION_ARN.format("fw", "9.9")],
        )
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_job(
            jobId="j2",
            targets=[ARN.format("t")],
            document="{}",
            destinationPackageVersions=[VERSION_ARN.format(f"p{i}", "1") for i in range(26)],
        )
    publish(iot, "fw", "1.1")
    iot.update_package(packageName="fw", defaultVersionName="1.1")
    iot.create_job(
        jobId="j3",
        targets=[ARN.format("t")],
        document="{}",
        destinationPackageVersions=[VERSION_ARN.format("fw", "$default")],
    )
    job = iot.describe_job(jobId="j3")["job"]
    assert job["destinationPackageVersions"] == [VERSION_ARN.format("fw", "1.1")]
    before = iot.describe_job(jobId="j3", beforeSubstitution=True)["job"]
    assert before["destinationPackageVersions"] == [VERSION_ARN.format("fw", "$default")]


def test_substitution_parameters_are_resolved_in_the_document(iot: Any, data: Any) -> None:
    """`${aws:iot:package:P:version:V:attributes:KEY}`, all attributes with `...:attributes`,
    the empty names of a single-package job, and the artifact's presigned URL; GetJobDocument
    with beforeSubstitution shows the placeholders; a package the document names but
    destinationPackageVersions does not is an error (preparing-jobs-for-service-package-
    catalog.html, Substitution parameters, Artifact version attribute, Naming the packages)."""
    iot.create_package(packageName="fw")
    iot.create_package_version(
        packageName="fw",
        versionName="2.1.5",
        attributes={"s3URL": "https://bucket.s3.amazonaws.com/fw.bin", "signature": "abc"},
        artifact={"s3Location": {"bucket": "bucket", "key": "fw.bin", "version": "1"}},
    )
    iot.update_package_version(packageName="fw", versionName="2.1.5", action="PUBLISH")
    document = {
        "url": "${aws:iot:package:fw:version:2.1.5:attributes:s3URL}",
        "signature": "sig=${aws:iot:package::version::attributes:signature}",
        "attributes": "${aws:iot:package::version::attributes}",
        "artifact": "${aws:iot:package:fw:version:2.1.5:artifact-location:s3-presigned-url}",
    }
    iot.create_job(
        jobId="sub",
        targets=[ARN.format("t")],
        document=json.dumps(document),
        destinationPackageVersions=[VERSION_ARN.format("fw", "2.1.5")],
        presignedUrlConfig={"roleArn": ROLE, "expiresInSec": 600},
    )
    delivered = json.loads(
        data.describe_job_execution(thingName="t", jobId="sub")["execution"]["jobDocument"]
    )
    assert delivered["url"] == "https://bucket.s3.amazonaws.com/fw.bin"
    assert delivered["signature"] == "sig=abc"
    assert delivered["attributes"] == {
        "s3URL": "https://bucket.s3.amazonaws.com/fw.bin",
        "signature": "abc",
    }
    assert delivered["artifact"].startswith("https://bucket.s3.amazonaws.com/fw.bin?")
    assert "X-Amz-Expires=600" in delivered["artifact"]
    before = json.loads(iot.get_job_document(jobId="sub", beforeSubstitution=True)["document"])
    assert before == document
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_job(
            jobId="other",
            targets=[ARN.format("t")],
            document=json.dumps({"u": "${aws:iot:package:app:version:1:attributes:x}"}),
            destinationPackageVersions=[VERSION_ARN.format("fw", "2.1.5")],
        )


@pytest.fixture
async def catalog(emulator: EmbeddedEmulator) -> AsyncIterator[tuple[Any, Device]]:
    """boto3 `iot` on the emulator's own HTTP planes, and a raw MQTT device `dev1`."""
    api = HttpApi(emulator.service, "127.0.0.1", 0)
    api.start()
    assert api.endpoint is not None
    device = Device(emulator.bus, "dev1")
    await device.start("$aws/things/dev1/shadow/name/$package/update/#")
    try:
        yield client("iot", api.endpoint), device
    finally:
        await device.transport.disconnect()
        api.stop()


async def run_job(device: Device, status: str = "SUCCEEDED") -> list[tuple[str, Any]]:
    """The device takes the next job and ends it with `status`; what else it received."""
    device.seen = []
    kind, reply = await device.request("start-next")
    assert kind == "accepted"
    job_id = reply["execution"]["jobId"]
    kind, _ = await device.request(f"{job_id}/update", {"status": status})
    assert kind == "accepted"
    return device.seen


PACKAGE_ACCEPTED = "$aws/things/dev1/shadow/name/$package/update/accepted"


async def test_a_succeeded_execution_writes_the_package_shadow(
    catalog: tuple[Any, Device], emulator: EmbeddedEmulator
) -> None:
    """ "If configured, Jobs updates the thing's reserved named shadow with the package version
    information up on successful job completion" (API_VersionUpdateByJobsConfig.html); the
    shadow is `reported.<packageName>.version` (preparing-to-use-software-package-catalog.html,
    Structure of the $package shadow) and its update is published as any shadow update is."""
    iot, device = catalog
    await asyncio.to_thread(iot.create_package, packageName="fw")
    await asyncio.to_thread(publish, iot, "fw", "3.0")
    await asyncio.to_thread(
        iot.update_package_configuration,
        versionUpdateByJobsConfig={"enabled": True, "roleArn": ROLE},
    )
    await asyncio.to_thread(
        iot.create_job,
        jobId="deploy",
        targets=[ARN.format("dev1")],
        document="{}",
        destinationPackageVersions=[VERSION_ARN.format("fw", "3.0")],
    )
    received = await run_job(device)
    (accepted,) = [p for t, p in received if t == PACKAGE_ACCEPTED]
    assert accepted["state"] == {"reported": {"fw": {"version": "3.0"}}}
    assert emulator.service.shadows.get("dev1", "$package")["state"] == {
        "reported": {"fw": {"version": "3.0"}}
    }
    config = await asyncio.to_thread(iot.get_package_configuration)
    assert config["versionUpdateByJobsConfig"] == {"enabled": True, "roleArn": ROLE}


async def test_the_shadow_keeps_attributes_and_null_removes_a_package(
    catalog: tuple[Any, Device], emulator: EmbeddedEmulator
) -> None:
    """The job writes the version only ("Version attributes ... will not be automatically added
    to the reserved named shadow"); `$null` "prompts the AWS IoT Jobs service to remove the
    existing software package and package version from the device's reserved named shadow"
    (preparing-to-use-software-package-catalog.html, Version attributes;
    preparing-jobs-for-service-package-catalog.html, Uninstalling a software package)."""
    iot, device = catalog
    shadows = emulator.service.shadows
    shadows.update(
        "dev1",
        "$package",
        {
            "state": {
                "reported": {
                    "fw": {"version": "1.0", "attributes": {"slot": "a"}},
                    "old": {"version": "0.1"},
                }
            }
        },
    )
    for name, version in (("fw", "2.0"), ("old", "0.1")):
        await asyncio.to_thread(iot.create_package, packageName=name)
        await asyncio.to_thread(publish, iot, name, version)
    await asyncio.to_thread(
        iot.update_package_configuration, versionUpdateByJobsConfig={"enabled": True}
    )
    await asyncio.to_thread(
        iot.create_job,
        jobId="swap",
        targets=[ARN.format("dev1")],
        document="{}",
        destinationPackageVersions=[
            VERSION_ARN.format("fw", "2.0"),
            VERSION_ARN.format("old", "$null"),
        ],
    )
    received = await run_job(device)
    written = [p for t, p in received if t == PACKAGE_ACCEPTED][-1]
    assert written["state"] == {"reported": {"fw": {"version": "2.0"}, "old": None}}
    assert shadows.get("dev1", "$package")["state"] == {
        "reported": {"fw": {"version": "2.0", "attributes": {"slot": "a"}}}
    }


async def test_no_shadow_write_unless_configured_and_succeeded(
    catalog: tuple[Any, Device], emulator: EmbeddedEmulator
) -> None:
    """Without versionUpdateByJobsConfig enabled the shadow is not touched ("If configured"),
    nor after a FAILED execution ("when the job successfully completes"); a destination
    version deleted before the success makes the update fail ("you will receive an error
    message when the job successfully completes and attempts to update the reserved named
    shadow", preparing-to-use-software-package-catalog.html, Deleted)."""
    iot, device = catalog
    service = emulator.service
    await asyncio.to_thread(iot.create_package, packageName="fw")
    await asyncio.to_thread(publish, iot, "fw", "1")
    await asyncio.to_thread(publish, iot, "fw", "2")
    for job_id, version in (("off", "1"), ("failing", "1"), ("gone", "2")):
        await asyncio.to_thread(
            iot.create_job,
            jobId=job_id,
            targets=[ARN.format("dev1")],
            document="{}",
            destinationPackageVersions=[VERSION_ARN.format("fw", version)],
        )
    await run_job(device)  # "off": the configuration is not enabled
    await asyncio.to_thread(
        iot.update_package_configuration, versionUpdateByJobsConfig={"enabled": True}
    )
    await run_job(device, "FAILED")
    await asyncio.to_thread(iot.delete_package_version, packageName="fw", versionName="2")
    await run_job(device)
    await service.wait_for_status("gone", "dev1", ExecutionStatus.SUCCEEDED)
    await device.published()  # every answer so far is out
    assert service.shadows.document("dev1", "$package") is None
    assert service.counters["PackageShadowUpdateFailed"] == 1


def test_package_catalog_survives_a_restart_with_state(tmp_path: Any) -> None:
    """`--state` keeps packages, versions and the package configuration (docs/emulator.md)."""
    from jobs_agent.emulator import ManualClock
    from jobs_agent.emulator.store import StateStore

    store = StateStore(tmp_path / "state.db")
    first = JobsService(ManualClock(), store=store)
    first.packages.create_package("fw", "firmware")
    first.packages.create_version("fw", "1", attributes={"a": "b"})
    first.packages.update_version("fw", "1", action="PUBLISH")
    first.packages.update_package("fw", default_version="1")
    first.packages.update_configuration(True, ROLE)
    store.close()
    store = StateStore(tmp_path / "state.db")
    try:
        second = JobsService(ManualClock(), store=store)
        assert second.packages.get_package("fw").default_version == "1"
        assert second.packages.get_version("fw", "1").attributes == {"a": "b"}
        assert second.packages.configuration() == (True, ROLE)
    finally:
        store.close()
