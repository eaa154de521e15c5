"""VM: guests, templates and each host's control domain.

What libvirt knows (devices, memory, vCPUs, boot, power state) is read from it by the reconciler;
what only this server knows (other_config, tags, profiles, template-ness...) lives in the store.
Power operations go to libvirt first and are then re-observed, so the answer a client gets already
reflects the new state.
"""
from __future__ import annotations

from classes import vm_placement
from classes.enums import ENUMS
from xenapi import errors as E
from xenapi.state import lifecycle
from xenapi.backend import rewrite
from xenapi.errors import XenAPIError
from xenapi.model import types as T
from xenapi.model.declare import declare_class, fields, message, param
from xenapi.model.roles import POOL_ADMIN, READ_ONLY, VM_ADMIN, VM_OP, VM_POWER_ADMIN

VM_FIELDS = fields("""
    uuid:s allowed_operations:vm_operations[] current_operations:{s:vm_operations} name_label*:s
    name_description*:s power_state:vm_power_state user_version*:i is_a_template*:b is_default_template:b
    suspend_VDI^:@VDI resident_on:@host scheduled_to_be_resident_on:@host affinity*:@host memory_overhead:i
    !memory_target^:i memory_static_max^:i memory_dynamic_max^:i memory_dynamic_min^:i memory_static_min^:i
    VCPUs_params*:s2s VCPUs_max^:i VCPUs_at_startup^:i actions_after_softreboot*:on_softreboot_behavior
    actions_after_shutdown*:on_normal_exit actions_after_reboot*:on_normal_exit
    actions_after_crash^:on_crash_behaviour consoles:@console[] VIFs:@VIF[] VBDs:@VBD[] VUSBs:@VUSB[]
    crash_dumps:@crashdump[] VTPMs:@VTPM[] PV_bootloader*:s PV_kernel*:s PV_ramdisk*:s PV_args*:s
    PV_bootloader_args*:s PV_legacy_args*:s !HVM_boot_policy*:s HVM_boot_params*:s2s HVM_shadow_multiplier^:f
    platform*:s2s !PCI_bus*:s other_config*:s2s domid:i domarch:s last_boot_CPU_flags^:s2s
    is_control_domain:b metrics:@VM_metrics guest_metrics:@VM_guest_metrics last_booted_record^:s
    recommendations*:s xenstore_data*:s2s !ha_always_run^:b ha_restart_priority^:s is_a_snapshot:b
    snapshot_of:@VM snapshots:@VM[] snapshot_time:dt transportable_snapshot_id:s blobs:{s:@blob} tags*:s[]
    blocked_operations*:{vm_operations:s} snapshot_info:s2s snapshot_metadata:s parent:@VM children:@VM[]
    bios_strings:s2s !protection_policy^:@VMPP ~is_snapshot_from_vmpp^:b snapshot_schedule^:@VMSS
    is_vmss_snapshot^:b appliance^:@VM_appliance start_delay^:i shutdown_delay^:i order^:i VGPUs:@VGPU[]
    attached_PCIs:@PCI[] suspend_SR*:@SR version^:i generation_id^:s hardware_platform_version*:i
    has_vendor_device^:b requires_reboot:b reference_label^:s domain_type^:domain_type NVRAM^:s2s
    pending_guidances:update_guidances[] ?pending_guidances_recommended:update_guidances[]
    ?pending_guidances_full:update_guidances[] ?secureboot_certificates_state:vm_secureboot_certificates_state
    ?groups:@VM_group[]
    profiles*:s[]
""", ENUMS,
    defaults={"power_state": "Halted", "domid": -1, "HVM_shadow_multiplier": 1.0, "domain_type": "unspecified",
              "actions_after_shutdown": "destroy", "actions_after_reboot": "restart",
              "actions_after_crash": "restart", "actions_after_softreboot": "soft_reboot",
              "memory_static_max": 256 * 1024 * 1024, "memory_dynamic_max": 256 * 1024 * 1024,
              "memory_dynamic_min": 256 * 1024 * 1024, "memory_static_min": 256 * 1024 * 1024,
              "memory_target": 0, "VCPUs_max": 1, "VCPUs_at_startup": 1, "user_version": 1,
              "HVM_boot_params": {}, "HVM_boot_policy": "", "PV_bootloader": "", "PV_kernel": "",
              "PV_ramdisk": "", "PV_args": "", "PV_bootloader_args": "", "PV_legacy_args": "",
              "platform": {}, "PCI_bus": "", "other_config": {}, "recommendations": "", "VCPUs_params": {},
              "is_a_template": False, "affinity": T.NULL_REF, "secureboot_certificates_state": "ok"},
    docs={"profiles": "The VM's profiles (from the Xen-API draft): any strings, e.g. those the pool suggests.",
          "resident_on": "the host the VM runs on (OpaqueRef:NULL when halted)"},
    writers={"tags": VM_OP, "profiles": VM_ADMIN, "affinity": VM_POWER_ADMIN},
    # what the domain observer reads from libvirt (its XML, its state) at every observation
    observed="""name_label name_description memory_static_max memory_dynamic_max memory_dynamic_min memory_static_min
        VCPUs_max VCPUs_at_startup actions_after_shutdown actions_after_reboot actions_after_crash PV_bootloader
        PV_bootloader_args PV_kernel PV_ramdisk PV_args HVM_boot_policy HVM_boot_params platform domain_type
        power_state domid resident_on domarch metrics is_a_template""",
    # xapi's protected keys: a folder or custom field is the operator's; PCI passthrough is the admin's
    key_roles={"other_config": {"folder": VM_OP, "XenCenter.CustomFields.*": VM_OP,
                                "pci": POOL_ADMIN, "hvm_serial": POOL_ADMIN}},
)

