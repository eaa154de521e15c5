"""Xen Orchestra's Node client, npm ``xen-api@4.7.6``, against a real server.

Each test runs ``tests/clients/node/xo_client.mjs <scenario>`` (see that file) with Node, over
both transports: ``auto`` (JSON-RPC on /jsonrpc) and ``xml-rpc`` (which makes the library parse
our XML with its whitespace-intolerant parser).  The Node side prints a JSON report; the Python
side checks it, the server's state through the official XenAPI client, and -- through the
``calls`` spy -- what the library actually sent.  Node must exit on its own after
``disconnect()``: the library leaves its event.from long poll open, so that also checks that
session.logout ends a blocked event.from.
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.clients

TRANSPORTS = {"auto": "jsonrpc2", "xml-rpc": "xmlrpc"}   # library option -> protocol the server decoded
both_transports = pytest.mark.parametrize("transport", list(TRANSPORTS))


def _no_event_loop_warnings(run) -> None:
    assert "_watchEvents" not in run.stderr, f"XO's event loop logged a failure:\n{run.stderr}"


@both_transports
def test_connect_syncs_every_vm_into_the_cache_with_all_fields_then_disconnects(running, xapi, calls,
                                                                                   xo_client, transport):
    run = xo_client("connect", running.url, transport)
    report = run.report

    records = xapi.xenapi.VM.get_all_records()
    assert report["status"] == "connected" and report["statusAfterDisconnect"] == "disconnected"
    assert report["watchEventsError"] is None
    _no_event_loop_warnings(run)
    assert report["counts"]["VM"] == len(records) == 3
    assert report["counts"]["pool"] == 1 and report["counts"]["host"] == 1
    assert report["pool"]["master"] == running.server.master_ref and report["pool"]["masterType"] == "host"
    by_ref = {vm["ref"]: vm for vm in report["vms"]}
    assert by_ref.keys() == records.keys()
    for ref, rec in records.items():
        vm = by_ref[ref]
        assert (vm["name_label"], vm["power_state"], vm["is_control_domain"]) == \
            (rec["name_label"], rec["power_state"], rec["is_control_domain"])
        assert set(vm["fields"]) == set(rec), "XO keeps only the first record's keys: records must be uniform"
        assert vm["byUuid"] == ref
        if not rec["is_control_domain"]:   # (the control domain's metrics: see test_xenapi_python)
            assert vm["metricsType"] == "VM_metrics"
        assert vm["residentOnType"] == ("host" if rec["power_state"] == "Running" else None)
    assert sum(vm["is_control_domain"] for vm in report["vms"]) == 1


@both_transports
def test_connect_sends_the_documented_sequence_over_the_chosen_protocol(running, calls, xo_client, transport):
    xo_client("connect", running.url, transport)

    methods = calls.methods()
    assert methods[:4] == ["session.login_with_password", "pool.get_all_records", "system.listMethods",
                           "event.inject"], methods
    assert len(calls.named("session.login_with_password")[0].params) == 2
    assert "VM.get_all_records" in methods and "event.from" in methods
    event_from = calls.named("event.from")[0]
    assert isinstance(event_from.params[3], float) and event_from.params[3] > 60
    assert calls.protocols() == {TRANSPORTS[transport]}
    logout = calls.wait_for("session.logout")
    assert type(logout.outcome).__name__ == "Success"
    # the long poll that was blocked when XO logged out has ended (Node could exit)
    assert all(c.outcome is not None for c in calls.named("event.from"))


@both_transports
def test_call_starts_and_call_async_stops_a_vm_and_destroys_its_task(running, xapi, calls, xo_client, transport):
    run = xo_client("power", running.url, transport)
    report = run.report
    ref = report["ref"]

    assert report["startResult"] == "" and report["afterStart"] == "Running"
    assert report["shutdownResult"] == "" and report["afterShutdown"] == "Halted"
    assert report["tasksLeft"] == 0
    _no_event_loop_warnings(run)
    assert xapi.xenapi.VM.get_power_state(ref) == "Halted"
    assert xapi.xenapi.task.get_all() == []
    start = calls.named("VM.start")[0]
    assert start.params[1:] == (ref, False, False)
    async_call = calls.named("Async.VM.clean_shutdown")[0]
    task = async_call.outcome.value
    assert task.startswith("OpaqueRef:")
    assert [c.params[1] for c in calls.named("task.destroy")] == [task]
    # XO learns the task's end from event.from, never by polling
    assert "task.get_status" not in calls.methods() and "task.get_record" not in calls.methods()
    barrier_keys = [c.params[2] for c in calls.named("pool.add_to_other_config")]
    assert barrier_keys and all(key.startswith("xo:barrier:") for key in barrier_keys)


@both_transports
def test_errors_reach_xo_as_xapi_codes_with_params(running, xo_client, transport):
    report = xo_client("errors", running.url, transport).report
    ref = report["ref"]

    assert report["sync"]["error"]["code"] == "VM_BAD_POWER_STATE"
    assert report["sync"]["error"]["params"] == [ref, "halted", "running"]
    assert report["async"]["error"]["code"] == "VM_BAD_POWER_STATE"
    assert report["async"]["error"]["params"] == [ref, "halted", "running"]
    assert report["async"]["error"]["taskStatus"] == "failure"
    bad = "OpaqueRef:00000000-0000-0000-0000-00000000dead"
    assert report["badHandle"]["error"]["code"] == "HANDLE_INVALID"
    assert report["badHandle"]["error"]["params"] == ["VM", bad]
    assert report["unknownMethod"]["error"]["code"] == "MESSAGE_METHOD_UNKNOWN"
    assert report["unknownMethod"]["error"]["params"] == ["VM.no_such_message"]


@both_transports
def test_set_field_and_set_field_entry_are_seen_through_the_event_cache(running, xapi, calls, xo_client,
                                                                       transport):
    report = xo_client("fields", running.url, transport).report
    ref = report["ref"]

    assert report["afterSet"]["name_description"] == "described by XO"
    assert report["afterSet"]["other_config"].get("xo:test") == "two"
    assert "xo:test" not in report["afterRemove"]
    assert report["byUuid"] == {"ref": ref, "name_label": xapi.xenapi.VM.get_name_label(ref),
                                "name_description": "described by XO"}
    assert xapi.xenapi.VM.get_name_description(ref) == "described by XO"
    assert "xo:test" not in xapi.xenapi.VM.get_other_config(ref)
    # setFieldEntry removes first, so the second add never meets MAP_DUPLICATE_KEY
    adds = calls.named("VM.add_to_other_config")
    assert len(adds) == 2 and all(type(c.outcome).__name__ == "Success" for c in adds)


def _halt_through_the_api(running, xapi, ref):
    xapi.xenapi.VM.hard_shutdown(ref)


def _halt_behind_the_servers_back(running, xapi, ref):
    running.server.hosts.connection(running.server.master_ref).destroy(xapi.xenapi.VM.get_uuid(ref))


@both_transports
@pytest.mark.parametrize("halt", [_halt_through_the_api, _halt_behind_the_servers_back],
                         ids=["by-another-client", "in-libvirt"])
def test_cache_follows_a_vm_halted_elsewhere_while_connected(running, xapi, xo_client, transport, halt):
    node = xo_client.start("watch", running.url, transport, expect="Halted")
    try:
        ref = node.wait_ready()
        assert xapi.xenapi.VM.get_power_state(ref) == "Running"
        halt(running, xapi, ref)
        run = node.finish()
    finally:
        node.kill()

    assert run.report["ref"] == ref and run.report["powerState"] == "Halted"
    assert "Halted" in run.report["seen"]
    _no_event_loop_warnings(run)


def test_wrong_password_makes_connect_fail_with_authentication_failed(running, xo_client):
    report = xo_client("connect", running.url, "auto", exit_code=2, password="wrong").report

    assert report["error"]["code"] == "SESSION_AUTHENTICATION_FAILED"
    assert report["error"]["params"][0] == "root"
