"""VBDs: a VM's disks and CD drives, kept in its libvirt domain as ``<disk>`` elements.

VBD.create writes the domain's persistent definition (libvirt checks it; the domain observer then
shows the VBD), plug/unplug hot-plug the disk into the running guest, insert/eject change a CD
drive's medium.  What kinds of guest take what (VM_CLASSES) is declared once here: the seed's
"a VM class supports certain storage plugin types".
"""
from __future__ import annotations

import re

from xenapi import errors as E
from xenapi.backend import devices, domxml, rewrite
from xenapi.errors import XenAPIError
from xenapi.model.types import NULL_REF
from xenapi.observers.vbds import vbd_ref
from xenapi.observers.volumes import volume_key
from xenapi.services.hotplug import wait_released
from xenapi.services.storage_rules import vdi_attachable

# What each kind of guest takes: the VBD types and the SR types (plugins) its disks may live on.
# LXC containers mount file systems, not block devices (their root comes from an lxc: template);
# libxl attaches files and block devices, not network volumes (iSCSI LUNs, RBD images).
VM_CLASSES = {
    "kvm": ({"Disk", "CD"}, {"dir", "iso", "lvm", "nfs", "iscsi", "rbd"}),
    "xen-pv": ({"Disk", "CD"}, {"dir", "iso", "lvm", "nfs"}),
    "xen-hvm": ({"Disk", "CD"}, {"dir", "iso", "lvm", "nfs"}),
    "lxc": (set(), set()),
}
_ATTACHABLE_VDI_TYPES = {"system", "user", "ephemeral", "suspend", "crashdump", "metadata", "rrd", "pvs_cache"}
_DEVICE_NAME = re.compile(r"^(xvd|vd|hd|sd)([a-z]+)$")
_MAX_SLOT = 255


def vm_class(parsed: dict) -> str:
    """The VM_CLASSES key of a parsed domain."""
    if parsed["virt_type"] == "lxc":
        return "lxc"
    if parsed["virt_type"] == "xen":
        return "xen-hvm" if parsed["domain_type"] == "hvm" else "xen-pv"
    return "kvm"


def parse_userdevice(value: str, taken: set[int]) -> int:
    """xapi's userdevice: "autodetect" (the first free slot), a number, or a device name (xvdb, hdb)."""
    if value == "autodetect":
        return next(s for s in range(_MAX_SLOT + 1) if s not in taken)
    if value.isdigit() and int(value) <= _MAX_SLOT:
        return int(value)
    match = _DEVICE_NAME.match(value)
    if match and (slot := devices._slot(match.group(2))) <= _MAX_SLOT:
        return slot
    raise XenAPIError(E.INVALID_DEVICE, value)


