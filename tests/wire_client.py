"""Raw HTTP to a server under test, for the suites that assert what is on the wire (bytes,
statuses, envelopes) rather than what a client library makes of it.

Every body received passes ``inspect`` (by default: no traceback, no local file's content), so no
test can forget to check that a response leaks nothing.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import socket
import xmlrpc.client
from pathlib import Path
from urllib.parse import urlsplit

from tests.conftest import ADMIN_PASSWORD

_PASSWD = Path("/etc/passwd").read_text() if Path("/etc/passwd").exists() else ""
PASSWD_LINES = [line.encode() for line in _PASSWD.splitlines() if len(line) > 8]


def clean(body: bytes) -> None:
    """What no response may ever contain: a traceback or a local file's content."""
    assert b"Traceback" not in body, body[:500]
    assert b'File "' not in body, body[:500]
    for line in PASSWD_LINES:
        assert line not in body, "a local file leaked into a response"


class Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")

    def xml(self):
        (value,), _ = xmlrpc.client.loads(self.body)
        return value

    def envelope(self) -> dict:
        assert self.status == 200, (self.status, self.body)
        return self.xml()

    def json(self):
        assert self.status == 200, (self.status, self.body)
        return json.loads(self.body)


class Wire:
    """One new connection per call unless given one."""

    def __init__(self, running):
        parts = urlsplit(running.url)
        self.host, self.port = parts.hostname, parts.port
        self.running = running

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=15)

    def raw_socket(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=5)

    def post(self, path: str, body: bytes, content_type: str = "text/xml", conn=None) -> Reply:
        own = conn is None
        conn = conn or self.connect()
        try:
            conn.request("POST", path, body, {"Content-Type": content_type})
            resp = conn.getresponse()
            reply = Reply(resp.status, resp.headers, resp.read())
        finally:
            if own:
                conn.close()
        clean(reply.body)
        return reply

    def xml(self, method: str, *params, path: str = "/", conn=None) -> Reply:
        body = xmlrpc.client.dumps(params, method, allow_none=True).encode()
        return self.post(path, body, conn=conn)

    def json(self, method: str, params: list, *, call_id=1, version: str | None = "2.0", conn=None) -> Reply:
        doc = {"method": method, "params": params, "id": call_id}
        if version:
            doc["jsonrpc"] = version
        return self.post("/jsonrpc", json.dumps(doc).encode(), "application/json", conn=conn)

    # -- conveniences ------------------------------------------------------------------------
    def value(self, method: str, *params):
        return ok(self.xml(method, *params))

    def error(self, method: str, *params) -> list[str]:
        return failure(self.xml(method, *params))

    def json_error(self, method: str, params) -> list[str]:
        reply = self.json(method, params).json()
        assert "error" in reply, reply
        return [reply["error"]["message"], *reply["error"].get("data", [])]

    def login(self) -> str:
        return self.value("session.login_with_password", "root", ADMIN_PASSWORD, "2.21", "pytest")

    def assert_serving(self) -> None:
        """A good call on a fresh connection, over both protocols."""
        session = self.login()
        assert self.value("VM.get_all", session)
        assert self.json("VM.get_all", [session]).json()["result"]

    def vm(self, session: str, power_state: str) -> str:
        for ref, rec in self.value("VM.get_all_records", session).items():
            if not rec["is_control_domain"] and rec["power_state"] == power_state:
                return ref
        raise LookupError(power_state)


def ok(reply: Reply):
    envelope = reply.envelope()
    assert envelope["Status"] == "Success", envelope
    return envelope["Value"]


def failure(reply: Reply) -> list[str]:
    envelope = reply.envelope()
    assert envelope["Status"] == "Failure", envelope
    return envelope["ErrorDescription"]


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset ends it too)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)