OBSERVED = tuple(f.name for f in VM_FIELDS if f.observed)

_VM = param(T.Ref("VM"), "vm", "The VM")
_SELF = param(T.Ref("VM"), "self", "The VM")
_START_PAUSED = param(T.Bool, "start_paused", "Instantiate VM in paused state if set to true.")
_FORCE = param(T.Bool, "force", "Attempt to force the VM to start; ignored (there is no host-side check to override).")


def _power(op: str, action, *, until=None, timeout_code: str = ""):
    """A message body: the VM service's power operation ``op`` (xenapi/services/vms.py)."""
    def body(ctx, vm, *args):
        ctx.services.vms.power(ctx, vm, op, action, args, until=until, timeout_code=timeout_code)
    body.__name__ = op
    return body


def _halted(ctx, vm):
    return lambda: ctx.store.get("VM", vm)["power_state"] == "Halted"


def _rebooted(ctx, vm):
    """The guest was reset (the reconciler moves VM_metrics.start_time on libvirt's REBOOT event),
    or it halted instead (actions_after_reboot = destroy)."""
    metrics = ctx.store.get("VM", vm)["metrics"]
    before = ctx.store.get("VM_metrics", metrics)["start_time"]
    return lambda: (ctx.store.get("VM", vm)["power_state"] == "Halted"
                    or ctx.store.get("VM_metrics", metrics)["start_time"] != before)


def _hard_shutdown(conn, uuid):
    state = conn.domain_state(uuid).power_state
    if state == "Suspended":
        conn.discard_save(uuid)
    else:
        conn.destroy(uuid)


def _hard_reboot(conn, uuid):
    if conn.domain_state(uuid).power_state == "Paused":
        conn.destroy(uuid)               # a reset leaves a paused guest paused; xapi's comes back running
        conn.start(uuid, False)
    else:
        conn.reset(uuid)


def shutdown(ctx, vm):
    """Clean shutdown, falling back to hard shutdown if the guest does not cooperate in time."""
    state = ctx.store.get("VM", vm)["power_state"]
    if state == "Running":
        try:
            return clean_shutdown(ctx, vm)
        except XenAPIError as e:
            if e.code != E.VM_SHUTDOWN_TIMEOUT:
                raise
    return hard_shutdown(ctx, vm)


