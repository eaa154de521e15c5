"""VM work that spans libvirt and the store: define, clone, destroy, resize, and the setters whose
value lives in the domain's XML.  Each writes libvirt first, then lets the reconciler observe the
result, so the store never holds what libvirt refused.  Whatever rewrites a domain's definition does
it under the VM's object lock (store.object_lock), so two edits of one domain never cross.
"""
from __future__ import annotations

import logging
import time

from xenapi import errors as E
from xenapi.state import lifecycle, operations
from xenapi.services import lxc_roots
from xenapi.backend import domxml, rewrite
from xenapi.errors import XenAPIError
from xenapi.services.hosts import libvirt_name
from xenapi.model.types import NULL_REF
from classes.vm import OBSERVED
from xenapi.observers.domains import vm_ref
from xenapi.observers.vbds import vbd_ref
from xenapi.services import templates, vm_disks
from xenapi.state.store import new_uuid

log = logging.getLogger(__name__)

# Fields derived by the server (besides those libvirt owns, declared observed): never taken from a client.
_RUNTIME = frozenset({"uuid", "consoles", "VBDs", "allowed_operations", "current_operations", "is_control_domain",
                      "guest_metrics"})


def _stamp(rec: dict) -> dict[str, str]:
    return {"template": "true" if rec["is_a_template"] else "false"}


def _store_owned(rec: dict) -> dict:
    """What only the store keeps of a record: its unobserved fields, and the keys of platform and
    HVM_boot_params a domain's XML has no place for."""
    owned = {k: v for k, v in rec.items() if k not in _RUNTIME and k not in OBSERVED}
    for field, xml_keys in domxml.XML_KEYS.items():
        owned[field] = {k: v for k, v in rec[field].items() if k not in xml_keys}
    return owned


