"""nfs: qcow2 files on an NFS export, mounted by libvirt (``netfs`` pool, format nfs).

The same file-system backend as dir (so the same volume features), plus SR_PROBE (libvirt lists
a server's exports with showmount).  The export is mounted at ``<location>/<SR uuid>``; volumes
sit at the root of the export (xapi's NFS SRs use a per-SR subdirectory, which libvirt cannot
create on the server).  Not run for real here (this kernel has no NFS client): checked against
libvirt's schema and its test driver.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from storage import dir as _dir
from storage.plugin import (DeviceConfig, Plugin, PluginError, absolute_path, element, host_name,
                            object_name)

DEFAULT_LOCATION = "/var/lib/xenapi/sr"
_VERSIONS = re.compile(r"3|4(\.[0-2])?")


@dataclass(frozen=True)
class NfsPlugin(Plugin):
    @staticmethod
    def _server(dc: DeviceConfig):
        return element("host", name=host_name(dc.require("server", "ConfigServerMissing"), "ConfigServerMissing",
                                              "device_config:server"))

    def probe_source(self, dc: DeviceConfig) -> list:
        return [self._server(dc), element("format", type="nfs")]     # the server's exports (showmount)

    def pool_source(self, dc: DeviceConfig, uuid: str) -> list:
        path = absolute_path(dc.require("serverpath", "ConfigServerPathMissing"), "ConfigServerPathBad",
                             "device_config:serverpath")
        source = [self._server(dc), element("dir", path=path), element("format", type="nfs")]
        version = dc.get("nfsversion")
        if version is not None:
            if not _VERSIONS.fullmatch(version):
                raise PluginError.named("NFSVersion",
                                        f"device_config:nfsversion {version!r} is not 3, 4, 4.0, 4.1 or 4.2")
            source.append(element("protocol", ver=version))
        return source

    def pool_target(self, dc: DeviceConfig, uuid: str) -> str:
        parent = absolute_path(dc.get("location", DEFAULT_LOCATION), "InvalidArg", "device_config:location")
        return posixpath.join(parent, object_name(uuid, "the SR uuid"))

    def needs_build(self, device_config: dict[str, str]) -> bool:
        return True                         # mkdir of the mount point


PLUGIN = NfsPlugin(
    type="nfs",
    name="NFS (qcow2)",
    description="VDIs are thin-provisioned qcow2 files on an NFS export, shared by the hosts that mount it",
    pool_type="netfs",
    features=dict(_dir.PLUGIN.features, SR_PROBE=1),
    configuration={
        "server": "NFS server name or IP address (required)",
        "serverpath": "exported directory on the server (required)",
        "nfsversion": "NFS version: 3, 4, 4.0, 4.1 or 4.2 (optional; default: what mount negotiates)",
        "location": f"local directory under which the export is mounted, at <location>/<SR uuid> "
                    f"(optional; default {DEFAULT_LOCATION})",
    },
    volume_format="qcow2",
    shared=True,
    extension=".qcow2",
)
