"""Routing job documents to handlers, and running them safely (see docs/handlers.md)."""

from jobs_agent.dispatch.plan import PlannedStep
from jobs_agent.dispatch.router import Dispatcher, TrustedKeysError, check_limits, run_handler
from jobs_agent.dispatch.scripts import EXIT_DEFER, EXIT_REBOOT, EXIT_REJECTED
from jobs_agent.dispatch.settings import DispatchSettings

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
