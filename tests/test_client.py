"""xenapi.client against a real running server over http, https and a unix socket: the official
XenAPI package's interface (compared call for call with the official client on the same server),
Async calls and tasks, the events iterator and the listener."""
from __future__ import annotations

import queue
import ssl
import threading
import time
import xmlrpc.client

import pytest
import XenAPI

from tests.conftest import ADMIN_PASSWORD, guest_vm, start_server, stop_server
from tests.doors import open_door
from xenapi.api import Api
from xenapi.client import Failure, Session
from xenapi.transport.http import HTTPServer

DOORS = ["http", "https", "unix"]
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
    assert running.server.store.get("session", ref)["originator"] == "pytest-client"
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


@pytest.mark.parametrize("case", [
    "handle_invalid", "parameter_count", "unknown_method", "bad_power_state", "field_type", "bad_login",
])
def test_failures_carry_the_official_clients_details(client, official, case):
    vm = guest_vm(official, "Running")
    calls = {
        "handle_invalid": lambda api: api.VM.get_record("OpaqueRef:no-such-vm"),
        "parameter_count": lambda api: api.VM.get_all_records("one too many"),
        "unknown_method": lambda api: api.VM.no_such_message(vm),
        "bad_power_state": lambda api: api.VM.start(vm, False, False),
        "field_type": lambda api: api.VM.set_name_label(vm, ["not", "a", "string"]),
        "bad_login": lambda api: api.session.login_with_password("root", "wrong", "2.21", "x"),
    }
    with pytest.raises(XenAPI.Failure) as theirs:
        (calls[case](official.xenapi) if case != "bad_login"
         else official.xenapi.login_with_password("root", "wrong", "2.21", "x"))
    with pytest.raises(Failure) as ours:
        calls[case](client.xenapi)

    assert ours.value.details == theirs.value.details
    assert str(ours.value) == str(theirs.value)
    assert ours.value._details_map() == theirs.value._details_map()


def test_role_is_enforced_with_the_official_clients_details(running, door, official):
    running.add_user("reader", "read-only")
    vm = guest_vm(official, "Running")
    theirs = running.session("reader", "pw")
    ours = Session(door.url, **door.options)
    ours.xenapi.login_with_password("reader", "pw", "2.21", "pytest-client")

    with pytest.raises(XenAPI.Failure) as expected:
        theirs.xenapi.VM.hard_shutdown(vm)
    with pytest.raises(Failure) as got:
        ours.xenapi.VM.hard_shutdown(vm)

    assert got.value.details == expected.value.details
    assert got.value.details[0] == "RBAC_PERMISSION_DENIED"
    assert ours.xenapi.VM.get_power_state(vm) == "Running"


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
    in_flight = threading.Semaphore(0)
    overlapped = []
    dispatch = running.server.dispatcher.dispatch

    def spy(call):                                         # was an event.from waiting when this came?
        if call.method == "event.from":
            in_flight.release()
        elif call.method == "VM.hard_shutdown":
            overlapped.append(in_flight.acquire(timeout=10))
        return dispatch(call)

    running.server.dispatcher.dispatch = spy
    got: queue.Queue = queue.Queue()
    stop = threading.Event()
    token = client.xenapi.event_from(["VM"], "", 0.0)["token"]
    listener = client.listen(["VM"], lambda e: got.put((threading.current_thread().name, e)), stop,
                             timeout=60, token=token)
    try:
        client.xenapi.VM.hard_shutdown(vm)                 # while the listener waits in event.from
        thread, event = got.get(timeout=20)
        while not halted(vm)(event):
            thread, event = got.get(timeout=20)
    finally:
        stop.set()
        listener.join(10)

    assert overlapped == [True]
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
    listener = session.listen(["VM"], got.put, timeout=60, token=token)
    time.sleep(0.2)

    uuid = session.xenapi.VM.get_uuid(vm)
    running.http.shutdown()                                 # every connection is cut
    running.server.hosts.connection(running.server.master_ref).destroy(uuid)      # while no one listens
    running.http = HTTPServer(running.http.address, Api(running.server))
    running.http.start()

    try:
        event = got.get(timeout=20)
        while not halted(vm)(event):
            event = got.get(timeout=20)
        assert session.xenapi.VM.get_power_state(vm) == "Halted"     # the idle connection was remade
    finally:
        listener.stop(10)
    assert listener.error is None


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
