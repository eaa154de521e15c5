"""The client's side of the wire (for :mod:`xenapi.client`): XML-RPC documents, and connections
that carry one request and bring back one response, over HTTP(S), a unix socket or SSH.

A :class:`Connector` knows where the server is and opens connections; a connection is used by
one thread at a time, except ``abort()``, which any thread may call to end a blocked call.
"""
from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import xmlrpc.client
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

from defusedxml.xmlrpc import DefusedExpatParser

log = logging.getLogger(__name__)

USER_AGENT = "xenapi.client/0.1"


class StaleConnection(ConnectionResetError):
    """A reused connection turned out closed before the request got any answer: the far end
    ended it while idle.  Worth one try on a new connection, as for an idle HTTP keep-alive."""


# what a dropped or refused connection raises (a Failure or a Fault is the server's answer)
CONNECTION_ERRORS = (OSError, EOFError, http.client.HTTPException, xmlrpc.client.ProtocolError)
END_OF_RESPONSE = b"</methodResponse>"
MAX_RESPONSE_BYTES = 512 * 1024 * 1024       # a stream that never ends its document is cut off here
_RECV = 65536


# -- documents ---------------------------------------------------------------------------------

class _Marshaller(xmlrpc.client.Marshaller):
    """xmlrpc.client's, but an int beyond 32 bits goes as a decimal string (xapi's int64 form)
    instead of raising OverflowError."""
    dispatch = dict(xmlrpc.client.Marshaller.dispatch)

    def _dump_int(self, value, write):
        tag = "int" if -2**31 <= value < 2**31 else "string"
        write(f"<value><{tag}>{int(value)}</{tag}></value>\n")

    dispatch[int] = _dump_int


def encode_call(method: str, params: tuple) -> bytes:
    body = _Marshaller("utf-8", allow_none=True).dumps(params)
    return (f"<?xml version='1.0'?>\n<methodCall>\n<methodName>{escape(method)}</methodName>\n"
            f"{body}</methodCall>\n").encode("utf-8")


def decode_response(body: bytes):
    """The value of a ``<methodResponse>``; raises xmlrpc.client.Fault for a ``<fault>``."""
    unmarshaller = xmlrpc.client.Unmarshaller()
    parser = DefusedExpatParser(unmarshaller, forbid_dtd=True)
    parser.feed(body)
    parser.close()
    return unmarshaller.close()[0]


def decode_value(text: str):
    """A ``<value>...</value>`` fragment (what task.result holds) as a Python value; an empty
    result is "", what a void message returns when called synchronously."""
    if not text.strip():
        return ""
    return decode_response(f"<methodResponse><params><param>{text}</param></params></methodResponse>".encode())


# -- connectors --------------------------------------------------------------------------------

class Connector:
    """Opens connections: ``open(timeout)`` returns an object with ``round_trip(bytes) -> bytes``,
    ``usable``, ``abort()`` and ``close()``."""
    stream_session: str | None = None       # the session a connection has without logging in

    def open(self, timeout: float | None):
        raise NotImplementedError

    def close(self) -> None:
        pass


def connector_for(url: str, *, ignore_ssl: bool = False, cafile: str | None = None, ssl_context=None,
                  key_filename: str | None = None, known_hosts: str | None = None,
                  verify_host_key: bool = True) -> Connector:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "http":
        return _HTTPConnector(url, _http_factory(parts.hostname, parts.port), parts.path or "/")
    if scheme == "https":
        context = ssl_context or _client_context(ignore_ssl, cafile)
        return _HTTPConnector(url, _https_factory(parts.hostname, parts.port, context), parts.path or "/")
    if scheme == "unix":
        path = unquote(parts.netloc + parts.path)        # unix:///abs/path (or unix://rel/path)
        if not path:
            raise ValueError(f"no socket path in {url!r}")
        return _HTTPConnector(url, lambda timeout: _UnixHTTPConnection(path, timeout), "/")
    if scheme == "ssh":
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        from xenapi.client.ssh import SSHConnector
        return SSHConnector(parts.hostname, parts.port or 22, unquote(parts.username or "") or None,
                            key_filename=key_filename, known_hosts=known_hosts, verify_host_key=verify_host_key)
    raise ValueError(f"unsupported URL {url!r}: use http://, https://, unix:///path or ssh://user@host")


