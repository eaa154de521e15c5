"""The official Python client (PyPI ``XenAPI``) running the workflows real scripts run.

Sessions (2/3/4-argument logins, ``API_version``, logout, transparent re-login), VM listing,
the power lifecycle sync and through ``Async.`` tasks (the way powercycle.py and
vm_start_async.py drive it), errors as ``XenAPI.Failure``, clone/create/destroy, look-ups, and
events: ``event_from`` (also for changes made in libvirt behind the server's back),
``event.inject``, and the legacy ``event.register``/``event.next``.

Storage, the way xapi's scripts (install.py, provision.py) drive it, on the embedded default
(``test:///default``, whose "Local storage" is the driver's own pool) and on a private
``test:///<file>`` host (whose "Local storage" is a dir pool the server defines): a template made
with VM.create + VDI.create + VBD.create + VM.set_is_a_template, a VM made from it with VM.clone or
VM.copy and VM.provision (also from an ``other_config["disks"]`` provision spec, with ``sr=""`` and
with the SR uuid as install.py rewrites it), a data disk, an ISO library and a CD drive
(VBD.insert/eject), a boot, a detach, and VM.destroy that leaves the VDIs for VDI.destroy.  Each
step is checked in the records, in event_from, in the domain's libvirt XML and in the pool's volumes.
"""
from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET
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


# ------------------------------------------------------------------------------ storage ---
GiB = 1024 * MiB
EMBEDDED = "test:///default"     # the server's default host (conftest.py's ``running`` takes it as a parameter)
NODE_FILE = None                 # the root fixture's private test:///<file> host
on_both_hosts = pytest.mark.parametrize("running", [EMBEDDED, NODE_FILE], indirect=True,
                                        ids=["embedded-default", "node-file"])
PROVISIONER = "Created by template provisioner"


def default_sr(x) -> str:
    return x.pool.get_default_SR(x.pool.get_all()[0])


def vdi_fields(sr: str, size: int, name: str, **over) -> dict:
    """VDI.create's record as scripts pass it; sizes are strings (xmlrpc.client sends no int above 2^31-1)."""
    return {"SR": sr, "virtual_size": str(size), "type": "user", "sharable": False, "read_only": False,
            "other_config": {}, "name_label": name, "name_description": "", **over}


def vbd_fields(vm: str, vdi: str, userdevice: str, *, cd: bool = False, bootable: bool = False) -> dict:
    """VBD.create's record as Ansible and scripts pass it: a disk, or a CD drive (empty with VDI NULL)."""
    return {"VM": vm, "VDI": vdi, "userdevice": userdevice, "bootable": bootable, "mode": "RO" if cd else "RW",
            "type": "CD" if cd else "Disk", "empty": vdi == NULL, "other_config": {}, "qos_algorithm_type": "",
            "qos_algorithm_params": {}}


def template_with_a_disk(x, name: str, size: int) -> tuple[str, str, str]:
    """(template, its VDI, its VBD): VM.create, VDI.create on the default SR, VBD.create in bootable
    slot 0, then VM.set_is_a_template -- how a script makes a template of its own."""
    vm = x.VM.create(vm_create_record(name))
    vdi = x.VDI.create(vdi_fields(default_sr(x), size, f"{name} disk", type="system"))
    vbd = x.VBD.create(vbd_fields(vm, vdi, "0", bootable=True))
    x.VM.set_is_a_template(vm, True)
    return vm, vdi, vbd


class Libvirt:
    """What the host's libvirt holds, read through the server's own connection (no API call)."""

    def __init__(self, running, x):
        self.conn = running.server.hosts.connection(running.server.master_ref)
        self.x = x

    def disks(self, vm: str, *, live: bool = False) -> dict[str, dict]:
        """Target dev -> {device, pool, volume, readonly} of the VM's domain: its persistent
        definition, or with ``live`` the running domain."""
        root = ET.fromstring(self.conn.xml(self.x.VM.get_uuid(vm), inactive=not live))
        out = {}
        for disk in root.findall("devices/disk"):
            source = disk.find("source")
            out[disk.find("target").get("dev")] = {
                "device": disk.get("device"),
                "pool": None if source is None else source.get("pool"),
                "volume": None if source is None else source.get("volume"),
                "readonly": disk.find("readonly") is not None}
        return out

    def names(self, vm: str, *, live: bool = False) -> dict[str, str | None]:
        """Target dev -> volume name of the VM's domain."""
        return {dev: d["volume"] for dev, d in self.disks(vm, live=live).items()}

    def volumes(self, sr: str) -> set[str]:
        return set(self.conn.volume_names(self.x.SR.get_uuid(sr)))

    def volume(self, vdi: str):
        rec = self.x.VDI.get_record(vdi)
        return self.conn.volume_state(self.x.SR.get_uuid(rec["SR"]), rec["sm_config"]["volume"])

    def source_of(self, vdi: str, device: str = "disk", readonly: bool = False) -> dict:
        """The <disk> a domain has for this VDI: its SR's pool and its volume."""
        rec = self.x.VDI.get_record(vdi)
        pool = self.conn.pool_state(self.x.SR.get_uuid(rec["SR"])).name
        return {"device": device, "pool": pool, "volume": rec["sm_config"]["volume"], "readonly": readonly}

    def pools(self) -> set[str]:
        return {p.uuid for p in self.conn.list_pools()}


