"""role: xapi's six static roles, and one internal role per permission (a lowercase wire name)."""
from classes.enums import ENUMS
from xenapi.model import types as T
from xenapi.model.declare import declare_class, fields, message, param
from xenapi.model.roles import role_ref


def get_permissions(ctx, self):
    return list(ctx.store.get("role", self)["subroles"])


def get_permissions_name_label(ctx, self):
    return [ctx.store.get("role", r)["name_label"] for r in get_permissions(ctx, self)]


def get_by_permission(ctx, permission):
    return [ref for ref, rec in ctx.store.records("role").items() if permission in rec["subroles"]]


def get_by_permission_name_label(ctx, label):
    return get_by_permission(ctx, role_ref(label))


role = declare_class(
    "role", "A set of permissions associated with a subject; the static roles form a ladder of privilege.",
    fields("uuid:s name_label^:s name_description^:s subroles^:@role[] is_internal:b", ENUMS),
    [
        message("get_permissions", "This call returns a list of permissions given a role.",
                params=[param(T.Ref("role"), "self", "a reference to a role")], result=T.Set(T.Ref("role")),
                impl=get_permissions),
        message("get_permissions_name_label", "This call returns a list of permission names given a role.",
                params=[param(T.Ref("role"), "self", "a reference to a role")], result=T.Set(T.String),
                impl=get_permissions_name_label),
        message("get_by_permission", "This call returns a list of roles given a permission.",
                params=[param(T.Ref("role"), "permission", "a reference to a permission")],
                result=T.Set(T.Ref("role")), impl=get_by_permission),
        message("get_by_permission_name_label", "This call returns a list of roles given a permission name.",
                params=[param(T.String, "label", "The short friendly name of the role")],
                result=T.Set(T.Ref("role")), impl=get_by_permission_name_label),
    ],
)
