"""The verdict of a chaos run, from what the service recorded and what the handlers did.

Pure functions over plain records, so the rules can be tested without running any chaos:

* **lost**: a job with no terminal status at the end of the drain.
* **duplicated**: two terminal statuses (or two device-reported ones) for one execution, a
  non-resumable step that started twice, or a resumable handler that went back past a chunk it
  had durably checkpointed (or committed a chunk twice).
* **wrong status**: an outcome the rules do not allow for that kind of job, e.g. a quick job
  FAILED although no agent was killed while it ran, or SUCCEEDED without its side effect.
* **cancel violations**: a device update accepted after the execution was CANCELED, or an agent
  that believes its outcome of a canceled execution was accepted.
* **stranded**: the agent's state database still holds an active record (`jobs-agent status`
  shows it running) for an execution the service has ended.

Interruptions are legitimate reasons for FAILED only when an agent was killed (or rebooted)
between the execution's first IN_PROGRESS and its terminal status.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from benchmarks.chaos_setup import FAILING_EXIT, JobSpec

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "REMOVED", "CANCELED"})
EXPECTED = {
    "quick": "SUCCEEDED",
    "long": "SUCCEEDED",
    "resumable": "SUCCEEDED",
    "reboot": "SUCCEEDED",
    "failing": "FAILED",
    "invalid": "REJECTED",
}
RESTARTED = "agent restarted while the step was running"
BOOT_LOOP = "boot-loop guard"
NO_REBOOT = "did not reboot"


@dataclass(frozen=True)
class Change:
    """One entry of the service's history (`JobsService.history()`), reduced to what is checked."""

    time: float
    job_id: str
    execution_number: int
    to_status: str
    source: str
    status_details: Mapping[str, str]


@dataclass(frozen=True)
class SideEffect:
    """One line of the side-effect log: `jobId executionNumber step event pid ppid time`."""

    job_id: str
    execution_number: int
    step: int
    event: str
    pid: int
    ppid: int
    time: float


def parse_side_effects(text: str) -> list[SideEffect]:
    effects = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 7:
            continue
        job, number, step, event, pid, ppid, when = parts
        effects.append(
            SideEffect(job, int(number), int(step), event, int(pid), int(ppid), float(when))
        )
    return effects


@dataclass(frozen=True)
class Problem:
    category: str
    """lost | duplicated | wrong | cancel | stranded"""
    job_id: str
    detail: str


@dataclass
class Verdict:
    problems: list[Problem] = field(default_factory=list)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    interrupted: int = 0
    """Jobs ended FAILED (or resumed) because an agent died while they ran: allowed, counted."""
    orphans: int = 0
    """Handler scripts that finished after the agent that started them had been killed."""
    started_after_cancel: int = 0
    """Steps started after the service had canceled their execution (the agent had not heard)."""
    reboots_after_cancel: int = 0
    """Reboot requests (the fake reboot command ran) for a reboot job the service had canceled
    before: the device rebooted for a canceled job (legitimate only if the agent was offline)."""
    outbox_left: int = 0
    active_left: int = 0

    def count(self, category: str) -> int:
        return sum(1 for p in self.problems if p.category == category)

    @property
    def ok(self) -> bool:
        return not self.problems and self.outbox_left == 0 and self.active_left == 0


def _add(verdict: Verdict, category: str, job_id: str, detail: str) -> None:
    verdict.problems.append(Problem(category, job_id, detail))


def check(
    specs: Iterable[JobSpec],
    history: Iterable[Change],
    effects: Iterable[SideEffect],
    *,
    interruptions: Iterable[float],
    cancels: Mapping[str, float],
    agent_status: Mapping[str, Any] | None,
    max_restarts_per_job: int,
    reboot_requests: Iterable[float] = (),
) -> Verdict:
    verdict = Verdict()
    specs_list = list(specs)
    kills = sorted(interruptions)
    by_job: dict[str, list[Change]] = defaultdict(list)
    for change in sorted(history, key=lambda c: c.time):
        by_job[change.job_id].append(change)
    effects_by_job: dict[str, list[SideEffect]] = defaultdict(list)
    for effect in sorted(effects, key=lambda e: e.time):
        effects_by_job[effect.job_id].append(effect)
    final_status: dict[str, str] = {}

    for spec in specs_list:
        changes = by_job.get(spec.job_id, [])
        numbers = sorted({c.execution_number for c in changes})
        if numbers != [1]:
            _add(verdict, "wrong", spec.job_id, f"executions {numbers}, expected exactly [1]")
        terminal = [c for c in changes if c.to_status in TERMINAL]
        if not terminal:
            last = changes[-1].to_status if changes else "never queued"
            _add(verdict, "lost", spec.job_id, f"no terminal status (last {last})")
            verdict.outcomes[(spec.kind, "LOST")] += 1
            continue
        if len(terminal) > 1:
            statuses = [c.to_status for c in terminal]
            _add(verdict, "duplicated", spec.job_id, f"terminal statuses {statuses}")
        device_terminal = [c for c in terminal if c.source == "device"]
        if len(device_terminal) > 1:
            _add(verdict, "duplicated", spec.job_id, "more than one device-reported outcome")
        final = terminal[0]
        status = final.to_status
        final_status[spec.job_id] = status
        verdict.outcomes[(spec.kind, status)] += 1
        if status == "CANCELED":
            late = [c for c in changes if c.time > final.time and c.source == "device"]
            if late:
                _add(
                    verdict,
                    "cancel",
                    spec.job_id,
                    f"device update accepted after the cancel: {late[0].to_status}",
                )
        job_effects = effects_by_job.get(spec.job_id, [])
        _check_effects(verdict, spec, job_effects, cancels.get(spec.job_id))
        started = next((c.time for c in changes if c.to_status == "IN_PROGRESS"), final.time)
        killed = sum(1 for t in kills if started < t < final.time)
        _check_status(verdict, spec, final, killed, job_effects, cancels, max_restarts_per_job)

    if agent_status is not None:
        _check_agent(verdict, agent_status, final_status)
    reboot_jobs = [s.job_id for s in specs_list if s.kind == "reboot"]
    for requested in reboot_requests:
        # The command gets no job id: attribute it to the reboot job started last before it.
        began = [
            (first, job)
            for job in reboot_jobs
            if (first := _first_in_progress(by_job.get(job, []))) is not None and first < requested
        ]
        if not began:
            continue
        job = max(began)[1]
        canceled = cancels.get(job)
        if canceled is not None and final_status.get(job) == "CANCELED" and canceled < requested:
            verdict.reboots_after_cancel += 1
    return verdict