class Watch:
    """event_from on the storage classes from now on, as a script's event loop runs it."""

    CLASSES = ["vm", "vbd", "vdi", "sr", "pbd"]

    def __init__(self, x):
        self.x = x
        self.token = x.event_from(self.CLASSES, "", 0.0)["token"]
        self.events: list[dict] = []

    def seen(self) -> set[tuple[str, str, str]]:
        return {(e["class"], e["operation"], e["ref"]) for e in self.events}

    def _more(self, deadline: float, missing) -> None:
        left = deadline - time.monotonic()
        assert left > 0, f"{missing()} not seen; seen {sorted(self.seen())}"
        batch = self.x.event_from(self.CLASSES, self.token, max(0.1, left))
        self.token = batch["token"]
        self.events += batch["events"]

    def until(self, *wanted: tuple[str, str, str], timeout: float = 10.0) -> "Watch":
        """Until each (class, operation, ref) has come."""
        deadline = time.monotonic() + timeout
        while not set(wanted) <= self.seen():
            self._more(deadline, lambda: f"events {sorted(set(wanted) - self.seen())}")
        return self

    def last(self, cls: str, ref: str) -> dict | None:
        """The last snapshot event_from gave of an object (None before any)."""
        snapshots = [e["snapshot"] for e in self.events if (e["class"], e["ref"]) == (cls, ref) and "snapshot" in e]
        return snapshots[-1] if snapshots else None

    def settles(self, cls: str, ref: str, predicate, timeout: float = 10.0) -> dict:
        """Until the last snapshot of an object satisfies ``predicate``; that snapshot."""
        deadline = time.monotonic() + timeout
        while (snapshot := self.last(cls, ref)) is None or not predicate(snapshot):
            self._more(deadline, lambda: f"a {cls} {ref} snapshot as wanted (last: {self.last(cls, ref)})")
        return snapshot


@on_both_hosts
def test_a_template_with_a_disk_made_through_the_api_has_a_volume_and_a_disk_in_its_domain(running, xapi):
    x = xapi.xenapi
    virt = Libvirt(running, x)
    sr = default_sr(x)
    assert sr != NULL and x.SR.get_name_label(sr) == "Local storage"
    watch = Watch(x)

    tmpl, vdi, vbd = template_with_a_disk(x, "script template", GiB)

    watch.until(("vm", "add", tmpl), ("vdi", "add", vdi), ("vbd", "add", vbd))
    watch.settles("sr", sr, lambda snapshot: vdi in snapshot["VDIs"])
    v = x.VDI.get_record(vdi)
    assert (v["SR"], v["virtual_size"], v["type"], v["name_label"]) == (sr, str(GiB), "system", "script template disk")
    assert v["VBDs"] == [vbd] and v["read_only"] is False and v["managed"] is True
    assert vdi in x.SR.get_VDIs(sr)
    b = x.VBD.get_record(vbd)
    assert (b["VM"], b["VDI"], b["userdevice"], b["type"], b["mode"], b["bootable"], b["empty"]) == \
        (tmpl, vdi, "0", "Disk", "RW", True, False)
    assert b["currently_attached"] is False
    assert x.VM.get_VBDs(tmpl) == [vbd] and x.VM.get_is_a_template(tmpl) is True
    volume = virt.volume(vdi)
    assert volume.name in virt.volumes(sr) and volume.capacity == GiB and v["location"] == volume.path
    assert virt.disks(tmpl) == {b["device"]: virt.source_of(vdi)}
    assert failure(x.VM.start, tmpl, False, False)[0] == "VM_IS_TEMPLATE"


