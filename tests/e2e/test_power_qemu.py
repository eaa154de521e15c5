"""End to end: clean power operations on a real guest, which has to cooperate.

The tiny guest answers the ACPI power button by powering off, so VM.clean_shutdown and
VM.clean_reboot are tested for real (the guest's serial log shows it did the work). The same guest
with ``ignore_acpi`` ignores the button: clean_shutdown fails with VM_SHUTDOWN_TIMEOUT and
clean_reboot with VM_REBOOT_TIMEOUT after ``clean_shutdown_timeout``, and the VM is left running,
idle and consistent, ready for a hard shutdown.
"""
import time

import libvirt
import pytest
import XenAPI

from guest import IGNORED_TEXT, POWEROFF_TEXT
from qemu_e2e import EventRecorder, define_guest, wait_task
from xenapi.state.lifecycle import ALLOWED_IN

pytestmark = pytest.mark.e2e
NULL = "OpaqueRef:NULL"
RUNNING_OPS = sorted(op for op, states in ALLOWED_IN.items() if "Running" in states)


def _booted(server, make_domain, tiny_guest, tmp_path, hint: str, **xml):
    """A tiny guest defined, started through Xen-API, and up (its serial log says so)."""
    guest = define_guest(server, make_domain, tiny_guest, tmp_path, hint, **xml)
    server.x.VM.start(guest.vm, False, False)
    guest.wait_up()
    return guest


def _running_and_idle(x, guest, domid: str) -> None:
    """Still running as before, nothing in progress, every Running operation offered again."""
    rec = x.VM.get_record(guest.vm)
    assert (rec["power_state"], rec["domid"], rec["current_operations"]) == ("Running", domid, {})
    assert sorted(rec["allowed_operations"]) == RUNNING_OPS
    assert rec["resident_on"] != NULL
    assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_clean_shutdown_powers_the_guest_off(start_xenapi, make_domain, tiny_guest, tmp_path):
    server = start_xenapi()
    x = server.x
    guest = _booted(server, make_domain, tiny_guest, tmp_path, "clean")
    host = x.VM.get_resident_on(guest.vm)

    with EventRecorder(server, "vm") as recorder:
        x.VM.clean_shutdown(guest.vm)       # returns once the guest has powered off

    rec = x.VM.get_record(guest.vm)
    assert (rec["power_state"], rec["domid"], rec["resident_on"], rec["current_operations"]) == \
        ("Halted", "-1", NULL, {})
    assert "start" in rec["allowed_operations"] and "clean_shutdown" not in rec["allowed_operations"]
    assert guest.vm not in x.host.get_resident_VMs(host)
    assert POWEROFF_TEXT in guest.serial()              # the guest itself did it
    assert guest.dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN]
    # what a listener saw: the operation in progress (nothing else allowed meanwhile), then the halt
    snapshots = [e["snapshot"] for e in recorder.of(guest.vm) if e["operation"] == "mod"]
    busy = [s for s in snapshots if list(s["current_operations"].values()) == ["clean_shutdown"]]
    assert busy and all(s["allowed_operations"] == [] for s in busy)
    assert snapshots.index(busy[0]) < len(snapshots) - 1
    assert snapshots[-1]["power_state"] == "Halted" and snapshots[-1]["current_operations"] == {}


