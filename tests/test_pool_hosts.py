"""Hosts added and removed through the API (pool.add_host, pool.remove_host), one hypervisor type
per pool, and host.evacuate with its plan (get_vms_which_prevent_evacuation, assert_can_evacuate),
on libvirt's test driver; the real libvirtd (qemu:///system) plays the host of another type."""
import subprocess
from pathlib import Path

import libvirt
import pytest

from tests.conftest import fails, node_xml, start_server, stop_server

GiB = 1 << 30
REPO = Path(__file__).resolve().parents[1]
SYSTEM_URI = "qemu:///system"


def pool_of(xapi):
    return xapi.xenapi.pool.get_all()[0]


def named(xml: str, prefix: str) -> str:
    """Domain names of their own (a move keeps the libvirt name, which the destination must not have)."""
    return xml.replace("<name>vm", f"<name>{prefix}-vm")


def homes(running):
    return running.server.reconciler.homes


def on(running, host):
    return sorted(vm for vm, h in homes(running).items() if h == host)


@pytest.fixture
def files(tmp_path):
    """A big host's node file (8 GiB, 4 CPUs, 2 guests, 1 running) and a small one's (2 GiB, 1 CPU, 1 halted guest)."""
    big, small = tmp_path / "big.xml", tmp_path / "small.xml"
    big.write_text(node_xml(2, 1))
    small.write_text(named(node_xml(1, 0, memory_kib=2 << 20, cpus=1), "small"))
    return big, small


@pytest.fixture
def one(tmp_path, files):
    running = start_server(tmp_path, uris=[f"test://{files[0]}"])
    yield running, running.session()
    stop_server(running)


def system_libvirtd() -> bool:
    """qemu:///system answers (started by scripts/libvirtd.sh if it does not yet)."""
    def answers():
        try:
            libvirt.open(SYSTEM_URI).close()
            return True
        except libvirt.libvirtError:
            return False
    if answers():
        return True
    subprocess.run(["bash", str(REPO / "scripts/libvirtd.sh"), "start"], capture_output=True, timeout=120)
    return answers()


# -- pool.add_host / pool.remove_host -------------------------------------------------------------
def test_a_host_added_by_uri_shows_with_its_records_and_qualifies_vms(one, files):
    running, xapi = one
    (master,) = xapi.xenapi.host.get_all()
    pool = pool_of(xapi)
    assert xapi.xenapi.pool.get_other_config(pool)["hypervisor"] == "TEST"
    small = xapi.xenapi.pool.add_host(pool, f"test://{files[1]}")
    assert sorted(xapi.xenapi.host.get_all()) == sorted([master, small])
    rec = xapi.xenapi.host.get_record(small)
    assert rec["API_version_vendor_implementation"]["libvirt_uri"] == f"test://{files[1]}"
    assert rec["other_config"]["libvirt_sync"] == "synced"
    assert xapi.xenapi.host_metrics.get_live(rec["metrics"]) is True
    assert int(xapi.xenapi.host_metrics.get_memory_total(rec["metrics"])) == 2 * GiB
    assert len(rec["host_CPUs"]) == 1
    assert xapi.xenapi.VM.get_is_control_domain(rec["control_domain"]) is True
    assert rec["PIFs"] and rec["PBDs"]
    assert len(on(running, small)) == 1                       # its guest is listed
    # a VM of the master qualifies there, and placement sees it
    vm = [v for v in on(running, master) if xapi.xenapi.VM.get_power_state(v) == "Halted"][0]
    assert xapi.xenapi.host.qualify(vm, small) is True
    assert small in xapi.xenapi.VM.get_possible_hosts(vm)
    # once only; an unreachable URI leaves nothing
    assert fails(xapi.xenapi.pool.add_host, pool, f"test://{files[1]}")[0] == "OPERATION_NOT_ALLOWED"
    error = fails(xapi.xenapi.pool.add_host, pool, f"test://{files[1].parent}/missing.xml")
    assert error[0] == "POOL_JOINING_HOST_CONNECTION_FAILED" and error[1].endswith("missing.xml")
    assert len(xapi.xenapi.host.get_all()) == 2


