"""Sessions: login (throttled), the per-call check, idle expiry, the per-user cap.

A session is a ``session`` object in the store (persisted, so sessions survive a restart) plus
an in-memory entry holding what the per-call check needs: the user and the permission set fixed
at login (as xapi: a role change takes effect at the next login).  Session refs are random
uuids and are the only secret refs of the API.

``rbac_permissions`` lists the role's permissions and, after them, what grants give
(auth/grants.py ``describe``); grants are live, so that list is rewritten whenever a grant or a
user's groups change.  Activity is tracked in memory on every call (idle expiry and the cap's
"least recently active" use it) and written to ``last_active`` at most once a minute.

Users are removed by the command line (``xenapi user del``), another process writing the same
database.  At most once a second a call looks whether another connection committed anything
(SQLite's ``PRAGMA data_version``, a counter read without touching a table); if so, the sessions
of users that no longer exist (or were removed and added again since the login) are logged out,
so the session of a deleted user is refused within about a second.  Housekeeping and start-up
look too.

Every password check (a login, ``session.change_password``, the built-in SSH server's password
authentication) goes through the throttle.  A stream whose transport authenticated its user (an
SSH key, a trusted local peer) gets a session without a password call, so its opening and its end
are written to the audit log here.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid as _uuid
from dataclasses import dataclass

from auth.grants import held
from auth.rbac import NO_ROLE, role_permissions
from auth.throttle import LoginThrottle
from auth.users import publish_user, user_ref
from xenapi import errors as E
from xenapi.context import Caller, Identity, address_host
from xenapi.errors import XenAPIError
from xenapi.state.store import ObjectLocks, delete, mod
from xenapi.wire.values import DateTime

log = logging.getLogger(__name__)

TOUCH_EVERY = 60.0     # seconds between last_active writes: a read-heavy client must not write per call
USERS_CHECK_EVERY = 1.0   # seconds between looks for users removed by another process


@dataclass
class Live:
    user: str
    permissions: frozenset[str]
    touched: float                 # last call (clock time)
    written: float = 0.0           # when last_active was last written
    born: float = 0.0              # the user's creation time: a user removed and added again is another


def source_of(identity: Identity) -> str:
    """The address a login comes from, without its port (what the throttle counts per source)."""
    return address_host(identity.address) or identity.via


class Sessions:
    def __init__(self, store, users, access, audit, registry, throttle: LoginThrottle, *, this_host: str,
                 idle_timeout: float, max_per_user: int, clock=time.time):
        self.store, self.users, self.access, self.audit, self.registry = store, users, access, audit, registry
        self.throttle = throttle
        self.this_host = this_host                # the master: every session's this_host
        self.idle_timeout = idle_timeout
        self.max_per_user = max_per_user
        self.clock = clock
        self._when_closed: list = []              # callables(session ref) after a session ends
        self._live: dict[str, Live] = {}
        self._lock = threading.Lock()
        self._opening = ObjectLocks()            # per user name: the cap's count and the new session together
        self._records = threading.Lock()         # session records made, ended and their permissions rewritten
        self._users_lock = threading.Lock()
        self._users_next = 0.0           # monotonic time of the next look for removed users
        self._users_version: int | None = None

    def restore(self) -> None:
        """After store.load(): index the sessions that survived a restart, but those of users
        removed (or removed and added again) while the server was down."""
        now = self.clock()
        users = {user.name: user.created for user in self.users.all()}
        orphans = []
        for ref, rec in self.store.records("session").items():
            uname, login_time = rec["auth_user_name"], rec["validation_time"].seconds
            if uname not in users or users[uname] > login_time:
                orphans.append(ref)
                log.info("event=session-dropped user=%s reason=user-removed", uname)
                continue
            last = rec["last_active"].seconds or now
            self._live[ref] = Live(uname, held(rec["rbac_permissions"]), last, last, users[uname])
        self.store.apply([delete("session", ref) for ref in orphans])
        self.expire_idle()

    def login(self, uname: str, password: str, originator: str, identity: Identity) -> str:
        if identity.user is not None:    # the transport (an SSH key) authenticated the user
            return self._transport_login(uname, originator, identity)
        return self.open(self.authenticate(uname, password, identity).name, originator, identity)

    def authenticate(self, uname: str, password: str, identity: Identity):
        """The user, if ``password`` is theirs and the throttle lets the check happen; else
        SESSION_AUTHENTICATION_FAILED (saying when to retry, when throttled).  While the limit's
        worth of checks for the name or address is under way, this waits its turn (auth/throttle.py)."""
        source = source_of(identity)
        refusal = self.throttle.attempt(uname, source)     # may wait its turn behind checks under way
        if refusal:
            log.warning("event=login-refused user=%s via=%s addr=%s reason=%s retry_s=%.0f", uname, identity.via,
                        identity.address or "-", "busy" if refusal.busy else "throttled", refusal.wait)
            raise XenAPIError(E.SESSION_AUTHENTICATION_FAILED, uname, refusal.text)
        user = None
        try:
            user = self.users.authenticate(uname, password)
        finally:
            self.throttle.done(uname, source, ok=user is not None)
        if user is None:
            log.warning("event=login-failed user=%s via=%s addr=%s", uname, identity.via, identity.address or "-")
            raise XenAPIError(E.SESSION_AUTHENTICATION_FAILED, uname, "Authentication failure")
        return user

    def open(self, uname: str, originator: str = "", identity: Identity | None = None) -> str:
        """A session for an already authenticated user (password checked, or a transport's key)."""
        user = self.users.get(uname)
        if user is None:
            raise XenAPIError(E.SESSION_AUTHORIZATION_FAILED, uname, "no such local user")
        permissions = role_permissions(self.registry, user.role)
        publish_user(self.store, user)        # added by the CLI while the server runs: now it has an object
        ref = "OpaqueRef:" + str(_uuid.uuid4())
        with self._opening.hold(uname):       # concurrent logins must not each find room under the cap
            self._evict_beyond_cap(uname)
            now = DateTime(self.clock())
            with self._records:               # a grant changed meanwhile: its refresh must see this session
                self.store.create("session", {
                    "this_host": self.this_host, "this_user": user_ref(uname), "last_active": now,
                    "pool": False, "is_local_superuser": uname == "root", "validation_time": now,
                    "auth_user_name": uname, "rbac_permissions": self._entries(uname, user.role, permissions),
                    "originator": originator,
                }, ref=ref)
                with self._lock:
                    self._live[ref] = Live(uname, permissions, now.seconds, now.seconds, user.created)
        log.info("event=login user=%s via=%s addr=%s originator=%s", uname, identity.via if identity else "-",
                 identity.address if identity and identity.address else "-", originator or "-")
        return ref

    def check(self, ref: object) -> Live:
        if time.monotonic() >= self._users_next:
            self.notice_removed_users()
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

    def caller(self, ref: object, identity: Identity) -> Caller:
        if ref == "" and identity.user is not None:   # "" is a stream's own session (docs/ssh.md)
            ref = getattr(identity, "session", None) or ""
        live = self.check(ref)
        return Caller(ref, live.user, live.permissions)

    def _transport_login(self, uname: str, originator: str, identity) -> str:
        """On a stream with a transport user (transport.stream.StreamIdentity): the password is
        not checked, the user name must be the transport's, and the answer is the stream's session."""
        if uname != identity.user:
            log.warning("event=login-failed user=%s via=%s addr=%s reason=not-the-transport-user", uname,
                        identity.via, identity.address or "-")
            raise XenAPIError(E.SESSION_AUTHENTICATION_FAILED, uname, "Authentication failure")
        if not self.is_live(getattr(identity, "session", None) or ""):   # none yet, or logged out
            self.open_for_transport(identity, originator)
        return identity.session

    def open_for_transport(self, identity, originator: str = "") -> str:
        """The session of a stream whose transport authenticated its user; audited with the
        method the transport names (``identity.login_method``), ok or refused."""
        audit = dict(user=identity.user, via=identity.via, address=identity.address, method=identity.login_method)
        try:
            identity.session = self.open(identity.user, originator or identity.via, identity)
        except XenAPIError as e:
            self.audit.record(**audit, outcome=e.code)
            raise
        self.audit.record(**audit, outcome="ok")
        return identity.session

    def close_for_transport(self, identity) -> None:
        """The stream ended: its session ends with it (audited, unless it had already ended)."""
        if identity.session is not None and self.logout(identity.session):
            self.audit.record(user=identity.user, via=identity.via, address=identity.address,
                              method="session.logout", outcome="ok")

    def when_closed(self, callback) -> None:
        """Call ``callback(ref)`` each time a session ends (its event registrations go)."""
        self._when_closed.append(callback)

    def is_live(self, ref: str) -> bool:
        return ref in self._live

    def logout(self, ref: str) -> bool:
        """End a session; False if it was not live."""
        with self._records:
            with self._lock:
                live = self._live.pop(ref, None)
            if live is None:
                return False
            self.store.delete("session", ref)
        for closed in self._when_closed:
            closed(ref)
        self.store.wake()              # a blocked event.from of this session must end now
        return True

    def notice_removed_users(self) -> int:
        """If another process wrote the database since the last look, log out the sessions of
        users that no longer exist.  Never waits: a look already under way, or a busy database,
        is left to the next call.  Returns the number of sessions ended."""
        if not self._users_lock.acquire(blocking=False):
            return 0
        try:
            self._users_next = time.monotonic() + USERS_CHECK_EVERY
            version = self.users.data_version()
            if version is None or version == self._users_version:
                return 0
            self._users_version = version
            users = {user.name: user.created for user in self.users.all()}
            gone = [(ref, live.user) for ref, live in list(self._live.items())
                    if users.get(live.user) != live.born]
        finally:
            self._users_lock.release()
        for ref, uname in gone:
            log.info("event=session-ended user=%s reason=user-removed", uname)
            self.logout(ref)
        return len(gone)

    def sweep(self) -> None:
        """Housekeeping: sessions of removed users, and idle ones."""
        self.notice_removed_users()
        self.expire_idle()

    def _entries(self, uname: str, role: str, permissions: frozenset[str]) -> list[str]:
        return sorted(permissions | self.access.describe(uname, role))

    def refresh_permissions(self) -> None:
        """A grant or a user's groups changed: rewrite rbac_permissions of the sessions it alters.
        Grants are read and sessions written in one step, with no session made or ended meanwhile,
        so a refresh that read older grants never writes last and never writes an ended session."""
        with self._records:
            entries: dict[tuple, list[str]] = {}
            ops = []
            for ref, live in list(self._live.items()):
                key = (live.user, live.permissions)
                if key not in entries:
                    user = self.users.get(live.user)
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
