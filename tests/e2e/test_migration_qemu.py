"""End to end: VMs moved between the two lab hosts through the API (``xenapi.services.migration``).

One xenapi server drives both lab hosts (``tests/e2e/lab_hosts.py``) through their unix sockets;
the hosts' libvirtds dial each other over TCP inside their namespaces, which ``[migrate_uri]``
(``Config.migrate_uris``) tells the server.  Each host's "Local storage" SR is a directory in its
own private ``/var/lib/libvirt`` (``[storage] local_path``), so no storage is shared.

- A running tiny guest (TCG) is live-migrated lab1 -> lab2 -> lab1 with ``VM.pool_migrate``: the
  dry run (``VM.migrate(..., test=True)``) says yes and moves nothing; after each move the guest
  still answers on its serial console (reopened on the new host's pty) with the file it wrote
  before and an uptime that kept counting (a reboot would restart it and lose the file);
  ``resident_on``, ``host.resident_VMs`` and the events follow; libvirt defines it on one host only.
- A live migration slowed down (1 MiB/s, the guest dirtying memory so it never converges) and
  cancelled (``task.cancel`` of ``Async.VM.pool_migrate``, once its progress moved) ends
  cancelled, the guest running on lab1 as before, nothing on lab2; one whose destination libvirtd
  cannot be dialled fails with ``VM_MIGRATE_FAILED`` and libvirt's reason, the guest likewise.
- A guest with a disk on lab1's local SR is live-migrated with its disk copied (its data read back
  in the guest on lab2, with the page cache dropped), then halted and cold-migrated back with its
  disk (libvirt volume streams): the data is in the file on lab1; the old VDIs are gone each time.
"""
from __future__ import annotations

import contextlib
import threading
import time

import pytest

import guest_net as gn
from qemu_e2e import serving, tiny_vm_record

pytestmark = pytest.mark.e2e

MiB = 1 << 20
PRIVATE_LOCAL_SR = "/var/lib/libvirt/images/xenapi-local"   # inside each lab host's own mount namespace


@pytest.fixture
def lab_server(lab_hosts, tmp_path):
    """A xenapi server (in this process, HTTP on loopback) over both lab hosts, lab1 the master;
    the VMs of ``.created`` go after the test with their disks."""
    with serving(**lab_hosts.xenapi_settings(), storage_local_path=PRIVATE_LOCAL_SR,
                 state=str(tmp_path / "state")) as e2e:
        try:
            yield e2e
        finally:
            x = e2e.x
            for vm in e2e.created:
                with contextlib.suppress(Exception):
                    if x.VM.get_power_state(vm) != "Halted":
                        x.VM.hard_shutdown(vm)
                with contextlib.suppress(Exception):
                    for vbd in x.VM.get_VBDs(vm):
                        vdi = x.VBD.get_VDI(vbd)
                        x.VBD.destroy(vbd)
                        x.VDI.destroy(vdi)
                with contextlib.suppress(Exception):
                    x.VM.destroy(vm)


def _libvirt_state(lab_host, uuid: str):
    """(state, reason) of domain ``uuid`` on ``lab_host`` through a connection of its own; None if
    that host does not define it."""
    import libvirt
    with contextlib.closing(libvirt.open(lab_host.uri)) as conn:
        try:
            return tuple(conn.lookupByUUIDString(uuid).state())
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise


def _on_domain(lab_host, uuid: str, use):
    import libvirt
    with contextlib.closing(libvirt.open(lab_host.uri)) as conn:
        return use(conn.lookupByUUIDString(uuid))


def _shell(lab_host, uuid: str, log, name: str) -> gn.GuestShell:
    """The guest's shell on the pty of its QEMU on ``lab_host`` (a migrated guest has a new one)."""
    shell = _on_domain(lab_host, uuid, lambda dom: gn.GuestShell.of_domain(dom, log, name=name))
    shell.wait_ready(60)
    return shell


