"""End to end: live metrics of a real guest on a real libvirtd with QEMU.

The tiny guest gets a small raw virtio disk (the firmware reads its boot sector, so its read counter
moves) and a virtio tap NIC (no network or bridge: the host's own IPv6 chatter reaches it), both
written by the server's device builder (xenapi/backend/devices.py); its user-mode
NIC has no counters in libvirt and its balloon reports no free memory, so those are not asked for.
The sampler runs every second; the figures reach VM_metrics, GET /metrics, and go when it stops.
"""

import pytest

from qemu_e2e import MiB, define_guest, wait_for_metrics
from tests.metrics_support import samples, scrape, value
from xenapi.backend import devices

pytestmark = pytest.mark.e2e
LIVE_KEYS = {"disk_read_bytes", "disk_write_bytes", "net_rx_bytes", "net_tx_bytes"}


def _devices(disk) -> str:
    return devices.to_xml([{"kind": "disk", "path": str(disk), "format": "raw"}, {"kind": "nic"}], "virtio")


def test_a_running_guest_gets_live_memory_cpu_disk_and_net_figures(start_xenapi, make_domain, tiny_guest, tmp_path):
    server = start_xenapi(metrics_interval=1)
    x = server.x
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(4 * MiB))
    guest = define_guest(server, make_domain, tiny_guest, tmp_path, "metrics", extra_devices=_devices(disk))
    metrics = x.VM.get_metrics(guest.vm)
    x.VM.start(guest.vm, False, False)

    record = wait_for_metrics(x, metrics, lambda r: (
        any(float(share) > 0 for share in r["VCPUs_utilisation"].values())
        and int(r["other_config"].get("disk_read_bytes", "0")) > 0 and "net_rx_bytes" in r["other_config"]),
        "cpu use, disk reads and net counters")
    assert record["memory_actual"] == str(256 * MiB) and record["VCPUs_number"] == "1"
    assert set(record["VCPUs_utilisation"]) == {"0"} and 0 < record["VCPUs_utilisation"]["0"] <= 1
    assert LIVE_KEYS <= record["other_config"].keys()
    assert all(record["other_config"][key].isdigit() for key in LIVE_KEYS)

    status, _, text = scrape(server)
    found = samples(text)
    labels = {"uuid": x.VM.get_uuid(guest.vm)}
    assert status == 200 and value(found, "xenapi_vm_power_state", power_state="Running", **labels) == 1
    assert value(found, "xenapi_vm_memory_actual_bytes", **labels) == 256 * MiB
    assert value(found, "xenapi_vm_disk_read_bytes_total", **labels) > 0
    assert value(found, "xenapi_vm_net_rx_bytes_total", **labels) >= 0
    host = x.host.get_uuid(x.VM.get_resident_on(guest.vm))
    assert 0 < value(found, "xenapi_host_memory_free_bytes", uuid=host) < value(
        found, "xenapi_host_memory_total_bytes", uuid=host)

    x.VM.hard_shutdown(guest.vm)
    record = wait_for_metrics(x, metrics, lambda r: r["VCPUs_utilisation"] == {}, "the figures cleared")
    assert record["memory_actual"] == "0" and not LIVE_KEYS & record["other_config"].keys()
