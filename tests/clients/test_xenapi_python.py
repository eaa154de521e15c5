"""The official Python client (PyPI ``XenAPI``) running the workflows real scripts run.

Sessions (2/3/4-argument logins, ``API_version``, logout, transparent re-login), VM listing,
the power lifecycle sync and through ``Async.`` tasks (the way powercycle.py and
vm_start_async.py drive it), errors as ``XenAPI.Failure``, clone/create/destroy, look-ups, and
events: ``event_from`` (also for changes made in libvirt behind the server's back),
``event.inject``, and the legacy ``event.register``/``event.next``.
"""
from __future__ import annotations

import threading
import time
import xmlrpc.client
from datetime import datetime, timedelta, timezone

import pytest
import XenAPI

from tests.conftest import guest_vm

pytestmark = pytest.mark.clients

NULL = "OpaqueRef:NULL"
MiB = 1024 * 1024
ADMIN_PASSWORD = "admin-pw"

# What each power state must and must not offer in allowed_operations (xapi_vm_lifecycle.ml).
OFFERED = {
    "Running": ({"clean_shutdown", "hard_shutdown", "clean_reboot", "hard_reboot", "pause", "suspend"},
                {"start", "unpause", "resume", "destroy"}),
    "Paused": ({"unpause", "hard_shutdown", "hard_reboot"},
               {"start", "pause", "suspend", "resume", "clean_shutdown", "clean_reboot", "destroy"}),
    "Suspended": ({"resume", "hard_shutdown", "destroy"},
                  {"start", "suspend", "pause", "unpause", "clean_shutdown", "clean_reboot", "hard_reboot"}),
    "Halted": ({"start", "clone", "destroy"},
               {"clean_shutdown", "hard_shutdown", "clean_reboot", "hard_reboot", "pause", "unpause", "suspend",
                "resume"}),
}

# (operation, extra args, power state after) -- the whole cycle, starting from Running
LIFECYCLE = [
    ("pause", (), "Paused"),
    ("unpause", (), "Running"),
    ("suspend", (), "Suspended"),
    ("resume", (False, False), "Running"),
    ("clean_shutdown", (), "Halted"),
    ("start", (False, False), "Running"),
    ("clean_reboot", (), "Running"),
    ("hard_reboot", (), "Running"),
    ("hard_shutdown", (), "Halted"),
]


# ------------------------------------------------------------------------------ helpers ---
def put_in_state(xapi, vm: str, state: str) -> None:
    """From Running, into ``state`` through the API."""
    steps = {"Running": [], "Paused": ["pause"], "Suspended": ["suspend"], "Halted": ["hard_shutdown"]}
    for op in steps[state]:
        getattr(xapi.xenapi.VM, op)(vm)
    assert xapi.xenapi.VM.get_power_state(vm) == state


def wait_task(xapi, task: str, timeout: float = 10.0) -> str:
    """Poll task.get_status the way vm_start_async.py and Ansible do, until it is not pending."""
    deadline = time.monotonic() + timeout
    while (status := xapi.xenapi.task.get_status(task)) == "pending":
        assert time.monotonic() < deadline, f"task {task} still pending after {timeout} s"
        time.sleep(0.01)
    return status


