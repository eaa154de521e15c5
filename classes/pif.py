"""PIF: a host's network interface on a network, and PIF_metrics: what the host knows of its link.

Two kinds, both observed from libvirt: a host interface (libvirt's node devices, or its interfaces
where a driver lists no node devices: device, MAC, MTU, link speed, carrier; ``physical`` for real
NICs; the management PIF among them), and a libvirt network defined on the host (its bridge; not
physical).  A VLAN's or a tunnel's access PIF is the latter kind.

Host interfaces are configured with the host's own tools: libvirt's interface driver on Debian is
read-only (udev).  Such PIFs say so in other_config (``read_only``, ``read_only_reason``) and
refuse reconfigure_ip, plug and unplug with that reason.
"""
from classes.enums import ENUMS
from classes.network_messages import networking
from xenapi import errors as E
from xenapi.model import types as T
from xenapi.model.declare import declare_class, fields, message, param
from xenapi.model.roles import POOL_OP

_SELF = param(T.Ref("PIF"), "self", "The PIF")
_READ_ONLY = (E.OPERATION_NOT_ALLOWED, E.PIF_IS_PHYSICAL, E.PIF_IS_MANAGEMENT_INTERFACE, E.HOST_OFFLINE,
              E.BACKEND_FAILURE)

PIF = declare_class(
    "PIF", "A host's network interface on a network: a host NIC or bridge, or a libvirt network on the host.",
    fields("""uuid:s device^:s network^:@network host^:@host MAC^:s MTU^:i VLAN^:i metrics:@PIF_metrics physical:b
              currently_attached:b ip_configuration_mode:ip_configuration_mode IP:s netmask:s gateway:s DNS:s
              bond_slave_of:@Bond bond_master_of:@Bond[] VLAN_master_of:@VLAN VLAN_slave_of:@VLAN[] management:b
              other_config*:s2s disallow_unplug:b tunnel_access_PIF_of:@tunnel[] tunnel_transport_PIF_of:@tunnel[]
              ipv6_configuration_mode:ipv6_configuration_mode IPv6:s[] ipv6_gateway:s
              primary_address_type:primary_address_type managed^:b properties:s2s capabilities:s[]
              igmp_snooping_status:pif_igmp_status sriov_physical_PIF_of:@network_sriov[]
              sriov_logical_PIF_of:@network_sriov[] PCI:@PCI""",
           ENUMS, defaults={"VLAN": -1, "ip_configuration_mode": "None", "ipv6_configuration_mode": "None",
                            "primary_address_type": "IPv4", "managed": True, "igmp_snooping_status": "unknown",
                            "other_config": {}},
           observed="device network host MAC MTU VLAN physical currently_attached IP netmask gateway "
                    "ip_configuration_mode management",
           docs={"device": "the host's interface name (eth0, br0), or the bridge of a libvirt network",
                 "currently_attached": "the interface is up (a host NIC), or the libvirt network is active"}),
    [
        message("plug", "Attempt to bring up a physical interface (start the libvirt network)", params=[_SELF],
                impl=networking("pif_plug"), roles=POOL_OP, is_async=True, errors=_READ_ONLY),
        message("unplug", "Attempt to bring down a physical interface (stop the libvirt network)", params=[_SELF],
                impl=networking("pif_unplug"), roles=POOL_OP, is_async=True, errors=_READ_ONLY),
        message("reconfigure_ip", "Reconfigure the IP address settings for this interface",
                params=[_SELF, param(ENUMS["ip_configuration_mode"], "mode", "whether to use dynamic/static/no-assignment"),
                        param(T.String, "IP", "the new IP address"), param(T.String, "netmask", "the new netmask"),
                        param(T.String, "gateway", "the new gateway"), param(T.String, "DNS", "the new DNS settings")],
                impl=networking("pif_reconfigure_ip"), roles=POOL_OP, is_async=True, errors=_READ_ONLY),
        message("scan", "Scan for physical interfaces on a host and create PIF objects to represent them",
                params=[param(T.Ref("host"), "host", "The host on which to scan")], impl=networking("pif_scan"),
                roles=POOL_OP, is_async=True, errors=(E.HOST_OFFLINE,)),
        message("destroy", "Destroy the PIF object (provided it is a VLAN interface); use VLAN.destroy",
                params=[_SELF], impl=networking("pif_destroy"), roles=POOL_OP, is_async=True,
                errors=(E.PIF_IS_PHYSICAL,)),
        message("forget", "Destroy the PIF object matching a particular network interface (a host interface "
                "is listed again at the next scan while the host has it)", params=[_SELF],
                impl=networking("pif_forget"), roles=POOL_OP, is_async=True, errors=(E.PIF_IS_MANAGEMENT_INTERFACE,)),
        message("set_disallow_unplug", "Set whether unplugging the PIF is allowed",
                params=[_SELF, param(T.Bool, "value", "New value to set")],
                impl=lambda ctx, pif, v: ctx.store.update("PIF", pif, {"disallow_unplug": v}), roles=POOL_OP),
        message("set_property", "Set the value of a property of the PIF",
                params=[_SELF, param(T.String, "name", "The property name"), param(T.String, "value", "The property value")],
                impl=networking("pif_set_property"), roles=POOL_OP, errors=(E.INVALID_VALUE,)),
    ],
    writer_roles=POOL_OP, persisted=True,
)

PIF_metrics = declare_class(
    "PIF_metrics", "The metrics associated with a physical network interface, as libvirt reports them",
    fields("""uuid:s ~io_read_kbs:f ~io_write_kbs:f carrier:b vendor_id:s vendor_name:s device_id:s device_name:s
              speed:i duplex:b pci_bus_path:s last_updated:dt other_config*:s2s""", ENUMS,
           docs={"speed": "link speed in Mbit/s (libvirt's <link speed>; 0 when unknown)"}),
    [],
    writer_roles=POOL_OP,
)
