"""Facts about one libvirt host, read once per (re)connect, and hypervisor detection.

Every fact degrades instead of failing: drivers differ in what they implement (the test driver
has no domain capabilities and no host UUID), and a missing fact must not keep a host out of
the pool.  ``read_host_facts`` takes a live ``virConnect``; ``HostConnection.host_facts`` is the
way the rest of the server calls it.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import urlsplit

import libvirt
from defusedxml.ElementTree import fromstring as parse_untrusted

log = logging.getLogger(__name__)

MIB = 1024 * 1024
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
DEFAULT_URIS = {"xen": "xen:///system", "kvm": "qemu:///system", "qemu": "qemu:///system",
                "lxc": "lxc:///system", "test": "test:///default"}
# Xen-API capability strings name 32-bit x86 "x86_32" (xapi: "hvm-3.0-x86_32").
_XENAPI_ARCH = {"i686": "x86_32", "i386": "x86_32"}
# os_type -> Xen-API capability prefix; xapi advertises the Xen ABI version "3.0".
_XENAPI_OS_TYPE = {"hvm": "hvm-3.0", "xen": "xen-3.0", "xenpvh": "pvh-3.0", "exe": "exe"}
_REMOTE_TRANSPORTS = {"ssh", "libssh", "libssh2", "tls", "tcp"}

T = TypeVar("T")


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    uuid: str                     # capabilities <host><uuid>, else uuid5 of the URI (stable per URI)
    hypervisor: str               # getType(): QEMU, Xen, LXC, TEST
    hypervisor_version: str       # "a.b.c"
    libvirt_version: str          # "a.b.c"
    arch: str
    cpu_vendor: str
    cpu_model: str
    cpu_features: list[str]
    sockets: int
    cores_per_socket: int
    threads_per_core: int
    cpu_mhz: int
    cpu_count: int
    numa_cells: int
    numa_cell_memory: list[int]   # bytes per cell, in cell order
    numa_cell_free: list[int]     # bytes free per cell, same order ([] where unsupported)
    memory_total: int             # bytes
    memory_free: int              # bytes
    capabilities: list[str]       # Xen-API style: "hvm-3.0-x86_64", "xen-3.0-x86_64", "exe-x86_64"
    virt_types: list[str]         # libvirt <domain type>s offered: "kvm", "qemu", "xen", "test"...
    tpm: bool
    nic_speeds: dict[str, int] = field(default_factory=dict)   # Mbit/s, local hosts only


def read_host_facts(conn: libvirt.virConnect, uri: str) -> HostFacts:
    """Read every fact; libvirt errors from calls that are merely unsupported are tolerated."""
    caps = parse_untrusted(conn.getCapabilities())
    arch, memory_mib, cpus, mhz, nodes, sockets_per_node, cores, threads = conn.getInfo()
    cell_memory = _cell_totals(caps)
    hypervisor = conn.getType()
    return HostFacts(
        hostname=optional(conn.getHostname, default=""),
        uuid=_text(caps, "host/uuid") or str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, uri)),
        hypervisor=hypervisor,
        hypervisor_version=optional(lambda: version_text(conn.getVersion()), default=""),
        libvirt_version=version_text(conn.getLibVersion()),
        arch=_text(caps, "host/cpu/arch") or arch,
        cpu_vendor=_text(caps, "host/cpu/vendor"),
        cpu_model=_text(caps, "host/cpu/model"),
        cpu_features=_cpu_features(caps),
        sockets=max(nodes, 1) * sockets_per_node,     # getInfo counts sockets per NUMA node
        cores_per_socket=cores,
        threads_per_core=threads,
        cpu_mhz=mhz,
        cpu_count=cpus,
        numa_cells=len(cell_memory) or nodes,
        numa_cell_memory=cell_memory,
        numa_cell_free=optional(lambda: list(conn.getCellsFreeMemory(0, len(cell_memory))), default=[])
        if cell_memory else [],
        memory_total=memory_mib * MIB,
        memory_free=optional(conn.getFreeMemory, default=0),
        capabilities=_guest_capabilities(caps),
        virt_types=sorted({d.get("type") for d in caps.findall("guest/arch/domain") if d.get("type")}),
        tpm=_tpm_available(conn, uri, hypervisor),
        nic_speeds=nic_speeds() if is_local_uri(uri) else {},
    )


def version_text(number: int) -> str:
    """libvirt's packed major*1,000,000 + minor*1,000 + release as "a.b.c"."""
    return f"{number // 1_000_000}.{number // 1_000 % 1_000}.{number % 1_000}"


