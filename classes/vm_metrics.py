"""VM_metrics and VM_guest_metrics: live figures of a VM, and what its guest agent reports."""
from classes.enums import ENUMS
from xenapi.model.declare import declare_class, fields
from xenapi.model.roles import VM_ADMIN

VM_metrics = declare_class(
    "VM_metrics", "The metrics associated with a VM.",
    fields("""uuid:s memory_actual:i VCPUs_number:i ~VCPUs_utilisation:{i:f} VCPUs_CPU:{i:i} VCPUs_params:s2s
              VCPUs_flags:{i:s[]} state:s[] start_time:dt install_time:dt last_updated:dt other_config*:s2s
              hvm:b nested_virt:b nomigrate:b current_domain_type:domain_type""", ENUMS,
           defaults={"current_domain_type": "unspecified"}),
    writer_roles=VM_ADMIN,
)

VM_guest_metrics = declare_class(
    "VM_guest_metrics", "The metrics reported by the guest (as opposed to inferred from outside).",
    fields("""uuid:s os_version:s2s PV_drivers_version:s2s !PV_drivers_up_to_date:b ~memory:s2s ~disks:s2s
              networks:s2s other:s2s last_updated:dt other_config*:s2s live:b
              can_use_hotplug_vbd:tristate_type can_use_hotplug_vif:tristate_type PV_drivers_detected:b""", ENUMS,
           defaults={"can_use_hotplug_vbd": "unspecified", "can_use_hotplug_vif": "unspecified"}),
    writer_roles=VM_ADMIN,
)