class VMs:
    def __init__(self, store, hosts, reconciler, storage, pxe, *, state: str, xen_boot: str,
                 clean_shutdown_timeout: float):
        self.store = store
        self.hosts = hosts
        self.reconciler = reconciler
        self.storage = storage
        self.pxe = pxe                           # xenapi/services/templates.py: pxe: templates served
        self.state = state                       # the server's state directory (containers' own roots)
        self.xen_boot = xen_boot
        self.clean_shutdown_timeout = clean_shutdown_timeout

    def operation(self, ctx, vm: str, op: str):
        """``with vms.operation(ctx, vm, op) as rec:`` run ``op`` on ``vm``, checked against the VM's
        operation table and shown in current_operations meanwhile (xenapi/state/lifecycle.py)."""
        return lifecycle.operation(ctx, vm, op, self.reconciler)

    def power(self, ctx, vm: str, op: str, action, args=(), *, until=None, timeout_code: str = "") -> None:
        """A power operation: guard ``op``, ask libvirt (``action(conn, uuid, *args)``), re-observe.
        With ``until(ctx, vm)``, which reads what "finished" means before libvirt is asked, wait for
        it (up to clean_shutdown_timeout, else ``timeout_code``) unless the action returns False:
        it finished within the call."""
        with self.operation(ctx, vm, op) as rec:
            host = self.hosts.home_of(vm)
            conn = self.hosts.connection(host)
            finished = until(ctx, vm) if until else None
            pending = action(conn, rec["uuid"], *args)
            self.reconciler.refresh(host, rec["uuid"])
            if finished and pending is not False:
                self._wait_until(ctx, vm, host, rec["uuid"], finished, timeout_code)

    def _wait_until(self, ctx, vm: str, host: str, uuid: str, finished, timeout_code: str) -> None:
        """Wait for a guest to finish what it was asked (a clean shutdown or reboot), within the
        configured time; after a timeout the VM is left as it is (still running), ready for the next
        operation, e.g. a hard shutdown."""
        timeout = self.clean_shutdown_timeout
        deadline = time.monotonic() + timeout
        ctx.allow_cancel(True)
        try:
            while not finished():
                ctx.check_cancelled()
                if time.monotonic() >= deadline:
                    raise XenAPIError(timeout_code, vm, f"{timeout:g}")
                self.store.wait(self.store.generation, min(0.5, deadline - time.monotonic()))
                self.reconciler.refresh(host, uuid)     # events can be missed; re-read cheaply
        finally:
            ctx.allow_cancel(False)

    def create(self, ctx, values: dict) -> str:
        host = values.get("affinity", NULL_REF)
        if host == NULL_REF or not self.store.exists("host", host):
            host = self.hosts.master
        conn = self.hosts.connection(host)
        uuid = new_uuid()
        record = self.store.new_record("VM", values, uuid)
        record["affinity"] = values.get("affinity", NULL_REF)
        virt_type, state = self.hosts.virt_type(host), self.state
        if virt_type == "lxc":          # a container never shares the host's / (xenapi/services/lxc_roots.py)
            record["platform"] = lxc_roots.own_root(state, uuid, record["platform"])
        try:
            xml = domxml.build({**record, "stamp": _stamp(record)}, virt_type, uuid=uuid,
                               name=libvirt_name(record["name_label"], uuid), xen_boot=self.xen_boot)
            self._define(host, conn, uuid, xml, _store_owned(record))
        except Exception:
            lxc_roots.release_root(state, uuid, record["platform"])
            raise
        return vm_ref(uuid)

    def _define(self, host: str, conn, uuid: str, xml: str, owned: dict) -> None:
        """Define in libvirt, then observe; what the store alone keeps waits for the first observation."""
        self.reconciler.domains.expect(uuid, owned)
        try:
            conn.define(xml)
        except Exception:
            self.reconciler.domains.unexpect(uuid)
            raise
        self.reconciler.refresh(host, uuid)

    def clone(self, ctx, vm: str, rec: dict, new_name: str, copy_to: str | None = None) -> str:
        """A new VM like ``vm``: its writable disks cloned, or copied into SR ``copy_to`` (NULL:
        each disk's own SR); read-only disks and CDs shared (xenapi/services/vm_disks.py)."""
        host = self.hosts.home_of(vm)
        conn = self.hosts.connection(host)
        source = conn.xml(rec["uuid"], inactive=True)
        outside = rewrite.writable_disks(source)
        if outside:
            raise XenAPIError(E.OPERATION_NOT_ALLOWED, "the VM has writable disks outside any SR ("
                              + ", ".join(outside) + "); put them in a storage repository to clone them")
        uuid = new_uuid()
        storage, state = self.storage, self.state
        virt_type = self.hosts.virt_type(host)
        if rec["is_a_template"]:
            templates.check(rec, virt_type)
            self.pxe.plan(rec, host, virt_type)     # a pxe: template: can it be served here?
        container = virt_type == "lxc"
        with vm_disks.Made(storage, ctx) as made:
            disks = vm_disks.new_disks(storage, ctx, rec, host, copy_to, made)
            xml = rewrite.clone(source, uuid=uuid, name=libvirt_name(new_name, uuid), title=new_name, stamp=_stamp(rec))
            if container:                    # never the same root as its source: an empty one of its own
                root = lxc_roots.own_root(state, uuid, {})[lxc_roots.ROOT_KEY]
                xml = rewrite.set_container_root(xml, root)
            for vbd in rec["VBDs"]:
                b = self.store.get("VBD", vbd)
                slot = int(b["userdevice"])
                new_source, kept = disks.get(slot, (None, {k: b[k] for k in vm_disks._VBD_KEPT}))
                if new_source is not None:
                    xml = rewrite.set_source(xml, slot, new_source)
                storage.expect_vbd(vbd_ref(uuid, slot), kept)
            owned = {k: v for k, v in _store_owned(rec).items()
                     if k not in ("blocked_operations", "is_default_template", "snapshots", "children")}
            try:
                self._define(host, conn, uuid, xml, {**owned, "parent": NULL_REF})
            except Exception:
                if container:
                    lxc_roots.release_root(state, uuid, {lxc_roots.ROOT_KEY: root})
                raise
        return vm_ref(uuid)

    def provision(self, ctx, vm: str, rec: dict) -> None:
        """xapi's order: the VM stops being a template first, then its disks are made."""
        host = self.hosts.home_of(vm)
        virt_type = self.hosts.virt_type(host)
        templates.check(rec, virt_type)
        pxe = self.pxe.plan(rec, host, virt_type)
        # a pxe: template's VM: its VIF and per-MAC PXE configuration, undone if what follows fails
        with self.pxe.serving(ctx, vm, pxe):
            self.set_is_a_template(ctx, vm, False)      # lifecycle.check let only templates through
            if rec["other_config"].get("disks"):
                vm_disks.provision(self.storage, ctx, vm, self.store.get("VM", vm))
            tarball = rec["other_config"].get("lxc_tarball")
            if templates.kind_of(rec, virt_type)[0] == "lxc" and tarball:
                templates.unpack_root(tarball, rec["platform"][lxc_roots.ROOT_KEY])

    def destroy(self, ctx, vm: str, rec: dict) -> None:
        host = self.hosts.home_of(vm)
        with self.store.object_lock("VM", vm):      # no setter's redefinition may land after the undefine
            self.hosts.connection(host).undefine(rec["uuid"])
            self.reconciler.forget(rec["uuid"])
        lxc_roots.release_root(self.state, rec["uuid"], rec["platform"])
        self.pxe.release(host, rec)      # its per-MAC PXE configuration, if any

    def set_memory(self, ctx, vm: str, rec: dict, static_min: int, static_max: int, dynamic_min: int,
                   dynamic_max: int) -> None:
        if dynamic_min != dynamic_max:
            raise XenAPIError(E.VALUE_NOT_SUPPORTED, "memory_dynamic_min", str(dynamic_min),
                              "libvirt keeps one current memory size: dynamic_min must equal dynamic_max")
        self._on_domain(vm, lambda conn, uuid: conn.set_memory(uuid, static_max, dynamic_max, static_min=static_min))

    def set_vcpus(self, ctx, vm: str, rec: dict, vcpus_max: int, at_startup: int) -> None:
        self._on_domain(vm, lambda conn, uuid: conn.set_vcpus(uuid, vcpus_max, at_startup))

    # -- setters with an effect in libvirt -------------------------------------------------
    def set_name_label(self, ctx, vm: str, value: str) -> None:
        self._on_domain(vm, lambda conn, uuid: conn.set_title(uuid, value))

    def set_name_description(self, ctx, vm: str, value: str) -> None:
        self._on_domain(vm, lambda conn, uuid: conn.set_description(uuid, value))

    def set_is_a_template(self, ctx, vm: str, value: bool) -> None:
        rec = self.store.get("VM", vm)
        if value and rec["power_state"] != "Halted":
            raise XenAPIError(E.VM_BAD_POWER_STATE, vm, "halted", rec["power_state"].lower())
        self._on_domain(vm, lambda conn, uuid: conn.set_stamp(uuid, _stamp({**rec, "is_a_template": value})))

    def set_blocked_operations(self, ctx, vm: str, value: dict) -> None:
        """allowed_operations is derived: blocking an operation takes it out at once."""
        with operations.guard():
            rec = self.store.get("VM", vm)
            self.store.update("VM", vm, {"blocked_operations": value,
                                         "allowed_operations": lifecycle.allowed_operations(
                                             {**rec, "blocked_operations": value})})

    def set_in_xml(self, field: str):
        def setter(ctx, vm: str, value):
            rec = self.store.get("VM", vm)
            # the maps split between XML and store change the persistent definition: the next boot's
            if rec["power_state"] != "Halted" and field not in domxml.XML_KEYS:
                raise XenAPIError(E.VM_BAD_POWER_STATE, vm, "halted", rec["power_state"].lower())
            if field in domxml.XML_KEYS:        # its other keys are the store's: in before the observation
                self.store.update("VM", vm, {field: value})
            def edit(conn, uuid):
                try:
                    xml = rewrite.set_field(conn.xml(uuid, inactive=True), field, value)
                except domxml.DomainXMLError as e:
                    raise XenAPIError(E.VALUE_NOT_SUPPORTED, field, str(value), str(e)) from None
                conn.define(xml)
            self._on_domain(vm, edit)
        return setter

    def _on_domain(self, vm: str, action) -> None:
        """``action`` on the VM's domain (it may read and redefine its XML), then observed; under
        the VM's object lock (held already by a generated setter), so edits never cross."""
        rec = self.store.get("VM", vm)
        if rec["is_control_domain"]:
            raise XenAPIError(E.OPERATION_NOT_ALLOWED, "the control domain is not a libvirt domain")
        host = self.hosts.home_of(vm)
        with self.store.object_lock("VM", vm):
            action(self.hosts.connection(host), rec["uuid"])
            self.reconciler.refresh(host, rec["uuid"])
