"""Device Shadow MQTT topics ("Device Shadow MQTT topics" in the developer guide).

The classic shadow lives under `$aws/things/{thing}/shadow/`, a named one under
`$aws/things/{thing}/shadow/name/{shadowName}/`; a request goes to `get`, `update` or `delete`
and is answered on the same topic plus `/accepted` or `/rejected`. Shadow names are 1-64
characters of `[a-zA-Z0-9:_-]`; `$` begins only the Software Package Catalog's reserved
`$package`.
"""

from __future__ import annotations

from enum import StrEnum

from jobs_agent.datamodel import model
from jobs_agent.vocabulary import PACKAGE_SHADOW as PACKAGE_SHADOW
from jobs_agent.vocabulary import is_shadow_name

_PREFIX = "$aws/things/"


class Verb(StrEnum):
    GET = "get"
    UPDATE = "update"
    DELETE = "delete"


class ReplyKind(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"


def is_valid_shadow_name(name: str) -> bool:
    return is_shadow_name(name)


def shadow_prefix(thing_name: str, shadow_name: str | None) -> str:
    base = f"{_PREFIX}{thing_name}/shadow"
    return base if shadow_name is None else f"{base}/name/{shadow_name}"


def request_topic(thing_name: str, shadow_name: str | None, verb: Verb) -> str:
    return f"{shadow_prefix(thing_name, shadow_name)}/{verb}"


def reply_filters(thing_name: str, shadow_name: str | None, verb: Verb) -> list[str]:
    """The two reply topics of one verb, named exactly: `update/+` would also bring every
    `update/delta` and `update/documents` (the whole document, twice) of every change."""
    topic = request_topic(thing_name, shadow_name, verb)
    return [f"{topic}/{kind}" for kind in ReplyKind]


@model(slots=True)
class ReplyTopic:
    """A shadow reply topic, parsed: whose shadow, which operation, accepted or rejected."""

    thing_name: str
    shadow_name: str | None
    verb: Verb
    kind: ReplyKind


def parse_reply_topic(topic: str) -> ReplyTopic | None:
    """The parts of an `/accepted` or `/rejected` topic; None for anything else."""
    parts = topic.split("/")
    if len(parts) == 6 and parts[:2] == ["$aws", "things"] and parts[3] == "shadow":
        thing, name, verb, kind = parts[2], None, parts[4], parts[5]
    elif len(parts) == 8 and parts[:2] == ["$aws", "things"] and parts[3:5] == ["shadow", "name"]:
        thing, name, verb, kind = parts[2], parts[5], parts[6], parts[7]
    else:
        return None
    if verb not in Verb.__members__.values() or kind not in ReplyKind.__members__.values():
        return None
    return ReplyTopic(thing, name, Verb(verb), ReplyKind(kind))
