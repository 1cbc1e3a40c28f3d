"""Reading the control plane's HTTP requests: body fields, query parameters, pages."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jobs_agent.emulator.configs import invalid
from jobs_agent.emulator.errors import ControlError

Body = Mapping[str, Any]
Query = Mapping[str, str]


def time_value(value: float | None) -> float | None:
    """Control-plane timestamps (DateType): epoch seconds, with the fraction botocore parses."""
    return None if value is None else round(value, 3)


def text_field(body: Body, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise invalid(f"{name} must be a string")
    return value


def config_field(body: Body, name: str, parse: Callable[[Any], Any]) -> Any:
    value = body.get(name)
    return None if value is None else parse(value)


def bool_param(query: Query, name: str) -> bool | None:
    value = query.get(name)
    if value is None:
        return None
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise invalid(f"{name} must be true or false")


def int_param(query: Query, name: str) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise invalid(f"{name} must be an integer") from None


def page(items: list[Any], query: Query) -> tuple[list[Any], str | None]:
    size = int_param(query, "maxResults") or 250
    if not 1 <= size <= 250:
        raise invalid("maxResults must be 1..250")
    token = query.get("nextToken")
    try:
        start = int(token) if token else 0
    except ValueError:
        raise invalid("invalid nextToken") from None
    end = start + size
    return items[start:end], (str(end) if end < len(items) else None)


def targets_field(body: Body) -> list[str]:
    targets = body.get("targets")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise invalid("targets must be a non-empty list of ARNs")
    return targets


def destinations_field(body: Body) -> list[str] | None:
    value = body.get("destinationPackageVersions")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid("destinationPackageVersions must be a list of package version ARNs")
    return value


def package_page(items: list[Any], query: Query) -> tuple[list[Any], str | None]:
    """Software Package Catalog paging: maxResults 1..100 (PackageCatalogMaxResults)."""
    size = int_param(query, "maxResults") or 100
    if not 1 <= size <= 100:
        raise ControlError("ValidationException", "maxResults must be 1..100")
    return page(items, {**query, "maxResults": str(size)})
