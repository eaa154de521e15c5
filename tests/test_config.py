"""The configuration file's per-host sections, whose keys are libvirt URIs (with colons, case and a
unix socket's own "=" in them): [host_exec] (how to run a command on a host) and [migrate_uri]
(what the other hosts' libvirtd dial to reach it)."""
import pytest

from xenapi.config import load

LAB1 = "qemu+unix:///system?socket=/run/lab1/libvirt-sock"


def test_host_exec_and_migrate_uri_keys_are_whole_uris(tmp_path):
    path = tmp_path / "xenapi.conf"
    path.write_text(f"""
[host_exec]
{LAB1} = nsenter --target 4242 --net --mount --uts --
qemu:///system = ip netns exec Lab2 env A=b
qemu+ssh://root@Host3/system = ssh -p 2222 root@Host3

[migrate_uri]
{LAB1} = qemu+tcp://10.231.0.1/system

[network]
latency_interval = 60
""")
    config = load(str(path))
    assert config.host_exec == {
        LAB1: ["nsenter", "--target", "4242", "--net", "--mount", "--uts", "--"],
        "qemu:///system": ["ip", "netns", "exec", "Lab2", "env", "A=b"],
        "qemu+ssh://root@Host3/system": ["ssh", "-p", "2222", "root@Host3"],
    }
    assert config.migrate_uris == {LAB1: "qemu+tcp://10.231.0.1/system"}
    assert config.network_latency_interval == 60.0


def test_a_host_exec_line_without_a_command_is_refused(tmp_path):
    path = tmp_path / "xenapi.conf"
    path.write_text("[host_exec]\nqemu:///system =\n")
    with pytest.raises(ValueError, match="host_exec"):
        load(str(path))
