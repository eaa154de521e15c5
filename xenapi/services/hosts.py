"""Hosts: one libvirt connection each, the host objects the API shows for them, and their control
domains.  Host refs are derived from the URI, so they stay the same across restarts and are known
even while a host's libvirtd is down.

Hosts come from the configuration (``--libvirt URI``, repeated; the first is the pool's master)
and from the API (``pool.add_host(pool, uri)``, ``pool.remove_host(pool, host)``): those added are
kept in the server's database (table ``pool_hosts``) and come back at every start, after the
configured ones.

One pool, one hypervisor (the seeds: no mixed KVM/Xen, no LXC beside QEMU): the pool's type is
libvirt's ``getType()`` (QEMU, Xen, LXC, TEST) of the hosts in it, shown in
``pool.other_config:hypervisor``; the first host reached sets it (at start the master's, when it
answers: the other hosts wait for its first connect).  ``pool.add_host`` refuses a host of
another type (POOL_HOSTS_NOT_HOMOGENEOUS, naming both) and keeps nothing of it.  A configured (or
previously added) host found of another type when it comes up is not brought into the pool: its
connection is closed, its VMs and storage are not listed, it is not live (so nothing is placed
there), and its record says why (``other_config:libvirt_sync`` = refused, ``other_config:refused``
= the reason) until a restart with a corrected configuration.
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
from xenapi.services.host_rules import HOST_TABLE
from xenapi.services.placement import SIMULATED_OS_MEMORY, simulated_free_memory
from xenapi.backend.connection import HostConnection
from xenapi.backend.hostinfo import HostFacts
from xenapi.services.embedded import EMBEDDED_URI, KeptDomains, KeptStorage
from xenapi.errors import XenAPIError
from xenapi.model.types import NULL_REF
from xenapi.services.sampler import Sampler
from xenapi.state.store import add, delete, derived_ref, derived_uuid, mod
from xenapi.wire.values import DateTime

log = logging.getLogger(__name__)

# libvirt's getType() -> the domain type new VMs get on that host (QEMU: decided by domain_type).
_VIRT_TYPE = {"Xen": "xen", "LXC": "lxc", "TEST": "test"}
# host.other_config key saying how far the server's view of the host is: connecting (no answer
# yet), syncing (its domains are being listed; they arrive as events) or synced.
SYNC_KEY = "libvirt_sync"
BRING_UP_STOP_WAIT = 2.0 # stopping waits this long for a host still being brought up (then closes it anyway)
BACKGROUND_NICE = 10     # the host-sync threads' niceness (see _yield_to_requests)
REFUSED_KEY = "refused"  # host.other_config: why a host of another hypervisor type is kept out of the pool
POOL_TYPE_KEY = "hypervisor"   # pool.other_config: the pool's hypervisor type (libvirt getType())
_TABLE = "pool_hosts"    # the hosts added through the API: uri, added (seconds since the epoch)


class UnknownHost(XenAPIError, KeyError):
    """A URI no host of the pool has: a KeyError, and a Xen-API error the reconciler passes over."""


class Hosts:
    def __init__(self, store, uris: list[str], *, domain_type: str, open_timeout: float,
                 keepalive: tuple[int, int], sync_wait: float, metrics_interval: float):
        self.store = store
        self.domain_type = domain_type                   # [libvirt] domain_type: QEMU's auto, kvm or qemu
        self.open_timeout = open_timeout
        self.keepalive = keepalive                       # (interval, count): libvirt's keepalive
        self.sync_wait = sync_wait                       # pool.add_host waits this long for a listing
        self.reconciler = None                           # joined by report_to, before start
        self._when_listed: list = []                     # callables(host) after a host's objects are listed
        self._when_removed: list = []                    # callables(host) after a host leaves the pool
        self.refs: list[str] = []
        self._by_uri: dict[str, str] = {}
        self._conns: dict[str, HostConnection] = {}
        self._facts: dict[str, HostFacts] = {}
        self.sampler = Sampler(self, metrics_interval)
        self._settled: dict[str, threading.Event] = {}   # host -> first connect tried, and listed if it answered
        self._bringing_up: list[threading.Thread] = []
        self._synced: set[str] = set()                   # hosts listed since they last came up, this run
        self._kept: dict[str, KeptDomains] = {}          # the embedded default's host -> its kept domains
        self._kept_storage: dict[str, KeptStorage] = {}  # ... and its kept pools and volumes
        self._lock = threading.RLock()                   # membership and the pool's hypervisor type
        self._membership = threading.Lock()              # one pool.add_host / pool.remove_host at a time
        self._admitted: dict[str, str] = {}              # host -> its hypervisor type, in the pool
        self._refused: dict[str, str] = {}               # host -> why it is kept out (another type)
        self._master_decided = threading.Event()         # the master's type known (or its first connect failed)
        self.configured: set[str] = set()                # hosts from the configuration (not removable)
        with store.db_lock:
            store.db[_TABLE].create({"uri": str, "added": float}, pk="uri", if_not_exists=True)
            added = [uri for (uri,) in store.db.conn.execute(f"SELECT uri FROM {_TABLE} ORDER BY added")]
        for uri in dict.fromkeys(map(_resolved, uris)):
            self.configured.add(self._register(uri))
        for uri in added:
            if uri not in self._by_uri:
                self._register(uri)

    def report_to(self, reconciler) -> None:
        """The connections' events and liveness go to ``reconciler``, which lists each host as it
        comes up (and reads through these connections: the two are joined here, once)."""
        self.reconciler = reconciler

    def when_listed(self, callback) -> None:
        """Call ``callback(host)`` each time a host's objects have been listed, before it says synced."""
        self._when_listed.append(callback)

    def when_removed(self, callback) -> None:
        """Call ``callback(host)`` once a host has left the pool (pool.remove_host)."""
        self._when_removed.append(callback)

    @property
    def homes(self) -> dict[str, str]:
        """VM ref -> the host whose libvirt defines it."""
        return self.reconciler.homes

    def _liveness(self, uri: str, live: bool) -> None:
        self.reconciler.on_liveness(uri, live)

    def _register(self, uri: str, conn: HostConnection | None = None) -> str:
        ref = derived_ref("host", uri)
        store = self.store
        self._conns[ref] = conn or self._new_connection(uri)
        if uri == EMBEDDED_URI:
            self._kept[ref] = KeptDomains(self._conns[ref], store.db, store.db_lock)
            self._kept_storage[ref] = KeptStorage(self._conns[ref], store.db, store.db_lock)
        self._by_uri[uri] = ref
        self.refs = [*self.refs, ref]              # a new list: other threads iterate the old one
        return ref

    def _new_connection(self, uri: str) -> HostConnection:
        return HostConnection(uri, self._domain_event, self._liveness, open_timeout=self.open_timeout,
                              keepalive=self.keepalive)

    @property
    def master(self) -> str:
        return self.refs[0]

    def ref_of(self, uri: str) -> str:
        ref = self._by_uri.get(uri)
        if ref is None:                  # e.g. an event still queued from a host removed since
            raise UnknownHost(E.HANDLE_INVALID, "host", uri)
        return ref

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
        host = self.homes.get(vm)
        if host is None:
            raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"VM {vm} is not defined on any connected host")
        return host

    def virt_type(self, host: str) -> str:
        facts = self._facts[host]
        if facts.hypervisor in _VIRT_TYPE:
            return _VIRT_TYPE[facts.hypervisor]
        wanted = self.domain_type
        if wanted != "auto":
            return wanted
        return "kvm" if "kvm" in facts.virt_types else "qemu"

    # -- start-up and liveness -------------------------------------------------------------
    def start(self) -> None:
        """Bring every host up side by side, each on a thread of its own, and return at once: a
        host shows as soon as it is known, its VMs as they are listed.  A host that does not answer
        keeps being tried in the background (the reconciler lists it when it does)."""
        assert self.reconciler is not None, "Hosts.report_to(reconciler) comes before start"
        self.store.modify("pool", self._pool_ref(), lambda rec: {"other_config": {
            k: v for k, v in rec["other_config"].items() if k != POOL_TYPE_KEY}})   # set again by the hosts
        for ref in self._conns:                # before any listing: a state kept from the last run means nothing
            self._publish(ref)
            self._set_sync(ref, "connecting")
        for ref in list(self._conns):
            self._start_bring_up(ref)
        self.sampler.start()

    def _start_bring_up(self, ref: str) -> threading.Thread:
        self._settled[ref] = threading.Event()
        thread = threading.Thread(target=self._bring_up, args=(ref,), name=f"host-up-{len(self._bringing_up)}",
                                  daemon=True)
        self._bringing_up.append(thread)
        thread.start()
        return thread

    def wait_settled(self, timeout: float) -> bool:
        """Wait until every host has been listed or has failed its first connect; False on timeout."""
        for event in list(self._settled.values()):
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
                if host != self.master:        # the master's type is the pool's when it answers
                    self._master_decided.wait(self.open_timeout + 1.0)
                admitted = self._admit(host)
                if host == self.master:        # the pool's type is known: the others go on listing
                    self._master_decided.set()
                if not admitted:
                    return
                if host in self._kept:
                    self._kept_storage[host].restore()       # before the domains: their disks name volumes
                    self._kept[host].restore()
                self.sync(host)
        except Exception:
            log.exception("event=host-up-failed uri=%s", conn.uri)
        finally:
            if host == self.master:
                self._master_decided.set()
            self._settled[host].set()

    # -- one hypervisor type per pool ------------------------------------------------------
    def pool_type(self) -> str | None:
        """libvirt's getType() of the pool's hosts (None until one has been reached)."""
        with self._lock:
            return next(iter(self._admitted.values()), None)

    def _pool_ref(self) -> str:
        return self.store.refs("pool")[0]

    def _admit(self, host: str) -> bool:
        """Whether ``host`` (connected, its facts read) belongs in the pool: of the pool's type,
        or the first one reached.  A host of another type is kept out and disconnected."""
        facts = self._facts.get(host)
        if facts is None:                      # its facts could not be read: judged when they are
            return True
        with self._lock:
            if host in self._refused:
                return False
            others = {t for h, t in self._admitted.items() if h != host}
            if others and facts.hypervisor not in others:
                reason = _mixed_reason(next(iter(others)), facts.hypervisor, self._conns[host].uri)
                self._refused[host] = reason
            else:
                first = not self._admitted
                self._admitted[host] = facts.hypervisor
                reason = None
        if reason is None:
            if first:
                self.store.modify("pool", self._pool_ref(), lambda rec: {"other_config": {
                    **rec["other_config"], POOL_TYPE_KEY: facts.hypervisor}})
            return True
        log.error("event=host-refused uri=%s reason=%r", self._conns[host].uri, reason)
        self._conns[host].close()
        self.store.modify("host", host, lambda rec: {"other_config": {
            **rec["other_config"], SYNC_KEY: "refused", REFUSED_KEY: reason}})
        self.store.update("host_metrics", self.store.get("host", host)["metrics"], {"live": False})
        return False

    def refused(self, host: str) -> str | None:
        return self._refused.get(host)

    def sync(self, host: str) -> None:
        """List the host's domains into the store; once every host is listed, VMs that none of
        them defines any more (undefined while the server was away) go."""
        if not self._admit(host):
            return
        self._set_sync(host, "syncing")
        self.reconciler.relist(host)
        for listed in self._when_listed:
            listed(host)
        self._synced.add(host)
        self._set_sync(host, "synced")
        if self.all_synced():
            self.reconciler.drop_unclaimed()

    def all_synced(self) -> bool:
        return self._synced >= set(self.refs) - set(self._refused)

    def _set_sync(self, host: str, state: str) -> None:
        self.store.modify("host", host, lambda rec: {"other_config": {
            **{k: v for k, v in rec["other_config"].items() if k != REFUSED_KEY}, SYNC_KEY: state}})

    def stop(self) -> None:
        self.sampler.stop()
        deadline = time.monotonic() + BRING_UP_STOP_WAIT
        for thread in self._bringing_up:       # a relist in progress ends before its connection closes
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for conn in list(self._conns.values()):
            conn.close()

    def set_live(self, host: str, live: bool) -> None:
        if host in self._refused:
            return
        if live:
            self._publish(host)
        elif self.store.exists("host", host):
            self._synced.discard(host)
            self._set_sync(host, "connecting")
            self.store.update("host_metrics", self.store.get("host", host)["metrics"],
                              {"live": False, "last_updated": DateTime.now()})
            HOST_TABLE.refresh(self.store, [host])
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
        nominal OS and what the resident guests are given (xenapi/services/placement.py), like a
        real host's figure (a VM still arriving is not counted until it runs there)."""
        if self.simulated(host):
            return simulated_free_memory(self.store, host)
        return self.connection(host).read("free_memory", hostinfo.free_memory)

    # -- hosts added and removed through the API (pool.add_host, pool.remove_host) -----------
    def add(self, uri: str, wait: float | None = None) -> str:
        """Connect ``uri`` now, check it is of the pool's hypervisor type, then make it a host of
        the pool, kept across restarts; wait at most ``wait`` seconds for its first listing
        ([libvirt] sync_wait by default).  Nothing of a host refused stays."""
        wait = self.sync_wait if wait is None else wait
        uri = _resolved(uri)
        with self._membership:
            if uri in self._by_uri:
                raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"{uri} is already in the pool: host {self._by_uri[uri]}")
            conn = self._new_connection(uri)
            try:
                conn.open()
                facts = conn.host_facts()
            except XenAPIError as e:
                conn.close()
                raise XenAPIError(E.POOL_JOINING_HOST_CONNECTION_FAILED, uri,
                                  e.params[-1] if e.params else e.code) from e
            except Exception:
                conn.close()
                raise
            with self._lock:
                pool_type = self.pool_type()
                if pool_type is not None and facts.hypervisor != pool_type:
                    conn.close()
                    raise XenAPIError(E.POOL_HOSTS_NOT_HOMOGENEOUS, _mixed_reason(pool_type, facts.hypervisor, uri))
                ref = self._register(uri, conn)
                self._facts[ref] = facts
                self._admitted[ref] = facts.hypervisor
            if pool_type is None:
                self.store.modify("pool", self._pool_ref(), lambda rec: {"other_config": {
                    **rec["other_config"], POOL_TYPE_KEY: facts.hypervisor}})
            with self.store.db_lock, self.store.db.conn:
                self.store.db.conn.execute(f"INSERT OR REPLACE INTO {_TABLE}(uri, added) VALUES (?, ?)",
                                           (uri, time.time()))
            self._publish(ref)
            self._set_sync(ref, "connecting")
            self._start_bring_up(ref)
            log.info("event=host-added uri=%s host=%s hypervisor=%s", uri, ref, facts.hypervisor)
        if not self._settled[ref].wait(max(0.0, wait)):
            log.info("event=host-added-before-sync host=%s wait=%gs", ref, wait)
        return ref

    def in_use(self, host: str) -> tuple[str, str] | None:
        """(class, ref) of something that keeps ``host`` in the pool: a VM resident or defined
        there, or a disk on storage only it reaches that a VM uses."""
        store = self.store
        homes = self.homes
        for vm, rec in store.records("VM").items():
            if not rec["is_control_domain"] and (homes.get(vm) == host or rec["resident_on"] == host):
                return "VM", vm
        for sr, rec in store.records("SR").items():
            hosts = {p["host"] for pbd in rec["PBDs"] if (p := store.find("PBD", pbd)) is not None}
            if hosts == {host}:
                for vdi in rec["VDIs"]:
                    if (v := store.find("VDI", vdi)) is not None and v["VBDs"]:
                        return "VDI", vdi
        return None

    def remove(self, host: str) -> None:
        """Take ``host`` out of the pool: refused for a configured host and one in use (see
        in_use); else its connection closes and its records go (host, host_metrics, host_cpu,
        the control domain, its PIFs and PBDs, and the SRs and networks only it had)."""
        with self._membership:
            if host not in self._conns:
                raise XenAPIError(E.HANDLE_INVALID, "host", host)
            uri = self._conns[host].uri
            if host in self.configured:
                raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"host {host} ({uri}) comes from the server's "
                                  "configuration (--libvirt): remove it there")
            if (used := self.in_use(host)) is not None:
                raise XenAPIError(E.HOST_IN_USE, host, *used)
            if (settled := self._settled.get(host)) is not None:
                settled.wait(BRING_UP_STOP_WAIT)     # a listing in progress ends before its connection closes
            with self._lock:
                self.refs = [r for r in self.refs if r != host]
                self._by_uri.pop(uri, None)
                conn = self._conns.pop(host)
                self._admitted.pop(host, None)
                self._refused.pop(host, None)
                self._kept.pop(host, None)
                self._kept_storage.pop(host, None)
                self._synced.discard(host)
                self._settled.pop(host, None)
            conn.close()
            self._forget_records(host)
            self._facts.pop(host, None)
            for removed in self._when_removed:
                removed(host)
            with self.store.db_lock, self.store.db.conn:
                self.store.db.conn.execute(f"DELETE FROM {_TABLE} WHERE uri = ?", (uri,))
            log.info("event=host-removed uri=%s host=%s", uri, host)

    def _forget_records(self, host: str) -> None:
        store, reconciler = self.store, self.reconciler
        shared_with = reconciler.forget_host(host)
        ops = []
        for pbd, rec in store.records("PBD").items():
            if rec["host"] == host:
                ops.append(delete("PBD", pbd))
        for pif, rec in store.records("PIF").items():
            if rec["host"] == host:
                ops += [delete("PIF", pif), delete("PIF_metrics", rec["metrics"])]
        for vm, rec in store.records("VM").items():
            if rec["affinity"] == host:
                ops.append(mod("VM", vm, {"affinity": NULL_REF}))
        rec = store.find("host", host)
        if rec is not None:
            ops += [delete("host_cpu", cpu) for cpu in rec["host_CPUs"]]
            control = store.find("VM", rec["control_domain"])
            if control is not None:
                ops += [delete("VM_metrics", control["metrics"]), delete("VM", rec["control_domain"])]
            ops += [delete("host_metrics", rec["metrics"]), delete("host", host)]
        store.apply(ops)
        for other in shared_with:
            if self.synced(other):
                try:
                    reconciler.relist_volumes(other)     # they are that host's now
                except XenAPIError as e:
                    log.info("event=relist-skipped host=%s error=%s", other, e.code)

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
        HOST_TABLE.refresh(self.store, [host])

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
        self.reconciler.on_domain_event(uri, uuid, kind)
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


def _mixed_reason(pool_type: str, host_type: str, uri: str) -> str:
    return (f"the pool's hosts are {pool_type} (libvirt getType()) and {uri} is {host_type}: "
            "a pool has one hypervisor type")


def libvirt_name(label: str, uuid: str) -> str:
    """A machine-safe libvirt name from a label, unique by the uuid's first group."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.")[:40] or "vm"
    return f"{base}-{uuid[:8]}"
