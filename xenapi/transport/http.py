"""A lean threaded HTTP/1.1 server: raw sockets, one thread per connection, keep-alive.

Why not ``http.server``: BaseHTTPRequestHandler parses every header block with email.parser,
which costs more than decoding the XML-RPC call it carries.  This server reads with recv()
into its own buffer (a typical request arrives whole in one recv), parses the head with
bytes.split, and writes each response with one sendall.

Only HTTP lives here; which codec a path gets is the caller's business (the handler).
Errors the client caused get a short plain-text status (400, 413, 431, 501) and the
connection closes; a handler that raises gives a 500 whose traceback goes only to the log;
a client that goes away mid-request ends its thread quietly (DEBUG log).
"""
from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import re
import selectors
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

log = logging.getLogger(__name__)

__all__ = ["Request", "Response", "HTTPServer"]


@dataclass(slots=True)
class Request:
    method: str
    path: str                        # the request-target's path, without the query
    headers: dict[str, str]          # lower-case names; repeated fields joined with ", "
    body: bytes
    peer: tuple | str                # (host, port), or "unix" on a unix socket
    scheme: str                      # "http" or "https"
    query: str = ""                  # after "?", undecoded
    peer_uid: int | None = None      # on a unix socket: the peer process's uid (SO_PEERCRED)


