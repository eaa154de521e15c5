"""The audit log (auth/audit.py, classes/audit.py): one row per state-changing call, over real
HTTP (and a unix socket), read back through the API by pool-admins, kept across restarts."""
from __future__ import annotations

import calendar
import http.client
import os
import pwd
import socket
import sqlite3
import subprocess
import threading
import time
import xmlrpc.client

import sqlite_utils

from auth.audit import AuditLog
from tests.conftest import ADMIN_PASSWORD, fails, guest_vm, start_server, stop_server
from tests.streams import XENAPI, xenapi_ok, call, guest, responses, value
from xenapi.cli import http_api
from xenapi.state.store import derived_ref, derived_uuid
from xenapi.transport.http import HTTPServer


def rows_after(xapi, after: int) -> list[dict]:
    return xapi.xenapi.audit.get_records(str(after), "10000")


def last_id(xapi) -> int:
    rows = xapi.xenapi.audit.get_records("0", "10000")
    return int(rows[-1]["id"]) if rows else 0


def test_a_state_changing_call_writes_who_how_what_where_and_the_outcome(xapi):
    vm = guest_vm(xapi, "Halted")
    start = last_id(xapi)
    xapi.xenapi.VM.set_name_label(vm, "renamed")
    (row,) = rows_after(xapi, start)
    assert row["user"] == "root" and row["via"] == "http" and row["address"].startswith("127.0.0.1:")
    assert row["method"] == "VM.set_name_label" and row["outcome"] == "ok" and row["task"] == ""
    assert row["objects"] == [f"VM/{vm}"] and row["uuids"] == [xapi.xenapi.VM.get_uuid(vm)]
    written = calendar.timegm(time.strptime(row["timestamp"].value, "%Y%m%dT%H:%M:%SZ"))
    assert abs(written - time.time()) < 60


def test_reads_are_not_written(xapi):
    vm = guest_vm(xapi, "Halted")
    start = last_id(xapi)
    xapi.xenapi.VM.get_record(vm)
    xapi.xenapi.VM.get_all_records_where("true")
    xapi.xenapi.host.compute_free_memory(xapi.xenapi.host.get_all()[0])
    xapi.xenapi.VM.assert_operation_valid(vm, "start")
    xapi.xenapi.event_from(["vm"], "", 0.0)
    assert rows_after(xapi, start) == []


def test_refused_and_failed_calls_are_written_with_their_error_code(running, xapi):
    running.add_user("ro", "read-only", "pw")
    ro = running.session("ro", "pw")
    halted, live = guest_vm(xapi, "Halted"), guest_vm(xapi, "Running")
    start = last_id(xapi)
    fails(ro.xenapi.VM.start, halted, False, False)
    fails(xapi.xenapi.VM.start, live, False, False)
    refused, failed = rows_after(xapi, start)
    assert (refused["user"], refused["method"], refused["outcome"]) == ("ro", "VM.start", "RBAC_PERMISSION_DENIED")
    assert refused["objects"] == [f"VM/{halted}"]
    assert (failed["user"], failed["outcome"]) == ("root", "VM_BAD_POWER_STATE")


def test_logins_are_written_failed_ones_too_and_never_a_secret(running, xapi):
    start = last_id(xapi)
    proxy = xmlrpc.client.ServerProxy(running.url)
    session = proxy.session.login_with_password("root", ADMIN_PASSWORD)["Value"]
    proxy.session.login_with_password("root", "not-the-password")
    proxy.session.login_with_password("mallory", "guess")
    rows = rows_after(xapi, start)
    assert [(r["user"], r["method"], r["outcome"]) for r in rows] == [
        ("root", "session.login_with_password", "ok"),
        ("root", "session.login_with_password", "SESSION_AUTHENTICATION_FAILED"),
        ("mallory", "session.login_with_password", "SESSION_AUTHENTICATION_FAILED")]
    assert all(r["objects"] == [] for r in rows)
    text = repr(xapi.xenapi.audit.get_records("0", "10000"))
    assert session not in text and ADMIN_PASSWORD not in text and "not-the-password" not in text


