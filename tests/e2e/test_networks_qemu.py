"""Networks, VIFs and their QoS on real QEMU guests, through the server.

Tiny guests made and started through the API (VM.create, VIF.create, VM.start), their VIFs on
isolated networks made with network.create (a bridge with no host address; the taps' IPv6
link-local addresses removed, and an ``unreachable`` route for the guests' 10.x /24, keep the host
out).  Commands typed on the guests' serial consoles (tests/e2e/guest_net.py) give them addresses,
ping, open TCP ports and time transfers:

- guests on one network reach each other; one on another network, with an address in the same
  /24, reaches neither, nor they it;
- VIF.create + VIF.plug on a running guest: the record says attached, the NIC (the VIF's MAC)
  shows in the guest and carries traffic; VIF.unplug takes it out of the guest again;
- VIF.move of a running guest's VIF: it reaches the new network's guests and no longer the old
  one's, the guest still running (same domain, same boot);
- a VIF with ratelimit QoS sends at about its rate.
"""
from __future__ import annotations

import contextlib
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import XenAPI

import guest
import guest_net as gn
from qemu_e2e import start_with_console, tiny_vm_record

pytestmark = pytest.mark.e2e

RATE_KBPS = 10_000                 # 10 Mbit/s: TCG guests move only ~14-23 Mbit/s unlimited
RATE_BAND_MBIT = (5.0, 12.0)


@dataclass
class G:
    """A tiny guest of the server: its VM, VIFs (device -> ref), shell, libvirt domain, name, MACs."""
    vm: str
    vifs: dict
    shell: gn.GuestShell
    dom: object
    name: str
    macs: dict = field(default_factory=dict)      # device -> MAC (the VIF records')


class Lab:
    """The server, a private /24 and what a test makes; ``close`` removes all of it: the VMs
    (through the API, and from the fixture's ``created``), the consoles, then the networks
    (once no VIF is attached to them), the route last."""

    def __init__(self, server, tiny_guest, libvirt_conn, tmp_path: Path, stack: contextlib.ExitStack):
        self.server, self.x = server, server.x
        self.tiny_guest, self.conn, self.tmp_path = tiny_guest, libvirt_conn, tmp_path
        self.prefix = stack.enter_context(gn.unreachable_route())
        self.tag = f"xe2e-net-{time.monotonic_ns() % 10**9}"
        self.networks: list[str] = []
        self.vms: list[str] = []
        self.consoles: list = []
        self.t0 = time.monotonic()

    def mark(self, what: str) -> None:
        """Print how long the test has run (the phases' timings, with ``-s``)."""
        print(f"  {time.monotonic() - self.t0:6.1f} s  {what}")

    def network(self, hint: str) -> str:
        ref = self.x.network.create({"name_label": f"{self.tag}-{hint}", "name_description": "",
                                     "MTU": "1500", "other_config": {}})
        self.networks.append(ref)
        return ref

    def ip(self, n: int) -> str:
        return gn.host(self.prefix, n)

    def vif_record(self, vm: str, device: int, network: str, *, mac: str = "", qos: dict | None = None) -> dict:
        return {"device": str(device), "network": network, "VM": vm, "MAC": mac, "MTU": "1500",
                "other_config": {}, "qos_algorithm_type": "ratelimit" if qos else "",
                "qos_algorithm_params": qos or {}}

    def boot(self, guests: dict[str, list]) -> dict[str, G]:
        """``{hint: [network | (network, qos_params), ...]}``: VMs with a VIF per network (devices
        0, 1, ...; MACs generated), started through the API one after the other (each paused while
        its console opens), then waited for together; each answers commands when this returns."""
        t0 = time.monotonic()
        started: dict[str, G] = {}
        for hint, nets in guests.items():
            vm = self.x.VM.create(tiny_vm_record(self.tiny_guest, f"{self.tag}-{hint}"))
            self.vms.append(vm)
            self.server.created.append(vm)
            vifs, macs = {}, {}
            for device, net in enumerate(nets):
                net, qos = net if isinstance(net, tuple) else (net, None)
                vifs[device] = self.x.VIF.create(self.vif_record(vm, device, net, qos=qos))
                macs[device] = self.x.VIF.get_MAC(vifs[device])
            self.mark(f"{hint}: VM and VIFs created")
            console = start_with_console(self.x, vm, self.tmp_path / f"{hint}-console.log")
            self.mark(f"{hint}: started")
            self.consoles.append(console)
            dom = self.conn.lookupByUUIDString(self.x.VM.get_uuid(vm))
            started[hint] = G(vm, vifs, gn.GuestShell(console, name=hint), dom, hint, macs)
        for g in started.values():
            g.shell.wait_ready(120)
            self.mark(f"{g.name}: answers")
            gn.unaddress_taps(g.dom)
        print(f"\n{', '.join(started)}: all answer commands {time.monotonic() - t0:.1f} s after the first VM.create")
        return started

    def address(self, g: G, device: int, n: int) -> str:
        """Give guest ``g``'s NIC of VIF ``device`` address ``n`` of the /24; that NIC's name."""
        name = gn.wait_for_net_device(g.shell, g.macs[device], 60)
        gn.configure(g.shell, name, gn.cidr(self.prefix, n))
        return name

    def close(self) -> None:
        for vm in reversed(self.vms):
            with contextlib.suppress(XenAPI.Failure):
                if self.x.VM.get_power_state(vm) != "Halted":
                    self.x.VM.hard_shutdown(vm)
                self.x.VM.destroy(vm)
                self.server.created.remove(vm)
        for console in self.consoles:
            with contextlib.suppress(OSError):
                console.close()
        for net in reversed(self.networks):
            with contextlib.suppress(XenAPI.Failure):
                self.x.network.destroy(net)


