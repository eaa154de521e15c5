"""libvirt network XML for the networks the API makes.

- isolated (the default): a bridge libvirt makes, no forwarding; with an ``ipv4`` the host has
  that address on it, and with a ``dhcp`` range libvirt's dnsmasq serves addresses (and, with
  ``tftp_root`` and ``boot_file``, PXE boot).  Without DHCP, DNS is off, so no dnsmasq runs.
- nat / route: the same, forwarded to the host's other interfaces (needs ``ipv4``).
- bridge (xapi's unmanaged network): ``<forward mode='bridge'/>`` over a host bridge that exists
  already; ``ovs`` adds ``<virtualport type='openvswitch'/>``, and a VLAN ``tag`` on an OVS bridge
  is libvirt's ``<vlan><tag>`` (xapi's VLANs on Open vSwitch).
"""
from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET

MODES = ("", "nat", "route", "bridge")


class NetworkSpecError(ValueError):
    def __init__(self, field: str, value: str, why: str):
        super().__init__(f"{field}={value!r}: {why}")
        self.field, self.value, self.why = field, value, why


def _ipv4(value: str) -> ipaddress.IPv4Interface:
    try:
        iface = ipaddress.IPv4Interface(value)
    except ValueError:
        raise NetworkSpecError("ipv4", value, "expected the host's address on it, as a.b.c.d/prefix") from None
    if iface.network.prefixlen > 30 or iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise NetworkSpecError("ipv4", value, "the address must be a host address of a subnet of /30 or wider")
    return iface


def _dhcp(value: str, iface: ipaddress.IPv4Interface) -> tuple[str, str]:
    try:
        start, end = (ipaddress.IPv4Address(a.strip()) for a in value.split("-"))
    except ValueError:
        raise NetworkSpecError("dhcp", value, "expected a range start-end of IPv4 addresses") from None
    if start not in iface.network or end not in iface.network or end < start:
        raise NetworkSpecError("dhcp", value, f"the range must lie in {iface.network}, start before end")
    return str(start), str(end)


def network_xml(*, uuid: str, name: str, bridge: str, mode: str = "", mtu: int = 0, ipv4: str = "",
                dhcp: str = "", tftp_root: str = "", boot_file: str = "", ovs: bool = False,
                vlan: int = -1) -> str:
    if mode not in MODES:
        raise NetworkSpecError("mode", mode, f"expected one of {', '.join(m or 'isolated' for m in MODES)}")
    root = ET.Element("network")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "uuid").text = uuid
    if mode == "bridge":
        ET.SubElement(root, "forward", mode="bridge")
        ET.SubElement(root, "bridge", name=bridge)
        if ovs:
            ET.SubElement(root, "virtualport", type="openvswitch")
        if vlan >= 0:
            if not ovs:
                raise NetworkSpecError("vlan", str(vlan), "libvirt tags VLANs on Open vSwitch bridges only")
            ET.SubElement(ET.SubElement(root, "vlan"), "tag", id=str(vlan))
        if mtu:
            ET.SubElement(root, "mtu", size=str(mtu))
        return ET.tostring(root, encoding="unicode")
    if mode:
        if not ipv4:
            raise NetworkSpecError("ipv4", "", f"a {mode} network needs the host's address on it")
        ET.SubElement(root, "forward", mode=mode)
    # no STP: with it the kernel holds a new port (a plugged VIF) in listening and learning for at
    # least 2 s each; a guest network has no loops for STP to break (xapi bridges run without it too)
    ET.SubElement(root, "bridge", name=bridge, stp="off", delay="0")
    if mtu:
        ET.SubElement(root, "mtu", size=str(mtu))
    if ipv4:
        iface = _ipv4(ipv4)
        if not dhcp:
            ET.SubElement(root, "dns", enable="no")
        ip = ET.SubElement(root, "ip", address=str(iface.ip), prefix=str(iface.network.prefixlen))
        if tftp_root:
            ET.SubElement(ip, "tftp", root=tftp_root)
        if dhcp:
            start, end = _dhcp(dhcp, iface)
            server = ET.SubElement(ip, "dhcp")
            ET.SubElement(server, "range", start=start, end=end)
            if boot_file:
                ET.SubElement(server, "bootp", file=boot_file)
    elif dhcp or tftp_root:
        raise NetworkSpecError("dhcp", dhcp or tftp_root, "DHCP and TFTP need the host's address on the network (ipv4)")
    return ET.tostring(root, encoding="unicode")
