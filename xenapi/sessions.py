"""Sessions: login, the per-call check, idle expiry.

A session is a ``session`` object in the store (persisted, so sessions survive a restart) plus
an in-memory entry holding what the per-call check needs: the user and the permission set fixed
at login (as xapi: a role change takes effect at the next login).  Session refs are random
uuids and are the only secret refs of the API.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid as _uuid
from dataclasses import dataclass

from xenapi import errors as E
from xenapi.context import Context, Identity
from xenapi.errors import XenAPIError
from xenapi.wire.values import DateTime

log = logging.getLogger(__name__)

TOUCH_EVERY = 60.0     # seconds between last_active writes: a read-heavy client must not write per call


@dataclass
class Live:
    user: str
    permissions: frozenset[str]
    touched: float


class Sessions:
    def __init__(self, server, idle_timeout: float, max_per_user: int):
        self.server = server
        self.store = server.store
        self.idle_timeout = idle_timeout
        self.max_per_user = max_per_user
        self._live: dict[str, Live] = {}
        self._lock = threading.Lock()

    def restore(self) -> None:
        """After store.load(): index the sessions that survived a restart."""
        now = time.time()
        for ref, rec in self.store.records("session").items():
            self._live[ref] = Live(rec["auth_user_name"], frozenset(rec["rbac_permissions"]),
                                   rec["last_active"].seconds or now)
        self.expire_idle()

    def login(self, uname: str, password: str, originator: str, identity: Identity) -> str:
        user = self.server.users.authenticate(uname, password)
        if user is None:
            log.warning("event=login-failed user=%s via=%s addr=%s", uname, identity.via, identity.address or "-")
            raise XenAPIError(E.SESSION_AUTHENTICATION_FAILED, uname, "Authentication failure")
        return self.open(user.name, originator, identity)

    def open(self, uname: str, originator: str = "", identity: Identity | None = None) -> str:
        """A session for an already authenticated user (password checked, or a transport's key)."""
        user = self.server.users.get(uname)
        if user is None:
            raise XenAPIError(E.SESSION_AUTHORIZATION_FAILED, uname, "no such local user")
        permissions = self.server.registry.permissions_of(user.role)
        self._evict_beyond_cap(uname)
        ref = "OpaqueRef:" + str(_uuid.uuid4())
        now = DateTime.now()
        self.store.create("session", {
            "this_host": self.server.master_ref, "this_user": self.server.user_ref(uname), "last_active": now,
            "pool": False, "is_local_superuser": uname == "root", "validation_time": now,
            "auth_user_name": uname, "rbac_permissions": sorted(permissions), "originator": originator,
        }, ref=ref)
        with self._lock:
            self._live[ref] = Live(uname, permissions, now.seconds)
        log.info("event=login user=%s via=%s addr=%s originator=%s", uname, identity.via if identity else "-",
                 identity.address if identity and identity.address else "-", originator or "-")
        return ref

    def check(self, ref: object) -> Live:
        live = self._live.get(ref) if isinstance(ref, str) else None
        if live is None:
            raise XenAPIError(E.SESSION_INVALID, ref if isinstance(ref, str) else "")
        now = time.time()
        if now - live.touched > self.idle_timeout:
            self.logout(ref)
            raise XenAPIError(E.SESSION_INVALID, ref)
        if now - live.touched > TOUCH_EVERY:
            live.touched = now
            self.store.update("session", ref, {"last_active": DateTime(now)})
        return live

    def context(self, ref: object, identity: Identity) -> Context:
        live = self.check(ref)
        return Context(self.server, ref, live.user, live.permissions, identity)

    def is_live(self, ref: str) -> bool:
        return ref in self._live

    def logout(self, ref: str) -> None:
        with self._lock:
            live = self._live.pop(ref, None)
        if live is not None:
            self.store.delete("session", ref)
            self.server.events.forget(ref)
            self.store.wake()          # a blocked event.from of this session must end now

    def expire_idle(self) -> int:
        now = time.time()
        stale = [ref for ref, live in list(self._live.items()) if now - live.touched > self.idle_timeout]
        for ref in stale:
            self.logout(ref)
        return len(stale)

    def _evict_beyond_cap(self, uname: str) -> None:
        """xapi's rule: past the per-user cap, the least recently active session goes."""
        mine = sorted((live.touched, ref) for ref, live in list(self._live.items()) if live.user == uname)
        for _, ref in mine[: max(0, len(mine) - self.max_per_user + 1)]:
            log.info("event=session-evicted user=%s reason=cap", uname)
            self.logout(ref)
