"""The `consent:` section of the agent's configuration, owned here (the config module routes it).

consent:
  socket: /run/jobs-agent/consent.sock   # where jobs-agent consent and device UIs connect
  allowed_users: [operator]              # besides root and the agent's own user
  allowed_groups: [jobs-consent]         # members of these groups too
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs_agent.datamodel import model

if TYPE_CHECKING:
    from jobs_agent.consent.peer import Allowlist

DEFAULT_SOCKET = Path("/run/jobs-agent/consent.sock")
"""`consent.socket`'s default (the unit's RuntimeDirectory=). Declared here, with the setting,
not with the socket's protocol (`consent.protocol`, which gives it too): an agent that does not
serve the socket never loads the protocol (issue 18)."""
_NAME = re.compile(r"[^\x00-\x20:/]{1,256}")
_KEYS = ("socket", "allowed_users", "allowed_groups")


class ConsentSettingsError(ValueError):
    """A bad `consent:` setting; the message names the key."""


@model(slots=True)
class ConsentSettings:
    """The `consent:` section: where the consent socket is served and who may answer on it."""

    socket: Path = DEFAULT_SOCKET
    allowed_users: tuple[str, ...] = ()
    allowed_groups: tuple[str, ...] = ()

    @property
    def allowlist(self) -> Allowlist:
        from jobs_agent.consent.peer import Allowlist  # when the socket is served (issue 18)

        return Allowlist(self.allowed_users, self.allowed_groups)

    @classmethod
    def from_mapping(cls, data: Any, where: str = "consent") -> ConsentSettings:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConsentSettingsError(f"{where}: expected a mapping of settings")
        unknown = sorted(str(k) for k in data if k not in _KEYS)
        if unknown:
            raise ConsentSettingsError(
                f"{where}.{unknown[0]}: unknown key (expected {', '.join(_KEYS)})"
            )
        socket = data.get("socket", str(DEFAULT_SOCKET))
        if not isinstance(socket, str) or not socket.startswith("/"):
            raise ConsentSettingsError(f"{where}.socket: expected an absolute path")
        return cls(
            Path(socket),
            _names(data.get("allowed_users"), f"{where}.allowed_users"),
            _names(data.get("allowed_groups"), f"{where}.allowed_groups"),
        )


def _names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(v, str) and _NAME.fullmatch(v) for v in value
    ):
        raise ConsentSettingsError(f"{where}: expected a list of user or group names")
    return tuple(value)
