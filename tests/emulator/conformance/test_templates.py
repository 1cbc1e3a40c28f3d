"""Job templates, managed templates, documentSource and UpdateJob (issue 15, item 6)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jobs_agent.emulator import JobsService
from jobs_agent.emulator.templates import MANAGED_TEMPLATES
from tests.emulator.conformance.conftest import ARN, REGION

MANAGED_ARN = f"arn:aws:iot:{REGION}::jobtemplate/{{}}:1.0"


def test_managed_templates_are_listed_and_described(iot: Any) -> None:
    """ListManagedJobTemplates and DescribeManagedJobTemplate: name, ARN
    `arn:aws:iot:region::jobtemplate/NAME:1.0`, environments, documentParameters and document
    (Create a job from AWS managed templates by using the AWS CLI,
    job-template-manage-cli-create.html)."""
    listed = iot.list_managed_job_templates()["managedJobTemplates"]
    assert {t["templateName"] for t in listed} == {
        "AWS-Download-File",
        "AWS-Install-Application",
        "AWS-Reboot",
        "AWS-Remove-Application",
        "AWS-Restart-Application",
        "AWS-Run-Command",
        "AWS-Start-Application",
        "AWS-Stop-Application",
    }
    described = iot.describe_managed_job_template(templateName="AWS-Download-File")
    assert described["templateArn"] == MANAGED_ARN.format("AWS-Download-File")
    assert described["environments"] == ["LINUX"]
    assert [(p["key"], p["optional"]) for p in described["documentParameters"]] == [
        ("downloadUrl", False),
        ("filePath", False),
        ("runAsUser", True),
        ("pathToHandler", True),
    ]
    assert json.loads(described["document"])["steps"][0]["action"]["input"] == {
        "handler": "download-file.sh",
        "args": ["${aws:iot:parameter:downloadUrl}", "${aws:iot:parameter:filePath}"],
        "path": "${aws:iot:parameter:pathToHandler}",
    }
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_managed_job_template(templateName="AWS-No-Such")


def test_create_job_from_a_managed_template_renders_its_document(iot: Any, data: Any) -> None:
    """`create-job --job-template-arn arn:aws:iot:region::jobtemplate/AWS-Download-File:1.0
    --document-parameters downloadUrl=...,filePath=...` creates the job with the template's
    description (job-template-manage-cli-create.html); documentParameters are substituted into
    the document (API_CreateJob.html documentParameters)."""
    reply = iot.create_job(
        jobId="dl",
        targets=[ARN.format("t")],
        jobTemplateArn=MANAGED_ARN.format("AWS-Download-File"),
        documentParameters={"downloadUrl": "https://example.com/f.bin", "filePath": "/tmp/f.bin"},
    )
    assert reply["description"] == "A managed job template for downloading a file."
    started = data.start_next_pending_job_execution(thingName="t")["execution"]
    action = json.loads(started["jobDocument"])["steps"][0]["action"]
    assert action["input"]["args"] == ["https://example.com/f.bin", "/tmp/f.bin"]
    # Optional parameters not given: "" under the documented reading (see test_readings.py).
    assert action["input"]["path"] == ""
    assert action["runAsUser"] == ""
    job = iot.describe_job(jobId="dl")["job"]
    assert job["jobTemplateArn"] == MANAGED_ARN.format("AWS-Download-File")
    assert job["documentParameters"]["filePath"] == "/tmp/f.bin"
    before = iot.get_job_document(jobId="dl", beforeSubstitution=True)["document"]
    assert "${aws:iot:parameter:downloadUrl}" in before


@pytest.mark.parametrize("name", sorted(MANAGED_TEMPLATES))
def test_every_managed_template_renders_with_its_example_values(
    name: str, service: JobsService
) -> None:
    """Every managed template of the guide's list renders with its required parameters, and
    no placeholder of a given parameter is left (job-templates-managed.html)."""
    template = MANAGED_TEMPLATES[name]
    parameters = {p.key: p.example for p in template.parameters if not p.optional}
    service.create_job(
        "j", ["t"], job_template_arn=template.arn(REGION), document_parameters=parameters
    )
    text = service.job_document("j")
    assert "${aws:iot:parameter:" not in text
    for value in parameters.values():
        assert value in text


def test_managed_template_parameters_are_checked(iot: Any) -> None:
    """A required parameter missing or an unknown one is refused; documentParameters "can't be
    used with custom job templates" (API_CreateJob.html)."""
    arn = MANAGED_ARN.format("AWS-Download-File")
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_job(
            jobId="a",
            targets=[ARN.format("t")],
            jobTemplateArn=arn,
            documentParameters={"downloadUrl": "x"},
        )
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_job(
            jobId="b",
            targets=[ARN.format("t")],
            jobTemplateArn=arn,
            documentParameters={"downloadUrl": "x", "filePath": "y", "bogus": "z"},
        )
    iot.create_job_template(jobTemplateId="mine", description="d", document='{"op": 1}')
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_job(
            jobId="c",
            targets=[ARN.format("t")],
            jobTemplateArn=iot.describe_job_template(jobTemplateId="mine")["jobTemplateArn"],
            documentParameters={"x": "y"},
        )


