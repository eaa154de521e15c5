"""What a host connection does to its domains: read their states, define, undefine, edit, power.

``DomainOperations`` is mixed into ``HostConnection`` (``xenapi.backend.connection``), which
provides ``uri`` and ``_using(operation)``: the live connection, with the liveness check and the
translation of libvirt errors into ``HOST_NOT_LIVE``/``BACKEND_FAILURE``.  So every method here
is one libvirt exchange and none handles errors of its own, beyond a driver refusing a flag.
A mixin rather than a helper object, because callers (``conn.start(uuid)``) see one connection.

Domains are addressed by UUID string; sizes come in bytes and go to libvirt in KiB.
"""
from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import Callable, TypeVar

import libvirt
from defusedxml.ElementTree import fromstring as parse_untrusted

from xenapi.backend import domxml
from xenapi.backend.libvirt_errors import is_unsupported, unless_gone, with_optional_flags
from xenapi.backend.power_states import DomainState, describe

log = logging.getLogger(__name__)

T = TypeVar("T")

# Drivers whose dom.reboot() only asks the guest, then send VIR_DOMAIN_EVENT_ID_REBOOT when it resets
# (QEMU's ACPI reboot: the guest powers off, libvirt resets it in the same process).
REBOOT_EVENT_DRIVERS = frozenset({"QEMU"})

_CONFIG, _LIVE = libvirt.VIR_DOMAIN_AFFECT_CONFIG, libvirt.VIR_DOMAIN_AFFECT_LIVE
_UNDEFINE_FLAGS = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
_UNDEFINE_FLAGS_IF_SUPPORTED = (libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                                | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)


