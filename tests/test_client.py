"""xenapi.client against a real running server over http, https and a unix socket: the official
XenAPI package's interface (compared call for call with the official client on the same server),
Async calls and tasks, the events iterator and the listener."""
from __future__ import annotations

import contextlib
import queue
import ssl
import threading
import time
import xmlrpc.client

import paramiko
import pytest
import XenAPI

from tests.conftest import ADMIN_PASSWORD, guest_vm, start_server, stop_server
from tests.doors import new_key, open_door, ssh_door
from tests.streams import guest
from xenapi.cli import http_api
from xenapi.client import Failure, Session
from xenapi.transport.http import HTTPServer

DOORS = ["http", "https", "unix", "ssh"]
PASSWORD_DOORS = ["http", "https", "unix"]     # where a login checks the password (ssh: the key did)
GiB = 1 << 30


@pytest.fixture
def running(tmp_path):                          # three guests: two running, one halted
    r = start_server(tmp_path, domains=3, running=2)
    yield r
    stop_server(r)


@pytest.fixture(params=DOORS)
def door(request, running, tmp_path):
    d = open_door(request.param, running, tmp_path)
    yield d
    d.close()


@pytest.fixture
def client(door):
    """A logged-in xenapi.client Session through ``door``."""
    session = Session(door.url, **door.options)
    session.xenapi.login_with_password("root", ADMIN_PASSWORD, "2.21", "pytest-client")
    yield session
    with contextlib.suppress(Failure):
        session.logout()                         # also ends a listener's event.from on the server
    session.close()


@pytest.fixture
def official(running):
    """The official XenAPI client on the same server, over HTTP: the reference behaviour."""
    session = running.session()
    yield session
    session.xenapi.session.logout()


def first_event(events, predicate, timeout: float = 20.0) -> dict:
    """The first event of an EventStream matching ``predicate``; the stream is closed (from
    another thread, which ends the iteration) if none comes within ``timeout`` seconds."""
    watchdog = threading.Timer(timeout, events.close)
    watchdog.start()
    try:
        for event in events:
            if predicate(event):
                return event
    finally:
        watchdog.cancel()
    raise AssertionError(f"no matching event within {timeout} s")


def halted(vm: str):
    return lambda e: e["ref"] == vm and e["snapshot"]["power_state"] == "Halted"


# ------------------------------------------------------------------------------ the interface

def test_login_returns_the_session_that_calls_then_carry_until_logout(running, door):
    session = Session(door.url, **door.options)

    ref = session.xenapi.login_with_password("root", ADMIN_PASSWORD, "2.21", "pytest-client")

    assert ref == session.handle and running.server.sessions.is_live(ref)
    record = running.server.store.get("session", ref)
    # a stream's session was opened when the stream started (docs/ssh.md), for the key's user
    assert record["originator"] == ("ssh" if door.kind == "ssh" else "pytest-client")
    records = session.xenapi.VM.get_all_records()
    assert len(records) == 4 and sum(r["is_control_domain"] for r in records.values()) == 1
    session.xenapi.session.logout()
    assert session.handle is None and not running.server.sessions.is_live(ref)


def test_results_equal_the_official_clients(client, official):
    assert client.xenapi.VM.get_all_records() == official.xenapi.VM.get_all_records()
    host = client.xenapi.host.get_all()[0]
    assert client.xenapi.host.get_record(host) == official.xenapi.host.get_record(host)
    assert client.API_version == official.API_version == "2.21"


def test_every_call_form(client):
    vms = client.xenapi.VM.get_all()

    assert sorted(client.xenapi_request("VM.get_all", ())) == sorted(vms)
    assert sorted(client.xenapi.VM_get_all()) == sorted(vms)                  # xapi's Class_msg alias
    raw = client.VM.get_all(client.handle)                                      # ServerProxy-style: the envelope
    assert raw["Status"] == "Success" and sorted(raw["Value"]) == sorted(vms)
    assert "VM.get_all" in client.system.listMethods()                          # bare, as xapi answers it
    again = client.login_with_password("root", ADMIN_PASSWORD, "2.21", "pytest-client")   # top-level form
    assert client.handle == again
    client.logout()
    assert client.handle is None


