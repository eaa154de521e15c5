"""Sessions: login (throttled), the per-call check, idle expiry, the per-user cap.

A session is a ``session`` object in the store (persisted, so sessions survive a restart) plus
an in-memory entry holding what the per-call check needs: the user and the permission set fixed
at login (as xapi: a role change takes effect at the next login).  Session refs are random
uuids and are the only secret refs of the API.

``rbac_permissions`` lists the role's permissions and, after them, what grants give
(auth/grants.py ``describe``); grants are live, so that list is rewritten whenever a grant or a
user's groups change.  Activity is tracked in memory on every call (idle expiry and the cap's
"least recently active" use it) and written to ``last_active`` at most once a minute.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid as _uuid
from dataclasses import dataclass

from auth.grants import held
from auth.rbac import NO_ROLE, role_permissions
from auth.throttle import LoginThrottle, retry_text
from xenapi import errors as E
from xenapi.context import Context, Identity
from xenapi.errors import XenAPIError
from xenapi.store import mod
from xenapi.wire.values import DateTime

log = logging.getLogger(__name__)

TOUCH_EVERY = 60.0     # seconds between last_active writes: a read-heavy client must not write per call


@dataclass
class Live:
    user: str
    permissions: frozenset[str]
    touched: float                 # last call (clock time)
    written: float = 0.0           # when last_active was last written


def source_of(identity: Identity) -> str:
    """The address a login comes from, without its port (what the throttle counts per source)."""
    host, sep, port = identity.address.rpartition(":")
    return (host if sep and port.isdigit() else identity.address) or identity.via

class Sessions:
    def __init__(self, server, idle_timeout: float, max_per_user: int, clock=time.time):
        self.server = server
        self.store = server.store
        self.idle_timeout = idle_timeout
        self.max_per_user = max_per_user
        self.clock = clock
        config = server.config
        self.throttle = LoginThrottle(config.login_failures_per_user, config.login_failures_per_source,
                                      config.login_failure_window, config.login_lockout)
        self._live: dict[str, Live] = {}
        self._lock = threading.Lock()

    def restore(self) -> None:
        """After store.load(): index the sessions that survived a restart."""
        now = self.clock()
        for ref, rec in self.store.records("session").items():
            last = rec["last_active"].seconds or now
            self._live[ref] = Live(rec["auth_user_name"], held(rec["rbac_permissions"]), last, last)
        self.expire_idle()

    def login(self, uname: str, password: str, originator: str, identity: Identity) -> str:
        if identity.user is not None:    # the transport (an SSH key) authenticated the user
            return self._transport_login(uname, originator, identity)
        source = source_of(identity)
        wait = self.throttle.attempt(uname, source)
        if wait:
            log.warning("event=login-refused user=%s via=%s addr=%s reason=throttled retry_s=%.0f", uname,
                        identity.via, identity.address or "-", wait)
            raise XenAPIError(E.SESSION_AUTHENTICATION_FAILED, uname, retry_text(wait))
        user = None
        try:
            user = self.server.users.authenticate(uname, password)
        finally:
            self.throttle.done(uname, source, ok=user is not None)
        if user is None:
            log.warning("event=login-failed user=%s via=%s addr=%s", uname, identity.via, identity.address or "-")
            raise XenAPIError(E.SESSION_AUTHENTICATION_FAILED, uname, "Authentication failure")
        return self.open(user.name, originator, identity)

    def open(self, uname: str, originator: str = "", identity: Identity | None = None) -> str:
        """A session for an already authenticated user (password checked, or a transport's key)."""
        user = self.server.users.get(uname)
        if user is None:
            raise XenAPIError(E.SESSION_AUTHORIZATION_FAILED, uname, "no such local user")
        permissions = role_permissions(self.server.registry, user.role)
        self.server.publish_user(user)        # added by the CLI while the server runs: now it has an object
        self._evict_beyond_cap(uname)
        ref = "OpaqueRef:" + str(_uuid.uuid4())
        now = DateTime(self.clock())
        self.store.create("session", {
            "this_host": self.server.master_ref, "this_user": self.server.user_ref(uname), "last_active": now,
            "pool": False, "is_local_superuser": uname == "root", "validation_time": now,
            "auth_user_name": uname, "rbac_permissions": self._entries(uname, user.role, permissions),
            "originator": originator,
        }, ref=ref)
        with self._lock:
            self._live[ref] = Live(uname, permissions, now.seconds, now.seconds)
        log.info("event=login user=%s via=%s addr=%s originator=%s", uname, identity.via if identity else "-",
                 identity.address if identity and identity.address else "-", originator or "-")
        return ref

    def check(self, ref: object) -> Live:
        live = self._live.get(ref) if isinstance(ref, str) else None
        if live is None:
            raise XenAPIError(E.SESSION_INVALID, ref if isinstance(ref, str) else "")
        now = self.clock()
        if now - live.touched > self.idle_timeout:
            self.logout(ref)
            raise XenAPIError(E.SESSION_INVALID, ref)
        live.touched = now
        if now - live.written > TOUCH_EVERY:
            live.written = now
            self.store.update("session", ref, {"last_active": DateTime(now)})
        return live

    def context(self, ref: object, identity: Identity) -> Context:
        if ref == "" and identity.user is not None:   # "" is a stream's own session (docs/ssh.md)
            ref = getattr(identity, "session", None) or ""
        live = self.check(ref)
        return Context(self.server, ref, live.user, live.permissions, identity)

    def _transport_login(self, uname: str, originator: str, identity) -> str:
        """On a stream with a transport user (transport.stream.StreamIdentity): the password is
        not checked, the user name must be the transport's, and the answer is the stream's session."""
        if uname != identity.user:
            log.warning("event=login-failed user=%s via=%s addr=%s reason=not-the-transport-user", uname,
                        identity.via, identity.address or "-")
            raise XenAPIError(E.SESSION_AUTHENTICATION_FAILED, uname, "Authentication failure")
        if not self.is_live(getattr(identity, "session", None) or ""):   # none yet, or logged out
            identity.session = self.open(uname, originator or identity.via, identity)
        return identity.session

    def is_live(self, ref: str) -> bool:
        return ref in self._live

    def logout(self, ref: str) -> None:
        with self._lock:
            live = self._live.pop(ref, None)
        if live is not None:
            self.store.delete("session", ref)
            self.server.events.forget(ref)
            self.store.wake()          # a blocked event.from of this session must end now

    def _entries(self, uname: str, role: str, permissions: frozenset[str]) -> list[str]:
        return sorted(permissions | self.server.access.describe(uname, role))

    def refresh_permissions(self) -> None:
        """A grant or a user's groups changed: rewrite rbac_permissions of the sessions it alters."""
        entries: dict[tuple, list[str]] = {}
        ops = []
        for ref, live in list(self._live.items()):
            key = (live.user, live.permissions)
            if key not in entries:
                user = self.server.users.get(live.user)
                entries[key] = self._entries(live.user, user.role if user else NO_ROLE, live.permissions)
            rec = self.store.find("session", ref)
            if rec is not None and rec["rbac_permissions"] != entries[key]:
                ops.append(mod("session", ref, {"rbac_permissions": entries[key]}))
        self.store.apply(ops)

    def expire_idle(self) -> int:
        now = self.clock()
        stale = [ref for ref, live in list(self._live.items()) if now - live.touched > self.idle_timeout]
        for ref in stale:
            self.logout(ref)
        return len(stale)

    def _evict_beyond_cap(self, uname: str) -> None:
        """xapi's rule: past the per-user cap, the least recently active session goes (xapi's
        db_gc also spares sessions with pending tasks; here tasks belong to users, not sessions)."""
        mine = sorted((live.touched, ref) for ref, live in list(self._live.items()) if live.user == uname)
        for _, ref in mine[: max(0, len(mine) - self.max_per_user + 1)]:
            log.info("event=session-evicted user=%s reason=cap", uname)
            self.logout(ref)
