"""PBD: how one host sees one SR: a libvirt storage pool defined on that host.

plug starts the pool, unplug stops it, create defines it, destroy undefines it (the data stays).
"""
from classes.enums import ENUMS
from classes.storage_messages import storage
from xenapi import errors as E
from xenapi.model import types as T
from xenapi.model.declare import declare_class, fields, message, param
from xenapi.model.roles import POOL_OP

_SELF = param(T.Ref("PBD"), "self", "The PBD")



PBD = declare_class(
    "PBD", "The physical block devices through which hosts access SRs.",
    fields("uuid:s host^:@host SR^:@SR device_config^:s2s currently_attached:b other_config*:s2s", ENUMS,
           defaults={"other_config": {}}),
    [
        message("plug", "Activate the specified PBD, causing the referenced SR to be attached and scanned "
                "(the host's libvirt storage pool is started).", params=[_SELF], impl=storage("pbd_plug"),
                roles=POOL_OP, is_async=True,
                errors=(E.SR_UNKNOWN_DRIVER, E.SR_NOT_SHARABLE, E.HOST_OFFLINE, E.BACKEND_FAILURE)),
        message("unplug", "Deactivate the specified PBD, causing the referenced SR to be detached "
                "(the host's libvirt storage pool is stopped).", params=[_SELF], impl=storage("pbd_unplug"),
                roles=POOL_OP, is_async=True, errors=(E.VDI_IN_USE, E.HOST_OFFLINE, E.BACKEND_FAILURE)),
    ],
    writer_roles=POOL_OP, constructor=True, ctor_roles=POOL_OP, persisted=True,
    ctor_required=("host", "SR", "device_config"),
    hooks={"create": storage("pbd_create"), "destroy": storage("pbd_destroy")},
)
