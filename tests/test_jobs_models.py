"""Wire models: tolerant reply parsing, strict request parsing, exact wire shapes."""

from __future__ import annotations

import json
import re
from typing import Any

import awsiot.iotjobs
import pytest

from jobs_agent.jobs.errors import ErrorCode, InvalidRequestError, ProtocolError
from jobs_agent.jobs.models import (
    DEVICE_SETTABLE_STATUSES,
    TERMINAL_STATUSES,
    DescribeReply,
    DescribeRequest,
    ErrorResponse,
    GetPendingReply,
    GetPendingRequest,
    JobExecution,
    JobExecutionsChangedEvent,
    JobExecutionState,
    JobExecutionStatus,
    JobExecutionSummary,
    NextJobExecutionChangedEvent,
    StartNextReply,
    StartNextRequest,
    UpdateReply,
    UpdateRequest,
    parse_payload,
    parse_timestamp,
)

EXECUTION_WIRE: dict[str, Any] = {
    "jobId": "job-1",
    "thingName": "thing-1",
    "status": "IN_PROGRESS",
    "statusDetails": {"reason": "downloading"},
    "queuedAt": 1700000000,
    "startedAt": 1700000010,
    "lastUpdatedAt": 1700000020,
    "versionNumber": 3,
    "executionNumber": 1,
    "jobDocument": {"steps": [{"action": {"name": "x"}}]},
    "approximateSecondsBeforeTimedOut": 55,
}


def test_job_execution_round_trip_is_the_wire_shape() -> None:
    execution = JobExecution.from_json(EXECUTION_WIRE)
    assert execution.job_id == "job-1"
    assert execution.status is JobExecutionStatus.IN_PROGRESS
    assert execution.queued_at == 1700000000.0
    assert execution.job_document == {"steps": [{"action": {"name": "x"}}]}
    assert execution.approximate_seconds_before_timed_out == 55
    assert execution.to_json() == EXECUTION_WIRE


def test_job_execution_field_names_match_awsiotsdk() -> None:
    """awsiotsdk reads the same camelCase fields into the same snake_case attributes."""
    sdk = awsiot.iotjobs.JobExecutionData.from_payload(EXECUTION_WIRE)
    ours = JobExecution.from_json(EXECUTION_WIRE)
    for attr in ("job_id", "thing_name", "status", "status_details", "version_number"):
        assert getattr(ours, attr) == getattr(sdk, attr), attr
    assert ours.execution_number == sdk.execution_number
    assert ours.job_document == sdk.job_document
    # awsiotsdk turns timestamps into naive local datetimes; we keep epoch seconds.
    assert ours.queued_at == sdk.queued_at.timestamp()


def test_rejected_field_names_match_awsiotsdk() -> None:
    wire = {
        "code": "VersionMismatch",
        "message": "m",
        "clientToken": "tok",
        "timestamp": 1700000000,
        "executionState": {"status": "QUEUED", "versionNumber": 2, "statusDetails": {"a": "b"}},
    }
    sdk = awsiot.iotjobs.RejectedError.from_payload(wire)
    ours = ErrorResponse.from_json(wire)
    assert ours.code == sdk.code == ErrorCode.VERSION_MISMATCH
    assert ours.client_token == sdk.client_token
    assert ours.execution_state is not None
    assert ours.execution_state.version_number == sdk.execution_state.version_number
    assert ours.execution_state.status == sdk.execution_state.status
    assert ours.to_json() == wire


def test_tolerant_parsing_ignores_unknown_and_missing_optional_fields() -> None:
    execution = JobExecution.from_json({"jobId": "j", "status": "QUEUED", "newField": [1]})
    assert execution == JobExecution(job_id="j", status=JobExecutionStatus.QUEUED)
    assert execution.to_json() == {"jobId": "j", "status": "QUEUED"}


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        (1700000000, 1700000000.0),  # seconds
        (1700000000123, 1700000000.123),  # milliseconds
        (1700000000.5, 1700000000.5),  # float seconds
        (1700000000500.0, 1700000000.5),  # float milliseconds
        (0, 0.0),
        (True, None),  # a bool is not a timestamp
        ("1700000000", None),
        (None, None),
    ],
)
def test_timestamps_seconds_or_milliseconds(raw: object, seconds: float | None) -> None:
    parsed = parse_timestamp(raw)
    if seconds is None:
        assert parsed is None
    else:
        assert parsed == pytest.approx(seconds)


