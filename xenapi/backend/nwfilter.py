"""Security groups as libvirt nwfilters: rules to XML, and defining filters on a libvirt connection.

A security group is a named, ordered list of rules applied to the VIFs (libvirt ``<interface>``
elements) that belong to it.  Each rule is a dict::

    {"direction": "in" | "out",          # "in": traffic to the guest, "out": from the guest
     "protocol": "tcp" | "udp" | "icmp" | "all",
     "port_min": int, "port_max": int,   # tcp/udp only: destination ports, 1..65535
     "cidr": "a.b.c.d/n" or "",          # the peer's address: source ("in") / destination ("out")
     "group": "<peer group uuid>" or "", # the peer is a VIF of that group (exclusive with cidr)
     "action": "accept" | "drop"}

Semantics (CloudStack-like, on a flat layer-2 network):

- ARP and DHCP (client side: udp 68->67 out, 67->68 in) always pass, as does the return traffic of
  established connections and related traffic (conntrack ``ESTABLISHED,RELATED``), in both
  directions, before any rule is looked at.
- Rules are stateful: an ``accept`` rule accepts new connections (conntrack ``NEW``), whose
  further packets and replies pass as established; a ``drop`` rule drops whatever reaches it.
- A group's rules are matched in order (a rule's position is its nwfilter priority, so rule i of
  every group of a VIF sits at the same place; rules of different groups at the same position
  are in no defined order among themselves).
- If the VIF's groups together have any ``accept`` rule in a direction, traffic in that direction
  that no rule accepted is dropped (an allow-list); with only ``drop`` rules (or none) in a
  direction, everything else passes.  Rules speak IPv4 only: once either direction is an
  allow-list, all IPv6 is dropped both ways (libvirt's schema has no connection state for IPv6
  rules, so an IPv6 drop is stateless and libvirt adds its reverse).
- A ``group`` rule names its peers by the MAC addresses of that group's VIFs (guest IPs are not
  known), given by the caller as ``peer_macs``.  "in": an IP-layer (iptables, stateful) rule per
  peer MAC matching the source MAC.  "out": iptables cannot match a destination MAC, so it is
  matched on the bridge (ebtables, no connection tracking), which sees every frame before the
  IP layer: a ``drop`` rule drops the frames of that protocol/ports to the peers' MACs (whatever
  IP-layer rule comes first); an ``accept`` rule lets those frames through the bridge layer and
  accepts that protocol/ports at the IP layer, and the bridge layer drops the frames of that
  protocol/ports to any other MAC, unless another group ``accept`` rule of the VIF lets them go
  to that MAC.  Being stateless, that last drop also hits replies the guest sends from a port
  in the range to a non-peer, which matters only for wide port ranges.
- A peer group without VIFs matches nothing (its rules still make the direction an allow-list).

Filters: one per group (``group_filter_name``, ``xenapi-sg-<uuid>``) holding its rules, and one
per VIF (``vif_filter_name``, ``xenapi-vif-<uuid>``), the one the ``<interface>`` references with
``<filterref>``: it includes the always-allowed parts, the VIF's group filters and the default
drops.  Redefining a filter re-instantiates it at once on every running interface that uses it
(directly or through another filter), so changing a group's rules changes every running VIF of
the group; the domain definitions are not touched.

Every filter gets a UUID derived from its name, so a redefinition never clashes with the UUID
libvirt holds for that name.  The XML builders are pure; ``define``, ``undefine`` and ``names``
take a raw ``libvirt.virConnect`` and let ``libvirt.libvirtError`` through (the caller
translates).  Bad input raises ``RuleError`` (a ``ValueError``) naming the field and value;
``UnknownGroup`` (a ``RuleError``) for a peer group that does not exist.
"""
from __future__ import annotations

import ipaddress
import re
import uuid as uuidlib
import xml.etree.ElementTree as ET
from typing import Iterable, Mapping, Sequence
from xml.sax.saxutils import quoteattr

import libvirt

PREFIX = "xenapi-"
GROUP_PREFIX = PREFIX + "sg-"
VIF_PREFIX = PREFIX + "vif-"

DIRECTIONS = ("in", "out")
PROTOCOLS = ("tcp", "udp", "icmp", "all")
ACTIONS = ("accept", "drop")
PORT_PROTOCOLS = ("tcp", "udp")

