"""xenapi.backend.nwfilter: rule validation, the nwfilter XML builders (every document checked
against libvirt's own schema with virt-xml-validate), and define/undefine on the real libvirtd
(qemu:///system, whose nwfilter driver parses and keeps the filters)."""
from __future__ import annotations

import itertools
import os
import subprocess
import xml.etree.ElementTree as ET

import libvirt
import pytest

from xenapi.backend import nwfilter as nwf

URI = os.environ.get("XENAPI_E2E_LIBVIRT_URI", "qemu:///system")
TAG = f"xtnwf{os.getpid()}"          # names of this session's filters: xenapi-*-xtnwf<pid>-...
_ids = itertools.count(1)

ANY = "NONE"            # libvirt: any state, this direction only
MAC1, MAC2, MAC3 = "52:54:00:aa:00:01", "52:54:00:aa:00:02", "52:54:00:aa:00:03"


def uid(hint: str) -> str:
    return f"{TAG}-{next(_ids)}-{hint}"


def schema_valid(xml: str, tmp_path) -> None:
    path = tmp_path / f"f{next(_ids)}.xml"
    path.write_text(xml)
    r = subprocess.run(["virt-xml-validate", str(path), "nwfilter"], capture_output=True, text=True)
    assert r.returncode == 0, f"{xml}\n{r.stdout}{r.stderr}"


def rules_of(xml: str) -> list[tuple[str, str, int, str, dict]]:
    """(action, direction, priority, protocol element, its attributes) of each rule."""
    out = []
    for rule in ET.fromstring(xml).findall("rule"):
        (el,) = list(rule)
        out.append((rule.get("action"), rule.get("direction"), int(rule.get("priority")),
                    el.tag, dict(el.attrib)))
    return out


# --- validation ------------------------------------------------------------------------------

def test_validate_rule_fills_defaults_and_normalises():
    assert nwf.validate_rule({"direction": "IN", "protocol": "TCP"}) == {
        "direction": "in", "protocol": "tcp", "port_min": 1, "port_max": 65535, "cidr": "",
        "group": "", "action": "accept"}
    assert nwf.validate_rule({"direction": "out", "protocol": "udp", "port_min": "53",
                              "port_max": 53, "cidr": "10.1.2.3/8", "action": "drop"}) == {
        "direction": "out", "protocol": "udp", "port_min": 53, "port_max": 53,
        "cidr": "10.0.0.0/8", "group": "", "action": "drop"}
    icmp = nwf.validate_rule({"direction": "in", "protocol": "icmp", "group": "g-1",
                              "port_min": 0, "port_max": None})
    assert (icmp["port_min"], icmp["port_max"], icmp["group"]) == (0, 0, "g-1")


@pytest.mark.parametrize("rule, field, value", [
    ({"direction": "in", "protocol": "gre"}, "protocol", "gre"),
    ({"direction": "in"}, "protocol", None),
    ({"direction": "sideways", "protocol": "tcp"}, "direction", "sideways"),
    ({"protocol": "tcp"}, "direction", None),
    ({"direction": "in", "protocol": "tcp", "action": "reject"}, "action", "reject"),
    ({"direction": "in", "protocol": "tcp", "port_min": 0}, "port_min", 0),
    ({"direction": "in", "protocol": "tcp", "port_max": 65536}, "port_max", 65536),
    ({"direction": "in", "protocol": "tcp", "port_min": "http"}, "port_min", "http"),
    ({"direction": "in", "protocol": "udp", "port_min": True}, "port_min", True),
    ({"direction": "in", "protocol": "tcp", "port_min": 80, "port_max": 79}, "port_max", 79),
    ({"direction": "in", "protocol": "icmp", "port_min": 8}, "port_min", 8),
    ({"direction": "in", "protocol": "all", "port_max": 80}, "port_max", 80),
    ({"direction": "in", "protocol": "tcp", "cidr": "10.0.0.0/33"}, "cidr", "10.0.0.0/33"),
    ({"direction": "in", "protocol": "tcp", "cidr": "10.0.0/8"}, "cidr", "10.0.0/8"),
    ({"direction": "in", "protocol": "tcp", "cidr": "10.0.0.1"}, "cidr", "10.0.0.1"),
    ({"direction": "in", "protocol": "tcp", "cidr": "fe80::/64"}, "cidr", "fe80::/64"),
    ({"direction": "in", "protocol": "tcp", "cidr": "10.0.0.0/8", "group": "g1"}, "group", "g1"),
    ({"direction": "in", "protocol": "tcp", "group": "bad group'"}, "group", "bad group'"),
    ({"direction": "in", "protocol": "tcp", "ports": 22}, "ports", 22),
])
def test_validate_rule_rejects_bad_input(rule, field, value):
    with pytest.raises(nwf.RuleError) as e:
        nwf.validate_rule(rule)
    assert isinstance(e.value, ValueError)
    assert (e.value.field, e.value.value) == (field, value)
    assert field in str(e.value) and repr(value) in str(e.value)


