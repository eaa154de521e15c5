"""The two lab hosts (tests/e2e/lab_hosts.py) and a VXLAN tunnel between them, for real.

- both hosts answer on their own libvirtd, with their own hostnames and host UUIDs, while the
  machine's own libvirtd (qemu:///system in the root namespaces) keeps answering;
- the link between them carries traffic; the lab's prefixes are unreachable from the root namespace;
- a tunnel (xenapi/backend/vxlan.py, through each host's HostShell) joins a bridge on each host:
  two "guests" (network namespaces with a veth on those bridges) ping each other across it, up to
  the largest frame the tunnel MTU allows; with another VNI on one side they do not (although the
  encapsulated packets still reach that host); removing the tunnel cuts them off;
- a lab that stops leaves no process, namespace, route or directory behind.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from lab_hosts import LabHosts, _pids_in_netns
from xenapi.backend import vxlan

pytestmark = pytest.mark.e2e


def _host_uuid(conn) -> str:
    return ET.fromstring(conn.getCapabilities()).findtext("host/uuid")


def _root_route(address: str) -> str:
    r = subprocess.run(["ip", "route", "get", address], capture_output=True, text=True)
    return r.stdout + r.stderr


def test_both_hosts_answer_with_their_own_identity_and_the_link_carries_traffic(lab_hosts, libvirt_uri):
    conns = [libvirt.open(h.uri) for h in lab_hosts.hosts]
    main = libvirt.open(libvirt_uri)
    try:
        assert [c.getHostname() for c in conns] == ["lab1", "lab2"]
        uuids = [_host_uuid(c) for c in conns]
        assert uuids == [h.host_uuid for h in lab_hosts.hosts]
        assert len({*uuids, _host_uuid(main)}) == 3
        assert main.getHostname() == os.uname().nodename       # the machine's libvirtd, untouched
        for c in conns:                                         # the QEMU and network drivers are there
            assert "<domain type='qemu'" in c.getCapabilities()
            assert c.listAllNetworks() == []
    finally:
        for c in (*conns, main):
            c.close()

    lab1, lab2 = lab_hosts.hosts
    r = lab1.run("ping", "-n", "-c", "1", "-W", "5", lab2.address, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert lab2.run("hostname").stdout.strip() == "lab2"
    # on the host, /run/libvirt is the host's own: its virsh means that host
    assert lab2.run("virsh", "-q", "-c", "qemu:///system", "hostname").stdout.strip() == "lab2"
    assert (lab2.dir / "run" / "libvirt-sock").is_socket()
    # from the root namespace the lab's addresses go nowhere: refused at once, not sent out
    for address in (lab2.address, lab_hosts.guest_address(1).split("/")[0]):
        assert "No route to host" in _root_route(address)
        with pytest.raises(OSError) as e:
            socket.create_connection((address, 16509), timeout=5).close()
        assert e.value.errno == errno.EHOSTUNREACH


def _rx_packets(host, device: str) -> int:
    stats = json.loads(host.run("ip", "-s", "-j", "link", "show", "dev", device).stdout)[0]
    return stats["stats64"]["rx"]["packets"]


def _pings(guest, address: str, **kw) -> bool:
    """A reply within three tries (the first may wait for ARP on a fresh bridge)."""
    return any(guest.ping(address, **kw) for _ in range(3))


NETWORK_XML = "<network><name>{name}</name><forward mode='bridge'/><bridge name='{bridge}'/></network>"


def test_a_vxlan_tunnel_joins_a_bridge_on_each_host(lab_hosts):
    lab1, lab2 = lab_hosts.hosts
    shells = {lab1.name: lab1.shell, lab2.name: lab2.shell}
    assert vxlan.available(shells["lab1"]) == (True, "")
    bridge, device, vni = "xbrt1", vxlan.device_name("vxt", 4242), 4242
    mtu = vxlan.tunnel_mtu(1500)
    absent_peer = str(lab2.address).rsplit(".", 1)[0] + ".3"     # a third "host" that is not there
    guests, networks = [], []
    try:
        for host in (lab1, lab2):
            vxlan.ensure_bridge(shells[host.name], bridge, mtu)
        s1 = vxlan.ensure_tunnel(shells["lab1"], device, vni, lab1.address, [lab2.address, absent_peer], bridge, 1500)
        s2 = vxlan.ensure_tunnel(shells["lab2"], device, vni, lab2.address, [lab1.address], bridge, 1500)
        assert (s1["vni"], s1["local"], s1["master"], s1["mtu"], s1["up"]) == (vni, lab1.address, bridge, mtu, True)
        assert s1["peers"] == [lab2.address, absent_peer] and s2["peers"] == [lab1.address]

        # the libvirt network each host will put its guests on, over that bridge
        for host in (lab1, lab2):
            conn = libvirt.open(host.uri)
            try:
                net = conn.networkDefineXML(NETWORK_XML.format(name="xtun-test", bridge=bridge))
                networks.append((host, "xtun-test"))
                net.create()
                assert net.isActive() and net.bridgeName() == bridge
            finally:
                conn.close()

        g1 = lab_hosts.add_netns_guest(lab1, bridge, lab_hosts.guest_address(11), mtu=mtu)
        g2 = lab_hosts.add_netns_guest(lab2, bridge, lab_hosts.guest_address(12), mtu=mtu)
        guests = [g1, g2]
        assert _pings(g1, g2.ip) and _pings(g2, g1.ip)
        # the largest packet the tunnel MTU allows crosses unfragmented (ICMP + IP headers: 28)
        assert _pings(g1, g2.ip, size=mtu - 28, dont_fragment=True)
        # the encapsulated traffic crossed the link: lab2's VXLAN device received it
        assert _rx_packets(lab2, device) > 0

        # another VNI on lab2: the packets still reach lab2, but no guest answers
        vxlan.ensure_tunnel(shells["lab2"], device, vni + 1, lab2.address, [lab1.address], bridge, 1500)
        assert vxlan.tunnel_state(shells["lab2"], device)["vni"] == vni + 1
        before = _rx_packets(lab2, "eth0")
        assert not g1.ping(g2.ip, count=1, wait=1)
        assert _rx_packets(lab2, "eth0") > before

        vxlan.ensure_tunnel(shells["lab2"], device, vni, lab2.address, [lab1.address], bridge, 1500)
        assert _pings(g1, g2.ip)

        # removing the tunnel on one side cuts the guests off
        assert vxlan.remove_tunnel(shells["lab1"], device) is True
        assert vxlan.tunnel_state(shells["lab1"], device) is None
        assert not g1.ping(g2.ip, count=1, wait=1)
        assert not g2.ping(g1.ip, count=1, wait=1)
    finally:
        for guest in guests:
            guest.remove()
        for host, name in networks:
            conn = libvirt.open(host.uri)
            try:
                net = conn.networkLookupByName(name)
                if net.isActive():
                    net.destroy()
                net.undefine()
            finally:
                conn.close()
        for host in (lab1, lab2):
            vxlan.remove_tunnel(shells[host.name], device)
            vxlan.remove_bridge(shells[host.name], bridge)


def test_a_lab_that_stops_leaves_nothing_behind():
    """Its own lab (not the session's): with a guest and a stray process in a host's netns."""
    lab = LabHosts()
    lab.start()
    try:
        names = [h.netns for h in lab.hosts]
        inodes = [h._netns_inode for h in lab.hosts]
        daemons = [h.pid_of(d) for h in lab.hosts for d in ("libvirtd", "virtlogd")]
        reapers = [h.reaper.pid for h in lab.hosts]
        directory, prefixes = lab.dir, list(lab._lease.prefixes)
        vxlan.ensure_bridge(lab.lab1.shell, "xbr0", 1450)
        guest = lab.add_netns_guest(lab.lab1, "xbr0", lab.guest_address(5))
        # an orphan inside lab1's netns (re-parented away from the lab's processes)
        lab.lab1.run("sh", "-c", "sleep 600 >/dev/null 2>&1 &")
        assert len(_pids_in_netns(inodes[0])) >= 4
    finally:
        lab.stop()
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    assert not any(prefix.split("/")[0] in routes for prefix in prefixes)
    assert not any(Path(f"/run/netns/{n}").exists() for n in (*names, guest.netns))
    assert all(_pids_in_netns(i) == [] for i in inodes)
    assert not any(Path(f"/proc/{p}").exists() and Path(f"/proc/{p}/comm").read_text().strip() in
                   ("libvirtd", "virtlogd", "perl") for p in (*daemons, *reapers) if p)
    assert not directory.exists()
    print(f"lab start {lab.start_seconds:.3f} s, stop {lab.stop_seconds:.3f} s")
