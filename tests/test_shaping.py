"""The server's own rate limiting (xenapi/backend/shaping.py) on this machine's real kernel: what
the probe finds, and the ifb + tbf a shaped tap gets (the traffic itself is measured through real
guests in tests/e2e/test_networks_qemu.py)."""
import json
import secrets
import subprocess

import pytest

from xenapi.backend import host_shell, shaping


def ip_json(*argv):
    return json.loads(subprocess.run(["ip", "-j", *argv], capture_output=True, text=True, check=True).stdout or "[]")


def qdiscs(dev: str) -> dict:
    out = subprocess.run(["tc", "-j", "qdisc", "show", "dev", dev], capture_output=True, text=True, check=True).stdout
    return {q["kind"]: q for q in json.loads(out or "[]")}


def exists(dev: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", dev], capture_output=True).returncode == 0


@pytest.fixture
def tap():
    """A veth end standing in for a guest's tap device (removed after)."""
    name = f"xts{secrets.token_hex(3)}"
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p"], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    yield name
    subprocess.run(["ip", "link", "del", name], capture_output=True)
    subprocess.run(["ip", "link", "del", shaping.ifb_name(name)], capture_output=True)


def test_the_probe_finds_what_this_kernel_has():
    kernel = subprocess.run(["sh", "-c", "zcat /proc/config.gz"], capture_output=True, text=True).stdout
    police = "CONFIG_NET_ACT_POLICE=y" in kernel or "CONFIG_NET_ACT_POLICE=m" in kernel
    sfq = "CONFIG_NET_SCH_SFQ=y" in kernel or "CONFIG_NET_SCH_SFQ=m" in kernel
    expected = shaping.LIBVIRT if police and sfq else shaping.IFB
    assert shaping.probe(host_shell.for_uri("qemu:///system")) == expected
    assert not [link for link in ip_json("link", "show") if link["ifname"].startswith("xqp")]   # the probe's device went


def test_a_test_driver_host_has_no_shell_so_no_probe():
    assert shaping.probe(host_shell.for_uri("test:///default")) is None


def test_shape_puts_the_taps_traffic_through_a_token_bucket_and_unshape_removes_it(tap):
    shell = host_shell.for_uri("qemu:///system")
    shaping.shape(shell, tap, 10_000)
    ifb = shaping.ifb_name(tap)
    assert qdiscs(ifb)["tbf"]["options"]["rate"] == 10_000_000 // 8        # bytes/s
    filters = subprocess.run(["tc", "filter", "show", "dev", tap, "parent", "ffff:"], capture_output=True,
                             text=True).stdout
    assert f"Redirect to device {ifb}" in filters
    shaping.shape(shell, tap, 2_000)                 # a new rate replaces the old one
    assert qdiscs(ifb)["tbf"]["options"]["rate"] == 2_000_000 // 8
    shaping.unshape(shell, tap)
    assert not exists(ifb) and "ingress" not in qdiscs(tap)
    shaping.unshape(shell, tap)                      # twice: nothing to undo is fine
