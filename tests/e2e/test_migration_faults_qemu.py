"""End to end: faults around VM.migrate / VM.pool_migrate between the two lab hosts.

The server and pool of ``test_migration_qemu.py`` (``lab_server``: one xenapi server over both
lab hosts, their libvirtds dialling each other over TCP).  In every case the VM is never lost nor
running twice: both hosts' libvirtds are asked directly (each through a connection of its own),
exactly one defines the domain and, if it ran, exactly one runs it; the server keeps the VM's ref
and its store-owned fields (name_description, other_config).

- **The destination's libvirtd killed** (SIGKILL) during a live migration slowed down to 1 MiB/s
  (the guest dirtying memory, so it never converges): lab1's libvirtd, which drives the
  peer-to-peer migration, loses its connection to lab2's and aborts the job: the call fails with
  ``VM_MIGRATE_FAILED``, the guest keeps running on lab1 (same memory, uptime counting); when lab2's
  libvirtd is back it has nothing of the guest (the incoming QEMU was never its own domain to keep),
  the server shows lab2 live again and the VM Running on lab1, and a migration to lab2 then works.
- **The source's libvirtd killed** the same way: the call fails at once (the server's connection
  to lab1 died: ``VM_MIGRATE_FAILED``, "a host's libvirtd stopped answering"); lab2's libvirtd drops
  the incoming domain when its peer's connection closes, the source QEMU keeps running the guest;
  lab1's libvirtd, started again, reconnects to its QEMU and recovers the interrupted migration
  job (cancels it, the guest running): the VM is Running on lab1, once, with the same ref.
- **A VM that changed state during the check**: the dry run says yes, then the guest is destroyed
  with ``virsh`` before the server has seen it (its events held, as in the window between
  libvirt's change and its event): ``VM.pool_migrate`` fails with ``VM_BAD_POWER_STATE`` and the VM
  is Halted on lab1, defined there only; and a guest destroyed with ``virsh`` while its slowed
  migration runs: ``VM_BAD_POWER_STATE`` too, Halted on lab1, nothing on lab2.
- **A migration made outside the API** (``virsh migrate --live --p2p --persistent
  --undefinesource`` on lab1 to lab2's TCP URI): ``VM.resident_on`` and ``host.resident_VMs``
  follow, an event tells clients, the VM keeps its ref, name_description and other_config, and the
  API moves it back.
"""
from __future__ import annotations

import contextlib
import time

import pytest

from test_migration_qemu import Pool, _libvirt_state, _on_domain, _shell, _uptime, lab_server  # noqa: F401

pytestmark = pytest.mark.e2e

SLOW = 1                    # MiB/s: with the guest rewriting 4 MiB over and over, a migration never ends
QEMU_MAX_SPEED = 8796093022207
DIRTY = "(while :; do head -c 4194304 /dev/urandom > /tmp/dirty; done) >/dev/null 2>&1 & echo $! > /tmp/dirtier"


@pytest.fixture
def scrub(lab_hosts):
    """Domain uuids to remove from both lab hosts after the test (after lab_server's own cleanup),
    whatever the server thought of them; every killed libvirtd started again first."""
    uuids: list[str] = []
    yield uuids
    import libvirt
    for host in lab_hosts.hosts:
        with contextlib.suppress(Exception):
            if not host._ours(host.pid_of("libvirtd"), "libvirtd"):
                host.start_libvirtd()
        for uuid in uuids:
            with contextlib.suppress(Exception), contextlib.closing(libvirt.open(host.uri)) as conn:
                dom = conn.lookupByUUIDString(uuid)
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefine()


