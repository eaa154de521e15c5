"""Emptying a host before maintenance: xapi's host.evacuate, host.get_vms_which_prevent_evacuation
and host.assert_can_evacuate (xapi_host.ml's plan, shared/reference/xenapi-storage-network-pool.md 4.6).

The plan, computed the same way by all three:

1. The VMs to move: those running or paused on the host (``resident_on``) and, unlike xapi, whose
   halted VMs live on shared storage, those halted there too: a halted VM is defined in one host's
   libvirt, so it moves (cold) with the others or would be out of reach while the host is down.
2. The targets: the other hosts of the pool, enabled and live.  None: every VM gets
   NO_HOSTS_AVAILABLE [vm].
3. Each VM is checked against each target with the migration's own checks (xenapi/services/moves.py's
   ``Moves.reasons``: host.qualify's plus those of the move itself, e.g. a driver that cannot
   live-migrate), memory aside; a VM no target passes keeps the first reason found.
4. Memory is bin-packed across the targets: running VMs largest first, each onto the target that
   qualifies with the most memory left; one that fits nowhere gets HOST_NOT_ENOUGH_FREE_MEMORY
   [needed, the most any of its targets has left].  A halted VM needs only to fit (it takes no
   memory until started), after the running ones are counted.

Any VM with a reason and nothing moves: host.evacuate raises the first VM's reason,
host.assert_can_evacuate raises CANNOT_EVACUATE_HOST ["CODE,p1,p2|CODE2,..."] (xapi's encoding)
and get_vms_which_prevent_evacuation returns {vm: [CODE, params...]}.  Otherwise host.evacuate
moves each VM with the checked move of VM.pool_migrate (``Moves.move``: live when running,
cold when halted), ``evacuate_batch_size`` at a time (0 or less: 10, xapi's default), running VMs
first; its task's progress is the share of VMs moved.  A VM stopped meanwhile (VM_BAD_POWER_STATE)
is passed over; another failure stops the evacuation (the moves under way finish) and is raised.
As xapi's, host.evacuate does not disable the host: call host.disable first so that nothing
starts there meanwhile.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from xenapi import errors as E
from xenapi.errors import XenAPIError
from xenapi.model.types import NULL_REF

log = logging.getLogger(__name__)

BATCH_SIZE = 10          # xapi's evacuation_batch_size
_LIVE = ("Running", "Paused")


class _Step:
    """The evacuation's context as one move sees it: the task's own progress is the evacuation's."""

    def __init__(self, ctx):
        self._ctx = ctx

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def progress(self, value: float) -> None:
        pass


