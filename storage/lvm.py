"""lvm: VDIs are logical volumes of an LVM volume group (libvirt ``logical`` pool), raw and thick.

SR.create with ``device`` builds a new volume group on those block devices (pvcreate/vgcreate,
erasing them); with ``vgname`` alone the pool uses an existing volume group.  libvirt's logical
backend creates, deletes, uploads to, downloads from and wipes volumes, deletes the group
(vgremove) and finds groups (SR_PROBE, via pvs).  It has no volume resize, and a copy is a full
copy, so no VDI_RESIZE, VDI_CLONE, VDI_SNAPSHOT, nor THIN_PROVISIONING.  Not run for real here
(this kernel has no device-mapper): checked against libvirt's schema and its test driver.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from storage.plugin import (DeviceConfig, Plugin, PluginError, absolute_path, element, feature_set)

VG_PREFIX = "VG_XenStorage-"        # xapi's LVM SRs name their group VG_XenStorage-<SR uuid>
LVM_NAME = r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}"   # lvm(8) "VALID NAMES"


@dataclass(frozen=True)
class LvmPlugin(Plugin):
    def _devices(self, dc: DeviceConfig) -> list[str]:
        listed = dc.get("device")
        if listed is None:
            return []
        return [absolute_path(item.strip(), "ConfigDeviceInvalid", "device_config:device")
                for item in listed.split(",")]

    def _vg_name(self, dc: DeviceConfig, uuid: str) -> str:
        name = dc.get("vgname", VG_PREFIX + uuid)
        if not re.fullmatch(LVM_NAME, name) or name in (".", ".."):
            raise PluginError.named("InvalidArg", f"device_config:vgname {name!r} is not a volume group name")
        return name

    def pool_source(self, dc: DeviceConfig, uuid: str) -> list:
        devices = self._devices(dc)
        if not devices and dc.get("vgname") is None:
            raise PluginError.named("ConfigDeviceMissing", "device_config:device or device_config:vgname is required")
        return [*(element("device", path=path) for path in devices),
                element("name", self._vg_name(dc, uuid)), element("format", type="lvm2")]

    def pool_target(self, dc: DeviceConfig, uuid: str) -> str:
        return "/dev/" + self._vg_name(dc, uuid)

    def needs_build(self, device_config: dict[str, str]) -> bool:
        return bool(self._devices(DeviceConfig(device_config)))     # a new group on the devices


PLUGIN = LvmPlugin(
    type="lvm",
    name="Local LVM (raw)",
    description="VDIs are fully allocated logical volumes of an LVM volume group",
    pool_type="logical",
    features=feature_set("SR_DELETE", "SR_PROBE", "VDI_CREATE", "VDI_DELETE"),
    configuration={
        "device": "block device(s) for a new volume group, comma-separated, e.g. /dev/sdb "
                  "(required unless vgname names an existing volume group; erased by SR.create)",
        "vgname": f"volume group name (with device: the new group's name, default {VG_PREFIX}<SR uuid>; "
                  "alone: an existing volume group)",
    },
    volume_chars=LVM_NAME,
    preallocate=True,
)