def test_job_document_as_json_string_is_accepted() -> None:
    wire = {"jobId": "j", "status": "QUEUED", "jobDocument": json.dumps({"a": 1})}
    assert JobExecution.from_json(wire).job_document == {"a": 1}


@pytest.mark.parametrize(
    "wire",
    [
        {"status": "QUEUED"},  # no jobId
        {"jobId": "j"},  # no status
        {"jobId": 5, "status": "QUEUED"},
        {"jobId": "j", "status": "PAUSED"},  # unknown status
        {"jobId": "j", "status": "QUEUED", "versionNumber": "3"},
        {"jobId": "j", "status": "QUEUED", "versionNumber": True},
        {"jobId": "j", "status": "QUEUED", "statusDetails": {"a": 1}},
        {"jobId": "j", "status": "QUEUED", "jobDocument": "not json"},
        {"jobId": "j", "status": "QUEUED", "jobDocument": [1, 2]},
        [1, 2],
        "text",
    ],
)
def test_malformed_required_fields_raise_protocol_error(wire: object) -> None:
    with pytest.raises(ProtocolError):
        JobExecution.from_json(wire)


def test_job_executions_changed_event() -> None:
    wire = {
        "jobs": {
            "QUEUED": [{"jobId": "a", "queuedAt": 1, "versionNumber": 1, "executionNumber": 1}],
            "IN_PROGRESS": [{"jobId": "b", "lastUpdatedAt": 1700000000000}],
            "SOMETHING_NEW": [{"jobId": "c"}],
        },
        "timestamp": 1700000000,
    }
    event = JobExecutionsChangedEvent.from_json(wire)
    assert set(event.jobs) == {JobExecutionStatus.QUEUED, JobExecutionStatus.IN_PROGRESS}
    assert event.jobs[JobExecutionStatus.QUEUED][0].job_id == "a"
    assert event.jobs[JobExecutionStatus.IN_PROGRESS][0].last_updated_at == 1700000000.0
    assert JobExecutionsChangedEvent.from_json({}).jobs == {}
    assert JobExecutionsChangedEvent.from_json(event.to_json()) == event
    with pytest.raises(ProtocolError):
        JobExecutionsChangedEvent.from_json({"jobs": {"QUEUED": {"jobId": "a"}}})
    with pytest.raises(ProtocolError):
        JobExecutionsChangedEvent.from_json({"jobs": {"QUEUED": [{"nojobid": 1}]}})


def test_next_job_execution_changed_event() -> None:
    empty = NextJobExecutionChangedEvent.from_json({"timestamp": 5})
    assert empty.execution is None and empty.timestamp == 5.0
    assert empty.to_json() == {"timestamp": 5}
    full = NextJobExecutionChangedEvent.from_json({"execution": EXECUTION_WIRE, "timestamp": 5})
    assert full.execution is not None and full.execution.job_id == "job-1"
    assert full.to_json() == {"execution": EXECUTION_WIRE, "timestamp": 5}


def test_replies_round_trip() -> None:
    summary = JobExecutionSummary("a", queued_at=1.0, version_number=1, execution_number=2)
    replies: list[Any] = [
        GetPendingReply((summary,), (), client_token="t", timestamp=10.0),
        StartNextReply(None, client_token="t"),
        StartNextReply(JobExecution.from_json(EXECUTION_WIRE), client_token="t"),
        DescribeReply(JobExecution.from_json(EXECUTION_WIRE), timestamp=3.25),
        UpdateReply(JobExecutionState(JobExecutionStatus.SUCCEEDED, {"k": "v"}, 4), {"a": 1}),
        UpdateReply(client_token="t"),
        ErrorResponse(ErrorCode.REQUEST_THROTTLED, "slow down", "t", 1.0),
    ]
    for reply in replies:
        assert type(reply).from_json(json.loads(json.dumps(reply.to_json()))) == reply
    assert GetPendingReply((summary,), ()).to_json() == {
        "inProgressJobs": [{"jobId": "a", "queuedAt": 1, "versionNumber": 1, "executionNumber": 2}],
        "queuedJobs": [],
    }
    assert StartNextReply(None, client_token="t", timestamp=2.0).to_json() == {
        "clientToken": "t",
        "timestamp": 2,
    }


