"""End to end: the host record of a real libvirtd (QEMU) against what virsh, /proc and /sys say.

Each fact the API shows for the host (host.cpu_info, software_version, capabilities,
chipset_info, nic_speeds, host_cpu, host_metrics) is compared with an independent reading of
the same machine: ``virsh nodeinfo``, ``virsh capabilities``, ``virsh domcapabilities``,
``virsh version``, /proc/cpuinfo and /sys/class/net.  The suite's libvirt is local, so the
facts libvirt leaves to the machine itself (brand string, NIC speeds) are this machine's.
"""
from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from qemu_e2e import virsh
from xenapi.backend import machine

pytestmark = pytest.mark.e2e
KiB = 1024
X86_FEATURES = Path("/usr/share/libvirt/cpu_map/x86_features.xml")   # libvirt's x86 feature names


@pytest.fixture
def host_record(start_xenapi):
    server = start_xenapi()
    x = server.x
    host = x.host.get_all()[0]
    deadline = time.monotonic() + 60          # another suite may be restarting libvirtd right now
    while not x.host.get_cpu_info(host):
        assert time.monotonic() < deadline, "the host's facts were never published"
        time.sleep(0.2)
    server.server.hosts.sampler.refresh(host)   # host_metrics as the metrics sampler keeps them
    return x, host, x.host.get_record(host)


def _nodeinfo() -> dict[str, str]:
    return dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in virsh("nodeinfo").splitlines()))


def _capabilities() -> ET.Element:
    return ET.fromstring(virsh("capabilities"))


def _proc_cpuinfo() -> dict[str, str]:
    block = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines())}


def test_cpu_topology_speed_and_memory_match_virsh_nodeinfo(host_record):
    x, host, record = host_record
    info, node = record["cpu_info"], _nodeinfo()
    cells = int(node["NUMA cell(s)"])
    assert info["cpu_count"] == node["CPU(s)"]
    assert info["speed"] == node["CPU frequency"].split()[0]
    assert info["socket_count"] == str(cells * int(node["CPU socket(s)"]))   # virsh: sockets per cell
    assert info["cores_per_socket"] == node["Core(s) per socket"]
    assert info["threads_per_core"] == node["Thread(s) per core"]
    assert info["nr_nodes"] == str(cells)
    memory = int(node["Memory size"].split()[0]) * KiB                       # KiB-exact, not MiB-rounded
    assert sum(int(v) for k, v in info.items() if re.fullmatch(r"numa_node\d+_memory", k)) == memory
    assert 0 < int(x.host.compute_free_memory(host)) <= memory
    assert len(record["host_CPUs"]) == int(node["CPU(s)"])


def test_host_metrics_memory_total_is_exact_after_the_samplers_refresh(host_record):
    x, _, record = host_record
    memory = int(_nodeinfo()["Memory size"].split()[0]) * KiB
    assert x.host_metrics.get_memory_total(record["metrics"]) == str(memory)


def test_cpu_identity_and_numa_cells_match_virsh_capabilities_and_proc_cpuinfo(host_record):
    x, _, record = host_record
    info, cpu = record["cpu_info"], _capabilities().find("host/cpu")
    proc = _proc_cpuinfo()
    assert info["libvirt_model"] == cpu.findtext("model")
    assert info["arch"] == cpu.findtext("arch")
    assert info["vendor"] == proc["vendor_id"]
    assert info["modelname"] == proc["model name"]
    assert (info["family"], info["model"], info["stepping"]) == (proc["cpu family"], proc["model"], proc["stepping"])
    signature = cpu.find("signature")
    if signature is not None:
        assert (info["family"], info["model"], info["stepping"]) == (
            signature.get("family"), signature.get("model"), signature.get("stepping"))
    for cell in _capabilities().findall("host/topology/cells/cell"):
        n = cell.get("id")
        assert int(info[f"numa_node{n}_memory"]) == int(cell.findtext("memory")) * KiB
        assert info[f"numa_node{n}_cpus"].split() == [c.get("id") for c in cell.findall("cpus/cpu")]
        assert info[f"numa_node{n}_free"].isdigit()
    cpus = [x.host_cpu.get_record(ref) for ref in record["host_CPUs"]]
    assert {(c["vendor"], c["modelname"], c["family"], c["model"], c["stepping"], c["flags"]) for c in cpus} == {
        (info["vendor"], info["modelname"], info["family"], info["model"], info["stepping"], info["flags"])}


