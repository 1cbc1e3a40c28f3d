"""The agent's side of consent: the executions it holds back (`ConsentDesk`) and the Unix
socket through which a person or a device UI answers (`ConsentServer`).

The boundary (docs/security.md, "Consent"): who may answer is decided from the kernel's
credentials of the connecting process (`SO_PEERCRED`, `SO_PEERGROUPS`), never from anything
the client says; root and the agent's own user always may, others only when named in
`consent.allowed_users` or one of their groups in `consent.allowed_groups`. Everyone else gets
`NotAllowed` and nothing else, not even the list of waiting jobs. The socket is mode 0666 in a
directory only root (or the agent's user) can change, so nobody can put another socket in its
place; the kernel's credentials do the rest.

A decision is written to disk and synced before it is acknowledged or acted on
(`DecisionStore`), and is idempotent: the same answer again is acknowledged as `repeated`, a
different one is `AlreadyDecided` naming who decided what, when.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from jobs_agent.consent import protocol
from jobs_agent.consent.decisions import Decision, DecisionStore, checked_ref, ref_json
from jobs_agent.consent.peer import Allowlist, Peer, peer_of
from jobs_agent.consent.protocol import ConsentRefused
from jobs_agent.securefs import UntrustedPath, open_trusted
from jobs_agent.vocabulary import ExecutionRef

log = structlog.get_logger("jobs_agent.consent")

MAX_CONNECTIONS = 16
IDLE_TIMEOUT = 30.0
"""A connection that sends no complete line for this long is closed."""


@dataclass(eq=False)
class Waiting:
    key: ExecutionRef
    prompt: str
    since: float
    future: asyncio.Future[Decision] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {**ref_json(self.key), "prompt": self.prompt, "since": self.since}


class ConsentDesk:
    """The executions waiting for consent and the decisions taken (in memory and on disk)."""

    def __init__(self, store: DecisionStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._waiting: dict[ExecutionRef, Waiting] = {}
        self._lock = asyncio.Lock()

    # -- for the engine ---------------------------------------------------------------------
    def request(self, key: ExecutionRef, prompt: str) -> Decision | None:
        """Wait for consent to `key` (idempotent: after a restart, call it again). Returns the
        decision when one is recorded already (taken before the restart)."""
        recorded = self.store.load(key)
        if recorded is not None:
            return recorded
        if key not in self._waiting:
            future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
            self._waiting[key] = Waiting(key, protocol.clean_text(prompt), self.clock(), future)
            log.info("waiting for consent", job_id=key.job_id, namespace=key.namespace)
        return None

    async def wait(self, key: ExecutionRef) -> Decision:
        """The decision on `key` (after `request`); cancelling this wait leaves it waiting."""
        return await asyncio.shield(self._waiting[key].future)

    def withdraw(self, key: ExecutionRef) -> None:
        """The execution no longer waits (cancelled, ended by the service): a later answer is
        `NotWaiting`. A recorded decision stays until `forget`."""
        waiting = self._waiting.pop(key, None)
        if waiting is not None and not waiting.future.done():
            waiting.future.cancel()

    def forget(self, key: ExecutionRef) -> None:
        """The execution is settled: drop its decision too."""
        self.withdraw(key)
        self.store.remove(key)

    def waiting(self) -> list[Waiting]:
        return sorted(
            (w for w in self._waiting.values() if not w.future.done()), key=lambda w: w.since
        )

    # -- for the socket ---------------------------------------------------------------------
    async def decide(
        self, job_id: str, namespace: str | None, accepted: bool, reason: str, peer: Peer
    ) -> tuple[Decision, bool]:
        """Record and hand over a decision; (decision, repeated). Raises `ConsentRefused`."""
        async with self._lock:
            matches = [
                w
                for w in self._waiting.values()
                if w.key.job_id == job_id and w.key.namespace == namespace
            ]
            if not matches:
                return self._decided_before(job_id, namespace, accepted)
            waiting = max(matches, key=lambda w: w.key.execution_number)
            earlier = self.store.load(waiting.key)
            if earlier is not None:
                return _same_or_refuse(earlier, accepted)
            decision = Decision(
                waiting.key, accepted, reason, peer.user_name, peer.uid, self.clock()
            )
            try:
                await asyncio.to_thread(self.store.save, decision)
            except OSError as exc:
                log.error("consent decision not recorded", job_id=job_id, error=str(exc))
                raise ConsentRefused(
                    protocol.NOT_RECORDED,
                    f"the decision could not be recorded ({exc.strerror or exc}), so it was not"
                    " taken; try again",
                ) from None
            if not waiting.future.done():
                waiting.future.set_result(decision)
            log.info(
                "consent decision",
                job_id=job_id,
                namespace=namespace,
                execution_number=waiting.key.execution_number,
                decision="accepted" if accepted else "rejected",
                decided_by=peer.user_name,
                uid=peer.uid,
                pid=peer.pid,
            )
            return decision, False

    def _decided_before(
        self, job_id: str, namespace: str | None, accepted: bool
    ) -> tuple[Decision, bool]:
        recorded = self.store.recorded(job_id, namespace)
        if recorded:
            return _same_or_refuse(max(recorded, key=lambda d: d.key.execution_number), accepted)
        others = ", ".join(w.key.job_id for w in self.waiting()) or "none"
        where = "" if namespace is None else f" in namespace {namespace}"
        raise ConsentRefused(
            protocol.NOT_WAITING,
            f"the agent is not waiting for consent to job {job_id}{where} (waiting for: {others})",
        )


def _same_or_refuse(earlier: Decision, accepted: bool) -> tuple[Decision, bool]:
    if earlier.accepted == accepted:
        return earlier, True
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(earlier.decided_at))
    what = "accepted" if earlier.accepted else f"rejected ({earlier.reason})"
    raise ConsentRefused(
        protocol.ALREADY_DECIDED,
        f"job {earlier.key.job_id} was already {what} by {earlier.decided_by} at {when}",
    )


class ConsentServer:
    """The consent socket (see the module docstring and `jobs_agent.consent.protocol`)."""

    def __init__(
        self,
        desk: ConsentDesk,
        path: Path,
        allow: Allowlist,
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.desk = desk
        self.path = Path(os.path.abspath(path))
        self.allow = allow
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._inode: tuple[int, int] | None = None
        self._connections = 0

    async def start(self) -> None:
        """Create the socket; `UntrustedPath` when another account could change its directory,
        `OSError` when it cannot be made."""
        sock = await asyncio.to_thread(self._bind)
        self._server = await asyncio.start_unix_server(
            self._serve, sock=sock, limit=protocol.MAX_LINE
        )
        log.info("consent socket listening", path=str(self.path), allowed=self.allow.describe())

    def _bind(self) -> socket.socket:
        directory = self.path.parent
        if not directory.exists():
            directory.mkdir(mode=0o755, parents=True)
        fd = open_trusted(Path(os.path.realpath(directory)), what="consent socket directory")
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise UntrustedPath(f"{self.path} exists and is not a socket: not replaced")
        temporary = directory / f".{self.path.name}.{secrets.token_hex(4)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(temporary))
            # anyone may connect: who may answer is the peer check's to say
            os.chmod(temporary, 0o666)  # noqa: S103
            os.rename(temporary, self.path)  # atomically replaces a stale socket
            info = os.lstat(self.path)
            self._inode = (info.st_dev, info.st_ino)
            sock.listen(self.max_connections)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return sock

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(OSError):
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == self._inode:
                os.unlink(self.path)

    # -- one connection -------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        try:
            peer = peer_of(writer.get_extra_info("socket"))
            if self._connections > self.max_connections:
                await _send(writer, protocol.error(protocol.BUSY, "too many connections"))
                return
            if not self.allow.allows(peer):
                log.warning("consent refused", peer=peer.describe(), uid=peer.uid, pid=peer.pid)
                message = (
                    f"{peer.describe()} may not answer consent requests (allowed:"
                    f" {self.allow.describe()})"
                )
                await _send(writer, protocol.error(protocol.NOT_ALLOWED, message))
                return
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        line = await reader.readline()
                except ValueError:  # a line over the limit
                    await _send(
                        writer,
                        protocol.error(
                            protocol.INVALID_REQUEST, f"a line over {protocol.MAX_LINE} bytes"
                        ),
                    )
                    return
                except TimeoutError:
                    return
                if not line:
                    return
                await _send(writer, await self._answer(line, peer))
        except (ConnectionError, OSError):
            pass  # the client went away: nothing to answer
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _answer(self, line: bytes, peer: Peer) -> dict[str, Any]:
        try:
            request = _parse(line)
            if request["op"] == "list":
                return {"ok": True, "waiting": [w.to_json() for w in self.desk.waiting()]}
            accepted = request["op"] == "accept"
            decision, repeated = await self.desk.decide(
                request["jobId"],
                request.get("namespace"),
                accepted,
                request.get("reason", ""),
                peer,
            )
        except ConsentRefused as exc:
            return protocol.error(exc.code, exc.message)
        return {"ok": True, **decision.to_json(), "repeated": repeated}


def _parse(line: bytes) -> dict[str, Any]:
    def refuse(message: str) -> ConsentRefused:
        return ConsentRefused(protocol.INVALID_REQUEST, message)

    try:
        request = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise refuse("not a JSON object in UTF-8") from None
    if not isinstance(request, dict):
        raise refuse("not a JSON object")
    op = request.get("op")
    if op not in protocol.OPS:
        raise refuse(f"op must be one of {', '.join(protocol.OPS)}")
    if op == "list":
        return request
    job_id = request.get("jobId")
    namespace = request.get("namespace")
    try:
        checked_ref(job_id, 1, namespace)
    except ValueError:
        raise refuse("jobId (and namespace, if given) must be valid AWS IoT Jobs ids") from None
    reason = request.get("reason", "")
    if not isinstance(reason, str):
        raise refuse("reason must be a string")
    request["reason"] = protocol.clean_text(reason)
    if op == "reject" and not request["reason"]:
        raise refuse("a rejection needs a reason (it is reported to the cloud)")
    return request


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(protocol.encode(message))
    await writer.drain()
