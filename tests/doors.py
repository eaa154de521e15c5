"""More doors onto a running test server (tests/conftest.py's ``start_server``): HTTPS with the
server's self-signed pair, and HTTP on a unix socket, each a real listener on the same Api."""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import Running
from xenapi import tls
from xenapi.api import Api
from xenapi.config import Config
from xenapi.transport.http import HTTPServer


@dataclass
class Door:
    url: str
    listener: HTTPServer | None = None       # None: the running server's own HTTP listener
    cert: Path | None = None                 # the certificate an https door presents
    options: dict = field(default_factory=dict)   # what xenapi.client.Session needs to come in
    directory: Path | None = None            # made for this door, removed with it

    def close(self) -> None:
        if self.listener is not None:
            self.listener.shutdown()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def https_door(running: Running, state: Path) -> Door:
    """An HTTPS listener with the pair ``tls_self_signed`` makes (or reuses) under ``state``."""
    context = tls.context_for(Config(state=str(state), tls_self_signed=True))
    listener = HTTPServer(("127.0.0.1", 0), Api(running.server), ssl_context=context)
    listener.start()
    host, port = listener.address
    return Door(f"https://{host}:{port}", listener, state / "tls" / tls.CERT_NAME, {"ignore_ssl": True})


def unix_door(running: Running) -> Door:
    """HTTP on a unix socket in a new short-named directory (pytest's paths can pass the
    108-byte limit of a socket path)."""
    directory = Path(tempfile.mkdtemp(prefix="xenapi-"))
    path = directory / "xenapi.sock"
    listener = HTTPServer(str(path), Api(running.server))
    listener.start()
    return Door(f"unix://{path}", listener, directory=directory)


def open_door(kind: str, running: Running, tmp_path: Path) -> Door:
    if kind == "http":
        return Door(running.url)
    if kind == "https":
        return https_door(running, tmp_path / "state")
    if kind == "unix":
        return unix_door(running)
    raise ValueError(kind)
