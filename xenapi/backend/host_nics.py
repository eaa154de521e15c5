"""A host's network interfaces as libvirt describes them: what becomes the host's ``PIF`` records.

Two libvirt sources are merged, by device name:

* node devices with the ``net`` capability (``listAllDevices(CAP_NET)``): MAC, link state and
  speed, and the parent device, which tells a real NIC (parent: a PCI/USB device) from a virtual
  one (parent: ``computer``);
* interfaces (``listAllInterfaces``): MTU, MAC, link, IPv4 addresses, and the interface's type
  (``ethernet``, ``bridge``, ``bond``, ``vlan``) with its members, which the listing itself leaves
  out (a bridge port appears only inside its bridge).

The interface XML is read live from the kernel (udev backend) and wins where both say something;
the node device adds its parent and a speed the interface lacks.  A driver that lists no net node
devices (libvirt's test driver has none) gives its interfaces alone.

Where the host's kernel is this machine's (``kernel_of``: a local URI; through a ``?socket=``,
the network namespace of the libvirtd behind it, which may not be ours), its /sys fills in what libvirt
leaves out: the kind of a virtual device (veth, tap, ifb, dummy, ...: sysfs and the ethtool driver
name), a bridge port's MTU, whether a device is backed by hardware, and the kernel's IPv4
addresses where libvirt gives none (Debian's udev interface backend never does).  A node device
whose /sys entry is gone (libvirt's node-device cache goes stale without udevd) is dropped.

Left out, for the PIF code: loopback, guests' tap devices (``vnet*``, ``macvtap*``), and any name
in ``exclude`` (a guest's ``<target dev>``).
"""
from __future__ import annotations

import array
import fcntl
import ipaddress
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import libvirt
from defusedxml.ElementTree import fromstring as parse_untrusted

from xenapi.backend import machine
from xenapi.backend.libvirt_errors import is_connection_failure, optional

log = logging.getLogger(__name__)

SYS_CLASS_NET = Path("/sys/class/net")
GUEST_TAP_PREFIXES = ("vnet", "macvtap")
READ_ONLY_REASON = ("libvirt's interface driver on this host is read-only (udev backend): "
                    "configure host interfaces with the host's own tools")
READ_ONLY_CONNECTION_REASON = "the libvirt connection is read-only"
_PROBE_XML = "<interface/>"          # no type, no name: every interface driver that parses rejects it
_XML_ERRORS = {libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_ERR_XML_DETAIL, libvirt.VIR_ERR_XML_INVALID_SCHEMA,
               libvirt.VIR_ERR_INVALID_ARG}

# ethtool's driver names of virtual devices -> kind (the device's own sysfs files decide first).
_DRIVER_KINDS = {"veth": "veth", "bridge": "bridge", "bonding": "bond", "tun": "tap", "vxlan": "vxlan",
                 "802.1Q VLAN Support": "vlan", "macvlan": "macvlan", "ifb": "ifb", "dummy": "dummy",
                 "geneve": "geneve", "wireguard": "wireguard", "openvswitch": "openvswitch"}
# uevent DEVTYPE -> kind
_DEVTYPE_KINDS = {"bridge": "bridge", "bond": "bond", "vlan": "vlan", "vxlan": "vxlan", "wlan": "wireless",
                  "geneve": "geneve", "wireguard": "wireguard", "macsec": "macsec"}
_ARPHRD_LOOPBACK = 772
_SIOCETHTOOL = 0x8946
_ETHTOOL_GDRVINFO = 0x3
_DRVINFO_SIZE = 196                  # struct ethtool_drvinfo


@dataclass(frozen=True)
class Nic:
    device: str
    mac: str                      # lowercase; "" where none
    mtu: int                      # bytes; 0 where unknown
    speed_mbit: int | None        # None: unknown (no <link speed>, or the kernel's -1)
    carrier: bool                 # link state up
    physical: bool                # a real NIC: its node device's parent is hardware, or /sys has a device link;
                                  # with neither (a remote host without net node devices): kind "ethernet"
    kind: str                     # ethernet, bridge, bond, vlan, veth, tap, vxlan, ifb, dummy, wireless, ...
    ipv4: list[str] = field(default_factory=list)    # "a.b.c.d/n"
    source: str = "interface"     # "nodedev": a node device describes it (merged with its interface);
                                  # "interface": only libvirt's interface listing names it


