"""`system-update`: an A/B system update with RAUC or SWUpdate that is committed only when the
new system has proven itself, and rolled back otherwise (docs/handlers.md, "system-update").

`{"operation": "system-update", "updater": "rauc"|"swupdate", "url": ...|"stream": {...},
"sha256": ..., "maxBytes"?}`. Each run asks `phases.next_step` what to do now, from the phase
in the checkpoint and what the device says (boot id, booted slot), does that one step, writes
the next phase, and asks again; a reboot ends the run (the engine reboots and runs it again
after the boot). So a first run, a run after a reboot and a run after a `kill -9` are the same
loop, and the phase written before each side effect says what may have happened.

The bundle is fetched by the `download-file` code (https or an AWS IoT stream, resumable, the
sha256 checked) into the job's state directory, which only the agent can write: the updater,
running as root, opens that path and no other. A presigned URL that expires (403) is renewed by
that code too, through the engine's `refresh_document` (`_RefreshingDownloadContext`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jobs_agent_handlers.api import JobContext, JobFailed, JobRejected, RefreshesDocument
from jobs_agent_handlers.download_file import DownloadFileHandler
from jobs_agent_handlers.system_update import command, phases
from jobs_agent_handlers.system_update.phases import Observed, Phase, UpdateState, next_step
from jobs_agent_handlers.system_update.settings import SystemUpdateSettings
from jobs_agent_handlers.system_update.updater import SystemUpdater, UpdaterError

UPDATERS = ("rauc", "swupdate")
CRASH_ENV_VAR = "JOBS_AGENT_CRASH_AT"
BUNDLE_NAMES = {"rauc": "update.raucb", "swupdate": "update.swu"}
CANCELLED = (
    "cancelled before the slot switch; the device was not changed (the inactive slot may hold"
    " part of the new system, never booted)"
)
STOPPED_IN_VERIFY = "the agent is stopping; the health checks run again after its restart"


def _crash_point(state_dir: Path, phase: Phase) -> None:
    """The kill tests' hook, as the engine's (agent/engine/crashpoints.py): with
    `JOBS_AGENT_CRASH_AT=system-update:PHASE` the agent kills itself right after that phase is
    written, once per job. Unset in production: one lookup."""
    armed = os.environ.get(CRASH_ENV_VAR, "").split(",")
    if f"system-update:{phase.value}" not in armed:
        return
    marker = state_dir / f"crashed-at-{phase.value}"
    if marker.exists():
        return
    marker.write_text("1")
    os.kill(os.getpid(), signal.SIGKILL)


class _DownloadContext:
    """The job's context as the download code sees it: the document of the bundle's download."""

    def __init__(self, ctx: JobContext, document: Mapping[str, Any]) -> None:
        self._ctx = ctx
        self.document = document

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    @property
    def mqtt_link(self) -> Any:
        """Said, not forwarded: `isinstance(ctx, SharesMqttLink)` (a stream download) looks for
        the attribute on the class from Python 3.12 on, where `__getattr__` is not consulted."""
        return getattr(self._ctx, "mqtt_link", None)

    def progress(
        self, percent: float | None = None, message: str | None = None, **details: Any
    ) -> None:
        self._ctx.progress(percent, message, phase=Phase.DOWNLOAD.value, **details)


class _RefreshingDownloadContext(_DownloadContext):
    """A download context whose job context can fetch the job document again (an engine's,
    `RefreshesDocument`): the download code asks it on a 403 or an expired URL, as for a
    `download-file` job, and gets the bundle's download document made from the fresh copy the
    way the first one was (`_download_document`), so that only its URL differs."""

    def __init__(
        self,
        ctx: JobContext,
        refreshing: RefreshesDocument,
        document: Mapping[str, Any],
        max_bundle_bytes: int,
    ) -> None:
        super().__init__(ctx, document)
        self._refreshing = refreshing
        self._max_bundle_bytes = max_bundle_bytes

    async def refresh_document(self) -> Mapping[str, Any]:
        fresh = await self._refreshing.refresh_document()
        self.document = _download_document(fresh, self._ctx.state_dir, self._max_bundle_bytes)
        return self.document


def _download_context(
    ctx: JobContext, document: Mapping[str, Any], max_bundle_bytes: int
) -> _DownloadContext:
    if isinstance(ctx, RefreshesDocument):
        return _RefreshingDownloadContext(ctx, ctx, document, max_bundle_bytes)
    return _DownloadContext(ctx, document)


def _document(doc: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The updater's name and the download document; `JobRejected` says what is wrong."""
    updater = doc.get("updater")
    if updater not in UPDATERS:
        raise JobRejected(f'updater: expected "rauc" or "swupdate", got {updater!r:.40}')
    if (doc.get("url") is None) == (doc.get("stream") is None):
        raise JobRejected("expected the bundle's source: a url or a stream (one of them)")
    sha256 = doc.get("sha256")
    if not isinstance(sha256, str):
        raise JobRejected("sha256: required (the bundle's digest, 64 hexadecimal digits)")
    download = {key: doc[key] for key in ("url", "stream", "maxBytes") if key in doc}
    download["sha256"] = sha256
    return updater, download


