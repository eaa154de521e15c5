"""The operation tables of SR, VDI and VBD: which operations each allows now, and why not.

Each ``check`` returns the error xapi gives (shared/reference/xenapi-storage-network-pool.md 1.2,
1.5, 1.6, with the parameters xapi really sends), or None.  ``features(store, sr)`` is the SR's
plugin's SM features, so an SR shows only what its plugin can do.
"""
from __future__ import annotations

from typing import Iterable

from storage import PLUGINS
from xenapi import errors as E
from xenapi.errors import XenAPIError
from xenapi.model.types import NULL_REF
from xenapi.state.operations import OperationTable


def plugin_of(store, sr: str):
    rec = store.find("SR", sr)
    return PLUGINS.get(rec["type"]) if rec is not None else None


def features(store, sr: str) -> dict[str, int]:
    plugin = plugin_of(store, sr)
    return plugin.features if plugin is not None else {}


def plugged_pbds(store, sr: str) -> list[str]:
    rec = store.find("SR", sr)
    return [p for p in (rec["PBDs"] if rec else ()) if store.get("PBD", p)["currently_attached"]]


# --- SR --------------------------------------------------------------------------------------
_SR_FEATURES = {"vdi_create": "VDI_CREATE", "vdi_destroy": "VDI_DELETE", "vdi_resize": "VDI_RESIZE",
                "vdi_introduce": "VDI_INTRODUCE", "vdi_snapshot": "VDI_SNAPSHOT", "update": "SR_UPDATE",
                "scan": "SR_SCAN", "plug": "SR_ATTACH", "unplug": "SR_DETACH"}


def _sr_check(store, ref: str, rec: dict, op: str) -> XenAPIError | None:
    for task, running in rec["current_operations"].items():
        if op != "plug" or running != "plug":     # only plugs run side by side
            return XenAPIError(E.OTHER_OPERATION_IN_PROGRESS, "SR", ref, running, task)
    feature = _SR_FEATURES.get(op)
    if feature and feature not in features(store, ref):
        return XenAPIError(E.SR_OPERATION_NOT_SUPPORTED, ref)
    if op in ("destroy", "forget") and plugged_pbds(store, ref):
        return XenAPIError(E.SR_HAS_PBD, ref)
    if op == "destroy":
        if not rec["PBDs"]:
            return XenAPIError(E.SR_HAS_NO_PBDS, ref)
        if any(store.get("VDI", v)["managed"] for v in rec["VDIs"]):
            return XenAPIError(E.SR_NOT_EMPTY)
        if rec["other_config"].get("indestructible") == "true":
            return XenAPIError(E.SR_INDESTRUCTIBLE, ref)
    return None


SR_TABLE = OperationTable("SR", ("scan", "destroy", "forget", "plug", "unplug", "update", "vdi_create",
                                 "vdi_introduce", "vdi_destroy", "vdi_resize", "vdi_clone", "vdi_snapshot",
                                 "pbd_create", "pbd_destroy"), _sr_check, busy_first=False)


# --- VDI -------------------------------------------------------------------------------------
_VDI_FEATURES = {"snapshot": "VDI_SNAPSHOT", "destroy": "VDI_DELETE", "resize": "VDI_RESIZE",
                 "update": "VDI_UPDATE", "clone": "VDI_CLONE"}
_LIVE_OK = frozenset({"snapshot", "clone"})          # allowed while attached


def _vdi_check(store, ref: str, rec: dict, op: str) -> XenAPIError | None:
    if op == "resize" and not plugged_pbds(store, rec["SR"]):
        return XenAPIError(E.SR_HAS_NO_PBDS, rec["SR"])
    attached = [store.get("VBD", v) for v in rec["VBDs"]]
    attached = [v for v in attached if v["currently_attached"]]
    if attached and op not in _LIVE_OK and not (op == "copy" and all(v["mode"] == "RO" for v in attached)):
        return XenAPIError(E.VDI_IN_USE, ref, op)
    feature = _VDI_FEATURES.get(op)
    if feature and op != "clone" and feature not in features(store, rec["SR"]):
        return XenAPIError(E.SR_OPERATION_NOT_SUPPORTED, rec["SR"])
    if op == "clone" and not features(store, rec["SR"]).keys() & {"VDI_CLONE", "VDI_CREATE"}:
        return XenAPIError(E.SR_OPERATION_NOT_SUPPORTED, rec["SR"])   # no clone and no way to copy into it
    if op == "snapshot" and rec["sharable"]:
        return XenAPIError(E.VDI_IS_SHARABLE, ref)
    if op == "snapshot" and rec["on_boot"] == "reset":
        return XenAPIError(E.OPERATION_NOT_ALLOWED, "VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION")
    return None


VDI_TABLE = OperationTable("VDI", ("clone", "copy", "resize", "snapshot", "destroy", "forget", "update"),
                           _vdi_check, concurrent=("copy",))


# --- VBD -------------------------------------------------------------------------------------
HOTPLUG_DRIVERS = frozenset({"QEMU", "Xen"})    # libvirt drivers that attach disks to running guests