def wire_time(value: xmlrpc.client.DateTime) -> datetime:
    return datetime.strptime(value.value, "%Y%m%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def next_event(xapi, classes, token, predicate, timeout: float = 10.0):
    """Loop event_from until an event satisfies ``predicate``: (event, elapsed seconds)."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        batch = xapi.xenapi.event_from(classes, token, max(0.1, deadline - time.monotonic()))
        token = batch["token"]
        for event in batch["events"]:
            if predicate(event):
                return event, time.monotonic() - start
    raise AssertionError(f"no matching {classes} event within {timeout} s")


def is_vm_now(vm: str, state: str, *, settled: bool = False):
    """A mod of ``vm`` showing ``state``; settled: and no operation still running on it."""
    return lambda e: (e["ref"] == vm and e["operation"] == "mod" and e["snapshot"]["power_state"] == state
                      and (not settled or e["snapshot"]["current_operations"] == {}))


def failure(call, *args) -> list[str]:
    with pytest.raises(XenAPI.Failure) as info:
        call(*args)
    return info.value.details


def raw(url: str) -> xmlrpc.client.ServerProxy:
    """A plain XML-RPC proxy: no transparent re-login, answers are the bare Status structs."""
    return xmlrpc.client.ServerProxy(url, allow_none=True)


def vm_create_record(name: str) -> dict:
    """Exactly the fields xapi's VM.create insists on, as a Python script passes them."""
    return {
        "name_label": name, "name_description": "made by VM.create", "user_version": "1",
        "is_a_template": False, "affinity": NULL,
        "memory_static_max": str(128 * MiB), "memory_dynamic_max": str(128 * MiB),
        "memory_dynamic_min": str(128 * MiB), "memory_static_min": str(128 * MiB),
        "VCPUs_params": {}, "VCPUs_max": "2", "VCPUs_at_startup": "2",
        "actions_after_shutdown": "destroy", "actions_after_reboot": "restart", "actions_after_crash": "destroy",
        "PV_bootloader": "", "PV_kernel": "", "PV_ramdisk": "", "PV_args": "", "PV_bootloader_args": "",
        "PV_legacy_args": "", "HVM_boot_policy": "BIOS order", "HVM_boot_params": {"order": "dc"},
        "platform": {}, "PCI_bus": "", "other_config": {"made-by": "test"}, "recommendations": "",
    }


# ------------------------------------------------------------------------------ sessions ---
@pytest.mark.parametrize("extra", [(), ("2.21",), ("2.21", "pytest-originator")], ids=["2-args", "3-args", "4-args"])
def test_login_with_two_three_or_four_arguments_opens_a_working_session(running, extra):
    session = XenAPI.Session(running.url)
    session.xenapi.login_with_password("root", ADMIN_PASSWORD, *extra)
    try:
        me = session._session
        assert me.startswith("OpaqueRef:")
        assert session.xenapi.session.get_this_host(me) == running.server.master_ref
        assert session.xenapi.session.get_originator(me) == (extra[1] if len(extra) == 2 else "")
        assert len(session.xenapi.VM.get_all()) == 3
    finally:
        session.xenapi.session.logout()


def test_login_with_a_wrong_password_raises_failure_session_authentication_failed(running):
    details = failure(XenAPI.Session(running.url).xenapi.login_with_password, "root", "not-the-password")
    assert details[0] == "SESSION_AUTHENTICATION_FAILED"


def test_api_version_is_read_from_the_pool_masters_host_record(running, xapi, calls):
    calls.clear()
    version = xapi.API_version

    master = xapi.xenapi.pool.get_master(xapi.xenapi.pool.get_all()[0])
    major, minor = xapi.xenapi.host.get_API_version_major(master), xapi.xenapi.host.get_API_version_minor(master)
    assert version == f"{major}.{minor}" == "2.21"
    assert calls.methods()[:4] == ["pool.get_all", "pool.get_master", "host.get_API_version_major",
                                   "host.get_API_version_minor"]


def test_logout_makes_the_old_session_ref_give_session_invalid(running):
    session = running.session()
    old = session._session
    session.xenapi.session.logout()

    answer = raw(running.url).VM.get_all(old)
    assert answer == {"Status": "Failure", "ErrorDescription": ["SESSION_INVALID", old]}


def test_after_logout_the_xenapi_client_refuses_to_call_rather_than_log_in_again(running):
    session = running.session()
    session.xenapi.session.logout()

    with pytest.raises(xmlrpc.client.Fault) as info:
        session.xenapi.VM.get_all()
    assert info.value.faultCode == 401


def test_session_ended_by_the_server_is_renewed_transparently_by_the_xenapi_client(running, xapi):
    old = xapi._session
    assert raw(running.url).session.logout(old) == {"Status": "Success", "Value": ""}

    assert len(xapi.xenapi.VM.get_all()) == 3        # SESSION_INVALID -> the client logged in again
    assert xapi._session != old and xapi._session.startswith("OpaqueRef:")


def test_logout_ends_a_blocked_event_from_of_that_session_with_session_invalid(running, calls):
    session = running.session()
    token = session.xenapi.event_from(["vm"], "", 0.0)["token"]
    answer = {}

    def listen():
        start = time.monotonic()
        answer["reply"] = raw(running.url).event_from(session._session, ["vm"], token, 30.0)
        answer["seconds"] = time.monotonic() - start

    listener = threading.Thread(target=listen)
    listener.start()
    calls.wait_in_flight("event_from")        # the long poll has reached the server and blocks
    raw(running.url).session.logout(session._session)
    listener.join(10)

    assert not listener.is_alive(), "event.from still blocked 10 s after its session logged out"
    assert answer["reply"] == {"Status": "Failure", "ErrorDescription": ["SESSION_INVALID", session._session]}
    assert answer["seconds"] < 5


# ------------------------------------------------------------------------------ listing ---
def test_get_all_records_gives_uniform_records_and_the_control_domain(running, xapi):
    records = xapi.xenapi.VM.get_all_records()

    key_sets = {frozenset(rec) for rec in records.values()}
    assert len(key_sets) == 1, "every VM record must carry the same keys"
    controls = [rec for rec in records.values() if rec["is_control_domain"]]
    assert len(controls) == 1 and controls[0]["resident_on"] == running.server.master_ref
    assert controls[0]["power_state"] == "Running"
    assert xapi.xenapi.host.get_control_domain(running.server.master_ref) in records
    assert sorted(rec["name_label"] for rec in records.values() if not rec["is_control_domain"]) == ["vm0", "vm1"]
    for ref, rec in records.items():
        assert xapi.xenapi.VM.get_record(ref) == rec


def test_every_vm_links_to_an_existing_vm_metrics_record_including_the_control_domain(xapi):
    # xapi creates dom0's VM_metrics at start-up (create_misc.ml ensure_domain_zero_metrics_record)
    for ref, rec in xapi.xenapi.VM.get_all_records().items():
        assert rec["metrics"] != NULL, f"{rec['name_label']} has no VM_metrics"
        assert xapi.xenapi.VM_metrics.get_record(rec["metrics"])["uuid"]


def test_get_by_name_label_and_get_by_uuid_find_the_vm(xapi):
    vm = xapi.xenapi.VM.get_by_name_label("vm0")
    assert len(vm) == 1
    uuid = xapi.xenapi.VM.get_uuid(vm[0])
    assert xapi.xenapi.VM.get_by_uuid(uuid) == vm[0]
    assert xapi.xenapi.VM.get_by_name_label("no such vm") == []
    unknown = "00000000-0000-4000-8000-000000000000"
    assert failure(xapi.xenapi.VM.get_by_uuid, unknown) == ["UUID_INVALID", "VM", unknown]


# ------------------------------------------------------------------------------ lifecycle ---
def _assert_state(xapi, running, vm, state):
    rec = xapi.xenapi.VM.get_record(vm)
    must, must_not = OFFERED[state]
    offered = set(rec["allowed_operations"])
    assert rec["power_state"] == state
    assert must <= offered, f"{state}: {sorted(must - offered)} missing from allowed_operations {sorted(offered)}"
    assert not offered & must_not, f"{state}: {sorted(offered & must_not)} wrongly in allowed_operations"
    assert rec["current_operations"] == {}
    live = state in ("Running", "Paused")
    assert rec["resident_on"] == (running.server.master_ref if live else NULL)
    assert (rec["domid"] != "-1") == live


def test_sync_lifecycle_walks_every_power_state_with_matching_allowed_operations(running, xapi):
    vm = guest_vm(xapi, "Running")
    _assert_state(xapi, running, vm, "Running")
    for op, args, after in LIFECYCLE:
        assert getattr(xapi.xenapi.VM, op)(vm, *args) == "", op
        _assert_state(xapi, running, vm, after)


def test_powercycle_example_loop_runs_on_every_guest(running):
    """xapi's powercycle.py, ported: normalise every guest to Halted, then start/suspend/resume/stop."""
    session = XenAPI.Session(running.url)
    session.xenapi.login_with_password("root", ADMIN_PASSWORD, "1.0", "xen-api-scripts-powercycle.py")
    x = session.xenapi
    try:
        vms = [ref for ref, rec in x.VM.get_all_records().items()
               if not rec["is_a_template"] and not rec["is_control_domain"]]
        for vm in vms:
            state = x.VM.get_record(vm)["power_state"]
            if state == "Suspended":
                x.VM.resume(vm, False, True)
                x.VM.clean_shutdown(vm)
            elif state == "Paused":
                x.VM.unpause(vm)
                x.VM.clean_shutdown(vm)
            elif state == "Running":
                x.VM.clean_shutdown(vm)
            for _ in range(3):
                x.VM.start(vm, False, True)
                deadline = time.monotonic() + 10
                while "suspend" not in x.VM.get_record(vm)["allowed_operations"]:
                    assert time.monotonic() < deadline, "'suspend' never appeared in allowed_operations"
                    time.sleep(0.01)
                x.VM.suspend(vm)
                assert x.VM.get_power_state(vm) == "Suspended"
                x.VM.resume(vm, False, True)
                assert x.VM.get_power_state(vm) == "Running"
                x.VM.clean_shutdown(vm)
        assert [x.VM.get_power_state(vm) for vm in vms] == ["Halted"] * len(vms) and len(vms) == 2
    finally:
        session.xenapi.session.logout()


def test_async_lifecycle_tasks_succeed_with_full_progress_and_an_empty_value(running, xapi):
    vm = guest_vm(xapi, "Running")
    before = datetime.now(timezone.utc) - timedelta(seconds=2)
    for op, args, after in LIFECYCLE:
        task = getattr(xapi.xenapi.Async.VM, op)(vm, *args)
        assert task.startswith("OpaqueRef:"), op

        assert wait_task(xapi, task) == "success", op
        rec = xapi.xenapi.task.get_record(task)
        assert rec["status"] == "success" and rec["progress"] == 1.0, (op, rec)
        assert rec["result"] == "<value></value>" and rec["error_info"] == [], (op, rec)
        assert rec["name_label"] == f"Async.VM.{op}"
        created, finished = wire_time(rec["created"]), wire_time(rec["finished"])
        assert before <= created <= finished <= datetime.now(timezone.utc) + timedelta(seconds=2), op
        _assert_state(xapi, running, vm, after)

        assert xapi.xenapi.task.destroy(task) == ""
        assert failure(xapi.xenapi.task.get_record, task) == ["HANDLE_INVALID", "task", task]
    assert xapi.xenapi.task.get_all() == []


def test_async_start_of_a_running_vm_fails_its_task_with_vm_bad_power_state(xapi):
    vm = guest_vm(xapi, "Running")
    task = xapi.xenapi.Async.VM.start(vm, False, False)

    assert wait_task(xapi, task) == "failure"
    rec = xapi.xenapi.task.get_record(task)
    assert rec["error_info"] == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    assert rec["progress"] == 1.0 and rec["result"] == ""
    assert wire_time(rec["created"]) <= wire_time(rec["finished"])
    xapi.xenapi.task.destroy(task)
    assert xapi.xenapi.VM.get_power_state(vm) == "Running"


@pytest.mark.parametrize("op, args, state, expected", [
    ("start", (False, False), "Running", "halted"),
    ("suspend", (), "Halted", "running"),
    ("resume", (False, False), "Running", "suspended"),
    ("unpause", (), "Running", "paused"),
    ("pause", (), "Paused", "running"),
    ("hard_shutdown", (), "Halted", "paused, suspended, running"),
    ("hard_reboot", (), "Suspended", "paused, running"),
])
def test_operation_in_the_wrong_power_state_raises_failure_vm_bad_power_state(xapi, op, args, state, expected):
    vm = guest_vm(xapi, "Running")
    put_in_state(xapi, vm, state)

    details = failure(getattr(xapi.xenapi.VM, op), vm, *args)
    assert details == ["VM_BAD_POWER_STATE", vm, expected, state.lower()]
    assert xapi.xenapi.VM.get_power_state(vm) == state


# ------------------------------------------------------------------------------ clone / create / destroy ---
def test_clone_makes_a_halted_copy_that_can_start_and_be_destroyed(xapi):
    source = guest_vm(xapi, "Halted")
    clone = xapi.xenapi.VM.clone(source, "vm1-clone")

    rec, original = xapi.xenapi.VM.get_record(clone), xapi.xenapi.VM.get_record(source)
    assert rec["name_label"] == "vm1-clone" and rec["power_state"] == "Halted"
    assert rec["uuid"] != original["uuid"]
    assert (rec["memory_static_max"], rec["VCPUs_max"]) == (original["memory_static_max"], original["VCPUs_max"])
    assert xapi.xenapi.VM.get_by_name_label("vm1-clone") == [clone]
    xapi.xenapi.VM.start(clone, False, False)
    assert xapi.xenapi.VM.get_power_state(clone) == "Running"
    xapi.xenapi.VM.hard_shutdown(clone)
    xapi.xenapi.VM.destroy(clone)
    assert clone not in xapi.xenapi.VM.get_all()
    assert failure(xapi.xenapi.VM.get_record, clone) == ["HANDLE_INVALID", "VM", clone]


def test_async_clone_result_is_the_new_vm_ref_as_an_xmlrpc_value(xapi):
    task = xapi.xenapi.Async.VM.clone(guest_vm(xapi, "Halted"), "async-clone")

    assert wait_task(xapi, task) == "success"
    result = xapi.xenapi.task.get_record(task)["result"]
    (clone,), _ = xmlrpc.client.loads(f"<methodResponse><params><param>{result}</param></params></methodResponse>")
    assert xapi.xenapi.VM.get_name_label(clone) == "async-clone"
    assert xapi.xenapi.VM.get_by_name_label("async-clone") == [clone]
    xapi.xenapi.task.destroy(task)


def test_create_defines_a_vm_with_the_given_fields_that_starts_and_is_destroyed(xapi):
    vm = xapi.xenapi.VM.create(vm_create_record("created"))

    rec = xapi.xenapi.VM.get_record(vm)
    assert rec["name_label"] == "created" and rec["power_state"] == "Halted"
    assert rec["memory_static_max"] == str(128 * MiB) and rec["VCPUs_max"] == "2"
    assert rec["other_config"].get("made-by") == "test"
    assert "start" in rec["allowed_operations"]
    xapi.xenapi.VM.start(vm, False, False)
    assert xapi.xenapi.VM.get_power_state(vm) == "Running"
    assert failure(xapi.xenapi.VM.destroy, vm)[0] == "VM_BAD_POWER_STATE"
    xapi.xenapi.VM.hard_shutdown(vm)
    xapi.xenapi.VM.destroy(vm)
    assert xapi.xenapi.VM.get_by_name_label("created") == []


# ------------------------------------------------------------------------------ events ---
@pytest.mark.parametrize("classes", [["vm"], ["*"]], ids=["vm", "all"])
def test_event_from_empty_token_returns_every_object_as_add_with_a_full_snapshot(xapi, classes):
    batch = xapi.xenapi.event_from(classes, "", 30.0)

    records = xapi.xenapi.VM.get_all_records()
    vm_events = [e for e in batch["events"] if e["class"] == "vm"]
    assert sorted(e["ref"] for e in vm_events) == sorted(records)
    for event in batch["events"]:
        assert event["operation"] == "add"
        assert {"id", "timestamp", "class", "operation", "ref", "snapshot"} <= set(event)
    for event in vm_events:
        assert event["snapshot"] == records[event["ref"]]
    assert isinstance(batch["token"], str) and batch["token"]
    assert int(batch["valid_ref_counts"]["vm"]) == len(records)
    if classes == ["*"]:
        assert {"vm", "host", "pool"} <= {e["class"] for e in batch["events"]}


def test_event_from_with_nothing_happening_returns_no_events_at_its_timeout(xapi):
    token = xapi.xenapi.event_from(["vm"], "", 0.0)["token"]
    start = time.monotonic()
    batch = xapi.xenapi.event_from(["vm"], token, 0.5)

    assert 0.4 <= time.monotonic() - start < 5
    assert batch["events"] == [] and isinstance(batch["token"], str)


def test_event_from_delivers_a_power_change_made_by_another_session_as_a_mod(running, xapi):
    vm = guest_vm(xapi, "Running")
    token = xapi.xenapi.event_from(["vm"], "", 0.0)["token"]
    other = running.session()
    changer = threading.Thread(target=other.xenapi.VM.hard_shutdown, args=(vm,))
    changer.start()
    try:
        event, seconds = next_event(xapi, ["vm"], token, is_vm_now(vm, "Halted", settled=True), timeout=30.0)
    finally:
        changer.join(10)
        other.xenapi.session.logout()

    assert seconds < 10, "event_from waited for its timeout instead of waking on the change"
    assert event["class"] == "vm" and event["snapshot"] == xapi.xenapi.VM.get_record(vm)
    assert "start" in event["snapshot"]["allowed_operations"]


def _destroy_in_libvirt(conn, uuid):
    conn.destroy(uuid)


def _pause_in_libvirt(conn, uuid):
    conn.pause(uuid)


@pytest.mark.parametrize("change, state", [(_destroy_in_libvirt, "Halted"), (_pause_in_libvirt, "Paused")],
                         ids=["destroyed", "paused"])
def test_event_from_sees_a_vm_changed_in_libvirt_behind_the_servers_back(running, xapi, change, state):
    vm = guest_vm(xapi, "Running")
    token = xapi.xenapi.event_from(["vm"], "", 0.0)["token"]
    # the server's own libvirt connection, used directly: no API call, no reconciler.refresh
    conn = running.server.hosts.connection(running.server.master_ref)
    change(conn, xapi.xenapi.VM.get_uuid(vm))

    event, seconds = next_event(xapi, ["vm"], token, is_vm_now(vm, state), timeout=10.0)
    assert seconds < 5
    assert xapi.xenapi.VM.get_power_state(vm) == state
    assert event["snapshot"]["resident_on"] == (running.server.master_ref if state == "Paused" else NULL)


def test_event_from_reports_an_async_tasks_add_its_success_and_its_destroy(xapi):
    vm = guest_vm(xapi, "Halted")
    token = xapi.xenapi.event_from(["task"], "", 0.0)["token"]
    task = xapi.xenapi.Async.VM.start(vm, False, False)

    done, _ = next_event(xapi, ["task"], token,
                         lambda e: e["ref"] == task and e["operation"] in ("add", "mod")
                         and e["snapshot"]["status"] == "success")
    assert done["snapshot"]["result"] == "<value></value>"
    token = xapi.xenapi.event_from(["task"], "", 0.0)["token"]
    xapi.xenapi.task.destroy(task)
    gone, _ = next_event(xapi, ["task"], token, lambda e: e["ref"] == task and e["operation"] == "del")
    assert gone["class"] == "task"


def test_event_inject_token_makes_event_from_return_the_injected_event_at_once(xapi):
    # xapi_event.ml inject: the token is the generation *before* the touch, so event.from(token)
    # returns the injected event; XO's connect relies on it for its first event.from
    pool = xapi.xenapi.pool.get_all()[0]
    token = xapi.xenapi.event.inject("pool", pool)
    start = time.monotonic()
    batch = xapi.xenapi.event_from(["pool"], token, 30.0)

    assert [(e["class"], e["ref"]) for e in batch["events"]] == [("pool", pool)]
    assert time.monotonic() - start < 10            # answered at once, not at the 30 s timeout


def test_event_register_then_next_returns_the_vm_changes(xapi):
    vm = guest_vm(xapi, "Running")
    xapi.xenapi.event.register(["vm"])
    xapi.xenapi.VM.pause(vm)

    seen = []
    deadline = time.monotonic() + 10
    while not any(e["ref"] == vm and e.get("snapshot", {}).get("power_state") == "Paused" for e in seen):
        assert time.monotonic() < deadline, f"no Paused event from event.next: {seen}"
        seen += xapi.xenapi.event.next()
    assert {e["class"] for e in seen} == {"vm"}
    assert all(e["operation"] == "mod" and "id" in e for e in seen)
    ids = [int(e["id"]) for e in seen]
    assert ids == sorted(ids)
    assert xapi.xenapi.event.unregister(["vm"]) == ""


def test_event_next_without_register_fails_with_session_not_registered(xapi):
    assert failure(xapi.xenapi.event.next) == ["SESSION_NOT_REGISTERED", xapi._session]
