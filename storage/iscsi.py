"""iscsi: one VDI per LUN of an iSCSI target, reached by libvirt's userspace initiator
(``iscsi-direct`` pool, libiscsi: no kernel iSCSI, no iscsiadm).

LUNs are made on the target, not here: SR.scan (a pool refresh) lists them and introduces their
VDIs.  So no VDI_CREATE, VDI_DELETE, VDI_RESIZE (``volume_xml`` and ``volume_name`` raise
Unimplemented, 38), and no SR_DELETE (the target is not ours).  libvirt's backend also lists a
portal's targets (SR_PROBE: ``probe_xml`` needs ``target`` only) and wipes LUNs, but does not
upload or download.  Volumes are named
``unit:0:0:<lun>``; their VDI UUIDs are derived (``storage.plugin.derived_vdi_uuid``).  A target
commonly shows a LUN 0 "controller" of capacity 0 (tgt does): not a disk.  libvirt 9.0 reports a
LUN's capacity one block short (it multiplies the block size by the last LBA, not the count).

Runs for real here: tests/test_storage_iscsi.py serves a file-backed LUN with tgt on loopback.

device_config keys are xapi's iSCSI SR keys (``target``, ``port``, ``targetIQN``) plus
``initiatorIQN``, the IQN this host logs in with, which libvirt's iscsi-direct pool requires;
the SR class may fill it from host.iscsi_iqn.  Without it the default is
``iqn.2024-01.org.xenapi:<host name>`` (``default_initiator_iqn``).  CHAP: ``chapuser`` with
``chap_secret_uuid`` (a libvirt secret of usage type iscsi); a plain ``chappassword`` is refused.
"""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from storage.plugin import (DeviceConfig, Plugin, PluginError, auth_from, element, feature_set,
                            host_name, iqn, port)

DEFAULT_PORT = "3260"
IQN_PREFIX = "iqn.2024-01.org.xenapi:"


def default_initiator_iqn(hostname: str | None = None) -> str:
    """This host's initiator IQN when device_config has none: the host name, lower-cased, with
    characters an IQN cannot hold replaced by '-'."""
    host = re.sub(r"[^a-z0-9.-]+", "-", (hostname or socket.gethostname()).lower()).strip(".-")
    return IQN_PREFIX + (host or "localhost")


@dataclass(frozen=True)
class IscsiPlugin(Plugin):
    @staticmethod
    def _portal_and_initiator(dc: DeviceConfig) -> list:
        target = dc.require("target", "ConfigTargetMissing")
        if "," in target:
            raise PluginError.named("InvalidArg", "device_config:target: libvirt's iscsi-direct pool "
                                                  "logs in to one portal, not a list")
        initiator = iqn(dc.get("initiatorIQN") or default_initiator_iqn(), "InvalidIQN", "device_config:initiatorIQN")
        return [element("host", name=host_name(target, "ConfigTargetMissing", "device_config:target"),
                        port=port(dc.get("port", DEFAULT_PORT), "ISCSIPort", "device_config:port")),
                element("initiator", children=[element("iqn", name=initiator)])]

    def probe_source(self, dc: DeviceConfig) -> list:
        return self._portal_and_initiator(dc)          # the portal's targets (SendTargets discovery)

    def pool_source(self, dc: DeviceConfig, uuid: str) -> list:
        if dc.get("chappassword") is not None:
            raise PluginError.named("InvalidArg", "device_config:chappassword: give the CHAP password as a "
                                                  "libvirt secret, device_config:chap_secret_uuid")
        host, initiator = self._portal_and_initiator(dc)
        device = element("device", path=iqn(dc.require("targetIQN", "ConfigTargetIQNMissing"),
                                            "ConfigTargetIQNMissing", "device_config:targetIQN"))
        return [host, device, initiator, *auth_from(dc, "chapuser", "chap_secret_uuid", "chap")]


PLUGIN = IscsiPlugin(
    type="iscsi",
    name="iSCSI LUNs (raw)",
    description="Each VDI is a LUN of an iSCSI target, reached by libvirt's userspace initiator",
    pool_type="iscsi-direct",
    features=feature_set("SR_PROBE"),
    configuration={
        "target": "iSCSI portal: host name or IP address of the target (required)",
        "port": f"iSCSI portal port (optional; default {DEFAULT_PORT})",
        "targetIQN": "IQN of the target (required)",
        "initiatorIQN": f"IQN this host logs in with (optional; default {IQN_PREFIX}<host name>)",
        "chapuser": "CHAP user name (optional; with chap_secret_uuid)",
        "chap_secret_uuid": "UUID of the libvirt secret (usage iscsi) holding the CHAP password "
                            "(optional; with chapuser)",
    },
    shared=True,
    transfer=False,
)
