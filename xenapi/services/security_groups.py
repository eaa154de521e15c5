"""Security groups: their rules as text, their VIFs, and the libvirt nwfilters that enforce them.

Rule grammar (whitespace-separated words, case-insensitive; docs/networks.md, "Security groups")::

    rule      = direction protocol [ports] [peer] [action]
    direction = "in" | "out"              (in: to the guest, out: from the guest)
    protocol  = "tcp" | "udp" | "icmp" | "all"
    ports     = N | N-M                   (tcp/udp only, destination ports 1..65535; default 1-65535)
    peer      = "cidr=" a.b.c.d/n         (the remote address: source for in, destination for out)
              | "group=" <security_group uuid>   (the remote is a VIF of that group, by MAC)
    action    = "accept" | "drop"         (default accept)

After the protocol the words may come in any order, each at most once.  A group keeps each rule
in its canonical form: every part spelt out, in the order above, ports as N-M, the CIDR's network
address (``in tcp 22-22 cidr=10.0.0.0/8 accept``, ``out all accept``).  ``rules`` is a set: a
group's drop rules are matched before its accept rules (a drop wins inside a group), each kind
in the canonical text's order.  The rest of the semantics (stateful accepts, allow-list once a
direction has an accept, ARP/DHCP always allowed) is xenapi/backend/nwfilter.py's.

Filters: a group's filter (``xenapi-sg-<uuid>``) is defined on every live host that has VIFs of
the group, a VIF's filter (``xenapi-vif-<uuid>``) on its VM's host, and the VIF's interface
references it (``Networks.set_vif_filter``: the persistent definition and the running guest).
A change defines group filters first (the group's and those of the groups naming it as peer,
whose MAC lists change with its members), then the VIF filters and references, then undefines
what is no longer used (a VIF leaving its last group loses its reference, then its filter; a group
filter goes from a host once no VIF there is in it).  When a step fails the store goes back to
what it was and the filters are made again from it, so nothing stays half-made.

A host whose libvirt has no nwfilter driver (libvirt's test driver) keeps the records (groups,
rules, members) but no filter, and no reference in its domains: its uuid is listed in the
group's ``other_config:filters_not_enforced_on`` while the group has VIFs there.  Hosts that are
not live are skipped; their VIFs get the group's state at its next change.

Membership is the group's own ``VIFs`` set (no VIF field keeps it).  A VIF that goes (VIF.destroy,
its VM destroyed, its interface removed behind the server's back) leaves its groups as the
service follows the store's changes: at once in a background thread, and before any group
change (so a new VIF that reuses the derived ref of a destroyed one is never taken for it).
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading

import libvirt

from xenapi import errors as E
from xenapi.backend import nwfilter
from xenapi.errors import XenAPIError

log = logging.getLogger(__name__)

CLS = "security_group"
NOT_ENFORCED_KEY = "filters_not_enforced_on"
_PORTS = ("tcp", "udp")


# -- rule text ----------------------------------------------------------------------------------

def _bad(text: str, reason: str) -> XenAPIError:
    return XenAPIError(E.INVALID_VALUE, "rule", text, reason)


def parse_rule(text: str) -> dict:
    """The rule ``text`` as nwfilter's validated rule dict; INVALID_VALUE [rule, text, reason]."""
    if not isinstance(text, str):
        raise _bad(str(text), "must be a string")
    words = text.lower().split()
    if len(words) < 2:
        raise _bad(text, "must start with a direction (in|out) and a protocol (tcp|udp|icmp|all)")
    rule: dict = {"direction": words[0], "protocol": words[1]}
    seen: set[str] = set()
    for word in words[2:]:
        if word in nwfilter.ACTIONS:
            kind, rule["action"] = "action", word
        elif word.startswith("cidr="):
            kind, rule["cidr"] = "peer", word[5:]
            if not word[5:]:
                raise _bad(text, "cidr= needs an IPv4 network a.b.c.d/n")
        elif word.startswith("group="):
            kind, rule["group"] = "peer", word[6:]
            if not word[6:]:
                raise _bad(text, "group= needs a security group's uuid")
        elif word[:1].isdigit():
            kind = "ports"
            low, sep, high = word.partition("-")
            if not low.isdigit() or sep and not high.isdigit():
                raise _bad(text, f"bad port range {word!r}: N or N-M")
            rule["port_min"], rule["port_max"] = int(low), int(high if sep else low)
        else:
            raise _bad(text, f"unknown word {word!r}")
        if kind in seen:
            raise _bad(text, f"more than one {kind}")
        seen.add(kind)
    if "ports" in seen and rule["protocol"] not in _PORTS:
        raise _bad(text, f"protocol {rule['protocol']} takes no ports")
    try:
        return nwfilter.validate_rule(rule)
    except nwfilter.RuleError as e:
        raise _bad(text, f"{e.field} {e.value!r}: {e.reason}") from None


