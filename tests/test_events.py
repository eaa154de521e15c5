"""event.from, event.inject and the legacy register/next, through the real XenAPI client."""
import threading
import time
import xmlrpc.client

import pytest
import XenAPI

from tests.conftest import guest_vm, start_server, stop_server, wait_for_event


def test_from_empty_token_returns_every_object_as_add_with_full_snapshot(xapi):
    batch = xapi.xenapi.event_from(["vm"], "", 0.0)
    vms = xapi.xenapi.VM.get_all_records()
    assert {e["ref"] for e in batch["events"]} == set(vms)
    for ev in batch["events"]:
        assert ev["class"] == "vm" and ev["operation"] == "add"
        assert set(ev["snapshot"]) == set(vms[ev["ref"]])
    assert int(batch["valid_ref_counts"]["vm"]) == len(vms)


def test_from_reports_a_power_change_as_one_coalesced_mod(xapi):
    vm = guest_vm(xapi, "Running")
    token = xapi.xenapi.event_from(["vm"], "", 0.0)["token"]
    xapi.xenapi.VM.pause(vm)
    xapi.xenapi.VM.unpause(vm)
    batch = xapi.xenapi.event_from(["vm"], token, 5.0)
    mine = [e for e in batch["events"] if e["ref"] == vm]
    assert len(mine) == 1 and mine[0]["operation"] == "mod"
    assert mine[0]["snapshot"]["power_state"] == "Running"


def test_from_blocks_until_a_change_then_returns_it(running, xapi):
    vm = guest_vm(xapi, "Running")
    token = xapi.xenapi.event_from(["vm"], "", 0.0)["token"]
    other = running.session()          # a client object is not thread-safe: one per thread
    threading.Timer(0.2, lambda: other.xenapi.VM.hard_shutdown(vm)).start()
    start = time.monotonic()
    first = xapi.xenapi.event_from(["vm"], token, 10.0)
    assert first["events"] and time.monotonic() - start < 5
    wait_for_event(xapi, ["vm"], token, lambda e: e["ref"] == vm and e["snapshot"]["power_state"] == "Halted")


def test_from_times_out_with_no_events_and_a_fresh_token(xapi):
    token = xapi.xenapi.event_from(["vm"], "", 0.0)["token"]
    start = time.monotonic()
    batch = xapi.xenapi.event_from(["vm"], token, 0.3)
    assert batch["events"] == [] and batch["token"] >= token
    assert 0.25 <= time.monotonic() - start < 3


def test_from_ignores_unknown_classes_and_filters_by_class(xapi):
    token = xapi.xenapi.event_from(["task", "nosuchclass"], "", 0.0)["token"]
    vm = guest_vm(xapi, "Running")
    xapi.xenapi.Async.VM.pause(vm)
    batch = xapi.xenapi.event_from(["task"], token, 5.0)
    assert batch["events"] and {e["class"] for e in batch["events"]} == {"task"}


def test_from_object_subscription_sees_only_that_object(xapi):
    vm = guest_vm(xapi, "Running")
    other = guest_vm(xapi, "Halted")
    token = xapi.xenapi.event_from([f"vm/{vm}"], "", 0.0)["token"]
    xapi.xenapi.VM.start(other, False, False)
    xapi.xenapi.VM.pause(vm)
    batch = xapi.xenapi.event_from([f"vm/{vm}"], token, 5.0)
    assert {e["ref"] for e in batch["events"]} == {vm}


def test_from_reports_deletion_without_snapshot(xapi):
    vm = guest_vm(xapi, "Halted")
    token = xapi.xenapi.event_from(["vm"], "", 0.0)["token"]
    xapi.xenapi.VM.destroy(vm)
    batch = xapi.xenapi.event_from(["vm"], token, 5.0)
    gone = [e for e in batch["events"] if e["ref"] == vm]
    assert gone == [{"id": gone[0]["id"], "timestamp": gone[0]["timestamp"], "class": "vm", "operation": "del",
                     "ref": vm}]


def test_from_with_a_garbage_token_fails_to_parse(xapi):
    with pytest.raises(XenAPI.Failure) as e:
        xapi.xenapi.event_from(["vm"], "not-a-token", 0.0)
    assert e.value.details == ["EVENT_FROM_TOKEN_PARSE_FAILURE", "not-a-token"]


