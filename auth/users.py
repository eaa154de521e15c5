"""Local users: a name, one of xapi's roles, a scrypt password hash.  Kept in SQLite."""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

import sqlite_utils

from auth.passwords import hash_password, verify_password
from xenapi.model.roles import LADDER

_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


@dataclass(frozen=True)
class User:
    name: str
    role: str
    fullname: str
    created: float


class UserError(ValueError):
    pass


class Users:
    def __init__(self, db: sqlite_utils.Database, lock: threading.RLock):
        self._db = db
        self._lock = lock           # the connection's lock: shared with the store
        db["users"].create({"name": str, "role": str, "password": str, "fullname": str, "created": float},
                           pk="name", if_not_exists=True)

    def add(self, name: str, role: str, password: str, fullname: str = "") -> User:
        if not name or set(name) - _NAME_OK or len(name) > 64:
            raise UserError(f"invalid user name {name!r}: use letters, digits and . _ - @ (at most 64)")
        if role not in LADDER:
            raise UserError(f"unknown role {role!r}; roles are: {', '.join(LADDER)}")
        if not password:
            raise UserError("the password must not be empty")
        hashed = hash_password(password)       # slow on purpose: outside the lock
        with self._lock:
            if self.get(name):
                raise UserError(f"user {name!r} already exists")
            row = {"name": name, "role": role, "password": hashed, "fullname": fullname, "created": time.time()}
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

    def get(self, name: str) -> User | None:
        with self._lock:
            rows = list(self._db.query("SELECT name, role, fullname, created FROM users WHERE name = ?", [name]))
        return User(**rows[0]) if rows else None

    def all(self) -> list[User]:
        with self._lock:
            return [User(**r) for r in self._db.query("SELECT name, role, fullname, created FROM users ORDER BY name")]

    def authenticate(self, name: str, password: str) -> User | None:
        with self._lock:
            rows = list(self._db.query("SELECT password FROM users WHERE name = ?", [name]))
        if not rows:
            verify_password(password, _DUMMY)    # same cost whether or not the user exists
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


_DUMMY = hash_password("not a real password")
