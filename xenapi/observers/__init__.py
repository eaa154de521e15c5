"""One observer per kind of libvirt object, all driven the same way by ``xenapi.observers.reconciler``.

An observer knows how to list its objects on a host, re-read one by key, turn what it read into
store operations (the fields its classes declare ``observed``), and what goes when the object
does.  It never writes the store itself: the reconciler applies what it returns, in numbered
batches, so every kind gets the same relist, event, resync and ordering rules.

Keys are what libvirt looks objects up by (a domain's uuid, a pool's uuid, "pool-uuid/volume
name"); refs are derived from them (``xenapi.state.store.derived_ref``), so they are stable across
restarts and known before libvirt is asked.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Iterable

from xenapi import errors as E
from xenapi.errors import XenAPIError
from xenapi.state.store import Op


class Observer:
    kind: str = ""           # "domain", "pool", "volume"
    cls: str = ""            # the store class whose records it keeps (VM, SR, VDI)

    def __init__(self, store):
        self.store = store
        self.homes: dict[str, str] = {}          # ref -> the host it was last seen on

    # -- reading libvirt (the connection's errors are already Xen-API errors) ------------------
    def list(self, host: str, conn) -> Iterable[Any]:
        """Every object of this kind on the host, as states."""
        raise NotImplementedError

    def read(self, host: str, conn, key: str) -> Any | None:
        """One object's state now, or None if the host has no such object."""
        raise NotImplementedError

    def key_of(self, state) -> str:
        raise NotImplementedError

    def superseded(self, host: str, state) -> bool:
        """Whether ``state`` read on ``host`` is stale next to what another host has (a domain's
        shut-off definition left on the host it migrated from, while it runs elsewhere)."""
        return False

    def event_key(self, host: str, key: str) -> str:
        """The key of the object an event on ``host`` names by ``key`` (libvirt's own id)."""
        return key

    # -- into the store --------------------------------------------------------------------------
    def ref(self, key: str) -> str:
        raise NotImplementedError

    def key_in_store(self, ref: str) -> str | None:
        """The key of the object the store holds under ``ref`` (None if unknown)."""
        raise NotImplementedError

    def observe(self, host: str, state) -> list[Op] | None:
        """The operations that bring the store in line with ``state`` (None: unreadable, skip)."""
        raise NotImplementedError

    def gone(self, ref: str) -> list[Op]:
        """The operations that remove the object (and what hangs on it)."""
        raise NotImplementedError

    def homes_on(self, host: str) -> list[str]:
        return [ref for ref, home in self.homes.items() if home == host]

    def loaded(self) -> Iterable[str]:
        """Refs read back from SQLite that a relist must see again, or they go."""
        return ()

    # -- hooks ------------------------------------------------------------------------------------
    def guard(self) -> AbstractContextManager | None:
        """A lock held while a batch is computed and applied (VMs: the operation guard)."""
        return None

    def after_apply(self, host: str, states: list) -> None:
        pass

    def after_gone(self, host: str | None, key: str | None) -> None:
        pass

    def after_event(self, host: str, key: str, what: str) -> None:
        pass


def no_such(e: XenAPIError, code: int) -> bool:
    """A BACKEND_FAILURE saying the object looked up does not exist (libvirt error ``code``)."""
    return e.code == E.BACKEND_FAILURE and len(e.params) > 2 and e.params[2] == code


def read_or_none(read, code: int):
    """``read()``, or None when libvirt says there is no such object (error ``code``)."""
    try:
        return read()
    except XenAPIError as e:
        if no_such(e, code):
            return None
        raise
