"""The tiny guests' networking and their command channel, with raw libvirt (no xenapi server): the
harness the network classes' end-to-end tests stand on.

Guests on an isolated libvirt network (no ``<forward>``, no ``<ip>``: a bridge without a host
address, no dnsmasq; the taps' IPv6 link-local addresses removed too) get 10.x addresses, typed
into them over their serial consoles (``guest_net.GuestShell``), while an ``unreachable`` route
for that /24 keeps the host out of it.  They ping each other; a guest on a second isolated network
does not reach them until a NIC on the first is hot-plugged into it; a TCP transfer measures the
link, unlimited and shaped on the host (a ``tbf`` qdisc on the receiver's tap), and, where the host
kernel lets libvirt police a tap (``tc`` ``police`` action), shaped by ``<bandwidth>``."""

from __future__ import annotations

import contextlib
import subprocess
import time

import libvirt
import pytest

import guest
import guest_net as gn

pytestmark = pytest.mark.e2e

LIMIT_KBYTES = 125           # 125 KB/s = 1 Mbit/s: TCG guests move only 15-25 Mbit/s unshaped, 5 on a busy host
LIMIT_MBIT = LIMIT_KBYTES * 8 / 1000


@pytest.fixture
def prefix():
    """A private /24 the host cannot send to (an ``unreachable`` route while the test runs)."""
    with gn.unreachable_route() as p:
        yield p


