"""Security-group filters on a running QEMU guest: the host's real ebtables/iptables rules.

A tiny guest with an ``<interface type='network'>`` on an isolated libvirt network this test
defines (no ``<ip>``, so no DHCP/NAT rules of libvirt's own), referencing a per-VIF filter that
includes a group filter.  Checked on the host, for the guest's tap device (``vnetN``, from the
live XML): the group's rules are instantiated (iptables-save/ebtables-save show them in
libvirt's per-interface chains); redefining the group filter changes them at once without
touching the domain; removing the ``<filterref>`` with updateDeviceFlags removes them.
"""
from __future__ import annotations

import itertools
import os
import re
import subprocess
import time
import xml.etree.ElementTree as ET

import libvirt
import pytest

from xenapi.backend import nwfilter as nwf

pytestmark = pytest.mark.e2e

TAG = f"xtnwf{os.getpid()}"
_ids = itertools.count(1)
GUEST_MAC = "52:54:00:5e:c0:01"
PEER_MAC = "52:54:00:5e:c0:02"


def uid(hint: str) -> str:
    return f"{TAG}-{next(_ids)}-{hint}"


def host_rules(dev: str) -> list[str]:
    """The iptables and ebtables rules libvirt's nwfilter made for tap ``dev``: its chains'
    rules (iptables FI-/FO-/HI-<dev>, ebtables libvirt-I-/O-<dev> and their sub-chains) and the
    jumps to them."""
    lines = []
    for cmd in (["iptables-save", "-t", "filter"], ["ip6tables-save", "-t", "filter"],
                ["ebtables-save"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        tool = cmd[0].split("-")[0]
        lines += [f"{tool}: {line}" for line in out.splitlines()
                  if line.startswith("-A") and re.search(rf"(-|\b){re.escape(dev)}\b", line)]
    return lines


def wait_for(predicate, timeout: float = 10.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def live_interface(dom) -> ET.Element:
    (iface,) = ET.fromstring(dom.XMLDesc(0)).findall("devices/interface")
    return iface


def _stale(name: str) -> bool:
    """A name of this module's tests made by a session whose process is gone (killed)."""
    m = re.search(r"xtnwf(\d+)-", name)
    return bool(m) and not os.path.exists(f"/proc/{m.group(1)}")


@pytest.fixture(scope="module", autouse=True)
def _remove_stale(libvirt_conn):
    """Filters and networks left by a killed session (its domains: conftest's clean-up)."""
    for net in libvirt_conn.listAllNetworks(0):
        if _stale(net.name()):
            try:
                if net.isActive():
                    net.destroy()
                net.undefine()
            except libvirt.libvirtError:
                pass
    stale = [n for n in nwf.names(libvirt_conn) if _stale(n)]
    for name in sorted(stale, key=lambda n: not n.startswith(nwf.VIF_PREFIX)):
        try:
            nwf.undefine(libvirt_conn, name)
        except libvirt.libvirtError:
            pass                             # still used by a guest of that session


@pytest.fixture
def isolated_network(libvirt_conn):
    """An isolated libvirt network (no <forward>, no <ip>): a bare bridge; removed after."""
    name = uid("net")
    net = libvirt_conn.networkDefineXML(f"<network><name>{name}</name></network>")
    try:
        net.create()
        yield name
    finally:
        try:
            if net.isActive():
                net.destroy()
        finally:
            net.undefine()


@pytest.fixture
def filters(libvirt_conn, make_domain):
    """Undefines the test's filters afterwards, once its domains are gone (libvirt refuses to
    undefine a filter a running interface uses)."""
    yield
    make_domain.cleanup()            # idempotent: make_domain's own clean-up finds them gone
    ours = [n for n in nwf.names(libvirt_conn) if TAG in n]
    for name in sorted(ours, key=lambda n: not n.startswith(nwf.VIF_PREFIX)):
        nwf.undefine(libvirt_conn, name)
    assert not [n for n in nwf.names(libvirt_conn) if TAG in n]


def test_group_rules_on_a_running_guest(libvirt_conn, tiny_guest, make_domain, filters,
                                        isolated_network, tmp_path):
    group, peer_group, vif = uid("g"), uid("peers"), uid("v")
    drop_5001 = {"direction": "in", "protocol": "tcp", "port_min": 5001, "port_max": 5001,
                 "action": "drop"}
    ssh_from_peers = {"direction": "in", "protocol": "tcp", "port_min": 22, "port_max": 22,
                      "group": peer_group}
    dns_to_peers = {"direction": "out", "protocol": "udp", "port_min": 53, "port_max": 53,
                    "group": peer_group}
    rules = [drop_5001, ssh_from_peers, dns_to_peers]
    peers = {peer_group: [PEER_MAC]}
    nwf.define(libvirt_conn, nwf.group_filter_xml(peer_group, [], {}))
    nwf.define(libvirt_conn, nwf.group_filter_xml(group, rules, peers))
    drop_in, drop_out = nwf.default_drops([rules, []])
    assert (drop_in, drop_out) == (True, True)
    nwf.define(libvirt_conn, nwf.vif_filter_xml(vif, [group, peer_group], drop_in, drop_out))

    iface = (f"<interface type='network'><mac address='{GUEST_MAC}'/>"
             f"<source network='{isolated_network}'/><model type='virtio'/></interface>")
    iface = nwf.with_filterref(iface, nwf.vif_filter_name(vif))
    name = make_domain.name("nwf")
    dom = make_domain(tiny_guest.domain_xml(name, tmp_path / "serial.log", extra_devices=iface))
    dom.create()
    dev = live_interface(dom).find("target").get("dev")
    assert dev and dev.startswith("vnet")
    assert live_interface(dom).find("filterref").get("filter") == nwf.vif_filter_name(vif)

    rules_now = wait_for(lambda: host_rules(dev), what=f"nwfilter rules for {dev}")
    text = "\n".join(rules_now)
    print(f"rules for {dev}:\n{text}")
    # "in" = to the guest: iptables chain FO-<dev> (out of the bridge, into the tap)
    assert re.search(rf"iptables: -A FO-{dev} -p tcp .*--dport 5001 .*-j DROP", text), text
    assert re.search(rf"iptables: -A FO-{dev} .*--mac-source {PEER_MAC} .*--dport 22 .*-j ACCEPT",
                     text, re.I), text
    # "out" to a peer group: the bridge layer matches the peer's MAC as destination
    assert re.search(rf"ebtables: -A libvirt-I-{dev} .*-d {PEER_MAC} .*--ip-proto udp "
                     rf".*--ip-dport 53 .*-j ACCEPT", text, re.I), text
    assert re.search(rf"ebtables: -A libvirt-I-{dev} .*--ip-proto udp .*--ip-dport 53 .*-j DROP",
                     text), text
    # always allowed first, default drops last (iptables keeps libvirt's priority order)
    fo = [r for r in rules_now if r.startswith(f"iptables: -A FO-{dev} ")]
    assert "ESTABLISHED" in fo[0] or "--sport 67" in fo[0], fo
    assert fo[-1] == f"iptables: -A FO-{dev} -j DROP", fo
    assert f"iptables: -A FI-{dev} -j DROP" in rules_now
    assert f"ip6tables: -A FO-{dev} -j DROP" in rules_now
    # each rule is made in its own direction only, stateful: no reverse (reply) rule beside it
    assert "--sport 5001" not in text and "--sport 22" not in text, text
    assert re.search(rf"iptables: -A FO-{dev} -p tcp .*--dport 22 -m conntrack --ctstate NEW "
                     rf"-j ACCEPT", text), text

    # a group filter in use by a running interface cannot be undefined
    with pytest.raises(libvirt.libvirtError):
        nwf.undefine(libvirt_conn, nwf.group_filter_name(group))

    # changing the group (a redefinition) changes the live rules, the domain untouched
    dom_xml = dom.XMLDesc(0)
    drop_5002 = dict(drop_5001, port_min=5002, port_max=5002)
    nwf.define(libvirt_conn, nwf.group_filter_xml(group, [drop_5002, ssh_from_peers], peers))
    changed = wait_for(lambda: (t := "\n".join(host_rules(dev))) and "5002" in t and t,
                       what="the redefined group's rules")
    print(f"after the redefinition:\n{changed}")
    assert re.search(rf"iptables: -A FO-{dev} -p tcp .*--dport 5002 .*-j DROP", changed), changed
    assert "5001" not in changed and "--ip-dport 53" not in changed, changed
    assert dom.XMLDesc(0) == dom_xml and dom.isActive()
    assert live_interface(dom).find("target").get("dev") == dev

    # removing the filterref from the running guest removes its rules
    cleared = nwf.with_filterref(ET.tostring(live_interface(dom), encoding="unicode"), None)
    dom.updateDeviceFlags(cleared, libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    wait_for(lambda: not host_rules(dev), what=f"{dev}'s rules to go")
    assert live_interface(dom).find("filterref") is None
    inactive = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert inactive.find("devices/interface/filterref") is None
    # and with no interface using them, the filters can go
    nwf.undefine(libvirt_conn, nwf.vif_filter_name(vif))
    nwf.undefine(libvirt_conn, nwf.group_filter_name(group))
    nwf.undefine(libvirt_conn, nwf.group_filter_name(peer_group))


def test_filterref_added_to_a_running_guest(libvirt_conn, tiny_guest, make_domain, filters,
                                            isolated_network, tmp_path):
    """A guest started without a filter gets one with updateDeviceFlags (the caller's path for
    a VIF put into a group while it runs); an allow-list "in" leaves "out" open."""
    group, vif = uid("g"), uid("v")
    rules = [{"direction": "in", "protocol": "udp", "port_min": 6000, "port_max": 6010,
              "cidr": "10.20.0.0/16", "action": "drop"},
             {"direction": "in", "protocol": "icmp"}]
    assert nwf.default_drops([rules]) == (True, False)
    nwf.define(libvirt_conn, nwf.group_filter_xml(group, rules, {}))
    nwf.define(libvirt_conn, nwf.vif_filter_xml(vif, [group], *nwf.default_drops([rules])))
    iface = (f"<interface type='network'><mac address='{GUEST_MAC}'/>"
             f"<source network='{isolated_network}'/><model type='virtio'/></interface>")
    dom = make_domain(tiny_guest.domain_xml(make_domain.name("nwf"), tmp_path / "serial.log",
                                            extra_devices=iface))
    dom.create()
    dev = live_interface(dom).find("target").get("dev")
    assert not host_rules(dev)

    live = ET.tostring(live_interface(dom), encoding="unicode")
    dom.updateDeviceFlags(nwf.with_filterref(live, nwf.vif_filter_name(vif)),
                          libvirt.VIR_DOMAIN_AFFECT_LIVE)
    text = "\n".join(wait_for(lambda: host_rules(dev), what=f"rules for {dev}"))
    print(f"rules for {dev}:\n{text}")
    assert re.search(rf"iptables: -A FO-{dev} -s 10\.20\.0\.0/16 -p udp .*--dport 6000:6010 "
                     rf".*-j DROP", text), text
    assert f"iptables: -A FO-{dev} -p icmp -m conntrack --ctstate NEW -j ACCEPT" in text, text
    assert f"iptables: -A FO-{dev} -j DROP" in text                  # "in": an allow-list
    assert not re.search(rf"iptables: -A (FI|HI)-{dev} .*-j DROP", text), text   # "out": open
