"""Reading libvirt's errors: a refused flag, a vanished domain, or a dead connection.

Drivers differ in what they implement, so callers ask for what they want and fall back on what
the driver accepts (``with_optional_flags``); a listing that races an undefine skips the domain
(``unless_gone``); and an RPC error counts as a lost connection only once a ping confirms it
(``is_connection_failure``).
"""
from __future__ import annotations

import logging

from typing import Callable, TypeVar

import libvirt

log = logging.getLogger(__name__)

T = TypeVar("T")

# BACKEND_FAILURE's code parameter when the domain, pool or volume does not exist (any driver).
ERR_NO_DOMAIN = str(libvirt.VIR_ERR_NO_DOMAIN)
ERR_NO_POOL = str(libvirt.VIR_ERR_NO_STORAGE_POOL)
ERR_NO_VOLUME = str(libvirt.VIR_ERR_NO_STORAGE_VOL)
ERR_NO_NETWORK = str(libvirt.VIR_ERR_NO_NETWORK)
_GONE = {libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_STORAGE_VOL,
         libvirt.VIR_ERR_NO_NETWORK}

# Errors that may mean the connection, not the call, failed (Nova/VDSM use the same sets).
_CONNECTION_ERROR_DOMAINS = {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE}
_CONNECTION_ERROR_CODES = {libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR,
                           libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN}
# How drivers refuse a flag or call they do not implement (virCheckFlags gives INVALID_ARG).
_UNSUPPORTED_CODES = {libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_INVALID_ARG}


def is_unsupported(error: libvirt.libvirtError) -> bool:
    return error.get_error_code() in _UNSUPPORTED_CODES


def with_optional_flags(call: Callable[[int], T], required: int, optional: int) -> T:
    """call(required | optional), retried with the required flags alone if the driver refuses."""
    try:
        return call(required | optional)
    except libvirt.libvirtError as e:
        if not is_unsupported(e):
            raise
        return call(required)


def unless_gone(call: Callable[[], T]) -> T | None:
    """The call's result, or None when the object vanished meanwhile (listing races undefine)."""
    try:
        return call()
    except libvirt.libvirtError as e:
        if e.get_error_code() in _GONE:
            return None
        raise


def is_connection_failure(conn: libvirt.virConnect, error: libvirt.libvirtError) -> bool:
    if (error.get_error_domain() not in _CONNECTION_ERROR_DOMAINS
            or error.get_error_code() not in _CONNECTION_ERROR_CODES):
        return False
    try:                                          # the error may be the call's own: ping to be sure
        return not conn.isAlive() or conn.getLibVersion() <= 0
    except libvirt.libvirtError:
        return True


def optional(call: Callable[[], T], *, default: T, conn: libvirt.virConnect | None = None) -> T:
    """``call()``, or ``default`` where the driver cannot answer it.  Given ``conn``, a failure of
    the connection itself still raises (a dead link is not a missing figure)."""
    try:
        return call()
    except libvirt.libvirtError as e:
        if conn is not None and is_connection_failure(conn, e):
            raise
        log.debug("event=libvirt_figure_unavailable code=%s message=%s", e.get_error_code(), e.get_error_message())
        return default


def error_message(error: Exception) -> str:
    return error.get_error_message() if isinstance(error, libvirt.libvirtError) else str(error)
