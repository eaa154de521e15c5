"""End to end: storage with real QEMU guests (TCG) on the real libvirtd, all through the official client.

* An ``image:`` template made from a real bootable disk: a raw image whose boot sector prints a
  marker of this run on the serial console (bootsector.py) goes into the "Local storage" SR as a
  VDI (VDI.create, then its data: PUT /import_raw_vdi where the server offers it, else the file is
  written behind the server's back with ``qemu-img convert`` and found by SR.scan); a BIOS-booted
  HVM VM with a VBD on it becomes a template (other_config template_kind "image").  VM.clone of
  it has a qcow2 overlay on the template's disk, VM.copy into another SR a full copy; after
  VM.provision each boots from its disk and prints the marker.  A clone must still boot after its
  template's disk is destroyed: the server refuses to destroy a disk that has clones (VDI_IN_USE).
* VDI.copy of a booting VM's disk into another SR, and a new VM on the copy boots the same.
* The tiny Linux guest (guest.py) running: a disk hot-plugged with VBD.plug appears in the guest,
  VBD.unplug takes it out again.  On QEMU's ``pc`` machine the detach needs the guest: QEMU sends
  an ACPI eject request for the PCI slot, which the tiny guest's kernel (acpiphp, built in)
  answers by itself.  The boot-sector guest, halted with interrupts off, never answers: there
  VBD.unplug fails with DEVICE_DETACH_REJECTED after the server's wait (libvirt's 5 s, then
  DETACH_WAIT) and the VBD stays attached, until VM.hard_shutdown.
* A CD: an ISO library SR (SR.create type iso over a directory with a real ISO 9660 image),
  SR.scan finds the image as a read-only VDI, VBD.insert puts it in the running guest's empty CD
  drive (the guest reads its volume ID), VBD.eject takes it out.
* A volume made and deleted with virsh in the local SR's pool arrives as VDI add and del events.

A VM the server defines has a pty serial console (no log file, unlike ``define_guest``), so the
guests are started paused, their pty is opened and copied to a file (qemu_e2e.SerialConsole), and
then they are unpaused: nothing they print is lost.  Every VM, VDI and SR a test makes is removed
after it, whatever happened.
"""
from __future__ import annotations

import http.client
import os
import subprocess
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlparse

import pytest
import XenAPI

import bootsector
import guest
from qemu_e2e import (MiB, SerialConsole, EventWatch, qemu_img_info, start_with_console, tiny_vm_record, virsh,
                      wait_task, write_iso)
from xenapi.model.types import NULL_REF
from xenapi.services.hotplug import DETACH_WAIT     # how long VBD.unplug waits for the guest
from xenapi.services.storage import LOCAL_POOL      # the libvirt pool of each host's "Local storage" SR

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 180          # a boot under TCG on a loaded machine: seconds, not minutes, but generous
GUEST_TIMEOUT = 60          # the tiny guest noticing a device change (it looks every 2 s)
CD_VOLUME_ID = "XENAPI_E2E_CD"


# -- what a test makes, and its clean-up ------------------------------------------------------------

