"""HostShell (xenapi/backend/host_shell.py) and VXLAN tunnels (xenapi/backend/vxlan.py).

HostShell: every form of ``for_uri``, each run for real where this machine can (locally, through
an exec prefix, through ssh to a real sshd on loopback).  VXLAN: the real kernel, in a network
namespace made for the test (the addresses of a /24 leased with an ``unreachable`` route in the
root namespace, so nothing could leave the machine).  Tunnels between two real libvirt hosts,
with traffic across them, are in tests/e2e/test_lab_hosts.py.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.e2e.lab_hosts import RouteLease
from tests.ports import free_port, wait_for_port
from xenapi.backend import vxlan
from xenapi.backend.host_shell import HostShell, HostShellError, for_uri

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


# ------------------------------------------------------------------------------ HostShell

@pytest.mark.parametrize("uri", ["qemu:///system", "qemu:///session", "lxc:///",
                                 "qemu+unix:///system?socket=/run/x/libvirt-sock"])
def test_a_local_uri_runs_commands_here(uri):
    shell = for_uri(uri)
    assert shell.available and shell.why_not == ""
    assert shell.argv_for(["ip", "link"]) == ["ip", "link"]
    r = shell.run(["sh", "-c", "echo $$ out; echo err >&2; exit 3"], timeout=10)
    assert r.returncode == 3                                   # a failure is returned, not raised
    assert r.stdout.split()[1] == "out" and r.stderr == "err\n"
    assert int(r.stdout.split()[0]) != os.getpid()


@pytest.mark.parametrize("uri", ["test:///default", "test+unix:///default?socket=/run/x/sock"])
def test_the_test_driver_has_no_shell(uri):
    shell = for_uri(uri)
    assert not shell.available
    assert "test driver" in shell.why_not and "simulated" in shell.why_not
    with pytest.raises(HostShellError, match="test driver"):
        shell.run(["true"], timeout=5)


@pytest.mark.parametrize("uri", ["qemu+tcp://h1/system", "qemu+tls://h1/system", "qemu://h1/system"])
def test_a_remote_uri_without_ssh_has_no_shell_and_says_what_to_do(uri):
    shell = for_uri(uri)
    assert not shell.available
    assert "exec prefix" in shell.why_not and "qemu+ssh" in shell.why_not


def test_an_explicit_exec_prefix_wins_over_the_uri():
    prefix = ["env", "XENAPI_HOST_SHELL_TEST=1"]
    for uri in ("test:///default", "qemu+ssh://root@h1/system", "qemu:///system"):
        shell = for_uri(uri, prefix)
        assert shell.available
        assert shell.argv_for(["printenv", "XENAPI_HOST_SHELL_TEST"]) == [*prefix, "printenv", "XENAPI_HOST_SHELL_TEST"]
    r = for_uri("test:///default", prefix).run(["printenv", "XENAPI_HOST_SHELL_TEST"], timeout=10)
    assert (r.returncode, r.stdout) == (0, "1\n")
    assert for_uri("test:///default", []).description == "local"     # an empty prefix: here


def test_ssh_uri_argv_quotes_the_command_for_the_remote_shell():
    shell = for_uri("qemu+ssh://admin@h1.example:2222/system?keyfile=/k/id&no_verify=1&known_hosts=/k/kh")
    assert shell.available and shell.description == "ssh admin@h1.example"
    argv = shell.argv_for(["ip", "link", "add", "a b", "$(reboot)", "it's"])
    assert argv[:5] == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    assert argv[5:] == ["-p", "2222", "-i", "/k/id", "-o", "UserKnownHostsFile=/k/kh",
                        "-o", "StrictHostKeyChecking=no", "--", "admin@h1.example",
                        "ip link add 'a b' '$(reboot)' 'it'\"'\"'s'"]
    assert shlex.split(argv[-1]) == ["ip", "link", "add", "a b", "$(reboot)", "it's"]
    assert for_uri("qemu+ssh://h2/system").argv_for(["true"]) == \
        ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "--", "h2", "true"]
    assert for_uri("qemu+libssh2://root@h3/system").description == "ssh root@h3"


def test_a_timeout_or_a_missing_runner_raises_host_shell_error():
    with pytest.raises(HostShellError, match="no answer after 0.3 s"):
        HostShell.local().run(["sleep", "5"], timeout=0.3)
    with pytest.raises(HostShellError, match="cannot run"):
        for_uri("qemu:///system", ["/nonexistent/nsenter"]).run(["true"], timeout=5)
    with pytest.raises(ValueError):
        HostShell.local().run([], timeout=5)


@pytest.fixture
def sshd(tmp_path):
    """A real sshd on a loopback port that lets root in with a key made for the test."""
    if os.geteuid() != 0:
        pytest.skip("sshd must run as root to log in as root")
    if not Path("/usr/sbin/sshd").exists():
        pytest.skip("no sshd")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "host_key")], check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "id.pub").read_text())
    port = free_port()
    (tmp_path / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {tmp_path / 'host_key'}
PidFile {tmp_path / 'sshd.pid'}
AuthorizedKeysFile {tmp_path / 'authorized_keys'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
""")
    log = tmp_path / "sshd.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(tmp_path / "sshd_config")], stderr=stderr)
    try:
        wait_for_port(port, proc=proc, log=log)
        yield port, key
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_ssh_shell_runs_the_argv_on_the_host_for_real(sshd):
    port, key = sshd
    shell = for_uri(f"qemu+ssh://root@127.0.0.1:{port}/system?keyfile={key}&no_verify=1&known_hosts=/dev/null")
    tricky = ["a b", "$HOME", "it's", "; echo injected", ""]
    r = shell.run(["printf", "<%s>\\n", *tricky], timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"<{t}>" for t in tricky]
    r = shell.run(["sh", "-c", "exit 7"], timeout=30)
    assert r.returncode == 7                                   # the remote status, not raised
    # BatchMode: a key the server does not know fails at once instead of asking for a password
    other = key.parent / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    r = for_uri(f"qemu+ssh://root@127.0.0.1:{port}/system?keyfile={other}&no_verify=1&known_hosts=/dev/null"
                ).run(["true"], timeout=30)
    assert r.returncode == 255 and "Permission denied" in r.stderr


