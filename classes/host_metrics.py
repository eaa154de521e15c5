"""host_metrics: live figures of a host, refreshed from libvirt."""
from classes.enums import ENUMS
from xenapi.model.declare import declare_class, fields
from xenapi.model.roles import POOL_OP

host_metrics = declare_class(
    "host_metrics", "The metrics associated with a host.",
    fields("uuid:s memory_total:i ~memory_free:i live:b last_updated:dt other_config*:s2s", ENUMS,
           docs={"live": "false while the host's libvirt connection is down"}),
    writer_roles=POOL_OP,
)
