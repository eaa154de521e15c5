"""Facts read from this machine itself (/proc, /sys, /dev), not through libvirt.

They fill what libvirt does not say (the CPU's brand string, its family/model/stepping on older
libvirt, a NIC's speed where the node-device driver is missing, a host TPM) and they decide the
default libvirt URI.  They describe a host only when its libvirt URI is this machine's
(``is_this_machine``): a local, non-test URI.  libvirt's test driver is in-process on this
machine but describes an imaginary host, so the machine's facts never mix into it.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from urllib.parse import urlsplit

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
AUTO_URI = "auto"
DEFAULT_URIS = {"xen": "xen:///system", "kvm": "qemu:///system", "qemu": "qemu:///system"}
_REMOTE_TRANSPORTS = {"ssh", "libssh", "libssh2", "tls", "tcp"}


def is_local_uri(uri: str) -> bool:
    """True when the URI names this machine (no remote transport, no host part)."""
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2]
    return transport not in _REMOTE_TRANSPORTS and parts.hostname in (None, "", "localhost")


def is_this_machine(uri: str) -> bool:
    """True when the host behind the URI is this machine: local, and not libvirt's test driver."""
    return is_local_uri(uri) and urlsplit(uri).scheme.partition("+")[0] != "test"


# ---- hypervisor detection ----------------------------------------------------------------------

def detect_hypervisor() -> str:
    """What this machine can run: "xen" (a dom0), "kvm" (a usable /dev/kvm) or "qemu" (TCG only)."""
    if _read("/sys/hypervisor/type") == "xen" and "control_d" in _read("/proc/xen/capabilities"):
        return "xen"                  # a domU sees "xen" too, but has no control_d
    if kvm_usable():
        return "kvm"
    return "qemu"


def default_uri(hypervisor: str) -> str:
    """The system URI for a hypervisor name as ``detect_hypervisor`` returns it."""
    return DEFAULT_URIS[hypervisor]


def resolve_uri(uri: str) -> str:
    """``auto`` becomes this machine's default URI (xen:///system or qemu:///system); others stay."""
    return default_uri(detect_hypervisor()) if uri == AUTO_URI else uri


def kvm_usable() -> bool:
    """/dev/kvm opens read-write and answers KVM_GET_API_VERSION with the stable API (12)."""
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


# ---- CPU, NICs, TPM ----------------------------------------------------------------------------

def cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo ("vendor_id", "cpu family", "model name"...)."""
    fields: dict[str, str] = {}
    for line in _read(str(path)).splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def nic_speeds(sys_class_net: Path = Path("/sys/class/net")) -> dict[str, int | None]:
    """Link speed in Mbit/s of each physical NIC (one backed by a device; not lo, bridges, taps,
    bonds or VLANs), None where the kernel reports none (link down, or a driver without one)."""
    speeds: dict[str, int | None] = {}
    for nic in sorted(sys_class_net.iterdir()) if sys_class_net.is_dir() else ():
        if (nic / "device").exists():
            speeds[nic.name] = known_speed(_read(str(nic / "speed")))
    return speeds


def known_speed(text: str | None) -> int | None:
    """A speed in Mbit/s as sysfs or libvirt print it; None for unknown (-1, its unsigned twin
    4294967295 as libvirt prints it, 0, absent or not a number)."""
    try:
        speed = int(text or "")
    except ValueError:
        return None
    return speed if 0 < speed < 0xFFFFFFFF else None


def host_tpm_present(sys_class_tpm: Path = Path("/sys/class/tpm")) -> bool:
    """A TPM device the kernel drives (what libvirt's passthrough backend hands to a guest)."""
    return sys_class_tpm.is_dir() and any(sys_class_tpm.glob("tpm[0-9]*"))


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:                   # absent, or EINVAL (a down link's speed)
        return ""
