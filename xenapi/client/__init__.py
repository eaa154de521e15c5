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

Inside: ``session`` (Session, Failure), ``events`` (EventStream, Listener), ``connections`` (the
XML-RPC documents and the http/https/unix connections) and ``ssh`` (ssh://, imported on first use).
"""
from xenapi.client.events import EventStream, Listener
from xenapi.client.session import Failure, Fault, ProtocolError, Session

__all__ = ["Session", "Failure", "Fault", "ProtocolError", "EventStream", "Listener"]