FAILING_CALLS = {
    "handle_invalid": lambda api, vm: api.VM.get_record("OpaqueRef:no-such-vm"),
    "parameter_count": lambda api, vm: api.VM.get_all_records("one too many"),
    "unknown_method": lambda api, vm: api.VM.no_such_message(vm),
    "bad_power_state": lambda api, vm: api.VM.start(vm, False, False),
    "field_type": lambda api, vm: api.VM.set_name_label(vm, ["not", "a", "string"]),
}


def assert_same_failure(ours: pytest.ExceptionInfo, theirs: pytest.ExceptionInfo) -> None:
    assert ours.value.details == theirs.value.details
    assert str(ours.value) == str(theirs.value)
    assert ours.value._details_map() == theirs.value._details_map()


@pytest.mark.parametrize("case", list(FAILING_CALLS))
def test_failures_carry_the_official_clients_details(client, official, case):
    vm = guest_vm(official, "Running")
    with pytest.raises(XenAPI.Failure) as theirs:
        FAILING_CALLS[case](official.xenapi, vm)
    with pytest.raises(Failure) as ours:
        FAILING_CALLS[case](client.xenapi, vm)
    assert_same_failure(ours, theirs)


@pytest.mark.parametrize("door", PASSWORD_DOORS, indirect=True)
def test_bad_password_gets_the_official_clients_failure(running, door):
    with pytest.raises(XenAPI.Failure) as theirs:
        XenAPI.Session(running.url).xenapi.login_with_password("root", "wrong", "2.21", "x")
    with pytest.raises(Failure) as ours:
        Session(door.url, **door.options).xenapi.login_with_password("root", "wrong", "2.21", "x")
    assert_same_failure(ours, theirs)
    assert ours.value.details[0] == "SESSION_AUTHENTICATION_FAILED"


def test_role_is_enforced_with_the_official_clients_details(running, door, official, tmp_path):
    running.add_user("reader", "read-only")
    vm = guest_vm(official, "Running")
    theirs = running.session("reader", "pw")
    with (open_door("ssh", running, tmp_path, "reader") if door.kind == "ssh"   # a key of the reader's
          else contextlib.nullcontext(door)) as door:
        ours = Session(door.url, **door.options)
        ours.xenapi.login_with_password("reader", "pw", "2.21", "pytest-client")

        with pytest.raises(XenAPI.Failure) as expected:
            theirs.xenapi.VM.hard_shutdown(vm)
        with pytest.raises(Failure) as got:
            ours.xenapi.VM.hard_shutdown(vm)

        assert got.value.details == expected.value.details
        assert got.value.details[0] == "RBAC_PERMISSION_DENIED"
        assert ours.xenapi.VM.get_power_state(vm) == "Running"
        ours.close()


@pytest.mark.parametrize("door", PASSWORD_DOORS, indirect=True)
def test_call_without_login_gets_the_servers_session_invalid(door):
    with pytest.raises(Failure) as e:
        Session(door.url, **door.options).xenapi.VM.get_all()
    assert e.value.details[0] == "SESSION_INVALID"


def test_stale_session_is_replaced_by_logging_in_again(running, client):
    stale = client.handle
    running.server.sessions.logout(stale)                  # as idle expiry would

    assert len(client.xenapi.VM.get_all()) == 4

    assert client.handle != stale and running.server.sessions.is_live(client.handle)


def test_async_of_a_message_without_async_is_the_same_fault(client, official):
    vm = guest_vm(official, "Running")
    with pytest.raises(xmlrpc.client.Fault) as theirs:
        official.xenapi.Async.VM.get_record(vm)
    with pytest.raises(xmlrpc.client.Fault) as ours:
        client.xenapi.Async.VM.get_record(vm)
    assert (ours.value.faultCode, ours.value.faultString) == (theirs.value.faultCode, theirs.value.faultString)


def test_int64_parameters_beyond_32_bits_are_sent_as_xapi_does(client, official):
    vm = guest_vm(official, "Halted")
    with pytest.raises(OverflowError):                     # the official client cannot send them
        official.xenapi.VM.set_memory_limits(vm, GiB, 4 * GiB, 4 * GiB, 4 * GiB)

    client.xenapi.VM.set_memory_limits(vm, GiB, 4 * GiB, 4 * GiB, 4 * GiB)

    assert int(official.xenapi.VM.get_memory_static_max(vm)) == 4 * GiB


