"""End to end: changes made behind the server's back reach event.from listeners.

A real guest is defined, started, suspended, resumed, shut down, redefined and undefined with
virsh, and powers itself off without anyone asking; each change arrives as an add, mod or del event
of its VM, as if it had been made through the API.
"""
import libvirt
import pytest
import XenAPI

from guest import POWEROFF_TEXT, SELF_POWEROFF_TEXT
from qemu_e2e import virsh

pytestmark = pytest.mark.e2e


def test_virsh_changes_and_a_guest_powering_itself_off_arrive_as_events(start_xenapi, make_domain, tiny_guest,
                                                                        tmp_path):
    server = start_xenapi()
    x = server.x
    name = make_domain.name("virsh")
    log = tmp_path / "serial.log"
    xml = tmp_path / "domain.xml"
    xml.write_text(tiny_guest.domain_xml(name, log))
    events = server.events("vm")

    virsh("define", str(xml))
    dom = make_domain.track(name)
    uuid = dom.UUIDString()
    added = events.wait(lambda e: e["operation"] == "add" and e["snapshot"]["uuid"] == uuid, what="add")
    vm = added["ref"]
    assert (added["snapshot"]["name_label"], added["snapshot"]["power_state"]) == (name, "Halted")
    assert "start" in added["snapshot"]["allowed_operations"]

    virsh("start", name)
    running = events.vm(vm, power_state="Running")
    assert running["snapshot"]["domid"] == str(dom.connect().lookupByName(name).ID())
    tiny_guest.wait_for_serial(log, tiny_guest.ready_text, 90)
    virsh("suspend", name)
    assert "unpause" in events.vm(vm, power_state="Paused")["snapshot"]["allowed_operations"]
    virsh("resume", name)
    events.vm(vm, power_state="Running")
    virsh("shutdown", name)                  # the power button: the guest powers off
    halted = events.vm(vm, power_state="Halted")
    assert (halted["snapshot"]["domid"], halted["snapshot"]["resident_on"]) == ("-1", "OpaqueRef:NULL")
    assert POWEROFF_TEXT in log.read_text(errors="replace")

    # redefined (same uuid) so that the guest powers itself off a second after it is up
    xml.write_text(tiny_guest.domain_xml(name, log, uuid=uuid, poweroff_after=1))
    virsh("define", str(xml))
    redefined = events.wait(lambda e: e["ref"] == vm and "poweroff_after=1" in e["snapshot"]["PV_args"],
                            what="redefinition")
    assert redefined["operation"] == "mod"
    virsh("start", name)
    events.vm(vm, power_state="Running")
    events.vm(vm, power_state="Halted", timeout=90)   # nobody asked libvirt for this one
    assert SELF_POWEROFF_TEXT in log.read_text(errors="replace")
    assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN]

    virsh("undefine", name)
    events.vm(vm, "del")
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.get_record(vm)
    assert e.value.details == ["HANDLE_INVALID", "VM", vm]
    assert vm not in x.VM.get_all()