def _uptime(shell: gn.GuestShell) -> float:
    return float(shell.check("cat /proc/uptime").split()[0])


class Pool:
    def __init__(self, lab_hosts, lab_server):
        self.lab, self.s, self.x = lab_hosts, lab_server, lab_server.x
        by_name = {rec["hostname"]: ref for ref, rec in self.x.host.get_all_records().items()}
        self.host = {h.name: by_name[h.name] for h in lab_hosts.hosts}

    def lab_of(self, ref: str):
        return next(h for h in self.lab.hosts if self.host[h.name] == ref)

    def local_sr(self, lab_host) -> str:
        x = self.x
        return next(ref for ref, rec in x.SR.get_all_records().items()
                    if rec["other_config"].get("i18n-key") == "local-storage"
                    and any(x.PBD.get_host(p) == self.host[lab_host.name] for p in rec["PBDs"]))

    def new_vm(self, tiny_guest, label: str, lab_host) -> str:
        vm = self.x.VM.create({**tiny_vm_record(tiny_guest, label), "affinity": self.host[lab_host.name]})
        self.s.created.append(vm)
        return vm

    def start(self, vm: str, lab_host, log, name: str) -> gn.GuestShell:
        """Start ``vm`` paused on ``lab_host``, open its console, run it: its shell, ready."""
        x = self.x
        x.VM.start_on(vm, self.host[lab_host.name], True, False)
        shell = _on_domain(lab_host, x.VM.get_uuid(vm), lambda dom: gn.GuestShell.of_domain(dom, log, name=name))
        x.VM.unpause(vm)
        shell.wait_ready(120)
        return shell

    def live_move(self, vm: str, src, dst, shell: gn.GuestShell, log, marker: str) -> gn.GuestShell:
        """Live-migrate running ``vm`` from ``src`` to ``dst`` through the API and check that it
        kept running there; returns its shell on ``dst``."""
        x = self.x
        uuid = x.VM.get_uuid(vm)
        before = _uptime(shell)
        assert x.VM.migrate(vm, self.host[src.name], self.host[dst.name], True) is True     # the dry run...
        assert x.VM.get_resident_on(vm) == self.host[src.name]                            # ...moves nothing
        assert _libvirt_state(dst, uuid) is None
        events = self.s.events("vm")
        t0 = time.monotonic()
        x.VM.pool_migrate(vm, self.host[dst.name], {})
        wall = time.monotonic() - t0
        # the call's answer already shows it there, and so do the events
        assert (x.VM.get_power_state(vm), x.VM.get_resident_on(vm)) == ("Running", self.host[dst.name])
        assert vm in x.host.get_resident_VMs(self.host[dst.name])
        assert vm not in x.host.get_resident_VMs(self.host[src.name])
        events.vm(vm, resident_on=self.host[dst.name], power_state="Running")
        # libvirt: running on the destination, persistent there, gone from the source
        import libvirt
        assert _libvirt_state(dst, uuid)[0] == libvirt.VIR_DOMAIN_RUNNING
        assert _on_domain(dst, uuid, lambda dom: dom.isPersistent()) == 1
        assert _libvirt_state(src, uuid) is None
        shell.close()                                  # the source QEMU and its pty are gone
        shell = _shell(dst, uuid, log, name=f"{dst.name}-{uuid[:4]}")
        assert shell.check("cat /tmp/marker") == marker, "the guest's memory did not come across"
        assert _uptime(shell) >= before, "the guest restarted instead of moving"
        figures = self.s.server.migration.last[vm]
        print(f"live {src.name} -> {dst.name}: API call {wall:.3f} s, engine {figures['seconds']:.3f} s, "
              f"libvirt job {figures.get('job_ms', '?')} ms, downtime {figures.get('downtime_ms', '?')} ms")
        return shell


