"""End to end: the tiny Linux guest as a real ``image:`` template, booted from its disk.

The tiny guest (guest.py) on a SYSLINUX disk (guest_image.py) is imported into the pool's default SR
(VDI.create + PUT /import_raw_vdi) and made the ``image:tiny`` template (a BIOS-booted VM, no
kernel, a bootable VBD on that VDI) through the official client, on the real libvirtd with QEMU
under TCG.  VM.clone of it gives a VM whose disk is a qcow2 overlay on the template's disk (seen in
the VDI record and in libvirt's volume), VM.copy into the default SR a full copy; after
VM.provision each starts and the tiny guest comes up on its serial console through SYSLINUX,
reading its kernel and initrd from that disk (libvirt is given no kernel), and sees the disk as
its virtio ``vda``.  Everything is removed afterwards whatever happened: the two VMs and their
disks here, the template and its disk by the fixture.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import XenAPI

import guest
from guest_image import tiny_image, tiny_image_template  # noqa: F401  (fixtures; conftest may import them too)
from qemu_e2e import SerialConsole, qemu_img_info, start_with_console, virsh

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 180           # a boot under TCG on a loaded machine: seconds, but generous
GUEST_TIMEOUT = 60           # the guest's block-device line (its disk driver loads after it is up)
SYSLINUX_LINES = ("SYSLINUX 6.", "Loading vmlinuz... ok", "Loading initrd.gz...ok")


def _first_sector(location: str) -> bytes:
    """The first 512 bytes a guest reads from a qcow2 disk (through its backing chain)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "sector"
        r = subprocess.run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", f"if={location}", f"of={out}",
                            "bs=512", "count=1"], stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return out.read_bytes()[:512]


def _volume_backing(libvirt_conn, location: str) -> str | None:
    """The backing file libvirt's storage driver shows for the volume at ``location``."""
    vol = libvirt_conn.storageVolLookupByPath(location)
    return ET.fromstring(vol.XMLDesc(0)).findtext("backingStore/path")


def _disk_path(libvirt_conn, disk: ET.Element) -> str | None:
    """The file behind a domain's <disk>: its source file, or the path of its pool's volume."""
    source = disk.find("source")
    if disk.get("type") == "volume":
        pool = libvirt_conn.storagePoolLookupByName(source.get("pool"))
        return pool.storageVolLookupByName(source.get("volume")).path()
    return source.get("file")


def _wait_blocks(console: SerialConsole, predicate, what: str) -> dict:
    """The guest's block devices once its latest ``block devices:`` line satisfies ``predicate``."""
    deadline = time.monotonic() + GUEST_TIMEOUT
    while True:
        text = console.text()
        try:                        # whole lines only: the copy may stop in the middle of one
            blocks = guest.block_devices(text[:text.rfind("\n") + 1])
        except ValueError:          # a line garbled by a kernel message: wait for the next one
            blocks = None
        if blocks is not None and predicate(blocks):
            return blocks
        if time.monotonic() > deadline:
            tail = "\n".join(console.text().splitlines()[-15:])
            raise AssertionError(f"the guest never showed {what}; last lines:\n{tail}")
        time.sleep(0.2)


