"""A VDI's data over HTTP: PUT /import_raw_vdi and GET /export_raw_vdi (xenapi/services/transfer.py),
and the transport's streaming path under them (xenapi/transport/http.py).

Three layers:
* the transport alone (a bare HTTPServer with a streaming route): bodies read as they arrive past
  max_body_bytes, the stall timer, streamed answers framed by length, chunks or close;
* a real server on libvirt's test driver, whose volumes hold no data: the protocol, sessions and
  roles, errors, tasks, the VDI's operation mark and the temporary volumes' cleanup;
* a real server on a real libvirtd (qemu:///system, skipped if it cannot be reached) with real
  files: the data lands (qemu-img compare), comes back byte for byte, streams in bounded memory,
  and a cut-off upload leaves no temporary volume.
"""
from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
import XenAPI

from tests.wire_client import read_until_closed
from tests.conftest import ADMIN_PASSWORD, new_vbd, new_vdi, start_server, stop_server
from xenapi.cli import http_api
from xenapi.services import transfer as transfer_module
from xenapi.transport.http import HTTPServer, Response

MiB = 1 << 20
XENAPI_CLI = str(Path(sys.executable).parent / "xenapi")


# ------------------------------------------------------------------ helpers ---

def connect(address, timeout: float = 15) -> socket.socket:
    sock = socket.create_connection(tuple(address[:2]), timeout=timeout)
    return sock



def read_response(sock: socket.socket, method: str = "GET") -> http.client.HTTPResponse:
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    return response


def wait_until(predicate, timeout: float = 15.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def target(route: str, **params) -> str:
    return f"/{route}?" + urlencode({k: v for k, v in params.items() if v is not None})


# ------------------------------------------------------------------ the transport alone ---

class Sink:
    """A streaming route that counts what it reads (and can refuse without reading)."""

    def __init__(self):
        self.received = 0
        self.closed = threading.Event()

    def streaming(self, method, path):
        if path == "/up":
            return self.upload
        if path == "/refuse":
            return lambda request, body: Response(401, "text/plain", b"no\n")
        if path.startswith("/down"):
            return self.download
        return None

    def upload(self, request, body):
        while data := body.read(1 << 18):
            self.received += len(data)
        return Response(200, "text/plain", str(self.received).encode())

    def download(self, request, body):
        sink = self
        size = int(request.query.split("=")[1]) if request.query else 3 * 100_000
        claimed = size + 10 if request.path == "/down-short" else size if request.path == "/down-length" else None

        class Chunks:
            def __iter__(self):
                left = size
                while left > 0:
                    yield b"z" * min(left, 100_000)
                    left -= 100_000

            def close(self):
                sink.closed.set()
        return Response(200, "application/octet-stream", b"", stream=Chunks(), length=claimed)


def echo(request):
    return Response(200, "text/plain", request.body)


@contextlib.contextmanager
def bare(**options):
    sink = Sink()
    server = HTTPServer(("127.0.0.1", 0), echo, streaming=sink.streaming, **options)
    server.start()
    try:
        yield server, sink
    finally:
        server.shutdown()


def test_a_streamed_body_passes_max_body_bytes_while_rpc_bodies_keep_the_limit():
    with bare(max_body_bytes=1024) as (server, sink):
        conn = http.client.HTTPConnection(*server.address, timeout=15)
        conn.request("PUT", "/up", body=b"x" * (5 * MiB))
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, str(5 * MiB).encode())
        conn.request("POST", "/", body=b"y" * 2048)              # the other routes: as before
        assert conn.getresponse().status == 413
        conn.close()


def test_a_chunked_streamed_body_is_read_and_the_connection_stays_open():
    with bare() as (server, sink), connect(server.address) as sock:
        sock.sendall(b"PUT /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n")
        response = read_response(sock)
        assert (response.status, response.read()) == (200, b"11")
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        assert read_response(sock).read() == b"ok"


def test_the_body_timeout_is_a_stall_timer_for_a_streamed_body():
    with bare(body_timeout=0.5) as (server, sink), connect(server.address) as sock:
        pieces = 12                                               # 12 x 0.15 s: well past 0.5 s in all
        sock.sendall(f"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: {pieces * 1000}\r\n\r\n".encode())
        for _ in range(pieces):
            time.sleep(0.15)
            sock.sendall(b"p" * 1000)
        response = read_response(sock)
        assert (response.status, response.read()) == (200, str(pieces * 1000).encode())
        sock.sendall(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"q" * 1000)
        started = time.monotonic()
        reply = read_until_closed(sock)                         # then nothing: 408 and close
    assert reply.startswith(b"HTTP/1.1 408 ") and b"stalled" in reply
    assert 0.4 < time.monotonic() - started < 10


