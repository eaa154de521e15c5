"""host facts through the API on libvirt's test driver: the host and host_cpu records, their
read-only maps, host.compute_free_memory, the ``auto`` URI, and docs/host-facts.md covering them."""
from __future__ import annotations

import re
from pathlib import Path

import libvirt
import pytest
import XenAPI

from tests.conftest import start_server, stop_server
from xenapi.backend import machine
from xenapi.config import Config, load
from xenapi.server import Server

GiB = 1024 ** 3
FACTS_DOC = Path(__file__).resolve().parents[1] / "docs" / "host-facts.md"
XAPI_CPU_INFO_KEYS = {"cpu_count", "socket_count", "threads_per_core", "nr_nodes", "vendor", "speed",
                      "modelname", "family", "model", "stepping", "flags"}
XAPI_SOFTWARE_VERSION_KEYS = {"product_version", "product_version_text", "product_version_text_short",
                              "platform_name", "platform_version", "product_brand", "xapi", "build_number",
                              "hostname", "date", "xen", "network_backend"}


@pytest.fixture
def default_host(tmp_path):
    """A server on test:///default (2 NUMA cells, 16 CPUs) and its host record."""
    running = start_server(tmp_path, uris=["test:///default"])
    session = running.session()
    host = session.xenapi.host.get_all()[0]
    yield running, session.xenapi, host
    session.xenapi.session.logout()
    stop_server(running)


def test_cpu_info_has_xapis_keys_and_numa_nodes(default_host):
    _, x, host = default_host
    info = x.host.get_cpu_info(host)
    assert XAPI_CPU_INFO_KEYS <= info.keys()
    assert (info["cpu_count"], info["socket_count"], info["threads_per_core"], info["nr_nodes"]) == ("16", "4", "2", "2")
    # the test driver names no vendor, model or signature: unknown is "", never made up
    assert (info["vendor"], info["modelname"], info["family"], info["model"], info["stepping"]) == ("", "", "", "", "")
    assert info["flags"] == "pae nonpae" and info["arch"] == "i686"
    assert (info["numa_node0_memory"], info["numa_node1_memory"]) == (str(2 * GiB), str(4 * GiB))
    assert info["numa_node0_cpus"] == " ".join(map(str, range(8)))
    assert info["numa_node1_cpus"] == " ".join(map(str, range(8, 16)))
    assert info["numa_node0_free"].isdigit() and info["numa_node1_free"].isdigit()


def test_software_version_capabilities_and_chipset_info(default_host):
    _, x, host = default_host
    versions = x.host.get_software_version(host)
    assert XAPI_SOFTWARE_VERSION_KEYS <= versions.keys()
    assert versions["hypervisor"] == "TEST" and versions["libvirt_uri"] == "test:///default"
    assert (versions["virt_types"], versions["kvm_usable"], versions["detected_hypervisor"]) == ("test", "false", "")
    assert versions["libvirt"] == versions["platform_version"] == "%d.%d.%d" % _split(libvirt.getVersion())
    assert x.host.get_capabilities(host) == ["hvm-3.0-x86_32", "hvm-3.0-x86_32p", "xen-3.0-x86_32", "xen-3.0-x86_32p"]
    assert x.host.get_chipset_info(host) == {"iommu": "false", "tpm": "false", "tpm_backends": ""}


def test_host_cpus_carry_the_hosts_cpu_with_xapis_unknowns(default_host):
    _, x, host = default_host
    cpus = [x.host_cpu.get_record(ref) for ref in x.host.get_host_CPUs(host)]
    assert sorted(int(c["number"]) for c in cpus) == list(range(16))
    for cpu in cpus:
        assert (cpu["family"], cpu["model"], cpu["stepping"], cpu["features"]) == ("-1", "-1", "", "")
        assert cpu["flags"] == "pae nonpae" and cpu["speed"] == x.host.get_cpu_info(host)["speed"]


def test_nic_speeds_and_server_facts_are_read_only(default_host):
    _, x, host = default_host
    assert x.host.get_nic_speeds(host) == {}            # an imaginary host has no NICs
    assert "nic_speeds_mbit" not in x.host.get_other_config(host)
    for setter in ("set_nic_speeds", "set_cpu_info", "set_software_version", "set_chipset_info"):
        with pytest.raises(XenAPI.Failure) as failure:
            getattr(x.host, setter)(host, {})
        assert failure.value.details[0] == "MESSAGE_METHOD_UNKNOWN"


def test_compute_free_memory_reads_only_free_memory(default_host):
    """On the test driver (whose own getFreeMemory is made up: about 3 MiB of a 6 GiB host) free
    memory is the host's total less the nominal OS and what the running guests are given; no
    capabilities or other facts are re-read for it."""
    from xenapi.services.placement import SIMULATED_OS_MEMORY
    running, x, host = default_host
    facts = running.server.hosts.facts(host)
    guests = sum(int(x.VM.get_memory_dynamic_max(v)) for v in x.host.get_resident_VMs(host)
                 if not x.VM.get_is_control_domain(v))
    assert int(x.host.compute_free_memory(host)) == facts.memory_total - SIMULATED_OS_MEMORY - guests > 0
    assert running.server.hosts.facts(host) is facts    # no capabilities or other facts re-read


def test_auto_uri_resolves_through_detection_once_per_host(tmp_path):
    config_file = tmp_path / "xenapi.conf"
    config_file.write_text("[libvirt]\nuri = auto\n")
    assert load(str(config_file)).libvirt_uris == ["auto"]
    detected = machine.default_uri(machine.detect_hypervisor())
    server = Server(Config(state=":memory:", libvirt_uris=["auto", detected, "test:///default"]))
    assert server.hosts.refs == [server.hosts.ref_of(detected), server.hosts.ref_of("test:///default")]
    with pytest.raises(KeyError):
        server.hosts.ref_of("auto")


def test_every_published_key_is_documented(default_host):
    _, x, host = default_host
    first_cells = re.findall(r"^\| ([^|]+) \|", FACTS_DOC.read_text(), re.M)
    documented = {key for cell in first_cells for key in re.findall(r"`([^`]+)`", cell)}
    record = x.host.get_record(host)
    published = set(record["cpu_info"]) | set(record["software_version"]) | set(record["chipset_info"])
    published = {re.sub(r"^numa_node\d+_", "numa_node<N>_", key) for key in published}
    assert published <= documented, sorted(published - documented)


def _split(number: int) -> tuple[int, int, int]:
    return number // 1_000_000, number // 1_000 % 1_000, number % 1_000
