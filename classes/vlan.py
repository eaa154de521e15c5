"""VLAN, tunnel and Bond: interfaces a host builds from other PIFs.

- VLAN: a tagged PIF and a tag; its untagged PIF is the tagged network on that host.  Built with
  Open vSwitch (libvirt ``<vlan><tag>`` on an OVS bridge, xapi's default backend) or a kernel
  802.1q interface under a bridge, whichever the host has (host.capabilities says).
- tunnel: a cross-host private network over VXLAN (xapi's GRE/VXLAN tunnels): on each host a VXLAN
  device joins the network's bridge to the other hosts over the transport PIF.
- Bond: declared for clients that read it; libvirt cannot bond host NICs (its interface driver is
  read-only here), so Bond.create says what to do instead.
"""
from classes.enums import ENUMS
from classes.network_messages import networking
from xenapi import errors as E
from xenapi.model import types as T
from xenapi.model.declare import declare_class, fields, message, param
from xenapi.model.roles import POOL_OP

_MAP = T.Map(T.String, T.String)
_HOST_ERRORS = (E.HOST_OFFLINE, E.BACKEND_FAILURE, E.OPERATION_NOT_ALLOWED)

VLAN = declare_class(
    "VLAN", "A VLAN mux/demux",
    fields("uuid:s tagged_PIF^:@PIF untagged_PIF:@PIF tag^:i other_config*:s2s", ENUMS,
           defaults={"tag": -1, "other_config": {}}),
    [
        message("create", "Create a VLAN mux/demuxer",
                params=[param(T.Ref("PIF"), "tagged_PIF", "PIF which receives the tagged traffic"),
                        param(T.Int, "tag", "VLAN tag to use"),
                        param(T.Ref("network"), "network", "Network to receive the untagged traffic")],
                result=T.Ref("VLAN"), impl=networking("vlan_create"), roles=POOL_OP, is_async=True,
                errors=(E.VLAN_TAG_INVALID, E.PIF_VLAN_EXISTS, E.VLAN_IN_USE, E.PIF_IS_VLAN, *_HOST_ERRORS)),
        message("destroy", "Destroy a VLAN mux/demuxer", params=[param(T.Ref("VLAN"), "self", "VLAN mux/demuxer to destroy")],
                impl=networking("vlan_destroy"), roles=POOL_OP, is_async=True, errors=_HOST_ERRORS),
    ],
    writer_roles=POOL_OP, persisted=True,
)

tunnel = declare_class(
    "tunnel", "A tunnel for network traffic: a VXLAN device on each host joining a private network's bridges",
    fields("uuid:s access_PIF^:@PIF transport_PIF^:@PIF status*:s2s other_config*:s2s protocol*:tunnel_protocol",
           ENUMS, defaults={"status": {}, "other_config": {}, "protocol": "vxlan"},
           docs={"status": "active (true/false), key (the VXLAN id), and the error when the host could not build it"}),
    [
        message("create", "Create a tunnel (VXLAN) on the transport PIF's host, joining the network's bridge "
                "there to the network's tunnels on the other hosts",
                params=[param(T.Ref("PIF"), "transport_PIF", "PIF which receives the tagged traffic"),
                        param(T.Ref("network"), "network", "Network to receive the tunnelled traffic"),
                        param(ENUMS["tunnel_protocol"], "protocol", "Protocol used for the tunnel (vxlan; gre needs Open vSwitch)", default="vxlan")],
                result=T.Ref("tunnel"), impl=networking("tunnel_create"), roles=POOL_OP, is_async=True,
                errors=(E.TRANSPORT_PIF_NOT_CONFIGURED, E.IS_TUNNEL_ACCESS_PIF, E.OPENVSWITCH_NOT_ACTIVE,
                        E.PIF_IS_VLAN, *_HOST_ERRORS)),
        message("destroy", "Destroy a tunnel", params=[param(T.Ref("tunnel"), "self", "tunnel to destroy")],
                impl=networking("tunnel_destroy"), roles=POOL_OP, is_async=True, errors=_HOST_ERRORS),
    ],
    writer_roles=POOL_OP, persisted=True,
)

Bond = declare_class(
    "Bond", "A Network bond that combines physical network interfaces, also known as link aggregation",
    fields("""uuid:s master^:@PIF slaves:@PIF[] other_config*:s2s primary_slave:@PIF mode:bond_mode
              properties:s2s links_up:i auto_update_mac:b""", ENUMS,
           defaults={"mode": "balance-slb", "auto_update_mac": True, "other_config": {}}),
    [
        message("create", "Create an interface bond (not possible through libvirt: see the error)",
                params=[param(T.Ref("network"), "network", "Network to add the bonded PIF to"),
                        param(T.Set(T.Ref("PIF")), "members", "PIFs to add to this bond"),
                        param(T.String, "MAC", "The MAC address to use on the bond itself."),
                        param(ENUMS["bond_mode"], "mode", "Bonding mode to use for the new bond", default="balance-slb"),
                        param(_MAP, "properties", "Additional configuration parameters specific to the bond mode", default={})],
                result=T.Ref("Bond"), impl=networking("bond_create"), roles=POOL_OP, is_async=True,
                errors=(E.OPERATION_NOT_ALLOWED,)),
        message("destroy", "Destroy an interface bond", params=[param(T.Ref("Bond"), "self", "Bond to destroy")],
                impl=networking("bond_destroy"), roles=POOL_OP, is_async=True),
        message("set_mode", "Change the bond mode", params=[param(T.Ref("Bond"), "self", "The bond"),
                                                           param(ENUMS["bond_mode"], "value", "The new bond mode")],
                impl=networking("bond_set_mode"), roles=POOL_OP, errors=(E.OPERATION_NOT_ALLOWED,)),
    ],
    writer_roles=POOL_OP, persisted=True,
)
