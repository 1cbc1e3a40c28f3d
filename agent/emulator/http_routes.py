"""The routes of the emulator's HTTP APIs: every operation as botocore's service models route it
(method, path, the API it belongs to), and the request each handler receives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs_agent.emulator.iotdata_api import SIGNING_NAME

if TYPE_CHECKING:
    from jobs_agent.emulator.http_api import HttpApi

DATA_PLANE = "iot-jobs-data"
CONTROL_PLANE = "iot"
IOT_DATA = SIGNING_NAME
D, C, S, X = DATA_PLANE, CONTROL_PLANE, IOT_DATA, None
"""Short names for the tables below: the three APIs, and "any one path segment"."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    segments: list[str]
    query: dict[str, str]
    body: dict[str, Any]
    plane: str | None
    raw: bytes = b""
    """The body as sent (a shadow document is checked by the shadow service itself)."""
    body_error: str | None = None
    """Why the body is not a JSON object, for the routes that need one."""


Response = tuple[int, dict[str, Any] | None]
Handler = Callable[["HttpApi", Request, list[str]], dict[str, Any] | None]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: tuple[str | None, ...]
    """Path segments; None matches any one segment (passed to the handler in order)."""
    plane: str
    handler: Handler
    raw: bool = False
    """The handler reads `Request.raw`; the body need not be a JSON object."""

    def match(self, request: Request) -> list[str] | None:
        if request.method != self.method or len(request.segments) != len(self.pattern):
            return None
        if request.plane is not None and request.plane != self.plane:
            return None
        args = []
        for want, got in zip(self.pattern, request.segments, strict=True):
            if want is None:
                args.append(got)
            elif want != got:
                return None
        return args


_Entry = tuple[str, tuple[str | None, ...], str, Handler]


def _devices_routes() -> list[_Entry]:
    """What a device calls: the Jobs data plane and the Device Shadow (iot-data)."""
    return [
        ("GET", ("things", X, "shadow"), S, lambda a, r, p: a.iotdata.get_shadow(r.query, p[0])),
        (
            "POST",
            ("things", X, "shadow"),
            S,
            lambda a, r, p: a.iotdata.update_shadow(r.query, r.raw, p[0]),
        ),
        (
            "DELETE",
            ("things", X, "shadow"),
            S,
            lambda a, r, p: a.iotdata.delete_shadow(r.query, p[0]),
        ),
        (
            "GET",
            ("api", "things", "shadow", "ListNamedShadowsForThing", X),
            S,
            lambda a, r, p: a.iotdata.list_named(r.query, p[0]),
        ),
        ("GET", ("things", X, "jobs"), D, lambda a, r, p: a.get_pending(r, p[0])),
        ("PUT", ("things", X, "jobs", "$next"), D, lambda a, r, p: a.start_next(r, p[0])),
        ("GET", ("things", X, "jobs", X), D, lambda a, r, p: a.describe_data(r, *p)),
        ("POST", ("things", X, "jobs", X), D, lambda a, r, p: a.update(r, *p)),
    ]


def _jobs_routes() -> list[_Entry]:
    """The control plane's things and their job executions."""
    return [
        ("POST", ("things", X), C, lambda a, r, p: a.control.create_thing(r.body, p[0])),
        ("GET", ("things", X), C, lambda a, r, p: a.control.describe_thing(p[0])),
        ("PATCH", ("things", X), C, lambda a, r, p: a.control.update_thing(r.body, p[0])),
        (
            "GET",
            ("things", X, "jobs"),
            C,
            lambda a, r, p: a.control.executions_for_thing(r.query, p[0]),
        ),
        (
            "GET",
            ("things", X, "jobs", X),
            C,
            lambda a, r, p: a.control.describe_execution(r.query, *p),
        ),
        (
            "PUT",
            ("things", X, "jobs", X, "cancel"),
            C,
            lambda a, r, p: a.control.cancel_execution(r.body, r.query, *p),
        ),
        (
            "DELETE",
            ("things", X, "jobs", X, "executionNumber", X),
            C,
            lambda a, r, p: a.control.delete_execution(r.query, *p),
        ),
    ]


def _job_routes() -> list[_Entry]:
    """The control plane's jobs."""
    return [
        ("GET", ("jobs",), C, lambda a, r, p: a.control.list_jobs(r.query)),
        ("PUT", ("jobs", X), C, lambda a, r, p: a.control.create_job(r.body, p[0])),
        ("GET", ("jobs", X), C, lambda a, r, p: a.control.describe_job(r.query, p[0])),
        ("PATCH", ("jobs", X), C, lambda a, r, p: a.control.update_job(r.body, r.query, p[0])),
        ("DELETE", ("jobs", X), C, lambda a, r, p: a.control.delete_job(r.query, p[0])),
        (
            "GET",
            ("jobs", X, "job-document"),
            C,
            lambda a, r, p: a.control.job_document(r.query, p[0]),
        ),
        (
            "PUT",
            ("jobs", X, "cancel"),
            C,
            lambda a, r, p: a.control.cancel_job(r.body, r.query, p[0]),
        ),
        (
            "GET",
            ("jobs", X, "things"),
            C,
            lambda a, r, p: a.control.executions_for_job(r.query, p[0]),
        ),
        (
            "POST",
            ("jobs", X, "targets"),
            C,
            lambda a, r, p: a.control.associate_targets(r.body, r.query, p[0]),
        ),
    ]