def _client_context(ignore_ssl: bool, cafile: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ignore_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _http_factory(host, port):
    return lambda timeout: http.client.HTTPConnection(host, port, timeout=timeout)


def _https_factory(host, port, context):
    return lambda timeout: http.client.HTTPSConnection(host, port, timeout=timeout, context=context)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


# -- HTTP --------------------------------------------------------------------------------------

class _HTTPConnector(Connector):
    def __init__(self, url: str, factory, path: str):
        self.url = url
        self.factory = factory
        self.path = path

    def open(self, timeout: float | None) -> "_HTTPConnection":
        return _HTTPConnection(self, timeout)


# the server closed an idle keep-alive connection before (or while) we sent the request
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class _HTTPConnection:
    """One keep-alive HTTP connection, made at the first request and again when the server
    has closed it between requests (once per request, as xmlrpc.client.Transport does)."""

    def __init__(self, connector: _HTTPConnector, timeout: float | None):
        self.connector = connector
        self.timeout = timeout
        self._http: http.client.HTTPConnection | None = None
        self._aborted = False

    usable = True                            # a dropped connection is remade at the next request

    def round_trip(self, body: bytes) -> bytes:
        for attempt in (1, 2):
            if self._aborted:
                raise ConnectionAbortedError("connection closed")
            conn = self._http                # a local: abort() and close() may run in another thread
            fresh = conn is None
            if fresh:
                conn = self._http = self.connector.factory(self.timeout)
            try:
                conn.request("POST", self.connector.path, body, {"Content-Type": "text/xml",
                                                                 "User-Agent": USER_AGENT})
                response = conn.getresponse()
                data = response.read()
            except _STALE:
                self._drop(conn)
                if fresh or attempt == 2 or self._aborted:
                    raise
                continue
            except BaseException:
                self._drop(conn)
                raise
            if response.will_close:
                self._drop(conn)
            if response.status != 200:
                raise xmlrpc.client.ProtocolError(self.connector.url, response.status, response.reason,
                                                  dict(response.getheaders()))
            return data
        raise AssertionError("unreachable")

    def abort(self) -> None:
        """End a call blocked in another thread: shut the socket down under it."""
        self._aborted = True
        sock = getattr(self._http, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._drop(self._http)

    def _drop(self, conn: http.client.HTTPConnection | None) -> None:
        if conn is not None:
            conn.close()
            if self._http is conn:
                self._http = None


# -- streams (ssh) -----------------------------------------------------------------------------

class ResponseReader:
    """Cuts a byte stream into ``<methodResponse>`` documents (docs/ssh.md: each response ends
    with ``</methodResponse>`` and a LF; ``<`` never occurs unescaped inside a value, so the
    closing tag cannot occur inside one)."""

    def __init__(self, limit: int = MAX_RESPONSE_BYTES):
        self.limit = limit
        self._buf = bytearray()
        self._searched = 0                   # bytes already searched for the end tag

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_document(self) -> bytes | None:
        """A complete response (without the LF after it), or None until more data is fed."""
        start = max(0, self._searched - len(END_OF_RESPONSE) + 1)
        end = self._buf.find(END_OF_RESPONSE, start)
        if end < 0:
            self._searched = len(self._buf)
            if len(self._buf) > self.limit:
                raise ValueError(f"response longer than {self.limit} bytes without {END_OF_RESPONSE.decode()}")
            return None
        end += len(END_OF_RESPONSE)
        document = bytes(self._buf[:end])
        del self._buf[:end]
        while self._buf[:1] in (b"\n", b"\r"):
            del self._buf[:1]
        self._searched = 0
        return document.lstrip()


class StreamConnection:
    """Requests written to a byte stream, responses read back in order (one outstanding at a
    time): the ``xenapi stdio`` protocol.  ``send(bytes)``, ``recv(n) -> bytes`` (b"" at the end)
    and ``shut()`` come from the carrier; ``alive()`` says whether the carrier may still carry
    (false once the far end has closed); ``diagnostics()`` is its error output, if any.  After an
    error mid-call the stream's state is unknown, so it is not used again."""

    def __init__(self, send, recv, shut, alive=lambda: True, diagnostics=lambda: ""):
        self._send, self._recv, self._shut = send, recv, shut
        self._alive, self._diagnostics = alive, diagnostics
        self._reader = ResponseReader()
        self._lock = threading.Lock()
        self._closed = False
        self._answered = 0                   # round trips completed

    @property
    def usable(self) -> bool:
        """False once the stream has ended: the Session then opens another for its next call."""
        return not self._closed and self._alive()

    def round_trip(self, body: bytes) -> bytes:
        with self._lock:
            if self._closed:
                raise ConnectionAbortedError("stream closed")
            got = 0
            try:
                try:
                    self._send(body if body.endswith(b"\n") else body + b"\n")
                except OSError as e:
                    raise ConnectionResetError(f"the stream is closed: {e}") from None
                while (document := self._reader.next_document()) is None:
                    data = self._recv(_RECV)
                    if not data:
                        why = self._diagnostics().strip()
                        raise ConnectionResetError("the server ended the stream" + (f": {why}" if why else ""))
                    got += len(data)
                    self._reader.feed(data)
            except BaseException as e:
                self._closed = True
                self._shut()
                if isinstance(e, ConnectionResetError) and self._answered and not got:
                    raise StaleConnection(*e.args) from None
                raise
            self._answered += 1
            return document

    def abort(self) -> None:
        self._closed = True
        self._shut()

    def close(self) -> None:
        self._closed = True
        self._shut()