def test_an_async_call_is_written_once_when_its_task_ends_with_the_task(xapi):
    vm = guest_vm(xapi, "Running")
    start = last_id(xapi)
    task = xapi.xenapi.Async.VM.hard_shutdown(vm)
    deadline = time.monotonic() + 10
    while xapi.xenapi.task.get_status(task) == "pending" and time.monotonic() < deadline:
        time.sleep(0.02)
    rows = [r for r in rows_after(xapi, start) if r["method"] == "Async.VM.hard_shutdown"]
    assert len(rows) == 1
    assert rows[0]["task"] == task and rows[0]["outcome"] == "ok" and rows[0]["objects"] == [f"VM/{vm}"]


def test_a_created_object_is_named_and_a_destroyed_one_keeps_its_uuid(xapi):
    vm = guest_vm(xapi, "Halted")
    start = last_id(xapi)
    clone = xapi.xenapi.VM.clone(vm, "audited-clone")
    uuid = xapi.xenapi.VM.get_uuid(clone)
    xapi.xenapi.VM.destroy(clone)
    cloned, destroyed = rows_after(xapi, start)
    assert cloned["objects"] == [f"VM/{vm}", f"VM/{clone}"] and cloned["uuids"][1] == uuid
    assert destroyed["method"] == "VM.destroy" and destroyed["uuids"] == [uuid]


def test_only_pool_admins_read_the_log(running):
    running.add_user("po", "pool-operator", "pw")
    po = running.session("po", "pw")
    text = "No permission in user session. (Roles with this permission: pool-admin)"
    assert fails(po.xenapi.audit.get_records, "0", "10") == ["RBAC_PERMISSION_DENIED", "audit.get_records", text]
    assert fails(po.xenapi.audit.get_since, "20000101T00:00:00Z") == \
        ["RBAC_PERMISSION_DENIED", "audit.get_since", text]


def test_get_since_and_paging_with_get_records(xapi):
    vm = guest_vm(xapi, "Halted")
    for n in range(5):
        xapi.xenapi.VM.set_name_description(vm, f"d{n}")
    everything = xapi.xenapi.audit.get_records("0", "10000")
    first_two = xapi.xenapi.audit.get_records("0", "2")
    assert first_two == everything[:2]
    assert xapi.xenapi.audit.get_records(first_two[-1]["id"], "10000") == everything[2:]
    assert xapi.xenapi.audit.get_since("20000101T00:00:00Z") == everything
    assert xapi.xenapi.audit.get_since("29990101T00:00:00Z") == []


def test_the_log_raises_no_events(xapi):
    token = xapi.xenapi.event_from(["*"], "", 0.0)["token"]
    xapi.xenapi.VM.set_name_description(guest_vm(xapi, "Halted"), "evented")
    batch = xapi.xenapi.event_from(["*"], token, 1.0)
    classes = {e["class"] for e in batch["events"]}
    assert "vm" in classes and "audit" not in classes and "audit" not in batch["valid_ref_counts"]


def test_the_log_survives_a_restart(tmp_path):
    first = start_server(tmp_path)
    admin = first.session()
    vm = guest_vm(admin, "Halted")
    admin.xenapi.VM.set_name_description(vm, "before the restart")
    stop_server(first)
    again = start_server(tmp_path, uris=[first.uri])
    try:
        rows = again.session().xenapi.audit.get_records("0", "10000")
        assert any(r["method"] == "VM.set_name_description" and r["objects"] == [f"VM/{vm}"] for r in rows)
    finally:
        stop_server(again)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=15)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def test_the_transport_is_recorded(running, xapi, tmp_path):
    path = str(tmp_path / "xapi.sock")
    unix = HTTPServer(path, http_api(running.server))
    unix.start()
    try:
        conn = _UnixConnection(path)
        body = xmlrpc.client.dumps(("root", ADMIN_PASSWORD), "session.login_with_password").encode()
        conn.request("POST", "/", body, {"Content-Type": "text/xml"})
        assert xmlrpc.client.loads(conn.getresponse().read())[0][0]["Status"] == "Success"
        conn.close()
    finally:
        unix.shutdown()
    row = xapi.xenapi.audit.get_records("0", "10000")[-1]
    assert (row["method"], row["via"]) == ("session.login_with_password", "unix")


