"""Cold migration between two libvirt test-driver hosts (``xenapi.services.migration``).

Two hosts of one server, each a test driver over its own node file: a halted VM with a disk in
host A's local SR moves to host B: its definition (same uuid) is on B and no longer on A, its
disk is a new VDI in B's local SR (the test driver keeps no data: a volume of the same size) and
the old one is gone, its store-owned fields stay, and ``resident_on``/the reconciler's homes and
the events follow.  A move that fails (the destination refuses the definition) or is cancelled
leaves the source as it was and nothing on the destination; a live migration on the test driver
is refused with the reason, the VM still running on its host.
"""
from __future__ import annotations

import pytest

from tests.conftest import new_vbd, new_vdi, node_xml, start_server, stop_server, wait_for_event
from xenapi.errors import XenAPIError
from xenapi.model.types import NULL_REF


@pytest.fixture
def pool(tmp_path):
    uris = []
    for n in (1, 2):
        node = tmp_path / f"host{n}.xml"
        node.write_text(node_xml(domains=1, running=0).replace("<name>vm", f"<name>host{n}-vm"))
        uris.append(f"test://{node}")
    running = start_server(tmp_path, uris=uris)
    session = running.session()
    try:
        yield running, session.xenapi, [running.server.hosts.ref_of(u) for u in uris]
    finally:
        try:
            session.xenapi.session.logout()
        except Exception:
            pass
        stop_server(running)


class _Client:
    """What conftest's helpers take (``.xenapi``) around a session's proxy."""

    def __init__(self, x):
        self.xenapi = x


def local_sr(x, host: str) -> str:
    return next(ref for ref, rec in x.SR.get_all_records().items()
                if rec["other_config"].get("i18n-key") == "local-storage"
                and any(x.PBD.get_host(p) == host for p in rec["PBDs"]))


def domains_on(server, host: str) -> set[str]:
    return {d.uuid for d in server.hosts.connection(host).list_domains()}


def halted_vm_with_disk(x, server, host: str) -> tuple[str, str]:
    vm = next(ref for ref, rec in x.VM.get_all_records().items()
              if not rec["is_control_domain"] and server.reconciler.homes.get(ref) == host)
    assert x.VM.get_power_state(vm) == "Halted"
    client = _Client(x)
    vdi = new_vdi(client, 4 << 20, sr=local_sr(x, host), name_label="system disk", name_description="its data")
    new_vbd(client, vm, vdi, bootable=True)
    x.VM.set_name_description(vm, "moves between hosts")
    x.VM.add_to_other_config(vm, "owner", "pytest")
    return vm, vdi


def test_cold_migration_moves_the_definition_and_the_disk(pool):
    running, x, (a, b) = pool
    server = running.server
    vm, old_vdi = halted_vm_with_disk(x, server, a)
    uuid = x.VM.get_uuid(vm)
    sr_b = local_sr(x, b)
    token = getattr(x.event, "from")(["vbd", "vdi"], "", 0.0)["token"]

    server.migration.migrate(server.context(), vm, a, b, live=False, copy_storage=True)

    assert uuid in domains_on(server, b) and uuid not in domains_on(server, a)
    assert server.reconciler.homes[vm] == b
    rec = x.VM.get_record(vm)
    assert (rec["power_state"], rec["resident_on"]) == ("Halted", NULL_REF)
    assert (rec["name_description"], rec["other_config"].get("owner")) == ("moves between hosts", "pytest")
    (vbd,) = rec["VBDs"]
    new = x.VBD.get_VDI(vbd)
    assert new != old_vdi and x.VDI.get_SR(new) == sr_b
    assert (x.VDI.get_name_label(new), x.VDI.get_name_description(new)) == ("system disk", "its data")
    assert x.VDI.get_virtual_size(new) == str(4 << 20)
    assert old_vdi not in x.VDI.get_all()
    assert x.VBD.get_bootable(vbd) is True
    # a halted VM shows no host; clients see its disk move: the VBD names the new VDI, the old one goes
    wait_for_event(_Client(x), ["vbd"], token, lambda e: e["ref"] == vbd and e["snapshot"]["VDI"] == new)
    wait_for_event(_Client(x), ["vdi"], token, lambda e: e["ref"] == old_vdi and e["operation"] == "del")

    # and back, then it starts on its new home
    server.migration.migrate(server.context(), vm, b, a, live=False, copy_storage=True)
    assert uuid in domains_on(server, a) and uuid not in domains_on(server, b)
    assert x.VDI.get_SR(x.VBD.get_VDI(vbd)) == local_sr(x, a)
    x.VM.start(vm, False, False)
    assert x.VM.get_resident_on(vm) == a
    assert vm in x.host.get_resident_VMs(a) and vm not in x.host.get_resident_VMs(b)


