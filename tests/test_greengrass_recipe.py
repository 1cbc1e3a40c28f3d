"""The Greengrass component recipe: well-formed, and its IPC policy exactly fits the agent.

No Greengrass nucleus can run here, so the recipe is validated statically: required recipe
fields, the lifecycle's environment overrides against the real configuration loader, and the
access-control policy against the topics the agent actually subscribes and publishes to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from jobs_agent.config import load_config
from jobs_agent.jobs import topics
from jobs_agent.streams import protocol as stream_topics
from jobs_agent.streams.protocol import Format, Verb
from jobs_agent.transport.topics import topic_matches

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "greengrass" / "recipe.yaml"
THING = "core-device-7"


def _recipe() -> dict[str, Any]:
    data = yaml.safe_load(RECIPE.read_text())
    assert isinstance(data, dict)
    return data


def _policy_resources(recipe: dict[str, Any]) -> list[str]:
    policies = recipe["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"]
    (policy,) = policies["aws.greengrass.ipc.mqttproxy"].values()
    assert set(policy["operations"]) == {
        "aws.greengrass#PublishToIoTCore",
        "aws.greengrass#SubscribeToIoTCore",
    }
    return [r.replace("{iot:thingName}", THING) for r in policy["resources"]]


def test_recipe_has_the_required_fields() -> None:
    recipe = _recipe()
    for key in ("RecipeFormatVersion", "ComponentName", "ComponentVersion", "Manifests"):
        assert recipe[key]
    lifecycle = recipe["Manifests"][0]["Lifecycle"]
    assert "jobs-agent run" in lifecycle["run"]["Script"]
    assert lifecycle["run"]["Setenv"]["JOBS_AGENT_CONNECTION__TRANSPORT"] == "greengrass"
    from jobs_agent import __version__

    assert recipe["ComponentVersion"] == __version__


def test_policy_covers_every_topic_the_agent_uses() -> None:
    resources = _policy_resources(_recipe())
    for subscription in topics.device_subscriptions(THING):
        assert subscription in resources or any(
            topic_matches(r, subscription) for r in resources
        ), subscription
    for topic in (
        topics.get_pending_topic(THING),
        topics.start_next_topic(THING),
        topics.describe_topic(THING, "job-1"),
        topics.describe_topic(THING, "$next"),
        topics.update_topic(THING, "job-1"),
    ):
        assert any(topic_matches(r, topic) for r in resources), topic


def test_policy_covers_the_streams_topics_of_a_stream_download() -> None:
    """MQTT-based file delivery: requests out, answers in, in both formats."""
    resources = _policy_resources(_recipe())
    for fmt in Format:
        for verb in Verb:
            topic = stream_topics.topic(THING, "fw-2_0", verb, fmt)
            assert any(topic_matches(r, topic) for r in resources), topic


def test_policy_never_reaches_the_nucleus_deployment_jobs_or_other_things() -> None:
    resources = _policy_resources(_recipe())
    assert all(
        r.startswith((f"$aws/things/{THING}/jobs/", f"$aws/things/{THING}/streams/"))
        for r in resources
    )
    forbidden = [
        topics.notify_topic(THING, "aws-gg-deployment"),
        topics.notify_next_topic(THING, "aws-gg-deployment"),
        topics.describe_topic(THING, "$next", "aws-gg-deployment"),
        topics.update_topic(THING, "deploy-1", "aws-gg-deployment"),
        topics.update_topic("another-thing", "job-1"),
        stream_topics.topic("another-thing", "fw", Verb.DATA, Format.JSON),
    ]
    for topic in forbidden:
        assert not any(topic_matches(r, topic) for r in resources), topic


def test_lifecycle_environment_gives_a_valid_configuration(tmp_path: Path) -> None:
    """The recipe's Setenv values (with configuration defaults substituted) load cleanly."""
    recipe = _recipe()
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    env = dict(recipe["Manifests"][0]["Lifecycle"]["run"]["Setenv"])
    for name, value in env.items():
        for key, default in defaults.items():
            value = str(value).replace(f"{{configuration:/{key}}}", str(default))
        env[name] = value.replace("{work:path}", str(tmp_path))
    env["AWS_IOT_THING_NAME"] = THING
    config = load_config(REPO / "config" / "greengrass.yaml", environ=env)
    assert config.thing_name == THING
    assert config.connection.transport == "greengrass"
    assert config.state_dir == tmp_path / "state"
    assert config.jobs.namespaces == ()
