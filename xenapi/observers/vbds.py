"""A domain's disks -> its VBD records (part of the domain observer's observation).

Every ``<disk>`` of the persistent definition (and of the live one, for a disk hot-plugged
there alone) is a VBD, keyed by the VM and its slot (``userdevice``).  What libvirt says (the
VDI its source names, device, mode, type, empty, attached) is overwritten at each observation;
bootable, unpluggable, other_config and QoS are the store's, given by VBD.create (``expect``).
Their allowed_operations follow from the VM's state, so they are recomputed once the observation
is in (``DomainObserver.after_apply``).
"""
from __future__ import annotations

from xenapi.backend import devices, domxml
from xenapi.model.types import NULL_REF
from xenapi.state.store import add, delete, derived_ref, derived_uuid, mod

_TYPES = {"cdrom": "CD", "floppy": "Floppy"}


def vbd_ref(vm_uuid: str, userdevice) -> str:
    return derived_ref("VBD", f"{vm_uuid}/{userdevice}")


def vbd_ops(store, volumes, storage, vm: str, vm_uuid: str, host: str, parsed: dict, configured: list[dict] | None,
            live: list[dict] | None) -> list:
    """Operations that make VM ``vm``'s VBDs those of its disks; ``live``: the running guest's
    disks (None when it is not running); ``configured`` None: its persistent definition was not
    read (a bulk listing), so VBDs the running guest lacks are kept as they were, detached."""
    flavour = domxml.device_flavour(parsed)
    disks = {d["userdevice"]: d for d in configured or () if d["kind"] == "disk" and "userdevice" in d}
    attached = {d["userdevice"] for d in live or () if d["kind"] == "disk" and "userdevice" in d}
    for d in live or ():
        if d["kind"] == "disk" and "userdevice" in d:
            disks.setdefault(d["userdevice"], d)      # hot-plugged into the running guest only
    ops, wanted = [], set()
    for slot, disk in disks.items():
        ref = vbd_ref(vm_uuid, slot)
        empty = disk["type"] != "volume" and not disk["path"]
        vdi = NULL_REF if empty else volumes.locate(host, disk)
        if vdi == NULL_REF and not empty:
            # a disk on no volume known (a path outside every pool, or a volume not seen yet) is no
            # VBD: xapi has no disk without a VDI; look again when a volume turns up
            storage.unresolved.add((host, vm_uuid))
            continue
        wanted.add(ref)
        fields = {
            "VM": vm, "VDI": vdi, "userdevice": str(slot),
            "device": devices.target_name(flavour, slot, disk["device"]), "mode": "RO" if disk["readonly"] else "RW",
            "type": _TYPES.get(disk["device"], "Disk"), "empty": empty, "currently_attached": slot in attached,
        }
        current = store.find("VBD", ref)
        if current is None:
            ops.append(add("VBD", ref, store.new_record("VBD", {
                **storage.expected_vbd(ref), **fields, "uuid": derived_uuid("VBD", f"{vm_uuid}/{slot}")})))
        else:
            ops.append(mod("VBD", ref, fields))
    vm_rec = store.find("VM", vm)
    for ref in (vm_rec["VBDs"] if vm_rec else ()):
        if ref in wanted:
            continue
        if configured is None:
            ops.append(mod("VBD", ref, {"currently_attached": False}))
        else:
            ops.append(delete("VBD", ref))
    return ops
