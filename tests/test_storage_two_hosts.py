"""VDI.copy onto another host, for real: two libvirt daemons, each a host of the server's pool.

Each host is a throw-away libvirtd (tests/private_libvirtd.py) reached as
``qemu+unix:///session?socket=...``: libvirt's QEMU driver in session mode, with its storage
driver, real files and real volume streams.  The copy goes through libvirt's streams from one
daemon to the other, as it would between machines; the tests compare the data with qemu-img.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import start_server, stop_server
from tests.private_libvirtd import PrivateLibvirtd

MiB = 1 << 20


@pytest.fixture
def two_hosts(tmp_path):
    daemons = [PrivateLibvirtd(), PrivateLibvirtd()]
    for daemon in daemons:
        daemon.start()
    running = None
    try:
        uris = [f"qemu+unix:///session?socket={d.socket}" for d in daemons]
        running = start_server(tmp_path, uris=uris, libvirt_sync_wait=60)
        yield running, uris
    finally:
        if running is not None:
            stop_server(running)
        for daemon in daemons:
            daemon.remove()


def dir_sr(x, host: str, label: str) -> tuple[str, Path]:
    """A dir SR on ``host`` in a directory its daemon (running as nobody) can write."""
    location = Path(tempfile.mkdtemp(prefix=f"xenapi-{label}-"))
    location.chmod(0o777)
    return x.SR.create(host, {"location": str(location)}, "0", label, "", "dir", "user", False, {}), location


def fill(path: str, pattern: str, offset_mib: int, mib: int) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset_mib}M {mib}M", path],
                   check=True, capture_output=True)


def same_data(a: str, b: str) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", a, b], capture_output=True).returncode == 0


def test_vdi_copy_onto_another_host_streams_the_data_and_flattens_a_clone(two_hosts):
    running, uris = two_hosts
    x = running.session().xenapi
    host_a, host_b = (x.host.get_by_uuid(x.host.get_uuid(running.server.hosts.ref_of(u))) for u in uris)
    sr_a, _ = dir_sr(x, host_a, "a")
    sr_b, dir_b = dir_sr(x, host_b, "b")
    vdi = x.VDI.create({"SR": sr_a, "virtual_size": str(64 * MiB), "type": "user", "sharable": False,
                        "read_only": False, "other_config": {}, "name_label": "data"})
    fill(x.VDI.get_location(vdi), "0x5a", 1, 8)
    x.VDI.update(vdi)

    task = x.Async.VDI.copy(vdi, sr_b)
    while x.task.get_status(task) == "pending":
        pass
    record = x.task.get_record(task)
    assert record["status"] == "success", record["error_info"]
    assert record["progress"] == 1.0
    copy = record["result"].removeprefix("<value>").removesuffix("</value>")
    assert x.VDI.get_SR(copy) == sr_b and x.VDI.get_virtual_size(copy) == str(64 * MiB)
    assert x.VDI.get_name_label(copy) == "data"
    assert x.VDI.get_location(copy).startswith(str(dir_b))
    assert same_data(x.VDI.get_location(vdi), x.VDI.get_location(copy))

    # a clone is a qcow2 overlay on its source: the copy on the other host stands alone
    x.VDI.set_name_label(vdi, "base")
    snapshot = x.VDI.snapshot(vdi)
    clone = x.VDI.clone(snapshot)
    assert x.VDI.get_sm_config(clone).get("backing") == x.VDI.get_location(snapshot)
    fill(x.VDI.get_location(clone), "0xa5", 20, 4)
    flat = x.VDI.copy(clone, sr_b)
    info = subprocess.run(["qemu-img", "info", "--output=json", x.VDI.get_location(flat)], capture_output=True,
                          text=True, check=True).stdout
    assert "backing-filename" not in info
    assert same_data(x.VDI.get_location(clone), x.VDI.get_location(flat))
    pool_a_files = {p.name for p in Path(x.VDI.get_location(vdi)).parent.iterdir()}
    assert not [f for f in pool_a_files if f.startswith("xenapi-copy-")]    # the flattened temporary is gone


def test_a_failed_copy_onto_another_host_leaves_nothing_there(two_hosts):
    running, uris = two_hosts
    x = running.session().xenapi
    host_a, host_b = (running.server.hosts.ref_of(u) for u in uris)
    sr_a, _ = dir_sr(x, host_a, "a")
    sr_b, dir_b = dir_sr(x, host_b, "b")
    vdi = x.VDI.create({"SR": sr_a, "virtual_size": str(16 * MiB), "type": "user", "sharable": False,
                        "read_only": False, "other_config": {}})
    os.unlink(x.VDI.get_location(vdi))            # the source's file vanishes behind the server's back
    with pytest.raises(Exception) as failure:
        x.VDI.copy(vdi, sr_b)
    assert failure.value.details[0] in ("BACKEND_FAILURE", "VDI_COPY_FAILED"), failure.value.details
    assert list(dir_b.iterdir()) == []
    assert x.SR.get_VDIs(sr_b) == []