# nwfilter priorities (-1000..1000; lower first).  Rule i of a group sits at RULES_FIRST + i.
PRIO_DHCP = -950
PRIO_ESTABLISHED = -900
RULES_FIRST = -800
MAX_RULES = 1700                  # RULES_FIRST + MAX_RULES - 1 < PRIO_OUT_PEERS_ONLY
PRIO_OUT_PEERS_ONLY = 950         # bridge-layer drop of an "out" group-accept's traffic to non-peers
PRIO_DEFAULT_DROP = 1000

# Every IP-layer rule names its connection states: libvirt then makes exactly that rule, in its
# direction.  Without ``state`` it adds the reverse rule too (the reply's ports and addresses):
# with statematch='false' a stateless one (an "in" drop of tcp/5001 would also drop the guest's
# packets from port 5001, an "in" default drop all the guest sends), else NEW,ESTABLISHED one way
# and ESTABLISHED back (INVALID packets then escape a drop).  state='NONE' is libvirt's "any
# state, this direction only" (no conntrack match at all).  Established/related traffic is
# accepted first, so an accept rule only needs NEW.
STATE_NEW = "NEW"
STATE_ANY = "NONE"
STATE_RETURN = "ESTABLISHED,RELATED"

_NAMESPACE = uuidlib.UUID("6f0d7f3e-4b43-5a52-9c1e-8f3b2f6a1d10")   # filter UUIDs from names
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_RULE_KEYS = {"direction", "protocol", "port_min", "port_max", "cidr", "group", "action"}


class RuleError(ValueError):
    """Bad security-group input: ``field`` is the offending field, ``value`` its value."""

    def __init__(self, field: str, value, reason: str):
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {field} {value!r}: {reason}")


class UnknownGroup(RuleError):
    """A rule names a peer group that does not exist (not among the caller's ``peer_macs``)."""

    def __init__(self, value):
        super().__init__("group", value, "no such security group")


# --- validation ------------------------------------------------------------------------------

def _choice(rule: Mapping, field: str, choices: Sequence[str], default: str | None = None) -> str:
    value = rule.get(field, default)
    if value is None:
        raise RuleError(field, value, f"required, one of {', '.join(choices)}")
    if not isinstance(value, str) or value.lower() not in choices:
        raise RuleError(field, value, f"must be one of {', '.join(choices)}")
    return value.lower()


def _port(rule: Mapping, field: str, default: int) -> int:
    value = rule.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise RuleError(field, value, "must be an integer in 1..65535")
    try:
        port = int(value)
    except ValueError:
        raise RuleError(field, value, "must be an integer in 1..65535") from None
    if not 1 <= port <= 65535:
        raise RuleError(field, value, "must be in 1..65535")
    return port


def _identifier(field: str, value) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise RuleError(field, value, "must be a UUID (letters, digits, '-', '_', '.', ':')")
    return value


def _mac(value) -> str:
    if not isinstance(value, str) or not _MAC_RE.match(value):
        raise RuleError("mac", value, "must be a MAC address aa:bb:cc:dd:ee:ff")
    return value.lower()


def validate_rule(rule: Mapping) -> dict:
    """The rule normalised (lower-case names, canonical CIDR) with defaults filled in: action
    ``accept``, ports 1..65535 for tcp/udp (0 and 0 for icmp/all, which take no ports), cidr and
    group "".  Raises ``RuleError`` naming the bad field and value."""
    if not isinstance(rule, Mapping):
        raise RuleError("rule", rule, "must be a mapping")
    unknown = sorted(set(rule) - _RULE_KEYS)
    if unknown:
        raise RuleError(unknown[0], rule[unknown[0]], "unknown field")
    direction = _choice(rule, "direction", DIRECTIONS)
    protocol = _choice(rule, "protocol", PROTOCOLS)
    action = _choice(rule, "action", ACTIONS, "accept")
    if protocol in PORT_PROTOCOLS:
        port_min = _port(rule, "port_min", 1)
        port_max = _port(rule, "port_max", 65535)
        if port_min > port_max:
            raise RuleError("port_max", rule.get("port_max"),
                            f"must not be below port_min {port_min}")
    else:
        for field in ("port_min", "port_max"):
            if rule.get(field) not in (None, 0):
                raise RuleError(field, rule[field], f"protocol {protocol} takes no ports")
        port_min = port_max = 0
    cidr = rule.get("cidr") or ""
    if cidr:
        if not isinstance(cidr, str) or "/" not in cidr:
            raise RuleError("cidr", cidr, "must be an IPv4 network a.b.c.d/n")
        try:
            cidr = str(ipaddress.IPv4Network(cidr, strict=False))
        except ValueError as e:
            raise RuleError("cidr", cidr, f"must be an IPv4 network a.b.c.d/n ({e})") from None
    group = rule.get("group") or ""
    if group:
        _identifier("group", group)
        if cidr:
            raise RuleError("group", group, "a rule names either a cidr or a group, not both")
    return {"direction": direction, "protocol": protocol, "port_min": port_min,
            "port_max": port_max, "cidr": cidr, "group": group, "action": action}


