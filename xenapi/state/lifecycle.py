"""Which VM operations are allowed when: VM's operation table (xenapi/state/operations.py) and the guard
every power operation runs under.

The table lists the operations this server implements, with the power states xapi allows them in
(xapi_vm_lifecycle.ml).  ``allowed_operations`` is always derived from it, never set by hand.
"""
from __future__ import annotations

import functools

from xenapi import errors as E
from xenapi.errors import XenAPIError
from xenapi.state.operations import OperationTable

_ALL = frozenset({"Halted", "Paused", "Suspended", "Running"})
_ORDER = ("Halted", "Paused", "Suspended", "Running")     # xapi's order in VM_BAD_POWER_STATE

ALLOWED_IN: dict[str, frozenset[str]] = {
    "start": frozenset({"Halted"}),
    "start_on": frozenset({"Halted"}),
    "pool_migrate": frozenset({"Halted", "Paused", "Running"}),   # live when it runs, cold when halted
    "provision": frozenset({"Halted"}),
    "clone": frozenset({"Halted"}),
    "copy": frozenset({"Halted"}),
    "changing_memory_limits": frozenset({"Halted"}),
    "changing_VCPUs": frozenset({"Halted"}),
    "unpause": frozenset({"Paused"}),
    "resume": frozenset({"Suspended"}),
    "clean_shutdown": frozenset({"Running"}),
    "clean_reboot": frozenset({"Running"}),
    "pause": frozenset({"Running"}),
    "suspend": frozenset({"Running"}),
    "hard_reboot": frozenset({"Paused", "Running"}),
    "hard_shutdown": frozenset({"Paused", "Suspended", "Running"}),
    "shutdown": frozenset({"Paused", "Suspended", "Running"}),
    "destroy": frozenset({"Halted", "Suspended"}),
}

# What a template may do: be copied, provisioned or destroyed; never run.
TEMPLATE_OPS = frozenset({"clone", "copy", "provision", "destroy", "changing_memory_limits", "changing_VCPUs"})
# ... and what only a template may do (xapi: ONLY_PROVISION_TEMPLATE).
TEMPLATE_ONLY_OPS = frozenset({"provision"})

def allowed_operations(rec: dict) -> list[str]:
    if rec["is_control_domain"]:
        return []
    if rec["current_operations"]:              # what blocks depends on the running operations
        return TABLE.allowed(None, "", rec)
    return list(_allowed_when(rec["power_state"], rec["is_a_template"], frozenset(rec["blocked_operations"])))


@functools.lru_cache(maxsize=256)
def _allowed_when(power_state: str, template: bool, blocked: frozenset) -> tuple[str, ...]:
    """The operations of a VM idle in ``power_state``: the same for every VM in that state, so a
    listing of thousands of VMs computes each answer once."""
    rec = {"is_control_domain": False, "power_state": power_state, "is_a_template": template,
           "blocked_operations": dict.fromkeys(blocked, ""), "current_operations": {}}
    return tuple(TABLE.allowed(None, "", rec))


def _check(store, ref: str, rec: dict, op: str) -> XenAPIError | None:
    """The error xapi gives for ``op`` on this VM now, if any (in xapi's order)."""
    if rec["is_control_domain"]:
        return XenAPIError(E.OPERATION_NOT_ALLOWED, f"{op} is not allowed on the control domain")
    if rec["is_a_template"] and op not in TEMPLATE_OPS:
        return XenAPIError(E.VM_IS_TEMPLATE, ref, op)
    if not rec["is_a_template"] and op in TEMPLATE_ONLY_OPS:
        return XenAPIError(E.ONLY_PROVISION_TEMPLATE)
    if op in rec["blocked_operations"]:
        return XenAPIError(E.OPERATION_BLOCKED, ref, rec["blocked_operations"][op])
    if busy := TABLE.busy(ref, rec):
        return busy
    if rec["power_state"] not in ALLOWED_IN[op]:
        expected = ", ".join(s.lower() for s in _ORDER if s in ALLOWED_IN[op])
        return XenAPIError(E.VM_BAD_POWER_STATE, ref, expected, rec["power_state"].lower())
    return None


TABLE = OperationTable("VM", ALLOWED_IN, _check, busy_first=False)


def check(rec: dict, ref: str, op: str) -> None:
    """Raise the error xapi gives for ``op`` on this VM now, if any."""
    if rec["is_control_domain"]:       # before the unknown-operation check, as xapi
        raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"{op} is not allowed on the control domain")
    error = TABLE.error(None, ref, rec, op)
    if error is not None:
        raise error


def operation(ctx, ref: str, op: str, reconciler):
    """Run ``op`` on VM ``ref``: checked, shown in current_operations while it runs, cleared after.

    A power state that does not allow ``op`` is re-read from libvirt (``reconciler``) once before
    the call is refused: a change made behind the server's back (virsh destroy, then VM.start at
    once) may be an event's latency away from the store."""
    return TABLE.operation(ctx, ref, op, retry=lambda e: e.code == E.VM_BAD_POWER_STATE
                           and _reobserved(ctx.store, reconciler, ref))


def _reobserved(store, reconciler, ref: str) -> bool:
    """Re-read VM ``ref`` from libvirt (outside the guard, which the reconciler takes); False if
    it cannot be (no host defines it, or the host is down)."""
    rec = store.find("VM", ref)
    host = reconciler.homes.get(ref)
    if rec is None or host is None:
        return False
    try:
        reconciler.refresh(host, rec["uuid"])
    except XenAPIError:
        return False
    return True
