"""One long-lived libvirt connection per host URI: liveness, reconnection and domain operations.

A ``HostConnection`` is shared by every thread (libvirt is thread-safe and the binding releases
the GIL around each call).  Its contract:

* When the host is not live, every operation raises ``HOST_NOT_LIVE`` at once; nothing waits
  for libvirtd.
* A libvirt failure becomes ``BACKEND_FAILURE [uri, operation, code, message]``.  A failure of
  the connection itself (RPC/remote errors that a ping confirms) becomes ``HOST_NOT_LIVE`` and
  starts the reconnect loop, as does libvirt's close callback (daemon died, keep-alive timeout).
* Reconnecting retries with exponential backoff on a ``libvirt-reconnect-<n>`` thread, then
  re-registers every callback and reports ``on_liveness(uri, True)``; the caller relists then,
  because events sent while we were away are lost.
* Nothing waits on a frozen libvirtd (stopped, wedged) without a bound.  ``libvirt.open`` has no
  timeout of its own, so it runs on a ``libvirt-open-<n>`` thread that callers wait for up to
  ``open_timeout`` seconds: past that, ``open`` raises ``HOST_NOT_LIVE`` (and the reconnect loop
  keeps waiting for the same attempt, which installs itself once the daemon answers).  On an open
  connection, libvirt's keep-alive closes it after ``interval * (count + 1)`` seconds without an
  answer; a call blocked meanwhile then fails with ``HOST_NOT_LIVE``.
* Event callbacks run on libvirt's loop thread and only call ``on_domain_event(uri, uuid, kind)``.
  ``on_liveness(uri, live)`` comes from that thread, the reconnect thread or the thread whose call
  found the connection dead, one report at a time and only on change.  Both handlers must
  return promptly (enqueue and go).

Domains are addressed by UUID string.  Power states are Xen-API's (see ``POWER_STATES``).
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import libvirt
from defusedxml.ElementTree import fromstring as parse_untrusted

from xenapi.backend import domxml
from xenapi.backend.events import (deregister_domain_events, ensure_event_loop, libvirt_names,
                                   register_domain_events)
from xenapi.backend.hostinfo import HostFacts, read_host_facts
from xenapi.errors import BACKEND_FAILURE, HOST_NOT_LIVE, XenAPIError

log = logging.getLogger(__name__)

T = TypeVar("T")
DomainEventHandler = Callable[[str, str, str], None]     # (host uri, domain uuid, kind)
LivenessHandler = Callable[[str, bool], None]            # (host uri, live)

# BACKEND_FAILURE's code parameter when the domain does not exist (any driver).
ERR_NO_DOMAIN = str(libvirt.VIR_ERR_NO_DOMAIN)

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

# Errors that may mean the connection, not the call, failed (Nova/VDSM use the same sets).
_CONNECTION_ERROR_DOMAINS = {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE}
_CONNECTION_ERROR_CODES = {libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR,
                           libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN}
# How drivers refuse a flag or call they do not implement (virCheckFlags gives INVALID_ARG).
_UNSUPPORTED_CODES = {libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_INVALID_ARG}
_CLOSE_REASONS = {libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
                  libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "eof",
                  libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive",
                  libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "client"}

# Drivers whose dom.reboot() only asks the guest, then send VIR_DOMAIN_EVENT_ID_REBOOT when it resets
# (QEMU's ACPI reboot: the guest powers off, libvirt resets it in the same process).
REBOOT_EVENT_DRIVERS = frozenset({"QEMU"})

# Defaults of [libvirt] open_timeout, keepalive_interval and keepalive_count (see xenapi.conf).
OPEN_TIMEOUT = 10.0
KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 5, 3
_CONFIG, _LIVE = libvirt.VIR_DOMAIN_AFFECT_CONFIG, libvirt.VIR_DOMAIN_AFFECT_LIVE
_UNDEFINE_FLAGS = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
_UNDEFINE_FLAGS_IF_SUPPORTED = (libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                                | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
_reconnect_thread_numbers = itertools.count(1)
_open_thread_numbers = itertools.count(1)


@dataclass(frozen=True)
class DomainState:
    uuid: str
    name: str
    power_state: str       # Halted | Paused | Running | Suspended
    domid: int             # -1 when not running
    xml: str               # XMLDesc(0): the live definition when running, else the persistent one
    libvirt_state: str = ""   # e.g. "PAUSED:IOERROR", for surfacing why (reason names vary per state)


def power_state(state: int, has_managed_save: bool, is_active: Callable[[], bool]) -> str:
    """The Xen-API power state for a libvirt (state, managed-save) pair."""
    if state not in POWER_STATES:                       # NOSTATE, or a state newer than us
        return _POWER_STATE_BY_ACTIVITY[bool(is_active())]
    return POWER_STATES[state][has_managed_save]


def _state_text(state: int, reason: int) -> str:
    return _STATE_TEXTS.get((state, reason)) or f"{_STATE_NAMES.get(state, state)}:{reason}"


def is_unsupported(error: libvirt.libvirtError) -> bool:
    return error.get_error_code() in _UNSUPPORTED_CODES


class OpenTimedOut(Exception):
    """libvirt.open did not finish within the deadline: the daemon accepts but does not answer."""


class _Opening:
    """One ``libvirt.open`` on its own thread, which nobody can interrupt: callers wait for it with
    a deadline, and a result nobody will take any more (``abandon``) is closed when it arrives."""

    def __init__(self, uri: str):
        self.uri = uri
        self.done = threading.Event()
        self.conn: libvirt.virConnect | None = None
        self.error: libvirt.libvirtError | None = None
        self._lock = threading.Lock()
        self._abandoned = False
        threading.Thread(target=self._run, name=f"libvirt-open-{next(_open_thread_numbers)}", daemon=True).start()

    def _run(self) -> None:
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as e:
            self.error = e
            conn = None
        with self._lock:
            abandoned = self._abandoned
            self.conn = None if abandoned else conn
            self.done.set()
        if abandoned and conn is not None:
            _discard(conn, [])

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            conn, self.conn = self.conn, None
        if conn is not None:
            _discard(conn, [])


class HostConnection:
    """The libvirt connection to one host URI; see the module doc for the contract."""

    def __init__(self, uri: str, on_domain_event: DomainEventHandler, on_liveness: LivenessHandler,
                 *, backoff_max: float = 30.0, backoff_initial: float = 0.5, open_timeout: float = OPEN_TIMEOUT,
                 keepalive: tuple[int, int] = (KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)):
        self.uri = uri
        self._on_domain_event = on_domain_event
        self._on_liveness = on_liveness
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._open_timeout = open_timeout
        self._keepalive = keepalive
        self._lock = threading.Lock()            # guards the six fields below
        self._conn: libvirt.virConnect | None = None
        self._opening: _Opening | None = None    # an open still running (a frozen daemon holds it)
        self._callback_ids: list[int] = []
        self._generation = 0                     # bumped per connect and close; stale close callbacks see an old one
        self._reconnector: threading.Thread | None = None
        self._dead: list[tuple[libvirt.virConnect, list[int]]] = []   # lost connections to tear down
        self._closing = threading.Event()        # set by close(): stop reconnecting
        self._report_lock = threading.Lock()     # liveness reports go out one at a time, in order
        self._reported_live = False

    def __repr__(self) -> str:
        return f"HostConnection({self.uri!r}, live={self.live})"

    @property
    def live(self) -> bool:
        return self._conn is not None

    # ---- lifecycle ------------------------------------------------------------------------

    def open(self, *, keep_trying: bool = False) -> None:
        """Connect now, or raise HOST_NOT_LIVE.  keep_trying: on failure, also reconnect in the
        background and report ``on_liveness(uri, True)`` once connected.  A no-op when live."""
        ensure_event_loop()
        self._closing.clear()
        if self.live:
            return
        try:
            self._connect()
        except (libvirt.libvirtError, OpenTimedOut) as e:
            log.warning("event=host_connect_failed uri=%s message=%s", self.uri, _message(e))
            if keep_trying:
                self._start_reconnecting()
            raise XenAPIError(HOST_NOT_LIVE) from e
        with self._report_lock:                  # the caller knows; later changes are reported
            self._reported_live = self.live
        log.info("event=host_connected uri=%s", self.uri)

    def close(self) -> None:
        """Deregister, close and stop reconnecting.  Does not report liveness: the caller chose this.
        An open still in progress is abandoned (its connection is closed when it arrives)."""
        self._closing.set()
        with self._lock:
            conn, callback_ids = self._conn, self._callback_ids
            self._conn, self._callback_ids = None, []
            self._generation += 1
            reconnector = self._reconnector
            opening, self._opening = self._opening, None
        if opening is not None:
            opening.abandon()
        if conn is not None:
            _discard(conn, callback_ids)
        if reconnector is not None and reconnector is not threading.current_thread():
            reconnector.join(timeout=5)
        self._discard_dead()
        with self._report_lock:
            self._reported_live = False
        log.info("event=host_closed uri=%s", self.uri)

    def _connect(self) -> None:
        """Open and subscribe; install the connection unless closed or connected meanwhile."""
        conn = self._open_within_deadline()
        with self._lock:
            generation = self._generation + 1
        try:
            conn.registerCloseCallback(self._closed_by_libvirt, generation)
            callback_ids = register_domain_events(conn, self._domain_event)
            _enable_keepalive(conn, *self._keepalive)
        except libvirt.libvirtError:
            _discard(conn, [])
            raise
        with self._lock:
            install = self._conn is None and not self._closing.is_set()
            if install:
                self._conn, self._callback_ids, self._generation = conn, callback_ids, generation
        if not install:
            _discard(conn, callback_ids)

    def _open_within_deadline(self) -> libvirt.virConnect:
        """The connection of the open in progress (or of a new one) once it finishes; OpenTimedOut
        past ``open_timeout`` or on close(), leaving the attempt running for the next caller."""
        with self._lock:
            if self._opening is None:
                self._opening = _Opening(self.uri)
            opening = self._opening
        deadline = time.monotonic() + self._open_timeout
        while not opening.done.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if self._closing.is_set() or time.monotonic() >= deadline:
                raise OpenTimedOut(f"no answer to libvirt.open within {self._open_timeout:g} s")
        with self._lock:
            if self._opening is not opening:      # close() abandoned it, or a concurrent caller took it
                raise OpenTimedOut("the open was taken over meanwhile")
            self._opening = None
        if opening.error is not None:
            raise opening.error
        return opening.conn

    def _closed_by_libvirt(self, _conn: libvirt.virConnect, reason: int, generation: int) -> None:
        # libvirt's loop thread: record and hand off, never block here.
        self._lost(generation, f"closed:{_CLOSE_REASONS.get(reason, reason)}")

    def _lost(self, generation: int, why: str) -> None:
        with self._lock:
            if generation != self._generation or self._conn is None:
                return                            # already handled, or an older connection
            self._dead.append((self._conn, self._callback_ids))
            self._conn, self._callback_ids = None, []
        log.warning("event=host_lost uri=%s why=%s", self.uri, why)
        self._report_liveness()
        self._start_reconnecting()

    def _start_reconnecting(self) -> None:
        with self._lock:
            if self._closing.is_set() or self._reconnector is not None:
                return                            # a running loop notices the loss itself
            self._reconnector = threading.Thread(
                target=self._reconnect_loop, name=f"libvirt-reconnect-{next(_reconnect_thread_numbers)}",
                daemon=True)
            self._reconnector.start()

    def _reconnect_loop(self) -> None:
        delay = self._backoff_initial
        while not self._closing.wait(delay):
            self._discard_dead()
            if not self.live:
                try:
                    self._connect()
                except OpenTimedOut as e:         # the attempt still runs: wait for it again at once
                    delay = 0.0
                    log.info("event=host_reconnect_pending uri=%s message=%s", self.uri, e)
                    continue
                except libvirt.libvirtError as e:
                    delay = min(max(delay, self._backoff_initial) * 2, self._backoff_max)
                    log.info("event=host_reconnect_failed uri=%s retry_in=%.1f message=%s",
                             self.uri, delay, e.get_error_message())
                    continue
                log.info("event=host_reconnected uri=%s", self.uri)
                self._report_liveness()
            with self._lock:
                if self._conn is not None:        # still up after reporting: done
                    self._reconnector = None
                    return
            delay = self._backoff_initial         # lost again at once: start over
        with self._lock:
            self._reconnector = None

    def _discard_dead(self) -> None:
        with self._lock:
            dead, self._dead = self._dead, []
        for conn, callback_ids in dead:
            _discard(conn, callback_ids)

    def _report_liveness(self) -> None:
        """Tell the caller the *current* liveness if it changed, so reports from the loop thread
        and the reconnect thread can never arrive as a stale "True" after a "False"."""
        with self._report_lock:
            live = self.live
            if live == self._reported_live:
                return
            self._reported_live = live
            try:
                self._on_liveness(self.uri, live)
            except Exception:
                log.exception("event=liveness_handler_raised uri=%s live=%s", self.uri, live)

    def _domain_event(self, dom: libvirt.virDomain, kind: str) -> None:
        try:
            self._on_domain_event(self.uri, dom.UUIDString(), kind)
        except Exception:                        # never let a handler bug reach libvirt's loop
            log.exception("event=domain_event_handler_raised uri=%s kind=%s", self.uri, kind)

    # ---- the one place libvirt errors are translated ----------------------------------------

    @contextmanager
    def _using(self, operation: str) -> Iterator[libvirt.virConnect]:
        with self._lock:
            conn, generation = self._conn, self._generation
        if conn is None:
            raise XenAPIError(HOST_NOT_LIVE)
        try:
            yield conn
        except libvirt.libvirtError as e:
            if _is_connection_failure(conn, e):
                self._lost(generation, f"{operation}:{e.get_error_message()}")
                raise XenAPIError(HOST_NOT_LIVE) from e
            log.info("event=backend_failure uri=%s operation=%s code=%s message=%s",
                     self.uri, operation, e.get_error_code(), e.get_error_message())
            raise XenAPIError(BACKEND_FAILURE, self.uri, operation, e.get_error_code(),
                              e.get_error_message()) from e

    def read(self, operation: str, reader: Callable[[libvirt.virConnect], T]) -> T:
        """``reader(conn)`` on the live connection, under the liveness and error translation of
        every other call: for backend modules that read in bulk (stats)."""
        with self._using(operation) as conn:
            return reader(conn)

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
                          if (state := _unless_gone(dom.state)) is not None]
            described = (_unless_gone(lambda: _describe(dom, state, reason, dom.UUIDString() in saved))
                         for dom, state, reason in states)
            return [d for d in described if d is not None]

    def domain_state(self, uuid: str) -> DomainState:
        def read(dom: libvirt.virDomain) -> DomainState:
            state, reason = dom.state()
            return _describe(dom, state, reason, bool(dom.hasManagedSaveImage(0)))
        return self._on_domain("domain_state", uuid, read)

    def xml(self, uuid: str, inactive: bool = False) -> str:
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        return self._on_domain("xml", uuid, lambda dom: dom.XMLDesc(flags))

    def host_facts(self) -> HostFacts:
        with self._using("host_facts") as conn:
            return read_host_facts(conn, self.uri)


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


# ---- helpers that only talk to one libvirt object -------------------------------------------

def _describe(dom: libvirt.virDomain, state: int, reason: int, has_managed_save: bool) -> DomainState:
    power = power_state(state, has_managed_save, dom.isActive)
    return DomainState(uuid=dom.UUIDString(), name=dom.name(), power_state=power, domid=_domid(dom, power),
                       xml=dom.XMLDesc(0), libvirt_state=_state_text(state, reason))


def _domid(dom: libvirt.virDomain, power: str) -> int:
    """The ID for the state just read: a handle keeps the ID of its lookup, which the domain may
    have lost (stopped since) or not had yet (started since)."""
    if power not in ("Running", "Paused"):
        return -1
    domid = dom.ID()
    return domid if domid != -1 else dom.connect().lookupByUUIDString(dom.UUIDString()).ID()


def _unless_gone(call: Callable[[], T]) -> T | None:
    """The call's result, or None when the domain vanished meanwhile (listing races undefine)."""
    try:
        return call()
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


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


