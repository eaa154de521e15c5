"""Where a VM runs and how it gets there: VM.start's placement, the draft's VM.migrate (and its dry
run), VM.pool_migrate, VM.assert_can_migrate and host.evacuate all move VMs through here, so that
the checks of a dry run are exactly those of the move.

The checks are host.qualify's (xenapi/services/placement.py) plus the migration's own: the VM is
on ``current``, the destination is another host, a running VM's hosts can live-migrate and the
source's libvirtd can dial the destination's.  The move itself is xenapi/services/migration.py's.
"""
from __future__ import annotations

from xenapi import errors as E
from xenapi.errors import XenAPIError
from xenapi.services.placement import Guest
from xenapi.state import lifecycle

_LIVE = frozenset({"Running", "Paused"})


def first(reasons: list[XenAPIError]) -> None:
    """Raise the first of ``reasons``, if any."""
    if reasons:
        raise reasons[0]


class Moves:
    def __init__(self, store, hosts, reconciler, placement, migration):
        self.store, self.hosts, self.reconciler = store, hosts, reconciler
        self.placement, self.migration = placement, migration

    def current_host(self, vm: str) -> str | None:
        """Where ``vm`` is: its resident host while it runs, else the host that defines it."""
        rec = self.store.get("VM", vm)
        return rec["resident_on"] if rec["power_state"] in _LIVE else self.hosts.homes.get(vm)

    def reasons(self, vm: str, current: str, destination: str) -> list[XenAPIError]:
        """Every reason ``vm`` cannot move from ``current`` to ``destination`` now (empty: it can)."""
        rec = self.store.get("VM", vm)
        found = []
        where = self.current_host(vm)
        if where != current:
            found.append(XenAPIError(E.VM_NOT_RESIDENT_HERE, vm, current))
        if destination == where:
            found.append(XenAPIError(E.OPERATION_NOT_ALLOWED, "the destination is the host the VM is on"))
        if rec["power_state"] == "Suspended":
            found.append(XenAPIError(E.VM_BAD_POWER_STATE, vm, "halted, running, paused", "suspended"))
        if rec["power_state"] in _LIVE:
            found += self._live_reasons(current, destination)
        return found + self.placement.reasons(vm, destination)

    def _live_reasons(self, current: str, destination: str) -> list[XenAPIError]:
        up = [h for h in dict.fromkeys((current, destination)) if self.store.exists("host", h) and self.hosts.live(h)]
        found = []
        for host in up:
            ok, why = self.migration.live_supported(host)
            if not ok:
                found.append(XenAPIError(E.OPERATION_NOT_ALLOWED, f"cannot live-migrate: {why}"))
        if not found and current != destination and len(up) == 2:
            ok, why = self.migration.reachable(current, destination)
            if not ok:
                found.append(XenAPIError(E.OPERATION_NOT_ALLOWED, f"cannot live-migrate: {why}"))
        return found

    def start(self, ctx, vm: str, host: str | None, paused: bool, op: str) -> None:
        """Start ``vm`` on ``host``, or where it fits best; a VM defined on another host is moved
        there (cold) first.  Where it went shows in resident_on (and its event)."""
        placement = self.placement
        with lifecycle.operation(ctx, vm, op, self.reconciler) as rec:
            target = host or placement.choose(vm)
            first(placement.reasons(vm, target))
            with placement.arriving(vm, target):
                home = self.hosts.home_of(vm)
                if target != home:
                    self.migration.migrate(ctx, vm, home, target, live=False, copy_storage=True)
                self.hosts.connection(target).start(rec["uuid"], paused)
                self.reconciler.refresh(target, rec["uuid"])

    def move(self, ctx, vm: str, current: str, destination: str, *, force: bool = False) -> None:
        """Move ``vm`` from ``current`` to ``destination`` (live if it runs, cold if halted), after
        the same checks as the dry run; what VM.migrate, VM.pool_migrate and host.evacuate do."""
        with lifecycle.operation(ctx, vm, "pool_migrate", self.reconciler) as rec:
            reasons = self.reasons(vm, current, destination)
            if force:         # xapi's force skips the CPU check
                reasons = [r for r in reasons
                           if not (r.code == E.VM_INCOMPATIBLE_WITH_THIS_HOST and "CPU" in r.params[-1])]
            first(reasons)
            guest = Guest(self.store, self.hosts, vm)
            copy = any(not self.placement.sr_plugged(v["SR"], destination) for v in guest.vdis)
            with self.placement.arriving(vm, destination):
                self.migration.migrate(ctx, vm, current, destination, live=rec["power_state"] in _LIVE,
                                       copy_storage=copy)
