"""What a host connection does to its libvirt networks: read, define, start, stop, undefine.

``NetworkOperations`` is mixed into ``HostConnection`` as the domain and storage operations are:
each method is one libvirt exchange under ``_using``.  Networks are addressed by UUID; a network
the API made has the same UUID on every host that defines it.
"""
from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from contextlib import AbstractContextManager
from dataclasses import dataclass

import libvirt

from xenapi.backend.libvirt_errors import is_unsupported, unless_gone


@dataclass(frozen=True)
class NetworkState:
    uuid: str
    name: str
    bridge: str             # <bridge name>; for a macvtap (direct) network, its host NIC
    forward: str            # "" (isolated), nat, route, open, bridge, private, vepa, passthrough, hostdev
    active: bool
    mac: str                # the bridge's MAC ("" if libvirt gives none)
    mtu: int                # <mtu size>, 0 when unset
    ipv4: str               # "a.b.c.d/n" of its first IPv4 <ip>, "" if none
    vlan: int               # <vlan><tag id>, -1 if none
    xml: str

    @property
    def gateway(self) -> str:
        return self.ipv4.split("/")[0] if self.ipv4 else ""


def describe_network(net: libvirt.virNetwork) -> NetworkState:
    xml = net.XMLDesc(0)
    root = ET.fromstring(xml)
    forward = root.find("forward")
    mode = forward.get("mode", "nat") if forward is not None else ""
    bridge = root.find("bridge")
    bridge_name = bridge.get("name", "") if bridge is not None else ""
    if not bridge_name and forward is not None and (iface := forward.find("interface")) is not None:
        bridge_name = iface.get("dev", "")
    if not bridge_name and forward is not None:
        bridge_name = forward.get("dev", "")
    mac, mtu, tag = root.find("mac"), root.find("mtu"), root.find("vlan/tag")
    ipv4 = ""
    for ip in root.iterfind("ip"):
        if ip.get("family", "ipv4") == "ipv4" and ip.get("address"):
            prefix = ip.get("prefix") or (str(ipaddress.IPv4Network(f"0.0.0.0/{ip.get('netmask')}").prefixlen)
                                          if ip.get("netmask") else "24")
            ipv4 = f"{ip.get('address')}/{prefix}"
            break
    return NetworkState(uuid=net.UUIDString(), name=net.name(), bridge=bridge_name, forward=mode,
                        active=bool(net.isActive()), mac=mac.get("address", "").lower() if mac is not None else "",
                        mtu=int(mtu.get("size", "0")) if mtu is not None else 0, ipv4=ipv4,
                        vlan=int(tag.get("id", "-1")) if tag is not None else -1, xml=xml)


class NetworkOperations:
    """Network reads and changes on top of the host's ``_using``; see the module doc."""

    uri: str
    networks_supported = True   # False once the driver said it has no network driver

    def _using(self, operation: str) -> AbstractContextManager[libvirt.virConnect]:
        raise NotImplementedError               # HostConnection's

    def _all_networks(self, conn: libvirt.virConnect, flags: int = 0) -> list[libvirt.virNetwork]:
        try:
            return conn.listAllNetworks(flags)
        except libvirt.libvirtError as e:
            if not is_unsupported(e):
                raise
            self.networks_supported = False
            return []

    def list_networks(self) -> list[NetworkState]:
        with self._using("list_networks") as conn:
            return [s for n in self._all_networks(conn) if (s := unless_gone(lambda: describe_network(n)))]

    def network_state(self, uuid: str) -> NetworkState:
        with self._using("network_state") as conn:
            return describe_network(conn.networkLookupByUUIDString(uuid))

    def network_flags(self) -> dict[str, bool]:
        """uuid -> active, of every network: two calls, for the poller."""
        with self._using("network_flags") as conn:
            active = {n.UUIDString() for n in self._all_networks(conn, libvirt.VIR_CONNECT_LIST_NETWORKS_ACTIVE)}
            return {n.UUIDString(): n.UUIDString() in active for n in self._all_networks(conn)}

    def define_network(self, xml: str, *, start: bool = True) -> str:
        """Define a persistent network, and start it (autostarted) unless told otherwise; a network
        that cannot start is undefined again, so nothing half-made stays."""
        with self._using("define_network") as conn:
            net = conn.networkDefineXML(xml)
            if start:
                try:
                    net.create()
                    net.setAutostart(1)
                except libvirt.libvirtError:
                    net.undefine()
                    raise
            return net.UUIDString()

    def _on_network(self, operation: str, uuid: str, action):
        with self._using(operation) as conn:
            return action(conn.networkLookupByUUIDString(uuid))

    def start_network(self, uuid: str) -> None:
        def start(net):
            if not net.isActive():
                net.create()
            net.setAutostart(1)
        self._on_network("start_network", uuid, start)

    def stop_network(self, uuid: str) -> None:
        def stop(net):
            if net.isActive():
                net.destroy()
            net.setAutostart(0)
        self._on_network("stop_network", uuid, stop)

    def undefine_network(self, uuid: str) -> None:
        def undefine(net):
            if net.isActive():
                net.destroy()
            net.undefine()
        self._on_network("undefine_network", uuid, undefine)

    def nwfilter(self, operation: str, action):
        """``action(conn)`` for the nwfilter calls of security groups (xenapi/backend/nwfilter.py)."""
        with self._using(operation) as conn:
            return action(conn)
