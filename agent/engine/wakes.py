"""When a `notify` or `notify-next` calls for a look for work, and when it names only what this
device already took.

A look is a StartNextPendingJobExecution (or a take by name). The Jobs service publishes a
ListNotification (`notify`) whenever an execution is queued, changes to a non-terminal status or
becomes terminal, listing the thing's pending executions (IN_PROGRESS first, then QUEUED, at
most 15; the older reference: 10), and a NextNotification (`notify-next`) whenever the first of
that list changes, naming it or none (docs.aws.amazon.com/iot/latest/developerguide/
jobs-comm-notifications.html; ../shared/reference/iot-jobs-mqtt.md). So every execution queued
for the thing is named by the events of its own queuing, and again, if it is still pending, by
those of the end of each execution before it. An event whose executions this device took
already (or one that names none: nothing pending) tells it nothing a look would: a rollout's
job is named by its creation's `notify` and `notify-next`, by the `notify` of its start, and
its end's events name nothing; one look takes it, not one per event (3.6-3.9 requests a device
to 2 in round 12's fleet runs).

What is looked for whatever events name (`Wakes.look`): the start, a resync (events may have
been lost with the link), a reload, a retry, a deferred execution's turn, and a job taken that
did not end in the round (the service did not publish its end). An event list that may be cut
(as long as the limit) or that another event replaced unread (`ClientStats.events_coalesced`:
the replaced one may have named what the newer does not, as delivery order is not guaranteed)
is a look too. The named executions are kept until a look answered after they were named: one
named while a start-next was out (answered before or after it was published) gets its own look
unless that start-next took it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from jobs_agent.jobs.client import JobExecutionsChanged, NextJobExecutionChanged
from jobs_agent.jobs.events import NOTIFY_LIST_LIMIT
from jobs_agent.vocabulary import ExecutionRef

HELD_KEPT = 256
"""Executions taken by this process remembered as its own (as many as `Shared.outcomes`)."""


def named(event: JobExecutionsChanged | NextJobExecutionChanged) -> set[ExecutionRef] | None:
    """The executions `event` says are pending; None when it cannot say all of them (a list
    that may be cut, or a summary without its execution number)."""
    if isinstance(event, NextJobExecutionChanged):
        execution = event.event.execution
        if execution is None:
            return set()
        if execution.execution_number is None:
            return None
        return {ExecutionRef(event.namespace, execution.job_id, execution.execution_number)}
    if event.cut:
        return None  # its body left unread (`UnreadBody`)
    jobs = event.body.get("jobs")
    # dict first: the ABC's check is a Python frame (`ABCMeta.__instancecheck__`) per event
    if not isinstance(jobs, (dict, Mapping)):
        return None
    lists = list(jobs.values())
    total = 0
    for summaries in lists:
        if not isinstance(summaries, list):
            return None
        total += len(summaries)
    if total >= NOTIFY_LIST_LIMIT:
        # counted before any is read: a queue deeper than the limit sends every event this
        # long, and its summaries would be built into references only to be thrown away
        return None
    refs: set[ExecutionRef] = set()
    for summaries in lists:
        for summary in summaries:
            if not isinstance(summary, (dict, Mapping)):
                return None
            job_id, number = summary.get("jobId"), summary.get("executionNumber")
            if not isinstance(job_id, str) or type(number) is not int:
                return None
            refs.add(ExecutionRef(event.namespace, job_id, number))
    return refs


class Wakes:
    """What the engine's next round must look for (see the module docstring)."""

    def __init__(self) -> None:
        self.look = True
        """Look whatever the events named."""
        self.named: set[ExecutionRef] = set()
        """Executions events named since a look answered after them."""
        self._held: OrderedDict[ExecutionRef, None] = OrderedDict()

    def hear(self, refs: set[ExecutionRef] | None) -> None:
        if refs is None:
            self.look = True
        else:
            self.named |= refs

    def hold(self, ref: ExecutionRef) -> None:
        """`ref` was taken by this process: an event naming it asks for no look."""
        self._held[ref] = None
        self._held.move_to_end(ref)
        if len(self._held) > HELD_KEPT:
            self._held.popitem(last=False)
        self.named.discard(ref)

    def needed(self) -> bool:
        if self.look:
            return True
        held = self._held
        return any(ref not in held for ref in self.named)

    def looking(self) -> set[ExecutionRef]:
        """A look goes out now: what was named before it (`looked` is told it afterwards)."""
        self.look = False
        return set(self.named)

    def looked(self, before: set[ExecutionRef], *, found: bool) -> None:
        """The look answered. Nothing found: nothing named before it is pending now. Found:
        what was named before and is not held is looked for once the taken job ended."""
        if not found:
            self.named -= before

    def failed(self) -> None:
        """The look went unanswered: the next round looks again."""
        self.look = True
