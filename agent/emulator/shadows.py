"""The Device Shadow service: the classic shadow and named shadows of a thing, `$package` among
them, as the developer guide documents them ("Device Shadow service documents", "Device Shadow
MQTT topics", "Interacting with shadows", "Device Shadow error messages", "Device Shadow REST
API"; the Software Package Catalog's "Reserved named shadow").

Pure and thread-safe like `JobsService`: one lock, snapshots out, and what an operation makes
(the messages the MQTT front end publishes on `/update/accepted`, `/update/delta`,
`/update/documents` and `/delete/accepted`) is handed to listeners after the lock is released.
Those messages go out for every accepted change, whoever made it (MQTT, the HTTP API, the Jobs
service writing `$package`); a refused request is answered only to its requester (the MQTT
`/rejected` topic or the HTTP error), as the error page says.

Documented rules followed here:

* Updates affect only the fields given; `null` removes a field, a whole section, or (inside
  `$package`) a package; arrays are values, replaced whole, and may not hold `null`.
* Every accepted update increments `version` (the first is 1); `version` in a request must match
  or the update is refused with 409 "Version conflict"; deleting keeps the version, and a
  shadow created again within 48 hours continues from it.
* `metadata` mirrors the state with a `{"timestamp": ...}` per value (one per array element);
  the delta is computed from the whole desired and reported states, arrays compared whole, and
  published when an update that carries desired state leaves a difference.
* Limits: 8 KB for the desired and reported state together (metadata not counted), 6 levels of
  nesting in either, a client token of at most 64 bytes, shadow names of 1..64 characters
  `[a-zA-Z0-9:_-]` (`$` begins only the reserved `$package`).
* `$package` "doesn't update with metadata, and uses only the `version` and `attributes`
  keywords": its documents carry no `metadata`, and each package is `null` or an object with at
  most a string `version` and an `attributes` object of strings (the emulator's reading of the
  keyword rule: anything else is refused with 400).

Timestamps are whole epoch seconds.

This module is longer than 500 lines because it is one AWS service's document rules (merge,
delta, metadata, versions, size limits, named shadows, the reserved `$package`), which only make
sense read together; its MQTT and REST front ends live in shadow_mqtt.py and iotdata_api.py.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jobs_agent.emulator.clock import Clock
from jobs_agent.vocabulary import (
    MAX_CLIENT_TOKEN,
    PACKAGE_NAME_RE,
    PACKAGE_SHADOW,
    SHADOW_NAME_RE,
    is_thing_name,
)

if TYPE_CHECKING:
    from jobs_agent.emulator.store import StateStore

"""The Software Package Catalog's reserved named shadow."""
MAX_STATE_BYTES = 8192
MAX_DEPTH = 6
MAX_PAGE_SIZE = 100
RECREATE_WINDOW_SECONDS = 48 * 3600
"""A shadow created again within this time after its deletion continues its version."""
_SECTIONS = ("desired", "reported")
_PACKAGE_KEYS = frozenset({"version", "attributes"})
_MISSING = object()


