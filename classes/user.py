"""user: the local users of this server, as the API shows them (no secrets: hashes stay in auth/)."""
from classes.enums import ENUMS
from xenapi.model.declare import declare_class, fields
from xenapi.model.roles import POOL_ADMIN

user = declare_class(
    "user", "A local user of the server. Users are managed with `xenapi user add|del`; the API shows them read-only.",
    fields("uuid:s short_name^:s fullname*:s other_config*:s2s", ENUMS),
    writer_roles=POOL_ADMIN,
)
