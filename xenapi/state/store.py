"""The object store: every object the API shows, in memory for reads, in SQLite for what survives.

Only ``apply`` writes.  Under one lock it writes SQLite (for persisted classes), replaces the
in-memory records (records are never mutated in place, so a record handed to a reader or kept in
the change log stays as it was) and appends a ``Change`` to the log.  Waiters (event.from,
event.next, task waiters) are woken after the lock is released.

A read-modify-write is atomic in one of two ways, and never by reading a record and writing back
what was read:

* ``modify(cls, ref, change)``: ``change(current record)`` gives the fields to write, and runs
  under the store's lock, inside ``apply``.  For changes the store alone holds (a key added to
  other_config, a tag removed): fast, and atomic against every other write of any kind.
* ``object_lock(cls, ref)``: one writer at a time per object, for a change that must go to libvirt
  first (writes go to libvirt, then to the store).  The writer reads, calls libvirt and applies
  under it; the store's lock is never held across libvirt.  Locks are per object and made on
  demand, so writers to different objects never wait on each other.

Refs are opaque ``OpaqueRef:<uuid>`` strings.  Objects derived from libvirt get refs derived from
their uuids, so refs stay the same across restarts without being stored.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sqlite3
import logging
import threading
import time
import uuid as _uuid
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import sqlite_utils

from xenapi import errors as E
from xenapi.errors import XenAPIError
from xenapi.model.declare import ClassDecl, Relation
from xenapi.model.types import NULL_REF
from xenapi.wire.values import DateTime, FrozenRecord

log = logging.getLogger(__name__)

_NS = _uuid.UUID("6b2d1f0e-6c1a-4c55-9a64-7a2f3f1d0c11")
_NS_BYTES = _NS.bytes


def new_uuid() -> str:
    return str(_uuid.uuid4())


def uuid5(name: str) -> str:
    """``str(uuid.uuid5(_NS, name))`` without building a UUID object (a third of the cost)."""
    digest = bytearray(hashlib.sha1(_NS_BYTES + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50          # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80          # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@functools.lru_cache(maxsize=1 << 16)     # a relist derives several per domain
def derived_ref(kind: str, key: str) -> str:
    """A stable ref for an object derived from something with its own identity (a domain uuid)."""
    return "OpaqueRef:" + uuid5(f"{kind}/{key}")


@functools.lru_cache(maxsize=1 << 16)
def derived_uuid(kind: str, key: str) -> str:
    return uuid5(f"uuid/{kind}/{key}")


class StoreClosed(RuntimeError):
    """A write after Store.close(): the server is stopping."""


@dataclass(frozen=True, slots=True)
class Change:
    id: int
    cls: str
    ref: str
    op: str                  # add | mod | del
    snapshot: dict | None    # the record after the change (None for del)
    time: float


# Operations for apply(); constructed with the helpers below.
@dataclass(frozen=True, slots=True)
class Op:
    kind: str                # add | mod | del
    cls: str
    ref: str
    fields: dict | None = None
    change: Callable[[dict], dict] | None = None   # mod: the fields to write, from the current record


class ObjectLocks:
    """A lock per key, made when first wanted and dropped when its last user leaves: keys never
    share a lock, so holders of different keys never wait on each other, and the table holds only
    the keys in use.  Re-entrant, so a hook may call another writer of the same object."""

    def __init__(self):
        self._mutex = threading.Lock()
        self._locks: dict[Any, list] = {}          # key -> [RLock, users]

    @contextmanager
    def hold(self, key) -> Iterator[None]:
        with self._mutex:
            entry = self._locks.get(key)
            if entry is None:
                entry = self._locks[key] = [threading.RLock(), 0]
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._mutex:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


class Store:
    def __init__(self, decls: dict[str, ClassDecl], path: str = ":memory:", log_size: int = 50_000,
                 relations: Iterable[Relation] = ()):
        self._decls = decls
        self._relations = tuple(relations)
        # (relation index, ref of the set's owner) -> refs whose ref field names it
        self._members: dict[tuple[int, str], set[str]] = {}
        self._kept_sets = {(r.many_cls, r.many_field) for r in self._relations}
        self._relations_of: dict[str, list[tuple[int, Relation]]] = {}    # class -> the relations it is in
        for n, rel in enumerate(self._relations):
            for cls in dict.fromkeys((rel.one_cls, rel.many_cls)):
                self._relations_of.setdefault(cls, []).append((n, rel))
        # per class: every field's empty value, and the fields whose value is a list or dict (copied per record)
        self._templates = {c: _template(d) for c, d in decls.items()}
        self._lock = threading.RLock()
        self._cond = threading.Condition(threading.Lock())
        self._objs: dict[str, dict[str, dict]] = {c: {} for c in decls}
        self._uuids: dict[str, dict[str, str]] = {c: {} for c in decls}
        self._born: dict[str, int] = {}           # ref -> id of the change that added it
        self._touched: dict[str, int] = {}        # ref -> id of its last change
        self._log: deque[Change] = deque(maxlen=log_size)
        # (id, cls, ref, id it was added at) of deletions, for tokens older than the log
        self._gone: deque[tuple[int, str, str, int]] = deque(maxlen=log_size)
        self.last_id = 0
        self.generation = 0                       # bumps on every apply, evented or not
        self.epoch = int(time.time() * 1000)      # tokens from another server run are stale
        # One connection shared by the server's threads, always used under db_lock.
        self.db_lock = threading.RLock()
        if path != ":memory:":
            _private_database(path)
        self._object_locks = ObjectLocks()
        self._db = sqlite_utils.Database(sqlite3.connect(path, check_same_thread=False))
        if path != ":memory:":
            self._db.conn.execute("PRAGMA journal_mode=WAL")
        self._db.conn.execute("PRAGMA synchronous=NORMAL")
        self._db.conn.execute("PRAGMA busy_timeout=5000")    # the CLI may write users meanwhile
        self._db["objects"].create({"ref": str, "cls": str, "data": str}, pk="ref", if_not_exists=True)
        self.db = self._db                        # for modules that own tables of their own (users, audit)
        self.closed = False

    # -- reads (never block on libvirt; lock-free where a dict lookup is atomic) -------------
    def find(self, cls: str, ref: str) -> dict | None:
        return self._objs[cls].get(ref)

    def get(self, cls: str, ref: str) -> dict:
        rec = self._objs[cls].get(ref)
        if rec is None:
            raise XenAPIError(E.HANDLE_INVALID, cls, ref)
        return rec

    def exists(self, cls: str, ref: str) -> bool:
        return ref in self._objs[cls]

    def refs(self, cls: str) -> list[str]:
        return list(self._objs[cls])

    def records(self, cls: str) -> dict[str, dict]:
        return dict(self._objs[cls])

    def by_uuid(self, cls: str, uuid: str) -> str:
        ref = self._uuids[cls].get(uuid)
        if ref is None:
            raise XenAPIError(E.UUID_INVALID, cls, uuid)
        return ref

    def find_uuid(self, cls: str, uuid: str) -> str | None:
        return self._uuids[cls].get(uuid)

    def by_name_label(self, cls: str, label: str) -> list[str]:
        return [ref for ref, rec in list(self._objs[cls].items()) if rec.get("name_label") == label]

    def count(self, cls: str) -> int:
        return len(self._objs[cls])

    # -- writes ----------------------------------------------------------------------------
    def new_record(self, cls: str, values: dict, uuid: str | None = None) -> dict:
        """A complete record: every declared field, defaults filled in, ``values`` on top."""
        template, mutable = self._templates[cls]
        rec = {**template, **{name: type(template[name])(template[name]) for name in mutable}, **values}
        if "uuid" in rec and not rec["uuid"]:
            rec["uuid"] = uuid or new_uuid()
        return rec

    def create(self, cls: str, values: dict, ref: str | None = None, uuid: str | None = None) -> str:
        ref = ref or "OpaqueRef:" + new_uuid()
        self.apply([add(cls, ref, self.new_record(cls, values, uuid))])
        return ref

    def update(self, cls: str, ref: str, fields: dict) -> None:
        self.apply([mod(cls, ref, fields)])

    def modify(self, cls: str, ref: str, change: Callable[[dict], dict]) -> int:
        """Write ``change(current record)`` (the fields to change; {} for none) atomically.
        ``change`` runs under the store's lock: quick, pure, no libvirt, no store calls; what it
        raises (a XenAPIError) leaves the record as it was.  HANDLE_INVALID if the object is gone."""
        return self.apply([modify(cls, ref, change)])

    def object_lock(self, cls: str, ref: str):
        """Held by a writer that reads an object, writes libvirt, then the store: writers of the
        same object take turns; writers of other objects never wait (see the module's doc)."""
        return self._object_locks.hold((cls, ref))

    def delete(self, cls: str, ref: str) -> None:
        self.apply([delete(cls, ref)])

    def touch(self, cls: str, ref: str) -> int:
        """A mod event with nothing changed (event.inject); returns its change id."""
        return self.apply([Op("touch", cls, ref, {})])

    def apply(self, ops: Iterable[Op]) -> int:
        """Apply a batch atomically: all of it or, on a bad ref, none of it.  Returns the last id."""
        with self._lock:
            staged = []
            seen: dict[str, dict | None] = {}         # ref -> its record after the ops staged so far
            for op in ops:
                current = seen[op.ref] if op.ref in seen else self._objs[op.cls].get(op.ref)
                if op.kind == "add":
                    new = FrozenRecord(op.fields)
                elif current is None:
                    if op.kind == "del":
                        continue                      # already gone: deleting twice is not an error
                    raise XenAPIError(E.HANDLE_INVALID, op.cls, op.ref)
                elif op.kind == "touch":
                    new = current
                elif op.kind == "mod":
                    fields = op.fields if op.change is None else op.change(current)
                    if self._kept_sets and any((op.cls, k) in self._kept_sets for k in fields):
                        raise ValueError(f"{op.cls}: a relation's set is kept by the store, not written")
                    if all(current.get(k) == v for k, v in fields.items()):
                        continue                      # no change, no event
                    new = FrozenRecord({**current, **fields})
                else:
                    new = None
                staged.append((op, current, new))
                seen[op.ref] = new
            if not staged:
                return self.last_id
            members = self._follow_relations(staged, seen) if self._relations else {}
            self._persist(staged)
            for key, refs in members.items():
                if refs:
                    self._members[key] = refs
                else:
                    self._members.pop(key, None)
            now = time.time()
            for op, current, new in staged:
                self._install(op.cls, op.ref, current, new)
                if not self._decls[op.cls].events:
                    continue
                self.last_id += 1
                kind = "add" if current is None else ("del" if new is None else "mod")
                change = Change(self.last_id, op.cls, op.ref, kind, new, now)
                self._log.append(change)
                self._touched[op.ref] = self.last_id
                if kind == "add":
                    self._born[op.ref] = self.last_id
                elif kind == "del":
                    self._gone.append((self.last_id, op.cls, op.ref, self._born.pop(op.ref, 0)))
                    self._touched.pop(op.ref, None)
            self.generation += 1
        with self._cond:
            self._cond.notify_all()
        return self.last_id

    def _follow_relations(self, staged: list, seen: dict) -> dict[tuple[int, str], set[str]]:
        """Stage the set side of every relation whose ref side the batch changes (and fill the
        set of an object the batch adds); returns the members to record once the batch is in.
        One write per set per batch, however many refs of the batch move into or out of it."""
        members: dict[tuple[int, str], set[str]] = {}

        def of(key):
            if key not in members:
                members[key] = set(self._members.get(key, ()))
            return members[key]

        touched: dict[int, list[str]] = {}           # relation number -> the sets it touches
        for op, current, new in staged:              # (the set writes staged below change no ref side)
            for n, rel in self._relations_of.get(op.cls, ()):
                if op.cls == rel.one_cls:
                    was = current.get(rel.one_field) if current is not None else None
                    now = new.get(rel.one_field) if new is not None else None
                    if was != now:
                        for target, present in ((was, False), (now, True)):
                            if target and target != NULL_REF:
                                (of((n, target)).add if present else of((n, target)).discard)(op.ref)
                                touched.setdefault(n, []).append(target)
                if op.cls == rel.many_cls and current is None and new is not None:
                    of((n, op.ref))
                    touched.setdefault(n, []).append(op.ref)
        for n in sorted(touched):
            rel = self._relations[n]
            for target in dict.fromkeys(touched[n]):
                rec = seen[target] if target in seen else self._objs[rel.many_cls].get(target)
                value = sorted(members[(n, target)])
                if rec is not None and rec.get(rel.many_field) != value:
                    new = FrozenRecord({**rec, rel.many_field: value})
                    staged.append((Op("mod", rel.many_cls, target, {rel.many_field: value}), rec, new))
                    seen[target] = new
        return members

    def _install(self, cls: str, ref: str, old: dict | None, new: dict | None) -> None:
        objs, uuids = self._objs[cls], self._uuids[cls]
        if old is not None and old.get("uuid") and (new is None or new.get("uuid") != old["uuid"]):
            uuids.pop(old["uuid"], None)
        if old is not None and old is not new:
            old.forget_wire()        # the change log may keep the old version: not its encodings too
        if new is None:
            objs.pop(ref, None)
        else:
            objs[ref] = new
            if new.get("uuid"):
                uuids[new["uuid"]] = ref

    def _persist(self, staged) -> None:
        rows, gone = [], []
        for op, _, new in staged:
            if not self._decls[op.cls].persisted:
                continue
            if new is None:
                gone.append((op.ref,))
            else:
                rows.append((op.ref, op.cls, json.dumps(new, default=_encode)))
        if rows or gone:
            with self.db_lock:
                if self.closed:              # checked under the lock close() takes
                    raise StoreClosed("the server has stopped: nothing more is written")
                with self._db.conn:
                    self._db.conn.executemany("INSERT OR REPLACE INTO objects(ref, cls, data) VALUES (?, ?, ?)", rows)
                    self._db.conn.executemany("DELETE FROM objects WHERE ref = ?", gone)

    def close(self) -> None:
        """Release the database (its files: db, wal, shm) now rather than at exit; a thread still
        finishing work (a task) then gets StoreClosed instead of a half-closed connection."""
        with self.db_lock:
            self.closed = True
            self._db.conn.close()

    def load(self) -> int:
        """Read persisted objects back at start-up (no events: nobody is listening yet)."""
        n = 0
        with self._lock, self.db_lock:
            for ref, cls, data in self._db.conn.execute("SELECT ref, cls, data FROM objects").fetchall():
                if cls not in self._decls:
                    log.warning("event=load-skip cls=%s ref=%s reason=unknown-class", cls, ref)
                    continue
                rec = self.new_record(cls, json.loads(data, object_hook=_decode))
                rec = {f.name: rec[f.name] for f in self._decls[cls].fields}   # drop fields no longer declared
                self._install(cls, ref, None, FrozenRecord(rec))
                n += 1
            self._rebuild_relations()
        return n

    def _rebuild_relations(self) -> None:
        """The relations' sets from the refs loaded (a set persisted stale is put right)."""
        self._members.clear()
        for n, rel in enumerate(self._relations):
            for ref, rec in self._objs[rel.one_cls].items():
                target = rec.get(rel.one_field)
                if target and target != NULL_REF:
                    self._members.setdefault((n, target), set()).add(ref)
            for ref, rec in list(self._objs[rel.many_cls].items()):
                value = sorted(self._members.get((n, ref), ()))
                if rec.get(rel.many_field) != value:
                    self._install(rel.many_cls, ref, rec, FrozenRecord({**rec, rel.many_field: value}))

    # -- the change log --------------------------------------------------------------------
    def changes_after(self, after: int) -> list[Change] | None:
        """Changes with id > after, oldest first; None when the log no longer reaches back."""
        with self._lock:
            if after >= self.last_id:
                return []
            if not self._log or self._log[0].id > after + 1:
                return None
            start = after + 1 - self._log[0].id
            return [self._log[i] for i in range(start, len(self._log))]

    def touched_after(self, after: int, classes: set[str] | None) -> tuple[list[tuple[str, str, str]], int]:
        """For a token older than the log: (cls, ref, op) of every object changed since, and the last id."""
        with self._lock:
            out = []
            for cls, objs in self._objs.items():
                if classes is not None and cls.lower() not in classes or not self._decls[cls].events:
                    continue
                for ref in objs:
                    if self._touched.get(ref, 0) > after:
                        out.append((cls, ref, "add" if self._born.get(ref, 0) > after else "mod"))
            for gone_id, cls, ref, born in self._gone:
                if gone_id > after >= born and (classes is None or cls.lower() in classes):
                    out.append((cls, ref, "del"))
            return out, self.last_id

    def wait(self, generation: int, timeout: float) -> int:
        """Block until the store's generation passes ``generation`` or the timeout; returns it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.generation <= generation:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        return self.generation

    def wake(self) -> None:
        """Wake every waiter (e.g. a session was logged out under a blocked event.from)."""
        with self._lock:
            self.generation += 1
        with self._cond:
            self._cond.notify_all()


# -- file modes: the database holds live session refs (bearer credentials), password hashes and
# the audit log, so it and its directory are the server's account's alone --------------------

def private_directory(path: str) -> None:
    """Make the state directory (mode 0700), or take group and other access off an existing one."""
    directory = Path(path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(directory, 0o700)


def _private_database(path: str) -> None:
    """Create the database file 0600 before SQLite opens it (SQLite gives its -wal and -shm files
    the database's mode), and tighten the files of an existing database."""
    private_directory(str(Path(path).parent))                   # 0700: the database holds credentials
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))     # an empty file is an empty database
    for name in (path, f"{path}-wal", f"{path}-shm"):
        if os.path.exists(name):
            _tighten(Path(name), 0o600)


