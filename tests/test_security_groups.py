"""security_group through the official client on libvirt's test driver: records, the rule grammar
and its errors, membership (many to many, kept when a VIF or its VM goes), events, destroy.

The test driver has no nwfilter driver: groups and members are kept, no filter is made, domains get
no <filterref>, and the group says which hosts do not enforce it (other_config
filters_not_enforced_on).  Filters on a real libvirtd: tests/e2e/test_security_groups_qemu.py."""
import pytest

from tests.conftest import fails, guest_vm, wait_for_event
from tests.test_networks import domain_interfaces, new_network, vif_record
from xenapi.services.security_groups import NOT_ENFORCED_KEY, ordered_rules, parse_rule, rule_text


def new_group(xapi, label="web", **other) -> str:
    return xapi.xenapi.security_group.create({"name_label": label, "name_description": "d", "other_config": other})


def canonical(text: str) -> str:
    return rule_text(parse_rule(text))


@pytest.mark.parametrize("text, expected", [
    ("in tcp 22 cidr=10.1.2.3/8", "in tcp 22-22 cidr=10.0.0.0/8 accept"),
    ("IN TCP 22-22 CIDR=10.0.0.0/8 ACCEPT", "in tcp 22-22 cidr=10.0.0.0/8 accept"),
    ("in tcp drop 5001", "in tcp 5001-5001 drop"),
    ("out all", "out all accept"),
    ("out udp", "out udp 1-65535 accept"),
    ("in icmp   drop", "in icmp drop"),
    ("out tcp accept 80-443 group=1a2b-3c", "out tcp 80-443 group=1a2b-3c accept"),
])
def test_rule_grammar_gives_one_canonical_text(text, expected):
    assert canonical(text) == expected
    assert canonical(expected) == expected


@pytest.mark.parametrize("text, reason", [
    ("", "must start with a direction"),
    ("in", "must start with a direction"),
    ("sideways tcp", "direction"),
    ("in sctp", "protocol"),
    ("in icmp 22", "takes no ports"),
    ("in tcp 0", "port_min"),
    ("in tcp 80-22", "port_max"),
    ("in tcp 22-", "bad port range"),
    ("in tcp 22 23", "more than one ports"),
    ("in tcp accept drop", "more than one action"),
    ("in tcp cidr=10.0.0.0/8 group=abc", "more than one peer"),
    ("in tcp cidr=10.0.0.1", "cidr"),
    ("in tcp cidr=fe80::/10", "cidr"),
    ("in tcp cidr=", "cidr= needs"),
    ("in tcp group=", "group= needs"),
    ("in tcp reject", "unknown word 'reject'"),
])
def test_bad_rules_say_why(xapi, text, reason):
    group = new_group(xapi)
    error = fails(xapi.xenapi.security_group.add_rule, group, text)
    assert error[:3] == ["INVALID_VALUE", "rule", text] and reason in error[3]
    assert xapi.xenapi.security_group.get_rules(group) == []


def test_drop_rules_come_before_accept_rules():
    rules = ordered_rules(["in all accept", "in tcp 22 accept", "in tcp 5001 drop", "out udp 53 drop"])
    assert [rule_text(r) for r in rules] == ["in tcp 5001-5001 drop", "out udp 53-53 drop", "in all accept",
                                             "in tcp 22-22 accept"]


