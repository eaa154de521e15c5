"""Storage changes made behind the server's back, found by polling: libvirt sends no volume
events, and pool events only for some changes.

Every ``[storage] poll_interval`` seconds, per live and listed host: one call lists its pools
(compared with its PBDs: defined, undefined, started, stopped) and one call per running pool
lists its volume names (compared with the VDIs seen there).  Only what differs is re-read, through
the reconciler like any event, so a ``virsh vol-create`` reaches ``event.from`` within about one
period.  Every ``resync_interval`` a full relist catches what names do not show (sizes that grow
as guests write).
"""
from __future__ import annotations

import logging
import threading
import time

from xenapi.errors import XenAPIError
from xenapi.observers.pools import pool_key

log = logging.getLogger(__name__)


class StoragePoller:
    def __init__(self, store, hosts, reconciler, stopping: threading.Event, interval: float, resync_interval: float):
        self.store, self.hosts, self.reconciler = store, hosts, reconciler
        self._server_stopping = stopping
        self.interval = interval
        self.resync_interval = resync_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="storage-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def _run(self) -> None:
        hosts = self.hosts
        last_resync = time.monotonic()
        while not self._stop.wait(self.interval):
            resync = time.monotonic() - last_resync >= self.resync_interval
            for host in hosts.refs:
                if self._stop.is_set() or self._server_stopping.is_set() or not hosts.synced(host):
                    continue
                try:
                    if resync:
                        self.reconciler.relist_storage(host)
                    else:
                        self.poll(host)
                except XenAPIError as e:
                    log.debug("event=storage-poll-skipped host=%s error=%s", host, e.code)
                except Exception:
                    log.exception("event=storage-poll-failed host=%s", host)
            if resync:
                last_resync = time.monotonic()

    def poll(self, host: str) -> None:
        """Re-read the pools and volumes of ``host`` whose presence or state changed."""
        reconciler, store = self.reconciler, self.store
        conn = self.hosts.connection(host)
        if conn.busy():                         # the next period sees what this one would have
            return
        pools = conn.pool_flags()                                   # uuid -> active
        known = {store.get("SR", rec["SR"])["uuid"]: rec["currently_attached"]
                 for ref in reconciler.pools.homes_on(host) if (rec := store.find("PBD", ref)) is not None}
        for uuid in pools.keys() | known.keys():
            if pools.get(uuid) != known.get(uuid):
                reconciler.refresh(host, pool_key(host, uuid), "pool")
        volumes = reconciler.volumes
        seen = set()
        for uuid, active in pools.items():
            if active:
                try:
                    seen.update(f"{uuid}/{name}" for name in conn.volume_names(uuid))
                except XenAPIError:                                 # stopped meanwhile: the next poll sees it
                    continue
        for key in seen ^ volumes.keys_on(host):
            reconciler.refresh(host, key, "volume")
