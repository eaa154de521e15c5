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