def test_an_added_host_comes_back_after_a_restart_and_is_removed(tmp_path, files):
    running = start_server(tmp_path, uris=[f"test://{files[0]}"])
    xapi = running.session()
    small = xapi.xenapi.pool.add_host(pool_of(xapi), f"test://{files[1]}")
    stop_server(running)

    running = start_server(tmp_path, uris=[f"test://{files[0]}"])
    try:
        xapi = running.session()
        master = running.server.hosts.master
        assert small in xapi.xenapi.host.get_all()
        rec = xapi.xenapi.host.get_record(small)
        assert xapi.xenapi.host_metrics.get_live(rec["metrics"]) is True
        (guest,) = on(running, small)
        pool = pool_of(xapi)
        # in use: refused, nothing changes
        assert fails(xapi.xenapi.pool.remove_host, pool, small) == ["HOST_IN_USE", small, "VM", guest]
        assert fails(xapi.xenapi.pool.remove_host, pool, master)[0] == "OPERATION_NOT_ALLOWED"   # configured
        # its guest moves away (cold), then the host goes with its records
        xapi.xenapi.VM.pool_migrate(guest, master, {})
        assert homes(running)[guest] == master
        pifs, pbds, cpus = rec["PIFs"], rec["PBDs"], rec["host_CPUs"]
        xapi.xenapi.pool.remove_host(pool, small)
        assert xapi.xenapi.host.get_all() == [master]
        store = running.server.store
        assert not store.exists("host_metrics", rec["metrics"]) and not store.exists("VM", rec["control_domain"])
        assert not any(store.exists("PIF", p) for p in pifs) and not any(store.exists("PBD", p) for p in pbds)
        assert not any(store.exists("host_cpu", c) for c in cpus)
        for cls in ("PIF", "PBD", "host_cpu"):
            assert all(r["host"] != small for r in store.records(cls).values())
        assert xapi.xenapi.VM.get_power_state(guest) == "Halted"
    finally:
        stop_server(running)
    running = start_server(tmp_path, uris=[f"test://{files[0]}"])     # removed for good
    try:
        assert running.session().xenapi.host.get_all() == [running.server.hosts.master]
    finally:
        stop_server(running)


def test_a_host_of_another_hypervisor_type_is_refused_and_nothing_stays(one):
    if not system_libvirtd():
        pytest.skip("qemu:///system does not answer")
    running, xapi = one
    before = {cls: set(running.server.store.refs(cls)) for cls in ("host", "host_metrics", "PIF", "PBD", "VM", "SR")}
    error = fails(xapi.xenapi.pool.add_host, pool_of(xapi), SYSTEM_URI)
    assert error[0] == "POOL_HOSTS_NOT_HOMOGENEOUS"
    assert "TEST" in error[1] and "QEMU" in error[1] and SYSTEM_URI in error[1]
    assert {cls: set(running.server.store.refs(cls)) for cls in before} == before
    assert xapi.xenapi.pool.get_other_config(pool_of(xapi))["hypervisor"] == "TEST"


def test_a_configuration_mixing_types_keeps_the_odd_host_out(tmp_path, files):
    if not system_libvirtd():
        pytest.skip("qemu:///system does not answer")
    running = start_server(tmp_path, uris=[f"test://{files[0]}", SYSTEM_URI])
    try:
        xapi = running.session()
        master, odd = running.server.hosts.refs
        assert xapi.xenapi.pool.get_other_config(pool_of(xapi))["hypervisor"] == "TEST"
        rec = xapi.xenapi.host.get_record(odd)
        assert rec["other_config"]["libvirt_sync"] == "refused"
        assert "TEST" in rec["other_config"]["refused"] and "QEMU" in rec["other_config"]["refused"]
        assert xapi.xenapi.host_metrics.get_live(rec["metrics"]) is False
        assert on(running, odd) == []                                   # none of its VMs
        vm = [v for v in on(running, master) if xapi.xenapi.VM.get_power_state(v) == "Halted"][0]
        assert xapi.xenapi.host.qualify_reasons(vm, odd) == [["HOST_NOT_LIVE"]]
    finally:
        stop_server(running)


