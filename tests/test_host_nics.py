"""xenapi/backend/host_nics.py against the real libvirtd (qemu:///system) and libvirt's test driver.

On qemu:///system every figure is compared with what the kernel says (/sys/class/net, ``ip -j``):
the test makes its own devices in the root namespace (a veth pair with one end in a bridge, a
second veth pair with one end down, the bridge with a /32 address in 10.235.N.0/24 while that
prefix is routed ``unreachable``) and removes them, and the route, whatever happens.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid as _uuid
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from tests.netns_support import claim_prefix, sh
from xenapi.backend import machine
from xenapi.backend.host_nics import (READ_ONLY_REASON, Nic, interfaces_writable, management_device,
                                      read_nics)

REPO = Path(__file__).resolve().parents[1]
SYSTEM_URI = "qemu:///system"
TEST_URI = "test:///default"
SYS = Path("/sys/class/net")

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)   # errors still raise libvirtError


def sys_text(name: str, attribute: str) -> str:
    try:
        return (SYS / name / attribute).read_text().strip()
    except OSError:
        return ""


def kernel_carrier(name: str) -> bool:
    """Link up as the kernel says it (RFC 2863 operstate; "unknown" with carrier, as a tun)."""
    state = sys_text(name, "operstate")
    return state == "up" or (state == "unknown" and sys_text(name, "carrier") == "1")


@pytest.fixture(scope="module")
def system_conn():
    try:
        conn = libvirt.open(SYSTEM_URI)
    except libvirt.libvirtError as first:
        if os.geteuid() != 0:
            pytest.skip(f"{SYSTEM_URI} does not answer ({first}) and starting libvirtd needs root")
        said = subprocess.run(["bash", str(REPO / "scripts/libvirtd.sh"), "start"], capture_output=True,
                              text=True, timeout=120)
        try:
            conn = libvirt.open(SYSTEM_URI)
        except libvirt.libvirtError as e:
            pytest.fail(f"libvirtd cannot be reached: {e}; libvirtd.sh said {said.stderr[-2000:]}")
    yield conn
    conn.close()


@dataclass
class MadeDevices:
    up: str          # veth end, up, its peer (``port``) in ``bridge``
    port: str
    bridge: str      # up, with ``address``/32
    lonely: str      # veth end, up, whose peer (``down``) is down: no carrier
    down: str        # named vnet*: a guest tap's name, which read_nics leaves out
    address: str


@pytest.fixture()
def devices():
    if os.geteuid() != 0:
        pytest.skip("making veth pairs and bridges needs root")
    tag = f"{os.getpid() % 1000:03d}{_uuid.uuid4().hex[:3]}"
    octet = claim_prefix(235)
    prefix = f"10.235.{octet}.0/24"
    made = MadeDevices(up=f"xnta{tag}", port=f"xntb{tag}", bridge=f"xntbr{tag}", lonely=f"xntc{tag}",
                       down=f"vnetx{tag}", address=f"10.235.{octet}.1")
    try:
        sh("ip", "link", "add", made.up, "type", "veth", "peer", "name", made.port)
        sh("ip", "link", "add", made.bridge, "type", "bridge")
        sh("ip", "link", "set", made.port, "master", made.bridge)
        sh("ip", "link", "add", made.lonely, "type", "veth", "peer", "name", made.down)
        sh("ip", "link", "set", made.lonely, "mtu", "1450")
        for name in (made.up, made.port, made.bridge, made.lonely):
            sh("ip", "link", "set", name, "up")
        sh("ip", "addr", "add", f"{made.address}/32", "dev", made.bridge)
        yield made
    finally:
        for name in (made.up, made.bridge, made.lonely):        # a veth's peer goes with it
            sh("ip", "link", "del", name, check=False)
        sh("ip", "route", "del", "unreachable", prefix, check=False)


def kernel_snapshot() -> dict[str, tuple[str, ...]]:
    """Every device but loopback and guests' taps, with what the comparison reads of it."""
    return {name: tuple(sys_text(name, a) for a in ("ifindex", "address", "mtu", "operstate", "carrier", "speed"))
            for name in sorted(os.listdir(SYS))
            if sys_text(name, "type") != "772" and not name.startswith(("vnet", "macvtap"))}


