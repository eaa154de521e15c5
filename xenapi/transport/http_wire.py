"""HTTP/1.1 messages as bytes, without I/O: parse a request head, write a response.

Pure functions over bytes (h11's split, xenapi's parser): xenapi/transport/http.py is the I/O
shell that reads within limits and calls these.  A request the client got wrong raises
:class:`ProtocolError` carrying the status to answer.
"""
from __future__ import annotations

import functools
import re
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

__all__ = ["Request", "Response", "ProtocolError", "head_end", "parse_head", "keep_alive", "serialize",
           "framing", "chunk", "plain", "CONTINUE", "CHUNK_SIZE", "LAST_CHUNK"]


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
    # A streamed body (``body`` is then b""): the transport sends its chunks as they come, framed
    # by ``length`` (Content-Length) when given, else chunked (HTTP/1.1) or by closing (HTTP/1.0).
    # Its ``close()``, if it has one, is called however the sending ends (HEAD and errors too).
    stream: Iterable[bytes] | None = None
    length: int | None = None


class ProtocolError(Exception):
    """The client broke HTTP (or its time limit): answer ``status`` and close."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_HEAD_END = re.compile(rb"\r?\n\r?\n")             # RFC 9112 §2.2: a bare LF ends a line too
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_VERSION = re.compile(rb"HTTP/1\.([0-9])")


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> str:
    return formatdate(second, usegmt=True)


def plain(status: int, text: str) -> Response:
    return Response(status, "text/plain", text.encode() + b"\n")


def head_end(buf: bytes) -> tuple[int, int] | None:
    """Where the head ends and the body starts.  find() serves every real client; the regex
    (ten times slower) only runs for heads that use bare LF line ends."""
    end = buf.find(b"\r\n\r\n")
    if end >= 0 and buf.find(b"\n\n", 0, end) < 0:
        return end, end + 4
    match = _HEAD_END.search(buf)
    return None if match is None else match.span()


def parse_head(head: bytes) -> tuple[str, str, int, dict[str, str]]:
    """(method, target, HTTP minor version, headers) from a request head without its blank line."""
    lines = head.split(b"\n")
    parts = lines[0].rstrip(b"\r").split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise ProtocolError(400, "bad request line")
    version = _VERSION.fullmatch(parts[2])
    if version is None:
        raise ProtocolError(400, "unsupported HTTP version")
    try:
        target = parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(400, "non-ASCII request target") from None
    if target.startswith(("http://", "https://")):   # absolute form: keep path and query
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    headers: dict[str, str] = {}
    for line in lines[1:]:
        line = line.rstrip(b"\r")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):   # also refuses obsolete line folding
            raise ProtocolError(400, "bad header line")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise ProtocolError(400, "bad header value")
        key = name.decode("ascii").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return parts[0].decode("ascii"), target, int(version.group(1)), headers


def keep_alive(minor: int, connection: str | None) -> bool:
    """HTTP/1.1 stays open unless told ``close``; HTTP/1.0 only when asked ``keep-alive``."""
    if connection is None:
        return minor >= 1
    tokens = {t.strip().lower() for t in connection.split(",")}
    return "close" not in tokens and (minor >= 1 or "keep-alive" in tokens)


def framing(response: Response, minor: int) -> str:
    """How a response's body is delimited: "length", "chunked" or "close" (a streamed body of
    unknown length to an HTTP/1.0 client: the connection's end is its end)."""
    if response.stream is None or response.length is not None:
        return "length"
    return "chunked" if minor >= 1 else "close"


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 7.1); never empty (that is LAST_CHUNK)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def serialize(response: Response, keep_alive: bool, minor: int, head_only: bool) -> bytes:
    """The response's bytes; of a streamed response (``response.stream``), its head only."""
    body = response.body
    if not isinstance(body, (bytes, bytearray)):
        raise TypeError(f"response body must be bytes, not {type(body).__name__}")
    lines = [f"HTTP/1.1 {int(response.status)} {_REASONS.get(response.status, '')}\r\n"
             f"Date: {_http_date(int(time.time()))}\r\n"]
    if response.stream is not None:
        way = framing(response, minor)
        lines.append(f"Content-Type: {response.content_type}\r\n")
        if way == "length":
            lines.append(f"Content-Length: {int(response.length)}\r\n")
        elif way == "chunked":
            lines.append("Transfer-Encoding: chunked\r\n")
        keep_alive = keep_alive and way != "close"
        head_only = True
    elif response.status >= 200:         # a 1xx carries neither (RFC 9110 8.6, 15.2)
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