# -- host.evacuate --------------------------------------------------------------------------------
@pytest.fixture
def pair(tmp_path):
    """Two 8 GiB test-driver hosts: the first with two halted guests, the second with one running."""
    a, b = tmp_path / "a.xml", tmp_path / "b.xml"
    a.write_text(node_xml(2, 0))
    b.write_text(named(node_xml(1, 1), "b"))
    running = start_server(tmp_path, uris=[f"test://{a}", f"test://{b}"])
    yield running, running.session(), *running.server.hosts.refs
    stop_server(running)


def test_evacuating_a_host_whose_vms_fit_elsewhere_moves_them(pair):
    running, xapi, a, b = pair
    vms = on(running, a)
    assert len(vms) == 2
    assert xapi.xenapi.host.get_vms_which_prevent_evacuation(a) == {}
    xapi.xenapi.host.assert_can_evacuate(a)
    task = xapi.xenapi.Async.host.evacuate(a)
    while xapi.xenapi.task.get_status(task) == "pending":
        pass
    assert xapi.xenapi.task.get_status(task) == "success", xapi.xenapi.task.get_error_info(task)
    assert float(xapi.xenapi.task.get_progress(task)) == 1.0
    assert on(running, a) == [] and all(homes(running)[vm] == b for vm in vms)
    assert all(xapi.xenapi.VM.get_power_state(vm) == "Halted" for vm in vms)
    assert xapi.xenapi.host.get_enabled(a) is True              # evacuate does not disable the host
    xapi.xenapi.host.evacuate(a, "OpaqueRef:NULL", 1)            # xapi's longer forms; nothing left to move


def test_an_evacuation_that_cannot_complete_is_refused_and_moves_nothing(pair):
    running, xapi, a, b = pair
    (live,) = on(running, b)
    before = {vm: homes(running)[vm] for vm in homes(running)}
    # b's running guest: the test driver cannot live-migrate, a reason and not a crash
    prevent = xapi.xenapi.host.get_vms_which_prevent_evacuation(b)
    assert list(prevent) == [live] and prevent[live][0] == "OPERATION_NOT_ALLOWED"
    assert "live-migrate" in prevent[live][1]
    error = fails(xapi.xenapi.host.assert_can_evacuate, b)
    assert error == ["CANNOT_EVACUATE_HOST", ",".join(prevent[live])]
    assert fails(xapi.xenapi.host.evacuate, b) == prevent[live]
    # a's halted guest too big for b's memory left; the other still fits: refused, nothing moved
    big_vm, small_vm = on(running, a)
    xapi.xenapi.VM.set_memory_limits(big_vm, str(256 << 20), str(8 * GiB), str(8 * GiB), str(8 * GiB))
    prevent = xapi.xenapi.host.get_vms_which_prevent_evacuation(a)
    assert list(prevent) == [big_vm] and prevent[big_vm][0] == "HOST_NOT_ENOUGH_FREE_MEMORY"
    assert prevent[big_vm][1] == str(8 * GiB)
    assert fails(xapi.xenapi.host.evacuate, a)[0] == "HOST_NOT_ENOUGH_FREE_MEMORY"
    # no other enabled host: every VM says so
    xapi.xenapi.VM.set_memory_limits(big_vm, str(256 << 20), str(256 << 20), str(256 << 20), str(256 << 20))
    xapi.xenapi.host.disable(b)
    assert xapi.xenapi.host.get_vms_which_prevent_evacuation(a) == {big_vm: ["NO_HOSTS_AVAILABLE", big_vm],
                                                                     small_vm: ["NO_HOSTS_AVAILABLE", small_vm]}
    assert fails(xapi.xenapi.host.evacuate, a) in (["NO_HOSTS_AVAILABLE", big_vm], ["NO_HOSTS_AVAILABLE", small_vm])
    assert {vm: homes(running)[vm] for vm in homes(running)} == before
    assert xapi.xenapi.VM.get_power_state(live) == "Running"
