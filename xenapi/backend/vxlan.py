"""VXLAN tunnels between hosts: the kernel side of xapi's ``tunnel`` class.

A tunnel joins the bridge of one private network on each host.  On each host it is a VXLAN
device (VNI = the tunnel's id, UDP port 4789, ``local`` = this host's transport address)
enslaved to the network's bridge, with one all-zeros FDB entry per peer host
(``bridge fdb append 00:00:00:00:00:00 dev DEV dst PEER``): broadcast, unknown unicast and
multicast frames are sent to every peer (head-end replication), unicast frames to the peer the
device learned the MAC behind.  For two hosts that single entry is exactly what ``ip link add
... remote PEER`` makes; keeping every peer as an FDB entry lets a re-apply with another peer
set change only the entries (the device and its bridge port stay).

The device's MTU is the transport MTU minus 50 (outer IPv4 20 + UDP 8 + VXLAN 8 + inner
Ethernet 14); the bridge's MTU is lowered to it if higher, so guests on the bridge are not
offered frames the tunnel would drop.  ``ensure_bridge`` makes the bridge that the network's
libvirt definition (``<forward mode='bridge'/><bridge name='...'/>``) then uses.

Every function takes a ``HostShell`` (xenapi.backend.host_shell) and runs ``ip``/``bridge``
there.  A failed command raises ``VxlanError`` carrying the command and its stderr.
"""
from __future__ import annotations

import ipaddress
import json
import re
import secrets
import shlex
import subprocess

from xenapi.backend.host_shell import HostShell

VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50          # IPv4 transport: 20 (IP) + 8 (UDP) + 8 (VXLAN) + 14 (inner Ethernet)
IFNAMSIZ_MAX = 15            # IFNAMSIZ (16) minus the terminating NUL
MAX_VNI = (1 << 24) - 1
ZERO_MAC = "00:00:00:00:00:00"
TIMEOUT = 20.0

_NAME_OK = re.compile(r"^[A-Za-z0-9_.-]+$")


class VxlanError(RuntimeError):
    """A command building or reading a tunnel failed on a host."""

    def __init__(self, message: str, argv: list[str] | None = None, returncode: int | None = None,
                 stderr: str = ""):
        super().__init__(message)
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


def tunnel_mtu(transport_mtu: int) -> int:
    """The MTU of a VXLAN device (and of its bridge) over a transport of ``transport_mtu``."""
    return int(transport_mtu) - VXLAN_OVERHEAD


def check_device_name(name: str) -> str:
    """``name`` if the kernel takes it as an interface name (at most 15 characters), else ValueError."""
    if not isinstance(name, str) or not name or len(name) > IFNAMSIZ_MAX or name in (".", "..") \
            or not _NAME_OK.match(name):
        raise ValueError(f"bad network device name {name!r}: 1-{IFNAMSIZ_MAX} characters of "
                         "letters, digits, '_', '-', '.'")
    return name


def device_name(prefix: str, tunnel_id: int) -> str:
    """A device name for a tunnel: ``prefix`` + the id, e.g. ``vx42``; ValueError if too long."""
    return check_device_name(f"{prefix}{int(tunnel_id)}")


def _check_vni(vni: int) -> int:
    vni = int(vni)
    if not 0 <= vni <= MAX_VNI:
        raise ValueError(f"VXLAN id {vni} out of range 0..{MAX_VNI}")
    return vni