def test_system_nics_are_the_kernels_devices(system_conn, devices):
    for _attempt in range(10):          # other tests on this machine may add or change devices meanwhile
        before = kernel_snapshot()
        nics = {nic.device: nic for nic in read_nics(system_conn)}
        links = {link["ifname"]: link for link in json.loads(sh("ip", "-j", "-d", "addr", "show").stdout)}
        if kernel_snapshot() == before:
            break
        time.sleep(0.5)
    assert set(nics) == set(before)
    for name, nic in nics.items():
        link = links[name]
        assert nic.mac == sys_text(name, "address").lower() == link["address"], name
        assert nic.mtu == int(sys_text(name, "mtu")) == link["mtu"], name
        assert nic.carrier == kernel_carrier(name), name
        assert nic.physical == (SYS / name / "device").exists(), name
        assert nic.ipv4 == [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                            if a["family"] == "inet"], name
        kernel_kind = link.get("linkinfo", {}).get("info_kind")
        if kernel_kind:                 # iproute2's kind of a virtual device: veth, bridge, ifb, ...
            assert nic.kind == kernel_kind, name
        elif nic.physical:
            assert nic.kind in ("ethernet", "wireless"), name
        speed = machine.known_speed(sys_text(name, "speed"))
        if speed is not None:           # libvirt reads the same ethtool figure, -1 meaning unknown
            assert nic.speed_mbit == speed, name
        else:
            assert nic.speed_mbit is None, name
        assert nic.source in ("nodedev", "interface")


def test_test_devices_are_listed_as_virtual(system_conn, devices):
    nics = {nic.device: nic for nic in read_nics(system_conn)}
    assert devices.down not in nics                         # vnet*: a guest's tap by its name
    for name in (devices.up, devices.port, devices.lonely):
        assert nics[name].kind == "veth" and nics[name].physical is False
    assert nics[devices.port].mac == sys_text(devices.port, "address")   # a bridge port, named only in its bridge
    bridge = nics[devices.bridge]
    assert (bridge.kind, bridge.physical, bridge.ipv4) == ("bridge", False, [f"{devices.address}/32"])
    assert nics[devices.up].carrier and nics[devices.port].carrier and bridge.carrier
    assert nics[devices.lonely].carrier is False and nics[devices.lonely].mtu == 1450
    assert devices.up not in {nic.device for nic in read_nics(system_conn, exclude={devices.up})}
    assert management_device(list(nics.values()), devices.address) == devices.bridge


def test_system_node_devices_decide_physical(system_conn):
    nics = {nic.device: nic for nic in read_nics(system_conn)}
    for device in system_conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_NET):
        xml = device.XMLDesc(0)
        name = xml.split("<interface>", 1)[1].split("</interface>", 1)[0]
        if name in nics:
            assert nics[name].source == "nodedev"
            assert nics[name].physical == ("<parent>computer</parent>" not in xml)


def test_system_management_device_is_the_first_physical_nic_with_carrier(system_conn):
    nics = read_nics(system_conn)
    physical_up = [n for n in sorted(os.listdir(SYS)) if (SYS / n / "device").exists() and kernel_carrier(n)]
    if physical_up:
        assert management_device(nics) == physical_up[0]
    routes = json.loads(sh("ip", "-j", "-4", "route", "show", "default").stdout)
    if routes:                        # the device of the default route, by the address it carries
        dev = routes[0]["dev"]
        addrs = json.loads(sh("ip", "-j", "-4", "addr", "show", "dev", dev).stdout)[0].get("addr_info", [])
        if addrs:
            assert management_device(nics, addrs[0]["local"]) == dev


def test_system_interfaces_are_read_only_and_say_why(system_conn):
    writable, reason = interfaces_writable(system_conn)
    name = f"xntdef{os.getpid() % 10000}"
    try:
        defined = system_conn.interfaceDefineXML(
            f"<interface type='ethernet' name='{name}'><start mode='none'/></interface>", 0)
    except libvirt.libvirtError as e:
        assert not writable and e.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT
        assert reason == READ_ONLY_REASON
    else:
        defined.undefine()
        assert writable and reason == ""


