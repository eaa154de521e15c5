"""The single libvirt event-loop thread, and the domain events each connection subscribes to.

libvirt delivers events, close callbacks and keep-alive pings only while an event loop
implementation is registered *and* pumped.  The registration must happen before the first
``libvirt.open`` (connections opened earlier never see events), so every connection calls
``ensure_event_loop()`` first.  A registered-but-idle loop is worse than none: keep-alive then
closes healthy connections (CloudStack #8437), hence the dedicated thread.

Callbacks run on that thread.  They only name what happened (``"lifecycle:STARTED:BOOTED"``,
``"metadata"``...) and hand the name on; the reconciler does the work elsewhere.

The loop thread lives as long as the process: libvirt cannot unregister its default
implementation once connections have used it, so there is nothing useful to stop.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import libvirt

log = logging.getLogger(__name__)

EVENT_THREAD_NAME = "libvirt-events"

_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None


def ensure_event_loop() -> threading.Thread:
    """Register libvirt's default event loop once and start the thread that pumps it."""
    global _loop_thread
    with _loop_lock:
        if _loop_thread is None:
            # libvirt prints every error to stderr unless a handler is installed; we rely on exceptions.
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            libvirt.virEventRegisterDefaultImpl()
            _loop_thread = threading.Thread(target=_pump_forever, name=EVENT_THREAD_NAME, daemon=True)
            _loop_thread.start()
            log.info("event=event_loop_started thread=%s", EVENT_THREAD_NAME)
        return _loop_thread


def _pump_forever() -> None:
    while True:
        try:
            if libvirt.virEventRunDefaultImpl() < 0:
                log.warning("event=event_loop_iteration_failed")
                time.sleep(0.1)          # don't spin if the loop itself is broken
        except Exception:                # a callback bug must not kill the only loop thread
            log.exception("event=event_loop_callback_raised")


# ---- naming what happened -------------------------------------------------------------------

def libvirt_names(prefix: str, *, one_word: bool = False) -> dict[int, str]:
    """{value: suffix} for libvirt's constants named prefix + suffix, read from the binding."""
    return {getattr(libvirt, n): n[len(prefix):] for n in dir(libvirt)
            if n.startswith(prefix) and not (one_word and "_" in n[len(prefix):])}


# STARTED, STOPPED, ... (one word) and their details, e.g. (STARTED, 0) -> BOOTED.
_LIFECYCLE_EVENTS: dict[int, str] = libvirt_names("VIR_DOMAIN_EVENT_", one_word=True)
_LIFECYCLE_DETAILS: dict[tuple[int, int], str] = {
    (event, value): name
    for event, event_name in _LIFECYCLE_EVENTS.items()
    for value, name in libvirt_names(f"VIR_DOMAIN_EVENT_{event_name}_").items()
}
# Definition changes are what the reconciler keys on, so they get their own short kinds.
_LIFECYCLE_SHORT_KINDS = {libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
                          libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined"}


def lifecycle_kind(event: int, detail: int) -> str:
    """'defined', 'undefined' or 'lifecycle:<EVENT>:<DETAIL>' (numbers when libvirt is newer than us)."""
    if event in _LIFECYCLE_SHORT_KINDS:
        return _LIFECYCLE_SHORT_KINDS[event]
    event_name = _LIFECYCLE_EVENTS.get(event, str(event))
    return f"lifecycle:{event_name}:{_LIFECYCLE_DETAILS.get((event, detail), str(detail))}"


Notify = Callable[[libvirt.virDomain, str], None]

# event id -> builds the libvirt callback for it.  Callback signatures differ per id; all we
# keep is the domain and a kind name.
_SUBSCRIPTIONS: dict[str, Callable[[Notify], Callable[..., None]]] = {
    "LIFECYCLE": lambda notify: lambda _c, dom, event, detail, _o: notify(dom, lifecycle_kind(event, detail)),
    "REBOOT": lambda notify: lambda _c, dom, _o: notify(dom, "reboot"),
    "METADATA_CHANGE": lambda notify: lambda _c, dom, _type, _ns, _o: notify(dom, "metadata"),
    "DEVICE_ADDED": lambda notify: lambda _c, dom, _alias, _o: notify(dom, "device"),
    "DEVICE_REMOVED": lambda notify: lambda _c, dom, _alias, _o: notify(dom, "device"),
    "TUNABLE": lambda notify: lambda _c, dom, _params, _o: notify(dom, "tunable"),
    "BALLOON_CHANGE": lambda notify: lambda _c, dom, _actual, _o: notify(dom, "balloon"),
}


def register_domain_events(conn: libvirt.virConnect, notify: Notify) -> list[int]:
    """Subscribe ``notify(dom, kind)`` to every domain event the driver supports; return the ids."""
    callback_ids = []
    for event_name, make_callback in _SUBSCRIPTIONS.items():
        event_id = getattr(libvirt, f"VIR_DOMAIN_EVENT_ID_{event_name}")
        try:
            callback_ids.append(conn.domainEventRegisterAny(None, event_id, make_callback(notify), None))
        except libvirt.libvirtError as e:   # an older or limited driver: live without that event
            log.info("event=domain_event_unsupported id=%s code=%s", event_name, e.get_error_code())
    return callback_ids


NETWORK = "network"     # a network callback's id is kept as (NETWORK, id) beside the domain ids


def register_network_events(conn: libvirt.virConnect, notify: Callable[[libvirt.virNetwork], None]) -> list:
    """Subscribe ``notify(net)`` to network lifecycle events (defined, undefined, started, stopped:
    a libvirt network restarted behind the server's back makes a new bridge); none where the
    driver has no networks."""
    try:
        return [(NETWORK, conn.networkEventRegisterAny(
            None, libvirt.VIR_NETWORK_EVENT_ID_LIFECYCLE, lambda _c, net, _event, _detail, _o: notify(net), None))]
    except libvirt.libvirtError as e:
        log.info("event=network_events_unsupported code=%s", e.get_error_code())
        return []


def deregister_domain_events(conn: libvirt.virConnect, callback_ids: list) -> None:
    """Best effort: a dead connection may refuse, and that is fine."""
    for callback_id in callback_ids:
        try:
            if isinstance(callback_id, tuple):
                conn.networkEventDeregisterAny(callback_id[1])
            else:
                conn.domainEventDeregisterAny(callback_id)
        except libvirt.libvirtError:
            pass