def _address(value: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        raise ValueError(f"bad {what} address {value!r}") from None


def _run(shell: HostShell, argv: list[str], what: str) -> subprocess.CompletedProcess:
    r = shell.run(argv, timeout=TIMEOUT)
    if r.returncode != 0:
        stderr = (r.stderr or r.stdout).strip()
        raise VxlanError(f"{what}: `{shlex.join(argv)}` failed on {shell.description} "
                         f"(exit {r.returncode}): {stderr}", argv, r.returncode, stderr)
    return r


def _link(shell: HostShell, device: str) -> dict | None:
    """``ip -d -j link show dev DEVICE`` as a dict; None if there is no such device."""
    argv = ["ip", "-d", "-j", "link", "show", "dev", device]
    r = shell.run(argv, timeout=TIMEOUT)
    if r.returncode != 0:
        if "does not exist" in r.stderr:
            return None
        raise VxlanError(f"reading device {device}: `{shlex.join(argv)}` failed on {shell.description} "
                         f"(exit {r.returncode}): {r.stderr.strip()}", argv, r.returncode, r.stderr.strip())
    try:
        links = json.loads(r.stdout or "[]")
    except ValueError as e:
        raise VxlanError(f"reading device {device}: unparsable output of `{shlex.join(argv)}`: {e}") from e
    return links[0] if links else None


def _kind(link: dict) -> str:
    return (link.get("linkinfo") or {}).get("info_kind", "")


def _fdb(shell: HostShell, device: str) -> list[dict]:
    r = _run(shell, ["bridge", "-j", "fdb", "show", "dev", device], f"reading the FDB of {device}")
    try:
        return json.loads(r.stdout or "[]")
    except ValueError as e:
        raise VxlanError(f"reading the FDB of {device}: unparsable output: {e}") from e


# ------------------------------------------------------------------------------------ bridge

def ensure_bridge(shell: HostShell, bridge: str, mtu: int) -> dict:
    """The Linux bridge ``bridge`` exists, is up and has MTU ``mtu`` (made if missing).

    An existing device of that name that is not a bridge is an error (never replaced)."""
    check_device_name(bridge)
    link = _link(shell, bridge)
    if link is None:
        r = shell.run(["ip", "link", "add", "name", bridge, "type", "bridge"], timeout=TIMEOUT)
        if r.returncode != 0 and "File exists" not in r.stderr:    # made meanwhile: fine
            raise VxlanError(f"creating bridge {bridge}: failed on {shell.description} "
                             f"(exit {r.returncode}): {r.stderr.strip()}", None, r.returncode, r.stderr.strip())
        link = _link(shell, bridge)
        if link is None:
            raise VxlanError(f"bridge {bridge} is not there after it was created on {shell.description}")
    if _kind(link) != "bridge":
        raise VxlanError(f"{bridge} on {shell.description} exists and is not a bridge "
                         f"(kind {_kind(link) or 'none'})")
    if link.get("mtu") != int(mtu) or "UP" not in link.get("flags", []):
        _run(shell, ["ip", "link", "set", "dev", bridge, "mtu", str(int(mtu)), "up"], f"setting up bridge {bridge}")
    return {"bridge": bridge, "mtu": int(mtu), "up": True}


def remove_bridge(shell: HostShell, bridge: str) -> bool:
    """Delete the bridge ``bridge`` (its ports are released, not deleted); False if absent."""
    check_device_name(bridge)
    link = _link(shell, bridge)
    if link is None:
        return False
    if _kind(link) != "bridge":
        raise VxlanError(f"{bridge} on {shell.description} is not a bridge (kind {_kind(link) or 'none'}): "
                         "left alone")
    _run(shell, ["ip", "link", "del", "dev", bridge], f"deleting bridge {bridge}")
    return True


# ------------------------------------------------------------------------------------ tunnel

def ensure_tunnel(shell: HostShell, device: str, vni: int, local: str, peers: list[str], bridge: str,
                  transport_mtu: int) -> dict:
    """The VXLAN device ``device`` exists as described, enslaved to ``bridge`` and up.

    Idempotent.  A device with another VNI, local address or port is replaced; a re-apply with
    another peer set only adds and removes FDB entries (and forgets the MACs learned behind a
    removed peer).  ``bridge`` must exist (``ensure_bridge``).  Returns ``tunnel_state``."""
    check_device_name(device)
    check_device_name(bridge)
    vni = _check_vni(vni)
    local = _address(local, "local")
    wanted = []
    for peer in peers:
        peer = _address(peer, "peer")
        if peer != local and peer not in wanted:
            wanted.append(peer)
    mtu = tunnel_mtu(transport_mtu)
    if mtu < 68:
        raise ValueError(f"transport MTU {transport_mtu} leaves {mtu} for the tunnel (minimum 68)")

    bridge_link = _link(shell, bridge)
    if bridge_link is None or _kind(bridge_link) != "bridge":
        raise VxlanError(f"tunnel {device}: bridge {bridge} does not exist on {shell.description} "
                         "(ensure_bridge first)" if bridge_link is None else
                         f"tunnel {device}: {bridge} on {shell.description} is not a bridge")

    link = _link(shell, device)
    if link is not None:
        data = (link.get("linkinfo") or {}).get("info_data") or {}
        if _kind(link) != "vxlan":
            raise VxlanError(f"tunnel {device}: a device of that name on {shell.description} is not VXLAN "
                             f"(kind {_kind(link) or 'none'}): left alone")
        if data.get("id") != vni or data.get("local") != local or data.get("port") != VXLAN_PORT:
            _run(shell, ["ip", "link", "del", "dev", device], f"replacing tunnel {device}")
            link = None
    if link is None:
        r = shell.run(["ip", "link", "add", "name", device, "type", "vxlan", "id", str(vni),
                       "dstport", str(VXLAN_PORT), "local", local], timeout=TIMEOUT)
        if r.returncode != 0:
            stderr = r.stderr.strip()
            hint = " (this kernel has no VXLAN)" if "Unknown device type" in stderr or "not supported" in stderr else ""
            raise VxlanError(f"creating tunnel {device} (VNI {vni}) on {shell.description}{hint}: {stderr}",
                             None, r.returncode, stderr)

    # MTU first: a port with a larger MTU than the bridge is fine, but the bridge must not offer
    # frames larger than the tunnel carries
    if bridge_link.get("mtu", 0) > mtu:
        _run(shell, ["ip", "link", "set", "dev", bridge, "mtu", str(mtu)], f"lowering the MTU of bridge {bridge}")
    _run(shell, ["ip", "link", "set", "dev", device, "mtu", str(mtu), "master", bridge, "up"],
         f"attaching tunnel {device} to bridge {bridge}")

    entries = _fdb(shell, device)
    have = {e.get("dst") for e in entries if e.get("mac") == ZERO_MAC and e.get("dst")}
    for peer in wanted:
        if peer not in have:
            _run(shell, ["bridge", "fdb", "append", ZERO_MAC, "dev", device, "dst", peer],
                 f"adding peer {peer} to tunnel {device}")
    gone = {e.get("dst") for e in entries if e.get("dst")} - set(wanted)
    for e in entries:
        if e.get("dst") in gone:          # the default entry and the MACs learned behind a removed peer
            r = shell.run(["bridge", "fdb", "del", e["mac"], "dev", device, "dst", e["dst"]], timeout=TIMEOUT)
            if r.returncode != 0 and e.get("mac") == ZERO_MAC:     # a learned one may have aged out meanwhile
                raise VxlanError(f"removing peer {e['dst']} from tunnel {device} on {shell.description}: "
                                 f"{r.stderr.strip()}", None, r.returncode, r.stderr.strip())
    state = tunnel_state(shell, device)
    if state is None:
        raise VxlanError(f"tunnel {device} vanished from {shell.description} while it was being set up")
    return state


def remove_tunnel(shell: HostShell, device: str) -> bool:
    """Delete the VXLAN device ``device``; False if it is not there.  A non-VXLAN device of that
    name is an error (never deleted)."""
    check_device_name(device)
    link = _link(shell, device)
    if link is None:
        return False
    if _kind(link) != "vxlan":
        raise VxlanError(f"{device} on {shell.description} is not a VXLAN device "
                         f"(kind {_kind(link) or 'none'}): left alone")
    r = shell.run(["ip", "link", "del", "dev", device], timeout=TIMEOUT)
    if r.returncode != 0:
        if "does not exist" in r.stderr or "Cannot find device" in r.stderr:
            return False
        raise VxlanError(f"deleting tunnel {device} on {shell.description}: {r.stderr.strip()}",
                         None, r.returncode, r.stderr.strip())
    return True


def tunnel_state(shell: HostShell, device: str) -> dict | None:
    """What the host has for ``device``: None if absent, else ``{"device", "exists": True, "kind",
    "up" (administratively), "operstate", "vni", "local", "dstport", "master" (bridge or None),
    "mtu", "peers" (sorted addresses of the all-zeros FDB entries)}``; vni/local/dstport/peers
    are None/[] when the device is not VXLAN."""
    check_device_name(device)
    link = _link(shell, device)
    if link is None:
        return None
    kind = _kind(link)
    data = (link.get("linkinfo") or {}).get("info_data") or {}
    peers: list[str] = []
    if kind == "vxlan":
        peers = sorted({e["dst"] for e in _fdb(shell, device) if e.get("mac") == ZERO_MAC and e.get("dst")},
                       key=ipaddress.ip_address)
    return {
        "device": device,
        "exists": True,
        "kind": kind,
        "up": "UP" in link.get("flags", []),
        "operstate": link.get("operstate"),
        "vni": data.get("id") if kind == "vxlan" else None,
        "local": data.get("local") if kind == "vxlan" else None,
        "dstport": data.get("port") if kind == "vxlan" else None,
        "master": link.get("master"),
        "mtu": link.get("mtu"),
        "peers": peers,
    }


def available(shell: HostShell) -> tuple[bool, str]:
    """(True, "") if tunnels can be built on the host: it has a shell, ``ip`` and ``bridge``, and
    its kernel makes VXLAN devices and bridges (checked by making and deleting throwaway ones)."""
    if not shell.available:
        return False, shell.why_not
    tag = secrets.token_hex(4)
    probes = ((f"xvxp{tag}", ["type", "vxlan", "id", "1", "dstport", str(VXLAN_PORT), "local", "127.0.0.1"], "VXLAN"),
              (f"xbrp{tag}", ["type", "bridge"], "bridges"))
    try:
        r = shell.run(["bridge", "-V"], timeout=TIMEOUT)
        if r.returncode != 0:
            return False, f"no `bridge` command (iproute2) on {shell.description}: {r.stderr.strip()}"
        for name, spec, what in probes:
            r = shell.run(["ip", "link", "add", "name", name, *spec], timeout=TIMEOUT)
            if r.returncode != 0:
                stderr = r.stderr.strip() or r.stdout.strip()
                return False, f"cannot make {what} on {shell.description}: {stderr}"
            shell.run(["ip", "link", "del", "dev", name], timeout=TIMEOUT)
    except Exception as e:       # HostShellError (timeout, ssh/nsenter missing) and the like
        return False, f"cannot probe {shell.description}: {e}"
    return True, ""