def read_nics(conn: libvirt.virConnect, exclude: set[str] | frozenset[str] = frozenset()) -> list[Nic]:
    """The host's NICs in name order, without loopback, guests' taps and the names in ``exclude``."""
    local = kernel_of(optional(conn.getURI, default=""))
    kernel_ipv4 = local.ipv4() if local else {}
    nodedevs = _node_devices(conn, local, kernel_ipv4)
    interfaces = _interfaces(conn, local, kernel_ipv4)
    nics: dict[str, Nic] = {}
    for name, nic in interfaces.items():
        dev = nodedevs.get(name)
        if dev is not None:
            nic = replace(nic, physical=dev.physical,        # the node device's parent beats a guess by type
                          speed_mbit=nic.speed_mbit if nic.speed_mbit is not None else dev.speed_mbit,
                          mac=nic.mac or dev.mac, kind=nic.kind if nic.kind != "ethernet" else dev.kind,
                          source=dev.source)
        nics[name] = nic
    for name, dev in nodedevs.items():
        nics.setdefault(name, dev)
    return [nic for name, nic in sorted(nics.items())
            if nic.kind != "loopback" and name not in exclude and not name.startswith(GUEST_TAP_PREFIXES)]


def management_device(nics: list[Nic], address: str = "") -> str | None:
    """The NIC that should be the host's management PIF, by the first rule that picks one:

    1. the NIC carrying ``address`` (the host's address, when known) among its IPv4 addresses;
    2. the first physical NIC with carrier;
    3. the first NIC with an IPv4 address;
    4. the first NIC.

    None for an empty list.  ``nics`` in ``read_nics``' order (by name) makes the choice stable."""
    if address:
        for nic in nics:
            if any(cidr.split("/")[0] == address for cidr in nic.ipv4):
                return nic.device
    for rule in (lambda n: n.physical and n.carrier, lambda n: bool(n.ipv4), lambda n: True):
        for nic in nics:
            if rule(nic):
                return nic.device
    return None


def interfaces_writable(conn: libvirt.virConnect) -> tuple[bool, str]:
    """Whether libvirt can define this host's interfaces, and why not.

    The probe defines ``<interface/>``, which no driver accepts: one that implements
    ``interfaceDefineXML`` fails parsing it (an XML error: writable, and nothing was defined), one
    that does not (Debian's udev backend) says "unsupported"."""
    try:
        conn.interfaceDefineXML(_PROBE_XML, 0).undefine()     # not reached: no driver accepts it
        return True, ""
    except libvirt.libvirtError as e:
        code = e.get_error_code()
        if code in _XML_ERRORS:
            return True, ""
        if code == libvirt.VIR_ERR_NO_SUPPORT:
            return False, READ_ONLY_REASON
        if code == libvirt.VIR_ERR_OPERATION_DENIED:
            return False, READ_ONLY_CONNECTION_REASON
        if is_connection_failure(conn, e):
            raise
        return False, f"libvirt cannot define this host's interfaces: {e.get_error_message()}"


# ---- libvirt's two listings ------------------------------------------------------------------

def _node_devices(conn: libvirt.virConnect, local: "Kernel | None", kernel_ipv4: dict[str, list[str]]) -> dict[str, Nic]:
    try:
        devices = conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_NET)
    except libvirt.libvirtError as e:
        if is_connection_failure(conn, e):
            raise
        log.debug("event=nodedev_unavailable code=%s message=%s", e.get_error_code(), e.get_error_message())
        return {}
    found: dict[str, Nic] = {}
    for device in devices:
        text = optional(lambda: device.XMLDesc(0), default="", conn=conn)     # gone since the listing
        if not text:
            continue
        root = parse_untrusted(text)
        cap = root.find("capability[@type='net']")
        name = _text(cap, "interface") if cap is not None else ""
        if not name or (local and not (local.sys_net / name).exists()):
            continue
        link = cap.find("link")
        wireless = cap.find("capability[@type='80211']") is not None
        kind = local.local_kind(name) if local else ""
        parent = _text(root, "parent")
        found[name] = Nic(
            device=name, mac=_text(cap, "address").lower(), mtu=local.sys_int(name, "mtu") if local else 0,
            speed_mbit=machine.known_speed(link.get("speed") if link is not None else None),
            carrier=link is not None and link.get("state") == "up",
            physical=parent not in ("", "computer") or bool(local and local.sys_has_device(name)),
            kind=kind or ("wireless" if wireless else _name_kind(name, "ethernet")),
            ipv4=kernel_ipv4.get(name, []), source="nodedev")
    return found


