"""rbd: VDIs are Ceph RBD images in a Ceph pool (libvirt ``rbd`` pool), raw and thin.

libvirt's rbd backend creates, deletes, resizes and wipes images, and clones them copy-on-write
(createXMLFrom: a protected snapshot and an RBD clone), hence VDI_CLONE and VDI_SNAPSHOT.  It
neither deletes the Ceph pool (no SR_DELETE), discovers pools (no SR_PROBE), nor uploads or
downloads (``transfer`` False: VDI import/export must go through QEMU).  Not run for real here
(no Ceph cluster, and Debian's rbd backend is a separate package): checked against libvirt's
schema and its test driver.
"""
from __future__ import annotations

from dataclasses import dataclass

from storage.plugin import (DeviceConfig, Plugin, PluginError, auth_from, element, feature_set,
                            host_elements, hosts, object_name)


@dataclass(frozen=True)
class RbdPlugin(Plugin):
    def pool_source(self, dc: DeviceConfig, uuid: str) -> list:
        monitors = hosts(dc.require("monitors", "ConfigParamsMissing"), "InvalidArg", "device_config:monitors")
        pool = dc.require("pool", "ConfigParamsMissing")
        if "@" in pool:
            raise PluginError.named("InvalidArg", f"device_config:pool {pool!r} is not a Ceph pool name")
        return [element("name", object_name(pool, "device_config:pool")), *host_elements(monitors),
                *auth_from(dc, "auth_user", "secret_uuid", "ceph")]


PLUGIN = RbdPlugin(
    type="rbd",
    name="Ceph RBD (raw)",
    description="VDIs are thin-provisioned RBD images in a Ceph pool, shared by every host of the cluster",
    pool_type="rbd",
    features=feature_set("VDI_CREATE", "VDI_DELETE", "VDI_RESIZE", "VDI_CLONE", "VDI_SNAPSHOT",
                         "THIN_PROVISIONING"),
    configuration={
        "monitors": "Ceph monitors, host[:port] comma-separated (required; port default 6789)",
        "pool": "Ceph pool that holds the images (required)",
        "auth_user": "Ceph user, e.g. admin (optional; with secret_uuid)",
        "secret_uuid": "UUID of the libvirt secret (usage ceph) holding that user's key (optional; with auth_user)",
    },
    shared=True,
    transfer=False,
    volume_chars=r"[^/@]+",
)
