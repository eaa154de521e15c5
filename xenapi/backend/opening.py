"""Opening a libvirt connection within a deadline, keeping it alive, and tearing it down.

``libvirt.open`` has no timeout of its own and nothing can interrupt it, so an ``Opening`` runs it
on a ``libvirt-open-<n>`` thread that callers wait for with a deadline; a connection that arrives
after everybody gave up on it is closed.
"""
from __future__ import annotations

import itertools
import threading

import libvirt

from xenapi.backend.events import deregister_domain_events
from xenapi.backend.libvirt_errors import is_unsupported

_open_thread_numbers = itertools.count(1)


class OpenTimedOut(Exception):
    """libvirt.open did not finish within the deadline: the daemon accepts but does not answer."""


class Opening:
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
            discard(conn, [])

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            conn, self.conn = self.conn, None
        if conn is not None:
            discard(conn, [])


def enable_keepalive(conn: libvirt.virConnect, interval: int, count: int) -> None:
    """A remote connection whose daemon stops answering is closed after interval * (count + 1) s."""
    try:
        conn.setKeepAlive(interval, count)
    except libvirt.libvirtError as e:
        if not is_unsupported(e):               # in-process drivers have no keep-alive
            raise


def discard(conn: libvirt.virConnect, callback_ids: list[int]) -> None:
    """Tear down a connection, alive or dead; every step is best effort."""
    deregister_domain_events(conn, callback_ids)
    for step in (conn.unregisterCloseCallback, conn.close):
        try:
            step()
        except libvirt.libvirtError:
            pass