class ShadowError(Exception):
    """A refused request: `code` is the HTTP status the error page lists."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def invalid(message: str) -> ShadowError:
    return ShadowError(400, message)


@dataclass(frozen=True, slots=True)
class ShadowMessage:
    """One message for the shadow's MQTT topics: `operation` is `update/accepted`,
    `update/delta`, `update/documents` or `delete/accepted`."""

    thing_name: str
    shadow_name: str | None
    operation: str
    payload: dict[str, Any]


ShadowListener = Callable[[list[ShadowMessage]], None]


@dataclass(slots=True)
class Shadow:
    """One shadow document; `deleted` keeps a deleted shadow's version for 48 hours."""

    thing_name: str
    shadow_name: str | None
    desired: dict[str, Any] | None = None
    reported: dict[str, Any] | None = None
    meta_desired: dict[str, Any] | None = None
    meta_reported: dict[str, Any] | None = None
    version: int = 0
    deleted: bool = False
    deleted_at: float | None = None

    @property
    def package(self) -> bool:
        return self.shadow_name == PACKAGE_SHADOW

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.desired is not None:
            out["desired"] = copy.deepcopy(self.desired)
        if self.reported is not None:
            out["reported"] = copy.deepcopy(self.reported)
        return out

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.meta_desired is not None:
            out["desired"] = copy.deepcopy(self.meta_desired)
        if self.meta_reported is not None:
            out["reported"] = copy.deepcopy(self.meta_reported)
        return out

    def delta(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(delta state, its metadata: the desired fields' metadata)."""
        if not self.desired:
            return {}, {}
        delta = _delta(self.desired, self.reported or {})
        return delta, _pick(self.meta_desired or {}, delta)

    def to_json(self) -> dict[str, Any]:
        return {
            "thing_name": self.thing_name,
            "shadow_name": self.shadow_name,
            "desired": self.desired,
            "reported": self.reported,
            "meta_desired": self.meta_desired,
            "meta_reported": self.meta_reported,
            "version": self.version,
            "deleted": self.deleted,
            "deleted_at": self.deleted_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Shadow:
        return cls(**dict(data))


@dataclass(slots=True)
class _Batch:
    messages: list[ShadowMessage] = field(default_factory=list)
    records: dict[tuple[str, str], Any] = field(default_factory=dict)


class ShadowService:
    """Every thing's shadows (see the module docstring)."""

    def __init__(
        self,
        clock: Clock,
        *,
        store: StateStore | None = None,
        counters: Counter[str] | None = None,
    ) -> None:
        self.clock = clock
        self._store = store
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self._lock = threading.RLock()
        self._emit_lock = threading.Lock()
        self._shadows: dict[tuple[str, str | None], Shadow] = {}
        self._listeners: list[ShadowListener] = []
        self._pending: list[ShadowMessage] = []

    # -- listeners and persistence ----------------------------------------------------------------
    def add_listener(self, listener: ShadowListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: ShadowListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def load(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Restore shadows saved by an earlier run (`--state`)."""
        with self._lock:
            for record in records:
                shadow = Shadow.from_json(record)
                self._shadows[(shadow.thing_name, shadow.shadow_name)] = shadow

    def _finish(self, batch: _Batch) -> None:
        if self._store is not None and batch.records:
            self._store.save(records=batch.records)
        self._pending.extend(batch.messages)

    def _emit(self) -> None:
        with self._emit_lock:
            with self._lock:
                messages, self._pending = self._pending, []
            if messages:
                for listener in list(self._listeners):
                    listener(messages)

    @staticmethod
    def _key(shadow: Shadow) -> tuple[str, str]:
        return ("shadow", f"{shadow.thing_name}\x00{shadow.shadow_name or ''}")

    # -- operations -------------------------------------------------------------------------------
    def get(self, thing_name: str, shadow_name: str | None = None) -> dict[str, Any]:
        """GetThingShadow / `get`: the whole document with its delta (no clientToken)."""
        self._count("GetThingShadow")
        _check_names(thing_name, shadow_name)
        with self._lock:
            shadow = self._existing(thing_name, shadow_name)
            state = shadow.state()
            delta, delta_meta = shadow.delta()
            if delta:
                state["delta"] = delta
            body: dict[str, Any] = {"state": state}
            if not shadow.package:
                metadata = shadow.metadata()
                if delta:
                    metadata["delta"] = delta_meta
                body["metadata"] = metadata
            body["version"] = shadow.version
            body["timestamp"] = self.timestamp()
            return body

    def update(
        self, thing_name: str, shadow_name: str | None, request: bytes | Mapping[str, Any]
    ) -> dict[str, Any]:
        """UpdateThingShadow / `update`: the `/update/accepted` document (also published)."""
        self._count("UpdateThingShadow")
        _check_names(thing_name, shadow_name)
        body = _parse_request(request)
        token = _client_token(body)
        expected = body.get("version", _MISSING)
        if expected is not _MISSING and (
            isinstance(expected, bool) or not isinstance(expected, int) or expected < 0
        ):
            raise invalid("Invalid version")
        state = body.get("state", _MISSING)
        if state is _MISSING:
            raise invalid("Missing required node: state")
        if not isinstance(state, dict):
            raise invalid("State node must be an object")
        for name in state:
            if name not in _SECTIONS:
                raise invalid("State contains an invalid node")
        for name in _SECTIONS:
            section = state.get(name, _MISSING)
            if section is _MISSING or section is None:
                continue
            if not isinstance(section, dict):
                raise invalid(f"{name.capitalize()} node must be an object")
            if _depth(section) > MAX_DEPTH:
                raise invalid(f"JSON contains too many levels of nesting; maximum is {MAX_DEPTH}")
            if _has_null_in_array(section):
                raise invalid("State contains an invalid node")
            if shadow_name == PACKAGE_SHADOW:
                _check_packages(section)
        with self._lock:
            batch = _Batch()
            result = self._update(batch, thing_name, shadow_name, state, expected, token)
            self._finish(batch)
        self._emit()
        return result

    def _update(
        self,
        batch: _Batch,
        thing_name: str,
        shadow_name: str | None,
        state: Mapping[str, Any],
        expected: Any,
        token: str | None,
    ) -> dict[str, Any]:
        now = self.timestamp()
        previous, version = self._current(thing_name, shadow_name)
        if expected is not _MISSING and expected != version:
            raise ShadowError(409, "Version conflict")
        before = None if previous is None else _document(previous, with_delta=False)
        updated = _copy_shadow(previous or Shadow(thing_name, shadow_name, version=version))
        _apply(updated, state, now)
        size = len(_compact({n: getattr(updated, n) for n in _SECTIONS}).encode("utf-8"))
        if size > MAX_STATE_BYTES:
            raise ShadowError(413, "The payload exceeds the maximum size allowed")
        updated.version += 1
        updated.deleted = False
        updated.deleted_at = None
        self._shadows[(thing_name, shadow_name)] = updated
        batch.records[self._key(updated)] = updated.to_json()
        accepted: dict[str, Any] = {"state": copy.deepcopy(dict(state))}
        if not updated.package:
            accepted["metadata"] = {
                n: _stamps(state[n], now) for n in _SECTIONS if isinstance(state.get(n), dict)
            }
        accepted.update(_stamped(updated.version, now, token))
        batch.messages.append(ShadowMessage(thing_name, shadow_name, "update/accepted", accepted))
        delta, delta_meta = updated.delta()
        if delta and isinstance(state.get("desired"), dict):
            message: dict[str, Any] = {"state": delta}
            if not updated.package:
                message["metadata"] = delta_meta
            message.update(_stamped(updated.version, now, token))
            batch.messages.append(ShadowMessage(thing_name, shadow_name, "update/delta", message))
        documents: dict[str, Any] = {}
        if before is not None:
            documents["previous"] = before
        documents["current"] = _document(updated, with_delta=False)
        documents["timestamp"] = now
        if token is not None:
            documents["clientToken"] = token
        batch.messages.append(ShadowMessage(thing_name, shadow_name, "update/documents", documents))
        return accepted

    def _current(self, thing_name: str, shadow_name: str | None) -> tuple[Shadow | None, int]:
        """The shadow an update applies to (None: a new one) and the version it starts from: a
        shadow deleted moments ago keeps counting (RECREATE_WINDOW_SECONDS)."""
        existing = self._shadows.get((thing_name, shadow_name))
        if existing is None:
            return None, 0
        if existing.deleted:
            since = self.clock.now() - (existing.deleted_at or 0.0)
            return None, existing.version if since <= RECREATE_WINDOW_SECONDS else 0
        return existing, existing.version

    def delete(
        self, thing_name: str, shadow_name: str | None = None, client_token: str | None = None
    ) -> dict[str, Any]:
        """DeleteThingShadow / `delete`: `{"version", "timestamp"}` (also published)."""
        self._count("DeleteThingShadow")
        _check_names(thing_name, shadow_name)
        if client_token is not None and not _token_ok(client_token):
            raise invalid("Invalid clientToken")
        with self._lock:
            shadow = self._existing(thing_name, shadow_name)
            batch = _Batch()
            tombstone = Shadow(
                thing_name,
                shadow_name,
                version=shadow.version,
                deleted=True,
                deleted_at=self.clock.now(),
            )
            self._shadows[(thing_name, shadow_name)] = tombstone
            batch.records[self._key(tombstone)] = tombstone.to_json()
            accepted: dict[str, Any] = {"version": shadow.version, "timestamp": self.timestamp()}
            if client_token is not None:
                accepted["clientToken"] = client_token
            batch.messages.append(
                ShadowMessage(thing_name, shadow_name, "delete/accepted", accepted)
            )
            self._finish(batch)
        self._emit()
        return accepted

    def list_named(
        self, thing_name: str, next_token: str | None = None, page_size: int | None = None
    ) -> dict[str, Any]:
        """ListNamedShadowsForThing: names in order, the classic shadow left out."""
        self._count("ListNamedShadowsForThing")
        if not is_thing_name(thing_name):
            raise invalid(f"Invalid thing name {thing_name!r}")
        size = MAX_PAGE_SIZE if page_size is None else page_size
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise invalid(f"pageSize must be 1..{MAX_PAGE_SIZE}")
        try:
            start = int(next_token) if next_token else 0
        except ValueError:
            raise invalid("Invalid nextToken") from None
        with self._lock:
            names = sorted(
                name
                for (thing, name), shadow in self._shadows.items()
                if thing == thing_name and name is not None and not shadow.deleted
            )
        body: dict[str, Any] = {"results": names[start : start + size]}
        if start + size < len(names):
            body["nextToken"] = str(start + size)
        body["timestamp"] = self.timestamp()
        return body

    def document(self, thing_name: str, shadow_name: str | None = None) -> dict[str, Any] | None:
        """The stored state and version (None when there is no shadow): a verification hook."""
        with self._lock:
            shadow = self._shadows.get((thing_name, shadow_name))
            if shadow is None or shadow.deleted:
                return None
            return _document(shadow, with_delta=True)

    # -- helpers ----------------------------------------------------------------------------------
    def _count(self, operation: str) -> None:
        """Every request is counted, refused ones too (`service.counters`, as device requests
        to the Jobs API are)."""
        with self._lock:
            self.counters[operation] += 1

    def _existing(self, thing_name: str, shadow_name: str | None) -> Shadow:
        shadow = self._shadows.get((thing_name, shadow_name))
        if shadow is None or shadow.deleted:
            raise ShadowError(404, f"No shadow exists with name: {shadow_name or thing_name}")
        return shadow

    def timestamp(self) -> int:
        """Now, in the whole epoch seconds of the service's documents."""
        return int(self.clock.now())


# -- documents ------------------------------------------------------------------------------------
def _document(shadow: Shadow, *, with_delta: bool) -> dict[str, Any]:
    """`{"state", "metadata", "version"}` as `/update/documents` carries `previous`/`current`."""
    state = shadow.state()
    if with_delta:
        delta, _ = shadow.delta()
        if delta:
            state["delta"] = delta
    out: dict[str, Any] = {"state": state}
    if not shadow.package:
        out["metadata"] = shadow.metadata()
    out["version"] = shadow.version
    return out


def _copy_shadow(shadow: Shadow) -> Shadow:
    return Shadow(
        shadow.thing_name,
        shadow.shadow_name,
        copy.deepcopy(shadow.desired),
        copy.deepcopy(shadow.reported),
        copy.deepcopy(shadow.meta_desired),
        copy.deepcopy(shadow.meta_reported),
        shadow.version,
        shadow.deleted,
        shadow.deleted_at,
    )


def _stamps(value: Any, now: int) -> Any:
    """The metadata of `value`: a timestamp per value, one per array element."""
    if isinstance(value, dict):
        return {k: _stamps(v, now) for k, v in value.items()}
    if isinstance(value, list):
        return [_stamps(v, now) for v in value]
    return {"timestamp": now}


def _merge(
    section: dict[str, Any], meta: dict[str, Any], patch: Mapping[str, Any], now: int
) -> None:
    for key, value in patch.items():
        if value is None:
            section.pop(key, None)
            meta.pop(key, None)
        elif isinstance(value, dict):
            target = section.get(key)
            sub_meta = meta.get(key)
            if not isinstance(target, dict) or not isinstance(sub_meta, dict):
                target = section[key] = {} if not isinstance(target, dict) else target
                sub_meta = meta[key] = {}
            _merge(target, sub_meta, value, now)
        else:
            section[key] = copy.deepcopy(value)
            meta[key] = _stamps(value, now)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: `true` is not `1`, arrays compare element by element."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def _delta(desired: Mapping[str, Any], reported: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, want in desired.items():
        have = reported.get(key, _MISSING)
        if isinstance(want, dict) and isinstance(have, dict):
            inner = _delta(want, have)
            if inner:
                out[key] = inner
        elif have is _MISSING or not _same(want, have):
            out[key] = copy.deepcopy(want)
    return out


def _pick(meta: Mapping[str, Any], shape: Mapping[str, Any]) -> dict[str, Any]:
    """The part of `meta` covering the keys of `shape` (the delta's metadata)."""
    out: dict[str, Any] = {}
    for key, value in shape.items():
        sub = meta.get(key)
        if isinstance(value, dict) and isinstance(sub, dict) and not _is_stamp(sub):
            out[key] = _pick(sub, value)
        elif sub is not None:
            out[key] = copy.deepcopy(sub)
    return out


def _is_stamp(meta: Mapping[str, Any]) -> bool:
    """A value's own metadata (`{"timestamp": n}`), not that of an object with such a key."""
    return len(meta) == 1 and isinstance(meta.get("timestamp"), int)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _has_null_in_array(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_null_in_array(v) for v in value.values())
    if isinstance(value, list):
        return any(v is None or _has_null_in_array(v) for v in value)
    return False


def _check_packages(section: Mapping[str, Any]) -> None:
    """`$package`: each package is null or `{"version": str, "attributes": {str: str}}`."""
    for package, entry in section.items():
        if not PACKAGE_NAME_RE.fullmatch(package):
            raise invalid(f"State contains an invalid node: package name {package!r}")
        if entry is None:
            continue
        if not isinstance(entry, dict) or not set(entry) <= _PACKAGE_KEYS:
            raise invalid(
                f"State contains an invalid node: {package} takes only version and attributes"
            )
        version = entry.get("version")
        if version is not None and not isinstance(version, str):
            raise invalid(f"State contains an invalid node: {package}.version must be a string")
        attributes = entry.get("attributes")
        if attributes is not None and not (
            isinstance(attributes, dict) and all(isinstance(v, str) for v in attributes.values())
        ):
            raise invalid(
                f"State contains an invalid node: {package}.attributes must map to strings"
            )


# -- requests -------------------------------------------------------------------------------------
def _check_names(thing_name: str, shadow_name: str | None) -> None:
    if not is_thing_name(thing_name):
        raise invalid(f"Invalid thing name {thing_name!r}")
    named = shadow_name is not None and shadow_name != PACKAGE_SHADOW
    if named and not SHADOW_NAME_RE.fullmatch(str(shadow_name)):
        raise invalid(f"Invalid shadow name {shadow_name!r}")


def _parse_request(request: bytes | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(request, Mapping):
        return dict(request)
    try:
        text = bytes(request).decode("utf-8")
    except UnicodeDecodeError:
        raise ShadowError(
            415, "Unsupported documented encoding; supported encoding is UTF-8"
        ) from None
    try:
        body = json.loads(text)
    except ValueError:
        raise invalid("Invalid JSON") from None
    if not isinstance(body, dict):
        raise invalid("Invalid JSON")
    return body


def _token_ok(token: Any) -> bool:
    return isinstance(token, str) and len(token.encode("utf-8")) <= MAX_CLIENT_TOKEN


def _client_token(body: Mapping[str, Any]) -> str | None:
    token = body.get("clientToken")
    if token is None:
        return None
    if not _token_ok(token):
        raise invalid("Invalid clientToken")
    return str(token)


def client_token_of(payload: bytes) -> str | None:
    """The clientToken of a request payload, if it has a valid one (for rejections)."""
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    token = body.get("clientToken") if isinstance(body, dict) else None
    return token if _token_ok(token) else None


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _apply(updated: Shadow, state: Mapping[str, Any], now: int) -> None:
    """Merge an update's sections into the shadow (a null section removes it)."""
    for name in _SECTIONS:
        if name not in state:
            continue
        patch = state[name]
        meta_name = "meta_" + name
        if patch is None:
            setattr(updated, name, None)
            setattr(updated, meta_name, None)
            continue
        section = getattr(updated, name)
        meta = getattr(updated, meta_name)
        section = {} if section is None else section
        meta = {} if meta is None else meta
        _merge(section, meta, patch, now)
        setattr(updated, name, section)
        setattr(updated, meta_name, meta)


def _stamped(version: int, now: int, token: str | None) -> dict[str, Any]:
    """The version, timestamp and client token that end an update's messages."""
    stamps: dict[str, Any] = {"version": version, "timestamp": now}
    if token is not None:
        stamps["clientToken"] = token
    return stamps
