"""The software inventory in the engine: the "already installed" check before a job runs, what a
SUCCEEDED job installed, and the report to the reserved named shadow `$package`.

* Before a job's first step: its `installs` and `destinationPackageVersions` are checked (a wrong
  one REJECTS the job, naming the key), then, when every version it installs already is the
  installed one (`inventory.model.already_installed`), the job ends SUCCEEDED without running,
  `reason` "already installed: ...".
* On SUCCEEDED, what the job installed is written in the same transaction as the outcome
  (`Store.decide`, table `packages`): the device's own record, read as the first inventory
  source (configured sources override it), and the flag "still to be reported". A job with
  `destinationPackageVersions` is recorded but never flagged: AWS IoT Jobs writes `$package` for
  it (API_VersionUpdateByJobsConfig.html) and the agent stays silent.
* After the job outcomes of the outbox are delivered, the flagged packages (and once per start,
  the whole inventory, `inventory.report_on_start`) are reported with `report_packages`: a read,
  a difference and a conditional write, so repeating it is harmless. It runs beside the main
  loop, never holding a job up. A failure for now (no link, a timeout, throttling) is retried
  with a growing pause (1 s to 5 min) and at every reconnection, across restarts too (the flag
  is durable); a refusal for good (the IoT policy lacks the `$package` topics, a report the
  shadow service calls invalid) is logged and dropped. The shadow's 8 KB limit is kept by the
  report's planner, which leaves whole packages out rather than cut one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import structlog

from jobs_agent.datamodel import model
from jobs_agent.engine.async_store import AsyncStore
from jobs_agent.engine.shared import Shared
from jobs_agent.engine.store import PackageRow, Store
from jobs_agent.inventory.reading import (
    InventoryError,
    InventorySource,
    Packages,
    PackageVersion,
    read_inventory,
)
from jobs_agent.vocabulary import DEFAULT_VERSION, NULL_VERSION

if TYPE_CHECKING:
    from jobs_agent.inventory.model import JobPackages

    # Built at its first request (`shadow.first_use`): with the report, imported when there
    # is something to report.
    from jobs_agent.shadow.client import ShadowClient

log = structlog.get_logger("jobs_agent.inventory")


class _Model(NamedTuple):
    """What a job's packages are read with (`inventory.model`)."""

    job_packages: Callable[[Mapping[str, Any]], JobPackages]
    """`JobPackages.from_document`."""
    already_installed: Callable[[JobPackages, Mapping[str, PackageVersion]], bool]
    keys: tuple[str, str]
    """The document's keys `job_packages` reads (`installs`, `destinationPackageVersions`):
    a document with neither names no package (most jobs), and its check builds nothing."""


@functools.cache
def _model() -> _Model:
    """`inventory.model`'s parts, imported at the first job (not at start: issue 18) and kept:
    an import statement costs about 8 k instructions at every run, its module loaded or not,
    and every job asks twice."""
    from jobs_agent.inventory.model import (
        DESTINATIONS_KEY,
        INSTALLS_KEY,
        JobPackages,
        already_installed,
    )

    return _Model(JobPackages.from_document, already_installed, (INSTALLS_KEY, DESTINATIONS_KEY))


def _names_packages(model: _Model, document: Mapping[str, Any]) -> bool:
    """Whether `document` has a key `model.job_packages` reads: without one it reads no
    package and no error, so the package check and the rows of a SUCCEEDED job are known
    without it (two `JobPackages` and their reads a job less; issue 18)."""
    installs, destinations = model.keys
    return installs in document or destinations in document


RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 300.0


class RecordedSource(InventorySource):
    """What the device's own jobs installed (the store's `packages` table); `reportable`: only
    what the agent itself may tell `$package` (not what AWS IoT Jobs reports)."""

    def __init__(self, store: AsyncStore, *, reportable: bool = False) -> None:
        self._store = store
        self._reportable = reportable

    def describe(self) -> str:
        return "the agent's record of its jobs"

    async def read(self) -> Packages:
        rows = await self._store.call(Store.packages)
        return {
            r.name: PackageVersion(r.name, r.version, r.attributes)
            for r in rows
            if not (self._reportable and r.aws_reports)
        }


def package_rows(job: JobPackages) -> tuple[PackageRow, ...]:
    """What a SUCCEEDED job leaves in the device's record: its `installs` (to be reported unless
    AWS reports them), and the versions `destinationPackageVersions` names that the device can
    know (`$default` it cannot: only the service knows which version that is)."""
    report = not job.reported_by_jobs
    rows = [
        PackageRow(name, package.version, dict(package.attributes), report, not report)
        for name, package in job.installs.items()
    ]
    for destination in job.destinations:
        if destination.package in job.installs or destination.version == DEFAULT_VERSION:
            continue
        version = None if destination.version == NULL_VERSION else destination.version
        rows.append(PackageRow(destination.package, version, {}, False, True))
    return tuple(rows)


