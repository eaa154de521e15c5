"""The Xen-API view of a host's facts: the read-only maps and fields of host and host_cpu.

Everything here is a server fact, so it lives in fields no client can write (cpu_info,
software_version, capabilities, chipset_info, nic_speeds), never in other_config.  Keys follow
xapi where xapi has them and are documented, with their sources and units, in docs/host-facts.md.
Map values are strings, as in xapi; an unknown fact is "" (or "unknown" for a NIC's speed), an
unknown integer field of host_cpu is -1 (xapi's own placeholder).
"""
from __future__ import annotations

from xenapi.backend.hostinfo import HostFacts

PRODUCT_VERSION = "0.1.0"
XAPI_VERSION = "2.21"            # the xapi API level whose wire protocol this server follows
UNKNOWN_SPEED = "unknown"


def software_version(uri: str, facts: HostFacts) -> dict[str, str]:
    return {
        "product_brand": "xenapi", "product_version": PRODUCT_VERSION,
        "product_version_text": PRODUCT_VERSION, "product_version_text_short": PRODUCT_VERSION,
        "platform_name": "libvirt", "platform_version": facts.libvirt_version,
        "build_number": PRODUCT_VERSION, "hostname": facts.hostname, "date": "", "xapi": XAPI_VERSION,
        "xen": facts.hypervisor_version if facts.hypervisor == "Xen" else "", "network_backend": "bridge",
        "hypervisor": facts.hypervisor, "hypervisor_version": facts.hypervisor_version,
        "libvirt": facts.libvirt_version, "libvirt_uri": uri,
        "virt_types": " ".join(facts.virt_types), "kvm_usable": _bool(facts.kvm),
        "detected_hypervisor": facts.machine_hypervisor,
    }


def cpu_info(facts: HostFacts) -> dict[str, str]:
    info = {
        "cpu_count": str(facts.cpu_count), "socket_count": str(facts.sockets),
        "cores_per_socket": str(facts.cores_per_socket), "threads_per_core": str(facts.threads_per_core),
        "nr_nodes": str(facts.nr_nodes), "vendor": facts.cpu_vendor, "speed": str(facts.cpu_mhz),
        "modelname": facts.cpu_brand, "family": _text(facts.cpu_family), "model": _text(facts.cpu_model_number),
        "stepping": _text(facts.cpu_stepping), "flags": " ".join(facts.cpu_flags),
        "libvirt_model": facts.cpu_model, "arch": facts.arch,
    }
    for node in facts.numa_nodes:
        info[f"numa_node{node.id}_memory"] = str(node.memory)
        info[f"numa_node{node.id}_free"] = _text(node.free)
        info[f"numa_node{node.id}_cpus"] = " ".join(map(str, node.cpus))
    return info


def chipset_info(facts: HostFacts) -> dict[str, str]:
    return {"iommu": _bool(facts.iommu), "tpm": _bool(facts.tpm), "tpm_backends": " ".join(facts.tpm_backends)}


def nic_speeds(facts: HostFacts) -> dict[str, str]:
    return {nic: UNKNOWN_SPEED if speed is None else str(speed) for nic, speed in facts.nic_speeds.items()}


def host_cpu(host: str, number: int, facts: HostFacts | None) -> dict:
    """One logical CPU; every CPU of a host shows the host's (libvirt describes one host CPU)."""
    if facts is None:
        return {"host": host, "number": number}
    return {"host": host, "number": number, "vendor": facts.cpu_vendor, "speed": facts.cpu_mhz,
            "modelname": facts.cpu_brand, "family": _number(facts.cpu_family),
            "model": _number(facts.cpu_model_number), "stepping": _text(facts.cpu_stepping),
            "flags": " ".join(facts.cpu_flags), "features": ""}    # xapi too leaves features empty


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _text(value: int | None) -> str:
    return "" if value is None else str(value)


def _number(value: int | None) -> int:
    return -1 if value is None else value
