"""The operation table of hosts: what host.allowed_operations lists, and why not.

What this server does of xapi's host operations: a host's VMs start and arrive only while it is
enabled and live (vm_start, vm_resume, vm_migrate), a live host can be evacuated, a disabled one
enabled.  Power and update operations (shutdown, reboot, power_on, apply_updates, provision) are
the host's own tools' business, never listed.
"""
from __future__ import annotations

from xenapi import errors as E
from xenapi.errors import XenAPIError
from xenapi.state.operations import OperationTable

_SHOWN = ("evacuate", "vm_start", "vm_resume", "vm_migrate", "enable")


def _live(store, rec: dict) -> bool:
    metrics = store.find("host_metrics", rec["metrics"]) if store is not None else None
    return bool(metrics and metrics["live"])


def _check(store, ref: str, rec: dict, op: str) -> XenAPIError | None:
    if op not in _SHOWN:
        return XenAPIError(E.OPERATION_NOT_ALLOWED, f"{op}: the host's own tools do that")
    if not _live(store, rec):
        return XenAPIError(E.HOST_NOT_LIVE)
    if op == "enable":
        return XenAPIError(E.OPERATION_NOT_ALLOWED, "the host is enabled already") if rec["enabled"] else None
    if op != "evacuate" and not rec["enabled"]:
        return XenAPIError(E.HOST_DISABLED, ref)
    return None


HOST_TABLE = OperationTable("host", ("provision", "evacuate", "shutdown", "reboot", "power_on", "vm_start",
                                     "vm_resume", "vm_migrate", "apply_updates", "enable"), _check, shown=_SHOWN)
