"""The directories and output logs of each execution, and the processes an earlier agent left.

Each execution gets `state_dir/jobs/<namespace>/<jobId>/scratch-<n>` and `.../state`, both made
(or taken from the last job's, `jobdirs`) when the handler first asks for them
(`EngineJobContext`), and recycled or removed once its outcome is reported. Per-job output
logs are pruned to `jobs.output_logs_max_*`. A killed agent leaves its handler running in its
own session: the execution's containment group and its environment find what is left, so that a
step is neither reported while it still runs nor run twice at once.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from jobs_agent.dispatch.containment import (
    Containment,
    ContainmentError,
    containment_for,
    group_name,
)
from jobs_agent.engine.async_store import SLOW_COOL_DOWN_SECONDS, AsyncStore
from jobs_agent.engine.orphans import kill_handler_processes
from jobs_agent.engine.shared import Shared
from jobs_agent.engine.store import Store
from jobs_agent.vocabulary import ExecutionRef

if TYPE_CHECKING:
    from jobs_agent.dispatch.output import OutputLogIndex  # at the first job's end

log = structlog.get_logger("jobs_agent.engine")

INLINE_RECYCLE_SECONDS = 0.05
"""A job directory's recycling slower than this (a slow or busy flash, a journal to wait for)
sends the next ones to a thread for `SLOW_COOL_DOWN_SECONDS`: the loop is stalled that long by
it at most once per cool-down."""


@functools.cache
def _recycler() -> Callable[[str, str, str], None]:
    """`jobdirs.recycle`, imported at the first job's end (it loads the dispatch layer's output
    module: nothing at start needs it) and kept: an import statement costs about 8 k
    instructions at every run, its module loaded or not, and every script job ends here
    (issue 18)."""
    from jobs_agent.engine.jobdirs import recycle

    return recycle


class JobFiles:
    _SMALL_PRUNE = 8
    """Up to this many logs are deleted on the loop (the usual one per job); more in a thread."""

    def __init__(self, shared: Shared, store: AsyncStore) -> None:
        self._shared = shared
        self._store = store
        self._logs: OutputLogIndex | None = None
        """Made at the first job's end, with `dispatch.output` and `jobdirs`: nothing at start
        prunes logs or recycles directories (issue 18)."""
        self._logs_lock = asyncio.Lock()
        self._last: tuple[ExecutionRef, tuple[str, str], str] | None = None
        self._slow_until = float("-inf")
        """Until this `time.monotonic()`, after a slow recycling, directories go to a thread."""
        self._bare: ExecutionRef | None = None
        """The execution whose files nothing made (`made_nothing`): its cleanup looks for
        none. One slot, the latest run's: any other execution is looked for, as before."""
        self._roots: tuple[object, str, str] = (None, "", "")
        """(the state directory, its `jobs` and `logs` folders as strings): the state
        directory is a `Path` that every job turned into a string twice (issue 18)."""
        self._sweeping: asyncio.Future[None] | None = None
        """The start-up sweep of the job groups an earlier agent left (`start_sweep`), until
        something waited for its end (`swept`)."""

    def dirs(self, ref: ExecutionRef) -> tuple[str, str]:
        """(scratch, state) of the execution, as strings: `EngineJobContext` makes a `Path`
        of one only when the handler asks for it (most plugins never do)."""
        return self._paths(ref)[1]

    def _paths(self, ref: ExecutionRef) -> tuple[ExecutionRef, tuple[str, str], str]:
        """The execution's directories and the job's directory above them, kept for the
        latest execution: joined as strings (the job id and namespace are checked names, never
        a path) once for its run and its cleanup, where pathlib's parsing was a tenth of the
        engine's own work per job (issue 18)."""
        last = self._last
        if last is not None and last[0] == ref:
            return last
        roots = self._roots
        if roots[0] is not self._shared.settings.state_dir:
            roots = self._new_roots()
        base = f"{roots[1]}/{ref.namespace or 'default'}/{ref.job_id}"
        pair = (f"{base}/scratch-{ref.execution_number}", f"{base}/state")
        self._last = (ref, pair, base)
        return self._last

    def _new_roots(self) -> tuple[object, str, str]:
        """`_roots` for the settings' state directory (made again if it is another object)."""
        state_dir = self._shared.settings.state_dir
        text = str(state_dir)
        self._roots = (state_dir, os.path.join(text, "jobs"), os.path.join(text, "logs"))
        return self._roots

    def made_nothing(self, ref: ExecutionRef) -> None:
        """The execution's run ended with neither directory nor output log made, and no
        earlier run of it (before a restart, a reboot or a deferral) could have made one: its
        cleanup skips the two looks (`stat`s that fail, per plugin job; issue 18)."""
        self._bare = ref

    async def cleanup(self, ref: ExecutionRef) -> None:
        if self._bare is not None and self._bare == ref:
            self._bare = None
            return
        _ref, (scratch, state), base = self._paths(ref)
        if os.path.exists(base):  # only if the handler asked for its directories
            await self._recycle(base, scratch, state)
        # The same path as `log_path`, joined as a string: most jobs (plugins) have no log.
        roots = self._roots
        if roots[0] is not self._shared.settings.state_dir:
            roots = self._new_roots()
        path = f"{roots[2]}/{ref.job_id}-{ref.execution_number}.log"
        if os.path.exists(path):
            # A new log is what can take them over the limits.
            await self._prune_output_logs(path)

    async def _recycle(self, base: str, scratch: str, state: str) -> None:
        """Recycle the job's directory on the loop while that is fast; on a storage where it
        was slow, in a thread for `SLOW_COOL_DOWN_SECONDS` (as the store does with its
        commits: `async_store`).

        On the loop it costs its renames, 0.17 ms of CPU (p50 of 300 script jobs, at load 10;
        its p99 of 6 ms wall against 0.37 ms of CPU was the loop preempted, not the disk: this
        ext4 has no journal). The thread every job's went to cost more: the hop (its future
        chained back through the loop's self-pipe, three callbacks and a turn of the loop, two
        pool threads woken) and the recycling's own CPU there, 0.25 ms; not awaited, the GIL
        passed back and forth with the loop at each of its system calls instead."""
        recycle = _recycler()
        # The names `_paths` joined below `base`: cut, not asked of `basename` (issue 18).
        names = (scratch[len(base) + 1 :], state[len(base) + 1 :])
        if time.monotonic() < self._slow_until:
            await asyncio.to_thread(recycle, base, *names)
            return
        started = time.monotonic()
        recycle(base, *names)
        if time.monotonic() - started > INLINE_RECYCLE_SECONDS:
            self._slow_until = time.monotonic() + SLOW_COOL_DOWN_SECONDS

    async def _prune_output_logs(self, new_log: str) -> None:
        """Keep the per-job output logs within `jobs.output_logs_max_*` (oldest go first),
        from the index (`OutputLogIndex`): one `stat` per job, the listing only once."""
        settings = self._shared.settings
        if self._logs is None:
            from jobs_agent.dispatch.output import OutputLogIndex  # once, not at every job

            self._logs = OutputLogIndex(settings.state_dir / "logs")
        logs = self._logs
        limits = {
            "max_count": settings.output_logs_max_count,
            "max_total_bytes": settings.output_logs_max_total_bytes,
        }
        async with self._logs_lock:  # two executions ending at once share the index
            try:
                if logs.loaded:
                    logs.add(new_log)
                else:
                    await asyncio.to_thread(logs.load)
                excess = logs.excess(**limits)
                if not excess:
                    return  # the usual case: no database read, no listing
                from jobs_agent.dispatch.output import log_path

                active = [
                    log_path(settings.state_dir, r.key.job_id, r.key.execution_number)
                    for r in await self._store.call(Store.active)
                ]
                if excess <= self._SMALL_PRUNE:
                    deleted = logs.prune(keep=active, **limits)
                else:
                    deleted = await asyncio.to_thread(logs.prune, keep=active, **limits)
            except OSError as exc:
                log.warning("cannot prune the output logs", path=str(logs.logs_dir), error=str(exc))
                return
        if deleted:
            log.info("old output logs deleted", count=len(deleted), path=str(logs.logs_dir))

    # -- what an earlier agent left running -------------------------------------------------------
    async def stop_leftovers(self, ref: ExecutionRef, bound: Any) -> None:
        """Empty the execution's containment group (every process, whatever session or
        environment it has), then stop whatever still carries the execution's environment;
        after the start-up sweep, whose containment set-up and sweep it would race."""
        await self.swept()
        settings = self._shared.settings
        swept = await asyncio.to_thread(self._sweep_group, ref)
        killed = await asyncio.to_thread(
            kill_handler_processes, settings.thing_name, ref.job_id, ref.execution_number
        )
        if swept or killed:
            bound.warning(
                "stopped the handler an earlier agent left running",
                processes=swept,
                groups=killed,
            )

    def start_sweep(self) -> None:
        """Empty every job group an earlier agent left, in a worker thread, from the engine's
        start on: the first request does not wait for it (the cgroup probe, /proc, an `rmdir`
        per group: 1.5-2 ms of a first start's way to its first request, strace; issue 18);
        the first handler and recovery's stop of an execution's leftovers do (`swept`)."""
        self._sweeping = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        try:
            swept = await asyncio.to_thread(self.sweep_all)
        except Exception as exc:  # said now: no job may come to fail on it for a long time
            log.error(
                "cannot sweep the job groups an earlier agent left; no handler runs until it"
                " succeeds (tried again at the next job)",
                error=str(exc),
            )
            raise
        if swept:
            log.warning(
                "stopped the handler an earlier agent left running",
                processes=swept,
                where="its job groups, at start",
            )

    async def swept(self) -> None:
        """Once the start-up sweep has ended (at once after that): containment sets up and
        sweeps before any handler runs, and before an execution's own group is swept. A
        sweep that failed fails its caller, so nothing runs without it, and the next caller
        (the engine's next round, after its pause) starts it again: a passing failure does
        not leave the agent unable to run a handler until it is restarted. Shielded: a caller
        cancelled (the engine's stop) leaves the sweep to end in its thread."""
        sweeping = self._sweeping
        if sweeping is None:
            return
        if sweeping.done() and (sweeping.cancelled() or sweeping.exception() is not None):
            sweeping = self._sweeping = asyncio.ensure_future(self._sweep())
        await asyncio.shield(sweeping)
        if self._sweeping is sweeping:
            self._sweeping = None

    async def sweep_ended(self) -> None:
        """Once a sweep under way has ended, whatever its result; none is started (the
        engine's stop: the cgroup base is released after it)."""
        sweeping = self._sweeping
        if sweeping is not None:
            await asyncio.wait([sweeping])
            if not sweeping.cancelled():
                sweeping.exception()  # logged by `_sweep` already: retrieved, not said again

    def sweep_all(self) -> int:
        """Empty every job group an earlier agent left (at start)."""
        containment = self._containment("cannot sweep the job groups of an earlier agent")
        return 0 if containment is None else containment.sweep_all()

    def _sweep_group(self, ref: ExecutionRef) -> int:
        containment = self._containment("cannot sweep the job's containment group")
        if containment is None:
            return 0
        return containment.sweep(group_name(ref.namespace, ref.job_id, ref.execution_number))

    def _containment(self, problem: str) -> Containment | None:
        settings = self._shared.settings
        try:
            return containment_for(settings.containment, settings.state_dir)
        except ContainmentError as exc:
            log.error(problem, error=str(exc))
            return None
