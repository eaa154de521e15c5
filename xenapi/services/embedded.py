"""The embedded default keeps its domains across restarts.

libvirt's ``test:///default`` driver lives in the server's own process and holds its domains in
memory: without help, a restart would lose every VM a newcomer created there and every change made
to one (a description, memory, a power state).  So for that host the server writes each domain's
persistent definition and power state to its database as it observes them, and at start, before
the first relist, puts back what the fresh driver lacks or has otherwise: definitions it lacks or
holds differently are defined, domains undefined through the server are undefined again (the
driver's built-in ``test`` domain included), and each comes back in the power state it had.  The
VMs' own settings (other_config, tags, profiles...) were already kept by the store, keyed by the
domain's uuid, so they meet their domains again.

Only ``test:///default`` is kept.  A real libvirtd keeps its own domains, and a
``test:///<file>`` host is what its file says at each start (tests rewrite the file to play the
part of changes made while the server was down).
"""
from __future__ import annotations

import logging
import threading

from xenapi.backend.connection import HostConnection
from xenapi.backend.power_states import DomainState
from xenapi.errors import XenAPIError

log = logging.getLogger(__name__)

EMBEDDED_URI = "test:///default"
_TABLE = "embedded_domains"      # uuid, xml (NULL: undefined through the server), power_state


class KeptDomains:
    def __init__(self, conn: HostConnection, db, db_lock: threading.RLock):
        self.conn = conn
        self._db, self._db_lock = db, db_lock
        self._builtin: set[str] = set()          # what the fresh driver defined by itself (restore)
        with db_lock:
            db[_TABLE].create({"uuid": str, "xml": str, "power_state": str}, pk="uuid", if_not_exists=True)
            self._kept = {uuid: (xml, state) for uuid, xml, state in
                          db.conn.execute(f"SELECT uuid, xml, power_state FROM {_TABLE}")}

    def note(self, states: list[DomainState]) -> None:
        """Keep these observed domains as they are now (only what changed is written)."""
        rows = []
        for state in states:
            try:
                xml = self.conn.xml(state.uuid, inactive=True)
            except XenAPIError:          # undefined meanwhile: its forgetting comes next
                continue
            if self._kept.get(state.uuid) != (xml, state.power_state):
                rows.append((state.uuid, xml, state.power_state))
        self._write(rows)

    def note_gone(self, uuid: str) -> None:
        """A domain undefined: a fresh driver defines its built-in ones again, so those are kept
        as undefined; any other is simply no longer kept."""
        if uuid in self._builtin:
            if self._kept.get(uuid, ("",))[0] is not None:
                self._write([(uuid, None, "Halted")])
        elif uuid in self._kept:
            with self._db_lock, self._db.conn:
                self._db.conn.execute(f"DELETE FROM {_TABLE} WHERE uuid = ?", (uuid,))
            del self._kept[uuid]

    def _write(self, rows: list[tuple]) -> None:
        if not rows:
            return
        with self._db_lock, self._db.conn:
            self._db.conn.executemany(
                f"INSERT OR REPLACE INTO {_TABLE}(uuid, xml, power_state) VALUES (?, ?, ?)", rows)
        self._kept.update((uuid, (xml, state)) for uuid, xml, state in rows)

    def restore(self) -> None:
        """Put the kept domains back into the fresh driver (called before its first relist)."""
        current = {state.uuid: state for state in self.conn.list_domains()}
        self._builtin = set(current)
        restored = 0
        for uuid, (xml, wanted) in self._kept.items():
            try:
                if self._restore_one(uuid, xml, wanted, current.get(uuid)):
                    restored += 1
            except XenAPIError as e:     # one bad definition must not keep the others away
                log.warning("event=embedded-restore-failed uuid=%s error=%s params=%s", uuid, e.code, e.params)
        log.info("event=embedded-restored kept=%d changed=%d", len(self._kept), restored)

    def _restore_one(self, uuid: str, xml: str | None, wanted: str, state: DomainState | None) -> bool:
        conn = self.conn
        if xml is None:                                  # undefined through the server
            if state is None:
                return False
            if state.power_state in ("Running", "Paused"):
                conn.destroy(uuid)
            conn.undefine(uuid)
            return True
        changed = state is None or conn.xml(uuid, inactive=True) != xml
        if changed:
            conn.define(xml)
        now = state.power_state if state is not None else "Halted"
        if now == wanted:
            return changed
        if now in ("Running", "Paused"):
            conn.destroy(uuid)
        elif now == "Suspended":
            conn.discard_save(uuid)
        if wanted in ("Running", "Paused", "Suspended"):
            conn.start(uuid, paused=wanted == "Paused")
            if wanted == "Suspended":
                conn.save(uuid)
        return True