def test_a_group_record_and_its_rules(xapi):
    group = new_group(xapi, "web", purpose="test")
    rec = xapi.xenapi.security_group.get_record(group)
    assert (rec["name_label"], rec["name_description"], rec["rules"], rec["VIFs"], rec["tags"]) == \
        ("web", "d", [], [], [])
    assert rec["other_config"] == {"purpose": "test"}
    assert xapi.xenapi.security_group.get_by_uuid(rec["uuid"]) == group
    assert xapi.xenapi.security_group.get_by_name_label("web") == [group]
    xapi.xenapi.security_group.add_rule(group, "in tcp 22 cidr=10.0.0.0/8")
    xapi.xenapi.security_group.add_rule(group, "in tcp 22-22 cidr=10.9.9.9/8 accept")   # the same rule
    xapi.xenapi.security_group.add_rule(group, "out all")
    assert sorted(xapi.xenapi.security_group.get_rules(group)) == ["in tcp 22-22 cidr=10.0.0.0/8 accept",
                                                                   "out all accept"]
    xapi.xenapi.security_group.remove_rule(group, "OUT ALL ACCEPT")
    xapi.xenapi.security_group.remove_rule(group, "in udp 53")                         # absent: no error
    assert xapi.xenapi.security_group.get_rules(group) == ["in tcp 22-22 cidr=10.0.0.0/8 accept"]
    xapi.xenapi.security_group.set_rules(group, ["in icmp", "in tcp 5001 drop"])
    assert sorted(xapi.xenapi.security_group.get_rules(group)) == ["in icmp accept", "in tcp 5001-5001 drop"]
    assert fails(xapi.xenapi.security_group.set_rules, group, ["in icmp", "in nope"])[:3] == \
        ["INVALID_VALUE", "rule", "in nope"]
    assert sorted(xapi.xenapi.security_group.get_rules(group)) == ["in icmp accept", "in tcp 5001-5001 drop"]
    xapi.xenapi.security_group.set_name_label(group, "web servers")
    xapi.xenapi.security_group.add_tags(group, "prod")
    rec = xapi.xenapi.security_group.get_record(group)
    assert rec["name_label"] == "web servers" and rec["tags"] == ["prod"]
    assert fails(xapi.xenapi.security_group.create, {"name_description": "no label"})[0] == "INTERNAL_ERROR"


def test_rules_and_members_are_read_only_fields(xapi):
    group = new_group(xapi)
    assert fails(xapi.xenapi.security_group.set_VIFs, group, [])[0] == "MESSAGE_METHOD_UNKNOWN"
    assert fails(xapi.xenapi.security_group.add_to_rules, group, "in all")[0] == "MESSAGE_METHOD_UNKNOWN"


def test_a_peer_group_must_exist(xapi):
    group, peer = new_group(xapi, "web"), new_group(xapi, "db")
    peer_uuid = xapi.xenapi.security_group.get_uuid(peer)
    missing = "00000000-0000-0000-0000-000000000001"
    error = fails(xapi.xenapi.security_group.add_rule, group, f"in tcp 5432 group={missing}")
    assert error[:3] == ["INVALID_VALUE", "rule", f"in tcp 5432 group={missing}"]
    assert f"no security group has uuid {missing}" in error[3]
    xapi.xenapi.security_group.add_rule(group, f"in tcp 5432 group={peer_uuid}")
    xapi.xenapi.security_group.add_rule(group, f"in all group={xapi.xenapi.security_group.get_uuid(group)}")
    assert f"in tcp 5432-5432 group={peer_uuid} accept" in xapi.xenapi.security_group.get_rules(group)
    # a group its own peer does not hold its destroy back; another group naming it does
    assert fails(xapi.xenapi.security_group.destroy, peer) == ["SECURITY_GROUP_IN_USE", peer, group]
    xapi.xenapi.security_group.remove_rule(group, f"in tcp 5432 group={peer_uuid}")
    xapi.xenapi.security_group.destroy(peer)
    xapi.xenapi.security_group.destroy(group)
    assert xapi.xenapi.security_group.get_all() == []


def test_membership_is_many_to_many_and_destroy_waits_for_the_vifs(running, xapi):
    vm = guest_vm(xapi, "Halted")
    net = new_network(xapi)
    a = xapi.xenapi.VIF.create(vif_record(vm, net, "1"))
    b = xapi.xenapi.VIF.create(vif_record(vm, net, "2"))
    web, ssh = new_group(xapi, "web"), new_group(xapi, "ssh")
    xapi.xenapi.security_group.add_rule(web, "in tcp 80")
    xapi.xenapi.security_group.add_VIF(web, a)
    xapi.xenapi.security_group.add_VIF(web, a)                # already there: no error
    xapi.xenapi.security_group.add_VIF(web, b)
    xapi.xenapi.security_group.add_VIF(ssh, a)
    assert sorted(xapi.xenapi.security_group.get_VIFs(web)) == sorted([a, b])
    assert xapi.xenapi.security_group.get_VIFs(ssh) == [a]
    # this host does not enforce filters: it says so, and the domain references none
    host_uuid = xapi.xenapi.host.get_uuid(xapi.xenapi.host.get_all()[0])
    assert xapi.xenapi.security_group.get_other_config(web)[NOT_ENFORCED_KEY] == host_uuid
    assert all(i.find("filterref") is None for i in domain_interfaces(running, xapi, vm))
    # the server keeps its key whatever the user writes
    xapi.xenapi.security_group.set_other_config(web, {"owner": "me"})
    assert xapi.xenapi.security_group.get_other_config(web) == {"owner": "me", NOT_ENFORCED_KEY: host_uuid}
    assert fails(xapi.xenapi.security_group.destroy, web) == ["SECURITY_GROUP_IN_USE", web, *sorted([a, b])]
    xapi.xenapi.security_group.remove_VIF(web, a)
    xapi.xenapi.security_group.remove_VIF(web, a)             # absent: no error
    assert xapi.xenapi.security_group.get_VIFs(web) == [b]
    assert xapi.xenapi.security_group.get_VIFs(ssh) == [a]
    xapi.xenapi.security_group.remove_VIF(web, b)
    assert NOT_ENFORCED_KEY not in xapi.xenapi.security_group.get_other_config(web)
    xapi.xenapi.security_group.destroy(web)
    assert fails(xapi.xenapi.security_group.add_VIF, ssh, "OpaqueRef:nope") == ["HANDLE_INVALID", "VIF",
                                                                                "OpaqueRef:nope"]
    assert fails(xapi.xenapi.security_group.get_record, web)[0] == "HANDLE_INVALID"