@dataclass
class Storage:
    """A server under test, its local SR, and what the test made there (removed afterwards)."""
    server: object
    host: str
    local_sr: str
    local_dir: Path
    directory: Path                                  # the test's own scratch directory
    vms: list = field(default_factory=list)
    vdis: list = field(default_factory=list)
    srs: list = field(default_factory=list)          # (ref, "destroy" | "forget")
    consoles: list = field(default_factory=list)
    volumes: list = field(default_factory=list)      # volume names made with virsh in the local pool

    @property
    def x(self):
        return self.server.x

    def label(self, hint: str) -> str:
        """A VM name that the suite's stale-domain clean-up recognises (xe2e-<pid>-...)."""
        return f"xe2e-{os.getpid()}-storage-{hint}"

    def vm(self, record: dict) -> str:
        ref = self.x.VM.create(record)
        self.vms.append(ref)
        return ref

    def vdi(self, sr: str, size: int, label: str, **over) -> str:
        ref = self.x.VDI.create({"SR": sr, "virtual_size": str(size), "type": "user", "sharable": False,
                                 "read_only": False, "other_config": {}, "name_label": label,
                                 "name_description": "made by test_storage_qemu", "xenstore_data": {},
                                 "sm_config": {}, "tags": [], **over})
        self.vdis.append(ref)
        return ref

    def vbd(self, vm: str, vdi: str, *, userdevice: str = "autodetect", vbd_type: str = "Disk", mode: str = "RW",
            bootable: bool = False) -> str:
        return self.x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": userdevice, "bootable": bootable,
                                  "mode": mode, "type": vbd_type, "unpluggable": True, "empty": vdi == NULL_REF,
                                  "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})

    def dir_sr(self, location: Path, label: str) -> str:
        ref = self.x.SR.create(self.host, {"location": str(location)}, "0", label, "made by test_storage_qemu",
                               "dir", "", False, {})
        self.srs.append((ref, "destroy"))
        return ref

    def iso_sr(self, location: Path, label: str) -> str:
        ref = self.x.SR.create(self.host, {"location": str(location)}, "0", label, "made by test_storage_qemu",
                               "iso", "iso", False, {})
        self.srs.append((ref, "forget"))            # the images stay in the test's directory
        return ref

    def start(self, vm: str, hint: str) -> SerialConsole:
        console = start_with_console(self.x, vm, self.directory / f"{hint}-serial.log")
        self.consoles.append(console)
        return console

    def disks(self, vm: str) -> list[str]:
        """The VDIs of ``vm``'s (non-empty) disk VBDs."""
        return [self.x.VBD.get_VDI(b) for b in self.x.VM.get_VBDs(vm)
                if self.x.VBD.get_type(b) == "Disk" and not self.x.VBD.get_empty(b)]

    def track_disks(self, vm: str) -> list[str]:
        """``vm``'s disk VDIs, removed after the test (a clone's or copy's disks are new VDIs)."""
        disks = self.disks(vm)
        self.vdis.extend(disks)
        return disks

    def cleanup(self) -> None:
        x, errors = self.x, []

        def attempt(what, call, *args):
            try:
                call(*args)
            except XenAPI.Failure as e:
                if e.details[0] != "HANDLE_INVALID":
                    errors.append(f"{what}: {e.details}")
            except Exception as e:                   # noqa: BLE001 - report, go on cleaning
                errors.append(f"{what}: {e!r}")

        for vm in reversed(self.vms):
            try:
                self.vdis.extend(self.disks(vm))     # a clone's disks, whether or not the test got to them
            except XenAPI.Failure:
                pass
            attempt(f"hard_shutdown {vm}", lambda v: x.VM.get_power_state(v) != "Halted" and x.VM.hard_shutdown(v), vm)
            attempt(f"destroy {vm}", x.VM.destroy, vm)
        for console in self.consoles:
            console.close()
        def is_overlay(vdi):                         # a clone's disk goes before the disk it is on
            try:
                return "backing" in x.VDI.get_sm_config(vdi)
            except XenAPI.Failure:
                return False
        for vdi in sorted(dict.fromkeys(reversed(self.vdis)), key=lambda v: not is_overlay(v)):
            attempt(f"VDI.destroy {vdi}", x.VDI.destroy, vdi)
        for name in self.volumes:
            if name in virsh("vol-list", "--pool", LOCAL_POOL).split():
                attempt(f"vol-delete {name}", virsh, "vol-delete", "--pool", LOCAL_POOL, name)
        for sr, how in reversed(self.srs):
            try:
                pbds = x.SR.get_PBDs(sr)
            except XenAPI.Failure:
                continue
            for pbd in pbds:
                attempt(f"PBD.unplug {pbd}", lambda p: x.PBD.get_currently_attached(p) and x.PBD.unplug(p), pbd)
            attempt(f"SR.{how} {sr}", getattr(x.SR, how), sr)
        assert not errors, f"clean-up failed: {errors}"


@pytest.fixture
def storage(start_xenapi, local_sr_pool, tmp_path):
    server = start_xenapi()
    x = server.x
    host = x.host.get_all()[0]
    local_sr = x.pool.get_default_SR(x.pool.get_all()[0])
    assert local_sr != NULL_REF, "the server made no Local storage SR"
    assert x.SR.get_sm_config(local_sr).get("libvirt_pool") == LOCAL_POOL
    pbd = next(p for p in x.SR.get_PBDs(local_sr) if x.PBD.get_host(p) == host)
    local_dir = Path(x.PBD.get_device_config(pbd)["location"])
    assert local_dir.is_dir(), f"the local SR's directory {local_dir} is not there"
    made = Storage(server, host, local_sr, local_dir, tmp_path)
    yield made
    made.cleanup()


