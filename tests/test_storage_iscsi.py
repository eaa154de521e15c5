"""The iscsi plugin for real: a LUN served over loopback by tgt (Debian's userspace iSCSI target),
seen through libvirt's iscsi-direct pool (libiscsi, no kernel initiator) on qemu:///system, and
read and written by QEMU's own iSCSI driver (qemu-block-extra) as a guest's disk would be.

``tgt_target`` runs a private tgtd (its own control socket, a free loopback port), with one
target (a unique IQN) whose LUN 1 is a sparse 64 MiB file, open to this host's default initiator
IQN only; it is torn down whatever happens.  If the libvirtd answering qemu:///system was started
before the iscsi-direct backend was installed, ``iscsi_conn`` restarts it through
scripts/libvirtd.sh (only a daemon that script started; guests keep running).
"""
from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
import uuid as _uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from storage import PLUGINS, derived_vdi_uuid
from storage.iscsi import default_initiator_iqn
from tests.test_storage_plugins import REPO, SYSTEM_URI, Pools, system_conn, unique_name  # noqa: F401

MiB = 1024 * 1024
LUN_SIZE = 64 * MiB
BLOCK = 512
TGT_RUN = Path("/var/run/tgtd")          # tgtd's control sockets: socket.<control port>
LIBVIRTD_SH = REPO / "scripts" / "libvirtd.sh"


