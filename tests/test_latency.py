"""xenapi/backend/latency.py: real pings between two network namespaces this test makes, joined by
a veth pair (10.233.N.1 and 10.233.N.2/24; 10.233.N.0/24 routed ``unreachable`` in the root
namespace meanwhile), and on loopback; ping's output parsed as this machine's iputils prints it.
Namespaces, veths and the route are removed whatever happens.
"""
from __future__ import annotations

import os
import subprocess
import time
import uuid as _uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import libvirt
import pytest

from xenapi.backend.latency import default_target, measure, parse

from tests.netns_support import claim_prefix, sh

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

# Captured on this machine (iputils 20221126), `ping -n -q -c N -i 0.2 -W W TARGET`.
REPLIED = """PING 10.233.0.2 (10.233.0.2) 56(84) bytes of data.

--- 10.233.0.2 ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 407ms
rtt min/avg/max/mdev = 0.057/0.153/0.344/0.134 ms
"""
NO_REPLY = """PING 10.233.0.77 (10.233.0.77) 56(84) bytes of data.

--- 10.233.0.77 ping statistics ---
3 packets transmitted, 0 received, 100% packet loss, time 407ms

"""
NO_ROUTE = "ping: connect: Network is unreachable\n"
UNKNOWN_NAME = "ping: nosuch.invalid: Name or service not known\n"
NO_BINARY = 'exec of "nosuchping" failed: No such file or directory\n'


def local_run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def netns_run(ns: str):
    def run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout)
    return run


@dataclass
class Pair:
    ns1: str
    ns2: str
    dev1: str
    dev2: str
    addr1: str
    addr2: str
    subnet: str

    def address(self, host: int) -> str:
        return self.subnet.replace(".0/24", f".{host}")


@pytest.fixture()
def pair():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = _uuid.uuid4().hex[:6]
    octet = claim_prefix(233)                       # concurrent runs use different /24s
    subnet = f"10.233.{octet}.0/24"
    p = Pair(ns1=f"xntlat-{tag}-1", ns2=f"xntlat-{tag}-2", dev1=f"xntl{tag}a", dev2=f"xntl{tag}b",
             addr1=f"10.233.{octet}.1", addr2=f"10.233.{octet}.2", subnet=subnet)
    made: list[str] = []
    try:
        for ns in (p.ns1, p.ns2):
            sh("ip", "netns", "add", ns)
            made.append(ns)
        sh("ip", "link", "add", p.dev1, "type", "veth", "peer", "name", p.dev2)
        sh("ip", "link", "set", p.dev1, "netns", p.ns1)
        sh("ip", "link", "set", p.dev2, "netns", p.ns2)
        for ns, dev, addr in ((p.ns1, p.dev1, p.addr1), (p.ns2, p.dev2, p.addr2)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield p
    finally:
        sh("ip", "link", "del", p.dev1, check=False)        # still in the root namespace if a move failed
        for ns in made:                                     # a namespace takes its veth end with it
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "route", "del", "unreachable", subnet, check=False)


def rx_packets(ns: str, dev: str) -> int:
    return int(sh("ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/statistics/rx_packets").stdout)


def test_ping_between_namespaces(pair):
    before = rx_packets(pair.ns2, pair.dev2)
    started = datetime.now(timezone.utc)
    m = measure(netns_run(pair.ns1), pair.addr2, count=3)
    assert m.error == "" and m.target == pair.addr2
    assert (m.sent, m.received, m.loss) == (3, 3, 0.0)
    assert 0 < m.min_ms <= m.rtt_ms <= m.max_ms < 1000 and m.mdev_ms >= 0
    assert started <= m.measured_at <= datetime.now(timezone.utc) and m.measured_at.tzinfo == timezone.utc
    assert rx_packets(pair.ns2, pair.dev2) - before >= 3        # the echo requests crossed the veth


def test_no_host_at_the_address_is_a_measurement(pair):
    started = time.monotonic()
    m = measure(netns_run(pair.ns1), pair.address(77), count=2, timeout=1.0)
    assert (m.rtt_ms, m.min_ms, m.max_ms, m.loss, m.received, m.error) == (None, None, None, 1.0, 0, "no reply")
    assert m.sent == 2
    assert time.monotonic() - started < 3.0


