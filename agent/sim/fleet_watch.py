"""Why a `sim fleet` rollout stopped moving, said instead of waited out.

Two faults looked like a fleet that hangs (issue 18, 2,000 things over `--processes 2`), and
both are the broker's surroundings, not the devices:

* Another Jobs service on the same broker (a `jobs-agent sim serve` left running, another
  fleet's emulator). Every device request is then answered twice, and the first answer wins:
  from the service that does not know the job, StartNextPendingJobExecution answers "nothing
  pending" (the device waits for a notification that already came) and the final
  UpdateJobExecution answers ResourceNotFound (the device gives its outcome up). A device sees
  the second answer as a reply no request waits for; with one service such a reply can only
  follow a re-publish or an abandoned attempt, so any reply beyond those proves a second
  answerer (`surplus_replies`). The fleet stops at once and says so.
* Messages lost between the broker and the emulator (mosquitto drops QoS 1 messages queued for
  a client past `max_queued_messages`, 1,000 by default, and every device's request queues for
  the one emulator client). A device whose notification was lost waits forever. Nothing any
  device does changes for `--stall-timeout` seconds while none runs a job: the fleet stops and
  names what is missing.

An outcome the service refused (the device's note "not reported: ...") is final for that device:
it is counted as `NOT_REPORTED` (an execution the service ended first as `ENDED_BY_SERVICE`),
so the rollout ends instead of waiting for a report that will not come.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from jobs_agent.jobs.events import ClientStats
from jobs_agent.vocabulary import TERMINAL_STATUSES, ExecutionRef

NOT_REPORTED = "NOT_REPORTED"
"""A device's outcome the service refused: the device gave it up (see engine/outbox.py)."""
ENDED_BY_SERVICE = "ENDED_BY_SERVICE"
"""The service ended the execution (cancelled, deleted) before the device reported it."""
TERMINAL = frozenset(str(status) for status in TERMINAL_STATUSES)
FINAL = TERMINAL | {NOT_REPORTED, ENDED_BY_SERVICE}
"""What a device reports no more after: a terminal status, or an outcome given up."""
BUSY_STATES = frozenset({"running", "deferred", "awaiting reboot"})
"""Engine states (`EngineStatus.state`) in which a device is at work on a job."""
STALL_SECONDS = 120.0
"""Default `--stall-timeout`: four times a Jobs request's timeout (30 s), so any device with a
request in flight has given up on it and asked again within it."""


def final_of(note: str) -> str | None:
    """The final outcome a device's note (`Engine.outcomes`) stands for, or None while it may
    still change. The notes are the engine's: "not reported: ..." (outbox), "cancelled: ..."
    and "ended by the service (STATUS)" (the service ended it: it reports nothing more);
    "... carried on" and "... after its point of no return" still run to a report."""
    if note in TERMINAL:
        return note
    if note.startswith("not reported"):
        return NOT_REPORTED
    if note.startswith("cancelled:") or (
        note.startswith("ended by the service (") and note.endswith(")")
    ):
        return ENDED_BY_SERVICE
    return None


@dataclass
class JobOutcomes:
    """`Fleet.outcomes` of one job, kept as the devices note outcomes (`Engine.listen_outcomes`):
    the final status of each device that has one (`final_of`), and the notes of those yet to
    (an outcome still to change, e.g. "... carried on", counted as "other")."""

    settled: Counter[str] = field(default_factory=Counter)
    done: set[str] = field(default_factory=set)
    """The things whose final status is counted: terminal is final, later notes change nothing."""
    open: dict[str, dict[ExecutionRef, str]] = field(default_factory=dict)
    others: int = 0

    def note(self, thing: str, ref: ExecutionRef, note: str) -> None:
        if thing in self.done:
            return
        final = final_of(note)
        notes = self.open.get(thing)
        if final is None:
            if notes is None:
                notes = self.open[thing] = {}
            self.others += ref not in notes
            notes[ref] = note
            return
        if notes is not None:
            self.others -= len(notes)
            del self.open[thing]
        self.done.add(thing)
        self.settled[final] += 1

    def counts(self) -> Counter[str]:
        counts = Counter(self.settled)
        if self.others:
            counts["other"] = self.others
        return counts


