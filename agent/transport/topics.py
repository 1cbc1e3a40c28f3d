"""MQTT topic names and topic filters (MQTT 3.1.1 section 4.7, same in MQTT 5).

Shared by the in-process bus and the emulator's MQTT front end, so both route messages exactly as
a real broker would, including the rule that a filter starting with a wildcard never matches a
topic starting with `$` (AWS IoT's reserved `$aws/...` topics are only reachable by filters that
spell `$aws` out).
"""

from __future__ import annotations

from jobs_agent.transport.base import TransportError

MAX_TOPIC_BYTES = 65535


def _check_common(kind: str, value: str) -> None:
    if not value:
        raise TransportError(f"invalid {kind}: empty")
    if "\x00" in value:
        raise TransportError(f"invalid {kind} {value!r}: contains a NUL character")
    if len(value.encode("utf-8")) > MAX_TOPIC_BYTES:
        raise TransportError(f"invalid {kind}: longer than {MAX_TOPIC_BYTES} bytes")


def validate_topic_name(topic: str) -> None:
    """Raise `TransportError` unless `topic` may be published to (no wildcards)."""
    _check_common("topic name", topic)
    if "+" in topic or "#" in topic:
        raise TransportError(f"invalid topic name {topic!r}: wildcards are for subscriptions")


def validate_topic_filter(topic_filter: str) -> None:
    """Raise `TransportError` unless `topic_filter` is a well-formed subscription filter."""
    _check_common("topic filter", topic_filter)
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise TransportError(
                f"invalid topic filter {topic_filter!r}: '#' must be a whole, last level"
            )
        if "+" in level and level != "+":
            raise TransportError(
                f"invalid topic filter {topic_filter!r}: '+' must be a whole level"
            )


def has_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


def levels_match(filter_levels: tuple[str, ...] | list[str], topic_levels: list[str]) -> bool:
    """`topic_matches` on pre-split levels, for callers that match one topic many times.

    The `$` rule is not applied here; callers check it once per topic.
    """
    count = len(topic_levels)
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True  # also matches the parent level: "a/#" matches "a"
        if index >= count:
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == count


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether a message published to `topic` is delivered to a subscription on `topic_filter`."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    return levels_match(topic_filter.split("/"), topic.split("/"))
