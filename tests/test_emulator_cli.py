"""`jobs-agent sim`: the emulator as a real process in front of a real mosquitto, driven by the
`create-job`/`list`/`describe`/`cancel` conveniences, stopped with a real SIGTERM, and restarted
on the same `--state` file.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from tests.fixtures.broker import Mosquitto

# Only `sim` is registered, so this runs while other commands are still being written.
HARNESS = (
    "import argparse, sys\n"
    "from jobs_agent.commands import sim\n"
    "parser = argparse.ArgumentParser(prog='jobs-agent')\n"
    "sim.register(parser.add_subparsers())\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)


async def run_cli(*argv: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HARNESS,
        "sim",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def cli_json(*argv: str) -> Any:
    code, out = await run_cli(*argv, "--json")
    assert code == 0, out
    return json.loads(out)


class Server:
    def __init__(self, process: asyncio.subprocess.Process, endpoint: str) -> None:
        self.process = process
        self.endpoint = endpoint
        self.readings: list[str] = []

    async def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 15)


async def start_server(mosquitto: Mosquitto, state: Path, *extra: str) -> Server:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HARNESS,
        "sim",
        "serve",
        "--broker-host",
        mosquitto.host,
        "--broker-port",
        str(mosquitto.port),
        "--http-port",
        "0",
        "--state",
        str(state),
        "--client-id",
        f"sim-{state.parent.name}",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    lines = []
    async with asyncio.timeout(20):
        while True:
            line = (await process.stdout.readline()).decode()
            if not line:
                raise AssertionError(f"sim serve exited: {''.join(lines)}")
            lines.append(line)
            if line.startswith("HTTP: "):
                endpoint = line.split(" ", 1)[1].strip()
            if line.startswith("readings: "):
                break
    assert any(f"MQTT: mqtt://{mosquitto.host}:{mosquitto.port}" in x for x in lines)
    server = Server(process, endpoint)
    server.readings = lines[-1].split(" ", 1)[1].split()
    return server


async def test_serve_create_list_describe_cancel_and_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    state = tmp_path / "state.db"
    document = tmp_path / "job.json"
    document.write_text(json.dumps({"operation": "hello"}))
    server = await start_server(mosquitto, state)
    try:
        code, out = await run_cli(
            "create-job",
            "--endpoint",
            server.endpoint,
            "--thing",
            "dev1",
            "--thing",
            "dev2",
            "--document",
            str(document),
            "--job-id",
            "cli-job",
            "--in-progress-timeout",
            "30",
        )
        assert code == 0, out
        assert "created cli-job" in out
        listed = await cli_json("list", "--endpoint", server.endpoint)
        assert [(j["jobId"], j["status"]) for j in listed["jobs"]] == [("cli-job", "IN_PROGRESS")]
        described = await cli_json(
            "describe", "cli-job", "--thing", "dev1", "--endpoint", server.endpoint
        )
        assert described["execution"]["status"] == "QUEUED"
        code, out = await run_cli("describe", "cli-job", "--endpoint", server.endpoint)
        assert code == 0 and "dev2" in out and "QUEUED" in out, out
    finally:
        assert await server.terminate() == 0

    server = await start_server(mosquitto, state)
    try:
        listed = await cli_json("list", "--endpoint", server.endpoint)
        assert [j["jobId"] for j in listed["jobs"]] == ["cli-job"]
        code, out = await run_cli("cancel", "cli-job", "--endpoint", server.endpoint)
        assert code == 0 and "canceled cli-job" in out, out
        described = await cli_json("describe", "cli-job", "--endpoint", server.endpoint)
        assert described["job"]["status"] == "CANCELED"
        assert {e["jobExecutionSummary"]["status"] for e in described["executions"]} == {"CANCELED"}
        code, out = await run_cli("describe", "missing", "--endpoint", server.endpoint)
        assert code == 1 and "ResourceNotFoundException" in out
    finally:
        assert await server.terminate() == 0


async def test_help_documents_every_option() -> None:
    code, out = await run_cli("serve", "--help")
    assert code == 0
    for option in ("--broker-host", "--http-port", "--state", "--throttle-rate", "--ca"):
        assert option in out
    code, out = await run_cli("create-job", "--help")
    assert code == 0 and "no job-level step" in out


async def test_serve_takes_the_other_readings_and_an_s3_directory(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """`--reading` switches a silent point of the documentation (here: statusDetails merged),
    `--s3-dir` serves CreateJob's documentSource; both reach the running service."""
    import boto3

    (tmp_path / "s3" / "bucket").mkdir(parents=True)
    (tmp_path / "s3" / "bucket" / "doc.json").write_text('{"operation": "from-s3"}')
    server = await start_server(
        mosquitto,
        tmp_path / "state.db",
        "--reading",
        "status-details=merge",
        "--s3-dir",
        str(tmp_path / "s3"),
    )
    try:
        assert "status-details=merge" in server.readings
        assert "timeout=on-time" in server.readings

        def drive() -> dict[str, str]:
            keys = {"aws_access_key_id": "x", "aws_secret_access_key": "y"}
            iot = boto3.client("iot", endpoint_url=server.endpoint, region_name="us-east-1", **keys)
            data = boto3.client(
                "iot-jobs-data", endpoint_url=server.endpoint, region_name="us-east-1", **keys
            )
            iot.create_job(
                jobId="s3-job",
                targets=["arn:aws:iot:us-east-1:123456789012:thing/dev9"],
                documentSource="https://bucket.s3.amazonaws.com/doc.json",
            )
            started = data.start_next_pending_job_execution(
                thingName="dev9", statusDetails={"a": "1"}
            )
            assert json.loads(started["execution"]["jobDocument"]) == {"operation": "from-s3"}
            data.update_job_execution(
                thingName="dev9", jobId="s3-job", status="IN_PROGRESS", statusDetails={"b": "2"}
            )
            described = iot.describe_job_execution(jobId="s3-job", thingName="dev9")
            return dict(described["execution"]["statusDetails"]["detailsMap"])

        assert await asyncio.to_thread(drive) == {"a": "1", "b": "2"}
    finally:
        assert await server.terminate() == 0


