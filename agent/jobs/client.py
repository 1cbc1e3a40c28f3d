"""The device's asynchronous AWS IoT Jobs client over a `Transport`.

Request/reply over MQTT is fragile in three ways this client absorbs so the engine does not
have to: replies are matched only by our own `clientToken` (replies for another request, another
client or another thing are ignored); a reply can be lost with the connection, so a request still
waiting when the link drops is re-published with the same token once the link is back (the first
answer wins, later duplicates find no waiter); and `RequestThrottled`/`InternalError` are retried
with capped exponential backoff and jitter. Every request has one deadline covering all of that,
after which it raises `RequestTimeout`: nothing here waits forever. That machinery is the one
every AWS IoT API client of the agent shares (`jobs_agent.transport.exchange`); this module says
what the Jobs replies mean. A transport's failure is translated here, once, into `LinkError`:
every failure the client raises is a `JobsError`.

The client owns the transport's listeners (message and connection callbacks). Events go to a
single consumer through `events()`.

Where this differs from awsiotsdk's `IotJobsClient`: namespaced topics (the SDK has none), our
own client tokens with retry/re-publish on the same deadline (the SDK leaves that to the caller),
and tolerant timestamps (seconds or milliseconds; see `agent.jobs.models`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar

import structlog

from jobs_agent.backoff import Backoff
from jobs_agent.jobs import topics
from jobs_agent.jobs.errors import (
    Abandoned,
    JobsError,
    JobsRejected,
    LinkError,
    ProtocolError,
    RequestTimeout,
)
from jobs_agent.jobs.events import (
    ClientStats,
    JobExecutionsChanged,
    JobsEvent,
    NextJobExecutionChanged,
    PendingJobs,
    Resync,
    decode_event,
    decode_object,
)
from jobs_agent.jobs.models import (
    DescribeReply,
    DescribeRequest,
    ErrorResponse,
    GetPendingReply,
    GetPendingRequest,
    JobExecution,
    JobExecutionStatus,
    StartNextReply,
    StartNextRequest,
    UpdateReply,
    UpdateRequest,
)
from jobs_agent.jobs.status_details import sanitize_status_details
from jobs_agent.jobs.topics import (
    ACCEPTED,
    EVENT,
    NOTIFY,
    REQUEST,
    START_NEXT,
    UPDATE,
    Operation,
    ParsedTopic,
    ReplyKind,
)
from jobs_agent.jsontext import compact
from jobs_agent.log import LazyBound
from jobs_agent.transport.base import Message, Transport, TransportError
from jobs_agent.transport.exchange import (
    Exchange,
    ExchangeClosed,
    RequestAbandoned,
    subscribe_within,
)
from jobs_agent.vocabulary import (
    TERMINAL_STATUSES,
    ExecutionRef,
    StatusDetails,
    job_execution_status,
)

log = structlog.get_logger("jobs_agent.jobs")
_KEPT_TOPICS = 64
"""At most this many parsed topics are kept per client (`JobsClient._parse_topic`)."""

R = TypeVar("R")
_Reply = tuple[ReplyKind, Mapping[str, Any]]


class JobsClient:
    """AWS IoT Jobs over MQTT, device side. See the module docstring."""

    def __init__(
        self,
        transport: Transport,
        thing_name: str,
        *,
        namespaces: Sequence[str] = (),
        request_timeout: float = 30.0,
        retry_min: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        if not topics.is_valid_thing_name(thing_name):
            raise ValueError(f"invalid thing name {thing_name!r}")
        for namespace in namespaces:
            if not topics.is_valid_namespace(namespace):
                raise ValueError(f"invalid namespace {namespace!r}")
        if request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        Backoff(retry_min, retry_max)  # validates the pair now rather than on the first retry
        self.transport = transport
        self.thing_name = thing_name
        self.namespaces = tuple(namespaces)
        self.request_timeout = request_timeout
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.stats = ClientStats()
        self._exchange: Exchange[_Reply] = Exchange(transport, self.stats)
        self._events: dict[tuple[type, str | None], JobsEvent] = {}
        """Unread events, at most one of each kind per namespace (see `_emit`), oldest first."""
        self._events_waiter: asyncio.Future[None] | None = None
        """What `events()` waits on while nothing is unread: a future on the loop it holds,
        where an `asyncio.Event`'s wait asked for the running loop (a `getpid` on Python
        3.11) and made five Python calls, twice per plugin job (issue 18)."""
        self._listener: Callable[[JobsEvent], None] | None = None  # `listen`
        self._started = False
        self._closed = False
        self._topics: dict[str, ParsedTopic | None] = {}
        """`parse_topic` of the topics that name no job (replies to start-next, events),
        remembered: they come with every job (at most `_KEPT_TOPICS`)."""
        self._request_topics: dict[tuple[Operation, str | None], str] = {}
        """The request topics that name no job (start-next), built once."""

    @property
    def requests_waiting(self) -> int:
        """Requests sent and not yet answered: a reply still on its way is one a dropped link
        makes the agent send again (and the service answer again) after the reconnect."""
        return self._exchange.waiting

    @property
    def events_unread(self) -> int:
        """Notifications received and not yet given by `events()`."""
        return len(self._events)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen, then subscribe (QoS 1) to every reply and event topic; waits for the link.

        Raises `RequestTimeout` if the subscriptions cannot be made within `request_timeout`.
        """
        if self._closed:
            raise JobsError("the Jobs client is closed")
        self.transport.set_message_callback(self._on_message)
        self.transport.set_connection_callbacks(self._on_lost, self._on_resumed)
        filters = topics.device_subscriptions(self.thing_name, self.namespaces)
        deadline = asyncio.get_running_loop().time() + self.request_timeout
        try:  # all in one SUBSCRIBE (per 8 filters) on MQTT, answered by one SUBACK
            subscribed = await subscribe_within(self.transport, filters, deadline)
        except TransportError as exc:
            raise LinkError(str(exc)) from exc  # it names the filter refused
        if not subscribed:
            raise RequestTimeout("subscribe", self.request_timeout)
        self._started = True
        log.info("jobs client started", thing_name=self.thing_name, namespaces=self.namespaces)

    def stop_waiting_for_link(self) -> None:
        """The agent is stopping: a request no longer waits for a link that is down; it fails
        (`LinkError`) as at its deadline, and the caller keeps what it was for (the start-next
        marker, the outbox) for the next start (`Exchange.stop_waiting_for_link`)."""
        self._exchange.stop_waiting_for_link()

    def stop_waiting(self) -> None:
        """The agent stops now (a second stop): no request waits for its answer, link up or
        down; each fails with `Abandoned` (`Exchange.stop_waiting`)."""
        self._exchange.stop_waiting()

    async def close(self) -> None:
        """Stop listening, fail waiting requests and end `events()`. Idempotent.

        The transport is left connected: it belongs to whoever created it.
        """
        if self._closed:
            return
        self._closed = True
        self.transport.set_message_callback(None)
        self.transport.set_connection_callbacks(None, None)
        self._exchange.close()
        self._wake_events()

    def listen(self, listener: Callable[[JobsEvent], None] | None) -> None:
        """Notifications to `listener` (which must neither raise nor wait) as they arrive, in
        the transport's delivery, not queued for `events()`: a wake-up of its consumer each,
        two per plugin job (issue 18). None: queued again. A resync is queued still (it comes
        from the transport's connection callback, which its reaction must not re-enter), and
        so is what comes while something is unread: the order of arrival is kept."""
        self._listener = listener

    async def events(self) -> AsyncIterator[JobsEvent]:
        """Notifications and resyncs, in arrival order (a burst coalesced, see `_emit`), until
        `close()`; what was unread at `close()` is still given. One consumer only."""
        loop = asyncio.get_running_loop()  # once per consumer, not per wait
        while True:
            while not self._events:
                if self._closed:
                    return
                waiter = self._events_waiter = loop.create_future()
                try:
                    await waiter
                finally:
                    self._events_waiter = None
            oldest = next(iter(self._events))
            yield self._events.pop(oldest)

    # -- operations ----------------------------------------------------------------------------
    async def start_next(
        self,
        status_details: Mapping[str, Any] | None = None,
        step_timeout: int | None = None,
    ) -> JobExecution | None:
        """StartNextPendingJobExecution (default namespace only; see `agent.jobs.topics`).

        None when nothing is pending.
        """

        def payload(token: str) -> dict[str, Any]:
            return StartNextRequest(
                status_details=_sanitized(status_details),
                step_timeout_in_minutes=step_timeout,
                client_token=token,
            ).to_json()

        reply = await self._request(START_NEXT, None, None, payload, StartNextReply.from_json)
        return reply.execution

    async def describe(
        self,
        job: str | ExecutionRef,
        *,
        namespace: str | None = None,
        execution_number: int | None = None,
        include_job_document: bool = True,
    ) -> JobExecution | None:
        """DescribeJobExecution of a job id (`$next`: None when nothing is next) or of the
        execution an `ExecutionRef` names."""
        job_id, namespace, execution_number = _target(job, namespace, execution_number)

        def payload(token: str) -> dict[str, Any]:
            return DescribeRequest(
                execution_number=execution_number,
                include_job_document=include_job_document,
                client_token=token,
            ).to_json()

        reply = await self._request(
            Operation.DESCRIBE, job_id, namespace, payload, DescribeReply.from_json
        )
        return reply.execution

    async def get_pending(self) -> PendingJobs:
        """GetPendingJobExecutions (default namespace)."""

        def payload(token: str) -> dict[str, Any]:
            return GetPendingRequest(client_token=token).to_json()

        reply = await self._request(
            Operation.GET_PENDING, None, None, payload, GetPendingReply.from_json
        )
        return PendingJobs(in_progress=reply.in_progress_jobs, queued=reply.queued_jobs)

    async def update(
        self,
        job: str | ExecutionRef,
        status: JobExecutionStatus | str,
        *,
        status_details: Mapping[str, Any] | None = None,
        expected_version: int | None = None,
        step_timeout: int | None = None,
        execution_number: int | None = None,
        include_job_execution_state: bool = False,
        include_job_document: bool = False,
        namespace: str | None = None,
    ) -> UpdateReply:
        """UpdateJobExecution of a job id or of the execution an `ExecutionRef` names.
        `status_details` are sanitised here (unless already a `StatusDetails`); `step_timeout`
        -1 clears. Raises ValueError for a status that does not exist (a programming error).
        """
        job_id, namespace, execution_number = _target(job, namespace, execution_number)
        wire_status = job_execution_status(status)
        details = _sanitized(status_details)

        def payload(token: str) -> dict[str, Any]:
            return UpdateRequest(
                status=wire_status,
                status_details=details,
                expected_version=expected_version,
                execution_number=execution_number,
                include_job_execution_state=include_job_execution_state or None,
                include_job_document=include_job_document or None,
                step_timeout_in_minutes=step_timeout,
                client_token=token,
            ).to_json()

        return await self._request(UPDATE, job_id, namespace, payload, UpdateReply.from_json)

    async def ended(self, ref: ExecutionRef) -> str | None:
        """How the service shows that the execution is over: its terminal status, or the code
        describing it is refused with (TerminalStateReached, or ResourceNotFound once it is
        deleted); None while it is not over."""
        try:
            execution = await self.describe(ref, include_job_document=False)
        except JobsRejected as exc:
            if exc.cloud_ended:
                return str(exc.code)
            raise
        if execution is not None and execution.status in TERMINAL_STATUSES:
            return str(execution.status)
        return None

    # -- the request machinery -----------------------------------------------------------------
    async def _request(
        self,
        operation: Operation,
        job_id: str | None,
        namespace: str | None,
        payload: Callable[[str], dict[str, Any]],
        parse: Callable[[object], R],
    ) -> R:
        if not self._started or self._closed:
            raise JobsError("the Jobs client is not started (or already closed)")
        topic = self._request_topic(operation, job_id, namespace)
        self.stats.requests += 1
        # `_value_`: `.value` is a property of the enum's, two Python calls (issue 18).
        bound = LazyBound(log, operation=operation._value_, job_id=job_id, namespace=namespace)

        def read(reply: _Reply) -> R:
            kind, body = reply
            try:
                if kind is ACCEPTED:
                    return parse(body)
                error = ErrorResponse.from_json(body)
            except ProtocolError as exc:
                bound.warning(f"malformed {kind.value} reply", error=str(exc))
                raise
            raise JobsRejected(error.code, error.message, error.execution_state, error.client_token)

        try:
            result = await self._exchange.request(
                topic,
                (operation, job_id, namespace),
                lambda token: compact(payload(token)).encode(),
                read,
                within=self.request_timeout,
                backoff=Backoff(self.retry_min, self.retry_max),
                retryable=lambda exc: isinstance(exc, JobsRejected) and exc.retryable,
                bound=bound,
            )
        except JobsRejected as rejected:
            self.stats.rejections += 1
            bound.info("request rejected", code=str(rejected.code), message=rejected.message)
            raise
        except ExchangeClosed:
            raise JobsError("the Jobs client was closed") from None
        except RequestAbandoned as exc:
            raise Abandoned(f"{operation.value}: {exc}") from exc
        except TransportError as exc:
            raise LinkError(f"{operation.value}: {exc}") from exc
        if result is None:
            bound.warning("request timed out", seconds=self.request_timeout)
            raise RequestTimeout(operation.value, self.request_timeout)
        return result

    def _request_topic(
        self, operation: Operation, job_id: str | None, namespace: str | None
    ) -> str:
        if job_id is not None:
            return topics.request_topic(
                self.thing_name, operation, job_id=job_id, namespace=namespace
            )
        topic = self._request_topics.get((operation, namespace))
        if topic is None:
            topic = topics.request_topic(self.thing_name, operation, namespace=namespace)
            self._request_topics[(operation, namespace)] = topic
        return topic

    def _parse_topic(self, topic: str) -> ParsedTopic | None:
        """`topics.parse_topic`, remembered for the topics that name no job: the same few
        come with every job, checked once (issue 18). A topic that names a job (an update's
        reply) is parsed each time, so what is kept stays bounded."""
        try:
            return self._topics[topic]
        except KeyError:
            pass
        parsed = topics.parse_topic(topic)
        if (parsed is None or parsed.job_id is None) and len(self._topics) < _KEPT_TOPICS:
            self._topics[topic] = parsed
        return parsed

    # -- transport callbacks (on the loop thread; must not block or raise) ---------------------
    def _on_lost(self, reason: str) -> None:
        log.info("MQTT link lost; waiting requests will be re-published", reason=reason)
        self._exchange.link_lost()

    def _on_resumed(self, session_present: bool) -> None:
        self._emit(Resync(session_present))

    def _on_message(self, message: Message) -> None:
        parsed = self._parse_topic(message.topic)
        if parsed is None:
            log.debug("message on a non-Jobs topic ignored", topic=message.topic)
            return
        if parsed.thing_name != self.thing_name:
            self.stats.replies_ignored += 1
            log.debug("message for another thing ignored", topic=message.topic)
            return
        if parsed.kind is EVENT:
            self._on_event(parsed, message)
        elif parsed.kind is not REQUEST:
            self._on_reply(parsed, message)

    def _on_reply(self, parsed: ParsedTopic, message: Message) -> None:
        body = decode_object(message.payload)
        if body is None:
            self.stats.replies_ignored += 1
            log.debug("reply that is not a JSON object ignored", topic=message.topic)
            return
        key = (parsed.operation, parsed.job_id, parsed.namespace)
        if not self._exchange.resolve(body.get("clientToken"), key, (parsed.kind, body)):
            log.debug("reply not for a waiting request ignored", topic=message.topic)

    def _on_event(self, parsed: ParsedTopic, message: Message) -> None:
        notify = parsed.operation is NOTIFY
        try:
            event = decode_event(notify, parsed.namespace, message.payload)
        except ProtocolError as exc:
            self.stats.events_dropped += 1
            log.warning("malformed event dropped", topic=message.topic, error=str(exc))
            return
        self._emit(event)

    def _emit(self, event: JobsEvent) -> None:
        """Queue `event`, replacing an unread one of the same kind and namespace.

        Events are wake-ups, and a newer `notify` lists the pending executions as they are
        now: the unread older one says nothing more. So a burst (thousands of jobs created at
        once) leaves at most one unread event per kind and namespace, whatever its size,
        where a bounded queue had to drop events and warn.
        """
        if self._closed:
            return
        if self._listener is not None and not self._events and not isinstance(event, Resync):
            self.stats.events += 1
            return self._listener(event)
        key = (type(event), getattr(event, "namespace", None))
        if self._events.pop(key, None) is not None:
            self.stats.events_coalesced += 1
        self.stats.events += 1
        self._events[key] = event
        self._wake_events()

    def _wake_events(self) -> None:
        waiter = self._events_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _target(
    job: str | ExecutionRef, namespace: str | None, execution_number: int | None
) -> tuple[str, str | None, int | None]:
    """(job id, namespace, execution number) of a job id or an `ExecutionRef`."""
    if isinstance(job, ExecutionRef):
        return job.job_id, job.namespace, job.execution_number
    return job, namespace, execution_number


def _sanitized(details: Mapping[str, Any] | None) -> StatusDetails | None:
    """The edge of the device: what is sent fits the API, sanitised once (a `StatusDetails`
    made by the engine already was)."""
    if details is None or isinstance(details, StatusDetails):
        return details
    return sanitize_status_details(details)


__all__ = [
    "ClientStats",
    "JobExecutionsChanged",
    "JobsClient",
    "JobsEvent",
    "NextJobExecutionChanged",
    "PendingJobs",
    "Resync",
]