def test_error_response_keeps_unknown_codes() -> None:
    reply = ErrorResponse.from_json({"code": "BrandNew", "message": "?"})
    assert reply.code == "BrandNew"
    with pytest.raises(ProtocolError):
        ErrorResponse.from_json({"message": "no code"})


def test_status_sets() -> None:
    assert JobExecutionStatus.QUEUED not in TERMINAL_STATUSES
    assert JobExecutionStatus.IN_PROGRESS not in TERMINAL_STATUSES
    assert len(TERMINAL_STATUSES) == 6
    assert {str(s) for s in DEVICE_SETTABLE_STATUSES} == {
        "IN_PROGRESS",
        "SUCCEEDED",
        "FAILED",
        "REJECTED",
    }


# -- requests: strict, for the emulator -------------------------------------------------------
def test_update_request_round_trip_is_the_wire_shape() -> None:
    wire = {
        "status": "IN_PROGRESS",
        "statusDetails": {"reason": "ok"},
        "expectedVersion": 2,
        "executionNumber": 1,
        "includeJobExecutionState": True,
        "includeJobDocument": False,
        "stepTimeoutInMinutes": -1,
        "clientToken": "tok",
    }
    request = UpdateRequest.from_json(wire)
    assert request.status is JobExecutionStatus.IN_PROGRESS
    assert request.step_timeout_in_minutes == -1
    assert request.to_json() == wire
    assert UpdateRequest(JobExecutionStatus.FAILED).to_json() == {"status": "FAILED"}


def test_other_requests_round_trip() -> None:
    assert GetPendingRequest.from_json({}).to_json() == {}
    assert GetPendingRequest.from_json({"clientToken": "a"}).client_token == "a"
    sn = {"statusDetails": {"k": "v"}, "stepTimeoutInMinutes": 10080, "clientToken": "c"}
    assert StartNextRequest.from_json(sn).to_json() == sn
    de = {"executionNumber": 3, "includeJobDocument": False, "clientToken": "c"}
    assert DescribeRequest.from_json(de).to_json() == de
    assert DescribeRequest.from_json({}).include_job_document is None


@pytest.mark.parametrize(
    ("model", "wire"),
    [
        (UpdateRequest, {}),  # status is required on every update
        (UpdateRequest, {"status": "DONE"}),
        (UpdateRequest, {"status": 1}),
        (UpdateRequest, {"status": "FAILED", "expectedVersion": "1"}),
        (UpdateRequest, {"status": "FAILED", "expectedVersion": 1.0}),
        (UpdateRequest, {"status": "FAILED", "includeJobDocument": "yes"}),
        (UpdateRequest, {"status": "FAILED", "stepTimeoutInMinutes": 0}),
        (UpdateRequest, {"status": "FAILED", "stepTimeoutInMinutes": 10081}),
        (UpdateRequest, {"status": "FAILED", "statusDetails": {"k": "a\nb"}}),
        (UpdateRequest, {"status": "FAILED", "statusDetails": {"bad key": "v"}}),
        (UpdateRequest, {"status": "FAILED", "statusDetails": "text"}),
        (StartNextRequest, {"stepTimeoutInMinutes": -1}),  # clearing only on update
        (StartNextRequest, {"statusDetails": {"k": ""}}),
        (DescribeRequest, {"executionNumber": "1"}),
        (DescribeRequest, {"includeJobDocument": 1}),
        (GetPendingRequest, {"clientToken": 5}),
        (GetPendingRequest, {"clientToken": "x" * 65}),
        (GetPendingRequest, {"clientToken": ""}),
        (GetPendingRequest, [1]),
    ],
)
def test_bad_requests_raise_invalid_request(model: Any, wire: object) -> None:
    with pytest.raises(InvalidRequestError) as info:
        model.from_json(wire)
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert info.value.message


@pytest.mark.parametrize("payload", [b"{", b"[1]", b'"s"', b"\xff\xfe", b"null"])
def test_parse_payload_answers_invalid_json(payload: bytes) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_payload(payload)
    assert info.value.code is ErrorCode.INVALID_JSON


def test_parse_payload_accepts_objects_and_empty() -> None:
    assert parse_payload(b"") == {}
    assert parse_payload(b'{"clientToken": "a"}') == {"clientToken": "a"}


