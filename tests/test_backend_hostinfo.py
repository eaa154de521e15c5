"""hostinfo: host facts from libvirt's test driver, and the parsers behind them on real-shaped XML."""
from __future__ import annotations

import re
import uuid as uuidlib

import libvirt
from defusedxml.ElementTree import fromstring

from tests.conftest import node_xml
from xenapi.backend import hostinfo
from xenapi.backend.connection import HostConnection

VERSION = re.compile(r"^\d+\.\d+\.\d+$")
GiB = 1024 ** 3


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
    # no CPU model: nothing to expand, the listed <features> are all there is; no vendor, no signature
    assert facts.arch == "i686" and facts.cpu_flags == ["pae", "nonpae"]
    assert (facts.cpu_vendor, facts.cpu_model, facts.cpu_brand) == ("", "", "")
    assert (facts.cpu_family, facts.cpu_model_number, facts.cpu_stepping) == (None, None, None)
    # test:///default: 2 NUMA cells x 2 sockets x 2 cores x 2 threads = 16 CPUs
    assert (facts.nr_nodes, facts.sockets, facts.cores_per_socket, facts.threads_per_core) == (2, 4, 2, 2)
    assert facts.cpu_count == facts.sockets * facts.cores_per_socket * facts.threads_per_core
    assert [(n.id, n.memory, n.cpus) for n in facts.numa_nodes] == [
        (0, 2 * GiB, list(range(8))), (1, 4 * GiB, list(range(8, 16)))]
    assert all(n.free is not None for n in facts.numa_nodes)
    # the exact total is the cells' sum (the test driver's node info says 3 GiB: it invents both)
    assert facts.memory_total == 6 * GiB and facts.memory_free > 0
    # i686 guests offering both PAE and non-PAE, under hvm and xen os types
    assert facts.capabilities == ["hvm-3.0-x86_32", "hvm-3.0-x86_32p", "xen-3.0-x86_32", "xen-3.0-x86_32p"]
    assert facts.virt_types == ["test"] and not facts.kvm
    assert facts.tpm_backends == [] and not facts.tpm      # getDomainCapabilities is unsupported here
    assert facts.iommu is False
    # an imaginary host: this machine's detection, NICs and /proc never leak into it
    assert facts.machine_hypervisor == "" and facts.nic_speeds == {}


def test_facts_follow_a_custom_test_driver_node(tmp_path):
    node = tmp_path / "node.xml"
    node.write_text(node_xml(domains=0))          # 1 node, 1 socket x 4 cores, 2400 MHz, 8 GiB
    facts = facts_for(f"test://{node}")
    assert (facts.cpu_count, facts.sockets, facts.cores_per_socket, facts.cpu_mhz) == (4, 1, 4, 2400)
    # its capabilities list no NUMA cells: the total is node info's, the node count getInfo's
    assert facts.numa_nodes == [] and facts.nr_nodes == 1 and facts.memory_total == 8 * GiB


def test_host_uuid_falls_back_to_a_stable_uuid_per_uri(tmp_path):
    # The test driver's capabilities carry no <host><uuid>.
    node = tmp_path / "node.xml"
    node.write_text("<node><memory>1048576</memory></node>")
    first, again, other = facts_for("test:///default"), facts_for("test:///default"), facts_for(f"test://{node}")
    assert first.uuid == again.uuid != other.uuid
    assert uuidlib.UUID(first.uuid).version == 5


def test_free_memory_is_libvirts_get_free_memory():
    conn = libvirt.open("test:///default")
    try:
        assert hostinfo.free_memory(conn) == conn.getFreeMemory() > 0
    finally:
        conn.close()


def test_version_text_unpacks_libvirts_number():
    assert hostinfo.version_text(9_000_000) == "9.0.0"
    assert hostinfo.version_text(7_002_013) == "7.2.13"


CAPS = """<capabilities><host><cpu><arch>x86_64</arch></cpu><iommu support='yes'/>
  <topology><cells num='2'>
    <cell id='0'><memory unit='KiB'>7301324</memory><cpus num='2'><cpu id='0'/><cpu id='1'/></cpus></cell>
    <cell id='2'><memory unit='MiB'>1024</memory><cpus num='1'><cpu id='2'/></cpus></cell>
  </cells></topology></host>
  <guest><os_type>hvm</os_type><arch name='i686'><domain type='qemu'/><domain type='kvm'/></arch>
    <features><pae/><nonpae/></features></guest>
  <guest><os_type>hvm</os_type><arch name='x86_64'><domain type='kvm'/></arch></guest>
  <guest><os_type>xen</os_type><arch name='i686'><domain type='xen'/></arch><features><pae/></features></guest>
  <guest><os_type>xen</os_type><arch name='x86_64'><domain type='xen'/></arch></guest>
  <guest><os_type>exe</os_type><arch name='x86_64'><domain type='lxc'/></arch></guest>
  <guest><os_type>uml</os_type><arch name='x86_64'/></guest>
</capabilities>"""


def test_guest_capabilities_name_abis_as_xen_does():
    # a 32-bit PV guest that needs PAE is only "x86_32p"; an unknown os_type is left out
    assert hostinfo.guest_capabilities(fromstring(CAPS)) == [
        "hvm-3.0-x86_32", "hvm-3.0-x86_32p", "hvm-3.0-x86_64", "xen-3.0-x86_32p", "xen-3.0-x86_64", "exe-x86_64"]


def test_numa_nodes_keep_cell_ids_units_and_cpus():
    conn = libvirt.open("test:///default")          # free memory per cell: it has cells 0 and 1, no 2
    try:
        nodes = hostinfo.numa_nodes(conn, fromstring(CAPS))
        cell0_free = conn.getCellsFreeMemory(0, 1)[0]
    finally:
        conn.close()
    assert [(n.id, n.memory, n.cpus) for n in nodes] == [(0, 7301324 * 1024, [0, 1]), (2, 1024 ** 3, [2])]
    assert [n.free for n in nodes] == [cell0_free, None]     # asked by cell id; unknown is None, not 0
    assert hostinfo.memory_total(nodes, getinfo_mib=7130) == 7301324 * 1024 + 1024 ** 3


def test_memory_total_uses_node_info_only_without_cells():
    assert hostinfo.memory_total([], getinfo_mib=7130) == 7130 * hostinfo.MIB
    empty_cell = hostinfo.NumaNode(0, 0, None, [])
    assert hostinfo.memory_total([empty_cell], getinfo_mib=512) == 512 * hostinfo.MIB


def test_cpu_flags_without_a_model_are_the_listed_features():
    conn = libvirt.open("test:///default")
    try:
        caps = fromstring("<capabilities><host><cpu><arch>x86_64</arch>"
                          "<feature name='vmx'/><feature name='avx2'/></cpu></host></capabilities>")
        assert hostinfo.cpu_flags(conn, caps) == ["vmx", "avx2"]
        assert hostinfo.cpu_flags(conn, fromstring("<capabilities><host/></capabilities>")) == []
    finally:
        conn.close()


def test_cpu_flags_fall_back_to_the_listed_features_when_expansion_fails():
    conn = libvirt.open("test:///default")      # baselineCPU knows no such model
    try:
        caps = fromstring("<capabilities><host><cpu><arch>x86_64</arch><model>NoSuchModel</model>"
                          "<feature name='avx2'/></cpu></host></capabilities>")
        assert hostinfo.cpu_flags(conn, caps) == ["avx2"]
    finally:
        conn.close()
