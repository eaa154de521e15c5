"""SR: a storage repository, one libvirt storage pool (the same pool uuid on every host that has
a PBD for it), served by one storage plugin (storage/).

Its sizes are observed from the pool; its names, tags and configuration are the store's.
"""
from classes.enums import ENUMS
from classes.storage_messages import assert_operation_valid, storage
from xenapi import errors as E
from xenapi.model import types as T
from xenapi.model.declare import declare_class, fields, message, param
from xenapi.model.roles import POOL_OP, READ_ONLY, VM_POWER_ADMIN

_SR = param(T.Ref("SR"), "sr", "The SR")
_SELF = param(T.Ref("SR"), "self", "The SR")
_VALUE = param(T.String, "value", "The new value")
_MAP = T.Map(T.String, T.String)



_BACKEND = (E.SR_UNKNOWN_DRIVER, E.HOST_OFFLINE, E.BACKEND_FAILURE, *E.SR_BACKEND_FAILURE.values())

SR = declare_class(
    "SR", "A storage repository: a libvirt storage pool served by a storage plugin.",
    fields("""uuid:s name_label^:s name_description^:s allowed_operations:storage_operations[]
              current_operations:{s:storage_operations} VDIs:@VDI[] PBDs:@PBD[] virtual_allocation:i
              physical_utilisation:i physical_size^:i type^:s content_type^:s shared:b other_config*:s2s tags*:s[]
              sm_config*:s2s blobs:{s:@blob} local_cache_enabled:b introduced_by:@DR_task clustered:b is_tools_sr:b""",
           ENUMS, observed="physical_utilisation physical_size",
           docs={"physical_size": "total bytes of the pool (libvirt's capacity)",
                 "physical_utilisation": "bytes in use (libvirt's allocation)",
                 "virtual_allocation": "sum of the virtual sizes of its VDIs"}),
    [
        message("create", "Create a new Storage Repository and introduce it into the managed system, creating a "
                "new PBD (a libvirt storage pool, built and started) on the given host, or on every host if shared.",
                params=[param(T.Ref("host"), "host", "The host to create/make the SR on"),
                        param(_MAP, "device_config", "The device config string that will be passed to backend SR driver"),
                        param(T.Int, "physical_size", "The physical size of the new storage repository (ignored where the pool fixes it)"),
                        param(T.String, "name_label", "The name of the new storage repository"),
                        param(T.String, "name_description", "The description of the new storage repository"),
                        param(T.String, "type", "The type of the SR; used to specify the SR backend driver to use (SR.get_supported_types)"),
                        param(T.String, "content_type", "The type of the new SRs content, if required (e.g. ISOs)"),
                        param(T.Bool, "shared", "True if the SR (is capable of) being shared by multiple hosts"),
                        param(_MAP, "sm_config", "Storage backend specific configuration options", default={})],
                result=T.Ref("SR"), impl=storage("sr_create"), roles=POOL_OP, is_async=True, errors=_BACKEND),
        message("introduce", "Introduce a new Storage Repository into the managed system (the store only: "
                "PBD.create and PBD.plug then define and start its pool).",
                params=[param(T.String, "uuid", "The uuid assigned to the introduced SR ('' for a new one)"),
                        param(T.String, "name_label", "The name of the new storage repository"),
                        param(T.String, "name_description", "The description of the new storage repository"),
                        param(T.String, "type", "The type of the SR; used to specify the SR backend driver to use"),
                        param(T.String, "content_type", "The type of the new SRs content, if required (e.g. ISOs)"),
                        param(T.Bool, "shared", "True if the SR (is capable of) being shared by multiple hosts", default=False),
                        param(_MAP, "sm_config", "Storage backend specific configuration options", default={})],
                result=T.Ref("SR"), impl=storage("sr_introduce"), roles=POOL_OP, is_async=True,
                errors=(E.SR_UUID_EXISTS, E.SR_UNKNOWN_DRIVER)),
        message("destroy", "Destroy specified SR, removing SR-record from database and remove SR from disk "
                "(the pool's storage is deleted). (In order to affect this operation the appropriate device_config "
                "is read from the specified SR's PBD on current host)", params=[_SR], impl=storage("sr_destroy"),
                roles=POOL_OP, is_async=True,
                errors=(E.SR_HAS_PBD, E.SR_HAS_NO_PBDS, E.SR_NOT_EMPTY, E.SR_INDESTRUCTIBLE, *_BACKEND)),
        message("forget", "Removing specified SR-record from database, without attempting to remove SR from disk "
                "(its pools are undefined, their data stays)", params=[_SR], impl=storage("sr_forget"),
                roles=POOL_OP, is_async=True, errors=(E.SR_HAS_PBD,)),
        message("scan", "Refreshes the list of VDIs associated with an SR (the pool is refreshed and its volumes "
                "re-read)", params=[_SR], impl=storage("sr_scan"), roles=VM_POWER_ADMIN, is_async=True,
                errors=(E.SR_HAS_NO_PBDS, *_BACKEND)),
        message("update", "Refresh the fields on the SR object", params=[_SR], impl=storage("sr_update"),
                roles=POOL_OP, is_async=True, errors=(E.SR_HAS_NO_PBDS, *_BACKEND)),
        message("probe", "Perform a backend-specific scan, using the given device_config (libvirt's "
                "findStoragePoolSources); returns its XML answer.",
                params=[param(T.Ref("host"), "host", "The host to create/make the SR on"),
                        param(_MAP, "device_config", "The device config string that will be passed to backend SR driver"),
                        param(T.String, "type", "The type of the SR; used to specify the SR backend driver to use", default=""),
                        param(_MAP, "sm_config", "Storage backend specific configuration options", default={})],
                result=T.String, impl=storage("sr_probe"), roles=POOL_OP, is_async=True, errors=_BACKEND,
                changes_nothing=True),
        message("get_supported_types", "Return a set of all the SR types supported by the system",
                params=[], result=T.Set(T.String), impl=lambda ctx: sorted(ctx.services.storage.plugins),
                roles=READ_ONLY),
        message("set_shared", "Sets the shared flag on the SR", params=[_SR, param(T.Bool, "value", "True to set the SR as shared")],
                impl=storage("sr_set_shared"), roles=POOL_OP),
        message("set_name_label", "Set the name label of the SR", params=[_SR, _VALUE],
                impl=lambda ctx, sr, v: ctx.store.update("SR", sr, {"name_label": v}), roles=POOL_OP),
        message("set_name_description", "Set the name description of the SR", params=[_SR, _VALUE],
                impl=lambda ctx, sr, v: ctx.store.update("SR", sr, {"name_description": v}), roles=POOL_OP),
        assert_operation_valid("SR", "storage_operations", (E.OTHER_OPERATION_IN_PROGRESS, E.SR_OPERATION_NOT_SUPPORTED, E.OPERATION_NOT_ALLOWED)),
    ],
    writer_roles=POOL_OP, persisted=True,
)
