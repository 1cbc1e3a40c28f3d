"""What the engine's parts share: the settings and the dispatcher in use, the stop request, the
wake-up of the main loop, the status shown to systemd, and the note of each outcome.

One object, handed to every part (`outbox`, `acquisition`, `runner`, `supervision`, `reboot`),
so that a reload (`Engine.reconfigure`) or a stop request reaches all of them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from jobs_agent.aio import unless_set
from jobs_agent.datamodel import model
from jobs_agent.engine.crashpoints import CrashPoints
from jobs_agent.engine.settings import EngineSettings
from jobs_agent.engine.wakes import Wakes
from jobs_agent.vocabulary import ExecutionRef

if TYPE_CHECKING:
    from jobs_agent.engine.context import EngineJobContext  # built at the first job
    from jobs_agent_handlers.api import Handler, MqttLink, Outcome

_T = TypeVar("_T")

OUTCOMES_KEPT = 256
PRUNE_EVERY = 200
"""Finished executions are pruned from the database every this many outcomes (500 are kept)."""


class Dispatcher(Protocol):
    """What the engine needs from `jobs_agent.dispatch` (structural: tests may pass their own)."""

    def resolve(
        self,
        document: Mapping[str, Any],
        *,
        job_id: str | None = None,
        taken_at: float | None = None,
    ) -> Handler: ...

    async def run(self, handler: Handler, ctx: EngineJobContext) -> Outcome: ...


@model(frozen=False)
class EngineStatus:
    """A snapshot for `STATUS=` (sd_notify) and logs."""

    state: str = "starting"
    job: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    jobs_done: int = 0

    def describe(self) -> str:
        if self.job is None:
            return f"{self.state}; {self.jobs_done} jobs done"
        if self.state == "deferred":
            return f"deferred {self.job} until {self.progress.get('until', '?')}"
        percent = self.progress.get("percent")
        message = self.progress.get("message")
        parts = [f"running {self.job}"]
        if percent is not None:
            parts.append(f"{percent}%")
        if message:
            parts.append(str(message)[:80])
        return " ".join(parts)


class StopRequested(Exception):
    """A stop came while the engine waited to read the service: the round ends there."""


class Shared:
    def __init__(
        self,
        settings: EngineSettings,
        dispatcher: Dispatcher,
        on_status: Callable[[EngineStatus], None] | None,
        mqtt_link: MqttLink | None = None,
    ) -> None:
        self.settings = settings
        self.mqtt_link = mqtt_link
        """The device's MQTT connection, lent to every plugin's context (None: not lent)."""
        self.dispatcher = dispatcher
        self.crash = CrashPoints(settings.state_dir)
        self.wake_event = asyncio.Event()
        self._parked: asyncio.Future[None] | None = None
        """What the engine's idle loop waits on (`parked`)."""
        self.wakes = Wakes()
        """Whether the next round looks for work (`wake`), or only if events named an execution
        this device did not take (`hint`)."""
        self.stopping = False
        """No new job is taken; a running one finishes within `stop_timeout_seconds`."""
        self.stop_now = asyncio.Event()
        """Abandon the running handler at once (a second stop request)."""
        self.on_stop_now: list[Callable[[], None]] = []
        """Called as `stop_now` is set: the supervisor's watch, registered once, where a task
        per job waited on the Event (issue 18)."""
        self.stop_requested = asyncio.Event()
        """Set with `stopping`: what waits only to read the service gives up (`unless_stopping`)."""
        self.status = EngineStatus()
        self.outcomes: OrderedDict[ExecutionRef, str] = OrderedDict()
        """What this process reported (or noted) for its most recent executions."""
        self.outcome_listeners: list[Callable[[ExecutionRef, str], None]] = []
        """Told each outcome as it is noted (`Engine.listen_outcomes`)."""
        self.loop_heartbeat = time.monotonic()
        """Refreshed while the engine makes progress; the systemd watchdog checks it is recent."""
        self.prune_soon = False
        self._reported = 0
        self._on_status = on_status
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Run a round that looks for work."""
        self.wakes.look = True
        self.hint()

    def hint(self) -> None:
        """Run a round that looks for work only if `wakes` says an event calls for it."""
        self.wake_event.set()
        parked = self._parked
        if parked is not None and not parked.done():
            parked.set_result(None)

    @property
    def waiting(self) -> bool:
        """The engine's idle loop waits in `parked` (and makes no request meanwhile)."""
        parked = self._parked
        return parked is not None and not parked.done()

    async def parked(self, loop: asyncio.AbstractEventLoop, timeout: float) -> bool:
        """Wait for a wake-up (True) or `timeout` (False) on a future of `loop`, which the
        caller holds: `wait_event`'s timeout and the Event's wait ask for the running loop four
        times (a `getpid` each on Python 3.11), and the engine's loop waits once per job now that
        the events of a job it took wake no round (issue 18)."""
        if self.wake_event.is_set():
            return True
        future = self._parked = loop.create_future()
        timer = loop.call_later(timeout, _expire, future)
        try:
            await future
        finally:
            timer.cancel()
            self._parked = None
        return self.wake_event.is_set()

    def request_stop(self, *, immediate: bool) -> None:
        self.stopping = True
        self.stop_requested.set()
        self.wake()
        if immediate:
            self.stop_now.set()
            for callback in self.on_stop_now:
                callback()

    async def unless_stopping(self, reading: Awaitable[_T]) -> _T:
        """Wait for a request that only reads the service unless a stop comes first (raises
        `StopRequested`): a stop must not wait out the request timeout of a service that does
        not answer (27.8 s measured at start-up, issue 18). Only for requests whose loss
        changes nothing: a start-next, an update or anything else that takes or reports a job
        is always waited for."""
        ended, request = await unless_set(self.stop_requested, reading)
        if ended:
            return request.result()
        with contextlib.suppress(asyncio.CancelledError):
            request.result()
        raise StopRequested

    def beat(self) -> None:
        self.loop_heartbeat = time.monotonic()

    def note_outcome(self, ref: ExecutionRef, note: str) -> None:
        self.outcomes[ref] = note
        self.outcomes.move_to_end(ref)
        while len(self.outcomes) > OUTCOMES_KEPT:
            self.outcomes.popitem(last=False)
        for listener in self.outcome_listeners:
            listener(ref, note)
        self._reported += 1
        if self._reported % PRUNE_EVERY == 0:
            self.prune_soon = True

    def set_status(self, state: str, job: str | None = None, **progress: Any) -> None:
        self.note_status(state, job, **progress)
        self.announce_status()

    def note_status(self, state: str, job: str | None = None, **progress: Any) -> None:
        """Change the status without telling systemd yet (`announce_status` does): a plugin
        that ends within its first step would otherwise cost two `STATUS=` datagrams per job
        that nobody can read in time (issue 18)."""
        self.status.state = state
        self.status.job = job
        self.status.progress = dict(progress)

    def announce_status(self) -> None:
        if self._on_status is not None:
            self._on_status(self.status)

    def background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a side task, keeping a reference so it is not garbage-collected mid-flight."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