def test_changes_are_events(xapi):
    token = xapi.xenapi.event_from(["security_group"], "", 0)["token"]
    group = new_group(xapi, "evented")
    wait_for_event(xapi, ["security_group"], token, lambda e: e["ref"] == group and e["operation"] == "add")
    token = xapi.xenapi.event_from(["security_group"], "", 0)["token"]
    xapi.xenapi.security_group.add_rule(group, "in udp 53")
    event = wait_for_event(xapi, ["security_group"], token, lambda e: e["ref"] == group and e["operation"] == "mod")
    assert event["snapshot"]["rules"] == ["in udp 53-53 accept"]
    token = xapi.xenapi.event_from(["security_group"], "", 0)["token"]
    xapi.xenapi.security_group.destroy(group)
    wait_for_event(xapi, ["security_group"], token, lambda e: e["ref"] == group and e["operation"] == "del")


def test_a_vif_that_goes_leaves_its_groups(running, xapi):
    vm = guest_vm(xapi, "Halted")
    net = new_network(xapi)
    vif = xapi.xenapi.VIF.create(vif_record(vm, net, "3"))
    other = xapi.xenapi.VIF.create(vif_record(vm, net, "4"))
    g1, g2 = new_group(xapi, "one"), new_group(xapi, "two")
    for g in (g1, g2):
        xapi.xenapi.security_group.add_VIF(g, vif)
    xapi.xenapi.security_group.add_VIF(g1, other)
    token = xapi.xenapi.event_from(["security_group"], "", 0)["token"]
    xapi.xenapi.VIF.destroy(vif)
    wait_for_event(xapi, ["security_group"], token, lambda e: e["ref"] == g2 and e["snapshot"]["VIFs"] == [])
    assert xapi.xenapi.security_group.get_VIFs(g1) == [other]
    # a new VIF in the same slot (the same derived ref) is not taken for the one destroyed
    again = xapi.xenapi.VIF.create(vif_record(vm, net, "3"))
    assert again == vif
    assert xapi.xenapi.security_group.get_VIFs(g2) == []
    xapi.xenapi.security_group.add_VIF(g2, again)
    assert xapi.xenapi.security_group.get_VIFs(g2) == [again]
    # the VM destroyed: its VIFs leave every group
    token = xapi.xenapi.event_from(["security_group"], "", 0)["token"]
    xapi.xenapi.VM.destroy(vm)
    wait_for_event(xapi, ["security_group"], token, lambda e: e["ref"] == g1 and e["snapshot"]["VIFs"] == [])
    assert xapi.xenapi.security_group.get_VIFs(g2) == []
    xapi.xenapi.security_group.destroy(g1)
    xapi.xenapi.security_group.destroy(g2)


def test_groups_survive_a_restart(tmp_path):
    from tests.conftest import start_server, stop_server
    first = start_server(tmp_path)
    try:
        xapi = first.session()
        group = new_group(xapi, "kept")
        xapi.xenapi.security_group.set_rules(group, ["in tcp 22", "out all drop"])
    finally:
        stop_server(first)
    second = start_server(tmp_path)
    try:
        xapi = second.session()
        assert xapi.xenapi.security_group.get_by_name_label("kept") == [group]
        assert sorted(xapi.xenapi.security_group.get_rules(group)) == ["in tcp 22-22 accept", "out all drop"]
    finally:
        stop_server(second)
