"""What a host connection does to its storage pools and volumes: read, define, start, stop, create,
delete, resize, copy.

``StorageOperations`` is mixed into ``HostConnection`` as ``DomainOperations`` is: each method is
one libvirt exchange under ``_using`` (liveness, and libvirt errors turned into Xen-API errors).
Pools are addressed by UUID, volumes by (pool UUID, volume name).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import libvirt

from xenapi.backend.libvirt_errors import is_unsupported, unless_gone

STREAM_CHUNK = 256 * 1024     # bytes per libvirt stream packet (its RPC payload limit is just under 256 KiB)

_VOL_TYPES = {libvirt.VIR_STORAGE_VOL_FILE: "file", libvirt.VIR_STORAGE_VOL_BLOCK: "block",
              libvirt.VIR_STORAGE_VOL_DIR: "dir", libvirt.VIR_STORAGE_VOL_NETWORK: "network",
              libvirt.VIR_STORAGE_VOL_NETDIR: "netdir", libvirt.VIR_STORAGE_VOL_PLOOP: "ploop"}


@dataclass(frozen=True)
class PoolState:
    uuid: str
    name: str
    pool_type: str          # libvirt's <pool type>: dir, logical, netfs, iscsi-direct, rbd...
    active: bool
    capacity: int
    allocation: int
    available: int
    path: str               # <target><path>, "" where the pool has none
    xml: str


@dataclass(frozen=True)
class VolumeState:
    pool: str               # pool uuid
    pool_name: str
    name: str
    key: str
    path: str
    vol_type: str           # file, block, network...
    capacity: int
    allocation: int
    format: str             # qcow2, raw, iso... ("" if the pool does not say)
    backing: str            # the backing store's path ("" if none)

    @property
    def ident(self) -> str:
        return f"{self.pool}/{self.name}"


def describe_pool(pool: libvirt.virStoragePool) -> PoolState:
    xml = pool.XMLDesc(0)
    root = ET.fromstring(xml)
    state, capacity, allocation, available = pool.info()
    return PoolState(uuid=pool.UUIDString(), name=pool.name(), pool_type=root.get("type", ""),
                     active=state in (libvirt.VIR_STORAGE_POOL_RUNNING, libvirt.VIR_STORAGE_POOL_DEGRADED),
                     capacity=capacity, allocation=allocation, available=available,
                     path=root.findtext("target/path") or "", xml=xml)


def describe_volume(pool_uuid: str, pool_name: str, vol: libvirt.virStorageVol) -> VolumeState:
    root = ET.fromstring(vol.XMLDesc(0))
    vol_type, capacity, allocation = vol.info()
    fmt = root.find("target/format")
    return VolumeState(pool=pool_uuid, pool_name=pool_name, name=vol.name(), key=vol.key(),
                       path=root.findtext("target/path") or vol.path(),     # the XML has it: no second call
                       vol_type=_VOL_TYPES.get(vol_type, str(vol_type)), capacity=capacity, allocation=allocation,
                       format=fmt.get("type", "") if fmt is not None else "",
                       backing=root.findtext("backingStore/path") or "")


class StorageOperations:
    """Pool and volume reads and changes on top of the host's ``_using``; see the module doc."""

    uri: str

    def _using(self, operation: str) -> AbstractContextManager[libvirt.virConnect]:
        raise NotImplementedError               # HostConnection's

    # ---- pools ----------------------------------------------------------------------------------
    storage_supported = True    # False once the driver said it has no storage (a libvirtd without it)

    def _all_pools(self, conn: libvirt.virConnect, flags: int = 0) -> list[libvirt.virStoragePool]:
        """The host's pools; none where the daemon has no storage driver (its VMs still work)."""
        try:
            return conn.listAllStoragePools(flags)
        except libvirt.libvirtError as e:
            if not is_unsupported(e):
                raise
            self.storage_supported = False
            return []

    def list_pools(self) -> list[PoolState]:
        with self._using("list_pools") as conn:
            return [s for p in self._all_pools(conn) if (s := unless_gone(lambda: describe_pool(p)))]

    def pool_state(self, uuid: str) -> PoolState:
        with self._using("pool_state") as conn:
            return describe_pool(conn.storagePoolLookupByUUIDString(uuid))

    def pool_flags(self) -> dict[str, bool]:
        """uuid -> running, of every pool: two calls, for the poller."""
        with self._using("pool_flags") as conn:
            active = {p.UUIDString() for p in self._all_pools(conn, libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)}
            return {p.UUIDString(): p.UUIDString() in active for p in self._all_pools(conn)}

    def define_pool(self, xml: str, *, build: bool) -> str:
        """Define a persistent pool (and build its storage: a directory, a VG, a mount point)."""
        with self._using("define_pool") as conn:
            pool = conn.storagePoolDefineXML(xml, 0)
            if build:
                try:
                    pool.build(0)
                except libvirt.libvirtError:
                    pool.undefine()
                    raise
            return pool.UUIDString()

    def _on_pool(self, operation: str, uuid: str, action):
        with self._using(operation) as conn:
            return action(conn.storagePoolLookupByUUIDString(uuid))

    def start_pool(self, uuid: str) -> None:
        def start(pool):
            if not pool.isActive():
                pool.create(0)
            pool.setAutostart(1)
        self._on_pool("start_pool", uuid, start)

    def stop_pool(self, uuid: str) -> None:
        def stop(pool):
            if pool.isActive():
                pool.destroy()
            pool.setAutostart(0)
        self._on_pool("stop_pool", uuid, stop)

    def undefine_pool(self, uuid: str) -> None:
        self._on_pool("undefine_pool", uuid, lambda pool: pool.undefine())

    def delete_pool(self, uuid: str) -> None:
        """Remove the pool's storage (its directory, VG...), then its definition."""
        def delete(pool):
            if pool.isActive():
                pool.destroy()
            try:
                pool.delete(0)
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:   # e.g. iSCSI: nothing to delete
                    raise
            pool.undefine()
        self._on_pool("delete_pool", uuid, delete)

    def refresh_pool(self, uuid: str) -> None:
        self._on_pool("refresh_pool", uuid, lambda pool: pool.refresh(0))

    def find_pool_sources(self, pool_type: str, spec: str) -> str:
        with self._using("find_pool_sources") as conn:
            return conn.findStoragePoolSources(pool_type, spec or None, 0)

    # ---- volumes --------------------------------------------------------------------------------
    def list_volumes(self) -> list[VolumeState]:
        """Every volume of every running pool."""
        with self._using("list_volumes") as conn:
            out = []
            for pool in self._all_pools(conn, libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
                uuid, name = pool.UUIDString(), pool.name()
                for vol in unless_gone(lambda: pool.listAllVolumes(0)) or ():
                    if (state := unless_gone(lambda: describe_volume(uuid, name, vol))) is not None:
                        out.append(state)
            return out

    def volume_names(self, pool_uuid: str) -> list[str]:
        """The names of a running pool's volumes: one call, for the pollers."""
        return self._on_pool("volume_names", pool_uuid, lambda pool: pool.listVolumes())

    def volume_state(self, pool_uuid: str, name: str) -> VolumeState:
        def read(pool):
            return describe_volume(pool_uuid, pool.name(), pool.storageVolLookupByName(name))
        return self._on_pool("volume_state", pool_uuid, read)

    def create_volume(self, pool_uuid: str, xml: str) -> str:
        """Create a volume from its XML; returns its name."""
        return self._on_pool("create_volume", pool_uuid, lambda pool: pool.createXML(xml, 0).name())

    def copy_volume(self, src_pool: str, src_name: str, dst_pool: str, xml: str) -> str:
        """A new volume in ``dst_pool`` with the data of ``src_name`` (libvirt converts formats)."""
        with self._using("copy_volume") as conn:
            source = conn.storagePoolLookupByUUIDString(src_pool).storageVolLookupByName(src_name)
            return conn.storagePoolLookupByUUIDString(dst_pool).createXMLFrom(xml, source, 0).name()

    def delete_volume(self, pool_uuid: str, name: str) -> None:
        self._on_pool("delete_volume", pool_uuid, lambda pool: pool.storageVolLookupByName(name).delete(0))

    def resize_volume(self, pool_uuid: str, name: str, size: int) -> None:
        self._on_pool("resize_volume", pool_uuid, lambda pool: pool.storageVolLookupByName(name).resize(size, 0))

    # ---- volume data (VDI import and export) ------------------------------------------------------
    @contextmanager
    def upload_volume(self, pool_uuid: str, name: str) -> Iterator[Callable[[bytes], None]]:
        """Write a volume's bytes from its start through a libvirt stream (virStorageVolUpload, so
        it works on a remote host too): yields ``write(data)``.  The upload is finished when the
        block ends, aborted if it raises (what was written so far stays written)."""
        with self._using("upload_volume") as conn:
            vol = conn.storagePoolLookupByUUIDString(pool_uuid).storageVolLookupByName(name)
            stream = conn.newStream(0)
            vol.upload(stream, 0, 0, 0)
            try:
                yield lambda data: _send_all(stream, data)
            except BaseException:
                _abort(stream)
                raise
            stream.finish()

    @contextmanager
    def download_volume(self, pool_uuid: str, name: str) -> Iterator[Iterator[bytes]]:
        """Read a volume's bytes (virStorageVolDownload): yields an iterator of chunks, ending at the
        volume's end.  The download is aborted if the block ends before it or raises."""
        with self._using("download_volume") as conn:
            vol = conn.storagePoolLookupByUUIDString(pool_uuid).storageVolLookupByName(name)
            stream = conn.newStream(0)
            vol.download(stream, 0, 0, 0)
            ended = []

            def chunks() -> Iterator[bytes]:
                while data := stream.recv(STREAM_CHUNK):
                    if not isinstance(data, bytes):        # -2: would block (a blocking stream never does)
                        raise libvirt.libvirtError(f"download_volume: unexpected stream answer {data!r}")
                    yield data
                ended.append(True)
            try:
                yield chunks()
            except BaseException:
                _abort(stream)
                raise
            if ended:
                stream.finish()
            else:
                _abort(stream)


def _send_all(stream: libvirt.virStream, data: bytes) -> None:
    for start in range(0, len(data), STREAM_CHUNK):
        piece = data[start:start + STREAM_CHUNK]           # the whole of a small chunk: no copy
        while piece:
            sent = stream.send(piece)
            if sent < 0:                                   # -2: would block (a blocking stream never does)
                raise libvirt.libvirtError(f"upload_volume: unexpected stream answer {sent}")
            piece = piece[sent:]


def _abort(stream: libvirt.virStream) -> None:
    try:
        stream.abort()
    except libvirt.libvirtError:
        pass                                               # already ended or broken: nothing to undo