def test_custom_templates(iot: Any, data: Any) -> None:
    """CreateJobTemplate, DescribeJobTemplate, ListJobTemplates, DeleteJobTemplate; a job from
    a template gets its document and configurations, which the request may override; a
    template can be made from an existing job (Create custom job templates by using the AWS
    CLI, job-templates-cli.html)."""
    created = iot.create_job_template(
        jobTemplateId="fw",
        description="firmware",
        document='{"operation": "flash"}',
        timeoutConfig={"inProgressTimeoutInMinutes": 30},
    )
    assert created["jobTemplateArn"].endswith(":jobtemplate/fw")
    described = iot.describe_job_template(jobTemplateId="fw")
    assert described["timeoutConfig"] == {"inProgressTimeoutInMinutes": 30}
    assert [t["jobTemplateId"] for t in iot.list_job_templates()["jobTemplates"]] == ["fw"]
    iot.create_job(
        jobId="from-template",
        targets=[ARN.format("t")],
        jobTemplateArn=created["jobTemplateArn"],
        timeoutConfig={"inProgressTimeoutInMinutes": 5},
    )
    job = iot.describe_job(jobId="from-template")["job"]
    assert job["timeoutConfig"] == {"inProgressTimeoutInMinutes": 5}
    assert json.loads(iot.get_job_document(jobId="from-template")["document"]) == {
        "operation": "flash"
    }
    copy = iot.create_job_template(
        jobTemplateId="copy", description="from a job", jobArn=job["jobArn"]
    )
    assert iot.describe_job_template(jobTemplateId="copy")["document"] == '{"operation": "flash"}'
    assert copy["jobTemplateId"] == "copy"
    iot.delete_job_template(jobTemplateId="fw")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_job_template(jobTemplateId="fw")


def test_document_source_is_read_at_creation(iot: Any, service: JobsService, data: Any) -> None:
    """documentSource: "An S3 link ... to the job document" (API_CreateJob.html); "Job
    documents that are specified as Amazon S3 files are retrieved at the time you create the
    job" (manage-job-cli.html). DescribeJob returns documentSource."""
    url = service.put_s3_object("my-bucket", "jobs/doc.json", b'{"operation": "from-s3"}')
    iot.create_job(jobId="s3", targets=[ARN.format("t")], documentSource=url)
    service.put_s3_object("my-bucket", "jobs/doc.json", b'{"operation": "changed"}')
    started = data.start_next_pending_job_execution(thingName="t")["execution"]
    assert json.loads(started["jobDocument"]) == {"operation": "from-s3"}
    assert iot.describe_job(jobId="s3")["documentSource"] == url
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_job(
            jobId="missing",
            targets=[ARN.format("t")],
            documentSource="https://my-bucket.s3.amazonaws.com/none.json",
        )


def test_update_job(iot: Any, service: JobsService) -> None:
    """UpdateJob: "You can update the description, presignedUrlConfig,
    jobExecutionsRolloutConfig, abortConfig, and timeoutConfig fields of a job"
    (manage-job-cli.html, Update a job); a new in-progress timeout applies to executions that
    start afterwards (jobs-configurations-details.html, In-progress timers)."""
    iot.create_job(jobId="j", targets=[ARN.format("t")], document="{}")
    iot.update_job(
        jobId="j",
        description="second",
        timeoutConfig={"inProgressTimeoutInMinutes": 10},
        jobExecutionsRolloutConfig={"maximumPerMinute": 5},
    )
    job = iot.describe_job(jobId="j")["job"]
    assert job["description"] == "second"
    assert job["timeoutConfig"] == {"inProgressTimeoutInMinutes": 10}
    assert job["jobExecutionsRolloutConfig"] == {"maximumPerMinute": 5}
    started = service.start_next("t")
    assert started is not None and started.seconds_before_timed_out == 600
