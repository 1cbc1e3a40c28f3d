"""The daemon: runs the device `build_device` assembles, and owns the process-level concerns.

It receives its transport (the `run` command makes it from the configuration, or on an embedded
emulator's bus for `transport: local`; without one, the configured network transport is made
here), and never builds an emulator.

Signals: the first SIGTERM/SIGINT stops taking jobs and lets the running step finish within
`jobs.stop_timeout_seconds` (a resumable handler is suspended and continues after the restart);
a second one stops at once. SIGHUP reloads the configuration (log level, handlers, limits)
without dropping the connection or the running job. systemd is told READY=1 once connected and
subscribed, STATUS= with the current job, WATCHDOG=1 only while the event loop and the engine
make progress, and STOPPING=1 / RELOADING=1.

Once ready, everything start-up made (modules, configuration, the store, the connection: some
32,000 objects) is moved out of the cyclic collector's reach (`gc.freeze`): it lives until the
process ends, and every full collection walked all of it. Measured with `gc.callbacks` on
agents running 5,000 jobs each (benchmarks/idle.py): two full collections each, of
32,400-33,000 objects, 7-19 ms on the event loop wherever a job was; frozen, one of
4,900-6,300 objects (what the jobs kept since), about 2 ms. The collector keeps its default
thresholds and runs on everything else as before; a plugin job leaves it nothing in cycles
(runner.py's `_prepare`): 5,000 of them set off no full collection. No full pass precedes the
freeze: start-up leaves no cyclic garbage by then (`gc.collect()` there found none, paho or
awscrt), and it would delay the first job. A reload collects and freezes again (`_refreeze`).
The heap is given back (`gc.unfreeze`) when the agent stops, for a process that goes on (tests,
the demo).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from jobs_agent.aio import unless_set
from jobs_agent.config import AgentConfig, ConfigError, load_config
from jobs_agent.config_cache import ParseCache
from jobs_agent.consent.settings import DEFAULT_SOCKET
from jobs_agent.device import STATE_DATABASE, Device, build_device, first_job_dispatcher
from jobs_agent.dispatch.errors import TrustedKeysError
from jobs_agent.engine.async_store import AsyncStore
from jobs_agent.engine.engine import Engine, EngineStatus
from jobs_agent.engine.heartbeat import keep_heartbeat
from jobs_agent.engine.instance_lock import AlreadyRunning, InstanceLock
from jobs_agent.engine.store import StoreError
from jobs_agent.jobs.errors import JobsError, RequestTimeout
from jobs_agent.log import configure_logging
from jobs_agent.sdnotify import SystemdNotifier
from jobs_agent.securefs import UntrustedPath, ensure_private_directory
from jobs_agent.transport import Transport, TransportError
from jobs_agent.transport.factory import create_transport

if TYPE_CHECKING:
    from jobs_agent.consent.server import ConsentServer

log = structlog.get_logger("jobs_agent.daemon")

EXIT_ALREADY_RUNNING = 2
CONSENT_DIRECTORY = "consent"
"""Below the state directory: the consent decisions (`jobs_agent.consent.decisions`)."""
"""Another agent holds the state directory: a usage error, not a failure to retry."""
ENGINE_STALL_SECONDS = 90.0
"""The engine's main loop refreshes its heartbeat at least every 30 s; thrice that is a stall."""


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        result: dict[str, Any] = {}
        for item in dataclasses.fields(value):
            name = f"{prefix}{item.name}"
            result.update(_flatten(getattr(value, item.name), f"{name}."))
            if not dataclasses.is_dataclass(getattr(value, item.name)):
                result[name] = getattr(value, item.name)
        return result
    return {}


def changed_settings(old: AgentConfig, new: AgentConfig) -> list[str]:
    """The keys whose value differs (names only: a changed password is not shown). A
    `system_update:` section added or removed is compared with the defaults it replaces, key
    by key."""
    if (old.system_update is None) != (new.system_update is None):
        old = dataclasses.replace(old, system_update=old.system_update_settings())
        new = dataclasses.replace(new, system_update=new.system_update_settings())
    before, after = _flatten(old), _flatten(new)
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


async def _abandon(connecting: asyncio.Future[None] | None) -> None:
    """A start that ends before its device is built: the connection being made is given up
    (cancelled as a stop cancels it; what it opened is closed by its cancellation)."""
    if connecting is not None:
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, TransportError):
            await connecting


