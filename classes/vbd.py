"""VBD: a virtual block device, a disk or CD drive of a VM: one ``<disk>`` of its libvirt domain.

A VBD is in the domain's persistent definition from its creation; ``currently_attached`` says the
running guest has it (libvirt's live definition).  plug/unplug hot-plug it where the guest can
take it; insert/eject change a CD drive's medium.
"""
from classes.enums import ENUMS
from classes.storage_messages import assert_operation_valid, storage
from xenapi import errors as E
from xenapi.model import types as T
from xenapi.model.declare import declare_class, fields, message, param
from xenapi.model.roles import VM_ADMIN, VM_OP

_SELF = param(T.Ref("VBD"), "self", "The VBD")
_VBD = param(T.Ref("VBD"), "vbd", "The VBD")



_ERRORS = (E.OTHER_OPERATION_IN_PROGRESS, E.VM_BAD_POWER_STATE, E.OPERATION_NOT_ALLOWED, E.VM_LACKS_FEATURE,
           E.DEVICE_ALREADY_ATTACHED, E.DEVICE_ALREADY_DETACHED, E.VBD_NOT_UNPLUGGABLE, E.VDI_IN_USE,
           E.HOST_OFFLINE, E.BACKEND_FAILURE)

VBD = declare_class(
    "VBD", "A virtual block device: a disk or CD drive of a VM (a <disk> of its libvirt domain).",
    fields("""uuid:s allowed_operations:vbd_operations[] current_operations:{s:vbd_operations} VM^:@VM VDI^:@VDI
              device^:s userdevice*:s bootable*:b mode^:vbd_mode type*:vbd_type unpluggable*:b storage_lock:b
              empty^:b other_config*:s2s currently_attached^:b status_code:i status_detail:s runtime_properties:s2s
              qos_algorithm_type*:s qos_algorithm_params*:s2s qos_supported_algorithms:s[] ~metrics:@VBD_metrics""",
           ENUMS, defaults={"unpluggable": True, "device": "", "currently_attached": False},
           observed="VM VDI device userdevice mode type empty currently_attached",
           docs={"device": "the guest's device name (vda, xvda, hda...) from the domain's <target dev>",
                 "currently_attached": "the running guest has it (it is in libvirt's live definition)"}),
    [
        message("plug", "Hotplug the specified VBD, dynamically attaching it to the running VM", params=[_SELF],
                impl=storage("vbd_plug"), roles=VM_OP, is_async=True, errors=_ERRORS),
        message("unplug", "Hot-unplug the specified VBD, dynamically unattaching it from the running VM",
                params=[_SELF], impl=storage("vbd_unplug"), roles=VM_OP, is_async=True, errors=_ERRORS),
        message("unplug_force", "Forcibly unplug the specified VBD", params=[_SELF],
                impl=storage("vbd_unplug_force"), roles=VM_OP, is_async=True, errors=_ERRORS),
        message("insert", "Insert new media into the device",
                params=[_VBD, param(T.Ref("VDI"), "vdi", "The new VDI to 'insert'")], impl=storage("vbd_insert"),
                roles=VM_OP, is_async=True,
                errors=(*_ERRORS, E.VBD_NOT_REMOVABLE_MEDIA, E.VBD_NOT_EMPTY, E.VDI_NOT_MANAGED, E.VDI_MISSING)),
        message("eject", "Remove the media from the device and leave it empty", params=[_VBD],
                impl=storage("vbd_eject"), roles=VM_OP, is_async=True,
                errors=(*_ERRORS, E.VBD_NOT_REMOVABLE_MEDIA, E.VBD_IS_EMPTY)),
        message("assert_attachable", "Throws an error if this VBD could not be attached to this VM if the VM were "
                "running. Intended for debugging.", params=[_SELF], impl=storage("vbd_assert_attachable"),
                roles=VM_ADMIN, is_async=True, changes_nothing=True, errors=_ERRORS),
        message("set_mode", "Sets the mode of the VBD. The power_state of the VM must be halted.",
                params=[_SELF, param(ENUMS["vbd_mode"], "value", "New value to set")], impl=storage("vbd_set_mode"),
                roles=VM_ADMIN, errors=(E.VM_BAD_POWER_STATE, E.VDI_READONLY)),
        assert_operation_valid("VBD", "vbd_operations", _ERRORS),
    ],
    writer_roles=VM_ADMIN, constructor=True, ctor_roles=VM_ADMIN, persisted=True,
    ctor_required=tuple("VM VDI userdevice bootable mode type empty other_config qos_algorithm_type "
                        "qos_algorithm_params".split()),
    hooks={"create": storage("vbd_create"), "destroy": storage("vbd_destroy"),
           "set_userdevice": storage("vbd_set_userdevice"), "set_type": storage("vbd_set_type")},
)
