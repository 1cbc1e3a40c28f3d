"""The Jobs MQTT API in front of `JobsService`, on the emulator's `MqttLink`.

It serves `$aws/things/+/jobs/#`: requests are parsed with the shared protocol module
(`agent.jobs.topics`, `agent.jobs.models`), answered on the matching `/accepted` or `/rejected`
topic, and the service's events are published on `notify`, `notify-next` and their namespaced
forms. Over the in-process bus this is the embedded emulator; over paho it is `jobs-agent sim
serve` in front of a real broker. The link publishes in order and never waits (link.py).

An unknown topic below `$aws/things/{thing}/jobs/` is answered with `InvalidTopic` on that topic
plus `/rejected`: the only reply topic a device could have derived from what it published.
Topics ending in `/accepted` or `/rejected` and event topics are never answered, which also keeps
the front end from answering its own replies.
"""

from __future__ import annotations

from collections.abc import Mapping
from json.encoder import encode_basestring_ascii
from typing import Any

import structlog

from jobs_agent.emulator import shapes
from jobs_agent.emulator.errors import RequestLost
from jobs_agent.emulator.events import (
    JobExecutionsChanged,
    LifecycleEvent,
    NextJobExecutionChanged,
    ServiceEvent,
)
from jobs_agent.emulator.link import MqttLink
from jobs_agent.emulator.model import Execution, ExecutionSummary
from jobs_agent.emulator.service import JobsService, ServiceError
from jobs_agent.emulator.shapes import DocumentAs
from jobs_agent.jobs.errors import ErrorCode, InvalidRequestError
from jobs_agent.jobs.models import (
    DescribeRequest,
    GetPendingRequest,
    StartNextRequest,
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
)
from jobs_agent.jsontext import compact
from jobs_agent.transport.base import Message

log = structlog.get_logger(__name__)

SUBSCRIPTION = "$aws/things/+/jobs/#"
SUMMARY_CACHE_LIMIT = 100_000
TOPIC_CACHE_LIMIT = 100_000
"""Entries of each topic cache (parsed request topics; built reply and event topics) before it
is emptied. A thing asks on about three topics per job and is answered on about five: at
10,000 (a fleet of 10,000 things, one job each), the caches were emptied every few thousand
requests, and the topics parsed and built again (with validation) for most requests."""
_REPLY_LEVELS = frozenset({"accepted", "rejected"})
ACCEPTED = "/accepted"
REJECTED = "/rejected"
"""A reply's topic is its request's topic and one of these: `agent.jobs.topics` builds every
reply topic so (`reply_topic` of a parsed request topic is the same string), and appending
costs no call, where building it from the parsed topic hashed a `ParsedTopic` in Python."""
_NOT_REQUESTS = ("/accepted", "/rejected", "/notify", "/notify-next")
_REQUEST = ReplyKind.REQUEST
_GET_PENDING = Operation.GET_PENDING
_START_NEXT = Operation.START_NEXT
_DESCRIBE = Operation.DESCRIBE
_UPDATE = Operation.UPDATE
"""Members read as globals per request (`model.QUEUED`'s note: a member read off its enum
class costs a few hundred instructions more)."""


def _encode(obj: Mapping[str, Any]) -> bytes:
    return compact(obj).encode("utf-8")


def _envelope(body: dict[str, Any], token: str | None, timestamp: float) -> dict[str, Any]:
    """Every MQTT reply echoes the request's clientToken and carries a timestamp."""
    if token is not None:
        body["clientToken"] = token
    body["timestamp"] = int(timestamp)
    return body


def _envelope_text(head: str, token: str | None, timestamp: float) -> bytes:
    """`_encode(_envelope(body, ...))` for a body already written as text (`head`: its fields
    without the closing brace), the same bytes."""
    if token is not None:
        head += ',"clientToken":' + encode_basestring_ascii(token)
    return f'{head},"timestamp":{int(timestamp)}}}'.encode()


