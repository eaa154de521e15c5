"""What a message is, for authorisation and audit: a read or a write, the object it acts on, and the
permissions each role holds.  Everything here is derived from the class declarations, once.

Reads and writes: ``Message.reads``, from the declaration (xapi's ``get*`` naming rule, or
``changes_nothing=True`` declared with the message).  Everything else counts as a write, so a new
custom message is audited and left out of a grant's ``read`` unless declared otherwise: the safe
default.

Target.  The object a message acts on is its first parameter that is a ref to the message's own
class (``VM.start(vm)``, ``VM.get_record(self)``, ``host.compute_free_memory(host)``); messages
without one act on the class (``VM.create``, listings) or on nothing (``event.from``).
"""
from __future__ import annotations

from dataclasses import dataclass

from xenapi import errors as E
from xenapi.errors import XenAPIError
from xenapi.model import types as T
from xenapi.model.declare import Message
from xenapi.model.roles import POOL_OP

# Implicit messages that list or find objects of a class: for a grant-only session they answer
# with the objects it may read, as if the others did not exist.
LISTINGS = frozenset({"get_all", "get_all_records", "get_all_records_where", "get_by_name_label", "get_by_uuid"})

# Permissions that are not a message's: xapi's ``task.destroy/any`` lets a pool-operator destroy,
# cancel or update anyone's task; everybody else may touch only the tasks they started.
TASK_ANY = "task.destroy/any"
EXTRA_PERMISSIONS: dict[str, tuple[str, ...]] = {TASK_ANY: POOL_OP}

# A user with this role holds no role's permissions: only what grants give (auth/grants.py).
NO_ROLE = "none"

# What every session may do whatever its role, grant-only sessions included: end itself, change its
# own password, and manage its event subscriptions.  (Every role of the ladder holds these anyway.)
SELF_SERVICE = frozenset({"session.logout", "session.change_password", "event.register", "event.unregister",
                          "event.get_current_id"})


@dataclass(frozen=True, slots=True)
class Nature:
    """What the dispatcher needs to know about a message, computed once per message."""
    read: bool
    target: int | None        # index (in the arguments after the session) of the object acted on
    listing: bool


def nature_of(msg: Message) -> Nature:
    return Nature(msg.reads, _target_index(msg), msg.implicit and msg.name in LISTINGS)


def natures(registry) -> dict[str, Nature]:
    return {name: nature_of(msg) for name, msg in registry.messages.items()}


def _target_index(msg: Message) -> int | None:
    for i, p in enumerate(msg.params):
        if isinstance(p.type, T.Ref) and p.type.cls == msg.cls:
            return i
    return None


def all_permissions(registry) -> list[str]:
    return sorted({*registry.permissions(), *EXTRA_PERMISSIONS})


def role_permissions(registry, role: str) -> frozenset[str]:
    """What a session of a user with ``role`` holds: the role's permissions (xapi's), or for a
    grant-only user just the self-service ones."""
    if role == NO_ROLE:
        return SELF_SERVICE
    return registry.permissions_of(role) | {p for p, roles in EXTRA_PERMISSIONS.items() if role in roles}


def denied(permission: str, roles: tuple[str, ...]) -> XenAPIError:
    """xapi's RBAC_PERMISSION_DENIED: the permission, and the roles that hold it, most privileged first."""
    return XenAPIError(E.RBAC_PERMISSION_DENIED, permission,
                       "No permission in user session. (Roles with this permission: " + ", ".join(roles) + ")")