# -- the image template ----------------------------------------------------------------------------

@dataclass
class Template:
    vm: str
    vdi: str
    location: str         # the template disk's file
    marker: str           # what its boot sector prints
    upload: str           # how its data got in: "import_raw_vdi" or "qemu-img convert + SR.scan"


def _put(server, path: str, query: dict, data: bytes) -> tuple[int, bytes]:
    url = urlparse(server.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    try:
        connection.request("PUT", f"{path}?{urlencode(query)}", body=data,
                           headers={"Content-Length": str(len(data)), "Content-Type": "application/octet-stream"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _offers_import_raw_vdi(server) -> bool:
    """Whether the server has a PUT /import_raw_vdi handler: asked with an empty body and no VDI,
    which a handler refuses on its own terms and a server without one answers 404."""
    status, _ = _put(server, "/import_raw_vdi", {"session_id": server.session._session}, b"")
    return status != 404


def _import_raw_vdi(server, vdi: str, image: Path) -> None:
    """PUT /import_raw_vdi (xapi's raw upload) of ``image`` into ``vdi``."""
    status, body = _put(server, "/import_raw_vdi", {"session_id": server.session._session, "vdi": vdi,
                                                    "format": "raw"}, image.read_bytes())
    assert status == 200, f"PUT /import_raw_vdi: {status} {body[:300]!r}"


def make_image_template(storage: Storage, marker: str) -> Template:
    """The ``image:`` template of a real bootable disk whose boot sector prints ``marker``."""
    x = storage.x
    image = bootsector.write_image(storage.directory / "bootsector.img", marker)
    vdi = storage.vdi(storage.local_sr, bootsector.IMAGE_SIZE, "bootsector", type="system")
    location = x.VDI.get_location(vdi)
    if _offers_import_raw_vdi(storage.server):
        _import_raw_vdi(storage.server, vdi, image)
        upload = "import_raw_vdi"
    else:   # the file written behind the server's back, under the name of the VDI's volume, then found
        assert os.path.basename(location) == f"{x.VDI.get_uuid(vdi)}.qcow2"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(image), location],
                       check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        x.SR.scan(storage.local_sr)
        upload = "qemu-img convert + SR.scan"
    info = qemu_img_info(location)
    assert (info["format"], info["virtual-size"]) == ("qcow2", bootsector.IMAGE_SIZE)
    assert x.VDI.get_virtual_size(vdi) == str(bootsector.IMAGE_SIZE)
    assert _first_sector(location) == bootsector.boot_sector(marker)

    vm = storage.vm(bios_vm_record(storage.label("bootsector-template"),
                                   other_config={"template_kind": "image", "template_name": "bootsector"}))
    storage.vbd(vm, vdi, userdevice="0", bootable=True)
    x.VM.set_is_a_template(vm, True)
    return Template(vm, vdi, location, marker, upload)


def _first_sector(location: str) -> bytes:
    """The first 512 bytes a guest reads from a qcow2 disk (through its backing chain)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "sector"
        r = subprocess.run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", f"if={location}", f"of={out}",
                            "bs=512", "count=1"], stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return out.read_bytes()[:512]


def bios_vm_record(label: str, **over) -> dict:
    """VM.create's record of a small HVM guest booting from its disk with the BIOS."""
    mib16 = str(16 * MiB)
    return {"name_label": label, "name_description": "boot-sector guest", "user_version": "1",
            "is_a_template": False, "affinity": NULL_REF, "memory_static_max": mib16, "memory_dynamic_max": mib16,
            "memory_dynamic_min": mib16, "memory_static_min": mib16, "VCPUs_params": {}, "VCPUs_max": "1",
            "VCPUs_at_startup": "1", "actions_after_shutdown": "destroy", "actions_after_reboot": "restart",
            "actions_after_crash": "destroy", "PV_bootloader": "", "PV_kernel": "", "PV_ramdisk": "",
            "PV_args": "", "PV_bootloader_args": "", "PV_legacy_args": "", "HVM_boot_policy": "BIOS order",
            "HVM_boot_params": {"order": "c"}, "platform": {"acpi": "true"}, "PCI_bus": "", "other_config": {},
            "recommendations": "", **over}


@pytest.fixture
def template(storage) -> Template:
    return make_image_template(storage, f"xe2e storage boot {os.getpid()} {uuidlib.uuid4().hex[:12]}")


def wait_for_marker(console: SerialConsole, marker: str) -> float:
    """Seconds from the console's opening (just before VM.unpause) to the boot sector's line."""
    guest.wait_for_serial(console.log, f"{marker}\r\n", BOOT_TIMEOUT)
    return time.monotonic() - console.opened


# -- 1. the image template: clone (overlay) and copy (full) both boot -----------------------------------

def test_image_template_clone_boots_from_an_overlay_and_copy_from_a_full_copy(storage, template):
    x = storage.x
    assert x.VM.get_is_a_template(template.vm) is True
    assert x.VM.get_other_config(template.vm) == {"template_kind": "image", "template_name": "bootsector"}

    t0 = time.monotonic()
    clone = x.VM.clone(template.vm, storage.label("clone"))
    clone_s = time.monotonic() - t0
    storage.vms.append(clone)
    [disk] = storage.track_disks(clone)
    rec = x.VDI.get_record(disk)
    assert disk != template.vdi and rec["SR"] == storage.local_sr
    info = qemu_img_info(rec["location"])        # a qcow2 overlay on the template's disk
    assert (info["format"], info["virtual-size"]) == ("qcow2", bootsector.IMAGE_SIZE)
    assert info.get("backing-filename") == template.location
    assert rec["sm_config"].get("backing") == template.location
    assert os.path.getsize(rec["location"]) < bootsector.IMAGE_SIZE   # only the overlay's metadata
    assert _first_sector(rec["location"]) == bootsector.boot_sector(template.marker)   # read through it

    other = storage.dir_sr(storage.directory / "other-sr", "other SR")
    t0 = time.monotonic()
    copy = x.VM.copy(template.vm, storage.label("copy"), other)
    copy_s = time.monotonic() - t0
    storage.vms.append(copy)
    [copied] = storage.track_disks(copy)
    crec = x.VDI.get_record(copied)
    assert crec["SR"] == other and crec["location"].startswith(str(storage.directory / "other-sr") + "/")
    info = qemu_img_info(crec["location"])       # a full copy: no backing file
    assert (info["format"], info["virtual-size"]) == ("qcow2", bootsector.IMAGE_SIZE)
    assert "backing-filename" not in info and "backing" not in crec["sm_config"]
    assert _first_sector(crec["location"]) == bootsector.boot_sector(template.marker)

    consoles, boot_s = {}, {}
    for vm, hint in ((clone, "clone"), (copy, "copy")):
        assert x.VM.get_is_a_template(vm) is True           # a template's clone and copy are templates
        x.VM.provision(vm)
        assert x.VM.get_is_a_template(vm) is False
        consoles[hint] = storage.start(vm, hint)
    for hint, console in consoles.items():
        boot_s[hint] = wait_for_marker(console, template.marker)
    for vm in (clone, copy):
        assert x.VM.get_power_state(vm) == "Running"
        [vbd] = x.VM.get_VBDs(vm)
        assert x.VBD.get_currently_attached(vbd) is True
    assert x.VM.get_power_state(template.vm) == "Halted"
    assert x.VDI.get_record(template.vdi)["sm_config"].get("backing") is None     # the template's disk is whole
    print(f"\nimage template ({template.upload}); VM.clone {clone_s:.2f} s, VM.copy {copy_s:.2f} s; "
          f"boot to marker: clone {boot_s['clone']:.2f} s, copy {boot_s['copy']:.2f} s")


def test_a_clone_still_boots_after_its_templates_disk_is_destroyed(storage, template):
    """xe vm-uninstall of a template destroys its disks.  xapi keeps a clone's data whatever happens
    to the VDI it was cloned from (the SM hides the shared parent until its last child goes); here
    the VDI.destroy may be refused instead, but the clone must boot either way."""
    x = storage.x
    clone = x.VM.clone(template.vm, storage.label("orphan"))
    storage.vms.append(clone)
    [disk] = storage.track_disks(clone)
    assert qemu_img_info(x.VDI.get_location(disk)).get("backing-filename") == template.location
    try:
        x.VDI.destroy(template.vdi)
    except XenAPI.Failure as refused:              # refusing (the disk has clones) is fine too
        print(f"\nVDI.destroy of the template's disk refused: {refused.details}")
    x.VM.provision(clone)
    wait_for_marker(storage.start(clone, "orphan"), template.marker)


# -- 4. VDI.copy of a VM's disk into another SR, and a VM on the copy -----------------------------------

def test_vdi_copy_of_a_boot_disk_into_another_sr_boots_a_new_vm(storage, template):
    x = storage.x
    vm = x.VM.clone(template.vm, storage.label("source"))
    storage.vms.append(vm)
    [disk] = storage.track_disks(vm)
    x.VM.provision(vm)
    other = storage.dir_sr(storage.directory / "copies", "copies")

    t0 = time.monotonic()
    task = x.Async.VDI.copy(disk, other, NULL_REF, NULL_REF)
    record = wait_task(x, task, timeout=300)
    copy_s = time.monotonic() - t0
    assert record["status"] == "success", record["error_info"]
    assert record["progress"] == 1.0
    copied = record["result"].removeprefix("<value>").removesuffix("</value>")
    storage.vdis.append(copied)
    x.task.destroy(task)
    crec = x.VDI.get_record(copied)
    assert (crec["SR"], crec["virtual_size"]) == (other, str(bootsector.IMAGE_SIZE))
    assert copied in x.SR.get_VDIs(other)
    info = qemu_img_info(crec["location"])       # the overlay and its template's disk, flattened
    assert "backing-filename" not in info
    assert _first_sector(crec["location"]) == bootsector.boot_sector(template.marker)

    new = storage.vm(bios_vm_record(storage.label("on-copy")))
    vbd = storage.vbd(new, copied, userdevice="0", bootable=True)
    assert x.VDI.get_VBDs(copied) == [vbd]
    console = storage.start(new, "on-copy")
    boot_s = wait_for_marker(console, template.marker)
    assert x.VBD.get_currently_attached(vbd) is True
    print(f"\nVDI.copy (qcow2 overlay -> another SR) {copy_s:.2f} s; boot to marker {boot_s:.2f} s")


# -- 2. hot-plug of a disk into the running tiny guest ---------------------------------------------------

def _wait_blocks(console: SerialConsole, predicate, what: str, offset: int = 0) -> dict:
    """The guest's block devices once its latest ``block devices:`` line satisfies ``predicate``."""
    deadline = time.monotonic() + GUEST_TIMEOUT
    while True:
        blocks = guest.block_devices(_text_from(console, offset))
        if blocks is not None and predicate(blocks):
            return blocks
        if time.monotonic() > deadline:
            tail = "\n".join(console.text().splitlines()[-15:])
            raise AssertionError(f"the guest never showed {what}; last lines:\n{tail}")
        time.sleep(0.2)


def _wait_medium(console: SerialConsole, medium: str, offset: int) -> None:
    """Until the guest's latest ``sr0 medium:`` line after ``offset`` names ``medium``."""
    deadline = time.monotonic() + GUEST_TIMEOUT
    while guest.cd_medium(_text_from(console, offset)) != medium:
        if time.monotonic() > deadline:
            tail = "\n".join(console.text().splitlines()[-15:])
            raise AssertionError(f"the guest never showed the medium {medium!r} in its CD drive; last lines:\n{tail}")
        time.sleep(0.2)


def _text_from(console: SerialConsole, offset: int) -> str:
    with open(console.log, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _boot_tiny_guest(storage: Storage, tiny_guest, hint: str, prepare=None) -> tuple[str, SerialConsole]:
    vm = storage.vm(tiny_vm_record(tiny_guest, storage.label(hint)))
    if prepare is not None:
        prepare(vm)
    console = storage.start(vm, hint)
    guest.wait_for_serial(console.log, tiny_guest.ready_text, BOOT_TIMEOUT)
    return vm, console


def test_a_hot_plugged_disk_reaches_the_running_guest_and_unplug_takes_it_out(storage, tiny_guest):
    x = storage.x
    vm, console = _boot_tiny_guest(storage, tiny_guest, "hotplug")
    before = _wait_blocks(console, lambda blocks: True, "its block devices (its drivers loaded)")
    assert not any(name.startswith("vd") for name in before), before

    size = 4 * MiB
    vdi = storage.vdi(storage.local_sr, size, "hot-plugged")
    vbd = storage.vbd(vm, vdi)
    assert x.VBD.get_currently_attached(vbd) is False
    assert "plug" in x.VBD.get_allowed_operations(vbd)

    offset = console.size()
    t0 = time.monotonic()
    x.VBD.plug(vbd)
    plug_s = time.monotonic() - t0
    assert x.VBD.get_currently_attached(vbd) is True
    device = x.VBD.get_device(vbd)
    assert device.startswith("vd")
    seen = _wait_blocks(console, lambda blocks: device in blocks, f"{device} plugged", offset)
    seen_s = time.monotonic() - t0
    assert seen[device] == size // 512                    # the guest reads the VDI's size
    assert "unplug" in x.VBD.get_allowed_operations(vbd)
    with pytest.raises(XenAPI.Failure) as in_use:
        x.VDI.destroy(vdi)
    assert in_use.value.details == ["VDI_IN_USE", vdi, "destroy"]

    # QEMU asks the guest to release the device (an ACPI eject request on the PCI slot); the tiny
    # guest's kernel (acpiphp, built in) answers by itself, so the detach completes
    offset = console.size()
    t0 = time.monotonic()
    x.VBD.unplug(vbd)
    unplug_s = time.monotonic() - t0
    assert x.VBD.get_currently_attached(vbd) is False
    after = _wait_blocks(console, lambda blocks: device not in blocks, f"{device} gone", offset)
    assert after == before
    assert x.VM.get_power_state(vm) == "Running"

    x.VM.hard_shutdown(vm)
    x.VBD.destroy(vbd)
    assert x.VM.get_VBDs(vm) == [] and x.VDI.get_VBDs(vdi) == []
    x.VDI.destroy(vdi)
    print(f"\nVBD.plug {plug_s:.2f} s (in the guest after {seen_s:.2f} s), VBD.unplug {unplug_s:.2f} s")


def _live_disks(uuid: str) -> list[list[str]]:
    """[target, source] of each disk of the running domain (a volume's source: its name)."""
    return [line.split() for line in virsh("domblklist", uuid).splitlines()]


def test_a_guest_that_never_answers_the_eject_request_keeps_the_disk_and_unplug_is_rejected(storage, template):
    """The boot-sector guest halts with interrupts off: it never handles QEMU's ACPI eject request,
    so the disk stays in it, and VBD.unplug fails after the server's wait, the VBD still attached."""
    x = storage.x
    vm = x.VM.clone(template.vm, storage.label("no-eject"))
    storage.vms.append(vm)
    storage.track_disks(vm)
    x.VM.provision(vm)
    wait_for_marker(storage.start(vm, "no-eject"), template.marker)      # halted for good from now on
    vdi = storage.vdi(storage.local_sr, MiB, "never released")
    vbd = storage.vbd(vm, vdi)
    x.VBD.plug(vbd)                                 # QEMU adds the device without asking the guest
    assert x.VBD.get_currently_attached(vbd) is True
    uuid, disk = x.VM.get_uuid(vm), [x.VBD.get_device(vbd), os.path.basename(x.VDI.get_location(vdi))]
    assert disk in _live_disks(uuid)

    t0 = time.monotonic()
    with pytest.raises(XenAPI.Failure) as rejected:
        x.VBD.unplug(vbd)
    waited = time.monotonic() - t0
    assert rejected.value.details[:3] == ["DEVICE_DETACH_REJECTED", "VBD", vbd], rejected.value.details
    assert waited >= DETACH_WAIT
    assert x.VBD.get_currently_attached(vbd) is True
    assert disk in _live_disks(uuid)                # the running guest still has it
    assert x.VM.get_power_state(vm) == "Running"
    assert "unplug" in x.VBD.get_allowed_operations(vbd)

    x.VM.hard_shutdown(vm)                          # the way out: the disk goes with the domain
    assert x.VBD.get_currently_attached(vbd) is False
    x.VBD.destroy(vbd)
    assert x.VDI.get_VBDs(vdi) == []
    print(f"\nVBD.unplug of a disk the guest never releases: DEVICE_DETACH_REJECTED after {waited:.2f} s")


# -- 3. a CD from an ISO library -------------------------------------------------------------------------

def test_an_iso_from_an_iso_library_goes_in_and_out_of_the_running_guests_cd_drive(storage, tiny_guest):
    x = storage.x
    library = storage.directory / "isos"
    library.mkdir()
    iso = library / "xe2e-cd.iso"
    made_by = write_iso(iso, CD_VOLUME_ID, {"readme.txt": b"a CD for the xenapi e2e tests\n"})
    sr = storage.iso_sr(library, "ISO library")
    x.SR.scan(sr)
    [media] = x.SR.get_VDIs(sr)
    rec = x.VDI.get_record(media)
    assert (rec["location"], rec["read_only"], rec["virtual_size"]) == (str(iso), True, str(iso.stat().st_size))
    assert x.SR.get_content_type(sr) == "iso"

    cds = []
    vm, console = _boot_tiny_guest(storage, tiny_guest, "cd",
                                   prepare=lambda vm: cds.append(storage.vbd(vm, NULL_REF, vbd_type="CD", mode="RO")))
    [cd] = cds
    _wait_medium(console, "none", 0)                       # an empty drive
    assert (x.VBD.get_empty(cd), x.VBD.get_currently_attached(cd)) == (True, True)

    offset = console.size()
    t0 = time.monotonic()
    x.VBD.insert(cd, media)
    insert_s = time.monotonic() - t0
    assert (x.VBD.get_empty(cd), x.VBD.get_VDI(cd)) == (False, media)
    assert x.VDI.get_VBDs(media) == [cd]
    _wait_medium(console, CD_VOLUME_ID, offset)           # the guest reads the ISO's volume descriptor
    seen_s = time.monotonic() - t0
    blocks = _wait_blocks(console, lambda blocks: blocks.get("sr0") == iso.stat().st_size // 512,
                          "sr0 the size of the ISO")
    assert blocks["sr0"] > 0

    offset = console.size()
    x.VBD.eject(cd)
    assert (x.VBD.get_empty(cd), x.VBD.get_VDI(cd)) == (True, NULL_REF)
    assert x.VDI.get_VBDs(media) == []
    _wait_medium(console, "none", offset)
    assert x.VM.get_power_state(vm) == "Running"
    print(f"\nISO made by {made_by}; VBD.insert {insert_s:.2f} s (read by the guest after {seen_s:.2f} s)")


# -- 5. volumes made and deleted with virsh --------------------------------------------------------------

def test_a_volume_made_and_deleted_with_virsh_arrives_as_vdi_add_and_del(storage):
    x = storage.x
    events = EventWatch(x, ["VDI"])
    name = f"xe2e-{os.getpid()}-{uuidlib.uuid4().hex[:8]}.qcow2"
    storage.volumes.append(name)
    t0 = time.monotonic()
    virsh("vol-create-as", LOCAL_POOL, name, "1M", "--format", "qcow2")
    added = events.wait(lambda e: e["class"].lower() == "vdi" and e["operation"] == "add"
                        and e["snapshot"]["name_label"] == name, timeout=30, what="VDI add")
    add_s = time.monotonic() - t0
    vdi, snapshot = added["ref"], added["snapshot"]
    assert (snapshot["SR"], snapshot["virtual_size"], snapshot["location"]) == (
        storage.local_sr, str(MiB), str(storage.local_dir / name))
    assert vdi in x.SR.get_VDIs(storage.local_sr)

    t0 = time.monotonic()
    virsh("vol-delete", "--pool", LOCAL_POOL, name)
    events.wait(lambda e: e["class"].lower() == "vdi" and e["operation"] == "del" and e["ref"] == vdi,
                timeout=30, what="VDI del")
    del_s = time.monotonic() - t0
    with pytest.raises(XenAPI.Failure) as gone:
        x.VDI.get_record(vdi)
    assert gone.value.details[0] == "HANDLE_INVALID"
    print(f"\nvirsh vol-create-as -> VDI add {add_s:.2f} s, vol-delete -> del {del_s:.2f} s")
    assert add_s < 10 and del_s < 10, "the storage poller looks every 0.5 s: a few seconds at most"