@pytest.fixture
def lab(start_xenapi, tiny_guest, libvirt_conn, tmp_path):
    server = start_xenapi()
    with contextlib.ExitStack() as stack:
        lab = Lab(server, tiny_guest, libvirt_conn, tmp_path, stack)
        stack.callback(lab.close)           # before the route goes (LIFO)
        yield lab


def unanswered(shell: gn.GuestShell, address: str) -> bool:
    """Whether two pings from the guest to ``address`` (sent, as the statistics say) get no reply.
    ``-W 1``: a reply is waited for 1 s after the last one was sent (busybox's ``-w`` does not cut
    that wait, 10 s by default, short when nothing answers)."""
    rc, output = shell.run(f"ping -c 2 -i 0.2 -W 1 {address}", timeout=20)
    assert "2 packets transmitted" in output, f"{shell.name}: ping {address} did not run: {output}"
    return rc != 0 and "0 packets received" in output and not gn.PING_TIME.search(output)


def bridge_of_tap(tap: str) -> str:
    """The host bridge a guest's tap is a port of ("" for none)."""
    master = Path(f"/sys/class/net/{tap}/master")
    return master.resolve().name if master.exists() else ""


def tap_of(dom, mac: str) -> str:
    """The host-side device of running domain ``dom``'s interface with MAC ``mac`` ("" if none)."""
    for el in ET.fromstring(dom.XMLDesc(0)).findall("devices/interface"):
        if el.find("mac").get("address", "").lower() == mac.lower() and el.find("target") is not None:
            return el.find("target").get("dev", "")
    return ""


