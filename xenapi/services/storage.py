"""Storage work that spans libvirt and the store: SRs and PBDs (pools), VDIs (volumes).

Each message writes libvirt first, then lets the reconciler observe the result, so the store
never holds what libvirt refused; what only the store keeps (names, type, configuration) is
handed to the observer beforehand (``expect``), as VMs do.  Plugins (storage/) say what an SR
type is and can do; the operation tables (storage_rules.py) say what each object allows now.
VBDs (a VM's disks) are in xenapi/services/disks.py.
"""
from __future__ import annotations

import logging
import os
from urllib.parse import urlparse

from storage import PLUGINS, Backing, Plugin, PluginError, plugin_for_pool
from xenapi import errors as E
from xenapi.backend.storage_operations import PoolState, VolumeState
from xenapi.errors import XenAPIError
from xenapi.model.types import NULL_REF
from xenapi.observers.pools import pbd_ref, pool_key, sr_ref
from xenapi.observers.volumes import vdi_ref, volume_key
from xenapi.services import disks, volume_copy
from xenapi.services.storage_rules import TABLES, features, plugged_pbds
from xenapi.state.store import add, delete, derived_ref, derived_uuid, mod, new_uuid
from xenapi.wire.values import DateTime

POOL_REF = derived_ref("pool", "pool")

log = logging.getLogger(__name__)

LOCAL_POOL = "xenapi-local"          # the libvirt pool of a host's "Local storage" SR
EMBEDDED_POOL = "default-pool"       # libvirt's test driver's own pool
# VDI fields a client gives at creation that only the store keeps
_VDI_STORE_FIELDS = ("name_label", "name_description", "type", "sharable", "read_only", "other_config",
                     "xenstore_data", "sm_config", "tags", "on_boot", "allow_caching", "is_a_snapshot",
                     "snapshot_of", "snapshot_time")


def backend_failure(e: PluginError) -> XenAPIError:
    """A plugin's refusal, as xapi relays its SM driver's: SR_BACKEND_FAILURE_<n> ["", reason, ""]."""
    code = f"SR_BACKEND_FAILURE_{e.code}"
    if code not in E.ERRORS:
        code = E.SR_BACKEND_FAILURE[1]
    return XenAPIError(code, "", e.reason, "")


def no_space(requested: int, available: int) -> XenAPIError:
    """A full SR: what xapi really answers (its SR_FULL is declared but never raised; the SM
    driver's SRNoSpace reaches clients), so clients that special-case it keep working."""
    return XenAPIError(E.SR_BACKEND_FAILURE[44], "", "There is insufficient space",
                       f"requested {requested} bytes, {available} available")


