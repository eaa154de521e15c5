"""End to end: the device builder's virtio layout on a real libvirtd with QEMU.

libvirt's QEMU driver checks a definition against the machine type (q35 has no IDE, so a CD drive
must go on SATA there) and QEMU then checks the devices again when it starts; both must take what
``xenapi/backend/devices.py`` writes, and libvirt must give it back in the same neutral form.
"""
from __future__ import annotations

import subprocess
import uuid

import pytest

from qemu_e2e import MiB
from xenapi.backend import domxml

pytestmark = pytest.mark.e2e


def _record(tiny_guest, machine: str, devices: list[dict]) -> dict:
    return {"memory_static_max": 256 * MiB, "VCPUs_max": 1, "PV_kernel": str(tiny_guest.kernel),
            "PV_ramdisk": str(tiny_guest.initrd), "PV_args": tiny_guest.cmdline,
            "platform": {"machine": machine, "vnc": "false"}, "devices": devices}


def _comparable(devices: list[dict]) -> list[str]:
    """Order-free (libvirt sorts disks by bus) and without the MACs libvirt generated."""
    return sorted(repr({**d, "mac": ""} if d["kind"] == "nic" else d) for d in devices)


@pytest.mark.parametrize("machine, cd_target", [("pc", "hdc"), ("q35", "sdc")])
def test_qemu_defines_and_starts_the_builders_disks_cd_drive_and_nic(machine, cd_target, make_domain, tiny_guest,
                                                                     tmp_path):
    raw, qcow2 = tmp_path / "data.raw", tmp_path / "base.qcow2"
    raw.write_bytes(bytes(MiB))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "16M"], check=True)
    given = [{"kind": "disk", "path": str(raw)},
             {"kind": "disk", "path": str(qcow2), "format": "qcow2", "readonly": True},
             {"kind": "disk", "path": "", "device": "cdrom"}, {"kind": "nic"}]
    dom = make_domain(domxml.build(_record(tiny_guest, machine, given), "qemu", uuid=str(uuid.uuid4()),
                                   name=make_domain.name(machine)))
    dom.create()
    assert dom.isActive()
    live = domxml.parse(dom.XMLDesc())
    assert _comparable(live["devices"]) == _comparable([
        {"kind": "disk", "type": "file", "path": str(raw), "format": "raw", "device": "disk", "readonly": False,
         "userdevice": 0},
        {"kind": "disk", "type": "file", "path": str(qcow2), "format": "qcow2", "device": "disk", "readonly": True,
         "userdevice": 1},
        {"kind": "disk", "type": "file", "path": "", "format": "raw", "device": "cdrom", "readonly": True,
         "userdevice": 2},
        {"kind": "nic", "mac": ""}])
    assert f"<target dev='{cd_target}'" in dom.XMLDesc()
