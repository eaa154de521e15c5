"""grant: per-object authorisation on top of xapi's six roles (auth/grants.py has the rules).

Example: Alice may start and stop the VMs tagged or profiled web-server, and nothing else::

    grant.create(s, {"subject": "alice", "class": "VM",
                     "operations": ["start", "clean_shutdown", "hard_shutdown", "shutdown"],
                     "where": '"web-server" in field "tags" or "web-server" in field "profiles"'})

A grant is created and destroyed by a pool-admin, is kept across restarts, and takes effect on the
subject's next call.  What it selects and allows cannot be changed afterwards: destroy and create.

A class of its own rather than xapi's subject/role extended: those give a subject permissions on
every object, and clients (XenCenter, XO) read their records with that meaning; a grant is about
some objects, so it says so in its own records.
"""
from classes.enums import ENUMS
from xenapi.model.declare import declare_class, fields
from xenapi.model.roles import POOL_ADMIN


def _create(ctx, values):
    ref = ctx.store.create("grant", ctx.services.access.validate(values))
    ctx.services.sessions.refresh_permissions()
    return ref


def _destroy(ctx, ref):
    ctx.store.delete("grant", ref)
    ctx.services.sessions.refresh_permissions()


grant = declare_class(
    "grant", "Lets a user, or every user of a group, call some messages on some objects of one class "
             "(and read those objects), beyond what the user's role allows.",
    fields("uuid:s name_label*:s name_description*:s subject^:s class^:s operations^:s[] target^:s where^:s "
           "other_config*:s2s", ENUMS,
           defaults={"name_label": "", "name_description": "", "target": "", "where": "", "other_config": {}},
           docs={"subject": "a user name, or `group:NAME` for every user in group NAME",
                 "class": "the class of the objects the grant is about (e.g. `VM`)",
                 "operations": "message names of the class (`start`, `VM.clean_shutdown`), shell patterns "
                               "(`get_*`), `read` (every read message) or `*` (every message on one object)",
                 "target": "one object (its ref; a uuid given to create is stored as the ref); or empty",
                 "where": "or: an expression over the class's records, as get_all_records_where takes, "
                          "e.g. `\"web-server\" in field \"tags\"`; objects join and leave as they change"}),
    constructor=True, ctor_roles=POOL_ADMIN, writer_roles=POOL_ADMIN, persisted=True,
    hooks={"create": _create, "destroy": _destroy},
)
