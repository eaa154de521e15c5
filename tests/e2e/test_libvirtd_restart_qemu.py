"""End to end: the server lives through a libvirtd stop and start.

While the system libvirtd is stopped (its guests keep running), the server keeps answering: the
host's host_metrics.live turns false, calls that need libvirt fail at once with HOST_OFFLINE (or
HOST_NOT_LIVE when the call itself found the connection dead), reads and event.from are served from
the store. A guest's QEMU is killed meanwhile. When libvirtd is back, the server reconnects (with
backoff), re-registers its callbacks and relists: live turns true, the dead guest shows Halted through
an event, a later virsh change still arrives as an event, and the API drives libvirt again.

This test stops the daemon, so it runs after every other test of the session (marker
``libvirtd_restart``, see conftest.py), and it always starts the daemon again.
"""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import XenAPI

from qemu_e2e import SYSTEM_URI, define_guest, virsh

pytestmark = [pytest.mark.e2e, pytest.mark.libvirtd_restart]
LIBVIRTD_SH = Path(__file__).resolve().parents[2] / "scripts" / "libvirtd.sh"
HOST_DOWN_CODES = ("HOST_OFFLINE", "HOST_NOT_LIVE")


def _libvirtd(*args: str) -> str:
    r = subprocess.run(["bash", str(LIBVIRTD_SH), *args], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=180)
    if r.returncode != 0 and args[0] != "status":
        raise AssertionError(f"scripts/libvirtd.sh {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return r.stdout


def _fails_at_once_with_host_down(call) -> None:
    t0 = time.monotonic()
    with pytest.raises(XenAPI.Failure) as failure:
        call()
    assert failure.value.details[0] in HOST_DOWN_CODES, failure.value.details
    assert time.monotonic() - t0 < 5, "the call waited for libvirtd"


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_server_lives_through_a_libvirtd_restart(libvirt_uri, start_xenapi, make_domain, tiny_guest, tmp_path):
    if libvirt_uri != SYSTEM_URI or "libvirtd: running" not in _libvirtd("status"):
        pytest.fail(f"this test stops and starts the libvirtd of scripts/libvirtd.sh; {libvirt_uri} is "
                    f"served by another one", pytrace=False)
    server = start_xenapi()
    x = server.x
    [host] = x.host.get_all()
    metrics = x.host.get_metrics(host)
    doomed = define_guest(server, make_domain, tiny_guest, tmp_path, "killed")    # dies while libvirtd is away
    spare = define_guest(server, make_domain, tiny_guest, tmp_path, "spare")      # halted all along
    x.VM.start(doomed.vm, False, False)
    qemu_pid = int(Path(f"/run/libvirt/qemu/{doomed.name}.pid").read_text())
    host_events = server.events("host_metrics")
    vm_events = server.events("vm")

    try:
        _libvirtd("stop")                  # without --destroy-domains: the guest keeps running
        host_events.wait(lambda e: e["ref"] == metrics and e["snapshot"]["live"] is False, 30, "live=false")
        assert x.host_metrics.get_live(metrics) is False

        _fails_at_once_with_host_down(lambda: x.VM.start(spare.vm, False, False))
        _fails_at_once_with_host_down(lambda: x.VM.hard_shutdown(doomed.vm))
        _fails_at_once_with_host_down(lambda: x.VM.clean_shutdown(doomed.vm))
        # reads come from the store: the last known state, with nothing left in progress
        records = x.VM.get_all_records()
        assert (records[spare.vm]["power_state"], records[spare.vm]["current_operations"]) == ("Halted", {})
        assert (records[doomed.vm]["power_state"], records[doomed.vm]["current_operations"]) == ("Running", {})
        assert "start" in records[spare.vm]["allowed_operations"]
        assert x.host.get_record(host)["metrics"] == metrics
        assert isinstance(x.event_from(["vm"], vm_events.token, 0.2)["token"], str)   # event.from answers

        _kill(qemu_pid)                    # libvirtd finds it gone when it comes back
    finally:
        _libvirtd("start")

    host_events.wait(lambda e: e["ref"] == metrics and e["snapshot"]["live"] is True, 90, "live=true")
    vm_events.vm(doomed.vm, power_state="Halted", timeout=60)
    assert x.VM.get_record(doomed.vm)["resident_on"] == "OpaqueRef:NULL"
    virsh("start", spare.name)             # callbacks re-registered: a new change is seen
    vm_events.vm(spare.vm, power_state="Running", timeout=60)

    x.VM.hard_shutdown(spare.vm)           # and the API drives libvirt again
    x.VM.start(doomed.vm, False, False)
    assert (x.VM.get_power_state(spare.vm), x.VM.get_power_state(doomed.vm)) == ("Halted", "Running")
    x.VM.hard_shutdown(doomed.vm)
    assert x.host_metrics.get_live(metrics) is True