def test_logout_ends_a_blocked_from_with_session_invalid(running):
    proxy = xmlrpc.client.ServerProxy(running.url)
    session = proxy.session.login_with_password("root", "admin-pw")["Value"]
    token = proxy.event_from(session, ["vm"], "", 0.0)["Value"]["token"]
    threading.Timer(0.3, lambda: xmlrpc.client.ServerProxy(running.url).session.logout(session)).start()
    start = time.monotonic()
    result = proxy.event_from(session, ["vm"], token, 30.0)
    assert result["ErrorDescription"] == ["SESSION_INVALID", session]
    assert time.monotonic() - start < 5


def test_inject_makes_a_mod_event_and_returns_a_usable_token(xapi):
    pool = xapi.xenapi.pool.get_all()[0]
    token = xapi.xenapi.event_from(["pool"], "", 0.0)["token"]
    injected = xapi.xenapi.event.inject("pool", pool)
    batch = xapi.xenapi.event_from(["pool"], token, 5.0)
    assert [e["operation"] for e in batch["events"]] == ["mod"]
    # as xapi: the returned token sits just before the injected event, so it comes back at once
    assert [e["ref"] for e in xapi.xenapi.event_from(["pool"], injected, 0.0)["events"]] == [pool]


def test_change_made_behind_the_api_reaches_listeners(running, xapi):
    vm = guest_vm(xapi, "Running")
    token = xapi.xenapi.event_from(["vm"], "", 0.0)["token"]
    conn = running.server.hosts.connection(running.server.master_ref)
    conn.destroy(xapi.xenapi.VM.get_uuid(vm))          # libvirt directly, not the API
    wait_for_event(xapi, ["vm"], token, lambda e: e["ref"] == vm and e["snapshot"]["power_state"] == "Halted")


def test_register_next_returns_changes_in_order(xapi):
    vm = guest_vm(xapi, "Running")
    xapi.xenapi.event.register(["vm"])
    xapi.xenapi.VM.pause(vm)
    xapi.xenapi.VM.unpause(vm)
    seen = []
    while len(seen) < 2:
        seen += [e for e in xapi.xenapi.event.next() if e["ref"] == vm and e["operation"] == "mod"]
    ids = [int(e["id"]) for e in seen]
    assert ids == sorted(ids)
    assert "Paused" in [e["snapshot"]["power_state"] for e in seen]


def test_next_without_register_is_an_error(xapi):
    with pytest.raises(XenAPI.Failure) as e:
        xapi.xenapi.event.next()
    assert e.value.details[0] == "SESSION_NOT_REGISTERED"


def test_next_far_behind_the_log_gets_events_lost(tmp_path):
    running = start_server(tmp_path, event_log_size=5)
    try:
        xapi = running.session()
        xapi.xenapi.event.register(["*"])
        vm = guest_vm(xapi, "Running")
        for _ in range(5):
            xapi.xenapi.VM.pause(vm)
            xapi.xenapi.VM.unpause(vm)
        with pytest.raises(XenAPI.Failure) as e:
            xapi.xenapi.event.next()
        assert e.value.details == ["EVENTS_LOST"]
    finally:
        stop_server(running)


def test_stopping_server_answers_a_blocked_event_from_at_once(tmp_path):
    running = start_server(tmp_path)
    try:
        waiter = running.session()
        token = waiter.xenapi.event_from(["vm"], "", 0.0)["token"]
        answers = []
        t = threading.Thread(target=lambda: answers.append(waiter.xenapi.event_from(["vm"], token, 60.0)))
        t.start()
        deadline = time.monotonic() + 10                 # until the call is parked in the server
        while not any(c.busy for c in list(running.http._connections)):
            assert time.monotonic() < deadline and t.is_alive()
            time.sleep(0.01)
        start = time.monotonic()
    finally:
        stop_server(running)
    t.join(10)
    assert answers and answers[0]["events"] == [] and answers[0]["token"]
    assert time.monotonic() - start < 3                  # not the 60 s timeout, nor shutdown's 5 s


def test_a_long_poll_that_starts_after_the_server_began_stopping_answers_at_once(tmp_path):
    """The race a drain must not lose: the request was read, the stop came, then it would wait."""
    running = start_server(tmp_path)
    try:
        x = running.session().xenapi
        token = x.event_from(["vm"], "", 0.0)["token"]
        x.event.register(["vm"])
        running.server.drain()
        start = time.monotonic()
        assert x.event_from(["vm"], token, 60.0)["events"] == []
        assert x.event.next() == []
        assert time.monotonic() - start < 5               # not the 60 s (or event.next's 30 s) wait
    finally:
        stop_server(running)