def _vbd_check(store, ref: str, rec: dict, op: str) -> XenAPIError | None:
    vm = store.find("VM", rec["VM"])
    if vm is None:
        return XenAPIError(E.HANDLE_INVALID, "VM", rec["VM"])
    state = vm["power_state"]
    if op in ("unplug", "unplug_force") and not rec["unpluggable"]:
        return XenAPIError(E.VBD_NOT_UNPLUGGABLE, ref)
    if op in ("insert", "eject"):
        if rec["type"] != "CD":
            return XenAPIError(E.VBD_NOT_REMOVABLE_MEDIA, ref)
        if op == "eject" and rec["empty"]:
            return XenAPIError(E.VBD_IS_EMPTY, ref)
        if op == "insert" and not rec["empty"]:
            return XenAPIError(E.VBD_NOT_EMPTY, ref)
        if state == "Suspended":
            return XenAPIError(E.VM_BAD_POWER_STATE, rec["VM"], "halted, running", "suspended")
        if state in ("Running", "Paused") and hypervisor_of(store, vm) not in HOTPLUG_DRIVERS:
            return XenAPIError(E.OPERATION_NOT_ALLOWED, f"libvirt's {hypervisor_of(store, vm) or 'unknown'} driver "
                               "cannot change a running guest's CD: eject and insert while it is halted")
        return None
    if op in ("plug", "unplug", "unplug_force"):
        if state != "Running":
            return XenAPIError(E.VM_BAD_POWER_STATE, rec["VM"], "running", state.lower())
        if op == "plug" and rec["currently_attached"]:
            return XenAPIError(E.DEVICE_ALREADY_ATTACHED, ref)
        if op != "plug" and not rec["currently_attached"]:
            return XenAPIError(E.DEVICE_ALREADY_DETACHED, ref)
        if rec["type"] == "CD":
            return XenAPIError(E.OPERATION_NOT_ALLOWED, "CD drives cannot be hotplugged/unplugged, only inserted or ejected")
        if blocked := hotplug_blocked(store, rec["VM"], vm, "VBD"):
            return blocked
    if op in ("pause", "unpause"):
        vdi = store.find("VDI", rec["VDI"])
        return XenAPIError(E.SR_OPERATION_NOT_SUPPORTED, vdi["SR"] if vdi else "")
    if op in ("attach", "plug") and not rec["empty"] and rec["VDI"] != NULL_REF:
        return vdi_attachable(store, rec["VDI"], rec["mode"], exclude=ref)
    return None


def hotplug_blocked(store, vm_ref: str, vm: dict, device: str) -> XenAPIError | None:
    """Why a running VM cannot take or release a ``device`` (VBD, VIF) now: another operation on
    it, or a libvirt driver that cannot hot-plug (xapi's errors for both); None if it can."""
    if vm["current_operations"]:
        return XenAPIError(E.OPERATION_NOT_ALLOWED,
                           f"Current operation on VM:{vm_ref} is {next(iter(vm['current_operations'].values()))}")
    driver = hypervisor_of(store, vm)
    if driver not in HOTPLUG_DRIVERS:
        return XenAPIError(E.OPERATION_NOT_ALLOWED,
                           f"VM states it does not support {device} hotplug (libvirt's {driver or 'unknown'} driver cannot).")
    return None


def hypervisor_of(store, vm: dict) -> str:
    """The libvirt driver of the host a running VM is on (host.software_version:hypervisor)."""
    host = store.find("host", vm["resident_on"])
    return host["software_version"].get("hypervisor", "") if host else ""


def vdi_attachable(store, vdi: str, mode: str, exclude: str = "") -> XenAPIError | None:
    """VDI_READONLY or VDI_IN_USE if ``vdi`` cannot be attached in ``mode`` beside its other VBDs."""
    rec = store.find("VDI", vdi)
    if rec is None:
        return XenAPIError(E.HANDLE_INVALID, "VDI", vdi)
    if mode == "RW" and rec["read_only"]:
        return XenAPIError(E.VDI_READONLY, vdi)
    if not rec["sharable"]:
        others = [store.get("VBD", v) for v in rec["VBDs"] if v != exclude]
        if any(o["currently_attached"] and (o["mode"] == "RW" or mode == "RW") for o in others):
            return XenAPIError(E.VDI_IN_USE, vdi)
    return None


class _VBDTable(OperationTable):
    def refresh(self, store, refs: Iterable[str]) -> None:
        """Also the VBDs' VDIs: what a VDI allows depends on whether its VBDs are attached."""
        refs = list(refs)
        super().refresh(store, refs)
        VDI_TABLE.refresh(store, {rec["VDI"] for ref in refs if (rec := store.find("VBD", ref)) is not None
                                  and rec["VDI"] != NULL_REF})


VBD_TABLE = _VBDTable("VBD", ("attach", "eject", "insert", "plug", "unplug", "unplug_force", "pause", "unpause"),
                      _vbd_check)

TABLES = {"SR": SR_TABLE, "VDI": VDI_TABLE, "VBD": VBD_TABLE}
