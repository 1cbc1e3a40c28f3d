"""The peer: a minimal Jobs agent written straight on awsiotsdk's `IotJobsClientV2`.

In the style of the AWS SDK's jobs sample: connect the MQTT5 client with mTLS, open the
next-job-execution-changed stream, then loop: StartNextPendingJobExecution, run the job (a no-op
here), UpdateJobExecution SUCCEEDED, repeat; when nothing is queued, wait for notify-next. No
persistence, no timeouts, no progress, no cancellation: the least an agent can do per job, so the
real agent's cost beyond it is visible.

`--iot-core-flow-control` keeps the builder's default `AWS_IOT_CORE_DEFAULTS`, whose client-side
throttle spaces operations ~16 ms apart on a fast link (see agent/transport/awscrt.py); without
it the peer runs with flow control off, as the agent does for a non-AWS broker, so the two
compare on equal terms.

Tells the harness it is ready with `READY=1` on NOTIFY_SOCKET, like the agent.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
from concurrent.futures import Future
from typing import Any

from awscrt import mqtt5, mqtt_request_response
from awsiot import ServiceStreamOptions, iotjobs, mqtt5_client_builder

TIMEOUT = 30.0


def notify_ready() -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", address)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.sdk_agent")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--thing", required=True)
    parser.add_argument("--iot-core-flow-control", action="store_true")
    args = parser.parse_args(argv)

    connected: Future[None] = Future()
    stopped: Future[None] = Future()
    options: dict[str, Any] = {}
    if not args.iot_core_flow_control:
        options["extended_validation_and_flow_control_options"] = (
            mqtt5.ExtendedValidationAndFlowControlOptions.NONE
        )
    client = mqtt5_client_builder.mtls_from_path(
        endpoint=args.endpoint,
        port=args.port,
        cert_filepath=args.cert,
        pri_key_filepath=args.key,
        ca_filepath=args.ca,
        client_id=args.thing,
        on_lifecycle_connection_success=lambda _: connected.done() or connected.set_result(None),
        on_lifecycle_stopped=lambda _: stopped.done() or stopped.set_result(None),
        **options,
    )
    client.start()
    connected.result(TIMEOUT)
    jobs = iotjobs.IotJobsClientV2(
        client,
        mqtt_request_response.ClientOptions(
            max_request_response_subscriptions=2,
            max_streaming_subscriptions=2,
            operation_timeout_in_seconds=int(TIMEOUT),
        ),
    )
    wake = threading.Event()
    subscribed = threading.Event()

    def on_status(event: Any) -> None:
        if event.type == mqtt_request_response.SubscriptionStatusEventType.SUBSCRIPTION_ESTABLISHED:
            subscribed.set()

    stream = jobs.create_next_job_execution_changed_stream(
        iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=args.thing),
        ServiceStreamOptions(
            incoming_event_listener=lambda event: wake.set(),
            subscription_status_listener=on_status,
        ),
    )
    stream.open()
    if not subscribed.wait(TIMEOUT):
        print("peer: notify-next subscription not established", file=sys.stderr)
        return 1
    stop = threading.Event()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: (stop.set(), wake.set()))
    notify_ready()
    done = 0
    try:
        while not stop.is_set():
            wake.clear()
            started = jobs.start_next_pending_job_execution(
                iotjobs.StartNextPendingJobExecutionRequest(thing_name=args.thing)
            ).result(TIMEOUT)
            execution = started.execution
            if execution is None:
                wake.wait()
                continue
            # the job itself: a no-op, as the agent's Noop plugin
            jobs.update_job_execution(
                iotjobs.UpdateJobExecutionRequest(
                    thing_name=args.thing, job_id=execution.job_id, status="SUCCEEDED"
                )
            ).result(TIMEOUT)
            done += 1
    finally:
        stream.close()
        client.stop()
        stopped.result(TIMEOUT)
    print(f"peer: {done} jobs done", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
