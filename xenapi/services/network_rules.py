"""The operation table of VIFs (attach, plug, unplug): which each allows now, and why not.

The checks and their errors are xapi's (shared/reference/xenapi-storage-network-pool.md 2.2).
"""
from __future__ import annotations

from xenapi import errors as E
from xenapi.errors import XenAPIError
from xenapi.services.storage_rules import hotplug_blocked
from xenapi.state.operations import OperationTable


def _vif_check(store, ref: str, rec: dict, op: str) -> XenAPIError | None:
    vm = store.find("VM", rec["VM"])
    if vm is None:
        return XenAPIError(E.HANDLE_INVALID, "VM", rec["VM"])
    if vm["is_control_domain"]:
        return XenAPIError(E.OPERATION_NOT_ALLOWED, "Control domain does not support hotplug")
    state = vm["power_state"]
    if op in ("plug", "unplug"):
        if state != "Running":
            return XenAPIError(E.VM_BAD_POWER_STATE, rec["VM"], "running", state.lower())
        if op == "plug" and rec["currently_attached"]:
            return XenAPIError(E.DEVICE_ALREADY_ATTACHED, ref)
        if op == "unplug" and not rec["currently_attached"]:
            return XenAPIError(E.DEVICE_ALREADY_DETACHED, ref)
        return hotplug_blocked(store, rec["VM"], vm, "VIF")
    return None


VIF_TABLE = OperationTable("VIF", ("attach", "plug", "unplug"), _vif_check)
