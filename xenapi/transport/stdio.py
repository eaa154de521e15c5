"""``xenapi stdio``: bare Xen-API on standard input and output, served by the running server.

Both ends of one link live here:

* :func:`relay` is the ``xenapi stdio`` process (what sshd runs for an ``authorized_keys``
  line).  It never opens the server's database: it connects to the server's unix socket, asks
  for an HTTP/1.1 upgrade to the stream protocol (asserting the transport user, if any), then
  copies stdin to the socket and the socket to stdout.  Only the server's responses reach stdout.
* :func:`accept` is the server's answer to that upgrade: it checks that the peer may assert a
  user (``SO_PEERCRED`` uid 0 or the server's own uid) and hands the socket to
  :func:`xenapi.transport.stream.serve`, the same loop the built-in SSH server runs.

The exchange is specified in docs/ssh.md.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
from typing import TYPE_CHECKING

from xenapi.context import peer_address
from xenapi.errors import XenAPIError
from xenapi.transport import stream
from xenapi.transport.http import Request, Response
from xenapi.wire import Limits

if TYPE_CHECKING:
    from auth.users import Users
    from xenapi.dispatcher import Dispatcher
    from xenapi.state.sessions import Sessions

log = logging.getLogger(__name__)

UPGRADE = "xenapi-stream"
USER_HEADER = "X-Xenapi-Transport-User"
VIA_HEADER = "X-Xenapi-Transport-Via"
ADDRESS_HEADER = "X-Xenapi-Transport-Address"
_TRANSPORT_HEADERS = tuple(h.lower() for h in (USER_HEADER, VIA_HEADER, ADDRESS_HEADER))
_VIAS = ("stdio", "ssh")
_ADDRESS = re.compile(r"[0-9A-Za-z.:\[\]%_-]{1,80}")
_CHUNK = 65536
_MAX_HEAD = 16 * 1024


# ------------------------------------------------------------------------------ server side

def is_upgrade(request: Request) -> bool:
    return request.method == "POST" and request.headers.get("upgrade", "").lower() == UPGRADE


def accept(request: Request, users: Users, dispatcher: Dispatcher, sessions: Sessions, limits: Limits) -> Response:
    """Switch a unix-socket connection to the stream protocol, or say why not: ``users`` to know
    the asserted user, the rest for :func:`xenapi.transport.stream.serve`."""
    if request.peer != "unix":
        return _refuse(400, "the stream protocol is offered on the unix socket only")
    headers = request.headers
    if any(h in headers for h in _TRANSPORT_HEADERS) and request.peer_uid not in (0, os.getuid()):
        log.warning("event=stream-refused reason=untrusted-peer uid=%s", request.peer_uid)
        return _refuse(403, "only root or the server's own user may assert a transport identity")
    via = headers.get(VIA_HEADER.lower(), "stdio")
    address = headers.get(ADDRESS_HEADER.lower(), "")
    user = headers.get(USER_HEADER.lower()) or None
    if via not in _VIAS or (address and not _ADDRESS.fullmatch(address)):
        return _refuse(400, f"bad {VIA_HEADER} or {ADDRESS_HEADER}")
    if user is not None and users.get(user) is None:
        log.warning("event=stream-refused reason=unknown-user user=%s via=%s addr=%s", user, via, address or "-")
        return _refuse(403, f"no such user {user!r}")
    # over OpenSSH the forced command of an authorized_keys line vouches (a key); locally, the peer's uid
    login = stream.KEY_LOGIN if via == "ssh" else stream.LOCAL_LOGIN
    identity = stream.StreamIdentity(via=via, address=address, user=user, login_method=login)

    def run(sock: socket.socket, already: bytes) -> None:
        pending = [already] if already else []
        read = lambda: pending.pop() if pending else sock.recv(_CHUNK)  # noqa: E731
        try:
            stream.serve(dispatcher, sessions, read, sock.sendall, identity, limits)
        except XenAPIError as e:          # the user went away since the check above
            log.warning("event=stream-refused user=%s reason=%s", user, stream.refusal(e))
        except OSError as e:
            log.debug("event=stream-ended via=%s reason=%r", via, e)
        except Exception:
            log.exception("event=stream-failed user=%s via=%s", user, via)

    log.info("event=stream-open user=%s via=%s addr=%s", user or "-", via, address or "-")
    return Response(101, "text/plain", b"", [("Connection", "Upgrade"), ("Upgrade", UPGRADE)], upgrade=run)


def _refuse(status: int, reason: str) -> Response:
    return Response(status, "text/plain", f"{reason}\n".encode())


# ------------------------------------------------------------------------------ the relay

def relay(socket_path: str, user: str | None, stdin: int = 0, stdout: int = 1) -> int:
    """Run ``xenapi stdio``: stdin -> server -> stdout until the end of input.  Returns the exit status."""
    original = os.environ.get("SSH_ORIGINAL_COMMAND")
    if original is not None and not stream.is_stream_command(original):
        return _fail(f"this key runs the Xen-API stream only; refusing the command {original[:80]!r}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
        sock.sendall(_upgrade_request(user))
        status, reason, already = _read_head(sock)
    except OSError as e:
        return _fail(f"cannot reach the xenapi server on {socket_path}: {e.strerror or e}")
    if status != 101:
        return _fail(f"the server refused the stream: {reason}")
    try:
        if already:
            _write_all(stdout, already)
        return _pump(sock, stdin, stdout)
    except OSError as e:                  # stdout closed (EPIPE) or the socket reset
        return _fail(f"stream broken: {e.strerror or e}")
    finally:
        sock.close()


def _upgrade_request(user: str | None) -> bytes:
    if user is not None and not user.isprintable():
        raise OSError(0, f"bad user name {user!r}")
    lines = ["POST / HTTP/1.1", "Host: localhost", "Connection: Upgrade", f"Upgrade: {UPGRADE}",
             "Content-Length: 0"]
    if user:
        lines.append(f"{USER_HEADER}: {user}")
    ssh = os.environ.get("SSH_CONNECTION", "").split()
    lines.append(f"{VIA_HEADER}: {'ssh' if ssh else 'stdio'}")
    if len(ssh) >= 2:
        lines.append(f"{ADDRESS_HEADER}: {peer_address(ssh[0], ssh[1])}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _read_head(sock: socket.socket) -> tuple[int, str, bytes]:
    """(status, reason text, bytes after the head) of the server's answer."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(_CHUNK)
        if not data or len(buf) > _MAX_HEAD:
            raise OSError(0, "no answer to the stream request")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    if status == 101:
        return status, "", rest
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    body = rest
    while length and len(body) < int(length.group(1)) and (data := sock.recv(_CHUNK)):
        body += data
    reason = body.decode("utf-8", "replace").strip() or status_line
    return status, reason, b""


def _pump(sock: socket.socket, stdin: int, stdout: int) -> int:
    """Copy stdin to the socket (in a thread) and the socket to stdout, until the server closes."""
    sent_all = threading.Event()

    def upstream() -> None:
        try:
            while data := os.read(stdin, _CHUNK):
                sock.sendall(data)
            sent_all.set()
            sock.shutdown(socket.SHUT_WR)  # the server answers what it has, then closes
        except OSError as e:
            log.debug("stdin relay ended: %r", e)

    threading.Thread(target=upstream, name="stdin-relay", daemon=True).start()
    while data := sock.recv(_CHUNK):
        _write_all(stdout, data)
    if not sent_all.is_set():
        return _fail("the server closed the stream before the end of input")
    return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fail(message: str) -> int:
    print(f"xenapi stdio: {message}", file=sys.stderr, flush=True)
    return 1
