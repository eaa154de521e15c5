"""One long-lived libvirt connection per host URI: its liveness, reconnection and error translation.

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

Domains are addressed by UUID string.  Power states are Xen-API's (see ``power_states.POWER_STATES``).

This module keeps the connection's life (open, keep-alive, reconnect with backoff, liveness
reports, and ``_using``, the one place libvirt errors are translated).  The rest lives beside it:
``opening`` (``libvirt.open`` within a deadline, teardown), ``libvirt_errors`` (a refused flag, a
vanished domain, a dead connection), ``domain_operations`` (what the connection does to domains:
mixed into ``HostConnection``, so callers keep one object and no method is written twice) and
``power_states`` (libvirt states in Xen-API's terms).  Their public names are re-exported here.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import libvirt

from xenapi.backend.domain_operations import DomainOperations
from xenapi.backend.network_operations import NetworkOperations
from xenapi.backend.storage_operations import StorageOperations
from xenapi.backend.events import ensure_event_loop, register_domain_events, register_network_events
from xenapi.backend.hostinfo import HostFacts, read_host_facts
from xenapi.backend.libvirt_errors import (ERR_NO_DOMAIN, ERR_NO_NETWORK, ERR_NO_POOL, ERR_NO_VOLUME, error_message,
                                           is_connection_failure)
from xenapi.backend.opening import Opening, OpenTimedOut, discard, enable_keepalive
from xenapi.backend.power_states import power_state
from xenapi.errors import BACKEND_FAILURE, HOST_NOT_LIVE, XenAPIError

__all__ = ["HostConnection", "DomainEventHandler", "LivenessHandler", "OPEN_TIMEOUT", "KEEPALIVE_INTERVAL",
           "KEEPALIVE_COUNT", "ERR_NO_DOMAIN", "ERR_NO_NETWORK", "ERR_NO_POOL", "ERR_NO_VOLUME", "power_state", "OpenTimedOut"]

log = logging.getLogger(__name__)

T = TypeVar("T")
DomainEventHandler = Callable[[str, str, str], None]     # (host uri, domain uuid, kind)
LivenessHandler = Callable[[str, bool], None]            # (host uri, live)

_CLOSE_REASONS = {libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
                  libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "eof",
                  libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive",
                  libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "client"}

# Defaults of [libvirt] open_timeout, keepalive_interval and keepalive_count (see xenapi.conf).
OPEN_TIMEOUT = 10.0
KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 5, 3
_reconnect_thread_numbers = itertools.count(1)


class HostConnection(DomainOperations, StorageOperations, NetworkOperations):
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
        self._opening: Opening | None = None     # an open still running (a frozen daemon holds it)
        self._callback_ids: list[int] = []
        self._generation = 0                     # bumped per connect and close; stale close callbacks see an old one
        self._reconnector: threading.Thread | None = None
        self._dead: list[tuple[libvirt.virConnect, list[int]]] = []   # lost connections to tear down
        self._closing = threading.Event()        # set by close(): stop reconnecting
        self._report_lock = threading.Lock()     # liveness reports go out one at a time, in order
        self._reported_live = False
        self._users: dict[libvirt.virConnect, int] = {}          # connection -> calls in it now
        self._retired: dict[libvirt.virConnect, list[int]] = {}  # closed, to discard when its last call returns

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
            log.warning("event=host_connect_failed uri=%s message=%s", self.uri, error_message(e))
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
            self._discard_when_idle(conn, callback_ids)
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
            callback_ids += register_network_events(conn, self._network_event)
            enable_keepalive(conn, *self._keepalive)
        except libvirt.libvirtError:
            discard(conn, [])
            raise
        with self._lock:
            install = self._conn is None and not self._closing.is_set()
            if install:
                self._conn, self._callback_ids, self._generation = conn, callback_ids, generation
        if not install:
            discard(conn, callback_ids)

    def _open_within_deadline(self) -> libvirt.virConnect:
        """The connection of the open in progress (or of a new one) once it finishes; OpenTimedOut
        past ``open_timeout`` or on close(), leaving the attempt running for the next caller."""
        with self._lock:
            if self._opening is None:
                self._opening = Opening(self.uri)
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
            self._discard_when_idle(conn, callback_ids)

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

    def _network_event(self, net: libvirt.virNetwork) -> None:
        try:
            self._on_domain_event(self.uri, net.UUIDString(), "network")
        except Exception:                        # never let a handler bug reach libvirt's loop
            log.exception("event=network_event_handler_raised uri=%s", self.uri)

    # ---- the one place libvirt errors are translated ----------------------------------------

    @contextmanager
    def _using(self, operation: str) -> Iterator[libvirt.virConnect]:
        with self._lock:
            conn, generation = self._conn, self._generation
            if conn is not None:
                self._users[conn] = self._users.get(conn, 0) + 1
        if conn is None:
            raise XenAPIError(HOST_NOT_LIVE)
        try:
            yield conn
        except libvirt.libvirtError as e:
            if is_connection_failure(conn, e):
                self._lost(generation, f"{operation}:{e.get_error_message()}")
                raise XenAPIError(HOST_NOT_LIVE) from e
            log.info("event=backend_failure uri=%s operation=%s code=%s message=%s",
                     self.uri, operation, e.get_error_code(), e.get_error_message())
            raise XenAPIError(BACKEND_FAILURE, self.uri, operation, e.get_error_code(),
                              e.get_error_message()) from e
        finally:
            with self._lock:
                users = self._users.pop(conn) - 1
                if users:
                    self._users[conn] = users
                retired = self._retired.pop(conn, None) if not users else None
            if retired is not None:               # closed while this call was in it: its last user closes it
                discard(conn, retired)

    def busy(self) -> bool:
        """A call is in the connection now.  Background readers (the storage poller) skip a busy
        connection: libvirt 9.0's RPC client can crash when keepalive closes a connection with two
        calls waiting in it (a frozen daemon), and a poll adds nothing a call in flight will not."""
        with self._lock:
            return bool(self._conn is not None and self._users.get(self._conn))

    def _discard_when_idle(self, conn: libvirt.virConnect, callback_ids: list[int]) -> None:
        """Close ``conn`` now, or when the last call still in it returns: freeing a connection a
        thread is blocked in (a frozen daemon, a stop that did not wait) would crash the process."""
        with self._lock:
            if self._users.get(conn):
                self._retired[conn] = callback_ids
                return
        discard(conn, callback_ids)

    def read(self, operation: str, reader: Callable[[libvirt.virConnect], T]) -> T:
        """``reader(conn)`` on the live connection, under the liveness and error translation of
        every other call: for backend modules that read in bulk (stats)."""
        with self._using(operation) as conn:
            return reader(conn)

    def host_facts(self) -> HostFacts:
        with self._using("host_facts") as conn:
            return read_host_facts(conn, self.uri)
