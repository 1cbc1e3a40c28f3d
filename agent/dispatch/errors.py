"""The dispatcher's start-up error, in a module of its own: the daemon catches it at start and
at a reload without loading the router (issue 18: the router loads at the first job)."""

from __future__ import annotations


class TrustedKeysError(ValueError):
    """`jobs.trusted_keys` cannot be used (the message names the option and why)."""