COPY_SR = {"copy-into-the-sr": "sr", "copy-sr-empty": "", "copy-sr-null": NULL}


@on_both_hosts
@pytest.mark.parametrize("how", ["clone", *COPY_SR])
def test_vm_from_a_template_by_clone_or_copy_then_provision_boots_on_a_disk_of_its_own(running, xapi, how):
    x = xapi.xenapi
    virt = Libvirt(running, x)
    sr = default_sr(x)
    tmpl, tmpl_vdi, tmpl_vbd = template_with_a_disk(x, "tmpl", GiB)
    watch = Watch(x)

    if how == "clone":
        vm = x.VM.clone(tmpl, "from template")
    else:
        vm = x.VM.copy(tmpl, "from template", sr if COPY_SR[how] == "sr" else COPY_SR[how])
    assert x.VM.get_is_a_template(vm) is True            # inherited from the template, as in xapi
    x.VM.provision(vm)
    assert x.VM.get_is_a_template(vm) is False

    (vbd,) = x.VM.get_VBDs(vm)
    b = x.VBD.get_record(vbd)
    vdi = b["VDI"]
    assert vdi not in (NULL, tmpl_vdi)
    assert (b["VM"], b["userdevice"], b["type"], b["mode"], b["bootable"], b["empty"]) == \
        (vm, "0", "Disk", "RW", True, False)
    v = x.VDI.get_record(vdi)
    assert (v["SR"], v["virtual_size"], v["VBDs"], v["read_only"]) == (sr, str(GiB), [vbd], False)
    watch.until(("vm", "add", vm), ("vdi", "add", vdi), ("vbd", "add", vbd))
    watch.settles("vm", vm, lambda snapshot: snapshot["is_a_template"] is False and snapshot["VBDs"] == [vbd])
    # the template keeps its disk; the new VM's is a new volume: an overlay on the template's for a
    # clone, a full copy for a copy
    assert x.VM.get_VBDs(tmpl) == [tmpl_vbd] and x.VDI.get_VBDs(tmpl_vdi) == [tmpl_vbd]
    volume, original = virt.volume(vdi), virt.volume(tmpl_vdi)
    assert volume.name != original.name and volume.capacity == GiB
    assert volume.backing == (original.path if how == "clone" else "")
    assert virt.disks(vm) == {b["device"]: virt.source_of(vdi)}
    assert list(virt.disks(tmpl).values()) == [virt.source_of(tmpl_vdi)]

    x.VM.start(vm, False, False)
    assert x.VM.get_power_state(vm) == "Running" and x.VBD.get_currently_attached(vbd) is True
    assert virt.names(vm, live=True) == {b["device"]: volume.name}
    x.VM.hard_shutdown(vm)
    x.VM.destroy(vm)
    assert x.VDI.get_VBDs(vdi) == [] and volume.name in virt.volumes(sr)       # VM.destroy keeps the VDIs
    x.VDI.destroy(vdi)
    assert volume.name not in virt.volumes(sr) and vdi not in x.SR.get_VDIs(sr)
    assert original.name in virt.volumes(sr) and x.VDI.get_VBDs(tmpl_vdi) == [tmpl_vbd]


def provision_spec(sr: str) -> str:
    """A template's other_config["disks"] as xapi's built-in templates carry it."""
    return ("<provision>"
            f'<disk device="0" size="{2 * GiB}" sr="{sr}" bootable="true" type="system"/>'
            f'<disk device="1" size="{GiB}" sr="{sr}" bootable="false" type="user"/>'
            "</provision>")


def install_py_rewrite(x, vm: str, sr_uuid: str) -> None:
    """install.py's provision.py: read the spec, point every disk at the SR uuid, write it back
    (its printer drops the type attribute)."""
    other_config = x.VM.get_other_config(vm)
    disks = ET.fromstring(other_config["disks"]).findall("disk")
    other_config["disks"] = "<provision>" + "".join(
        f'<disk device="{d.get("device")}" size="{d.get("size")}" sr="{sr_uuid}" bootable="{d.get("bootable")}"/>'
        for d in disks) + "</provision>"
    x.VM.set_other_config(vm, other_config)


