"""What a message implementation is handed: who is calling, the server's parts, and its task."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xenapi import errors as E
from xenapi.errors import XenAPIError

if TYPE_CHECKING:
    from xenapi.server import Server


def peer_address(host: str, port) -> str:
    """``host:port`` as every transport writes a peer's address ([v6]:port for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address_host(address: str) -> str:
    """The host of a ``peer_address``, without port or brackets ("" for none)."""
    host, sep, port = address.rpartition(":")
    return (host if sep and port.isdigit() else address).strip("[]")


@dataclass
class Identity:
    """Who is calling and through which door; set by the transport, never by the client."""
    via: str = "http"                 # http | https | unix | stdio | ssh | internal
    address: str = ""
    user: str | None = None           # a transport-authenticated user (ssh key), if any


@dataclass
class Context:
    server: "Server"
    session_ref: str | None = None
    user: str = ""
    permissions: frozenset[str] = frozenset()
    identity: Identity = field(default_factory=Identity)
    task_ref: str | None = None
    method: str = ""

    @property
    def store(self):
        return self.server.store

    def progress(self, value: float) -> None:
        if self.task_ref:
            self.server.tasks.progress(self.task_ref, value)

    def check_cancelled(self) -> None:
        """Long operations call this between steps; a cancelled task stops here."""
        if self.task_ref and self.server.tasks.is_cancelling(self.task_ref):
            raise XenAPIError(E.TASK_CANCELLED, self.task_ref)

    def allow_cancel(self, allowed: bool = True) -> None:
        if self.task_ref:
            self.server.tasks.set_cancellable(self.task_ref, allowed)

    def log_fields(self) -> dict[str, Any]:
        return {"user": self.user or "-", "via": self.identity.via}
