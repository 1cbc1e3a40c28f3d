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
from dataclasses import replace as dataclass_replace
from pathlib import Path
from typing import Any

from jobs_agent.cli import EXIT_FAILURE, EXIT_OK, UsageError
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
    serve.set_defaults(func=_serve)

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

    _register_fleet(sim)


def _register_fleet(sim: Any) -> None:
    fleet = sim.add_parser(
        "fleet",
        help="simulate N devices (real agent engines) and roll a job out to them",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Rehearse a rollout locally: start N devices in this process, each the real "
        "agent engine with its own thing name, MQTT connection and state database, against the "
        "emulator through an MQTT broker; create one job targeting all of them; print progress "
        "until every execution ended, then a summary (time, outcomes, request rate, memory).",
        epilog="""examples:
  # a broker on 127.0.0.1:1883 is all it needs (an emulator is started in this process)
  jobs-agent sim fleet --things 200
  # your own document and handlers, against a running `jobs-agent sim serve`
  jobs-agent sim fleet --things 50 --endpoint http://127.0.0.1:8765 \\
      --document update.json --handler-dir ./handlers
  # only the devices: create jobs yourself (sim create-job --thing fleet-0001 ...)
  jobs-agent sim fleet --things 20 --endpoint http://127.0.0.1:8765 --no-job

exit status: 0 when every execution SUCCEEDED, 1 otherwise (or on timeout), 2 on bad usage.""",
    )
    fleet.add_argument("--things", type=int, default=10, metavar="N", help="devices (default 10)")
    fleet.add_argument(
        "--prefix",
        default="fleet-",
        help="thing name prefix; things are PREFIX0001..PREFIXN (default fleet-)",
    )
    fleet.add_argument("--broker-host", default="127.0.0.1", help="MQTT broker host")
    fleet.add_argument("--broker-port", type=int, default=1883, help="MQTT broker port")
    fleet.add_argument("--ca", type=Path, help="CA certificate for the broker's TLS (enables TLS)")
    fleet.add_argument("--cert", type=Path, help="device certificate (mTLS), shared by all")
    fleet.add_argument("--key", type=Path, help="device private key (mTLS)")
    fleet.add_argument(
        "--endpoint",
        help="HTTP endpoint of a running `sim serve` to create the job through; without it an "
        "emulator is started in this process on the same broker",
    )
    fleet.add_argument(
        "--document",
        type=Path,
        help="job document file (JSON); default: the built-in no-op "
        '{"operation": "fleet-noop"}, which succeeds at once',
    )
    fleet.add_argument("--job-id", help="job id (default: a random one)")
    fleet.add_argument(
        "--no-job",
        action="store_true",
        help="create no job: run the devices until SIGINT, printing what they report",
    )
    fleet.add_argument(
        "--handler-dir",
        type=Path,
        default=Path("handlers"),
        help="executables the document may name (jobs.handler_dir; default ./handlers)",
    )
    fleet.add_argument(
        "--handler",
        action="append",
        default=[],
        metavar="NAME=MODULE:CLASS",
        help="a Python plugin handler (config `handlers:`), repeatable",
    )
    fleet.add_argument(
        "--state-dir",
        type=Path,
        help="where each device keeps its state (STATE_DIR/THING/state.db); default: a "
        "temporary directory removed at exit",
    )
    fleet.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up when the rollout takes longer (default 300)",
    )
    fleet.add_argument(
        "--connect-concurrency",
        type=int,
        default=64,
        metavar="N",
        help="connections set up at once (default 64)",
    )
    fleet.add_argument(
        "--progress-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between progress lines (default 1; 0: none)",
    )
    fleet.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="log level of the devices (default warning: N devices log N times)",
    )
    fleet.add_argument("--json", action="store_true", help="print the summary as JSON")
    fleet.set_defaults(func=_fleet)


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


# -- HTTP conveniences ---------------------------------------------------------------------------
class _ApiError(Exception):
    pass