def test_unknown_peer_group_is_refused():
    rules = [{"direction": "in", "protocol": "tcp", "group": "no-such-group"}]
    with pytest.raises(nwf.UnknownGroup, match="group 'no-such-group': no such security group"):
        nwf.group_filter_xml("g1", rules, {"other": [MAC1]})
    assert issubclass(nwf.UnknownGroup, nwf.RuleError)


def test_bad_names_and_macs_are_refused():
    with pytest.raises(nwf.RuleError, match="group_uuid"):
        nwf.group_filter_name("a/b")
    with pytest.raises(nwf.RuleError, match="vif_uuid"):
        nwf.vif_filter_name("")
    with pytest.raises(nwf.RuleError, match="mac 'zz:00:00:00:00:00'"):
        nwf.group_filter_xml("g1", [{"direction": "in", "protocol": "all", "group": "p"}],
                             {"p": ["zz:00:00:00:00:00"]})


def test_default_drops():
    accept_in = {"direction": "in", "protocol": "tcp", "port_min": 22, "port_max": 22}
    drop_out = {"direction": "out", "protocol": "all", "action": "drop"}
    accept_out = {"direction": "out", "protocol": "icmp"}
    assert nwf.default_drops([]) == (False, False)
    assert nwf.default_drops([[drop_out]]) == (False, False)
    assert nwf.default_drops([[drop_out], [accept_in]]) == (True, False)
    assert nwf.default_drops([[accept_in, accept_out]]) == (True, True)
    with pytest.raises(nwf.RuleError, match="direction"):
        nwf.default_drops([[{"direction": "up", "protocol": "tcp"}]])


# --- builders --------------------------------------------------------------------------------

def test_group_filter_rules_in_order(tmp_path):
    rules = [
        {"direction": "in", "protocol": "tcp", "port_min": 5001, "port_max": 5001, "action": "drop"},
        {"direction": "in", "protocol": "tcp", "port_min": 22, "port_max": 22, "cidr": "10.9.0.0/16"},
        {"direction": "out", "protocol": "udp", "port_min": 53, "port_max": 53, "cidr": "192.0.2.1/32"},
        {"direction": "in", "protocol": "icmp"},
        {"direction": "out", "protocol": "all", "action": "drop"},
    ]
    xml = nwf.group_filter_xml("g-1", rules, {})
    schema_valid(xml, tmp_path)
    root = ET.fromstring(xml)
    assert root.get("name") == nwf.group_filter_name("g-1") == "xenapi-sg-g-1"
    assert rules_of(xml) == [
        ("drop", "in", -800, "tcp", {"state": ANY, "dstportstart": "5001", "dstportend": "5001"}),
        ("accept", "in", -799, "tcp", {"state": "NEW", "srcipaddr": "10.9.0.0", "srcipmask": "16",
                                       "dstportstart": "22", "dstportend": "22"}),
        ("accept", "out", -798, "udp", {"state": "NEW", "dstipaddr": "192.0.2.1",
                                        "dstipmask": "32", "dstportstart": "53",
                                        "dstportend": "53"}),
        ("accept", "in", -797, "icmp", {"state": "NEW"}),
        ("drop", "out", -796, "all", {"state": ANY}),
    ]
    # the UUID is the name's, so a redefinition of the same name always matches it
    assert root.findtext("uuid") == ET.fromstring(nwf.group_filter_xml("g-1", [], {})).findtext("uuid")
    assert root.findtext("uuid") != ET.fromstring(nwf.group_filter_xml("g-2", [], {})).findtext("uuid")


