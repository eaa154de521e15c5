"""Grants: per-object authorisation on top of xapi's six roles.

A ``grant`` object (classes/grant.py) gives a subject (a user name, or ``group:NAME`` for every
user with that group) some operations on some objects of one class:

* ``operations``: message names of the class (``start``, ``VM.clean_shutdown``), shell patterns
  (``get_*``, ``*shutdown``), ``read`` (every read message of one object: getters, get_record,
  ...; see auth/rbac.py) or ``*`` (every message that acts on one object of the class).
* the objects: ``target`` (one object's ref or uuid) or ``where`` (xapi's where-expression over
  the class's records, e.g. ``"web-server" in field "tags" or "web-server" in field "profiles"``),
  evaluated live: an object joins or leaves as its fields change.

Rules (checked by the dispatcher only when the session's role lacks the call's permission, so a
pool-admin's path never comes here):

* A grant lets its subject call its operations on the objects it selects, and read those objects
  (you cannot operate what you cannot see).  Reading an object also reads its dependents: a VM's
  VM_metrics, VM_guest_metrics and consoles, a host's host_metrics and host_cpus.
* Listings (get_all, get_all_records[_where], get_by_name_label, get_by_uuid), event.from and
  event.next answer a grant-only session with the objects it may read, as if no other existed
  (get_by_uuid of another object is UUID_INVALID, as for an unknown uuid).
* Records keep their refs as they are (a VM's resident_on names its host); dereferencing a ref the
  session may not read is RBAC_PERMISSION_DENIED, exactly as for an object that does not exist: in
  xapi the permission check comes before the ref check, so denial never reveals existence.
* Every session may read its own session and user objects and its own tasks (those it started),
  and cancel or destroy those tasks.
* Grants cannot name users, roles, grants, sessions or tasks: that would give away authorisation.
* A protected map key (``other_config`` ``pci``: pool-admin only) is not covered by a grant of
  ``add_to_other_config``: grants never reach beyond what the message itself requires.

Efficiency: each user's grants are compiled once into a :class:`Scope` (the selected refs per
grant, the readable refs per class).  A scope is kept current from the store's change log: a
change to a grant or a user rebuilds it, a change to an object of a granted class re-evaluates just
that object.  Scopes are per user, so a user's many sessions share one.
"""
from __future__ import annotations

import fnmatch
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from auth.rbac import NO_ROLE, Nature, denied, natures
from auth.users import user_ref, valid_name
from xenapi import errors as E
from xenapi.errors import XenAPIError
from xenapi.model import types as T
from xenapi.state.where import WhereFieldError, WhereSyntaxError, compile_where

# Classes whose objects no grant may name.
UNGRANTABLE = frozenset({"user", "role", "grant", "session", "task"})
# Reading an object reads these fields' objects too (its own metrics and consoles).
DEPENDENTS = {"VM": ("metrics", "guest_metrics", "consoles"), "host": ("metrics", "host_CPUs")}
# Own objects: what a session may do to its own session, user and tasks.
OWN_WRITES = {"task": frozenset({"destroy", "cancel"})}
# The event messages a grant-only session may call; their answers are filtered (xenapi/state/events.py).
FILTERED_EVENTS = frozenset({"event.from", "event.next"})
GROUP = "group:"


@dataclass
class Rule:
    """One grant, compiled for evaluation."""
    ref: str
    cls: str
    messages: frozenset[str]                 # wire names it allows on the objects it selects
    target: str = ""
    match: Callable | None = None
    selected: set[str] = field(default_factory=set)

    def selects(self, ref: str, rec: dict | None) -> bool:
        if rec is None:
            return False
        if self.target:
            return ref == self.target
        try:
            return bool(self.match(rec, ref))
        except WhereFieldError:
            return False


@dataclass
class Scope:
    """What one user's grants give: kept current by :meth:`Access.scope`."""
    user: str
    rules: list[Rule]
    last_id: int
    by_message: dict[str, list[Rule]] = field(default_factory=dict)
    readable: dict[str, frozenset[str]] = field(default_factory=dict)

    def allows(self, msg, nature: Nature, ref: str) -> bool:
        for rule in self.by_message.get(msg.wire_name, ()):
            if ref in rule.selected:
                return True
        return nature.read and ref in self.readable.get(msg.cls, ())