def test_a_refusal_without_reading_skips_the_body_of_a_client_that_expects_100_continue():
    with bare() as (server, sink), connect(server.address) as sock:
        sock.sendall(b"PUT /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 401 ") and b"100 Continue" not in reply
    assert b"Connection: close" in reply


def test_a_small_unread_body_is_drained_and_a_big_one_closes_the_connection():
    with bare() as (server, sink), connect(server.address) as sock:
        sock.sendall(b"PUT /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789")
        response = read_response(sock)
        assert response.status == 401 and response.getheader("Connection") is None
        response.read()
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        assert read_response(sock).read() == b"ok"
    with bare() as (server, sink), connect(server.address) as sock:
        sock.sendall(b"PUT /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n" + b"x" * 1000)
        assert read_response(sock).getheader("Connection") == "close"


def test_streamed_answers_are_framed_by_length_chunks_or_close():
    with bare() as (server, sink):
        with connect(server.address) as sock:                    # HTTP/1.1: chunked, then keep-alive
            sock.sendall(b"GET /down HTTP/1.1\r\nHost: x\r\n\r\n")
            response = read_response(sock)
            assert response.getheader("Transfer-Encoding") == "chunked"
            assert response.read() == b"z" * 300_000
            sock.sendall(b"GET /down-length?n=5 HTTP/1.1\r\nHost: x\r\n\r\n")
            response = read_response(sock)
            assert (response.getheader("Content-Length"), response.read()) == ("5", b"zzzzz")
        with connect(server.address) as sock:                    # HTTP/1.0: the end is the close
            sock.sendall(b"GET /down HTTP/1.0\r\n\r\n")
            reply = read_until_closed(sock)
            assert b"Transfer-Encoding" not in reply and b"Connection: close" in reply
            assert reply.endswith(b"\r\n\r\n" + b"z" * 300_000)
        with connect(server.address) as sock:                    # HEAD: the head, and the stream closed
            sink.closed.clear()
            sock.sendall(b"HEAD /down-length?n=7 HTTP/1.1\r\nHost: x\r\n\r\n")
            response = read_response(sock, "HEAD")
            assert response.getheader("Content-Length") == "7" and response.read() == b""
            assert sink.closed.wait(5)