def test_a_running_guest_moves_live_there_and_back_and_a_cancelled_move_leaves_it_running(
        lab_hosts, lab_server, tiny_guest, tmp_path):
    import libvirt
    import XenAPI
    pool = Pool(lab_hosts, lab_server)
    x = pool.x
    lab1, lab2 = lab_hosts.lab1, lab_hosts.lab2
    vm = pool.new_vm(tiny_guest, "migrating guest", lab1)
    uuid = x.VM.get_uuid(vm)
    log = tmp_path / "console.log"
    shell = pool.start(vm, lab1, log, "g1")
    try:
        marker = f"written before the move {uuid}"
        shell.check(f"echo '{marker}' > /tmp/marker")
        shell = pool.live_move(vm, lab1, lab2, shell, log, marker)
        shell = pool.live_move(vm, lab2, lab1, shell, log, marker)

        # cancelled: 1 MiB/s while the guest rewrites 4 MiB of its memory over and over never ends
        _on_domain(lab1, uuid, lambda dom: dom.migrateSetMaxSpeed(1, 0))
        shell.check("(while :; do head -c 4194304 /dev/urandom > /tmp/dirty; done) >/dev/null 2>&1 & echo $! > /tmp/dirtier")
        before = _uptime(shell)
        task = x.Async.VM.pool_migrate(vm, pool.host[lab2.name], {})

        def migrating():           # the job runs, the task can be cancelled and reports the job's progress
            info = _on_domain(lab1, uuid, lambda dom: dom.jobInfo())
            return (info[0] != libvirt.VIR_DOMAIN_JOB_NONE and "cancel" in x.task.get_allowed_operations(task)
                    and x.task.get_progress(task) > 0)
        deadline = time.monotonic() + 60
        while not migrating():
            assert x.task.get_status(task) == "pending", x.task.get_record(task)
            assert time.monotonic() < deadline, "the migration job never started"
            time.sleep(0.05)
        progress_seen = x.task.get_progress(task)
        x.task.cancel(task)
        while x.task.get_status(task) in ("pending", "cancelling"):
            time.sleep(0.05)
        rec = x.task.get_record(task)
        assert rec["status"] == "cancelled", rec
        assert rec["error_info"][0] == "TASK_CANCELLED", rec["error_info"]
        assert (x.VM.get_power_state(vm), x.VM.get_resident_on(vm)) == ("Running", pool.host[lab1.name])
        assert _libvirt_state(lab1, uuid)[0] == libvirt.VIR_DOMAIN_RUNNING
        assert _libvirt_state(lab2, uuid) is None
        shell.check("kill $(cat /tmp/dirtier)")
        assert shell.check("cat /tmp/marker") == marker          # the same guest, on the same pty
        assert _uptime(shell) >= before
        print(f"cancelled live migration: progress {progress_seen:.4f} when cancelled")
        _on_domain(lab1, uuid, lambda dom: dom.migrateSetMaxSpeed(8796093022207, 0))   # QEMU's maximum, the default

        # unreachable: lab1's libvirtd cannot dial lab2's (a port nobody listens on): the dry run
        # says so, and the move is refused up front; the guest runs on lab1 as before (a failure
        # mid-flight, a libvirtd killed, is in test_migration_faults_qemu.py)
        config = lab_server.server.config
        config.migrate_uris[lab2.uri] = f"qemu+tcp://{lab2.address}:9/system"
        lab_server.server.migration.forget_reachability()
        try:
            assert x.VM.migrate(vm, pool.host[lab1.name], pool.host[lab2.name], True) is False
            with pytest.raises(XenAPI.Failure) as failure:
                x.VM.pool_migrate(vm, pool.host[lab2.name], {})
        finally:
            config.migrate_uris[lab2.uri] = lab2.tcp_uri
            lab_server.server.migration.forget_reachability()
        code, *params = failure.value.details
        assert code == "OPERATION_NOT_ALLOWED" and "cannot reach" in params[0] and ":9/" in params[0], params
        assert (x.VM.get_power_state(vm), x.VM.get_resident_on(vm)) == ("Running", pool.host[lab1.name])
        assert _libvirt_state(lab1, uuid)[0] == libvirt.VIR_DOMAIN_RUNNING and _libvirt_state(lab2, uuid) is None
        assert shell.check("cat /tmp/marker") == marker
        assert x.VM.migrate(vm, pool.host[lab1.name], pool.host[lab2.name], True) is True
        print(f"unreachable destination: {params[0]}")
    finally:
        shell.close()


