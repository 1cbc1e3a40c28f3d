"""Bridge deployments: the shipped mosquitto configuration (config/mosquitto/) against a hostile
local client.

Everything is real: a "cloud" mosquitto with the emulator stands in for AWS IoT Core (reached
over mTLS with the device certificate, as the bridge reaches AWS); the gateway's mosquitto runs
the shipped `jobs-agent-bridge.conf` and `jobs-agent.acl` with only names, paths and ports
filled in; the agent is `jobs-agent run` with the shipped `config/bridge.yaml`. The hostile
client is another local account of that broker. It listens for the agent's requests to answer
them with its own job document (the attack an open broker allows), forges replies blindly,
publishes requests in the device's name, and connects with the agent's client id.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

from jobs_agent.emulator.embedded import Emulator
from tests.fixtures.broker import Mosquitto, _port_open, free_port
from tests.fixtures.certs import CertPaths
from tests.harness import AgentProcess, start_emulator, wait_terminal, wait_until, write_handler
from tests.helpers.streams import create_stream

REPO = Path(__file__).resolve().parent.parent
THING = "gw-bridge"
AGENT_PASSWORD = "agent-secret-1"
APP_PASSWORD = "app-secret-2"


def _gateway_config(tmp_path: Path, cloud: Mosquitto, certs: CertPaths) -> tuple[Path, int]:
    """The shipped files with the gateway's names, paths and ports filled in."""
    port = free_port()
    passwd = tmp_path / "jobs-agent.passwd"
    for index, (user, password) in enumerate(
        (("jobs-agent", AGENT_PASSWORD), ("some-app", APP_PASSWORD))
    ):
        create = ["-c"] if index == 0 else []
        subprocess.run(
            ["mosquitto_passwd", *create, "-b", str(passwd), user, password],
            check=True,
            capture_output=True,
        )
    acl = tmp_path / "jobs-agent.acl"
    acl_text = (REPO / "config/mosquitto/jobs-agent.acl").read_text().replace("gw-001", THING)
    acl.write_text(acl_text + "\nuser some-app\ntopic readwrite apps/some-app/#\n")
    conf = (REPO / "config/mosquitto/jobs-agent-bridge.conf").read_text()
    replacements = {
        "gw-001": THING,
        "listener 1883 127.0.0.1": f"listener {port} 127.0.0.1",
        "/etc/mosquitto/jobs-agent.passwd": str(passwd),
        "/etc/mosquitto/jobs-agent.acl": str(acl),
        "abc123-ats.iot.eu-west-1.amazonaws.com:8883": f"127.0.0.1:{cloud.tls_port}",
        "/etc/mosquitto/certs/AmazonRootCA1.pem": str(certs.ca),
        "/etc/mosquitto/certs/device.pem.crt": str(certs.device_cert),
        "/etc/mosquitto/certs/private.pem.key": str(certs.device_key),
    }
    for old, new in replacements.items():
        assert old in conf, old
        conf = conf.replace(old, new)
    log = tmp_path / "gateway.log"
    # Test-only additions: keys readable (mosquitto as root), no persistence, a log to wait on.
    path = tmp_path / "gateway.conf"
    path.write_text(
        "user root\npersistence false\n"
        f"log_dest file {log}\nlog_type all\nconnection_messages true\n" + conf
    )
    return path, port


def _agent_config(tmp_path: Path, port: int) -> Path:
    config: dict[str, Any] = yaml.safe_load((REPO / "config/bridge.yaml").read_text())
    config["thing_name"] = THING
    config["connection"].update(port=port, password=AGENT_PASSWORD, reconnect_min_seconds=0.05)
    config["jobs"].update(
        handler_dir=str(tmp_path / "handlers"), progress_interval_seconds=0.1, kill_grace_seconds=1
    )
    config["state_dir"] = str(tmp_path / "state")
    config["log"] = {"level": "debug", "format": "json"}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Client:
    """A paho client on its own network thread, with what it received."""

    def __init__(self, port: int, client_id: str, user: str | None, password: str | None) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.suback: list[Any] = []
        self.connected = threading.Event()
        self.refused: list[Any] = []
        self.on_message: Callable[[str, bytes], None] | None = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if user is not None:
            self.client.username_pw_set(user, password)
        self.client.on_connect = self._connected
        self.client.on_message = self._message
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: self.suback.extend(codes)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _connected(self, _c: Any, _u: Any, _flags: Any, code: Any, _p: Any) -> None:
        if code.is_failure:
            self.refused.append(code)
        else:
            self.connected.set()

    def _message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.received.append((message.topic, message.payload))
        if self.on_message is not None:
            self.on_message(message.topic, message.payload)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
async def cloud(
    mosquitto_factory: Callable[[], Mosquitto],
) -> AsyncIterator[tuple[Mosquitto, Emulator]]:
    broker = mosquitto_factory()
    emulator = await start_emulator(broker.port)
    yield broker, emulator
    await emulator.stop()