def test_one_session_can_be_shared_by_threads(client, official):
    names = {ref: official.xenapi.VM.get_name_label(ref) for ref in official.xenapi.VM.get_all()}
    wrong: list = []

    def worker():
        for ref, name in list(names.items()) * 10:
            if client.xenapi.VM.get_name_label(ref) != name:
                wrong.append(ref)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not wrong and not any(t.is_alive() for t in threads)


def test_context_manager_logs_out(running, door):
    with Session(door.url, **door.options) as session:
        ref = session.xenapi.login_with_password("root", ADMIN_PASSWORD, "2.21", "pytest-client")
        assert running.server.sessions.is_live(ref)
    assert not running.server.sessions.is_live(ref)


# ------------------------------------------------------------------------------ Async and tasks

def test_async_call_returns_a_task_to_poll_and_wait_for(client):
    vm = guest_vm(client, "Running")

    task = client.xenapi.Async.VM.clean_shutdown(vm)
    assert client.xenapi.task.get_status(task) in ("pending", "success")
    deadline = time.monotonic() + 20
    while client.xenapi.task.get_status(task) == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)                                   # polling, as scripts do

    assert client.xenapi.task.get_status(task) == "success"
    assert client.wait_for_task(task, timeout=10) == ""    # what the void message returns when synchronous
    assert client.xenapi.VM.get_power_state(vm) == "Halted"


def test_wait_for_task_decodes_the_result(client):
    vm = guest_vm(client, "Halted")

    clone = client.wait_for_task(client.xenapi.Async.VM.clone(vm, "copy"), timeout=20)

    assert clone.startswith("OpaqueRef:") and clone != vm
    assert client.xenapi.VM.get_name_label(clone) == "copy"


def test_wait_for_a_failed_task_raises_its_error_info(client):
    vm = guest_vm(client, "Halted")
    task = client.xenapi.Async.VM.unpause(vm)

    with pytest.raises(Failure) as e:
        client.wait_for_task(task, timeout=20)

    assert e.value.details == client.xenapi.task.get_error_info(task)
    assert e.value.details[0] == "VM_BAD_POWER_STATE"


def test_wait_for_task_waits_for_whoever_finishes_the_task(client, official):
    task = client.xenapi.task.create("by hand", "finished by another client")
    with pytest.raises(TimeoutError):
        client.wait_for_task(task, timeout=0.2)
    result: queue.Queue = queue.Queue()
    waiter = threading.Thread(target=lambda: result.put(client.wait_for_task(task, timeout=30)))
    waiter.start()

    official.xenapi.task.set_result(task, "<value>done</value>")
    official.xenapi.task.set_status(task, "success")

    assert result.get(timeout=30) == "done"
    waiter.join(10)


def test_wait_for_a_task_that_does_not_exist_is_handle_invalid(client):
    with pytest.raises(Failure) as e:
        client.wait_for_task("OpaqueRef:no-such-task", timeout=5)
    assert e.value.details == ["HANDLE_INVALID", "task", "OpaqueRef:no-such-task"]


# ------------------------------------------------------------------------------ events

def test_events_start_with_every_object_then_follow_changes(client):
    vms = client.xenapi.VM.get_all()
    with client.events(["VM"], timeout=5) as events:
        seeded = [next(events) for _ in vms]
        assert {e["operation"] for e in seeded} == {"add"} and {e["ref"] for e in seeded} == set(vms)

        vm = guest_vm(client, "Halted")
        client.xenapi.VM.set_name_label(vm, "renamed")
        event = first_event(events, lambda e: e["ref"] == vm)

    assert event["operation"] == "mod" and event["snapshot"]["name_label"] == "renamed"
    assert event["class"] == "vm"


def test_events_see_a_power_change_made_through_libvirt(running, client):
    vm = guest_vm(client, "Running")
    token = client.xenapi.event_from(["VM"], "", 0.0)["token"]
    with client.events(["VM"], token=token) as events:
        running.server.hosts.connection(running.server.master_ref).destroy(client.xenapi.VM.get_uuid(vm))
        event = first_event(events, halted(vm))
        assert events.token > token
    assert event["operation"] == "mod"