def test_a_stream_shorter_than_its_length_is_cut_and_closed():
    with bare() as (server, sink), connect(server.address) as sock:
        sink.closed.clear()
        sock.sendall(b"GET /down-short?n=1000 HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = read_until_closed(sock)                          # the client sees a short body
        assert b"Content-Length: 1010\r\n" in reply and reply.endswith(b"z" * 1000)
        assert sink.closed.wait(5)


def test_a_client_that_leaves_mid_answer_closes_the_stream():
    with bare() as (server, sink):
        sink.closed.clear()
        sock = connect(server.address)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /down-length?n=200000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.recv(1000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()                                             # a reset
        assert sink.closed.wait(10)


# ------------------------------------------------------------------ a server on the test driver ---

@pytest.fixture
def served(tmp_path):
    running = start_server(tmp_path)
    api = http_api(running.server)
    slow = HTTPServer(("127.0.0.1", 0), api, body_timeout=0.5)   # the same server, a short stall timer
    slow.start()
    running.slow_address = slow.address
    yield running
    slow.shutdown()
    stop_server(running)


@pytest.fixture
def admin(served):
    session = served.session()
    yield session
    with contextlib.suppress(Exception):
        session.xenapi.session.logout()


def request(running, method: str, route: str, body: bytes | None = None, headers: dict | None = None,
            **params) -> tuple[int, dict, bytes]:
    parts = urlsplit(running.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, target(route, **params), body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def pool_volumes(running, sr: str) -> set[str]:
    """The volumes libvirt lists in the SR's pool (through the server's own connection: a test
    driver's state is private to it)."""
    server = running.server
    host = server.hosts.master
    return set(server.hosts.connection(host).volume_names(server.store.get("SR", sr)["uuid"]))


def test_import_then_export_on_the_test_driver_with_a_task(served, admin):
    x = admin.xenapi
    vdi = new_vdi(admin, 4 * MiB)
    sr = x.VDI.get_SR(vdi)
    before = pool_volumes(served, sr)
    task = x.task.create("upload", "")
    status, headers, body = request(served, "PUT", "import_raw_vdi", b"d" * (3 * MiB), vdi=vdi,
                                    session_id=admin._session, task_id=task)
    assert (status, body) == (200, b"")
    assert headers["Task-Id"] == task
    rec = x.task.get_record(task)
    assert (rec["status"], rec["progress"]) == ("success", 1.0) and vdi in rec["result"]
    assert x.VDI.get_current_operations(vdi) == {}
    assert pool_volumes(served, sr) == before                     # the temporary raw volume went
    assert len(x.VDI.get_all()) == 1
    status, headers, body = request(served, "GET", "export_raw_vdi", vdi=x.VDI.get_uuid(vdi),
                                    session_id=admin._session)
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    assert body == bytes(4 * MiB)                                 # the test driver keeps no data: zeros
    assert pool_volumes(served, sr) == before


def test_a_chunked_upload_with_a_trailing_slash_as_xen_orchestra_sends_it(served, admin):
    vdi = new_vdi(admin, MiB)
    parts = urlsplit(served.url)
    with connect((parts.hostname, parts.port)) as sock:
        path = target("import_raw_vdi/", vdi=vdi, session_id=admin._session, format="raw")
        sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                     + b"10000\r\n" + b"c" * 0x10000 + b"\r\n0\r\n\r\n")
        assert read_response(sock).status == 200


def test_who_may_import_and_export(served, admin):
    vdi = new_vdi(admin, MiB)
    served.add_user("reader", "read-only")
    served.add_user("admin2", "vm-admin")
    reader = served.session("reader", "pw")
    status, headers, body = request(served, "PUT", "import_raw_vdi", b"x", vdi=vdi, session_id=reader._session)
    assert status == 403 and body.startswith(b"RBAC_PERMISSION_DENIED http/put_import_raw_vdi")
    assert request(served, "GET", "export_raw_vdi", vdi=vdi, session_id=reader._session)[0] == 200
    vm_admin = served.session("admin2", "pw")
    assert request(served, "PUT", "import_raw_vdi", b"x", vdi=vdi, session_id=vm_admin._session)[0] == 200
    # HTTP basic auth of a local user, as xapi takes it; the session_id cookie too
    import base64
    basic = {"Authorization": "Basic " + base64.b64encode(b"admin2:pw").decode()}
    assert request(served, "PUT", "import_raw_vdi", b"x", basic, vdi=vdi)[0] == 200
    cookie = {"Cookie": f"session_id={admin._session}"}
    assert request(served, "PUT", "import_raw_vdi", b"x", cookie, vdi=vdi)[0] == 200


@pytest.mark.parametrize("params", [{}, {"session_id": "OpaqueRef:nope"}])
def test_no_valid_session_gets_401_with_a_challenge(served, admin, params):
    vdi = new_vdi(admin, MiB)
    for method, route in (("PUT", "import_raw_vdi"), ("GET", "export_raw_vdi")):
        status, headers, body = request(served, method, route, b"x" if method == "PUT" else None, vdi=vdi, **params)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
        assert body.startswith(b"SESSION_INVALID")


def test_bad_requests_say_why(served, admin):
    sid = admin._session
    vdi = new_vdi(admin, MiB)
    cases = [
        (("PUT", "import_raw_vdi", b"x"), {"session_id": sid}, 400, b"vdi parameter"),
        (("PUT", "import_raw_vdi", b"x"), {"session_id": sid, "vdi": vdi, "format": "vhd"}, 400,
         b"format 'vhd' is not supported: format=raw"),
        (("GET", "export_raw_vdi", None), {"session_id": sid, "vdi": vdi, "format": "tar"}, 400, b"not supported"),
        (("PUT", "import_raw_vdi", b"x"), {"session_id": sid, "vdi": vdi, "chunked": "true"}, 400, b"chunked"),
        (("PUT", "import_raw_vdi", b"x"), {"session_id": sid, "vdi": "OpaqueRef:nope"}, 404, b"HANDLE_INVALID"),
        (("GET", "export_raw_vdi", None), {"session_id": sid, "vdi": "0" * 8 + "-0000-0000-0000-" + "0" * 12}, 404,
         b"HANDLE_INVALID"),
        (("PUT", "import_raw_vdi", b"x"), {"session_id": sid, "vdi": vdi, "task_id": "OpaqueRef:nope"}, 400,
         b"not a task"),
        (("PUT", "import_raw_vdi", b"x" * (MiB + 1)), {"session_id": sid, "vdi": vdi}, 413, b"VDI_TOO_SMALL"),
        (("PUT", "import_raw_vdi", b"not a qcow2 at all"), {"session_id": sid, "vdi": vdi, "format": "qcow2"},
         400, b"not a qcow2 image"),
        (("GET", "import_raw_vdi", None), {"session_id": sid, "vdi": vdi}, 405, b"PUT only"),
        (("PUT", "export_raw_vdi", b"x"), {"session_id": sid, "vdi": vdi}, 405, b"GET, HEAD only"),
    ]
    for (method, route, body), params, status, said in cases:
        got, headers, text = request(served, method, route, body, **params)
        assert (got, said in text) == (status, True), (method, route, params, got, text)
    assert admin.xenapi.VDI.get_current_operations(vdi) == {}


def test_a_refusal_fails_the_task_it_was_given(served, admin):
    x = admin.xenapi
    vdi = new_vdi(admin, MiB)
    task = x.task.create("upload", "")
    status, headers, _ = request(served, "PUT", "import_raw_vdi", b"x" * (2 * MiB), vdi=vdi,
                                 session_id=admin._session, task_id=task)
    assert status == 413
    assert (x.task.get_status(task), x.task.get_error_info(task)[0]) == ("failure", "VDI_TOO_SMALL")
    served.add_user("other", "vm-admin")                          # another user's task is not theirs to end
    other = served.session("other", "pw")
    mine = x.task.create("upload", "")
    status, _, body = request(served, "PUT", "import_raw_vdi", b"x", vdi=vdi, session_id=other._session,
                              task_id=mine)
    assert status == 403 and body.startswith(b"RBAC_PERMISSION_DENIED task.destroy/any")
    assert x.task.get_status(mine) == "pending"


def test_a_qcow2_with_a_backing_file_is_refused_before_a_byte_is_written(served, admin):
    import struct
    vdi = new_vdi(admin, MiB)
    header = b"QFI\xfb" + struct.pack(">IQIIQI", 3, 0x200, 10, 16, MiB, 0) + bytes(512 - 36)
    status, _, body = request(served, "PUT", "import_raw_vdi", header, vdi=vdi, session_id=admin._session,
                              format="qcow2")
    assert status == 400 and b"backing file" in body
    too_big = b"QFI\xfb" + struct.pack(">IQIIQI", 3, 0, 0, 16, 2 * MiB, 0) + bytes(512 - 36)
    status, _, body = request(served, "PUT", "import_raw_vdi", too_big, vdi=vdi, session_id=admin._session,
                              format="qcow2")
    assert status == 413 and body.startswith(b"VDI_TOO_SMALL")
    assert "xenapi_import_failed" not in admin.xenapi.VDI.get_other_config(vdi)


def test_a_vdi_in_use_gets_409(served, admin):
    x = admin.xenapi
    vdi = new_vdi(admin, MiB)
    vm = next(ref for ref, rec in x.VM.get_all_records().items()
              if rec["power_state"] == "Halted" and not rec["is_a_template"] and not rec["is_control_domain"])
    new_vbd(admin, vm, vdi)
    x.VM.start(vm, False, False)
    vbd = x.VDI.get_VBDs(vdi)[0]
    wait_until(lambda: x.VBD.get_currently_attached(vbd), what="the VBD attached")
    status, _, body = request(served, "PUT", "import_raw_vdi", b"x", vdi=vdi, session_id=admin._session)
    assert status == 409 and body == f"VDI_IN_USE {vdi} import\n".encode()
    status, _, body = request(served, "GET", "export_raw_vdi", vdi=vdi, session_id=admin._session)
    assert status == 409 and body.startswith(b"VDI_IN_USE")
    x.VM.hard_shutdown(vm)
    wait_until(lambda: not x.VBD.get_currently_attached(vbd), what="the VBD detached")
    assert request(served, "PUT", "import_raw_vdi", b"x", vdi=vdi, session_id=admin._session)[0] == 200


def slow_upload(running, address, vdi: str, session: str, size: int, sent: int, **params) -> socket.socket:
    """A PUT whose head and first ``sent`` bytes are sent; the rest is up to the caller."""
    sock = connect(address)
    path = target("import_raw_vdi", vdi=vdi, session_id=session, **params)
    sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode() + b"s" * sent)
    return sock


def test_while_an_import_runs_the_vdi_is_blocked_and_the_task_follows_it(served, admin):
    x = admin.xenapi
    vdi = new_vdi(admin, 4 * MiB)
    task = x.task.create("upload", "")
    parts = urlsplit(served.url)
    sock = slow_upload(served, (parts.hostname, parts.port), vdi, admin._session, 4 * MiB, 2 * MiB, task_id=task)
    with sock:
        wait_until(lambda: x.VDI.get_current_operations(vdi), what="the VDI marked")
        assert x.VDI.get_current_operations(vdi) == {task: "blocked"}
        assert x.VDI.get_allowed_operations(vdi) == []
        wait_until(lambda: x.task.get_progress(task) >= 0.4, what="progress")
        status, _, body = request(served, "PUT", "import_raw_vdi", b"x", vdi=vdi, session_id=admin._session)
        assert status == 409 and body.startswith(b"OTHER_OPERATION_IN_PROGRESS VDI " + vdi.encode() + b" blocked")
        with pytest.raises(XenAPI.Failure) as e:
            x.VDI.destroy(vdi)
        assert e.value.details[0] == "OTHER_OPERATION_IN_PROGRESS"
        sock.sendall(b"s" * (2 * MiB))
        assert read_response(sock, "PUT").status == 200
    assert x.task.get_status(task) == "success"
    assert x.VDI.get_current_operations(vdi) == {}
    assert "destroy" in x.VDI.get_allowed_operations(vdi)


def test_a_cancelled_task_stops_the_import(served, admin):
    x = admin.xenapi
    vdi = new_vdi(admin, 4 * MiB)
    task = x.task.create("upload", "")
    parts = urlsplit(served.url)
    with slow_upload(served, (parts.hostname, parts.port), vdi, admin._session, 4 * MiB, MiB, task_id=task) as sock:
        wait_until(lambda: x.task.get_allowed_operations(task) == ["cancel"], what="a cancellable task")
        x.task.cancel(task)
        with contextlib.suppress(OSError):                       # the server stops reading; more may bounce
            sock.sendall(b"s" * MiB)
        response = read_response(sock, "PUT")
        assert response.status == 409 and response.read().startswith(b"TASK_CANCELLED")
    assert x.task.get_status(task) == "cancelled"
    assert x.VDI.get_current_operations(vdi) == {}


@pytest.mark.parametrize("how", ["disconnect", "stall"])
def test_an_upload_cut_off_fails_its_task_and_leaves_no_temporary_volume(served, admin, how):
    x = admin.xenapi
    vdi = new_vdi(admin, 4 * MiB)                                 # qcow2: a raw body goes through a temporary volume
    sr = x.VDI.get_SR(vdi)
    before, vdis = pool_volumes(served, sr), set(x.VDI.get_all())
    task = x.task.create("upload", "")
    sock = slow_upload(served, served.slow_address, vdi, admin._session, 4 * MiB, MiB, task_id=task)
    with sock:
        wait_until(lambda: len(pool_volumes(served, sr)) > len(before), what="the temporary volume")
        temporary = (set(x.VDI.get_all()) - vdis)
        if temporary:                                             # shown meanwhile as an unmanaged, read-only VDI
            rec = x.VDI.get_record(temporary.pop())
            assert (rec["managed"], rec["read_only"]) == (False, True) and "import in progress" in rec["name_label"]
        if how == "disconnect":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        else:
            assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")
    wait_until(lambda: x.task.get_status(task) == "failure", what="the task failed")
    assert "upload ended" in " ".join(x.task.get_error_info(task))
    assert pool_volumes(served, sr) == before
    wait_until(lambda: set(x.VDI.get_all()) == vdis, what="the temporary VDI gone")
    assert x.VDI.get_current_operations(vdi) == {}
    assert "xenapi_import_failed" not in x.VDI.get_other_config(vdi)  # converted: the VDI was not touched


def test_an_export_of_a_converted_vdi_cut_off_leaves_no_temporary_volume(served, admin):
    x = admin.xenapi
    vdi = new_vdi(admin, 64 * MiB)
    sr = x.VDI.get_SR(vdi)
    before = pool_volumes(served, sr)
    task = x.task.create("download", "")
    parts = urlsplit(served.url)
    sock = connect((parts.hostname, parts.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET {target('export_raw_vdi', vdi=vdi, session_id=admin._session, task_id=task)} HTTP/1.1\r\n"
                 f"Host: x\r\n\r\n".encode())
    assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
    assert x.VDI.get_current_operations(vdi) == {task: "copy"}
    assert len(pool_volumes(served, sr)) == len(before) + 1       # raw, from the qcow2 volume
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    wait_until(lambda: x.task.get_status(task) == "failure", what="the task failed")
    assert pool_volumes(served, sr) == before
    assert x.VDI.get_current_operations(vdi) == {}


def test_head_of_an_export_says_its_length(served, admin):
    vdi = new_vdi(admin, 2 * MiB)
    status, headers, body = request(served, "HEAD", "export_raw_vdi", vdi=vdi, session_id=admin._session)
    assert (status, headers["Content-Length"], body) == (200, str(2 * MiB), b"")
    wait_until(lambda: admin.xenapi.VDI.get_current_operations(vdi) == {}, what="the mark cleared")


def test_the_cli_says_why_it_fails(served, admin, tmp_path):
    image = tmp_path / "disk.raw"
    image.write_bytes(b"r" * MiB)
    run = subprocess.run([XENAPI_CLI, "vdi", "import", "--url", served.url, "--user", "root", "--password-stdin",
                          str(image)], input="wrong\n", capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "SESSION_AUTHENTICATION_FAILED" in run.stderr and "Traceback" not in run.stderr
    vdis = set(admin.xenapi.VDI.get_all())
    run = subprocess.run([XENAPI_CLI, "vdi", "import", "--url", served.url, "--password-stdin", "--sr", "no such SR",
                          str(image)], input=f"{ADMIN_PASSWORD}\n", capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "no SR" in run.stderr
    run = subprocess.run([XENAPI_CLI, "vdi", "import", "--url", served.url, "--password-stdin", str(image)],
                         input=f"{ADMIN_PASSWORD}\n", capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    made = admin.xenapi.VDI.get_by_uuid(run.stdout.strip())
    assert set(admin.xenapi.VDI.get_all()) == vdis | {made}
    assert admin.xenapi.VDI.get_name_label(made) == "disk.raw"
    assert int(admin.xenapi.VDI.get_virtual_size(made)) == MiB


# ------------------------------------------------------------------ a real libvirtd ---

SYSTEM_URI = "qemu:///system"
LOCAL_POOL = "xenapi-local"                        # xenapi/services/storage.py: the local SR's libvirt pool


def _system_libvirtd() -> None:
    """qemu:///system answers, or skip (starting it with scripts/libvirtd.sh as root, as tests/e2e)."""
    import libvirt
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        libvirt.open(SYSTEM_URI).close()
        return
    except libvirt.libvirtError as first:
        if os.geteuid() != 0:
            pytest.skip(f"{SYSTEM_URI} does not answer ({first}) and starting libvirtd needs root")
    script = Path(__file__).resolve().parents[1] / "scripts" / "libvirtd.sh"
    subprocess.run(["bash", str(script), "start"], stdin=subprocess.DEVNULL, capture_output=True, timeout=180)
    try:
        libvirt.open(SYSTEM_URI).close()
    except libvirt.libvirtError as e:
        pytest.skip(f"libvirtd cannot be reached: {e}")


def _drop_local_pool_if_ours(tmp_path: Path) -> None:
    """The server made the local SR's pool at <state>/local-sr if none was defined: remove it then,
    never another test's (the pool name is one per libvirtd)."""
    import libvirt
    try:
        conn = libvirt.open(SYSTEM_URI)
    except libvirt.libvirtError:
        return
    try:
        pool = conn.storagePoolLookupByName(LOCAL_POOL)
        if str(tmp_path) not in pool.XMLDesc(0):
            return
        if pool.isActive():
            for vol in pool.listAllVolumes(0):
                vol.delete(0)
            pool.destroy()
        pool.undefine()
    except libvirt.libvirtError:
        pass
    finally:
        conn.close()


@pytest.fixture
def real(tmp_path):
    """A server on qemu:///system with two SRs of its own under tmp_path: a dir SR (qcow2 VDIs) and
    an ISO library (raw VDIs); both destroyed afterwards, with everything in them."""
    _system_libvirtd()
    if shutil.which("qemu-img") is None:
        pytest.fail("qemu-img is not installed: run scripts/setup.sh")
    running = start_server(tmp_path, uris=[SYSTEM_URI], domain_type="qemu")
    session = running.session()
    x = session.xenapi
    host = x.host.get_all()[0]
    srs = []
    try:
        srs.append(x.SR.create(host, {"location": str(tmp_path / "sr-dir")}, "0", "transfer test", "", "dir",
                               "user", False, {}))
        srs.append(x.SR.create(host, {"location": str(tmp_path / "sr-iso")}, "0", "transfer test isos", "", "iso",
                               "iso", False, {}))
        running.x, running.sid, running.dir_sr, running.iso_sr = x, session._session, srs[0], srs[1]
        running.dir_path = tmp_path / "sr-dir"
        yield running
    finally:
        for sr in srs:
            for vdi in x.SR.get_VDIs(sr):
                with contextlib.suppress(XenAPI.Failure):
                    x.VDI.destroy(vdi)
            with contextlib.suppress(XenAPI.Failure):
                for pbd in x.SR.get_PBDs(sr):
                    x.PBD.unplug(pbd)
                x.SR.destroy(sr)
        with contextlib.suppress(Exception):
            x.session.logout()
        stop_server(running)
        _drop_local_pool_if_ours(tmp_path)


def make_vdi(real, size: int, sr: str | None = None) -> tuple[str, str]:
    vdi = real.x.VDI.create({"SR": sr or real.dir_sr, "virtual_size": str(size), "type": "user", "sharable": False,
                             "read_only": False, "other_config": {}, "name_label": "transfer test"})
    return vdi, real.x.VDI.get_location(vdi)


def disk_image(path: Path, size: int) -> Path:
    """A raw disk with data and holes: random blocks at its start, middle and end."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in (0, size // 2, size - MiB):
            f.seek(offset)
            f.write(os.urandom(MiB))
    return path


def curl_upload(real, path: Path, vdi: str, **params) -> subprocess.CompletedProcess:
    url = real.url + target("import_raw_vdi", vdi=vdi, session_id=real.sid, **params)
    return subprocess.run(["curl", "-sS", "-f", "-T", str(path), url], capture_output=True, text=True, timeout=300)


def curl_download(real, path: Path, vdi: str, **params) -> subprocess.CompletedProcess:
    url = real.url + target("export_raw_vdi", vdi=vdi, session_id=real.sid, **params)
    return subprocess.run(["curl", "-sS", "-f", "-o", str(path), url], capture_output=True, text=True, timeout=300)


def compare(a: Path | str, a_fmt: str, b: Path | str, b_fmt: str) -> str:
    run = subprocess.run(["qemu-img", "compare", "-f", a_fmt, "-F", b_fmt, str(a), str(b)],
                         capture_output=True, text=True, timeout=120)
    return run.stdout.strip() or run.stderr.strip()


def dir_volumes(real) -> set[str]:
    """The files of the dir SR's directory: its volumes, as the host has them."""
    return set(os.listdir(real.dir_path))


@pytest.fixture(params=["qemu-img", "libvirt"])
def conversion(request, monkeypatch):
    """Both ways a conversion reaches the VDI's volume: qemu-img into the local file, or libvirt's
    copy streamed into the volume (what a remote host gets)."""
    if request.param == "libvirt":
        monkeypatch.setattr(transfer_module.Transfer, "local_files", lambda self, *names: False)
    return request.param


def test_a_raw_image_lands_in_a_qcow2_vdi_and_comes_back_byte_for_byte(real, tmp_path, conversion):
    size = 48 * MiB
    image = disk_image(tmp_path / "disk.raw", size)
    vdi, location = make_vdi(real, size)
    assert real.x.VDI.get_sm_config(vdi)["format"] == "qcow2"
    assert curl_upload(real, image, vdi).returncode == 0
    assert compare(image, "raw", location, "qcow2") == "Images are identical."
    assert subprocess.run(["qemu-img", "check", "-q", location]).returncode == 0
    assert real.x.VDI.get_sm_config(vdi)["format"] == "qcow2" and real.x.VDI.get_location(vdi) == location
    back = tmp_path / "back.raw"
    assert curl_download(real, back, vdi).returncode == 0
    assert back.read_bytes() == image.read_bytes()
    as_qcow2 = tmp_path / "back.qcow2"
    assert curl_download(real, as_qcow2, vdi, format="qcow2").returncode == 0
    assert compare(image, "raw", as_qcow2, "qcow2") == "Images are identical."
    assert dir_volumes(real) == {os.path.basename(location)}


def test_a_qcow2_image_is_written_in_place_and_keeps_the_vdis_size(real, tmp_path):
    image = disk_image(tmp_path / "disk.raw", 16 * MiB)
    small = tmp_path / "small.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(image), str(small)], check=True)
    vdi, location = make_vdi(real, 32 * MiB)
    assert curl_upload(real, small, vdi, format="qcow2").returncode == 0
    assert int(real.x.VDI.get_virtual_size(vdi)) == 32 * MiB
    padded = tmp_path / "padded.raw"
    shutil.copy(image, padded)
    os.truncate(padded, 32 * MiB)
    assert compare(padded, "raw", location, "qcow2") == "Images are identical."
    assert subprocess.run(["qemu-img", "check", "-q", location]).returncode == 0


def test_raw_vdis_take_raw_bodies_in_place_and_qcow2_bodies_converted(real, tmp_path, conversion):
    image = disk_image(tmp_path / "disk.raw", 8 * MiB)
    vdi, location = make_vdi(real, 8 * MiB, real.iso_sr)
    assert real.x.VDI.get_sm_config(vdi)["format"] in ("raw", "iso")
    assert curl_upload(real, image, vdi).returncode == 0
    assert Path(location).read_bytes() == image.read_bytes()
    other = disk_image(tmp_path / "other.raw", 8 * MiB)
    as_qcow2 = tmp_path / "other.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(other), str(as_qcow2)], check=True)
    assert curl_upload(real, as_qcow2, vdi, format="qcow2").returncode == 0
    assert Path(location).read_bytes() == other.read_bytes()
    back = tmp_path / "back.qcow2"
    assert curl_download(real, back, vdi, format="qcow2").returncode == 0
    assert compare(other, "raw", back, "qcow2") == "Images are identical."


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def test_a_256_mib_upload_and_download_stream_in_bounded_memory(real, tmp_path):
    size = 256 * MiB
    image = tmp_path / "big.raw"
    with open(image, "wb") as f:                                  # all data, no holes: every byte travels
        block = os.urandom(MiB)
        for n in range(size // MiB):
            f.write(block[n:] + block[:n])
    vdi, location = make_vdi(real, size)
    figures = {}
    for what, run in (("upload", lambda: curl_upload(real, image, vdi)),
                      ("download", lambda: curl_download(real, tmp_path / "back.raw", vdi))):
        # the peak is the whole test process's, where other threads (pollers, observers) allocate
        # too: the lower of two runs is the transfer's (a buffered one would reach 256 MiB in both)
        for _ in range(2):
            before = _rss_kib("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")         # resets VmHWM (the peak) to the current RSS
            started = time.monotonic()
            assert run().returncode == 0
            figure = ((_rss_kib("VmHWM") - before) / 1024, time.monotonic() - started)
            figures[what] = min(figures.get(what, figure), figure)
    print(f"\nRSS growth (MiB) and seconds for 256 MiB: {figures}")
    for what, (growth, _) in figures.items():
        assert growth < 48, f"the server's RSS grew by {growth:.0f} MiB during the {what}: not streamed"
    assert compare(image, "raw", location, "qcow2") == "Images are identical."
    assert (tmp_path / "back.raw").stat().st_size == size
    assert subprocess.run(["cmp", "-s", str(image), str(tmp_path / "back.raw")]).returncode == 0


def test_a_cut_off_upload_leaves_the_vdi_as_it_was_and_no_temporary_volume(real, tmp_path):
    size = 32 * MiB
    image = disk_image(tmp_path / "disk.raw", size)
    vdi, location = make_vdi(real, size)
    assert curl_upload(real, image, vdi).returncode == 0
    before = dir_volumes(real)
    task = real.x.task.create("upload", "")
    parts = urlsplit(real.url)
    sock = slow_upload(real, (parts.hostname, parts.port), vdi, real.sid, size, 8 * MiB, task_id=task)
    wait_until(lambda: len(dir_volumes(real)) > len(before), what="the temporary volume")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    wait_until(lambda: real.x.task.get_status(task) == "failure", what="the task failed")
    assert dir_volumes(real) == before
    assert compare(image, "raw", location, "qcow2") == "Images are identical."
    assert real.x.VDI.get_current_operations(vdi) == {}
    assert "xenapi_import_failed" not in real.x.VDI.get_other_config(vdi)


def test_a_cut_off_in_place_upload_marks_the_vdi_until_an_import_succeeds(real, tmp_path):
    image = disk_image(tmp_path / "disk.raw", 16 * MiB)
    vdi, location = make_vdi(real, 16 * MiB, real.iso_sr)        # raw into raw: in place
    parts = urlsplit(real.url)
    sock = slow_upload(real, (parts.hostname, parts.port), vdi, real.sid, 16 * MiB, 4 * MiB)
    time.sleep(0.5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    note = wait_until(lambda: real.x.VDI.get_other_config(vdi).get("xenapi_import_failed"), what="the mark")
    assert "the upload ended early" in note and "part of the upload" in note
    assert curl_upload(real, image, vdi).returncode == 0
    assert "xenapi_import_failed" not in real.x.VDI.get_other_config(vdi)
    assert Path(location).read_bytes() == image.read_bytes()


def test_the_cli_imports_and_exports(real, tmp_path):
    image = disk_image(tmp_path / "disk.raw", 24 * MiB)
    as_qcow2 = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(image), str(as_qcow2)], check=True)
    common = ["--url", real.url, "--user", "root", "--password-stdin"]
    run = subprocess.run([XENAPI_CLI, "vdi", "import", *common, "--sr", real.x.SR.get_uuid(real.dir_sr),
                          "--name", "from the cli", str(as_qcow2)], input=f"{ADMIN_PASSWORD}\n",
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    vdi = real.x.VDI.get_by_uuid(run.stdout.strip())
    assert (real.x.VDI.get_name_label(vdi), int(real.x.VDI.get_virtual_size(vdi))) == ("from the cli", 24 * MiB)
    assert compare(image, "raw", real.x.VDI.get_location(vdi), "qcow2") == "Images are identical."
    for name, fmt in (("out.raw", "raw"), ("out.qcow2", "qcow2")):
        run = subprocess.run([XENAPI_CLI, "vdi", "export", *common, real.x.VDI.get_uuid(vdi), str(tmp_path / name)],
                             input=f"{ADMIN_PASSWORD}\n", capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert compare(image, "raw", tmp_path / name, fmt) == "Images are identical."
    assert (tmp_path / "out.raw").read_bytes() == image.read_bytes()
