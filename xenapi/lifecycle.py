"""Which VM operations are allowed when: one table, and the guard every power operation runs under.

The table lists the operations this server implements, with the power states xapi allows them in
(xapi_vm_lifecycle.ml).  ``allowed_operations`` is always derived from it, never set by hand.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

from xenapi import errors as E
from xenapi.errors import XenAPIError

_ALL = frozenset({"Halted", "Paused", "Suspended", "Running"})
_ORDER = ("Halted", "Paused", "Suspended", "Running")     # xapi's order in VM_BAD_POWER_STATE

ALLOWED_IN: dict[str, frozenset[str]] = {
    "start": frozenset({"Halted"}),
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

_guard = threading.Lock()     # check-and-mark of current_operations must be atomic across threads


def guard() -> threading.Lock:
    """Held while reading a VM and writing what follows from it (current/allowed operations)."""
    return _guard


def allowed_operations(rec: dict) -> list[str]:
    if rec["is_control_domain"] or rec["current_operations"]:
        return []
    state = rec["power_state"]
    blocked = rec["blocked_operations"]
    ops = TEMPLATE_OPS if rec["is_a_template"] else ALLOWED_IN.keys() - TEMPLATE_ONLY_OPS
    return sorted(op for op in ops if state in ALLOWED_IN[op] and op not in blocked)


def check(rec: dict, ref: str, op: str) -> None:
    """Raise the error xapi gives for ``op`` on this VM now, if any."""
    if rec["is_control_domain"]:
        raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"{op} is not allowed on the control domain")
    if op not in ALLOWED_IN:        # one of xapi's vm_operations that this server does not implement
        raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"{op} is not supported by this server")
    if rec["is_a_template"] and op not in TEMPLATE_OPS:
        raise XenAPIError(E.VM_IS_TEMPLATE, ref, op)
    if not rec["is_a_template"] and op in TEMPLATE_ONLY_OPS:
        raise XenAPIError(E.ONLY_PROVISION_TEMPLATE)
    if op in rec["blocked_operations"]:
        raise XenAPIError(E.OPERATION_BLOCKED, ref, rec["blocked_operations"][op])
    for task, running in rec["current_operations"].items():
        raise XenAPIError(E.OTHER_OPERATION_IN_PROGRESS, "VM", ref, running, task)
    if rec["power_state"] not in ALLOWED_IN[op]:
        expected = ", ".join(s.lower() for s in _ORDER if s in ALLOWED_IN[op])
        raise XenAPIError(E.VM_BAD_POWER_STATE, ref, expected, rec["power_state"].lower())


@contextmanager
def operation(ctx, ref: str, op: str):
    """Run ``op`` on VM ``ref``: checked, shown in current_operations while it runs, cleared after.

    A power state that does not allow ``op`` is re-read from libvirt once before the call is
    refused: a change made behind the server's back (virsh destroy, then VM.start at once) may be
    an event's latency away from the store."""
    store = ctx.store
    marker = ctx.task_ref or f"OpaqueRef:NULL/{op}"
    try:
        rec = _mark(store, ref, op, marker)
    except XenAPIError as e:
        if e.code != E.VM_BAD_POWER_STATE or not _reobserved(ctx, ref):
            raise
        rec = _mark(store, ref, op, marker)
    try:
        yield rec
    finally:
        with _guard:
            rec = store.find("VM", ref)
            if rec is not None:
                idle = {**rec, "current_operations": {}}
                store.update("VM", ref, {"current_operations": {}, "allowed_operations": allowed_operations(idle)})


def _mark(store, ref: str, op: str, marker: str) -> dict:
    with _guard:
        rec = store.get("VM", ref)
        check(rec, ref, op)
        busy = {**rec, "current_operations": {marker: op}}
        store.update("VM", ref, {"current_operations": busy["current_operations"],
                                 "allowed_operations": allowed_operations(busy)})
    return rec


def _reobserved(ctx, ref: str) -> bool:
    """Re-read VM ``ref`` from libvirt (outside the guard, which the reconciler takes); False if
    it cannot be (no host defines it, or the host is down)."""
    rec = ctx.store.find("VM", ref)
    host = ctx.server.reconciler.homes.get(ref)
    if rec is None or host is None:
        return False
    try:
        ctx.server.reconciler.refresh(host, rec["uuid"])
    except XenAPIError:
        return False
    return True
