"""A lean threaded HTTP/1.1 server: raw sockets, one thread per connection, keep-alive, with time
limits for slow clients and a per-source share of the connection cap.

Only HTTP lives here (the I/O shell; parsing and writing are xenapi/transport/http_wire.py's pure
functions); which codec a path gets is the caller's business (the handler).  Errors the client
caused get a short plain-text status (400, 408, 413, 431, 501) and the connection closes; a
handler that raises gives a 500 whose traceback goes only to the log; a client that goes away
mid-request ends its thread quietly (DEBUG log).

Slow clients.  Receiving a request is bounded in time, as Apache's mod_reqtimeout and nginx's
client_header_timeout/client_body_timeout/keepalive_timeout bound it:

* the head must be in within ``header_timeout`` s of its first byte (for a connection's first
  request, of the connection's start, so the TLS handshake and a silent client count too);
* the body within ``body_timeout`` s of the end of the head;
* between keep-alive requests a connection waits ``keepalive_timeout`` s for the next one.

Past the header or body limit the client gets 408 and is disconnected.  A connection that has
sent nothing of a request (silent since it connected, or idle between requests) is closed
without a word: a 408 there could cross a request the client is sending at that moment and be
read as its answer.  The limits bound *receiving* only: while the handler works (an
``event.from`` long poll is held for up to its timeout) nothing is read and no limit runs.
Sending a response must make progress every 60 s (nginx's send_timeout; its first bytes may wait
as long as the read limit in force, keep-alive's included), however long the response is.
An upgraded connection (a 101, such as ``xenapi stdio``'s stream on the unix socket) has no limit
at all: that protocol decides when it ends, and a stream stays open for as long as its user
(an SSH session, say) sits idle.  Each accepted connection takes a slot of ``max_connections``
and, by its source address, of ``max_connections_per_source`` (xenapi/transport/slots.py); past
either, the accept loop answers 503 itself, without a thread.

Streamed bodies.  Disks travel over HTTP too (``PUT /import_raw_vdi``, ``GET /export_raw_vdi``:
gigabytes), so a handler may take a route's body as it arrives instead of whole:
``streaming(method, path)`` (the handler's own method by default) names the routes whose handler
gets a :class:`Body` to read, with Content-Length or chunked framing, 100-continue sent at the first
read, no size limit (the handler bounds what it takes) and ``body_timeout`` as a stall timer: each
piece must come within it of the last, however long the whole takes.  A body the handler leaves
unread is drained when small, else the connection closes after the answer.  Any response may be
streamed (``Response.stream``): sent as it comes, framed by its ``length``, else chunked (HTTP/1.0:
by closing), and cut short (the connection closed before its end) if the stream fails or misses
its length.  Every other route reads its body whole, within ``max_body_bytes``, with
``body_timeout`` counting from the head.

Why our own HTTP and not a library (weighed in issue 8; figures from the 2-core dev machine):

* h11 is I/O-free: time limits, connection caps and sockets would still be written here, as with
  any parser.  It takes 50 us to parse a typical XML-RPC request (xmlrpc.client's head, a
  400-byte body) and frame its response; http_wire takes 7 us.  Through xmlrpc.client (medians
  of 11 interleaved rounds) this server answered 4560 calls/s, the same handler behind an h11
  loop on the same threads 2896, and the stdlib SimpleXMLRPCServer floor 3668: h11 would take
  the ratio to the floor from 1.24 to 0.79 (another run: 1.30 to 0.99), below the floor.
* httptools (llhttp, in C) parses in 4 us: 3 us saved on a call of about 250 us is not worth a
  compiled dependency, and it bounds no time either.
* A production server (uvicorn, hypercorn) would put asyncio and ASGI around a synchronous
  dispatcher whose long polls each hold a thread anyway, rebuild the unix socket's SO_PEERCRED
  and upgrade hand-over, and still not bound receiving a request (uvicorn's only timer is the
  keep-alive one, and each byte received resets it).
What http_wire parses is small and strict (request line, fields without obs-fold or bare CR,
Content-Length or chunked but never both, pipelining, 100-continue) and tests/test_http.py and
tests/test_bad_input.py hold it to that.  The limits cost no system call per request: a
keep-alive wait keeps the socket timeout it had, and a response goes out in one send().
A browser console (noVNC speaks WebSocket) needs no new server either: wsproto is I/O-free; its
``generate_accept_token`` answers the handshake from a parsed Request, and its post-handshake
``wsproto.Connection`` runs on the socket that a 101 ``Response.upgrade`` hands over, as the
stream protocol's loop does today.

Why not ``http.server``: BaseHTTPRequestHandler parses every header block with email.parser,
which costs more than decoding the XML-RPC call it carries.  This server reads with recv() into
its own buffer (a typical request arrives whole in one recv), parses the head with bytes.split,
and writes each response with one send.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import selectors
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable

from xenapi.transport.http_wire import (CHUNK_SIZE, CONTINUE, LAST_CHUNK, ProtocolError, Request, Response, chunk,
                                        framing, head_end, keep_alive, parse_head, plain, serialize)
from xenapi.transport.slots import Slots, source_of

log = logging.getLogger(__name__)

__all__ = ["Request", "Response", "HTTPServer", "Body", "BodyError", "StreamHandler"]

_RECV = 65536
_LINGER_SECONDS = 1.0
_SHUTDOWN_GRACE_SECONDS = 2.0             # for a request in flight at shutdown to send its answer (a busy machine needs more than 1 s)
_SEND_STALL_SECONDS = 60.0               # a response's bytes must move at least this often
_TIMEOUT_SLACK = 0.05                    # how far past a read deadline a recv() may wait
_REFUSAL_LOG_SECONDS = 10.0              # at most one refusal line per this (a flood logs one)


class _Disconnected(Exception):
    """The peer closed the connection in the middle of a request."""


class BodyError(Exception):
    """A streamed body could not be read to its end (what :class:`Body` raises): the client broke
    HTTP, stalled past ``body_timeout`` or went away.  ``status``: what to answer (0: nobody to
    answer).  The transport closes the connection, whatever the handler does with it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


