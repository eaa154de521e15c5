"""Local users: a name, one of xapi's roles (or ``none``: grant-only), groups, a scrypt password
hash.  Kept in SQLite.

A grant-only user (role ``none``) holds no role's permissions: what it may do comes from grants
(auth/grants.py) naming it or one of its groups.  Groups are plain names, set by a pool-admin
through the API (``user.set_groups``); they exist only as far as users and grants name them.
"""
from __future__ import annotations

import functools
import json
import secrets
import threading
import time
from dataclasses import dataclass

import sqlite_utils

from auth.passwords import hash_password, verify_password
from auth.rbac import NO_ROLE
from xenapi.model.roles import LADDER
from xenapi.state.store import add, derived_ref, derived_uuid

ROLES = (*LADDER, NO_ROLE)
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")
_COLUMNS = "name, role, fullname, created, groups"


def valid_name(name: str) -> bool:
    """User and group names: letters, digits and . _ - @, at most 64."""
    return isinstance(name, str) and 0 < len(name) <= 64 and not set(name) - _NAME_OK


@dataclass(frozen=True)
class User:
    name: str
    role: str
    fullname: str
    created: float
    groups: tuple[str, ...] = ()

    @classmethod
    def of_row(cls, row: dict) -> "User":
        return cls(row["name"], row["role"], row["fullname"], row["created"], tuple(json.loads(row["groups"] or "[]")))


class UserError(ValueError):
    pass


class Users:
    def __init__(self, db: sqlite_utils.Database, lock: threading.RLock):
        self._db = db
        self._lock = lock           # the connection's lock: shared with the store
        with lock:
            db["users"].create({"name": str, "role": str, "password": str, "fullname": str, "created": float,
                                "groups": str}, pk="name", if_not_exists=True)
            if "groups" not in db["users"].columns_dict:          # a database from before groups
                db["users"].add_column("groups", str)

    def add(self, name: str, role: str, password: str, fullname: str = "") -> User:
        if not valid_name(name):
            raise UserError(f"invalid user name {name!r}: use letters, digits and . _ - @ (at most 64)")
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; roles are: {', '.join(ROLES)}")
        if not password:
            raise UserError("the password must not be empty")
        hashed = hash_password(password)       # slow on purpose: outside the lock
        with self._lock:
            if self.get(name):
                raise UserError(f"user {name!r} already exists")
            row = {"name": name, "role": role, "password": hashed, "fullname": fullname, "created": time.time(),
                   "groups": "[]"}
            self._db["users"].insert(row)
        return self.get(name)

    def remove(self, name: str) -> None:
        with self._lock:
            if not self.get(name):
                raise UserError(f"no user {name!r}")
            self._db["users"].delete(name)

    def set_password(self, name: str, password: str) -> None:
        if not password:
            raise UserError("the password must not be empty")
        hashed = hash_password(password)
        with self._lock:
            self._db["users"].update(name, {"password": hashed})

    def set_fullname(self, name: str, fullname: str) -> None:
        with self._lock:
            self._db["users"].update(name, {"fullname": fullname})

    def set_groups(self, name: str, groups: list[str]) -> None:
        bad = [g for g in groups if not valid_name(g)]
        if bad:
            raise UserError(f"invalid group name {bad[0]!r}: use letters, digits and . _ - @ (at most 64)")
        with self._lock:
            self._db["users"].update(name, {"groups": json.dumps(sorted(set(groups)))})

    def get(self, name: str) -> User | None:
        with self._lock:
            rows = list(self._db.query(f"SELECT {_COLUMNS} FROM users WHERE name = ?", [name]))
        return User.of_row(rows[0]) if rows else None

    def all(self) -> list[User]:
        with self._lock:
            return [User.of_row(r) for r in self._db.query(f"SELECT {_COLUMNS} FROM users ORDER BY name")]

    def data_version(self) -> int | None:
        """SQLite's ``PRAGMA data_version``: it changes when another connection (``xenapi user``
        from the command line) commits.  None when the connection is busy (never waits for it)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._db.conn.execute("PRAGMA data_version").fetchone()[0]
        finally:
            self._lock.release()

    def authenticate(self, name: str, password: str) -> User | None:
        with self._lock:
            rows = list(self._db.query("SELECT password FROM users WHERE name = ?", [name]))
        if not rows:
            verify_password(password, _dummy())  # same cost whether or not the user exists
            return None
        return self.get(name) if verify_password(password, rows[0]["password"]) else None

    def ensure_admin(self, password: str | None) -> str | None:
        """With no users at all, create root as pool-admin.  Returns the generated password, if any."""
        if self.all():
            return None
        generated = None
        if not password:
            password = generated = secrets.token_urlsafe(18)
        self.add("root", "pool-admin", password, "Local administrator")
        return generated


@functools.cache
def _dummy() -> str:
    """A hash to check unknown names against; made at the first need, not at import (start-up)."""
    return hash_password("not a real password")


# -- the user objects the API shows (class user) -----------------------------------------------------
def user_ref(name: str) -> str:
    return derived_ref("user", name)


def user_record(store, user) -> dict:
    return store.new_record("user", {"uuid": derived_uuid("user", user.name), "short_name": user.name,
                                     "fullname": user.fullname, "groups": list(user.groups)})


def publish_user(store, user) -> None:
    """The user object of a user added (by the CLI) after start, at its first login."""
    if not store.exists("user", user_ref(user.name)):
        store.apply([add("user", user_ref(user.name), user_record(store, user))])