@dataclass(slots=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: Sequence[tuple[str, str]] = ()
    # With status 101: called with the socket and any bytes already read past the request once
    # the response is sent; it owns the connection until it returns (then the socket closes).
    upgrade: Callable[[socket.socket, bytes], None] | None = None


_RECV = 65536
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_HEAD_END = re.compile(rb"\r?\n\r?\n")             # RFC 9112 §2.2: a bare LF ends a line too
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_VERSION = re.compile(rb"HTTP/1\.([0-9])")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LINGER_SECONDS = 1.0
_SHUTDOWN_GRACE_SECONDS = 1.0


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> str:
    return formatdate(second, usegmt=True)


def _plain(status: int, text: str) -> Response:
    return Response(status, "text/plain", text.encode() + b"\n")


class _ProtocolError(Exception):
    """The client broke HTTP: answer ``status`` and close."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Disconnected(Exception):
    """The peer closed the connection in the middle of a request."""


class HTTPServer:
    """Serve ``handler(Request) -> Response`` over TCP (``(host, port)``) or a unix socket path.

    ``serve_forever()`` runs the accept loop in the caller's thread; ``start()`` runs it in a
    daemon thread named ``http-accept``.  Each connection gets a daemon thread ``http-<n>``.
    """

    def __init__(self, listen: tuple[str, int] | str, handler: Callable[[Request], Response], *,
                 max_body_bytes: int = 300 * 1024, max_header_bytes: int = 16 * 1024,
                 max_connections: int = 800, idle_timeout: float = 300.0, ssl_context=None):
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.ssl_context = ssl_context
        self.scheme = "https" if ssl_context else "http"
        if isinstance(listen, str):
            self._listener = _bind_unix(listen)
            self._unix_path: str | None = listen
            self.address: tuple[str, int] | str = listen
        else:
            host, port = listen
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._listener = socket.create_server((host, port), family=family,
                                                  backlog=socket.SOMAXCONN)
            self._unix_path = None
            self.address = self._listener.getsockname()[:2]
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._ids = itertools.count(1)
        self._closing = False
        self._stopped = threading.Event()
        self._stopped.set()              # not serving yet
        self._accept_thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Accept connections until shutdown() is called."""
        self._stopped.clear()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._listener, selectors.EVENT_READ)
                selector.register(self._wake_r, selectors.EVENT_READ)
                while not self._closing:
                    for key, _ in selector.select():
                        if key.fileobj is self._listener and not self._closing:
                            self._accept()
        finally:
            self._stopped.set()

    def start(self) -> None:
        """Run serve_forever() in a daemon thread named ``http-accept``."""
        self._stopped.clear()            # so that a shutdown() racing with start() waits for it
        self._accept_thread = threading.Thread(target=self.serve_forever, name="http-accept",
                                               daemon=True)
        self._accept_thread.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every open connection and wait (up to ``timeout`` seconds)
        for the accept loop and the connection threads to finish."""
        deadline = time.monotonic() + timeout
        self._closing = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._stopped.wait(timeout)
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        if self._unix_path:
            _unlink_quietly(self._unix_path)
        with self._lock:
            connections = list(self._connections)
        # idle connections close now; a request in progress may finish and send its response
        # (a drained long poll answers at once) for a short grace, then is cut too
        for connection in connections:
            if not connection.busy:
                connection.abort()
        grace = min(deadline, time.monotonic() + _SHUTDOWN_GRACE_SECONDS)
        for connection in connections:
            if connection.busy:
                connection.thread.join(max(0.0, grace - time.monotonic()))
                connection.abort()
        for connection in connections:
            connection.thread.join(max(0.0, deadline - time.monotonic()))
        if self._accept_thread is not None:
            self._accept_thread.join(max(0.0, deadline - time.monotonic()))

    # -- accepting -----------------------------------------------------------------------------

    def _accept(self) -> None:
        try:
            sock, addr = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return                       # another wake-up took it, or the peer reset first
        except OSError as e:             # EMFILE and friends: back off instead of spinning
            log.warning("accept failed error=%s", e)
            time.sleep(0.05)
            return
        if self._unix_path is None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer: tuple | str = addr[:2]
        else:
            peer = "unix"
        with self._lock:
            if len(self._connections) >= self.max_connections:
                connection = None
            else:
                connection = _Connection(self, sock, peer, f"http-{next(self._ids)}")
                self._connections.add(connection)
        if connection is None:
            log.warning("refused connection peer=%s reason=max_connections=%d",
                        peer, self.max_connections)
            _refuse(sock)
            return
        connection.thread.start()

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)


class _Connection:
    """One client connection: read a request, call the handler, write the response, repeat."""

    def __init__(self, server: HTTPServer, sock: socket.socket, peer, name: str):
        self.server = server
        self.sock = sock
        self.peer = peer
        self.peer_uid = _peer_uid(sock) if peer == "unix" else None
        self.buf = b""                   # received but not yet consumed (pipelined requests too)
        self.busy = False                # between a request's head and its response's last byte
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)

    def abort(self) -> None:
        """Wake this connection's thread by shutting its socket (from another thread)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def run(self) -> None:
        server = self.server
        try:
            self.sock.settimeout(server.idle_timeout)
            if server.ssl_context is not None:
                self.sock = server.ssl_context.wrap_socket(self.sock, server_side=True)
            while self._serve_one() and not server._closing:
                pass
        except (_Disconnected, OSError) as e:   # OSError covers timeouts, resets and TLS errors
            log.debug("connection ended peer=%s reason=%r", self.peer, e)
        finally:
            self.sock.close()
            server._forget(self)

    def _serve_one(self) -> bool:
        """Serve one request; return whether the connection stays open."""
        try:
            head = self._read_head()
            if head is None:
                return False             # closed cleanly between requests
            self.busy = True
            method, target, minor, headers = _parse_head(head)
            keep_alive = _keep_alive(minor, headers.get("connection"))
            body = self._read_body(minor, headers)
        except _ProtocolError as e:
            log.debug("bad request peer=%s status=%d reason=%s", self.peer, e.status, e)
            self.sock.sendall(_serialize(_plain(e.status, str(e)), False, 1, False))
            self._linger()
            return False
        path, _, query = target.partition("?")
        request = Request(method, path, headers, body, self.peer, self.server.scheme, query, self.peer_uid)
        upgrade = None
        try:
            response = self.server.handler(request)
            out = _serialize(response, keep_alive, minor, method == "HEAD")
            upgrade = response.upgrade if response.status == 101 else None
        except Exception:
            log.exception("handler failed method=%s path=%s peer=%s", method, path, self.peer)
            out = _serialize(_plain(500, "internal server error"), keep_alive, minor, False)
        self.sock.sendall(out)
        self.busy = False
        if upgrade is not None:
            self.sock.settimeout(None)   # the upgraded protocol decides when the connection ends
            upgrade(self.sock, self.buf)
            return False
        return keep_alive

    def _linger(self) -> None:
        """Read and drop what the client is still sending (briefly) before closing: closing
        with unread data makes the kernel send a reset, which can destroy our error response
        before the client reads it."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(_LINGER_SECONDS)
            budget = 4 * self.server.max_body_bytes
            while budget > 0 and (data := self.sock.recv(_RECV)):
                budget -= len(data)
        except OSError:
            pass

    # -- reading -------------------------------------------------------------------------------

    def _recv(self) -> bytes:
        data = self.sock.recv(_RECV)
        if not data:
            raise _Disconnected("peer closed the connection mid-request")
        return data

    def _read_head(self) -> bytes | None:
        buf = self.buf
        limit = self.server.max_header_bytes
        while True:
            if buf[:1] in (b"\r", b"\n"):
                buf = buf.lstrip(b"\r\n")   # RFC 9112 §2.2: ignore empty lines before a request
            end = _head_end(buf)
            if end is not None:
                if end[0] > limit:
                    raise _ProtocolError(431, "request header too large")
                self.buf = buf[end[1]:]
                return buf[:end[0]]
            if len(buf) > limit:
                raise _ProtocolError(431, "request header too large")
            data = self.sock.recv(_RECV)
            if not data:
                if buf:
                    raise _Disconnected("peer closed the connection mid-header")
                return None
            buf += data

    def _read_exact(self, n: int) -> bytes:
        buf = self.buf
        if len(buf) < n:
            parts = [buf]
            have = len(buf)
            while have < n:
                data = self._recv()
                parts.append(data)
                have += len(data)
            buf = b"".join(parts)
        self.buf = buf[n:]
        return buf[:n]

    def _read_line(self) -> bytes:
        """One line (without its terminator) of a chunked body."""
        while (end := self.buf.find(b"\n")) < 0:
            if len(self.buf) > self.server.max_header_bytes:
                raise _ProtocolError(400, "chunk line too long")
            self.buf += self._recv()
        line, self.buf = self.buf[:end], self.buf[end + 1:]
        return line.rstrip(b"\r")

    def _read_body(self, minor: int, headers: dict[str, str]) -> bytes:
        encoding = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if encoding is not None:
            if length is not None:       # ambiguous framing: the classic smuggling vector
                raise _ProtocolError(400, "both Content-Length and Transfer-Encoding")
            if encoding.lower() != "chunked":
                raise _ProtocolError(501, f"unsupported transfer-encoding {encoding[:40]}")
            self._continue(minor, headers)
            return self._read_chunked()
        if length is None:
            return b""
        if not (length.isascii() and length.isdigit()):
            raise _ProtocolError(400, "bad Content-Length")
        n = int(length)
        if n > self.server.max_body_bytes:
            raise _ProtocolError(413, f"request body over {self.server.max_body_bytes} bytes")
        if len(self.buf) < n:
            self._continue(minor, headers)
        return self._read_exact(n)

    def _continue(self, minor: int, headers: dict[str, str]) -> None:
        """Answer ``Expect: 100-continue`` once we know we will read the body."""
        if minor >= 1 and headers.get("expect", "").lower() == "100-continue" and not self.buf:
            self.sock.sendall(_CONTINUE)

    def _read_chunked(self) -> bytes:
        limit = self.server.max_body_bytes
        parts = []
        total = 0
        while True:
            size = self._read_line().split(b";", 1)[0].strip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size):
                raise _ProtocolError(400, "bad chunk size")
            n = int(size, 16)
            if n == 0:
                break
            total += n
            if total > limit:
                raise _ProtocolError(413, f"request body over {limit} bytes")
            parts.append(self._read_exact(n))
            if self._read_line():
                raise _ProtocolError(400, "chunk data longer than its size")
        trailer = 0
        while line := self._read_line():  # trailer fields are read and dropped
            trailer += len(line)
            if trailer > self.server.max_header_bytes:
                raise _ProtocolError(431, "trailer too large")
        return b"".join(parts)


# -- parsing and writing (pure functions) ------------------------------------------------------

def _head_end(buf: bytes) -> tuple[int, int] | None:
    """Where the head ends and the body starts.  find() serves every real client; the regex
    (ten times slower) only runs for heads that use bare LF line ends."""
    end = buf.find(b"\r\n\r\n")
    if end >= 0 and buf.find(b"\n\n", 0, end) < 0:
        return end, end + 4
    match = _HEAD_END.search(buf)
    return None if match is None else match.span()


def _parse_head(head: bytes) -> tuple[str, str, int, dict[str, str]]:
    """(method, target, HTTP minor version, headers) from a request head without its blank line."""
    lines = head.split(b"\n")
    parts = lines[0].rstrip(b"\r").split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise _ProtocolError(400, "bad request line")
    version = _VERSION.fullmatch(parts[2])
    if version is None:
        raise _ProtocolError(400, "unsupported HTTP version")
    try:
        target = parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise _ProtocolError(400, "non-ASCII request target") from None
    if target.startswith(("http://", "https://")):   # absolute form: keep path and query
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    headers: dict[str, str] = {}
    for line in lines[1:]:
        line = line.rstrip(b"\r")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):   # also refuses obsolete line folding
            raise _ProtocolError(400, "bad header line")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise _ProtocolError(400, "bad header value")
        key = name.decode("ascii").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return parts[0].decode("ascii"), target, int(version.group(1)), headers


def _keep_alive(minor: int, connection: str | None) -> bool:
    """HTTP/1.1 stays open unless told ``close``; HTTP/1.0 only when asked ``keep-alive``."""
    if connection is None:
        return minor >= 1
    tokens = {t.strip().lower() for t in connection.split(",")}
    return "close" not in tokens and (minor >= 1 or "keep-alive" in tokens)


def _serialize(response: Response, keep_alive: bool, minor: int, head_only: bool) -> bytes:
    body = response.body
    if not isinstance(body, (bytes, bytearray)):
        raise TypeError(f"response body must be bytes, not {type(body).__name__}")
    lines = [f"HTTP/1.1 {int(response.status)} {_REASONS.get(response.status, '')}\r\n"
             f"Date: {_http_date(int(time.time()))}\r\n"]
    if response.status >= 200:           # a 1xx carries neither (RFC 9110 8.6, 15.2)
        lines += [f"Content-Type: {response.content_type}\r\n", f"Content-Length: {len(body)}\r\n"]
    for name, value in response.headers:
        lines.append(f"{name}: {value}\r\n")
    if not keep_alive:
        lines.append("Connection: close\r\n")
    elif minor == 0:
        lines.append("Connection: keep-alive\r\n")
    lines.append("\r\n")
    head = "".join(lines)
    crlf = len(lines) + 1                # the first element holds two lines
    if head.count("\n") != crlf or head.count("\r") != crlf:
        raise ValueError("CR or LF inside a response header")   # the handler's own fault
    head_bytes = head.encode("latin-1")
    return head_bytes if head_only else head_bytes + body


def _refuse(sock: socket.socket) -> None:
    """Tell a connection over the limit to come back later, without giving it a thread."""
    try:
        sock.settimeout(1.0)
        sock.sendall(_serialize(_plain(503, "too many connections"), False, 1, False))
    except OSError:
        pass
    finally:
        sock.close()


def _bind_unix(path: str) -> socket.socket:
    """Listen on ``path``, replacing a stale socket file but never a live server or a file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise FileExistsError(errno.EEXIST, "not a socket, refusing to replace it", path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                _unlink_quietly(path)    # nobody listens: a leftover from a previous run
            else:
                raise OSError(errno.EADDRINUSE, "a server is already listening", path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)            # the server's own user (and root) only
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock


def _peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a unix socket (Linux SO_PEERCRED)."""
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))
    except (OSError, AttributeError):    # AttributeError: a platform without SO_PEERCRED
        return None
    return uid


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