def _interfaces(conn: libvirt.virConnect, local: "Kernel | None", kernel_ipv4: dict[str, list[str]]) -> dict[str, Nic]:
    try:
        listed = conn.listAllInterfaces(0)
    except libvirt.libvirtError as e:
        if is_connection_failure(conn, e):
            raise
        log.debug("event=interfaces_unavailable code=%s message=%s", e.get_error_code(), e.get_error_message())
        return {}
    found: dict[str, Nic] = {}
    for iface in listed:
        text = optional(lambda: iface.XMLDesc(0), default="", conn=conn)
        if not text:
            continue
        active = bool(optional(iface.isActive, default=0, conn=conn))
        mac = optional(iface.MACString, default="", conn=conn) or ""
        _describe(parse_untrusted(text), found, local, kernel_ipv4, active=active, mac=mac)
    return found


def _describe(element: ET.Element, found: dict[str, Nic], local: "Kernel | None", kernel_ipv4: dict[str, list[str]],
              active: bool | None = None, mac: str = "") -> None:
    """One <interface> and, recursively, its bridge/bond members and VLAN parent."""
    name = element.get("name", "")
    if not name:
        return
    link = element.find("link")
    mtu = element.find("mtu")
    mac_element = element.find("mac")
    xml_type = element.get("type", "")
    if link is not None and link.get("state") not in (None, "unknown"):
        carrier = link.get("state") == "up"
    elif local:
        carrier = local.sys_carrier(name)
    else:
        carrier = bool(active)        # libvirt's "active" (udev backend: operstate up)
    ipv4 = [f"{ip.get('address')}/{ip.get('prefix')}" if ip.get("prefix") else ip.get("address", "")
            for ip in element.findall("protocol[@family='ipv4']/ip") if ip.get("address")]
    kind = (local.local_kind(name) if local else "") or _name_kind(name, xml_type or "ethernet")
    found.setdefault(name, Nic(
        device=name,
        mac=(mac_element.get("address", "") if mac_element is not None else mac).lower(),
        mtu=_int(mtu.get("size")) if mtu is not None else (local.sys_int(name, "mtu") if local else 0),
        speed_mbit=machine.known_speed(link.get("speed") if link is not None else None)
        if link is not None and link.get("speed") else (local.sys_speed(name) if local else None),
        carrier=carrier,
        physical=local.sys_has_device(name) if local else kind == "ethernet",
        kind=kind, ipv4=ipv4 or kernel_ipv4.get(name, []), source="interface"))
    for member in element.findall("bridge/interface") + element.findall("bond/interface") \
            + element.findall("vlan/interface"):
        _describe(member, found, local, kernel_ipv4)


# ---- the host's kernel, where it is on this machine -------------------------------------------

@dataclass(frozen=True)
class Kernel:
    """The kernel of a host on this machine, read directly: its /sys/class/net and its IPv4
    addresses.  ``netns_pid``: a process (the host's libvirtd) in the host's own network namespace
    when it is not ours (a libvirtd in a container or a test lab): /sys is read through that
    process's root (its mount namespace mounts the sysfs of its network namespace) and ``ip`` runs
    in its network namespace; None: this process's namespace."""

    sys_net: Path = SYS_CLASS_NET
    netns_pid: int | None = None

    def local_kind(self, name: str) -> str:
        """The kind of a device by its sysfs files and ethtool driver; "" for a plain Ethernet NIC
        or a device /sys does not know."""
        sys_dir = self.sys_net / name
        if not sys_dir.exists():
            return ""
        if self.sys_int(name, "type") == _ARPHRD_LOOPBACK:
            return "loopback"
        if (sys_dir / "bridge").is_dir():
            return "bridge"
        if (sys_dir / "bonding").is_dir():
            return "bond"
        if (sys_dir / "tun_flags").exists():
            return "tap" if _int(self.sys_text(name, "tun_flags"), base=16) & 0x2 else "tun"     # IFF_TAP
        devtype = dict(line.split("=", 1) for line in self.sys_text(name, "uevent").splitlines() if "=" in line)
        if devtype.get("DEVTYPE") in _DEVTYPE_KINDS:
            return _DEVTYPE_KINDS[devtype["DEVTYPE"]]
        if (sys_dir / "device").exists():
            return "ethernet"
        if self.netns_pid is not None:          # the ethtool ioctl asks our own namespace's devices
            return ""
        driver = _ethtool_driver(name)
        if driver == "macvlan":
            return "macvtap" if name.startswith("macvtap") else "macvlan"
        return _DRIVER_KINDS.get(driver, "")

    def ipv4(self) -> dict[str, list[str]]:
        """The kernel's IPv4 addresses per device ("a.b.c.d/n"), by iproute2; {} where it is missing."""
        ip = shutil.which("ip")
        if ip is None:
            return {}
        argv = [ip, "-j", "-4", "addr", "show"]
        if self.netns_pid is not None:
            nsenter = shutil.which("nsenter")
            if nsenter is None:
                return {}
            argv = [nsenter, f"--target={self.netns_pid}", "--net", "--", *argv]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL)
            links = json.loads(done.stdout or "[]")
        except (OSError, subprocess.TimeoutExpired, ValueError):
            return {}
        found: dict[str, list[str]] = {}
        for link in links:
            for addr in link.get("addr_info", []):
                if addr.get("family") == "inet" and addr.get("local"):
                    found.setdefault(link.get("ifname", ""), []).append(
                        str(ipaddress.IPv4Interface(f"{addr['local']}/{addr.get('prefixlen', 32)}")))
        return found

    def sys_text(self, name: str, attribute: str) -> str:
        try:
            return (self.sys_net / name / attribute).read_text().strip()
        except OSError:                   # absent, or EINVAL (a down link's carrier or speed)
            return ""

    def sys_int(self, name: str, attribute: str) -> int:
        return _int(self.sys_text(name, attribute))

    def sys_speed(self, name: str) -> int | None:
        return machine.known_speed(self.sys_text(name, "speed"))

    def sys_carrier(self, name: str) -> bool:
        return self.sys_text(name, "operstate") == "up" or (
            self.sys_text(name, "operstate") == "unknown" and self.sys_text(name, "carrier") == "1")

    def sys_has_device(self, name: str) -> bool:
        return (self.sys_net / name / "device").exists()


