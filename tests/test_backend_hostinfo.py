"""hostinfo: host facts from libvirt's test driver, detection and URI helpers."""
from __future__ import annotations

import re
import uuid as uuidlib

import pytest

from xenapi.backend import hostinfo
from xenapi.backend.connection import HostConnection

VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def facts_for(uri: str) -> hostinfo.HostFacts:
    connection = HostConnection(uri, lambda *a: None, lambda *a: None)
    connection.open()
    try:
        return connection.host_facts()
    finally:
        connection.close()


def test_facts_of_the_test_driver_degrade_where_calls_are_unsupported():
    facts = facts_for("test:///default")
    assert facts.hypervisor == "TEST" and facts.hostname
    assert VERSION.match(facts.hypervisor_version) and VERSION.match(facts.libvirt_version)
    assert facts.arch == "i686" and "pae" in facts.cpu_features
    # test:///default: 2 NUMA cells x 2 sockets x 2 cores x 2 threads = 16 CPUs
    assert (facts.numa_cells, facts.sockets, facts.cores_per_socket, facts.threads_per_core) == (2, 4, 2, 2)
    assert facts.cpu_count == facts.sockets * facts.cores_per_socket * facts.threads_per_core
    assert len(facts.numa_cell_memory) == 2 and all(m > 0 for m in facts.numa_cell_memory)
    assert facts.memory_total == 3072 * hostinfo.MIB and facts.memory_free > 0
    assert facts.capabilities == ["hvm-3.0-x86_32", "xen-3.0-x86_32"]
    assert facts.virt_types == ["test"]
    assert facts.tpm is False                  # getDomainCapabilities is unsupported here


def test_host_uuid_falls_back_to_a_stable_uuid_per_uri(tmp_path):
    # The test driver's capabilities carry no <host><uuid>.
    node = tmp_path / "node.xml"
    node.write_text("<node><memory>1048576</memory></node>")
    first, again, other = facts_for("test:///default"), facts_for("test:///default"), facts_for(f"test://{node}")
    assert first.uuid == again.uuid != other.uuid
    assert uuidlib.UUID(first.uuid).version == 5


def test_version_text_unpacks_libvirts_number():
    assert hostinfo.version_text(9_000_000) == "9.0.0"
    assert hostinfo.version_text(7_002_013) == "7.2.13"


@pytest.mark.parametrize("uri,local", [
    ("test:///default", True), ("qemu:///system", True), ("xen:///system", True),
    ("test+unix:///default?socket=/tmp/s", True), ("qemu+ssh://root@h1/system", False),
    ("qemu+tls://h2.example/system", False), ("qemu+tcp://localhost/system", False),
    ("qemu://h3/system", False)])
def test_is_local_uri(uri, local):
    assert hostinfo.is_local_uri(uri) is local


def test_nic_speeds_reads_sysfs_and_skips_unknown_speeds(tmp_path):
    for nic, speed in (("eth0", "1000\n"), ("eth1", "-1\n"), ("wlan0", "oops")):
        (tmp_path / nic).mkdir()
        (tmp_path / nic / "speed").write_text(speed)
    (tmp_path / "lo").mkdir()                   # no speed file at all
    assert hostinfo.nic_speeds(tmp_path) == {"eth0": 1000}


def test_detect_hypervisor_names_a_supported_default_uri():
    hypervisor = hostinfo.detect_hypervisor()
    assert hypervisor in ("xen", "kvm", "qemu")
    assert hostinfo.default_uri(hypervisor) in ("xen:///system", "qemu:///system")


def test_default_uri_per_hypervisor():
    assert hostinfo.default_uri("xen") == "xen:///system"
    assert hostinfo.default_uri("kvm") == hostinfo.default_uri("qemu") == "qemu:///system"
