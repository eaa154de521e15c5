"""Tasks: the record of a call that runs long, for Async.* calls and sync lifecycle calls alike.

A task is a ``task`` object in the store, so its add/mod/del reach event.from listeners (XO waits
for the task's mod event rather than polling).  Async work runs on its own named thread.  Finished
tasks are kept for ``keep_seconds`` and at most ``keep_count`` of them, then destroyed, as xapi does.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid as _uuid
from itertools import count

from xenapi import errors as E
from xenapi.context import Context
from xenapi.errors import XenAPIError
from xenapi.model.declare import Message
from xenapi.state.store import StoreClosed
from xenapi.wire import xmlrpc
from xenapi.wire.values import DateTime

log = logging.getLogger(__name__)
_serial = count(1)


class Tasks:
    def __init__(self, store, this_host: str, keep_seconds: float = 3900.0, keep_count: int = 200,
                 max_pending: int = 1000):
        self.store = store
        self.this_host = this_host                # every task's resident_on: the master
        self.keep_seconds = keep_seconds
        self.keep_count = keep_count
        self.max_pending = max_pending

    # -- records -----------------------------------------------------------------------------
    def create(self, label: str, description: str = "", ctx: Context | None = None, cancellable: bool = False) -> str:
        pending = sum(1 for r in self.store.records("task").values() if r["status"] == "pending")
        if pending >= self.max_pending:
            raise XenAPIError(E.TOO_BUSY)
        return self.store.create("task", {
            "name_label": label, "name_description": description, "created": DateTime.now(), "status": "pending",
            "resident_on": self.this_host, "progress": 0.0,
            "allowed_operations": ["cancel"] if cancellable else [],
            "other_config": {"owner": ctx.user} if ctx and ctx.user else {},
        })

    def progress(self, ref: str, value: float) -> None:
        self.store.update("task", ref, {"progress": max(0.0, min(1.0, float(value)))})

    def set_cancellable(self, ref: str, allowed: bool) -> None:
        if self.store.exists("task", ref):        # a finished task must not become cancellable again
            self._modify(ref, lambda rec: {"allowed_operations": ["cancel"] if allowed else []}
                         if rec["status"] == "pending" else {})

    def is_cancelling(self, ref: str) -> bool:
        rec = self.store.find("task", ref)
        return rec is not None and rec["status"] == "cancelling"

    def cancel(self, ref: str) -> None:
        def cancelling(rec):                      # checked and marked in one step: a task finishing
            if "cancel" not in rec["allowed_operations"] or rec["status"] != "pending":   # meanwhile stays finished
                raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"task {ref} cannot be cancelled in its current state")
            return {"status": "cancelling", "allowed_operations": [], "current_operations": {ref: "cancel"}}
        self.store.modify("task", ref, cancelling)

    def succeed(self, ref: str, result) -> None:
        self._finish(ref, {"status": "success", "result": xmlrpc.value_to_string(result)})

    def fail(self, ref: str, error: XenAPIError) -> None:
        status = "cancelled" if error.code == E.TASK_CANCELLED else "failure"
        self._finish(ref, {"status": status, "error_info": error.description})

    def _finish(self, ref: str, fields: dict) -> None:
        if self.store.exists("task", ref):
            self._modify(ref, lambda rec: {"progress": 1.0, "finished": DateTime.now(), "allowed_operations": [],
                                           "current_operations": {}, **fields})
        self.collect()

    def _modify(self, ref: str, change) -> None:
        """store.modify, but a task destroyed meanwhile (task.destroy by its owner) is no error."""
        try:
            self.store.modify("task", ref, change)
        except XenAPIError as e:
            if e.code != E.HANDLE_INVALID:
                raise

    # -- running calls ---------------------------------------------------------------------
    def run_sync(self, msg: Message, ctx: Context, args: list):
        """A sync call of an async-capable message: its task exists while it runs, as in xapi."""
        ctx.task_ref = self.create(msg.wire_name, ctx=ctx)
        try:
            return msg.impl(ctx, *args)
        finally:
            self.store.delete("task", ctx.task_ref)

    def run_async(self, msg: Message, ctx: Context, args: list, name: str) -> str:
        ctx.task_ref = self.create(name, ctx=ctx)
        thread = threading.Thread(target=self._work, args=(msg, ctx, args), name=f"task-{next(_serial)}", daemon=True)
        thread.start()
        return ctx.task_ref

    def _work(self, msg: Message, ctx: Context, args: list) -> None:
        try:
            self._run(msg, ctx, args)
        except StoreClosed:                  # the server stopped under the task: at the next start
            log.info("event=task-abandoned task=%s method=%s", ctx.task_ref, msg.wire_name)   # fail_orphans

    def _run(self, msg: Message, ctx: Context, args: list) -> None:
        start = time.perf_counter()
        try:
            result = msg.impl(ctx, *args)
        except XenAPIError as e:
            self.fail(ctx.task_ref, e)
            outcome = e.code
        except Exception:
            incident = str(_uuid.uuid4())[:8]
            log.exception("event=internal-error incident=%s method=%s task=%s", incident, msg.wire_name, ctx.task_ref)
            self.fail(ctx.task_ref, XenAPIError(E.INTERNAL_ERROR, f"unexpected server error (incident {incident})"))
            outcome = "INTERNAL_ERROR"
        else:
            self.succeed(ctx.task_ref, result)
            outcome = "ok"
        log.info("user=%s via=%s method=Async.%s task=%s ms=%.1f result=%s", ctx.user, ctx.identity.via,
                 msg.wire_name, ctx.task_ref, (time.perf_counter() - start) * 1000, outcome)

    # -- housekeeping ----------------------------------------------------------------------
    def collect(self) -> int:
        """Destroy finished tasks past their keep time, and the oldest beyond the cap."""
        now = time.time()
        done = sorted((rec["finished"].seconds, ref) for ref, rec in self.store.records("task").items()
                      if rec["status"] not in ("pending", "cancelling"))
        expired = [ref for finished, ref in done if now - finished > self.keep_seconds]
        expired += [ref for _, ref in done[: max(0, len(done) - self.keep_count)] if ref not in expired]
        for ref in expired:
            self.store.delete("task", ref)
        return len(expired)

    def fail_orphans(self) -> None:
        """At start-up: tasks that were pending when the server stopped can never finish."""
        for ref, rec in self.store.records("task").items():
            if rec["status"] in ("pending", "cancelling"):
                self.fail(ref, XenAPIError(E.INTERNAL_ERROR, "the server restarted while this task ran"))
