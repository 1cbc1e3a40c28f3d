"""Routing job documents to handlers, and running them safely (see docs/handlers.md).

The names below are loaded from their modules at first use (PEP 562): the configuration imports
`jobs_agent.dispatch.settings`, which loads this package first, and an idle daemon must not pay
for the router, the sandbox and the step machinery (about 2.5 MB and 50 ms) before its first job
(issue 18).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobs_agent.dispatch.errors import TrustedKeysError
    from jobs_agent.dispatch.plan import PlannedStep
    from jobs_agent.dispatch.router import Dispatcher, check_limits, run_handler
    from jobs_agent.dispatch.scripts import EXIT_DEFER, EXIT_REBOOT, EXIT_REJECTED
    from jobs_agent.dispatch.settings import DispatchSettings

_HOMES = {
    "EXIT_DEFER": "scripts",
    "EXIT_REBOOT": "scripts",
    "EXIT_REJECTED": "scripts",
    "DispatchSettings": "settings",
    "Dispatcher": "router",
    "PlannedStep": "plan",
    "TrustedKeysError": "errors",
    "check_limits": "router",
    "run_handler": "router",
}

__all__ = [
    "EXIT_DEFER",
    "EXIT_REBOOT",
    "EXIT_REJECTED",
    "DispatchSettings",
    "Dispatcher",
    "PlannedStep",
    "TrustedKeysError",
    "check_limits",
    "run_handler",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
