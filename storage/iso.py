"""iso: an ISO library, read-only .iso files in a local directory (a libvirt ``dir`` pool).

A dir pool's XML cannot tell an ISO library from a dir SR: the SR's content_type "iso" does.
Files of any name are found by SR.scan (their VDI UUIDs are derived, see
``storage.plugin.derived_vdi_uuid``); a VDI created through the API is ``<uuid>.iso``.
``volume_xml`` makes an empty sparse file of the given size, to be filled by an upload
(VDI import), the way Xen Orchestra uploads ISOs (VDI.create on the ISO SR, then import_raw_vdi);
its libvirt format is raw, as libvirt creates no other format without qemu-img.
Runs for real here, on libvirt's file-system backend (as dir).  Only local directories: an
NFS or CIFS ISO library (xapi's location "server:/path" or "//server/share") is refused.
"""
from __future__ import annotations

from dataclasses import dataclass

from storage.dir import DirPlugin
from storage.plugin import DeviceConfig, PluginError, feature_set


@dataclass(frozen=True)
class IsoPlugin(DirPlugin):
    """A dir pool whose volumes are ISO images."""

    def pool_target(self, dc: DeviceConfig, uuid: str) -> str:
        if (dc.get("location") or "").startswith("//"):
            raise PluginError.named("ISOLocalPath", "a CIFS share (//server/share) is not a local directory")
        return super().pool_target(dc, uuid)


PLUGIN = IsoPlugin(
    type="iso",
    name="ISO library",
    description="Read-only ISO images in a directory of this host",
    pool_type="dir",
    features=feature_set("SR_DELETE", "VDI_CREATE", "VDI_DELETE"),
    configuration={"location": "local directory that holds the .iso files (required)"},
    content_type="iso",
    volume_format="iso",
    read_only=True,
    extension=".iso",
    location_error="ISOLocalPath",
)