class Evacuation:
    def __init__(self, store, hosts, placement, moves):
        self.store, self.hosts, self.placement, self.moves = store, hosts, placement, moves
        self._lock = threading.Lock()
        self._evacuating: set[str] = set()

    # -- the plan ---------------------------------------------------------------------------------
    def vms_on(self, host: str) -> list[str]:
        """The VMs an evacuation moves: running or paused there, or halted and defined there."""
        return [vm for vm, rec in self.store.records("VM").items()
                if not rec["is_control_domain"] and self.moves.current_host(vm) == host]

    def targets(self, host: str) -> list[str]:
        hosts = self.hosts
        return [h for h in hosts.refs if h != host and (rec := self.store.find("host", h)) is not None
                and rec["enabled"] and hosts.live(h)]

    def plan(self, host: str) -> tuple[dict[str, str], dict[str, XenAPIError]]:
        """(VM -> its destination, VM -> why it cannot go); the VMs in the order they would move."""
        if not self.store.exists("host", host):
            raise XenAPIError(E.HANDLE_INVALID, "host", host)
        vms, targets = self.vms_on(host), self.targets(host)
        if not targets:
            return {}, {vm: XenAPIError(E.NO_HOSTS_AVAILABLE, vm) for vm in vms}
        errors: dict[str, XenAPIError] = {}
        candidates: dict[str, list[str]] = {}
        for vm in vms:
            ok, first = [], None
            for target in targets:
                reasons = [r for r in self.moves.reasons(vm, host, target)
                           if r.code != E.HOST_NOT_ENOUGH_FREE_MEMORY]
                if reasons:
                    first = first or reasons[0]
                else:
                    ok.append(target)
            if ok:
                candidates[vm] = ok
            else:
                errors[vm] = first
        left = {t: self.placement.available_memory(t) for t in targets}
        need = {vm: self.store.get("VM", vm)["memory_dynamic_max"] for vm in candidates}
        live = [vm for vm in candidates if self.store.get("VM", vm)["power_state"] in _LIVE]
        halted = [vm for vm in candidates if vm not in live]
        plan: dict[str, str] = {}
        for vm in sorted(live, key=lambda v: -need[v]):
            fits = [t for t in candidates[vm] if left[t] >= need[vm]]
            if not fits:
                errors[vm] = XenAPIError(E.HOST_NOT_ENOUGH_FREE_MEMORY, need[vm], max(left[t] for t in candidates[vm]))
                continue
            target = max(fits, key=lambda t: left[t])
            left[target] -= need[vm]
            plan[vm] = target
        for vm in halted:
            fits = [t for t in candidates[vm] if left[t] >= need[vm]]
            if not fits:
                errors[vm] = XenAPIError(E.HOST_NOT_ENOUGH_FREE_MEMORY, need[vm], max(left[t] for t in candidates[vm]))
                continue
            plan[vm] = max(fits, key=lambda t: left[t])
        return plan, {vm: errors[vm] for vm in vms if vm in errors}

    # -- the messages ----------------------------------------------------------------------------
    def preventing(self, ctx, host: str) -> dict[str, list[str]]:
        return {vm: [e.code, *e.params] for vm, e in self.plan(host)[1].items()}

    def assert_can(self, ctx, host: str) -> None:
        errors = self.plan(host)[1]
        if errors:
            raise XenAPIError(E.CANNOT_EVACUATE_HOST, "|".join(",".join((e.code, *e.params)) for e in errors.values()))

    def evacuate(self, ctx, host: str, network: str = NULL_REF, batch_size: int = 0) -> None:
        if network != NULL_REF and not self.store.exists("network", network):
            raise XenAPIError(E.HANDLE_INVALID, "network", network)
        with self._lock:
            if host in self._evacuating:
                raise XenAPIError(E.OTHER_OPERATION_IN_PROGRESS, "host", host, "evacuate", ctx.task_ref or "")
            self._evacuating.add(host)
        try:
            self._evacuate(ctx, host, batch_size if batch_size > 0 else BATCH_SIZE)
        finally:
            with self._lock:
                self._evacuating.discard(host)

    def _evacuate(self, ctx, host: str, batch_size: int) -> None:
        plan, errors = self.plan(host)
        if errors:
            raise next(iter(errors.values()))
        log.info("event=evacuate-start host=%s vms=%d", host, len(plan))
        ctx.progress(0.0)
        moves, done, failure = iter(plan.items()), 0, None
        with ThreadPoolExecutor(max_workers=batch_size, thread_name_prefix="evacuate") as workers:
            running = set()
            while True:
                while failure is None and len(running) < batch_size and (item := next(moves, None)) is not None:
                    try:
                        ctx.check_cancelled()
                    except XenAPIError as e:
                        failure = e
                        break
                    vm, target = item
                    running.add(workers.submit(self.moves.move, _Step(ctx), vm, host, target))
                if not running:
                    break
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    done += 1
                    ctx.progress(done / len(plan))
                    error = future.exception()
                    if error is None or isinstance(error, XenAPIError) and error.code == E.VM_BAD_POWER_STATE:
                        continue
                    failure = failure or error
        if failure is not None:
            raise failure
        still = [vm for vm in self.vms_on(host) if self.store.get("VM", vm)["power_state"] in _LIVE]
        if still:
            raise XenAPIError(E.INTERNAL_ERROR, f"evacuate: {len(still)} VMs are still resident on {host}")
        log.info("event=evacuate-done host=%s vms=%d", host, len(plan))