@on_both_hosts
@pytest.mark.parametrize("spec_sr", ["empty", "uuid-by-install.py"])
def test_provision_makes_the_disks_of_a_templates_provision_spec(running, xapi, spec_sr):
    x = xapi.xenapi
    virt = Libvirt(running, x)
    sr = default_sr(x)
    tmpl = x.VM.create({**vm_create_record("provisioned template"),
                        "other_config": {"disks": provision_spec(""), "default_template": "true"}})
    x.VM.set_is_a_template(tmpl, True)
    before = set(x.SR.get_VDIs(sr))
    vm = x.VM.clone(tmpl, "installed")
    assert x.VM.get_other_config(vm)["disks"] == provision_spec("")
    if spec_sr == "uuid-by-install.py":
        install_py_rewrite(x, vm, x.SR.get_uuid(sr))
    watch = Watch(x)

    x.VM.provision(vm)

    rec = x.VM.get_record(vm)
    assert rec["is_a_template"] is False and "disks" not in rec["other_config"]
    assert x.VM.get_other_config(tmpl)["disks"] == provision_spec("")        # the template keeps its spec
    vbds = sorted((x.VBD.get_record(b) for b in rec["VBDs"]), key=lambda b: b["userdevice"])
    assert [(b["userdevice"], b["type"], b["mode"], b["bootable"], b["other_config"]) for b in vbds] == \
        [("0", "Disk", "RW", True, {"owner": ""}), ("1", "Disk", "RW", False, {"owner": ""})]
    vdis = [x.VDI.get_record(b["VDI"]) for b in vbds]
    # xapi's provisioner: VDIs named after their slot; the type is the spec's (system where install.py
    # dropped it); a disk of type system may not be unplugged
    types = ["system", "user"] if spec_sr == "empty" else ["system", "system"]
    assert [(v["name_label"], v["name_description"], v["SR"], v["virtual_size"], v["type"]) for v in vdis] == \
        [("0", PROVISIONER, sr, str(2 * GiB), types[0]), ("1", PROVISIONER, sr, str(GiB), types[1])]
    assert [b["unpluggable"] for b in vbds] == [t != "system" for t in types]
    refs = [b["VDI"] for b in vbds]
    assert set(x.SR.get_VDIs(sr)) == before | set(refs)
    watch.until(*(("vdi", "add", r) for r in refs), *(("vbd", "add", b) for b in rec["VBDs"]), ("vm", "mod", vm))
    assert [virt.volume(r).capacity for r in refs] == [2 * GiB, GiB]
    assert virt.disks(vm) == {b["device"]: virt.source_of(b["VDI"]) for b in vbds}

    x.VM.start(vm, False, False)
    assert all(x.VBD.get_currently_attached(b) for b in rec["VBDs"])
    x.VM.hard_shutdown(vm)
    x.VM.destroy(vm)
    names = [virt.volume(r).name for r in refs]
    for ref in refs:
        x.VDI.destroy(ref)
    assert set(x.SR.get_VDIs(sr)) == before and not set(names) & virt.volumes(sr)


@on_both_hosts
def test_provision_naming_an_unknown_sr_fails_with_uuid_invalid_and_leaves_no_disk(running, xapi):
    x = xapi.xenapi
    virt = Libvirt(running, x)
    sr = default_sr(x)
    bogus = "00000000-0000-4000-8000-00000000beef"
    spec = ("<provision>"
            f'<disk device="0" size="{GiB}" sr="{x.SR.get_uuid(sr)}" bootable="true" type="system"/>'
            f'<disk device="1" size="{GiB}" sr="{bogus}" bootable="false" type="user"/>'
            "</provision>")
    vm = x.VM.create({**vm_create_record("half provisioned"), "other_config": {"disks": spec}})
    x.VM.set_is_a_template(vm, True)
    vdis, volumes = set(x.SR.get_VDIs(sr)), virt.volumes(sr)

    assert failure(x.VM.provision, vm) == ["UUID_INVALID", "sr", bogus]

    assert x.VM.get_VBDs(vm) == [] and virt.disks(vm) == {}
    assert set(x.SR.get_VDIs(sr)) == vdis and virt.volumes(sr) == volumes      # the first disk was undone
    assert x.VM.get_other_config(vm)["disks"] == spec