def test_peer_down_loses_everything(pair):
    sh("ip", "-n", pair.ns2, "link", "set", pair.dev2, "down")
    m = measure(netns_run(pair.ns1), pair.addr2, count=2, timeout=1.0)
    assert (m.rtt_ms, m.loss, m.error) == (None, 1.0, "no reply")


def test_no_route_is_unreachable(pair):
    sh("ip", "-n", pair.ns1, "route", "add", "unreachable", pair.address(128).rsplit(".", 1)[0] + ".128/25")
    m = measure(netns_run(pair.ns1), pair.address(130), count=2, timeout=1.0)
    assert m.rtt_ms is None and m.loss == 1.0 and m.sent == 0
    assert m.error.startswith("unreachable: ") and "No route to host" in m.error


def test_default_target_of_the_subnet_answers(pair):
    target = default_target(pair.subnet)
    assert target == pair.addr1
    m = measure(netns_run(pair.ns2), target, count=2)
    assert m.error == "" and m.loss == 0.0 and 0 < m.rtt_ms < 1000


def test_loopback():
    m = measure(local_run, "127.0.0.1", count=2)
    assert m.error == "" and m.loss == 0.0 and 0 < m.rtt_ms < 1000


def test_no_ping_binary():
    def bare_path(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={"PATH": "/nonexistent"})

    def env_without_ping(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(["env", "PATH=/nonexistent", *argv], capture_output=True, text=True, timeout=timeout)

    for run in (bare_path, env_without_ping):
        m = measure(run, "127.0.0.1", count=1)
        assert (m.rtt_ms, m.loss, m.error) == (None, 1.0, "no ping binary")


def test_a_command_outliving_its_deadline_is_a_timeout():
    def impatient(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=0.05)    # 3 pings take 0.4 s

    m = measure(impatient, "127.0.0.1", count=3)
    assert (m.rtt_ms, m.loss, m.error) == (None, 1.0, "timeout")


def test_parse_captured_outputs():
    m = parse("10.233.0.2", REPLIED)
    assert (m.sent, m.received, m.loss, m.error) == (3, 3, 0.0, "")
    assert (m.min_ms, m.rtt_ms, m.max_ms, m.mdev_ms) == (0.057, 0.153, 0.344, 0.134)
    m = parse("10.233.0.77", NO_REPLY, returncode=1)
    assert (m.sent, m.received, m.loss, m.rtt_ms, m.min_ms, m.error) == (3, 0, 1.0, None, None, "no reply")
    m = parse("10.99.0.1", "", NO_ROUTE, 2)
    assert (m.error, m.loss, m.sent) == ("unreachable: connect: Network is unreachable", 1.0, 0)
    assert parse("nosuch.invalid", "", UNKNOWN_NAME, 2).error == \
        "unreachable: nosuch.invalid: Name or service not known"
    assert parse("x", "", NO_BINARY, 1).error == "no ping binary"


def test_parse_partial_loss():
    # this machine's format, with one of four replies missing
    text = REPLIED.replace("3 packets transmitted, 3 received, 0% packet loss",
                           "4 packets transmitted, 3 received, 25% packet loss")
    m = parse("10.233.0.2", text, returncode=1)
    assert (m.sent, m.received, m.loss, m.rtt_ms) == (4, 3, 0.25, 0.153)


def test_default_target_of_libvirt_networks():
    conn = libvirt.open("test:///default")
    try:
        for network in conn.listAllNetworks():
            xml = network.XMLDesc(0)
            ip = ((xml.split("<ip ", 1) + [""])[1].split("address='", 1) + [""])[1].split("'", 1)[0]
            assert default_target(xml) == (ip or None)
            assert ip, "the test driver's default network has an <ip>"
    finally:
        conn.close()
    assert default_target("192.168.122.0/24") == "192.168.122.1"
    assert default_target("192.168.122.77/24") == "192.168.122.1"
    assert default_target("10.0.0.8/31") == "10.0.0.8"
    assert default_target("<network><name>isolated</name></network>") is None
    assert default_target("not a network") is None
