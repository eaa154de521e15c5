"""Facts about one libvirt host, read once per (re)connect: what a scheduler needs to place a VM.

Every fact degrades instead of failing: drivers differ in what they implement (the test driver
has no domain capabilities, no host UUID, no CPU model and no node devices), and a missing fact
must not keep a host out of the pool.  Where libvirt is silent and the URI is this machine's
(``machine.is_this_machine``), /proc and /sys fill in; docs/host-facts.md lists every fact with
its source and unit.  ``read_host_facts`` takes a live ``virConnect``; ``HostConnection.host_facts``
is the way the rest of the server calls it.
"""
from __future__ import annotations

import logging
import shutil
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import libvirt
from defusedxml.ElementTree import fromstring as parse_untrusted

from xenapi.backend import machine
from xenapi.backend.libvirt_errors import optional

log = logging.getLogger(__name__)

MIB = 1024 * 1024
KIB = 1024
# libvirt's CPU vendor names -> the CPUID vendor strings xapi shows (as /proc/cpuinfo's vendor_id).
CPUID_VENDORS = {"Intel": "GenuineIntel", "AMD": "AuthenticAMD", "Hygon": "HygonGenuine"}
# os_type -> Xen-API capability prefix; xapi advertises the Xen ABI version "3.0".
_XENAPI_OS_TYPE = {"hvm": "hvm-3.0", "xen": "xen-3.0", "xenpvh": "pvh-3.0", "exe": "exe"}
_X86_32 = {"i686", "i386"}
_SIZE_UNITS = {"b": 1, "bytes": 1, "KiB": KIB, "k": KIB, "MiB": MIB, "M": MIB, "GiB": MIB * KIB, "G": MIB * KIB}


@dataclass(frozen=True)
class NumaNode:
    id: int
    memory: int                   # bytes (capabilities' <cell><memory>, exact to the KiB)
    free: int | None              # bytes free when the facts were read (getCellsFreeMemory); None: unsupported
    cpus: list[int]               # logical CPU numbers in this node


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    uuid: str                     # capabilities <host><uuid>, else uuid5 of the URI (stable per URI)
    hypervisor: str               # getType(): QEMU, Xen, LXC, TEST
    hypervisor_version: str       # "a.b.c"
    libvirt_version: str          # "a.b.c", the daemon's (getLibVersion)
    arch: str
    cpu_vendor: str               # CPUID vendor string: GenuineIntel, AuthenticAMD; "" unknown
    cpu_brand: str                # brand string, "Intel(R) Xeon(R) ..."; libvirt's model where unknown
    cpu_model: str                # libvirt's closest named model, "Broadwell"; "" where none
    cpu_family: int | None
    cpu_model_number: int | None
    cpu_stepping: int | None
    cpu_flags: list[str]          # libvirt's feature names, expanded from the model
    sockets: int
    cores_per_socket: int
    threads_per_core: int
    cpu_mhz: int
    cpu_count: int
    nr_nodes: int
    numa_nodes: list[NumaNode]    # in capabilities' order ([] where it lists no cells)
    memory_total: int             # bytes
    memory_free: int              # bytes, when the facts were read
    capabilities: list[str]       # Xen-API style: "hvm-3.0-x86_64", "hvm-3.0-x86_32p", "xen-3.0-x86_64"
    virt_types: list[str]         # libvirt <domain type>s offered: "kvm", "qemu", "xen", "test"...
    iommu: bool                   # capabilities' <iommu support='yes'/>
    tpm_backends: list[str]       # TPM backends a guest can really use: "emulator" (swtpm), "passthrough"
    machine_hypervisor: str       # machine.detect_hypervisor() when the URI is this machine, else ""
    nic_speeds: dict[str, int | None] = field(default_factory=dict)   # physical NICs, Mbit/s; None: unknown

    @property
    def tpm(self) -> bool:
        return bool(self.tpm_backends)

    @property
    def kvm(self) -> bool:
        return "kvm" in self.virt_types