def test_guests_on_a_network_reach_each_other_and_no_one_else(lab):
    x = lab.x
    net_a, net_b = lab.network("a"), lab.network("b")
    gs = lab.boot({"a1": [net_a], "a2": [net_a], "b3": [net_b]})
    a1, a2, b3 = gs["a1"], gs["a2"], gs["b3"]
    for g, n in ((a1, 1), (a2, 2), (b3, 3)):
        name = lab.address(g, 0, n)
        assert gn.net_devices_now(g.shell) == {name: g.macs[0]}
    # each tap is a port of its network's bridge
    for g, net in ((a1, net_a), (a2, net_a), (b3, net_b)):
        assert bridge_of_tap(tap_of(g.dom, g.macs[0])) == x.network.get_bridge(net)
    lab.mark("addressed")
    assert gn.ping(a1.shell, lab.ip(2)), a1.shell.tail()
    assert gn.ping(a2.shell, lab.ip(1)), a2.shell.tail()
    assert gn.port_reachable(a1.shell, a2.shell, lab.ip(2), 7000)
    assert gn.port_reachable(a2.shell, a1.shell, lab.ip(1), 7001)
    lab.mark("a1 and a2 talk")

    # b3: same /24, other network: nothing either way
    assert unanswered(b3.shell, lab.ip(1))
    assert unanswered(b3.shell, lab.ip(2))
    assert unanswered(a1.shell, lab.ip(3))
    assert not gn.port_reachable(b3.shell, a2.shell, lab.ip(2), 7002, timeout=1)
    assert not gn.port_reachable(a1.shell, b3.shell, lab.ip(3), 7003, timeout=1)
    # and a1-a2 still talk (the failures above are b3's isolation, not a broken network)
    assert gn.ping(a1.shell, lab.ip(2), count=1), a1.shell.tail()


def test_vif_hot_plug_and_unplug_in_a_running_guest(lab):
    x = lab.x
    net_a, net_b = lab.network("a"), lab.network("b")
    gs = lab.boot({"hot": [net_a], "peer": [net_b]})
    hot, peer = gs["hot"], gs["peer"]
    eth0 = gn.wait_for_net_device(hot.shell, hot.macs[0], 60)
    lab.address(peer, 0, 2)

    vif = x.VIF.create(lab.vif_record(hot.vm, 1, net_b))
    mac = x.VIF.get_MAC(vif)
    assert x.VIF.get_currently_attached(vif) is False
    assert tap_of(hot.dom, mac) == ""                                  # defined, not in the guest yet
    offset = hot.shell.console.size()
    lab.mark("before VIF.plug")
    x.VIF.plug(vif)
    lab.mark("VIF.plug returned")
    assert x.VIF.get_currently_attached(vif) is True
    gn.unaddress_taps(hot.dom)
    tap = tap_of(hot.dom, mac)
    assert tap and bridge_of_tap(tap) == x.network.get_bridge(net_b)
    name = gn.wait_for_net_device(hot.shell, mac, 60, offset=offset)
    assert gn.net_devices_now(hot.shell) == {eth0: hot.macs[0], name: mac}
    gn.configure(hot.shell, name, gn.cidr(lab.prefix, 1))
    assert gn.ping(hot.shell, lab.ip(2)), hot.shell.tail()
    assert gn.port_reachable(hot.shell, peer.shell, lab.ip(2), 7010)
    assert gn.port_reachable(peer.shell, hot.shell, lab.ip(1), 7011)
    lab.mark("traffic through the plugged NIC")

    offset = hot.shell.console.size()
    x.VIF.unplug(vif)
    lab.mark("VIF.unplug returned")
    assert x.VIF.get_currently_attached(vif) is False
    assert tap_of(hot.dom, mac) == ""
    devices = gn.wait_for_net_devices(hot.shell, lambda d: mac not in d.values(), 60, offset=offset)
    assert devices == {eth0: hot.macs[0]}
    assert gn.net_devices_now(hot.shell) == {eth0: hot.macs[0]}
    assert guest.net_devices(hot.shell.console.text()) == {eth0: hot.macs[0]}
    assert unanswered(peer.shell, lab.ip(1))                          # nothing of the guest on b now
    assert x.VIF.get_record(vif)["network"] == net_b                  # still defined, for the next plug
    assert x.VM.get_power_state(hot.vm) == "Running"