def rule_text(rule: dict) -> str:
    """The canonical text of a validated rule."""
    words = [rule["direction"], rule["protocol"]]
    if rule["protocol"] in _PORTS:
        words.append(f"{rule['port_min']}-{rule['port_max']}")
    if rule["cidr"]:
        words.append(f"cidr={rule['cidr']}")
    if rule["group"]:
        words.append(f"group={rule['group']}")
    words.append(rule["action"])
    return " ".join(words)


def _order(rule: dict) -> tuple:
    cidr = ipaddress.IPv4Network(rule["cidr"]) if rule["cidr"] else None
    return (rule["action"] != "drop", rule["direction"], rule["protocol"], rule["port_min"], rule["port_max"],
            (0, cidr.network_address, cidr.prefixlen) if cidr else (1,), rule["group"])


def ordered_rules(texts) -> list[dict]:
    """A group's rules as nwfilter takes them: drop rules first, then accept rules."""
    return sorted((parse_rule(t) for t in texts), key=_order)


def _peer_of(text: str) -> str:
    for word in text.split():
        if word.startswith("group="):
            return word[6:]
    return ""


# -- the service --------------------------------------------------------------------------------

class SecurityGroups:
    def __init__(self, store, hosts, networks):
        self.store, self.hosts, self.networks = store, hosts, networks
        self._lock = threading.RLock()          # one change (and its filters) at a time
        self._after = self.store.last_id         # the store changes followed so far
        self._known: dict[str, tuple[str, str | None]] = {}   # VIF ref -> (uuid, host): for once it is gone
        self._enforcing: dict[str, bool] = {}    # host -> its libvirt has an nwfilter driver
        threading.Thread(target=self._follow, name="security-groups", daemon=True).start()

    # -- messages ---------------------------------------------------------------------------------
    def add_rule(self, ctx, group: str, text: str) -> None:
        rule = self._checked(text)
        self._change(group, lambda rec: {"rules": sorted({*rec["rules"], rule})})

    def remove_rule(self, ctx, group: str, text: str) -> None:
        rule = rule_text(parse_rule(text))
        self._change(group, lambda rec: {"rules": [r for r in rec["rules"] if r != rule]})

    def set_rules(self, ctx, group: str, texts: list[str]) -> None:
        rules = sorted({self._checked(t) for t in texts})
        self._change(group, lambda rec: {"rules": rules})

    def add_VIF(self, ctx, group: str, vif: str) -> None:
        with self._lock:
            self._catch_up()
            vm = self.store.get("VIF", vif)["VM"]
            self.hosts.home_of(vm)              # OPERATION_NOT_ALLOWED for a VM on no connected host
            self._change(group, lambda rec: {"VIFs": sorted({*rec["VIFs"], vif})}, vifs={vif})

    def remove_VIF(self, ctx, group: str, vif: str) -> None:
        self._change(group, lambda rec: {"VIFs": [v for v in rec["VIFs"] if v != vif]}, vifs={vif})

    def destroy(self, ctx, group: str) -> None:
        with self._lock:
            self._catch_up()
            rec = self.store.get(CLS, group)
            if rec["VIFs"]:
                raise XenAPIError(E.SECURITY_GROUP_IN_USE, group, *rec["VIFs"])
            referrers = sorted(r for r in self._referrers({rec["uuid"]}) if r != group)
            if referrers:
                raise XenAPIError(E.SECURITY_GROUP_IN_USE, group, *referrers)
            self.store.delete(CLS, group)

    def set_other_config(self, ctx, group: str, value: dict) -> None:
        """The user's map, with the server's own key kept as the server has it."""
        with self._lock:
            mine = self.store.get(CLS, group)["other_config"].get(NOT_ENFORCED_KEY)
            value = {k: v for k, v in value.items() if k != NOT_ENFORCED_KEY}
            if mine:
                value[NOT_ENFORCED_KEY] = mine
            self.store.update(CLS, group, {"other_config": value})

    # -- checks -----------------------------------------------------------------------------------
    def _checked(self, text: str) -> str:
        """The canonical text of a rule whose peer group (if any) exists."""
        rule = parse_rule(text)
        if rule["group"] and self.store.find_uuid(CLS, rule["group"]) is None:
            raise _bad(text, f"no security group has uuid {rule['group']}")
        return rule_text(rule)

    def _referrers(self, uuids: set[str]) -> set[str]:
        """The groups with a rule naming one of ``uuids`` as its peer."""
        return {ref for ref, rec in self.store.records(CLS).items()
                if any(_peer_of(r) in uuids for r in rec["rules"])}

    # -- a change and its filters -----------------------------------------------------------------
    def _change(self, group: str, change, vifs: set[str] = frozenset()) -> None:
        """Write ``change(record)`` to the group, then bring the filters in line; if that fails, the
        record as it was and its filters again."""
        with self._lock:
            self._catch_up()
            before = self.store.get(CLS, group)
            fields = change(before)
            if all(before[k] == v for k, v in fields.items()):
                return
            for vif in vifs:
                self.store.get("VIF", vif)          # HANDLE_INVALID before anything changes
            self.store.update(CLS, group, fields)
            try:
                self._sync({group}, set(vifs), {group: before["VIFs"]})
            except Exception:
                log.warning("event=security-group-undo group=%s", group)
                self.store.update(CLS, group, {k: before[k] for k in fields})
                try:
                    self._sync({group}, set(vifs), {group: self.store.get(CLS, group)["VIFs"]})
                except Exception as e:         # the first failure is the one to report
                    log.warning("event=security-group-undo-failed group=%s error=%s", group, e)
                raise

    def _sync(self, groups: set[str], vifs: set[str], members_before: dict[str, list[str]],
              pending: dict[str, dict] | None = None) -> None:
        """Filters for changed ``groups`` (rules or members) and ``vifs`` (groups changed);
        ``pending``: group records about to be written, taken instead of the store's."""
        records = {**self.store.records(CLS), **(pending or {})}
        uuids = {records[g]["uuid"] for g in groups if g in records}
        redefine = {g for g in groups if g in records} | self._referrers(uuids)
        homes: dict[str, str | None] = {}

        def home(vif: str) -> str | None:
            if vif not in homes:
                homes[vif] = self._enforcing_home(vif)
            return homes[vif]

        # 1. group filters, on the hosts of their VIFs
        for g in sorted(redefine):
            rec = records[g]
            rules = ordered_rules(rec["rules"])
            xml = None
            for host in sorted({h for v in rec["VIFs"] if (h := home(v))}):
                xml = xml or nwfilter.group_filter_xml(rec["uuid"], rules, self._peer_macs(rules, records))
                self._on(host, "security-group-define", lambda c, x=xml: nwfilter.define(c, x))
        # 2. VIF filters and the interfaces' references
        touched = set(vifs) | {v for g in groups if g in records for v in records[g]["VIFs"]}
        for vif in sorted(touched):
            self._sync_vif(vif, home(vif), records)
        # 3. group filters no longer used on a host
        for g, before in members_before.items():
            uuid = records[g]["uuid"] if g in records else None
            if uuid is None:
                continue
            now = {h for v in records[g]["VIFs"] if (h := home(v))}
            for host in sorted({h for v in before if (h := home(v))} - now):
                self._on(host, "security-group-undefine",
                         lambda c: nwfilter.undefine(c, nwfilter.group_filter_name(uuid)))
        for g in groups:
            if g in records and not pending:
                self._note_unenforced(g)

    def _sync_vif(self, vif: str, host: str | None, records: dict) -> None:
        rec = self.store.find("VIF", vif)
        if rec is None or host is None:
            return
        name = nwfilter.vif_filter_name(rec["uuid"])
        mine = [r for r in records.values() if vif in r["VIFs"]]
        if mine:
            order = sorted(mine, key=lambda r: r["uuid"])
            drops = nwfilter.default_drops(ordered_rules(r["rules"]) for r in order)
            xml = nwfilter.vif_filter_xml(rec["uuid"], [r["uuid"] for r in order], *drops)
            self._on(host, "security-group-vif-define", lambda c: nwfilter.define(c, xml))
            if self.networks.vif_filter(vif) != name:
                self.networks.set_vif_filter(vif, name)
        else:
            if self.networks.vif_filter(vif).startswith(nwfilter.VIF_PREFIX):
                self.networks.set_vif_filter(vif, "")
            self._on(host, "security-group-vif-undefine", lambda c: nwfilter.undefine(c, name))

    def _peer_macs(self, rules: list[dict], records: dict) -> dict[str, list[str]]:
        by_uuid = {rec["uuid"]: rec for rec in records.values()}
        out = {}
        for rule in rules:
            peer = by_uuid.get(rule["group"])
            if peer is not None:
                out[rule["group"]] = [m["MAC"] for v in peer["VIFs"] if (m := self.store.find("VIF", v))]
        return out

    def _on(self, host: str, operation: str, action) -> None:
        self.hosts.connection(host).nwfilter(operation, action)

    # -- hosts --------------------------------------------------------------------------------------
    def _enforcing_home(self, vif: str) -> str | None:
        """The live host of the VIF's VM (for a VIF gone: where it was) if its libvirt has
        nwfilters, else None."""
        rec = self.store.find("VIF", vif)
        if rec is None:
            host = self._known.get(vif, ("", None))[1]
        else:
            try:
                host = self.hosts.home_of(rec["VM"])
            except XenAPIError:
                host = None
            self._known[vif] = (rec["uuid"], host)
        return host if host and self.hosts.live(host) and self.enforcing(host) else None

    def enforcing(self, host: str) -> bool:
        """Whether the host's libvirt has an nwfilter driver (asked once)."""
        if host not in self._enforcing:
            try:
                self._on(host, "security-group-probe", lambda c: nwfilter.names(c))
                self._enforcing[host] = True
            except XenAPIError as e:
                if e.code != E.BACKEND_FAILURE or e.params[2:3] != (str(libvirt.VIR_ERR_NO_SUPPORT),):
                    raise
                self._enforcing[host] = False
        return self._enforcing[host]

    def _note_unenforced(self, group: str) -> None:
        rec = self.store.get(CLS, group)
        hosts = set()
        for vif in rec["VIFs"]:
            v = self.store.find("VIF", vif)
            try:
                host = self.hosts.home_of(v["VM"]) if v else None
            except XenAPIError:
                continue
            if host and self.hosts.live(host) and not self.enforcing(host):
                hosts.add(self.store.get("host", host)["uuid"])
        value = ",".join(sorted(hosts))
        if rec["other_config"].get(NOT_ENFORCED_KEY, "") != value:
            other = {k: v for k, v in rec["other_config"].items() if k != NOT_ENFORCED_KEY}
            self.store.update(CLS, group, {"other_config": {**other, NOT_ENFORCED_KEY: value} if value else other})

    # -- VIFs that go -------------------------------------------------------------------------------
    def _catch_up(self) -> None:
        """Take the VIFs deleted since the last look out of their groups (and their filters)."""
        with self._lock:
            records = self.store.records(CLS)
            for rec in records.values():
                for vif in rec["VIFs"]:
                    if vif not in self._known and self.store.exists("VIF", vif):
                        self._enforcing_home(vif)
            changes = self.store.changes_after(self._after)
            last = self.store.last_id
            if changes is None:                       # the log no longer reaches back: every member checked
                gone = {v for rec in records.values() for v in rec["VIFs"] if not self.store.exists("VIF", v)}
            else:
                gone = set()
                for change in changes:
                    if change.cls != "VIF":
                        continue
                    if change.op == "del":
                        gone.add(change.ref)
                    elif change.ref in gone and change.snapshot is not None:
                        # deleted, then a new VIF under the same ref: the old one left its groups
                        gone.add(change.ref)
                last = changes[-1].id if changes else last
            self._after = last
            members = {v for rec in records.values() for v in rec["VIFs"]}
            for vif in sorted(gone & members):
                self._forget(vif)

    def _forget(self, vif: str) -> None:
        """VIF ``vif`` is gone: its filter and its groups' filters first, then the groups without it
        (so whoever sees the groups change sees libvirt done with it)."""
        groups = {g: rec for g, rec in self.store.records(CLS).items() if vif in rec["VIFs"]}
        after = {g: {**rec, "VIFs": [v for v in rec["VIFs"] if v != vif]} for g, rec in groups.items()}
        uuid, _ = self._known.get(vif, (None, None))
        host = self._enforcing_home(vif)
        try:
            if uuid is not None and host is not None:   # its interface is gone: nothing uses it
                self._on(host, "security-group-vif-undefine",
                         lambda c: nwfilter.undefine(c, nwfilter.vif_filter_name(uuid)))
            self._sync(set(groups), set(), {g: rec["VIFs"] for g, rec in groups.items()}, after)
        except XenAPIError as e:
            log.warning("event=security-group-resync-failed vif=%s error=%s", vif, e.code)
        for g, rec in after.items():
            with contextlib.suppress(XenAPIError):       # a host lost meanwhile: the next change says
                self.store.update(CLS, g, {"VIFs": rec["VIFs"]})
                self._note_unenforced(g)
        log.info("event=security-group-vif-gone vif=%s groups=%s", vif, ",".join(sorted(groups)))
        self._known.pop(vif, None)

    def _follow(self) -> None:
        """Until the store closes (the server's stop): catch up with each batch of changes."""
        generation = self.store.generation
        while not self.store.closed:
            generation = self.store.wait(generation, 5.0)
            if self.store.closed:
                return
            try:
                self._catch_up()
            except Exception:
                log.exception("event=security-group-follow-failed")