def _first_in_progress(changes: list[Change]) -> float | None:
    return next((c.time for c in changes if c.to_status == "IN_PROGRESS"), None)


def _check_status(
    verdict: Verdict,
    spec: JobSpec,
    final: Change,
    killed: int,
    effects: list[SideEffect],
    cancels: Mapping[str, float],
    max_restarts: int,
) -> None:
    status = final.to_status
    reason = str(final.status_details.get("reason", ""))
    if status == "CANCELED":
        if spec.job_id not in cancels:
            _add(verdict, "wrong", spec.job_id, "CANCELED but the driver never canceled it")
        return
    expected = EXPECTED[spec.kind]
    if status == expected and (
        spec.kind != "failing" or f"exited with code {FAILING_EXIT}" in reason
    ):
        ended = {e.step for e in effects if e.event == "end"}
        missing = [s for s in spec.steps if s not in ended]
        if missing:
            _add(verdict, "wrong", spec.job_id, f"{status} but step(s) {missing} never finished")
        if spec.kind == "resumable" and not any(e.event == "end" for e in effects):
            _add(verdict, "wrong", spec.job_id, "SUCCEEDED but the plugin never reached its end")
        if spec.kind == "invalid" and not spec.steps and effects:
            _add(verdict, "wrong", spec.job_id, "a step of an invalid document ran")
        return
    if status == "FAILED" and killed >= 1:
        if spec.kind != "resumable" and RESTARTED in reason:
            verdict.interrupted += 1
            return
        if spec.kind == "reboot" and NO_REBOOT in reason:
            verdict.interrupted += 1
            return
        if spec.kind == "resumable" and BOOT_LOOP in reason and killed > max_restarts:
            verdict.interrupted += 1
            return
    _add(
        verdict,
        "wrong",
        spec.job_id,
        f"{status} (reason {reason!r}) for a {spec.kind} job, expected {expected};"
        f" {killed} agent kill(s) while it ran",
    )


def _check_effects(
    verdict: Verdict, spec: JobSpec, effects: list[SideEffect], canceled_at: float | None
) -> None:
    if spec.kind == "resumable":
        _check_resumable(verdict, spec, effects)
        return
    starts: Counter[tuple[int, int]] = Counter()
    start_ppid: dict[tuple[int, int, int], int] = {}
    for effect in effects:
        key = (effect.execution_number, effect.step)
        if effect.event == "start":
            starts[key] += 1
            start_ppid[(*key, effect.pid)] = effect.ppid
            if canceled_at is not None and effect.time > canceled_at:
                verdict.started_after_cancel += 1
        elif effect.event == "end":
            parent = start_ppid.get((*key, effect.pid))
            if parent is not None and parent != effect.ppid:
                verdict.orphans += 1
    for (number, step), count in starts.items():
        if count > 1:
            _add(
                verdict,
                "duplicated",
                spec.job_id,
                f"execution {number} step {step} (not resumable) started {count} times",
            )


def _check_resumable(verdict: Verdict, spec: JobSpec, effects: list[SideEffect]) -> None:
    committed: set[int] = set()
    begun: set[int] = set()
    for effect in effects:
        if effect.event == "begin":
            begun.add(effect.step)
        elif effect.event == "commit":
            if effect.step in committed:
                _add(verdict, "duplicated", spec.job_id, f"chunk {effect.step} committed twice")
            committed.add(effect.step)
        elif effect.event == "resume":
            if committed and effect.step <= max(committed):
                _add(
                    verdict,
                    "duplicated",
                    spec.job_id,
                    f"resumed at chunk {effect.step} after chunk {max(committed)} was"
                    " checkpointed and committed",
                )
            if effect.step > 0 and effect.step - 1 not in begun:
                _add(
                    verdict,
                    "wrong",
                    spec.job_id,
                    f"resumed at chunk {effect.step}, but chunk {effect.step - 1} never began",
                )


def _check_agent(
    verdict: Verdict, status: Mapping[str, Any], final_status: Mapping[str, str]
) -> None:
    verdict.outbox_left = len(status.get("outbox", []))
    verdict.active_left = len(status.get("running", []))
    for record in status.get("running", []):
        job_id = record.get("job_id")
        service = final_status.get(job_id)
        if service is not None:
            _add(
                verdict,
                "stranded",
                job_id,
                f"agent record still {record.get('state')} after the service ended it as {service}",
            )
    for record in status.get("recent", []):
        job_id = record.get("job_id")
        service = final_status.get(job_id)
        if service is None:
            continue
        state, outcome, note = record.get("state"), record.get("status"), record.get("note")
        if service == "CANCELED":
            if state == "reported" and not note:
                _add(
                    verdict,
                    "cancel",
                    job_id,
                    f"agent recorded its {outcome} as delivered for a CANCELED execution",
                )
        elif state == "reported" and outcome != service:
            _add(verdict, "wrong", job_id, f"agent recorded {outcome}, the service has {service}")