def test_retention_keeps_the_newest_rows(tmp_path):
    db = sqlite3.connect(tmp_path / "audit.db", check_same_thread=False)
    log = AuditLog(sqlite_utils.Database(db), threading.RLock(), keep=10)
    for n in range(100):
        log.record(user="u", via="http", address="a", method=f"m{n}", objects=[], uuids=[], outcome="ok")
    assert len(log.after(0, 1000)) <= 20
    log.prune()
    rows = log.after(0, 1000)
    assert [r["method"] for r in rows] == [f"m{n}" for n in range(90, 100)]
    assert len(log.after(0, 3)) == 3


def test_keep_zero_writes_nothing():
    log = AuditLog(sqlite_utils.Database(sqlite3.connect(":memory:")), threading.RLock(), keep=0)
    log.record(user="u", via="http", address="a", method="m", objects=[], uuids=[], outcome="ok")
    assert log.after(0, 10) == []


# -- streams and the command line ---------------------------------------------------------------

def rows_of(served, user: str) -> list[dict]:
    return [r for r in served.server.audit.after(0, 10000) if r["user"] == user]


def test_a_local_stream_is_written_via_stdio_with_its_session_opening_and_end(served):
    vm = guest(served)
    result = served.stdio(call("VM.start", "", vm, False, False), "--user", "bob")
    assert result.returncode == 0 and value(responses(result.stdout)[0]) == ""
    assert [(r["method"], r["via"], r["address"], r["outcome"]) for r in rows_of(served, "bob")] == [
        ("session.local_login", "stdio", "", "ok"), ("VM.start", "stdio", "", "ok"),
        ("session.logout", "stdio", "", "ok")]


def test_a_stream_over_openssh_is_written_via_ssh_from_the_clients_address(served):
    env = {**os.environ, "SSH_CONNECTION": "192.0.2.7 50412 127.0.0.1 22", "SSH_ORIGINAL_COMMAND": "xenapi"}
    vm = guest(served)
    stream = served.stream("--user", "bob", env=env)
    assert value(stream.ask(call("VM.start", "", vm, False, False))) == ""
    assert value(stream.ask(call("session.logout", ""))) == ""           # the API call is the logout
    assert stream.close()[0] == 0
    assert [(r["method"], r["via"], r["address"], r["outcome"]) for r in rows_of(served, "bob")] == [
        ("session.login_with_key", "ssh", "192.0.2.7:50412", "ok"), ("VM.start", "ssh", "192.0.2.7:50412", "ok"),
        ("session.logout", "ssh", "192.0.2.7:50412", "ok")]


def test_user_and_key_changes_from_the_command_line_are_written_via_cli(served, tmp_path):
    state = served.server.config.state
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)

    start = max([r["id"] for r in served.server.audit.after(0, 10000)], default=0)
    xenapi_ok(state, "user", "add", "carol", "--role", "read-only", "--password-stdin", data="pw\n")
    fingerprint = xenapi_ok(state, "user", "key", "add", "carol", f"{key}.pub").split()[1]
    xenapi_ok(state, "user", "key", "del", "carol", fingerprint)
    xenapi_ok(state, "user", "del", "carol")
    assert subprocess.run([XENAPI, "user", "del", "carol", "--state", state], capture_output=True).returncode == 1
    rows = served.server.audit.after(start, 10000)
    account = pwd.getpwuid(os.getuid()).pw_name
    user_object = f"user/{derived_ref('user', 'carol')}"
    assert [(r["user"], r["via"], r["method"], r["objects"], r["outcome"]) for r in rows] == [
        (account, "cli", "user add", [user_object], "ok"),
        (account, "cli", "user key add", [user_object, f"ssh_key/{fingerprint}"], "ok"),
        (account, "cli", "user key del", [user_object, f"ssh_key/{fingerprint}"], "ok"),
        (account, "cli", "user del", [user_object], "ok")]                   # the failed second del changed nothing
    assert rows[0]["uuids"] == [derived_uuid("user", "carol")]