def _download_document(
    doc: Mapping[str, Any], state_dir: Path, max_bundle_bytes: int
) -> dict[str, Any]:
    """The `download-file` document of the bundle: into the job's state directory, which only
    the agent can write, and no larger than the device allows unless the job says."""
    updater, download = _document(doc)
    download["path"] = str(state_dir / BUNDLE_NAMES[updater])
    download.setdefault("maxBytes", max_bundle_bytes)
    return download


class SystemUpdateHandler:
    """The `system-update` plugin (module docstring). Resumable: every phase is recorded."""

    name = "system-update"
    resumable = True

    def __init__(
        self,
        *,
        settings: SystemUpdateSettings | None = None,
        boot_id_path: Path = Path("/proc/sys/kernel/random/boot_id"),
        state_dir: Path = Path("/var/lib/jobs-agent"),
        allow_http: bool = False,
        request_timeout: float = 30.0,
    ) -> None:
        self.settings = settings or SystemUpdateSettings()
        self.boot_id_path = boot_id_path
        self.state_dir = state_dir
        self.download = DownloadFileHandler(allow_http=allow_http, request_timeout=request_timeout)

    async def run(self, ctx: JobContext) -> Mapping[str, Any] | None:
        name, _ = _document(ctx.document)
        try:
            updater = self.settings.updater(name, self.state_dir)
        except ValueError as exc:
            raise JobRejected(str(exc)) from None
        download = _download_document(ctx.document, ctx.state_dir, self.settings.max_bundle_bytes)
        # The updater commands carry the job's marks, as a script handler's processes do
        # (docs/handlers.md, script protocol), so that a restarted agent stops what a killed
        # one left running; set in this task's own context.
        command.JOB_ENVIRONMENT.set(
            {
                "JOBS_AGENT_THING_NAME": ctx.thing_name,
                "JOBS_AGENT_JOB_ID": ctx.job_id,
                "JOBS_AGENT_EXECUTION_NUMBER": str(ctx.execution_number),
            }
        )
        run = _Run(self, ctx, updater, Path(download["path"]), download)
        return await run.loop()

    def boot_id(self) -> str:
        try:
            value = self.boot_id_path.read_text(encoding="ascii").strip()
        except OSError as exc:
            raise JobFailed(f"cannot read the boot id at {self.boot_id_path}: {exc}") from None
        if not value:
            raise JobFailed(f"the boot id at {self.boot_id_path} is empty")
        return value


