"""Where a VM runs: the Xen-API draft's host.qualify and VM.migrate(test), and xapi's start_on,
assert_can_boot_here, get_possible_hosts, pool_migrate and assert_can_migrate, all answered by one
set of checks (xenapi/services/placement.py, xenapi/services/moves.py) so that they always agree.

VM.migrate(vm, current_host, destination_host, test) is the draft's: with ``test`` true nothing
moves and the answer is whether the destination qualifies (every check of host.qualify plus the
migration's own: the VM is on ``current_host``, the destination is another host, a running VM's
hosts can live-migrate); with ``test`` false the VM moves (live when running, cold when halted)
and the answer is true.
"""
from __future__ import annotations

from xenapi import errors as E
from xenapi.errors import XenAPIError
from xenapi.model import types as T
from xenapi.model.declare import message, param
from xenapi.model.roles import POOL_OP, READ_ONLY, VM_OP, VM_POWER_ADMIN
from xenapi.services.host_rules import HOST_TABLE
from xenapi.services.moves import first

_VM = param(T.Ref("VM"), "vm", "The VM")
_SELF = param(T.Ref("VM"), "self", "The VM")
_HOST = param(T.Ref("host"), "host", "The host")
_QUALIFY_ERRORS = (E.HOST_NOT_LIVE, E.HOST_DISABLED, E.HOST_NOT_ENOUGH_FREE_MEMORY, E.VM_INCOMPATIBLE_WITH_THIS_HOST,
                   E.VM_REQUIRES_SR, E.VM_REQUIRES_NETWORK, E.HOST_NETWORK_BANDWIDTH_INSUFFICIENT)
_MIGRATE_ERRORS = (*_QUALIFY_ERRORS, E.VM_NOT_RESIDENT_HERE, E.OPERATION_NOT_ALLOWED, E.VM_BAD_POWER_STATE,
                   E.OTHER_OPERATION_IN_PROGRESS, E.TASK_CANCELLED)


# -- bodies --------------------------------------------------------------------------------------------
def qualify(ctx, vm, host):
    return ctx.services.placement.qualify(vm, host)


def qualify_reasons(ctx, vm, host):
    return [[e.code, *e.params] for e in ctx.services.placement.reasons(vm, host)]


def assert_can_boot_here(ctx, self, host):
    first(ctx.services.placement.reasons(self, host))


def get_possible_hosts(ctx, vm):
    return ctx.services.placement.possible_hosts(vm)


def start(ctx, vm, start_paused, force):
    ctx.services.moves.start(ctx, vm, None, start_paused, "start")


def start_on(ctx, vm, host, start_paused, force):
    ctx.services.moves.start(ctx, vm, host, start_paused, "start_on")


def migrate(ctx, vm, current_host, destination_host, test):
    """The draft's VM.migrate: with ``test`` true only qualify the destination."""
    moves = ctx.services.moves
    if test:
        return not moves.reasons(vm, current_host, destination_host)
    moves.move(ctx, vm, current_host, destination_host)
    return True


def pool_migrate(ctx, vm, host, options):
    moves = ctx.services.moves
    moves.move(ctx, vm, moves.current_host(vm), host, force=options.get("force", "") == "true")


def assert_can_migrate(ctx, vm, dest, live, vdi_map, vif_map, options):
    host = dest.get("host", "")
    if not host.startswith("OpaqueRef:"):
        host = next((ref for ref, r in ctx.store.records("host").items() if r["uuid"] == host), host)
    if not ctx.store.exists("host", host):
        raise XenAPIError(E.HANDLE_INVALID, "host", host)
    moves = ctx.services.moves
    first(moves.reasons(vm, moves.current_host(vm), host))


def _set_enabled(ctx, host: str, enabled: bool) -> None:
    ctx.store.update("host", host, {"enabled": enabled})
    HOST_TABLE.refresh(ctx.store, [host])        # what it allows follows


def _msg(name, doc, params, impl, *, roles=VM_OP, errors=_QUALIFY_ERRORS, result=T.Void, is_async=True,
         changes_nothing=False):
    return message(name, doc, params=params, impl=impl, roles=roles, errors=errors, result=result, is_async=is_async,
                   changes_nothing=changes_nothing)


