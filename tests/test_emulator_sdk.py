"""AWS's own device SDK (awsiotsdk `IotJobsClientV2`) against the emulator, unchanged.

Real parts end to end: a mosquitto broker; the emulator connected to its plain port through the
paho transport as the privileged service client; the SDK's awscrt MQTT5 client connected to the
mTLS port with the device certificate. If the SDK can get pending jobs, start the next one,
update it and receive both event streams, devices written for AWS IoT Jobs work with the
emulator as they are.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

import pytest

awscrt_mqtt5 = pytest.importorskip("awscrt.mqtt5")
from awscrt import mqtt_request_response  # noqa: E402
from awsiot import (  # noqa: E402
    ServiceStreamOptions,
    V2ServiceException,
    iotjobs,
    mqtt5_client_builder,
)

from jobs_agent.emulator import ExecutionStatus  # noqa: E402
from jobs_agent.emulator.embedded import Emulator  # noqa: E402
from tests.fixtures.broker import Mosquitto  # noqa: E402

THING = "sdk-device"


@pytest.fixture
def emulator_options() -> dict[str, object]:
    return {"tick_seconds": None}


def _bridge(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> Callable[[Any], None]:
    """An SDK callback (run on a CRT thread) that hands its argument to the asyncio loop.

    Callbacks that come after the test ended (subscription-lost on shutdown) are dropped.
    """

    def callback(item: Any) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(queue.put_nowait, item)

    return callback


async def _result(future: concurrent.futures.Future[Any]) -> Any:
    return await asyncio.wait_for(asyncio.wrap_future(future), 10)


async def test_iot_jobs_client_v2_drives_a_job(mosquitto: Mosquitto, emulator: Emulator) -> None:
    loop = asyncio.get_running_loop()
    certs = mosquitto.certs
    connected: concurrent.futures.Future[None] = concurrent.futures.Future()
    stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
    client = mqtt5_client_builder.mtls_from_path(
        endpoint="localhost",
        port=mosquitto.tls_port,
        cert_filepath=str(certs.device_cert),
        pri_key_filepath=str(certs.device_key),
        ca_filepath=str(certs.ca),
        client_id=THING,
        on_lifecycle_connection_success=lambda _: connected.done() or connected.set_result(None),
        on_lifecycle_stopped=lambda _: stopped.done() or stopped.set_result(None),
    )
    client.start()
    try:
        await _result(connected)
        jobs = iotjobs.IotJobsClientV2(
            client,
            mqtt_request_response.ClientOptions(
                max_request_response_subscriptions=4,
                max_streaming_subscriptions=4,
                operation_timeout_in_seconds=10,
            ),
        )
        changed: asyncio.Queue[Any] = asyncio.Queue()
        next_changed: asyncio.Queue[Any] = asyncio.Queue()
        status: asyncio.Queue[Any] = asyncio.Queue()
        streams = [
            jobs.create_job_executions_changed_stream(
                iotjobs.JobExecutionsChangedSubscriptionRequest(thing_name=THING),
                ServiceStreamOptions(
                    incoming_event_listener=_bridge(loop, changed),
                    subscription_status_listener=_bridge(loop, status),
                ),
            ),
            jobs.create_next_job_execution_changed_stream(
                iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=THING),
                ServiceStreamOptions(
                    incoming_event_listener=_bridge(loop, next_changed),
                    subscription_status_listener=_bridge(loop, status),
                ),
            ),
        ]
        for stream in streams:
            stream.open()
        established = mqtt_request_response.SubscriptionStatusEventType.SUBSCRIPTION_ESTABLISHED
        seen = 0
        while seen < 2:
            event = await asyncio.wait_for(status.get(), 10)
            assert event.type == established, event
            seen += 1

        emulator.service.create_job("sdk-job", [THING], {"operation": "hello"})
        first_changed = await asyncio.wait_for(changed.get(), 10)
        assert [s.job_id for s in first_changed.jobs["QUEUED"]] == ["sdk-job"]
        first_next = await asyncio.wait_for(next_changed.get(), 10)
        assert first_next.execution.job_id == "sdk-job"
        assert first_next.execution.job_document == {"operation": "hello"}

        pending = await _result(
            jobs.get_pending_job_executions(
                iotjobs.GetPendingJobExecutionsRequest(thing_name=THING)
            )
        )
        assert [s.job_id for s in pending.queued_jobs] == ["sdk-job"]

        started = await _result(
            jobs.start_next_pending_job_execution(
                iotjobs.StartNextPendingJobExecutionRequest(
                    thing_name=THING, step_timeout_in_minutes=5
                )
            )
        )
        assert started.execution.status == "IN_PROGRESS"
        assert started.execution.job_document == {"operation": "hello"}

        updated = await _result(
            jobs.update_job_execution(
                iotjobs.UpdateJobExecutionRequest(
                    thing_name=THING,
                    job_id="sdk-job",
                    status="SUCCEEDED",
                    status_details={"result": "ok"},
                    expected_version=started.execution.version_number,
                    include_job_execution_state=True,
                )
            )
        )
        assert updated.execution_state.status == "SUCCEEDED"
        execution = emulator.service.execution("sdk-job", THING)
        assert execution.status is ExecutionStatus.SUCCEEDED
        assert execution.status_details == {"result": "ok"}

        # the queue emptied: notify-next without an execution
        while True:
            event = await asyncio.wait_for(next_changed.get(), 10)
            if event.execution is None:
                break

        # a rejected request arrives as the SDK's modelled error
        with pytest.raises(V2ServiceException) as info:
            await _result(
                jobs.update_job_execution(
                    iotjobs.UpdateJobExecutionRequest(
                        thing_name=THING, job_id="sdk-job", status="IN_PROGRESS"
                    )
                )
            )
        rejected = info.value.modeled_error
        assert rejected.code == "InvalidStateTransition"
        assert rejected.execution_state.status == "SUCCEEDED"
    finally:
        client.stop()
        await _result(stopped)
