"""More doors onto a running test server (tests/conftest.py's ``start_server``): HTTPS with the
server's self-signed pair, HTTP on a unix socket, and the built-in SSH server with a registered
key, each a real listener in front of the same server."""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.conftest import Running
from xenapi import tls
from xenapi.cli import http_api, ssh_server
from xenapi.config import Config
from xenapi.transport.http import HTTPServer
from xenapi.transport.ssh import SSHServer, host_key


@dataclass
class Door:
    url: str
    listener: HTTPServer | SSHServer | None = None   # None: the running server's own HTTP listener
    cert: Path | None = None                 # the certificate an https door presents
    options: dict = field(default_factory=dict)   # what xenapi.client.Session needs to come in
    directory: Path | None = None            # made for this door, removed with it

    def __enter__(self) -> "Door":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def kind(self) -> str:
        return self.url.split(":", 1)[0]

    def close(self) -> None:
        if self.listener is not None:
            self.listener.shutdown()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def https_door(running: Running, state: Path) -> Door:
    """An HTTPS listener with the pair ``tls_self_signed`` makes (or reuses) under ``state``."""
    context = tls.context_for(Config(state=str(state), tls_self_signed=True))
    listener = HTTPServer(("127.0.0.1", 0), http_api(running.server), ssl_context=context)
    listener.start()
    host, port = listener.address
    return Door(f"https://{host}:{port}", listener, state / "tls" / tls.CERT_NAME, {"ignore_ssl": True})


def unix_door(running: Running) -> Door:
    """HTTP on a unix socket in a new short-named directory (pytest's paths can pass the
    108-byte limit of a socket path)."""
    directory = Path(tempfile.mkdtemp(prefix="xenapi-"))
    path = directory / "xenapi.sock"
    listener = HTTPServer(str(path), http_api(running.server))
    listener.start()
    return Door(f"unix://{path}", listener, directory=directory)


def new_key(path: Path) -> str:
    """An Ed25519 key pair in OpenSSH format at ``path``; returns the public key line."""
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{public.decode()} {path.name}@test"


def ssh_door(running: Running, directory: Path, user: str = "root", listen: tuple = ("127.0.0.1", 0)) -> Door:
    """The built-in SSH server, a new key registered to ``user``, and a known_hosts file that
    trusts the server's host key (made once in ``directory``)."""
    directory.mkdir(exist_ok=True)
    host = host_key(str(directory / "ssh_host_key"))
    listener = ssh_server(running.server, listen, host)
    listener.start()
    address, port = listener.address
    key = directory / f"id_{user}"
    if not key.exists():
        running.server.keys.add(user, new_key(key))
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(f"[{address}]:{port} {host.get_name()} {host.get_base64()}\n")
    return Door(f"ssh://{user}@{address}:{port}", listener,
                options={"key_filename": str(key), "known_hosts": str(known_hosts)})


def open_door(kind: str, running: Running, tmp_path: Path, user: str = "root") -> Door:
    """A door of ``kind`` (http, https, unix, ssh); ``user``: whose key an ssh door takes."""
    if kind == "http":
        return Door(running.url)
    if kind == "https":
        return https_door(running, tmp_path / "state")
    if kind == "unix":
        return unix_door(running)
    if kind == "ssh":
        return ssh_door(running, tmp_path / f"ssh-{user}", user)
    raise ValueError(kind)
