"""xapi's six static roles, as a ladder of privilege, and their deterministic identities."""
from __future__ import annotations

import functools
import hashlib
import uuid as _uuid

# Most privileged first.  A message's allowed roles are always a prefix of this ladder.
LADDER = ("pool-admin", "pool-operator", "vm-power-admin", "vm-admin", "vm-operator", "read-only")

DESCRIPTIONS = {
    "pool-admin": "The Pool Administrator role has full access to all features and settings, including users, roles and the control domain.",
    "pool-operator": "The Pool Operator role manages host- and pool-wide resources, including storage, networking and hosts.",
    "vm-power-admin": "The VM Power Administrator role has full access to VM and template management and can choose where to start VMs.",
    "vm-admin": "The VM Administrator role can manage VMs and templates.",
    "vm-operator": "The VM Operator role can use VMs and interact with VM consoles.",
    "read-only": "The Read-Only role can log in and read everything, but change nothing.",
}

# xapi fixes pool-admin's uuid; the others, and every permission, are md5-derived from the name.
_POOL_ADMIN_UUID = "0165f154-ba3e-034e-6b27-5d271af109ba"


def roles_gte(role: str) -> tuple[str, ...]:
    """Every role at least as privileged as ``role``."""
    return LADDER[: LADDER.index(role) + 1]


POOL_ADMIN = roles_gte("pool-admin")
POOL_OP = roles_gte("pool-operator")
VM_POWER_ADMIN = roles_gte("vm-power-admin")
VM_ADMIN = roles_gte("vm-admin")
VM_OP = roles_gte("vm-operator")
READ_ONLY = roles_gte("read-only")


@functools.lru_cache(maxsize=None)        # a start publishes ~1,100 roles, each named several times
def role_uuid(name: str) -> str:
    if name == "pool-admin":
        return _POOL_ADMIN_UUID
    return str(_uuid.UUID(bytes=hashlib.md5(name.encode()).digest(), version=3))


def role_ref(name: str) -> str:
    return "OpaqueRef:" + role_uuid(name)