def test_events_stream_closed_from_another_thread_ends_its_wait(client):
    token = client.xenapi.event_from(["VM"], "", 0.0)["token"]
    events = client.events(["VM"], timeout=600, token=token)
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(events))
    reader.start()
    time.sleep(0.2)                                        # let it block in event.from

    events.close()
    reader.join(10)

    assert not reader.is_alive() and got == []


def test_listener_calls_back_on_its_own_thread_while_the_session_works_on(running, client):
    vm = guest_vm(client, "Running")
    waiting = []                                           # event.from calls the server is in
    polling = threading.Event()
    overlapped = []
    dispatch = running.server.dispatcher.dispatch

    def spy(call):
        if call.method != "event.from":
            if call.method == "VM.hard_shutdown":
                overlapped.append(len(waiting))
            return dispatch(call)
        waiting.append(call)
        polling.set()
        try:
            return dispatch(call)
        finally:
            waiting.remove(call)

    token = client.xenapi.event_from(["VM"], "", 0.0)["token"]
    running.server.dispatcher.dispatch = spy
    got: queue.Queue = queue.Queue()
    stop = threading.Event()
    listener = client.listen(["VM"], lambda e: got.put((threading.current_thread().name, e)), stop,
                             timeout=60, token=token)
    try:
        assert polling.wait(10)
        client.xenapi.VM.hard_shutdown(vm)                 # while the listener waits in event.from
        thread, event = got.get(timeout=20)
        while not halted(vm)(event):
            thread, event = got.get(timeout=20)
    finally:
        stop.set()
        listener.join(10)

    assert overlapped == [1]
    assert thread == "xenapi-listener"
    assert not listener.is_alive() and listener.error is None


def test_listener_stops_at_once_when_its_event_is_set(client):
    stop = threading.Event()
    token = client.xenapi.event_from(["VM"], "", 0.0)["token"]
    listener = client.listen(["VM"], lambda e: None, stop, timeout=600, token=token)
    time.sleep(0.2)

    stop.set()
    listener.join(10)

    assert not listener.is_alive() and listener.error is None


def test_listener_that_fails_keeps_the_error_and_sets_its_stop_event(client):
    def callback(event):
        raise RuntimeError(f"cannot handle {event['ref']}")

    listener = client.listen(["VM"], callback)               # token "": every VM at once
    listener.join(20)

    assert listener.stop_event.is_set() and not listener.is_alive()
    assert isinstance(listener.error, RuntimeError)


def test_listener_and_calls_carry_on_after_the_server_restarts_its_listener(running):
    session = Session(running.url)
    session.xenapi.login_with_password("root", ADMIN_PASSWORD, "2.21", "pytest-client")
    vm = guest_vm(session, "Running")
    got: queue.Queue = queue.Queue()
    token = session.xenapi.event_from(["VM"], "", 0.0)["token"]
    listener = session.listen(["VM"], got.put, timeout=1, token=token)   # short: shutdown waits for it
    time.sleep(0.2)

    uuid = session.xenapi.VM.get_uuid(vm)
    running.http.shutdown()                                 # every connection is cut
    running.server.hosts.connection(running.server.master_ref).destroy(uuid)      # while no one listens
    running.http = HTTPServer(running.http.address, http_api(running.server))
    running.http.start()

    try:
        event = got.get(timeout=20)
        while not halted(vm)(event):
            event = got.get(timeout=20)
        assert session.xenapi.VM.get_power_state(vm) == "Halted"     # the idle connection was remade
    finally:
        listener.stop(10)
        session.logout()
    assert listener.error is None


# ------------------------------------------------------------------------------ ssh://

@pytest.fixture
def ssh(running, tmp_path):
    d = open_door("ssh", running, tmp_path, "root")
    yield d
    d.close()


def stream_sessions(running) -> list[dict]:
    return [r for r in running.server.store.records("session").values() if r["originator"] == "ssh"]


def test_ssh_key_gives_a_session_without_login(running, ssh):
    session = Session(ssh.url, **ssh.options)

    assert session.handle == ""                                    # docs/ssh.md: the stream's session
    assert len(session.xenapi.VM.get_all()) == 4
    (record,) = stream_sessions(running)
    assert record["auth_user_name"] == "root"
    session.close()


