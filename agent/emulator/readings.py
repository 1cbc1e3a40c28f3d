"""The points where the AWS documentation is silent or contradicts itself, each a switch.

The emulator never picks one reading silently: every such point is a field of `Readings`, the
default is the reading the documentation states (or, where two pages disagree, the normative
text over a worked example), and `jobs-agent sim serve --reading NAME=VALUE` or the test
fixtures select the other. docs/emulator.md has the table with the page behind each reading;
`READINGS` below is the one place that names them, so the CLI, the fixtures and the docs test
cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jobs_agent.jobs.errors import ErrorCode


@dataclass(frozen=True, slots=True)
class Readings:
    notify_on_start: bool = True
    """`notify` when an execution moves QUEUED -> IN_PROGRESS. The notifications page's
    criteria say yes ("changes to a non-terminal status"); its worked example says no."""
    timeout_delay_seconds: int = 0
    """How late a due timer fires: "The actual job execution timeout can occur up to 60 seconds
    later than the estimated duration" (DescribeJobExecution). 0 = on time, 60 = as late as
    documented."""
    mqtt_seconds_before_timed_out: bool = True
    """`approximateSecondsBeforeTimedOut` in MQTT JobExecution payloads: in the API reference's
    JobExecution, absent from the MQTT page's JobExecution and from awsiotsdk's model."""
    merge_status_details: bool = False
    """Whether given statusDetails replace the stored map (the conservative reading) or are
    merged into it; the API says only "If not specified, the statusDetails are unchanged"."""
    update_after_force_cancel: ErrorCode = ErrorCode.INVALID_STATE_TRANSITION
    """The rejection a device's update gets once its IN_PROGRESS execution was force-canceled:
    the Jobs API's example of InvalidStateTransition is an update of a terminal execution; the
    SDKs' TerminalStateReached names describe only."""
    pending_lists_in_progress: bool = True
    """GetPendingJobExecutions lists IN_PROGRESS executions (API references, MQTT API page) or
    filters them out of its 10 (the limits page: "executions that are IN_PROGRESS will be
    filtered from the result")."""
    template_optional_parameters_empty: bool = True
    """An optional managed-template parameter that was not given becomes "" in the rendered
    document (what the Device Client's documented defaults need), or its placeholder stays."""
    stream_json_payload_base64: bool = False
    """A GetStream block's `p` in JSON: hexadecimal, as "Using AWS IoT MQTT-based file delivery
    in devices" says, or base64, as AWS's MQTT file streams library for devices decodes it."""


@dataclass(frozen=True, slots=True)
class Reading:
    name: str
    field: str
    values: Mapping[str, Any]
    """CLI value -> field value; the first one is the default."""


READINGS: tuple[Reading, ...] = (
    Reading("notify-on-start", "notify_on_start", {"yes": True, "no": False}),
    Reading("timeout", "timeout_delay_seconds", {"on-time": 0, "late": 60}),
    Reading(
        "mqtt-seconds-before-timed-out",
        "mqtt_seconds_before_timed_out",
        {"present": True, "absent": False},
    ),
    Reading("status-details", "merge_status_details", {"replace": False, "merge": True}),
    Reading(
        "update-after-force-cancel",
        "update_after_force_cancel",
        {
            "InvalidStateTransition": ErrorCode.INVALID_STATE_TRANSITION,
            "TerminalStateReached": ErrorCode.TERMINAL_STATE_REACHED,
        },
    ),
    Reading(
        "pending-in-progress", "pending_lists_in_progress", {"listed": True, "filtered": False}
    ),
    Reading(
        "template-optional-parameters",
        "template_optional_parameters_empty",
        {"empty": True, "placeholder": False},
    ),
    Reading("stream-json-payload", "stream_json_payload_base64", {"hex": False, "base64": True}),
)
_BY_NAME = {r.name: r for r in READINGS}

DOCUMENTED = Readings()
ALTERNATIVE = Readings(**{r.field: list(r.values.values())[1] for r in READINGS})
"""Every reading that is not the default, at once (the second profile of the test fixtures)."""


def parse_readings(items: Iterable[str], base: Readings = DOCUMENTED) -> Readings:
    """`["timeout=late", ...]` -> Readings; ValueError names the bad item and the choices."""
    changes: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        reading = _BY_NAME.get(name.strip())
        if not sep or reading is None:
            raise ValueError(f"unknown reading {item!r}; known: {', '.join(_BY_NAME)}")
        if value.strip() not in reading.values:
            choices = "|".join(reading.values)
            raise ValueError(f"reading {reading.name} takes {choices}, not {value!r}")
        changes[reading.field] = reading.values[value.strip()]
    return dataclasses.replace(base, **changes)


def describe(readings: Readings) -> list[str]:
    """`NAME=VALUE` for every reading, as `parse_readings` takes them (for logs and banners)."""
    out = []
    for reading in READINGS:
        current = getattr(readings, reading.field)
        label = next(k for k, v in reading.values.items() if v == current)
        out.append(f"{reading.name}={label}")
    return out
