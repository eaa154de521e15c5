"""VDI: a virtual disk image, one libvirt storage volume.

A VDI's uuid is its volume's file name (``<uuid>.qcow2`` on a dir SR), so the disk on the host
says which VDI it is; a volume someone else made gets a uuid derived from its SR and name.  Its
sizes and location are observed from the volume; its names, type and configuration are the store's.
"""
from classes.enums import ENUMS
from classes.storage_messages import assert_operation_valid, storage
from xenapi import errors as E
from xenapi.model import types as T
from xenapi.model.declare import declare_class, fields, message, param
from xenapi.model.roles import VM_ADMIN

_VDI = param(T.Ref("VDI"), "vdi", "The VDI")
_SELF = param(T.Ref("VDI"), "self", "The VDI")
_MAP = T.Map(T.String, T.String)
_DRIVER_PARAMS = param(_MAP, "driver_params", "Optional parameters that can be passed through to backend driver "
                       "in order to specify storage-type-specific operation options", default={})



_BACKEND = (E.SR_HAS_NO_PBDS, E.SR_OPERATION_NOT_SUPPORTED, E.OTHER_OPERATION_IN_PROGRESS, E.HOST_OFFLINE,
            E.BACKEND_FAILURE, *E.SR_BACKEND_FAILURE.values())