def test_clean_reboot_boots_the_guest_again(start_xenapi, make_domain, tiny_guest, tmp_path):
    server = start_xenapi()
    x = server.x
    guest = _booted(server, make_domain, tiny_guest, tmp_path, "reboot")
    domid = x.VM.get_domid(guest.vm)
    metrics = x.VM.get_metrics(guest.vm)
    started = x.VM_metrics.get_start_time(metrics).value

    with EventRecorder(server, "vm", "vm_metrics") as recorder:
        x.VM.clean_reboot(guest.vm)         # returns once the guest has reset

    guest.wait_up(count=2)                  # it boots a second time, on the same serial log
    assert POWEROFF_TEXT in guest.serial()  # after powering off on the button (libvirt's ACPI reboot)
    # libvirt resets the guest in place: the same QEMU process, so the same domid (xapi would build
    # a new domain); the start time moves to the reboot, as xapi's does
    _running_and_idle(x, guest, domid)
    assert guest.libvirt_id() == int(domid)
    assert x.VM_metrics.get_start_time(metrics).value > started
    assert any(e["ref"] == metrics and e["snapshot"]["start_time"].value > started for e in recorder.events)
    # the VM never looked anything but Running to a listener
    assert {e["snapshot"]["power_state"] for e in recorder.of(guest.vm)} == {"Running"}

    rebooted = x.VM_metrics.get_start_time(metrics).value
    time.sleep(1)                           # start_time has a resolution of a second
    x.VM.hard_reboot(guest.vm)              # a reset: no cooperation needed
    guest.wait_up(count=3)
    _running_and_idle(x, guest, domid)
    assert x.VM_metrics.get_start_time(metrics).value > rebooted


def test_async_clean_shutdown_polled_as_clients_do(start_xenapi, make_domain, tiny_guest, tmp_path):
    server = start_xenapi()
    x = server.x
    guest = _booted(server, make_domain, tiny_guest, tmp_path, "async")

    task = x.Async.VM.clean_shutdown(guest.vm)
    record = wait_task(x, task, poll=0.5)   # Ansible polls task.get_status every 2 s
    assert (record["status"], record["error_info"], record["progress"]) == ("success", [], 1.0)
    assert record["name_label"] == "Async.VM.clean_shutdown"
    assert x.VM.get_power_state(guest.vm) == "Halted"
    assert x.VM.get_current_operations(guest.vm) == {}
    assert POWEROFF_TEXT in guest.serial()
    x.task.destroy(task)
    assert task not in x.task.get_all()


def test_guest_ignoring_the_power_button_times_out_and_stays_consistent(start_xenapi, make_domain, tiny_guest,
                                                                         tmp_path):
    timeout = 5
    server = start_xenapi(clean_shutdown_timeout=timeout)
    x = server.x
    guest = _booted(server, make_domain, tiny_guest, tmp_path, "deaf", ignore_acpi=True)
    domid = x.VM.get_domid(guest.vm)

    for call, code, presses in ((x.VM.clean_shutdown, "VM_SHUTDOWN_TIMEOUT", 1),
                                (x.VM.clean_reboot, "VM_REBOOT_TIMEOUT", 2)):
        t0 = time.monotonic()
        with pytest.raises(XenAPI.Failure) as failure:
            call(guest.vm)
        waited = time.monotonic() - t0
        assert failure.value.details == [code, guest.vm, str(timeout)]
        assert waited >= timeout                                # the configured wait, no less
        guest.tiny_guest.wait_for_serial(guest.log, IGNORED_TEXT, 10, count=presses)   # it was asked
        _running_and_idle(x, guest, domid)

    # the Async form: the task shows in current_operations while the server waits, then fails alike
    task = x.Async.VM.clean_shutdown(guest.vm)
    deadline = time.monotonic() + timeout
    while x.VM.get_current_operations(guest.vm) != {task: "clean_shutdown"}:
        assert time.monotonic() < deadline, "the task never showed in current_operations"
        time.sleep(0.05)
    assert x.VM.get_allowed_operations(guest.vm) == []
    with pytest.raises(XenAPI.Failure) as failure:          # nothing else while it runs
        x.VM.hard_shutdown(guest.vm)
    assert failure.value.details == ["OTHER_OPERATION_IN_PROGRESS", "VM", guest.vm, "clean_shutdown", task]
    record = wait_task(x, task)
    assert (record["status"], record["error_info"]) == ("failure", ["VM_SHUTDOWN_TIMEOUT", guest.vm, str(timeout)])
    _running_and_idle(x, guest, domid)

    x.VM.hard_shutdown(guest.vm)            # the way out for a guest that will not cooperate
    assert x.VM.get_power_state(guest.vm) == "Halted"
    assert guest.dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED]
    assert x.VM.get_record(guest.vm)["allowed_operations"].count("start") == 1