class _Run:
    """One run of the handler: the loop of steps, and one method per step."""

    def __init__(
        self,
        handler: SystemUpdateHandler,
        ctx: JobContext,
        updater: SystemUpdater,
        bundle: Path,
        download: dict[str, Any],
    ) -> None:
        self.handler = handler
        self.ctx = ctx
        self.updater = updater
        self.bundle = bundle
        self.download_document = download
        self.state = UpdateState.from_checkpoint(ctx.checkpoint_data)
        updater.notice = lambda message: ctx.progress(None, message)
        self.deadline = handler.settings.health_deadline_seconds

    async def loop(self) -> Mapping[str, Any] | None:
        while True:
            observed = Observed(
                boot_id=self.handler.boot_id(), booted=await self._booted(), now=time.time()
            )
            step = next_step(self.state, observed, self.deadline)
            self.ctx.log.info(
                "system update step",
                step=step.kind,
                phase=self.state.phase.value if self.state else None,
                booted=observed.booted,
            )
            result = await self._do(step, observed)
            if result is not None:
                return result

    async def _booted(self) -> str:
        try:
            return await self.updater.booted_slot()
        except UpdaterError as exc:
            raise JobFailed(f"cannot tell the booted slot: {exc}") from None

    async def _move(self, phase: Phase, message: str, **changes: Any) -> UpdateState:
        """Write `phase` durably (refused unless the table has the move), then say so."""
        if self.state is None:
            phases.check_move(None, phase)
            state = UpdateState(phase=phase, **changes)
        else:
            state = self.state.moved(phase, **changes)
        await self.ctx.checkpoint(state.to_checkpoint())
        self.state = state
        _crash_point(self.ctx.state_dir, phase)
        percent = 0.0 if phase in (Phase.DOWNLOAD, Phase.INSTALL) else None
        self.ctx.progress(percent, message, phase=phase.value, **self._slots())
        return state

    def _slots(self) -> dict[str, str]:
        if self.state is None or not self.state.target:
            return {}
        return {"fromSlot": self.state.source, "toSlot": self.state.target}

    async def _do(self, step: phases.Step, observed: Observed) -> Mapping[str, Any] | None:
        kind = step.kind
        if kind == phases.DOWNLOAD:
            await self._download(observed)
        elif kind == phases.INSTALL:
            await self._install()
        elif kind == phases.ACTIVATE:
            await self._activate()
        elif kind == phases.REBOOT:
            return await self._reboot(Phase.REBOOT, observed, "rebooting into the new slot")
        elif kind == phases.VERIFY:
            await self._verify(observed)
        elif kind == phases.COMMIT:
            return await self._commit()
        elif kind == phases.ROLLBACK:
            await self._rollback(step.reason, observed)
        elif kind == phases.ROLLBACK_REBOOT:
            return await self._reboot(
                Phase.ROLLBACK_REBOOT, observed, "rebooting into the old slot"
            )
        else:
            self._failed(step)
        return None

    # -- before the switch: cancellable -------------------------------------------------------
    async def _download(self, observed: Observed) -> None:
        if self.state is None:
            await self._move(Phase.DOWNLOAD, "downloading the bundle")
        download = _download_context(
            self.ctx, self.download_document, self.handler.settings.max_bundle_bytes
        )
        result = await self.handler.download.run(download)
        self._stop_if_cancelled()
        try:
            target = await self.updater.inactive_slot()
        except UpdaterError as exc:
            raise JobFailed(str(exc), phase=Phase.DOWNLOAD.value) from None
        await self._move(
            Phase.INSTALL,
            f"installing {result.get('bytes', '?')} bytes into slot {target}",
            source=observed.booted,
            target=target,
        )

    async def _install(self) -> None:
        assert self.state is not None
        target = self.state.target

        def progress(percent: float | None, message: str) -> None:
            self.ctx.progress(percent, message, phase=Phase.INSTALL.value, **self._slots())

        install = asyncio.ensure_future(self.updater.install(self.bundle, progress))
        cancelled = asyncio.ensure_future(self.ctx.cancelled.wait())
        try:
            await asyncio.wait({install, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
            if not install.done():
                install.cancel()
                await asyncio.gather(install, return_exceptions=True)
        self._stop_if_cancelled()
        try:
            written = install.result()
        except UpdaterError as exc:
            raise JobFailed(str(exc), phase=Phase.INSTALL.value, **self._slots()) from None
        if written != target:
            raise JobFailed(
                f"the updater wrote slot {written}, expected {target}", phase=Phase.INSTALL.value
            )
        self._stop_if_cancelled()
        # The point of no return: from here on the update ends in a commit or a rollback.
        await self._move(Phase.ACTIVATE, f"switching to slot {target}")
        # A cancellation that came while the phase was written has already begun stopping
        # this handler (the engine saw no point of no return yet): nothing is switched.
        self._stop_if_cancelled()

    def _stop_if_cancelled(self) -> None:
        if self.ctx.cancelled.is_set():
            raise JobFailed(CANCELLED)

    # -- the switch and after it --------------------------------------------------------------
    async def _activate(self) -> None:
        assert self.state is not None
        try:
            await self.updater.activate(self.state.target)
        except UpdaterError as exc:
            await self._begin_rollback(Phase.ACTIVATE, str(exc))
            return
        await self._move(
            Phase.REBOOT,
            f"slot {self.state.target} boots next, on trial",
            boot_id=self.handler.boot_id(),
            reboots=0,
        )

    async def _reboot(self, phase: Phase, observed: Observed, message: str) -> Mapping[str, Any]:
        """Ask the engine for the reboot (it reboots once `run` returns), counted first."""
        assert self.state is not None
        await self._move(phase, message, boot_id=observed.boot_id, reboots=self.state.reboots + 1)
        self.ctx.request_reboot()
        return {"phase": phase.value, **self._slots()}

    async def _verify(self, observed: Observed) -> None:
        assert self.state is not None
        if self.state.phase is Phase.REBOOT:
            await self._move(
                Phase.VERIFY,
                f"running slot {self.state.target}: checking its health",
                verify_started=observed.now,
            )
        started = self.state.verify_started or observed.now
        remaining = self.deadline - (observed.now - started)
        checks = self.handler.settings.health_checks()
        verify = asyncio.ensure_future(checks.wait_healthy(remaining, time.time))
        cancelled = asyncio.ensure_future(self.ctx.cancelled.wait())
        try:
            await asyncio.wait({verify, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
            if not verify.done():
                verify.cancel()
                await asyncio.gather(verify, return_exceptions=True)
        if not verify.done() or verify.cancelled():
            # Past the switch only a stop of the agent sets `cancelled` (the engine carries a
            # job on past its point of no return): the checks start again after the restart.
            raise JobFailed(STOPPED_IN_VERIFY)
        reason = verify.result()
        if reason is not None:
            await self._begin_rollback(Phase.VERIFY, reason)
            return
        await self._move(Phase.COMMIT, f"slot {self.state.target} is healthy: committing")

    async def _commit(self) -> Mapping[str, Any] | None:
        assert self.state is not None
        try:
            await self.updater.mark_good()
        except UpdaterError as exc:
            await self._begin_rollback(Phase.COMMIT, str(exc))
            return None
        return {
            "phase": Phase.COMMIT.value,
            "slot": self.state.target,
            "previousSlot": self.state.source,
            "message": f"slot {self.state.target} is committed",
        }

    async def _begin_rollback(self, failed: Phase, reason: str) -> None:
        assert self.state is not None
        self.ctx.log.warning("system update rolls back", phase=failed.value, reason=reason)
        await self._move(
            Phase.ROLLBACK,
            f"rolling back to slot {self.state.source}: {reason}",
            failed_phase=failed.value,
            reason=reason,
        )

    async def _rollback(self, reason: str, observed: Observed) -> None:
        assert self.state is not None
        if self.state.phase is not Phase.ROLLBACK:
            await self._begin_rollback(self.state.phase, reason)
        assert self.state is not None
        try:
            await self.updater.mark_bad(self.state.target)
        except UpdaterError as exc:
            raise JobFailed(
                f"{self.state.reason}; and the rollback failed: {exc}",
                phase=self.state.failed_phase,
                **self._slots(),
            ) from None
        if observed.booted == self.state.source:
            # Never booted into the new slot: marking it bad is the whole rollback.
            self._failed(phases.Step(phases.ROLLED_BACK, self.state.reason))
        await self._move(
            Phase.ROLLBACK_REBOOT,
            f"slot {self.state.target} is marked bad: slot {self.state.source} boots next",
            boot_id=self.handler.boot_id(),
            reboots=0,
        )

    def _failed(self, step: phases.Step) -> None:
        """End FAILED for a step that ends the update on the old slot (or nowhere)."""
        state = self.state
        assert state is not None
        failed_phase = state.failed_phase or state.phase.value
        details: dict[str, Any] = {"phase": failed_phase, **self._slots()}
        if step.kind == phases.FELL_BACK:
            details["rolledBackBy"] = "bootloader"
        elif step.kind == phases.ROLLED_BACK:
            details["rolledBackBy"] = "agent"
        raise JobFailed(step.reason or "the update failed", **details)