def test_flags_hold_every_feature_the_cpu_has_not_only_those_beyond_the_model(host_record):
    _, _, record = host_record
    flags = set(record["cpu_info"]["flags"].split())
    listed = {f.get("name") for f in _capabilities().findall("host/cpu/feature")}
    assert listed <= flags and len(flags) > len(listed)         # the model's own features are in
    linux = set(_proc_cpuinfo()["flags"].split())
    assert X86_FEATURES.exists(), f"{X86_FEATURES} (libvirt's x86 feature names) is missing"
    vocabulary = {f.get("name") for f in ET.parse(X86_FEATURES).getroot().iter("feature")}
    missing = (linux & vocabulary) - flags                        # features both name the same way
    assert not missing, f"/proc/cpuinfo has {sorted(missing)}, cpu_info flags do not"
    for common in ("sse2", "avx", "avx2", "aes", "fma", "bmi2", "avx512f"):
        assert (common in flags) == (common in linux), common


def test_versions_virt_types_and_capabilities_match_virsh(host_record):
    _, _, record = host_record
    versions, caps = record["software_version"], _capabilities()
    lines = dict(line.partition(": ")[::2] for line in virsh("version").splitlines())
    hypervisor, _, hypervisor_version = lines["Running hypervisor"].partition(" ")
    assert (versions["hypervisor"], versions["hypervisor_version"]) == (hypervisor, hypervisor_version)
    daemon = lines.get("Running against daemon") or lines["Using library"].split()[-1]
    assert versions["libvirt"] == versions["platform_version"] == daemon
    offered = {d.get("type") for d in caps.findall("guest/arch/domain")}
    assert set(versions["virt_types"].split()) == offered
    assert versions["kvm_usable"] == ("true" if "kvm" in offered else "false")
    assert versions["detected_hypervisor"] == machine.detect_hypervisor()
    arches = {g.find("arch").get("name") for g in caps.findall("guest") if g.findtext("os_type") == "hvm"}
    expected = {"x86_64": {"hvm-3.0-x86_64"}, "i686": {"hvm-3.0-x86_32", "hvm-3.0-x86_32p"}}
    for arch in arches & expected.keys():
        assert expected[arch] <= set(record["capabilities"]), arch


def test_tpm_and_iommu_match_virsh_domcapabilities_and_capabilities(host_record):
    _, _, record = host_record
    chipset = record["chipset_info"]
    backends = {v.text for v in ET.fromstring(virsh("domcapabilities")).findall(
        "devices/tpm/enum[@name='backendModel']/value")}
    assert ("emulator" in chipset["tpm_backends"].split()) == ("emulator" in backends)
    host_tpm = machine.host_tpm_present()
    assert ("passthrough" in chipset["tpm_backends"].split()) == ("passthrough" in backends and host_tpm)
    assert chipset["tpm"] == ("true" if chipset["tpm_backends"] else "false")
    iommu = _capabilities().find("host/iommu")
    assert chipset["iommu"] == ("true" if iommu is not None and iommu.get("support") == "yes" else "false")


def test_nic_speeds_match_sysfs_with_unknown_speeds_reported(host_record):
    _, _, record = host_record
    expected = {}
    for nic in Path("/sys/class/net").iterdir():
        if (nic / "device").exists():                             # physical: lo, bridges, taps are not
            try:
                speed = int((nic / "speed").read_text())
            except (OSError, ValueError):
                speed = -1
            expected[nic.name] = str(speed) if speed > 0 else "unknown"
    assert record["nic_speeds"] == expected
    assert not any(k.startswith("nic_speed") for k in record["other_config"])