def test_group_filter_peer_rules_match_macs(tmp_path):
    rules = [
        {"direction": "in", "protocol": "tcp", "port_min": 80, "port_max": 81, "group": "web"},
        {"direction": "out", "protocol": "udp", "port_min": 53, "port_max": 53, "group": "dns"},
        {"direction": "out", "protocol": "all", "group": "web", "action": "drop"},
        {"direction": "in", "protocol": "icmp", "group": "empty"},
    ]
    peers = {"web": [MAC2, MAC1.upper()], "dns": [MAC3], "empty": []}
    xml = nwf.group_filter_xml("g-peers", rules, peers)
    schema_valid(xml, tmp_path)
    assert rules_of(xml) == [
        # in: the IP layer, by source MAC (sorted, lower-case)
        ("accept", "in", -800, "tcp", {"srcmacaddr": MAC1, "state": "NEW",
                                       "dstportstart": "80", "dstportend": "81"}),
        ("accept", "in", -800, "tcp", {"srcmacaddr": MAC2, "state": "NEW",
                                       "dstportstart": "80", "dstportend": "81"}),
        # out accept: the bridge layer lets frames to the peers go, the IP layer accepts them
        ("accept", "out", -799, "ip", {"dstmacaddr": MAC3, "protocol": "udp",
                                       "dstportstart": "53", "dstportend": "53"}),
        ("accept", "out", -799, "udp", {"state": "NEW", "dstportstart": "53", "dstportend": "53"}),
        # out drop: the bridge layer, by destination MAC
        ("drop", "out", -798, "ip", {"dstmacaddr": MAC1}),
        ("drop", "out", -798, "ip", {"dstmacaddr": MAC2}),
        # the empty group's rule matches nothing; last, the peers-only drop of the out accept
        ("drop", "out", nwf.PRIO_OUT_PEERS_ONLY, "ip", {"protocol": "udp", "dstportstart": "53",
                                                         "dstportend": "53"}),
    ]


def test_vif_filter(tmp_path):
    xml = nwf.vif_filter_xml("v-1", ["g-a", "g-b", "g-a"], True, False)
    schema_valid(xml, tmp_path)
    root = ET.fromstring(xml)
    assert root.get("name") == nwf.vif_filter_name("v-1") == "xenapi-vif-v-1"
    assert [f.get("filter") for f in root.findall("filterref")] == [
        "allow-arp", "xenapi-sg-g-a", "xenapi-sg-g-b"]
    rules = rules_of(xml)
    assert ("accept", "out", nwf.PRIO_DHCP, "udp",
            {"state": ANY, "srcportstart": "68", "dstportstart": "67"}) in rules
    assert ("accept", "in", nwf.PRIO_DHCP, "udp",
            {"state": ANY, "srcportstart": "67", "dstportstart": "68"}) in rules
    for d in ("in", "out"):
        assert ("accept", d, nwf.PRIO_ESTABLISHED, "all", {"state": "ESTABLISHED,RELATED"}) in rules
    drops = [r for r in rules if r[0] == "drop"]
    assert drops == [("drop", "in", 1000, "all", {"state": ANY}),
                     ("drop", "in", 1000, "all-ipv6", {})]
    # every IP-layer rule names its states (libvirt then adds no reverse rule), but IPv6's
    assert all("state" in r[4] for r in rules if r[3] == "udp" or r[3] == "all")
    assert max(r[2] for r in rules) == 1000 == nwf.PRIO_DEFAULT_DROP      # the drops come last

    open_xml = nwf.vif_filter_xml("v-2", [], False, False)
    schema_valid(open_xml, tmp_path)
    assert not [r for r in rules_of(open_xml) if r[0] == "drop"]
    both = nwf.vif_filter_xml("v-3", ["g"], True, True)
    schema_valid(both, tmp_path)
    assert {(r[1], r[3]) for r in rules_of(both) if r[0] == "drop"} == {
        ("in", "all"), ("in", "all-ipv6"), ("out", "all"), ("out", "all-ipv6")}


def test_with_filterref():
    iface = ("<interface type='network'><mac address='52:54:00:aa:00:01'/>"
             "<source network='n'/><filterref filter='old'><parameter name='IP' value='1.2.3.4'/>"
             "</filterref><model type='virtio'/></interface>")
    set_ = ET.fromstring(nwf.with_filterref(iface, "xenapi-vif-x"))
    assert [f.attrib for f in set_.findall("filterref")] == [{"filter": "xenapi-vif-x"}]
    assert set_.find("filterref/parameter") is None
    assert set_.find("mac").get("address") == MAC1 and set_.find("model") is not None
    cleared = ET.fromstring(nwf.with_filterref(iface, None))
    assert cleared.find("filterref") is None and cleared.find("source").get("network") == "n"
    with pytest.raises(nwf.RuleError, match="interface_xml"):
        nwf.with_filterref("<disk/>", "x")


