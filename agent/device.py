"""One place that assembles a device from its parts: transport -> shared link -> Jobs client ->
state store -> dispatcher -> engine.

Every entry point builds its device here: the daemon, the demo and the fleet simulator
(`build_device`), the dry run (`jobs_client` and `dispatcher`: it reads, it never records or
runs) and `exec` (`dispatcher`: no cloud at all). The transport is always given: whoever made
it (the `run` command from the configuration, the demo on an embedded emulator's bus, the fleet
on its own connections) owns it and closes it. Nothing here connects or starts anything.

A device has one MQTT connection, which every protocol client shares: `build_device` puts a
`SharedLink` on the transport and gives each client its own view of it (the Jobs client here;
the engine lends the link to Python plugins, which make their own views for a stream download).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from jobs_agent.config import AgentConfig
from jobs_agent.datamodel import model
from jobs_agent.engine.async_store import AsyncStore
from jobs_agent.engine.engine import Engine, EngineStatus
from jobs_agent.jobs.client import JobsClient
from jobs_agent.shadow.first_use import FirstUseShadowClient
from jobs_agent.transport import Transport
from jobs_agent.transport.shared import SharedLink

if TYPE_CHECKING:
    from jobs_agent.consent.server import ConsentDesk
    from jobs_agent.dispatch.router import Dispatcher
    from jobs_agent.engine.context import EngineJobContext
    from jobs_agent.shadow.client import ShadowClient
    from jobs_agent_handlers.api import Handler, Outcome

STATE_DATABASE = "state.db"


@model(frozen=False)
class Device:
    """The parts a running agent is made of, built once from the configuration."""

    config: AgentConfig
    transport: Transport
    link: SharedLink
    """The transport shared by the device's protocol clients: `link.view()` for another one."""
    client: JobsClient
    shadows: ShadowClient
    """The shadow client the software inventory is reported with (`$package`), built at its
    first request (`shadow.first_use`)."""
    store: AsyncStore
    dispatcher: FirstJobDispatcher
    engine: Engine

    async def close(self) -> None:
        """Close what the device opened (the client, the link's listeners and the store; not
        the transport)."""
        await self.client.close()
        await self.shadows.close()
        self.link.close()
        await self.store.close()


def jobs_client(config: AgentConfig, transport: Transport) -> JobsClient:
    """The Jobs client of the configured thing and namespaces, over `transport`."""
    return JobsClient(
        transport,
        config.thing_name,
        namespaces=config.jobs.namespaces,
        request_timeout=config.jobs.request_timeout_seconds,
    )


def dispatcher(config: AgentConfig, **options: Any) -> Dispatcher:
    """The dispatcher with the configured handlers and limits (`options`: Dispatcher's own)."""
    from jobs_agent.dispatch.router import Dispatcher

    return Dispatcher(config.dispatch_settings(), **options)


class FirstJobDispatcher:
    """The daemon's dispatcher, built when the first job needs it (the engine's `Dispatcher`).

    The router, the sandbox, the step machinery and the built-in handlers are about 2.5 MB and
    50 ms that a gateway waiting for jobs would otherwise pay at every start (issue 18). Building
    it can fail only on unusable signing keys, and only when signatures are required: then it is
    built at once, so that a bad `jobs.trusted_keys` still stops the start (or a reload) with
    `TrustedKeysError` before any job is taken. Its settings are made with it: they hold the
    `system-update` handler's, whose declarations an agent without a `system_update:` section
    then never loads.
    """

    def __init__(self, config: AgentConfig, options: Mapping[str, Any]) -> None:
        self._config = config
        self._options = dict(options)
        self._built: Dispatcher | None = None
        if config.jobs.require_signature:
            self.built()

    def built(self) -> Dispatcher:
        if self._built is None:
            from jobs_agent.dispatch.router import Dispatcher

            self._built = Dispatcher(self._config.dispatch_settings(), **self._options)
        return self._built

    def resolve(
        self,
        document: Mapping[str, Any],
        *,
        job_id: str | None = None,
        taken_at: float | None = None,
    ) -> Handler:
        return self.built().resolve(document, job_id=job_id, taken_at=taken_at)

    async def run(self, handler: Handler, ctx: EngineJobContext) -> Outcome:
        return await self.built().run(handler, ctx)


def first_job_dispatcher(config: AgentConfig, **options: Any) -> FirstJobDispatcher:
    """The daemon's dispatcher (see `FirstJobDispatcher`); raises `TrustedKeysError` now when
    signatures are required and the keys cannot be used."""
    return FirstJobDispatcher(config, options)


def build_device(
    config: AgentConfig,
    transport: Transport,
    *,
    store_executor: ThreadPoolExecutor | None = None,
    dispatcher_options: dict[str, Any] | None = None,
    heartbeat_interval: float | None = None,
    on_status: Callable[[EngineStatus], None] | None = None,
    consent: ConsentDesk | None = None,
    exclusive_store: bool = False,
    store: AsyncStore | None = None,
) -> Device:
    """The device `config` describes, over `transport`. Opens the state database (raises
    `StoreError`) and checks the signing keys (raises `TrustedKeysError`); connects nothing.
    `exclusive_store`: the state database in SQLite's exclusive locking mode and its
    start-next marker not held open (`sim fleet` only: two descriptors less per device, see
    `Store`). `store`: the state database already opened (the daemon opens it while its
    connection is made); None: opened here."""
    link = SharedLink(transport)
    client = jobs_client(config, link.view())
    shadows = FirstUseShadowClient(
        link.view(), config.thing_name, request_timeout=config.jobs.request_timeout_seconds
    )
    if store is None:
        store = AsyncStore(
            config.state_dir / STATE_DATABASE,
            executor=store_executor,
            exclusive=exclusive_store,
            hold_marker=not exclusive_store,
        )
    try:
        handlers = first_job_dispatcher(config, **(dispatcher_options or {}))
    except BaseException:
        store.shutdown()
        store.target.close()
        raise
    engine = Engine(
        config.engine_settings(),
        client,
        store,
        handlers,
        heartbeat_interval=heartbeat_interval,
        on_status=on_status,
        mqtt_link=link,
        consent=consent,
        shadows=shadows,
        inventory_sources=config.inventory.sources,
        report_inventory_on_start=config.inventory.report_on_start,
    )
    return Device(config, transport, link, client, shadows, store, handlers, engine)
