"""The metrics sampler: live figures of hosts and VMs, written to the store from bulk libvirt reads.

Every ``[metrics] interval`` seconds, and shortly after a domain's lifecycle or balloon event, each
live host is sampled once (``backend.stats.read``: a few libvirt calls per host, whatever its number
of VMs) and everything that changed is written in one ``Store.apply``: host_metrics memory,
host_cpu.utilisation and the VM_metrics of that host's VMs.  Reads never reach libvirt: API
clients, event.from and GET /metrics all see the store.  A record is only rewritten when one of
its figures changed (last_updated included), so idle VMs and hosts make no events.

VM_metrics keeps xapi's shape: memory_actual, VCPUs_number, VCPUs_utilisation.  The figures xapi
keeps only in its RRDs (disk and network byte counters, the guest's free memory) are kept as
server-maintained keys of VM_metrics.other_config (``LIVE_KEYS``, decimal strings), present
while the VM runs and once its driver has reported them.  Liveness (host_metrics.live) stays with
``Hosts.set_live``, which hears it from the connection.
"""
from __future__ import annotations

import logging
import threading
import time

from xenapi import errors as E
from xenapi.backend import stats
from xenapi.backend.stats import HostSample
from xenapi.errors import XenAPIError
from xenapi.observers.reconciler import vm_ref
from xenapi.state.store import Op, mod
from xenapi.wire.values import DateTime

log = logging.getLogger(__name__)

LIVE_KEYS = ("memory_free", "disk_read_bytes", "disk_write_bytes", "net_rx_bytes", "net_tx_bytes")
# VM_metrics fields the reconciler also knows, from the definition -> the DomainSample figure we write.
# The live figure may differ from the definition's (a balloon lagging virsh setmem, a live setvcpus):
# once a sample has it, the field is ours until the domain stops, else the two writers take turns.
SAMPLED_DEFINITION_FIGURES = {"memory_actual": "memory_actual", "VCPUs_number": "vcpus"}
# After an event: give the reconciler time to observe the domain first, and take a burst as one.
SETTLE_SECONDS = 0.5
STOP_WAIT_SECONDS = 10.0   # a stats read of a wedged host ends within the keep-alive bound anyway
_QUIET = {E.HOST_OFFLINE, E.HOST_NOT_LIVE}        # a down host: Hosts.set_live reports it already