clean_shutdown = _power("clean_shutdown", lambda conn, uuid: conn.shutdown(uuid), until=_halted,
                        timeout_code=E.VM_SHUTDOWN_TIMEOUT)
hard_shutdown = _power("hard_shutdown", _hard_shutdown)
clean_reboot = _power("clean_reboot", lambda conn, uuid: conn.reboot(uuid), until=_rebooted,
                      timeout_code=E.VM_REBOOT_TIMEOUT)
hard_reboot = _power("hard_reboot", _hard_reboot)
pause = _power("pause", lambda conn, uuid: conn.pause(uuid))
unpause = _power("unpause", lambda conn, uuid: conn.unpause(uuid))
suspend = _power("suspend", lambda conn, uuid: conn.save(uuid))
resume = _power("resume", lambda conn, uuid, paused, force: conn.restore(uuid, paused))


def set_memory_limits(ctx, self, static_min, static_max, dynamic_min, dynamic_max):
    if not 0 < static_min <= dynamic_min <= dynamic_max <= static_max:
        raise XenAPIError(E.MEMORY_CONSTRAINT_VIOLATION,
                          "Memory limits must satisfy: 0 < static_min <= dynamic_min <= dynamic_max <= static_max")
    with ctx.services.vms.operation(ctx, self, "changing_memory_limits") as rec:
        ctx.services.vms.set_memory(ctx, self, rec, static_min, static_max, dynamic_min, dynamic_max)


def set_VCPUs_max(ctx, self, value):
    with ctx.services.vms.operation(ctx, self, "changing_VCPUs") as rec:
        if value < 1:
            raise XenAPIError(E.VALUE_NOT_SUPPORTED, "VCPUs_max", str(value), "must be at least 1")
        ctx.services.vms.set_vcpus(ctx, self, rec, value, min(rec["VCPUs_at_startup"], value))


def set_VCPUs_at_startup(ctx, self, value):
    with ctx.services.vms.operation(ctx, self, "changing_VCPUs") as rec:
        if not 1 <= value <= rec["VCPUs_max"]:
            raise XenAPIError(E.VALUE_NOT_SUPPORTED, "VCPUs_at_startup", str(value),
                              f"must be between 1 and VCPUs_max ({rec['VCPUs_max']})")
        ctx.services.vms.set_vcpus(ctx, self, rec, rec["VCPUs_max"], value)


def clone(ctx, vm, new_name):
    with ctx.services.vms.operation(ctx, vm, "clone") as rec:
        return ctx.services.vms.clone(ctx, vm, rec, new_name)


def copy(ctx, vm, new_name, sr):
    with ctx.services.vms.operation(ctx, vm, "copy") as rec:
        return ctx.services.vms.clone(ctx, vm, rec, new_name, copy_to=sr)


def provision(ctx, vm):
    with ctx.services.vms.operation(ctx, vm, "provision") as rec:
        ctx.services.vms.provision(ctx, vm, rec)


def destroy(ctx, self):
    with ctx.services.vms.operation(ctx, self, "destroy") as rec:
        ctx.services.vms.destroy(ctx, self, rec)


# xapi's device slots: 16 VBDs (xvda..xvdp / hda..; HVM's 0-3 are its emulated IDE), 7 VIFs
_VBD_SLOTS, _VIF_SLOTS = 16, 7


def get_allowed_VBD_devices(ctx, vm):
    taken = {ctx.store.get("VBD", v)["userdevice"] for v in ctx.store.get("VM", vm)["VBDs"]}
    return [str(n) for n in range(_VBD_SLOTS) if str(n) not in taken]


def get_allowed_VIF_devices(ctx, vm):
    taken = {ctx.store.get("VIF", v)["device"] for v in ctx.store.get("VM", vm)["VIFs"]}
    return [str(n) for n in range(_VIF_SLOTS) if str(n) not in taken]


def assert_operation_valid(ctx, self, op):
    lifecycle.check(ctx.store.get("VM", self), self, op)


