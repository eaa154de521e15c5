"""End to end: the official XenAPI client drives a small real guest on a real libvirtd with QEMU.

The guest is created through VM.create (direct kernel boot of the tiny guest), started, paused,
unpaused, suspended, resumed, shut down hard and destroyed through the API; a power change made
with virsh behind the server's back reaches an event.from listener.
"""
import os
import subprocess
import time

import pytest
import XenAPI

from tests.conftest import ADMIN_PASSWORD, wait_for_event
from xenapi.api import Api
from xenapi.config import Config
from xenapi.server import Server
from xenapi.transport.http import HTTPServer

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


@pytest.fixture
def qemu_server(libvirt_uri, tmp_path):
    server = Server(Config(listen="127.0.0.1:0", state=str(tmp_path / "state"), libvirt_uris=[libvirt_uri],
                           domain_type="qemu", clean_shutdown_timeout=30))
    server.users.ensure_admin(ADMIN_PASSWORD)
    server.start()
    http = HTTPServer(("127.0.0.1", 0), Api(server))
    http.start()
    session = XenAPI.Session(f"http://127.0.0.1:{http.address[1]}")
    session.xenapi.login_with_password("root", ADMIN_PASSWORD, "2.21", "e2e")
    created = []
    yield session, created
    for ref in created:                      # whatever the test left, even on failure
        try:
            if session.xenapi.VM.get_power_state(ref) != "Halted":
                session.xenapi.VM.hard_shutdown(ref)
            session.xenapi.VM.destroy(ref)
        except XenAPI.Failure:
            pass
    session.xenapi.session.logout()
    http.shutdown()
    server.stop()


def _tiny_record(tiny_guest, label: str) -> dict:
    return {
        "name_label": label, "name_description": "tiny real guest", "user_version": "1",
        "is_a_template": False, "affinity": "OpaqueRef:NULL",
        "memory_static_max": str(256 * MiB), "memory_dynamic_max": str(256 * MiB),
        "memory_dynamic_min": str(256 * MiB), "memory_static_min": str(256 * MiB),
        "VCPUs_params": {}, "VCPUs_max": "1", "VCPUs_at_startup": "1",
        "actions_after_shutdown": "destroy", "actions_after_reboot": "restart", "actions_after_crash": "destroy",
        "PV_bootloader": "", "PV_kernel": str(tiny_guest.kernel), "PV_ramdisk": str(tiny_guest.initrd),
        "PV_args": tiny_guest.cmdline, "PV_bootloader_args": "", "PV_legacy_args": "",
        "HVM_boot_policy": "", "HVM_boot_params": {}, "platform": {"acpi": "true"}, "PCI_bus": "",
        "other_config": {}, "recommendations": "",
    }


def test_real_guest_lifecycle_through_the_official_client(qemu_server, tiny_guest):
    xapi, created = qemu_server
    vm = xapi.xenapi.VM.create(_tiny_record(tiny_guest, f"xe2e-{os.getpid()}-api"))
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
    _wait_task(xapi, task)
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


def test_virsh_power_change_behind_the_server_arrives_as_an_event(qemu_server, tiny_guest, libvirt_uri):
    xapi, created = qemu_server
    vm = xapi.xenapi.VM.create(_tiny_record(tiny_guest, f"xe2e-{os.getpid()}-virsh"))
    created.append(vm)
    xapi.xenapi.VM.start(vm, False, False)
    token = xapi.xenapi.event_from(["vm"], "", 0.0)["token"]
    subprocess.run(["virsh", "-c", libvirt_uri, "destroy", xapi.xenapi.VM.get_uuid(vm)],
                   check=True, capture_output=True, timeout=60)
    event = wait_for_event(xapi, ["vm"], token,
                           lambda e: e["ref"] == vm and e["snapshot"]["power_state"] == "Halted", timeout=30)
    assert event["operation"] == "mod"
    assert xapi.xenapi.VM.get_record(vm)["resident_on"] == "OpaqueRef:NULL"


def _wait_task(xapi, task, timeout=120.0):
    deadline = time.monotonic() + timeout
    while xapi.xenapi.task.get_status(task) == "pending":
        assert time.monotonic() < deadline, "task did not finish"
        time.sleep(0.1)
    record = xapi.xenapi.task.get_record(task)
    assert record["status"] == "success", record["error_info"]
    xapi.xenapi.task.destroy(task)
