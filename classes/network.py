"""network: a virtual network, one libvirt network on every host that can reach it (its PIFs say
which), or a host interface's own network (a physical NIC or bridge, reached without a libvirt
network).

bandwidth and latency are the Xen-API draft's media characteristics (section 2.9); how each is
obtained is in docs/networks.md.
"""
from classes.enums import ENUMS
from classes.network_messages import networking
from xenapi import errors as E
from xenapi.model import types as T
from xenapi.model.declare import declare_class, fields, message, param
from xenapi.model.roles import POOL_ADMIN, POOL_OP, VM_ADMIN

_SELF = param(T.Ref("network"), "self", "The network")
_NETWORK = param(T.Ref("network"), "network", "The network")

network = declare_class(
    "network", "A virtual network: a libvirt network on each host that has a PIF on it.",
    fields("""uuid:s name_label*:s name_description*:s allowed_operations:network_operations[]
              current_operations:{s:network_operations} VIFs:@VIF[] PIFs:@PIF[] MTU*:i other_config*:s2s
              bridge^:s managed^:b blobs:{s:@blob} tags*:s[] default_locking_mode:network_default_locking_mode
              assigned_ips:{@VIF:s} purpose:network_purpose[] bandwidth:f latency:f""",
           ENUMS, defaults={"MTU": 1500, "bridge": "", "managed": True, "default_locking_mode": "unlocked",
                            "name_label": "", "name_description": "", "bandwidth": -1.0, "latency": -1.0},
           docs={"bridge": "the host bridge its guests join: the libvirt network's <bridge name>, or the host "
                           "interface of an unmanaged network",
                 "managed": "false: the bridge exists on the hosts already (a libvirt network in bridge mode "
                            "over it); true: libvirt makes it",
                 "bandwidth": "Mbit/s: the link speed of the PIF it rides on, or its QoS cap when lower; "
                              "-1 when unknown (a virtual bridge has no speed) (the draft's 2.9)",
                 "latency": "ms: a measured ICMP round trip from a host to a host on its subnet; -1 until "
                            "measured or when nothing answers (other_config latency_* keys say when and "
                            "against what) (the draft's 2.9)"}),
    [
        message("set_default_locking_mode", "Set the default locking mode for VIFs attached to this network",
                params=[_NETWORK, param(ENUMS["network_default_locking_mode"], "value", "The default locking mode "
                                        "for VIFs attached to this network.")],
                impl=lambda ctx, net, v: ctx.store.update("network", net, {"default_locking_mode": v}),
                roles=POOL_OP),
        message("add_purpose", "Give a network a new purpose (if not present already)",
                params=[_SELF, param(ENUMS["network_purpose"], "value", "The purpose to add")],
                impl=networking("network_add_purpose"), roles=POOL_ADMIN,
                errors=(E.NETWORK_INCOMPATIBLE_PURPOSES,)),
        message("remove_purpose", "Remove a purpose from a network (if present)",
                params=[_SELF, param(ENUMS["network_purpose"], "value", "The purpose to remove")],
                impl=lambda ctx, net, v: ctx.store.modify(
                    "network", net, lambda rec: {"purpose": [p for p in rec["purpose"] if p != v]}),
                roles=POOL_ADMIN),
        message("measure_latency", "Measure the network's latency now (an ICMP round trip from a host with a "
                "PIF on it to its gateway, or to other_config:latency_target), and return it in ms "
                "(-1: nothing answered, or no host can measure)",
                params=[_SELF], result=T.Float, impl=networking("network_measure_latency"), roles=VM_ADMIN,
                is_async=True),
    ],
    writer_roles=VM_ADMIN, constructor=True, ctor_roles=VM_ADMIN, persisted=True,
    ctor_required=("other_config",),
    hooks={"create": networking("network_create"), "destroy": networking("network_destroy")},
)
