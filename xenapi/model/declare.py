"""The small constructors each ``classes/<name>.py`` declares its class with.

A class states its fields (wire name, type, qualifier, default) and its custom messages
(parameters with trailing defaults, roles, errors, async or not, implementation).  Everything
generic (accessors, records, arity, conversion, permissions, docs) is derived from this by
``xenapi.model.registry``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable

from xenapi.model import types as T
from xenapi.model.roles import READ_ONLY

MISSING = object()

# Field qualifiers, as xapi's IDL names them.
RO = "DynamicRO"       # runtime state: no setter, not given to constructors
CTOR = "StaticRO"      # given to the constructor, no setter afterwards
RW = "RW"              # constructor and setter


@dataclass
class Field:
    name: str
    type: T.WireType
    qualifier: str = RO
    default: Any = MISSING           # MISSING: the type's empty value; required in a constructor
    doc: str = ""
    writer_roles: tuple[str, ...] | None = None   # None: the class default
    key_roles: dict[str, tuple[str, ...]] | None = None   # map keys with their own roles ("prefix*" allowed)
    lifecycle: str = "published"     # published | deprecated | removed (still in records)
    observed: bool = False           # libvirt owns it: the reconciler overwrites it at every observation

    def empty(self) -> Any:
        return self.type.empty() if self.default is MISSING else _fresh(self.default)


def _fresh(value):
    return type(value)(value) if isinstance(value, (list, dict)) else value


@dataclass
class Param:
    type: T.WireType
    name: str
    doc: str = ""
    default: Any = MISSING
    null_ok: bool = False            # a Ref parameter that may be OpaqueRef:NULL


def param(type_: T.WireType, name: str, doc: str = "", *, default: Any = MISSING, null_ok: bool = False) -> Param:
    return Param(type_, name, doc, default, null_ok)


@dataclass
class Message:
    name: str
    doc: str
    params: list[Param]
    result: T.WireType = T.Void
    roles: tuple[str, ...] = READ_ONLY
    errors: tuple[str, ...] = ()
    is_async: bool = False
    impl: Callable[..., Any] | None = None
    session: bool = True             # takes a session_id as its first wire parameter
    power_states: frozenset[str] | None = None   # VM messages: states the operation is allowed in
    operation: str | None = None     # the allowed_operations entry it runs as, if any
    implicit: bool = False           # derived from the fields, not written by hand
    cls: str = ""                    # set when the class is registered
    hidden: bool = False             # not in system.listMethods (xapi hides get_all_records_where)
    key_roles: dict[str, tuple[str, ...]] | None = None   # map accessors: keys with roles of their own
    changes_nothing: bool = False    # a read not named get_* (checks, computations, event calls)

    def keyed(self, key: str) -> tuple[str, tuple[str, ...]]:
        """The permission and roles a call with this map key needs (xapi's ``/key:`` permissions)."""
        for pattern, roles in (self.key_roles or {}).items():
            if key == pattern or pattern.endswith("*") and key.startswith(pattern[:-1]):
                return f"{self.permission}/key:{pattern}".lower(), roles
        return self.permission, self.roles

    @property
    def reads(self) -> bool:
        """Changes nothing: xapi's naming rule (``get*``, which its audit log also uses), or declared.
        Reads are left out of the audit log and covered by a grant's ``read``."""
        return self.name.startswith("get") or self.changes_nothing

    @property
    def wire_name(self) -> str:
        return f"{self.cls}.{self.name}"

    @property
    def permission(self) -> str:
        return self.wire_name.lower()

    @property
    def required(self) -> int:
        return sum(1 for p in self.params if p.default is MISSING)


def message(name: str, doc: str, *, params=(), result=T.Void, roles=READ_ONLY, errors=(), is_async=False,
            impl=None, session=True, power_states=None, operation=None, hidden=False,
            changes_nothing=False) -> Message:
    return Message(name, doc, list(params), result, tuple(roles), tuple(errors), is_async, impl, session,
                   frozenset(power_states) if power_states else None, operation, False, "", hidden,
                   changes_nothing=changes_nothing)


@dataclass
class ClassDecl:
    name: str
    doc: str
    fields: list[Field]
    messages: list[Message] = dc_field(default_factory=list)
    writer_roles: tuple[str, ...] = READ_ONLY     # default roles for setters
    constructor: bool = False        # derive create(record) / destroy(self)
    ctor_roles: tuple[str, ...] = READ_ONLY
    ctor_required: tuple[str, ...] | None = None  # fields a create(record) must give (None: those without default)
    events: bool = True              # appears in event.from / event.next
    persisted: bool = False          # whole records kept in SQLite across restarts
    stored: bool = True              # has objects in the store (event does not: no implicit messages)
    listable: bool = True            # get_all & co. exist (not for sessions: their refs are secrets)
    hooks: dict[str, Callable] = dc_field(default_factory=dict)   # set_<field>/create/destroy side effects

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)


