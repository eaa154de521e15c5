"""Allowed and current operations, for every class that has them in xapi, from one mechanism.

A class declares an ``OperationTable``: its operations and one ``check(store, ref, rec, op)``
that returns the error xapi gives for ``op`` on that object now (None: allowed).  From it:

* ``allowed(store, ref, rec)``: the ``allowed_operations`` field, always derived, never set by hand;
* ``operation(ctx, ref, op)``: the guard a message runs under: checked, shown in
  ``current_operations`` while it runs (keyed by its task), cleared after, with
  ``allowed_operations`` recomputed at each step.

One lock (``guard()``) makes check-and-mark atomic across threads and classes; it is also held
while an observation recomputes what follows from an object's state.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterable

from xenapi import errors as E
from xenapi.errors import XenAPIError
from xenapi.state.store import mod

_guard = threading.RLock()

Check = Callable[[object, str, dict, str], "XenAPIError | None"]


def guard() -> threading.RLock:
    """Held while reading an object and writing what follows from it (current/allowed operations)."""
    return _guard


class OperationTable:
    def __init__(self, cls: str, operations: Iterable[str], check: Check, *, shown: Iterable[str] | None = None,
                 concurrent: Iterable[str] = (), busy_first: bool = True):
        """``shown``: the operations ever listed in allowed_operations (xapi hides some; default all);
        ``concurrent``: operations that do not block others while running (VDI copy);
        ``busy_first``: an operation in progress is the first error; else ``check`` calls ``busy``
        where xapi's order puts it."""
        self.cls = cls
        self.operations = tuple(operations)
        self.check = check
        self.shown = tuple(shown) if shown is not None else self.operations
        self.concurrent = frozenset(concurrent)
        self.busy_first = busy_first

    def busy(self, ref: str, rec: dict) -> XenAPIError | None:
        """OTHER_OPERATION_IN_PROGRESS if an operation that blocks others is running on ``ref``."""
        for task, running in rec.get("current_operations", {}).items():
            if running not in self.concurrent:
                return XenAPIError(E.OTHER_OPERATION_IN_PROGRESS, self.cls, ref, running, task)
        return None

    def error(self, store, ref: str, rec: dict, op: str) -> XenAPIError | None:
        if op not in self.operations:
            return XenAPIError(E.OPERATION_NOT_ALLOWED, f"{op} is not supported by this server")
        return (self.busy_first and self.busy(ref, rec)) or self.check(store, ref, rec, op)

    def allowed(self, store, ref: str, rec: dict) -> list[str]:
        return sorted(op for op in self.shown if self.error(store, ref, rec, op) is None)

    def assert_valid(self, store, ref: str, op: str) -> None:
        error = self.error(store, ref, store.get(self.cls, ref), op)
        if error is not None:
            raise error

    def refresh(self, store, refs: Iterable[str]) -> None:
        """Recompute allowed_operations of these objects (something they depend on changed): one
        store write for all of them, and none for those whose operations are as they were."""
        with _guard:
            ops = [mod(self.cls, ref, {"allowed_operations": allowed}) for ref in refs
                   if (rec := store.find(self.cls, ref)) is not None
                   and (allowed := self.allowed(store, ref, rec)) != rec["allowed_operations"]]
            if ops:
                store.apply(ops)

    @contextmanager
    def operation(self, ctx, ref: str, op: str, *, retry: Callable[[XenAPIError], bool] | None = None):
        """Run ``op`` on ``ref``: checked, marked while it runs, cleared after.  ``retry(error)``:
        re-check once if it returns True (it may re-read the object from libvirt first)."""
        store = ctx.store
        marker = ctx.task_ref or f"OpaqueRef:NULL/{op}"
        try:
            rec = self._mark(store, ref, op, marker)
        except XenAPIError as e:
            if retry is None or not retry(e):
                raise
            rec = self._mark(store, ref, op, marker)
        try:
            yield rec
        finally:
            with _guard:
                rec = store.find(self.cls, ref)
                if rec is not None:
                    ops = {k: v for k, v in rec["current_operations"].items() if k != marker}
                    store.update(self.cls, ref, {"current_operations": ops, "allowed_operations": self.allowed(
                        store, ref, {**rec, "current_operations": ops})})

    def _mark(self, store, ref: str, op: str, marker: str) -> dict:
        with _guard:
            rec = store.get(self.cls, ref)
            error = self.error(store, ref, rec, op)
            if error is not None:
                raise error
            ops = {**rec["current_operations"], marker: op}
            store.update(self.cls, ref, {"current_operations": ops,
                                         "allowed_operations": self.allowed(store, ref, {**rec, "current_operations": ops})})
        return rec
