"""The two AWS REST APIs of IoT Jobs, enough for boto3 with any credentials via `endpoint_url`.

* `iot-jobs-data` (the device's HTTPS data plane): GetPendingJobExecutions,
  StartNextPendingJobExecution, DescribeJobExecution, UpdateJobExecution.
* `iot` (the control plane): CreateJob, DescribeJob, GetJobDocument, ListJobs, CancelJob,
  DeleteJob, DescribeJobExecution, ListJobExecutionsForThing, ListJobExecutionsForJob,
  CancelJobExecution, DeleteJobExecution, CreateThing, DescribeThing.

Routes, field names and error status codes are those of botocore's service models (rest-json).
Both APIs share two routes (`GET /things/{thing}/jobs` and `GET /things/{thing}/jobs/{jobId}`);
the request's SigV4 credential scope names the service it was signed for (`.../iot-jobs-data/
aws4_request` or `.../iot/aws4_request`), which is how one port serves both. Unsigned requests
on those two routes go to the data plane. Signatures are not verified.

Errors are rest-json errors: the `x-amzn-ErrorType` header and `__type` in the body name the
error shape, so botocore raises the modelled exception class (`client.exceptions.X`).

Stdlib only: a `ThreadingHTTPServer` in a daemon thread. Every request is one call into the
thread-safe `JobsService`.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from jobs_agent.emulator.model import Execution, ExecutionStatus, Job
from jobs_agent.emulator.service import ControlError, Delivery, JobsService, ServiceError
from jobs_agent.jobs.errors import ErrorCode, InvalidRequestError
from jobs_agent.jobs.models import StartNextRequest, UpdateRequest

log = structlog.get_logger(__name__)

DATA_PLANE = "iot-jobs-data"
CONTROL_PLANE = "iot"
_SCOPE = re.compile(r"Credential=[^/,]+/\d{8}/[^/,]+/([^/,]+)/aws4_request")

_DATA_ERRORS: dict[ErrorCode, tuple[str, int]] = {
    ErrorCode.INVALID_REQUEST: ("InvalidRequestException", 400),
    ErrorCode.INVALID_JSON: ("InvalidRequestException", 400),
    ErrorCode.INVALID_TOPIC: ("InvalidRequestException", 400),
    ErrorCode.RESOURCE_NOT_FOUND: ("ResourceNotFoundException", 404),
    ErrorCode.INVALID_STATE_TRANSITION: ("InvalidStateTransitionException", 409),
    ErrorCode.VERSION_MISMATCH: ("InvalidStateTransitionException", 409),
    ErrorCode.TERMINAL_STATE_REACHED: ("TerminalStateException", 410),
    ErrorCode.REQUEST_THROTTLED: ("ThrottlingException", 429),
    ErrorCode.INTERNAL_ERROR: ("ServiceUnavailableException", 503),
}


class HttpError(Exception):
    def __init__(self, status: int, error_type: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.extra = extra


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    segments: list[str]
    query: dict[str, str]
    body: dict[str, Any]
    plane: str | None


Response = tuple[int, dict[str, Any] | None]
Route = Callable[["HttpApi", Request, list[str]], Response]


def _ms(value: float | None) -> float | None:
    """Control-plane timestamps (DateType): epoch seconds, with the fraction botocore parses."""
    return None if value is None else round(value, 3)


def _secs(value: float | None) -> int | None:
    """Data-plane timestamps (long): whole epoch seconds, as over MQTT (see docs/emulator.md)."""
    return None if value is None else int(value)


def _omit_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _bool_param(query: Mapping[str, str], name: str) -> bool | None:
    value = query.get(name)
    if value is None:
        return None
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise HttpError(400, "InvalidRequestException", f"{name} must be true or false")


def _int_param(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise HttpError(400, "InvalidRequestException", f"{name} must be an integer") from None


def _page(items: list[Any], query: Mapping[str, str]) -> tuple[list[Any], str | None]:
    size = _int_param(query, "maxResults") or 250
    if not 1 <= size <= 250:
        raise HttpError(400, "InvalidRequestException", "maxResults must be 1..250")
    token = query.get("nextToken")
    try:
        start = int(token) if token else 0
    except ValueError:
        raise HttpError(400, "InvalidRequestException", "invalid nextToken") from None
    end = start + size
    return items[start:end], (str(end) if end < len(items) else None)


class HttpApi:
    """The HTTP server; `start()` binds (port 0 = a free port) and serves in a daemon thread."""

    def __init__(self, service: JobsService, host: str = "127.0.0.1", port: int = 0) -> None:
        self.service = service
        self.host = host
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str | None:
        if self._server is None:
            return None
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        return f"http://{host}:{self._server.server_address[1]}"

    def start(self) -> None:
        if self._server is not None:
            return
        api = self

        class Handler(_Handler):
            pass

        Handler.api = api
        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, name="jobs-emulator-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    # -- dispatch -----------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        segs = request.segments
        method = request.method
        n = len(segs)
        data = request.plane != CONTROL_PLANE
        control = request.plane != DATA_PLANE
        if n >= 1 and segs[0] == "things":
            if n == 2 and method == "POST" and control:
                return self.create_thing(request, segs[1])
            if n == 2 and method == "GET" and control:
                return self.describe_thing(segs[1])
            if n == 3 and segs[2] == "jobs" and method == "GET":
                if data:
                    return self.get_pending(request, segs[1])
                return self.list_executions_for_thing(request, segs[1])
            if n == 4 and segs[2] == "jobs":
                if method == "PUT" and segs[3] == "$next" and data:
                    return self.start_next(request, segs[1])
                if method == "GET":
                    if data:
                        return self.describe_data(request, segs[1], segs[3])
                    return self.describe_control(request, segs[1], segs[3])
                if method == "POST" and data:
                    return self.update(request, segs[1], segs[3])
            if n == 5 and segs[2] == "jobs" and segs[4] == "cancel" and method == "PUT":
                return self.cancel_execution(request, segs[1], segs[3])
            if n == 6 and segs[2] == "jobs" and segs[4] == "executionNumber" and method == "DELETE":
                return self.delete_execution(request, segs[1], segs[3], segs[5])
        if n >= 1 and segs[0] == "jobs" and control:
            if n == 1 and method == "GET":
                return self.list_jobs(request)
            if n == 2 and method == "PUT":
                return self.create_job(request, segs[1])
            if n == 2 and method == "GET":
                return self.describe_job(segs[1])
            if n == 2 and method == "DELETE":
                return self.delete_job(request, segs[1])
            if n == 3 and segs[2] == "job-document" and method == "GET":
                return 200, {"document": self.service.job_document(segs[1])}
            if n == 3 and segs[2] == "cancel" and method == "PUT":
                return self.cancel_job(request, segs[1])
            if n == 3 and segs[2] == "things" and method == "GET":
                return self.list_executions_for_job(request, segs[1])
        raise HttpError(
            404, "UnknownOperationException", f"no operation for {method} /{'/'.join(segs)}"
        )

    # -- data plane ---------------------------------------------------------------------------
    def _admit(self, operation: str) -> None:
        self.service.admit(operation)

    def _data_execution(self, delivery: Delivery, include_document: bool) -> dict[str, Any]:
        e = delivery.execution
        return _omit_none(
            jobId=e.job_id,
            thingName=e.thing_name,
            status=e.status.value,
            statusDetails=e.status_details or None,
            queuedAt=_secs(e.queued_at),
            startedAt=_secs(e.started_at),
            lastUpdatedAt=_secs(e.last_updated_at),
            approximateSecondsBeforeTimedOut=delivery.seconds_before_timed_out,
            versionNumber=e.version_number,
            executionNumber=e.execution_number,
            jobDocument=delivery.document_text if include_document else None,
        )

    @staticmethod
    def _data_summary(e: Execution) -> dict[str, Any]:
        return _omit_none(
            jobId=e.job_id,
            queuedAt=_secs(e.queued_at),
            startedAt=_secs(e.started_at),
            lastUpdatedAt=_secs(e.last_updated_at),
            versionNumber=e.version_number,
            executionNumber=e.execution_number,
        )

    def get_pending(self, request: Request, thing: str) -> Response:
        self._admit("GetPendingJobExecutions")
        in_progress, queued = self.service.get_pending(thing, request.query.get("namespaceId"))
        return 200, {
            "inProgressJobs": [self._data_summary(e) for e in in_progress],
            "queuedJobs": [self._data_summary(e) for e in queued],
        }

    def start_next(self, request: Request, thing: str) -> Response:
        self._admit("StartNextPendingJobExecution")
        body = StartNextRequest.from_json(request.body)
        delivery = self.service.start_next(
            thing,
            request.query.get("namespaceId"),
            status_details=body.status_details,
            step_timeout_minutes=body.step_timeout_in_minutes,
        )
        if delivery is None:
            return 200, {}
        return 200, {"execution": self._data_execution(delivery, True)}

    def describe_data(self, request: Request, thing: str, job_id: str) -> Response:
        self._admit("DescribeJobExecution")
        delivery = self.service.describe(
            thing,
            job_id,
            request.query.get("namespaceId"),
            _int_param(request.query, "executionNumber"),
        )
        if delivery is None:
            return 200, {}
        include = bool(_bool_param(request.query, "includeJobDocument"))
        return 200, {"execution": self._data_execution(delivery, include)}

    def update(self, request: Request, thing: str, job_id: str) -> Response:
        self._admit("UpdateJobExecution")
        body = UpdateRequest.from_json(request.body)
        result = self.service.update(
            thing,
            job_id,
            body.status,
            namespace=request.query.get("namespaceId"),
            status_details=body.status_details,
            expected_version=body.expected_version,
            execution_number=body.execution_number,
            step_timeout_minutes=body.step_timeout_in_minutes,
            include_document=bool(body.include_job_document),
        )
        reply: dict[str, Any] = {}
        if body.include_job_execution_state:
            reply["executionState"] = self._state(result.execution)
        if result.document_text is not None:
            reply["jobDocument"] = result.document_text
        return 200, reply

    @staticmethod
    def _state(e: Execution) -> dict[str, Any]:
        return _omit_none(
            status=e.status.value,
            statusDetails=e.status_details or None,
            versionNumber=e.version_number,
        )

    # -- control plane ------------------------------------------------------------------------
    def _job_json(self, job: Job) -> dict[str, Any]:
        counts = self.service.job_counts(job.job_id)
        names = {
            ExecutionStatus.CANCELED: "numberOfCanceledThings",
            ExecutionStatus.SUCCEEDED: "numberOfSucceededThings",
            ExecutionStatus.FAILED: "numberOfFailedThings",
            ExecutionStatus.REJECTED: "numberOfRejectedThings",
            ExecutionStatus.QUEUED: "numberOfQueuedThings",
            ExecutionStatus.IN_PROGRESS: "numberOfInProgressThings",
            ExecutionStatus.REMOVED: "numberOfRemovedThings",
            ExecutionStatus.TIMED_OUT: "numberOfTimedOutThings",
        }
        details = {field: counts.get(status, 0) for status, field in names.items()}
        return _omit_none(
            jobArn=self.service.job_arn(job.job_id),
            jobId=job.job_id,
            targetSelection="SNAPSHOT",
            status=job.status.value,
            forceCanceled=job.force_canceled if job.status.value == "CANCELED" else None,
            reasonCode=job.reason_code,
            comment=job.comment,
            targets=list(job.targets),
            description=job.description,
            createdAt=_ms(job.created_at),
            lastUpdatedAt=_ms(job.last_updated_at),
            completedAt=_ms(job.completed_at),
            jobProcessDetails=details,
            timeoutConfig=None
            if job.in_progress_timeout_minutes is None
            else {"inProgressTimeoutInMinutes": job.in_progress_timeout_minutes},
            namespaceId=job.namespace,
            jobExecutionsRetryConfig={"criteriaList": [c.to_json() for c in job.retry_criteria]}
            if job.retry_criteria
            else None,
            presignedUrlConfig={"expiresInSec": job.presigned_expires_in_sec}
            if job.has_presigned_urls
            else None,
        )

    def _control_execution(self, e: Execution) -> dict[str, Any]:
        return _omit_none(
            jobId=e.job_id,
            status=e.status.value,
            forceCanceled=e.force_canceled if e.status.value == "CANCELED" else None,
            statusDetails={"detailsMap": dict(e.status_details)},
            thingArn=self.service.thing_arn(e.thing_name),
            queuedAt=_ms(e.queued_at),
            startedAt=_ms(e.started_at),
            lastUpdatedAt=_ms(e.last_updated_at),
            executionNumber=e.execution_number,
            versionNumber=e.version_number,
            approximateSecondsBeforeTimedOut=self.service.seconds_before_timed_out(e),
        )

    @staticmethod
    def _control_summary(e: Execution) -> dict[str, Any]:
        return _omit_none(
            status=e.status.value,
            queuedAt=_ms(e.queued_at),
            startedAt=_ms(e.started_at),
            lastUpdatedAt=_ms(e.last_updated_at),
            executionNumber=e.execution_number,
            retryAttempt=e.retry_attempt,
        )

    def create_thing(self, request: Request, thing: str) -> Response:
        payload = request.body.get("attributePayload") or {}
        attributes = payload.get("attributes") if isinstance(payload, dict) else None
        if attributes is not None and not (
            isinstance(attributes, dict) and all(isinstance(v, str) for v in attributes.values())
        ):
            raise HttpError(400, "InvalidRequestException", "attributes must map to strings")
        created = self.service.create_thing(thing, attributes)
        return 200, {
            "thingName": created.name,
            "thingArn": self.service.thing_arn(created.name),
            "thingId": created.name,
        }

    def describe_thing(self, thing: str) -> Response:
        found = self.service.describe_thing(thing)
        return 200, {
            "defaultClientId": found.name,
            "thingName": found.name,
            "thingId": found.name,
            "thingArn": self.service.thing_arn(found.name),
            "attributes": dict(found.attributes),
            "version": found.version,
        }

    def create_job(self, request: Request, job_id: str) -> Response:
        body = request.body
        targets = body.get("targets")
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise HttpError(400, "InvalidRequestException", "targets must be a list of ARNs")
        if body.get("documentSource") is not None:
            raise HttpError(
                400,
                "InvalidRequestException",
                "documentSource (S3) is not supported by the emulator; pass document inline",
            )
        document = body.get("document")
        if not isinstance(document, str):
            raise HttpError(400, "InvalidRequestException", "document (a JSON string) is required")
        if body.get("targetSelection", "SNAPSHOT") != "SNAPSHOT":
            raise HttpError(
                400, "InvalidRequestException", "only SNAPSHOT jobs are supported by the emulator"
            )
        timeout = body.get("timeoutConfig") or {}
        in_progress = timeout.get("inProgressTimeoutInMinutes") if isinstance(timeout, dict) else 0
        if in_progress is not None and (
            isinstance(in_progress, bool) or not isinstance(in_progress, int)
        ):
            raise HttpError(400, "InvalidRequestException", "invalid timeoutConfig")
        retry = body.get("jobExecutionsRetryConfig")
        criteria = None
        if retry is not None:
            criteria = retry.get("criteriaList") if isinstance(retry, dict) else None
            if not isinstance(criteria, list) or not criteria:
                raise HttpError(
                    400, "InvalidRequestException", "jobExecutionsRetryConfig.criteriaList"
                )
        presigned = body.get("presignedUrlConfig") or {}
        expires = presigned.get("expiresInSec") if isinstance(presigned, dict) else None
        description = body.get("description")
        namespace = body.get("namespaceId")
        if description is not None and not isinstance(description, str):
            raise HttpError(400, "InvalidRequestException", "description must be a string")
        if namespace is not None and not isinstance(namespace, str):
            raise HttpError(400, "InvalidRequestException", "namespaceId must be a string")
        job = self.service.create_job(
            job_id,
            targets,
            document,
            namespace=namespace,
            description=description,
            in_progress_timeout_minutes=in_progress,
            retry_config=criteria,
            presigned_expires_in_sec=expires if isinstance(expires, int) else None,
        )
        return 200, _omit_none(
            jobArn=self.service.job_arn(job.job_id), jobId=job.job_id, description=description
        )

    def describe_job(self, job_id: str) -> Response:
        return 200, {"job": self._job_json(self.service.job(job_id))}

    def list_jobs(self, request: Request) -> Response:
        jobs = self.service.list_jobs(request.query.get("status"), request.query.get("namespaceId"))
        page, token = _page(jobs, request.query)
        summaries = [
            _omit_none(
                jobArn=self.service.job_arn(j.job_id),
                jobId=j.job_id,
                targetSelection="SNAPSHOT",
                status=j.status.value,
                createdAt=_ms(j.created_at),
                lastUpdatedAt=_ms(j.last_updated_at),
                completedAt=_ms(j.completed_at),
            )
            for j in page
        ]
        return 200, _omit_none(jobs=summaries, nextToken=token)

    def cancel_job(self, request: Request, job_id: str) -> Response:
        force = bool(_bool_param(request.query, "force"))
        reason, comment = request.body.get("reasonCode"), request.body.get("comment")
        job = self.service.cancel_job(
            job_id,
            force=force,
            reason_code=reason if isinstance(reason, str) else None,
            comment=comment if isinstance(comment, str) else None,
        )
        return 200, _omit_none(
            jobArn=self.service.job_arn(job.job_id), jobId=job.job_id, description=job.description
        )

    def delete_job(self, request: Request, job_id: str) -> Response:
        self.service.delete_job(job_id, force=bool(_bool_param(request.query, "force")))
        return 200, None

    def describe_control(self, request: Request, thing: str, job_id: str) -> Response:
        execution = self.service.execution(
            job_id, thing, _int_param(request.query, "executionNumber")
        )
        return 200, {"execution": self._control_execution(execution)}

    def list_executions_for_thing(self, request: Request, thing: str) -> Response:
        q = request.query
        executions = self.service.executions_for_thing(
            thing, q.get("status"), q.get("namespaceId"), q.get("jobId")
        )
        page, token = _page(executions, q)
        return 200, _omit_none(
            executionSummaries=[
                {"jobId": e.job_id, "jobExecutionSummary": self._control_summary(e)} for e in page
            ],
            nextToken=token,
        )

    def list_executions_for_job(self, request: Request, job_id: str) -> Response:
        executions = self.service.executions_for_job(job_id, request.query.get("status"))
        page, token = _page(executions, request.query)
        return 200, _omit_none(
            executionSummaries=[
                {
                    "thingArn": self.service.thing_arn(e.thing_name),
                    "jobExecutionSummary": self._control_summary(e),
                }
                for e in page
            ],
            nextToken=token,
        )

    def cancel_execution(self, request: Request, thing: str, job_id: str) -> Response:
        body = request.body
        expected = body.get("expectedVersion")
        details = body.get("statusDetails")
        if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)):
            raise HttpError(400, "InvalidRequestException", "expectedVersion must be a number")
        if details is not None and not isinstance(details, dict):
            raise HttpError(400, "InvalidRequestException", "statusDetails must be a map")
        self.service.cancel_execution(
            job_id,
            thing,
            force=bool(_bool_param(request.query, "force")),
            expected_version=expected,
            status_details=details,
        )
        return 200, None

    def delete_execution(self, request: Request, thing: str, job_id: str, number: str) -> Response:
        try:
            execution_number = int(number)
        except ValueError:
            raise HttpError(400, "InvalidRequestException", "executionNumber") from None
        self.service.delete_execution(
            job_id,
            thing,
            execution_number,
            force=bool(_bool_param(request.query, "force")),
            namespace=request.query.get("namespaceId"),
        )
        return 200, None


class _Handler(BaseHTTPRequestHandler):
    api: HttpApi
    protocol_version = "HTTP/1.1"
    server_version = "jobs-agent-emulator"

    def log_message(self, format: str, *args: Any) -> None:
        """The stdlib access log goes to stderr per request; the emulator stays quiet."""

    def _serve(self) -> None:
        try:
            status, body = self._handle()
            payload = b"" if body is None else json.dumps(body).encode("utf-8")
            headers = {"Content-Type": "application/json"}
        except HttpError as exc:
            status = exc.status
            payload = json.dumps(
                {"__type": exc.error_type, "message": exc.message, **exc.extra}
            ).encode("utf-8")
            headers = {"Content-Type": "application/json", "x-amzn-ErrorType": exc.error_type}
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("x-amzn-RequestId", "emulator")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _handle(self) -> Response:
        url = urllib.parse.urlsplit(self.path)
        segments = [urllib.parse.unquote(s) for s in url.path.split("/") if s]
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        match = _SCOPE.search(self.headers.get("Authorization") or "")
        plane = match.group(1) if match else None
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise HttpError(400, "InvalidRequestException", "body is not JSON") from None
        if not isinstance(body, dict):
            raise HttpError(400, "InvalidRequestException", "body must be a JSON object")
        request = Request(self.command, segments, query, body, plane)
        try:
            return self.api.handle(request)
        except ServiceError as exc:
            error_type, status = _DATA_ERRORS[exc.code]
            extra: dict[str, Any] = {}
            if exc.execution_state is not None:
                extra["executionState"] = HttpApi._state(exc.execution_state)
            raise HttpError(status, error_type, exc.message, **extra) from None
        except InvalidRequestError as exc:
            raise HttpError(400, "InvalidRequestException", exc.message) from None
        except ControlError as exc:
            raise HttpError(exc.http_status, exc.exception, exc.message) from None
        except HttpError:
            raise
        except Exception as exc:
            log.exception("emulator_http_failed", path=self.path)
            raise HttpError(503, "ServiceUnavailableException", f"internal error: {exc}") from None

    do_GET = do_PUT = do_POST = do_DELETE = _serve