async def test_a_hostile_local_client_can_neither_read_nor_answer_the_agents_requests(
    tmp_path: Path, cloud: tuple[Mosquitto, Emulator], broker_certs: CertPaths
) -> None:
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd not installed (package mosquitto)")
    broker, emulator = cloud
    pwned = tmp_path / "pwned"
    write_handler(tmp_path / "handlers", "ok", "#!/bin/sh\necho legit\n")
    conf, port = _gateway_config(tmp_path, broker, broker_certs)
    gateway = subprocess.Popen(
        [broker.binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    agent = AgentProcess(config_path=_agent_config(tmp_path, port), workdir=tmp_path)
    clients: list[Client] = []
    try:
        await wait_until(lambda: _port_open("127.0.0.1", port), 10, "the gateway broker")
        await wait_until(
            lambda: f"as {THING} " in broker.log_text(), 10, "the bridge to reach the cloud"
        )
        # The cloud watches everything this device's identity publishes.
        observer = Client(broker.port, "cloud-observer", None, None)
        clients.append(observer)
        assert await asyncio.to_thread(observer.connected.wait, 10)
        observer.client.subscribe(f"$aws/things/{THING}/jobs/#", qos=1)

        # The attack an open broker allows: read the agent's request, answer it first.
        forged_document = {
            "version": "1.0",
            "steps": [
                {
                    "action": {
                        "name": "pwn",
                        "type": "runCommand",
                        "input": {"command": f"touch,{pwned}"},
                    }
                }
            ],
        }
        hostile = Client(port, "some-app", "some-app", APP_PASSWORD)
        clients.append(hostile)
        assert await asyncio.to_thread(hostile.connected.wait, 10)
        prefix = f"$aws/things/{THING}/jobs"

        def answer(topic: str, payload: bytes) -> None:
            if topic == f"{prefix}/start-next":
                token = json.loads(payload).get("clientToken")
                reply = {
                    "clientToken": token,
                    "timestamp": 1,
                    "execution": {
                        "jobId": "forged",
                        "thingName": THING,
                        "status": "IN_PROGRESS",
                        "executionNumber": 1,
                        "versionNumber": 2,
                        "jobDocument": forged_document,
                    },
                }
                hostile.client.publish(f"{topic}/accepted", json.dumps(reply), qos=1)

        hostile.on_message = answer
        hostile.client.subscribe(f"{prefix}/#", qos=1)
        await wait_until(lambda: bool(hostile.suback), 10, "the hostile subscription's answer")

        agent.start()
        await agent.wait_ready()
        # Blind forgeries too: a reply, a notification, and a request in the device's name.
        for token in ("guess-1", "guess-2"):
            forged = {
                "clientToken": token,
                "execution": {"jobId": "forged", "jobDocument": forged_document},
            }
            hostile.client.publish(f"{prefix}/start-next/accepted", json.dumps(forged), qos=1)
        hostile.client.publish(
            f"{prefix}/notify-next", json.dumps({"execution": {"jobId": "forged"}}), qos=1
        )
        hostile.client.publish(f"{prefix}/forged/update", json.dumps({"status": "FAILED"}), qos=1)
        # Taking over the agent's session by its client id: the broker renames the intruder.
        thief = Client(port, "jobs-agent", "some-app", APP_PASSWORD)
        clients.append(thief)
        anonymous = Client(port, "nobody", None, None)
        clients.append(anonymous)

        emulator.service.create_job("legit", [THING], {"operation": "ok"})
        execution = await wait_terminal(emulator, "legit", THING)
        assert str(execution.status) == "SUCCEEDED", agent.log_text()
        # A stream download crosses the bridge too, where the hostile client cannot listen.
        hostile.client.subscribe(f"$aws/things/{THING}/streams/#", qos=1)
        content = os.urandom(200_000)
        create_stream(emulator.service, "fw", {0: content})
        target = tmp_path / "fw.bin"
        download = {
            "operation": "download-file",
            "stream": {"streamId": "fw", "fileId": 0},
            "path": str(target),
            "sha256": hashlib.sha256(content).hexdigest(),
        }
        emulator.service.create_job("stream", [THING], download)
        execution = await wait_terminal(emulator, "stream", THING)
        assert str(execution.status) == "SUCCEEDED", execution.status_details
        assert target.read_bytes() == content
        await wait_until(lambda: bool(anonymous.refused), 10, "the anonymous client's refusal")

        assert not pwned.exists(), "the forged job document ran"
        assert hostile.received == [], "a hostile client read this thing's Jobs or streams topics"
        seen = [payload for _topic, payload in observer.received]
        assert seen, "the observer saw nothing: the bridge did not carry the agent's traffic"
        assert not [p for p in seen if b"forged" in p], "the device's identity published a forgery"
        assert "MQTT link lost" not in agent.log_text(), "the agent's session was taken over"
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        for client in clients:
            client.close()
        agent.kill()
        gateway.terminate()
        gateway.wait(timeout=10)
