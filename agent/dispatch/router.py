"""From a job document to a handler: the one place that decides what a document means.

Order: size and depth limits, then the signature (when required), then
1. `version` / `steps`: a Device Client document, run step by step (`devicec`);
2. `operation` (or `type`) naming a Python plugin: that plugin;
3. `operation` (or `type`) naming an executable: the Device Client's older one-step form, which
   is also the script protocol (the handler directory, then our built-in scripts);
4. anything else is REJECTED with a reason that says what was expected.
Everything that can be checked without running anything (schema, handler paths and rights,
users) is checked here, so a bad document is REJECTED before its first step runs.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from jobs_agent import jsontext
from jobs_agent.dispatch import s3url
from jobs_agent.dispatch.agent_fields import check_agent_fields
from jobs_agent.dispatch.errors import TrustedKeysError as TrustedKeysError
from jobs_agent.dispatch.plan import PlannedStep
from jobs_agent.dispatch.plugins import PluginHandler, PluginRegistry
from jobs_agent.dispatch.settings import DispatchSettings
from jobs_agent.dispatch.time_limit import TimeLimit, time_limits
from jobs_agent.dispatch.users import check_plugin_user, resolve_user
from jobs_agent.vocabulary import MAX_DOCUMENT_BYTES
from jobs_agent_handlers.api import (
    Handler,
    JobContext,
    JobDeferred,
    JobFailed,
    JobRejected,
    Outcome,
)

if TYPE_CHECKING:
    # The step machinery (the Device Client schema, the sandbox, the spawn path) is loaded by
    # the first document that has steps or names an executable, not by a plugin's job
    # (`Dispatcher.sandbox`, `_steps_handler`: issue 18); cryptography (~9 MB) only when
    # signatures are required.
    from jobs_agent.dispatch.devicec import Action, PreparedStep, StepsDocument
    from jobs_agent.dispatch.process import OutputEcho, Sandbox
    from jobs_agent.dispatch.signing import SignatureVerifier
    from jobs_agent.dispatch.steps import StepsHandler

STEPS_MODULE = "jobs_agent.dispatch.steps"


class _DeviceClient(NamedTuple):
    """What the router reads of `dispatch.devicec` (the Device Client schema)."""

    parse_steps_document: Callable[[Mapping[str, Any]], StepsDocument]
    parse_legacy_document: Callable[[Mapping[str, Any], str], StepsDocument]
    prepare: Callable[[Action, DispatchSettings, str], PreparedStep]


@functools.cache
def _devicec() -> _DeviceClient:
    """`dispatch.devicec`, imported by the first document that has steps or names an
    executable and kept: an import statement costs about 8 k instructions at every run, its
    module loaded or not, and every script job goes through here (issue 18)."""
    from jobs_agent.dispatch import devicec

    return _DeviceClient(
        devicec.parse_steps_document, devicec.parse_legacy_document, devicec.prepare
    )


@functools.cache
def _steps_handler_type() -> type[StepsHandler]:
    """`steps.StepsHandler`, imported once as `_devicec` is."""
    from jobs_agent.dispatch.steps import StepsHandler

    return StepsHandler


MAX_DOCUMENT_DEPTH = 32
_COMPACT_TEXT = jsontext.encoder((",", ":"), ensure_ascii=False)
"""`json.dumps(..., separators=(",", ":"), ensure_ascii=False)`, its C encoder built once:
`JSONEncoder.encode` builds one per call, ~17 k instructions of a document's check (issue 18).
A decoded document holds no cycle, and `_check_depth` has bounded its depth before it is
encoded (`jsontext`'s one difference is a container that holds itself)."""


def check_limits(document: Mapping[str, Any]) -> None:
    """Refuse documents the service could not have sent, before any further parsing.

    The service checks the 32 KiB against the document as created; each presigned-URL
    placeholder in it is then replaced by a longer signed URL. So the allowance over 32 KiB is
    what those substitutions can have added: for each value that is a real presigned S3 URL,
    its length beyond the shortest placeholder it can have come from, and at most
    `s3url.MAX_EXPANSION` each (a string that merely mentions `X-Amz-Signature=` earns nothing).
    """
    allowance = _check_depth(document, 1)
    try:
        size = len(_COMPACT_TEXT(document).encode())
    except (TypeError, ValueError):
        raise JobRejected("the job document is not plain JSON") from None
    if size > MAX_DOCUMENT_BYTES + allowance:
        raise JobRejected(
            f"the job document is {size} bytes; at most {MAX_DOCUMENT_BYTES} (32 KiB) are accepted"
            + (f" plus {allowance} for its presigned URLs" if allowance else "")
        )


def _check_depth(value: Any, depth: int) -> int:
    """Check the nesting; return what presigned-URL substitution can have added.

    A container's plain values are looked at in its own frame: a call per value and a generator
    per container were most of a document's check (issue 18). A value one level below the
    deepest container allowed is still one level too deep, whatever its type."""
    if depth > MAX_DOCUMENT_DEPTH:
        raise JobRejected(f"the job document is nested deeper than {MAX_DOCUMENT_DEPTH} levels")
    # Plain JSON's types first: `isinstance` of the `Mapping` ABC is a Python call per value.
    if isinstance(value, str):
        return s3url.expansion(value)
    if isinstance(value, list):
        items: Iterable[Any] = value
    elif isinstance(value, (dict, Mapping)):
        items = value.values()
    else:
        return 0
    added = 0
    for item in items:
        if depth == MAX_DOCUMENT_DEPTH:
            _check_depth(item, depth + 1)  # raises
        if isinstance(item, str):
            if s3url.SIGNATURE_MARK in item:  # `expansion` is 0 for any other string
                added += s3url.expansion(item)
        elif not isinstance(item, _PLAIN_LEAVES):
            added += _check_depth(item, depth + 1)
    return added


_PLAIN_LEAVES = (int, float, bool, type(None))
"""JSON's numbers, flags and null: nothing below them, nothing to expand."""


async def run_handler(handler: Handler, ctx: JobContext) -> Outcome:
    """Run a handler and map whatever it does to an `Outcome` (see handlers/api.py).

    `asyncio.CancelledError` is not an outcome: it propagates, so the engine's cancellation of
    the task stays a cancellation; nor is `JobDeferred` (the engine waits and runs it again).
    """
    try:
        value = await handler.run(ctx)
    except JobFailed as exc:
        return Outcome("FAILED", {"reason": exc.reason, **exc.details})
    except JobRejected as exc:
        return Outcome("REJECTED", {"reason": exc.reason, **exc.details})
    except JobDeferred:
        raise  # not an outcome: the engine records the deferral and runs the handler again
    except Exception as exc:
        # With its traceback: the plugin's author needs the line, not only the message.
        ctx.log.error("handler raised", handler=handler.name, error=repr(exc), exc_info=exc)
        return Outcome.failed(f"{type(exc).__name__}: {exc}")
    if value is None:
        return Outcome.succeeded()
    if isinstance(value, Outcome):
        return value
    if isinstance(value, Mapping):
        return Outcome("SUCCEEDED", dict(value))
    return Outcome.failed(
        f"handler {handler.name} returned {type(value).__name__}; expected None, a mapping"
        " or an Outcome"
    )


class Configured(Protocol):
    """Anything that can say what the dispatcher reads (the agent's configuration can)."""

    def dispatch_settings(self) -> DispatchSettings: ...


class Dispatcher:
    """Resolves job documents to handlers, plans them and runs them (the engine's seam).

    It takes its own settings (`DispatchSettings`), or anything that can give them
    (`AgentConfig`), and never reads the configuration itself.
    """

    def __init__(
        self,
        settings: DispatchSettings | Configured,
        *,
        search_path: str | None = None,
        plugins: PluginRegistry | None = None,
        echo: OutputEcho | None = None,
    ) -> None:
        """`search_path`: the PATH handlers are looked up in and run with (default
        `process.DEFAULT_PATH`)."""
        if not isinstance(settings, DispatchSettings):
            settings = settings.dispatch_settings()
        self.settings = settings
        self._search_path = search_path
        self._echo = echo
        self._environ = dict(os.environ) if settings.handler_environment else {}
        """The agent's environment when the dispatcher is made, where the sandbox (made by the
        first script job) reads `jobs.handler_environment`'s names: the same values as when the
        sandbox was made with the dispatcher."""
        self._sandbox: Sandbox | None = None
        self.plugins = plugins or PluginRegistry.discover(
            settings.handlers,
            {
                "download-file": {
                    "allow_http": settings.allow_http_downloads,
                    "request_timeout": settings.request_timeout_seconds,
                },
                "system-update": {
                    "settings": settings.system_update,
                    "boot_id_path": settings.boot_id_path,
                    "state_dir": settings.state_dir,
                    "allow_http": settings.allow_http_downloads,
                    "request_timeout": settings.request_timeout_seconds,
                },
            },
            plugin_path=settings.plugin_path,
        )
        self.verifier: SignatureVerifier | None = None
        if settings.require_signature:
            from jobs_agent.dispatch.signing import SignatureVerifier, SigningKeyError

            try:
                self.verifier = SignatureVerifier.from_paths(settings.trusted_keys)
            except SigningKeyError as exc:
                raise TrustedKeysError(f"jobs.trusted_keys: {exc}") from None
            if not self.verifier.keys:
                raise TrustedKeysError(
                    "jobs.trusted_keys: required when jobs.require_signature is true"
                )

    def resolve(
        self,
        document: Mapping[str, Any],
        *,
        job_id: str | None = None,
        taken_at: float | None = None,
    ) -> Handler:
        """The handler for `document`; `JobRejected` with the reason when there is none.

        `job_id` and `taken_at` (when the execution was received) are what a signature's
        `jobId` and `notAfter` claims are held against.
        """
        if not isinstance(document, (dict, Mapping)):
            raise JobRejected("the job document is not a JSON object")
        check_limits(document)
        if self.verifier is not None:
            self.verifier.verify(
                document, thing_name=self.settings.thing_name, job_id=job_id, taken_at=taken_at
            )
        check_agent_fields(document)
        if "steps" in document or "version" in document:
            steps = _devicec().parse_steps_document(document)
            return self._steps_handler("device-client", steps)
        name = document.get("operation")
        if name is None:
            name = document.get("type")
        if not isinstance(name, str) or not name.strip():
            raise JobRejected(
                'expected a Device Client job document ({"version": "1.0", "steps": [...]}) or'
                ' an "operation" naming a handler (a Python plugin, or an executable in'
                f" {self.settings.handler_dir})"
            )
        plugin = self.plugins.get(name)
        if plugin is not None:
            check_plugin_user(name, document.get("runAsUser"), self.settings)
            return plugin
        try:
            return self._steps_handler(name, _devicec().parse_legacy_document(document, name))
        except JobRejected as exc:
            if not exc.reason.startswith(f'step "{name}": no handler'):
                raise
            raise JobRejected(
                f"no handler named {name!r}: expected a Python plugin (entry point group"
                " jobs_agent.handlers or config handlers: "
                f"{', '.join(self.plugins.names()) or 'none installed'}), an executable in"
                f" {self.settings.handler_dir}, or a Device Client document"
            ) from None

    @property
    def sandbox(self) -> Sandbox:
        """What runs a document's steps, made by the first document that has any."""
        if self._sandbox is None:
            from jobs_agent.dispatch.process import DEFAULT_PATH, Sandbox
            from jobs_agent.dispatch.scripts import site_environment

            settings = self.settings
            self._sandbox = Sandbox(
                kill_grace=settings.kill_grace_seconds,
                search_path=DEFAULT_PATH if self._search_path is None else self._search_path,
                environment=site_environment(settings.handler_environment, self._environ),
                echo=self._echo,
                containment=settings.containment,
                state_dir=settings.state_dir,
            )
        return self._sandbox

    def _steps_handler(self, name: str, document: StepsDocument) -> StepsHandler:
        prepare = _devicec().prepare
        steps = [prepare(a, self.settings, self.sandbox.search_path) for a in document.actions]
        return _steps_handler_type()(
            name, document, steps, settings=self.settings, sandbox=self.sandbox
        )

    def plan(self, document: Mapping[str, Any], *, job_id: str | None = None) -> list[PlannedStep]:
        """What `document` would run, step by step; runs nothing. Raises `JobRejected`."""
        handler = self.resolve(document, job_id=job_id)
        if isinstance(handler, _steps_handler_type()):
            return handler.plan()
        source = handler.source if isinstance(handler, PluginHandler) else handler.name
        return [
            PlannedStep(
                name=handler.name,
                kind="plugin",
                executable=source,
                argv=(),
                user=resolve_user("", self.settings).name,
                timeout=self._plugin_timeout(handler, document),
            )
        ]

    def _plugin_timeout(self, handler: Handler, document: Mapping[str, Any]) -> float:
        value = document.get("timeout")
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
        own = getattr(handler, "timeout_seconds", None)
        if isinstance(own, int | float) and own > 0:
            return float(own)
        return self.settings.handler_timeout_seconds

    async def run(self, handler: Handler, ctx: JobContext) -> Outcome:
        """Run a resolved handler. Python plugins get the time limit here; steps per step."""
        if _is_steps(handler):
            return await run_handler(handler, ctx)
        timeout = self._plugin_timeout(handler, ctx.document)
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a plugin runs in a task")
        limits = time_limits(task.get_loop())
        limit = TimeLimit(task, handler, ctx, timeout)
        limits.start(limit)
        try:
            return await run_handler(handler, ctx)
        except asyncio.CancelledError:
            if limit.expired and task.uncancel() <= limit.cancelling:
                return Outcome.failed(f"timed out after {timeout:g} s")
            raise  # not (only) the limit's: the job's cancellation, the agent's stop
        finally:
            limits.end(limit)


def _is_steps(handler: Handler) -> bool:
    """`isinstance(handler, StepsHandler)`, without loading the step machinery for a plugin's
    job: no StepsHandler can exist before its module is loaded."""
    steps = sys.modules.get(STEPS_MODULE)
    return steps is not None and isinstance(handler, steps.StepsHandler)
