"""The one place every call passes: name lookup, arity, conversion, session, RBAC, refs, then the
call itself or a task.  Transports hand it a ``Call`` and encode whatever ``Outcome`` it returns.
"""
from __future__ import annotations

import logging
import time
import uuid as _uuid

from xenapi import errors as E
from xenapi.context import Context, Identity
from xenapi.errors import XenAPIError
from xenapi.model import types as T
from xenapi.model.declare import MISSING, Message
from xenapi.model.registry import FORWARD_CLASSES
from xenapi.wire import Bare, Call, Failure, Fault, Outcome, Success

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, server):
        self.server = server
        self.registry = server.registry
        self.store = server.store
        self.system = {"system.listMethods": lambda call: Bare(self.registry.list_methods())}

    def dispatch(self, call: Call) -> Outcome:
        start = time.perf_counter()
        ctx = None
        try:
            outcome, ctx = self._dispatch(call)
        except XenAPIError as e:
            outcome = Failure(e.description)
        except Exception:
            incident = str(_uuid.uuid4())[:8]
            log.exception("event=internal-error incident=%s method=%s", incident, call.method)
            outcome = Failure([E.INTERNAL_ERROR, f"unexpected server error (incident {incident}; see the server log)"])
        ms = (time.perf_counter() - start) * 1000
        self.server.metrics.observe(call.method, outcome, ms)
        identity = call.identity or Identity()
        result = "ok" if isinstance(outcome, (Success, Bare)) else (
            outcome.description[0] if isinstance(outcome, Failure) else "fault")
        level = logging.DEBUG if result == "ok" and _is_read(call.method) else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "user=%s via=%s addr=%s method=%s ms=%.1f result=%s", ctx.user if ctx else "-",
                    identity.via, identity.address or "-", call.method, ms, result)
        return outcome

    def _dispatch(self, call: Call) -> tuple[Outcome, Context | None]:
        system = self.system.get(call.method)
        if system is not None:
            return system(call), None
        found = self.registry.lookup(call.method)
        params = call.params
        if found is None:
            if params and isinstance(params[0], str):
                self.server.sessions.check(params[0])
            raise XenAPIError(E.MESSAGE_METHOD_UNKNOWN, call.method)
        msg, is_async = found
        _check_text(params)
        if is_async and not msg.is_async:
            return Fault(f"No async mode for this operation (rpc: {call.method})"), None
        skip = 1 if msg.session else 0
        given = len(params) - skip
        if not msg.required <= given <= len(msg.params):
            raise XenAPIError(E.MESSAGE_PARAMETER_COUNT_MISMATCH, msg.wire_name, msg.required, given)
        args = [p.type.convert(v, p.name) for p, v in zip(msg.params, params[skip:])]
        args += [p.default for p in msg.params[len(args):]]
        identity = call.identity or Identity()
        if msg.session:
            ctx = self.server.sessions.context(params[0], identity)
            permission, roles = msg.keyed(args[1]) if msg.key_roles else (msg.permission, msg.roles)
            if permission not in ctx.permissions:
                raise XenAPIError(E.RBAC_PERMISSION_DENIED, permission,
                                  "No permission in user session. (Roles with this permission: "
                                  + ", ".join(roles) + ")")
        else:
            ctx = Context(self.server, identity=identity)
        ctx.method = msg.wire_name
        self._check_refs(msg, args)
        if is_async:
            return Success(self.server.tasks.run_async(msg, ctx, args, name=call.method)), ctx
        if msg.is_async and msg.session:
            return Success(self.server.tasks.run_sync(msg, ctx, args)), ctx
        return Success(msg.impl(ctx, *args)), ctx

    def _check_refs(self, msg: Message, args: list) -> None:
        for p, value in zip(msg.params, args):
            if not isinstance(p.type, T.Ref) or p.default is not MISSING and value == p.default:
                continue
            cls = p.type.cls
            if value == T.NULL_REF and (p.null_ok or cls in FORWARD_CLASSES):
                continue
            if cls in FORWARD_CLASSES or not self.store.exists(cls, value):
                raise XenAPIError(E.HANDLE_INVALID, cls, value)


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


def _is_read(method: str) -> bool:
    name = method.rpartition(".")[2]
    return name.startswith("get") or "_get_" in name or method.startswith(("event", "system."))
