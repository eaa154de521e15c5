"""ssh:// for :mod:`xenapi.client`: the bare XML stream (docs/ssh.md) over SSH channels.

One SSH connection per Session, made at the first call; each client connection is a channel
running ``xenapi`` (the built-in server's stream, or OpenSSH's forced ``xenapi stdio --user``),
kept open for the session's life.  The key logs in: the stream's own session is ``""`` and needs
no password.  Host keys are checked against ``known_hosts`` (default ``~/.ssh/known_hosts``)
unless ``verify_host_key=False``.
"""
from __future__ import annotations

import getpass
import os
import threading

import paramiko

from xenapi.client.connections import Connector, StreamConnection

COMMAND = "xenapi"
CONNECT_SECONDS = 30.0


class SSHConnector(Connector):
    stream_session = ""                      # docs/ssh.md: "" is the stream's session

    def __init__(self, host: str, port: int, user: str | None, *, key_filename: str | None = None,
                 known_hosts: str | None = None, verify_host_key: bool = True):
        self.host, self.port = host, port
        self.user = user or getpass.getuser()
        self.key_filename = os.path.expanduser(key_filename) if key_filename else None
        self.known_hosts = os.path.expanduser(known_hosts) if known_hosts else None
        self.verify_host_key = verify_host_key
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    def open(self, timeout: float | None) -> StreamConnection:
        for attempt in (1, 2):
            transport = self._transport()
            try:
                channel = transport.open_session(timeout=CONNECT_SECONDS)
                break
            except (paramiko.SSHException, EOFError, OSError):
                if attempt == 2:            # a connection the server has just dropped: one more
                    raise
                self._forget(transport)
        channel.settimeout(timeout)
        channel.exec_command(COMMAND)
        return StreamConnection(channel.sendall, channel.recv, channel.close,
                                alive=lambda: not (channel.closed or channel.eof_received),
                                diagnostics=lambda: _stderr(channel))

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _forget(self, transport: paramiko.Transport) -> None:
        with self._lock:
            if self._client is not None and self._client.get_transport() is transport:
                self._client.close()
                self._client = None

    def _transport(self) -> paramiko.Transport:
        with self._lock:
            transport = self._client.get_transport() if self._client is not None else None
            if transport is None or not transport.is_active():
                if self._client is not None:
                    self._client.close()
                self._client = self._connect()
                transport = self._client.get_transport()
            return transport

    def _connect(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        if self.verify_host_key:
            if self.known_hosts:
                client.load_host_keys(self.known_hosts)
            else:
                client.load_system_host_keys()
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(self.host, self.port, username=self.user, key_filename=self.key_filename,
                           look_for_keys=self.key_filename is None, allow_agent=True,
                           timeout=CONNECT_SECONDS, banner_timeout=CONNECT_SECONDS, auth_timeout=CONNECT_SECONDS)
        except BaseException:
            client.close()
            raise
        return client


def _stderr(channel: paramiko.Channel) -> str:
    """What the server wrote on the channel's stderr (a refusal says why), without blocking."""
    data = b""
    while channel.recv_stderr_ready():
        data += channel.recv_stderr(4096)
    return data.decode("utf-8", "replace")