def test_the_tiny_guest_boots_from_a_clone_and_a_copy_of_its_image_template(
        tiny_image_template, tiny_image, libvirt_conn, tmp_path):
    template = tiny_image_template()
    x = template.x
    rec = x.VM.get_record(template.vm)
    assert rec["is_a_template"] is True
    assert rec["other_config"]["template"] == "image:tiny"
    assert (rec["HVM_boot_policy"], rec["HVM_boot_params"], rec["PV_kernel"]) == ("BIOS order", {"order": "c"}, "")
    [tvbd] = rec["VBDs"]
    assert (x.VBD.get_VDI(tvbd), x.VBD.get_bootable(tvbd), x.VBD.get_userdevice(tvbd)) == (template.vdi, True, "0")
    vrec = x.VDI.get_record(template.vdi)
    assert (vrec["SR"], vrec["virtual_size"]) == (template.sr, str(tiny_image.size))
    assert _first_sector(template.location) == tiny_image.boot_sector       # the import is the image

    made_vms: list[str] = []
    made_vdis: list[str] = []
    consoles: list[SerialConsole] = []
    try:
        t0 = time.monotonic()
        clone = x.VM.clone(template.vm, f"xe2e-{os.getpid()}-image-clone")
        clone_s = time.monotonic() - t0
        made_vms.append(clone)
        t0 = time.monotonic()
        copy = x.VM.copy(template.vm, f"xe2e-{os.getpid()}-image-copy", template.sr)
        copy_s = time.monotonic() - t0
        made_vms.append(copy)
        disks = {}
        for vm in (clone, copy):
            [vbd] = x.VM.get_VBDs(vm)
            disks[vm] = x.VBD.get_VDI(vbd)
            made_vdis.append(disks[vm])
            assert x.VBD.get_bootable(vbd) is True and disks[vm] != template.vdi

        # the clone's disk: a qcow2 overlay on the template's, in the VDI record and in libvirt
        crec = x.VDI.get_record(disks[clone])
        assert crec["SR"] == template.sr
        assert crec["sm_config"].get("backing") == template.location
        assert _volume_backing(libvirt_conn, crec["location"]) == template.location
        info = qemu_img_info(crec["location"])
        assert (info["format"], info["virtual-size"]) == ("qcow2", tiny_image.size)
        assert info.get("backing-filename") == template.location
        assert os.path.getsize(crec["location"]) < tiny_image.size // 4      # only the overlay's metadata
        # the copy's: a whole disk of its own in the default SR
        prec = x.VDI.get_record(disks[copy])
        assert prec["SR"] == template.sr and "backing" not in prec["sm_config"]
        assert _volume_backing(libvirt_conn, prec["location"]) is None
        assert "backing-filename" not in qemu_img_info(prec["location"])
        for vdi in disks.values():
            assert _first_sector(x.VDI.get_location(vdi)) == tiny_image.boot_sector

        started = {}
        for vm, hint in ((clone, "clone"), (copy, "copy")):
            assert x.VM.get_is_a_template(vm) is True
            x.VM.provision(vm)
            assert x.VM.get_is_a_template(vm) is False
            consoles.append(start_with_console(x, vm, tmp_path / f"{hint}-serial.log"))
            started[hint] = (vm, consoles[-1])
        boot_s = {}
        for hint, (vm, console) in started.items():
            guest.wait_for_serial(console.log, guest.READY_TEXT, BOOT_TIMEOUT)
            boot_s[hint] = time.monotonic() - console.opened
            text = console.text()
            # through SYSLINUX on its disk: its lines come before the kernel's, and libvirt has no kernel
            assert all(line in text for line in SYSLINUX_LINES), text[:600]
            assert text.index("Loading initrd.gz") < text.index("Linux version")
            assert f"Command line: BOOT_IMAGE=vmlinuz {tiny_image.cmdline}" in text
            domain = ET.fromstring(virsh("dumpxml", x.VM.get_uuid(vm)))
            assert domain.find("os/kernel") is None and domain.find("os/initrd") is None
            [disk] = domain.findall("devices/disk[@device='disk']")
            assert _disk_path(libvirt_conn, disk) == x.VDI.get_location(disks[vm])
            # the guest's own driver sees the disk it booted from
            blocks = _wait_blocks(console, lambda b: "vda" in b, "its disk vda")
            assert blocks["vda"] == tiny_image.size // 512
            assert x.VM.get_power_state(vm) == "Running"
        print(f"\nimage:tiny ({tiny_image.size // (1024 * 1024)} MiB) imported in {template.import_s:.2f} s; "
              f"VM.clone {clone_s:.2f} s, VM.copy {copy_s:.2f} s; "
              f"boot to '{guest.READY_TEXT}': clone {boot_s['clone']:.2f} s, copy {boot_s['copy']:.2f} s")
    finally:
        errors = []
        for vm in made_vms:
            try:
                if x.VM.get_power_state(vm) != "Halted":
                    x.VM.hard_shutdown(vm)
                x.VM.destroy(vm)
            except XenAPI.Failure as e:
                errors.append(f"VM {vm}: {e.details}")
        for console in consoles:
            console.close()
        for vdi in made_vdis:
            try:
                x.VDI.destroy(vdi)
            except XenAPI.Failure as e:
                if e.details[0] != "HANDLE_INVALID":
                    errors.append(f"VDI.destroy {vdi}: {e.details}")
        assert not errors, f"clean-up failed: {errors}"
    assert x.VM.get_power_state(template.vm) == "Halted"
    assert "backing" not in x.VDI.get_sm_config(template.vdi)          # the template's disk stayed whole