@dataclass
class Target:
    iqn: str
    port: int
    control_port: int
    lun_file: Path
    log: Path

    def adm(self, *args: str) -> str:
        r = subprocess.run(["tgtadm", "-C", str(self.control_port), "--lld", "iscsi", *args],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise AssertionError(f"tgtadm {' '.join(args)} failed: {r.stdout}{r.stderr}")
        return r.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_control_port() -> int:
    while True:
        n = random.randint(1000, 32000)          # tgtd takes -C up to 32767
        if not (TGT_RUN / f"socket.{n}").exists():
            return n


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _start_tgtd(tmp_path: Path, attempt: int) -> tuple[subprocess.Popen, int, int, Path]:
    control, port = _free_control_port(), _free_port()
    log = tmp_path / f"tgtd-{attempt}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["tgtd", "-f", "-C", str(control), "--iscsi", f"portal=127.0.0.1:{port}"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        if (TGT_RUN / f"socket.{control}").exists() and _listening(port):
            return proc, control, port, log
        time.sleep(0.05)
    _stop_tgtd(proc, control)
    raise RuntimeError(f"tgtd did not come up on 127.0.0.1:{port}: {log.read_text(errors='replace')}")


def _stop_tgtd(proc: subprocess.Popen, control: int) -> None:
    """tgtd exits on ``tgtadm --mode system --op delete`` (it ignores SIGTERM); KILL if it does not."""
    subprocess.run(["tgtadm", "-C", str(control), "--mode", "system", "--op", "delete"],
                   capture_output=True, timeout=30)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    for leftover in (f"socket.{control}", f"socket.{control}.lock"):
        (TGT_RUN / leftover).unlink(missing_ok=True)


@pytest.fixture
def tgt_target(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("tgtd serves iSCSI as root only")
    missing = [tool for tool in ("tgtd", "tgtadm", "qemu-io", "qemu-img") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{missing} not found: install tgt and qemu-utils (scripts/setup.sh)")
    for attempt in range(3):                         # a port taken between the probe and tgtd's bind
        try:
            proc, control, port, log = _start_tgtd(tmp_path, attempt)
            break
        except RuntimeError as e:
            error = e
    else:
        pytest.fail(str(error))
    lun_file = tmp_path / "lun1.img"
    with open(lun_file, "wb") as f:
        f.truncate(LUN_SIZE)                         # sparse
    target = Target(f"iqn.2024-01.org.xenapi.test:{os.getpid()}-{_uuid.uuid4().hex[:12]}", port, control,
                    lun_file, log)
    try:
        target.adm("--mode", "target", "--op", "new", "--tid", "1", "--targetname", target.iqn)
        target.adm("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1",
                   "--backing-store", str(lun_file))
        target.adm("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-name", default_initiator_iqn())
        yield target
    finally:
        try:
            target.adm("--mode", "target", "--op", "delete", "--force", "--tid", "1")
        except AssertionError:
            pass
        _stop_tgtd(proc, control)


def _iscsi_direct_loaded(conn) -> bool:
    caps = ET.fromstring(conn.getStoragePoolCapabilities(0))
    return any(p.get("type") == "iscsi-direct" and p.get("supported") == "yes" for p in caps.findall("pool"))


@pytest.fixture(scope="module")
def iscsi_conn(system_conn):
    """qemu:///system with libvirt's iscsi-direct backend loaded (a new connection after a restart)."""
    if not list(Path("/usr/lib").glob("*/libvirt/storage-backend/libvirt_storage_backend_iscsi-direct.so")):
        pytest.fail("libvirt's iscsi-direct backend is not installed: install "
                    "libvirt-daemon-driver-storage-iscsi-direct (scripts/setup.sh)")
    if _iscsi_direct_loaded(system_conn):
        yield system_conn
        return
    # libvirtd loads storage backends when it starts: this one came later.
    status = subprocess.run(["bash", str(LIBVIRTD_SH), "status"], capture_output=True, text=True, timeout=60)
    if "libvirtd: running" not in status.stdout:
        pytest.fail("the libvirtd serving qemu:///system was started before libvirt's iscsi-direct backend was "
                    "installed, and not by scripts/libvirtd.sh: restart it to load the backend")
    for action in ("stop", "start"):
        r = subprocess.run(["bash", str(LIBVIRTD_SH), action], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=180)
        assert r.returncode == 0, f"scripts/libvirtd.sh {action}: {r.stdout}"
    conn = libvirt.open(SYSTEM_URI)
    assert _iscsi_direct_loaded(conn), "libvirtd restarted, and still has no iscsi-direct backend"
    yield conn
    conn.close()


@pytest.fixture
def iscsi_pools(iscsi_conn, tgt_target):
    """Pools made by the test: stopped and undefined before the target goes away."""
    pools = Pools(iscsi_conn)
    yield pools
    pools.cleanup()


def _qemu_iscsi(target: Target, initiator: str) -> str:
    """QEMU's --image-opts for LUN 1, logging in as ``initiator``."""
    return (f"driver=raw,file.driver=iscsi,file.transport=tcp,file.portal=127.0.0.1:{target.port},"
            f"file.target={target.iqn},file.lun=1,file.initiator-name={initiator}")


def test_a_lun_is_a_volume_of_the_right_capacity(iscsi_pools, tgt_target):
    plugin = PLUGINS["iscsi"]
    sr = str(_uuid.uuid4())
    dc = {"target": "127.0.0.1", "port": str(tgt_target.port), "targetIQN": tgt_target.iqn}   # default initiator
    assert not plugin.needs_build(dc)
    pool = iscsi_pools.define(plugin.pool_xml(uuid=sr, name=unique_name("iscsi"), device_config=dc))
    pool.create(0)
    volumes = {vol.name(): vol for vol in pool.listAllVolumes(0)}
    assert "unit:0:0:1" in volumes, sorted(volumes)
    lun = volumes["unit:0:0:1"]
    capacity = lun.info()[1]
    # libvirt 9.0's iscsi-direct backend reports block size x last LBA: one block short
    assert capacity in (LUN_SIZE, LUN_SIZE - BLOCK), capacity
    assert lun.key() == f"ip-127.0.0.1:{tgt_target.port}-iscsi-{tgt_target.iqn}-lun-1"
    assert plugin.vdi_uuid(lun.name()) is None                      # LUNs are introduced with derived UUIDs
    assert derived_vdi_uuid(sr, lun.key()) == derived_vdi_uuid(sr, lun.key())
    assert all(v.info()[1] == 0 for name, v in volumes.items() if name != "unit:0:0:1")   # tgt's controller LUN 0

    # the LUN is the file: what QEMU's iSCSI driver writes there lands in tgt's backing file
    opts = _qemu_iscsi(tgt_target, default_initiator_iqn())
    r = subprocess.run(["qemu-io", "--image-opts", opts, "-c", "write -P 0x5a 1M 64k"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(tgt_target.lun_file, "rb") as f:
        f.seek(MiB)
        assert f.read(64 * 1024) == b"\x5a" * (64 * 1024)
    r = subprocess.run(["qemu-img", "info", "--image-opts", opts], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and f"({LUN_SIZE} bytes)" in r.stdout, r.stdout + r.stderr

    pool.refresh(0)                                                  # SR.scan: still the same LUN
    assert pool.storageVolLookupByName("unit:0:0:1").key() == lun.key()
    pool.destroy()
    pool.undefine()


def test_probe_finds_the_target(iscsi_conn, tgt_target):
    """SR.probe: SendTargets discovery on the portal lists the target's IQN."""
    spec = PLUGINS["iscsi"].probe_xml({"target": "127.0.0.1", "port": str(tgt_target.port)})
    found = ET.fromstring(iscsi_conn.findStoragePoolSources("iscsi-direct", spec, 0))
    assert [d.get("path") for d in found.findall("source/device")] == [tgt_target.iqn]
    assert found.find("source/host").attrib == {"name": "127.0.0.1", "port": str(tgt_target.port)}


def test_the_initiator_iqn_is_the_one_logging_in(iscsi_pools, tgt_target):
    """The target admits this host's default IQN only: another initiatorIQN cannot start the pool."""
    plugin = PLUGINS["iscsi"]
    dc = {"target": "127.0.0.1", "port": str(tgt_target.port), "targetIQN": tgt_target.iqn,
          "initiatorIQN": "iqn.2024-01.org.xenapi.test:stranger"}
    pool = iscsi_pools.define(plugin.pool_xml(uuid=str(_uuid.uuid4()), name=unique_name("iscsi"), device_config=dc))
    with pytest.raises(libvirt.libvirtError, match="(?i)login|connect"):
        pool.create(0)
    assert not pool.isActive()


def test_an_iscsi_sr_made_through_the_api_shows_its_lun_as_a_vdi(iscsi_conn, tgt_target, tmp_path):
    """SR.create of type iscsi on the real libvirtd: the pool is defined and started, the LUN is a
    VDI of the SR with its capacity, the SR cannot create VDIs (one LUN per VDI, made on the
    target), and SR.forget leaves the target's data alone."""
    from tests.conftest import start_server, stop_server
    running = start_server(tmp_path, uris=[SYSTEM_URI], libvirt_sync_wait=60)
    x = running.session().xenapi
    sr = None
    try:
        [host] = x.host.get_all()
        dc = {"target": "127.0.0.1", "port": str(tgt_target.port), "targetIQN": tgt_target.iqn}
        sr = x.SR.create(host, dc, "0", "iSCSI lab", "", "iscsi", "user", True, {})
        record = x.SR.get_record(sr)
        assert (record["type"], record["shared"]) == ("iscsi", True)
        [pbd] = record["PBDs"]
        assert x.PBD.get_currently_attached(pbd) is True and x.PBD.get_device_config(pbd) == dc
        luns = {x.VDI.get_sm_config(v)["volume"]: v for v in x.SR.get_VDIs(sr)}
        assert "unit:0:0:1" in luns, sorted(luns)
        lun = x.VDI.get_record(luns["unit:0:0:1"])
        assert int(lun["virtual_size"]) in (LUN_SIZE, LUN_SIZE - BLOCK)
        assert "vdi_create" not in record["allowed_operations"]
        with pytest.raises(Exception) as refused:
            x.VDI.create({"SR": sr, "virtual_size": str(MiB), "type": "user", "sharable": False,
                          "read_only": False, "other_config": {}})
        assert refused.value.details == ["SR_OPERATION_NOT_SUPPORTED", sr]
        x.SR.scan(sr)                                               # introduces the same LUN again
        assert x.VDI.get_uuid(luns["unit:0:0:1"]) == lun["uuid"]
        x.PBD.unplug(pbd)
        x.SR.forget(sr)
        sr = None
        assert tgt_target.lun_file.exists()
    finally:
        if sr is not None:
            for pbd in x.SR.get_PBDs(sr):
                if x.PBD.get_currently_attached(pbd):
                    x.PBD.unplug(pbd)
            x.SR.forget(sr)
        stop_server(running)
