"""End to end: a running VM's console record gives the VNC display libvirt assigned it.

The tiny guest has a VNC display (autoport on 127.0.0.1), as the server's own VMs do. While it
runs, its VM has one console, protocol rfb, whose location names the port in libvirt's live XML
(and ``virsh vncdisplay``), where a real VNC server answers; the console goes away on shutdown.
"""
import re
import socket

import pytest
import XenAPI

from qemu_e2e import define_guest, virsh

pytestmark = pytest.mark.e2e
VNC_BASE_PORT = 5900


def test_running_vm_has_its_vnc_console(start_xenapi, make_domain, tiny_guest, tmp_path):
    server = start_xenapi()
    x = server.x
    guest = define_guest(server, make_domain, tiny_guest, tmp_path, "vnc")
    assert x.VM.get_consoles(guest.vm) == []            # halted: nothing to connect to

    events = server.events("console")
    x.VM.start(guest.vm, False, False)
    [console] = x.VM.get_consoles(guest.vm)
    record = x.console.get_record(console)
    host, display = virsh("vncdisplay", guest.name).rsplit(":", 1)
    port = VNC_BASE_PORT + int(display)
    live = guest.dom.connect().lookupByUUIDString(guest.dom.UUIDString()).XMLDesc(0)
    assert re.search(rf"<graphics type='vnc' port='{port}'", live)
    assert (record["protocol"], record["location"], record["VM"]) == ("rfb", f"vnc://{host}:{port}", guest.vm)
    assert events.wait(lambda e: e["ref"] == console and e["operation"] == "add")["snapshot"]["location"] == \
        record["location"]
    with socket.create_connection((host, port), timeout=10) as vnc:    # a real VNC server is there
        assert vnc.recv(12).startswith(b"RFB ")

    x.VM.hard_shutdown(guest.vm)
    assert x.VM.get_consoles(guest.vm) == []
    events.wait(lambda e: e["ref"] == console and e["operation"] == "del")
    with pytest.raises(XenAPI.Failure) as e:
        x.console.get_record(console)
    assert e.value.details == ["HANDLE_INVALID", "console", console]
