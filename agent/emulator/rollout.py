"""Rollout rates and abort criteria ("How job configurations work"), as pure functions of a
job's counters, so the service only asks "how many now" and "abort?".

Rollout: executions are created in batches, one per minute from the moment the rollout starts
(or its maintenance window opens). A constant rate releases `maximumPerMinute` a minute; an
exponential rate starts at `baseRatePerMinute` and is multiplied by `incrementFactor` each time
the notified (or succeeded) things reach another multiple of the criterion, capped by
`maximumPerMinute`: the guide's example (base 50, factor 2, 1000 notified) runs at 50, 100,
200, 400 a minute after 0, 1000, 2000, 3000 things. Without a rollout configuration every
target is released at once.

Abort: a criterion fires once at least `minNumberOfExecutedThings` things were notified and
the failures of its type reach `thresholdPercentage` of them. Which denominator AWS uses is not
documented; docs/emulator.md says so.
"""

from __future__ import annotations

from collections.abc import Mapping

from jobs_agent.emulator.configs import AbortConfig, AbortCriterion, RolloutConfig
from jobs_agent.emulator.model import ExecutionStatus

BATCH_SECONDS = 60.0


def rate_per_minute(config: RolloutConfig, notified: int, succeeded: int) -> int | None:
    """Executions to create in the current minute; None = no limit."""
    exponential = config.exponential
    if exponential is None:
        return config.maximum_per_minute
    if exponential.notified_things is not None:
        steps = notified // exponential.notified_things
    else:
        assert exponential.succeeded_things is not None
        steps = succeeded // exponential.succeeded_things
    rate = float(exponential.base_rate_per_minute)
    for _ in range(steps):
        rate *= exponential.increment_factor
        if config.maximum_per_minute is not None and rate >= config.maximum_per_minute:
            return config.maximum_per_minute
        if rate > 1e9:
            break
    limit = int(rate)
    if config.maximum_per_minute is not None:
        limit = min(limit, config.maximum_per_minute)
    return max(1, limit)


_FAILURES = {
    "FAILED": (ExecutionStatus.FAILED,),
    "REJECTED": (ExecutionStatus.REJECTED,),
    "TIMED_OUT": (ExecutionStatus.TIMED_OUT,),
    "ALL": (ExecutionStatus.FAILED, ExecutionStatus.REJECTED, ExecutionStatus.TIMED_OUT),
}


def abort_criterion_met(
    config: AbortConfig, notified: int, counts: Mapping[ExecutionStatus, int]
) -> AbortCriterion | None:
    """The first criterion whose threshold is reached, if any."""
    if notified <= 0:
        return None
    for criterion in config.criteria:
        if notified < criterion.min_executed_things:
            continue
        failures = sum(counts.get(s, 0) for s in _FAILURES[criterion.failure_type])
        if failures * 100.0 / notified >= criterion.threshold_percentage and failures > 0:
            return criterion
    return None


def abort_reason(criterion: AbortCriterion) -> tuple[str, str]:
    """(reasonCode, comment) the emulator writes on a job canceled by its abort config."""
    return (
        f"ABORT_CONFIG_{criterion.failure_type}",
        f"Job canceled by its abortConfig: {criterion.failure_type} executions reached "
        f"{criterion.threshold_percentage:g}% of at least {criterion.min_executed_things} things",
    )