VDI = declare_class(
    "VDI", "A virtual disk image: a libvirt storage volume in an SR.",
    fields("""uuid:s name_label^:s name_description^:s allowed_operations:vdi_operations[]
              current_operations:{s:vdi_operations} SR^:@SR VBDs:@VBD[] crash_dumps:@crashdump[] virtual_size^:i
              physical_utilisation:i type^:vdi_type sharable^:b read_only^:b other_config*:s2s storage_lock:b
              location:s managed:b missing:b !parent:@VDI xenstore_data*:s2s sm_config*:s2s is_a_snapshot:b
              snapshot_of:@VDI snapshots:@VDI[] snapshot_time:dt tags*:s[] allow_caching:b on_boot:on_boot
              metadata_of_pool:@pool metadata_latest:b is_tools_iso:b cbt_enabled:b""", ENUMS,
           defaults={"managed": True, "on_boot": "persist", "xenstore_data": {}, "sm_config": {}, "tags": []},
           observed="virtual_size physical_utilisation location SR missing",
           docs={"location": "the volume's path on the host (libvirt's volume path)",
                 "virtual_size": "bytes the guest sees (the volume's capacity)",
                 "physical_utilisation": "bytes the volume takes on its pool (its allocation)"}),
    [
        message("snapshot", "Take a read-only snapshot of the VDI, returning a reference to the snapshot (a qcow2 "
                "volume backed by the disk's current state, where the SR's plugin can)",
                params=[_VDI, _DRIVER_PARAMS], result=T.Ref("VDI"), impl=storage("vdi_snapshot"), roles=VM_ADMIN,
                is_async=True, errors=(*_BACKEND, E.VDI_IS_SHARABLE, E.UNIMPLEMENTED_IN_SM_BACKEND)),
        message("clone", "Take an exact copy of the VDI and return a reference to the new disk (a qcow2 volume "
                "backed by the source where the SR's plugin can, else a full copy)",
                params=[_VDI, _DRIVER_PARAMS], result=T.Ref("VDI"), impl=storage("vdi_clone"), roles=VM_ADMIN,
                is_async=True, errors=_BACKEND),
        message("resize", "Resize the VDI (grow only).", params=[_VDI, param(T.Int, "size", "The new size of the VDI")],
                impl=storage("vdi_resize"), roles=VM_ADMIN, is_async=True, errors=(*_BACKEND, E.VDI_IN_USE)),
        message("copy", "Copy either a full VDI or the block differences between two VDIs into either a fresh VDI "
                "or an existing VDI (a task with progress and cancel; a failed or cancelled copy leaves no volume).",
                params=[_VDI, param(T.Ref("SR"), "sr", "The destination SR (only if the destination VDI is not specified)", null_ok=True),
                        param(T.Ref("VDI"), "base_vdi", "The base VDI (not supported: must be OpaqueRef:NULL)", default="OpaqueRef:NULL", null_ok=True),
                        param(T.Ref("VDI"), "into_vdi", "The destination VDI to copy blocks into (if omitted then a destination SR must be provided and a fresh VDI will be created)", default="OpaqueRef:NULL", null_ok=True)],
                result=T.Ref("VDI"), impl=storage("vdi_copy"), roles=VM_ADMIN, is_async=True,
                errors=(*_BACKEND, E.VDI_READONLY, E.VDI_TOO_SMALL, E.VDI_COPY_FAILED, E.TASK_CANCELLED)),
        message("introduce", "Create a new VDI record in the database only, for a volume that exists in the SR's "
                "pool (found by location: its path or its volume name)",
                params=[param(T.String, "uuid", "The uuid of the disk to introduce ('' for the volume's own)"),
                        param(T.String, "name_label", "The name of the disk record"),
                        param(T.String, "name_description", "The description of the disk record"),
                        param(T.Ref("SR"), "SR", "The SR that the VDI is in"),
                        param(ENUMS["vdi_type"], "type", "The type of the VDI"),
                        param(T.Bool, "sharable", "true if this disk may be shared"),
                        param(T.Bool, "read_only", "true if this disk may ONLY be mounted read-only"),
                        param(_MAP, "other_config", "additional configuration"),
                        param(T.String, "location", "location information"),
                        param(_MAP, "xenstore_data", "Data to insert into xenstore", default={}),
                        param(_MAP, "sm_config", "Storage-specific config", default={}),
                        param(T.Bool, "managed", "Storage-specific config", default=True),
                        param(T.Int, "virtual_size", "Storage-specific config", default=0),
                        param(T.Int, "physical_utilisation", "Storage-specific config", default=0),
                        param(T.Ref("pool"), "metadata_of_pool", "Storage-specific config", default="OpaqueRef:NULL", null_ok=True),
                        param(T.Bool, "is_a_snapshot", "Storage-specific config", default=False),
                        param(T.Timestamp, "snapshot_time", "Storage-specific config", default=T.Timestamp.empty()),
                        param(T.Ref("VDI"), "snapshot_of", "Storage-specific config", default="OpaqueRef:NULL", null_ok=True)],
                result=T.Ref("VDI"), impl=storage("vdi_introduce"), roles=VM_ADMIN, is_async=True,
                errors=(E.SR_HAS_NO_PBDS, E.VDI_MISSING)),
        message("forget", "Removes a VDI record from the database (the volume stays; the next SR.scan finds it again)",
                params=[_VDI], impl=storage("vdi_forget"), roles=VM_ADMIN, is_async=True, errors=(E.VDI_IN_USE,)),
        message("update", "Ask the storage backend to refresh the fields in the VDI object", params=[_VDI],
                impl=storage("vdi_update"), roles=VM_ADMIN, is_async=True, errors=_BACKEND),
        message("set_name_label", "Set the name label of the VDI. This can only happen when then its SR is currently attached.",
                params=[_SELF, param(T.String, "value", "The name label for the VDI")],
                impl=lambda ctx, vdi, v: ctx.store.update("VDI", vdi, {"name_label": v}), roles=VM_ADMIN),
        message("set_name_description", "Set the name description of the VDI. This can only happen when its SR is currently attached.",
                params=[_SELF, param(T.String, "value", "The name description for the VDI")],
                impl=lambda ctx, vdi, v: ctx.store.update("VDI", vdi, {"name_description": v}), roles=VM_ADMIN),
        assert_operation_valid("VDI", "vdi_operations", _BACKEND),
    ],
    writer_roles=VM_ADMIN, constructor=True, ctor_roles=VM_ADMIN, persisted=True,
    ctor_required=("SR", "virtual_size", "type", "sharable", "read_only", "other_config"),
    hooks={"create": storage("vdi_create"), "destroy": storage("vdi_destroy")},
)