@on_both_hosts
def test_install_workflow_data_disk_iso_library_cd_boot_eject_detach_then_destroy_vm_and_disks(running, xapi,
                                                                                                tmp_path):
    x = xapi.xenapi
    virt = Libvirt(running, x)
    sr, host = default_sr(x), running.server.master_ref
    tmpl, tmpl_vdi, _ = template_with_a_disk(x, "install template", GiB)
    vm = x.VM.clone(tmpl, "installed")
    x.VM.provision(vm)
    (root_vbd,) = x.VM.get_VBDs(vm)
    root = x.VBD.get_VDI(root_vbd)

    # a data disk: VDI.create + VBD.create (3 GiB: an int64 above 2^31 travels as a string)
    watch = Watch(x)
    data = x.VDI.create(vdi_fields(sr, 3 * GiB, "data"))
    data_vbd = x.VBD.create(vbd_fields(vm, data, "1"))
    watch.until(("vdi", "add", data), ("vbd", "add", data_vbd), ("vm", "mod", vm))
    assert x.VDI.get_virtual_size(data) == str(3 * GiB) and virt.volume(data).capacity == 3 * GiB
    assert set(x.VM.get_VBDs(vm)) == {root_vbd, data_vbd} and x.VDI.get_VBDs(data) == [data_vbd]
    data_dev = x.VBD.get_device(data_vbd)
    assert virt.disks(vm)[data_dev] == virt.source_of(data)

    # an ISO library on a directory, and an ISO in it
    isos = tmp_path / "isos"
    iso_sr = x.SR.create(host, {"location": str(isos)}, "0", "ISO library", "installation media", "iso", "iso",
                         False, {})
    s = x.SR.get_record(iso_sr)
    assert (s["name_label"], s["type"], s["content_type"], s["shared"]) == ("ISO library", "iso", "iso", False)
    (pbd,) = s["PBDs"]
    p = x.PBD.get_record(pbd)
    assert (p["host"], p["SR"], p["currently_attached"], p["device_config"]) == \
        (host, iso_sr, True, {"location": str(isos)})
    pool = virt.conn.pool_state(s["uuid"])
    assert pool.active and pool.path == str(isos)
    iso = x.VDI.create(vdi_fields(iso_sr, 4 * MiB, "install.iso"))
    assert x.VDI.get_by_name_label("install.iso") == [iso] and x.SR.get_VDIs(iso_sr) == [iso]
    assert virt.volume(iso).path == str(isos / x.VDI.get_sm_config(iso)["volume"])

    # an empty CD drive, then the ISO in it
    cd = x.VBD.create(vbd_fields(vm, NULL, "3", cd=True))
    c = x.VBD.get_record(cd)
    assert (c["type"], c["mode"], c["empty"], c["VDI"]) == ("CD", "RO", True, NULL)
    assert "insert" in c["allowed_operations"] and "eject" not in c["allowed_operations"]
    cd_dev = c["device"]
    assert virt.disks(vm)[cd_dev] == {"device": "cdrom", "pool": None, "volume": None, "readonly": True}
    watch = Watch(x)
    x.VBD.insert(cd, iso)
    watch.settles("vbd", cd, lambda snapshot: snapshot["VDI"] == iso and snapshot["empty"] is False)
    watch.settles("vdi", iso, lambda snapshot: snapshot["VBDs"] == [cd])
    c = x.VBD.get_record(cd)
    assert (c["empty"], c["VDI"]) == (False, iso) and "eject" in c["allowed_operations"]
    assert x.VDI.get_VBDs(iso) == [cd]
    assert virt.disks(vm)[cd_dev] == virt.source_of(iso, "cdrom", readonly=True)

    # boot: every drive attached, the running domain on the same volumes
    x.VM.start(vm, False, False)
    vbds = [root_vbd, data_vbd, cd]
    assert x.VM.get_power_state(vm) == "Running"
    assert [x.VBD.get_currently_attached(b) for b in vbds] == [True, True, True]
    assert virt.names(vm, live=True) == {x.VBD.get_device(root_vbd): virt.volume(root).name,
                                         data_dev: virt.volume(data).name, cd_dev: virt.volume(iso).name}
    assert failure(x.VBD.destroy, data_vbd)[0] == "OPERATION_NOT_ALLOWED"      # attached: unplug first
    assert failure(x.VDI.destroy, data)[0] == "VDI_IN_USE"

    # shut down; eject the ISO, detach the data disk (the disk stays)
    x.VM.clean_shutdown(vm)
    assert [x.VBD.get_currently_attached(b) for b in vbds] == [False, False, False]
    watch = Watch(x)
    x.VBD.eject(cd)
    watch.settles("vbd", cd, lambda snapshot: snapshot["VDI"] == NULL and snapshot["empty"] is True)
    watch.settles("vdi", iso, lambda snapshot: snapshot["VBDs"] == [])
    c = x.VBD.get_record(cd)
    assert (c["empty"], c["VDI"]) == (True, NULL) and x.VDI.get_VBDs(iso) == []
    assert virt.disks(vm)[cd_dev] == {"device": "cdrom", "pool": None, "volume": None, "readonly": True}
    x.VBD.destroy(data_vbd)
    watch.until(("vbd", "del", data_vbd))
    assert set(x.VM.get_VBDs(vm)) == {root_vbd, cd} and x.VDI.get_VBDs(data) == []
    assert data_dev not in virt.disks(vm) and virt.volume(data).name in virt.volumes(sr)
    assert failure(x.VBD.get_record, data_vbd) == ["HANDLE_INVALID", "VBD", data_vbd]

    # VM.destroy takes the VM and its VBDs, not its VDIs (Ansible destroys them itself afterwards)
    disks = [root, data]
    names = [virt.volume(v).name for v in disks]
    x.VM.destroy(vm)
    watch.until(("vm", "del", vm), ("vbd", "del", root_vbd), ("vbd", "del", cd))
    assert vm not in x.VM.get_all() and not {root_vbd, cd} & set(x.VBD.get_all())
    assert [x.VDI.get_VBDs(v) for v in disks] == [[], []] and set(names) <= virt.volumes(sr)
    for vdi in disks:
        x.VDI.destroy(vdi)
    watch.until(("vdi", "del", root), ("vdi", "del", data))
    watch.settles("sr", sr, lambda snapshot: not set(disks) & set(snapshot["VDIs"]))
    assert not set(names) & virt.volumes(sr) and not set(disks) & set(x.SR.get_VDIs(sr))
    assert tmpl_vdi in x.SR.get_VDIs(sr) and virt.volume(tmpl_vdi).name in virt.volumes(sr)

    # the ISO library goes too: its ISO, then unplug and destroy
    x.VDI.destroy(iso)
    x.PBD.unplug(pbd)
    x.SR.destroy(iso_sr)
    watch.until(("sr", "del", iso_sr), ("pbd", "del", pbd), ("vdi", "del", iso))
    assert iso_sr not in x.SR.get_all() and pbd not in x.PBD.get_all() and s["uuid"] not in virt.pools()


