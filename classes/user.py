"""user: the local users of this server, as the API shows them (no secrets: hashes stay in auth/).

Users are added and removed with ``xenapi user add|del``.  Through the API a pool-admin sets a
user's full name and groups (what ``group:NAME`` grants match); both are kept in the users table,
so they survive a restart, and a change of groups takes effect on the user's next call.
"""
from auth.users import UserError
from classes.enums import ENUMS
from xenapi import errors as E
from xenapi.errors import XenAPIError
from xenapi.model.declare import declare_class, fields
from xenapi.model.roles import POOL_ADMIN


def _name_of(ctx, ref) -> str:
    return ctx.store.get("user", ref)["short_name"]


def set_fullname(ctx, ref, value):
    ctx.services.users.set_fullname(_name_of(ctx, ref), value)
    ctx.store.update("user", ref, {"fullname": value})


def set_groups(ctx, ref, value):
    groups = sorted(set(value))
    try:
        ctx.services.users.set_groups(_name_of(ctx, ref), groups)
    except UserError as e:
        raise XenAPIError(E.INVALID_VALUE, "groups", str(e)) from None
    ctx.store.update("user", ref, {"groups": groups})
    ctx.services.sessions.refresh_permissions()


user = declare_class(
    "user", "A local user of the server. Users are managed with `xenapi user add|del`; through the API a "
            "pool-admin sets their full name and groups.",
    fields("uuid:s short_name^:s fullname*:s other_config*:s2s groups*:s[]", ENUMS,
           docs={"groups": "the user's groups: grants to `group:NAME` apply to every user in group NAME"}),
    writer_roles=POOL_ADMIN,
    hooks={"set_fullname": set_fullname, "set_groups": set_groups},
)
