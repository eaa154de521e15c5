"""Ansible's ``community.general.xenserver_guest_info``, ``xenserver_guest_powerstate`` and ``xenserver_guest``.

Each test runs the module for real (``ansible localhost -c local -m ...`` with the JSON stdout
callback, module interpreter = this venv's Python with XenAPI), then checks the module's result,
the VM's real power state through the API, and -- through the ``calls`` spy -- which XenAPI
calls the module made (e.g. Async.VM.clean_shutdown, task polling, task.destroy, logout).

``xenserver_guest`` deploys a VM from a template with disks of given sizes on a named SR and a CD
with an ISO, grows a disk and adds one, powers the VM on and removes it with its disks; after each
step the VDIs and VBDs are checked through the API and in libvirt (the domain's disks, the pool's
volumes), on the embedded default (``test:///default``) and on a private ``test:///<file>`` host.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from tests.conftest import vm_create_args

pytestmark = pytest.mark.clients

MiB = 1024 * 1024
GiB = 1024 * MiB
NULL = "OpaqueRef:NULL"
EMBEDDED = "test:///default"     # the server's default host (conftest.py's ``running`` takes it as a parameter)
NODE_FILE = None                 # the root fixture's private test:///<file> host


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


@pytest.mark.parametrize("running", [EMBEDDED], indirect=True, ids=["embedded-default"])
def test_guest_info_of_the_embedded_defaults_builtin_vm_reports_its_disks(running, xapi, ansible_module):
    rec = xapi.xenapi.VM.get_record(_vm(xapi, "test"))
    drives = [xapi.xenapi.VBD.get_record(vbd) for vbd in rec["VBDs"]]

    result = _ok(ansible_module("xenserver_guest_info", **_target(running), name="test"))

    assert all(b["VDI"] != NULL for b in drives if b["type"] == "Disk"), \
        "a Disk VBD always has a VDI (only a CD drive is empty)"
    assert len(result["instance"]["disks"]) == sum(b["type"] == "Disk" for b in drives)


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


# ------------------------------------------------------------------------------ guest: deploy to removal ---
ISO = "ansible-install.iso"
VM_NAME = "ansible-vm"
LOCAL = "Local storage"
PROVISION_SPEC = (f'<provision><disk device="0" size="{10 * GiB}" sr="" bootable="true" type="system"/>'
                  "</provision>")


def _vdi_fields(sr: str, size: int, name: str, **over) -> dict:
    return {"SR": sr, "virtual_size": str(size), "type": "user", "sharable": False, "read_only": False,
            "other_config": {}, "name_label": name, "name_description": "", **over}


def _make_template(x, kind: str) -> tuple[str, str | None]:
    """(template, its disk's VDI or None).  "custom": a template of one's own, a 1 GiB system disk
    in slot 0 (VM.create + VDI.create + VBD.create + VM.set_is_a_template).  "default": as xapi's
    built-in templates, no disk but a provision spec with sr="" and default_template=true, which
    the module removes before VM.provision."""
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    if kind == "default":
        tmpl = x.VM.create(vm_create_args(name_label="ansible template", other_config={
            "default_template": "true", "disks": PROVISION_SPEC}))
        x.VM.set_is_a_template(tmpl, True)
        return tmpl, None
    tmpl = x.VM.create(vm_create_args(name_label="ansible template"))
    vdi = x.VDI.create(_vdi_fields(sr, GiB, "template disk", type="system"))
    x.VBD.create({"VM": tmpl, "VDI": vdi, "userdevice": "0", "bootable": True, "mode": "RW", "type": "Disk",
                  "empty": False, "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
    x.VM.set_is_a_template(tmpl, True)
    return tmpl, vdi


def _iso_library(running, x, tmp_path) -> tuple[str, str]:
    """(ISO SR, the ISO's VDI): an ISO library on a directory and an ISO made in it."""
    sr = x.SR.create(running.server.master_ref, {"location": str(tmp_path / "isos")}, "0", "ISO library", "",
                     "iso", "iso", False, {})
    return sr, x.VDI.create(_vdi_fields(sr, 4 * MiB, ISO))


def _drives(x, vm: str) -> dict[str, dict]:
    """userdevice -> {type, empty, VDI, size, sr, name, attached, device} of the VM's VBDs, through the API."""
    out = {}
    for vbd in x.VM.get_VBDs(vm):
        b = x.VBD.get_record(vbd)
        v = x.VDI.get_record(b["VDI"]) if b["VDI"] != NULL else None
        out[b["userdevice"]] = {
            "vbd": vbd, "type": b["type"], "empty": b["empty"], "VDI": b["VDI"], "device": b["device"],
            "attached": b["currently_attached"], "size": int(v["virtual_size"]) if v else None,
            "sr": x.SR.get_name_label(v["SR"]) if v else None, "name": v["name_label"] if v else None}
    return out


def _domain_volumes(running, x, vm: str, *, live: bool = False) -> dict[str, tuple[str, str | None]]:
    """Target dev -> (disk or cdrom, volume name) of the VM's libvirt domain."""
    conn = running.server.hosts.connection(running.server.master_ref)
    root = ET.fromstring(conn.xml(x.VM.get_uuid(vm), inactive=not live))
    return {d.find("target").get("dev"): (d.get("device"), d.find("source").get("volume")
                                          if d.find("source") is not None else None)
            for d in root.findall("devices/disk")}


def _volume(x, vdi: str) -> str:
    return x.VDI.get_sm_config(vdi)["volume"]


def _volumes(running, x, sr: str) -> set[str]:
    conn = running.server.hosts.connection(running.server.master_ref)
    return set(conn.volume_names(x.SR.get_uuid(sr)))


def _all_succeeded(calls) -> None:
    failed = [(c.method, c.outcome) for c in calls.entries if type(c.outcome).__name__ != "Success"]
    assert not failed, failed


DEPLOYS = [
    # (host, template kind, linked_clone, how the module instantiates it)
    (EMBEDDED, "custom", False, "VM.copy"),
    (EMBEDDED, "custom", True, "VM.clone"),
    (EMBEDDED, "default", False, "VM.copy"),
    (NODE_FILE, "custom", False, "VM.copy"),
]


@pytest.mark.parametrize("running, kind, linked, instantiate", DEPLOYS, indirect=["running"],
                         ids=["embedded-default-copy", "embedded-default-linked-clone",
                              "embedded-default-builtin-template", "node-file-copy"])
def test_guest_deploys_with_disks_and_an_iso_then_grows_adds_powers_on_and_removes_it(
        running, xapi, calls, ansible_module, tmp_path, kind, linked, instantiate):
    x = xapi.xenapi
    local = x.pool.get_default_SR(x.pool.get_all()[0])
    assert x.SR.get_name_label(local) == LOCAL
    tmpl, tmpl_vdi = _make_template(x, kind)
    iso_sr, iso = _iso_library(running, x, tmp_path)
    target = _target(running)
    cdrom = {"type": "iso", "iso_name": ISO}

    # 1. deploy: a 1 GiB and a 2 GiB disk on "Local storage", the ISO in a CD drive
    calls.clear()
    result = _ok(ansible_module("xenserver_guest", **target, name=VM_NAME, template="ansible template",
                                linked_clone=linked, state="present", cdrom=cdrom,
                                disks=[{"size_gb": 1, "sr": LOCAL}, {"size_gb": 2, "sr": LOCAL}]))
    made = _ansible(calls)
    _all_succeeded(made)

    assert result["changed"] is True
    vm = _vm(xapi, VM_NAME)
    rec = x.VM.get_record(vm)
    assert (rec["is_a_template"], rec["power_state"]) == (False, "Halted")
    (copy,) = made.named(instantiate)
    assert copy.params[1:3] == (tmpl, VM_NAME) and copy.outcome.value == vm
    if instantiate == "VM.copy":
        assert copy.params[3] == local                       # the SR of disks[0], found by its name
    assert len(made.named("VM.provision")) == 1
    assert "disks" not in x.VM.get_other_config(vm)
    if kind == "default":                                    # the module dropped the sr="" spec itself
        (set_oc,) = made.named("VM.set_other_config")
        assert "disks" not in set_oc.params[2]
    drives = _drives(x, vm)
    assert set(drives) == {"0", "1", "3"}
    assert (drives["0"]["type"], drives["0"]["size"], drives["0"]["sr"]) == ("Disk", GiB, LOCAL)
    assert (drives["1"]["type"], drives["1"]["size"], drives["1"]["sr"], drives["1"]["name"]) == \
        ("Disk", 2 * GiB, LOCAL, f"{VM_NAME}-1")
    assert (drives["3"]["type"], drives["3"]["empty"], drives["3"]["VDI"]) == ("CD", False, iso)
    if tmpl_vdi is not None:                                 # a disk of its own, the template's untouched
        assert drives["0"]["VDI"] != tmpl_vdi and len(x.VDI.get_VBDs(tmpl_vdi)) == 1
    assert x.VDI.get_VBDs(iso) == [drives["3"]["vbd"]]
    new_disks = [c.params[1] for c in made.named("VDI.create")]
    assert [(d["virtual_size"], d["SR"], d["type"]) for d in new_disks] == \
        ([(str(GiB), local, "user")] if kind == "default" else []) + [(str(2 * GiB), local, "user")]
    assert "VM.get_allowed_VBD_devices" in made.methods()
    (insert,) = made.named("VBD.insert")
    assert insert.params[1:] == (drives["3"]["vbd"], iso)
    facts = result["instance"]
    assert [(d["size"], d["sr"], d["vbd_userdevice"]) for d in facts["disks"]] == \
        [(GiB, LOCAL, "0"), (2 * GiB, LOCAL, "1")]
    assert facts["cdrom"] == {"type": "iso", "iso_name": ISO} and facts["state"] == "poweredoff"
    assert _domain_volumes(running, x, vm) == {
        drives["0"]["device"]: ("disk", _volume(x, drives["0"]["VDI"])),
        drives["1"]["device"]: ("disk", _volume(x, drives["1"]["VDI"])),
        drives["3"]["device"]: ("cdrom", _volume(x, iso))}

    # 2. reconfigure: disk 1 grows to 3 GiB, a third disk of 1 GiB comes in the next free slot
    calls.clear()
    result = _ok(ansible_module("xenserver_guest", **target, name=VM_NAME, state="present", cdrom=cdrom,
                                disks=[{"size_gb": 1}, {"size_gb": 3}, {"size_gb": 1, "sr": LOCAL, "name": "extra"}]))
    made = _ansible(calls)
    _all_succeeded(made)

    assert result["changed"] is True
    assert result["changes"] == [{"disks_changed": [[], ["size"]]},
                                 {"disks_new": [{"name": "extra", "position": 2, "size_gb": "1", "sr": LOCAL,
                                                 "vbd_userdevice": "2"}]},
                                 "need_poweredoff"]
    (resize,) = made.named("VDI.resize")
    assert resize.params[1:] == (drives["1"]["VDI"], str(3 * GiB))
    grown = _drives(x, vm)
    assert set(grown) == {"0", "1", "2", "3"}
    assert grown["1"]["VDI"] == drives["1"]["VDI"] and grown["1"]["size"] == 3 * GiB
    assert (grown["2"]["type"], grown["2"]["size"], grown["2"]["sr"], grown["2"]["name"]) == \
        ("Disk", GiB, LOCAL, "extra")
    assert grown["3"]["VDI"] == iso and "VBD.insert" not in made.methods() and "VBD.plug" not in made.methods()
    conn = running.server.hosts.connection(running.server.master_ref)
    assert conn.volume_state(x.SR.get_uuid(local), _volume(x, grown["1"]["VDI"])).capacity == 3 * GiB
    assert _domain_volumes(running, x, vm)[grown["2"]["device"]] == ("disk", _volume(x, grown["2"]["VDI"]))
    assert [(d["size"], d["vbd_userdevice"]) for d in result["instance"]["disks"]] == \
        [(GiB, "0"), (3 * GiB, "1"), (GiB, "2")]

    # 3. power on: every drive attached, the running domain on the same volumes
    calls.clear()
    result = _ok(ansible_module("xenserver_guest", **target, name=VM_NAME, state="poweredon"))
    assert result["changed"] is True and result["instance"]["state"] == "poweredon"
    assert _ansible(calls).named("VM.start")[0].params[1:] == (vm, False, False)
    assert x.VM.get_power_state(vm) == "Running"
    running_drives = _drives(x, vm)
    assert all(d["attached"] for d in running_drives.values())
    assert _domain_volumes(running, x, vm, live=True) == _domain_volumes(running, x, vm)

    # 4. removal: refused while running unless forced; then the VM and its disks, not the ISO
    refused = ansible_module("xenserver_guest", **target, name=VM_NAME, state="absent").result
    assert refused["failed"] is True and "force" in refused["msg"]
    assert x.VM.get_power_state(vm) == "Running"
    disks = [running_drives[slot]["VDI"] for slot in ("0", "1", "2")]
    volumes = {_volume(x, vdi) for vdi in disks}
    assert volumes <= _volumes(running, x, local)
    calls.clear()
    result = _ok(ansible_module("xenserver_guest", **target, name=VM_NAME, state="absent", force=True))
    made = _ansible(calls)
    _all_succeeded(made)

    assert result["changed"] is True
    methods = made.methods()
    assert methods.index("VM.hard_shutdown") < methods.index("VM.destroy") < methods.index("VDI.destroy")
    assert sorted(c.params[1] for c in made.named("VDI.destroy")) == sorted(disks)
    assert x.VM.get_by_name_label(VM_NAME) == []
    assert not set(disks) & set(x.VDI.get_all()) and not volumes & _volumes(running, x, local)
    assert not {d["vbd"] for d in running_drives.values()} & set(x.VBD.get_all())
    assert x.VDI.get_VBDs(iso) == [] and iso in x.SR.get_VDIs(iso_sr)
    assert x.VM.get_is_a_template(tmpl) is True
    if tmpl_vdi is not None:
        assert len(x.VDI.get_VBDs(tmpl_vdi)) == 1 and _volume(x, tmpl_vdi) in _volumes(running, x, local)
