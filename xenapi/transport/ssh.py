"""The built-in SSH server (paramiko): registered public keys in, the bare Xen-API stream out.

``xenapi serve --ssh-listen HOST:PORT``.  The SSH user name is the Xen-API user; a key logs in
only as the user it is registered to (auth/keys.py, read at each login).  An ``exec`` of
``xenapi`` / ``xenapi stdio`` or the subsystem ``xenapi`` carries the stream of
:mod:`xenapi.transport.stream`, dispatched in this process with identity ``via=ssh``.  Anything
else is refused: other commands get a message on stderr and exit status 1; terminals, forwarding
and (unless configured) passwords get paramiko's "no".  A session with no command (a "shell")
carries the stream too, as OpenSSH's forced command does.  A password is checked as
``session.login_with_password`` checks it: throttled per user name and per source address, and a
failure is written to the audit log (a success is, when the stream's session opens).

paramiko runs the hooks of :class:`_Hooks` on each connection's transport thread: they decide
from the database and return; a channel's stream runs on its own thread ``ssh-chan-<n>``.
"""
from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from xenapi.context import Identity, peer_address
from xenapi.errors import XenAPIError
from xenapi.transport import stream
from xenapi.wire import Limits

if TYPE_CHECKING:
    from auth.audit import AuditLog
    from auth.keys import Keys
    from xenapi.dispatcher import Dispatcher
    from xenapi.state.sessions import Sessions

log = logging.getLogger(__name__)

SUBSYSTEM = "xenapi"
LOGIN_SECONDS = 60.0                      # to authenticate and open a channel, or be disconnected
_CHUNK = 65536


def host_key(path: str) -> paramiko.PKey:
    """The server's host key from ``path``; an Ed25519 key is made there (mode 0600) the first time."""
    target = Path(path)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        try:
            os.link(partial, target)      # never replaces a key another process just made
        except FileExistsError:
            pass
        finally:
            partial.unlink()
        log.info("event=ssh-host-key-created path=%s", target)
    return paramiko.PKey.from_path(target)


class SSHServer:
    """Accept SSH connections on ``listen``; ``start()`` runs the accept loop on thread ``ssh-accept``.

    ``keys`` decides a public key login; ``sessions`` checks a password (and, with ``dispatcher``
    and ``limits``, serves the stream); ``audit`` records a refused password."""

    scheme = "ssh"

    def __init__(self, listen: tuple[str, int], key: paramiko.PKey, *, dispatcher: Dispatcher, sessions: Sessions,
                 keys: Keys, audit: AuditLog, limits: Limits, allow_passwords: bool = False,
                 max_connections: int = 800):
        self.dispatcher = dispatcher
        self.sessions = sessions
        self.keys = keys
        self.audit = audit
        self.limits = limits
        self.key = key
        self.allow_passwords = allow_passwords
        self.max_connections = max_connections
        host, port = listen
        self._listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                              backlog=socket.SOMAXCONN)
        self.address = self._listener.getsockname()[:2]
        self._transports: set[paramiko.Transport] = set()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closing = False
        self._thread = threading.Thread(target=self._accept_loop, name="ssh-accept", daemon=True)
        logging.getLogger("paramiko").setLevel(logging.WARNING)   # our own log says what matters

    def start(self) -> None:
        log.info("event=ssh-listening address=%s:%d host_key=%s %s", *self.address[:2], self.key.get_name(),
                 self.key.fingerprint)
        self._thread.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        self._closing = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)   # wakes accept()
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            transports = list(self._transports)
        for transport in transports:
            transport.close()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- connections ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                sock, addr = self._listener.accept()
            except OSError:
                if self._closing:
                    return
                log.warning("event=ssh-accept-failed", exc_info=True)
                continue
            with self._lock:
                full = len(self._transports) >= self.max_connections
            if full:
                log.warning("event=ssh-refused addr=%s reason=max_connections=%d", addr[0], self.max_connections)
                sock.close()
                continue
            peer = peer_address(addr[0], addr[1])
            threading.Thread(target=self._connection, args=(sock, peer), name=f"ssh-{next(self._ids)}",
                             daemon=True).start()

    def _connection(self, sock: socket.socket, peer: str) -> None:
        transport = paramiko.Transport(sock)
        transport.add_server_key(self.key)
        with self._lock:
            self._transports.add(transport)
        try:
            transport.start_server(server=_Hooks(self, peer))
            # Channels are served by the threads the hooks start.  accept() bounds the time to log
            # in, and holds each channel: paramiko closes a Channel nobody references.
            channel = transport.accept(LOGIN_SECONDS)
            if channel is None:
                reason = "no-channel-within-%ds" % LOGIN_SECONDS if transport.is_active() else "disconnected"
                log.info("event=ssh-closed addr=%s reason=%s", peer, reason)
                return
            held = [channel]
            while transport.is_active() and not self._closing:
                if (channel := transport.accept(5.0)) is not None:
                    held = [c for c in held if not c.closed] + [channel]
        except (paramiko.SSHException, EOFError, OSError) as e:
            log.info("event=ssh-closed addr=%s reason=%s", peer, e or type(e).__name__)
        finally:
            transport.close()
            with self._lock:
                self._transports.discard(transport)

    def serve_channel(self, channel: paramiko.Channel, user: str, peer: str, command: str | None,
                      login_method: str = stream.KEY_LOGIN) -> None:
        """One channel's life: the stream, or a refusal for any other command (exit status 1)."""
        status = 1
        try:
            if command is not None and not stream.is_stream_command(command):
                log.info("event=ssh-command-refused user=%s addr=%s command=%r", user, peer, command[:80])
                channel.sendall_stderr(f"xenapi: this server runs only the Xen-API stream "
                                       f"(`xenapi` or the subsystem `xenapi`), not {command[:80]!r}\n".encode())
                return
            identity = stream.StreamIdentity(via="ssh", address=peer, user=user, login_method=login_method)
            stream.serve(self.dispatcher, self.sessions, lambda: channel.recv(_CHUNK), channel.sendall, identity,
                         self.limits)
            status = 0
        except XenAPIError as e:          # the user was deleted after logging in
            channel.sendall_stderr(f"xenapi: {stream.refusal(e)}\n".encode())
        except (OSError, EOFError, paramiko.SSHException) as e:
            log.debug("event=ssh-channel-ended user=%s addr=%s reason=%r", user, peer, e)
        except Exception:
            log.exception("event=ssh-channel-failed user=%s addr=%s", user, peer)
        finally:
            try:                                 # the client may have dropped the connection
                channel.send_exit_status(status)
                channel.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass


