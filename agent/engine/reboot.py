"""A reboot a job asked for: recorded, announced, done, and confirmed by the boot id afterwards.

The boot id before the reboot is written (AWAITING_REBOOT) before anything else happens, so the
run after the boot knows whether the device really rebooted (recovery: a changed boot id
continues the job, the same one fails it). The service is told (IN_PROGRESS, `reboot:
requested`) and, unless it answers that the execution is over, `jobs.reboot_command` runs. A
device that is not down within `REBOOT_GRACE_SECONDS` fails the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Any

import structlog

from jobs_agent.engine.async_store import AsyncStore
from jobs_agent.engine.lifecycle import ExecutionState
from jobs_agent.engine.outbox import Outbox
from jobs_agent.engine.shared import Shared
from jobs_agent.engine.store import Store, StoreError
from jobs_agent.jobs.client import JobsClient
from jobs_agent.jobs.errors import CLOUD_ENDED_CODES, JobsError, JobsRejected
from jobs_agent.jobs.status_details import sanitize_status_details
from jobs_agent.vocabulary import ExecutionRef, JobExecutionStatus
from jobs_agent_handlers.outcome import Outcome

if TYPE_CHECKING:
    from jobs_agent.engine.progress import ProgressReporter  # built at the first job

log = structlog.get_logger("jobs_agent.engine")

REBOOT_GRACE_SECONDS = 900.0
"""How long the agent waits for a successful reboot command to actually reboot the device."""
COMMAND_TIMEOUT_SECONDS = 120.0


class Reboots:
    def __init__(
        self, shared: Shared, store: AsyncStore, client: JobsClient, outbox: Outbox
    ) -> None:
        self._shared = shared
        self._store = store
        self._client = client
        self._outbox = outbox
        self.awaiting = False
        """A reboot is under way: the main loop takes no other job meanwhile."""
        self.handed_back: list[ExecutionRef] = []
        """Executions past their point of no return whose reboot failed: the engine runs their
        handler again (it decides what a missed reboot means) instead of deciding FAILED."""
        self._held: set[ExecutionRef] = set()

    def boot_id(self) -> str | None:
        """This boot's id; None when it cannot be read."""
        try:
            text = self._shared.settings.boot_id_path.read_text(encoding="ascii")
        except OSError:
            return None
        return text.strip() or None

    async def request(
        self, ref: ExecutionRef, reporter: ProgressReporter, bound: Any, *, held: bool = False
    ) -> None:
        """The handler succeeded and asked for a reboot: record it, tell the service, reboot.
        `held`: the handler is past its point of no return; the reboot happens even if the
        service has ended the execution."""
        boot_id = self.boot_id()
        if boot_id is None:
            path = self._shared.settings.boot_id_path
            reason = f"cannot reboot safely: boot id unreadable at {path}"
            await self._outbox.decide(ref, Outcome.failed(reason), bound)
            return
        await self._store.call(
            Store.transition, ref, ExecutionState.AWAITING_REBOOT, boot_id=boot_id
        )
        self._shared.crash.reached("awaiting_reboot")
        if held:
            self._held.add(ref)
        if not await self._announce(ref, reporter, bound, held):
            return
        if self._shared.stopping:
            # Being stopped right now: the device is already going down (the Device Client's
            # reboot.sh calls `reboot` itself), or an operator stops the agent. Either way the
            # boot id after the restart says whether the reboot happened.
            self.awaiting = True
            bound.warning("not running the reboot command: the agent is being stopped")
            return
        await self._reboot(ref, bound)

    async def _announce(
        self, ref: ExecutionRef, reporter: ProgressReporter, bound: Any, held: bool
    ) -> bool:
        """Tell the service; False when it answers that the execution is over (no reboot)."""
        details = sanitize_status_details({**reporter.latest, "reboot": "requested"})
        with contextlib.suppress(StoreError):  # the run after the boot starts from it
            await self._store.call(Store.save_progress, ref, details)
        try:
            await self._client.update(
                ref,
                JobExecutionStatus.IN_PROGRESS,
                status_details=details,
                step_timeout=reporter.step_timeout_minutes,
            )
        except JobsRejected as exc:
            if exc.code in CLOUD_ENDED_CODES and held:
                bound.warning(
                    "the service ended the execution; rebooting anyway: the job is past its"
                    " point of no return",
                    code=str(exc.code),
                )
            elif exc.code in CLOUD_ENDED_CODES:
                # Cancelled (or timed out) just now: the device must not reboot for it.
                note = f"not rebooted: the service ended the execution ({exc.code})"
                bound.warning("reboot cancelled", reason=note)
                await self._store.call(Store.cancelled, ref, note)
                self._shared.note_outcome(ref, note)
                return False
            else:
                bound.warning("reboot announcement refused; rebooting anyway", code=str(exc.code))
        except JobsError as exc:
            # Offline: the job asked for the reboot; the outcome is reported after the boot.
            bound.warning("reboot announcement not delivered; rebooting anyway", error=str(exc))
        return True

    async def _reboot(self, ref: ExecutionRef, bound: Any) -> None:
        command = list(self._shared.settings.reboot_command)
        bound.warning("rebooting the device for the job", command=command)
        try:
            returncode, stderr = await _run(command)
        except (OSError, TimeoutError) as exc:
            await self._failed(ref, Outcome.failed(f"reboot command failed: {exc}"), bound)
            return
        if returncode != 0 and self._shared.stopping:
            # Refused because the device is already shutting down (a reboot the handler
            # started itself): the boot id after the restart decides, as above.
            self.awaiting = True
            bound.warning("reboot command failed while the agent is being stopped; see after boot")
            return
        if returncode != 0:
            reason = f"reboot command exited with code {returncode}"
            await self._failed(ref, Outcome.failed(reason, stderr=stderr[-500:]), bound)
            return
        self.awaiting = True
        self._shared.set_status("awaiting reboot", str(ref))
        asyncio.get_running_loop().call_later(
            REBOOT_GRACE_SECONDS, lambda: self._shared.background(self._overdue(ref))
        )

    async def _overdue(self, ref: ExecutionRef) -> None:
        if not self.awaiting or self._shared.stopping:
            return
        self.awaiting = False
        reason = (
            "the reboot command succeeded but the device did not reboot within"
            f" {REBOOT_GRACE_SECONDS:.0f} s"
        )
        bound = log.bind(job_id=ref.job_id, execution_number=ref.execution_number)
        await self._failed(ref, Outcome.failed(reason), bound)
        self._shared.wake()

    async def _failed(self, ref: ExecutionRef, outcome: Outcome, bound: Any) -> None:
        """The reboot did not happen: FAILED, unless the job is past its point of no return,
        whose handler is run again to decide (the record stays AWAITING_REBOOT, same boot id)."""
        if ref not in self._held:
            await self._outbox.decide(ref, outcome, bound)
            return
        self._held.discard(ref)
        self.awaiting = False
        bound.warning(
            "the reboot did not happen; the handler, past its point of no return, decides",
            reason=outcome.details.get("reason"),
        )
        self.handed_back.append(ref)
        self._shared.wake()


async def _run(command: list[str]) -> tuple[int | None, str]:
    """Run the reboot command; its exit code and the end of what it wrote to stderr."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
    )
    async with asyncio.timeout(COMMAND_TIMEOUT_SECONDS):
        _, stderr = await process.communicate()
    return process.returncode, stderr.decode(errors="replace")
