"""End to end: a private network spanning the two lab hosts over VXLAN tunnels, through the API.

One xenapi server drives both lab hosts (``tests/e2e/lab_hosts.py``: two libvirtds, each in its
own network namespace, linked by ``eth0``), reaching their kernels through their exec prefixes
(``Config.host_exec``).  Through the official XenAPI client: ``network.create`` makes an isolated
network (a libvirt network, so a bridge, on each host); each host's ``eth0`` PIF carries the
host's link address; ``tunnel.create(eth0 PIF, network, "vxlan")`` on each host makes a VXLAN
device on that host's bridge with the other host as its peer.  Two tiny real QEMU guests (TCG),
one per host (``VM.create`` with ``affinity`` = the host), each with a VIF on the network, get
addresses of the lab's guest prefix (unreachable from the root namespace) through their serial
consoles (``guest_net.GuestShell``) and ping each other across the tunnel.  lab2's libvirt network
restarted behind the server's back (a new bridge, without the VXLAN device or the guest's tap) gets
both back from the server as soon as libvirt's network event arrives.  Once one side's tunnel is destroyed, the guests no longer reach each other.  Guests,
tunnels and network go in ``finally`` (the lab hosts' own stop removes whatever would be left).
"""
from __future__ import annotations

import contextlib
import time

import pytest

import guest_net as gn
from qemu_e2e import serving, tiny_vm_record
from xenapi.backend import vxlan

pytestmark = pytest.mark.e2e


@pytest.fixture
def lab_server(lab_hosts, tmp_path):
    """A xenapi server (in this process, HTTP on loopback) over both lab hosts, lab1 the master."""
    with serving(**lab_hosts.xenapi_settings(), state=str(tmp_path / "state")) as server:
        yield server