def _msg(name, doc, params, impl, *, roles=VM_OP, errors=(), result=T.Void, is_async=True, changes_nothing=False):
    return message(name, doc, params=params, impl=impl, roles=roles, errors=errors, result=result, is_async=is_async,
                   changes_nothing=changes_nothing)


_POWER_ERRORS = (E.VM_BAD_POWER_STATE, E.VM_IS_TEMPLATE, E.OTHER_OPERATION_IN_PROGRESS, E.OPERATION_NOT_ALLOWED,
                 E.OPERATION_BLOCKED, E.HOST_NOT_LIVE, E.BACKEND_FAILURE)

VM = declare_class(
    "VM", "A virtual machine (or 'guest'), a template, or a host's control domain.",
    VM_FIELDS,
    [
        _msg("start", "Start the specified VM, on its host if it qualifies, else on the host that qualifies with "
             "the most free memory (moved there first). This function can only be called with the VM in the "
             "Halted State.", [_VM, _START_PAUSED, _FORCE], vm_placement.start, errors=_POWER_ERRORS),
        *vm_placement.VM_MESSAGES,
        _msg("clean_shutdown", "Attempt to cleanly shutdown the specified VM (the guest is asked through ACPI or its agent); fails with VM_SHUTDOWN_TIMEOUT if it does not halt within the configured time.",
             [_VM], clean_shutdown, errors=(*_POWER_ERRORS, E.VM_SHUTDOWN_TIMEOUT, E.TASK_CANCELLED)),
        _msg("shutdown", "Attempts to first clean shutdown a VM and if it should fail then perform a hard shutdown on it.",
             [_VM], shutdown, errors=_POWER_ERRORS),
        _msg("hard_shutdown", "Stop executing the specified VM without attempting a clean shutdown.",
             [_VM], hard_shutdown, errors=_POWER_ERRORS),
        _msg("clean_reboot", "Attempt to cleanly reboot the specified VM (the guest is asked to reboot); returns once the guest has reset, or fails with VM_REBOOT_TIMEOUT if it does not within the configured time.",
             [_VM], clean_reboot, errors=(*_POWER_ERRORS, E.VM_REBOOT_TIMEOUT, E.TASK_CANCELLED)),
        _msg("hard_reboot", "Stop executing the specified VM without attempting a clean shutdown and immediately restart the VM.",
             [_VM], hard_reboot, errors=_POWER_ERRORS),
        _msg("pause", "Pause the specified VM. This can only be called when the specified VM is in the Running state.",
             [_VM], pause, errors=_POWER_ERRORS),
        _msg("unpause", "Resume the specified VM. This can only be called when the specified VM is in the Paused state.",
             [_VM], unpause, errors=_POWER_ERRORS),
        _msg("suspend", "Suspend the specified VM to disk (libvirt's managed save). This can only be called when the specified VM is in the Running state.",
             [_VM], suspend, errors=_POWER_ERRORS),
        _msg("resume", "Awaken the specified VM and resume it. This can only be called when the specified VM is in the Suspended state.",
             [_VM, _START_PAUSED, _FORCE], resume, errors=_POWER_ERRORS),
        _msg("clone", "Clones the specified VM, making a new VM with a new UUID, libvirt name and MAC addresses; its writable disks are cloned (a qcow2 overlay on a template's disk, else a copy). Templates stay templates.",
             [_VM, param(T.String, "new_name", "The name of the cloned VM")], clone, roles=VM_ADMIN,
             result=T.Ref("VM"), errors=_POWER_ERRORS),
        _msg("copy", "Copies the specified VM, making a new VM: its writable disks are copied in full into the given SR (OpaqueRef:NULL or \"\": each into its own SR); read-only disks and CDs are shared.",
             [_VM, param(T.String, "new_name", "The name of the copied VM"),
              param(T.Ref("SR"), "sr", "An SR to copy all the VM's disks into (OpaqueRef:NULL: the same SRs)", null_ok=True)],
             copy, roles=VM_ADMIN, result=T.Ref("VM"), errors=_POWER_ERRORS),
        _msg("provision", "Inspects the disk configuration contained within the VM's other_config, creates VDIs and VBDs and then executes any applicable post-install script.",
             [_VM], provision, roles=VM_ADMIN, errors=(*_POWER_ERRORS, E.ONLY_PROVISION_TEMPLATE, E.VALUE_NOT_SUPPORTED, E.UUID_INVALID)),
        _msg("set_memory_limits", "Set the memory limits of this VM (only while halted).",
             [_SELF, param(T.Int, "static_min", "The new value of memory_static_min."),
              param(T.Int, "static_max", "The new value of memory_static_max."),
              param(T.Int, "dynamic_min", "The new value of memory_dynamic_min."),
              param(T.Int, "dynamic_max", "The new value of memory_dynamic_max.")],
             set_memory_limits, roles=VM_POWER_ADMIN, errors=(*_POWER_ERRORS, E.MEMORY_CONSTRAINT_VIOLATION)),
        _msg("set_VCPUs_max", "Set the maximum number of VCPUs for a halted VM.",
             [_SELF, param(T.Int, "value", "The new maximum number of VCPUs")], set_VCPUs_max, roles=VM_ADMIN,
             errors=(*_POWER_ERRORS, E.VALUE_NOT_SUPPORTED), is_async=False),
        _msg("set_VCPUs_at_startup", "Set the number of startup VCPUs for a halted VM.",
             [_SELF, param(T.Int, "value", "The new number of startup VCPUs")], set_VCPUs_at_startup,
             roles=VM_ADMIN, errors=(*_POWER_ERRORS, E.VALUE_NOT_SUPPORTED), is_async=False),
        _msg("destroy", "Destroy the specified VM. The VM is completely removed from the system (libvirt's definition is undefined); only Halted or Suspended VMs.",
             [_SELF], destroy, roles=VM_ADMIN, errors=_POWER_ERRORS),
        _msg("get_allowed_VBD_devices", "Returns a list of the allowed values that a VBD device field can take",
             [_VM], get_allowed_VBD_devices, roles=READ_ONLY, result=T.Set(T.String), is_async=False),
        _msg("get_allowed_VIF_devices", "Returns a list of the allowed values that a VIF device field can take",
             [_VM], get_allowed_VIF_devices, roles=READ_ONLY, result=T.Set(T.String), is_async=False),
        _msg("assert_operation_valid", "Check to see whether this operation is acceptable in the current state of the system, raising an error if the operation is invalid for some reason.",
             [_SELF, param(ENUMS["vm_operations"], "op", "proposed operation")], assert_operation_valid,
             roles=READ_ONLY, errors=_POWER_ERRORS, is_async=True, changes_nothing=True),
    ],
    writer_roles=VM_ADMIN, constructor=True, ctor_roles=VM_ADMIN, persisted=True,
    # what xapi's VM.create insists on (the datamodel defaults every other field)
    ctor_required=tuple("""user_version is_a_template affinity memory_static_max memory_dynamic_max memory_dynamic_min
        memory_static_min VCPUs_params VCPUs_max VCPUs_at_startup actions_after_shutdown actions_after_reboot
        actions_after_crash PV_bootloader PV_kernel PV_ramdisk PV_args PV_bootloader_args PV_legacy_args
        HVM_boot_policy HVM_boot_params platform PCI_bus other_config recommendations""".split()),
    hooks={
        "create": lambda ctx, values: ctx.services.vms.create(ctx, values),
        "set_name_label": lambda ctx, vm, v: ctx.services.vms.set_name_label(ctx, vm, v),
        "set_name_description": lambda ctx, vm, v: ctx.services.vms.set_name_description(ctx, vm, v),
        "set_is_a_template": lambda ctx, vm, v: ctx.services.vms.set_is_a_template(ctx, vm, v),
        "set_blocked_operations": lambda ctx, vm, v: ctx.services.vms.set_blocked_operations(ctx, vm, v),
        **{f"set_{f}": (lambda f: lambda ctx, vm, v: ctx.services.vms.set_in_xml(f)(ctx, vm, v))(f)
           for f in rewrite.EDITABLE},
    },
)