def declare_class(name, doc, fields, messages=(), **kw) -> ClassDecl:
    return ClassDecl(name, doc, list(fields), list(messages), **kw)


@dataclass(frozen=True)
class Relation:
    """One of xapi's relations: a Ref field on one class (``VM.resident_on``) and the set of refs
    on the other that follows from it (``host.resident_VMs``).  Only the ref is ever written; the
    store keeps the set (and emits its mod events) from it."""
    one_cls: str
    one_field: str
    many_cls: str
    many_field: str

    def __str__(self) -> str:
        return f"{self.one_cls}.{self.one_field} <-> {self.many_cls}.{self.many_field}"


def relations(spec: str) -> list[Relation]:
    """Pairs ``Class.ref_field  Other.set_field``, one per line."""
    out = []
    for line in spec.strip().splitlines():
        one, many = line.split()
        out.append(Relation(*one.split("."), *many.split(".")))
    return out


# --- the compact field notation -------------------------------------------------------------
#
#   name[qualifier]:type      qualifier: none = RO (runtime), ^ = StaticRO (constructor), * = RW
#   prefix ! = deprecated, ~ = removed but still present in records (as xapi's records keep it)
#   types: s i b f dt s2s, @Class (ref), T[] (set), {K:V} (map), or a declared enum name
#
# e.g. ``fields("uuid:s name_label*:s power_state^:vm_power_state VBDs:@VBD[] other_config*:s2s", ENUMS)``
# This is the notation shared/reference uses, so a class's field list reads like xapi's datamodel.

_SCALARS = {"s": T.String, "i": T.Int, "b": T.Bool, "f": T.Float, "dt": T.Timestamp, "s2s": T.S2S}
_FIELD = re.compile(r"^([!~?]?)([A-Za-z0-9_]+)([*^]?):(.+)$")


def parse_type(text: str, enums: dict[str, T.Enum]) -> T.WireType:
    if text.endswith("[]"):
        return T.Set(parse_type(text[:-2], enums))
    if text.startswith("{") and text.endswith("}"):
        key, _, value = text[1:-1].partition(":")
        return T.Map(parse_type(key, enums), parse_type(value, enums))
    if text.startswith("@"):
        return T.Ref(text[1:])
    if text in _SCALARS:
        return _SCALARS[text]
    if text in enums:
        return enums[text]
    raise ValueError(f"unknown type {text!r}")


def fields(spec: str, enums: dict[str, T.Enum], defaults: dict[str, Any] | None = None,
           docs: dict[str, str] | None = None, writers: dict[str, tuple[str, ...]] | None = None,
           key_roles: dict[str, dict[str, tuple[str, ...]]] | None = None, observed: str = "") -> list[Field]:
    """``observed``: the names of the fields libvirt owns (see ``Field.observed``)."""
    defaults, docs, writers, key_roles = defaults or {}, docs or {}, writers or {}, key_roles or {}
    libvirt_owned = set(observed.split())
    out = []
    for token in spec.split():
        m = _FIELD.match(token)
        if not m:
            raise ValueError(f"bad field spec {token!r}")
        life, name, qual, type_text = m.groups()
        out.append(Field(
            name, parse_type(type_text, enums),
            {"": RO, "^": CTOR, "*": RW}[qual],
            defaults.get(name, MISSING), docs.get(name, ""), writers.get(name), key_roles.get(name),
            {"": "published", "!": "deprecated", "~": "removed", "?": "prototyped"}[life], name in libvirt_owned))
    unknown = (set(defaults) | set(docs) | set(writers) | set(key_roles) | libvirt_owned) - {f.name for f in out}
    if unknown:
        raise ValueError(f"defaults/docs for undeclared fields: {sorted(unknown)}")
    return out


def enum(name: str, values: str) -> T.Enum:
    return T.Enum(name, tuple(values.split()))