class Sampler:
    def __init__(self, hosts, period: float):
        self.hosts = hosts
        self.store = hosts.store
        self.period = period
        self._previous: dict[str, HostSample] = {}
        # host -> field of SAMPLED_DEFINITION_FIGURES -> running domains whose figure we write
        self._reporting: dict[str, dict[str, frozenset[str]]] = {}
        self._lock = threading.RLock()            # one sample at a time: rates need them in order
        self._poked: set[str] = set()
        self._poked_lock = threading.Lock()
        self._poke = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._failing: dict[str, str] = {}        # host -> the failure already logged

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop, and wait for a read in progress: the connections close next, and libvirt must not
        be closing a connection that a stats read is still using."""
        self._stop.set()
        self._poke.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=STOP_WAIT_SECONDS)

    def poke(self, host: str) -> None:
        """Refresh ``host`` soon (called from libvirt's loop thread: note it and return)."""
        with self._poked_lock:
            self._poked.add(host)
        self._poke.set()

    def refresh(self, host: str) -> None:
        """Sample one host now and write what changed; XenAPIError when its libvirt fails."""
        conn = self.hosts.connection(host)
        with self._lock:
            self.write(host, stats.read(conn, self.hosts.facts(host).cpu_count))

    def write(self, host: str, sample: HostSample) -> None:
        """Write the figures of ``sample`` that differ from the store's, in one apply."""
        with self._lock:
            before = self._previous.get(host)
            self._previous[host] = sample
            reporting = self._reporting.get(host, {})
            self._reporting[host] = {
                field: frozenset(uuid for uuid, domain in sample.domains.items()
                                 if getattr(domain, figure) is not None or uuid in reporting.get(field, ()))
                for field, figure in SAMPLED_DEFINITION_FIGURES.items()}
            now = DateTime.now()
            for attempt in (1, 2):
                ops = self._host_ops(host, sample, before, now) + self._vm_ops(host, sample, before, now)
                try:
                    if ops:
                        self.store.apply(ops)
                    return
                except XenAPIError as e:       # a VM destroyed meanwhile fails the batch: once more without it
                    if e.code != E.HANDLE_INVALID or attempt == 2:
                        raise

    def reports(self, host: str, uuid: str, field: str) -> bool:
        """True while a running domain's ``field`` (one of SAMPLED_DEFINITION_FIGURES) comes from our
        samples; the reconciler leaves the field alone then.  A sample that missed the figure (NOWAIT
        met a busy domain) keeps it ours until the domain stops."""
        return uuid in self._reporting.get(host, {}).get(field, ())

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        due = time.monotonic() + self.period
        while not self._stop.is_set():
            if self._poke.wait(max(0.0, due - time.monotonic())):
                if self._stop.wait(SETTLE_SECONDS):
                    return
                self._poke.clear()
                with self._poked_lock:
                    hosts, self._poked = self._poked, set()
            else:
                hosts, due = set(self.hosts.refs), time.monotonic() + self.period
            for host in sorted(hosts):
                self._refresh_logged(host)

    def _refresh_logged(self, host: str) -> None:
        """Refresh, logging a failure once per streak: the loop must outlive any libvirt trouble."""
        try:
            self.refresh(host)
        except XenAPIError as e:
            if e.code not in _QUIET:
                self._failed(host, e.code, logging.WARNING)
            return
        except Exception:
            self._failed(host, "internal", logging.ERROR, exc_info=True)
            return
        if self._failing.pop(host, None):
            log.info("event=metrics-recovered host=%s", host)

    def _failed(self, host: str, why: str, level: int, exc_info: bool = False) -> None:
        if self._failing.get(host) != why:
            self._failing[host] = why
            log.log(level, "event=metrics-failed host=%s error=%s", host, why, exc_info=exc_info)

    # -- what changed ------------------------------------------------------------------------
    def _host_ops(self, host: str, sample: HostSample, before: HostSample | None, now: DateTime) -> list[Op]:
        record = self.store.find("host", host)
        if record is None:
            return []
        # memory_total is a host fact (exact, from the NUMA cells, set at connect); getInfo's
        # figure here is rounded to MiB and must not overwrite it
        free = self.hosts.free_memory(host) if self.hosts.simulated(host) else sample.memory_free
        ops = self._changes("host_metrics", record["metrics"], {"memory_free": free}, now)
        if before is None:
            return ops
        for ref in record["host_CPUs"]:
            cpu = self.store.find("host_cpu", ref)
            n = cpu["number"] if cpu else None
            if n in sample.cpu_times and n in before.cpu_times:
                busy = stats.cpu_utilisation(before.cpu_times[n], sample.cpu_times[n])
                if busy is not None:
                    ops += self._changes("host_cpu", ref, {"utilisation": busy})
        return ops

    def _vm_ops(self, host: str, sample: HostSample, before: HostSample | None, now: DateTime) -> list[Op]:
        ops = []
        for uuid, domain in sample.domains.items():
            vm = self.store.find("VM", vm_ref(uuid))
            if vm is None:
                continue                           # not observed yet: the next sample has it
            figures = {"other_config": _with_live_keys(self._other_config(vm), domain)}
            for field, figure in SAMPLED_DEFINITION_FIGURES.items():
                if (value := getattr(domain, figure)) is not None:
                    figures[field] = value
            earlier = before.domains.get(uuid) if before else None
            if earlier is not None:
                utilisation = stats.vcpu_utilisation(earlier, domain, sample.taken - before.taken)
                if utilisation is not None:
                    figures["VCPUs_utilisation"] = utilisation
            ops += self._changes("VM_metrics", vm["metrics"], figures, now)
        # VMs of this host that no longer run: their live-only figures go
        for ref, home in list(self.hosts.homes.items()):
            vm = self.store.find("VM", ref)
            if home == host and vm is not None and vm["uuid"] not in sample.domains:
                ops += self._changes("VM_metrics", vm["metrics"], {
                    "VCPUs_utilisation": {}, "other_config": _with_live_keys(self._other_config(vm), None)}, now)
        return ops

    def _other_config(self, vm: dict) -> dict:
        metrics = self.store.find("VM_metrics", vm["metrics"])
        return metrics["other_config"] if metrics else {}

    def _changes(self, cls: str, ref: str, figures: dict, now: DateTime | None = None) -> list[Op]:
        current = self.store.find(cls, ref)
        if current is None:
            return []
        changed = {k: v for k, v in figures.items() if current[k] != v}
        if not changed:
            return []
        if now is not None:
            changed["last_updated"] = now
        return [mod(cls, ref, changed)]


def _with_live_keys(other_config: dict, domain) -> dict:
    """other_config with the server's keys from ``domain``; a figure this sample lacks (NOWAIT met a
    busy domain) keeps its last value; with no domain (not running) the keys go."""
    if domain is None:
        return {k: v for k, v in other_config.items() if k not in LIVE_KEYS}
    return other_config | {k: str(value) for k in LIVE_KEYS if (value := getattr(domain, k)) is not None}
