"""Python handlers: built-ins, the `jobs_agent.handlers` entry points, and config `handlers:`.

Later sources override earlier ones, so an operator can replace a built-in or a package's
handler from the config file without uninstalling anything. Loading is lazy: a broken plugin
only fails the jobs that name it, never the agent.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from inspect import CO_COROUTINE
from pathlib import Path
from types import FunctionType, MethodType
from typing import Any

from jobs_agent.dispatch.paths import check_trusted
from jobs_agent_handlers.api import JobContext, JobRejected, Outcome

ENTRY_POINT_GROUP = "jobs_agent.handlers"
BUILTIN_PLUGINS: dict[str, str] = {
    "download-file": "jobs_agent_handlers.download_file:DownloadFileHandler",
    "reboot": "jobs_agent_handlers.reboot:RebootHandler",
    "system-update": "jobs_agent_handlers.system_update.handler:SystemUpdateHandler",
}


class PluginError(Exception):
    """A configured plugin cannot be loaded or is not a handler."""


def add_plugin_path(directories: Sequence[Path]) -> None:
    """Make `jobs.plugin_path` importable: appended to `sys.path`, so a plugin file can never
    shadow a module the agent itself uses, and each checked like a handler directory (it and every
    directory above it owned by root or the agent's user, not writable by others), because the
    agent runs what is there."""
    for directory in directories:
        try:
            resolved = check_trusted(directory, "plugin directory")
        except JobRejected as exc:
            raise PluginError(f"jobs.plugin_path: {exc.reason}") from None
        if not resolved.is_dir():
            raise PluginError(f"jobs.plugin_path: {directory} is not a directory")
        if str(resolved) not in sys.path:
            sys.path.append(str(resolved))


_imported: dict[str, tuple[Any, Any]] = {}
"""spec -> (module, what it names), as last imported: a job's lookup is then one check that the
module is still the one in `sys.modules` (importlib's import machinery per job: issue 18)."""


def _import(spec: str, plugin_path: Sequence[Path] = ()) -> Any:
    add_plugin_path(plugin_path)  # checked for every job, as before
    module_name, _, attribute = spec.partition(":")
    known = _imported.get(spec)
    if known is not None and sys.modules.get(module_name) is known[0]:
        return known[1]
    try:
        module = importlib.import_module(module_name)
        target = getattr(module, attribute)
        _imported[spec] = (module, target)
        return target
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"cannot load handler {spec}: {exc}") from exc
    except Exception as exc:  # the module's own code failed while importing
        raise PluginError(f"cannot load handler {spec}: {type(exc).__name__}: {exc}") from exc


def _builtin_loader(spec: str, settings: Mapping[str, Any]) -> Callable[[], Any]:
    def load() -> Any:
        target = _import(spec)
        return target(**settings) if settings and isinstance(target, type) else target

    return load


class PluginHandler:
    """A plugin instance with the `name` and `resumable` the engine reads."""

    writes_output_log = False
    """Only script steps write an output log (`dispatch.steps`); a plugin's lines go to the
    agent's log. The engine reads it (absent: True) to know there is no log to look for at
    the job's end (`JobFiles.made_nothing`)."""

    def __init__(self, name: str, target: Any, source: str) -> None:
        self.name = name
        self.target = target
        self.source = source
        self.resumable = bool(getattr(target, "resumable", False))
        self.timeout_seconds: float | None = getattr(target, "timeout_seconds", None)

    async def run(self, ctx: JobContext) -> Mapping[str, Any] | Outcome | None:
        result: Mapping[str, Any] | Outcome | None = await self.target.run(ctx)
        return result


Loaders = dict[str, tuple[str, Callable[[], Any]]]


class PluginRegistry:
    """The plugins by name: built-in ones, then installed packages' entry points, then the
    configured ones, each replacing the one before of the same name.

    The entry points are read when a plugin is first looked up, not at start-up: reading them
    walks every installed package's metadata directory (`dispatch.entry_points`, which spares
    the first job importlib.metadata's own imports where it can: issue 18).
    """

    def __init__(
        self,
        loaders: Mapping[str, tuple[str, Callable[[], Any]]],
        *,
        later: Callable[[], Loaders] | None = None,
    ) -> None:
        self._ready = dict(loaders)
        self._later = later
        """Builds the whole table on first use (`discover`); None once built."""

    @property
    def _loaders(self) -> Loaders:
        if self._later is not None:
            self._ready, self._later = self._later(), None
        return self._ready

    @classmethod
    def discover(
        cls,
        configured: Mapping[str, str],
        builtin_settings: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        plugin_path: Sequence[Path] = (),
    ) -> PluginRegistry:
        """`builtin_settings` are keyword arguments for our own plugins' classes (from the
        agent's configuration); a plugin that replaces a built-in one does not get them."""
        settings = dict(builtin_settings or {})
        configured = dict(configured)

        def build() -> Loaders:
            from jobs_agent.dispatch.entry_points import group_entries, load

            loaders: Loaders = {}
            for name, spec in BUILTIN_PLUGINS.items():
                loaders[name] = (spec, _builtin_loader(spec, settings.get(name, {})))
            for name, value in group_entries(ENTRY_POINT_GROUP):
                if BUILTIN_PLUGINS.get(name) == value:
                    continue  # our own package's entry point: the built-in, with its settings
                loaders[name] = (value, lambda value=value: load(value))  # type: ignore[misc]
            for name, spec in configured.items():
                loaders[name] = (
                    spec,
                    lambda spec=spec: _import(spec, plugin_path),  # type: ignore[misc]
                )
            return loaders

        return cls({}, later=build)

    def names(self) -> list[str]:
        return sorted(self._loaders)

    def source(self, name: str) -> str | None:
        entry = self._loaders.get(name)
        return entry[0] if entry else None

    def get(self, name: str) -> PluginHandler | None:
        """A fresh handler instance for one execution, or None when no plugin has that name."""
        entry = self._loaders.get(name)
        if entry is None:
            return None
        spec, load = entry
        try:
            target = load()
        except PluginError:
            raise
        except Exception as exc:  # an entry point's import may fail in any way
            raise PluginError(f"cannot load handler {spec}: {exc}") from exc
        if isinstance(target, type):  # `inspect.isclass`, without its Python frame
            try:
                target = target()
            except Exception as exc:
                raise PluginError(f"cannot create handler {spec}: {exc}") from exc
        if not _is_async(getattr(target, "run", None)):
            raise PluginError(f"handler {spec} has no `async def run(self, ctx)`")
        return PluginHandler(name, target, spec)


def _is_async(run: object) -> bool:
    """`inspect.iscoroutinefunction(run)`: a plugin's `run` is nearly always a method bound
    to a plain function, answered from its code's flags here; inspect's walk through methods and
    partials (five Python calls per job: issue 18) only for anything else, a `run` that is not
    `async def` included (3.12's `markcoroutinefunction` marks are inspect's to read)."""
    if type(run) is MethodType:
        function = run.__func__
        if type(function) is FunctionType and function.__code__.co_flags & CO_COROUTINE:
            return True
    return inspect.iscoroutinefunction(run)