@pytest.mark.parametrize("bad", ["succeeded", "", "RUNNING", None, ["SUCCEEDED"], 1])
def test_the_status_and_state_lookups_are_the_enums_own(bad: Any) -> None:
    """`job_execution_status` and `execution_state` (dict lookups, issue 18) give the member
    the enum gives, for its value or itself, and refuse what it refuses, with its error."""
    from jobs_agent.engine.lifecycle import ExecutionState, execution_state
    from jobs_agent.vocabulary import job_execution_status

    for status in JobExecutionStatus:
        assert job_execution_status(status.value) is JobExecutionStatus(status.value) is status
        assert job_execution_status(status) is status
    for state in ExecutionState:
        assert execution_state(state.value) is state and execution_state(state) is state
    for lookup, enum in (
        (job_execution_status, JobExecutionStatus),
        (execution_state, ExecutionState),
    ):
        with pytest.raises(ValueError) as expected:
            enum(bad)
        with pytest.raises(ValueError, match=re.escape(str(expected.value))):
            lookup(bad)


class _Text(str):
    """Text that is not plain JSON's `str`: read by the readers' general path."""


DECODED: list[tuple[Any, object]] = [
    (JobExecution, EXECUTION_WIRE),
    (JobExecution, {"jobId": _Text("j"), "status": _Text("QUEUED"), "versionNumber": 3.0}),
    (JobExecution, {"jobId": "j", "status": "QUEUED", "queuedAt": 1.7e12, "executionNumber": 2}),
    (JobExecution, {"jobId": "j", "status": "QUEUED", "versionNumber": 2.5}),
    (JobExecution, {"jobId": "j", "status": "QUEUED", "executionNumber": 0}),
    (JobExecution, {"jobId": "../x", "status": "QUEUED"}),
    (JobExecution, {"jobId": "j", "status": 5}),
    (JobExecution, {"jobId": None, "status": "QUEUED"}),
    (JobExecutionSummary, {"jobId": "j", "queuedAt": True, "versionNumber": 2**64}),
    (JobExecutionsChangedEvent, {"jobs": {"QUEUED": [{"jobId": "j"}], "PAUSED": []}}),
    (StartNextReply, {"execution": EXECUTION_WIRE, "clientToken": "t", "timestamp": 1}),
    (UpdateReply, {"clientToken": _Text("t"), "timestamp": 1700000000}),
    (ErrorResponse, {"code": "InvalidRequest", "executionState": {"status": "FAILED"}}),
    (UpdateRequest, {"status": "SUCCEEDED", "expectedVersion": 3.0, "clientToken": ""}),
    (UpdateRequest, {"status": "SUCCEEDED", "stepTimeoutInMinutes": -1, "clientToken": "t"}),
    (StartNextRequest, {"stepTimeoutInMinutes": -1}),
]


def _read_field_by_field(model: Any, wire: object) -> Any:
    """What `from_json` did before each class had a decoder: the same readers, in a loop."""
    from jobs_agent.jobs import codec

    o = wire if type(wire) is dict else codec.as_object(wire, model.WHAT, model.ERROR)
    specs = codec._specs(model)
    return model(**{name: spec.read(o, spec.key, model.ERROR) for name, spec in specs})


@pytest.mark.parametrize(("model", "wire"), DECODED)
def test_a_models_decoder_reads_and_refuses_as_its_fields_readers_do(
    model: Any, wire: object
) -> None:
    """Each class's decoder (written once per class, round 18) gives what its fields' readers
    give when called one by one, and refuses with the same error and words."""
    try:
        expected = _read_field_by_field(model, wire)
    except Exception as exc:
        with pytest.raises(type(exc)) as raised:
            model.from_json(wire)
        assert str(raised.value) == str(exc)
    else:
        assert model.from_json(wire) == expected


def test_a_model_with_a_field_off_the_wire_is_decoded_by_keywords() -> None:
    """A decoder calls its class with positional arguments only where the fields it reads are
    `__init__`'s parameters in order; otherwise by name, the others left to their defaults."""
    from jobs_agent.datamodel import model
    from jobs_agent.jobs.codec import WireModel, integer, text, wire

    @model(slots=True)
    class Partly(WireModel):
        local: int = 7  # not on the wire
        kept: str | None = wire("kept", text)
        counted: int | None = wire("n", integer)

    assert Partly.from_json({"kept": "k", "n": 3}) == Partly(7, "k", 3)
    assert Partly.from_json({}) == Partly()
