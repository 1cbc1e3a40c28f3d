"""The two AWS REST APIs of IoT Jobs, enough for boto3 with any credentials via `endpoint_url`.

* `iot-jobs-data` (the device's HTTPS data plane): GetPendingJobExecutions,
  StartNextPendingJobExecution, DescribeJobExecution, UpdateJobExecution.
* `iot` (the control plane, handlers in control_api.py): jobs (Create, Describe, Update, List,
  Cancel, Delete, GetJobDocument, AssociateTargetsWithJob), job executions (Describe, List for
  thing / for job, Cancel, Delete), job templates (Create, Describe, List, Delete) and managed
  templates (List, Describe), things (Create, Describe, Update), thing groups (static and
  dynamic: Create, Describe, Delete, Add/Remove thing, ListThingsInThingGroup),
  Update/DescribeEventConfigurations, the Software Package Catalog (packages, package versions,
  the package configuration) and streams (Create, Describe, List, Update, Delete).
* `iot-data` (signed as `iotdata`): the Device Shadow REST API (iotdata_api.py).

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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from jobs_agent.emulator import shapes
from jobs_agent.emulator.api_params import bool_param, int_param
from jobs_agent.emulator.control_api import ControlApi
from jobs_agent.emulator.http_routes import (
    ROUTES,
    Request,
    Response,
)
from jobs_agent.emulator.iotdata_api import IotDataApi, error_shape
from jobs_agent.emulator.service import ControlError, JobsService, ServiceError
from jobs_agent.emulator.shadows import ShadowError
from jobs_agent.emulator.shapes import DocumentAs
from jobs_agent.jobs.errors import ErrorCode, InvalidRequestError
from jobs_agent.jobs.models import StartNextRequest, UpdateRequest

log = structlog.get_logger(__name__)

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


class HttpApi:
    """The HTTP server; `start()` binds (port 0 = a free port) and serves in a daemon thread."""

    def __init__(self, service: JobsService, host: str = "127.0.0.1", port: int = 0) -> None:
        self.service = service
        self.control = ControlApi(service)
        self.iotdata = IotDataApi(service.shadows)
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
        for route in ROUTES:
            args = route.match(request)
            if args is not None:
                if request.body_error is not None and not route.raw:
                    raise HttpError(400, "InvalidRequestException", request.body_error)
                return 200, route.handler(self, request, args)
        raise HttpError(
            404,
            "UnknownOperationException",
            f"no operation for {request.method} /{'/'.join(request.segments)}",
        )

    # -- data plane ---------------------------------------------------------------------------
    def get_pending(self, request: Request, thing: str) -> dict[str, Any]:
        self.service.admit("GetPendingJobExecutions")
        return shapes.pending(*self.service.get_pending(thing, request.query.get("namespaceId")))

    def start_next(self, request: Request, thing: str) -> dict[str, Any]:
        self.service.admit("StartNextPendingJobExecution")
        body = StartNextRequest.from_json(request.body)
        delivery = self.service.start_next(
            thing,
            request.query.get("namespaceId"),
            status_details=body.status_details,
            step_timeout_minutes=body.step_timeout_in_minutes,
        )
        if delivery is None:
            return {}
        return {"execution": shapes.execution(delivery, DocumentAs.STRING)}

    def describe_data(self, request: Request, thing: str, job_id: str) -> dict[str, Any]:
        self.service.admit("DescribeJobExecution")
        delivery = self.service.describe(
            thing,
            job_id,
            request.query.get("namespaceId"),
            int_param(request.query, "executionNumber"),
        )
        if delivery is None:
            return {}
        # "Unless set to false, the response contains the job document. The default is true."
        include = bool_param(request.query, "includeJobDocument") is not False
        document = DocumentAs.STRING if include else DocumentAs.OMITTED
        return {"execution": shapes.execution(delivery, document)}

    def update(self, request: Request, thing: str, job_id: str) -> dict[str, Any]:
        self.service.admit("UpdateJobExecution")
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
            reply["executionState"] = shapes.state(result.execution)
        if result.document_text is not None:
            reply["jobDocument"] = result.document_text
        return reply


class _Handler(BaseHTTPRequestHandler):
    api: HttpApi
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    """Headers and body leave in two writes; on a kept-alive connection (boto3 keeps them)
    Nagle held the body until the client's delayed ACK: ~40 ms per request."""
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
        body: Any = {}
        body_error: str | None = None
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            body, body_error = {}, "body is not JSON"
        if not isinstance(body, dict):
            body, body_error = {}, "body must be a JSON object"
        request = Request(self.command, segments, query, body, plane, raw, body_error)
        try:
            return self.api.handle(request)
        except ServiceError as exc:
            error_type, status = _DATA_ERRORS[exc.code]
            extra: dict[str, Any] = {}
            if exc.execution_state is not None:
                extra["executionState"] = shapes.state(exc.execution_state)
            raise HttpError(status, error_type, exc.message, **extra) from None
        except InvalidRequestError as exc:
            raise HttpError(400, "InvalidRequestException", exc.message) from None
        except ControlError as exc:
            raise HttpError(exc.http_status, exc.exception, exc.message) from None
        except ShadowError as exc:
            status, shape = error_shape(exc)
            raise HttpError(status, shape, exc.message, code=exc.code) from None
        except HttpError:
            raise
        except Exception as exc:
            log.exception("emulator_http_failed", path=self.path)
            raise HttpError(503, "ServiceUnavailableException", f"internal error: {exc}") from None

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve
