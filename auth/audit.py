"""The audit log: one row per state-changing call, kept in SQLite across restarts.

A row says who (the session's user, or the name a login tried), through which transport and from
which address, what (the method as called, ``Async.`` included), on which objects (the call's ref
parameters, and the ref a constructor or clone returned, with their uuids taken when the call was
made, so a destroyed object still has its uuid here), and the outcome (``ok`` or the error code).
Reads are not written (auth/rbac.py says which messages read); logins are, failed ones included,
and so are calls RBAC refused.  An Async call is written when its task ends, with the task's ref.
A stream whose transport authenticated its user opens and ends a session without any call: that
is written as ``session.login_with_key`` (an SSH key), ``session.login_with_password`` (the
built-in SSH server's password check, failures too) or ``session.local_login`` (``xenapi stdio
--user`` on the server's machine), and ``session.logout`` when the stream ends.

Changes made from the command line (``xenapi user add|del``, ``xenapi user key add|del``) are
written too, with via ``cli``, the Unix account that ran the command as the user and the command
as the method (:func:`local_account`).

Retention is bounded: beyond ``keep`` rows the oldest go.  Rows have their own table, outside the
object store, so the log raises no events and costs readers nothing; pool-admins read it through
``audit.get_records`` / ``audit.get_since`` (classes/audit.py).
"""
from __future__ import annotations

import json
import logging
import os
import pwd
import threading
import time
from collections.abc import Sequence

from xenapi.wire.values import DateTime

log = logging.getLogger(__name__)

PRUNE_EVERY = 256         # rows written between two retention passes
MAX_ANSWER = 10_000       # rows one API call returns at most

_SCHEMA = """CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, user TEXT NOT NULL, via TEXT NOT NULL,
    address TEXT NOT NULL, method TEXT NOT NULL, objects TEXT NOT NULL, uuids TEXT NOT NULL,
    outcome TEXT NOT NULL, task TEXT NOT NULL)"""


class AuditLog:
    def __init__(self, db, lock: threading.RLock, keep: int = 100_000, clock=time.time):
        self._conn = db.conn
        self._lock = lock                 # the connection's lock, shared with the store
        self.keep = keep
        self.clock = clock
        self._since_prune = 0
        with lock, self._conn:
            self._conn.execute(_SCHEMA)

    def record(self, *, user: str, via: str, address: str, method: str, outcome: str,
               objects: Sequence[str] = (), uuids: Sequence[str] = (), task: str = "") -> None:
        if self.keep <= 0:
            return
        row = (self.clock(), user, via, address, method, json.dumps(list(objects)), json.dumps(list(uuids)),
               outcome, task)
        try:
            with self._lock, self._conn:
                cursor = self._conn.execute(
                    "INSERT INTO audit(time, user, via, address, method, objects, uuids, outcome, task) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                self._since_prune += 1
                if self._since_prune >= min(PRUNE_EVERY, self.keep):      # so rows stay under 2 * keep
                    self._since_prune = 0
                    self._prune(cursor.lastrowid)
        except Exception:                 # the call already happened: never fail it for its audit row
            log.exception("event=audit-write-failed user=%s method=%s outcome=%s", user, method, outcome)

    def prune(self) -> None:
        with self._lock, self._conn:
            (last,) = self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM audit").fetchone()
            self._prune(last)

    def _prune(self, last_id: int) -> None:
        """Keep the newest ``keep`` rows (the caller holds the lock, in a transaction)."""
        self._conn.execute("DELETE FROM audit WHERE id <= ?", (last_id - self.keep,))

    def after(self, after_id: int, limit: int) -> list[dict]:
        """Rows with id > after_id, oldest first, at most ``limit`` (and MAX_ANSWER)."""
        return self._query("id > ?", after_id, limit)

    def since(self, seconds: float, limit: int = MAX_ANSWER) -> list[dict]:
        """Rows written at or after ``seconds`` (epoch), oldest first."""
        return self._query("time >= ?", seconds, limit)

    def _query(self, where: str, value, limit: int) -> list[dict]:
        limit = max(0, min(int(limit), MAX_ANSWER))
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, time, user, via, address, method, objects, uuids, outcome, task FROM audit "
                f"WHERE {where} ORDER BY id LIMIT ?", (value, limit)).fetchall()
        return [{"id": r[0], "timestamp": DateTime(r[1]), "user": r[2], "via": r[3], "address": r[4],
                 "method": r[5], "objects": json.loads(r[6]), "uuids": json.loads(r[7]), "outcome": r[8],
                 "task": r[9]} for r in rows]


def local_account() -> str:
    """The Unix account running this process, as the audit log names a command-line change's author."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:                      # a uid without a passwd entry
        return f"uid:{os.getuid()}"
