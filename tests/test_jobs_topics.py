"""Every Jobs topic string, pinned, for the default namespace and a namespace."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import awsiot.iotjobs
import pytest

from jobs_agent.jobs import topics
from jobs_agent.jobs.topics import Operation, ParsedTopic, ReplyKind, build_topic, parse_topic
from jobs_agent.transport.topics import topic_matches

T = "thing-1"
P = f"$aws/things/{T}/jobs"
ACC, REJ, REQ, EV = ReplyKind.ACCEPTED, ReplyKind.REJECTED, ReplyKind.REQUEST, ReplyKind.EVENT
GP, SN, DE, UP = Operation.GET_PENDING, Operation.START_NEXT, Operation.DESCRIBE, Operation.UPDATE
NO, NN = Operation.NOTIFY, Operation.NOTIFY_NEXT

# (topic string, parsed form). The whole protocol surface, one line per topic.
TABLE: list[tuple[str, ParsedTopic]] = [
    (f"{P}/get", ParsedTopic(T, GP, REQ)),
    (f"{P}/get/accepted", ParsedTopic(T, GP, ACC)),
    (f"{P}/get/rejected", ParsedTopic(T, GP, REJ)),
    (f"{P}/start-next", ParsedTopic(T, SN, REQ)),
    (f"{P}/start-next/accepted", ParsedTopic(T, SN, ACC)),
    (f"{P}/start-next/rejected", ParsedTopic(T, SN, REJ)),
    (f"{P}/job-1/get", ParsedTopic(T, DE, REQ, job_id="job-1")),
    (f"{P}/job-1/get/accepted", ParsedTopic(T, DE, ACC, job_id="job-1")),
    (f"{P}/job-1/get/rejected", ParsedTopic(T, DE, REJ, job_id="job-1")),
    (f"{P}/$next/get", ParsedTopic(T, DE, REQ, job_id="$next")),
    (f"{P}/$next/get/accepted", ParsedTopic(T, DE, ACC, job_id="$next")),
    (f"{P}/$next/get/rejected", ParsedTopic(T, DE, REJ, job_id="$next")),
    (f"{P}/job-1/update", ParsedTopic(T, UP, REQ, job_id="job-1")),
    (f"{P}/job-1/update/accepted", ParsedTopic(T, UP, ACC, job_id="job-1")),
    (f"{P}/job-1/update/rejected", ParsedTopic(T, UP, REJ, job_id="job-1")),
    (f"{P}/notify", ParsedTopic(T, NO, EV)),
    (f"{P}/notify-next", ParsedTopic(T, NN, EV)),
    # namespace "ns_1"
    (f"{P}/notify-namespace-ns_1", ParsedTopic(T, NO, EV, namespace="ns_1")),
    (f"{P}/notify-next-namespace-ns_1", ParsedTopic(T, NN, EV, namespace="ns_1")),
    (f"{P}/job-1/notify-namespace-ns_1", ParsedTopic(T, NO, EV, "ns_1", "job-1")),
    (f"{P}/job-1/namespace-ns_1/get", ParsedTopic(T, DE, REQ, "ns_1", "job-1")),
    (f"{P}/job-1/namespace-ns_1/get/accepted", ParsedTopic(T, DE, ACC, "ns_1", "job-1")),
    (f"{P}/job-1/namespace-ns_1/get/rejected", ParsedTopic(T, DE, REJ, "ns_1", "job-1")),
    (f"{P}/$next/namespace-ns_1/get", ParsedTopic(T, DE, REQ, "ns_1", "$next")),
    (f"{P}/$next/namespace-ns_1/get/accepted", ParsedTopic(T, DE, ACC, "ns_1", "$next")),
    (f"{P}/job-1/namespace-ns_1/update", ParsedTopic(T, UP, REQ, "ns_1", "job-1")),
    (f"{P}/job-1/namespace-ns_1/update/accepted", ParsedTopic(T, UP, ACC, "ns_1", "job-1")),
    (f"{P}/job-1/namespace-ns_1/update/rejected", ParsedTopic(T, UP, REJ, "ns_1", "job-1")),
    # job ids that spell protocol words are still job ids in the job-id position
    (f"{P}/get/get", ParsedTopic(T, DE, REQ, job_id="get")),
    (f"{P}/start-next/update", ParsedTopic(T, UP, REQ, job_id="start-next")),
    (f"{P}/notify/get/accepted", ParsedTopic(T, DE, ACC, job_id="notify")),
    (f"{P}/namespace-x/get", ParsedTopic(T, DE, REQ, job_id="namespace-x")),
    # thing names may contain colons
    ("$aws/things/a:b_c-D/jobs/get", ParsedTopic("a:b_c-D", GP, REQ)),
]


@pytest.mark.parametrize(("topic", "parsed"), TABLE, ids=[t for t, _ in TABLE])
def test_topic_table(topic: str, parsed: ParsedTopic) -> None:
    assert build_topic(parsed) == topic
    assert parse_topic(topic) == parsed


def test_convenience_builders() -> None:
    assert topics.get_pending_topic(T) == f"{P}/get"
    assert topics.start_next_topic(T) == f"{P}/start-next"
    assert topics.describe_topic(T, "$next") == f"{P}/$next/get"
    assert topics.describe_topic(T, "j", "ns") == f"{P}/j/namespace-ns/get"
    assert topics.update_topic(T, "j") == f"{P}/j/update"
    assert topics.update_topic(T, "j", "ns") == f"{P}/j/namespace-ns/update"
    assert topics.notify_topic(T) == f"{P}/notify"
    assert topics.notify_topic(T, "ns") == f"{P}/notify-namespace-ns"
    assert topics.notify_next_topic(T) == f"{P}/notify-next"
    assert topics.notify_next_topic(T, "ns") == f"{P}/notify-next-namespace-ns"
    assert topics.job_notify_namespace_topic(T, "j", "ns") == f"{P}/j/notify-namespace-ns"
    assert topics.reply_topic(T, UP, REJ, job_id="j", namespace="ns") == (
        f"{P}/j/namespace-ns/update/rejected"
    )
    with pytest.raises(ValueError):
        topics.reply_topic(T, UP, REQ, job_id="j")


@pytest.mark.parametrize(
    "topic",
    [
        "$aws/things/bad name/jobs/get",  # space in thing name
        "$aws/things/" + "t" * 129 + "/jobs/get",  # thing name too long
        "$aws/things//jobs/get",  # empty thing name
        f"{P}/" + "j" * 65 + "/get",  # job id too long
        f"{P}/job.1/get",  # '.' not allowed in a job id
        f"{P}/job:1/update",  # ':' is allowed in thing names, not job ids
        f"{P}/$next/update",  # $next only for describe
        f"{P}/$next/namespace-ns/update",
        f"{P}/j/namespace-/get",  # empty namespace
        f"{P}/j/namespace-n.s/get",  # bad namespace
        f"{P}/notify-namespace-",
        f"{P}/namespace-ns/start-next",  # no namespaced start-next (documented decision)
        f"{P}/start-next-namespace-ns",
        f"{P}/get/other",
        f"{P}/j/get/maybe",
        f"{P}/j/delete",
        f"{P}/j/namespace-ns/get/accepted/more",
        f"{P}/notify/",  # trailing slash
        f"{P}/",
        f"{P}",
        "$aws/things/t/shadow/get",
        "things/t/jobs/get",
        "$aws/things/t/jobs/notify-next-namespace-ns/x",
        "$aws/things/bad name/jobs/j/update/accepted",  # the thing name, checked by _check
        "$aws/things//jobs/notify",
    ],
)
def test_invalid_topics_do_not_parse(topic: str) -> None:
    assert parse_topic(topic) is None


@pytest.mark.parametrize(
    "parsed",
    [
        ParsedTopic("bad name", GP, REQ),
        ParsedTopic(T, GP, REQ, namespace="ns"),
        ParsedTopic(T, SN, ACC, namespace="ns"),
        ParsedTopic(T, UP, REQ, job_id="$next"),
        ParsedTopic(T, UP, REQ),  # missing job id
        ParsedTopic(T, GP, REQ, job_id="j"),
        ParsedTopic(T, NO, REQ),
        ParsedTopic(T, UP, EV, job_id="j"),
        ParsedTopic(T, NO, EV, job_id="j"),  # per-job notify only in a namespace
        ParsedTopic(T, NN, EV, job_id="j"),
        ParsedTopic(T, DE, REQ, namespace="n/s", job_id="j"),
    ],
)
def test_builder_refuses_nonexistent_topics(parsed: ParsedTopic) -> None:
    with pytest.raises(ValueError):
        build_topic(parsed)


def _iotjobs_topic_formats() -> set[str]:
    """The default-namespace topic formats awsiotsdk builds, read from its source."""
    source = Path(awsiot.iotjobs.__file__).read_text(encoding="utf-8")
    return set(re.findall(r"'(\$aws/things/[^']+)'\.format\(request\)", source))


def test_default_namespace_topics_equal_awsiotsdk() -> None:
    """Our default-namespace strings are awsiotsdk's, topic for topic.

    Where we differ: awsiotsdk has no namespaces, and its V2 client subscribes to `get/+` and
    `start-next/+`, which would also match the describe/update requests of a job called "get"
    or "start-next"; our device filters name those replies exactly (see the next test).
    """
    formats = _iotjobs_topic_formats()

    class Request:
        thing_name = T
        job_id = "job-1"

    sdk = {fmt.format(Request()) for fmt in formats if "+" not in fmt}
    ours = {
        topics.get_pending_topic(T),
        topics.start_next_topic(T),
        topics.describe_topic(T, "job-1"),
        topics.update_topic(T, "job-1"),
        topics.notify_topic(T),
        topics.notify_next_topic(T),
    }
    for kind in (ACC, REJ):
        ours |= {
            topics.reply_topic(T, GP, kind),
            topics.reply_topic(T, SN, kind),
            topics.reply_topic(T, DE, kind, job_id="job-1"),
            topics.reply_topic(T, UP, kind, job_id="job-1"),
        }
    assert len(ours) == 14
    assert sdk == ours


NAMESPACES = ("ns_1", "other")
REQUEST_JOB_IDS = ["job-1", "get", "start-next", "update", "notify", "accepted", "$next"]


def _all_request_topics(thing: str) -> list[str]:
    out = [topics.get_pending_topic(thing), topics.start_next_topic(thing)]
    for job_id, ns in itertools.product(REQUEST_JOB_IDS, (None, *NAMESPACES)):
        out.append(topics.describe_topic(thing, job_id, ns))
        if job_id != "$next":
            out.append(topics.update_topic(thing, job_id, ns))
    return out


def _all_incoming_topics(thing: str) -> list[str]:
    out = []
    for job_id, ns in itertools.product(REQUEST_JOB_IDS, (None, *NAMESPACES)):
        for kind in (ACC, REJ):
            out.append(topics.reply_topic(thing, DE, kind, job_id=job_id, namespace=ns))
            if job_id != "$next":
                out.append(topics.reply_topic(thing, UP, kind, job_id=job_id, namespace=ns))
    for kind in (ACC, REJ):
        out.append(topics.reply_topic(thing, GP, kind))
        out.append(topics.reply_topic(thing, SN, kind))
    for ns in (None, *NAMESPACES):
        out.append(topics.notify_topic(thing, ns))
        out.append(topics.notify_next_topic(thing, ns))
    return out


def test_device_subscriptions_cover_replies_and_events_but_not_requests() -> None:
    filters = topics.device_subscriptions(T, NAMESPACES)
    for topic in _all_incoming_topics(T):
        assert any(topic_matches(f, topic) for f in filters), topic
    for topic in _all_request_topics(T):
        assert not any(topic_matches(f, topic) for f in filters), topic
    # another thing's topics are not ours
    for topic in _all_incoming_topics("other-thing"):
        assert not any(topic_matches(f, topic) for f in filters), topic


def test_device_subscriptions_without_namespaces_miss_namespaced_topics() -> None:
    filters = topics.device_subscriptions(T)
    assert not any(topic_matches(f, topics.notify_topic(T, "ns_1")) for f in filters)
    with pytest.raises(ValueError):
        topics.device_subscriptions(T, ("bad/ns",))
    with pytest.raises(ValueError):
        topics.device_subscriptions("bad thing")


def test_name_validators() -> None:
    assert topics.is_valid_thing_name("a" * 128)
    assert not topics.is_valid_thing_name("a" * 129)
    assert topics.is_valid_job_id("a" * 64)
    assert not topics.is_valid_job_id("a" * 65)
    assert not topics.is_valid_job_id("$next")
    assert topics.is_valid_job_id("$next", allow_next=True)
    assert not topics.is_valid_namespace("")


def test_a_reply_topic_checks_its_thing_name_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's reply topic is parsed per reply (two per plugin job): its thing name was checked
    by `parse_topic` and again by `_check` (a regular expression each); now by `_check`."""
    checked: list[str] = []
    check = topics.is_valid_thing_name

    def counted(value: str) -> bool:
        checked.append(value)
        return check(value)

    monkeypatch.setattr(topics, "is_valid_thing_name", counted)
    parsed = parse_topic("$aws/things/t/jobs/j-1/update/accepted")
    assert parsed == ParsedTopic("t", UP, ACC, job_id="j-1")
    assert checked == ["t"]
