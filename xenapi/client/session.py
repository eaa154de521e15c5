"""``Session``: the XenAPI.Session interface (see :mod:`xenapi.client`) over one reused connection."""
from __future__ import annotations

import logging
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterable
from typing import Any

from xenapi.client.connections import (Connector, StaleConnection, connector_for, decode_response, decode_value,
                                       encode_call)
from xenapi.client.events import EVENT_TIMEOUT, EventStream, Listener

log = logging.getLogger(__name__)

Fault = xmlrpc.client.Fault
ProtocolError = xmlrpc.client.ProtocolError

_LOGOUTS = {"logout": "session.logout", "session.logout": "session.logout",
            "session.local_logout": "session.local_logout"}


class Failure(Exception):
    """A Xen-API error: ``details`` is the ``ErrorDescription`` list, code first (as XenAPI.Failure)."""

    def __init__(self, details: list):
        super().__init__(details)
        self.details = details

    def __str__(self) -> str:
        return str(self.details)

    def _details_map(self) -> dict[str, Any]:
        return {str(i): d for i, d in enumerate(self.details)}


class Session:
    """A Xen-API session on ``url``; see the module's doc for the URL forms and the interface.

    ``timeout``: seconds a call may take before ``TimeoutError`` (default: no limit).
    ``ignore_ssl``, ``cafile``, ``ssl_context``: how https:// checks the server.
    ``key_filename``, ``known_hosts``, ``verify_host_key``: ssh:// (default: the ssh agent and
    ~/.ssh keys; host keys checked against ~/.ssh/known_hosts or ``known_hosts``).
    """

    def __init__(self, url: str, ignore_ssl: bool = False, *, timeout: float | None = None,
                 cafile: str | None = None, ssl_context=None, key_filename: str | None = None,
                 known_hosts: str | None = None, verify_host_key: bool = True):
        self.url = url
        self._connector: Connector = connector_for(
            url, ignore_ssl=ignore_ssl, cafile=cafile, ssl_context=ssl_context, key_filename=key_filename,
            known_hosts=known_hosts, verify_host_key=verify_host_key)
        self._timeout = timeout
        self._connection = None                      # opened at the first call
        self._lock = threading.Lock()                # one call at a time on self._connection
        self._login_lock = threading.Lock()
        self._session: str | None = self._connector.stream_session   # "" on an identified stream
        self.last_login_method: str | None = None
        self.last_login_params: tuple | None = None
        self._api_version: str | None = None

    def __repr__(self) -> str:
        return f"<xenapi.client.Session {self.url}>"

    # -- the XenAPI.Session interface ----------------------------------------------------------

    @property
    def xenapi(self) -> "_Dispatcher":
        return _Dispatcher(self.xenapi_request, None)

    @property
    def handle(self) -> str | None:
        return self._session

    def xenapi_request(self, methodname: str, params: tuple):
        name = methodname.removeprefix("session.")
        if name.startswith(("login", "slave_local_login")):
            return self._login(name, tuple(params))
        if methodname in _LOGOUTS:
            return self.logout()
        return self._call(methodname, tuple(params))

    def logout(self) -> None:
        """End the session (a no-op when there is none) and forget the credentials."""
        session, local = self._session, (self.last_login_method or "").startswith("slave_local")
        self._session, self.last_login_method, self.last_login_params = None, None, None
        self._api_version = None
        if session is not None:
            _value(self._round_trip("session.local_logout" if local else "session.logout", (session,)))

    @property
    def API_version(self) -> str:
        if self._api_version is None:
            api = self.xenapi
            host = api.pool.get_master(api.pool.get_all()[0])
            self._api_version = f"{api.host.get_API_version_major(host)}.{api.host.get_API_version_minor(host)}"
        return self._api_version

    def __getattr__(self, name: str):
        if name.startswith("__") or name.startswith("_"):
            raise AttributeError(name)
        if name.startswith(("login", "slave_local")):
            return lambda *params: self._login(name, params)
        return _Dispatcher(self._round_trip, name)       # a raw call: the whole response

    # -- additions -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (not the session: it stays valid on the server until logout)."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
        self._connector.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.last_login_method is not None:
                self.logout()
        finally:
            self.close()

    def wait_for_task(self, task: str, timeout: float | None = None):
        """Wait for ``task`` to end; return its result decoded (what the synchronous call would
        have returned), or raise Failure with its ``error_info``; TimeoutError after ``timeout``
        seconds.  Waits in event.from on the task, so it answers as soon as the task ends."""
        deadline = None if timeout is None else time.monotonic() + timeout
        token = ""
        while True:
            record = self._call("task.get_record", (task,))      # HANDLE_INVALID once it is gone
            if record["status"] == "success":
                return decode_value(record["result"])
            if record["status"] != "pending":                    # failure or cancelled
                raise Failure(record["error_info"])
            wait = EVENT_TIMEOUT if deadline is None else min(EVENT_TIMEOUT, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError(f"task {task} still pending after {timeout} s")
            token = self._call("event.from", ([f"task/{task}"], token, float(wait)))["token"]

    def events(self, classes: Iterable[str] = ("*",), timeout: float = EVENT_TIMEOUT,
               token: str = "") -> "EventStream":
        """Event records of ``classes`` (names, ``"*"``, or ``"VM/<ref>"``) from event.from,
        endlessly, on a connection of this stream's own.  ``token=""`` first yields every
        current object as an ``add`` (xapi's way of seeding a cache); pass a stream's
        ``token`` to resume after it.  Close the stream (or use ``with``) to stop."""
        return EventStream(self, list(classes), timeout, token)

    def listen(self, classes: Iterable[str], callback: Callable[[dict], Any],
               stop_event: threading.Event | None = None, *, timeout: float = EVENT_TIMEOUT,
               token: str = "") -> "Listener":
        """Call ``callback(event)`` for every event of ``classes`` on a thread of its own until
        ``stop_event`` is set (or ``Listener.stop()``); see :class:`Listener`."""
        return Listener(self, list(classes), callback, stop_event, timeout, token)

    # -- calls -----------------------------------------------------------------------------------

    def _login(self, method: str, params: tuple) -> str:
        with self._login_lock:
            session = _value(self._round_trip(f"session.{method}", params))
            self._session, self.last_login_method, self.last_login_params = session, method, params
            self._api_version = None
        return session

    def _call(self, method: str, params: tuple, connection=None):
        """``method(session, *params)``: log in again once if the remembered session went stale."""
        session = self._session
        response = self._round_trip(method, (session, *params), connection)
        if _is_stale(response) and self.last_login_method and self._relogin(session):
            response = self._round_trip(method, (self._session, *params), connection)
        return _value(response)

    def _relogin(self, stale: str | None) -> bool:
        with self._login_lock:
            if self._session != stale:                   # another thread has logged in again
                return True
            method, params = self.last_login_method, self.last_login_params
            if method is None:
                return False
            log.info("event=relogin url=%s reason=SESSION_INVALID", self.url)
            self._session = _value(self._round_trip(f"session.{method}", params))
            return True

    def _round_trip(self, method: str, params: tuple, connection=None):
        body = encode_call(method, params)
        if connection is not None:                       # a stream's own connection
            return decode_response(connection.round_trip(body))
        with self._lock:
            for attempt in (1, 2):
                reused = self._connection is not None and self._connection.usable
                if not reused:
                    self._connection = self._connector.open(self._timeout)
                try:
                    return decode_response(self._connection.round_trip(body))
                except StaleConnection:
                    if not reused or attempt == 2:
                        raise
            raise AssertionError("unreachable")


def _is_stale(response) -> bool:
    return (isinstance(response, dict) and response.get("Status") == "Failure"
            and response.get("ErrorDescription", [None])[:1] == ["SESSION_INVALID"])


def _value(response):
    """The Value of a Success; Failure for a Failure; Fault for anything without a Status."""
    if not isinstance(response, dict) or "Status" not in response:
        raise Fault(500, f"response without Status: {str(response)[:200]}")
    if response["Status"] == "Success" and "Value" in response:
        return response["Value"]
    if response["Status"] == "Failure" and "ErrorDescription" in response:
        raise Failure(response["ErrorDescription"])
    raise Fault(500, f"malformed response envelope: {str(response)[:200]}")


class _Dispatcher:
    """``a.b.c(*args)`` -> ``send("a.b.c", args)``, as XenAPI's proxy objects."""

    __slots__ = ("_send", "_name")

    def __init__(self, send: Callable[[str, tuple], Any], name: str | None):
        self._send = send
        self._name = name

    def __repr__(self) -> str:
        return f"<xenapi.client._Dispatcher {self._name or ''}>"

    def __getattr__(self, name: str) -> "_Dispatcher":
        if name.startswith("__"):
            raise AttributeError(name)
        return _Dispatcher(self._send, name if self._name is None else f"{self._name}.{name}")

    def __call__(self, *args):
        return self._send(self._name, args)
