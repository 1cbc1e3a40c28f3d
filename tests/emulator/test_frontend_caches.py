"""The Jobs front end's topic caches hold a large fleet's topics.

Real parts: the front end over a real `JobsService`; its link is never started (no message
goes out: only the caches are looked at). Counting the topic parser's calls shows whether a
request's topic was parsed again.
"""

from __future__ import annotations

import pytest

from jobs_agent.emulator import mqtt_frontend
from jobs_agent.emulator.link import MqttLink
from jobs_agent.emulator.mqtt_frontend import MqttFrontend
from jobs_agent.emulator.service import JobsService
from jobs_agent.jobs.topics import ParsedTopic


def test_every_request_topic_of_a_large_fleet_stays_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fleet of 3,500 things, each asking on three topics (get, start-next, one update):
    each is parsed once. Before, the cache held 10,000 entries: it was emptied on the way round
    and every topic parsed again on the second round (a fleet of 10,000 things asks on 30,000)."""
    frontend = MqttFrontend(JobsService(), MqttLink(object()))  # type: ignore[arg-type]
    parsed: list[str] = []
    parse = mqtt_frontend.parse_topic

    def counting(topic: str) -> ParsedTopic | None:
        parsed.append(topic)
        return parse(topic)

    monkeypatch.setattr(mqtt_frontend, "parse_topic", counting)
    topics = [
        f"$aws/things/fleet-{n:05d}/jobs/{request}"
        for n in range(3_500)
        for request in ("get", "start-next", "rollout-1/update")
    ]
    for _ in range(2):
        for topic in topics:
            assert frontend._parse_topic(topic) is not None
    assert len(parsed) == len(topics)