# --- the real libvirtd -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def conn():
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        c = libvirt.open(URI)
    except libvirt.libvirtError as e:
        pytest.fail(f"{URI} does not answer ({e}): run scripts/libvirtd.sh start", pytrace=False)
    yield c
    c.close()


@pytest.fixture
def cleanup(conn):
    """Undefines, afterwards, whatever filter of this session's test names is left (the VIF
    filters first: a group filter cannot go while a VIF filter references it)."""
    yield
    left = nwf.names(conn, nwf.PREFIX)
    ours = [n for n in left if TAG in n]
    for name in sorted(ours, key=lambda n: not n.startswith(nwf.VIF_PREFIX)):
        nwf.undefine(conn, name)
    assert not {n for n in nwf.names(conn) if TAG in n}


def test_define_redefine_undefine(conn, cleanup, tmp_path):
    group, peer, vif = uid("g"), uid("p"), uid("v")
    rules = [{"direction": "in", "protocol": "tcp", "port_min": 5001, "port_max": 5001,
              "action": "drop"},
             {"direction": "out", "protocol": "tcp", "port_min": 22, "port_max": 22, "group": peer}]
    gxml = nwf.group_filter_xml(group, rules, {peer: [MAC1]})
    pxml = nwf.group_filter_xml(peer, [], {})
    vxml = nwf.vif_filter_xml(vif, [group, peer], *nwf.default_drops([rules, []]))
    for xml in (gxml, pxml, vxml):
        schema_valid(xml, tmp_path)
        nwf.define(conn, xml)
    gname, vname = nwf.group_filter_name(group), nwf.vif_filter_name(vif)
    assert {gname, nwf.group_filter_name(peer), vname} <= nwf.names(conn)
    assert gname in nwf.names(conn, nwf.GROUP_PREFIX) and vname not in nwf.names(conn, nwf.GROUP_PREFIX)

    # libvirt kept what we gave it: the same rules, the name's UUID
    kept = conn.nwfilterLookupByName(gname)
    assert kept.UUIDString() == ET.fromstring(gxml).findtext("uuid")
    assert [(a, d, p, el, attrs) for a, d, p, el, attrs in rules_of(kept.XMLDesc(0))] == rules_of(gxml)

    # a redefinition with other rules replaces them, same UUID
    rules2 = [{"direction": "in", "protocol": "udp", "port_min": 5002, "port_max": 5003}]
    nwf.define(conn, nwf.group_filter_xml(group, rules2, {}))
    again = conn.nwfilterLookupByName(gname)
    assert again.UUIDString() == kept.UUIDString()
    assert rules_of(again.XMLDesc(0)) == [
        ("accept", "in", -800, "udp", {"state": "NEW", "dstportstart": "5002",
                                       "dstportend": "5003"})]

    # no running interface uses them: libvirt lets even a referenced group filter go (a
    # running interface's filters it refuses: tests/e2e/test_nwfilter_qemu.py)
    nwf.undefine(conn, gname)
    nwf.undefine(conn, vname)
    nwf.undefine(conn, gname)                    # absent: no error
    assert gname not in nwf.names(conn) and vname not in nwf.names(conn)


def test_libvirt_refuses_nothing_we_build(conn, cleanup):
    """Every shape the builders make is accepted by the nwfilter driver itself."""
    peer = uid("p")
    rules = [{"direction": d, "protocol": p, "action": a, **extra}
             for d in ("in", "out") for a in ("accept", "drop")
             for p, extra in (("tcp", {"port_min": 1, "port_max": 1024}), ("udp", {}),
                              ("icmp", {"cidr": "198.51.100.0/24"}), ("all", {"group": peer}))]
    group = uid("g")
    nwf.define(conn, nwf.group_filter_xml(peer, [], {}))
    nwf.define(conn, nwf.group_filter_xml(group, rules, {peer: [MAC1, MAC2]}))
    vif = uid("v")
    nwf.define(conn, nwf.vif_filter_xml(vif, [group, peer], *nwf.default_drops([rules])))
    assert {nwf.group_filter_name(group), nwf.vif_filter_name(vif)} <= nwf.names(conn)
