"""The reconciler: brings the store in line with what libvirt says, and is the only writer of what
libvirt owns (the fields declared ``observed``: a domain's power state, devices, memory and boot
settings; a storage pool's sizes; a volume's sizes and location).

It drives one observer per kind of libvirt object (``xenapi/observers``: domains, storage pools,
volumes) the same way: a relist when a host connects (or reconnects) reads every object of the
host and removes what vanished; a libvirt event or a poll enqueues (host, kind, key) and the
``reconciler`` thread re-reads that one object; API calls re-observe synchronously through
``refresh`` so their answer already shows the new state.

A relist of a big host applies its objects in batches and lets other observations in between, so
hosts relist side by side and a call's refresh never waits out a whole relist.  Every read is
numbered; an observation is applied only if no newer read of that object has been, so a relist's
older read never overwrites what a call saw later (nor brings back a destroyed object).
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
from contextlib import contextmanager, nullcontext

from xenapi.errors import XenAPIError
from xenapi.observers import Observer
from xenapi.observers.domains import DomainObserver, vm_ref
from xenapi.observers.networks import NetworkObserver
from xenapi.observers.nics import NicObserver
from xenapi.observers.pools import PoolObserver
from xenapi.observers.volumes import VolumeObserver

log = logging.getLogger(__name__)

RELIST_BATCH = 250       # objects applied per store write during a relist

__all__ = ["Reconciler", "RELIST_BATCH", "vm_ref"]


class Reconciler:
    """Drives the observers: what the hosts' connections report (liveness, events) is applied
    here, one observation at a time.  The hosts service reports to it and it reads through the
    hosts' connections, so the two are joined once, by the server (``Hosts.report_to``); the
    observers, which ask the services built on the reconciler, are handed over by ``drive``."""

    def __init__(self, store, hosts, stopping: threading.Event):
        self.store = store
        self.hosts = hosts
        self._server_stopping = stopping
        self.observers: dict[str, Observer] = {}
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.RLock()           # one observation applied at a time
        self._reads = itertools.count(1)         # numbers every read of libvirt's state
        self._read_at: dict[tuple[str, str], int] = {}   # (kind, key) -> number of the read last applied (or forgotten)
        self._relists = 0                        # relists in progress (tombstones in _read_at matter then)
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self._stopping = False
        self._unclaimed: set[tuple[str, str]] = set()
        self._held: set[str] = set()             # domain uuids whose events wait (a migration moving them)

    def drive(self, *, networks: NetworkObserver, nics: NicObserver, pools: PoolObserver, volumes: VolumeObserver,
              domains: DomainObserver) -> None:
        """The observers, before start.  Relist order: a domain's disks name volumes, a volume
        names its pool; its interfaces name networks, and a host's interfaces exclude its
        networks' bridges."""
        self.networks, self.nics, self.pools, self.volumes, self.domains = networks, nics, pools, volumes, domains
        self.observers = {o.kind: o for o in (networks, nics, pools, volumes, domains)}

    @property
    def homes(self) -> dict[str, str]:
        """VM ref -> the host whose libvirt defines it."""
        return self.domains.homes

    def start(self) -> None:
        assert self.observers, "Reconciler.drive(...) comes before start"
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._queue.put(None)

    # -- callbacks from libvirt's loop thread and the pollers: enqueue and return --------------
    def on_event(self, uri: str, kind: str, key: str, what: str = "") -> None:
        self._queue.put((uri, kind, key, what))

    def on_domain_event(self, uri: str, uuid: str, what: str) -> None:
        """A domain's event, or a network's (``what`` "network": the connection's one handler)."""
        self.on_event(uri, "network" if what == "network" else "domain", uuid, what)

    def on_liveness(self, uri: str, live: bool) -> None:
        self._queue.put((uri, None, None, "live" if live else "dead"))

    def _run(self) -> None:
        while not self._stopping:
            item = self._queue.get()
            if item is None:
                continue
            uri, kind, key, what = item
            try:
                host = self.hosts.ref_of(uri)
                if what == "live":
                    self.hosts.set_live(host, True)
                    self.hosts.sync(host)
                elif what == "dead":
                    self.hosts.set_live(host, False)
                else:
                    key = self.observers[kind].event_key(host, key)
                    if kind == "domain" and key in self._held:
                        continue             # a migration in progress re-observes it when it ends
                    self.refresh(host, key, kind)
                    self.observers[kind].after_event(host, key, what)
            except XenAPIError as e:
                log.info("event=reconcile-skipped uri=%s kind=%s key=%s what=%s error=%s", uri, kind, key, what, e.code)
            except Exception:
                log.exception("event=reconcile-failed uri=%s kind=%s key=%s what=%s", uri, kind, key, what)

    def claim_loaded(self) -> None:
        """Objects read back from SQLite wait to be seen by a relist; those nobody claims are gone."""
        self._unclaimed = {(o.kind, ref) for o in self.observers.values() for ref in o.loaded()}

    def drop_unclaimed(self) -> None:
        """Once every host has been listed: objects no host has any more went while we were away."""
        with self._lock:
            for kind, ref in self._unclaimed:
                observer = self.observers[kind]
                if ref not in observer.homes:
                    log.info("event=vanished kind=%s ref=%s", kind, ref)
                    self._forget(observer, ref, home=None)
            self._unclaimed = set()

    # -- observing -------------------------------------------------------------------------
    def relist(self, host: str) -> None:
        for observer in self.observers.values():
            if self._server_stopping.is_set():       # the connection is about to close
                return
            self._relist(observer, host)

    def relist_storage(self, host: str) -> None:
        self._relist(self.pools, host)
        self.relist_volumes(host)

    def relist_volumes(self, host: str) -> None:
        self._relist(self.volumes, host)

    def relist_networks(self, host: str) -> None:
        self._relist(self.networks, host)
        self._relist(self.nics, host)

    def _relist(self, observer: Observer, host: str) -> None:
        conn = self.hosts.connection(host)
        with self._lock:
            self._relists += 1
            read = next(self._reads)
        try:
            states = list({observer.key_of(s): s for s in observer.list(host, conn)}.values())
            seen = {observer.key_of(s) for s in states}
            for start in range(0, len(states), RELIST_BATCH):
                if self._server_stopping.is_set():
                    return
                with self._lock:
                    self._observe_batch(observer, host, states[start:start + RELIST_BATCH], read)
            with self._lock:
                for ref, home in list(observer.homes.items()):
                    key = observer.key_in_store(ref)
                    if home == host and key is not None and key not in seen \
                            and self._read_at.get((observer.kind, key), 0) < read:
                        self._forget(observer, ref)
        finally:
            with self._lock:
                self._relists -= 1
                if not self._relists:     # no older read is in flight: tombstones can go
                    self._read_at = {(k, key): n for (k, key), n in self._read_at.items()
                                     if self.observers[k].ref(key) in self.observers[k].homes}
        log.info("event=relist host=%s kind=%s objects=%d", host, observer.kind, len(seen))

    def refresh(self, host: str, key: str, kind: str = "domain") -> None:
        """Re-read one object (a domain by uuid, a pool by uuid, a volume by pool-uuid/name) now.

        An object gone from ``host`` is forgotten only if ``host`` was its home: one that lives on
        another host is not this one's to forget.  A domain gone from its home is first looked
        for on the other live hosts (it migrated, through the API or ``virsh migrate``): found
        there, it is observed there, keeping the VM and its store-owned fields."""
        observer = self.observers[kind]
        conn = self.hosts.connection(host)
        with self._lock:            # read and apply together: a slower, older read must not land last
            read = next(self._reads)
            state = observer.read(host, conn, key)
            if state is not None:
                self._observe_batch(observer, host, [state], read)
                return
            ref = observer.ref(key)
            home = observer.homes.get(ref)
            if home is not None and home != host:
                return
            if kind == "domain" and (found := self._elsewhere(observer, host, key)) is not None:
                self._observe_batch(observer, found[0], [found[1]], read)
                return
            self._forget(observer, ref)

    def _elsewhere(self, observer: Observer, gone_from: str, key: str):
        """(host, state) of an object on another live host than ``gone_from``, else None."""
        for host in self.hosts.refs:
            if host == gone_from or not self.hosts.live(host):
                continue
            try:
                state = observer.read(host, self.hosts.connection(host), key)
            except XenAPIError:
                continue
            if state is not None:
                return host, state
        return None

    @contextmanager
    def hold(self, uuid: str):
        """While a migration moves domain ``uuid``, libvirt's events about it are not observed:
        halfway states (the incoming domain, paused, on the destination) would show the VM
        where it is not.  The migration re-observes both hosts when it ends."""
        self._held.add(uuid)
        try:
            yield
        finally:
            self._held.discard(uuid)

    def forget_host(self, host: str) -> set[str]:
        """A host leaves the pool: what was seen only there goes (its domains, pools, NICs,
        networks' PIFs, volumes).  Volumes on storage other hosts reach stay; those hosts are
        returned, for a relist that makes the volumes theirs."""
        store, volumes = self.store, self.volumes
        shared_with: set[str] = set()
        for ref in volumes.homes_on(host):
            vdi = store.find("VDI", ref)
            sr = store.find("SR", vdi["SR"]) if vdi is not None else None
            others = ({p["host"] for pbd in sr["PBDs"] if (p := store.find("PBD", pbd)) is not None} - {host}
                      if sr is not None else set())
            if others:
                shared_with |= others
            elif (key := volumes.key_in_store(ref)) is not None:
                self.forget(key, "volume")
        for kind in ("domain", "pool", "nic", "network"):
            observer = self.observers[kind]
            for ref in observer.homes_on(host):
                if (key := observer.key_in_store(ref)) is not None:
                    self.forget(key, kind)
                else:
                    observer.homes.pop(ref, None)
        return shared_with

    def forget(self, key: str, kind: str = "domain") -> None:
        observer = self.observers[kind]
        with self._lock:
            self._forget(observer, observer.ref(key))

    def _forget(self, observer: Observer, ref: str, home: str | None = None) -> None:
        if not self.store.exists(observer.cls, ref):
            observer.homes.pop(ref, None)
            return
        key = observer.key_in_store(ref)
        if key is not None:         # an older read in flight must not bring it back
            self._read_at[(observer.kind, key)] = next(self._reads)
        home = observer.homes.pop(ref, home)
        self.store.apply(observer.gone(ref))
        observer.after_gone(home, key)

    def _observe_batch(self, observer: Observer, host: str, states, read: int) -> None:
        """Apply the observations newer than what was applied of each object, in one store write."""
        ops, applied = [], []
        with observer.guard() or nullcontext():
            for state in states:
                key = observer.key_of(state)
                if self._read_at.get((observer.kind, key), 0) > read or observer.superseded(host, state):
                    continue
                self._read_at[(observer.kind, key)] = read
                observed = observer.observe(host, state)
                if observed is None:             # unreadable: skipped, logged by the observer
                    continue
                ops += observed
                observer.homes[observer.ref(key)] = host
                applied.append(state)
            self.store.apply(ops)
        try:
            observer.after_apply(host, applied)
        except Exception:            # what follows from the observation; the observation itself is in
            log.exception("event=after-observation-failed kind=%s host=%s", observer.kind, host)

