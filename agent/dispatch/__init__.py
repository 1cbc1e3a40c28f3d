"""Routing job documents to handlers, and running them safely (see docs/handlers.md)."""

from jobs_agent.dispatch.plan import PlannedStep
from jobs_agent.dispatch.router import Dispatcher, check_limits, run_handler
from jobs_agent.dispatch.scripts import EXIT_REBOOT, EXIT_REJECTED

__all__ = [
    "EXIT_REBOOT",
    "EXIT_REJECTED",
    "Dispatcher",
    "PlannedStep",
    "check_limits",
    "run_handler",
]
