"""End to end: a real KVM guest (``<domain type='kvm'>``) driven through the server.

The Linux tiny guest runs under TCG here (guest.py says why); this boot-sector guest (bootsector.py)
runs under KVM, so where ``/dev/kvm`` works the server is shown to start, watch, sample and stop a
guest that QEMU really runs with KVM: QEMU's monitor says so and its vCPU is a KVM vCPU.  The guest
has no ACPI handler, so a clean shutdown times out, as documented, and leaves it running.

Where ``/dev/kvm`` does not open read-write these tests are skipped with that reason: KVM cannot be
exercised there (the TCG path is the rest of the e2e suite).
"""
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest
import XenAPI

import bootsector
from guest import wait_for_serial
from qemu_e2e import MiB, E2EServer, virsh, wait_for_metrics
from xenapi.backend.machine import kvm_usable

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    not kvm_usable(), reason="/dev/kvm does not open read-write (or answers no stable KVM API): "
                             "no KVM guest can run on this machine")]
MEMORY_MIB = 16


@dataclass
class KvmGuest:
    vm: str         # the VM's ref on the server
    dom: object     # the libvirt domain
    log: Path       # its serial console

    def wait_up(self) -> None:
        wait_for_serial(self.log, bootsector.READY_TEXT, 30)


def _define(server: E2EServer, make_domain, directory: Path) -> KvmGuest:
    """The boot-sector guest defined in libvirt behind the server's back, seen by it through events."""
    image = bootsector.write_image(directory / "boot.img")
    log = directory / "kvm-serial.log"
    dom = make_domain(bootsector.domain_xml(make_domain.name("kvm"), image, log, memory_mib=MEMORY_MIB))
    return KvmGuest(server.vm_of(dom), dom, log)


def _vcpu_thread(name: str) -> int:
    """The host thread of vCPU 0, from QEMU's monitor ("* CPU #0: thread_id=1234")."""
    out = virsh("qemu-monitor-command", "--hmp", name, "info cpus")
    return int(out.split("thread_id=")[1].split()[0])


def _open_files(tid: int) -> set[str]:
    fds = Path(f"/proc/{tid}/fd")
    return {os.readlink(fd) for fd in fds.iterdir()}


def test_a_boot_sector_guest_runs_under_kvm_through_the_server(start_xenapi, make_domain, tmp_path):
    server = start_xenapi(metrics_interval=1)
    x = server.x
    host = x.host.get_all()[0]
    versions = x.host.get_software_version(host)
    assert "kvm" in versions["virt_types"].split() and versions["kvm_usable"] == "true"
    guest = _define(server, make_domain, tmp_path)
    assert x.VM.get_power_state(guest.vm) == "Halted"

    x.VM.start(guest.vm, False, False)
    guest.wait_up()
    rec = x.VM.get_record(guest.vm)
    dom = guest.dom.connect().lookupByUUIDString(guest.dom.UUIDString())
    assert (rec["power_state"], rec["domid"], rec["resident_on"]) == ("Running", str(dom.ID()), host)
    # a BIOS-booted HVM guest, from its disk; the record has no field naming KVM vs TCG (libvirt's
    # <domain type>), so that is read from libvirt and QEMU below
    assert (rec["domain_type"], rec["HVM_boot_policy"], rec["HVM_boot_params"], rec["PV_kernel"]) == \
        ("hvm", "BIOS order", {"order": "c"}, "")
    assert ET.fromstring(virsh("dumpxml", dom.name())).get("type") == "kvm"
    assert "kvm support: enabled" in virsh("qemu-monitor-command", "--hmp", dom.name(), "info kvm")
    assert "anon_inode:kvm-vcpu:0" in _open_files(_vcpu_thread(dom.name()))    # a KVM vCPU, not TCG's

    # the sampler's figures: vCPU use (a rate, so from the second sample on), the balloon's size, and
    # the disk reads of the firmware loading the boot sector
    metrics = rec["metrics"]
    record = wait_for_metrics(x, metrics, lambda r: "0" in r["VCPUs_utilisation"]
                               and int(r["other_config"].get("disk_read_bytes", "0")) >= bootsector.SECTOR_SIZE,
                               "vCPU use and the boot sector read")
    assert 0 <= record["VCPUs_utilisation"]["0"] <= 1
    assert (record["memory_actual"], record["VCPUs_number"]) == (str(MEMORY_MIB * MiB), "1")
    assert (record["current_domain_type"], record["hvm"]) == ("hvm", True)

    x.VM.hard_shutdown(guest.vm)
    assert x.VM.get_power_state(guest.vm) == "Halted"
    assert guest.dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED]
    assert (x.VM.get_domid(guest.vm), x.VM_metrics.get_memory_actual(metrics)) == ("-1", "0")

    x.VM.destroy(guest.vm)
    with pytest.raises(XenAPI.Failure) as failure:
        x.VM.get_record(guest.vm)
    assert failure.value.details[0] == "HANDLE_INVALID"
    with pytest.raises(libvirt.libvirtError):
        guest.dom.connect().lookupByUUIDString(guest.dom.UUIDString())


def test_clean_shutdown_of_a_kvm_guest_without_acpi_handler_times_out(start_xenapi, make_domain, tmp_path):
    timeout = 3
    server = start_xenapi(clean_shutdown_timeout=timeout)
    x = server.x
    guest = _define(server, make_domain, tmp_path)
    x.VM.start(guest.vm, False, False)
    guest.wait_up()
    domid = x.VM.get_domid(guest.vm)

    t0 = time.monotonic()
    with pytest.raises(XenAPI.Failure) as failure:
        x.VM.clean_shutdown(guest.vm)
    assert failure.value.details == ["VM_SHUTDOWN_TIMEOUT", guest.vm, str(timeout)]
    assert time.monotonic() - t0 >= timeout                 # the configured wait, no less
    rec = x.VM.get_record(guest.vm)
    assert (rec["power_state"], rec["domid"], rec["current_operations"]) == ("Running", domid, {})
    assert "hard_shutdown" in rec["allowed_operations"]
    assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert guest.log.read_bytes() == f"{bootsector.READY_TEXT}\r\n".encode()   # booted once, halted since

    x.VM.hard_shutdown(guest.vm)            # the way out for a guest that will not cooperate
    assert x.VM.get_power_state(guest.vm) == "Halted"
    x.VM.destroy(guest.vm)
    assert guest.vm not in x.VM.get_all()