def read_host_facts(conn: libvirt.virConnect, uri: str) -> HostFacts:
    """Read every fact; libvirt errors from calls that are merely unsupported are tolerated."""
    caps = parse_untrusted(conn.getCapabilities())
    arch, memory_mib, cpus, mhz, nodes, sockets_per_node, cores, threads = conn.getInfo()
    this_machine = machine.is_this_machine(uri)
    local_cpu = machine.cpuinfo() if this_machine else {}
    model = _text(caps, "host/cpu/model")
    family, model_number, stepping = _signature(caps, local_cpu)
    numa = numa_nodes(conn, caps)
    hypervisor = conn.getType()
    return HostFacts(
        hostname=optional(conn.getHostname, default=""),
        uuid=_text(caps, "host/uuid") or str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, uri)),
        hypervisor=hypervisor,
        hypervisor_version=optional(lambda: version_text(conn.getVersion()), default=""),
        libvirt_version=version_text(conn.getLibVersion()),
        arch=_text(caps, "host/cpu/arch") or arch,
        cpu_vendor=_cpu_vendor(_text(caps, "host/cpu/vendor"), local_cpu),
        cpu_brand=local_cpu.get("model name") or _smbios_processor(conn) or model,
        cpu_model=model,
        cpu_family=family, cpu_model_number=model_number, cpu_stepping=stepping,
        cpu_flags=cpu_flags(conn, caps),
        sockets=max(nodes, 1) * sockets_per_node,     # getInfo counts sockets per NUMA node
        cores_per_socket=cores,
        threads_per_core=threads,
        cpu_mhz=mhz,
        cpu_count=cpus,
        nr_nodes=len(numa) or nodes,
        numa_nodes=numa,
        memory_total=memory_total(numa, memory_mib),
        memory_free=optional(conn.getFreeMemory, default=0),
        capabilities=guest_capabilities(caps),
        virt_types=sorted({d.get("type") for d in caps.findall("guest/arch/domain") if d.get("type")}),
        iommu=caps.find("host/iommu[@support='yes']") is not None,
        tpm_backends=tpm_backends(conn, this_machine, hypervisor),
        machine_hypervisor=machine.detect_hypervisor() if this_machine else "",
        nic_speeds=nic_speeds(conn, this_machine),
    )


def free_memory(conn: libvirt.virConnect) -> int:
    """Bytes free on the host now (getFreeMemory): for ``HostConnection.read``."""
    return conn.getFreeMemory()


def version_text(number: int) -> str:
    """libvirt's packed major*1,000,000 + minor*1,000 + release as "a.b.c"."""
    return f"{number // 1_000_000}.{number // 1_000 % 1_000}.{number % 1_000}"


def memory_total(numa: list[NumaNode], getinfo_mib: int) -> int:
    """Bytes: the sum of the NUMA cells' memory (KiB-exact, as ``virsh nodeinfo``'s "Memory size"),
    or getInfo's figure, rounded down to the MiB by the binding, where capabilities list no cells."""
    if numa and all(node.memory > 0 for node in numa):
        return sum(node.memory for node in numa)
    return getinfo_mib * MIB


def cpu_flags(conn: libvirt.virConnect, caps: ET.Element) -> list[str]:
    """Every CPU feature of the host, in libvirt's names.  Capabilities give a named model plus the
    features beyond it; baselineCPU with EXPAND_FEATURES lists the model's own features too.
    Where that fails (no model, as the test driver's; a driver without baselineCPU) the listed
    features are all there is."""
    cpu = caps.find("host/cpu")
    if cpu is None:
        return []
    listed = [f.get("name") for f in cpu.findall("feature") if f.get("name")]
    listed += [f.tag for f in cpu.findall("features/*")]      # the test driver's and old Xen's <pae/>
    if cpu.find("model") is None:
        return list(dict.fromkeys(listed))
    try:
        expanded = parse_untrusted(conn.baselineCPU([ET.tostring(cpu, encoding="unicode")],
                                                    libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES))
    except libvirt.libvirtError as e:
        log.debug("event=cpu_expand_failed code=%s message=%s", e.get_error_code(), e.get_error_message())
        return list(dict.fromkeys(listed))
    required = [f.get("name") for f in expanded.findall("feature")
                if f.get("name") and f.get("policy", "require") == "require"]
    return list(dict.fromkeys(required + listed))


def numa_nodes(conn: libvirt.virConnect, caps: ET.Element) -> list[NumaNode]:
    found = []
    for position, cell in enumerate(caps.findall("host/topology/cells/cell")):
        node_id = _int(cell.get("id"), position)
        cpus = [int(c.get("id")) for c in cell.findall("cpus/cpu") if (c.get("id") or "").isdigit()]
        found.append(NumaNode(node_id, _size(cell.find("memory")), _cell_free(conn, node_id), cpus))
    return found


