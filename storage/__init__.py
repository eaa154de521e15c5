"""Storage plugins: one per SR type, each riding a libvirt storage pool type (storage/plugin.py).

``PLUGINS`` maps SR.type to its plugin; ``plugin_for_pool`` classifies a pool found on a host
that nobody created through the API.
"""
from __future__ import annotations

import defusedxml.ElementTree as SafeET

from storage import dir as dir_module, iscsi, iso, lvm, nfs, rbd
from storage.plugin import Backing, Plugin, PluginError, derived_vdi_uuid

__all__ = ["PLUGINS", "Backing", "Plugin", "PluginError", "derived_vdi_uuid", "plugin_for_pool"]

PLUGINS: dict[str, Plugin] = {m.PLUGIN.type: m.PLUGIN for m in (dir_module, iso, lvm, nfs, iscsi, rbd)}

# libvirt pool type -> SR type.  A dir pool cannot be told from an ISO library by its XML: dir.
_BY_POOL_TYPE = {"dir": "dir", "logical": "lvm", "netfs": "nfs", "iscsi-direct": "iscsi", "rbd": "rbd"}


def plugin_for_pool(pool_type: str, pool_xml: str) -> Plugin:
    """The plugin for a libvirt pool of ``pool_type`` (its XML, ``pool_xml``, settles a netfs
    pool: only format nfs/auto is NFS).  Other pool types: PluginError SRUnknownType (48)."""
    sr_type = _BY_POOL_TYPE.get(pool_type)
    if sr_type == "nfs":
        try:
            root = SafeET.fromstring(pool_xml)
        except Exception as e:               # defusedxml and expat errors alike
            raise PluginError.named("SRBadXML", f"pool XML: {e}") from None
        fmt = root.find("./source/format")
        if fmt is not None and fmt.get("type", "auto") not in ("nfs", "auto"):
            sr_type = None
    if sr_type is None:
        raise PluginError.named("SRUnknownType", f"libvirt pool type {pool_type!r}")
    return PLUGINS[sr_type]
