"""host.qualify, its reasons, and what shares its checks (VM.migrate with test true,
VM.assert_can_boot_here, VM.get_possible_hosts, VM.start's placement), on libvirt's test driver:
two hosts that really differ (8 GiB and 1 GiB), the embedded default's figures made coherent."""
import pytest

from tests.conftest import fails, node_xml, start_server, stop_server
from xenapi.services.placement import SIMULATED_OS_MEMORY

GiB = 1 << 30


@pytest.fixture
def two(tmp_path):
    """A server over a big host (8 GiB, 4 CPUs, 2 guests, one running) and a small one (1 GiB, 1 CPU)."""
    big, small = tmp_path / "big.xml", tmp_path / "small.xml"
    big.write_text(node_xml(2, 1))
    small.write_text(node_xml(0, 0, memory_kib=1 << 20, cpus=1))
    running = start_server(tmp_path, uris=[f"test://{big}", f"test://{small}"])
    yield running, running.session()
    stop_server(running)


def hosts_of(xapi):
    by_cpus = sorted(xapi.xenapi.host.get_all(), key=lambda h: -len(xapi.xenapi.host.get_host_CPUs(h)))
    return by_cpus[0], by_cpus[1]


def halted_vm(xapi, big):
    vm = [v for v, r in xapi.xenapi.VM.get_all_records().items()
          if not r["is_control_domain"] and r["power_state"] == "Halted" and not r["is_a_template"]][0]
    return vm


def test_the_test_drivers_memory_figures_are_coherent(two):
    running, xapi = two
    big, small = hosts_of(xapi)
    for host, total in ((big, 8 * GiB), (small, 1 * GiB)):
        metrics = xapi.xenapi.host_metrics.get_record(xapi.xenapi.host.get_metrics(host))
        residents = [xapi.xenapi.VM.get_record(v) for v in xapi.xenapi.host.get_resident_VMs(host)]
        guests = sum(int(v["memory_dynamic_max"]) for v in residents if not v["is_control_domain"])
        control = [v for v in residents if v["is_control_domain"]][0]
        assert int(metrics["memory_total"]) == total
        assert int(control["memory_static_max"]) == SIMULATED_OS_MEMORY          # not the whole host
        assert int(xapi.xenapi.host.compute_free_memory(host)) == total - SIMULATED_OS_MEMORY - guests


def test_qualify_and_its_reasons_memory(two):
    running, xapi = two
    big, small = hosts_of(xapi)
    vm = halted_vm(xapi, big)
    assert xapi.xenapi.host.qualify(vm, big) is True and xapi.xenapi.host.qualify_reasons(vm, big) == []
    xapi.xenapi.VM.set_memory_limits(vm, str(256 << 20), str(1 * GiB), str(1 * GiB), str(1 * GiB))
    available = 1 * GiB - SIMULATED_OS_MEMORY
    assert xapi.xenapi.host.qualify(vm, small) is False
    assert xapi.xenapi.host.qualify_reasons(vm, small) == [["HOST_NOT_ENOUGH_FREE_MEMORY", str(GiB), str(available)]]
    assert fails(xapi.xenapi.VM.assert_can_boot_here, vm, small) == ["HOST_NOT_ENOUGH_FREE_MEMORY", str(GiB), str(available)]
    assert xapi.xenapi.VM.get_possible_hosts(vm) == [big]


def test_a_disabled_host_does_not_qualify(two):
    running, xapi = two
    big, small = hosts_of(xapi)
    vm = halted_vm(xapi, big)
    xapi.xenapi.host.disable(small)
    assert ["HOST_DISABLED", small] in xapi.xenapi.host.qualify_reasons(vm, small)
    xapi.xenapi.host.enable(small)
    assert xapi.xenapi.host.qualify_reasons(vm, small) == []


def test_a_network_the_destination_cannot_reach(two):
    running, xapi = two
    big, small = hosts_of(xapi)
    vm = halted_vm(xapi, big)
    net = xapi.xenapi.network.create({"name_label": "only here", "other_config": {}})
    xapi.xenapi.VIF.create({"device": "0", "network": net, "VM": vm, "MAC": "", "MTU": "1500", "other_config": {},
                            "qos_algorithm_type": "", "qos_algorithm_params": {}})
    uuid = xapi.xenapi.network.get_uuid(net)
    running.server.hosts.connection(small).undefine_network(uuid)
    running.server.reconciler.relist_networks(small)
    assert xapi.xenapi.host.qualify_reasons(vm, small) == [["VM_REQUIRES_NETWORK", vm, net]]
    assert xapi.xenapi.host.qualify(vm, big) is True


