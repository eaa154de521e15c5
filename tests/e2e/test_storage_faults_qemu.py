"""End to end: storage faults on a real libvirtd, each with a clear error and nothing half-made.

A pool whose directory vanished, an ISO deleted behind the server's back, a cancelled copy, and a
libvirtd that dies in the middle of a copy: the client gets a clear Xen-API error, and no volume,
file or record is left behind.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import XenAPI

from qemu_e2e import SYSTEM_URI

pytestmark = pytest.mark.e2e
LIBVIRTD_SH = Path(__file__).resolve().parents[2] / "scripts" / "libvirtd.sh"


def new_sr(x, host: str, kind: str, location: Path) -> str:
    location.mkdir(parents=True, exist_ok=True)
    return x.SR.create(host, {"location": str(location)}, "0", f"{kind} {location.name}", "", kind,
                       "iso" if kind == "iso" else "user", False, {})


def new_vdi(x, sr: str, size: int) -> str:
    return x.VDI.create({"SR": sr, "virtual_size": str(size), "type": "user", "sharable": False,
                         "read_only": False, "other_config": {}, "name_label": "fault test"})


def fill(path: str, mib: int) -> None:
    """Write ``mib`` MiB of non-zero data at the start of a qcow2 image (a copy then has work to do)."""
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {mib}M", path], check=True,
                   capture_output=True)


def finished(x, task: str, timeout: float = 180.0) -> dict:
    """The task's record once it has ended (success, failure or cancelled)."""
    deadline = time.monotonic() + timeout
    while x.task.get_status(task) in ("pending", "cancelling"):
        assert time.monotonic() < deadline, f"task {task} still running after {timeout} s"
        time.sleep(0.1)
    return x.task.get_record(task)


def copy_under_way(x, host: str, made: list, tmp_path: Path):
    """A VDI.copy of 1.5 GiB of data between two dir SRs, begun: (source VDI, target SR, task, the
    target directory's files before)."""
    source_sr = new_sr(x, host, "dir", tmp_path / "src")
    target_sr = new_sr(x, host, "dir", tmp_path / "dst")
    made += [source_sr, target_sr]
    vdi = new_vdi(x, source_sr, 2 << 30)
    fill(x.VDI.get_location(vdi), 1536)
    x.VDI.update(vdi)
    before = files_in(tmp_path / "dst")
    task = x.Async.VDI.copy(vdi, target_sr)
    deadline = time.monotonic() + 30
    while x.task.get_progress(task) <= 0.0 and x.task.get_status(task) == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    return vdi, target_sr, task, before


def files_in(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


@pytest.fixture
def storage(start_xenapi, tmp_path):
    server = start_xenapi()
    x = server.x
    [host] = x.host.get_all()
    made = []
    yield server, x, host, made
    for sr in made:
        try:
            for pbd in x.SR.get_PBDs(sr):
                if x.PBD.get_currently_attached(pbd):
                    x.PBD.unplug(pbd)
            x.SR.forget(sr)
        except XenAPI.Failure:
            pass


def test_a_pool_whose_directory_vanished_answers_sr_unavailable(storage, tmp_path):
    _, x, host, made = storage
    sr = new_sr(x, host, "dir", tmp_path / "vanishing")
    made.append(sr)
    shutil.rmtree(tmp_path / "vanishing")
    with pytest.raises(XenAPI.Failure) as failure:
        x.SR.scan(sr)
    assert failure.value.details[0] == "SR_BACKEND_FAILURE_47"
    assert failure.value.details[2].startswith("The SR is not available")
    assert x.SR.get_current_operations(sr) == {}          # nothing left in progress


def test_an_iso_deleted_behind_the_servers_back_is_vdi_missing(storage, tmp_path, start_xenapi):
    server, x, host, made = storage
    library = tmp_path / "isos"
    library.mkdir()
    (library / "install.iso").write_bytes(b"\0" * 65536)
    sr = new_sr(x, host, "iso", library)
    made.append(sr)
    [iso] = x.SR.get_VDIs(sr)
    vm = x.VM.create({**_halted_vm_record(), "name_label": "cd user"})
    server.created.append(vm)
    cd = x.VBD.create({"VM": vm, "VDI": "OpaqueRef:NULL", "userdevice": "3", "bootable": False, "mode": "RO",
                       "type": "CD", "empty": True, "other_config": {}, "qos_algorithm_type": "",
                       "qos_algorithm_params": {}})
    (library / "install.iso").unlink()
    with pytest.raises(XenAPI.Failure) as failure:
        x.VBD.insert(cd, iso)
    assert failure.value.details == ["VDI_MISSING", sr, iso]
    assert x.VBD.get_empty(cd) is True                    # the drive is as it was
    assert iso not in x.SR.get_VDIs(sr)                   # and the vanished ISO's record is gone


def test_a_cancelled_copy_leaves_no_volume(storage, tmp_path):
    _, x, host, made = storage
    vdi, target_sr, task, before = copy_under_way(x, host, made, tmp_path)
    x.task.cancel(task)
    record = finished(x, task)
    assert record["status"] == "cancelled", record
    assert files_in(tmp_path / "dst") == before           # no orphan file
    assert x.SR.get_VDIs(target_sr) == []                 # and no record
    assert x.VDI.get_current_operations(vdi) == {}


def _halted_vm_record() -> dict:
    from tests.conftest import vm_create_args
    return vm_create_args()


@pytest.mark.libvirtd_restart
def test_a_libvirtd_dying_mid_copy_fails_the_copy_cleanly(libvirt_uri, storage, tmp_path):
    _, x, host, made = storage
    status = subprocess.run(["bash", str(LIBVIRTD_SH), "status"], capture_output=True, text=True).stdout
    if libvirt_uri != SYSTEM_URI or "libvirtd: running" not in status:
        pytest.fail(f"this test stops and starts the libvirtd of scripts/libvirtd.sh; {libvirt_uri} is "
                    "served by another one", pytrace=False)
    vdi, target_sr, task, before = copy_under_way(x, host, made, tmp_path)
    try:
        subprocess.run(["bash", str(LIBVIRTD_SH), "stop"], check=True, capture_output=True, timeout=120)
        record = finished(x, task)
    finally:
        subprocess.run(["bash", str(LIBVIRTD_SH), "start"], check=True, capture_output=True, timeout=180)
    assert record["status"] == "failure", record
    assert record["error_info"][0] in ("HOST_NOT_LIVE", "HOST_OFFLINE", "VDI_COPY_FAILED"), record
    assert files_in(tmp_path / "dst") == before           # the half-made volume's file is gone
    deadline = time.monotonic() + 90
    while not x.host_metrics.get_live(x.host.get_metrics(host)) and time.monotonic() < deadline:
        time.sleep(0.2)
    x.SR.scan(target_sr)
    assert x.SR.get_VDIs(target_sr) == []
    assert os.path.exists(x.VDI.get_location(vdi))        # the source is untouched