_POOLS, _VOLUMES = "embedded_pools", "embedded_volumes"


class KeptStorage:
    """The embedded default's storage pools and volumes, kept as its domains are.

    The test driver's volumes hold no data, only their definitions: those are what is kept (a
    pool's XML and whether it runs; a volume's name, capacity, format and backing file) and put
    back before the first relist, so VDIs, and the VBDs that name them, meet again after a restart.
    """

    def __init__(self, conn: HostConnection, db, db_lock: threading.RLock):
        self.conn = conn
        self._db, self._db_lock = db, db_lock
        with db_lock:
            db[_POOLS].create({"uuid": str, "xml": str, "active": int}, pk="uuid", if_not_exists=True)
            db[_VOLUMES].create({"ident": str, "pool": str, "xml": str}, pk="ident", if_not_exists=True)
            self._pools = {u: (x, bool(a)) for u, x, a in db.conn.execute(f"SELECT uuid, xml, active FROM {_POOLS}")}
            self._volumes = {i: (p, x) for i, p, x in db.conn.execute(f"SELECT ident, pool, xml FROM {_VOLUMES}")}

    def note_pools(self, pools) -> None:
        rows = [(p.uuid, p.xml, int(p.active)) for p in pools if self._pools.get(p.uuid) != (p.xml, p.active)]
        self._write(_POOLS, "uuid, xml, active", rows)
        self._pools.update((u, (x, bool(a))) for u, x, a in rows)

    def note_volumes(self, volumes) -> None:
        rows = [(v.ident, v.pool, xml) for v in volumes
                if self._volumes.get(v.ident) != (v.pool, xml := volume_xml(v))]
        self._write(_VOLUMES, "ident, pool, xml", rows)
        self._volumes.update((i, (p, x)) for i, p, x in rows)

    def note_gone(self, table: str, key: str) -> None:
        kept = self._pools if table == _POOLS else self._volumes
        if kept.pop(key, None) is not None:
            with self._db_lock, self._db.conn:
                self._db.conn.execute(f"DELETE FROM {table} WHERE {'uuid' if table == _POOLS else 'ident'} = ?", (key,))

    def pool_gone(self, uuid: str) -> None:
        self.note_gone(_POOLS, uuid)
        for ident in [i for i, (p, _) in self._volumes.items() if p == uuid]:
            self.note_gone(_VOLUMES, ident)

    def volume_gone(self, ident: str) -> None:
        self.note_gone(_VOLUMES, ident)

    def _write(self, table: str, columns: str, rows: list[tuple]) -> None:
        if rows:
            with self._db_lock, self._db.conn:
                self._db.conn.executemany(f"INSERT OR REPLACE INTO {table}({columns}) VALUES "
                                          f"({', '.join('?' * len(rows[0]))})", rows)

    def restore(self) -> None:
        """Define and start the kept pools the fresh driver lacks, then create their kept volumes."""
        present = self.conn.pool_flags()
        for uuid, (xml, active) in self._pools.items():
            try:
                if uuid not in present:
                    self.conn.define_pool(xml, build=False)
                if active and not present.get(uuid):
                    self.conn.start_pool(uuid)
            except XenAPIError as e:
                log.warning("event=embedded-pool-restore-failed uuid=%s error=%s", uuid, e.code)
        for ident, (pool, xml) in self._volumes.items():
            try:
                if ident.split("/", 1)[1] not in self.conn.volume_names(pool):
                    self.conn.create_volume(pool, xml)
            except XenAPIError as e:
                log.warning("event=embedded-volume-restore-failed volume=%s error=%s", ident, e.code)
        log.info("event=embedded-storage-restored pools=%d volumes=%d", len(self._pools), len(self._volumes))


def volume_xml(v) -> str:
    """A volume's definition from what was observed of it (the test driver keeps nothing more)."""
    from xml.sax.saxutils import escape
    backing = (f"<backingStore><path>{escape(v.backing)}</path><format type='qcow2'/></backingStore>"
               if v.backing else "")
    fmt = f"<target><format type='{escape(v.format)}'/></target>" if v.format else ""
    return f"<volume><name>{escape(v.name)}</name><capacity unit='bytes'>{v.capacity}</capacity>{fmt}{backing}</volume>"
