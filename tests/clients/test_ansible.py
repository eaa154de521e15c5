"""Ansible's ``community.general.xenserver_guest_info`` and ``xenserver_guest_powerstate``.

Each test runs the module for real (``ansible localhost -c local -m ...`` with the JSON stdout
callback, module interpreter = this venv's Python with XenAPI), then checks the module's result,
the VM's real power state through the API, and -- through the ``calls`` spy -- which XenAPI
calls the module made (e.g. Async.VM.clean_shutdown, task polling, task.destroy, logout).
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.clients

MiB = 1024 * 1024


def _target(running) -> dict:
    return {"hostname": running.url.removeprefix("http://"), "username": "root", "password": "admin-pw"}


def _vm(xapi, name: str) -> str:
    (ref,) = xapi.xenapi.VM.get_by_name_label(name)
    return ref


def _ansible(calls):
    """What the module sent: the calls of the sessions it opened (originator "Ansible")."""
    return calls.of_originator("Ansible")


def _ok(run) -> dict:
    result = run.result
    assert not result.get("failed"), f"module failed: {result.get('msg')}\n{result.get('exception', '')}"
    return result


def _check_instance(instance: dict, rec: dict, state: str) -> None:
    assert instance["name"] == rec["name_label"] and instance["uuid"] == rec["uuid"]
    assert instance["state"] == state
    assert instance["is_template"] is False
    assert instance["hardware"]["num_cpus"] == int(rec["VCPUs_max"])
    assert instance["hardware"]["memory_mb"] == int(rec["memory_dynamic_max"]) // MiB
    assert instance["disks"] == [] and instance["networks"] == []
    assert instance["domid"] == rec["domid"]


# ------------------------------------------------------------------------------ guest_info ---
@pytest.mark.parametrize("by", ["name", "uuid"])
def test_guest_info_by_name_or_uuid_returns_the_vms_facts(running, xapi, calls, ansible_module, by):
    vm = _vm(xapi, "vm0")
    rec = xapi.xenapi.VM.get_record(vm)
    key = {"name": {"name": "vm0"}, "uuid": {"uuid": rec["uuid"]}}[by]

    result = _ok(ansible_module("xenserver_guest_info", **_target(running), **key))
    calls = _ansible(calls)

    assert result["changed"] is False
    _check_instance(result["instance"], rec, "poweredon")
    methods = calls.methods()
    assert methods[0] == "session.login_with_password"
    login = calls.named("session.login_with_password")[0]
    assert len(login.params) == 4 and login.params[3] == "Ansible"
    assert {"pool.get_default_SR", "session.get_this_host", "host.get_software_version", "VM.get_record"} <= set(methods)
    assert ("VM.get_by_name_label" if by == "name" else "VM.get_by_uuid") in methods
    assert methods[-1] == "session.logout"
    assert all(type(c.outcome).__name__ == "Success" for c in calls.entries), \
        [(c.method, c.outcome) for c in calls.entries if type(c.outcome).__name__ != "Success"]


def test_guest_info_of_a_halted_vm_reports_poweredoff(running, xapi, ansible_module):
    rec = xapi.xenapi.VM.get_record(_vm(xapi, "vm1"))

    result = _ok(ansible_module("xenserver_guest_info", **_target(running), name="vm1"))
    _check_instance(result["instance"], rec, "poweredoff")


def test_guest_info_of_an_unknown_name_fails_with_not_found(running, ansible_module):
    result = ansible_module("xenserver_guest_info", **_target(running), name="no-such-vm").result

    assert result["failed"] is True
    assert "not found" in result["msg"].lower() and "no-such-vm" in result["msg"]


def test_guest_info_with_a_wrong_password_fails_with_the_xapi_error(running, ansible_module):
    target = {**_target(running), "password": "wrong"}
    result = ansible_module("xenserver_guest_info", **target, name="vm0").result

    assert result["failed"] is True
    assert "SESSION_AUTHENTICATION_FAILED" in result["msg"]


# ------------------------------------------------------------------------------ powerstate ---
def _prepare(xapi, vm: str, state: str) -> None:
    """vm0 starts Running; bring it to ``state``."""
    ops = {"Running": [], "Paused": ["pause"], "Suspended": ["suspend"], "Halted": ["hard_shutdown"]}[state]
    for op in ops:
        getattr(xapi.xenapi.VM, op)(vm)
    assert xapi.xenapi.VM.get_power_state(vm) == state


POWER_CASES = [
    # (from, module args, instance.state, power state after, the call that must have been made)
    ("Running", {"state": "powered-off"}, "poweredoff", "Halted", "VM.hard_shutdown"),
    ("Halted", {"state": "powered-on"}, "poweredon", "Running", "VM.start"),
    ("Suspended", {"state": "powered-on"}, "poweredon", "Running", "VM.resume"),
    ("Paused", {"state": "powered-on"}, "poweredon", "Running", "VM.unpause"),
    ("Running", {"state": "restarted"}, "poweredon", "Running", "VM.hard_reboot"),
    ("Running", {"state": "suspended"}, "suspended", "Suspended", "VM.suspend"),
    ("Running", {"state": "shutdown-guest", "state_change_timeout": 0}, "poweredoff", "Halted", "VM.clean_shutdown"),
    ("Running", {"state": "shutdown-guest", "state_change_timeout": 30}, "poweredoff", "Halted",
     "Async.VM.clean_shutdown"),
    ("Running", {"state": "reboot-guest", "state_change_timeout": 0}, "poweredon", "Running", "VM.clean_reboot"),
    ("Running", {"state": "reboot-guest", "state_change_timeout": 30}, "poweredon", "Running",
     "Async.VM.clean_reboot"),
]


@pytest.mark.parametrize("start, args, fact, after, call", POWER_CASES,
                         ids=[f"{c[0].lower()}-{c[1]['state']}{'-async' if c[1].get('state_change_timeout') else ''}"
                              for c in POWER_CASES])
def test_powerstate_changes_the_vm_and_reports_its_new_state(running, xapi, calls, ansible_module,
                                                             start, args, fact, after, call):
    vm = _vm(xapi, "vm0")
    _prepare(xapi, vm, start)

    result = _ok(ansible_module("xenserver_guest_powerstate", **_target(running), name="vm0", **args))
    calls = _ansible(calls)

    assert result["changed"] is True
    assert result["instance"]["state"] == fact
    assert xapi.xenapi.VM.get_power_state(vm) == after
    made = calls.named(call)
    assert len(made) == 1 and made[0].params[1] == vm
    assert type(made[0].outcome).__name__ == "Success"
    if call.startswith("Async."):
        task = made[0].outcome.value
        assert [c.params[1] for c in calls.named("task.destroy")] == [task]
        assert all(c.outcome.value in ("pending", "success") for c in calls.named("task.get_status"))
    assert xapi.xenapi.task.get_all() == []
    assert calls.methods()[-1] == "session.logout"


@pytest.mark.parametrize("state, power_state", [("powered-on", "Running"), ("powered-off", "Halted")])
def test_powerstate_already_in_the_wanted_state_changes_nothing(running, xapi, calls, ansible_module,
                                                                state, power_state):
    vm = _vm(xapi, "vm0")
    _prepare(xapi, vm, power_state)

    result = _ok(ansible_module("xenserver_guest_powerstate", **_target(running), name="vm0", state=state))
    calls = _ansible(calls)

    assert result["changed"] is False
    assert xapi.xenapi.VM.get_power_state(vm) == power_state
    power_calls = {"VM.start", "VM.hard_shutdown", "VM.resume", "VM.unpause", "VM.clean_shutdown"}
    assert not power_calls & set(calls.methods())


def test_powerstate_suspend_of_a_halted_vm_fails_and_leaves_it_halted(running, xapi, ansible_module):
    vm = _vm(xapi, "vm1")

    result = ansible_module("xenserver_guest_powerstate", **_target(running), name="vm1", state="suspended").result

    assert result["failed"] is True and "poweredoff" in result["msg"]
    assert xapi.xenapi.VM.get_power_state(vm) == "Halted"
