"""One thing's pending executions in one namespace, in the order the documentation gives.

"Sorted by status (IN_PROGRESS job executions before QUEUED job executions) and then by the
times when they were queued" (Jobs notifications), and start-next / `$next` return IN_PROGRESS
first, then "in the order in which they were created" (Jobs device MQTT API): the head is the
IN_PROGRESS execution queued first, not the one started first. Executions carry `seq`, a
service-wide creation counter, which breaks ties between executions queued in the same second.

Lists are capped as the limits page says: a ListNotification and GetPendingJobExecutions hold at
most 10 pending executions, 15 when the thing has executions of jobs with a scheduling
configuration. Building a capped list costs O(cap + IN_PROGRESS count), never the queue depth.

`queued` is an OrderedDict, not a dict: a queue held at depth takes from the front and adds at
the back, and a plain dict leaves the taken entries as holes at the front of its table until it
is rebuilt, so finding its first entry (the head, every request) costs the depth (20 us at
10,000 queued here); an OrderedDict's first entry is one link away.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import islice
from operator import attrgetter

from jobs_agent.emulator.model import Execution

PENDING_LIST_LIMIT = 10
PENDING_LIST_LIMIT_SCHEDULED = 15
_SEQ = attrgetter("seq")
"""An execution's creation order, read in C (a lambda was a Python call per execution)."""


@dataclass(slots=True)
class Queue:
    in_progress: dict[str, Execution] = field(default_factory=dict)
    queued: OrderedDict[str, Execution] = field(default_factory=OrderedDict)
    """Both keyed by jobId; `queued` in insertion order, which is `seq` order."""
    announced_head: tuple[str, int] | None = None
    scheduled: int = 0
    """Pending executions of jobs with a schedulingConfig (they raise the list limit)."""

    def head(self) -> Execution | None:
        if self.in_progress:
            return min(self.in_progress.values(), key=_SEQ)
        for execution in self.queued.values():
            return execution
        return None

    def pending(self) -> tuple[list[Execution], list[Execution]]:
        """(IN_PROGRESS, QUEUED) as a capped list shows them (live records, not copies). Two
        per job (each `notify`), in one call: the limit was a property read twice and the
        IN_PROGRESS order a method and a lambda per execution (seven calls per job)."""
        limit = PENDING_LIST_LIMIT_SCHEDULED if self.scheduled else PENDING_LIST_LIMIT
        in_progress = sorted(self.in_progress.values(), key=_SEQ)[:limit]
        return in_progress, list(islice(self.queued.values(), limit - len(in_progress)))

    def add_queued(self, execution: Execution, scheduled: bool) -> None:
        self.queued[execution.job_id] = execution
        self.scheduled += scheduled

    def start(self, execution: Execution) -> None:
        self.queued.pop(execution.job_id, None)
        self.in_progress[execution.job_id] = execution

    def discard(self, execution: Execution, scheduled: bool) -> None:
        removed = self.queued.pop(execution.job_id, None) or self.in_progress.pop(
            execution.job_id, None
        )
        if removed is not None:
            self.scheduled -= scheduled
