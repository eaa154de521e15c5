"""network.latency measured for real: a network made through the API on the real libvirtd (the
host has its address on the bridge), a peer in a network namespace of this test's own attached to
that bridge by a veth, and ``network.measure_latency`` pinging it from the host; also
network.bandwidth and the VLAN answer of a host whose kernel has neither 802.1q nor Open vSwitch."""
import secrets
import subprocess
import time

import pytest

PREFIX = "10.236"          # 10.236.<n>.0/24 for this test; the rest of 10.236/16 is unreachable meanwhile


def sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True)


@pytest.fixture
def confined():
    sh("ip", "route", "add", "unreachable", f"{PREFIX}.0.0/16", check=False)
    yield
    sh("ip", "route", "del", "unreachable", f"{PREFIX}.0.0/16", check=False)


@pytest.fixture
def peer_namespace():
    """A network namespace with one veth end in it; the other end is returned, for a bridge."""
    tag = secrets.token_hex(3)
    ns, outside, inside = f"xe2e-lat-{tag}", f"xlo{tag}", f"xli{tag}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", ns)
        yield ns, outside, inside
    finally:
        sh("ip", "link", "del", outside, check=False)
        sh("ip", "netns", "del", ns, check=False)


def test_latency_is_a_measured_round_trip_to_a_peer_in_a_namespace(start_xenapi, confined, peer_namespace):
    ns, outside, inside = peer_namespace
    subnet = f"{PREFIX}.{secrets.randbelow(200) + 20}"
    x = start_xenapi(network_latency_interval=1.0).x
    net = x.network.create({"name_label": "latency", "MTU": "1500",
                            "other_config": {"ipv4": f"{subnet}.1/24", "latency_target": f"{subnet}.2"}})
    try:
        bridge = x.network.get_bridge(net)
        sh("ip", "link", "set", outside, "master", bridge, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{subnet}.2/24", "dev", inside)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", inside, "up")
        deadline = time.monotonic() + 30                 # measured on its period, nobody asking
        while x.network.get_latency(net) <= 0:
            assert time.monotonic() < deadline, x.network.get_other_config(net)
            time.sleep(0.2)
        rtt = x.network.measure_latency(net)             # and on demand
        rec = x.network.get_record(net)
        assert 0 < rtt < 1000 and rec["latency"] == rtt, rec["other_config"].get("latency_error")
        assert rec["other_config"]["latency_measured_against"] == f"{subnet}.2"
        assert rec["other_config"]["latency_measured_at"].endswith("Z") and "latency_error" not in rec["other_config"]
        assert net in x.network.get_all_records_where('field "latency" > 0')
        assert rec["bandwidth"] == -1.0            # a virtual bridge has no link speed: unknown, not 0
        sh("ip", "netns", "exec", ns, "ip", "link", "set", inside, "down")
        assert x.network.measure_latency(net) == -1.0
        assert x.network.get_other_config(net)["latency_error"] == "no reply"
    finally:
        sh("ip", "link", "set", outside, "nomaster", check=False)
        x.network.destroy(net)


def test_vlan_create_on_a_host_without_8021q_or_open_vswitch_names_both(start_xenapi):
    x = start_xenapi().x
    host = x.host.get_all()[0]
    caps = x.host.get_capabilities(host)
    pif = [p for p in x.host.get_PIFs(host) if x.PIF.get_management(p)][0]
    net = x.network.create({"name_label": "vlan", "other_config": {}})
    try:
        with pytest.raises(Exception) as failure:
            x.VLAN.create(pif, "7", net)
        details = failure.value.details
        if "vlan:8021q" in x.host.get_capabilities(host) or "vlan:openvswitch" in caps:
            pytest.fail(f"this host has VLAN support ({caps}); the test expects a kernel without it")
        assert details[0] == "OPERATION_NOT_ALLOWED" and "8021q" in details[1] and "Open vSwitch" in details[1]
        assert "tunnel:vxlan" in x.host.get_capabilities(host)        # this kernel has VXLAN
    finally:
        x.network.destroy(net)