def with_optional_flags(call: Callable[[int], T], required: int, optional: int) -> T:
    """call(required | optional), retried with the required flags alone if the driver refuses."""
    try:
        return call(required | optional)
    except libvirt.libvirtError as e:
        if not is_unsupported(e):
            raise
        return call(required)


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


def _message(error: Exception) -> str:
    return error.get_error_message() if isinstance(error, libvirt.libvirtError) else str(error)


def _enable_keepalive(conn: libvirt.virConnect, interval: int, count: int) -> None:
    """A remote connection whose daemon stops answering is closed after interval * (count + 1) s."""
    try:
        conn.setKeepAlive(interval, count)
    except libvirt.libvirtError as e:
        if not is_unsupported(e):               # in-process drivers have no keep-alive
            raise


def _is_connection_failure(conn: libvirt.virConnect, error: libvirt.libvirtError) -> bool:
    if (error.get_error_domain() not in _CONNECTION_ERROR_DOMAINS
            or error.get_error_code() not in _CONNECTION_ERROR_CODES):
        return False
    try:                                          # the error may be the call's own: ping to be sure
        return not conn.isAlive() or conn.getLibVersion() <= 0
    except libvirt.libvirtError:
        return True


def _discard(conn: libvirt.virConnect, callback_ids: list[int]) -> None:
    """Tear down a connection, alive or dead; every step is best effort."""
    deregister_domain_events(conn, callback_ids)
    for step in (conn.unregisterCloseCallback, conn.close):
        try:
            step()
        except libvirt.libvirtError:
            pass
