"""Slow and idle clients against a running server: its time limits for receiving a request, and
each source address's share of the connection cap (issue 8, item 3).

Limits are a fraction of a second or a few seconds here, so nothing waits long; every wait for
the server is bounded generously, and nothing asserts how fast it is.
"""
from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import xmlrpc.client
from pathlib import Path

import pytest
import XenAPI

from tests.wire_client import read_until_closed
from tests.conftest import ADMIN_PASSWORD, node_xml
from tests.ports import free_port, wait_for_port
from tests.streams import XENAPI, Stream, call, value
from xenapi.cli import http_api
from xenapi.config import Config
from xenapi.transport.http import HTTPServer

HALF_HEAD = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Ty"
SHORT = 0.5                              # seconds: the limits of the in-process listeners below


class FromAddress(xmlrpc.client.Transport):
    """XML-RPC over HTTP from a chosen loopback address (Linux answers on all of 127/8)."""

    def __init__(self, source: str):
        super().__init__()
        self.source = source

    def make_connection(self, host):
        connection = super().make_connection(host)
        connection.source_address = (self.source, 0)
        return connection


def connect(address: tuple[str, int], source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.settimeout(30)
    sock.bind((source, 0))
    sock.connect(address)
    return sock



def xenapi_session(address: tuple[str, int], source: str) -> XenAPI.Session:
    session = XenAPI.Session("http://%s:%d" % address, transport=FromAddress(source))
    session.xenapi.login_with_password("root", ADMIN_PASSWORD, "2.21", "pytest-slow-clients")
    return session


@pytest.fixture
def listener(running):
    """``listener(**settings)``: another HTTP listener of the running server, with its limits
    taken from a Config of ``settings`` (as `xenapi serve` takes them from xenapi.conf)."""
    made = []

    def make(listen=("127.0.0.1", 0), **settings) -> HTTPServer:
        server = HTTPServer(listen, http_api(running.server), **Config(**settings).http_limits())
        server.start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.shutdown()


# -- a source's share ----------------------------------------------------------------------------

def test_slow_clients_from_one_address_hold_only_its_share_and_another_address_is_served(listener):
    door = listener(max_connections=20, max_connections_per_source=5)
    slow = [connect(door.address, "127.0.0.1") for _ in range(5)]
    try:
        for sock in slow:
            sock.sendall(HALF_HEAD)
        with connect(door.address, "127.0.0.1") as over:          # past the share
            assert read_until_closed(over).startswith(b"HTTP/1.1 503 ")
        other = xenapi_session(door.address, "127.0.0.2")
        assert other.xenapi.VM.get_all()
        other.xenapi.session.logout()
        with connect(door.address, "127.0.0.1") as still_over:    # and the share is still held
            assert read_until_closed(still_over).startswith(b"HTTP/1.1 503 ")
    finally:
        for sock in slow:
            sock.close()


# -- time limits -----------------------------------------------------------------------------------

def test_a_client_that_sends_half_its_head_is_answered_408_and_disconnected(listener):
    door = listener(header_timeout=SHORT)
    with connect(door.address) as sock:
        sock.sendall(HALF_HEAD)
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_a_client_that_sends_its_body_too_slowly_is_answered_408_and_disconnected(listener):
    door = listener(body_timeout=SHORT)
    body = call("session.login_with_password", "root", ADMIN_PASSWORD)
    with connect(door.address) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:40])
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_an_idle_keep_alive_connection_is_closed_and_the_official_client_reconnects(listener):
    door = listener(keepalive_timeout=SHORT)
    with connect(door.address) as sock:
        body = call("VM.get_all", "OpaqueRef:NULL")
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        response = http_response(sock)
        assert response.status == 200 and response.getheader("Connection") is None   # kept alive ...
        assert read_until_closed(sock) == b""                                          # ... then closed
    session = xenapi_session(door.address, "127.0.0.1")
    first = session.xenapi.VM.get_all()
    time.sleep(3 * SHORT)                # its keep-alive connection is closed meanwhile
    assert session.xenapi.VM.get_all() == first
    session.xenapi.session.logout()


def test_an_event_from_long_poll_longer_than_every_limit_gets_its_answer(listener):
    door = listener(header_timeout=SHORT, body_timeout=SHORT, keepalive_timeout=SHORT)
    session = xenapi_session(door.address, "127.0.0.1")
    token = session.xenapi.event_from(["vm"], "", 0.0)["token"]
    start = time.monotonic()
    answer = session.xenapi.event_from(["vm"], token, 4 * SHORT)   # nothing changes: held to the end
    assert time.monotonic() - start >= 3 * SHORT                    # it was held past the limits
    assert answer["events"] == [] and answer["token"]
    session.xenapi.session.logout()


def test_a_stdio_stream_idle_past_every_limit_still_answers(running, listener):
    directory = tempfile.mkdtemp(prefix="xenapi-")      # a short path: sockets allow 107 bytes
    try:
        path = f"{directory}/xenapi.sock"
        listener(path, header_timeout=SHORT, body_timeout=SHORT, keepalive_timeout=SHORT)
        running.add_user("alice", "read-only", "alice-pw")
        stream = Stream([XENAPI, "stdio", "--unix-socket", path, "--user", "alice"])
        try:
            session = value(stream.ask(call("session.login_with_password", "alice", "")))
            time.sleep(4 * SHORT)                       # idle well past every limit
            assert value(stream.ask(call("VM.get_all", session)))
            status, rest, err = stream.close()
            assert (status, rest) == (0, b""), err
        finally:
            if stream.proc.poll() is None:
                stream.close_quietly()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def http_response(sock: socket.socket) -> http.client.HTTPResponse:
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response


# -- `xenapi serve` with the limits in its xenapi.conf --------------------------------------------

def test_xenapi_serve_takes_the_limits_and_the_share_from_its_config_file(tmp_path):
    directory = Path(tempfile.mkdtemp(prefix="xenapi-"))
    (tmp_path / "node.xml").write_text(node_xml())
    conf = tmp_path / "xenapi.conf"
    port = free_port()
    conf.write_text(f"""[server]
listen = 127.0.0.1:{port}
unix_socket = {directory}/xenapi.sock
state = {tmp_path}/state
max_connections = 10
max_connections_per_source = 2
header_timeout = 2
body_timeout = 2
keepalive_timeout = 2
[libvirt]
uri = test://{tmp_path}/node.xml
""")
    log = tmp_path / "serve.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([XENAPI, "serve", "--config", str(conf)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=stderr,
                                env={**os.environ, "XENAPI_ADMIN_PASSWORD": ADMIN_PASSWORD})
    try:
        wait_for_port(port, 60, proc=proc, log=log)
        address = ("127.0.0.1", port)
        slow = [connect(address, "127.0.0.3") for _ in range(2)]   # not wait_for_port's 127.0.0.1
        for sock in slow:
            sock.sendall(HALF_HEAD)
        with connect(address, "127.0.0.3") as over:
            assert read_until_closed(over).startswith(b"HTTP/1.1 503 ")
        session = xenapi_session(address, "127.0.0.2")
        assert session.xenapi.VM.get_all()
        for sock in slow:                               # cut by the header timeout
            assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")
            sock.close()
        assert session.xenapi.VM.get_all()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)
