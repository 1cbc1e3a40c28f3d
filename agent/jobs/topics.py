"""Every AWS IoT Jobs MQTT topic, built and parsed in one place for both sides.

The device builds request topics and subscription filters; the emulator parses request topics
(an unparseable one is answered with `InvalidTopic`) and builds reply and event topics. Keeping
both directions here means `parse_topic(build_topic(t)) == t` can be tested once for all.

Topic shapes below the prefix `$aws/things/{thingName}/jobs/`:

==============================  ==========================================================
default namespace               namespace `ns`
==============================  ==========================================================
`get[/accepted|/rejected]`      (none)
`start-next[/accepted|...]`     (none, see below)
`{jobId}/get[/accepted|...]`    `{jobId}/namespace-{ns}/get[/accepted|/rejected]`
`{jobId}/update[/accepted|...]` `{jobId}/namespace-{ns}/update[/accepted|/rejected]`
`notify`                        `notify-namespace-{ns}` and `{jobId}/notify-namespace-{ns}`
`notify-next`                   `notify-next-namespace-{ns}`
==============================  ==========================================================

Decision on the **uncertain** namespaced start-next and get-pending: neither is defined here.
The Greengrass nucleus, the only documented user of namespaces over MQTT, takes the next
namespaced job with DescribeJobExecution on `$next` followed by UpdateJobExecution to
IN_PROGRESS, and the device side does the same. Builders refuse a namespace for those two
operations and the parser has no such shape, so the emulator answers `InvalidTopic` if a device
tries one. `$next` is accepted as a job id only for DescribeJobExecution, as in the API.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Final

from jobs_agent.datamodel import model
from jobs_agent.vocabulary import is_job_id, is_namespace, is_thing_name

PREFIX = "$aws/things/"

_NS_REQUEST = "namespace-"
_NOTIFY_NS = "notify-namespace-"
_NOTIFY_NEXT_NS = "notify-next-namespace-"


class Operation(Enum):
    GET_PENDING = "GetPendingJobExecutions"
    START_NEXT = "StartNextPendingJobExecution"
    DESCRIBE = "DescribeJobExecution"
    UPDATE = "UpdateJobExecution"
    NOTIFY = "JobExecutionsChanged"
    NOTIFY_NEXT = "NextJobExecutionChanged"

    # Members are singletons compared by identity: hashed by it too, in C, where Enum's own
    # `__hash__` is a Python call (about forty per job in the tables below; issue 18).
    __hash__ = object.__hash__


class ReplyKind(Enum):
    REQUEST = "request"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    EVENT = "event"

    __hash__ = object.__hash__  # as `Operation`'s


START_NEXT: Final = Operation.START_NEXT
DESCRIBE: Final = Operation.DESCRIBE
UPDATE: Final = Operation.UPDATE
NOTIFY: Final = Operation.NOTIFY
NOTIFY_NEXT: Final = Operation.NOTIFY_NEXT
REQUEST: Final = ReplyKind.REQUEST
ACCEPTED: Final = ReplyKind.ACCEPTED
EVENT: Final = ReplyKind.EVENT
"""Members the per-message paths compare with, read as module globals: on Python 3.11 a
member read off its class goes through the hook of `EnumType.__getattr__` (about 900
instructions a read, which `sys.setprofile` does not show), and a plugin job read 24 here and
in the Jobs client (issue 18; the emulator's are in `emulator.model`)."""


_EVENTS = frozenset({Operation.NOTIFY, Operation.NOTIFY_NEXT})
_SUFFIX = {ReplyKind.ACCEPTED: "/accepted", ReplyKind.REJECTED: "/rejected", ReplyKind.REQUEST: ""}
_JOB_VERB = {Operation.DESCRIBE: "get", Operation.UPDATE: "update"}
_VERB_JOB = {verb: op for op, verb in _JOB_VERB.items()}
_PLAIN_VERB = {Operation.GET_PENDING: "get", Operation.START_NEXT: "start-next"}
_VERB_PLAIN = {verb: op for op, verb in _PLAIN_VERB.items()}
_REPLY_KIND = {"accepted": ReplyKind.ACCEPTED, "rejected": ReplyKind.REJECTED}


@model(slots=True)
class ParsedTopic:
    """One Jobs topic taken apart. `namespace` None is the default namespace.

    `job_id` is set for DESCRIBE and UPDATE (possibly `$next` for DESCRIBE) and for the per-job
    namespaced notify topic; None otherwise.
    """

    thing_name: str
    operation: Operation
    kind: ReplyKind
    namespace: str | None = None
    job_id: str | None = None


# The protocol's id rules (jobs_agent.vocabulary), under the names this module has always had.
is_valid_thing_name = is_thing_name
is_valid_job_id = is_job_id
is_valid_namespace = is_namespace


def _check(topic: ParsedTopic) -> None:
    """Raise ValueError if `topic` names something the protocol does not have."""
    if not is_valid_thing_name(topic.thing_name):
        raise ValueError(f"invalid thing name {topic.thing_name!r}")
    if topic.namespace is not None and not is_valid_namespace(topic.namespace):
        raise ValueError(f"invalid namespace {topic.namespace!r}")
    op = topic.operation
    if (topic.kind is EVENT) != (op in _EVENTS):
        raise ValueError(f"{op.name} has no {topic.kind.value} topic")
    if op in _JOB_VERB:
        if topic.job_id is None or not is_valid_job_id(topic.job_id, allow_next=op is DESCRIBE):
            raise ValueError(f"invalid job id {topic.job_id!r} for {op.name}")
        return
    if op is NOTIFY and topic.job_id is not None:
        if topic.namespace is None:
            raise ValueError("a per-job notify topic exists only in a namespace")
        if not is_valid_job_id(topic.job_id):
            raise ValueError(f"invalid job id {topic.job_id!r}")
        return
    if topic.job_id is not None:
        raise ValueError(f"{op.name} takes no job id")
    if op in _PLAIN_VERB and topic.namespace is not None:
        raise ValueError(f"{op.name} has no namespaced topic (use DescribeJobExecution on $next)")


def build_topic(topic: ParsedTopic) -> str:
    """The topic string for `topic`; ValueError if no such topic exists."""
    _check(topic)
    base = f"{PREFIX}{topic.thing_name}/jobs/"
    op, ns = topic.operation, topic.namespace
    if op is NOTIFY:
        if ns is None:
            return base + "notify"
        if topic.job_id is not None:
            return f"{base}{topic.job_id}/{_NOTIFY_NS}{ns}"
        return base + _NOTIFY_NS + ns
    if op is NOTIFY_NEXT:
        return base + ("notify-next" if ns is None else _NOTIFY_NEXT_NS + ns)
    if op in _PLAIN_VERB:
        return base + _PLAIN_VERB[op] + _SUFFIX[topic.kind]
    middle = "" if ns is None else f"{_NS_REQUEST}{ns}/"
    return f"{base}{topic.job_id}/{middle}{_JOB_VERB[op]}{_SUFFIX[topic.kind]}"


def parse_topic(topic: str) -> ParsedTopic | None:
    """Take a Jobs topic apart; None if it is not one (or names are invalid)."""
    if not topic.startswith(PREFIX):
        return None
    thing, sep, rest = topic[len(PREFIX) :].partition("/jobs/")
    if not sep:
        return None
    # The thing name is checked once, by `_check` (twice per reply before; issue 18).
    parsed = _parse_rest(thing, rest.split("/"))
    if parsed is None:
        return None
    try:
        _check(parsed)
    except ValueError:
        return None
    return parsed


def _parse_rest(thing: str, parts: list[str]) -> ParsedTopic | None:
    # Shapes are told apart by depth and by fixed words; a job id is never looked at for
    # meaning, so a job called "get" or "notify" is just a job id in the job-id position.
    n = len(parts)
    first = parts[0]
    if n == 1:
        if first == "notify":
            return ParsedTopic(thing, NOTIFY, EVENT)
        if first == "notify-next":
            return ParsedTopic(thing, NOTIFY_NEXT, EVENT)
        if first.startswith(_NOTIFY_NEXT_NS):
            ns = first[len(_NOTIFY_NEXT_NS) :]
            return ParsedTopic(thing, NOTIFY_NEXT, EVENT, namespace=ns)
        if first.startswith(_NOTIFY_NS):
            ns = first[len(_NOTIFY_NS) :]
            return ParsedTopic(thing, NOTIFY, EVENT, namespace=ns)
        if first in _VERB_PLAIN:
            return ParsedTopic(thing, _VERB_PLAIN[first], REQUEST)
        return None
    if n == 2:
        second = parts[1]
        if first in _VERB_PLAIN and second in _REPLY_KIND:
            return ParsedTopic(thing, _VERB_PLAIN[first], _REPLY_KIND[second])
        if second in _VERB_JOB:
            return ParsedTopic(thing, _VERB_JOB[second], REQUEST, job_id=first)
        if second.startswith(_NOTIFY_NS):
            ns = second[len(_NOTIFY_NS) :]
            return ParsedTopic(thing, NOTIFY, EVENT, namespace=ns, job_id=first)
        return None
    if n == 3:
        second, third = parts[1], parts[2]
        if second in _VERB_JOB and third in _REPLY_KIND:
            return ParsedTopic(thing, _VERB_JOB[second], _REPLY_KIND[third], job_id=first)
        if second.startswith(_NS_REQUEST) and third in _VERB_JOB:
            ns = second[len(_NS_REQUEST) :]
            return ParsedTopic(thing, _VERB_JOB[third], REQUEST, namespace=ns, job_id=first)
        return None
    if n == 4:
        second, third, fourth = parts[1], parts[2], parts[3]
        if second.startswith(_NS_REQUEST) and third in _VERB_JOB and fourth in _REPLY_KIND:
            ns = second[len(_NS_REQUEST) :]
            return ParsedTopic(
                thing, _VERB_JOB[third], _REPLY_KIND[fourth], namespace=ns, job_id=first
            )
    return None


# -- convenience builders (what callers actually write) --------------------------------------
def request_topic(
    thing_name: str,
    operation: Operation,
    *,
    job_id: str | None = None,
    namespace: str | None = None,
) -> str:
    """The topic a device publishes `operation` to."""
    return build_topic(ParsedTopic(thing_name, operation, REQUEST, namespace, job_id))


def reply_topic(
    thing_name: str,
    operation: Operation,
    kind: ReplyKind,
    *,
    job_id: str | None = None,
    namespace: str | None = None,
) -> str:
    """The `/accepted` or `/rejected` topic the service answers `operation` on."""
    if kind not in (ReplyKind.ACCEPTED, ReplyKind.REJECTED):
        raise ValueError(f"not a reply kind: {kind}")
    return build_topic(ParsedTopic(thing_name, operation, kind, namespace, job_id))


def get_pending_topic(thing_name: str) -> str:
    return request_topic(thing_name, Operation.GET_PENDING)


def start_next_topic(thing_name: str) -> str:
    return request_topic(thing_name, Operation.START_NEXT)


def describe_topic(thing_name: str, job_id: str, namespace: str | None = None) -> str:
    return request_topic(thing_name, Operation.DESCRIBE, job_id=job_id, namespace=namespace)


def update_topic(thing_name: str, job_id: str, namespace: str | None = None) -> str:
    return request_topic(thing_name, Operation.UPDATE, job_id=job_id, namespace=namespace)


def notify_topic(thing_name: str, namespace: str | None = None) -> str:
    """JobExecutionsChanged: `notify` or `notify-namespace-{ns}`."""
    return build_topic(ParsedTopic(thing_name, Operation.NOTIFY, ReplyKind.EVENT, namespace))


def notify_next_topic(thing_name: str, namespace: str | None = None) -> str:
    """NextJobExecutionChanged: `notify-next` or `notify-next-namespace-{ns}`."""
    return build_topic(ParsedTopic(thing_name, Operation.NOTIFY_NEXT, ReplyKind.EVENT, namespace))


def job_notify_namespace_topic(thing_name: str, job_id: str, namespace: str) -> str:
    """The per-job form `{jobId}/notify-namespace-{ns}` shown in the API reference."""
    return build_topic(
        ParsedTopic(thing_name, Operation.NOTIFY, ReplyKind.EVENT, namespace, job_id)
    )


def device_subscriptions(thing_name: str, namespaces: Sequence[str] = ()) -> list[str]:
    """The filters a device subscribes to: every reply and event topic, no request topic.

    `get/+` or `start-next/+` would also match the describe/update requests of a job called
    "get" or "start-next" (`get/get`), so those replies are named exactly. `+/get/+` and
    `+/update/+` are three levels deep where requests are two (default) or have `namespace-` in
    the middle (namespaced), and `+/namespace-{ns}/+/+` is four deep where requests are three.
    """
    if not is_valid_thing_name(thing_name):
        raise ValueError(f"invalid thing name {thing_name!r}")
    base = f"{PREFIX}{thing_name}/jobs/"
    filters = [
        base + "get/accepted",
        base + "get/rejected",
        base + "start-next/accepted",
        base + "start-next/rejected",
        base + "+/get/+",
        base + "+/update/+",
        base + "notify",
        base + "notify-next",
    ]
    for ns in namespaces:
        if not is_valid_namespace(ns):
            raise ValueError(f"invalid namespace {ns!r}")
        filters += [
            f"{base}+/{_NS_REQUEST}{ns}/+/+",
            base + _NOTIFY_NS + ns,
            base + _NOTIFY_NEXT_NS + ns,
        ]
    return filters