@model(frozen=False)
class InventoryStatus:
    """The last report, for logs and `jobs-agent status`."""

    reported_at: float | None = None
    shadow_version: int | None = None
    omitted: tuple[str, ...] = ()
    last_error: str | None = None


class PackageReports:
    def __init__(
        self,
        shared: Shared,
        store: AsyncStore,
        shadows: ShadowClient | None,
        sources: Sequence[InventorySource] = (),
        *,
        report_on_start: bool = True,
    ) -> None:
        self._shared = shared
        self._store = store
        self._shadows = shadows
        self._sources: list[InventorySource] = [RecordedSource(store), *sources]
        self._reportable: list[InventorySource] = [
            RecordedSource(store, reportable=True),
            *sources,
        ]
        self._start_report_due = report_on_start and shadows is not None
        self._due = True
        """Something may wait to be reported (rows of an earlier run, a job just recorded, a
        failed attempt): without it `kick` costs nothing, not even a database read."""
        self._task: asyncio.Task[None] | None = None
        self._next_try = 0.0
        self._delay = RETRY_MIN_SECONDS
        self._retry_handle: asyncio.TimerHandle | None = None
        self.status = InventoryStatus()

    # -- before a job runs ------------------------------------------------------------------------
    async def skip_reason(self, document: Mapping[str, Any]) -> str | None:
        """ "already installed: ..." when the job need not run; raises `InventoryError` for a
        document whose package fields are wrong (the job is then REJECTED)."""
        model = _model()
        if not _names_packages(model, document):
            return None
        job = model.job_packages(document)
        targets = job.targets()
        if targets is None:
            return None
        reading = await read_inventory(self._sources)
        if not model.already_installed(job, reading.packages):
            return None
        return "already installed: " + ", ".join(f"{t.name} {t.version}" for t in targets)

    @staticmethod
    def rows_for(document: Mapping[str, Any]) -> tuple[PackageRow, ...]:
        """The rows a SUCCEEDED job with `document` records (none for a document whose package
        fields cannot be read: it was checked before it ran, by this or an earlier agent)."""
        model = _model()
        if not _names_packages(model, document):
            return ()
        try:
            return package_rows(model.job_packages(document))
        except InventoryError:
            return ()

    # -- reporting ---------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._shadows is not None:
            await self._shadows.start()

    def kick(self) -> None:
        """Report what is due, beside the main loop (called after the outbox was delivered)."""
        if not self._due or self._shadows is None:
            return
        if self._task is not None and not self._task.done():
            return
        if time.monotonic() < self._next_try:
            return
        self._task = asyncio.create_task(self._report_safely(self._shadows), name="package-report")

    def recorded(self) -> None:
        """A job's packages were recorded: report them on the next `kick`."""
        self._due = True

    def link_back(self) -> None:
        """The connection is back: what waits is tried again at once."""
        self._next_try = 0.0
        self._delay = RETRY_MIN_SECONDS

    async def close(self) -> None:
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _report_safely(self, shadows: ShadowClient) -> None:
        try:
            await self._report(shadows)
        except Exception as exc:  # the database for now, or a bug: never the agent's end
            log.exception("inventory report failed; retrying", exc_info=exc)
            self._retry_later()

    async def _report(self, shadows: ShadowClient) -> None:
        self._due = False
        pending = await self._store.call(Store.packages, pending=True)
        packages: Packages = {}
        if self._start_report_due:
            packages.update((await read_inventory(self._reportable)).packages)
        packages.update({r.name: PackageVersion(r.name, r.version, r.attributes) for r in pending})
        if packages:
            from jobs_agent.inventory.report import report_packages
            from jobs_agent.shadow.errors import (
                ShadowError,
                ShadowForbidden,
                ShadowInvalidRequest,
                ShadowTooLarge,
            )

            try:
                result = await report_packages(
                    shadows, packages, priority=[r.name for r in pending]
                )
            except (ShadowForbidden, ShadowInvalidRequest, ShadowTooLarge) as exc:
                log.error(
                    "$package refused the inventory report; not sent again (the IoT policy"
                    " must allow $aws/things/THING/shadow/name/$package/get and /update)",
                    error=str(exc),
                )
                self.status.last_error = str(exc)
            except ShadowError as exc:
                log.warning("inventory report not delivered yet; retrying", error=str(exc))
                self.status.last_error = str(exc)
                self._retry_later()
                return
            else:
                self.status = InventoryStatus(time.time(), result.version, result.omitted)
        if pending:
            await self._store.call(Store.packages_reported, pending)
        self._start_report_due = False
        self._delay = RETRY_MIN_SECONDS

    def _retry_later(self) -> None:
        self._due = True
        delay = self._delay
        self._delay = min(self._delay * 2, RETRY_MAX_SECONDS)
        self._next_try = time.monotonic() + delay
        self._retry_handle = asyncio.get_running_loop().call_later(delay, self._shared.wake)
