"""The consent socket's client (what `jobs-agent consent` uses), with the standard library only.

Before it says anything it checks whom it talks to: the server must run as root or as the
owner of the socket's directory, and that directory must be changeable by nobody else. So a
local user cannot plant a socket where an operator's `jobs-agent consent --socket` would find
it and collect answers meant for the agent (the agent would never hear of them).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

from jobs_agent.consent import protocol

_CRED = struct.Struct("3i")


class ConsentUnavailable(Exception):
    """The agent's consent socket cannot be reached or is not to be trusted."""


def call(path: Path, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """One request, one answer (`{"ok": ...}`); `ConsentUnavailable` when no agent answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ConsentUnavailable(
                f"the agent is not listening on {path} (is it running, with consent enabled?)"
            ) from None
        except PermissionError:
            raise ConsentUnavailable(f"{path}: permission denied") from None
        except OSError as exc:
            raise ConsentUnavailable(f"{path}: {exc.strerror or exc}") from None
        _check_server(sock, path)
        try:
            # a refused peer (NotAllowed) is answered and closed at once: then read why
            with contextlib.suppress(BrokenPipeError):
                sock.sendall(protocol.encode(request))
            answer = _read_line(sock)
        except TimeoutError:
            raise ConsentUnavailable(f"no answer on {path} within {timeout:g} s") from None
        except OSError as exc:
            raise ConsentUnavailable(f"{path}: {exc.strerror or exc}") from None
    try:
        message = json.loads(answer.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ConsentUnavailable(f"{path}: the answer is not JSON") from None
    if not isinstance(message, dict) or "ok" not in message:
        raise ConsentUnavailable(f"{path}: the answer is not a consent answer")
    return message


def _check_server(sock: socket.socket, path: Path) -> None:
    _, uid, _ = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    directory = Path(os.path.realpath(path)).parent
    info = os.stat(directory)
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConsentUnavailable(
            f"{path}: its directory {directory} can be changed by others (mode {mode:04o}):"
            " not the agent's socket"
        )
    if uid not in (0, info.st_uid):
        raise ConsentUnavailable(
            f"{path}: served by uid {uid}, neither root nor the owner of {directory}:"
            " not the agent's socket"
        )


def _read_line(sock: socket.socket) -> bytes:
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > 16 * protocol.MAX_LINE:
            raise ConsentUnavailable("the answer is too long")
    return bytes(data)
