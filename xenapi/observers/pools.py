"""Storage pools -> SR and PBD records.

A libvirt storage pool on a host is a PBD (that host's view of the SR); the SR is the pool's uuid,
shared by every host that defines a pool with it.  An SR's sizes are observed from its pools; an
SR first seen here (a pool someone defined with virsh) is classified by its pool type
(``storage.plugin_for_pool``) and named after the pool.  An SR goes with its last PBD, unless
PBD.destroy removed it (``keep``): then the SR stays, without VDIs, for a PBD.create or SR.forget.
"""
from __future__ import annotations

from dataclasses import dataclass

from xenapi.backend.connection import ERR_NO_POOL
from xenapi.backend.storage_operations import PoolState
from xenapi.observers import Observer, read_or_none
from xenapi.state.store import add, delete, derived_ref, derived_uuid, mod


@dataclass(frozen=True)
class HostPool:
    host: str
    pool: PoolState

    @property
    def key(self) -> str:
        return pool_key(self.host, self.pool.uuid)


def pool_key(host: str, uuid: str) -> str:
    return f"{host}/{uuid}"


def sr_ref(uuid: str) -> str:
    return derived_ref("SR", uuid)


def pbd_ref(host: str, uuid: str) -> str:
    return derived_ref("PBD", pool_key(host, uuid))


class PoolObserver(Observer):
    kind, cls = "pool", "PBD"

    def __init__(self, store, hosts, storage):
        super().__init__(store)
        self.hosts, self.storage = hosts, storage
        self.keep: set[str] = set()       # SRs whose last PBD PBD.destroy removes: the SR stays (as xapi's)

    def list(self, host, conn):
        return [HostPool(host, p) for p in conn.list_pools()]

    def read(self, host, conn, key):
        uuid = key.split("/", 1)[1]
        state = read_or_none(lambda: conn.pool_state(uuid), ERR_NO_POOL)
        return HostPool(host, state) if state is not None else None

    def key_of(self, state) -> str:
        return state.key

    def ref(self, key: str) -> str:
        return derived_ref("PBD", key)

    def key_in_store(self, ref):
        rec = self.store.find("PBD", ref)
        return pool_key(rec["host"], self.store.get("SR", rec["SR"])["uuid"]) if rec is not None else None

    def loaded(self):
        return self.store.refs("PBD")

    def observe(self, host, state):
        pool = state.pool
        sr, pbd = sr_ref(pool.uuid), pbd_ref(host, pool.uuid)
        storage = self.storage
        sizes = {"physical_size": pool.capacity, "physical_utilisation": pool.allocation}
        ops = []
        if self.store.exists("SR", sr):
            ops.append(mod("SR", sr, sizes))
        else:
            ops.append(add("SR", sr, self.store.new_record("SR", {
                **storage.discovered_sr(pool), **sizes, "uuid": pool.uuid})))
        attached = {"currently_attached": pool.active}
        if self.store.exists("PBD", pbd):
            ops.append(mod("PBD", pbd, attached))
        else:
            ops.append(add("PBD", pbd, self.store.new_record("PBD", {
                "host": host, "SR": sr, "device_config": storage.device_config_of(pool), **attached,
                "uuid": derived_uuid("PBD", state.key)})))
        return ops

    def gone(self, ref):
        rec = self.store.get("PBD", ref)
        ops = [delete("PBD", ref)]
        sr = self.store.find("SR", rec["SR"])
        if sr is not None and sr["PBDs"] == [ref]:           # its last host: the SR goes with it
            ops += [delete("VDI", vdi) for vdi in sr["VDIs"]]
            if rec["SR"] not in self.keep:
                ops.append(delete("SR", rec["SR"]))
        return ops

    def after_apply(self, host, states) -> None:
        if kept := self.hosts.kept_storage(host):
            kept.note_pools([s.pool for s in states])
        srs = {sr_ref(s.pool.uuid) for s in states}
        self.storage.tables["SR"].refresh(self.store, srs)
        vdis = {v for sr in srs if (rec := self.store.find("SR", sr)) is not None for v in rec["VDIs"]}
        self.storage.tables["VDI"].refresh(self.store, vdis)     # resize needs a plugged PBD

    def after_gone(self, host, key) -> None:
        if key is not None and (kept := self.hosts.kept_storage(host)):
            kept.pool_gone(key.split("/", 1)[1])
        if key is not None:                                 # an SR kept without PBDs allows less
            self.storage.tables["SR"].refresh(self.store, [sr_ref(key.split("/", 1)[1])])
