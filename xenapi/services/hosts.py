"""Hosts: one libvirt connection each, the host objects the API shows for them, and their control
domains.  Host refs are derived from the URI, so they stay the same across restarts and are known
even while a host's libvirtd is down.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from urllib.parse import urlparse

import libvirt

from xenapi import errors as E
from xenapi.services import host_facts
from xenapi.backend import hostinfo, machine
from xenapi.services.placement import SIMULATED_OS_MEMORY
from xenapi.backend.connection import HostConnection
from xenapi.backend.hostinfo import HostFacts
from xenapi.services.embedded import EMBEDDED_URI, KeptDomains, KeptStorage
from xenapi.errors import XenAPIError
from xenapi.services.sampler import Sampler
from xenapi.state.store import add, derived_ref, derived_uuid, mod
from xenapi.wire.values import DateTime

log = logging.getLogger(__name__)

# libvirt's getType() -> the domain type new VMs get on that host (QEMU: decided by domain_type).
_VIRT_TYPE = {"Xen": "xen", "LXC": "lxc", "TEST": "test"}
# host.other_config key saying how far the server's view of the host is: connecting (no answer
# yet), syncing (its domains are being listed; they arrive as events) or synced.
SYNC_KEY = "libvirt_sync"
BRING_UP_STOP_WAIT = 2.0 # stopping waits this long for a host still being brought up (then closes it anyway)
BACKGROUND_NICE = 10     # the host-sync threads' niceness (see _yield_to_requests)


class Hosts:
    def __init__(self, server, uris: list[str]):
        self.server = server
        self.store = server.store
        self.refs: list[str] = []
        self._by_uri: dict[str, str] = {}
        self._conns: dict[str, HostConnection] = {}
        self._facts: dict[str, HostFacts] = {}
        self.sampler = Sampler(self, server.config.metrics_interval)
        self._settled: dict[str, threading.Event] = {}   # host -> first connect tried, and listed if it answered
        self._bringing_up: list[threading.Thread] = []
        self._synced: set[str] = set()                   # hosts listed since they last came up, this run
        self._kept: dict[str, KeptDomains] = {}          # the embedded default's host -> its kept domains
        self._kept_storage: dict[str, KeptStorage] = {}  # ... and its kept pools and volumes
        for uri in dict.fromkeys(map(_resolved, uris)):
            ref = derived_ref("host", uri)
            self.refs.append(ref)
            self._by_uri[uri] = ref
            self._conns[ref] = HostConnection(
                uri, self._domain_event, server.reconciler.on_liveness, open_timeout=server.config.libvirt_open_timeout,
                keepalive=(server.config.libvirt_keepalive_interval, server.config.libvirt_keepalive_count))
            if uri == EMBEDDED_URI:
                self._kept[ref] = KeptDomains(self._conns[ref], server.store.db, server.store.db_lock)
                self._kept_storage[ref] = KeptStorage(self._conns[ref], server.store.db, server.store.db_lock)

    @property
    def master(self) -> str:
        return self.refs[0]

    def ref_of(self, uri: str) -> str:
        return self._by_uri[uri]

    def uri_of(self, host: str) -> str:
        return self._conns[host].uri

    def live(self, host: str) -> bool:
        conn = self._conns.get(host)
        return conn is not None and conn.live

    def synced(self, host: str) -> bool:
        return host in self._synced and self.live(host)

    def connection(self, host: str) -> HostConnection:
        conn = self._conns.get(host)
        if conn is None:
            raise XenAPIError(E.HANDLE_INVALID, "host", host)
        if not conn.live:
            raise XenAPIError(E.HOST_OFFLINE, host)
        return conn

    def kept_storage(self, host: str | None) -> KeptStorage | None:
        return self._kept_storage.get(host)

    def kept(self, host: str | None) -> KeptDomains | None:
        """The kept domains of the embedded default's host (see xenapi/services/embedded.py), else None."""
        return self._kept.get(host)

    def facts(self, host: str) -> HostFacts:
        return self._facts[host]

    def home_of(self, vm: str) -> str:
        host = self.server.reconciler.homes.get(vm)
        if host is None:
            raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"VM {vm} is not defined on any connected host")
        return host

    def virt_type(self, host: str) -> str:
        facts = self._facts[host]
        if facts.hypervisor in _VIRT_TYPE:
            return _VIRT_TYPE[facts.hypervisor]
        wanted = self.server.config.domain_type
        if wanted != "auto":
            return wanted
        return "kvm" if "kvm" in facts.virt_types else "qemu"

    # -- start-up and liveness -------------------------------------------------------------
    def start(self) -> None:
        """Bring every host up side by side, each on a thread of its own, and return at once: a
        host shows as soon as it is known, its VMs as they are listed.  A host that does not answer
        keeps being tried in the background (the reconciler lists it when it does)."""
        for ref in self._conns:                # before any listing: a state kept from the last run means nothing
            self._publish(ref)
            self._set_sync(ref, "connecting")
        for n, ref in enumerate(self._conns):
            self._settled[ref] = threading.Event()
            thread = threading.Thread(target=self._bring_up, args=(ref,), name=f"host-up-{n}", daemon=True)
            self._bringing_up.append(thread)
            thread.start()
        self.sampler.start()

    def wait_settled(self, timeout: float) -> bool:
        """Wait until every host has been listed or has failed its first connect; False on timeout."""
        for event in self._settled.values():
            if not event.wait(max(0.0, timeout)):
                return False
        return True

    def _bring_up(self, host: str) -> None:
        conn = self._conns[host]
        _yield_to_requests()
        try:
            try:
                conn.open(keep_trying=True)
            except XenAPIError as e:
                log.warning("event=host-unreachable uri=%s error=%s", conn.uri, e.code)
            if conn.live:
                self._publish(host)
                if host in self._kept:
                    self._kept_storage[host].restore()       # before the domains: their disks name volumes
                    self._kept[host].restore()
                self.sync(host)
        except Exception:
            log.exception("event=host-up-failed uri=%s", conn.uri)
        finally:
            self._settled[host].set()

    def sync(self, host: str) -> None:
        """List the host's domains into the store; once every host is listed, VMs that none of
        them defines any more (undefined while the server was away) go."""
        self._set_sync(host, "syncing")
        self.server.reconciler.relist(host)
        try:
            self.server.storage.ensure_local_sr(host)
        except XenAPIError as e:           # a host without a usable local SR still serves its VMs
            log.warning("event=local-sr-failed host=%s error=%s params=%s", host, e.code, e.params)
        self._synced.add(host)
        self._set_sync(host, "synced")
        if self.all_synced():
            self.server.reconciler.drop_unclaimed()

    def all_synced(self) -> bool:
        return self._synced >= set(self.refs)

    def _set_sync(self, host: str, state: str) -> None:
        self.store.modify("host", host, lambda rec: {"other_config": {**rec["other_config"], SYNC_KEY: state}})

    def stop(self) -> None:
        self.sampler.stop()
        deadline = time.monotonic() + BRING_UP_STOP_WAIT
        for thread in self._bringing_up:       # a relist in progress ends before its connection closes
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for conn in self._conns.values():
            conn.close()

    def set_live(self, host: str, live: bool) -> None:
        if live:
            self._publish(host)
        elif self.store.exists("host", host):
            self._synced.discard(host)
            self._set_sync(host, "connecting")
            self.store.update("host_metrics", self.store.get("host", host)["metrics"],
                              {"live": False, "last_updated": DateTime.now()})
        log.info("event=host-%s host=%s", "up" if live else "down", host)

    def simulated(self, host: str) -> bool:
        """libvirt's test driver: a host whose memory figures are made up (and inconsistent: its
        getFreeMemory, its NUMA cells and getInfo disagree), so the server computes them."""
        facts = self._facts.get(host)
        return facts is not None and facts.hypervisor == "TEST"

    def reclaimable_memory(self, host: str) -> int:
        """Bytes free or reclaimable now (free + buffers + page cache, libvirt's node memory
        stats); getFreeMemory where the driver has no stats."""
        def read(conn):
            try:
                stats = conn.getMemoryStats(-1, 0)
            except libvirt.libvirtError:
                return hostinfo.free_memory(conn)
            return 1024 * sum(stats.get(k, 0) for k in ("free", "buffers", "cached"))
        return self.connection(host).read("memory_stats", read)

    def free_memory(self, host: str) -> int:
        """Bytes free on the host now: one getFreeMemory; on the test driver its total less the
        nominal OS and what the running guests are given (xenapi/services/placement.py)."""
        if self.simulated(host):
            return self.server.placement.available_memory(host)
        return self.connection(host).read("free_memory", hostinfo.free_memory)

    # -- the API's view of a host ----------------------------------------------------------
    def _publish(self, host: str) -> None:
        conn = self._conns[host]
        if conn.live:
            try:
                self._facts[host] = conn.host_facts()
            except XenAPIError as e:
                log.warning("event=host-facts-failed uri=%s error=%s", conn.uri, e.code)
        facts = self._facts.get(host)
        uri = conn.uri
        metrics = derived_ref("host_metrics", uri)
        control = derived_ref("VM", f"control/{uri}")
        cpus = [derived_ref("host_cpu", f"{uri}/{n}") for n in range(facts.cpu_count if facts else 0)]
        derived = self._host_fields(uri, facts, metrics, control, cpus)
        ops = [self._upsert("host", host, derived, derived_uuid("host", uri))]
        simulated = facts is not None and facts.hypervisor == "TEST"
        ops.append(self._upsert("host_metrics", metrics, {
            "memory_total": facts.memory_total if facts else 0,
            "memory_free": (facts.memory_total - SIMULATED_OS_MEMORY if simulated else facts.memory_free) if facts else 0,
            "live": conn.live, "last_updated": DateTime.now()}, derived_uuid("host_metrics", uri)))
        for n, ref in enumerate(cpus):
            ops.append(self._upsert("host_cpu", ref, host_facts.host_cpu(host, n, facts),
                                    derived_uuid("host_cpu", f"{uri}/{n}")))
        control_metrics = derived_ref("VM_metrics", f"control/{uri}")
        ops.append(self._upsert("VM_metrics", control_metrics, {
            "memory_actual": self._control_domain(host, facts)["memory_static_max"],
            "VCPUs_number": facts.cpu_count if facts else 0,
            "last_updated": DateTime.now()}, derived_uuid("VM_metrics", f"control/{uri}")))
        ops.append(self._upsert("VM", control, {**self._control_domain(host, facts), "metrics": control_metrics},
                                derived_uuid("VM", f"control/{uri}")))
        self.store.apply(ops)

    def _upsert(self, cls: str, ref: str, fields: dict, uuid: str):
        if self.store.exists(cls, ref):
            return mod(cls, ref, fields)
        return add(cls, ref, self.store.new_record(cls, {**fields, "uuid": uuid}))

    def _host_fields(self, uri, facts: HostFacts | None, metrics, control, cpus) -> dict:
        fields = {"metrics": metrics, "control_domain": control,
                  "address": urlparse(uri).hostname or "127.0.0.1",
                  "API_version_vendor_implementation": {"libvirt_uri": uri}}
        if facts is None:
            return fields
        existing = self.store.find("host", derived_ref("host", uri))
        fields.update(
            hostname=facts.hostname,
            software_version=host_facts.software_version(uri, facts),
            capabilities=facts.capabilities,
            cpu_info=host_facts.cpu_info(facts),
            chipset_info=host_facts.chipset_info(facts),
            nic_speeds=host_facts.nic_speeds(facts),
            license_params={"sku_type": "free", "expiry": "never"},
            bios_strings={},
        )
        if existing is None or not existing["name_label"]:
            fields["name_label"] = facts.hostname
        return fields

    def _control_domain(self, host: str, facts: HostFacts | None) -> dict:
        # what the host's own OS holds: a nominal figure on the test driver, else what was in use
        # when the server connected (the sampler keeps its VM_metrics.memory_actual current)
        memory = SIMULATED_OS_MEMORY if facts and facts.hypervisor == "TEST" else 0
        if facts and not memory:
            try:
                memory = max(0, facts.memory_total - self.reclaimable_memory(host))
            except XenAPIError:
                memory = max(0, facts.memory_total - facts.memory_free)
        return {
            "name_label": f"Control domain on host: {facts.hostname if facts else host}",
            "name_description": "The host's own operating system (libvirt's side of the host).",
            "is_control_domain": True, "power_state": "Running", "resident_on": host, "domid": 0,
            "memory_static_max": memory, "memory_dynamic_max": memory, "memory_dynamic_min": memory,
            "memory_static_min": memory, "VCPUs_max": facts.cpu_count if facts else 1,
            "VCPUs_at_startup": facts.cpu_count if facts else 1, "allowed_operations": [],
            "domain_type": "pv" if facts and facts.hypervisor == "Xen" else "unspecified",
        }

    def _domain_event(self, uri: str, uuid: str, kind: str) -> None:
        """libvirt's loop thread: the reconciler observes the domain; its figures follow soon after."""
        self.server.reconciler.on_domain_event(uri, uuid, kind)
        if kind.startswith("lifecycle:") or kind == "balloon":
            self.sampler.poke(self._by_uri[uri])


def _yield_to_requests() -> None:
    """Run this thread at a lower scheduling priority.  Listing thousands of domains is CPU work
    under the GIL; the operating system then prefers request threads at each hand-over, so calls
    are answered at their usual speed while big hosts sync (measured: a login under ten syncing
    hosts took 300 ms at equal priority, 60 ms with this, as with none syncing)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except OSError as e:             # not permitted (a container's seccomp policy): just slower answers
        log.debug("event=priority-unchanged reason=%s", e.strerror)


def _resolved(uri: str) -> str:
    resolved = machine.resolve_uri(uri)
    if resolved != uri:
        log.info("event=libvirt-uri-detected configured=%s uri=%s", uri, resolved)
    return resolved


def libvirt_name(label: str, uuid: str) -> str:
    """A machine-safe libvirt name from a label, unique by the uuid's first group."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.")[:40] or "vm"
    return f"{base}-{uuid[:8]}"