class Disks:
    """The VBD half of the storage service (mixed into ``Storage``)."""

    unresolved: set

    def expect_vbd(self, ref: str, fields: dict) -> None:
        self._expected_vbds[ref] = fields

    def resolve_disks(self, host: str) -> None:
        """Re-observe the domains of ``host`` whose disks name a volume only now known."""
        pending = {uuid for h, uuid in getattr(self, "unresolved", set()) if h == host}
        self.unresolved = {(h, u) for h, u in getattr(self, "unresolved", set()) if h != host}
        for uuid in pending:
            self.reconciler.on_event(self.hosts.uri_of(host), "domain", uuid, "disk")

    # -- the domain a VBD lives in ---------------------------------------------------------------
    def _domain(self, vm: str):
        rec = self.store.get("VM", vm)
        if rec["is_control_domain"]:
            raise XenAPIError(E.OPERATION_NOT_ALLOWED, "the control domain has no VBDs here")
        host = self.hosts.home_of(vm)
        return rec, host, self.hosts.connection(host)

    def _edit_definition(self, vm: str, edit) -> None:
        """Rewrite the VM's persistent definition with ``edit(xml, parsed)``, under its object lock."""
        rec, host, conn = self._domain(vm)
        with self.store.object_lock("VM", vm):
            xml = conn.xml(rec["uuid"], inactive=True)
            conn.define(edit(xml, domxml.parse(xml)))
            self.reconciler.refresh(host, rec["uuid"])

    def disk_source(self, host: str, vdi: str) -> dict:
        """How a domain on ``host`` names VDI ``vdi``: its pool's name there and its volume."""
        rec = self.store.get("VDI", vdi)
        sr = self.store.get("SR", rec["SR"])
        pbd = next((p for p in sr["PBDs"] if self.store.get("PBD", p)["host"] == host), None)
        if pbd is None:
            raise XenAPIError(E.SR_HAS_NO_PBDS, rec["SR"])
        pool = self.hosts.connection(host).pool_state(sr["uuid"])
        fmt = rec["sm_config"].get("format", "raw")
        return {"pool": pool.name, "volume": rec["sm_config"].get("volume", ""),
                "format": fmt if fmt in ("qcow2", "raw") else "raw"}

    def _assert_present(self, host: str, vdi: str) -> None:
        """VDI_MISSING if the VDI's volume is gone from its pool (an ISO deleted behind our back),
        re-observed so the VDI record goes too."""
        rec = self.store.get("VDI", vdi)
        key = volume_key(self.store.get("SR", rec["SR"])["uuid"], rec["sm_config"].get("volume", ""))
        if self.reconciler.volumes.read(host, self.hosts.connection(host), key) is None:
            self.reconciler.refresh(host, key, "volume")
            raise XenAPIError(E.VDI_MISSING, rec["SR"], vdi)

    # -- VBD.create / destroy ------------------------------------------------------------------------
    def vbd_create(self, ctx, values: dict) -> str:
        vm, vdi, vbd_type, mode, empty = values["VM"], values["VDI"], values["type"], values["mode"], values["empty"]
        if not self.store.exists("VM", vm):
            raise XenAPIError(E.HANDLE_INVALID, "VM", vm)
        if not empty:
            if not self.store.exists("VDI", vdi):
                raise XenAPIError(E.HANDLE_INVALID, "VDI", vdi)
            if self.store.get("VDI", vdi)["type"] not in _ATTACHABLE_VDI_TYPES:
                raise XenAPIError(E.VDI_INCOMPATIBLE_TYPE, vdi, self.store.get("VDI", vdi)["type"])
        if vbd_type == "CD" and mode != "RO":
            raise XenAPIError(E.VBD_CDS_MUST_BE_READONLY)
        if vbd_type != "CD" and empty:
            raise XenAPIError(E.VBD_NOT_REMOVABLE_MEDIA, "in constructor")
        if not empty and mode == "RW" and self.store.get("VDI", vdi)["read_only"]:
            raise XenAPIError(E.VDI_READONLY, vdi)
        rec, host, conn = self._domain(vm)
        parsed = domxml.parse(conn.xml(rec["uuid"], inactive=True))
        self._check_vm_class(vm, parsed, vbd_type, None if empty else vdi)
        if not empty:
            self._assert_present(host, vdi)
        source = None if empty else self.disk_source(host, vdi)
        with self.store.object_lock("VM", vm):
            xml = conn.xml(rec["uuid"], inactive=True)
            slots = rewrite.disk_slots(xml)
            slot = parse_userdevice(values["userdevice"], slots)
            if slot in slots:
                raise XenAPIError(E.DEVICE_ALREADY_EXISTS, values["userdevice"])
            disk = {"kind": "disk", "device": "cdrom" if vbd_type == "CD" else "disk", "readonly": mode == "RO",
                    "userdevice": slot}
            disk.update({"type": "volume", **source} if source else {"type": "file", "path": ""})
            ref = vbd_ref(rec["uuid"], slot)
            self.expect_vbd(ref, {k: values[k] for k in ("bootable", "unpluggable", "other_config",
                                                          "qos_algorithm_type", "qos_algorithm_params")
                                  if k in values})
            try:
                conn.define(rewrite.add_disk(xml, disk, domxml.device_flavour(parsed)))
            except Exception:
                self._expected_vbds.pop(ref, None)
                raise
            self.reconciler.refresh(host, rec["uuid"])
        return ref

    def _check_vm_class(self, vm: str, parsed: dict, vbd_type: str, vdi: str | None) -> None:
        kind = vm_class(parsed)
        types, plugins = VM_CLASSES[kind]
        if vbd_type not in types:
            raise XenAPIError(E.VALUE_NOT_SUPPORTED, "type", vbd_type,
                              f"a {kind} guest takes no {vbd_type} VBDs" + (
                                  " (a container mounts file systems; its root comes from an lxc: template)"
                                  if kind == "lxc" else ""))
        if vdi is not None:
            sr_type = self.store.get("SR", self.store.get("VDI", vdi)["SR"])["type"]
            if sr_type not in plugins:
                raise XenAPIError(E.VALUE_NOT_SUPPORTED, "SR", sr_type,
                                  f"a {kind} guest cannot take disks from {sr_type} SRs (it takes {', '.join(sorted(plugins))})")

    def vbd_destroy(self, ctx, vbd):
        rec = self.store.get("VBD", vbd)
        vm = self.store.get("VM", rec["VM"])
        if rec["currently_attached"]:
            raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"VBD '{rec['uuid']}' still attached to '{vm['uuid']}'")
        self._edit_definition(rec["VM"], lambda xml, parsed: rewrite.remove_disk(xml, int(rec["userdevice"])))

    # -- hot-plug --------------------------------------------------------------------------------------
    def vbd_plug(self, ctx, vbd):
        with self.tables["VBD"].operation(ctx, vbd, "plug") as rec:
            vm, host, conn = self._domain(rec["VM"])
            with self.store.object_lock("VM", rec["VM"]):
                conn.attach_live(vm["uuid"], rewrite.live_disk(conn.xml(vm["uuid"], inactive=True), int(rec["userdevice"])))
                self.reconciler.refresh(host, vm["uuid"])

    def vbd_unplug(self, ctx, vbd, op: str = "unplug"):
        with self.tables["VBD"].operation(ctx, vbd, op) as rec:
            vm, host, conn = self._domain(rec["VM"])
            with self.store.object_lock("VM", rec["VM"]):
                conn.detach_live(vm["uuid"], rewrite.live_disk(conn.xml(vm["uuid"]), int(rec["userdevice"])))
                wait_released(self.store, self.reconciler, "VBD", vbd, host, vm["uuid"], "disk")

    def vbd_unplug_force(self, ctx, vbd):
        self.vbd_unplug(ctx, vbd, "unplug_force")

    def vbd_assert_attachable(self, ctx, vbd):
        rec = self.store.get("VBD", vbd)
        if not rec["empty"]:
            error = vdi_attachable(self.store, rec["VDI"], rec["mode"], exclude=vbd)
            if error is not None:
                raise error

    # -- CD media --------------------------------------------------------------------------------------
    def vbd_insert(self, ctx, vbd, vdi):
        if not self.store.get("VDI", vdi)["managed"]:
            raise XenAPIError(E.VDI_NOT_MANAGED, vdi)
        self._change_media(ctx, vbd, "insert", vdi)

    def vbd_eject(self, ctx, vbd):
        self._change_media(ctx, vbd, "eject", None)

    def _change_media(self, ctx, vbd: str, op: str, vdi: str | None) -> None:
        with self.tables["VBD"].operation(ctx, vbd, op) as rec:
            vm, host, conn = self._domain(rec["VM"])
            if vdi:
                self._assert_present(host, vdi)
            source = self.disk_source(host, vdi) if vdi else None
            if source:
                source.pop("format")
            slot = int(rec["userdevice"])
            with self.store.object_lock("VM", rec["VM"]):
                if vm["power_state"] in ("Running", "Paused"):
                    conn.update_live(vm["uuid"], rewrite.live_disk(rewrite.set_source(conn.xml(vm["uuid"]), slot, source), slot))
                conn.define(rewrite.set_source(conn.xml(vm["uuid"], inactive=True), slot, source))
                self.reconciler.refresh(host, vm["uuid"])

    # -- setters ------------------------------------------------------------------------------------------
    def vbd_set_mode(self, ctx, vbd, value):
        rec = self.store.get("VBD", vbd)
        vm = self.store.get("VM", rec["VM"])
        if vm["power_state"] != "Halted":
            raise XenAPIError(E.VM_BAD_POWER_STATE, rec["VM"], "halted", vm["power_state"].lower())
        if value == "RW" and rec["VDI"] != NULL_REF and self.store.get("VDI", rec["VDI"])["read_only"]:
            raise XenAPIError(E.VDI_READONLY, rec["VDI"])
        self._edit_definition(rec["VM"], lambda xml, parsed: rewrite.set_disk_mode(xml, int(rec["userdevice"]), value == "RO"))

    def vbd_set_userdevice(self, ctx, vbd, value):
        if value != self.store.get("VBD", vbd)["userdevice"]:
            raise XenAPIError(E.VALUE_NOT_SUPPORTED, "userdevice", value,
                              "a VBD's slot is its place in the domain; destroy and create it in the new slot")

    def vbd_set_type(self, ctx, vbd, value):
        if value != self.store.get("VBD", vbd)["type"]:
            raise XenAPIError(E.VALUE_NOT_SUPPORTED, "type", value,
                              "a disk cannot become a CD drive in place; destroy and create the VBD")