def guest_capabilities(caps: ET.Element) -> list[str]:
    """Xen-API capability strings from libvirt's guest capabilities, as Xen names them: a 32-bit
    x86 guest is "x86_32" without PAE and "x86_32p" with it (a guest listing both gets both)."""
    found = []
    for guest in caps.findall("guest"):
        prefix = _XENAPI_OS_TYPE.get(_text(guest, "os_type"))
        arch_element = guest.find("arch")
        if prefix is None or arch_element is None:
            continue
        arch = arch_element.get("name", "")
        variants = [arch]
        if arch in _X86_32:
            pae = guest.find("features/pae") is not None
            nonpae = guest.find("features/nonpae") is not None or not pae
            variants = ["x86_32"] * nonpae + ["x86_32p"] * pae
        found += [f"{prefix}-{variant}" for variant in variants]
    return list(dict.fromkeys(found))


def tpm_backends(conn: libvirt.virConnect, this_machine: bool, hypervisor: str) -> list[str]:
    """The TPM backends a guest can use.  Domain capabilities list "emulator" only when swtpm is
    installed, but "passthrough" whenever QEMU can do it, so that one also needs a host TPM, which
    only this machine's /sys can show.  libvirt without TPM enums: a local swtpm for QEMU."""
    try:
        domcaps = parse_untrusted(conn.getDomainCapabilities())
    except libvirt.libvirtError:         # unsupported (test driver), or no emulator for the arch
        return []
    tpm = domcaps.find("devices/tpm")
    offered = {v.text for v in domcaps.findall("devices/tpm/enum[@name='backendModel']/value")}
    if tpm is not None and tpm.get("supported") != "yes":
        return []
    if tpm is None or not offered:
        local_swtpm = hypervisor == "QEMU" and this_machine and shutil.which("swtpm") is not None
        return ["emulator"] if local_swtpm else []
    usable = ["emulator"] if "emulator" in offered else []
    if "passthrough" in offered and this_machine and machine.host_tpm_present():
        usable.append("passthrough")
    return usable


def nic_speeds(conn: libvirt.virConnect, this_machine: bool) -> dict[str, int | None]:
    """Physical NICs (a node device whose parent is hardware, not "computer") and their link
    speed in Mbit/s, None where unknown.  Without libvirt's node devices: this machine's sysfs."""
    try:
        devices = conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_NET)
    except libvirt.libvirtError as e:
        log.debug("event=nodedev_unavailable code=%s message=%s", e.get_error_code(), e.get_error_message())
        return machine.nic_speeds() if this_machine else {}
    speeds: dict[str, int | None] = {}
    for device in devices:
        text = optional(lambda: device.XMLDesc(0), default="")     # gone since the listing: skip
        if not text:
            continue
        root = parse_untrusted(text)
        name, link = _text(root, "capability/interface"), root.find("capability/link")
        if name and _text(root, "parent") not in ("", "computer"):
            speeds[name] = machine.known_speed(link.get("speed") if link is not None else None)
    return dict(sorted(speeds.items()))


# ---- helpers --------------------------------------------------------------------------------

def _text(root: ET.Element, path: str) -> str:
    element = root.find(path)
    return element.text.strip() if element is not None and element.text else ""


def _int(text: str | None, default: int | None = None) -> int | None:
    try:
        return int(text or "")
    except ValueError:
        return default


def _size(element: ET.Element | None) -> int:
    """Bytes of a libvirt size element (<memory unit='KiB'>7301324</memory>); KiB by default."""
    if element is None:
        return 0
    return (_int(element.text, 0) or 0) * _SIZE_UNITS.get(element.get("unit", "KiB"), KIB)


def _cell_free(conn: libvirt.virConnect, node_id: int) -> int | None:
    return optional(lambda: conn.getCellsFreeMemory(node_id, 1)[0], default=None)


def _cpu_vendor(libvirt_vendor: str, local_cpu: dict[str, str]) -> str:
    return CPUID_VENDORS.get(libvirt_vendor) or local_cpu.get("vendor_id") or libvirt_vendor


def _signature(caps: ET.Element, local_cpu: dict[str, str]) -> tuple[int | None, int | None, int | None]:
    """(family, model, stepping): capabilities' <signature> (recent libvirt, x86), else /proc/cpuinfo
    (this machine only)."""
    signature = caps.find("host/cpu/signature")
    if signature is not None:
        return (_int(signature.get("family")), _int(signature.get("model")), _int(signature.get("stepping")))
    return (_int(local_cpu.get("cpu family")), _int(local_cpu.get("model")), _int(local_cpu.get("stepping")))


def _smbios_processor(conn: libvirt.virConnect) -> str:
    """The first processor's version string in the host's SMBIOS (getSysinfo; needs dmidecode there)."""
    text = optional(lambda: conn.getSysinfo(0), default="")
    if not text:
        return ""
    return _text(parse_untrusted(text), "processor/entry[@name='version']")
