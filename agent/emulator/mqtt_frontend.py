"""The Jobs MQTT API in front of `JobsService`, over any `Transport`.

It is a privileged client subscribed to `$aws/things/+/jobs/#`: requests are parsed with the
shared protocol module (`agent.jobs.topics`, `agent.jobs.models`), answered on the matching
`/accepted` or `/rejected` topic, and the service's events are published on `notify`,
`notify-next` and their namespaced forms. Over the in-process bus this is the embedded emulator;
over paho it is `jobs-agent sim serve` in front of a real broker.

Replies and events are published in the order they were produced: each publish is started as a
task in FIFO order (a transport queues the packet in its first step), and nothing waits for one
acknowledgement before starting the next, so a broker round trip does not cap the throughput.

An unknown topic below `$aws/things/{thing}/jobs/` is answered with `InvalidTopic` on that topic
plus `/rejected`: the only reply topic a device could have derived from what it published.
Topics ending in `/accepted` or `/rejected` and event topics are never answered, which also keeps
the front end from answering its own replies.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Mapping
from typing import Any

import structlog

from jobs_agent.emulator.model import Execution, ExecutionSummary
from jobs_agent.emulator.service import (
    Delivery,
    JobExecutionsChanged,
    JobsService,
    NextJobExecutionChanged,
    ServiceError,
    ServiceEvent,
)
from jobs_agent.jobs.errors import ErrorCode, InvalidRequestError
from jobs_agent.jobs.models import (
    DescribeReply,
    DescribeRequest,
    ErrorResponse,
    GetPendingReply,
    GetPendingRequest,
    JobExecution,
    JobExecutionState,
    JobExecutionSummary,
    NextJobExecutionChangedEvent,
    StartNextReply,
    StartNextRequest,
    UpdateReply,
    UpdateRequest,
    parse_payload,
)
from jobs_agent.jobs.topics import (
    PREFIX,
    Operation,
    ParsedTopic,
    ReplyKind,
    notify_next_topic,
    notify_topic,
    parse_topic,
    reply_topic,
)
from jobs_agent.transport.base import Message, Transport

log = structlog.get_logger(__name__)

SUBSCRIPTION = "$aws/things/+/jobs/#"
SUMMARY_CACHE_LIMIT = 100_000
_REPLY_LEVELS = frozenset({"accepted", "rejected"})


def _ts(value: float | None) -> int | None:
    """Whole seconds since the epoch, as AWS sends them and awsiotsdk's models expect."""
    return None if value is None else int(value)


def summary(execution: Execution | ExecutionSummary) -> JobExecutionSummary:
    return JobExecutionSummary(
        job_id=execution.job_id,
        queued_at=_ts(execution.queued_at),
        started_at=_ts(execution.started_at),
        last_updated_at=_ts(execution.last_updated_at),
        version_number=execution.version_number,
        execution_number=execution.execution_number,
    )


def execution_state(execution: Execution) -> JobExecutionState:
    return JobExecutionState(
        status=execution.status,
        status_details=execution.status_details or None,
        version_number=execution.version_number,
    )


def wire_execution(delivery: Delivery, include_document: bool = True) -> JobExecution:
    execution = delivery.execution
    return JobExecution(
        job_id=execution.job_id,
        status=execution.status,
        thing_name=execution.thing_name,
        status_details=execution.status_details or None,
        queued_at=_ts(execution.queued_at),
        started_at=_ts(execution.started_at),
        last_updated_at=_ts(execution.last_updated_at),
        version_number=execution.version_number,
        execution_number=execution.execution_number,
        job_document=delivery.document if include_document else None,
        approximate_seconds_before_timed_out=delivery.seconds_before_timed_out,
    )