class Access:
    def __init__(self, store, registry):
        self.store = store
        self.registry = registry
        self.natures = natures(self.registry)
        self._scopes: dict[str, Scope] = {}
        self._lock = threading.Lock()
        self._events = {c.lower(): c for c, d in self.registry.classes.items() if d.events}
        self._grantable: dict[str, list[str]] = defaultdict(list)
        for name, m in self.registry.messages.items():
            if self.natures[name].target is not None:
                self._grantable[m.cls].append(m.name)

    # -- the dispatcher's questions ----------------------------------------------------------
    def authorize(self, ctx, msg, args: list, permission: str, roles: tuple[str, ...]) -> bool:
        """The session's role lacks ``permission``: may it still make this call?  Raises
        RBAC_PERMISSION_DENIED if not; returns True when the answer must be filtered to the objects
        the session may read (a listing), False when the call runs as it is."""
        nature = self.natures[msg.wire_name]
        if nature.listing:
            return True
        if msg.wire_name in FILTERED_EVENTS:
            return False
        if msg.wire_name == "event.inject":
            cls = self._events.get(args[0].lower())
            if cls is not None and self.may_read(ctx, cls, args[1]):
                return False
        elif nature.target is not None and len(roles) >= len(msg.roles):
            ref = args[nature.target]
            if self._owns(ctx, msg.cls, ref) and (nature.read or msg.name in OWN_WRITES.get(msg.cls, ())):
                return False
            if self.scope(ctx.user).allows(msg, nature, ref):
                return False
        raise denied(permission, roles)

    def filter(self, ctx, msg, args: list, result):
        """A listing's answer, cut down to the objects the session may read."""
        readable = self.readable(ctx, msg.cls)
        if msg.name == "get_by_uuid":
            if result in readable:
                return result
            raise XenAPIError(E.UUID_INVALID, msg.cls, args[0])
        if isinstance(result, dict):
            return {ref: rec for ref, rec in result.items() if ref in readable}
        return [ref for ref in result if ref in readable]

    def may_read(self, ctx, cls: str, ref: str) -> bool:
        return self._owns(ctx, cls, ref) or ref in self.scope(ctx.user).readable.get(cls, ())

    def readable(self, ctx, cls: str) -> frozenset[str] | set[str]:
        """Every object of ``cls`` the session may read: its grants' and its own."""
        granted = self.scope(ctx.user).readable.get(cls, frozenset())
        own = self._own_refs(ctx, cls)
        return granted | own if own else granted

    # -- own objects -------------------------------------------------------------------------
    def _owns(self, ctx, cls: str, ref: str) -> bool:
        if cls == "session":
            return ref == ctx.session_ref
        if cls == "user":
            return ref == user_ref(ctx.user)
        if cls == "task":
            rec = self.store.find("task", ref)
            return rec is not None and rec["other_config"].get("owner") == ctx.user
        return False

    def _own_refs(self, ctx, cls: str) -> set[str]:
        if cls == "task":
            return {ref for ref, rec in self.store.records("task").items() if rec["other_config"].get("owner") == ctx.user}
        if cls == "user":
            ref = user_ref(ctx.user)
            return {ref} if self.store.exists("user", ref) else set()
        return set()

    # -- scopes ------------------------------------------------------------------------------
    def scope(self, user: str) -> Scope:
        """The user's compiled grants, brought up to date with the change log."""
        with self._lock:
            scope = self._scopes.get(user)
            last = self.store.last_id
            if scope is not None and scope.last_id == last:
                return scope
            changes = None if scope is None else self.store.changes_after(scope.last_id)
            if changes is None or any(c.cls in ("grant", "user") for c in changes):
                scope = self._build(user)
                self._scopes[user] = scope
                return scope
            classes = {rule.cls for rule in scope.rules}
            touched = {(c.cls, c.ref) for c in changes if c.cls in classes}
            for cls, ref in touched:
                rec = self.store.find(cls, ref)
                for rule in scope.rules:
                    if rule.cls == cls:
                        (rule.selected.add if rule.selects(ref, rec) else rule.selected.discard)(ref)
            if touched:
                scope.readable = self._readable(scope.rules)
            scope.last_id = changes[-1].id if changes else scope.last_id
            return scope

    def _build(self, user: str) -> Scope:
        last = self.store.last_id           # before reading: later changes are replayed next time
        subjects = {user} | {GROUP + g for g in self.groups_of(user)}
        rules = []
        for ref, rec in self.store.records("grant").items():
            if rec["subject"] in subjects:
                rule = self._compile(ref, rec)
                objects = self.store.records(rule.cls)
                rule.selected = {r for r, o in objects.items() if rule.selects(r, o)}
                rules.append(rule)
        scope = Scope(user, rules, last)
        for rule in rules:
            for name in rule.messages:
                scope.by_message.setdefault(name, []).append(rule)
        scope.readable = self._readable(rules)
        return scope

    def _compile(self, ref: str, rec: dict) -> Rule:
        cls = rec["class"]
        messages = frozenset(self.expand(cls, rec["operations"]))
        if rec["target"]:
            return Rule(ref, cls, messages, target=rec["target"])
        return Rule(ref, cls, messages, match=compile_where(rec["where"]))

    def _readable(self, rules: list[Rule]) -> dict[str, frozenset[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for rule in rules:
            out[rule.cls] |= rule.selected
        for parent, names in DEPENDENTS.items():
            decl = self.registry.classes.get(parent)
            for ref in list(out.get(parent, ())):
                rec = self.store.find(parent, ref)
                if rec is None:
                    continue
                for name in names:
                    value = rec[name]
                    child = T.refs_in(decl.field(name).type)
                    out[child] |= set(value) if isinstance(value, list) else {value}
        return {cls: frozenset(refs - {T.NULL_REF}) for cls, refs in out.items()}

    def groups_of(self, user: str) -> list[str]:
        rec = self.store.find("user", user_ref(user))
        return rec["groups"] if rec is not None else []

    # -- what grants may say -----------------------------------------------------------------
    def expand(self, cls: str, operations: list[str]) -> set[str]:
        """The wire names an operations list stands for, among the messages of ``cls`` that act on
        one of its objects (what a grant may give)."""
        out = set()
        for op in operations:
            for name in self._grantable.get(cls, ()):
                wire = f"{cls}.{name}"
                if op == "*" or op == "read" and self.natures[wire].read or fnmatch.fnmatchcase(name, op):
                    out.add(wire)
        return out

    def validate(self, values: dict) -> dict:
        """A grant's constructor fields, checked and normalised; raises a clear Xen-API error."""
        subject = values.get("subject", "")
        name = subject[len(GROUP):] if subject.startswith(GROUP) else subject
        if not valid_name(name):
            raise XenAPIError(E.INVALID_VALUE, "subject", subject)
        cls = self._class_named(values.get("class", ""))
        operations = [_strip_class(op, cls) for op in values.get("operations", [])]
        if not operations:
            raise XenAPIError(E.INVALID_VALUE, "operations", "[]")
        for op in operations:
            if not self.expand(cls, [op]):
                raise XenAPIError(E.INVALID_VALUE, "operations", op)
        target, where = values.get("target", ""), values.get("where", "")
        if bool(target) == bool(where):
            raise XenAPIError(E.INVALID_VALUE, "target", "give exactly one of target (a ref or uuid) and where")
        if target:
            target = self._object(cls, target)
        else:
            self._check_where(cls, where)
        return {**values, "subject": subject, "class": cls, "operations": operations, "target": target, "where": where}

    def _class_named(self, name: str) -> str:
        for cls, decl in self.registry.classes.items():
            if cls.lower() == name.lower() and decl.stored and decl.listable and cls not in UNGRANTABLE:
                return cls
        raise XenAPIError(E.INVALID_VALUE, "class", name)

    def _object(self, cls: str, target: str) -> str:
        if target.startswith(T.REF_PREFIX):
            self.store.get(cls, target)                  # HANDLE_INVALID if absent
            return target
        return self.store.by_uuid(cls, target)           # UUID_INVALID if absent

    def _check_where(self, cls: str, where: str) -> None:
        try:
            match = compile_where(where)
        except WhereSyntaxError as e:
            raise XenAPIError(E.INVALID_VALUE, *e.xapi_params) from None
        known = {f.name for f in self.registry.classes[cls].fields} | {"_ref"}
        for name in match.fields:
            if name not in known and name.replace("__", "_") not in known:
                raise XenAPIError(E.INVALID_VALUE, "where", f"{cls} has no field {name!r}")

    # -- how sessions show it ----------------------------------------------------------------
    def describe(self, user: str, role: str) -> set[str]:
        """Entries for session.rbac_permissions beyond the role's plain permissions:
        ``<perm>/readable`` (allowed, answers cut to readable objects), ``<perm>/own`` (on the
        session's own objects) and ``<class>.<operation>/grant:<ref or where:expr>`` per grant."""
        out = set()
        if role == NO_ROLE:
            listable = [c for c, d in self.registry.classes.items() if d.stored and d.listable]
            out |= {f"{m.permission}/readable" for m in self.registry.messages.values()
                    if m.cls in listable and self.natures[m.wire_name].listing}
            out |= {f"{name}/readable" for name in (*FILTERED_EVENTS, "event.inject")}
            out |= {f"{cls}.get_*/own" for cls in ("session", "user", "task")}
            out |= {f"task.{name}/own" for name in OWN_WRITES["task"]}
        for rule in self.scope(user).rules:
            rec = self.store.find("grant", rule.ref)
            selector = rule.target or "where:" + rule.match.expr
            for op in {"read", *rec["operations"]}:
                out.add(f"{rule.cls.lower()}.{op.lower()}/grant:{selector}")
        return out


def held(entries: list[str]) -> frozenset[str]:
    """The plain permissions among session.rbac_permissions entries (what the RBAC check tests)."""
    return frozenset(p for p in entries if "/grant:" not in p and not p.endswith(("/readable", "/own")))


def _strip_class(op: str, cls: str) -> str:
    prefix, dot, name = op.partition(".")
    return name if dot and prefix.lower() == cls.lower() else op