def test_ssh_login_as_the_keys_user_returns_the_stream_session_and_another_user_is_refused(running, ssh):
    running.add_user("reader", "read-only")
    session = Session(ssh.url, **ssh.options)

    ref = session.xenapi.login_with_password("root", "the key counts, not this", "2.21", "x")
    assert [r["uuid"] for r in stream_sessions(running)] == [running.server.store.get("session", ref)["uuid"]]
    with pytest.raises(Failure) as e:
        session.xenapi.login_with_password("reader", "pw", "2.21", "x")
    assert e.value.details == ["SESSION_AUTHENTICATION_FAILED", "reader", "Authentication failure"]
    session.close()


def test_ssh_host_key_not_in_known_hosts_is_refused(ssh, tmp_path):
    stranger = tmp_path / "other_known_hosts"
    stranger.write_text("")
    options = {**ssh.options, "known_hosts": str(stranger)}

    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        Session(ssh.url, **options).xenapi.VM.get_all()
    assert Session(ssh.url, **{**options, "verify_host_key": False}).xenapi.VM.get_all()


def test_ssh_unregistered_key_is_refused(ssh, tmp_path):
    key = tmp_path / "id_unregistered"
    new_key(key)
    with pytest.raises(paramiko.AuthenticationException):
        Session(ssh.url, **{**ssh.options, "key_filename": str(key)}).xenapi.VM.get_all()


def test_ssh_session_carries_on_over_a_new_stream_after_the_server_restarts(running, ssh, tmp_path):
    session = Session(ssh.url, **ssh.options)
    session.xenapi.login_with_password("root", "", "2.21", "x")
    first = session.handle
    address = ssh.listener.address

    ssh.listener.shutdown()                                 # the stream and its session end
    ssh.listener = ssh_door(running, tmp_path / "ssh-root", "root", address).listener

    assert len(session.xenapi.VM.get_all()) == 4            # a new stream, and a login on it
    assert session.handle not in ("", first) and not running.server.sessions.is_live(first)
    session.close()


def test_ssh_through_openssh_and_a_forced_xenapi_stdio(sshd, served, keys, tmp_path):
    """The other way in (docs/ssh.md): a real sshd whose authorized_keys line runs `xenapi stdio
    --user bob`; the client's exec of `xenapi` is allowed through as the forced command's."""
    host_key = (tmp_path / "sshd" / "host_key.pub").read_text().split()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {host_key[0]} {host_key[1]}\n")
    session = Session(f"ssh://root@127.0.0.1:{sshd.port}", key_filename=str(keys["bob"][0]),
                      known_hosts=str(known_hosts))
    vm = guest(served)

    session.wait_for_task(session.xenapi.Async.VM.start(vm, False, False), timeout=20)   # bob: vm-operator

    assert session.xenapi.VM.get_power_state(vm) == "Running"
    with pytest.raises(Failure) as e:
        session.xenapi.VM.destroy(vm)
    assert e.value.details[:2] == ["RBAC_PERMISSION_DENIED", "vm.destroy"]
    (record,) = stream_sessions(served.running)
    assert record["auth_user_name"] == "bob"
    session.close()


# ------------------------------------------------------------------------------ URLs and TLS

def test_https_verifies_the_certificate_unless_told_not_to(running, tmp_path):
    door = open_door("https", running, tmp_path)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            Session(door.url).xenapi.login_with_password("root", ADMIN_PASSWORD, "2.21", "pytest-client")
        pinned = Session(door.url, cafile=str(door.cert))
        assert pinned.xenapi.login_with_password("root", ADMIN_PASSWORD, "2.21", "pytest-client")
        pinned.logout()
    finally:
        door.close()


@pytest.mark.parametrize("url", ["ftp://host/", "unix://", "ssh:///no-host", "host:8080"])
def test_unusable_urls_are_refused_at_once(url):
    with pytest.raises(ValueError, match="URL|socket path|host"):
        Session(url)


def test_no_server_at_a_unix_socket_raises_the_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        Session(f"unix://{tmp_path}/none.sock").xenapi.login_with_password("root", "x", "2.21", "x")