def _tighten(target: Path, mode: int) -> None:
    was = target.stat().st_mode & 0o777
    if was & 0o077:
        try:
            target.chmod(mode)
        except PermissionError as e:     # not its owner: say so, the administrator fixes it
            log.warning("event=state-mode-loose path=%s mode=%o reason=%s", target, was, e.strerror)
            return
        log.warning("event=state-mode-tightened path=%s mode=%o->%o", target, was, mode)


def _template(decl: ClassDecl) -> tuple[dict, tuple[str, ...]]:
    empty = {f.name: f.empty() for f in decl.fields}
    return empty, tuple(name for name, value in empty.items() if isinstance(value, (list, dict)))


def add(cls: str, ref: str, record: dict) -> Op:
    return Op("add", cls, ref, record)


def mod(cls: str, ref: str, fields: dict) -> Op:
    return Op("mod", cls, ref, fields)


def modify(cls: str, ref: str, change: Callable[[dict], dict]) -> Op:
    """A mod whose fields ``change`` computes from the current record, under the store's lock."""
    return Op("mod", cls, ref, change=change)


def delete(cls: str, ref: str) -> Op:
    return Op("del", cls, ref)


def _encode(value: Any):
    if isinstance(value, DateTime):
        return {"$dt": value.seconds}
    raise TypeError(f"cannot persist {type(value).__name__}")


def _decode(obj: dict):
    if len(obj) == 1 and "$dt" in obj:
        return DateTime(obj["$dt"])
    return obj