def _templates_groups_routes() -> list[_Entry]:
    """Job templates (own and AWS managed) and thing groups."""
    return [
        ("GET", ("job-templates",), C, lambda a, r, p: a.control.list_templates(r.query)),
        (
            "PUT",
            ("job-templates", X),
            C,
            lambda a, r, p: a.control.create_template(r.body, p[0]),
        ),
        ("GET", ("job-templates", X), C, lambda a, r, p: a.control.describe_template(p[0])),
        ("DELETE", ("job-templates", X), C, lambda a, r, p: a.control.delete_template(p[0])),
        ("GET", ("managed-job-templates",), C, lambda a, r, p: a.control.list_managed(r.query)),
        (
            "GET",
            ("managed-job-templates", X),
            C,
            lambda a, r, p: a.control.describe_managed(r.query, p[0]),
        ),
        (
            "PUT",
            ("thing-groups", "addThingToThingGroup"),
            C,
            lambda a, r, p: a.control.add_to_group(r.body),
        ),
        (
            "PUT",
            ("thing-groups", "removeThingFromThingGroup"),
            C,
            lambda a, r, p: a.control.remove_from_group(r.body),
        ),
        (
            "POST",
            ("thing-groups", X),
            C,
            lambda a, r, p: a.control.create_group(r.body, p[0], dynamic=False),
        ),
        ("GET", ("thing-groups", X), C, lambda a, r, p: a.control.describe_group(p[0])),
        ("DELETE", ("thing-groups", X), C, lambda a, r, p: a.control.delete_group(p[0])),
        (
            "GET",
            ("thing-groups", X, "things"),
            C,
            lambda a, r, p: a.control.things_in_group(r.query, p[0]),
        ),
        (
            "POST",
            ("dynamic-thing-groups", X),
            C,
            lambda a, r, p: a.control.create_group(r.body, p[0], dynamic=True),
        ),
        ("DELETE", ("dynamic-thing-groups", X), C, lambda a, r, p: a.control.delete_group(p[0])),
    ]


def _streams_packages_routes() -> list[_Entry]:
    """Streams (MQTT-based file delivery)."""
    return [
        ("GET", ("streams",), C, lambda a, r, p: a.control.list_streams(r.query)),
        ("POST", ("streams", X), C, lambda a, r, p: a.control.create_stream(r.body, p[0])),
        ("GET", ("streams", X), C, lambda a, r, p: a.control.describe_stream(p[0])),
        ("PUT", ("streams", X), C, lambda a, r, p: a.control.update_stream(r.body, p[0])),
        ("DELETE", ("streams", X), C, lambda a, r, p: a.control.delete_stream(p[0])),
    ]


def _package_routes() -> list[_Entry]:
    """The Software Package Catalog."""
    return [
        ("GET", ("packages",), C, lambda a, r, p: a.control.list_packages(r.query)),
        (
            "PUT",
            ("packages", X),
            C,
            lambda a, r, p: a.control.create_package(r.body, r.query, p[0]),
        ),
        ("GET", ("packages", X), C, lambda a, r, p: a.control.get_package(p[0])),
        ("PATCH", ("packages", X), C, lambda a, r, p: a.control.update_package(r.body, p[0])),
        ("DELETE", ("packages", X), C, lambda a, r, p: a.control.delete_package(p[0])),
        (
            "GET",
            ("packages", X, "versions"),
            C,
            lambda a, r, p: a.control.list_versions(r.query, p[0]),
        ),
        (
            "PUT",
            ("packages", X, "versions", X),
            C,
            lambda a, r, p: a.control.create_version(r.body, r.query, *p),
        ),
        ("GET", ("packages", X, "versions", X), C, lambda a, r, p: a.control.get_version(*p)),
        (
            "PATCH",
            ("packages", X, "versions", X),
            C,
            lambda a, r, p: a.control.update_version(r.body, *p),
        ),
        (
            "DELETE",
            ("packages", X, "versions", X),
            C,
            lambda a, r, p: a.control.delete_version(*p),
        ),
        (
            "GET",
            ("package-configuration",),
            C,
            lambda a, r, p: a.control.get_package_configuration(),
        ),
        (
            "PATCH",
            ("package-configuration",),
            C,
            lambda a, r, p: a.control.update_package_configuration(r.body),
        ),
    ]


def _event_routes() -> list[_Entry]:
    """Update/DescribeEventConfigurations."""
    return [
        (
            "PATCH",
            ("event-configurations",),
            C,
            lambda a, r, p: a.control.update_event_configurations(r.body),
        ),
        (
            "GET",
            ("event-configurations",),
            C,
            lambda a, r, p: a.control.describe_event_configurations(),
        ),
    ]


def _routes() -> list[Route]:
    """Every operation as botocore's models route it. Data-plane routes come first: an
    unsigned request on a route both planes share goes to the device's plane."""
    table = [
        *_devices_routes(),
        *_jobs_routes(),
        *_job_routes(),
        *_templates_groups_routes(),
        *_streams_packages_routes(),
        *_package_routes(),
        *_event_routes(),
    ]
    raw = {("POST", ("things", None, "shadow"))}
    return [
        Route(m, pattern, plane, handler, (m, pattern) in raw)
        for m, pattern, plane, handler in table
    ]


ROUTES = _routes()
