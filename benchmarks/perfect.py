"""The perfect agent: the least any device agent must do per job, the floor of the drain.

Per job, exactly: StartNextPendingJobExecution; one fsync (the record that must be durable
before the handler runs); the handler (nothing for an in-process plugin; one `posix_spawn` and
one `waitpid` of the script a Device Client `runHandler` document names); one fsync (the
decision, durable before the report); UpdateJobExecution SUCCEEDED. Nothing else: no validation,
no database, no threads, no event loop, no logging, and only `notify-next` among the events.

It is what issue 18 calls the "perfect agent": run against the same emulator and broker as the
agent, its CPU per job and jobs/s are the denominators of the agent's ratios. Over MQTT
(`python -m benchmarks.perfect ...`) it is a raw paho client with TCP_NODELAY stepped by hand in
one thread (as benchmarks/raw.py), plain TCP or mTLS; on the local bus, benchmarks/local_drain.py
drives the same `PerfectAgent` from the bus's callbacks. With `--stamp FILE` it appends
`jobId time.time()` where a handler would start (after the first fsync): the floor of the
latency benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRIPT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


class PerfectAgent:
    """The protocol and the per-job work, on any `publish(topic, payload)`.

    `on_message` is fed every message of the subscriptions; it calls `publish` (which must not
    re-enter `on_message`).
    """

    def __init__(
        self,
        thing: str,
        publish: Callable[[str, bytes], None],
        state_dir: Path,
        handler_dir: Path,
        stamp: Path | None = None,
    ) -> None:
        self.prefix = f"$aws/things/{thing}/jobs"
        self.publish = publish
        self.handler_dir = handler_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self._journal = os.open(state_dir / "journal", flags, 0o600)
        self._stamp = None if stamp is None else os.open(stamp, flags, 0o644)
        self._state = "idle"  # idle | asking | reporting
        self._token = 0
        self.jobs = 0

    def subscriptions(self) -> list[str]:
        p = self.prefix
        return [
            f"{p}/notify-next",
            f"{p}/start-next/accepted",
            f"{p}/start-next/rejected",
            f"{p}/+/update/accepted",
            f"{p}/+/update/rejected",
        ]

    def _next_token(self) -> str:
        self._token += 1
        return f"p{self._token}"

    def ask(self) -> None:
        """StartNextPendingJobExecution, unless a request or a job is under way."""
        if self._state != "idle":
            return
        self._state = "asking"
        payload = json.dumps({"clientToken": self._next_token()}).encode()
        self.publish(f"{self.prefix}/start-next", payload)

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/notify-next"):
            if json.loads(payload).get("execution"):
                self.ask()
        elif topic.endswith("/start-next/accepted"):
            self._state = "idle"
            execution = json.loads(payload).get("execution")
            if execution:
                self._run(execution)
        elif topic.endswith("/update/accepted"):
            self._state = "idle"
            self.ask()
        elif topic.endswith("/rejected"):
            raise SystemExit(f"perfect agent: {topic}: {payload[:300]!r}")

    def _run(self, execution: dict[str, Any]) -> None:
        job_id = execution["jobId"]
        number = execution.get("executionNumber", 1)
        self._write(f"{job_id} {number} RUNNING\n")
        if self._stamp is not None:
            os.write(self._stamp, f"{job_id} {time.time():.6f}\n".encode())
        status = "SUCCEEDED"
        script = self._script(execution.get("jobDocument") or {})
        if script is not None:
            pid = os.posix_spawn(script, [script, ""], SCRIPT_ENV)
            _, wait_status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(wait_status) != 0:
                status = "FAILED"
        self._write(f"{job_id} {number} {status}\n")
        self._state = "reporting"
        payload = json.dumps({"status": status, "clientToken": self._next_token()}).encode()
        self.publish(f"{self.prefix}/{job_id}/update", payload)
        self.jobs += 1

    def _write(self, record: str) -> None:
        os.write(self._journal, record.encode())
        os.fsync(self._journal)

    def _script(self, document: dict[str, Any]) -> str | None:
        """The handler of a Device Client document's first step; None for a plugin's."""
        steps = document.get("steps")
        if not steps:
            return None
        return str(self.handler_dir / steps[0]["action"]["input"]["handler"])

    def close(self) -> None:
        os.close(self._journal)
        if self._stamp is not None:
            os.close(self._stamp)


def run_paho(args: argparse.Namespace) -> int:
    """The perfect agent on a raw paho client, stepped in this thread, until SIGTERM."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *a: stopping.append(True))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.thing, protocol=mqtt.MQTTv5)
    client.on_socket_open = lambda c, u, sock: sock.setsockopt(
        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
    )
    if args.ca:
        context = ssl.create_default_context(cafile=args.ca)
        context.load_cert_chain(args.cert, args.key)
        client.tls_set_context(context)
    inbox: list[tuple[str, bytes]] = []
    client.on_message = lambda c, u, m: inbox.append((m.topic, bytes(m.payload)))
    subscribed: list[int] = []
    client.on_subscribe = lambda c, u, mid, reasons, props: subscribed.append(mid)

    def publish(topic: str, payload: bytes) -> None:
        client.publish(topic, payload, qos=1)

    agent = PerfectAgent(
        args.thing,
        publish,
        Path(args.state_dir),
        Path(args.handler_dir),
        Path(args.stamp) if args.stamp else None,
    )
    client.connect(args.host, args.port, keepalive=1200)
    _, mid = client.subscribe([(f, 1) for f in agent.subscriptions()])
    deadline = time.monotonic() + 30
    while mid not in subscribed:
        if time.monotonic() > deadline or stopping:
            raise SystemExit("perfect agent: no SUBACK")
        client.loop(timeout=0.1)
    address = os.environ.get("NOTIFY_SOCKET")
    if address:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", address)
    agent.ask()
    while not stopping:
        client.loop(timeout=0.5)
        while inbox:  # outside paho's callback, so each publish is written at once
            topic, payload = inbox.pop(0)
            agent.on_message(topic, payload)
    client.disconnect()
    agent.close()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perfect", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", help="CA file: mTLS (with --cert and --key)")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--thing", required=True)
    parser.add_argument("--state-dir", required=True, help="where the fsynced journal goes")
    parser.add_argument("--handler-dir", required=True)
    parser.add_argument("--stamp", help="append `jobId time` where the handler starts")
    return run_paho(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