def test_a_refused_definition_leaves_the_source_as_it_was_and_nothing_on_the_destination(pool):
    running, x, (a, b) = pool
    server = running.server
    vm, vdi = halted_vm_with_disk(x, server, a)
    uuid = x.VM.get_uuid(vm)
    # domains of the VM's libvirt name, and of the name a move would rename it to, other uuids,
    # on B: B refuses the VM's definition
    name = server.hosts.connection(a).domain_state(uuid).name
    clash, _ = (server.hosts.connection(b).define(
        f"<domain type='test'><name>{taken}</name><memory>65536</memory><os><type>hvm</type></os></domain>")
        for taken in (name, f"{name}-{uuid[:8]}"))
    vdis_b = set(x.SR.get_VDIs(local_sr(x, b)))

    with pytest.raises(XenAPIError) as failure:
        server.migration.migrate(server.context(), vm, a, b, live=False, copy_storage=True)

    assert failure.value.code == "VM_MIGRATE_FAILED" and failure.value.params[:3] == (vm, a, b)
    assert uuid in domains_on(server, a) and domains_on(server, b) >= {clash} and uuid not in domains_on(server, b)
    assert server.reconciler.homes[vm] == a
    assert set(x.SR.get_VDIs(local_sr(x, b))) == vdis_b                 # the copy is gone again
    assert x.VBD.get_VDI(x.VM.get_VBDs(vm)[0]) == vdi and vdi in x.VDI.get_all()
    assert x.VM.get_name_description(vm) == "moves between hosts"


def test_a_cancelled_cold_migration_changes_nothing(pool):
    running, x, (a, b) = pool
    server = running.server
    vm, vdi = halted_vm_with_disk(x, server, a)
    uuid = x.VM.get_uuid(vm)
    vdis_b = set(x.SR.get_VDIs(local_sr(x, b)))
    ctx = server.context()
    ctx.task_ref = server.tasks.create("VM.pool_migrate", cancellable=True)
    server.tasks.cancel(ctx.task_ref)

    with pytest.raises(XenAPIError) as failure:
        server.migration.migrate(ctx, vm, a, b, live=False, copy_storage=True)

    assert failure.value.code == "TASK_CANCELLED"
    assert uuid in domains_on(server, a) and uuid not in domains_on(server, b)
    assert server.reconciler.homes[vm] == a
    assert set(x.SR.get_VDIs(local_sr(x, b))) == vdis_b
    assert x.VBD.get_VDI(x.VM.get_VBDs(vm)[0]) == vdi


def test_the_test_driver_cannot_live_migrate_and_the_vm_keeps_running(pool):
    running, x, (a, b) = pool
    server = running.server
    assert server.migration.live_supported(a) == (False, "libvirt's test driver cannot live-migrate")
    vm, _ = halted_vm_with_disk(x, server, a)
    x.VM.start(vm, False, False)

    with pytest.raises(XenAPIError) as failure:
        server.migration.migrate(server.context(), vm, a, b, live=True, copy_storage=True)
    assert failure.value.code == "VM_MIGRATE_FAILED"
    assert failure.value.params == (vm, a, b, "libvirt's test driver cannot live-migrate")
    assert (x.VM.get_power_state(vm), x.VM.get_resident_on(vm)) == ("Running", a)

    # a running VM is not moved cold, nor a VM onto its own host
    with pytest.raises(XenAPIError) as failure:
        server.migration.migrate(server.context(), vm, a, b, live=False, copy_storage=True)
    assert failure.value.code == "VM_BAD_POWER_STATE"
    with pytest.raises(XenAPIError) as failure:
        server.migration.migrate(server.context(), vm, a, a, live=True, copy_storage=False)
    assert failure.value.code == "VM_MIGRATE_FAILED"
    assert x.VM.get_resident_on(vm) == a


def test_a_domain_undefined_on_one_host_and_defined_on_another_stays_the_same_vm(pool):
    """What a migration behind the server's back looks like to it: the VM is not forgotten when
    its old host says the domain is gone, and keeps its store-owned fields."""
    running, x, (a, b) = pool
    server = running.server
    vm = next(ref for ref, rec in x.VM.get_all_records().items()
              if not rec["is_control_domain"] and server.reconciler.homes.get(ref) == a)
    x.VM.set_name_description(vm, "kept")
    uuid = x.VM.get_uuid(vm)
    src, dst = server.hosts.connection(a), server.hosts.connection(b)
    dst.define(src.xml(uuid, inactive=True))
    src.undefine(uuid)
    server.reconciler.refresh(a, uuid)          # what the source's undefine event does
    assert server.reconciler.homes[vm] == b
    assert x.VM.get_name_description(vm) == "kept"
    server.reconciler.refresh(a, uuid)          # again, now that B is its home: still nothing to forget
    assert x.VM.get_uuid(vm) == uuid


def test_a_move_onto_a_host_with_a_domain_of_the_same_libvirt_name_renames_it(tmp_path):
    """Xen-API names need not be unique, libvirt's must: a VM moved where its libvirt name is taken
    goes there under ``<name>-<uuid prefix>``, still the same VM."""
    uris = []
    for n in (1, 2):
        node = tmp_path / f"same{n}.xml"
        node.write_text(node_xml(domains=1, running=0))                  # both define a "vm0"
        uris.append(f"test://{node}")
    running = start_server(tmp_path, uris=uris)
    try:
        x = running.session().xenapi
        a, b = (running.server.hosts.ref_of(u) for u in uris)
        vm = next(ref for ref, rec in x.VM.get_all_records().items()
                  if not rec["is_control_domain"] and running.server.reconciler.homes.get(ref) == a)
        uuid = x.VM.get_uuid(vm)
        x.VM.pool_migrate(vm, b, {})
        names = {d.name() for d in running.server.hosts.connection(b).read("list", lambda c: c.listAllDomains())}
        assert names == {"vm0", f"vm0-{uuid[:8]}"}
        assert running.server.reconciler.homes[vm] == b and x.VM.get_uuid(vm) == uuid
    finally:
        stop_server(running)
