"""Domains -> VM, VM_metrics, console and VBD records.

A VM's observed fields (declared ``observed`` in classes/vm.py) are overwritten on every
observation; the rest are the store's, and a VM defined through the API gets them from
``expect`` at its first observation.  A domain's disks are its VBDs (xenapi/observers/vbds.py).
"""
from __future__ import annotations

import logging

from classes.vm import OBSERVED
from xenapi.state import operations
from xenapi.backend import domxml
from xenapi.backend.connection import ERR_NO_DOMAIN
from xenapi.state.lifecycle import allowed_operations
from xenapi.errors import XenAPIError
from xenapi.model.types import NULL_REF
from xenapi.observers import Observer, read_or_none
from xenapi.observers.vbds import vbd_ops
from xenapi.observers.vifs import vif_ops
from xenapi.state.store import add, delete, derived_ref, derived_uuid, mod, modify
from xenapi.wire.values import DateTime

log = logging.getLogger(__name__)

_RUNS = ("Running", "Paused")


def vm_ref(uuid: str) -> str:
    return derived_ref("VM", uuid)


def _split_maps(rec: dict, parsed: dict) -> dict:
    """platform and HVM_boot_params: the keys the domain's XML holds from it, the others the store's."""
    return {field: {**{k: v for k, v in rec[field].items() if k not in xml_keys}, **parsed[field]}
            for field, xml_keys in domxml.XML_KEYS.items()}


class DomainObserver(Observer):
    kind, cls = "domain", "VM"

    def __init__(self, store, hosts, storage, networks, volumes):
        super().__init__(store)
        self.hosts, self.storage, self.networks, self.volumes = hosts, storage, networks, volumes
        self._expected: dict[str, dict] = {}     # domain uuid -> fields a create/clone is about to define

    def expect(self, uuid: str, fields: dict) -> None:
        """The store-owned fields of a domain about to be defined through the API."""
        self._expected[uuid] = fields

    def unexpect(self, uuid: str) -> None:
        self._expected.pop(uuid, None)

    # -- reading ---------------------------------------------------------------------------------
    def list(self, host, conn):
        return conn.list_domains()

    def read(self, host, conn, key):
        return read_or_none(lambda: conn.domain_state(key), ERR_NO_DOMAIN)

    def key_of(self, state) -> str:
        return state.uuid

    def ref(self, key: str) -> str:
        return vm_ref(key)

    def key_in_store(self, ref):
        rec = self.store.find("VM", ref)
        return rec["uuid"] if rec is not None else None

    def loaded(self):
        return [ref for ref, rec in self.store.records("VM").items() if not rec["is_control_domain"]]

    def superseded(self, host, state) -> bool:
        """A domain read shut off here while the store has it running on another host: during a
        migration (``virsh migrate`` too) the source still defines it for a moment after the
        destination runs it, and events from both hosts come in any order.  Running wins, once the
        host it runs on confirms it."""
        if state.power_state in _RUNS:
            return False
        ref = vm_ref(state.uuid)
        home = self.homes.get(ref)
        rec = self.store.find("VM", ref)
        if home in (None, host) or rec is None or rec["power_state"] not in _RUNS:
            return False
        try:
            there = self.read(home, self.hosts.connection(home), state.uuid)
        except XenAPIError:
            return False
        return there is not None and there.power_state in _RUNS

    def guard(self):
        return operations.guard()    # allowed_operations must see the current_operations of this instant

    # -- into the store --------------------------------------------------------------------------
    def observe(self, host, state):
        try:
            parsed = domxml.parse(state.xml)
            configured = (None if state.config_xml is None else
                          domxml.parse_devices(state.config_xml) if state.config_xml else parsed["devices"])
            configured_vifs = (None if state.config_xml is None else
                               domxml.parse_vifs(state.config_xml) if state.config_xml else parsed["vifs"])
        except domxml.DomainXMLError as e:
            log.warning("event=unparsable-domain uuid=%s error=%s", state.uuid, e)
            return None
        ref = vm_ref(state.uuid)
        current = self.store.find("VM", ref)
        running = state.power_state in _RUNS
        moved_from = self.homes.get(ref)
        if moved_from not in (None, host) and (kept := self.hosts.kept(moved_from)):
            kept.note_gone(state.uuid)           # migrated away: the embedded host no longer keeps it
        derived = {k: parsed[k] for k in OBSERVED if k in parsed}
        derived.update(
            power_state=state.power_state, domid=state.domid, resident_on=host if running else NULL_REF,
            domarch=self.hosts.facts(host).arch if running else "",
            metrics=derived_ref("VM_metrics", state.uuid),
            is_a_template=parsed["stamp"].get("template") == "true",
        )
        ops = []
        if current is None:
            base = self._expected.pop(state.uuid, None) or {}
            record = self.store.new_record("VM", {**base, **derived, "uuid": state.uuid})
            record.update(_split_maps({field: base.get(field, {}) for field in domxml.XML_KEYS}, parsed))
            record["allowed_operations"] = allowed_operations(record)
            ops.append(add("VM", ref, record))
        else:
            derived["allowed_operations"] = allowed_operations({**current, **derived})
            ops.append(mod("VM", ref, {k: v for k, v in derived.items() if k not in domxml.XML_KEYS}))
            # merged with the store's keys when applied, under the store's lock: a setter's write
            # between this read and that write is not lost
            ops.append(modify("VM", ref, lambda rec: _split_maps(rec, parsed)))
        ops += self._metrics_ops(host, state, parsed, current)
        ops += self._console_ops(ref, state, parsed, current)
        ops += vbd_ops(self.store, self.volumes, self.storage, ref, state.uuid, host, parsed, configured,
                       parsed["devices"] if running else None)
        ops += vif_ops(self.store, self.networks, ref, state.uuid, host, configured_vifs,
                       parsed["vifs"] if running else None)
        return ops

    def gone(self, ref):
        rec = self.store.find("VM", ref)
        ops = [delete("VM", ref), delete("VM_metrics", rec["metrics"])]
        ops += [delete("console", c) for c in rec["consoles"]]
        ops += [delete("VBD", v) for v in rec["VBDs"]]
        ops += [delete("VIF", v) for v in rec["VIFs"]]
        return ops

    def after_apply(self, host, states) -> None:
        vbds = [v for s in states if (rec := self.store.find("VM", vm_ref(s.uuid))) for v in rec["VBDs"]]
        if vbds:
            self.storage.tables["VBD"].refresh(self.store, vbds)
        vifs = [v for s in states if (rec := self.store.find("VM", vm_ref(s.uuid))) for v in rec["VIFs"]]
        if vifs:
            self.networks.vif_table.refresh(self.store, vifs)
            self.networks.enforce_qos(host)
        if kept := self.hosts.kept(host):
            kept.note(states)

    def after_gone(self, host, key) -> None:
        if kept := self.hosts.kept(host):
            kept.note_gone(key)

    def after_event(self, host, key, what) -> None:
        if what == "reboot":
            self._rebooted(key)

    def _rebooted(self, uuid: str) -> None:
        """libvirt resets a rebooting guest in place (same process, same domid); xapi builds a new
        domain then, so start_time moves to now, as xapi's does.  clean_reboot waits on this."""
        ref = derived_ref("VM_metrics", uuid)
        if self.store.exists("VM_metrics", ref):
            self.store.update("VM_metrics", ref, {"start_time": DateTime.now(), "last_updated": DateTime.now()})

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
        sampler = self.hosts.sampler
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