def test_a_guest_moves_live_with_its_disk_copied_then_cold_back(lab_hosts, lab_server, tiny_guest, tmp_path):
    pool = Pool(lab_hosts, lab_server)
    x = pool.x
    lab1, lab2 = lab_hosts.lab1, lab_hosts.lab2
    sr1, sr2 = pool.local_sr(lab1), pool.local_sr(lab2)
    vm = pool.new_vm(tiny_guest, "guest with a disk", lab1)
    uuid = x.VM.get_uuid(vm)
    vdi = x.VDI.create({"SR": sr1, "virtual_size": str(16 * MiB), "type": "user", "sharable": False,
                        "read_only": False, "other_config": {}, "name_label": "data disk"})
    vbd = x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": "0", "bootable": False, "mode": "RW", "type": "Disk",
                        "empty": False, "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
    log = tmp_path / "console.log"
    shell = pool.start(vm, lab1, log, "g2")
    try:
        shell.check("for i in $(seq 100); do test -b /dev/vda && break; sleep 0.1; done; test -b /dev/vda", timeout=60)
        # 1 MiB of 'Z' (0x5a) at the start of the disk, on the disk (synced), not only in the cache
        shell.check("head -c 1048576 /dev/zero | tr '\\0' Z > /dev/vda && sync")
        marker = f"disk guest {uuid}"
        shell.check(f"echo '{marker}' > /tmp/marker")

        old_file = x.VDI.get_location(vdi)
        shell = pool.live_move(vm, lab1, lab2, shell, log, marker)
        new_vdi = x.VBD.get_VDI(vbd)
        assert new_vdi != vdi and x.VDI.get_SR(new_vdi) == sr2
        assert x.VDI.get_name_label(new_vdi) == "data disk"
        assert vdi not in x.VDI.get_all(), "the source's copy of the disk is left"
        assert lab1.run("test", "!", "-e", old_file, check=False).returncode == 0, "its file is left on lab1"
        shell.check("echo 3 > /proc/sys/vm/drop_caches")
        assert shell.check("head -c 1048576 /dev/vda | tr -d Z | wc -c").strip() == "0"

        # halted, then cold back to lab1 with its disk (libvirt's volume streams)
        shell.close()
        shell = None
        x.VM.hard_shutdown(vm)
        events = pool.s.events("vbd")
        t0 = time.monotonic()
        x.VM.pool_migrate(vm, pool.host[lab1.name], {})
        cold = time.monotonic() - t0
        assert _libvirt_state(lab1, uuid) is not None and _libvirt_state(lab2, uuid) is None
        assert pool.s.server.reconciler.homes[vm] == pool.host[lab1.name]
        back = x.VBD.get_VDI(vbd)
        assert x.VDI.get_SR(back) == sr1 and new_vdi not in x.VDI.get_all()
        events.wait(lambda e: e["ref"] == vbd and e["snapshot"]["VDI"] == back, what="VBD on the copied VDI")
        read = lab1.run("qemu-io", "-f", x.VDI.get_sm_config(back).get("format", "qcow2"), "-c",
                        "read -P 0x5a 0 1M", x.VDI.get_location(back))
        assert "read 1048576/1048576 bytes" in read.stdout and "fail" not in read.stdout.lower(), read.stdout
        print(f"cold migration lab2 -> lab1 with a 16 MiB disk: {cold:.3f} s")
        # it starts where it now is
        x.VM.start_on(vm, pool.host[lab1.name], False, False)
        assert x.VM.get_resident_on(vm) == pool.host[lab1.name]
    finally:
        if shell is not None:
            shell.close()
