"""The moving parts a chaos run breaks on purpose: a TCP proxy and the agent process.

`TcpProxy` sits between the agent and mosquitto so the driver can cut the agent's connection
(both directions, abortively, as a NAT timeout or a flaky uplink would) without touching the
broker or the emulator's own connection. `AgentProcess` is one real `jobs-agent run` process at a
time: SIGKILLed and restarted by the driver, restarted too (and counted) when it exits by itself.
Each process gets its own NOTIFY_SOCKET, so the driver knows when it is ready (READY=1, as
systemd would) and never sends its final SIGTERM before the agent can handle it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path


class TcpProxy:
    """127.0.0.1:port -> upstream; `drop()` aborts every connection and refuses new ones a while."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._blocked_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def drop(self, refuse_for: float = 0.0) -> int:
        """Abort all connections now; refuse new ones for `refuse_for` seconds. Returns how many."""
        self._blocked_until = time.monotonic() + refuse_for
        dropped = len(self._links)
        for pair in list(self._links):
            for writer in pair:
                writer.transport.abort()
        self._links.clear()
        return dropped

    def unblock(self) -> None:
        self._blocked_until = 0.0

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self.drop()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._blocked_until:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._links.add(pair)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in pair:
                w.transport.abort()
            self._links.discard(pair)
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()


class AgentProcess:
    """The agent under test: one process at a time, output appended to one log file."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        on_unexpected_exit: Callable[[int, int], None],
    ) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self._on_unexpected_exit = on_unexpected_exit
        self._process: asyncio.subprocess.Process | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._expected_exit = False
        self._notify: socket.socket | None = None
        self._ready = asyncio.Event()
        self.pids: list[int] = []

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process and self._process.returncode is None else None

    def mark(self, text: str) -> None:
        """A driver line in the agent's log, so an excerpt shows what the driver did when."""
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"### chaos driver {time.time():.6f}: {text}\n")

    async def start(self) -> int:
        assert self.pid is None, "the agent is already running"
        address = self._listen_for_ready()
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env={**self.env, "NOTIFY_SOCKET": address},
            )
        self._expected_exit = False
        self.pids.append(self._process.pid)
        self.mark(f"started agent pid {self._process.pid}")
        self._monitor = asyncio.create_task(self._watch(self._process))
        return self._process.pid

    def _listen_for_ready(self) -> str:
        """A fresh abstract socket per process: a READY=1 a killed predecessor left queued can
        never be taken for this one's."""
        self._close_notify()
        self._ready.clear()  # the closed socket of the process before can no longer set it
        name = f"jobs-agent-chaos-{os.getpid()}-{uuid.uuid4().hex}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.bind("\0" + name)
        sock.setblocking(False)
        ready = self._ready

        def receive() -> None:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while True:
                    if b"READY=1" in sock.recv(4096).split(b"\n"):
                        ready.set()

        asyncio.get_running_loop().add_reader(sock.fileno(), receive)
        self._notify = sock
        return "@" + name

    def _close_notify(self) -> None:
        if self._notify is not None:
            asyncio.get_running_loop().remove_reader(self._notify.fileno())
            self._notify.close()
            self._notify = None

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if not self._expected_exit:
            self.mark(f"agent pid {process.pid} exited by itself with code {code}")
            self._on_unexpected_exit(process.pid, code)

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until the agent running now (or the next one started) said READY=1."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        return self._ready.is_set()

    async def kill(self) -> int | None:
        """SIGKILL (a crash or a power cut, as the agent sees it); returns the killed pid."""
        process = self._process
        if process is None or process.returncode is not None:
            return None
        self._expected_exit = True
        self.mark(f"SIGKILL agent pid {process.pid}")
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return process.pid

    async def stop(self, timeout: float) -> int | None:
        """SIGTERM once the agent said READY=1 (a process still starting has no handler for it
        yet and would die of the signal; systemd waits the same way) and wait (SIGKILL after
        `timeout`); returns the exit code, None if killed."""
        process = self._process
        if process is None or process.returncode is not None:
            return process.returncode if process else None
        ready = asyncio.create_task(self._ready.wait())
        exited = asyncio.create_task(process.wait())
        await asyncio.wait((ready, exited), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in (ready, exited):
            task.cancel()
        if not self._ready.is_set():
            self.mark(f"agent pid {process.pid} not ready after {timeout:.0f} s")
        if process.returncode is not None:
            return process.returncode
        self._expected_exit = True
        self.mark(f"SIGTERM agent pid {process.pid}")
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                return await process.wait()
        except TimeoutError:
            await self.kill()
            return None

    async def close(self) -> None:
        await self.kill()
        self._close_notify()
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor


def kill_leftovers(pids: list[int]) -> None:
    """SIGKILL handler processes that outlived their agent (systemd's KillMode=control-group
    would end them with the service); used only when the run ends."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