def default_drops(groups_rules: Iterable[Iterable[Mapping]]) -> tuple[bool, bool]:
    """(drop unmatched "in", drop unmatched "out"): a direction is an allow-list as soon as any
    of the VIF's groups has an ``accept`` rule in it."""
    drop = {"in": False, "out": False}
    for rules in groups_rules:
        for rule in rules:
            r = validate_rule(rule)
            if r["action"] == "accept":
                drop[r["direction"]] = True
    return drop["in"], drop["out"]


# --- names -----------------------------------------------------------------------------------

def group_filter_name(group_uuid: str) -> str:
    return GROUP_PREFIX + _identifier("group_uuid", group_uuid)


def vif_filter_name(vif_uuid: str) -> str:
    return VIF_PREFIX + _identifier("vif_uuid", vif_uuid)


def _filter_uuid(name: str) -> str:
    return str(uuidlib.uuid5(_NAMESPACE, name))


# --- XML builders ----------------------------------------------------------------------------

def _attrs(**attrs) -> str:
    return "".join(f" {k.replace('_', '-')}={quoteattr(str(v))}"
                   for k, v in attrs.items() if v is not None)


def _rule(action: str, direction: str, priority: int, element: str, *,
          statematch: bool = True, **attrs) -> str:
    sm = "" if statematch else " statematch='false'"
    return (f"  <rule action='{action}' direction='{direction}' priority='{priority}'{sm}>\n"
            f"    <{element}{_attrs(**attrs)}/>\n  </rule>\n")


def _ip_rule(r: dict, priority: int, srcmac: str | None = None) -> str:
    """The IP-layer (iptables) rule of r, optionally limited to frames from one MAC."""
    attrs: dict = {"srcmacaddr": srcmac, "state": STATE_NEW if r["action"] == "accept" else STATE_ANY}
    if r["cidr"]:
        net = ipaddress.IPv4Network(r["cidr"])
        side = "src" if r["direction"] == "in" else "dst"
        attrs[f"{side}ipaddr"] = str(net.network_address)
        attrs[f"{side}ipmask"] = str(net.prefixlen)
    if r["protocol"] in PORT_PROTOCOLS:
        attrs["dstportstart"] = r["port_min"]
        attrs["dstportend"] = r["port_max"]
    return _rule(r["action"], r["direction"], priority, r["protocol"], **attrs)


def _bridge_rule(r: dict, action: str, priority: int, dstmac: str | None) -> str:
    """A bridge-layer (ebtables) rule on IPv4 frames from the guest of r's protocol/ports."""
    attrs: dict = {"dstmacaddr": dstmac}
    if r["protocol"] != "all":
        attrs["protocol"] = r["protocol"]
    if r["protocol"] in PORT_PROTOCOLS:
        attrs["dstportstart"] = r["port_min"]
        attrs["dstportend"] = r["port_max"]
    return _rule(action, "out", priority, "ip", **attrs)