def _until(predicate, what: str, timeout: float = 60.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(every)
    return value


def _where(lab_hosts, uuid: str) -> dict:
    """lab host name -> libvirt (state, reason) of the domain, for the hosts that define it."""
    return {h.name: s for h in lab_hosts.hosts if (s := _libvirt_state(h, uuid)) is not None}


def _once(lab_hosts, uuid: str, running: bool) -> str:
    """Exactly one host defines the domain (persistently) and, if ``running``, runs it: its name."""
    import libvirt
    where = _where(lab_hosts, uuid)
    assert len(where) == 1, f"the domain is defined on {sorted(where)}: {where}"
    [(name, (state, _))] = where.items()
    host = next(h for h in lab_hosts.hosts if h.name == name)
    assert _on_domain(host, uuid, lambda dom: dom.isPersistent()) == 1, f"transient on {name}"
    if running:
        assert state == libvirt.VIR_DOMAIN_RUNNING, f"{name}: state {state}"
    else:
        assert state == libvirt.VIR_DOMAIN_SHUTOFF, f"{name}: state {state}"
    return name


def _live_in_server(x, host: str) -> bool:
    return x.host_metrics.get_live(x.host.get_metrics(host))


def _wait_task(x, task: str, timeout: float = 120.0) -> dict:
    return _until(lambda: x.task.get_status(task) not in ("pending", "cancelling") and x.task.get_record(task),
                  f"task {task} ends", timeout)


def _guest(pool: Pool, tiny_guest, tmp_path, label: str, name: str):
    """A running tiny guest on lab1 with store-owned fields set and a marker in its memory."""
    x, lab1 = pool.x, pool.lab.lab1
    vm = pool.new_vm(tiny_guest, label, lab1)
    x.VM.set_name_description(vm, f"{label}: kept across moves")
    x.VM.add_to_other_config(vm, "fault-test", name)
    shell = pool.start(vm, lab1, tmp_path / f"{name}.log", name)
    uuid = x.VM.get_uuid(vm)
    marker = f"{name} {uuid}"
    shell.check(f"echo '{marker}' > /tmp/marker")
    return vm, uuid, shell, marker


def _start_slow_migration(pool: Pool, vm: str, uuid: str, shell) -> str:
    """``Async.VM.pool_migrate`` lab1 -> lab2 at 1 MiB/s with the guest dirtying memory: its task,
    once libvirt's job runs on lab1 and its progress moved."""
    import libvirt
    x, lab1, lab2 = pool.x, pool.lab.lab1, pool.lab.lab2
    _on_domain(lab1, uuid, lambda dom: dom.migrateSetMaxSpeed(SLOW, 0))
    shell.check(DIRTY)
    task = x.Async.VM.pool_migrate(vm, pool.host[lab2.name], {})

    def migrating():
        info = _on_domain(lab1, uuid, lambda dom: dom.jobInfo())
        return info[0] != libvirt.VIR_DOMAIN_JOB_NONE and x.task.get_progress(task) > 0
    _until(lambda: migrating() or x.task.get_status(task) != "pending", "the migration job runs")
    assert x.task.get_status(task) == "pending", x.task.get_record(task)
    assert _libvirt_state(lab2, uuid) is not None, "no incoming domain on lab2 while migrating"
    return task


def _still_the_same_guest(shell, marker: str, before: float) -> None:
    shell.check("kill $(cat /tmp/dirtier) 2>/dev/null; true")
    assert shell.check("cat /tmp/marker") == marker, "the guest lost its memory"
    assert _uptime(shell) >= before, "the guest restarted"


def _kept(x, vm: str, uuid: str, label: str, name: str) -> None:
    assert x.VM.get_by_uuid(uuid) == vm, "the VM got a new ref"
    assert x.VM.get_name_description(vm) == f"{label}: kept across moves"
    assert x.VM.get_other_config(vm).get("fault-test") == name


def _killed_mid_migration(pool, vm: str, uuid: str, shell, victim, what: str) -> None:
    """Start a slow live migration lab1 -> lab2, kill ``victim``'s libvirtd during it: the call
    fails with VM_MIGRATE_FAILED naming the VM and both hosts."""
    x, lab1, lab2 = pool.x, pool.lab.lab1, pool.lab.lab2
    task = _start_slow_migration(pool, vm, uuid, shell)
    t0 = time.monotonic()
    victim.kill_libvirtd()
    rec = _wait_task(x, task)
    failed_after = time.monotonic() - t0
    assert rec["status"] == "failure", rec
    code, *params = rec["error_info"]
    assert code == "VM_MIGRATE_FAILED" and params[:3] == [vm, pool.host[lab1.name], pool.host[lab2.name]], \
        rec["error_info"]
    print(f"{what} libvirtd killed: the call failed {failed_after:.2f} s later: {params[3]}")


def _on_lab1_unchanged_then_moves(pool, vm: str, uuid: str, shell, marker: str, before: float, label: str,
                                  name: str) -> None:
    """After the failed move: the VM is lab1's only, with its ref, fields and guest unchanged; a
    move at full speed then succeeds."""
    x, lab1, lab2 = pool.x, pool.lab.lab1, pool.lab.lab2
    assert vm in x.host.get_resident_VMs(pool.host[lab1.name])
    assert vm not in x.host.get_resident_VMs(pool.host[lab2.name])
    _kept(x, vm, uuid, label, name)
    _still_the_same_guest(shell, marker, before)
    _on_domain(lab1, uuid, lambda dom: dom.migrateSetMaxSpeed(QEMU_MAX_SPEED, 0))
    x.VM.pool_migrate(vm, pool.host[lab2.name], {})
    assert _once(pool.lab, uuid, running=True) == lab2.name
    assert x.VM.get_resident_on(vm) == pool.host[lab2.name]


def test_destination_libvirtd_killed_mid_migration(lab_hosts, scrub, lab_server, tiny_guest, tmp_path):
    pool = Pool(lab_hosts, lab_server)
    x, lab1, lab2 = pool.x, lab_hosts.lab1, lab_hosts.lab2
    label = "dest killed"
    vm, uuid, shell, marker = _guest(pool, tiny_guest, tmp_path, label, "dk")
    scrub.append(uuid)
    try:
        before = _uptime(shell)
        _killed_mid_migration(pool, vm, uuid, shell, lab2, "destination")
        # while lab2's daemon is down: the guest runs on lab1, where the server shows it
        assert _libvirt_state(lab1, uuid)[0] == 1
        assert (x.VM.get_power_state(vm), x.VM.get_resident_on(vm)) == ("Running", pool.host[lab1.name])
        _until(lambda: not _live_in_server(x, pool.host[lab2.name]), "the server sees lab2 down")

        lab2.start_libvirtd()
        _until(lambda: _live_in_server(x, pool.host[lab2.name]), "the server sees lab2 live again")
        # lab2 kept nothing of the incoming guest; exactly one running copy, on lab1
        _until(lambda: list(_where(lab_hosts, uuid)) == [lab1.name], "only lab1 defines the guest")
        assert _once(lab_hosts, uuid, running=True) == lab1.name
        assert (x.VM.get_power_state(vm), x.VM.get_resident_on(vm)) == ("Running", pool.host[lab1.name])
        _on_lab1_unchanged_then_moves(pool, vm, uuid, shell, marker, before, label, "dk")   # the daemon back
        shell.close()
        shell = _shell(lab2, uuid, tmp_path / "dk.log", "dk2")
        _still_the_same_guest(shell, marker, before)
    finally:
        shell.close()
        if not lab2._ours(lab2.pid_of("libvirtd"), "libvirtd"):
            lab2.start_libvirtd()


def test_source_libvirtd_killed_mid_migration(lab_hosts, scrub, lab_server, tiny_guest, tmp_path):
    pool = Pool(lab_hosts, lab_server)
    x, lab1, lab2 = pool.x, lab_hosts.lab1, lab_hosts.lab2
    label = "source killed"
    vm, uuid, shell, marker = _guest(pool, tiny_guest, tmp_path, label, "sk")
    scrub.append(uuid)
    try:
        before = _uptime(shell)
        _killed_mid_migration(pool, vm, uuid, shell, lab1, "source")
        # the guest's QEMU on lab1 outlives its daemon and keeps the guest
        assert shell.check("cat /tmp/marker") == marker
        _until(lambda: _libvirt_state(lab2, uuid) is None, "lab2 drops the incoming domain")
        during = x.VM.get_record(vm)
        print(f"while lab1's libvirtd is down the server shows {during['power_state']} on "
              f"{next((n for n, r in pool.host.items() if r == during['resident_on']), during['resident_on'])}")
        assert x.VM.get_resident_on(vm) != pool.host[lab2.name]

        lab1.start_libvirtd()
        _until(lambda: _live_in_server(x, pool.host[lab1.name]), "the server sees lab1 live again")
        _until(lambda: (_libvirt_state(lab1, uuid) or (0,))[0] == 1, "lab1 runs the guest again")
        assert _once(lab_hosts, uuid, running=True) == lab1.name
        _until(lambda: (x.VM.get_power_state(vm), x.VM.get_resident_on(vm)) == ("Running", pool.host[lab1.name]),
               "the server shows the VM Running on lab1")
        _on_lab1_unchanged_then_moves(pool, vm, uuid, shell, marker, before, label, "sk")
    finally:
        shell.close()
        if not lab1._ours(lab1.pid_of("libvirtd"), "libvirtd"):
            lab1.start_libvirtd()


def test_a_vm_that_changed_state_during_the_check_is_not_moved(lab_hosts, scrub, lab_server, tiny_guest, tmp_path):
    import XenAPI
    pool = Pool(lab_hosts, lab_server)
    x, lab1, lab2 = pool.x, lab_hosts.lab1, lab_hosts.lab2
    server = lab_server.server
    label = "changed state"
    vm, uuid, shell, _ = _guest(pool, tiny_guest, tmp_path, label, "cs")
    scrub.append(uuid)
    shell.close()

    # between the dry run and the move: destroyed behind the server's back, before its event is seen
    assert x.VM.migrate(vm, pool.host[lab1.name], pool.host[lab2.name], True) is True
    with server.reconciler.hold(uuid):
        lab1.run("virsh", "destroy", uuid)
        assert x.VM.get_power_state(vm) == "Running"          # not seen yet
        with pytest.raises(XenAPI.Failure) as failure:
            x.VM.pool_migrate(vm, pool.host[lab2.name], {})
    assert failure.value.details[:2] == ["VM_BAD_POWER_STATE", vm], failure.value.details
    print(f"shut down before the move: {failure.value.details}")
    assert _once(lab_hosts, uuid, running=False) == lab1.name
    assert (x.VM.get_power_state(vm), x.VM.get_resident_on(vm)) == ("Halted", "OpaqueRef:NULL")
    _kept(x, vm, uuid, label, "cs")

    # while its migration runs: destroyed on lab1 mid-job
    shell = pool.start(vm, lab1, tmp_path / "cs2.log", "cs2")
    try:
        task = _start_slow_migration(pool, vm, uuid, shell)
        lab1.run("virsh", "destroy", uuid)
        rec = _wait_task(x, task)
        assert rec["status"] == "failure", rec
        assert rec["error_info"][:2] == ["VM_BAD_POWER_STATE", vm], rec["error_info"]
        print(f"shut down during the move: {rec['error_info']}")
        _until(lambda: _libvirt_state(lab2, uuid) is None, "lab2 drops the incoming domain")
        assert _once(lab_hosts, uuid, running=False) == lab1.name
        assert (x.VM.get_power_state(vm), x.VM.get_resident_on(vm)) == ("Halted", "OpaqueRef:NULL")
        _kept(x, vm, uuid, label, "cs")
    finally:
        shell.close()


def test_a_migration_made_outside_the_api_is_followed(lab_hosts, scrub, lab_server, tiny_guest, tmp_path):
    pool = Pool(lab_hosts, lab_server)
    x, lab1, lab2 = pool.x, lab_hosts.lab1, lab_hosts.lab2
    label = "virsh migrated"
    vm, uuid, shell, marker = _guest(pool, tiny_guest, tmp_path, label, "vm")
    scrub.append(uuid)
    try:
        before = _uptime(shell)
        events = lab_server.events("vm")
        lab1.run("virsh", "migrate", "--live", "--p2p", "--persistent", "--undefinesource", uuid, lab2.tcp_uri,
                 timeout=120)
        assert _once(lab_hosts, uuid, running=True) == lab2.name
        events.vm(vm, resident_on=pool.host[lab2.name], power_state="Running")
        _until(lambda: (x.VM.get_power_state(vm), x.VM.get_resident_on(vm)) == ("Running", pool.host[lab2.name]),
               "the server shows the VM Running on lab2")
        assert vm in x.host.get_resident_VMs(pool.host[lab2.name])
        assert vm not in x.host.get_resident_VMs(pool.host[lab1.name])
        assert server_home(lab_server, vm) == pool.host[lab2.name]
        _kept(x, vm, uuid, label, "vm")
        shell.close()
        shell = _shell(lab2, uuid, tmp_path / "vm.log", "vm2")
        _still_the_same_guest(shell, marker, before)

        # and the API moves it back from where it now is
        x.VM.pool_migrate(vm, pool.host[lab1.name], {})
        assert _once(lab_hosts, uuid, running=True) == lab1.name
        assert x.VM.get_resident_on(vm) == pool.host[lab1.name]
        _kept(x, vm, uuid, label, "vm")
    finally:
        shell.close()


def server_home(lab_server, vm: str) -> str:
    return lab_server.server.reconciler.homes.get(vm)