def test_vif_move_takes_a_running_guest_to_another_network(lab):
    x = lab.x
    net_a, net_b = lab.network("a"), lab.network("b")
    gs = lab.boot({"mover": [net_a], "on-a": [net_a], "on-b": [net_b]})
    mover, on_a, on_b = gs["mover"], gs["on-a"], gs["on-b"]
    lab.address(mover, 0, 1)
    lab.address(on_a, 0, 2)
    lab.address(on_b, 0, 3)
    mover.shell.check("echo before-move > /tmp/boot-mark")
    domain_id = mover.dom.ID()
    tap = tap_of(mover.dom, mover.macs[0])
    assert bridge_of_tap(tap) == x.network.get_bridge(net_a)
    assert gn.ping(mover.shell, lab.ip(2)), mover.shell.tail()
    assert unanswered(mover.shell, lab.ip(3))

    vif = mover.vifs[0]
    lab.mark("before VIF.move")
    x.VIF.move(vif, net_b)
    lab.mark("VIF.move returned")
    record = x.VIF.get_record(vif)
    assert record["network"] == net_b and record["currently_attached"] is True
    assert vif in x.network.get_VIFs(net_b) and vif not in x.network.get_VIFs(net_a)
    assert bridge_of_tap(tap_of(mover.dom, mover.macs[0])) == x.network.get_bridge(net_b)

    assert gn.ping(mover.shell, lab.ip(3)), mover.shell.tail()
    assert gn.port_reachable(mover.shell, on_b.shell, lab.ip(3), 7020)
    assert gn.port_reachable(on_b.shell, mover.shell, lab.ip(1), 7021)
    assert unanswered(mover.shell, lab.ip(2))
    assert unanswered(on_a.shell, lab.ip(1))
    assert not gn.port_reachable(on_a.shell, mover.shell, lab.ip(1), 7022, timeout=1)

    # no reboot: the same domain, the same boot of the guest, its NIC the same
    assert mover.dom.ID() == domain_id and x.VM.get_power_state(mover.vm) == "Running"
    assert mover.shell.check("cat /tmp/boot-mark") == "before-move"
    assert mover.shell.console.text().count(guest.COMMAND_READY_TEXT) == 1
    assert gn.net_devices_now(mover.shell) == {gn.wait_for_net_device(mover.shell, mover.macs[0]):
                                               mover.macs[0]}
    # the definition follows too: the next boot is on b
    inactive = ET.fromstring(mover.dom.XMLDesc(2))       # VIR_DOMAIN_XML_INACTIVE
    sources = [el.find("source").get("network") for el in inactive.findall("devices/interface")]
    assert len(sources) == 1 and sources[0] != ""
    assert sources[0] == ET.fromstring(mover.dom.XMLDesc(0)).find("devices/interface/source").get("network")


def test_ratelimit_qos_limits_what_a_guest_sends(lab):
    x = lab.x
    net = lab.network("qos")
    gs = lab.boot({"tx": [(net, {"kbps": str(RATE_KBPS)})], "rx": [net]})
    tx, rx = gs["tx"], gs["rx"]
    record = x.VIF.get_record(tx.vifs[0])
    assert record["qos_algorithm_type"] == "ratelimit"
    assert record["qos_algorithm_params"] == {"kbps": str(RATE_KBPS)}
    lab.address(tx, 0, 1)
    lab.address(rx, 0, 2)
    assert gn.ping(tx.shell, lab.ip(2)), tx.shell.tail()
    capabilities = x.host.get_capabilities(x.VM.get_resident_on(tx.vm))
    method = [c for c in capabilities if c.startswith("qos:")]
    limited = gn.throughput(tx.shell, rx.shell, lab.ip(2), megabytes=3)
    print(f"\nratelimit {RATE_KBPS} kbit/s ({', '.join(method)}): {limited.mbit_s:.2f} Mbit/s "
          f"({limited.nbytes} B in {limited.seconds:.2f} s)")
    low, high = RATE_BAND_MBIT
    assert low <= limited.mbit_s <= high, _shaping(tx.dom)


def _shaping(dom) -> str:
    """What shapes the guest's tap on the host (for a failure's message)."""
    out = []
    for tap in gn.host_taps(dom):
        for args in (["tc", "qdisc", "show", "dev", tap], ["tc", "filter", "show", "dev", tap, "ingress"]):
            r = subprocess.run(args, capture_output=True, text=True)
            out.append(f"$ {' '.join(args)}\n{(r.stdout + r.stderr).strip()}")
    return "\n".join(out)