def group_filter_xml(group_uuid: str, rules: Sequence[Mapping],
                     peer_macs: Mapping[str, Sequence[str]]) -> str:
    """The nwfilter of one group: its rules, in order, as nwfilter rules (see the module
    docstring).  ``peer_macs`` maps each group a rule names to its VIFs' MACs; a rule naming a
    group missing from it raises ``UnknownGroup``."""
    name = group_filter_name(group_uuid)
    rules = list(rules)
    if len(rules) > MAX_RULES:
        raise RuleError("rules", len(rules), f"a group holds at most {MAX_RULES} rules")
    body = []
    peers_only = []
    for i, rule in enumerate(rules):
        r = validate_rule(rule)
        priority = RULES_FIRST + i
        if not r["group"]:
            body.append(_ip_rule(r, priority))
            continue
        if r["group"] not in peer_macs:
            raise UnknownGroup(r["group"])
        macs = sorted({_mac(m) for m in peer_macs[r["group"]]})
        if r["direction"] == "in":
            body.extend(_ip_rule(r, priority, srcmac=m) for m in macs)
        else:
            body.extend(_bridge_rule(r, r["action"], priority, m) for m in macs)
            if r["action"] == "accept":
                body.append(_ip_rule(r, priority))
                peers_only.append(_bridge_rule(r, "drop", PRIO_OUT_PEERS_ONLY, None))
    return (f"<filter name={quoteattr(name)} chain='root'>\n"
            f"  <uuid>{_filter_uuid(name)}</uuid>\n" + "".join(body) + "".join(peers_only)
            + "</filter>\n")


def vif_filter_xml(vif_uuid: str, group_uuids: Sequence[str], default_drop_in: bool,
                   default_drop_out: bool) -> str:
    """The filter a VIF's ``<interface>`` references: ARP, DHCP and established/related traffic
    allowed first, then the filters of its groups, then the default drops (see
    ``default_drops``), last by priority."""
    name = vif_filter_name(vif_uuid)
    parts = ["  <filterref filter='allow-arp'/>\n",
             _rule("accept", "out", PRIO_DHCP, "udp", state=STATE_ANY, srcportstart=68,
                   dstportstart=67),
             _rule("accept", "in", PRIO_DHCP, "udp", state=STATE_ANY, srcportstart=67,
                   dstportstart=68)]
    for direction in DIRECTIONS:
        parts.append(_rule("accept", direction, PRIO_ESTABLISHED, "all", state=STATE_RETURN))
    seen = set()
    for group in group_uuids:
        filter_name = group_filter_name(group)
        if filter_name not in seen:
            seen.add(filter_name)
            parts.append(f"  <filterref filter={quoteattr(filter_name)}/>\n")
    for direction, drop in (("in", default_drop_in), ("out", default_drop_out)):
        if drop:
            parts.append(_rule("drop", direction, PRIO_DEFAULT_DROP, "all", state=STATE_ANY))
            parts.append(_rule("drop", direction, PRIO_DEFAULT_DROP, "all-ipv6", statematch=False))
    return (f"<filter name={quoteattr(name)} chain='root'>\n"
            f"  <uuid>{_filter_uuid(name)}</uuid>\n" + "".join(parts) + "</filter>\n")


def with_filterref(interface_xml: str, filter_name: str | None) -> str:
    """The ``<interface>`` element with its ``<filterref>`` set to ``filter_name`` (any former
    one, with its parameters, replaced) or removed (``None``)."""
    iface = ET.fromstring(interface_xml)
    if iface.tag != "interface":
        raise RuleError("interface_xml", iface.tag, "must be an <interface> element")
    for old in iface.findall("filterref"):
        iface.remove(old)
    if filter_name is not None:
        ref = ET.SubElement(iface, "filterref", {"filter": filter_name})
        ref.tail = "\n"
    return ET.tostring(iface, encoding="unicode")


# --- libvirt ---------------------------------------------------------------------------------

def define(conn: libvirt.virConnect, xml: str) -> None:
    """Define (or redefine) the filter; running interfaces using it are updated at once."""
    conn.nwfilterDefineXML(xml)


def undefine(conn: libvirt.virConnect, name: str) -> None:
    """Undefine the filter; no error if there is none of that name.  libvirt refuses (raises)
    while an interface or another filter still uses it."""
    try:
        conn.nwfilterLookupByName(name).undefine()
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_NWFILTER:
            raise


def names(conn: libvirt.virConnect, prefix: str = PREFIX) -> set[str]:
    """The names of the defined filters starting with ``prefix``."""
    return {f.name() for f in conn.listAllNWFilters(0) if f.name().startswith(prefix)}