class _Hooks(paramiko.ServerInterface):
    """paramiko's questions for one connection; everything not answered here is refused."""

    _channels = itertools.count(1)

    def __init__(self, ssh: SSHServer, peer: str):
        self.ssh = ssh
        self.peer = peer
        self.login_method = stream.KEY_LOGIN       # how the user got in, for the audit log

    def get_allowed_auths(self, username: str) -> str:
        return "publickey,password" if self.ssh.allow_passwords else "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if self.ssh.keys.allows(username, key.asbytes()):
            self.login_method = stream.KEY_LOGIN
            return paramiko.AUTH_SUCCESSFUL   # paramiko then verifies the client's signature
        log.info("event=ssh-key-refused user=%s addr=%s key=%s", username, self.peer, key.fingerprint)
        return paramiko.AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        if not self.ssh.allow_passwords:
            log.info("event=ssh-password-refused user=%s addr=%s reason=passwords-off", username, self.peer)
            return paramiko.AUTH_FAILED
        try:
            self.ssh.sessions.authenticate(username, password, Identity(via="ssh", address=self.peer))
        except XenAPIError as e:          # wrong, or throttled: the same rules as over the API
            self.ssh.audit.record(user=username, via="ssh", address=self.peer, method=stream.PASSWORD_LOGIN,
                                  outcome=e.code)
            return paramiko.AUTH_FAILED
        self.login_method = stream.PASSWORD_LOGIN
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        return self._start(channel, command.decode("utf-8", "replace"))

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        return self._start(channel, None)  # no command: the stream, as with OpenSSH's forced command

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        return name == SUBSYSTEM and self._start(channel, None)

    def _start(self, channel: paramiko.Channel, command: str | None) -> bool:
        transport = channel.get_transport()
        user = transport.get_username() if transport.is_authenticated() else None   # the name that logged in
        if user is None:
            return False
        threading.Thread(target=self.ssh.serve_channel,
                         args=(channel, user, self.peer, command, self.login_method),
                         name=f"ssh-chan-{next(self._channels)}", daemon=True).start()
        return True