def _next_changed(timestamp: float, execution: str | None) -> bytes:
    """NextJobExecutionChangedEvent, with the execution's text (`shapes.execution_text`) if
    there is one: `_encode` of `{"timestamp": ..., "execution": ...}`, the same bytes."""
    if execution is None:
        return f'{{"timestamp":{int(timestamp)}}}'.encode()
    return f'{{"timestamp":{int(timestamp)},"execution":{execution}}}'.encode()


class MqttFrontend:
    """Serves the Jobs MQTT API for `service` on `link` (see the module docstring)."""

    def __init__(self, service: JobsService, link: MqttLink) -> None:
        self.service = service
        self.link = link
        self._started = False
        self._summary_cache: dict[ExecutionSummary, str] = {}
        self._topics: dict[str, ParsedTopic | None] = {}
        self._built: dict[tuple[object, ...], str] = {}
        link.route("jobs", SUBSCRIPTION, self._on_message)

    def start(self) -> None:
        """Start publishing the service's events (the link is started by its owner)."""
        if not self._started:
            self.service.add_listener(self._on_events)
            self._started = True

    def stop(self) -> None:
        if self._started:
            self._started = False
            self.service.remove_listener(self._on_events)

    # -- outbound ---------------------------------------------------------------------------
    def _send(self, topic: str, obj: Mapping[str, Any]) -> None:
        self.link.send(topic, _encode(obj))

    def _summaries_json(self, items: list[ExecutionSummary]) -> str:
        """`shapes.summary_text` of each item, comma-joined. A `notify` carries up to 15
        summaries, nearly all unchanged since the previous one: their texts are looked up by
        the summary's value in one C loop (`map`), and only a miss costs Python calls (a
        lookup per item by identity, in a generator, made three calls per summary: 60 of a
        drained job's calls)."""
        cache = self._summary_cache
        texts = list(map(cache.get, items))
        if None in texts:
            if len(cache) >= SUMMARY_CACHE_LIMIT:
                cache.clear()
            for index, item in enumerate(items):
                if texts[index] is None:
                    texts[index] = cache[item] = shapes.summary_text(item)
        return ",".join(texts)  # type: ignore[arg-type]  # no None is left

    def _notify_payload(self, event: JobExecutionsChanged) -> bytes:
        """JobExecutionsChangedEvent from cached summaries (tests parse it back with the device
        side's model). Empty lists are left out, so an empty queue is announced as
        `{"jobs": {}}` as AWS does."""
        parts = []
        for status, items in (("QUEUED", event.queued), ("IN_PROGRESS", event.in_progress)):
            if items:
                parts.append(f'"{status}":[{self._summaries_json(items)}]')
        timestamp = str(int(event.timestamp))
        text = '{"jobs":{' + ",".join(parts) + '},"timestamp":' + timestamp + "}"
        return text.encode("utf-8")

    def _on_events(self, events: list[ServiceEvent]) -> None:
        """Service listener: may run in an HTTP worker thread, so hop onto the loop."""
        self.link.call_on_loop(self._publish_events, events)

    def _publish_events(self, events: list[ServiceEvent]) -> None:
        if not self._started:
            return
        for event in events:
            if isinstance(event, JobExecutionsChanged):
                topic = self._topic(notify_topic, event.thing_name, event.namespace)
                self.link.send(topic, self._notify_payload(event))
            elif isinstance(event, NextJobExecutionChanged):
                topic = self._topic(notify_next_topic, event.thing_name, event.namespace)
                execution = None
                if event.execution is not None:
                    execution = self._execution(event.execution, shapes.AS_OBJECT)
                self.link.send(topic, _next_changed(event.timestamp, execution))
            elif isinstance(event, LifecycleEvent):
                self._send(event.topic, event.payload)

    def _execution(self, delivery: Any, document: DocumentAs) -> str:
        seconds = self.service.readings.mqtt_seconds_before_timed_out
        return shapes.execution_text(delivery, document, seconds)

    # -- inbound ------------------------------------------------------------------------------
    def _parse_topic(self, topic: str) -> ParsedTopic | None:
        """`parse_topic`, remembered per topic: a device asks on the same few topics."""
        try:
            return self._topics[topic]
        except KeyError:
            pass
        if len(self._topics) >= TOPIC_CACHE_LIMIT:
            self._topics.clear()
        parsed = self._topics[topic] = parse_topic(topic)
        return parsed

    def _on_message(self, message: Message) -> None:
        topic = message.topic
        if topic.endswith(_NOT_REQUESTS):
            return  # replies and events (ours, coming back from a broker without No Local)
        parsed = self._parse_topic(topic)
        if parsed is None:
            self._invalid_topic(message)
            return
        if parsed.kind is not _REQUEST:
            return
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
            self.service.admit(parsed.operation._value_)  # `.value` is two calls
            if unparseable is not None or obj is None:
                raise unparseable or InvalidRequestError("empty request", ErrorCode.INVALID_JSON)
            self._dispatch(topic, parsed, obj)
        except InvalidRequestError as exc:
            self._reject(topic, exc.code, exc.message, token)
        except RequestLost:
            return  # injected: no answer at all
        except ServiceError as exc:
            self._reject(topic, exc.code, exc.message, token, exc.execution_state)
        except Exception as exc:
            log.exception("emulator_request_failed", topic=topic)
            self._reject(topic, ErrorCode.INTERNAL_ERROR, f"internal error: {exc}", token)

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
        error = {
            "code": str(ErrorCode.INVALID_TOPIC),
            "message": f"{topic} is not a topic of the AWS IoT Jobs API",
        }
        self._send(topic + "/rejected", _envelope(error, token, self.service.now()))

    def _topic(self, build: Any, *args: Any) -> str:
        """`build(*args)` remembered: topic builders validate every name they are given."""
        key = (build, *args)
        topic = self._built.get(key)
        if topic is None:
            if len(self._built) >= TOPIC_CACHE_LIMIT:
                self._built.clear()
            topic = self._built[key] = build(*args)
        return topic

    def _reject(
        self,
        request: str,
        code: ErrorCode,
        message: str,
        token: str | None,
        state: Execution | None = None,
    ) -> None:
        error: dict[str, Any] = {"code": str(code), "message": message}
        if state is not None:
            error["executionState"] = shapes.state(state)
        self._send(request + REJECTED, _envelope(error, token, self.service.now()))

    def _dispatch(self, request: str, parsed: ParsedTopic, obj: Mapping[str, Any]) -> None:
        service = self.service
        thing = parsed.thing_name
        op = parsed.operation
        body: dict[str, Any] = {}
        head: str | None = None  # the body as text when it holds an execution (execution_text)
        token: str | None = None
        if op is _GET_PENDING:
            token = GetPendingRequest.from_json(obj).client_token
            body = shapes.pending(*service.get_pending(thing, parsed.namespace))
        elif op is _START_NEXT:
            start = StartNextRequest.from_json(obj)
            token = start.client_token
            delivery = service.start_next(
                thing,
                parsed.namespace,
                status_details=start.status_details,
                step_timeout_minutes=start.step_timeout_in_minutes,
            )
            if delivery is not None:
                head = '{"execution":' + self._execution(delivery, shapes.AS_OBJECT)
        elif op is _DESCRIBE:
            describe = DescribeRequest.from_json(obj)
            token = describe.client_token
            assert parsed.job_id is not None  # the topic parser guarantees it for DESCRIBE
            delivery = service.describe(
                thing, parsed.job_id, parsed.namespace, describe.execution_number
            )
            include = describe.include_job_document is not False
            if delivery is not None:
                document = shapes.AS_OBJECT if include else DocumentAs.OMITTED
                head = '{"execution":' + self._execution(delivery, document)
        elif op is _UPDATE:
            update = UpdateRequest.from_json(obj)
            token = update.client_token
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
            if update.include_job_execution_state:
                body["executionState"] = shapes.state(result.execution)
            if result.document is not None:
                body["jobDocument"] = result.document
        if head is None:
            self._send(request + ACCEPTED, _envelope(body, token, service.now()))
        else:
            self.link.send(request + ACCEPTED, _envelope_text(head, token, service.now()))