class DomainOperations:
    """Domain reads and changes on top of the host's ``_using``; see the module doc."""

    uri: str

    def _using(self, operation: str) -> AbstractContextManager[libvirt.virConnect]:
        raise NotImplementedError               # HostConnection's

    def _on_domain(self, operation: str, uuid: str, action: Callable[[libvirt.virDomain], T]) -> T:
        with self._using(operation) as conn:
            return action(conn.lookupByUUIDString(uuid))

    # ---- reading ------------------------------------------------------------------------------

    def list_domains(self) -> list[DomainState]:
        """Every domain with its power state: two bulk calls, then one XMLDesc per domain."""
        with self._using("list_domains") as conn:
            saved = {d.UUIDString() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_MANAGEDSAVE)}
            try:
                states = [(dom, s["state.state"], s["state.reason"])
                          for dom, s in conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)]
            except libvirt.libvirtError as e:
                if not is_unsupported(e):
                    raise
                states = [(dom, *state) for dom in conn.listAllDomains(0)
                          if (state := unless_gone(dom.state)) is not None]
            described = (unless_gone(lambda: describe(dom, state, reason, dom.UUIDString() in saved, with_config=False))
                         for dom, state, reason in states)
            return [d for d in described if d is not None]

    def domain_state(self, uuid: str) -> DomainState:
        def read(dom: libvirt.virDomain) -> DomainState:
            state, reason = dom.state()
            return describe(dom, state, reason, bool(dom.hasManagedSaveImage(0)))
        return self._on_domain("domain_state", uuid, read)

    def xml(self, uuid: str, inactive: bool = False) -> str:
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        return self._on_domain("xml", uuid, lambda dom: dom.XMLDesc(flags))

    # ---- definition ---------------------------------------------------------------------------

    def define(self, xml: str) -> str:
        """Define (or redefine, same uuid) a persistent domain; returns its uuid."""
        with self._using("define") as conn:
            dom = with_optional_flags(lambda flags: conn.defineXMLFlags(xml, flags),
                                      0, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
            log.info("event=domain_defined uri=%s uuid=%s", self.uri, dom.UUIDString())
            return dom.UUIDString()

    def undefine(self, uuid: str) -> None:
        """Forget the domain with its managed save, snapshot metadata (and NVRAM where supported).
        Drivers without those (LXC takes no undefine flag at all) get the flags they accept."""
        def forget(dom: libvirt.virDomain) -> None:
            with_optional_flags(lambda flags: with_optional_flags(dom.undefineFlags, flags, _UNDEFINE_FLAGS_IF_SUPPORTED),
                                0, _UNDEFINE_FLAGS)
        self._on_domain("undefine", uuid, forget)

    def set_title(self, uuid: str, text: str) -> None:
        title = domxml.one_line(text) or None          # None removes the element
        self._on_domain("set_title", uuid, lambda dom: dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_TITLE, title, None, None, _affected(dom)))

    def set_description(self, uuid: str, text: str) -> None:
        description = domxml.xml_safe(text) or None
        self._on_domain("set_description", uuid, lambda dom: dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, description, None, None, _affected(dom)))

    def set_stamp(self, uuid: str, stamp: dict[str, str]) -> None:
        """Replace our ownership stamp (keys domxml reserves for itself are kept)."""
        self._on_domain("set_stamp", uuid, lambda dom: _write_stamp(dom, stamp, keep_reserved=True))

    def set_memory(self, uuid: str, static_max: int, dynamic_max: int, *, static_min: int | None = None) -> None:
        """Persistent memory sizes in bytes (for a halted VM); static_min rides in the stamp."""
        def write(dom: libvirt.virDomain) -> None:
            dom.setMemoryFlags(_kib(static_max), _CONFIG | libvirt.VIR_DOMAIN_MEM_MAXIMUM)
            dom.setMemoryFlags(_kib(dynamic_max), _CONFIG)
            if static_min is not None:
                stamp = _read_stamp(dom) | {domxml.STAMP_STATIC_MIN_KEY: str(static_min)}
                if static_min == dynamic_max:
                    del stamp[domxml.STAMP_STATIC_MIN_KEY]
                _write_stamp(dom, stamp, keep_reserved=False)
        self._on_domain("set_memory", uuid, write)

    def set_vcpus(self, uuid: str, vcpus_max: int, vcpus_at_startup: int) -> None:
        """Persistent vCPU counts; the maximum first, since libvirt clamps the current count to it."""
        def write(dom: libvirt.virDomain) -> None:
            dom.setVcpusFlags(vcpus_max, _CONFIG | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
            dom.setVcpusFlags(vcpus_at_startup, _CONFIG)
        self._on_domain("set_vcpus", uuid, write)

    # ---- devices of a running guest -----------------------------------------------------------

    def attach_live(self, uuid: str, device_xml: str) -> None:
        """Hot-plug a device into the running guest only (its definition is written separately)."""
        self._on_domain("attach_device", uuid, lambda dom: dom.attachDeviceFlags(device_xml, _LIVE))

    def detach_live(self, uuid: str, device_xml: str) -> None:
        """Ask the running guest to release a device (QEMU: the guest must cooperate; the device
        stays until it does, and the next observation says so)."""
        self._on_domain("detach_device", uuid, lambda dom: dom.detachDeviceFlags(device_xml, _LIVE))

    def change_config(self, uuid: str, device_xml: str, *, attach: bool) -> bool:
        """Add (or remove) a device in the persistent definition alone, without rewriting the whole
        domain (a define validates all of it); False where the driver cannot (the test driver):
        the caller then defines the edited domain."""
        def change(dom):
            try:
                (dom.attachDeviceFlags if attach else dom.detachDeviceFlags)(device_xml, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
                return True
            except libvirt.libvirtError as e:
                if is_unsupported(e):
                    return False
                raise
        return self._on_domain("attach_device_config" if attach else "detach_device_config", uuid, change)

    def update_live(self, uuid: str, device_xml: str) -> None:
        """Change a running guest's device in place (a CD drive's medium)."""
        self._on_domain("update_device", uuid, lambda dom: dom.updateDeviceFlags(device_xml, _LIVE))

    # ---- power --------------------------------------------------------------------------------

    def start(self, uuid: str, paused: bool = False) -> None:
        self._on_domain("start", uuid, lambda dom: _create(dom, paused))

    def restore(self, uuid: str, paused: bool = False) -> None:
        """Resume a managed-save image (libvirt's create() restores one when present)."""
        self._on_domain("restore", uuid, lambda dom: _create(dom, paused))

    def shutdown(self, uuid: str) -> None:
        """Ask the guest to shut down (the driver's default: ACPI, agent, PV protocol); returns at once."""
        self._on_domain("shutdown", uuid, lambda dom: dom.shutdownFlags(0))

    def reboot(self, uuid: str) -> bool:
        """Ask the guest to reboot; returns at once.  True when the reboot is still to happen and
        the driver will report it with a REBOOT event once the guest has reset (QEMU); False when
        the driver has finished it within the call (test) or reports nothing one could wait for."""
        def reboot(dom: libvirt.virDomain) -> bool:
            dom.reboot(0)
            return dom.connect().getType() in REBOOT_EVENT_DRIVERS
        return self._on_domain("reboot", uuid, reboot)

    def destroy(self, uuid: str) -> None:
        self._on_domain("destroy", uuid, lambda dom: dom.destroy())

    def reset(self, uuid: str) -> None:
        self._on_domain("reset", uuid, lambda dom: dom.reset(0))

    def pause(self, uuid: str) -> None:
        self._on_domain("pause", uuid, lambda dom: dom.suspend())

    def unpause(self, uuid: str) -> None:
        self._on_domain("unpause", uuid, lambda dom: dom.resume())

    def save(self, uuid: str) -> None:
        """Suspend to libvirt's managed-save image; the domain then reads as Suspended."""
        self._on_domain("save", uuid, lambda dom: dom.managedSave(0))

    def discard_save(self, uuid: str) -> None:
        """Delete the managed-save image: a Suspended domain becomes Halted (hard_shutdown)."""
        self._on_domain("discard_save", uuid, lambda dom: dom.managedSaveRemove(0))

    # ---- migration ----------------------------------------------------------------------------

    def migrate(self, uuid: str, dest_uri: str, params: dict, flags: int) -> None:
        """Peer-to-peer migration (``migrateToURI3``): this host's libvirtd dials ``dest_uri``
        itself; returns when the domain runs there (or raises, the domain still here)."""
        self._on_domain("migrate", uuid, lambda dom: dom.migrateToURI3(dest_uri, params, flags))

    def job_stats(self, uuid: str) -> dict:
        """The domain's current job (a migration) as libvirt's typed stats (``type``,
        ``data_total``, ``data_processed``, ``disk_total``, ...); ``{}`` when none runs or the
        domain has gone (a migration that just finished)."""
        def read(dom: libvirt.virDomain) -> dict:
            try:
                stats = dom.jobStats(0)
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return {}
                if not is_unsupported(e):
                    raise
                info = dom.jobInfo()       # [type, time elapsed, time remaining, data total, processed, remaining, ...]
                stats = {"type": info[0], "time_elapsed": info[1], "data_total": info[3],
                         "data_processed": info[4], "data_remaining": info[5]}
            return stats if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE else {}
        return self._on_domain("job_stats", uuid, read)

    def completed_job_stats(self, uuid: str) -> dict:
        """The stats of the domain's last completed job (its downtime, time elapsed), ``{}`` if
        the driver keeps none."""
        def read(dom: libvirt.virDomain) -> dict:
            try:
                return dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            except libvirt.libvirtError as e:
                if is_unsupported(e) or e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return {}
                raise
        return self._on_domain("completed_job_stats", uuid, read)

    def abort_job(self, uuid: str) -> bool:
        """Abort the domain's running job (a migration: the domain stays here); False if no job
        was running any more."""
        def abort(dom: libvirt.virDomain) -> bool:
            try:
                dom.abortJob()
                return True
            except libvirt.libvirtError as e:
                if e.get_error_code() in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_NO_DOMAIN):
                    return False
                raise
        return self._on_domain("abort_job", uuid, abort)


# ---- helpers that only talk to one libvirt domain -------------------------------------------

def _create(dom: libvirt.virDomain, paused: bool) -> None:
    if not paused:
        dom.create()
        return
    try:
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    except libvirt.libvirtError as e:
        if not is_unsupported(e):                # the test driver refuses START_PAUSED
            raise
        dom.create()
        dom.suspend()


def _affected(dom: libvirt.virDomain) -> int:
    """CONFIG for persistent domains, plus LIVE when running: the change sticks and shows now."""
    return (_CONFIG if dom.isPersistent() else 0) | (_LIVE if dom.isActive() else 0)


def _read_stamp(dom: libvirt.virDomain) -> dict[str, str]:
    flags = _CONFIG if dom.isPersistent() else 0
    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, domxml.STAMP_NAMESPACE, flags)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return {}
        raise
    return dict(parse_untrusted(text).attrib)


def _write_stamp(dom: libvirt.virDomain, stamp: dict[str, str], *, keep_reserved: bool) -> None:
    if keep_reserved:
        reserved = {k: v for k, v in _read_stamp(dom).items() if k in domxml.STAMP_RESERVED_KEYS}
        stamp = reserved | {k: v for k, v in stamp.items() if k not in domxml.STAMP_RESERVED_KEYS}
    text = domxml.stamp_xml(stamp) if stamp else None            # None removes the element
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, text, domxml.STAMP_PREFIX if text else None,
                    domxml.STAMP_NAMESPACE, _affected(dom))


def _kib(size_bytes: int) -> int:
    return -(-int(size_bytes) // 1024)
