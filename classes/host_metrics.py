"""host_metrics: live figures of a host, refreshed from libvirt by the metrics sampler (xenapi/services/sampler.py)."""
from classes.enums import ENUMS
from xenapi.model.declare import declare_class, fields
from xenapi.model.roles import POOL_OP

host_metrics = declare_class(
    "host_metrics", "The metrics associated with a host, refreshed from libvirt every [metrics] interval "
                    "seconds; a record changes only when a figure does.",
    fields("uuid:s memory_total:i ~memory_free:i live:b last_updated:dt other_config*:s2s", ENUMS,
           docs={"memory_total": "bytes of memory: the sum of the NUMA cells' memory, read at each connect",
                 "memory_free": "bytes free (libvirt's getFreeMemory)",
                 "live": "false while the host's libvirt connection is down",
                 "last_updated": "when a figure last changed"}),
    writer_roles=POOL_OP,
)