def kernel_of(uri: str) -> Kernel | None:
    """The kernel of the host behind ``uri`` when it runs on this machine, else None (nothing is
    read from this machine for it).

    A local URI is this machine's kernel, but not necessarily its network namespace: a
    ``?socket=`` may lead to a libvirtd in another one (a container, a test lab host), whose
    interfaces are not ours.  The socket's peer (SO_PEERCRED: the libvirtd) tells: in our network
    namespace, our /sys and ``ip``; in another, that namespace's (``Kernel.netns_pid``); if the
    peer cannot be found, None rather than our own interfaces' facts."""
    if not machine.is_this_machine(uri):
        return None
    socket_path = {k: v[-1] for k, v in parse_qs(urlsplit(uri).query).items()}.get("socket")
    if not socket_path:
        return Kernel()
    pid = _socket_peer_pid(socket_path)
    if pid is None:
        return None
    try:
        theirs = os.readlink(f"/proc/{pid}/ns/net")
        if theirs == os.readlink("/proc/self/ns/net"):
            return Kernel()
    except OSError:
        return None
    root_sys = Path(f"/proc/{pid}/root") / SYS_CLASS_NET.relative_to("/")
    return Kernel(sys_net=root_sys, netns_pid=pid) if root_sys.is_dir() else None


def _socket_peer_pid(path: str) -> int | None:
    """The pid of the process listening on unix socket ``path`` (SO_PEERCRED), None if unknown."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(path)
            pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                            struct.calcsize("3i")))
    except OSError:
        return None
    return pid if pid > 0 and os.path.exists(f"/proc/{pid}") else None


def _name_kind(name: str, xml_type: str) -> str:
    """The kind libvirt's type says, refined by the naming conventions of virtual devices."""
    if name == "lo":
        return "loopback"
    if xml_type != "ethernet":
        return xml_type
    for prefix, kind in (("vnet", "tap"), ("tap", "tap"), ("macvtap", "macvtap"), ("veth", "veth"),
                         ("vxlan", "vxlan"), ("virbr", "bridge"), ("bond", "bond")):
        if name.startswith(prefix):
            return kind
    return "vlan" if "." in name else "ethernet"


def _ethtool_driver(name: str) -> str:
    """ETHTOOL_GDRVINFO's driver name ("veth", "tun", "virtio_net"), "" where it fails."""
    buffer = array.array("B", struct.pack("I", _ETHTOOL_GDRVINFO) + bytes(_DRVINFO_SIZE - 4))
    request = struct.pack("16sP", name.encode()[:15], buffer.buffer_info()[0]).ljust(40, b"\0")   # struct ifreq
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, request)
    except OSError:
        return ""
    return buffer.tobytes()[4:36].split(b"\0", 1)[0].decode(errors="replace")


def _text(root: ET.Element, path: str) -> str:
    element = root.find(path)
    return element.text.strip() if element is not None and element.text else ""


def _int(text: str | None, base: int = 10) -> int:
    try:
        return int(text or "", base)
    except ValueError:
        return 0