def _insert_then_eject_live(x, virt, vm, cd, iso) -> None:
    """Offered: VBD.insert and VBD.eject change the medium of the running domain and of its
    definition.  Not offered (a host that cannot change a running domain's devices): refused with
    OPERATION_NOT_ALLOWED, as VBD.plug is there, and nothing changes."""
    dev = x.VBD.get_device(cd)
    if "insert" not in x.VBD.get_allowed_operations(cd):
        assert failure(x.VBD.insert, cd, iso)[0] == "OPERATION_NOT_ALLOWED"
        assert (x.VBD.get_empty(cd), virt.disks(vm, live=True)[dev]["volume"]) == (True, None)
        return
    x.VBD.insert(cd, iso)
    assert (x.VBD.get_empty(cd), x.VBD.get_VDI(cd)) == (False, iso)
    assert virt.disks(vm, live=True)[dev] == virt.disks(vm)[dev] == virt.source_of(iso, "cdrom", readonly=True)
    assert "eject" in x.VBD.get_allowed_operations(cd)
    x.VBD.eject(cd)
    assert (x.VBD.get_empty(cd), x.VBD.get_VDI(cd)) == (True, NULL)
    assert virt.disks(vm, live=True)[dev]["volume"] is None and virt.disks(vm)[dev]["volume"] is None


@on_both_hosts
def test_cd_insert_and_eject_on_a_running_vm_work_where_offered_and_are_refused_cleanly_elsewhere(running, xapi,
                                                                                                  tmp_path):
    x = xapi.xenapi
    iso_sr = x.SR.create(running.server.master_ref, {"location": str(tmp_path / "isos")}, "0", "ISO library", "",
                         "iso", "iso", False, {})
    iso = x.VDI.create(vdi_fields(iso_sr, 4 * MiB, "live.iso"))
    vm = x.VM.create(vm_create_record("cd user"))
    cd = x.VBD.create(vbd_fields(vm, NULL, "3", cd=True))
    x.VM.start(vm, False, False)
    assert x.VBD.get_currently_attached(cd) is True

    _insert_then_eject_live(x, Libvirt(running, x), vm, cd, iso)
