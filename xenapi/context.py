"""What a message implementation is handed: who is calling, the services it may call, and its task."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from xenapi import errors as E
from xenapi.errors import XenAPIError

if TYPE_CHECKING:
    from auth.audit import AuditLog
    from auth.grants import Access
    from auth.users import Users
    from xenapi.model.registry import Registry
    from xenapi.services.evacuation import Evacuation
    from xenapi.services.hosts import Hosts
    from xenapi.services.moves import Moves
    from xenapi.services.networks import Networks
    from xenapi.services.placement import Placement
    from xenapi.services.security_groups import SecurityGroups
    from xenapi.services.storage import Storage
    from xenapi.services.vms import VMs
    from xenapi.state.events import Events
    from xenapi.state.sessions import Sessions
    from xenapi.state.store import Store
    from xenapi.state.tasks import Tasks


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


class Caller(NamedTuple):
    """Who makes a call: a live session's user and permissions (``Sessions.caller``)."""
    session_ref: str | None
    user: str
    permissions: frozenset[str]


@dataclass(frozen=True)
class Services:
    """What a message body (classes/) may call: the services and the state they keep, not what lies
    under them (the reconciler, the observers, the configuration), by convention: a service's own
    attributes are its business.  The server builds it once."""
    store: "Store"
    registry: "Registry"
    tasks: "Tasks"
    sessions: "Sessions"
    events: "Events"
    users: "Users"
    audit: "AuditLog"
    access: "Access"
    hosts: "Hosts"
    vms: "VMs"
    storage: "Storage"
    networks: "Networks"
    security_groups: "SecurityGroups"
    placement: "Placement"
    moves: "Moves"
    evacuation: "Evacuation"


@dataclass
class Context:
    services: Services
    session_ref: str | None = None
    user: str = ""
    permissions: frozenset[str] = frozenset()
    identity: Identity = field(default_factory=Identity)
    task_ref: str | None = None
    method: str = ""

    @property
    def store(self) -> "Store":
        return self.services.store

    def progress(self, value: float) -> None:
        if self.task_ref:
            self.services.tasks.progress(self.task_ref, value)

    def check_cancelled(self) -> None:
        """Long operations call this between steps; a cancelled task stops here."""
        if self.task_ref and self.services.tasks.is_cancelling(self.task_ref):
            raise XenAPIError(E.TASK_CANCELLED, self.task_ref)

    def allow_cancel(self, allowed: bool = True) -> None:
        if self.task_ref:
            self.services.tasks.set_cancellable(self.task_ref, allowed)

    def log_fields(self) -> dict[str, Any]:
        return {"user": self.user or "-", "via": self.identity.via}
