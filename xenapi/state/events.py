"""event.from and the legacy event.register/next: views of the store's change log.

Tokens are ``"<epoch>,<id>"``, both zero-padded like xapi's so that they compare as strings; a
token from an earlier server run (another epoch) is answered as if it were "": every object, as
an add, which is how clients re-seed their caches anyway.  event.from coalesces to one event per
object; event.next returns every change in order and reports EVENTS_LOST to a subscriber the
bounded log has left behind.

A session without the ``event.from`` (``event.next``) permission, that is a grant-only session,
sees only the objects it may read (auth/grants.py), as if no other existed.  Its view moves with
its grants: the server remembers which objects (per class) it has shown up to each token it
handed out, so an object that becomes readable (a grant is created, a tag is set) arrives as an
``add`` and one that stops being readable, or is deleted, as a ``del``.  Views are kept per
session and token, so several event.from loops on one session (each with its own token) each get
every change; the newest ``VIEWS_PER_SESSION`` tokens of a session are kept.  A token without a
view (obtained from event.inject, or one of the oldest) starts from what the session may read
now; objects deleted before it are then not reported.  The legacy event.next has one cursor per
session, hence one view per session.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from xenapi import errors as E
from xenapi.errors import XenAPIError
from xenapi.wire.values import I4

# event.next with nothing registered is an error; a registration is per session.
MAX_FROM_TIMEOUT = 3600.0
VIEWS_PER_SESSION = 16        # event.from views (one per token) kept per restricted session


@dataclass
class Registration:
    classes: set[str] = field(default_factory=set)
    cursor: int = 0


# A restricted session's view: per class, the refs it has been shown.
View = dict[str, set[str]]
FrozenView = dict[str, frozenset[str]]      # an event.from view, shared between tokens: never mutated


def parse_subscriptions(classes: list[str], known: dict[str, str]) -> tuple[set[str] | None, set[str]]:
    """(lowercase class names or None for all, 'cls/ref' object subscriptions)."""
    names: set[str] = set()
    objects: set[str] = set()
    for sub in classes:
        if not isinstance(sub, str) or not sub:
            raise XenAPIError(E.EVENT_SUBSCRIPTION_PARSE_FAILURE, str(sub))
        if sub == "*":
            return None, set()
        cls, sep, ref = sub.partition("/")
        if sep and not ref:
            raise XenAPIError(E.EVENT_SUBSCRIPTION_PARSE_FAILURE, sub)
        if cls.lower() in known:          # unknown classes are ignored, as xapi does
            (objects.add(f"{cls.lower()}/{ref}") if sep else names.add(cls.lower()))
    return names, objects


class Events:
    def __init__(self, store, registry, access, sessions, stopping: threading.Event):
        self.store, self.access, self.sessions = store, access, sessions
        self._server_stopping = stopping          # the server stopping: long polls answer at once
        self._known = {c.lower(): c for c, d in registry.classes.items() if d.events}
        self._regs: dict[str, Registration] = {}
        self._views: dict[str, View] = {}                                     # event.next's, per session
        self._from_views: dict[str, OrderedDict[int, FrozenView]] = {}        # event.from's, per session and token
        self._lock = threading.Lock()

    # -- tokens ------------------------------------------------------------------------------
    def token(self, last_id: int) -> str:
        return f"{self.store.epoch:020d},{last_id:020d}"

    def parse_token(self, token: str) -> int | None:
        """The change id a token stands for; None means 'from the beginning'."""
        if token == "":
            return None
        epoch, sep, last = token.partition(",")
        if not sep or not _ascii_digits(epoch) or not _ascii_digits(last):
            raise XenAPIError(E.EVENT_FROM_TOKEN_PARSE_FAILURE, token)
        if int(epoch) != self.store.epoch or int(last) > self.store.last_id:
            return None
        return int(last)

    # -- event.from ------------------------------------------------------------------------
    def event_from(self, ctx, classes: list[str], token: str, timeout: float) -> dict:
        names, objects = parse_subscriptions(classes, self._known)
        after = self.parse_token(token)
        deadline = time.monotonic() + max(0.0, min(float(timeout), MAX_FROM_TIMEOUT))
        restricted = "event.from" not in ctx.permissions
        while True:
            generation = self.store.generation
            if restricted:
                events, last = self._collect_restricted(ctx, names, objects, after)
            else:
                events, last = self._collect(names, objects, after)
            # the server stopping: answer with what there is.  Checked after reading the generation,
            # so a stop that comes later wakes the wait below: either way no long poll outlives it.
            if events or self._server_stopping.is_set() or time.monotonic() >= deadline:
                counts = self._restricted_counts(ctx, names) if restricted else self._counts(names)
                return {"events": events, "valid_ref_counts": counts, "token": self.token(last)}
            after = last
            self.store.wait(generation, deadline - time.monotonic())
            if ctx.session_ref and not self.sessions.is_live(ctx.session_ref):
                raise XenAPIError(E.SESSION_INVALID, ctx.session_ref)

    def _touched(self, names, after: int) -> tuple[list[tuple[str, str, str]], int]:
        """(cls, ref, op) of every object changed since ``after``, coalesced, and the last id."""
        changes = self.store.changes_after(after)
        if changes is None:       # older than the log: fall back to per-object change ids
            return self.store.touched_after(after, names)
        return _coalesce(changes, after), changes[-1].id if changes else after

    def _collect(self, names, objects, after: int | None) -> tuple[list[dict], int]:
        if after is None:
            return self._everything(names, objects)
        touched, last = self._touched(names, after)
        events = []
        for cls, ref, op in touched:
            if not _wanted(cls, ref, names, objects):
                continue
            rec = self.store.find(cls, ref)
            if op != "del" and rec is None:
                continue          # added and deleted since the token: nothing to tell
            events.append(self._event(cls, ref, op, rec if op != "del" else None, last))
        return events, last

    def _everything(self, names, objects) -> tuple[list[dict], int]:
        last = self.store.last_id
        events = []
        for lower, cls in self._known.items():
            for ref, rec in self.store.records(cls).items():
                if _wanted(cls, ref, names, objects):
                    events.append(self._event(cls, ref, "add", rec, last))
        return events, last

    @staticmethod
    def _event(cls: str, ref: str, op: str, snapshot: dict | None, event_id: int) -> dict:
        ev = {"id": str(event_id), "timestamp": "0.0", "class": cls.lower(), "operation": op, "ref": ref}
        if snapshot is not None:
            ev["snapshot"] = snapshot
        return ev

    def _counts(self, names) -> dict:
        return {lower: I4(self.store.count(cls)) for lower, cls in self._known.items()
                if names is None or lower in names}

    # -- what a restricted (grant-only) session sees ----------------------------------------
    def _collect_restricted(self, ctx, names, objects, after: int | None) -> tuple[list[dict], int]:
        """Events that move the session's view to what it may read now: add what became
        readable, del what stopped being readable, mod what changed and stays readable."""
        if after is None:
            touched, last = [], self.store.last_id
        else:
            touched, last = self._touched(names, after)
        ops = {(cls, ref): op for cls, ref, op in touched}
        view = {} if after is None else self._view_at(ctx.session_ref, after)
        shown: FrozenView = {}
        events = []
        for lower, cls in self._known.items():
            if names is not None and lower not in names and not any(o.startswith(lower + "/") for o in objects):
                continue
            readable = {ref for ref in self.access.readable(ctx, cls) if _wanted(cls, ref, names, objects)}
            if after is None:
                old = set()
            elif cls in view:
                old = {ref for ref in view[cls] if _wanted(cls, ref, names, objects)}
            else:                 # no view yet: take what is readable now, minus what was born since
                old = {ref for ref in readable if ops.get((cls, ref)) != "add"}
            for ref in sorted(readable - old):
                self._add_event(events, cls, ref, "add", last)
            for ref in sorted(readable & old):
                if (cls, ref) in ops:
                    self._add_event(events, cls, ref, "mod", last)
            events += [self._event(cls, ref, "del", None, last) for ref in sorted(old - readable)]
            kept = {ref for ref in view.get(cls, ()) if not _wanted(cls, ref, names, objects)}
            shown[cls] = frozenset(kept | readable)
        self._keep_view(ctx.session_ref, last, view, shown)
        return events, last

    def _view_at(self, session_ref: str, token_id: int) -> FrozenView:
        with self._lock:
            return self._from_views.get(session_ref, {}).get(token_id, {})

    def _keep_view(self, session_ref: str, token_id: int, base: FrozenView, shown: FrozenView) -> None:
        """Remember what the token ``token_id`` has shown: ``shown`` for the classes just
        collected; for the others, what another call already stored at this token, else ``base``."""
        with self._lock:
            views = self._from_views.setdefault(session_ref, OrderedDict())
            views[token_id] = {**views.get(token_id, base), **shown}
            views.move_to_end(token_id)
            while len(views) > VIEWS_PER_SESSION:
                views.popitem(last=False)

    def _add_event(self, events: list, cls: str, ref: str, op: str, last: int) -> None:
        rec = self.store.find(cls, ref)
        if rec is not None:
            events.append(self._event(cls, ref, op, rec, last))

    def _restricted_counts(self, ctx, names) -> dict:
        return {lower: I4(len(self.access.readable(ctx, cls))) for lower, cls in self._known.items()
                if names is None or lower in names}

    def _view(self, session_ref: str) -> View:
        with self._lock:
            return self._views.setdefault(session_ref, {})

    # -- legacy event.register / next ------------------------------------------------------
    def register(self, ctx, classes: list[str]) -> None:
        names, objects = parse_subscriptions(classes, self._known)
        if "event.next" not in ctx.permissions:     # restricted: start from what it may read now
            view = self._view(ctx.session_ref)
            for cls in self._known.values():
                view.setdefault(cls, set(self.access.readable(ctx, cls)))
        with self._lock:
            reg = self._regs.setdefault(ctx.session_ref, Registration(cursor=self.store.last_id))
            reg.classes |= {"*"} if names is None else names | objects

    def unregister(self, ctx, classes: list[str]) -> None:
        names, objects = parse_subscriptions(classes, self._known)
        with self._lock:
            reg = self._regs.get(ctx.session_ref)
            if reg is not None:
                reg.classes -= {"*"} if names is None else names | objects

    def next(self, ctx) -> list[dict]:
        reg = self._regs.get(ctx.session_ref)
        if reg is None:
            raise XenAPIError(E.SESSION_NOT_REGISTERED, ctx.session_ref)
        while True:
            generation = self.store.generation
            changes = self.store.changes_after(reg.cursor)
            if changes is None:
                reg.cursor = self.store.last_id
                raise XenAPIError(E.EVENTS_LOST)
            if changes:
                reg.cursor = changes[-1].id
                wanted = [c for c in changes if _registered(c.cls, c.ref, reg.classes)]
                if "event.next" not in ctx.permissions:
                    wanted = self._visible_changes(ctx, wanted)
                events = [self._next_event(c) for c in wanted]
                if events:
                    return events
            if self._server_stopping.is_set():   # as in event_from: checked after reading the generation
                return []
            self.store.wait(generation, 30.0)
            if not self.sessions.is_live(ctx.session_ref):
                raise XenAPIError(E.SESSION_INVALID, ctx.session_ref)

    def _visible_changes(self, ctx, changes) -> list:
        """For a restricted session: changes to objects it may read now, and deletions of objects
        it was shown."""
        view = self._view(ctx.session_ref)
        out = []
        for c in changes:
            shown = view.setdefault(c.cls, set())
            if c.op == "del":
                if c.ref in shown:
                    shown.discard(c.ref)
                    out.append(c)
            elif self.access.may_read(ctx, c.cls, c.ref):
                shown.add(c.ref)
                out.append(c)
        return out

    @staticmethod
    def _next_event(c) -> dict:
        ev = {"id": str(c.id), "timestamp": f"{c.time:.6f}", "class": c.cls.lower(), "operation": c.op, "ref": c.ref}
        if c.snapshot is not None:
            ev["snapshot"] = c.snapshot
        return ev

    def inject(self, ctx, cls: str, ref: str) -> str:
        canonical = self._known.get(cls.lower())
        if canonical is None:
            raise XenAPIError(E.HANDLE_INVALID, cls, ref)
        self.store.get(canonical, ref)
        touched = self.store.touch(canonical, ref)
        return self.token(touched - 1)     # as xapi: a token just before the injected event

    def forget(self, session_ref: str) -> None:
        with self._lock:
            self._regs.pop(session_ref, None)
            self._views.pop(session_ref, None)
            self._from_views.pop(session_ref, None)


def _coalesce(changes, after: int) -> list[tuple[str, str, str]]:
    """One (cls, ref, op) per object: add if it was born after the token, del if it died, else mod."""
    first: dict[tuple[str, str], str] = {}
    last: dict[tuple[str, str], str] = {}
    for c in changes:
        key = (c.cls, c.ref)
        first.setdefault(key, c.op)
        last[key] = c.op
    out = []
    for key, op in last.items():
        born_here = first[key] == "add"
        if op == "del":
            if not born_here:
                out.append((*key, "del"))
        else:
            out.append((*key, "add" if born_here else "mod"))
    return out


def _wanted(cls: str, ref: str, names, objects) -> bool:
    lower = cls.lower()
    return names is None or lower in names or f"{lower}/{ref}" in objects


def _registered(cls: str, ref: str, subs: set[str]) -> bool:
    lower = cls.lower()
    return "*" in subs or lower in subs or f"{lower}/{ref}" in subs


def _ascii_digits(text: str) -> bool:
    """0-9 only: str.isdigit also takes "²" and other digits int() refuses."""
    return text.isascii() and text.isdigit()
