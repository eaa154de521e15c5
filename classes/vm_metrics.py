"""VM_metrics and VM_guest_metrics: live figures of a VM, and what its guest agent reports.

The metrics sampler (xenapi/services/sampler.py) keeps VM_metrics current from libvirt's bulk statistics.
"""
from classes.enums import ENUMS
from xenapi.model.declare import declare_class, fields
from xenapi.model.roles import VM_ADMIN

VM_metrics = declare_class(
    "VM_metrics", "The metrics associated with a VM, refreshed from libvirt every [metrics] interval seconds "
                  "and soon after a power change; a record changes only when a figure does.",
    fields("""uuid:s memory_actual:i VCPUs_number:i ~VCPUs_utilisation:{i:f} VCPUs_CPU:{i:i} VCPUs_params:s2s
              VCPUs_flags:{i:s[]} state:s[] start_time:dt install_time:dt last_updated:dt other_config*:s2s
              hvm:b nested_virt:b nomigrate:b current_domain_type:domain_type ?numa_optimised^:b ?numa_nodes^:i
              ?numa_node_memory:{i:i}""", ENUMS,
           defaults={"current_domain_type": "unspecified"},
           docs={"memory_actual": "bytes the VM has now: its balloon's current size (0 when not running)",
                 "VCPUs_number": "vCPUs online (0 when not running)",
                 "VCPUs_utilisation": "vCPU number -> busy share (0..1) since the previous refresh; {} when not running",
                 "last_updated": "when a figure last changed",
                 "other_config": "while the VM runs, the server keeps decimal-string keys disk_read_bytes, "
                                 "disk_write_bytes (summed over its disks), net_rx_bytes, net_tx_bytes (over its "
                                 "NICs) and memory_free (bytes the guest leaves unused), each where the driver "
                                 "reports it; other keys are the client's"}),
    writer_roles=VM_ADMIN,
)

VM_guest_metrics = declare_class(
    "VM_guest_metrics", "The metrics reported by the guest (as opposed to inferred from outside).",
    fields("""uuid:s os_version:s2s ?netbios_name:s2s PV_drivers_version:s2s !PV_drivers_up_to_date:b
              ~memory:s2s ~disks:s2s networks:s2s other:s2s last_updated:dt other_config*:s2s live:b
              can_use_hotplug_vbd:tristate_type can_use_hotplug_vif:tristate_type PV_drivers_detected:b
              ?services:s2s""", ENUMS,
           defaults={"can_use_hotplug_vbd": "unspecified", "can_use_hotplug_vif": "unspecified"}),
    writer_roles=VM_ADMIN,
)
