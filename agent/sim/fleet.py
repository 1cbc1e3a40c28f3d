"""A fleet of simulated devices in one process: N real engines, each its own thing and connection.

Used by `jobs-agent sim fleet` to rehearse a rollout locally: every device is the real agent
stack, assembled by `build_device` (`Engine` + `JobsClient` + `Dispatcher`, a durable SQLite
store of its own under
`state_dir/<thing>/`), so a job document that works here went through exactly what a gateway
runs, only multiplied. Connections use `PahoTransport`, which needs no thread per
connection: a thousand devices are a thousand sockets on one event loop. (Each store still has
its one writer thread, idle between writes.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from jobs_agent.config import AgentConfig, JobsConfig
from jobs_agent.device import Device, build_device
from jobs_agent.dispatch.plugins import PluginRegistry
from jobs_agent.transport.options import PahoOptions
from jobs_agent.transport.paho import PahoTransport
from jobs_agent.vocabulary import TERMINAL_STATUSES

log = structlog.get_logger("jobs_agent.sim.fleet")

NOOP_OPERATION = "fleet-noop"
"""The built-in handler of `sim fleet`: a Python plugin that succeeds at once."""
TERMINAL = frozenset(str(status) for status in TERMINAL_STATUSES)


class NoopHandler:
    """Succeeds at once: the cost of a rollout without the cost of its work."""

    async def run(self, ctx: object) -> None:
        return None


@dataclass(frozen=True)
class FleetOptions:
    things: int
    connection: PahoOptions
    """Broker settings shared by every device; client ids are the thing names."""
    state_dir: Path
    prefix: str = "fleet-"
    jobs: JobsConfig = field(default_factory=JobsConfig)
    handlers: Mapping[str, str] = field(default_factory=dict)
    connect_concurrency: int = 64
    """Connections being set up at once (each is a TCP connect, perhaps TLS, and 4 SUBACKs)."""

    def thing_name(self, index: int) -> str:
        width = max(4, len(str(self.things)))
        return f"{self.prefix}{index:0{width}d}"


@dataclass
class Member:
    """One simulated device of the fleet and its engine's task."""

    thing_name: str
    device: Device
    task: asyncio.Task[None] | None = None


class Fleet:
    def __init__(self, options: FleetOptions) -> None:
        if options.things < 1:
            raise ValueError("a fleet has at least one thing")
        self.options = options
        self.devices: list[Member] = []
        handlers = {NOOP_OPERATION: f"{__name__}:NoopHandler", **options.handlers}
        self._plugins = PluginRegistry.discover(handlers)
        self._handlers = handlers
        # One store thread for the whole fleet (a thread per device would be 1,000 threads);
        # a single worker keeps every device's writes in order.
        self._store_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-store")

    @property
    def thing_names(self) -> list[str]:
        return [self.options.thing_name(i) for i in range(1, self.options.things + 1)]

    def _config(self, thing: str, connection: PahoOptions) -> AgentConfig:
        o = self.options
        return AgentConfig(
            thing_name=thing,
            connection=connection,
            jobs=o.jobs,
            handlers=self._handlers,
            state_dir=o.state_dir / thing,
        )

    async def _start_one(self, thing: str, timeout: float) -> Member:
        connection = dataclasses.replace(self.options.connection, client_id=thing)
        config = self._config(thing, connection)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        transport = PahoTransport(connection, thing)
        # One Dispatcher per device (it writes output logs under its own state_dir), sharing
        # the plugin registry so entry points are scanned once, not once per device.
        device = build_device(
            config,
            transport,
            store_executor=self._store_executor,
            dispatcher_options={"plugins": self._plugins},
        )
        try:
            await transport.connect(timeout=timeout)
            await device.client.start()
        except BaseException:
            await device.close()
            await transport.disconnect()
            raise
        return Member(thing, device)

    async def start(self, timeout: float = 60.0) -> None:
        """Connect and subscribe every device, then start their engines (each looks for work)."""
        gate = asyncio.Semaphore(max(1, self.options.connect_concurrency))

        async def start_one(thing: str) -> Member:
            async with gate:
                return await self._start_one(thing, timeout)

        results = await asyncio.gather(
            *(start_one(t) for t in self.thing_names), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        self.devices = [r for r in results if isinstance(r, Member)]
        if failures:
            await self.stop()
            raise failures[0]
        for device in self.devices:
            device.task = asyncio.create_task(device.device.engine.run(), name=device.thing_name)

    def outcomes(self, job_id: str) -> Counter[str]:
        """What the devices reported for `job_id` so far (status -> devices)."""
        counts: Counter[str] = Counter()
        for device in self.devices:
            for key, status in device.device.engine.outcomes.items():
                if key.job_id == job_id:
                    counts[status if status in TERMINAL else "other"] += 1
        return counts

    def requests(self) -> int:
        """Jobs API requests the devices made (each one answered by the service)."""
        return sum(d.device.client.stats.requests for d in self.devices)

    async def stop(self) -> None:
        for member in self.devices:
            member.device.engine.request_stop(immediate=True)
        for device in self.devices:
            if device.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await device.task

        async def close(member: Member) -> None:
            device = member.device
            with contextlib.suppress(Exception):
                await device.client.close()
            with contextlib.suppress(Exception):
                await device.transport.disconnect()
            with contextlib.suppress(Exception):
                await device.store.close()

        await asyncio.gather(*(close(d) for d in self.devices))
        self.devices = []
        self._store_executor.shutdown(wait=True)


__all__ = ["NOOP_OPERATION", "Fleet", "FleetOptions", "NoopHandler"]
