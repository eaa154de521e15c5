"""End to end: the official XenAPI client drives a small real guest on a real libvirtd with QEMU.

The guest is created through VM.create (direct kernel boot of the tiny guest), started, paused,
unpaused, suspended, resumed, shut down hard and destroyed through the API; a power change made
with virsh behind the server's back reaches an event.from listener, and an API call made right
after one is not refused on the strength of a state the store has not caught up with yet.
"""
import os

import pytest
import XenAPI

from qemu_e2e import tiny_vm_record, virsh, wait_task

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


def test_real_guest_lifecycle_through_the_official_client(start_xenapi, tiny_guest):
    server = start_xenapi()
    xapi, created = server.session, server.created
    vm = xapi.xenapi.VM.create(tiny_vm_record(tiny_guest, f"xe2e-{os.getpid()}-api"))
    created.append(vm)
    record = xapi.xenapi.VM.get_record(vm)
    assert record["power_state"] == "Halted" and record["memory_static_max"] == str(256 * MiB)
    assert "start" in record["allowed_operations"]

    xapi.xenapi.VM.start(vm, False, False)
    record = xapi.xenapi.VM.get_record(vm)
    assert record["power_state"] == "Running" and int(record["domid"]) > 0
    assert record["resident_on"] == xapi.xenapi.session.get_this_host(xapi._session)
    assert "pause" in record["allowed_operations"] and "start" not in record["allowed_operations"]

    xapi.xenapi.VM.pause(vm)
    assert xapi.xenapi.VM.get_power_state(vm) == "Paused"
    xapi.xenapi.VM.unpause(vm)
    assert xapi.xenapi.VM.get_power_state(vm) == "Running"

    task = xapi.xenapi.Async.VM.suspend(vm)
    assert wait_task(xapi.xenapi, task)["status"] == "success"
    xapi.xenapi.task.destroy(task)
    assert xapi.xenapi.VM.get_power_state(vm) == "Suspended"
    xapi.xenapi.VM.resume(vm, False, False)
    assert xapi.xenapi.VM.get_power_state(vm) == "Running"

    xapi.xenapi.VM.hard_shutdown(vm)
    assert xapi.xenapi.VM.get_power_state(vm) == "Halted"
    xapi.xenapi.VM.destroy(vm)
    created.remove(vm)
    with pytest.raises(XenAPI.Failure) as e:
        xapi.xenapi.VM.get_record(vm)
    assert e.value.details == ["HANDLE_INVALID", "VM", vm]


def test_virsh_destroy_behind_the_server_arrives_as_an_event(start_xenapi, tiny_guest):
    server = start_xenapi()
    vm = server.x.VM.create(tiny_vm_record(tiny_guest, f"xe2e-{os.getpid()}-virsh"))
    server.created.append(vm)
    server.x.VM.start(vm, False, False)
    events = server.events("vm")
    uuid = server.x.VM.get_uuid(vm)
    virsh("destroy", uuid)
    events.vm(vm, "mod", power_state="Halted", resident_on="OpaqueRef:NULL", domid="-1")
    assert server.x.VM.get_record(vm)["allowed_operations"].count("start") == 1


def test_api_call_right_after_a_virsh_change_sees_it(start_xenapi, tiny_guest):
    """The store may be an event's latency behind libvirt; a call the stale state would refuse
    re-reads the domain first, so a script mixing virsh and the API does not fail at random."""
    server = start_xenapi()
    vm = server.x.VM.create(tiny_vm_record(tiny_guest, f"xe2e-{os.getpid()}-mixed"))
    server.created.append(vm)
    uuid = server.x.VM.get_uuid(vm)
    for _ in range(3):
        virsh("start", uuid)
        server.x.VM.hard_shutdown(vm)        # no waiting for the event of the virsh start
        virsh("start", uuid)
        virsh("destroy", uuid)
        server.x.VM.start(vm, False, False)  # nor for that of the virsh destroy
        assert server.x.VM.get_power_state(vm) == "Running"
        server.x.VM.hard_shutdown(vm)
    assert server.x.VM.get_record(vm)["current_operations"] == {}
