"""A domain as libvirt reports it, in Xen-API's terms: the power-state table and ``DomainState``.

``POWER_STATES`` is the one place libvirt states become Xen-API power states; ``describe`` reads
one domain into a ``DomainState`` (libvirt's own state and reason kept as text for surfacing why).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import libvirt

from xenapi.backend.events import libvirt_names

# libvirt state -> (Xen-API power_state, the same when a managed-save image exists).
# SHUTDOWN means "being shut down": the guest still runs.  NOSTATE is decided by isActive().
POWER_STATES: dict[int, tuple[str, str]] = {
    libvirt.VIR_DOMAIN_RUNNING: ("Running", "Running"),
    libvirt.VIR_DOMAIN_BLOCKED: ("Running", "Running"),
    libvirt.VIR_DOMAIN_PAUSED: ("Paused", "Paused"),
    libvirt.VIR_DOMAIN_PMSUSPENDED: ("Paused", "Paused"),
    libvirt.VIR_DOMAIN_SHUTDOWN: ("Running", "Running"),
    libvirt.VIR_DOMAIN_SHUTOFF: ("Halted", "Suspended"),
    libvirt.VIR_DOMAIN_CRASHED: ("Halted", "Halted"),
}
_POWER_STATE_BY_ACTIVITY = {True: "Running", False: "Halted"}
# For DomainState.libvirt_state: (state, reason) -> "PAUSED:IOERROR".  Reason constants are
# VIR_DOMAIN_<STATE>_<REASON>, except the shutdown *flags* and PMSUSPENDED_DISK_* sharing the prefixes.
_STATE_NAMES = {getattr(libvirt, f"VIR_DOMAIN_{name}"): name for name in (
    "NOSTATE", "RUNNING", "BLOCKED", "PAUSED", "SHUTDOWN", "SHUTOFF", "CRASHED", "PMSUSPENDED")}
_NOT_REASONS = {"ACPI_POWER_BTN", "DEFAULT", "GUEST_AGENT", "INITCTL", "PARAVIRT", "SIGNAL",
                "DISK_UNKNOWN"}
_STATE_TEXTS = {(state, reason): f"{name}:{reason_name}"
                for state, name in _STATE_NAMES.items()
                for reason, reason_name in libvirt_names(f"VIR_DOMAIN_{name}_").items()
                if reason_name not in _NOT_REASONS}


@dataclass(frozen=True)
class DomainState:
    uuid: str
    name: str
    power_state: str       # Halted | Paused | Running | Suspended
    domid: int             # -1 when not running
    xml: str               # XMLDesc(0): the live definition when running, else the persistent one
    libvirt_state: str = ""   # e.g. "PAUSED:IOERROR", for surfacing why (reason names vary per state)
    config_xml: str | None = ""   # a running domain's persistent definition ("": as xml; None: not read)


def power_state(state: int, has_managed_save: bool, is_active: Callable[[], bool]) -> str:
    """The Xen-API power state for a libvirt (state, managed-save) pair."""
    if state not in POWER_STATES:                       # NOSTATE, or a state newer than us
        return _POWER_STATE_BY_ACTIVITY[bool(is_active())]
    return POWER_STATES[state][has_managed_save]


def describe(dom: libvirt.virDomain, state: int, reason: int, has_managed_save: bool, *,
             with_config: bool = True) -> DomainState:
    """The domain's ``DomainState`` for the (state, reason) just read from it.  ``with_config``: also
    read a running domain's persistent definition (a disk added to it alone, VBD.create on a
    running VM, is a VBD too); a bulk listing leaves it out (config_xml None: not read)."""
    power = power_state(state, has_managed_save, dom.isActive)
    running = power in ("Running", "Paused")
    config_xml = ""
    if running and dom.isPersistent():
        config_xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) if with_config else None
    return DomainState(uuid=dom.UUIDString(), name=dom.name(), power_state=power, domid=_domid(dom, power),
                       xml=dom.XMLDesc(0), libvirt_state=_state_text(state, reason), config_xml=config_xml)


def _state_text(state: int, reason: int) -> str:
    return _STATE_TEXTS.get((state, reason)) or f"{_STATE_NAMES.get(state, state)}:{reason}"


def _domid(dom: libvirt.virDomain, power: str) -> int:
    """The ID for the state just read: a handle keeps the ID of its lookup, which the domain may
    have lost (stopped since) or not had yet (started since)."""
    if power not in ("Running", "Paused"):
        return -1
    domid = dom.ID()
    return domid if domid != -1 else dom.connect().lookupByUUIDString(dom.UUIDString()).ID()