def _encode(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


class MqttFrontend:
    """Serves the Jobs MQTT API for `service` through `transport` (see the module docstring)."""

    def __init__(self, service: JobsService, transport: Transport) -> None:
        self.service = service
        self.transport = transport
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._started = False
        self._summary_cache: dict[int, tuple[ExecutionSummary, str]] = {}

    async def start(self, connect_timeout: float | None = 30.0) -> None:
        """Connect (if needed), subscribe, and start answering. Idempotent."""
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self.transport.set_message_callback(self._on_message)
        if not self.transport.is_connected:
            await self.transport.connect(connect_timeout)
        await self.transport.subscribe(SUBSCRIPTION)
        self.service.add_listener(self._on_events)
        self._started = True

    async def stop(self) -> None:
        """Stop answering, let queued publishes finish, and disconnect."""
        if not self._started:
            return
        self._started = False
        self.service.remove_listener(self._on_events)
        self.transport.set_message_callback(None)
        await self.drain()
        await self.transport.disconnect()

    async def drain(self) -> None:
        """Wait until every publish started so far has completed."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    # -- outbound ---------------------------------------------------------------------------
    def _send(self, topic: str, obj: Mapping[str, Any]) -> None:
        self._send_raw(topic, _encode(obj))

    def _send_raw(self, topic: str, payload: bytes) -> None:
        task = asyncio.ensure_future(self._publish(topic, payload))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _publish(self, topic: str, payload: bytes) -> None:
        try:
            await self.transport.publish(topic, payload)
        except Exception as exc:  # a lost reply is what a device must survive anyway
            log.warning("emulator_publish_failed", topic=topic, error=str(exc))

    def _summary_json(self, item: ExecutionSummary) -> str:
        """`summary(item).to_json()` encoded, cached per summary object: a thing with a long
        queue gets its whole queue in every `notify`, and re-encoding it each time would make
        draining N jobs cost N^2 encodings."""
        hit = self._summary_cache.get(id(item))
        if hit is not None and hit[0] is item:
            return hit[1]
        if len(self._summary_cache) >= SUMMARY_CACHE_LIMIT:
            self._summary_cache.clear()
        text = json.dumps(summary(item).to_json(), separators=(",", ":"))
        self._summary_cache[id(item)] = (item, text)  # keeps `item` alive: ids stay unique
        return text

    def _notify_payload(self, event: JobExecutionsChanged) -> bytes:
        """JobExecutionsChangedEvent as `JobExecutionsChangedEvent.to_json()` would encode it
        (tests parse it back with the device side's model), from cached summaries. Empty
        lists are left out, so an empty queue is announced as `{"jobs": {}}` as AWS does."""
        parts = []
        for status, items in (("QUEUED", event.queued), ("IN_PROGRESS", event.in_progress)):
            if items:
                joined = ",".join(self._summary_json(item) for item in items)
                parts.append(f'"{status}":[{joined}]')
        text = '{"jobs":{' + ",".join(parts) + '},"timestamp":' + str(_ts(event.timestamp)) + "}"
        return text.encode("utf-8")

    def _on_events(self, events: list[ServiceEvent]) -> None:
        """Service listener: may run in an HTTP worker thread, so hop onto the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._thread:
            self._publish_events(events)
        else:
            loop.call_soon_threadsafe(self._publish_events, events)

    def _publish_events(self, events: list[ServiceEvent]) -> None:
        if not self._started:
            return
        for event in events:
            if isinstance(event, JobExecutionsChanged):
                self._send_raw(
                    notify_topic(event.thing_name, event.namespace), self._notify_payload(event)
                )
            elif isinstance(event, NextJobExecutionChanged):
                next_event = NextJobExecutionChangedEvent(
                    execution=None if event.execution is None else wire_execution(event.execution),
                    timestamp=_ts(event.timestamp),
                )
                self._send(
                    notify_next_topic(event.thing_name, event.namespace), next_event.to_json()
                )

    # -- inbound ------------------------------------------------------------------------------
    def _on_message(self, message: Message) -> None:
        topic = message.topic
        parsed = parse_topic(topic)
        if parsed is None:
            self._invalid_topic(message)
            return
        if parsed.kind is not ReplyKind.REQUEST:
            return  # our own replies and events coming back from the broker
        token: str | None = None
        obj: Mapping[str, Any] | None = None
        unparseable: InvalidRequestError | None = None
        try:
            obj = parse_payload(message.payload)
        except InvalidRequestError as exc:
            unparseable = exc
        if obj is not None:
            raw_token = obj.get("clientToken")
            token = raw_token if isinstance(raw_token, str) else None
        try:
            # Counted (and maybe throttled) before anything else, like every device request.
            self.service.admit(parsed.operation.value)
            if unparseable is not None or obj is None:
                raise unparseable or InvalidRequestError("empty request", ErrorCode.INVALID_JSON)
            self._dispatch(parsed, obj)
        except InvalidRequestError as exc:
            self._reject(parsed, exc.code, exc.message, token)
        except ServiceError as exc:
            self._reject(parsed, exc.code, exc.message, token, exc.execution_state)
        except Exception as exc:
            log.exception("emulator_request_failed", topic=topic)
            self._reject(parsed, ErrorCode.INTERNAL_ERROR, f"internal error: {exc}", token)

    def _invalid_topic(self, message: Message) -> None:
        topic = message.topic
        if not topic.startswith(PREFIX) or "/jobs/" not in topic:
            return
        last = topic.rsplit("/", 1)[-1]
        if last in _REPLY_LEVELS or last.startswith("notify"):
            return
        self.service.count("InvalidTopic")
        token: str | None = None
        try:
            raw = parse_payload(message.payload).get("clientToken")
            token = raw if isinstance(raw, str) else None
        except InvalidRequestError:
            pass
        error = ErrorResponse(
            code=ErrorCode.INVALID_TOPIC,
            message=f"{topic} is not a topic of the AWS IoT Jobs API",
            client_token=token,
            timestamp=_ts(self.service.now()),
        )
        self._send(topic + "/rejected", error.to_json())

    def _reply(self, parsed: ParsedTopic, kind: ReplyKind) -> str:
        return reply_topic(
            parsed.thing_name,
            parsed.operation,
            kind,
            job_id=parsed.job_id,
            namespace=parsed.namespace,
        )

    def _reject(
        self,
        parsed: ParsedTopic,
        code: ErrorCode,
        message: str,
        token: str | None,
        state: Execution | None = None,
    ) -> None:
        error = ErrorResponse(
            code=code,
            message=message,
            client_token=token,
            timestamp=_ts(self.service.now()),
            execution_state=None if state is None else execution_state(state),
        )
        self._send(self._reply(parsed, ReplyKind.REJECTED), error.to_json())

    def _dispatch(self, parsed: ParsedTopic, obj: Mapping[str, Any]) -> None:
        service = self.service
        thing = parsed.thing_name
        op = parsed.operation
        accepted = self._reply(parsed, ReplyKind.ACCEPTED)
        if op is Operation.GET_PENDING:
            request = GetPendingRequest.from_json(obj)
            in_progress, queued = service.get_pending(thing, parsed.namespace)
            pending = GetPendingReply(
                in_progress_jobs=tuple(summary(e) for e in in_progress),
                queued_jobs=tuple(summary(e) for e in queued),
                client_token=request.client_token,
                timestamp=_ts(service.now()),
            )
            self._send(accepted, pending.to_json())
        elif op is Operation.START_NEXT:
            start = StartNextRequest.from_json(obj)
            delivery = service.start_next(
                thing,
                parsed.namespace,
                status_details=start.status_details,
                step_timeout_minutes=start.step_timeout_in_minutes,
            )
            started = StartNextReply(
                execution=None if delivery is None else wire_execution(delivery),
                client_token=start.client_token,
                timestamp=_ts(service.now()),
            )
            self._send(accepted, started.to_json())
        elif op is Operation.DESCRIBE:
            describe = DescribeRequest.from_json(obj)
            assert parsed.job_id is not None  # the topic parser guarantees it for DESCRIBE
            delivery = service.describe(
                thing, parsed.job_id, parsed.namespace, describe.execution_number
            )
            include = describe.include_job_document is not False
            described = DescribeReply(
                execution=None if delivery is None else wire_execution(delivery, include),
                client_token=describe.client_token,
                timestamp=_ts(service.now()),
            )
            self._send(accepted, described.to_json())
        elif op is Operation.UPDATE:
            update = UpdateRequest.from_json(obj)
            assert parsed.job_id is not None  # the topic parser guarantees it for UPDATE
            result = service.update(
                thing,
                parsed.job_id,
                update.status,
                namespace=parsed.namespace,
                status_details=update.status_details,
                expected_version=update.expected_version,
                execution_number=update.execution_number,
                step_timeout_minutes=update.step_timeout_in_minutes,
                include_document=bool(update.include_job_document),
            )
            updated = UpdateReply(
                execution_state=execution_state(result.execution)
                if update.include_job_execution_state
                else None,
                job_document=result.document,
                client_token=update.client_token,
                timestamp=_ts(service.now()),
            )
            self._send(accepted, updated.to_json())
