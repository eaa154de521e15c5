"""host_cpu: one per logical CPU of a host, from libvirt's node info and capabilities."""
from classes.enums import ENUMS
from xenapi.model.declare import declare_class, fields
from xenapi.model.roles import POOL_OP

host_cpu = declare_class(
    "host_cpu", "A physical CPU.",
    fields("""uuid:s host:@host number:i vendor:s speed:i modelname:s family:i model:i stepping:s flags:s
              features:s utilisation:f other_config*:s2s""", ENUMS),
    writer_roles=POOL_OP,
)
