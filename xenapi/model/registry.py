"""The registry: every class and message of the API, built once from the declarations.

Implicit messages (getters, setters, map and set accessors, records, lookups, constructors) are
derived here from the fields, never written per class.  The map and set messages (``add_to_<f>``,
``remove_from_<f>``, ``add_<f>``, ``remove_<f>``) are atomic, as xapi's: concurrent calls on one
object never lose each other's changes (xenapi/state/store.py: ``modify``, ``object_lock``).

The registry checks itself when built: a message without a doc or roles, an undeclared error code,
or a Ref to an unknown class fails at import, not at the first call.
"""
from __future__ import annotations

from typing import Iterable

from xenapi import errors as E
from xenapi.errors import XenAPIError
from xenapi.model import types as T
from xenapi.model.declare import CTOR, MISSING, RW, ClassDecl, Field, Message, Relation, param
from xenapi.model.roles import LADDER

class Registry:
    def __init__(self, decls: Iterable[ClassDecl], relations: Iterable[Relation] = (),
                 unrelated: Iterable[str] = ()):
        """``relations``: xapi's relations between the classes; ``unrelated``: the Set(Ref)
        fields (``Class.field``) that are no relation's side, each for a reason."""
        self.classes: dict[str, ClassDecl] = {}
        self.messages: dict[str, Message] = {}
        self._names: dict[str, Message] = {}      # every accepted spelling -> message
        self.relations = tuple(relations)
        for decl in decls:
            self._add_class(decl)
        self._check()
        self._check_relations(set(unrelated))

    # -- building ---------------------------------------------------------------------------
    def _add_class(self, decl: ClassDecl) -> None:
        self.classes[decl.name] = decl
        custom = {m.name for m in decl.messages}
        for msg in [*decl.messages, *(m for m in _implicit(decl) if m.name not in custom)]:
            msg.cls = decl.name
            self.messages[msg.wire_name] = msg
            self._names[msg.wire_name] = msg
            self._names[f"{decl.name}_{msg.name}"] = msg   # xapi's alternative wire name

    def _check(self) -> None:
        """Messages name declared classes only.  A field may hold refs to a class of xapi's that
        this server does not declare (VM.VIFs before networks exist): such a class has no
        objects, so the field is always empty; ``absent`` lists them, and tests/test_xapi_fields.py
        pins every field's type to xapi's, so a misspelt class cannot slip in."""
        known = set(self.classes)
        self.absent: frozenset[str] = frozenset(
            c for decl in self.classes.values() for f in decl.fields for c in _classes_in(f.type) if c not in known)
        for msg in self.messages.values():
            where = msg.wire_name
            if not msg.doc:
                raise ValueError(f"{where}: no doc")
            if not msg.roles or any(r not in LADDER for r in msg.roles) or msg.roles != LADDER[: len(msg.roles)]:
                raise ValueError(f"{where}: roles must be a prefix of the ladder, got {msg.roles}")
            for code in msg.errors:
                if code not in E.ERRORS:
                    raise ValueError(f"{where}: undeclared error {code}")
            seen_default = False
            for p in msg.params:
                if p.default is not MISSING:
                    seen_default = True
                elif seen_default:
                    raise ValueError(f"{where}: parameter {p.name} without default after one with")
                _check_type(p.type, known, where)
            if msg.impl is None:
                raise ValueError(f"{where}: no implementation")

    def _check_relations(self, unrelated: set[str]) -> None:
        """Both sides of every relation declared and typed for each other, the set side never
        written by anyone (RO), and every set of refs to a declared class one side of a relation
        or named as unrelated: a one-sided relation fails here, not as a stale set later."""
        sides = set()
        for rel in self.relations:
            try:
                one = self.classes[rel.one_cls].field(rel.one_field)
                many = self.classes[rel.many_cls].field(rel.many_field)
            except KeyError as e:
                raise ValueError(f"relation {rel}: no field {e}") from None
            if one.type != T.Ref(rel.many_cls) or many.type != T.Set(T.Ref(rel.one_cls)):
                raise ValueError(f"relation {rel}: expected Ref({rel.many_cls}) and Set(Ref({rel.one_cls}))")
            if many.qualifier == RW:
                raise ValueError(f"relation {rel}: the set side is kept by the store and cannot be RW")
            sides.add(f"{rel.many_cls}.{rel.many_field}")
        for decl in self.classes.values():
            for f in decl.fields:
                name = f"{decl.name}.{f.name}"
                if isinstance(f.type, T.Set) and isinstance(f.type.of, T.Ref) and f.type.of.cls in self.classes \
                        and name not in sides and name not in unrelated:
                    raise ValueError(f"{name}: a set of {f.type.of.cls} refs with no relation (or say it is unrelated)")

    # -- lookups ----------------------------------------------------------------------------
    def lookup(self, method: str) -> tuple[Message, bool] | None:
        """(message, is_async) for a wire name in any accepted spelling, or None."""
        if method.startswith("Async."):
            msg = self._names.get(method[6:])
            return (msg, True) if msg is not None else None
        msg = self._names.get(method)
        return (msg, False) if msg is not None else None

    def list_methods(self) -> list[str]:
        return sorted(m.wire_name for m in self.messages.values() if not m.hidden)

    def _grants(self):
        """(permission, roles) of every message, and of every map key with roles of its own."""
        for m in self.messages.values():
            yield m.permission, m.roles
            for key, roles in (m.key_roles or {}).items():
                yield f"{m.permission}/key:{key}".lower(), roles

    def permissions(self) -> list[str]:
        return sorted({perm for perm, _ in self._grants()})

    def permissions_of(self, role: str) -> frozenset[str]:
        return frozenset(perm for perm, roles in self._grants() if role in roles)


