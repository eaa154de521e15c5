"""Storage volumes -> VDI records.

A volume of a running pool is a VDI of that pool's SR.  Its uuid is its file name (``<uuid>.qcow2``:
the disk on the host says which VDI it is), or one derived from the SR and the name for a volume
someone else made (an ISO dropped into a library, a LUN).  Sizes, location and SR are observed;
names, type, sharing and configuration are the store's, given by VDI.create (``expect``) or, for
a volume found here, defaults (named after the volume; read-only in an ISO library).

libvirt sends no volume events, so ``xenapi.observers.polling`` compares each running pool's
volume names on a short period and enqueues what changed.  A stopped pool lists no volumes: its
VDIs stay as last seen (``HeldVolume``), as xapi keeps the VDIs of an unplugged SR, until the pool
runs again or goes.  The observer also indexes volumes by
path and by (pool, name) so a domain's disks find their VDI (``locate``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from xenapi.backend.connection import ERR_NO_POOL, ERR_NO_VOLUME
from xenapi.backend.storage_operations import VolumeState
from xenapi.model.types import NULL_REF
from xenapi.errors import XenAPIError
from xenapi.observers import Observer, no_such, read_or_none
from xenapi.state.store import add, delete, derived_ref, derived_uuid, mod

_UUID_NAME = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(\.[A-Za-z0-9]+)?$")


def vdi_uuid(pool_uuid: str, name: str) -> str:
    match = _UUID_NAME.match(name)
    return match.group(1) if match else derived_uuid("VDI", f"{pool_uuid}/{name}")


def vdi_ref(uuid: str) -> str:
    return derived_ref("VDI", uuid)


def volume_key(pool_uuid: str, name: str) -> str:
    return f"{pool_uuid}/{name}"


@dataclass(frozen=True)
class HeldVolume(VolumeState):
    """A volume of a stopped pool, as its VDI last showed it: libvirt cannot list it now."""


class VolumeObserver(Observer):
    kind, cls = "volume", "VDI"

    def __init__(self, store, hosts, storage):
        super().__init__(store)
        self.hosts, self.storage = hosts, storage
        self._expected: dict[str, dict] = {}                      # VDI ref -> store fields of a VDI being made
        self._by_path: dict[tuple[str, str], str] = {}            # (host, path) -> VDI ref
        self._by_name: dict[tuple[str, str, str], str] = {}       # (host, pool name, volume name) -> VDI ref
        self._keys_on: dict[str, set[str]] = {}                   # host -> keys of the volumes seen there
        self._clones: dict[str, set[str]] = {}                    # backing file -> VDIs on it

    def expect(self, ref: str, fields: dict) -> None:
        self._expected[ref] = fields

    def unexpect(self, ref: str) -> None:
        self._expected.pop(ref, None)

    # -- reading ---------------------------------------------------------------------------------
    def list(self, host, conn):
        states = conn.list_volumes()
        stopped = {p.uuid: p.name for p in conn.list_pools() if not p.active}
        return states + [held for held in (self._held(host, ref, rec, stopped) for ref, rec in
                                           self.store.records("VDI").items()) if held is not None]

    def read(self, host, conn, key):
        pool, name = key.split("/", 1)
        try:
            return conn.volume_state(pool, name)
        except XenAPIError as e:
            if no_such(e, ERR_NO_VOLUME) or no_such(e, ERR_NO_POOL):
                return None
            state = read_or_none(lambda: conn.pool_state(pool), ERR_NO_POOL)   # a stopped pool cannot
            if state is None:                                                  # look its volumes up
                return None
            if state.active:
                raise
            ref = self.ref(key)
            rec = self.store.find("VDI", ref)
            if rec is None:
                return None
            held = self._held(host, ref, rec, {pool: state.name})
            if held is None:                       # seen on another host: not this one's to forget
                raise
            return held

    def _held(self, host: str, ref: str, rec: dict, stopped: dict[str, str]) -> HeldVolume | None:
        """The VDI ``rec`` as a volume of a pool stopped on ``host`` (``stopped``: uuid -> name),
        or None if its pool is not one of them or another host sees it."""
        sr = self.store.find("SR", rec["SR"])
        if sr is None or sr["uuid"] not in stopped or "volume" not in rec["sm_config"] \
                or self.homes.get(ref, host) != host:
            return None
        return HeldVolume(pool=sr["uuid"], pool_name=stopped[sr["uuid"]], name=rec["sm_config"]["volume"],
                          key=rec["location"], path=rec["location"], vol_type="", capacity=rec["virtual_size"],
                          allocation=rec["physical_utilisation"], format=rec["sm_config"].get("format", ""),
                          backing=rec["sm_config"].get("backing", ""))

    def key_of(self, state) -> str:
        return state.ident

    def ref(self, key: str) -> str:
        return vdi_ref(vdi_uuid(*key.split("/", 1)))

    def key_in_store(self, ref):
        rec = self.store.find("VDI", ref)
        sr = self.store.find("SR", rec["SR"]) if rec is not None else None
        return volume_key(sr["uuid"], rec["sm_config"]["volume"]) if sr and "volume" in rec["sm_config"] else None

    def loaded(self):
        return self.store.refs("VDI")

    def clones_of(self, location: str) -> set[str]:
        """The VDIs whose volume has ``location`` as its backing file (qcow2 overlays on it)."""
        return set(self._clones.get(location, ()))

    def _note_backing(self, ref: str, backing: str) -> None:
        for location in [loc for loc, refs in self._clones.items() if ref in refs and loc != backing]:
            self._clones[location].discard(ref)
            if not self._clones[location]:
                del self._clones[location]
        if backing:
            self._clones.setdefault(backing, set()).add(ref)

    def keys_on(self, host: str) -> set[str]:
        """The keys of the volumes seen on ``host`` in its running pools (what its poll compares)."""
        stopped = {self.store.get("SR", rec["SR"])["uuid"] for rec in self.store.records("PBD").values()
                   if rec["host"] == host and not rec["currently_attached"] and self.store.exists("SR", rec["SR"])}
        return {key for key in self._keys_on.get(host, ()) if key.split("/", 1)[0] not in stopped}

    def locate(self, host: str, disk: dict) -> str:
        """The VDI a domain's disk names, or OpaqueRef:NULL."""
        if disk.get("type") == "volume":
            return self._by_name.get((host, disk.get("pool", ""), disk.get("volume", "")), NULL_REF)
        return self._by_path.get((host, disk.get("path", "")), NULL_REF)

    # -- into the store --------------------------------------------------------------------------
    def observe(self, host, vol):
        uuid = vdi_uuid(vol.pool, vol.name)
        ref = vdi_ref(uuid)
        sr = derived_ref("SR", vol.pool)
        current = self.store.find("VDI", ref)
        given = current["sm_config"] if current else self._expected.get(ref, {}).get("sm_config", {})
        sm_config = {**given, "volume": vol.name, "format": vol.format}
        if vol.backing:
            sm_config["backing"] = vol.backing
        else:
            sm_config.pop("backing", None)
        fields = {"SR": sr, "virtual_size": vol.capacity, "physical_utilisation": vol.allocation,
                  "location": vol.path, "missing": False, "sm_config": sm_config}
        self._by_path[(host, vol.path)] = ref
        self._keys_on.setdefault(host, set()).add(vol.ident)
        self._note_backing(ref, vol.backing)
        self._by_name[(host, vol.pool_name, vol.name)] = ref
        if isinstance(vol, HeldVolume):
            return []                                  # its pool is stopped: the VDI stays as it was
        if current is not None:
            return [mod("VDI", ref, fields)]
        base = self._expected.pop(ref, None) or self.storage.discovered_vdi(sr, vol)
        return [add("VDI", ref, self.store.new_record("VDI", {**base, **fields, "uuid": uuid}))]

    def gone(self, ref):
        return [delete("VDI", ref)]

    def after_apply(self, host, states) -> None:
        if kept := self.hosts.kept_storage(host):
            kept.note_volumes(states)
        if states:
            self.storage.volumes_changed(host, {vdi_ref(vdi_uuid(s.pool, s.name)) for s in states},
                                         {derived_ref("SR", s.pool) for s in states})

    def after_gone(self, host, key) -> None:
        if key is None:
            return
        if kept := self.hosts.kept_storage(host):
            kept.volume_gone(key)
        for keys in self._keys_on.values():
            keys.discard(key)
        ref = self.ref(key)
        self._note_backing(ref, "")
        for index in (self._by_path, self._by_name):
            for k in [k for k, v in index.items() if v == ref]:
                del index[k]
        self.storage.volumes_changed(host, set(), {derived_ref("SR", key.split("/", 1)[0])})
