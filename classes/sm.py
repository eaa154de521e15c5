"""SM: one record per storage plugin (storage/), stating what an SR of its type can do."""
from classes.enums import ENUMS
from xenapi.model.declare import declare_class, fields
from xenapi.model.roles import POOL_OP

SM = declare_class(
    "SM", "A storage manager plugin: the SR type it serves, its configuration keys and its features.",
    fields("""uuid:s name_label:s name_description:s type:s vendor:s copyright:s version:s required_api_version:s
              configuration:s2s !capabilities:s[] features:{s:i} other_config*:s2s driver_filename:s
              required_cluster_stack:s[]""", ENUMS,
           docs={"features": "capabilities of the SM plugin, with capability version numbers (xapi's names: "
                             "VDI_CREATE, VDI_RESIZE, VDI_CLONE, VDI_SNAPSHOT, ...)"}),
    writer_roles=POOL_OP,
)