class Storage(disks.Disks):
    def __init__(self, store, hosts, reconciler, *, local_path: str, state: str):
        self.store = store
        self.hosts = hosts
        self.reconciler = reconciler
        self._local_path = local_path            # [storage] local_path: where each host's local SR is made
        self._state = state                      # the server's state directory (the embedded host's local SR)
        self.plugins: dict[str, Plugin] = PLUGINS
        self.tables = TABLES
        self._expected_vbds: dict[str, dict] = {}
        self.unresolved: set[tuple[str, str]] = set()    # (host, domain uuid) with a disk naming an unknown volume

    # -- what the observers ask --------------------------------------------------------------------
    def discovered_sr(self, pool: PoolState) -> dict:
        """The store's fields of an SR first seen on a host (a pool nobody made through the API)."""
        try:
            plugin = plugin_for_pool(pool.pool_type, pool.xml)
            fields = {"type": plugin.type, "content_type": plugin.content_type, "shared": plugin.shared}
        except PluginError:
            fields = {"type": pool.pool_type, "content_type": "user", "shared": False}
        local = pool.name in (LOCAL_POOL, EMBEDDED_POOL)
        fields["name_label"] = "Local storage" if local else pool.name
        fields["other_config"] = {"i18n-key": "local-storage"} if local else {}
        fields["sm_config"] = {"libvirt_pool": pool.name}
        return fields

    def device_config_of(self, pool: PoolState) -> dict[str, str]:
        return {"location": pool.path} if pool.path else {}

    def discovered_vdi(self, sr: str, vol: VolumeState) -> dict:
        rec = self.store.find("SR", sr)
        plugin = self.plugins.get(rec["type"]) if rec else None
        return {"name_label": vol.name, "type": "user", "read_only": bool(plugin and plugin.read_only),
                "sharable": False, "managed": True}

    def expected_vbd(self, ref: str) -> dict:
        return self._expected_vbds.pop(ref, {})

    def volumes_changed(self, host: str, vdis: set[str], srs: set[str]) -> None:
        """After an observation of volumes: SR.virtual_allocation, VDI allowed operations, and the
        domains whose disks named a volume not known until now."""
        for sr in srs:
            rec = self.store.find("SR", sr)
            if rec is not None:
                total = sum(self.store.get("VDI", v)["virtual_size"] for v in rec["VDIs"] if self.store.exists("VDI", v))
                self.store.update("SR", sr, {"virtual_allocation": total})
        self.tables["VDI"].refresh(self.store, vdis)
        self.tables["SR"].refresh(self.store, srs)
        if vdis:
            self.resolve_disks(host)

    # -- SM records and each host's local SR ----------------------------------------------------------
    def publish_plugins(self) -> list:
        ops = []
        for plugin in self.plugins.values():
            ref = derived_ref("SM", plugin.type)
            fields = plugin.sm_record()
            if self.store.exists("SM", ref):
                ops.append(mod("SM", ref, {k: v for k, v in fields.items() if k != "other_config"}))
            else:
                ops.append(add("SM", ref, self.store.new_record("SM", {**fields, "uuid": derived_uuid("SM", plugin.type)})))
        return ops

    def host_listed(self, host: str) -> None:
        """A host's objects are listed: its local SR is made if it has none.  A host without a
        usable local SR still serves its VMs."""
        try:
            self.ensure_local_sr(host)
        except XenAPIError as e:
            log.warning("event=local-sr-failed host=%s error=%s params=%s", host, e.code, e.params)

    def ensure_local_sr(self, host: str) -> None:
        """Every host has a "Local storage" SR: the test driver's own pool, else a dir pool of our own
        (``[storage] local_path``), made at its first start.  The pool's default_SR is the master's."""
        conn = self.hosts.connection(host)
        pools = {p.name: p for p in conn.list_pools()}
        if not conn.storage_supported:
            log.info("event=no-storage-driver host=%s", host)
            return
        pool = pools.get(EMBEDDED_POOL) if self.hosts.facts(host).hypervisor == "TEST" else None
        pool = pool or pools.get(LOCAL_POOL)
        uuid = pool.uuid if pool is not None else new_uuid()
        if pool is None or not pool.active:     # made or started now: the host's relist did not see it
            if pool is None:
                xml = self.plugins["dir"].pool_xml(uuid=uuid, name=LOCAL_POOL,
                                                   device_config={"location": self.local_path(conn.uri)})
                conn.define_pool(xml, build=True)
            conn.start_pool(uuid)
            self.reconciler.refresh(host, pool_key(host, uuid), "pool")
            self.reconciler.relist_volumes(host)
        if host == self.hosts.master:
            self.store.modify("pool", POOL_REF, lambda rec: {} if rec["default_SR"] != NULL_REF
                              and self.store.exists("SR", rec["default_SR"]) else {"default_SR": sr_ref(uuid)})

    def local_path(self, uri: str) -> str:
        if self._local_path:
            return self._local_path
        if urlparse(uri).hostname:                      # a remote host: its own /var/lib
            return "/var/lib/xenapi/local-sr"
        return os.path.join(os.path.abspath(self._state), "local-sr")

    # -- where an SR is usable -------------------------------------------------------------------------
    def plugin(self, sr: str) -> Plugin:
        rec = self.store.get("SR", sr)
        plugin = self.plugins.get(rec["type"])
        if plugin is None:
            raise XenAPIError(E.SR_UNKNOWN_DRIVER, rec["type"])
        return plugin

    def attached_host(self, sr: str) -> str:
        """A live host with the SR plugged (the master's first); HOST_OFFLINE if its hosts are all
        unreachable, SR_HAS_NO_PBDS if none has it plugged."""
        pbds = plugged_pbds(self.store, sr)
        hosts = [self.store.get("PBD", p)["host"] for p in pbds]
        for host in sorted(hosts, key=lambda h: h != self.hosts.master):
            if self.hosts.live(host):
                return host
        if hosts:                                   # plugged, but its hosts are unreachable now
            raise XenAPIError(E.HOST_OFFLINE, hosts[0])
        raise XenAPIError(E.SR_HAS_NO_PBDS, sr)

    def _need(self, sr: str, feature: str) -> None:
        if feature not in features(self.store, sr):
            raise XenAPIError(E.SR_OPERATION_NOT_SUPPORTED, sr)

    # -- SR ------------------------------------------------------------------------------------------------
    def sr_create(self, ctx, host, device_config, physical_size, name_label, name_description, sr_type,
                  content_type, shared, sm_config):
        plugin = self.plugins.get(sr_type.lower())
        if plugin is None:
            raise XenAPIError(E.SR_UNKNOWN_DRIVER, sr_type)
        uuid = new_uuid()
        try:
            xml = plugin.pool_xml(uuid=uuid, name=f"sr-{uuid[:8]}", device_config=device_config)
        except PluginError as e:
            raise backend_failure(e) from None
        targets = self.hosts.refs if shared else [host]
        sr = sr_ref(uuid)
        self.store.apply([add("SR", sr, self.store.new_record("SR", {
            "uuid": uuid, "name_label": name_label, "name_description": name_description, "type": plugin.type,
            "content_type": content_type or plugin.content_type, "shared": bool(shared),
            "sm_config": {**sm_config, "libvirt_pool": f"sr-{uuid[:8]}"}, "physical_size": physical_size}))])
        made = []
        try:
            for target in targets:
                conn = self.hosts.connection(target)
                conn.define_pool(xml, build=plugin.needs_build(device_config) and (target == host or not shared))
                made.append(target)
                conn.start_pool(uuid)
                self.reconciler.refresh(target, pool_key(target, uuid), "pool")
                self.store.update("PBD", pbd_ref(target, uuid), {"device_config": dict(device_config)})
                self.reconciler.relist_volumes(target)
        except XenAPIError:
            for target in made:                          # nothing half-made: undefine what was defined
                try:
                    self.hosts.connection(target).stop_pool(uuid)
                    self.hosts.connection(target).undefine_pool(uuid)
                    self.reconciler.refresh(target, pool_key(target, uuid), "pool")
                except XenAPIError as cleanup:
                    log.warning("event=sr-create-cleanup-failed sr=%s host=%s error=%s", uuid, target, cleanup.code)
            self.store.apply([delete("SR", sr)])
            raise
        return sr

    def sr_introduce(self, ctx, uuid, name_label, name_description, sr_type, content_type, shared, sm_config):
        uuid = uuid or new_uuid()
        if self.store.find_uuid("SR", uuid) is not None:
            raise XenAPIError(E.SR_UUID_EXISTS, uuid)
        plugin = self.plugins.get(sr_type.lower())
        if plugin is None:
            raise XenAPIError(E.SR_UNKNOWN_DRIVER, sr_type)
        ref = sr_ref(uuid)
        self.store.apply([add("SR", ref, self.store.new_record("SR", {
            "uuid": uuid, "name_label": name_label, "name_description": name_description, "type": plugin.type,
            "content_type": content_type, "shared": bool(shared), "sm_config": sm_config,
            "physical_size": -1, "physical_utilisation": -1}))])
        self.tables["SR"].refresh(self.store, [ref])
        return ref

    def sr_destroy(self, ctx, sr):
        with self.tables["SR"].operation(ctx, sr, "destroy") as rec:
            pbds = list(rec["PBDs"])
            first = True
            for pbd in pbds:
                p = self.store.get("PBD", pbd)
                conn = self.hosts.connection(p["host"])
                (conn.delete_pool if first else conn.undefine_pool)(rec["uuid"])   # the storage once, then the others
                first = False
                self.reconciler.refresh(p["host"], pool_key(p["host"], rec["uuid"]), "pool")
        self.store.apply([delete("SR", sr)])

    def sr_forget(self, ctx, sr):
        with self.tables["SR"].operation(ctx, sr, "forget") as rec:
            for pbd in list(rec["PBDs"]):
                p = self.store.get("PBD", pbd)
                self.hosts.connection(p["host"]).undefine_pool(rec["uuid"])
                self.reconciler.refresh(p["host"], pool_key(p["host"], rec["uuid"]), "pool")
        self.store.apply([*(delete("VDI", v) for v in self.store.get("SR", sr)["VDIs"]), delete("SR", sr)]
                         if self.store.exists("SR", sr) else [])

    def sr_scan(self, ctx, sr):
        with self.tables["SR"].operation(ctx, sr, "scan") as rec:
            host = self.attached_host(sr)
            self._refresh_pool(host, sr, rec["uuid"])
            self.reconciler.relist_volumes(host)

    def sr_update(self, ctx, sr):
        with self.tables["SR"].operation(ctx, sr, "update") as rec:
            self._refresh_pool(self.attached_host(sr), sr, rec["uuid"])

    def _refresh_pool(self, host: str, sr: str, uuid: str) -> None:
        """libvirt re-reads the pool's storage; one it cannot read (its directory gone, its export
        or target unreachable) is SM's SRUnavailable, and the pool is re-observed either way."""
        try:
            self.hosts.connection(host).refresh_pool(uuid)
        except XenAPIError as e:
            if e.code != E.BACKEND_FAILURE:
                raise
            raise XenAPIError(E.SR_BACKEND_FAILURE[47], "", f"The SR is not available [opterr={e.params[-1]}]",
                              "") from None
        finally:
            self.reconciler.refresh(host, pool_key(host, uuid), "pool")

    def sr_probe(self, ctx, host, device_config, sr_type, sm_config):
        plugin = self.plugins.get((sr_type or "").lower())
        if plugin is None:
            raise XenAPIError(E.SR_UNKNOWN_DRIVER, sr_type)
        if "SR_PROBE" not in plugin.features:
            raise XenAPIError(E.SR_BACKEND_FAILURE[38], "", f"{plugin.type} SRs cannot be probed", "")
        try:
            spec = plugin.probe_xml(device_config) if hasattr(plugin, "probe_xml") else ""
        except PluginError as e:
            raise backend_failure(e) from None
        return self.hosts.connection(host).find_pool_sources(plugin.pool_type, spec)

    def sr_set_shared(self, ctx, sr, value):
        self.store.update("SR", sr, {"shared": bool(value)})

    # -- PBD -----------------------------------------------------------------------------------------------
    def pbd_create(self, ctx, values: dict) -> str:
        sr, host = values["SR"], values["host"]
        for ref, rec in self.store.records("PBD").items():
            if rec["SR"] == sr and rec["host"] == host:
                raise XenAPIError(E.PBD_EXISTS, sr, host, ref)
        if not self.store.exists("SR", sr):
            raise XenAPIError(E.HANDLE_INVALID, "SR", sr)
        if not self.store.exists("host", host):
            raise XenAPIError(E.HANDLE_INVALID, "host", host)
        plugin, uuid = self.plugin(sr), self.store.get("SR", sr)["uuid"]
        name = self.store.get("SR", sr)["sm_config"].get("libvirt_pool") or f"sr-{uuid[:8]}"
        try:
            xml = plugin.pool_xml(uuid=uuid, name=name, device_config=values["device_config"])
        except PluginError as e:
            raise backend_failure(e) from None
        self.hosts.connection(host).define_pool(xml, build=False)
        self.reconciler.refresh(host, pool_key(host, uuid), "pool")
        ref = pbd_ref(host, uuid)
        self.store.update("PBD", ref, {"device_config": values["device_config"],
                                       "other_config": values.get("other_config", {})})
        return ref

    def pbd_destroy(self, ctx, pbd):
        rec = self.store.get("PBD", pbd)
        if rec["currently_attached"]:
            raise XenAPIError(E.OPERATION_NOT_ALLOWED, "PBD is currently attached")
        uuid = self.store.get("SR", rec["SR"])["uuid"]
        self.reconciler.pools.keep.add(rec["SR"])      # as xapi: the SR outlives its PBDs
        try:
            self.hosts.connection(rec["host"]).undefine_pool(uuid)
            self.reconciler.refresh(rec["host"], pool_key(rec["host"], uuid), "pool")
        finally:
            self.reconciler.pools.keep.discard(rec["SR"])

    def pbd_plug(self, ctx, pbd):
        rec = self.store.get("PBD", pbd)
        sr = self.store.get("SR", rec["SR"])
        self.plugin(rec["SR"])
        if not sr["shared"]:
            for other in sr["PBDs"]:
                o = self.store.get("PBD", other)
                if other != pbd and o["currently_attached"]:
                    raise XenAPIError(E.SR_NOT_SHARABLE, rec["SR"], o["host"])
        with self.tables["SR"].operation(ctx, rec["SR"], "plug"):
            self.hosts.connection(rec["host"]).start_pool(sr["uuid"])
            self.reconciler.refresh(rec["host"], pool_key(rec["host"], sr["uuid"]), "pool")
            self.reconciler.relist_volumes(rec["host"])

    def pbd_unplug(self, ctx, pbd):
        rec = self.store.get("PBD", pbd)
        sr = self.store.get("SR", rec["SR"])
        in_use = [v for v in sr["VDIs"] if any(self.store.get("VBD", b)["currently_attached"]
                                               for b in self.store.get("VDI", v)["VBDs"])]
        if in_use:
            raise XenAPIError(E.VDI_IN_USE, *in_use)
        with self.tables["SR"].operation(ctx, rec["SR"], "unplug"):
            self.hosts.connection(rec["host"]).stop_pool(sr["uuid"])
            self.reconciler.refresh(rec["host"], pool_key(rec["host"], sr["uuid"]), "pool")
            self.reconciler.relist_volumes(rec["host"])

    # -- VDI ---------------------------------------------------------------------------------------------
    def vdi_create(self, ctx, values: dict) -> str:
        sr = values["SR"]
        if not self.store.exists("SR", sr):
            raise XenAPIError(E.HANDLE_INVALID, "SR", sr)
        if values["type"] == "cbt_metadata":
            raise XenAPIError(E.VDI_INCOMPATIBLE_TYPE, "", "cbt_metadata")
        self._need(sr, "VDI_CREATE")
        plugin = self.plugin(sr)
        host = self.attached_host(sr)
        size = values["virtual_size"]
        self._check_space(sr, plugin, size)
        uuid = new_uuid()
        store_fields = {k: values[k] for k in _VDI_STORE_FIELDS if k in values}
        return self._make_volume(host, sr, plugin, uuid, size, store_fields)

    def volume_like(self, host: str, sr: str, rec: dict, *, copy_of: tuple[str, str] | None = None) -> str:
        """A new VDI on ``sr`` (its volume made on ``host``) of VDI record ``rec``'s size, carrying its
        store fields: the target of a copy or a move."""
        return self._make_volume(host, sr, self.plugin(sr), new_uuid(), rec["virtual_size"], self._copied_fields(rec),
                                 copy_of=copy_of)

    def check_space(self, sr: str, size: int) -> None:
        """SR_BACKEND_FAILURE_44 (xapi's "insufficient space") if ``size`` bytes do not fit in ``sr``."""
        self._check_space(sr, self.plugin(sr), size)

    def _check_space(self, sr: str, plugin: Plugin, size: int) -> None:
        if isinstance(size, int) and size > 0:
            rec = self.store.get("SR", sr)
            limit = rec["physical_size"] if plugin.thin else rec["physical_size"] - rec["physical_utilisation"]
            if rec["physical_size"] >= 0 and size > limit:
                raise no_space(size, limit)

    def _make_volume(self, host: str, sr: str, plugin: Plugin, uuid: str, size: int, store_fields: dict, *,
                     backing: Backing | None = None, copy_of: tuple[str, str] | None = None) -> str:
        """A new volume for VDI ``uuid``: empty, on a backing file, or with the data of volume
        ``copy_of`` (pool uuid, name) of the same host, which libvirt copies."""
        try:
            name = plugin.volume_name(uuid)
            xml = plugin.volume_xml(name=name, size=size, backing=backing)
        except PluginError as e:
            raise backend_failure(e) from None
        ref = vdi_ref(uuid)
        pool = self.store.get("SR", sr)["uuid"]
        self.reconciler.volumes.expect(ref, store_fields)
        try:
            if copy_of is None:
                self.hosts.connection(host).create_volume(pool, xml)
            else:
                self.hosts.connection(host).copy_volume(*copy_of, pool, xml)
        except Exception:
            self.reconciler.volumes.unexpect(ref)
            raise
        self.reconciler.refresh(host, volume_key(pool, name), "volume")
        return ref

    def volume_of(self, vdi: str) -> tuple[str, str, str]:
        """(host with the SR plugged, pool uuid, volume name) of a VDI."""
        rec = self.store.get("VDI", vdi)
        host = self.attached_host(rec["SR"])
        return host, self.store.get("SR", rec["SR"])["uuid"], rec["sm_config"].get("volume", "")

    def _assert_no_clones(self, vdi: str, rec: dict, op: str) -> None:
        """A VDI other VDIs are qcow2 overlays on (a template's disk and its clones' disks) keeps its
        data while they exist: destroying or growing it would break every one of them."""
        clones = [c for c in self.reconciler.volumes.clones_of(rec["location"]) if self.store.exists("VDI", c)]
        if clones:
            raise XenAPIError(E.VDI_IN_USE, vdi, op)

    def vdi_destroy(self, ctx, vdi):
        with self.tables["VDI"].operation(ctx, vdi, "destroy") as rec:
            self._assert_no_clones(vdi, rec, "destroy")
            for vbd in list(rec["VBDs"]):                 # as xapi: its (detached) VBDs go with it
                self.vbd_destroy(ctx, vbd)
            host, pool, name = self.volume_of(vdi)
            self.hosts.connection(host).delete_volume(pool, name)
            self.reconciler.refresh(host, volume_key(pool, name), "volume")

    def vdi_forget(self, ctx, vdi):
        with self.tables["VDI"].operation(ctx, vdi, "forget") as rec:
            if any(self.store.get("VBD", v)["currently_attached"] for v in rec["VBDs"]):
                raise XenAPIError(E.VDI_IN_USE, vdi, "forget")
        key = self.reconciler.volumes.key_in_store(vdi)
        if key is not None:
            self.reconciler.forget(key, "volume")       # the next SR.scan finds the volume again
        else:
            self.store.delete("VDI", vdi)

    def vdi_update(self, ctx, vdi):
        with self.tables["VDI"].operation(ctx, vdi, "update"):
            host, pool, name = self.volume_of(vdi)
            self.reconciler.refresh(host, volume_key(pool, name), "volume")

    def vdi_resize(self, ctx, vdi, size):
        with self.tables["VDI"].operation(ctx, vdi, "resize") as rec:
            self._assert_no_clones(vdi, rec, "resize")
            host, pool, name = self.volume_of(vdi)
            if size < rec["virtual_size"]:
                raise XenAPIError(E.SR_BACKEND_FAILURE[79], "", "VDI Invalid size [opterr=shrinking not allowed]", "")
            self._check_space(rec["SR"], self.plugin(rec["SR"]), size - rec["virtual_size"])
            conn = self.hosts.connection(host)
            if self.hosts.facts(host).hypervisor == "TEST":
                # libvirt's test driver keeps no data and cannot resize: the same empty volume, bigger
                plugin = self.plugin(rec["SR"])
                conn.delete_volume(pool, name)
                conn.create_volume(pool, plugin.volume_xml(name=name, size=size))
            else:
                conn.resize_volume(pool, name, size)
            self.reconciler.refresh(host, volume_key(pool, name), "volume")

    def _copied_fields(self, rec: dict, **changes) -> dict:
        fields = {k: rec[k] for k in ("name_label", "name_description", "type", "sharable", "other_config",
                                      "xenstore_data", "tags", "on_boot", "allow_caching")}
        return {**fields, "read_only": False, "sm_config": {}, **changes}

    def vdi_snapshot(self, ctx, vdi, driver_params):
        """A full, independent copy marked as a snapshot: a qcow2 overlay would have the disk's
        live file as its backing file, which the running guest keeps writing."""
        with self.tables["VDI"].operation(ctx, vdi, "snapshot") as rec:
            self._need(rec["SR"], "VDI_SNAPSHOT")
            host, pool, name = self.volume_of(vdi)
            fields = self._copied_fields(rec, is_a_snapshot=True, snapshot_of=vdi, snapshot_time=DateTime.now())
            return self._make_volume(host, rec["SR"], self.plugin(rec["SR"]), new_uuid(), rec["virtual_size"],
                                     fields, copy_of=(pool, name))

    def vdi_clone(self, ctx, vdi, driver_params):
        """A new disk with the source's data: a qcow2 overlay on the source where nothing writes the
        source any more (a snapshot, a read-only disk, a template's), else a full copy."""
        with self.tables["VDI"].operation(ctx, vdi, "clone") as rec:
            host, pool, name = self.volume_of(vdi)
            plugin = self.plugin(rec["SR"])
            fields = self._copied_fields(rec)
            if plugin.volume_format == "qcow2" and self._frozen(rec):
                backing = Backing(rec["location"], rec["sm_config"].get("format") or "qcow2")
                return self._make_volume(host, rec["SR"], plugin, new_uuid(), rec["virtual_size"], fields,
                                         backing=backing)
            return self._make_volume(host, rec["SR"], plugin, new_uuid(), rec["virtual_size"], fields, copy_of=(pool, name))

    def _frozen(self, rec: dict) -> bool:
        """Nothing will write this VDI: a snapshot, read-only, or only in templates' RO or halted VBDs."""
        if rec["is_a_snapshot"] or rec["read_only"]:
            return True
        users = [self.store.get("VM", self.store.get("VBD", v)["VM"]) for v in rec["VBDs"]]
        return bool(users) and all(u["is_a_template"] for u in users)

    def vdi_copy(self, ctx, vdi, sr, base_vdi, into_vdi):
        if base_vdi != NULL_REF:
            raise XenAPIError(E.VALUE_NOT_SUPPORTED, "base_vdi", base_vdi, "differential copies are not supported")
        with self.tables["VDI"].operation(ctx, vdi, "copy") as rec:
            return volume_copy.copy(self, ctx, vdi, rec, sr, into_vdi)

    def vdi_introduce(self, ctx, uuid, name_label, name_description, sr, vdi_type, sharable, read_only,
                      other_config, location, xenstore_data, sm_config, managed, virtual_size,
                      physical_utilisation, metadata_of_pool, is_a_snapshot, snapshot_time, snapshot_of):
        host = self.attached_host(sr)
        pool = self.store.get("SR", sr)["uuid"]
        conn = self.hosts.connection(host)
        conn.refresh_pool(pool)
        name = os.path.basename(location) if location.startswith("/") else location
        state = self.reconciler.volumes.read(host, conn, volume_key(pool, name))
        if state is None:
            raise XenAPIError(E.VDI_MISSING, sr, location)
        ref = self.reconciler.volumes.ref(volume_key(pool, name))
        self.reconciler.volumes.expect(ref, {
            "name_label": name_label, "name_description": name_description, "type": vdi_type,
            "sharable": sharable, "read_only": read_only, "other_config": other_config,
            "xenstore_data": xenstore_data, "sm_config": sm_config, "managed": managed,
            "is_a_snapshot": is_a_snapshot, "snapshot_time": snapshot_time, "snapshot_of": snapshot_of,
            "metadata_of_pool": metadata_of_pool})
        if self.store.exists("VDI", ref):
            self.reconciler.volumes.unexpect(ref)
            self.store.update("VDI", ref, {"name_label": name_label, "name_description": name_description})
        self.reconciler.refresh(host, volume_key(pool, name), "volume")
        return ref
