"""A Xen-API client with the official ``XenAPI`` package's ``Session``, over more doors, with events.

    from xenapi.client import Session, Failure
    session = Session("https://host", ignore_ssl=True)       # or http://, unix:///path, ssh://user@host
    session.xenapi.login_with_password("root", "secret", "2.21", "my-script")
    for ref, vm in session.xenapi.VM.get_all_records().items(): ...
    task = session.xenapi.Async.VM.clean_shutdown(vm)
    session.wait_for_task(task)                               # its result, or Failure(error_info)
    with session.events(["VM"]) as events:                   # event.from on a connection of its own
        for event in events: ...
    session.xenapi.session.logout()

What ``XenAPI.Session`` does, this does too: ``session.xenapi.<Class>.<message>(...)`` sends the
session as the first parameter and returns the ``Value`` of a ``Success``, raises
:class:`Failure` (``.details`` = the ``ErrorDescription`` list) for a ``Failure``, and
``xmlrpc.client.Fault`` / ``ProtocolError`` for a ``<fault>`` or an HTTP error; the
``login*`` forms remember the credentials, and a ``SESSION_INVALID`` for the remembered session
(say, after the server logged it out) logs in again once and retries; ``session.logout()`` and
``session.xenapi.session.logout()`` forget them; ``handle`` is the session reference;
``xenapi_request(method, params)`` is the call underneath; any other attribute is a raw call
returning the whole response, as ``xmlrpc.client.ServerProxy`` does.

Where it differs, on purpose: login returns the session reference (XenAPI returns None);
``session.xenapi.session.login_with_password`` is a login too; a call made without a login
raises ``Failure(["SESSION_INVALID", ...])`` as the server says, not ``Fault(401)``; int
parameters beyond 32 bits are sent as decimal strings (xapi's int64 form) instead of raising
OverflowError; responses are parsed with defusedxml; and a ``Session`` may be shared between
threads (calls on it take turns on its one connection).

URLs: ``http://host[:port][/path]``; ``https://...`` (certificates verified unless
``ignore_ssl=True``; ``cafile=`` pins a self-signed server's certificate); ``unix:///path/to/socket``
(HTTP over a unix socket, as xapi's local socket); ``ssh://user@host[:port]``, the bare XML stream
of ``xenapi stdio`` or the built-in SSH server (docs/ssh.md) over one SSH channel, authenticated by
the user's key, where the stream's own session needs no login.
"""
from __future__ import annotations

import logging
import threading
import time
import xmlrpc.client
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from xenapi.client_connections import (CONNECTION_ERRORS, Connector, StaleConnection, connector_for,
                                       decode_response, decode_value, encode_call)

log = logging.getLogger(__name__)

__all__ = ["Session", "Failure", "Fault", "ProtocolError", "EventStream", "Listener"]

Fault = xmlrpc.client.Fault
ProtocolError = xmlrpc.client.ProtocolError

EVENT_TIMEOUT = 30.0               # seconds each event.from may wait on the server
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


# -- events ------------------------------------------------------------------------------------

class EventStream:
    """An iterator over event.from's records on a connection of its own (a Session's calls
    take turns on one connection, and event.from blocks for up to ``timeout`` seconds).

    ``token`` is the token of the last batch read, to resume from.  ``close()`` (from any
    thread) ends the iteration at once, even in the middle of a wait."""

    def __init__(self, session: Session, classes: list[str], timeout: float, token: str):
        self.session = session
        self.classes = classes
        self.timeout = float(timeout)
        self.token = token
        self._pending: deque[dict] = deque()
        self._closed = False
        # the wait happens on the server: give the socket the poll's length and a margin
        limit = None if session._timeout is None else session._timeout + self.timeout
        self._connection = session._connector.open(limit)

    def __iter__(self) -> "EventStream":
        return self

    def __next__(self) -> dict:
        while not self._pending:
            if self._closed:
                raise StopIteration
            try:
                batch = self.session._call("event.from", (self.classes, self.token, self.timeout),
                                           self._connection)
            except Exception:
                if self._closed:             # close() from another thread cut the call short
                    raise StopIteration from None
                raise
            self.token = batch["token"]
            self._pending.extend(batch["events"])
        return self._pending.popleft()

    def close(self) -> None:
        self._closed = True
        self._connection.abort()
        self._connection.close()

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Listener:
    """The draft's notification listener: ``callback(event)`` for each event, on thread
    ``xenapi-listener``, until ``stop_event`` is set.

    A dropped connection (the server restarting, say) is retried with a growing pause and the
    stream resumes from its last token.  Anything else -- a Failure, or the callback raising --
    ends the listener and is kept in ``error``.  When the listener ends, for whatever reason,
    ``stop_event`` is set, so one Event can stop several listeners and tell when one has ended.
    """

    RETRY_PAUSES = (0.1, 0.5, 1.0, 2.0, 5.0)

    def __init__(self, session: Session, classes: list[str], callback: Callable[[dict], Any],
                 stop_event: threading.Event | None, timeout: float, token: str):
        self.session = session
        self.classes = classes
        self.callback = callback
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        self.timeout = timeout
        self.error: BaseException | None = None
        self._stream = EventStream(session, classes, timeout, token)
        self._stream_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="xenapi-listener", daemon=True)
        self._thread.start()
        threading.Thread(target=self._stop_when_asked, name="xenapi-listener-stop", daemon=True).start()

    @property
    def token(self) -> str:
        return self._stream.token

    def stop(self, timeout: float | None = None) -> None:
        self.stop_event.set()
        self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        failures = 0
        try:
            while not self.stop_event.is_set():
                try:
                    if failures:
                        self._reopen()
                    for event in self._stream:
                        failures = 0
                        if self.stop_event.is_set():
                            return
                        self.callback(event)
                    return                               # closed
                except CONNECTION_ERRORS as e:
                    if self.stop_event.is_set():
                        return
                    pause = self.RETRY_PAUSES[min(failures, len(self.RETRY_PAUSES) - 1)]
                    failures += 1
                    log.info("event=listener-retry url=%s reason=%r pause=%.1f", self.session.url, e, pause)
                    if self.stop_event.wait(pause):
                        return
        except Exception as e:
            if self.stop_event.is_set():        # stopped while a call was in flight: not an error
                return
            self.error = e
            log.warning("event=listener-stopped url=%s error=%r", self.session.url, e)
        finally:
            self.stop_event.set()
            with self._stream_lock:
                self._stream.close()

    def _reopen(self) -> None:
        with self._stream_lock:
            old = self._stream
            old.close()
            self._stream = EventStream(self.session, self.classes, self.timeout, old.token)

    def _stop_when_asked(self) -> None:
        self.stop_event.wait()
        with self._stream_lock:
            self._stream.close()