def is_local_uri(uri: str) -> bool:
    """True when the URI names this machine (no remote transport, no host part)."""
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2]
    return transport not in _REMOTE_TRANSPORTS and parts.hostname in (None, "", "localhost")


def nic_speeds(sys_class_net: Path = Path("/sys/class/net")) -> dict[str, int]:
    """Link speed in Mbit/s per interface that reports one (down links and virtual ones often don't)."""
    speeds = {}
    for speed_file in sorted(sys_class_net.glob("*/speed")):
        try:
            speed = int(speed_file.read_text().strip())
        except (OSError, ValueError):    # EINVAL when the link is down
            continue
        if speed > 0:
            speeds[speed_file.parent.name] = speed
    return speeds


def detect_hypervisor() -> str:
    """What this machine can run: "xen" (dom0), "kvm" (usable /dev/kvm) or "qemu" (TCG)."""
    if _read("/sys/hypervisor/type") == "xen" and "control_d" in _read("/proc/xen/capabilities"):
        return "xen"
    if _kvm_usable():
        return "kvm"
    return "qemu"


def default_uri(hypervisor: str) -> str:
    """The system URI for a hypervisor name as ``detect_hypervisor`` returns it."""
    return DEFAULT_URIS[hypervisor]


# ---- helpers --------------------------------------------------------------------------------

def optional(call: Callable[[], T], *, default: T) -> T:
    try:
        return call()
    except libvirt.libvirtError as e:
        log.debug("event=host_fact_unavailable code=%s message=%s", e.get_error_code(), e.get_error_message())
        return default


def _text(root: ET.Element, path: str) -> str:
    element = root.find(path)
    return element.text.strip() if element is not None and element.text else ""


def _cpu_features(caps: ET.Element) -> list[str]:
    # Real drivers list <feature name=..>; the test driver and old Xen use <features><pae/>.
    named = [f.get("name") for f in caps.findall("host/cpu/feature") if f.get("name")]
    legacy = [f.tag for f in caps.findall("host/cpu/features/*")]
    return list(dict.fromkeys(named + legacy))


def _cell_totals(caps: ET.Element) -> list[int]:
    totals = []
    for cell in caps.findall("host/topology/cells/cell"):
        memory = cell.find("memory")
        unit = memory.get("unit", "KiB") if memory is not None else "KiB"
        kib = int(memory.text) if memory is not None and memory.text else 0
        totals.append(kib * (1 if unit in ("b", "bytes") else 1024))
    return totals


def _guest_capabilities(caps: ET.Element) -> list[str]:
    found = []
    for guest in caps.findall("guest"):
        os_type = _text(guest, "os_type")
        arch_element = guest.find("arch")
        if arch_element is None or os_type not in _XENAPI_OS_TYPE:
            continue
        arch = arch_element.get("name", "")
        found.append(f"{_XENAPI_OS_TYPE[os_type]}-{_XENAPI_ARCH.get(arch, arch)}")
    return list(dict.fromkeys(found))


def _tpm_available(conn: libvirt.virConnect, uri: str, hypervisor: str) -> bool:
    """Domain capabilities say so; libvirt older than the <tpm> element: a local swtpm for QEMU."""
    try:
        domcaps = parse_untrusted(conn.getDomainCapabilities())
    except libvirt.libvirtError:         # unsupported (test driver), or no emulator for the arch
        return False
    tpm = domcaps.find("devices/tpm")
    if tpm is not None:
        return tpm.get("supported") == "yes"
    return hypervisor == "QEMU" and is_local_uri(uri) and shutil.which("swtpm") is not None


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, KVM_GET_API_VERSION) == KVM_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)
