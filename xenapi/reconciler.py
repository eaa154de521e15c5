"""The reconciler: brings the store in line with what libvirt says, and is the only writer of what
libvirt owns (power state, devices, memory, vCPUs, boot settings).

libvirt callbacks only enqueue (host, domain uuid, kind); the ``reconciler`` thread re-reads that
domain and applies the difference.  A relist (at start, on reconnect) reads every domain of a host
and removes what vanished while nobody was looking.  API calls re-observe synchronously through
``refresh`` so their answer already shows the new state.

A relist of a big host applies its domains in batches and lets other observations in between, so
hosts relist side by side and a call's refresh never waits out a whole relist.  Every read of a
domain is numbered; an observation is applied only if no newer read of that domain has been, so a
relist's older read never overwrites what a call saw later (nor brings back a destroyed VM).
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading

from xenapi import errors as E
from xenapi.backend import domxml
from xenapi.backend.connection import ERR_NO_DOMAIN
from xenapi.errors import XenAPIError
from xenapi import lifecycle
from xenapi.lifecycle import allowed_operations
from xenapi.model.types import NULL_REF
from xenapi.store import add, delete, derived_ref, derived_uuid, mod
from xenapi.wire.values import DateTime

log = logging.getLogger(__name__)

# VM fields libvirt owns: overwritten on every observation.  The rest belong to the store.
FROM_XML = ("name_label", "name_description", "memory_static_max", "memory_dynamic_max", "memory_dynamic_min",
            "memory_static_min", "VCPUs_max", "VCPUs_at_startup", "actions_after_shutdown", "actions_after_reboot",
            "actions_after_crash", "PV_bootloader", "PV_bootloader_args", "PV_kernel", "PV_ramdisk", "PV_args",
            "HVM_boot_policy", "HVM_boot_params", "platform", "domain_type")
_RUNS = ("Running", "Paused")
RELIST_BATCH = 250       # domains applied per store write during a relist


def vm_ref(uuid: str) -> str:
    return derived_ref("VM", uuid)


def _no_such_domain(e: XenAPIError) -> bool:
    return e.code == E.BACKEND_FAILURE and len(e.params) > 2 and e.params[2] == ERR_NO_DOMAIN


class Reconciler:
    def __init__(self, server):
        self.server = server
        self.store = server.store
        self.homes: dict[str, str] = {}          # VM ref -> host ref whose libvirt defines it
        self._expected: dict[str, dict] = {}     # domain uuid -> fields a create/clone is about to define
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.RLock()           # one observation applied at a time
        self._reads = itertools.count(1)         # numbers every read of libvirt's state
        self._read_at: dict[str, int] = {}       # domain uuid -> number of the read last applied (or forgotten)
        self._relists = 0                        # relists in progress (tombstones in _read_at matter then)
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self._stopping = False
        self._unclaimed: set[str] = set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._queue.put(None)

    # -- callbacks from libvirt's loop thread: enqueue and return ---------------------------
    def on_domain_event(self, uri: str, uuid: str, kind: str) -> None:
        self._queue.put((uri, uuid, kind))

    def on_liveness(self, uri: str, live: bool) -> None:
        self._queue.put((uri, None, "live" if live else "dead"))

    def _run(self) -> None:
        while not self._stopping:
            item = self._queue.get()
            if item is None:
                continue
            uri, uuid, kind = item
            try:
                host = self.server.hosts.ref_of(uri)
                if kind == "live":
                    self.server.hosts.set_live(host, True)
                    self.server.hosts.sync(host)
                elif kind == "dead":
                    self.server.hosts.set_live(host, False)
                else:
                    self.refresh(host, uuid)
                    if kind == "reboot":
                        self._rebooted(uuid)
            except XenAPIError as e:
                log.info("event=reconcile-skipped uri=%s uuid=%s kind=%s error=%s", uri, uuid, kind, e.code)
            except Exception:
                log.exception("event=reconcile-failed uri=%s uuid=%s kind=%s", uri, uuid, kind)

    def claim_loaded(self) -> None:
        """VMs read back from SQLite wait to be seen by a relist; those nobody claims are gone."""
        self._unclaimed = {ref for ref, rec in self.store.records("VM").items() if not rec["is_control_domain"]}

    def drop_unclaimed(self) -> None:
        """Once every host has been listed: VMs no host defines any more were undefined while we were away."""
        with self._lock:
            for ref in self._unclaimed - self.homes.keys():
                log.info("event=vm-vanished ref=%s", ref)
                self._forget(ref, home=None)
            self._unclaimed = set()

    # -- observing -------------------------------------------------------------------------
    def expect(self, uuid: str, fields: dict) -> None:
        """The store-owned fields of a domain about to be defined through the API."""
        self._expected[uuid] = fields

    def unexpect(self, uuid: str) -> None:
        self._expected.pop(uuid, None)

    def relist(self, host: str) -> None:
        conn = self.server.hosts.connection(host)
        with self._lock:
            self._relists += 1
            read = next(self._reads)
        try:
            seen = {state.uuid: state for state in conn.list_domains()}
            states = list(seen.values())
            for start in range(0, len(states), RELIST_BATCH):
                if self.server.stopping:                 # the connection is about to close
                    return
                with self._lock:
                    self._observe_batch(host, states[start:start + RELIST_BATCH], read)
            with self._lock:
                for ref, home in list(self.homes.items()):
                    rec = self.store.find("VM", ref)
                    if home == host and rec is not None and rec["uuid"] not in seen \
                            and self._read_at.get(rec["uuid"], 0) < read:
                        self._forget(ref)
        finally:
            with self._lock:
                self._relists -= 1
                if not self._relists:     # no older read is in flight: tombstones can go
                    self._read_at = {u: n for u, n in self._read_at.items() if vm_ref(u) in self.homes}
        log.info("event=relist host=%s domains=%d", host, len(seen))

    def refresh(self, host: str, uuid: str) -> None:
        conn = self.server.hosts.connection(host)
        with self._lock:            # read and apply together: a slower, older read must not land last
            read = next(self._reads)
            try:
                state = conn.domain_state(uuid)
            except XenAPIError as e:
                if not _no_such_domain(e):
                    raise
                state = None
            if state is None:
                self._forget(vm_ref(uuid))
            else:
                self._observe_batch(host, [state], read)

    def _rebooted(self, uuid: str) -> None:
        """libvirt resets a rebooting guest in place (same process, same domid); xapi builds a new
        domain then, so start_time moves to now, as xapi's does.  clean_reboot waits on this."""
        ref = derived_ref("VM_metrics", uuid)
        with self._lock:
            if self.store.exists("VM_metrics", ref):
                self.store.update("VM_metrics", ref, {"start_time": DateTime.now(), "last_updated": DateTime.now()})

    def forget(self, uuid: str) -> None:
        with self._lock:
            self._forget(vm_ref(uuid))

    def _forget(self, ref: str, home: str | None = None) -> None:
        rec = self.store.find("VM", ref)
        if rec is None:
            return
        self._read_at[rec["uuid"]] = next(self._reads)     # an older read in flight must not bring it back
        ops = [delete("VM", ref), delete("VM_metrics", rec["metrics"])]
        ops += [delete("console", c) for c in rec["consoles"]]
        home = self.homes.pop(ref, home)
        self.store.apply(ops)
        if kept := self.server.hosts.kept(home):
            kept.note_gone(rec["uuid"])

    def _observe_batch(self, host: str, states, read: int) -> None:
        """Apply the observations newer than what was applied of each domain, in one store write."""
        ops, applied = [], []
        with lifecycle.guard():     # allowed_operations must see the current_operations of this instant
            for state in states:
                if self._read_at.get(state.uuid, 0) > read:
                    continue
                self._read_at[state.uuid] = read
                try:
                    parsed = domxml.parse(state.xml)
                except domxml.DomainXMLError as e:
                    log.warning("event=unparsable-domain uuid=%s error=%s", state.uuid, e)
                    continue
                ref = vm_ref(state.uuid)
                ops += self._observation_ops(host, ref, state, parsed, self.store.find("VM", ref))
                self.homes[ref] = host
                applied.append(state)
            self.store.apply(ops)
        if kept := self.server.hosts.kept(host):
            kept.note(applied)

    def _observation_ops(self, host, ref, state, parsed, current) -> list:
        running = state.power_state in _RUNS
        derived = {k: parsed[k] for k in FROM_XML}
        derived.update(
            power_state=state.power_state, domid=state.domid, resident_on=host if running else NULL_REF,
            domarch=self.server.hosts.facts(host).arch if running else "",
            metrics=derived_ref("VM_metrics", state.uuid),
            is_a_template=parsed["stamp"].get("template") == "true",
        )
        ops = []
        if current is None:
            base = self._expected.pop(state.uuid, None) or {}
            record = self.store.new_record("VM", {**base, **derived, "uuid": state.uuid})
            record["allowed_operations"] = allowed_operations(record)
            ops.append(add("VM", ref, record))
        else:
            derived["allowed_operations"] = allowed_operations({**current, **derived})
            ops.append(mod("VM", ref, derived))
        ops += self._metrics_ops(host, state, parsed, current)
        ops += self._console_ops(ref, state, parsed, current)
        return ops

    def _metrics_ops(self, host, state, parsed, current) -> list:
        """VM_metrics from the definition; only what changed, so an observation that changes no
        figure makes no event.  memory_actual and VCPUs_number: 0 when not running, the definition's
        (currentMemory, current vCPUs) when it starts and while the sampler has no figure of its own
        (drivers without one), else the sampler's alone: the live figure may differ from the
        definition's (a balloon lagging virsh setmem, a live setvcpus) and the two would alternate."""
        ref = derived_ref("VM_metrics", state.uuid)
        running = state.power_state in _RUNS
        existing = self.store.find("VM_metrics", ref)
        was_running = current is not None and current["power_state"] in _RUNS
        fields = {
            "state": [state.libvirt_state.lower()] if state.libvirt_state else [],
            "hvm": parsed["domain_type"] == "hvm",
            "current_domain_type": parsed["domain_type"] if running else "unspecified",
        }
        sampler = self.server.hosts.sampler
        for field, defined in (("memory_actual", parsed["memory_dynamic_max"]),
                               ("VCPUs_number", parsed["VCPUs_at_startup"])):
            if not running:
                fields[field] = 0
            elif not was_running or not sampler.reports(host, state.uuid, field):
                fields[field] = defined
        if running and not was_running:
            fields["start_time"] = DateTime.now()
        if existing is None:
            return [add("VM_metrics", ref, self.store.new_record("VM_metrics", {
                **fields, "uuid": derived_uuid("VM_metrics", state.uuid), "install_time": DateTime.now(),
                "last_updated": DateTime.now()}))]
        changed = {k: v for k, v in fields.items() if existing[k] != v}
        return [mod("VM_metrics", ref, {**changed, "last_updated": DateTime.now()})] if changed else []

    def _console_ops(self, vm: str, state, parsed, current) -> list:
        """The consoles of a running domain (VM.consoles follows from their VM field), none otherwise."""
        ops, wanted = [], set()
        for console in (parsed["consoles"] if state.power_state in _RUNS else []):
            ref = derived_ref("console", f"{state.uuid}/{console['protocol']}")
            wanted.add(ref)
            fields = {"protocol": console["protocol"], "location": console["location"], "VM": vm}
            if self.store.exists("console", ref):
                ops.append(mod("console", ref, fields))
            else:
                ops.append(add("console", ref, self.store.new_record(
                    "console", {**fields, "uuid": derived_uuid("console", ref)})))
        have = set(current["consoles"]) if current else set()
        ops += [delete("console", ref) for ref in have - wanted]
        return ops