def _classes_in(t: T.WireType) -> set[str]:
    if isinstance(t, (T.Ref, T.Record)):
        return {t.cls}
    if isinstance(t, T.Set):
        return _classes_in(t.of)
    if isinstance(t, T.Map):
        return _classes_in(t.key) | _classes_in(t.value)
    return set()


def _check_type(t: T.WireType, known: set[str], where: str) -> None:
    if isinstance(t, (T.Ref, T.Record)) and t.cls not in known:
        raise ValueError(f"{where}: reference to unknown class {t.cls}")
    if isinstance(t, T.Set):
        _check_type(t.of, known, where)
    if isinstance(t, T.Map):
        _check_type(t.key, known, where)
        _check_type(t.value, known, where)


# -- implicit messages ----------------------------------------------------------------------

def _implicit(decl: ClassDecl) -> list[Message]:
    cls = decl.name
    if not decl.stored:
        return []
    self_param = param(T.Ref(cls), "self", f"reference to the {cls}")
    out = [Message("get_record", f"Get a record containing the current state of the given {cls}.",
                   [self_param], T.Record(cls), impl=lambda ctx, ref: ctx.store.get(cls, ref), implicit=True)]
    if decl.listable:
        out += _listing(decl)
    for f in decl.fields:
        out.extend(_field_messages(decl, f, self_param))
    if decl.constructor:
        out.append(Message("create", f"Create a new {cls} instance, and return its handle.",
                           [param(T.Record(cls), "args", "all constructor arguments")], T.Ref(cls),
                           roles=decl.ctor_roles, impl=lambda ctx, rec: _create(ctx, decl, rec), implicit=True,
                           is_async=True))
        out.append(Message("destroy", f"Destroy the specified {cls} instance.", [self_param],
                           roles=decl.ctor_roles, impl=lambda ctx, ref: _destroy(ctx, decl, ref), implicit=True,
                           is_async=True))
    return out


def _listing(decl: ClassDecl) -> list[Message]:
    cls = decl.name
    out = [
        Message("get_all", f"Return a list of all the {cls}s known to the system.",
                [], T.Set(T.Ref(cls)), impl=lambda ctx: ctx.store.refs(cls), implicit=True),
        Message("get_all_records", f"Return a map of {cls} references to {cls} records for all {cls}s known to the system.",
                [], T.Map(T.Ref(cls), T.Record(cls)), impl=lambda ctx: ctx.store.records(cls), implicit=True),
        Message("get_all_records_where", f"Return a map of {cls} references to {cls} records for all {cls}s matching the expression.",
                [param(T.String, "expr", "an expression over the record's fields")],
                T.Map(T.Ref(cls), T.Record(cls)), impl=lambda ctx, expr: _where(ctx, cls, expr), implicit=True,
                hidden=True),
        Message("get_by_uuid", f"Get a reference to the {cls} instance with the specified UUID.",
                [param(T.String, "uuid", "UUID of object to return")], T.Ref(cls),
                errors=(E.UUID_INVALID,), impl=lambda ctx, u: ctx.store.by_uuid(cls, u), implicit=True),
    ]
    if any(f.name == "name_label" for f in decl.fields):
        out.append(Message("get_by_name_label", f"Get all the {cls} instances with the given label.",
                           [param(T.String, "label", "label of object to return")], T.Set(T.Ref(cls)),
                           impl=lambda ctx, label: ctx.store.by_name_label(cls, label), implicit=True))
    return out