async def test_serve_refuses_an_unknown_reading() -> None:
    code, out = await run_cli("serve", "--reading", "timeout=sometimes")
    assert code != 0 and "timeout takes on-time|late" in out


async def test_serve_has_shadows_packages_and_streams_across_a_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The real `sim serve` process in front of mosquitto serves the Device Shadow service
    (`iot-data` REST, MQTT with `$package`), the Software Package Catalog and streams (files from
    `--s3-dir`, CBOR on MQTT), and keeps all three in `--state` across a restart."""
    import threading

    import boto3
    import cbor2
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    (tmp_path / "s3" / "fw").mkdir(parents=True)
    (tmp_path / "s3" / "fw" / "image.bin").write_bytes(bytes(range(256)) * 20)
    state = tmp_path / "state.db"
    keys = {"aws_access_key_id": "x", "aws_secret_access_key": "y", "region_name": "us-east-1"}
    received: dict[str, bytes] = {}
    arrived = threading.Condition()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with arrived:
            received[message.topic] = message.payload
            arrived.notify_all()

    device = mqtt.Client(CallbackAPIVersion.VERSION2, "cli-dev", protocol=mqtt.MQTTv5)
    device.on_message = on_message
    device.connect(mosquitto.host, mosquitto.port)
    device.loop_start()
    device.subscribe("$aws/things/cli-dev/shadow/name/$package/get/accepted", qos=1)
    device.subscribe("$aws/things/cli-dev/streams/fw/data/cbor", qos=1)

    def ask(topic: str, payload: bytes, answer: str) -> bytes:
        with arrived:
            received.pop(answer, None)
            device.publish(topic, payload, qos=1)
            assert arrived.wait_for(lambda: answer in received, 10), answer
            return received[answer]

    def first_run(endpoint: str) -> None:
        iot = boto3.client("iot", endpoint_url=endpoint, **keys)
        data = boto3.client("iot-data", endpoint_url=endpoint, **keys)
        iot.create_package(packageName="fw")
        iot.create_package_version(packageName="fw", versionName="1.0")
        iot.update_package_version(packageName="fw", versionName="1.0", action="PUBLISH")
        iot.create_stream(
            streamId="fw",
            files=[{"fileId": 0, "s3Location": {"bucket": "fw", "key": "image.bin"}}],
            roleArn="arn:aws:iam::123456789012:role/streams",
        )
        report = {"state": {"reported": {"fw": {"version": "1.0"}}}}
        data.update_thing_shadow(
            thingName="cli-dev", shadowName="$package", payload=json.dumps(report).encode()
        )

    def second_run(endpoint: str) -> None:
        iot = boto3.client("iot", endpoint_url=endpoint, **keys)
        assert iot.get_package(packageName="fw")["packageName"] == "fw"
        got = ask(
            "$aws/things/cli-dev/shadow/name/$package/get",
            b"{}",
            "$aws/things/cli-dev/shadow/name/$package/get/accepted",
        )
        assert json.loads(got)["state"] == {"reported": {"fw": {"version": "1.0"}}}
        block = ask(
            "$aws/things/cli-dev/streams/fw/get/cbor",
            cbor2.dumps({"f": 0, "l": 1024, "o": 4}),
            "$aws/things/cli-dev/streams/fw/data/cbor",
        )
        answer = cbor2.loads(block)
        assert (answer["i"], answer["p"]) == (4, (bytes(range(256)) * 20)[4096:5120])

    extra = ("--s3-dir", str(tmp_path / "s3"))
    try:
        server = await start_server(mosquitto, state, *extra)
        try:
            await asyncio.to_thread(first_run, server.endpoint)
            version = "arn:aws:iot:us-east-1:123456789012:package/fw/version/1.0"
            document = tmp_path / "job.json"
            document.write_text("{}")
            job = await cli_json(
                "create-job",
                "--endpoint",
                server.endpoint,
                "--thing",
                "cli-dev",
                "--document",
                str(document),
                "--destination-package-version",
                version,
            )
            described = await cli_json("describe", job["jobId"], "--endpoint", server.endpoint)
            assert described["job"]["destinationPackageVersions"] == [version]
        finally:
            assert await server.terminate() == 0
        server = await start_server(mosquitto, state, *extra)
        try:
            await asyncio.to_thread(second_run, server.endpoint)
        finally:
            assert await server.terminate() == 0
    finally:
        device.disconnect()
        device.loop_stop()
