"""Live figures of a host and its domains, from libvirt's bulk statistics.

``read(host, cpus)`` takes one sample of a host with a number of libvirt calls that does not grow
with its domains: one ``getAllDomainStats`` for every active domain (cpu, vCPU, balloon, block and
net groups, NOWAIT so a domain busy with a job cannot stall it), ``getFreeMemory``, and
``getCPUStats`` per host CPU (``cpus``: the host facts' count, read once per connect).  Drivers report what they can (the test
driver gives no domain figures, a user-mode NIC no counters, a guest without a balloon driver no
free memory): a figure a driver does not report is None, never a made-up 0.

Rates need two samples: ``vcpu_utilisation`` and ``cpu_utilisation`` compare a sample with the
one before it, as xapi's VCPUs_utilisation and host_cpu.utilisation (fractions 0..1).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import libvirt

from xenapi.backend.connection import HostConnection
from xenapi.backend.libvirt_errors import is_unsupported, optional, with_optional_flags

KIB = 1024
# Utilisation is rounded to 0.1 %, so jitter below that changes no record and makes no event.
UTILISATION_DIGITS = 3

_GROUPS = (libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_VCPU | libvirt.VIR_DOMAIN_STATS_BALLOON
           | libvirt.VIR_DOMAIN_STATS_BLOCK | libvirt.VIR_DOMAIN_STATS_INTERFACE)
# ACTIVE, not RUNNING: a paused domain still holds its memory (and its vCPUs are idle, not unknown).
_ACTIVE = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
_NOWAIT = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
_VCPU_TIME = re.compile(r"vcpu\.(\d+)\.time")
_IDLE = ("idle", "iowait")


@dataclass(frozen=True)
class DomainSample:
    cpu_time: int | None = None          # ns used by the whole domain (vCPUs and emulator)
    vcpu_times: dict[int, int] = field(default_factory=dict)   # ns per vCPU
    vcpus: int | None = None             # vCPUs online
    memory_actual: int | None = None     # bytes: the balloon's current size
    memory_free: int | None = None       # bytes the guest leaves unused (its balloon driver says)
    disk_read_bytes: int | None = None   # summed over the domain's disks
    disk_write_bytes: int | None = None
    net_rx_bytes: int | None = None      # summed over its NICs, as the guest sees them
    net_tx_bytes: int | None = None


@dataclass(frozen=True)
class CpuTimes:
    busy: int                            # ns, all states but idle and iowait
    total: int                           # ns, all states


@dataclass(frozen=True)
class HostSample:
    taken: int                           # time.monotonic_ns() at the domains' read
    domains: dict[str, DomainSample]     # by domain uuid: the active domains
    memory_free: int                     # bytes
    cpu_times: dict[int, CpuTimes]       # by host CPU number ({} where the driver has none)


def read(host: HostConnection, cpus: int) -> HostSample:
    """One sample of the host; HOST_NOT_LIVE or BACKEND_FAILURE when libvirt fails."""
    def sample(conn: libvirt.virConnect) -> HostSample:
        taken = time.monotonic_ns()
        domains = {dom.UUIDString(): parse_domain(raw) for dom, raw in _domain_stats(conn)}
        return HostSample(taken, domains, optional(conn.getFreeMemory, default=0, conn=conn), _cpu_times(conn, cpus))
    return host.read("metrics", sample)


def parse_domain(raw: dict) -> DomainSample:
    """The figures in one domain's ``getAllDomainStats`` record (libvirt's ``virsh domstats`` keys)."""
    return DomainSample(
        cpu_time=raw.get("cpu.time"),
        vcpu_times={int(m.group(1)): value for key, value in raw.items() if (m := _VCPU_TIME.fullmatch(key))},
        vcpus=raw.get("vcpu.current"),
        memory_actual=_bytes(raw.get("balloon.current")),
        memory_free=_bytes(raw.get("balloon.unused")),
        disk_read_bytes=_summed(raw, "block", "rd.bytes"),
        disk_write_bytes=_summed(raw, "block", "wr.bytes"),
        net_rx_bytes=_summed(raw, "net", "rx.bytes"),
        net_tx_bytes=_summed(raw, "net", "tx.bytes"),
    )


def vcpu_utilisation(before: DomainSample, after: DomainSample, wall_ns: int) -> dict[int, float] | None:
    """Each vCPU's share of the wall time between two samples; None when the driver gives no times.

    Per-vCPU times where the driver has them; else the domain's cpu time spread over its vCPUs.
    """
    if wall_ns <= 0:
        return None
    if after.vcpu_times and before.vcpu_times:
        return {n: _fraction(t - before.vcpu_times[n], wall_ns)
                for n, t in sorted(after.vcpu_times.items()) if n in before.vcpu_times}
    if after.cpu_time is not None and before.cpu_time is not None and after.vcpus:
        share = _fraction(after.cpu_time - before.cpu_time, wall_ns * after.vcpus)
        return {n: share for n in range(after.vcpus)}
    return None


def cpu_utilisation(before: CpuTimes, after: CpuTimes) -> float | None:
    """A host CPU's busy share between two samples; None when its clock did not move."""
    total = after.total - before.total
    return _fraction(after.busy - before.busy, total) if total > 0 else None


# ---- helpers ----------------------------------------------------------------------------------

def _domain_stats(conn: libvirt.virConnect) -> list:
    try:
        return with_optional_flags(lambda flags: conn.getAllDomainStats(_GROUPS, flags), _ACTIVE, _NOWAIT)
    except libvirt.libvirtError as e:
        if not is_unsupported(e):
            raise
        return []                                  # no bulk statistics: no domain figures (never one call each)


def _cpu_times(conn: libvirt.virConnect, cpus: int) -> dict[int, CpuTimes]:
    times = {}
    for n in range(cpus):
        raw = optional(lambda: conn.getCPUStats(n), default={}, conn=conn)
        if "idle" not in raw:
            if n == 0:
                return {}                          # the driver keeps no per-CPU times
            continue                               # this CPU is offline
        total = sum(v for k, v in raw.items() if k != "utilization")   # that one is a percentage
        times[n] = CpuTimes(total - sum(raw.get(k, 0) for k in _IDLE), total)
    return times


def _summed(raw: dict, group: str, counter: str) -> int | None:
    """A counter summed over a group's devices (``block.N.rd.bytes``); None when no device has it."""
    values = [raw[key] for n in range(raw.get(f"{group}.count", 0)) if (key := f"{group}.{n}.{counter}") in raw]
    return sum(values) if values else None


def _bytes(kib: int | None) -> int | None:
    return None if kib is None else kib * KIB


def _fraction(part: int, whole: int) -> float:
    return round(min(max(part / whole, 0.0), 1.0), UTILISATION_DIGITS)
