"""dir: VDIs are qcow2 files in a local directory (libvirt ``dir`` pool).

Runs for real here (tests/test_storage_plugins.py drives a real libvirtd): libvirt's file-system
backend builds the pool (mkdir), creates, clones (createXMLFrom, or a qcow2 overlay on a backing
file), resizes (qemu-img resize), deletes, uploads to and downloads from its volumes, and deletes
the empty pool.  No SR_PROBE: a dir pool has no source to discover.
"""
from __future__ import annotations

from dataclasses import dataclass

from storage.plugin import DeviceConfig, Plugin, absolute_path, feature_set


@dataclass(frozen=True)
class DirPlugin(Plugin):
    location_error: str = "InvalidArg"     # the error for a location that is not an absolute path

    def pool_target(self, dc: DeviceConfig, uuid: str) -> str:
        return absolute_path(dc.require("location", "ConfigLocationMissing"), self.location_error,
                             "device_config:location")

    def needs_build(self, device_config: dict[str, str]) -> bool:
        return True                         # mkdir -p; harmless if the directory exists


PLUGIN = DirPlugin(
    type="dir",
    name="Local directory (qcow2)",
    description="VDIs are thin-provisioned qcow2 files in a directory of this host",
    pool_type="dir",
    features=feature_set("SR_DELETE", "VDI_CREATE", "VDI_DELETE", "VDI_RESIZE", "VDI_CLONE",
                         "VDI_SNAPSHOT", "THIN_PROVISIONING"),
    configuration={"location": "directory that holds the volumes (required; created if missing)"},
    volume_format="qcow2",
    extension=".qcow2",
)
