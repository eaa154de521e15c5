"""Security groups on real QEMU guests, through the server: a group's rules reach running guests.

Two tiny guests made and started through the API, each with a VIF on an isolated network made
with network.create (no address on the host; an ``unreachable`` route keeps the host out of the
guests' 10.x /24).  Their serial consoles carry commands (tests/e2e/guest_net.py): the guests
ping each other, and a TCP connection from one to a port of the other carries a token or not.
A group that drops tcp/5001 inbound, given to the receiver's VIF while it runs, blocks that port
(and not another); removing the rule opens it again, and adding it back closes it, all without
touching the guests; the pings pass throughout.  Leaving the group removes the interface's
filter reference and the VIF's filter; the VMs destroyed, nothing of the group stays in libvirt.
"""
from __future__ import annotations

import contextlib
import os
import xml.etree.ElementTree as ET

import pytest
import XenAPI

import guest_net as gn
from qemu_e2e import start_with_console, tiny_vm_record
from xenapi.backend import nwfilter

pytestmark = pytest.mark.e2e

PORT, OTHER_PORT = 5001, 5002
DROP = f"in tcp {PORT} drop"


def filters(libvirt_conn) -> set[str]:
    return {f.name() for f in libvirt_conn.listAllNWFilters(0)}


def filterref(libvirt_conn, x, vm) -> str | None:
    dom = libvirt_conn.lookupByUUIDString(x.VM.get_uuid(vm))
    refs = [i.find("filterref") for i in ET.fromstring(dom.XMLDesc(0)).findall("devices/interface")]
    return refs[0].get("filter") if refs and refs[0] is not None else None


def test_a_group_drop_rule_blocks_a_port_until_it_is_removed(start_xenapi, tiny_guest, libvirt_conn, tmp_path):
    server = start_xenapi()
    x = server.x
    tag = f"xe2e-{os.getpid()}-sg"
    with contextlib.ExitStack() as stack:
        prefix = stack.enter_context(gn.unreachable_route())
        net = x.network.create({"name_label": tag, "name_description": "", "MTU": "1500", "other_config": {}})
        stack.callback(x.network.destroy, net)
        group = x.security_group.create({"name_label": tag, "name_description": "", "other_config": {}})
        stack.callback(lambda: x.security_group.destroy(group))     # after the VMs went (LIFO)
        guests = {}
        for n, hint in enumerate(("client", "server"), start=1):
            vm = x.VM.create(tiny_vm_record(tiny_guest, f"{tag}-{hint}"))
            server.created.append(vm)
            stack.callback(_remove_vm, x, server, vm)
            vif = x.VIF.create({"device": "0", "network": net, "VM": vm, "MAC": "", "MTU": "1500",
                                "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
            console = start_with_console(x, vm, tmp_path / f"{hint}-console.log")
            stack.callback(console.close)
            guests[hint] = (vm, vif, gn.GuestShell(console, name=hint), gn.cidr(prefix, n))
        for vm, vif, shell, address in guests.values():
            shell.wait_ready()
            gn.unaddress_taps(libvirt_conn.lookupByUUIDString(x.VM.get_uuid(vm)))
            gn.configure(shell, gn.wait_for_net_device(shell, x.VIF.get_MAC(vif)), address)
        _, _, client, _ = guests["client"]
        server_vm, server_vif, receiver, address = guests["server"]
        ip = address.split("/")[0]
        assert gn.ping(client, ip) and gn.port_reachable(client, receiver, ip, PORT)
        assert filterref(libvirt_conn, x, server_vm) is None

        # the group, its rule, then the running guest's VIF in it
        x.security_group.add_rule(group, DROP)
        x.security_group.add_VIF(group, server_vif)
        vif_filter = nwfilter.vif_filter_name(x.VIF.get_uuid(server_vif))
        group_filter = nwfilter.group_filter_name(x.security_group.get_uuid(group))
        assert filterref(libvirt_conn, x, server_vm) == vif_filter
        assert {vif_filter, group_filter} <= filters(libvirt_conn)
        assert "filters_not_enforced_on" not in x.security_group.get_other_config(group)
        assert not gn.port_reachable(client, receiver, ip, PORT)
        assert gn.port_reachable(client, receiver, ip, OTHER_PORT)
        assert gn.ping(client, ip)

        # the rule removed: open again; added back: closed again (the guest's definition untouched)
        x.security_group.remove_rule(group, DROP)
        assert gn.port_reachable(client, receiver, ip, PORT)
        assert gn.ping(client, ip)
        x.security_group.add_rule(group, f"in tcp {PORT}-{PORT} drop")
        assert not gn.port_reachable(client, receiver, ip, PORT)
        assert gn.ping(client, ip)

        # out of the group: no reference, no VIF filter, no group filter left on the host
        x.security_group.remove_VIF(group, server_vif)
        assert filterref(libvirt_conn, x, server_vm) is None
        assert not {vif_filter, group_filter} & filters(libvirt_conn)
        assert gn.port_reachable(client, receiver, ip, PORT)

        # back in, then the VM destroyed: the VIF leaves the group and its filter goes
        x.security_group.add_VIF(group, server_vif)
        assert not gn.port_reachable(client, receiver, ip, PORT)
        token = x.event_from(["security_group"], "", 0)["token"]
        _remove_vm(x, server, server_vm)
        while x.security_group.get_VIFs(group):       # the service follows the VIF's deletion
            token = x.event_from(["security_group"], token, 30)["token"]
        assert not {vif_filter, group_filter} & filters(libvirt_conn)


def _remove_vm(x, server, vm) -> None:
    with contextlib.suppress(XenAPI.Failure):
        if x.VM.get_power_state(vm) != "Halted":
            x.VM.hard_shutdown(vm)
        x.VM.destroy(vm)
        server.created.remove(vm)