def test_migrate_with_test_true_and_qualify_agree_and_nothing_moves(two):
    running, xapi = two
    big, small = hosts_of(xapi)
    vm = halted_vm(xapi, big)
    events_before = running.server.store.generation
    for memory in (256 << 20, 1 * GiB):
        xapi.xenapi.VM.set_memory_limits(vm, str(256 << 20), str(memory), str(memory), str(memory))
        for host in (small,):
            assert xapi.xenapi.VM.migrate(vm, big, host, True) == xapi.xenapi.host.qualify(vm, host)
    assert running.server.reconciler.homes[vm] == big
    # the migration's own checks
    assert xapi.xenapi.VM.migrate(vm, small, big, True) is False          # it is not on small
    assert xapi.xenapi.VM.migrate(vm, big, big, True) is False            # the destination is where it is
    assert fails(xapi.xenapi.VM.assert_can_migrate, vm, {"host": big}, False, {}, {}, {})[0] == "OPERATION_NOT_ALLOWED"


def test_start_places_a_vm_where_it_fits(two):
    running, xapi = two
    big, small = hosts_of(xapi)
    vm = halted_vm(xapi, big)
    xapi.xenapi.VM.start(vm, False, False)
    assert xapi.xenapi.VM.get_resident_on(vm) == big
    xapi.xenapi.VM.hard_shutdown(vm)
    xapi.xenapi.host.disable(big)
    assert fails(xapi.xenapi.VM.start_on, vm, big, False, False) == ["HOST_DISABLED", big]
    assert xapi.xenapi.VM.get_power_state(vm) == "Halted"


def test_start_prefers_the_vms_affinity_host_when_it_qualifies(two):
    """xapi's home server: a VM with an affinity host starts there when that host qualifies, even
    with more memory free elsewhere (it is moved there cold first); else where it fits best."""
    running, xapi = two
    big, small = hosts_of(xapi)
    vm = halted_vm(xapi, big)
    xapi.xenapi.VM.set_memory_limits(vm, str(256 << 20), str(256 << 20), str(256 << 20), str(256 << 20))
    xapi.xenapi.VM.set_affinity(vm, small)
    xapi.xenapi.VM.start(vm, False, False)
    assert xapi.xenapi.VM.get_resident_on(vm) == small
    xapi.xenapi.VM.hard_shutdown(vm)
    xapi.xenapi.host.disable(small)                  # the affinity host no longer qualifies
    xapi.xenapi.VM.start(vm, False, False)
    assert xapi.xenapi.VM.get_resident_on(vm) == big


def test_start_moves_a_vm_whose_host_cannot_take_it_to_one_that_can(two):
    """VM.start without a host: its own host is full, the other has room; it is moved there (cold,
    its definition and disks) and started, and resident_on says where."""
    running, xapi = two
    big, small = hosts_of(xapi)
    vm = halted_vm(xapi, big)
    xapi.xenapi.VM.set_memory_limits(vm, str(256 << 20), str(256 << 20), str(256 << 20), str(256 << 20))
    xapi.xenapi.host.disable(big)
    assert xapi.xenapi.VM.get_possible_hosts(vm) == [small]
    xapi.xenapi.VM.start(vm, False, False)
    assert xapi.xenapi.VM.get_resident_on(vm) == small and xapi.xenapi.VM.get_power_state(vm) == "Running"
    assert running.server.reconciler.homes[vm] == small
    assert xapi.xenapi.VM.get_name_label(vm)                           # the same VM, not a new one
    xapi.xenapi.VM.hard_shutdown(vm)
    xapi.xenapi.host.disable(small)
    assert fails(xapi.xenapi.VM.start, vm, False, False) == ["HOST_DISABLED", small]   # its home's reason


def test_a_hosts_allowed_operations_follow_its_state(two):
    running, xapi = two
    big, small = hosts_of(xapi)
    assert set(xapi.xenapi.host.get_allowed_operations(small)) == {"evacuate", "vm_start", "vm_resume", "vm_migrate"}
    xapi.xenapi.host.disable(small)
    assert set(xapi.xenapi.host.get_allowed_operations(small)) == {"evacuate", "enable"}
    xapi.xenapi.host.enable(small)
    assert "enable" not in xapi.xenapi.host.get_allowed_operations(small)
