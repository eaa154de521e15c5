import contextlib
import http.client
import inspect
import logging
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import xmlrpc.client
from pathlib import Path

import pytest

from xenapi.config import Config, load
from xenapi.transport import http as http_transport
from xenapi.transport.http import HTTPServer, Request, Response
from xenapi.transport.slots import Slots, source_of
from xenapi.wire import Call, Failure, Success, WireError
from xenapi.wire import xmlrpc as codec


def echo(request: Request) -> Response:
    return Response(200, "text/plain", request.body,
                    [("X-Method", request.method), ("X-Path", request.path),
                     ("X-Query", request.query), ("X-Peer", str(request.peer))])


@contextlib.contextmanager
def serving(handler=echo, listen=("127.0.0.1", 0), **options):
    server = HTTPServer(listen, handler, **options)
    server.start()
    try:
        yield server
    finally:
        server.shutdown()


def connect(server, source: str | None = None) -> socket.socket:
    """A client socket to ``server``, from the loopback address ``source`` if given (all of
    127/8 answers on Linux, so 127.0.0.2 is a second client address)."""
    if isinstance(server.address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source:
            sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(server.address)
    return sock


def served_eventually(server, source: str, within: float = 10.0) -> bool:
    """Whether a request from ``source`` gets a 200 before ``within`` s (a closed connection's
    slot comes back once its thread has seen the close)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with connect(server, source) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(post(b"again"))
                if read_response(sock).status == 200:
                    return True
        time.sleep(0.05)
    return False


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def read_response(sock: socket.socket) -> http.client.HTTPResponse:
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response


def post(body: bytes, path: str = "/", extra: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
            + extra + b"\r\n" + body)


# -- the happy path ----------------------------------------------------------------------------

def test_keep_alive_serves_several_requests_on_one_connection():
    peers = []

    def handler(request):
        peers.append(request.peer)
        return echo(request)

    with serving(handler) as server:
        connection = http.client.HTTPConnection(*server.address, timeout=5)
        for i in range(5):
            connection.request("POST", f"/RPC2?n={i}", body=f"call {i}".encode())
            response = connection.getresponse()
            assert response.status == 200
            assert response.read() == f"call {i}".encode()
            assert response.getheader("X-Path") == "/RPC2"
            assert response.getheader("X-Query") == f"n={i}"
            assert response.getheader("Content-Length") == str(len(f"call {i}"))
            assert response.getheader("Date")
        connection.close()
    assert len(set(peers)) == 1 and len(peers) == 5


def test_xmlrpc_server_proxy_gets_xapi_envelope():
    def handler(request):
        try:
            call = codec.decode(request.body)
        except WireError as e:
            return Response(e.status_hint, "text/plain", str(e).encode())
        return Response(200, "text/xml", codec.encode(Success([call.method, *call.params])))

    with serving(handler) as server, \
            xmlrpc.client.ServerProxy("http://%s:%d" % server.address) as proxy:
        for _ in range(3):
            assert proxy.VM.get_record("OpaqueRef:s", 2**40 // 2**20) == \
                {"Status": "Success", "Value": ["VM.get_record", "OpaqueRef:s", "1048576"]}


def test_xenapi_session_logs_in_calls_and_sees_failures():
    import XenAPI
    calls = []

    def handler(request):
        call = codec.decode(request.body)
        calls.append(call)
        if call.method == "session.login_with_password":
            outcome = Success("OpaqueRef:session")
        elif call.method == "VM.get_power_state":
            outcome = Failure(["HANDLE_INVALID", "VM", call.params[1]])
        elif call.method == "session.logout":
            outcome = Success(None)
        else:
            outcome = Success(["OpaqueRef:vm"])
        return Response(200, "text/xml", codec.encode(outcome))

    with serving(handler) as server:
        session = XenAPI.Session("http://%s:%d" % server.address)
        session.xenapi.login_with_password("root", "pw", "1.0", "test")
        assert session.xenapi.VM.get_all() == ["OpaqueRef:vm"]
        with pytest.raises(XenAPI.Failure) as raised:
            session.xenapi.VM.get_power_state("OpaqueRef:gone")
        session.xenapi.session.logout()
        session("close")()
    assert raised.value.details == ["HANDLE_INVALID", "VM", "OpaqueRef:gone"]
    assert calls[1] == Call("VM.get_all", ("OpaqueRef:session",))
    assert calls[-1] == Call("session.logout", ("OpaqueRef:session",))


def test_pipelined_requests_are_answered_in_order():
    with serving() as server, connect(server) as sock:
        sock.sendall(post(b"one") + post(b"two") + post(b"three", extra=b"Connection: close\r\n"))
        replies = read_until_closed(sock)
    assert replies.count(b"HTTP/1.1 200 OK") == 3
    assert replies.index(b"one") < replies.index(b"two") < replies.index(b"three")


def test_chunked_request_body_is_reassembled():
    with serving() as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.read() == b"hello world"


def test_expect_100_continue_gets_interim_response_before_body():
    with serving() as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"body")
        response = read_response(sock)
        assert response.status == 200


def test_head_response_has_length_but_no_body():
    with serving() as server, connect(server) as sock:
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                     b"Connection: close\r\n\r\nabc")
        reply = read_until_closed(sock)
    assert b"Content-Length: 3\r\n" in reply
    assert reply.endswith(b"\r\n\r\n")


# -- connection management ---------------------------------------------------------------------

def test_connection_close_header_closes_after_response():
    with serving() as server, connect(server) as sock:
        sock.sendall(post(b"x", extra=b"Connection: close\r\n"))
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 200 OK") and b"Connection: close\r\n" in reply


def test_http10_without_keep_alive_closes():
    with serving() as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.0\r\nContent-Length: 1\r\n\r\nx")
        assert read_until_closed(sock).endswith(b"\r\n\r\nx")


def test_http10_keep_alive_stays_open():
    with serving() as server, connect(server) as sock:
        for _ in range(2):
            sock.sendall(b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx")
            response = read_response(sock)
            assert response.getheader("Connection") == "keep-alive"


def test_concurrent_slow_request_does_not_block_another_connection():
    release = threading.Event()

    def handler(request):
        if request.path == "/slow":
            release.wait(10)
        return echo(request)

    with serving(handler) as server:
        slow = connect(server)
        slow.sendall(post(b"slow", "/slow"))
        fast = http.client.HTTPConnection(*server.address, timeout=5)
        fast.request("POST", "/fast", body=b"fast")
        assert fast.getresponse().read() == b"fast"
        release.set()
        assert read_response(slow).status == 200
        slow.close()
        fast.close()


def test_connections_over_limit_get_503():
    with serving(max_connections=1) as server, connect(server) as first:
        first.sendall(post(b"a"))
        assert read_response(first).status == 200       # the first connection is counted
        with connect(server) as second:
            assert read_until_closed(second).startswith(b"HTTP/1.1 503 ")


def test_connections_past_a_sources_share_get_503_while_another_source_is_served():
    with serving(max_connections=10, max_connections_per_source=3) as server:
        held = [connect(server, source="127.0.0.1") for _ in range(3)]
        for sock in held:
            sock.sendall(b"POST / HTTP/1.1\r\nHo")          # half a head: each holds its slot
        with connect(server, source="127.0.0.1") as over:
            assert read_until_closed(over).startswith(b"HTTP/1.1 503 ")
        with connect(server, source="127.0.0.2") as other:
            other.sendall(post(b"served"))
            assert read_response(other).status == 200
        for sock in held:
            sock.close()
        assert served_eventually(server, "127.0.0.1")       # the slots come back with the close


def test_unix_socket_connections_count_only_towards_the_cap(socket_path):
    with serving(listen=socket_path, max_connections=3, max_connections_per_source=1) as server:
        socks = [connect(server) for _ in range(3)]
        for sock in socks:
            sock.sendall(post(b"local"))
            assert read_response(sock).status == 200
        with connect(server) as fourth:
            assert read_until_closed(fourth).startswith(b"HTTP/1.1 503 ")
        for sock in socks:
            sock.close()


def test_refusals_in_a_burst_are_logged_once(caplog):
    with serving(max_connections=10, max_connections_per_source=1) as server, connect(server) as holder:
        holder.sendall(post(b"x"))
        read_response(holder)
        for _ in range(5):
            with connect(server) as over:
                assert read_until_closed(over).startswith(b"HTTP/1.1 503 ")
    refusals = [r for r in caplog.records if "refused connection" in r.getMessage()]
    assert len(refusals) == 1 and "max_connections_per_source=1" in refusals[0].getMessage()


@pytest.mark.parametrize("host, source", [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("fe80::1%eth0", "fe80::/64"),
], ids=["ipv4", "ipv4_mapped", "ipv6", "ipv6_same_64", "ipv6_zone"])
def test_a_source_is_an_ipv4_address_or_an_ipv6_64(host, source):
    assert source_of(host) == source


def test_slots_refuse_past_the_share_and_the_cap_and_come_back():
    slots = Slots(total=3, per_source=2)
    assert slots.take("a") is None and slots.take("a") is None
    assert slots.take("a") == "max_connections_per_source=2"
    assert slots.take(None) is None                      # no address: the cap only
    assert slots.take("b") == "max_connections=3"
    slots.give_back("a")
    assert slots.held_by("a") == 1 and slots.take("b") is None


# -- time limits: receiving a request is bounded, answering it is not ---------------------------

def test_a_half_sent_head_gets_408_and_close_after_the_header_timeout():
    with serving(header_timeout=0.3) as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le")
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 408 ") and b"Connection: close\r\n" in reply


def test_a_head_trickled_byte_by_byte_is_cut_at_the_header_timeout_all_the_same():
    trickle = b"POST / HTTP/1.1\r\nX-Slow: " + b"a" * 200             # 20 s at one byte per 0.1 s
    with serving(header_timeout=0.5) as server, connect(server) as sock:
        stop = threading.Event()

        def drip():
            for byte in trickle:
                if stop.wait(0.1):
                    return
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    return
        dripper = threading.Thread(target=drip)
        dripper.start()
        try:
            reply = read_until_closed(sock)
            assert dripper.is_alive()                    # cut long before the trickle's end
        finally:
            stop.set()
            dripper.join()
    assert reply.startswith(b"HTTP/1.1 408 ")


def test_a_slow_body_gets_408_and_close_after_the_body_timeout():
    with serving(body_timeout=0.3) as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_a_slow_chunked_body_gets_408_too():
    with serving(body_timeout=0.3) as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_a_silent_new_connection_is_closed_without_a_word_after_the_header_timeout():
    with serving(header_timeout=0.2) as server, connect(server) as sock:
        assert read_until_closed(sock) == b""


def test_an_idle_keep_alive_connection_is_closed_without_a_word_after_the_keepalive_timeout():
    with serving(keepalive_timeout=0.3, header_timeout=30) as server, connect(server) as sock:
        sock.sendall(post(b"first"))
        assert read_response(sock).status == 200
        assert read_until_closed(sock) == b""            # no 408 that could cross a new request


def test_the_keepalive_timeout_ends_at_the_first_byte_and_the_header_timeout_takes_over():
    with serving(keepalive_timeout=0.2, header_timeout=30) as server, connect(server) as sock:
        sock.sendall(post(b"first"))
        read_response(sock)
        sock.sendall(b"POST / HTTP/1.1\r\n")            # the next request begins ...
        time.sleep(0.6)                                  # ... and takes longer than keep-alive allows
        sock.sendall(b"Content-Length: 6\r\n\r\nsecond")
        response = read_response(sock)
    assert response.status == 200


def test_a_handler_slower_than_every_limit_still_answers():
    def slow(request):
        time.sleep(1.0)                                  # an event.from long poll, shortened
        return echo(request)

    with serving(slow, header_timeout=0.2, body_timeout=0.2, keepalive_timeout=0.2) as server, \
            connect(server) as sock:
        sock.sendall(post(b"late but whole"))
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200 and response.read() == b"late but whole"


def test_a_client_that_stops_reading_its_response_is_dropped_after_the_send_stall(monkeypatch):
    monkeypatch.setattr(http_transport, "_SEND_STALL_SECONDS", 0.3)
    big = b"x" * (64 * 1024 * 1024)                      # far more than any socket buffers

    def large(request):
        return Response(200, "application/octet-stream", big)

    with serving(large, header_timeout=0.2, body_timeout=0.2, keepalive_timeout=0.2) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(server.address)
        with sock:
            sock.sendall(post(b""))                      # and never reads the answer
            deadline = time.monotonic() + 20
            while server._connections and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not server._connections               # the server let go of it


def test_an_upgraded_connection_idle_past_every_limit_stays_open():
    def upgrading(request: Request) -> Response:
        def echo_lines(sock: socket.socket, early: bytes) -> None:
            while data := sock.recv(100):
                sock.sendall(data.upper())
        return Response(101, "", b"", [("Upgrade", "shout"), ("Connection", "Upgrade")], upgrade=echo_lines)

    with serving(upgrading, header_timeout=0.2, body_timeout=0.2, keepalive_timeout=0.2) as server, \
            connect(server) as sock:
        sock.sendall(post(b"", extra=b"Upgrade: shout\r\nConnection: Upgrade\r\n"))
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101 ")
        time.sleep(0.8)                                  # idle four times the limits
        sock.sendall(b"still there")
        assert sock.recv(100) == b"STILL THERE"


def test_a_tls_client_that_never_finishes_its_handshake_is_closed_after_the_header_timeout(tls_context):
    with serving(ssl_context=tls_context, header_timeout=0.3) as server, connect(server) as sock:
        sock.sendall(b"\x16\x03\x01")                    # the start of a ClientHello, and no more
        assert read_until_closed(sock) == b""


def test_the_servers_defaults_are_the_configs():
    defaults = {name: p.default for name, p in inspect.signature(HTTPServer).parameters.items()}
    config = Config()
    assert {name: defaults[name] for name in config.http_limits()} == \
        {**config.http_limits(), "max_connections_per_source": None}
    assert config.max_connections_per_source == config.max_connections // 4


def test_the_shipped_xenapi_conf_states_the_limits_at_their_defaults():
    shipped = load(str(Path(__file__).parents[1] / "xenapi.conf"))
    assert shipped.http_limits() == Config().http_limits()


@pytest.mark.parametrize("setting", ["header_timeout", "body_timeout", "keepalive_timeout"])
def test_a_time_limit_of_zero_is_refused_at_load(tmp_path, setting):
    conf = tmp_path / "xenapi.conf"
    conf.write_text(f"[server]\n{setting} = 0\n")
    with pytest.raises(ValueError, match=f"{setting} = '0' must be above 0"):
        load(str(conf))


def test_shutdown_closes_idle_keep_alive_connections():
    earlier = set(threading.enumerate())     # other tests' servers may still finish long polls
    server = HTTPServer(("127.0.0.1", 0), echo)
    server.start()
    sock = connect(server)
    sock.sendall(post(b"x"))
    read_response(sock)
    server.shutdown(timeout=2)
    assert read_until_closed(sock) == b""
    assert not [t for t in set(threading.enumerate()) - earlier if t.name.startswith("http-")]
    sock.close()


def test_connection_threads_are_named():
    names = []

    def handler(request):
        names.append(threading.current_thread().name)
        return echo(request)

    with serving(handler) as server, connect(server) as sock:
        sock.sendall(post(b"x"))
        read_response(sock)
    assert names[0].startswith("http-") and names[0] != "http-accept"


# -- refusals ----------------------------------------------------------------------------------

def test_oversized_body_gets_413_before_body_is_sent():
    with serving(max_body_bytes=1000) as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 413 ")


def test_oversized_body_sent_in_full_still_gets_413():
    with serving(max_body_bytes=1000) as server:
        connection = http.client.HTTPConnection(*server.address, timeout=5)
        connection.request("POST", "/", body=b"x" * 400_000)
        assert connection.getresponse().status == 413
        connection.close()


def test_oversized_chunked_body_gets_413():
    with serving(max_body_bytes=10) as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"20\r\n" + b"x" * 32 + b"\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize("head", [
    b"GARBAGE\r\n\r\n",
    b"POST /\r\n\r\n",
    b"POST / HTTP/2.0\r\n\r\n",
    b"PO ST / HTTP/1.1\r\n\r\n",
    b"POST / HTTP/1.1\r\nno colon here\r\n\r\n",
    b"POST / HTTP/1.1\r\nBad Name: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    b"POST / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /\xc3\xa9 HTTP/1.1\r\n\r\n",
], ids=["garbage", "no_version", "http2", "space_in_method", "no_colon", "space_in_name",
        "obs_fold", "nul_in_value", "negative_length", "conflicting_lengths", "cl_and_te",
        "bad_chunk_size", "non_ascii_target"])
def test_malformed_request_gets_400_and_close(head):
    with serving() as server, connect(server) as sock:
        sock.sendall(head)
        assert read_until_closed(sock).startswith(b"HTTP/1.1 400 ")


def test_unknown_transfer_encoding_gets_501():
    with serving() as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 501 ")


def test_oversized_header_gets_431():
    with serving(max_header_bytes=1024) as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 431 ")


def test_handler_exception_gives_500_without_traceback_to_client(caplog):
    def handler(request):
        raise RuntimeError("secret detail")

    with serving(handler) as server, connect(server) as sock:
        sock.sendall(post(b"x"))
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        assert response.status == 500
        sock.sendall(post(b"again"))                     # the connection survives
        assert read_response(sock).status == 500
    assert b"secret" not in body and b"Traceback" not in body
    assert "secret detail" in caplog.text and "Traceback" in caplog.text


def test_handler_header_with_newline_gives_500():
    def handler(request):
        return Response(200, "text/plain", b"", [("X-Evil", "a\r\nSet-Cookie: x")])

    with serving(handler) as server, connect(server) as sock:
        sock.sendall(post(b""))
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 500 ") and b"Set-Cookie" not in reply


@pytest.mark.parametrize("partial", [
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part of the body",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",
], ids=["mid_body", "mid_header", "mid_chunk"])
def test_disconnect_mid_request_ends_quietly_and_server_keeps_serving(partial, caplog):
    caplog.set_level(logging.DEBUG, logger="xenapi.transport.http")
    with serving() as server:
        with connect(server) as sock:
            sock.sendall(partial)
        connection = http.client.HTTPConnection(*server.address, timeout=5)
        connection.request("POST", "/", body=b"after")
        assert connection.getresponse().read() == b"after"
        connection.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- unix socket -------------------------------------------------------------------------------

@pytest.fixture
def socket_path(tmp_path):
    return str(tmp_path / "xapi")


def test_unix_socket_serves_and_reports_peer_unix(socket_path):
    with serving(listen=socket_path) as server, connect(server) as sock:
        assert server.address == socket_path
        sock.sendall(post(b"local", extra=b"Connection: close\r\n"))
        reply = read_until_closed(sock)
    assert b"X-Peer: unix\r\n" in reply and reply.endswith(b"local")
    assert not os.path.exists(socket_path)


def test_unix_socket_replaces_stale_socket_file(socket_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(socket_path)
    stale.close()                                        # the file stays, nobody listens
    with serving(listen=socket_path) as server, connect(server) as sock:
        sock.sendall(post(b"ok"))
        assert read_response(sock).status == 200


def test_unix_socket_refuses_path_of_live_server(socket_path):
    with serving(listen=socket_path):
        with pytest.raises(OSError):
            HTTPServer(socket_path, echo)


def test_unix_socket_refuses_to_replace_regular_file(socket_path):
    open(socket_path, "w").close()
    with pytest.raises(FileExistsError):
        HTTPServer(socket_path, echo)


def test_port_zero_reports_bound_port():
    with serving() as server:
        host, port = server.address
        assert host == "127.0.0.1" and port > 0


# -- TLS ---------------------------------------------------------------------------------------

@pytest.fixture
def tls_context(tmp_path):
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test certificate: run scripts/setup.sh")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def test_tls_connection_is_served_with_scheme_https(tls_context):
    schemes = []

    def handler(request):
        schemes.append(request.scheme)
        return echo(request)

    with serving(handler, ssl_context=tls_context) as server:
        client = ssl._create_unverified_context()
        connection = http.client.HTTPSConnection(*server.address, timeout=5, context=client)
        for _ in range(2):
            connection.request("POST", "/", body=b"secure")
            assert connection.getresponse().read() == b"secure"
        connection.close()
    assert schemes == ["https", "https"]


def test_plain_http_to_tls_port_ends_quietly(tls_context, caplog):
    with serving(ssl_context=tls_context) as server:
        with connect(server) as sock, contextlib.suppress(ConnectionResetError):
            sock.sendall(post(b"x"))
            assert not read_until_closed(sock).startswith(b"HTTP/")
        client = ssl._create_unverified_context()
        connection = http.client.HTTPSConnection(*server.address, timeout=5, context=client)
        connection.request("POST", "/", body=b"still up")
        assert connection.getresponse().read() == b"still up"
        connection.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- switching protocols -----------------------------------------------------------------------

def test_an_upgraded_connection_belongs_to_the_handler_and_its_101_has_no_body_headers():
    def upgrading(request: Request) -> Response:
        def echo_upper(sock: socket.socket, early: bytes) -> None:
            data = early or sock.recv(100)
            sock.sendall(data.upper())
        return Response(101, "", b"", [("Upgrade", "shout"), ("Connection", "Upgrade")], upgrade=echo_upper)

    with serving(upgrading) as server, connect(server) as sock:
        sock.sendall(post(b"", extra=b"Upgrade: shout\r\nConnection: Upgrade\r\n") + b"hello")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"Content-Length" not in head and b"Content-Type" not in head
        assert (rest or sock.recv(100)) == b"HELLO"
        assert read_until_closed(sock) == b""        # the handler returned: the server closes