def test_test_driver_interfaces():
    conn = libvirt.open(TEST_URI)
    try:
        assert conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_NET) == []   # none: interfaces alone
        nics = read_nics(conn)
        assert [nic.device for nic in nics] == [iface.name() for iface in conn.listAllInterfaces(0)] == ["eth1"]
        eth1 = nics[0]
        xml = conn.interfaceLookupByName("eth1").XMLDesc(0)
        assert f"address='{eth1.mac}'" in xml and f"size='{eth1.mtu}'" in xml
        assert (eth1.mac, eth1.mtu, eth1.ipv4) == ("aa:bb:cc:dd:ee:ff", 1492, ["192.168.0.5/24"])
        assert (eth1.source, eth1.kind, eth1.physical, eth1.carrier) == ("interface", "ethernet", True, True)
        assert eth1.speed_mbit is None                  # the test driver gives no <link speed>
        assert management_device(nics) == management_device(nics, "192.168.0.5") == "eth1"
        assert read_nics(conn, exclude={"eth1"}) == []
    finally:
        conn.close()


def test_test_driver_interfaces_are_writable():
    conn = libvirt.open(TEST_URI)
    try:
        assert interfaces_writable(conn) == (True, "")
        assert [i.name() for i in conn.listAllInterfaces(0)] == ["eth1"]       # the probe defined nothing
        name = f"xntdef{os.getpid() % 10000}"
        conn.interfaceDefineXML(f"<interface type='ethernet' name='{name}'><start mode='none'/></interface>",
                                0).undefine()
    finally:
        conn.close()


def test_read_only_connection_is_not_writable(system_conn):
    conn = libvirt.openReadOnly(TEST_URI)
    try:
        assert interfaces_writable(conn) == (False, "the libvirt connection is read-only")
    finally:
        conn.close()


def nic(device: str, *, physical: bool = False, carrier: bool = False, ipv4: list[str] | None = None) -> Nic:
    return Nic(device=device, mac="", mtu=1500, speed_mbit=None, carrier=carrier, physical=physical,
               kind="ethernet" if physical else "bridge", ipv4=ipv4 or [])


def test_management_device_rule():
    plain = nic("a")
    addressed = nic("b", ipv4=["10.1.2.3/24"])
    physical_down = nic("c", physical=True)
    physical_up = nic("d", physical=True, carrier=True, ipv4=["10.9.9.9/16"])
    every = [plain, addressed, physical_down, physical_up]
    assert management_device(every, "10.1.2.3") == "b"          # the host's own address first
    assert management_device(every, "10.1.2.30") == "d"         # not carried: the physical NIC with carrier
    assert management_device(every) == "d"
    assert management_device([plain, addressed, physical_down]) == "b"
    assert management_device([plain, physical_down]) == "a"
    assert management_device([]) is None


# ---- whose kernel: a socket may lead to a libvirtd in another network namespace ---------------

_LISTENER = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(4)
print("listening", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""


def test_a_socket_served_from_another_network_namespace_reads_that_namespaces_kernel(tmp_path):
    """A unix socket whose listener is in its own network namespace (``unshare --net``, as a lab
    host's or a container's libvirtd): its /sys and ``ip`` are read, not this machine's, and a
    socket nobody serves gives no kernel facts at all (rather than ours)."""
    from xenapi.backend.host_nics import Kernel, kernel_of
    assert kernel_of(SYSTEM_URI) == Kernel()
    assert kernel_of(TEST_URI) is None
    assert kernel_of(f"qemu+unix:///system?socket={tmp_path / 'nobody'}") is None
    sock = tmp_path / "sock"
    listener = subprocess.Popen(["unshare", "--net", "--mount", "--", "sh", "-c",
                                 'mount -t sysfs sysfs /sys && exec "$0" -c "$1" "$2"', os.sys.executable,
                                 _LISTENER, str(sock)],
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert listener.stdout.readline().strip() == "listening"
        kernel = kernel_of(f"qemu+unix:///system?socket={sock}")
        assert kernel is not None and kernel.netns_pid == listener.pid
        assert sorted(p.name for p in kernel.sys_net.iterdir()) == ["lo"]     # its namespace has only lo
        assert kernel.ipv4() == {}                                            # lo is down: no 127.0.0.1
        assert kernel.local_kind("lo") == "loopback"
        assert "lo" in {p.name for p in SYS.iterdir()} and len(list(SYS.iterdir())) > 1   # ours differs
    finally:
        listener.kill()
        listener.wait(timeout=10)
