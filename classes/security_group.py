"""security_group: a named set of firewall rules applied to VIFs through libvirt's nwfilter (this
server's own class; xapi has none, CloudStack has them on flat networks).

A rule is one line of text, kept in one canonical form (the grammar is in
xenapi/services/security_groups.py and docs/networks.md, "Security groups"); a VIF may be in
several groups.  Changing a group's rules or members updates the filters of every VIF that uses
it, running guests included (xenapi/services/security_groups.py).
"""
from classes.enums import ENUMS
from xenapi import errors as E
from xenapi.model import types as T
from xenapi.model.declare import declare_class, fields, message, param
from xenapi.model.roles import POOL_OP

_SELF = param(T.Ref("security_group"), "self", "The security group")
_RULE = param(T.String, "rule", "A rule, e.g. 'in tcp 22 cidr=10.0.0.0/8 accept' (see docs/networks.md)")
_VIF = param(T.Ref("VIF"), "vif", "The VIF")
_ERRORS = (E.INVALID_VALUE, E.HANDLE_INVALID, E.HOST_NOT_LIVE, E.BACKEND_FAILURE)


def _service(method: str):
    """A message body that hands its arguments to the security-group service's ``method``."""
    return lambda ctx, *args: getattr(ctx.services.security_groups, method)(ctx, *args)


security_group = declare_class(
    "security_group", "A named set of firewall rules applied to the VIFs in it (libvirt nwfilter); "
    "a change updates every VIF of the group, running guests included.",
    fields("uuid:s name_label*:s name_description*:s rules:s[] VIFs:@VIF[] other_config*:s2s tags*:s[]",
           ENUMS, defaults={"name_description": ""},
           docs={"rules": "canonical rule texts: '<in|out> <tcp|udp|icmp|all> [<port>-<port>] "
                          "[cidr=<a.b.c.d/n>|group=<uuid>] <accept|drop>' (docs/networks.md)",
                 "VIFs": "the VIFs the group applies to (a VIF may be in several groups)",
                 "other_config": "filters_not_enforced_on: uuids of the hosts with VIFs of the group whose "
                                 "libvirt has no nwfilter driver (kept by the server)"}),
    [
        message("add_rule", "Add a rule to the group (already there is not an error); the VIFs of the group "
                "are updated at once", params=[_SELF, _RULE], impl=_service("add_rule"), roles=POOL_OP,
                errors=_ERRORS),
        message("remove_rule", "Remove a rule from the group (given in any form the grammar accepts; absent "
                "is not an error)", params=[_SELF, _RULE], impl=_service("remove_rule"), roles=POOL_OP,
                errors=_ERRORS),
        message("set_rules", "Replace the group's rules", params=[_SELF, param(T.Set(T.String), "rules",
                "The rules")], impl=_service("set_rules"), roles=POOL_OP, errors=_ERRORS),
        message("add_VIF", "Apply the group to a VIF (already there is not an error)", params=[_SELF, _VIF],
                impl=_service("add_VIF"), roles=POOL_OP, errors=(*_ERRORS, E.OPERATION_NOT_ALLOWED)),
        message("remove_VIF", "Stop applying the group to a VIF (absent is not an error)", params=[_SELF, _VIF],
                impl=_service("remove_VIF"), roles=POOL_OP, errors=(*_ERRORS, E.OPERATION_NOT_ALLOWED)),
    ],
    writer_roles=POOL_OP, constructor=True, ctor_roles=POOL_OP, persisted=True,
    ctor_required=("name_label",),
    hooks={"destroy": _service("destroy"), "set_other_config": _service("set_other_config")},
)
