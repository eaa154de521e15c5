"""Pure wire codecs: bytes in, Call out; Outcome in, bytes out.  No sockets, threads or sessions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 300 * 1024     # xapi's http_limit_max_rpc_size
    max_depth: int = 64                  # nesting of arrays/structs in one request
    max_items: int = 100_000             # values in one request


@dataclass(frozen=True, slots=True)
class Call:
    """One decoded request.  ``protocol`` is "xmlrpc", "jsonrpc1" or "jsonrpc2"."""
    method: str
    params: tuple
    protocol: str = "xmlrpc"
    id: Any = None                       # JSON-RPC id, echoed exactly
    identity: Any = None                 # set by the transport: who is calling, from where


class WireError(Exception):
    """A request that cannot be decoded; ``status_hint`` is the HTTP status to answer with."""

    def __init__(self, message: str, status_hint: int = 500):
        super().__init__(message)
        self.status_hint = status_hint


@dataclass(frozen=True, slots=True)
class Success:
    value: Any


@dataclass(frozen=True, slots=True)
class Failure:
    description: list[str]


@dataclass(frozen=True, slots=True)
class Bare:
    """A result sent without the Status envelope (xapi does this for system.listMethods)."""
    value: Any


@dataclass(frozen=True, slots=True)
class Fault:
    """An XML-RPC <fault>: xapi's one use is Async.X for a message with no async mode."""
    message: str
    code: int = 500


Outcome = Success | Failure | Bare | Fault
