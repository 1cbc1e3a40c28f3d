"""`jobs-agent sim`: run the local AWS IoT Jobs emulator and drive it from a shell.

`sim serve` puts the emulator in front of an MQTT broker (for example a local mosquitto the
agent also connects to) and serves the `iot` and `iot-jobs-data` REST APIs on HTTP, so the AWS
CLI or boto3 work against it with `--endpoint-url`. The other sub-commands are conveniences that
call that HTTP API; they print plain text for people and JSON with `--json` for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from jobs_agent.cli import EXIT_FAILURE, EXIT_OK, UsageError
from jobs_agent.commands.sim_fleet import register_fleet
from jobs_agent.commands.sim_http import ApiError, call
from jobs_agent.sim import DEFAULT_ENDPOINT, DEFAULT_HTTP_PORT


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sim",
        help="run or drive the local AWS IoT Jobs emulator",
        description="A local AWS IoT Jobs service: MQTT Jobs API through a broker, plus the "
        "iot and iot-jobs-data REST APIs over HTTP (boto3/AWS CLI with --endpoint-url).",
    )
    sim = parser.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")
    sim.required = True
    _register_serve(sim)
    _register_jobs(sim)
    register_fleet(sim)


def _register_serve(sim: Any) -> None:
    serve = sim.add_parser(
        "serve",
        help="run the emulator until SIGINT/SIGTERM",
        description="Connect to an MQTT broker as the Jobs service, serve the HTTP APIs, and "
        "run until SIGINT or SIGTERM. Prints the MQTT and HTTP endpoints at start-up.",
    )
    serve.add_argument("--broker-host", default="127.0.0.1", help="MQTT broker host")
    serve.add_argument("--broker-port", type=int, default=1883, help="MQTT broker port")
    serve.add_argument("--tls", action="store_true", help="use TLS to the broker (implied by --ca)")
    serve.add_argument("--ca", type=Path, help="CA certificate file for the broker's TLS")
    serve.add_argument("--cert", type=Path, help="client certificate (mTLS)")
    serve.add_argument("--key", type=Path, help="client private key (mTLS)")
    serve.add_argument("--username", default="", help="MQTT username")
    serve.add_argument("--password", default="", help="MQTT password")
    serve.add_argument(
        "--client-id", default="aws-iot-jobs-emulator", help="MQTT client id of the emulator"
    )
    serve.add_argument(
        "--http-host",
        default="127.0.0.1",
        help="address of the HTTP APIs (default 127.0.0.1: they have no authentication)",
    )
    serve.add_argument(
        "--http-port",
        type=int,
        default=DEFAULT_HTTP_PORT,
        help=f"port of the HTTP APIs (default {DEFAULT_HTTP_PORT}; 0 picks a free port)",
    )
    serve.add_argument(
        "--state", type=Path, metavar="PATH", help="SQLite file that keeps jobs across restarts"
    )
    serve.add_argument(
        "--throttle-rate",
        type=float,
        default=0.0,
        help="fraction (0..1) of device requests answered RequestThrottled",
    )
    serve.add_argument(
        "--internal-error-rate",
        type=float,
        default=0.0,
        help="fraction (0..1) of device requests answered InternalError",
    )
    _emulation_arguments(serve)
    serve.set_defaults(func=_serve)


def _emulation_arguments(serve: Any) -> None:
    serve.add_argument("--seed", type=int, help="seed of the fault-injection random generator")
    serve.add_argument(
        "--reading",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="where the AWS documentation is silent or contradicts itself, the other reading "
        "(repeatable; docs/emulator.md has the table): "
        + "; ".join(f"{r.name}={'|'.join(r.values)}" for r in _readings()),
    )
    serve.add_argument(
        "--s3-dir",
        type=Path,
        metavar="DIR",
        help="S3 objects: CreateJob documentSource, stream files (CreateStream) and package "
        "artifacts; https://BUCKET.s3.amazonaws.com/KEY or s3://BUCKET/KEY is DIR/BUCKET/KEY",
    )


def _register_create_job(sim: Any) -> None:
    create = sim.add_parser(
        "create-job",
        help="create a job (CreateJob)",
        description="Create a SNAPSHOT job for one or more things. AWS has no job-level step "
        "timeout (devices set stepTimeoutInMinutes per request); --in-progress-timeout maps to "
        "timeoutConfig.inProgressTimeoutInMinutes.",
    )
    _endpoint(create)
    create.add_argument(
        "--thing", action="append", required=True, help="target thing name (repeatable)"
    )
    create.add_argument(
        "--document", type=Path, required=True, help="job document file (JSON object)"
    )
    create.add_argument("--job-id", help="job id (default: a random one)")
    create.add_argument("--namespace", help="namespaceId (customer-managed job namespace)")
    create.add_argument("--description", help="job description")
    create.add_argument(
        "--in-progress-timeout",
        type=int,
        metavar="MINUTES",
        help="timeoutConfig.inProgressTimeoutInMinutes (1..10080)",
    )
    create.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help="jobExecutionsRetryConfig: retry FAILED and TIMED_OUT executions up to N times",
    )
    create.add_argument(
        "--destination-package-version",
        action="append",
        default=[],
        metavar="ARN",
        help="destinationPackageVersions: a package version ARN "
        "(arn:aws:iot:REGION:ACCOUNT:package/NAME/version/VERSION, VERSION may be $default or "
        "$null), repeatable",
    )
    create.set_defaults(func=_create_job)


def _register_jobs(sim: Any) -> None:
    _register_create_job(sim)
    listing = sim.add_parser("list", help="list jobs (ListJobs)", description="List jobs.")
    _endpoint(listing)
    listing.add_argument("--status", help="only jobs with this status")
    listing.set_defaults(func=_list)

    describe = sim.add_parser(
        "describe",
        help="describe a job or one execution",
        description="Describe a job and its executions (DescribeJob, ListJobExecutionsForJob), "
        "or with --thing one execution (DescribeJobExecution).",
    )
    _endpoint(describe)
    describe.add_argument("job_id", metavar="JOB", help="job id")
    describe.add_argument("--thing", help="describe this thing's execution of the job")
    describe.set_defaults(func=_describe)

    cancel = sim.add_parser(
        "cancel",
        help="cancel a job (CancelJob)",
        description="Cancel a job: QUEUED executions are canceled; IN_PROGRESS ones only with "
        "--force (the device's next update is then refused).",
    )
    _endpoint(cancel)
    cancel.add_argument("job_id", metavar="JOB", help="job id")
    cancel.add_argument("--force", action="store_true", help="also cancel IN_PROGRESS executions")
    cancel.set_defaults(func=_cancel)


def _readings() -> Any:
    from jobs_agent.emulator.readings import READINGS

    return READINGS


def _endpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint",
        default=DEFAULT_ENDPOINT,
        help=f"HTTP endpoint of a running `sim serve` (default {DEFAULT_ENDPOINT})",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


# -- serve ----------------------------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> int:
    import asyncio

    if not 0.0 <= args.throttle_rate <= 1.0:
        raise UsageError("--throttle-rate must be between 0 and 1")
    if not 0.0 <= args.internal_error_rate <= 1.0:
        raise UsageError("--internal-error-rate must be between 0 and 1")
    from jobs_agent.emulator.readings import parse_readings

    try:
        args.readings = parse_readings(args.reading)
    except ValueError as exc:
        raise UsageError(f"--reading: {exc}") from None
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together")
    return asyncio.run(_serve_async(args))


async def _serve_async(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from jobs_agent.emulator.broker import broker_transport
    from jobs_agent.emulator.embedded import Emulator
    from jobs_agent.transport.base import TransportError
    from jobs_agent.transport.options import PahoOptions

    tls = bool(args.tls or args.ca or args.cert)
    config = PahoOptions(
        endpoint=args.broker_host,
        port=args.broker_port,
        tls=tls,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        client_id=args.client_id,
        username=args.username,
        password=args.password,
    )
    from jobs_agent.emulator.readings import describe

    emulator = Emulator(
        broker_transport(config, args.client_id),
        state_path=args.state,
        throttle_rate=args.throttle_rate,
        internal_error_rate=args.internal_error_rate,
        seed=args.seed,
        http_host=args.http_host,
        http_port=args.http_port,
        readings=args.readings,
    )
    emulator.service.s3_root = args.s3_dir
    try:
        await emulator.start(connect_timeout=30.0)
    except (TransportError, OSError) as exc:
        print(f"jobs-agent sim: cannot start: {exc}", file=sys.stderr)
        await emulator.stop()
        return EXIT_FAILURE
    scheme = "mqtts" if tls else "mqtt"
    print(f"MQTT: {scheme}://{args.broker_host}:{args.broker_port}", flush=True)
    print(f"HTTP: {emulator.http_endpoint}", flush=True)
    if args.state:
        print(f"state: {args.state}", flush=True)
    print(f"readings: {' '.join(describe(args.readings))}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await emulator.stop()
    return EXIT_OK


def _run(func: Any, args: argparse.Namespace) -> int:
    try:
        result = func(args)
    except ApiError as exc:
        print(f"jobs-agent sim: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    return EXIT_OK


def _when(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def _create_job(args: argparse.Namespace) -> int:
    try:
        document = args.document.read_text(encoding="utf-8")
        parsed = json.loads(document)
    except OSError as exc:
        raise UsageError(f"cannot read {args.document}: {exc}") from None
    except ValueError as exc:
        raise UsageError(f"{args.document} is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise UsageError(f"{args.document} must hold a JSON object")
    job_id = args.job_id or f"job-{uuid.uuid4().hex[:12]}"
    body: dict[str, Any] = {
        "targets": [f"arn:aws:iot:us-east-1:123456789012:thing/{t}" for t in args.thing],
        "document": document,
    }
    if args.namespace:
        body["namespaceId"] = args.namespace
    if args.description:
        body["description"] = args.description
    if args.in_progress_timeout is not None:
        body["timeoutConfig"] = {"inProgressTimeoutInMinutes": args.in_progress_timeout}
    if args.destination_package_version:
        body["destinationPackageVersions"] = list(args.destination_package_version)
    if args.retries is not None:
        body["jobExecutionsRetryConfig"] = {
            "criteriaList": [{"failureType": "ALL", "numberOfRetries": args.retries}]
        }

    def run(a: argparse.Namespace) -> Any:
        result = call(a.endpoint, "PUT", f"/jobs/{urllib.parse.quote(job_id)}", body)
        if not a.json:
            print(f"created {result['jobId']} for {', '.join(a.thing)}")
        return result

    return _run(run, args)


def _list(args: argparse.Namespace) -> int:
    def run(a: argparse.Namespace) -> Any:
        query = "?" + urllib.parse.urlencode({"status": a.status}) if a.status else ""
        jobs: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            suffix = query
            if token:
                suffix += ("&" if suffix else "?") + urllib.parse.urlencode({"nextToken": token})
            page = call(a.endpoint, "GET", "/jobs" + suffix)
            jobs += page.get("jobs", [])
            token = page.get("nextToken")
            if not token:
                break
        if not a.json:
            if not jobs:
                print("no jobs")
            for job in jobs:
                print(
                    f"{job['jobId']:<40} {job['status']:<12} created {_when(job.get('createdAt'))}"
                )
        return {"jobs": jobs}

    return _run(run, args)


def _describe(args: argparse.Namespace) -> int:
    job = urllib.parse.quote(args.job_id)

    def run(a: argparse.Namespace) -> Any:
        if a.thing:
            thing = urllib.parse.quote(a.thing)
            result = call(a.endpoint, "GET", f"/things/{thing}/jobs/{job}")
            if not a.json:
                e = result["execution"]
                details = e.get("statusDetails", {}).get("detailsMap", {})
                print(f"job {e['jobId']} on {a.thing}: {e['status']}")
                print(f"  execution #{e['executionNumber']} version {e['versionNumber']}")
                print(f"  queued {_when(e.get('queuedAt'))}  started {_when(e.get('startedAt'))}")
                for key, value in details.items():
                    print(f"  {key}: {value}")
            return result
        described = call(a.endpoint, "GET", f"/jobs/{job}")
        executions = call(a.endpoint, "GET", f"/jobs/{job}/things")
        if not a.json:
            j = described["job"]
            print(
                f"job {j['jobId']}: {j['status']}" + (" (forced)" if j.get("forceCanceled") else "")
            )
            for summary in executions.get("executionSummaries", []):
                thing = summary["thingArn"].rsplit("/", 1)[-1]
                s = summary["jobExecutionSummary"]
                print(f"  {thing:<40} #{s['executionNumber']} {s['status']}")
        return {"job": described["job"], "executions": executions.get("executionSummaries", [])}

    return _run(run, args)


def _cancel(args: argparse.Namespace) -> int:
    def run(a: argparse.Namespace) -> Any:
        path = f"/jobs/{urllib.parse.quote(a.job_id)}/cancel" + ("?force=true" if a.force else "")
        result = call(a.endpoint, "PUT", path, {})
        if not a.json:
            print(f"canceled {result['jobId']}" + (" (forced)" if a.force else ""))
        return result

    return _run(run, args)


# -- fleet ----------------------------------------------------------------------------------------