def _refreeze() -> None:
    """After a reload, what the old configuration and dispatcher left in cycles is frozen
    garbage: one full pass over everything collects it (and start-up's), and what is left is
    frozen again. A reload is rare and asked for; each one leaves nothing behind for good."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        config_path: Path | None = None,
        transport: Transport | None = None,
        notifier: SystemdNotifier | None = None,
        heartbeat_interval: float | None = None,
        connect_timeout: float | None = None,
        parse_cache: ParseCache | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self._transport = transport
        self.notifier = notifier or SystemdNotifier()
        self._heartbeat_interval = heartbeat_interval
        self._connect_timeout = connect_timeout
        self.parse_cache = parse_cache
        """The file's parse kept for the next start and reload (`config_cache`), or None."""
        self.engine: Engine | None = None
        self._signals = 0
        self._frozen = False
        self._device: Device | None = None
        self.ready = asyncio.Event()
        self._stop_requested = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------------
    async def run(self) -> int:
        config = self.config
        lock = InstanceLock(config.state_dir)
        try:
            lock.acquire()  # before the database: a second agent must not even open it
        except AlreadyRunning as exc:
            log.error("not started", error=str(exc), holder_pid=exc.pid)
            self.notifier.status(str(exc))
            return EXIT_ALREADY_RUNNING
        except OSError as exc:
            log.error("cannot lock the state directory", path=str(lock.path), error=str(exc))
            return 1
        try:
            return await self._run_locked()
        finally:
            lock.release()

    async def _run_locked(self) -> int:
        if not self._state_dir_usable():
            return 1
        self._keep_parse()
        consent = await self._serve_consent()
        try:
            return await self._run_with(consent)
        finally:
            if consent is not None:
                await consent.close()

    async def _run_with(self, consent: ConsentServer | None) -> int:
        config = self.config
        connecting: asyncio.Future[None] | None = None
        try:
            transport = self._transport or create_transport(config)
            opening = self._open_store()
            connecting = asyncio.ensure_future(transport.connect(timeout=self._connect_timeout))
            await asyncio.sleep(0)  # its first step: the connect's worker starts before the checks
            self._log_findings()
            device = build_device(
                config,
                transport,
                heartbeat_interval=self._heartbeat_interval,
                on_status=self._on_status,
                consent=consent.desk if consent is not None else None,
                store=await opening,
            )
        except StoreError as exc:
            await _abandon(connecting)
            log.error("cannot start without the state database", error=str(exc))
            self.notifier.status(f"cannot open the state database: {exc}")
            return 1
        except (TransportError, TrustedKeysError) as exc:
            await _abandon(connecting)
            log.error("cannot start", error=str(exc))
            self.notifier.status(f"cannot start: {exc}")
            return 1
        self._device = device
        self._install_signal_handlers()
        heartbeat = asyncio.create_task(self._keep_heartbeat(transport), name="heartbeat")
        try:
            return await self._serve(device, connecting)
        except (TransportError, JobsError) as exc:
            log.error("cannot connect", error=str(exc))
            return 1
        finally:
            connecting.cancel()  # a stop that came before the connect was awaited
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            with contextlib.suppress(Exception):
                await transport.disconnect()
            await device.store.close()
            self._remove_signal_handlers()
            log.info("stopped")

    def _open_store(self) -> asyncio.Future[AsyncStore]:
        """The state database, opened in a worker thread (started now) while the loop makes
        the connection and checks the configuration (`_run_with`): a first start lays it out
        and fsyncs it twice (`Store._make_if_new`), a restart opens it with 4 statements, and
        either way the CONNECT goes out and its CONNACK comes meanwhile, where they waited for
        it and the checks before (issue 18: 2-5 ms of a first start's way to its first
        request, strace). Nothing is asked of the service before the engine runs, which
        recovers the records first; a database that cannot be opened still ends the start
        (the connection being made is given up, `_abandon`)."""
        path = self.config.state_dir / STATE_DATABASE
        return asyncio.get_running_loop().run_in_executor(None, AsyncStore, path)

    async def _serve_consent(self) -> ConsentServer | None:
        """The consent socket (`consent.socket`), after the state directory and the instance
        lock; without it, a job that asks for consent is reported FAILED, saying why."""
        settings = self.config.consent
        if settings.socket == DEFAULT_SOCKET and not settings.socket.parent.is_dir():
            # Made by the unit's RuntimeDirectory=; the agent does not make it below /run. Run
            # outside the unit (a bench, a test), that is normal: said, not warned about.
            log.info(
                "consent socket not served: its directory does not exist (jobs that ask for"
                " consent are FAILED)",
                path=str(settings.socket),
            )
            return None
        from jobs_agent.consent.decisions import DecisionStore
        from jobs_agent.consent.server import ConsentDesk, ConsentServer

        try:
            desk = ConsentDesk(DecisionStore(self.config.state_dir / CONSENT_DIRECTORY))
            server = ConsentServer(desk, settings.socket, settings.allowlist)
            await server.start()
        except (UntrustedPath, OSError) as exc:
            reason = exc.reason if isinstance(exc, UntrustedPath) else str(exc)
            log.error("consent socket not served", path=str(settings.socket), error=reason)
            return None
        return server

    def _state_dir_usable(self) -> bool:
        try:
            for change in ensure_private_directory(self.config.state_dir, what="state_dir"):
                log.warning("state directory was readable by others", change=change)
        except (UntrustedPath, OSError) as exc:
            reason = exc.reason if isinstance(exc, UntrustedPath) else str(exc)
            log.error("cannot use the state directory", error=reason)
            self.notifier.status(f"cannot use the state directory: {reason}")
            return False
        return True

    def _keep_parse(self) -> None:
        """Write the parse a miss made into the state directory, now checked private (and held
        under the instance lock): the next start with the same file reads it back."""
        if self.parse_cache is not None and self.parse_cache.save(self.config.state_dir):
            log.debug("configuration parse kept for the next start")

    def _keep_heartbeat(self, transport: Transport) -> Coroutine[Any, Any, None]:
        connection = self.config.connection
        return keep_heartbeat(
            self.config.state_dir,
            transport=connection.transport,
            endpoint=connection.endpoint_name,
            is_connected=lambda: transport.is_connected,
            activity=lambda: self.engine.status.describe() if self.engine else "connecting",
        )

    async def _serve(self, device: Device, connecting: asyncio.Future[None]) -> int:
        """Connect (`connecting`: the connection being made), subscribe, run the engine until
        it stops."""
        config = self.config
        # Said once the signals are handled (a stop from here on ends the start with code 0),
        # though the connection has been made since before the database was open (`_run_with`).
        log.info(
            "connecting",
            transport=config.connection.transport,
            endpoint=config.connection.endpoint_name or None,
            thing_name=config.thing_name,
        )
        if not await self._unless_stopped(self._connect_and_subscribe(device, connecting)):
            log.info("stopped before the connection was established")
            return 0
        engine = self.engine = device.engine
        if self._signals:
            engine.request_stop(immediate=self._signals > 1)
        self.notifier.ready(status="connected; waiting for jobs")
        self.ready.set()
        log.info("ready", thing_name=config.thing_name, namespaces=list(config.jobs.namespaces))
        gc.freeze()
        self._frozen = True
        watchdog = asyncio.create_task(self._watchdog(engine))
        try:
            await engine.run()
        finally:
            gc.unfreeze()
            self._frozen = False
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        self.notifier.stopping()
        await device.client.close()
        return 0

    def _log_findings(self) -> None:
        """What `config check` would say, said once at start where journald keeps it (while
        the state database is opened and the connection made: before either can fail)."""
        from jobs_agent.config_checks import check_environment

        findings = check_environment(self.config, import_plugins=False)
        for problem in findings.errors:
            log.error("configuration problem on this device", problem=problem)
        for problem in findings.warnings:
            log.warning("configuration warning", problem=problem)

    async def _connect_and_subscribe(
        self, device: Device, connecting: asyncio.Future[None]
    ) -> None:
        """Connect (retrying with backoff for as long as it takes), then subscribe, asking again
        for as long as it takes: a link lost between the CONNACK and the SUBACKs (a broker
        restarting as the agent starts) is no more a failed start than a slow connect is
        (the unit's READY=1 waits for both); exiting made systemd restart the agent 5 s later."""
        await connecting
        while True:
            try:
                await device.client.start()
                return
            except RequestTimeout as exc:
                log.warning("subscriptions not answered; asking again", error=str(exc))

    async def _unless_stopped(self, starting: Coroutine[Any, Any, None]) -> bool:
        """Run `starting` unless a stop comes first: a gateway whose broker is unreachable
        must still stop promptly. A permanent failure (`TransportError`, a refused
        subscription) is raised."""
        ended, started = await unless_set(self._stop_requested, starting)
        if ended:
            started.result()
            return True
        with contextlib.suppress(asyncio.CancelledError, TransportError, JobsError):
            started.result()
        return False

    def request_stop(self) -> None:
        """Stop as the README's `systemctl stop` says; from the first request on, nothing waits
        for a link that is down (a broker that is gone would hold the stop for the whole
        request timeout): a start-next it held leaves its marker, an outcome stays queued.
        From the second on, nothing waits for the service's answer either (a service that does
        not answer held it as long), with the same keeping."""
        self._signals += 1
        self._stop_requested.set()
        self.notifier.stopping()
        if self._device is not None:
            self._device.client.stop_waiting_for_link()
            if self._signals > 1:  # stops now: no answer is waited for, link up or down
                self._device.client.stop_waiting()
        if self.engine is not None:
            self.engine.request_stop(immediate=self._signals > 1)

    # -- signals ------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal, "SIGTERM")
            loop.add_signal_handler(signal.SIGINT, self._on_stop_signal, "SIGINT")
            loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)

    def _on_stop_signal(self, name: str) -> None:
        log.info(
            "stop requested" if self._signals == 0 else "second stop request: stopping now",
            signal=name,
        )
        self.request_stop()

    def _on_reload_signal(self) -> None:
        asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> bool:
        """Re-read the configuration; apply what can change without reconnecting."""
        if self.config_path is None:
            log.warning("reload requested but the agent was not started from a file")
            return False
        self.notifier.reloading()
        try:
            new = await asyncio.to_thread(load_config, self.config_path, cache=self.parse_cache)
        except ConfigError as exc:
            log.error(
                "reload refused: the configuration is invalid; keeping the old one", error=str(exc)
            )
            self.notifier.notify("READY=1", "STATUS=reload refused: invalid configuration")
            return False
        self._keep_parse()  # the state directory stays the one started with
        new = self._keep_restart_only_settings(new)
        try:
            handlers = first_job_dispatcher(new)
        except TrustedKeysError as exc:
            log.error("reload refused; keeping the old configuration", error=str(exc))
            self.notifier.notify("READY=1", "STATUS=reload refused: invalid configuration")
            return False
        # Said before the new level applies, so that it is logged even when the level rises.
        log.info(
            "configuration reloaded",
            path=str(self.config_path),
            changed=changed_settings(self.config, new) or "nothing",
        )
        configure_logging(new.log.level, new.log.format, journal_socket=new.log.journal_socket)
        self.config = new
        if self.engine is not None:
            self.engine.reconfigure(new.engine_settings(), handlers)
        if self._frozen:
            _refreeze()
        self.notifier.notify("READY=1", "STATUS=configuration reloaded")
        return True

    def _keep_restart_only_settings(self, new: AgentConfig) -> AgentConfig:
        """The connection, identity, subscriptions, database and consent socket stay as
        started."""
        old = self.config
        kept = []
        if new.connection != old.connection:
            kept.append("connection")
        if new.thing_name != old.thing_name:
            kept.append("thing_name")
        if new.state_dir != old.state_dir:
            kept.append("state_dir")
        if new.jobs.namespaces != old.jobs.namespaces:
            kept.append("jobs.namespaces")
        if new.consent != old.consent:
            kept.append("consent")  # the socket is bound, and its allow-list read, at start
        if new.inventory != old.inventory:
            kept.append("inventory")
        if kept:
            log.warning("these settings change only after a restart", settings=kept)
        return dataclasses.replace(
            new,
            connection=old.connection,
            thing_name=old.thing_name,
            state_dir=old.state_dir,
            consent=old.consent,
            inventory=old.inventory,
            jobs=dataclasses.replace(new.jobs, namespaces=old.jobs.namespaces),
        )

    # -- systemd ------------------------------------------------------------------------------
    def _on_status(self, status: EngineStatus) -> None:
        self.notifier.status(status.describe())

    async def _watchdog(self, engine: Engine) -> None:
        """Ping systemd only while the loop runs (this task) and the engine makes progress."""
        period = self.notifier.watchdog_seconds
        if period is None:
            return
        while True:
            await asyncio.sleep(period / 3)
            if time.monotonic() - engine.loop_heartbeat < ENGINE_STALL_SECONDS:
                self.notifier.watchdog()
            else:
                log.error("engine stalled; withholding the watchdog ping so systemd restarts us")