def _call(endpoint: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One control-plane call. The fake SigV4 scope tells the emulator it is the `iot` API
    (the emulator routes by it and never checks signatures)."""
    import urllib.error  # http.client and email: not loaded by `jobs-agent run`
    import urllib.request

    if not endpoint.startswith(("http://", "https://")):
        raise UsageError(f"--endpoint must be an http(s) URL, not {endpoint!r}")
    data = None if body is None else json.dumps(body).encode("utf-8")
    date = time.strftime("%Y%m%d", time.gmtime())
    request = urllib.request.Request(  # noqa: S310  -- scheme checked above
        endpoint.rstrip("/") + path,
        data=data,
        method=method,
        headers={
            "Content-Type": "application/json",
            "Authorization": f"AWS4-HMAC-SHA256 Credential=sim/{date}/us-east-1/iot/aws4_request",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            raw = response.read()
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())
            message = f"{error.get('__type')}: {error.get('message')}"
        except ValueError:
            message = str(exc)
        raise _ApiError(message) from None
    except urllib.error.URLError as exc:
        raise _ApiError(f"cannot reach {endpoint}: {exc.reason}") from None
    return json.loads(raw) if raw else {}


def _run(func: Any, args: argparse.Namespace) -> int:
    try:
        result = func(args)
    except _ApiError as exc:
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
        result = _call(a.endpoint, "PUT", f"/jobs/{urllib.parse.quote(job_id)}", body)
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
            page = _call(a.endpoint, "GET", "/jobs" + suffix)
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
            result = _call(a.endpoint, "GET", f"/things/{thing}/jobs/{job}")
            if not a.json:
                e = result["execution"]
                details = e.get("statusDetails", {}).get("detailsMap", {})
                print(f"job {e['jobId']} on {a.thing}: {e['status']}")
                print(f"  execution #{e['executionNumber']} version {e['versionNumber']}")
                print(f"  queued {_when(e.get('queuedAt'))}  started {_when(e.get('startedAt'))}")
                for key, value in details.items():
                    print(f"  {key}: {value}")
            return result
        described = _call(a.endpoint, "GET", f"/jobs/{job}")
        executions = _call(a.endpoint, "GET", f"/jobs/{job}/things")
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
        result = _call(a.endpoint, "PUT", path, {})
        if not a.json:
            print(f"canceled {result['jobId']}" + (" (forced)" if a.force else ""))
        return result

    return _run(run, args)


# -- fleet ----------------------------------------------------------------------------------------
def _fleet(args: argparse.Namespace) -> int:
    import asyncio

    if args.things < 1:
        raise UsageError("--things must be at least 1")
    if args.timeout <= 0 or args.progress_interval < 0 or args.connect_concurrency < 1:
        raise UsageError("--timeout and --connect-concurrency must be positive")
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together")
    if args.no_job and args.document:
        raise UsageError("--no-job creates no job, so --document has no use")
    handlers: dict[str, str] = {}
    for spec in args.handler:
        name, sep, target = spec.partition("=")
        if not sep or not name or ":" not in target:
            raise UsageError(f"--handler {spec!r}: expected NAME=MODULE:CLASS")
        handlers[name] = target
    document: dict[str, Any] = {"operation": "fleet-noop"}
    if args.document is not None:
        try:
            parsed = json.loads(args.document.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot read {args.document}: {exc}") from None
        except ValueError as exc:
            raise UsageError(f"{args.document} is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise UsageError(f"{args.document} must hold a JSON object")
        document = parsed
    if args.endpoint is not None and not args.endpoint.startswith(("http://", "https://")):
        raise UsageError(f"--endpoint must be an http(s) URL, not {args.endpoint!r}")
    from jobs_agent.log import configure_logging

    configure_logging(args.log_level, "console" if sys.stderr.isatty() else "json")
    return asyncio.run(_fleet_async(args, document, handlers))


async def _fleet_async(
    args: argparse.Namespace, document: dict[str, Any], handlers: dict[str, str]
) -> int:
    import asyncio
    import contextlib
    import resource
    import shutil
    import signal
    import tempfile
    import threading

    from jobs_agent.config import JobsConfig
    from jobs_agent.emulator.broker import broker_transport
    from jobs_agent.emulator.embedded import Emulator
    from jobs_agent.sim.fleet import TERMINAL, Fleet, FleetOptions
    from jobs_agent.transport.base import TransportError
    from jobs_agent.transport.options import PahoOptions

    def out(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    connection = PahoOptions(
        endpoint=args.broker_host,
        port=args.broker_port,
        tls=args.ca is not None or args.cert is not None,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        keepalive_seconds=300,
    )
    temporary = args.state_dir is None
    state_dir = Path(tempfile.mkdtemp(prefix="jobs-agent-fleet-")) if temporary else args.state_dir
    options = FleetOptions(
        things=args.things,
        connection=connection,
        state_dir=state_dir,
        prefix=args.prefix,
        jobs=JobsConfig(handler_dir=args.handler_dir.resolve()),
        handlers=handlers,
        connect_concurrency=args.connect_concurrency,
    )
    fleet = Fleet(options)
    emulator: Emulator | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    start = time.monotonic()
    try:
        if args.endpoint is None and not args.no_job:
            client_id = f"aws-iot-jobs-emulator-{uuid.uuid4().hex[:6]}"
            emulator = Emulator(
                broker_transport(dataclass_replace(connection, client_id=client_id), client_id)
            )
            await emulator.start(connect_timeout=30.0)
            out(f"emulator: in this process, on {args.broker_host}:{args.broker_port}")
        out(f"connecting {args.things} devices ({fleet.thing_names[0]}..{fleet.thing_names[-1]})")
        await fleet.start(timeout=60.0)
        connected = time.monotonic() - start
        out(f"connected {len(fleet.devices)} devices in {connected:.1f} s")
        if args.no_job:
            return await _fleet_serve(args, fleet, stop, out)
        job_id = args.job_id or f"fleet-{uuid.uuid4().hex[:12]}"
        requests_before = fleet.requests()
        created = time.monotonic()
        if emulator is not None:
            emulator.service.create_job(job_id, fleet.thing_names, document)
        else:
            body = {
                "targets": [
                    f"arn:aws:iot:us-east-1:123456789012:thing/{t}" for t in fleet.thing_names
                ],
                "document": json.dumps(document),
            }
            await asyncio.to_thread(
                _call, args.endpoint, "PUT", f"/jobs/{urllib.parse.quote(job_id)}", body
            )
        out(f"created job {job_id} for {args.things} things")
        finished: float | None = None
        counts: Any = {}
        printed = -1.0
        while True:
            counts = fleet.outcomes(job_id)
            done = sum(n for status, n in counts.items() if status in TERMINAL)
            elapsed = time.monotonic() - created
            if done >= args.things:
                finished = elapsed
            due = args.progress_interval and elapsed - printed >= args.progress_interval
            if due or finished is not None:
                printed = elapsed
                out(
                    f"[{elapsed:6.1f} s] "
                    + " ".join(f"{s} {counts.get(s, 0)}" for s in _SHOWN)
                    + "".join(f" {s} {n}" for s, n in sorted(counts.items()) if s not in _SHOWN)
                    + f" pending {args.things - done}"
                )
            if finished is not None or elapsed > args.timeout or stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_WATCH_SECONDS):
                    await stop.wait()
        requests = fleet.requests() - requests_before
        service_requests = (
            sum(n for k, n in emulator.service.counters.items() if k != "throttled")
            if emulator is not None
            else None
        )
        rollout = finished if finished is not None else time.monotonic() - created
        summary = {
            "job_id": job_id,
            "things": args.things,
            "connect_seconds": round(connected, 3),
            "rollout_seconds": round(rollout, 3),
            "finished": finished is not None,
            "outcomes": dict(counts),
            "requests": requests,
            "requests_per_second": round(requests / rollout, 1) if rollout > 0 else None,
            "emulator_requests": service_requests,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "threads": threading.active_count(),
        }
        if args.json:
            print(json.dumps(summary, indent=2, sort_keys=True))
        else:
            state = "done" if finished is not None else "NOT finished"
            print(
                f"{state}: {counts.get('SUCCEEDED', 0)}/{args.things} SUCCEEDED in {rollout:.1f} s"
                f" (connect {connected:.1f} s); {requests} Jobs requests,"
                f" {summary['requests_per_second']}/s; peak RSS {summary['peak_rss_mb']} MB;"
                f" {summary['threads']} threads"
            )
        ok = finished is not None and counts.get("SUCCEEDED", 0) == args.things
        return EXIT_OK if ok else EXIT_FAILURE
    except (TransportError, OSError, _ApiError) as exc:
        print(f"jobs-agent sim fleet: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await fleet.stop()
        if emulator is not None:
            await emulator.stop()
        if temporary:
            shutil.rmtree(state_dir, ignore_errors=True)


_SHOWN = ("SUCCEEDED", "FAILED")
_WATCH_SECONDS = 0.05
"""How often the devices' outcomes are looked at (the rollout time's resolution)."""


async def _fleet_serve(args: argparse.Namespace, fleet: Any, stop: Any, out: Any) -> int:
    """--no-job: report what the devices do until SIGINT/SIGTERM."""
    import asyncio
    import contextlib
    from collections import Counter

    out(
        f"ready: create jobs for things {fleet.thing_names[0]}..{fleet.thing_names[-1]}"
        f" (e.g. jobs-agent sim create-job --thing {fleet.thing_names[0]} --document DOC);"
        " Ctrl-C to stop"
    )
    last: Counter[str] = Counter()
    while not stop.is_set():
        totals: Counter[str] = Counter()
        for device in fleet.devices:
            totals.update(device.engine.outcomes.values())
        if totals != last:
            out("reported: " + " ".join(f"{s} {n}" for s, n in sorted(totals.items())))
            last = totals
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.progress_interval or 1.0):
                await stop.wait()
    return EXIT_OK