# ------------------------------------------------------------------------------ VXLAN (real kernel)

@pytest.fixture
def netns_shell():
    """(HostShell into a fresh network namespace, addresses of a leased /24)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    lease = RouteLease(("10.231",))
    name = "xvt" + secrets.token_hex(4)
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        net = ipaddress.ip_network(lease.prefixes[0])
        hosts = [str(net.network_address + i) for i in range(1, 6)]
        subprocess.run(["ip", "-n", name, "link", "add", "xv0", "type", "veth", "peer", "name", "xv1"], check=True)
        subprocess.run(["ip", "-n", name, "addr", "add", f"{hosts[0]}/24", "dev", "xv0"], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "xv0", "up"], check=True)
        yield HostShell.for_uri("qemu:///system", ["ip", "netns", "exec", name]), hosts
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        lease.release()


def _ifindex(shell, device):
    return int(shell.run(["cat", f"/sys/class/net/{device}/ifindex"], timeout=10).stdout)


@root_only
def test_tunnel_is_built_updated_and_removed_on_the_real_kernel(netns_shell):
    shell, (local, p1, p2, p3, _) = netns_shell
    assert vxlan.available(shell) == (True, "")
    assert vxlan.ensure_bridge(shell, "xbr7", 1450) == {"bridge": "xbr7", "mtu": 1450, "up": True}
    vxlan.ensure_bridge(shell, "xbr7", 1450)                   # again: nothing to do

    state = vxlan.ensure_tunnel(shell, "vx7", 7, local, [p1, p2, local], "xbr7", 1500)
    assert state == {"device": "vx7", "exists": True, "kind": "vxlan", "up": True, "operstate": state["operstate"],
                     "vni": 7, "local": local, "dstport": 4789, "master": "xbr7", "mtu": 1450,
                     "peers": sorted([p1, p2], key=ipaddress.ip_address)}
    index = _ifindex(shell, "vx7")
    assert vxlan.ensure_tunnel(shell, "vx7", 7, local, [p2, p1], "xbr7", 1500) == state   # idempotent
    assert _ifindex(shell, "vx7") == index

    # another peer set: only the FDB changes (the same device stays)
    state = vxlan.ensure_tunnel(shell, "vx7", 7, local, [p2, p3], "xbr7", 1500)
    assert state["peers"] == [p2, p3] and _ifindex(shell, "vx7") == index
    fdb = shell.run(["bridge", "fdb", "show", "dev", "vx7"], timeout=10).stdout
    assert f"00:00:00:00:00:00 dst {p1} " not in fdb and f"00:00:00:00:00:00 dst {p3} " in fdb

    # another VNI: the device is replaced; the bridge MTU follows a smaller transport MTU
    state = vxlan.ensure_tunnel(shell, "vx7", 8, local, [p2], "xbr7", 1400)
    assert (state["vni"], state["peers"], state["mtu"], state["master"]) == (8, [p2], 1350, "xbr7")
    assert int(shell.run(["cat", "/sys/class/net/xbr7/mtu"], timeout=10).stdout) == 1350

    assert vxlan.remove_tunnel(shell, "vx7") is True
    assert vxlan.tunnel_state(shell, "vx7") is None
    assert vxlan.remove_tunnel(shell, "vx7") is False
    assert vxlan.remove_bridge(shell, "xbr7") is True and vxlan.remove_bridge(shell, "xbr7") is False


@root_only
def test_tunnel_errors_name_the_command_and_carry_its_stderr(netns_shell):
    shell, (local, p1, *_) = netns_shell
    with pytest.raises(vxlan.VxlanError, match="bridge nobr does not exist"):
        vxlan.ensure_tunnel(shell, "vx9", 9, local, [p1], "nobr", 1500)
    with pytest.raises(vxlan.VxlanError, match="xv0 .* is not a bridge"):
        vxlan.ensure_bridge(shell, "xv0", 1500)
    vxlan.ensure_bridge(shell, "xbr9", 1500)
    with pytest.raises(vxlan.VxlanError, match="not VXLAN") as e:
        vxlan.ensure_tunnel(shell, "xv0", 9, local, [p1], "xbr9", 1500)
    with pytest.raises(vxlan.VxlanError, match="is not a VXLAN device"):
        vxlan.remove_tunnel(shell, "xv0")
    assert vxlan.tunnel_state(shell, "xv0")["kind"] == "veth"          # left alone
    # a command the kernel refuses: its stderr is in the error
    with pytest.raises(vxlan.VxlanError) as e:
        vxlan.ensure_bridge(shell, "xbr9", 10)                 # below the minimum MTU
    assert e.value.returncode != 0 and e.value.stderr and e.value.stderr in str(e.value)
    assert "ip link set dev xbr9 mtu 10 up" in str(e.value)


def test_names_vnis_and_addresses_are_checked_before_any_command():
    shell = HostShell.unavailable("must not be used")
    for bad in ("", "x" * 16, "a b", "a/b", "..", "vx:1"):
        with pytest.raises(ValueError, match="device name"):
            vxlan.ensure_tunnel(shell, bad, 1, "10.0.0.1", [], "br0", 1500)
    assert vxlan.check_device_name("x" * 15) == "x" * 15
    assert vxlan.device_name("xtun", vxlan.MAX_VNI) == "xtun16777215"
    with pytest.raises(ValueError, match="too long|device name"):
        vxlan.device_name("xenapi-tunnel", 123)
    with pytest.raises(ValueError, match="out of range"):
        vxlan.ensure_tunnel(shell, "vx1", 1 << 24, "10.0.0.1", [], "br0", 1500)
    with pytest.raises(ValueError, match="bad peer address"):
        vxlan.ensure_tunnel(shell, "vx1", 1, "10.0.0.1", ["h2"], "br0", 1500)
    assert vxlan.tunnel_mtu(1500) == 1450 and vxlan.tunnel_mtu(9000) == 8950
    assert vxlan.available(for_uri("test:///default"))[0] is False
    assert "test driver" in vxlan.available(for_uri("test:///default"))[1]