@pytest.fixture
def networks(libvirt_conn):
    """``networks(hint)``: a new isolated libvirt network's name; all removed after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda hint="net": stack.enter_context(gn.isolated_network(libvirt_conn, hint))


@pytest.fixture
def boot(networks, prefix, make_domain, tiny_guest, tmp_path):
    """``boot({hint: [nic, ...]}) -> {hint: (shell, dom)}``: tiny guests with a pty console and one
    virtio NIC per ``(network, mac[, bandwidth])``, started together (the host has 2 cores; a guest
    that is up slows the next one's boot less than it waits for it), each ready to take commands.
    (Asking for ``networks`` and ``prefix`` first makes the domains go before the networks and the
    route.)"""
    shells: list[gn.GuestShell] = []

    def start(guests: dict[str, list[tuple]]) -> dict[str, tuple[gn.GuestShell, object]]:
        t0 = time.monotonic()
        started = {}
        for hint, nics in guests.items():
            nics_xml = "".join(gn.interface_xml(*nic) for nic in nics)
            dom = make_domain(tiny_guest.domain_xml(make_domain.name(hint), None, serial="pty", vnc=False,
                                                    extra_devices=nics_xml))
            shells.append(gn.start_with_shell(dom, tmp_path / f"{hint}-console.log"))
            started[hint] = (shells[-1], dom)
        for shell, dom in started.values():
            shell.wait_ready(120)
            gn.unaddress_taps(dom)
        print(f"\n{', '.join(started)}: all answer commands {time.monotonic() - t0:.2f} s after their start")
        return started

    yield start
    for shell in shells:
        shell.close()


def test_guests_talk_on_their_network_only(boot, networks, prefix):
    net_a, net_b = networks("a"), networks("b")
    mac1, mac2, mac3, mac3_hot = (gn.random_mac() for _ in range(4))
    guests = boot({"g1": [(net_a, mac1)], "g2": [(net_a, mac2)], "g3": [(net_b, mac3)]})
    (g1, _), (g2, _), (g3, dom3) = guests["g1"], guests["g2"], guests["g3"]

    # the command channel: exit status, stdout and stderr in order, quoting, many lines
    assert g1.run("echo one; echo 'two  words' >&2; exit 3") == (3, "one\ntwo  words")
    assert g1.check("seq 1 200").splitlines() == [str(i) for i in range(1, 201)]
    assert g1.check("echo \"$((6 * 7))\" '$HOME' | tr a-z A-Z") == "42 $HOME"

    names = {}
    for shell, mac, n in ((g1, mac1, 1), (g2, mac2, 2), (g3, mac3, 3)):
        names[n] = gn.wait_for_net_device(shell, mac, 60)
        assert gn.net_devices_now(shell) == {names[n]: mac}
        gn.configure(shell, names[n], gn.cidr(prefix, n))
    assert gn.ping(g1, gn.host(prefix, 2)), g1.tail()
    assert gn.ping(g2, gn.host(prefix, 1)), g2.tail()
    assert gn.port_reachable(g1, g2, gn.host(prefix, 2), 7000)

    # the same /24 on network b: nothing of a reaches g3, nor does g3 reach a
    assert gn.ping(g3, gn.host(prefix, 1), count=2, wait=2) == []
    assert gn.ping(g1, gn.host(prefix, 3), count=2, wait=2) == []
    assert not gn.connect(g3, gn.host(prefix, 2), 7000)

    # a NIC on a hot-plugged into g3 shows in its net devices line; through it, g3 reaches g1
    dom3.attachDeviceFlags(gn.interface_xml(net_a, mac3_hot), libvirt.VIR_DOMAIN_AFFECT_LIVE)
    gn.unaddress_taps(dom3)
    hot = gn.wait_for_net_device(g3, mac3_hot, 60)
    assert guest.net_devices(g3.console.text()) == {names[3]: mac3, hot: mac3_hot}
    g3.check(f"ip addr flush dev {names[3]}")
    gn.configure(g3, hot, gn.cidr(prefix, 3))
    assert gn.ping(g3, gn.host(prefix, 1)), g3.tail()
    assert gn.port_reachable(g3, g2, gn.host(prefix, 2), 7001)


def test_throughput_unlimited_and_shaped(boot, networks, prefix):
    net = networks("tput")
    mac_tx, mac_rx = gn.random_mac(), gn.random_mac()
    guests = boot({"tx": [(net, mac_tx)], "rx": [(net, mac_rx)]})
    (tx, _), (rx, dom_rx) = guests["tx"], guests["rx"]
    gn.configure(tx, gn.wait_for_net_device(tx, mac_tx), gn.cidr(prefix, 1))
    gn.configure(rx, gn.wait_for_net_device(rx, mac_rx), gn.cidr(prefix, 2))
    assert gn.ping(tx, gn.host(prefix, 2)), tx.tail()

    free = gn.throughput(tx, rx, gn.host(prefix, 2), megabytes=2)
    # the receiver's tap, shaped on the host's side to LIMIT (its egress: what the sender sends)
    tap = gn.host_taps(dom_rx)[0]
    subprocess.run(["tc", "qdisc", "add", "dev", tap, "root", "tbf", "rate", f"{LIMIT_KBYTES * 8}kbit",
                    "burst", "16kb", "latency", "200ms"], check=True, capture_output=True)
    shaped = gn.throughput(tx, rx, gn.host(prefix, 2), megabytes=0.5)
    print(f"\nthroughput: unlimited {free.mbit_s:.1f} Mbit/s ({free.nbytes} B in {free.seconds:.2f} s), "
          f"shaped to {LIMIT_MBIT:g} Mbit/s: {shaped.mbit_s:.2f} Mbit/s ({shaped.seconds:.2f} s)")
    assert 0.5 * LIMIT_MBIT <= shaped.mbit_s <= 1.3 * LIMIT_MBIT
    assert free.mbit_s > 2 * LIMIT_MBIT


def _police_refused() -> str:
    """Why ``tc`` cannot police a device's ingress on this host kernel (what libvirt's
    ``<bandwidth><outbound>`` does to a tap), tried on a veth in a network namespace made for it;
    "" if it can."""
    ns = f"xe2e-police-{time.monotonic_ns()}"
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    try:
        for cmd in (["ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1"],
                    ["tc", "qdisc", "add", "dev", "p0", "ingress"],
                    ["tc", "filter", "add", "dev", "p0", "parent", "ffff:", "protocol", "all", "u32", "match",
                     "u32", "0", "0", "police", "rate", "1250kbps", "burst", "32kb", "mtu", "64kb", "drop",
                     "flowid", ":1"]):
            r = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True)
            if r.returncode != 0:
                return f"{' '.join(cmd)}: {(r.stdout + r.stderr).strip()}"
        return ""
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_libvirt_bandwidth_limits_outbound(boot, networks, prefix):
    refused = _police_refused()
    if refused:
        pytest.skip(f"this host kernel cannot police traffic, so libvirt cannot start a domain with "
                    f"<bandwidth><outbound>: {refused}")
    net = networks("bw")
    mac_tx, mac_rx = gn.random_mac(), gn.random_mac()
    guests = boot({"tx": [(net, mac_tx, f"<outbound average='{LIMIT_KBYTES}' burst='32'/>")],
                   "rx": [(net, mac_rx)]})
    (tx, _), (rx, _) = guests["tx"], guests["rx"]
    gn.configure(tx, gn.wait_for_net_device(tx, mac_tx), gn.cidr(prefix, 1))
    gn.configure(rx, gn.wait_for_net_device(rx, mac_rx), gn.cidr(prefix, 2))
    shaped = gn.throughput(tx, rx, gn.host(prefix, 2), megabytes=0.5)
    print(f"\n<outbound average='{LIMIT_KBYTES}'>: {shaped.mbit_s:.2f} Mbit/s ({shaped.seconds:.2f} s)")
    # policing drops what exceeds the rate, and TCP backs off below it
    assert 0.3 * LIMIT_MBIT <= shaped.mbit_s <= 1.3 * LIMIT_MBIT