_MAP = T.Map(T.String, T.String)

VM_MESSAGES = [
    _msg("start_on", "Start the specified VM on a particular host (moved there first, cold, if it is defined "
         "on another). This function can only be called with the VM in the Halted State.",
         [_VM, _HOST, param(T.Bool, "start_paused", "Instantiate VM in paused state if set to true."),
          param(T.Bool, "force", "Ignored (every check applies)")], start_on, roles=VM_POWER_ADMIN,
         errors=(*_QUALIFY_ERRORS, E.VM_BAD_POWER_STATE, E.OTHER_OPERATION_IN_PROGRESS)),
    _msg("assert_can_boot_here", "Returns an error if the VM could not boot on this host for some reason",
         [_SELF, _HOST], assert_can_boot_here, roles=READ_ONLY, changes_nothing=True),
    _msg("get_possible_hosts", "Return the list of hosts on which this VM may run.", [_VM], get_possible_hosts,
         roles=READ_ONLY, result=T.Set(T.Ref("host")), changes_nothing=True),
    _msg("migrate", "Migrate the VM to another host (the Xen-API draft's call). If test is true, then the migration "
         "method will not actually migrate the VM, but it will qualify the destination: the answer is whether it "
         "could (host.qualify's checks and the migration's own); else the VM moves, live if it runs, cold if "
         "halted, and the answer is true.",
         [_VM, param(T.Ref("host"), "current_host", "The host the VM is on"),
          param(T.Ref("host"), "destination_host", "The host to move it to"),
          param(T.Bool, "test", "Only qualify the destination")],
         migrate, roles=VM_POWER_ADMIN, result=T.Bool, errors=_MIGRATE_ERRORS),
    _msg("pool_migrate", "Migrate a VM to another Host (live if it runs: libvirt peer to peer, its disks copied "
         "when the destination does not share their SRs; cold if halted).",
         [_VM, param(T.Ref("host"), "host", "The target host"),
          param(_MAP, "options", "Extra configuration operations: force (skip the CPU check)")],
         pool_migrate, roles=VM_POWER_ADMIN, errors=_MIGRATE_ERRORS),
    _msg("assert_can_migrate", "Assert whether a VM can be migrated to the specified destination "
         "(dest:host names the destination host, by ref or uuid).",
         [_VM, param(_MAP, "dest", "The result of a Host.migrate_receive call (here: host = the destination)"),
          param(T.Bool, "live", "Live migration"),
          param(T.Map(T.Ref("VDI"), T.Ref("SR")), "vdi_map", "Map of source VDI to destination SR"),
          param(T.Map(T.Ref("VIF"), T.Ref("network")), "vif_map", "Map of source VIF to destination network"),
          param(_MAP, "options", "Other parameters")],
         assert_can_migrate, roles=VM_POWER_ADMIN, errors=_MIGRATE_ERRORS, changes_nothing=True),
]

HOST_MESSAGES = [
    _msg("qualify", "Can this host run this VM? (the Xen-API draft's host.qualify: memory, CPU, TPM, hypervisor "
         "type, storage, networks and their bandwidth, the host enabled and live); host.qualify_reasons says why not.",
         [_VM, _HOST], qualify, roles=READ_ONLY, result=T.Bool, is_async=False, changes_nothing=True),
    _msg("qualify_reasons", "Every reason host.qualify is false for this VM and host, each as a Xen-API error "
         "description (code first, then its parameters); empty when the host qualifies.",
         [_VM, _HOST], qualify_reasons, roles=READ_ONLY, result=T.Set(T.Set(T.String)), is_async=False,
         changes_nothing=True),
    _msg("disable", "Puts the host into a state in which no new VMs can be started (or migrated to it). "
         "Currently active VMs on the host continue to execute.",
         [_HOST], lambda ctx, host: _set_enabled(ctx, host, False), roles=POOL_OP, errors=()),
    _msg("enable", "Puts the host into a state in which new VMs can be started.",
         [_HOST], lambda ctx, host: _set_enabled(ctx, host, True), roles=POOL_OP, errors=()),
]