def _field_messages(decl: ClassDecl, f: Field, self_param) -> list[Message]:
    cls, name = decl.name, f.name
    out = [Message(f"get_{name}", f"Get the {name} field of the given {cls}.", [self_param], f.type,
                   impl=lambda ctx, ref: ctx.store.get(cls, ref)[name], implicit=True)]
    if f.qualifier != RW:
        return out
    roles = f.writer_roles or decl.writer_roles
    setter = decl.hooks.get(f"set_{name}")

    def set_value(ctx, ref, value):
        if setter is None:
            ctx.store.update(cls, ref, {name: value})
            return
        with ctx.store.object_lock(cls, ref):      # a hook may go to libvirt: one writer of the object at a time
            setter(ctx, ref, value)

    def edit(ctx, ref, change):
        """Set the field to ``change(record)`` atomically (None: leave it): under the store's lock
        when the store alone holds the field, else read, hook and write under the object's lock."""
        if setter is None:
            ctx.store.modify(cls, ref, lambda rec: _field(name, change(rec)))
            return
        with ctx.store.object_lock(cls, ref):
            value = change(ctx.store.get(cls, ref))
            if value is not None:
                setter(ctx, ref, value)

    out.append(Message(f"set_{name}", f"Set the {name} field of the given {cls}.",
                       [self_param, param(f.type, "value", "new value to set")], roles=roles,
                       impl=set_value, implicit=True))
    if isinstance(f.type, T.Map):
        def add_to(ctx, ref, key, value):
            def change(rec):
                if key in rec[name]:
                    raise XenAPIError(E.MAP_DUPLICATE_KEY, cls, name, rec.get("uuid", ref), key)
                return {**rec[name], key: value}
            edit(ctx, ref, change)

        def remove_from(ctx, ref, key):
            edit(ctx, ref, lambda rec: {k: v for k, v in rec[name].items() if k != key} if key in rec[name] else None)

        out += [
            Message(f"add_to_{name}", f"Add the given key-value pair to the {name} field of the given {cls}.",
                    [self_param, param(f.type.key, "key", "key to add"), param(f.type.value, "value", "value to add")],
                    roles=roles, errors=(E.MAP_DUPLICATE_KEY,), impl=add_to, implicit=True, key_roles=f.key_roles),
            Message(f"remove_from_{name}", f"Remove the given key and its value from the {name} field of the given {cls}; a missing key is not an error.",
                    [self_param, param(f.type.key, "key", "key to remove")], roles=roles, impl=remove_from, implicit=True,
                    key_roles=f.key_roles),
        ]
    elif isinstance(f.type, T.Set):
        def add(ctx, ref, value):
            edit(ctx, ref, lambda rec: None if value in rec[name] else [*rec[name], value])

        def remove(ctx, ref, value):
            edit(ctx, ref, lambda rec: [v for v in rec[name] if v != value] if value in rec[name] else None)

        out += [
            Message(f"add_{name}", f"Add the given value to the {name} field of the given {cls}; already there is not an error.",
                    [self_param, param(f.type.of, "value", "new value to add")], roles=roles, impl=add, implicit=True),
            Message(f"remove_{name}", f"Remove the given value from the {name} field of the given {cls}; absent is not an error.",
                    [self_param, param(f.type.of, "value", "value to remove")], roles=roles, impl=remove, implicit=True),
        ]
    return out


def _field(name: str, value) -> dict:
    return {} if value is None else {name: value}


def _where(ctx, cls: str, expr: str):
    from xenapi.state.where import WhereFieldError, WhereSyntaxError, compile_where
    try:
        match = compile_where(expr)
        return {ref: rec for ref, rec in ctx.store.records(cls).items() if match(rec, ref)}
    except WhereSyntaxError as e:
        raise XenAPIError(E.INVALID_VALUE, *e.xapi_params) from None
    except WhereFieldError as e:          # xapi: DBCache_NotFound("missing field", name, "")
        raise XenAPIError(E.INTERNAL_ERROR, " ".join(p for p in e.xapi_params if p)) from None


def constructor_fields(decl: ClassDecl, record: dict, where: str = "") -> dict:
    """Convert a constructor's record: RW and StaticRO fields, required unless defaulted."""
    out = {}
    for f in decl.fields:
        if f.qualifier not in (RW, CTOR):
            continue
        if f.name in record:
            out[f.name] = f.type.convert(record[f.name], f.name)
        elif f.name in decl.ctor_required if decl.ctor_required is not None else f.default is MISSING:
            raise XenAPIError(E.INTERNAL_ERROR, f'Dispatcher_FieldNotFound("{f.name}")')
    return out


def _create(ctx, decl: ClassDecl, record: dict):
    values = constructor_fields(decl, record)
    hook = decl.hooks.get("create")
    if hook:
        return hook(ctx, values)
    return ctx.store.create(decl.name, values)


def _destroy(ctx, decl: ClassDecl, ref: str):
    hook = decl.hooks.get("destroy")
    if hook:
        return hook(ctx, ref)
    ctx.store.delete(decl.name, ref)