class Signs(NamedTuple):
    """A fleet's signs of life, for its watchdog (`Fleet.signs`)."""

    requests: int
    """Jobs API requests the devices made."""
    surplus_replies: int
    """Replies beyond one per request (`surplus_replies`): a second service."""
    busy: int
    """Devices at work on a job (`BUSY_STATES`)."""
    unanswered: int
    """Request attempts the devices gave up waiting for."""


def surplus_replies(stats: ClientStats) -> int:
    """Replies one device received that no single service could have sent.

    A reply no request waits for is counted in `replies_ignored`. With one service there is at
    most one per re-publish (the same token answered twice) and one per abandoned attempt (the
    answer came after the device stopped waiting); anything more was a second answer."""
    return max(0, stats.replies_ignored - stats.republishes - stats.timeouts)


def foreign_service(surplus: int) -> str:
    return (
        f"the devices received {surplus} replies beyond one per request: another Jobs service"
        " answers on this broker (a `jobs-agent sim serve` or another fleet's emulator still"
        " connected?); its answers (nothing pending, ResourceNotFound) would leave the rollout"
        " stuck. Stop it, or give the fleet a broker of its own."
    )


def unanswered_warning(attempts: int) -> str:
    return (
        f"warning: {attempts} Jobs requests went unanswered within the devices' request"
        " timeout and were asked again: messages were lost or the emulator fell behind (a"
        " broker drops QoS 1 messages queued for the emulator past its max_queued_messages:"
        " mosquitto logs 'Outgoing messages are being dropped'; give the fleet's broker"
        " max_queued_messages 0)"
    )


def stalled(
    seconds: float,
    things: int,
    counts: Mapping[str, int],
    service: Mapping[str, int] | None,
) -> str:
    """The stall report: what the devices reported and, with the emulator here, the service's
    side of the same executions."""
    reported = sum(n for status, n in counts.items() if status in FINAL)
    text = (
        f"stalled: no device made a Jobs request or reported an outcome for {seconds:.0f} s;"
        f" {things - reported} of {things} devices never reported the job"
    )
    if service is not None:
        text += "; the service has " + ", ".join(f"{s} {n}" for s, n in sorted(service.items()))
        if service.get("QUEUED"):
            text += (
                " (QUEUED: those devices were never told or their request was lost: the broker"
                " may drop messages queued for the emulator, see mosquitto's"
                " max_queued_messages and its log)"
            )
    return text


def explain(
    problem: str,
    watchdog: Watchdog,
    counts: Mapping[str, int],
    service: Any,
    job_id: str,
    things: Sequence[str],
) -> str:
    """The watchdog's finding in full: a stall with the service's view when it is here."""
    if problem != "stalled":
        return problem
    view = None if service is None else service_view(service, job_id, things)
    return stalled(watchdog.quiet_seconds(time.monotonic()), len(things), counts, view)


def service_view(service: Any, job_id: str, things: Iterable[str]) -> Counter[str]:
    """The emulator's statuses of the job's executions (status -> things)."""
    return Counter(str(service.execution(job_id, thing).status) for thing in things)


class Watchdog:
    """Follows a rollout's signs of life; says what is wrong when there is something to say."""

    def __init__(self, stall_seconds: float, now: float) -> None:
        self._stall = stall_seconds
        self._last: tuple[tuple[tuple[str, int], ...], int] | None = None
        self._since = now

    def check(
        self,
        counts: Counter[str],
        requests: int,
        surplus: int,
        busy: Callable[[], int],
        now: float,
    ) -> str | None:
        """None while the rollout is healthy; else why it cannot go on. `busy`: how many
        devices are running (or deferring) a job; asked only once all else was quiet for the
        stall time, since a long handler makes no requests and is no stall."""
        if surplus > 0:
            return foreign_service(surplus)
        sign = (tuple(sorted(counts.items())), requests)
        if sign != self._last:
            self._last = sign
            self._since = now
            return None
        if self._stall > 0 and now - self._since >= self._stall:
            if busy() > 0:
                self._since = now
                return None
            return "stalled"
        return None

    def quiet_seconds(self, now: float) -> float:
        return now - self._since


__all__ = [
    "BUSY_STATES",
    "ENDED_BY_SERVICE",
    "FINAL",
    "NOT_REPORTED",
    "STALL_SECONDS",
    "TERMINAL",
    "JobOutcomes",
    "Signs",
    "Watchdog",
    "explain",
    "final_of",
    "foreign_service",
    "service_view",
    "stalled",
    "surplus_replies",
    "unanswered_warning",
]
