"""One HTTP(S) GET that a controlling thread can cancel at any moment (the download handler's).

http.client parses the protocol; this module owns the sockets, so that no operation can block
for long: the connection is made without blocking (checking for cancellation every quarter of a
second), every later socket operation has a timeout, and `cancel()` shuts the live socket down
under a blocked read, which then returns at once. Redirects are followed only to the schemes
the caller allows (never `ftp:` or `file:`), at most `MAX_REDIRECTS` times.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from urllib.parse import urljoin, urlsplit, urlunsplit

READ_TIMEOUT = 30.0
"""Limit of every single socket operation (connect, TLS handshake, one read)."""
MAX_REDIRECTS = 5


class Retry(Exception):
    """A failure another attempt may not have (a dropped connection, a 503)."""


class Refused(Exception):
    """A failure no retry changes (a redirect to another scheme, a bad certificate)."""


class Cancelled(Exception):
    pass


def display_url(url: str) -> str:
    """The URL without query and fragment: presigned credentials never reach a log."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))


class HttpGet:
    def __init__(
        self, context: ssl.SSLContext, schemes: tuple[str, ...], stop: threading.Event
    ) -> None:
        self.context = context
        self.schemes = schemes
        self.stop = stop
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None

    def check(self) -> None:
        if self.stop.is_set():
            raise Cancelled

    def cancel(self) -> None:
        """From any thread: stop, and shut down the live connection under a blocked read."""
        self.stop.set()
        with self._lock:
            sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                # The plain socket's shutdown (not SSLSocket's, which would touch the TLS
                # state another thread is using): the blocked recv returns end-of-file.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def _track(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._socket = sock

    def close(self, connection: http.client.HTTPConnection) -> None:
        connection.close()
        self._track(None)

    def open(
        self, url: str, headers: Mapping[str, str]
    ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
        """GET `url`, following redirects; the caller reads the response, then `close()`."""
        shown = display_url(url)
        for _ in range(MAX_REDIRECTS + 1):
            connection = self._connect(url)
            parts = urlsplit(url)
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            try:
                connection.request("GET", target, headers=dict(headers))
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                self.close(connection)
                self.check()
                raise Retry(f"request failed: {type(exc).__name__}: {exc}") from None
            if response.status not in (301, 302, 303, 307, 308):
                return response, connection
            location = response.getheader("Location") or ""
            self.close(connection)
            url = urljoin(url, location)
            scheme = urlsplit(url).scheme
            if scheme not in self.schemes:
                allowed = " and ".join(f"{s}://" for s in self.schemes)
                raise Refused(
                    f"download of {shown}: redirected to a {scheme}: URL; only {allowed} are"
                    " followed"
                )
        raise Refused(f"download of {shown}: more than {MAX_REDIRECTS} redirects")

    def _connect(self, url: str) -> http.client.HTTPConnection:
        parts = urlsplit(url)
        host = parts.hostname or ""
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        sock = self._open_socket(host, port)
        try:
            connection: http.client.HTTPConnection
            if secure:
                sock = self.context.wrap_socket(sock, server_hostname=host)
                self._track(sock)
                connection = http.client.HTTPSConnection(
                    host, port, timeout=READ_TIMEOUT, context=self.context
                )
            else:
                connection = http.client.HTTPConnection(host, port, timeout=READ_TIMEOUT)
            connection.sock = sock
            return connection
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise Refused(f"TLS certificate of {display_url(url)}: {exc}") from None
        except OSError as exc:
            sock.close()
            self.check()
            raise Retry(f"TLS handshake with {host} failed: {exc}") from None

    def _open_socket(self, host: str, port: int) -> socket.socket:
        """Connect without blocking for more than a moment at a time, so that a cancellation
        is seen within a second even while a SYN goes unanswered."""
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise Retry(f"cannot resolve {host}: {exc}") from None
        last = ""
        for family, kind, proto, _name, address in addresses:
            self.check()
            sock = socket.socket(family, kind, proto)
            self._track(sock)
            sock.setblocking(False)
            deadline = time.monotonic() + READ_TIMEOUT
            code = sock.connect_ex(address)
            while code in (errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN):
                self.check()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    code = errno.ETIMEDOUT
                    break
                _read, writable, _err = select.select([], [sock], [], min(0.25, remaining))
                if writable:
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    break
            if code == 0:
                sock.settimeout(READ_TIMEOUT)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            last = os.strerror(code)
            sock.close()
        self.check()
        raise Retry(f"cannot connect to {host}:{port}: {last}")