def _until(what: str, probe, why=lambda: "", timeout: float = 30.0):
    """``probe()``'s first truthy value (the server observes the hosts asynchronously)."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what} {why()}")
        time.sleep(0.1)
    return value


def _on_domain(lab_host, uuid: str, use):
    """``use(domain)`` for running domain ``uuid`` on ``lab_host``, through a connection of its own."""
    import libvirt
    with contextlib.closing(libvirt.open(lab_host.uri)) as conn:
        return use(conn.lookupByUUIDString(uuid))


def test_guests_on_two_hosts_talk_over_a_vxlan_private_network(lab_hosts, lab_server, tiny_guest, tmp_path):
    x = lab_server.x
    lab1, lab2 = lab_hosts.lab1, lab_hosts.lab2
    by_name = {rec["hostname"]: ref for ref, rec in x.host.get_all_records().items()}
    assert set(by_name) == {"lab1", "lab2"}, by_name
    host_of = {lab1.name: by_name["lab1"], lab2.name: by_name["lab2"]}

    def transport_pif(lab_host):
        def find():
            return next((ref for ref, rec in x.PIF.get_all_records().items()
                         if rec["host"] == host_of[lab_host.name] and rec["device"] == lab_host.link_device
                         and rec["IP"]), None)
        ref = _until(f"a PIF of {lab_host.link_device} with an IP on {lab_host.name}", find)
        return ref

    network = None
    tunnels: dict[str, str] = {}
    vms: list[tuple[str, object]] = []       # (VM ref, lab host)
    shells: list[gn.GuestShell] = []
    try:
        network = x.network.create({"name_label": "vxlan private", "name_description": "", "MTU": "1500",
                                    "other_config": {}})
        bridge = x.network.get_bridge(network)
        net_pifs = {x.PIF.get_host(p): p for p in x.network.get_PIFs(network)}
        assert set(net_pifs) == set(host_of.values()), "the network is on both hosts"

        for lab_host in (lab1, lab2):
            pif = transport_pif(lab_host)
            rec = x.PIF.get_record(pif)
            assert rec["IP"] == lab_host.address, rec          # the host's own link address, not ours
            tunnels[lab_host.name] = x.tunnel.create(pif, network, "vxlan")

        devices = {}
        for lab_host in (lab1, lab2):
            rec = x.tunnel.get_record(tunnels[lab_host.name])
            host = host_of[lab_host.name]
            assert rec["access_PIF"] == net_pifs[host]
            assert x.PIF.get_device(rec["transport_PIF"]) == lab_host.link_device
            assert x.PIF.get_host(rec["transport_PIF"]) == host
            assert rec["protocol"] == "vxlan"
            assert rec["status"]["active"] == "true", rec["status"]
            devices[lab_host.name] = rec["status"]["device"]
        keys = {x.tunnel.get_status(t)["key"] for t in tunnels.values()}
        assert len(keys) == 1, "one VNI for the network on both hosts"
        vni = int(keys.pop())
        for lab_host, peer in ((lab1, lab2), (lab2, lab1)):
            state = vxlan.tunnel_state(lab_host.shell, devices[lab_host.name])
            assert state is not None, f"no VXLAN device on {lab_host.name}"
            assert state["vni"] == vni and state["master"] == bridge, state
            assert state["local"] == lab_host.address and state["peers"] == [peer.address], state

        # a tiny guest on each host, its VIF on the network, started paused with its console open
        for n, lab_host in enumerate((lab1, lab2), start=1):
            vm = x.VM.create({**tiny_vm_record(tiny_guest, f"tunnel guest {n}"), "affinity": host_of[lab_host.name]})
            vms.append((vm, lab_host))
            x.VIF.create({"device": "0", "network": network, "VM": vm, "MAC": gn.random_mac(), "MTU": "1500",
                          "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
        for n, (vm, lab_host) in enumerate(vms, start=1):
            x.VM.start(vm, True, False)
            assert x.VM.get_resident_on(vm) == host_of[lab_host.name]
            shells.append(_on_domain(lab_host, x.VM.get_uuid(vm), lambda dom: gn.GuestShell.of_domain(
                dom, tmp_path / f"g{n}-console.log", name=f"g{n}")))
            x.VM.unpause(vm)
        addresses = []
        for n, ((vm, _), shell) in enumerate(zip(vms, shells), start=1):
            shell.wait_ready(120)
            mac = x.VIF.get_MAC(x.VM.get_VIFs(vm)[0])
            dev = gn.wait_for_net_device(shell, mac)
            addresses.append(lab_hosts.guest_address(10 + n))
            gn.configure(shell, dev, addresses[-1])
        ip1, ip2 = (a.split("/")[0] for a in addresses)

        assert gn.ping(shells[0], ip2, count=3, wait=10), "guest 1 (lab1) does not reach guest 2 (lab2)"
        assert gn.ping(shells[1], ip1, count=3, wait=10), "guest 2 (lab2) does not reach guest 1 (lab1)"

        # lab2's libvirt network restarted behind the server's back: a new bridge without the VXLAN
        # device nor guest 2's tap (libvirt 9.0 leaves a running guest's tap off it); libvirt's
        # network event makes the server put both back
        lab2.run("virsh", "net-destroy", bridge)
        lab2.run("virsh", "net-start", bridge)
        _until("lab2's VXLAN device back on the restarted network's bridge",
               lambda: (vxlan.tunnel_state(lab2.shell, devices[lab2.name]) or {}).get("master") == bridge,
               lambda: f"tunnel status {x.tunnel.get_status(tunnels[lab2.name])}, access PIF "
                       f"{x.PIF.get_record(net_pifs[host_of[lab2.name]])}")
        assert vxlan.tunnel_state(lab2.shell, devices[lab2.name])["peers"] == [lab1.address]
        assert x.tunnel.get_status(tunnels[lab2.name])["active"] == "true"
        for tap in _on_domain(lab2, x.VM.get_uuid(vms[1][0]), gn.host_taps):
            _until(f"guest 2's tap {tap} back on the bridge",
                   lambda: bridge in lab2.run("ip", "-o", "link", "show", "dev", tap).stdout, lambda: "")
        assert gn.ping(shells[0], ip2, count=3, wait=10), "guest 1 does not reach guest 2 after the restart"

        # one side's tunnel gone: its device too, the other side's peers updated, no more traffic
        x.tunnel.destroy(tunnels.pop(lab2.name))
        assert vxlan.tunnel_state(lab2.shell, devices[lab2.name]) is None
        assert vxlan.tunnel_state(lab1.shell, devices[lab1.name])["peers"] == []
        assert not gn.ping(shells[0], ip2, count=3, wait=3), "guest 1 still reaches guest 2 without the tunnel"
    finally:
        for shell in shells:
            with contextlib.suppress(Exception):
                shell.close()
        for vm, _ in vms:
            with contextlib.suppress(Exception):
                if x.VM.get_power_state(vm) != "Halted":
                    x.VM.hard_shutdown(vm)
            with contextlib.suppress(Exception):
                x.VM.destroy(vm)
        for tunnel in tunnels.values():
            with contextlib.suppress(Exception):
                x.tunnel.destroy(tunnel)
        if network is not None:
            with contextlib.suppress(Exception):
                x.network.destroy(network)
