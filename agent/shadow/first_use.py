"""The daemon's shadow client, built when it is first asked for a shadow.

An agent talks to a shadow only to report its software inventory, and an agent whose record is
empty and whose `inventory.sources` list nothing has nothing to report: its start-up report
sends nothing. Building the client at start would load it, its topics and its errors, and the
inventory's report that calls them (about 0.15 MB resident for the daemon's whole life and
10 ms of every start, issue 18) for requests an idle gateway may never make. This stand-in takes
the client's place (`device.build_device`) and builds the real one at the first request, on the
view of the link it was given; the client subscribes on first use anyway, so nothing reaches the
device's shadow topics before.

For the type checker it is a `ShadowClient`: the engine and the inventory's report take one, and
this is one for every operation they call (`start`, `close`, `get`, `update`, `delete`,
`retries`), each the real client's once built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from jobs_agent.transport.base import Transport
from jobs_agent.vocabulary import is_thing_name

if TYPE_CHECKING:
    from jobs_agent.shadow.client import ShadowClient, ShadowDocument, ShadowUpdated

    _ClientType = ShadowClient
else:
    _ClientType = object


class FirstUseShadowClient(_ClientType):
    """A `ShadowClient` built at its first request. See the module docstring."""

    def __init__(
        self, transport: Transport, thing_name: str, *, request_timeout: float = 30.0
    ) -> None:
        # The real client's checks, now, as it would make them.
        if not is_thing_name(thing_name):
            raise ValueError(f"invalid thing name {thing_name!r}")
        if request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        self._view = transport
        self._thing_name = thing_name
        self._request_timeout = request_timeout
        self._client: ShadowClient | None = None
        self._started = False
        self._closed = False

    @property
    def built(self) -> bool:
        """Whether the real client has been built (a request was made)."""
        return self._client is not None

    @property
    def retries(self) -> int:
        return 0 if self._client is None else self._client.retries

    async def start(self) -> None:
        if self._client is not None:
            await self._client.start()
            return
        if self._closed:
            from jobs_agent.shadow.errors import ShadowError

            raise ShadowError("the shadow client is closed")
        self._started = True

    async def close(self) -> None:
        self._closed = True
        if self._client is not None:
            await self._client.close()

    async def get(self, shadow_name: str | None) -> ShadowDocument:
        return await (await self._real()).get(shadow_name)

    async def update(
        self, shadow_name: str | None, state: Mapping[str, Any], *, version: int | None = None
    ) -> ShadowUpdated:
        return await (await self._real()).update(shadow_name, state, version=version)

    async def delete(self, shadow_name: str | None, *, version: int | None = None) -> int:
        return await (await self._real()).delete(shadow_name, version=version)

    async def _real(self) -> ShadowClient:
        """The client, built now if it was not: started if this was, closed if this was (its
        request then fails as a closed client's does)."""
        if self._client is None:
            from jobs_agent.shadow.client import ShadowClient

            client = ShadowClient(
                self._view, self._thing_name, request_timeout=self._request_timeout
            )
            if self._started:
                await client.start()
            if self._closed:
                await client.close()
            self._client = client
        return self._client
