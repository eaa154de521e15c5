"""The one place every call passes: name lookup, arity, conversion, session, RBAC (roles, then
grants), refs, then the call itself or a task; then its log line and, for a state-changing call,
its audit row.  Transports hand it a ``Call`` and encode whatever ``Outcome`` it returns.

RBAC: a session holding the call's permission (its role's, fixed at login as in xapi) goes
straight on, so a pool-admin's path costs one set lookup.  Otherwise the grants decide
(auth/grants.py): they allow the call on the objects they select, or refuse it with xapi's
RBAC_PERMISSION_DENIED, or, for a listing, let it run and cut its answer down to what the
session may read.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import uuid as _uuid
from dataclasses import dataclass

from xenapi import errors as E
from xenapi.context import Context, Identity, Services
from xenapi.errors import XenAPIError
from xenapi.model import types as T
from xenapi.model.declare import MISSING, Message
from xenapi.wire import Bare, Call, Failure, Fault, Outcome, Success

log = logging.getLogger(__name__)



@dataclass(slots=True)
class _Trail:
    """What dispatch learnt about a call, for its log line and audit row."""
    msg: Message | None = None
    ctx: Context | None = None
    args: list | None = None
    claimed: str = ""                # the user name a session-less call (a login) gave
    objects: list | None = None      # (class/ref, uuid) of the objects named, taken before the call ran
    deferred: bool = False           # an Async call writes its audit row when its task ends


class Dispatcher:
    def __init__(self, services: Services, metrics):
        """``services``: what the message bodies are handed (in each call's Context); the
        dispatcher itself checks sessions, permissions and refs, and runs tasks, with them."""
        self.services = services
        self.registry, self.store, self.access, self.audit = (services.registry, services.store, services.access,
                                                              services.audit)
        self.sessions, self.tasks, self.metrics = services.sessions, services.tasks, metrics
        self.system = {"system.listMethods": lambda call: Bare(self.registry.list_methods())}

    def dispatch(self, call: Call) -> Outcome:
        start = time.perf_counter()
        trail = _Trail()
        try:
            outcome = self._dispatch(call, trail)
        except XenAPIError as e:
            outcome = Failure(e.description)
        except Exception:
            incident = str(_uuid.uuid4())[:8]
            log.exception("event=internal-error incident=%s method=%s", incident, call.method)
            outcome = Failure([E.INTERNAL_ERROR, f"unexpected server error (incident {incident}; see the server log)"])
        ms = (time.perf_counter() - start) * 1000
        self.metrics.observe(call.method, outcome, ms)
        identity = call.identity or Identity()
        result = "ok" if isinstance(outcome, (Success, Bare)) else (
            outcome.description[0] if isinstance(outcome, Failure) else "fault")
        read = trail.msg is None or trail.msg.reads
        level = logging.DEBUG if result == "ok" and read else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "user=%s via=%s addr=%s method=%s ms=%.1f result=%s", _user(trail),
                    identity.via, identity.address or "-", call.method, ms, result)
        if not read and not trail.deferred:
            value = outcome.value if isinstance(outcome, Success) else None
            self._audit(call.method, trail, identity, result, value)
        return outcome

    def _dispatch(self, call: Call, trail: _Trail) -> Outcome:
        system = self.system.get(call.method)
        if system is not None:
            return system(call)
        found = self.registry.lookup(call.method)
        params = call.params
        if found is None:
            if params and isinstance(params[0], str):
                self.sessions.check(params[0])
            raise XenAPIError(E.MESSAGE_METHOD_UNKNOWN, call.method)
        msg, is_async = found
        trail.msg = msg
        if call.protocol != "xmlrpc":        # XML cannot carry lone surrogates; JSON can
            _check_text(params)
        if is_async and not msg.is_async:
            return Fault(f"No async mode for this operation (rpc: {call.method})")
        skip = 1 if msg.session else 0
        given = len(params) - skip
        if not msg.required <= given <= len(msg.params):
            raise XenAPIError(E.MESSAGE_PARAMETER_COUNT_MISMATCH, msg.wire_name, msg.required, given)
        args = [p.type.convert(v, p.name) for p, v in zip(msg.params, params[skip:])]
        args += [p.default for p in msg.params[len(args):]]
        trail.args = args
        identity = call.identity or Identity()
        filtered = False
        if msg.session:
            ctx = trail.ctx = Context(self.services, *self.sessions.caller(params[0], identity), identity)
            permission, roles = msg.keyed(args[1]) if msg.key_roles else (msg.permission, msg.roles)
            if permission not in ctx.permissions:
                filtered = self.access.authorize(ctx, msg, args, permission, roles)
        else:
            ctx = trail.ctx = Context(self.services, identity=identity)
            trail.claimed = args[0] if args and isinstance(args[0], str) else ""
        ctx.method = msg.wire_name
        self._check_refs(msg, args)
        if not msg.reads:
            trail.objects = self._objects(msg, args)
        if is_async:
            if not msg.reads:
                trail.deferred = True
                msg = dataclasses.replace(msg, impl=self._audited(msg, call.method, trail, identity))
            return Success(self.tasks.run_async(msg, ctx, args, name=call.method))
        if msg.is_async and msg.session:
            result = self.tasks.run_sync(msg, ctx, args)
        else:
            result = msg.impl(ctx, *args)
        return Success(self.access.filter(ctx, msg, args, result) if filtered else result)

    def _check_refs(self, msg: Message, args: list) -> None:
        for n, (p, value) in enumerate(zip(msg.params, args)):
            if not isinstance(p.type, T.Ref) or p.default is not MISSING and value == p.default:
                continue
            if p.null_ok and value in (T.NULL_REF, ""):
                args[n] = T.NULL_REF          # xapi takes "" for a NULL ref there (Xen Orchestra's VM.copy sends it)
                continue
            if not self.store.exists(p.type.cls, value):
                raise XenAPIError(E.HANDLE_INVALID, p.type.cls, value)

    # -- audit -------------------------------------------------------------------------------
    def _objects(self, msg: Message, args: list) -> list[tuple[str, str] | None]:
        """(class/ref, uuid) of every object a call names, taken while they still exist."""
        out = []
        for p, value in zip(msg.params, args):
            if isinstance(p.type, T.Ref) and isinstance(value, str) and value != T.NULL_REF:
                out.append(self._object(p.type.cls, value))
        return out

    def _object(self, cls: str, ref: str) -> tuple[str, str] | None:
        decl = self.registry.classes.get(cls)
        if decl is not None and not decl.listable:       # refs that are secrets (sessions)
            return None
        rec = self.store.find(cls, ref) if decl is not None else None
        return f"{cls}/{ref}", (rec or {}).get("uuid", "")

    def _audit(self, method: str, trail: _Trail, identity: Identity, outcome: str, value=None, task: str = "") -> None:
        if trail.msg is None:
            return
        objects = trail.objects if trail.objects is not None else self._objects(trail.msg, trail.args or [])
        result = trail.msg.result
        if isinstance(result, T.Ref) and isinstance(value, str) and value.startswith(T.REF_PREFIX) \
                and value != T.NULL_REF:
            objects = [*objects, self._object(result.cls, value)]       # what a create or clone made
        objects = [o for o in objects if o is not None]
        self.audit.record(user=_user(trail), via=identity.via, address=identity.address, method=method,
                          objects=[o for o, _ in objects], uuids=[u for _, u in objects], outcome=outcome, task=task)

    def _audited(self, msg: Message, method: str, trail: _Trail, identity: Identity):
        """An Async call's body, writing its audit row with the outcome when its task ends."""
        impl = msg.impl

        def run(ctx, *args):
            outcome, value = E.INTERNAL_ERROR, None
            try:
                value = impl(ctx, *args)
                outcome = "ok"
                return value
            except XenAPIError as e:
                outcome = e.code
                raise
            finally:
                self._audit(method, trail, identity, outcome, value, task=ctx.task_ref or "")
        return run


def _user(trail: _Trail) -> str:
    if trail.ctx is not None and trail.ctx.user:
        return trail.ctx.user
    return trail.claimed or "-"


def _check_text(value) -> None:
    """xapi's first check: every string parameter must be valid Unicode (JSON can smuggle surrogates)."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise XenAPIError(E.INVALID_VALUE, "Invalid UTF-8 string in parameter",
                                  value.encode("utf-8", "replace").decode()) from None
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_text(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_text(item)
