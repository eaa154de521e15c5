"""A VM's disks when the VM is cloned, copied or provisioned.

* ``VM.clone`` clones each writable disk (``VDI.clone``: a qcow2 overlay where the source is a
  template's or a snapshot's, which nothing writes any more, else a full copy); ``VM.copy`` copies
  each into the SR given (or its own).  Read-only disks and CDs are shared, as xapi shares them.
* ``VM.provision`` makes the disks a template's ``other_config["disks"]`` describes, xapi's
  provision spec (``<provision><disk device="0" size="..." sr="<uuid>" bootable="true"
  type="system"/></provision>``), as Ansible, install.py and ``xe vm-install`` write it.

What was made is destroyed again if a later step fails, so a failed call leaves no disk behind.
"""
from __future__ import annotations

import logging

from defusedxml import ElementTree as SafeET

from xenapi import errors as E
from xenapi.errors import XenAPIError
from xenapi.model.types import NULL_REF

log = logging.getLogger(__name__)

_VBD_KEPT = ("bootable", "unpluggable", "other_config", "qos_algorithm_type", "qos_algorithm_params")


class Made:
    """VDIs made by one call, destroyed again unless the call succeeds."""

    def __init__(self, storage, ctx):
        self.storage, self.ctx, self.vdis = storage, ctx, []

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if kind is None:
            return
        for vdi in reversed(self.vdis):
            try:
                for vbd in list(self.storage.store.get("VDI", vdi)["VBDs"]):
                    self.storage.vbd_destroy(self.ctx, vbd)
                self.storage.vdi_destroy(self.ctx, vdi)
            except XenAPIError as e:
                log.warning("event=disk-cleanup-failed vdi=%s error=%s", vdi, e.code)


def new_disks(storage, ctx, rec: dict, host: str, sr: str | None, made: Made) -> dict[int, tuple[dict, dict]]:
    """Slot -> (the disk's new source, the VBD fields to keep) for each writable disk of VM ``rec``:
    cloned (``sr`` None) or copied into ``sr`` (NULL: each disk's own SR)."""
    store, out = storage.store, {}
    for vbd in rec["VBDs"]:
        b = store.get("VBD", vbd)
        if b["empty"] or b["VDI"] == NULL_REF or b["mode"] == "RO" or b["type"] == "CD":
            continue
        if sr is None:
            vdi = storage.vdi_clone(ctx, b["VDI"], {})
        else:
            source = store.get("VDI", b["VDI"])
            vdi = storage.vdi_copy(ctx, b["VDI"], sr if sr != NULL_REF else source["SR"], NULL_REF, NULL_REF)
        made.vdis.append(vdi)
        out[int(b["userdevice"])] = (storage.disk_source(host, vdi), {k: b[k] for k in _VBD_KEPT})
    return out


# -- provision ---------------------------------------------------------------------------------------

def provision_spec(text: str) -> list[dict]:
    """The disks of a provision spec; VALUE_NOT_SUPPORTED if it is not one."""
    try:
        root = SafeET.fromstring(text)
    except Exception as e:                       # expat's and defusedxml's errors alike
        raise XenAPIError(E.VALUE_NOT_SUPPORTED, "other_config:disks", text[:200], f"not XML: {e}") from None
    if root.tag != "provision" or root.attrib:
        raise XenAPIError(E.VALUE_NOT_SUPPORTED, "other_config:disks", text[:200],
                          "the root element must be <provision>, with no attributes")
    disks = []
    for disk in root.findall("disk"):
        try:
            size = int(disk.get("size", ""))
        except ValueError:
            raise XenAPIError(E.VALUE_NOT_SUPPORTED, "other_config:disks", disk.get("size", ""),
                              "a disk's size is a number of bytes") from None
        disks.append({"device": disk.get("device", "autodetect"), "size": size, "sr": disk.get("sr", ""),
                      "bootable": disk.get("bootable", "false").lower() == "true",
                      "type": disk.get("type", "system")})
    return disks


def provision(storage, ctx, vm: str, rec: dict) -> None:
    """Make the disks ``other_config["disks"]`` asks for, then drop the key (as xapi does)."""
    store = storage.store
    spec = provision_spec(rec["other_config"]["disks"])
    with Made(storage, ctx) as made:
        for disk in spec:
            sr = _sr_named(storage, disk["sr"])
            vdi = storage.vdi_create(ctx, {
                "SR": sr, "virtual_size": disk["size"], "type": disk["type"], "sharable": False, "read_only": False,
                "other_config": {}, "name_label": "", "name_description": "Created by template provisioner",
                "xenstore_data": {}, "sm_config": {"vmhint": rec["uuid"]}, "tags": []})
            made.vdis.append(vdi)
            vbd = storage.vbd_create(ctx, {
                "VM": vm, "VDI": vdi, "userdevice": disk["device"], "bootable": disk["bootable"], "mode": "RW",
                "type": "Disk", "unpluggable": disk["type"] != "system", "empty": False,
                "other_config": {"owner": ""}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
            store.update("VDI", vdi, {"name_label": store.get("VBD", vbd)["userdevice"]})
    store.modify("VM", vm, lambda r: {"other_config": {k: v for k, v in r["other_config"].items()
                                                       if k not in ("disks", "postinstall")}})


def _sr_named(storage, value: str) -> str:
    """The SR a provision spec names: by uuid (xapi), by name label, or "" for the pool's default."""
    store = storage.store
    if not value:
        sr = next(iter(store.records("pool").values()))["default_SR"]
        if sr == NULL_REF or not store.exists("SR", sr):
            raise XenAPIError(E.UUID_INVALID, "sr", value)
        return sr
    ref = store.find_uuid("SR", value)
    if ref is None:
        labelled = store.by_name_label("SR", value)
        if not labelled:
            raise XenAPIError(E.UUID_INVALID, "sr", value)
        ref = labelled[0]
    return ref