StreamHandler = Callable[[Request, "Body"], Response]


class HTTPServer:
    """Serve ``handler(Request) -> Response`` over TCP (``(host, port)``) or a unix socket path.

    ``serve_forever()`` runs the accept loop in the caller's thread; ``start()`` runs it in a
    daemon thread named ``http-accept``.  Each connection gets a daemon thread ``http-<n>``.
    ``max_connections_per_source`` (None: a quarter of ``max_connections``; 0: no share) applies
    to TCP only: a unix socket's peers are the server's own user and root.
    """

    def __init__(self, listen: tuple[str, int] | str, handler: Callable[[Request], Response], *,
                 max_body_bytes: int = 300 * 1024, max_header_bytes: int = 16 * 1024,
                 max_connections: int = 800, max_connections_per_source: int | None = None,
                 header_timeout: float = 20.0, body_timeout: float = 30.0, keepalive_timeout: float = 120.0,
                 ssl_context=None, streaming: Callable[[str, str], StreamHandler | None] | None = None):
        self.handler = handler
        # (method, path) -> a handler that reads the body itself, or None: the handler's own
        # ``streaming`` method by default (xenapi.transport.api.Api has one for the disk transfers)
        self.streaming = streaming if streaming is not None else getattr(handler, "streaming", None)
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.keepalive_timeout = keepalive_timeout
        self.ssl_context = ssl_context
        self.scheme = "https" if ssl_context else "http"
        if max_connections_per_source is None:
            max_connections_per_source = max(1, max_connections // 4)
        self.slots = Slots(max_connections, None if isinstance(listen, str) else max_connections_per_source)
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
        self._lock = threading.Lock()    # guards _connections and slots
        self._connections: set[_Connection] = set()
        self._ids = itertools.count(1)
        self._closing = False
        self._stopped = threading.Event()
        self._stopped.set()              # not serving yet
        self._accept_thread: threading.Thread | None = None
        self._refused = 0                # refusals not logged yet (the accept thread's own)
        self._refusal_logged = -_REFUSAL_LOG_SECONDS

    @property
    def max_connections(self) -> int:
        return self.slots.total

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
            source: str | None = source_of(addr[0])
        else:
            peer, source = "unix", None
        with self._lock:
            refusal = self.slots.take(source)
            if refusal is None:
                connection = _Connection(self, sock, peer, source, f"http-{next(self._ids)}")
                self._connections.add(connection)
        if refusal is not None:
            self._log_refusal(peer, refusal)
            _refuse(sock)
            return
        try:
            connection.thread.start()
        except RuntimeError as e:        # no more threads: as full as max_connections
            log.warning("refused connection peer=%s reason=%s", peer, e)
            self._forget(connection)
            _refuse(sock)

    def _log_refusal(self, peer, reason: str) -> None:
        """One WARNING line per refusal, but at most one per _REFUSAL_LOG_SECONDS, with how many
        it stands for: a flood of connections must not become a flood of log lines."""
        self._refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= _REFUSAL_LOG_SECONDS:
            log.warning("refused connection peer=%s reason=%s refused=%d", peer, reason, self._refused)
            self._refused = 0
            self._refusal_logged = now

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            if connection in self._connections:
                self._connections.discard(connection)
                self.slots.give_back(connection.source)


class _Connection:
    """One client connection: read a request, call the handler, write the response, repeat."""

    def __init__(self, server: HTTPServer, sock: socket.socket, peer, source: str | None, name: str):
        self.server = server
        self.sock = sock
        self.peer = peer
        self.source = source
        self.peer_uid = _peer_uid(sock) if peer == "unix" else None
        self.opened = time.monotonic()
        self.served = 0                  # requests answered on this connection
        self.buf = b""                   # received but not yet consumed (pipelined requests too)
        self.deadline = 0.0              # when the body being read must be in (time.monotonic)
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
            if server.ssl_context is not None:
                # the handshake is part of the first request's head: the same limit holds
                self.sock.settimeout(server.header_timeout)
                self.sock = server.ssl_context.wrap_socket(self.sock, server_side=True)
            while self._serve_one() and not server._closing:
                self.served += 1
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
                return False             # closed between requests, or silent past its limit
            self.busy = True
            method, target, minor, headers = parse_head(head)
            keep = keep_alive(minor, headers.get("connection"))
            path, _, query = target.partition("?")
            streamer = self.server.streaming(method, path) if self.server.streaming else None
            if streamer is not None:     # the handler reads the body itself, as it arrives
                stream_body = Body(self, minor, headers)
            else:
                self.deadline = time.monotonic() + self.server.body_timeout
                body = self._read_body(minor, headers)
        except ProtocolError as e:
            self._refuse(e)
            return False
        if streamer is not None:
            return self._serve_streamed(streamer, Request(method, path, headers, b"", self.peer, self.server.scheme,
                                                          query, self.peer_uid), stream_body, keep, minor)
        request = Request(method, path, headers, body, self.peer, self.server.scheme, query, self.peer_uid)
        upgrade = response = None
        try:
            response = self.server.handler(request)
            out = serialize(response, keep, minor, method == "HEAD")
            upgrade = response.upgrade if response.status == 101 else None
        except Exception:
            log.exception("handler failed method=%s path=%s peer=%s", method, path, self.peer)
            _close_stream(response)
            response, out = None, serialize(plain(500, "internal server error"), keep, minor, False)
        if response is not None and response.stream is not None:
            return self._send_head_and_stream(response, out, keep, minor, method == "HEAD")
        self._send(out)
        self.busy = False
        if upgrade is not None:
            self.sock.settimeout(None)   # the upgraded protocol decides when the connection ends
            upgrade(self.sock, self.buf)
            return False
        return keep

    def _refuse(self, e: ProtocolError) -> None:
        log.debug("bad request peer=%s status=%d reason=%s", self.peer, e.status, e)
        self._send(serialize(plain(e.status, str(e)), False, 1, False))
        self._linger()

    # -- the streaming routes --------------------------------------------------------------------

    def _serve_streamed(self, streamer: StreamHandler, request: Request, body: "Body", keep: bool,
                        minor: int) -> bool:
        """A request whose handler reads the body as it comes (``body``) and may stream its answer.
        A body that broke (BodyError) decides the answer whatever the handler made of it; one the
        handler left unread is drained if small (the connection stays open), else the connection
        closes after the answer."""
        head_only = request.method == "HEAD"
        response = None
        try:
            response = streamer(request, body)
        except Exception:
            _close_stream(response)
            response = None
            if body.failed is None:
                log.exception("handler failed method=%s path=%s peer=%s", request.method, request.path, self.peer)
                response = plain(500, "internal server error")
        if body.failed is not None:      # whatever the handler answered: the request is broken
            _close_stream(response)
            if body.failed.status:
                self._refuse(ProtocolError(body.failed.status, str(body.failed)))
            else:
                log.debug("connection ended peer=%s reason=%s", self.peer, body.failed)
            return False
        if not body.done:
            keep = keep and body.drain(self.server.max_body_bytes)
        try:
            out = serialize(response, keep, minor, head_only)
        except Exception:
            log.exception("handler failed method=%s path=%s peer=%s", request.method, request.path, self.peer)
            _close_stream(response)
            response = plain(500, "internal server error")
            out = serialize(response, keep, minor, False)
        if response.stream is not None:
            return self._send_head_and_stream(response, out, keep, minor, head_only)
        self._send(out)
        self.busy = False
        if not body.done:
            self._linger()
            return False
        return keep

    def _send_head_and_stream(self, response: Response, head: bytes, keep: bool, minor: int, head_only: bool) -> bool:
        """Send a streamed response: its head, then its body as the stream gives it; return whether
        the connection stays open.  A stream that fails or gives more or fewer bytes than its
        Content-Length is cut: the client sees the connection close before the body's end."""
        way = framing(response, minor)
        sent = 0
        try:
            self._send(head)
            if head_only:
                self.busy = False
                return keep and way != "close"
            for data in response.stream:
                if not data:
                    continue
                sent += len(data)
                if way == "length" and sent > response.length:
                    raise ValueError(f"stream longer than its Content-Length {response.length}")
                self._send(chunk(data) if way == "chunked" else data)
            if way == "length" and sent != response.length:
                raise ValueError(f"stream of {sent} bytes, not its Content-Length {response.length}")
            if way == "chunked":
                self._send(LAST_CHUNK)
        except OSError as e:             # the client went away (or stopped reading)
            log.debug("streamed response cut peer=%s sent=%d reason=%r", self.peer, sent, e)
            return False
        except Exception:
            log.exception("streamed response failed peer=%s sent=%d", self.peer, sent)
            return False
        finally:
            _close_stream(response)
        self.busy = False
        return keep and way != "close"

    def _send(self, data: bytes) -> None:
        """Send all of ``data``; each send() waits at most _SEND_STALL_SECONDS for room (sendall's
        timeout would bound the whole response, however large, by that time).  The first send
        keeps the socket's read timeout: a response nearly always fits the send buffer at once,
        and not switching saves a system call per request."""
        try:
            sent = self.sock.send(data)
        except TimeoutError:             # no room within the read limit's timeout ...
            if self.sock.gettimeout() >= _SEND_STALL_SECONDS:
                raise                    # ... which was as long as a stall may be
            sent = 0
        if sent < len(data):
            self.sock.settimeout(_SEND_STALL_SECONDS)
            view = memoryview(data)[sent:]
            while view:
                view = view[self.sock.send(view):]

    def _linger(self) -> None:
        """Read and drop what the client is still sending (briefly) before closing: closing
        with unread data makes the kernel send a reset, which can destroy our error response
        before the client reads it."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_SECONDS
            budget = 4 * self.server.max_body_bytes
            while budget > 0 and (data := self._recv_by(deadline)):
                budget -= len(data)
        except OSError:                  # TimeoutError too
            pass

    # -- reading -------------------------------------------------------------------------------

    def _recv_by(self, deadline: float) -> bytes:
        """recv(), waiting until ``deadline`` (time.monotonic) at most; TimeoutError past it.
        The socket's timeout is left as it is when it ends within _TIMEOUT_SLACK after the
        deadline (each keep-alive wait sets the same one): settimeout() is a system call."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("time limit reached")
        current = self.sock.gettimeout()
        if current is None or not remaining <= current <= remaining + _TIMEOUT_SLACK:
            self.sock.settimeout(remaining)
        return self.sock.recv(_RECV)

    def _recv(self, stalled: bool = False) -> bytes:
        """More of the body: by the body's deadline, else 408 (``stalled``: the deadline is a
        streamed body's stall timer)."""
        try:
            data = self._recv_by(self.deadline)
        except TimeoutError:
            limit = self.server.body_timeout
            if stalled:
                raise ProtocolError(408, f"request body stalled: nothing received for {limit:g} s") from None
            raise ProtocolError(408, f"request body not received within {limit:g} s") from None
        if not data:
            raise _Disconnected("peer closed the connection mid-request")
        return data

    def _read_head(self) -> bytes | None:
        """The next request's head, or None when the connection should close quietly: the
        client closed it, or sent nothing of a request within its time."""
        server = self.server
        buf = self.buf
        limit = server.max_header_bytes
        if self.served == 0:             # the first request: counted from the connection's start
            waiting, deadline = False, self.opened + server.header_timeout
        elif buf:                        # pipelined: the request has begun
            waiting, deadline = False, time.monotonic() + server.header_timeout
        else:                            # keep-alive: idle until the first byte of the next one
            waiting, deadline = True, time.monotonic() + server.keepalive_timeout
        while True:
            if buf[:1] in (b"\r", b"\n"):
                buf = buf.lstrip(b"\r\n")   # RFC 9112 §2.2: ignore empty lines before a request
            end = head_end(buf)
            if end is not None:
                if end[0] > limit:
                    raise ProtocolError(431, "request header too large")
                self.buf = buf[end[1]:]
                return buf[:end[0]]
            if len(buf) > limit:
                raise ProtocolError(431, "request header too large")
            try:
                data = self._recv_by(deadline)
            except TimeoutError:
                if buf:
                    raise ProtocolError(408, f"request header not received within {server.header_timeout:g} s") from None
                log.debug("connection closed peer=%s reason=%s", self.peer,
                          "idle" if self.served else "silent")
                return None
            if not data:
                if buf:
                    raise _Disconnected("peer closed the connection mid-header")
                return None
            if waiting:                  # a byte (even an empty line) starts the head's clock
                waiting, deadline = False, time.monotonic() + server.header_timeout
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

    def _read_line(self, stalled: bool = False) -> bytes:
        """One line (without its terminator) of a chunked body."""
        while (end := self.buf.find(b"\n")) < 0:
            if len(self.buf) > self.server.max_header_bytes:
                raise ProtocolError(400, "chunk line too long")
            self.buf += self._recv(stalled)
        line, self.buf = self.buf[:end], self.buf[end + 1:]
        return line.rstrip(b"\r")

    def _read_body(self, minor: int, headers: dict[str, str]) -> bytes:
        n = body_length(headers)
        if n is None:
            self._continue(minor, headers)
            return self._read_chunked()
        if n == 0:
            return b""
        if n > self.server.max_body_bytes:
            raise ProtocolError(413, f"request body over {self.server.max_body_bytes} bytes")
        if len(self.buf) < n:
            self._continue(minor, headers)
        return self._read_exact(n)

    def _continue(self, minor: int, headers: dict[str, str]) -> None:
        """Answer ``Expect: 100-continue`` once we know we will read the body."""
        if minor >= 1 and headers.get("expect", "").lower() == "100-continue" and not self.buf:
            self._send(CONTINUE)

    def _read_chunked(self) -> bytes:
        limit = self.server.max_body_bytes
        parts = []
        total = 0
        while True:
            size = self._read_line().split(b";", 1)[0].strip(b" \t")
            if not CHUNK_SIZE.fullmatch(size):
                raise ProtocolError(400, "bad chunk size")
            n = int(size, 16)
            if n == 0:
                break
            total += n
            if total > limit:
                raise ProtocolError(413, f"request body over {limit} bytes")
            parts.append(self._read_exact(n))
            if self._read_line():
                raise ProtocolError(400, "chunk data longer than its size")
        trailer = 0
        while line := self._read_line():  # trailer fields are read and dropped
            trailer += len(line)
            if trailer > self.server.max_header_bytes:
                raise ProtocolError(431, "trailer too large")
        return b"".join(parts)


class Body:
    """A request body read as it arrives, for the streaming routes: ``read(n)`` gives up to ``n``
    bytes (at least one) and b"" at the end.  ``length`` is the Content-Length, or None for a
    chunked body; ``received`` counts what was read.  ``Expect: 100-continue`` is answered at the
    first read, so a handler that refuses the request before reading sends no body through.

    No size limit here (a disk is gigabytes: the handler bounds what it takes).  The time limit is
    a stall timer: each piece must arrive within ``body_timeout`` s of the one before, however
    long the whole upload takes.  A failure raises :class:`BodyError` and is kept in ``failed``."""

    def __init__(self, connection: _Connection, minor: int, headers: dict[str, str]):
        self._conn = connection
        self._minor = minor
        self._headers = headers
        self._timeout = connection.server.body_timeout
        self.received = 0
        self.failed: BodyError | None = None
        self._started = False
        self.length: int | None = body_length(headers)
        self._left = self.length or 0    # of the body, or of the current chunk when chunked
        self.done = self.length == 0

    def read(self, n: int = _RECV) -> bytes:
        if self.failed is not None:
            raise self.failed
        if self.done:
            return b""
        try:
            data = self._read(max(1, n))
        except ProtocolError as e:
            self.failed = BodyError(e.status, str(e))
        except _Disconnected as e:
            self.failed = BodyError(0, str(e))
        except OSError as e:             # a reset, or the server shutting the socket down
            self.failed = BodyError(0, f"connection lost mid-body: {e!r}")
        else:
            self.received += len(data)
            return data
        raise self.failed

    def drain(self, limit: int) -> bool:
        """Read and drop the rest of a body the handler did not want, if at most ``limit`` bytes
        remain (a bigger one is not worth waiting for: the connection closes instead), and the
        client is not waiting for a 100 Continue (then it need not send the body at all)."""
        if self.length is None or self.length - self.received > limit:
            return False
        if not self._started and self._headers.get("expect", "").lower() == "100-continue":
            return False
        try:
            while self.read(limit):
                pass
        except BodyError:
            return False
        return True

    def _read(self, n: int) -> bytes:
        conn = self._conn
        if not self._started:
            self._started = True
            conn._continue(self._minor, self._headers)
        if self.length is not None:
            data = self._take(min(n, self._left))
            self._left -= len(data)
            self.done = self._left == 0
            return data
        if self._left == 0:              # the next chunk's size line
            size = self._line().split(b";", 1)[0].strip(b" \t")
            if not CHUNK_SIZE.fullmatch(size):
                raise ProtocolError(400, "bad chunk size")
            self._left = int(size, 16)
            if self._left == 0:
                trailer = 0
                while line := self._line():   # trailer fields are read and dropped
                    trailer += len(line)
                    if trailer > conn.server.max_header_bytes:
                        raise ProtocolError(431, "trailer too large")
                self.done = True
                return b""
        data = self._take(min(n, self._left))
        self._left -= len(data)
        if self._left == 0 and self._line():
            raise ProtocolError(400, "chunk data longer than its size")
        return data

    def _take(self, n: int) -> bytes:
        """Up to ``n`` bytes (at least one) from what is buffered, else from the socket."""
        conn = self._conn
        if not conn.buf:
            conn.deadline = time.monotonic() + self._timeout    # progress resets the stall timer
            conn.buf = conn._recv(stalled=True)
        data, conn.buf = conn.buf[:n], conn.buf[n:]
        return data

    def _line(self) -> bytes:
        conn = self._conn
        conn.deadline = time.monotonic() + self._timeout
        return conn._read_line(stalled=True)


def _close_stream(response: Response | None) -> None:
    close = getattr(response.stream, "close", None) if response is not None else None
    if close is not None:
        try:
            close()
        except Exception:
            log.exception("closing a streamed response failed")


def body_length(headers: dict[str, str]) -> int | None:
    """A request body's length from its framing headers: None when chunked, 0 when it has none."""
    encoding = headers.get("transfer-encoding")
    length = headers.get("content-length")
    if encoding is not None:
        if length is not None:           # ambiguous framing: the classic smuggling vector
            raise ProtocolError(400, "both Content-Length and Transfer-Encoding")
        if encoding.lower() != "chunked":
            raise ProtocolError(501, f"unsupported transfer-encoding {encoding[:40]}")
        return None
    if length is None:
        return 0
    if not (length.isascii() and length.isdigit()):
        raise ProtocolError(400, "bad Content-Length")
    return int(length)


def _refuse(sock: socket.socket) -> None:
    """Tell a connection over the cap or its source's share to come back later, without giving
    it a thread (the accept loop's own time: nothing here waits)."""
    try:
        sock.setblocking(False)
        sock.send(serialize(plain(503, "too many connections"), False, 1, False))   # fits any send buffer
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(_RECV):          # drop what already came, so close() sends no reset
            pass
    except OSError:                      # BlockingIOError: nothing (more) to read
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
