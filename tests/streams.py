"""Helpers for the stdio and SSH suites: request files, response parsing, a server with a unix socket."""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import Running, start_server, stop_server
from xenapi.cli import http_api
from xenapi.transport.http import HTTPServer

XENAPI = str(Path(sys.executable).parent / "xenapi")     # the installed console script, as sshd runs it


def xenapi_cli(state: str, *args: str, data: str = "") -> subprocess.CompletedProcess:
    """The real `xenapi` command on a state directory (as an administrator runs it, server up or not)."""
    return subprocess.run([XENAPI, *args, "--state", state], input=data, capture_output=True, text=True,
                          timeout=60)


def xenapi_ok(state: str, *args: str, data: str = "") -> str:
    """``xenapi_cli`` that must succeed; its stdout."""
    result = xenapi_cli(state, *args, data=data)
    assert result.returncode == 0, result.stderr
    return result.stdout
END = b"</methodResponse>"


def call(method: str, *params) -> bytes:
    """One XML-RPC methodCall document, as xmlrpc.client writes it (declaration, newlines)."""
    return xmlrpc.client.dumps(params, method).encode()


def jcall(method: str, *params, id=1, v2=True) -> bytes:
    doc = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": id} if v2 else \
          {"method": method, "params": list(params), "id": id}
    return json.dumps(doc).encode() + b"\n"


def responses(out: bytes) -> list[dict]:
    """Every XML-RPC response of a stream's output, which must hold nothing else."""
    found = []
    while out:
        end = out.index(END) + len(END)
        assert out[end:end + 1] == b"\n", out[end:end + 20]
        (value,), _ = xmlrpc.client.loads(out[:end].decode())
        found.append(value)
        out = out[end + 1:]
    return found


def value(response: dict):
    assert response["Status"] == "Success", response
    return response["Value"]


def error(response: dict) -> list[str]:
    assert response["Status"] == "Failure", response
    return response["ErrorDescription"]


class Stream:
    """A stream process driven one request at a time: each answer must come before the next request."""

    def __init__(self, argv: list[str], env: dict | None = None):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env)
        self._out = b""

    def ask(self, doc: bytes, timeout: float = 30.0) -> dict:
        self.proc.stdin.write(doc)
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while END + b"\n" not in self._out:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            data = os.read(self.proc.stdout.fileno(), 65536) if ready else b""
            if not data:
                raise AssertionError(f"no response; stderr: {self.close_quietly()!r}")
            self._out += data
        end = self._out.index(END) + len(END) + 1
        (answer,) = responses(self._out[:end])
        self._out = self._out[end:]
        return answer

    def close(self) -> tuple[int, bytes, bytes]:
        """(exit status, what stdout still held, stderr) after the end of input."""
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, self._out + out, err

    def close_quietly(self) -> bytes:
        self.proc.kill()
        return self.proc.communicate()[1]


@dataclass
class Served:
    running: Running
    unix: HTTPServer
    socket: str

    @property
    def server(self):
        return self.running.server

    def stdio(self, data: bytes, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run the real ``xenapi stdio`` against this server."""
        return subprocess.run([XENAPI, "stdio", "--unix-socket", self.socket, *args], input=data,
                              capture_output=True, timeout=60, env=env)

    def stream(self, *args: str, env: dict | None = None) -> Stream:
        return Stream([XENAPI, "stdio", "--unix-socket", self.socket, *args], env)


def serve_with_socket(tmp_path: Path, **settings) -> Served:
    running = start_server(tmp_path, **settings)
    # a short directory: unix socket paths are limited to 107 bytes, pytest's tmp_path can be longer
    directory = tempfile.mkdtemp(prefix="xenapi-")
    path = f"{directory}/xenapi.sock"
    unix = HTTPServer(path, http_api(running.server))
    unix.start()
    running.add_user("alice", "read-only", "alice-pw")
    running.add_user("bob", "vm-operator", "bob-pw")
    return Served(running, unix, path)


def stop_served(served: Served) -> None:
    served.unix.shutdown()
    stop_server(served.running)
    shutil.rmtree(Path(served.socket).parent, ignore_errors=True)


def guest(served: Served) -> str:
    """A halted guest VM's ref."""
    for ref, rec in served.server.store.records("VM").items():
        if not rec["is_control_domain"] and rec["power_state"] == "Halted":
            return ref
    raise LookupError("no halted guest")
