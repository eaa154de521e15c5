"""HTTP to the dispatcher: POST /jsonrpc is JSON-RPC, every other POST path XML-RPC (as xapi).

Two routes carry a VDI's data instead, streamed both ways (xenapi/services/transfer.py):
``PUT /import_raw_vdi`` and ``GET /export_raw_vdi``, trailing slash or not (Xen Orchestra sends one).
The transport hands them the body as it arrives (``streaming``), never whole."""
from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from xenapi.context import Identity, peer_address
from xenapi.exporter import Exporter
from xenapi.services import transfer
from xenapi.services.transfer import TransferParts
from xenapi.transport import stdio
from xenapi.transport.http import Request, Response, StreamHandler
from xenapi.wire import Limits, WireError, jsonrpc, xmlrpc

if TYPE_CHECKING:
    from auth.users import Users
    from xenapi.dispatcher import Dispatcher
    from xenapi.state.sessions import Sessions

log = logging.getLogger(__name__)

_CORS = [("Access-Control-Allow-Origin", "*")]
_PREFLIGHT = _CORS + [("Access-Control-Allow-Methods", "POST, OPTIONS"),
                      ("Access-Control-Allow-Headers", "Content-Type")]
# content types exactly as xapi sends them: XO compares the strings
_CODECS = {"xmlrpc": (xmlrpc, "text/xml"), "jsonrpc": (jsonrpc, "application/json")}


def codec_for(path: str) -> str:
    return "jsonrpc" if path.split("?", 1)[0].rstrip("/") in ("/jsonrpc", "/json") else "xmlrpc"


class Api:
    """``dispatcher`` answers the calls (and, with ``sessions`` and ``users``, the stream of
    ``xenapi stdio``), decoded within ``limits``; ``exporter`` serves /metrics, ``transfers``
    the VDI routes."""

    def __init__(self, dispatcher: Dispatcher, limits: Limits, *, sessions: Sessions, users: Users,
                 exporter: Exporter, transfers: TransferParts):
        self.dispatcher = dispatcher
        self.limits = limits
        self.sessions = sessions
        self.users = users
        self.exporter = exporter
        self.transfers = transfers

    def __call__(self, request: Request) -> Response:
        if request.method == "POST":
            if stdio.is_upgrade(request):    # `xenapi stdio` switching to the stream protocol
                return stdio.accept(request, self.users, self.dispatcher, self.sessions, self.limits)
            return self.rpc(request)
        if request.path == "/metrics":
            return self.exporter.serve(request, identity_of(request))
        if request.method == "OPTIONS":
            return Response(200, "text/plain", b"", _PREFLIGHT)
        if request.method in ("GET", "HEAD") and request.path in ("/", "/index.html"):
            return Response(200, "text/plain",
                            b"xenapi: a Xen-API server for libvirt. POST XML-RPC to / or JSON-RPC to /jsonrpc.\n")
        return Response(405 if request.path in ("/", "/jsonrpc") else 404, "text/plain", b"not here\n")

    def streaming(self, method: str, path: str) -> StreamHandler | None:
        """The handler of a route that reads its own body (the transport asks before reading it)."""
        route = path.rstrip("/")
        if route == "/import_raw_vdi" and method != "POST":      # POST stays XML-RPC, on any path
            if method == "PUT":
                return lambda request, body: transfer.import_raw_vdi(self.transfers, request, body,
                                                                        identity_of(request))
            return _not_allowed("PUT")
        if route == "/export_raw_vdi" and method != "POST":
            if method in ("GET", "HEAD"):
                return lambda request, body: transfer.export_raw_vdi(self.transfers, request, identity_of(request))
            return _not_allowed("GET, HEAD")
        return None

    def rpc(self, request: Request) -> Response:
        codec, content_type = _CODECS[codec_for(request.path)]
        try:
            call = codec.decode(request.body, self.limits)
        except WireError as e:
            log.info("event=bad-request via=%s addr=%s status=%d reason=%s", request.scheme,
                     _address(request.peer), e.status_hint, e)
            return Response(e.status_hint, "text/plain", f"{e}\n".encode(), _CORS)
        call = dataclasses.replace(call, identity=identity_of(request))
        outcome = self.dispatcher.dispatch(call)
        return Response(200, content_type, codec.encode(outcome, call), _CORS)


def _not_allowed(allow: str) -> StreamHandler:
    return lambda request, body: Response(405, "text/plain", f"{allow} only\n".encode(), [("Allow", allow)])


def identity_of(request: Request) -> Identity:
    return Identity(via="unix" if request.peer == "unix" else request.scheme, address=_address(request.peer))


def _address(peer) -> str:
    if isinstance(peer, tuple):
        return peer_address(peer[0], peer[1])
    return str(peer)
