"""Reconciliation: at start-up the store is brought in line with libvirt, and VM_metrics.memory_actual
and VCPUs_number have one writer at a time.

A restart with changes made while the server was down is simulated on the test driver by rewriting
the host's node file between two runs on the same state directory: ``test:///<file>`` reads the file
at every open, so the URI (and the host) stays the same while its domains change.
"""
from __future__ import annotations

import copy
import uuid as uuidlib
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest
import XenAPI

from tests.conftest import node_xml, start_server, stop_server, vm_record
from tests.metrics_support import metrics_of, qemu_sample, sampler_of
from xenapi.backend import domxml

MiB = 1024 * 1024
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
ET.register_namespace("test", TEST_NS)


def _domains(node: ET.Element) -> dict[str, ET.Element]:
    return {d.findtext("name"): d for d in node.iter("domain")}


def _write(path: Path, node: ET.Element) -> None:
    path.write_text(ET.tostring(node, encoding="unicode"))


def _by_label(x) -> dict[str, str]:
    return {rec["name_label"]: ref for ref, rec in x.VM.get_all_records().items() if not rec["is_control_domain"]}


def _fails(call, *args) -> list[str]:
    with pytest.raises(XenAPI.Failure) as failure:
        call(*args)
    return failure.value.details


def test_a_restart_brings_the_store_in_line_with_changes_made_while_the_server_was_down(tmp_path):
    path = tmp_path / "host.xml"
    node = ET.fromstring(node_xml(domains=4, running=1))        # vm0 runs; vm1, vm2, vm3 are halted
    _write(path, node)
    uri = f"test://{path}"
    first = start_server(tmp_path, uris=[uri])
    x = first.session().xenapi
    vms = _by_label(x)
    x.VM.add_to_other_config(vms["vm1"], "owner", "alice")        # what only the store keeps
    x.VM.set_profiles(vms["vm3"], ["gold"])
    x.VM.set_tags(vms["vm2"], ["doomed"])
    gone_metrics = x.VM.get_metrics(vms["vm2"])
    token = x.event_from(["vm"], "", 0.0)["token"]
    stop_server(first)

    domains = _domains(node)                                      # meanwhile, behind the server's back:
    domains["vm1"].remove(domains["vm1"].find(f"{{{TEST_NS}}}runstate"))            # started
    node.remove(domains["vm2"])                                                         # undefined
    domains["vm3"].find("title").text = "renamed"                                       # retitled, resized
    for tag in ("memory", "currentMemory"):
        domains["vm3"].find(tag).text = str(512 * 1024)
    new = copy.deepcopy(domains["vm3"])                                                 # a new one
    new.find("name").text = new.find("title").text = "vm4"
    new.find("uuid").text = new_uuid = str(uuidlib.uuid4())
    node.append(new)
    _write(path, node)

    again = start_server(tmp_path, uris=[uri])
    try:
        x = again.session().xenapi
        records = x.VM.get_all_records()
        assert set(_by_label(x)) == {"vm0", "vm1", "renamed", "vm4"}
        host = again.server.hosts.master
        for label in ("vm0", "vm1"):
            rec = records[vms[label]]
            assert (rec["power_state"], rec["resident_on"]) == ("Running", host) and int(rec["domid"]) > 0
        assert records[vms["vm1"]]["other_config"] == {"owner": "alice"}
        assert vms["vm1"] in x.host.get_resident_VMs(host)
        assert _fails(x.VM.get_record, vms["vm2"]) == ["HANDLE_INVALID", "VM", vms["vm2"]]
        assert _fails(x.VM_metrics.get_record, gone_metrics)[0] == "HANDLE_INVALID"
        renamed = records[vms["vm3"]]
        assert (renamed["name_label"], renamed["memory_static_max"], renamed["memory_dynamic_max"]) == (
            "renamed", str(512 * MiB), str(512 * MiB))
        assert renamed["profiles"] == ["gold"] and renamed["power_state"] == "Halted"
        added = records[x.VM.get_by_uuid(new_uuid)]
        assert (added["name_label"], added["power_state"], added["other_config"]) == ("vm4", "Halted", {})

        # A token of the earlier run stands for another change log: as with "", every VM comes as an add.
        batch = x.event_from(["vm"], token, 0.0)
        assert {e["ref"] for e in batch["events"]} == set(records)
        assert {e["operation"] for e in batch["events"]} == {"add"}
        assert x.event_from(["vm"], batch["token"], 0.0)["events"] == []
    finally:
        stop_server(again)


def test_vms_of_a_host_that_is_down_at_start_wait_for_it_before_vanished_ones_go(tmp_path, libvirtd):
    """A VM read back from the database is dropped only once every host has been listed: while
    its host is down nobody can tell whether it still exists."""
    libvirtd.start()
    (tmp_path / "a.xml").write_text(node_xml(domains=1))
    first = start_server(tmp_path, uris=[f"test://{tmp_path / 'a.xml'}", libvirtd.uri])
    x = first.session().xenapi
    extra_uuid = str(uuidlib.uuid4())
    conn = libvirt.open(libvirtd.uri)
    try:
        conn.defineXML(domxml.build(vm_record("extra"), "test", uuid=extra_uuid, name="extra"))
    finally:
        conn.close()
    extra = _wait_for_uuid(x, extra_uuid)
    daemon_vm = _by_label(x)["test"]                   # the test driver's own domain, the same after a restart
    x.VM.add_to_other_config(daemon_vm, "owner", "bob")
    stop_server(first)
    libvirtd.kill()                                    # its state goes with it: "extra" will be gone

    again = start_server(tmp_path, uris=[f"test://{tmp_path / 'a.xml'}", libvirtd.uri])
    try:
        x = again.session().xenapi
        b_host = again.server.hosts.ref_of(libvirtd.uri)
        assert x.host_metrics.get_live(x.host.get_metrics(b_host)) is False
        assert {extra, daemon_vm} <= set(x.VM.get_all())        # kept: their host cannot say yet

        libvirtd.start()
        _wait(lambda: extra not in x.VM.get_all(), "the vanished VM to go once its host is back")
        assert x.host_metrics.get_live(x.host.get_metrics(b_host)) is True
        assert x.VM.get_other_config(daemon_vm) == {"owner": "bob"}
        assert x.VM.get_resident_on(daemon_vm) == b_host
    finally:
        stop_server(again)


def _wait(predicate, what: str, timeout: float = 20.0) -> None:
    import time
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)


def _wait_for_uuid(x, uuid: str) -> str:
    refs = []

    def seen() -> bool:
        try:
            refs.append(x.VM.get_by_uuid(uuid))
        except XenAPI.Failure:
            return False
        return True
    _wait(seen, f"VM {uuid}")
    return refs[-1]


# ---- memory_actual and VCPUs_number: the sampler's while the VM runs -----------------------------

def _running_vm(quiet) -> tuple:
    """(a root session's xenapi, a running guest, its uuid, its host, the host's sampler)."""
    x = quiet.session().xenapi
    vm = next(ref for ref, rec in x.VM.get_all_records().items() if rec["power_state"] == "Running"
              and not rec["is_control_domain"])
    sampler, host = sampler_of(quiet)
    return x, vm, x.VM.get_uuid(vm), host, sampler


def _changes(x, field: str) -> list[str]:
    """``field`` of every VM_metrics change since the last call (event.next keeps each change)."""
    return [e["snapshot"][field] for e in x.event.next() if e["class"] == "vm_metrics"]


def test_a_balloon_that_differs_from_the_definition_does_not_make_the_writers_take_turns(quiet):
    x, vm, uuid, host, sampler = _running_vm(quiet)
    assert metrics_of(x, vm)["memory_actual"] == str(256 * MiB)   # the definition's, until a balloon is sampled
    x.event.register(["vm_metrics"])

    # The balloon has not reached the definition's 256 MiB (as after virsh setmem): 192 MiB sampled.
    sampler.write(host, qemu_sample(0, {uuid: {"balloon.current": 192 * 1024}}))
    for label in ("a", "b"):
        x.VM.set_name_label(vm, label)                        # each change: the reconciler observes the VM
        quiet.server.reconciler.refresh(host, uuid)
    sampler.write(host, qemu_sample(1, {uuid: {"balloon.current": 192 * 1024}}))
    assert set(_changes(x, "memory_actual")) == {str(192 * MiB)}   # never back to 256 MiB in between
    sampler.write(host, qemu_sample(2, {uuid: {"balloon.current": 128 * 1024}}))
    quiet.server.reconciler.refresh(host, uuid)
    assert set(_changes(x, "memory_actual")) == {str(128 * MiB)}

    # Stopped: 0; started again: the definition's figure until the sampler has the balloon's.
    x.VM.hard_shutdown(vm)
    x.VM.start(vm, False, False)
    assert _changes(x, "memory_actual")[-2:] == ["0", str(256 * MiB)]


def test_a_vcpu_count_that_differs_from_the_definition_does_not_make_the_writers_take_turns(quiet):
    x, vm, uuid, host, sampler = _running_vm(quiet)
    assert metrics_of(x, vm)["VCPUs_number"] == "1"            # the definition's, until a count is sampled
    x.event.register(["vm_metrics"])

    # A live setvcpus the definition does not show: 2 vCPUs online sampled, 1 defined.
    sampler.write(host, qemu_sample(0, {uuid: {"vcpu.current": 2}}))
    for label in ("a", "b"):
        x.VM.set_name_label(vm, label)                        # each change: the reconciler observes the VM
        quiet.server.reconciler.refresh(host, uuid)
    sampler.write(host, qemu_sample(1, {uuid: {"vcpu.current": 2}}))
    assert set(_changes(x, "VCPUs_number")) == {"2"}            # never back to 1 in between
    sampler.write(host, qemu_sample(2, {uuid: {"vcpu.current": 3}}))
    quiet.server.reconciler.refresh(host, uuid)
    assert set(_changes(x, "VCPUs_number")) == {"3"}

    # Stopped: 0; started again: the definition's count until the sampler has one.
    x.VM.hard_shutdown(vm)
    x.VM.start(vm, False, False)
    assert _changes(x, "VCPUs_number")[-2:] == ["0", "1"]


def test_without_a_balloon_figure_memory_actual_follows_the_live_definition(quiet):
    x, vm, uuid, host, sampler = _running_vm(quiet)
    sampler.refresh(host)                                     # the test driver's sample: no balloon figure
    quiet.server.hosts.connection(host).read("setmem", lambda conn: conn.lookupByUUIDString(uuid).setMemoryFlags(
        128 * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE))          # virsh setmem --live
    quiet.server.reconciler.refresh(host, uuid)
    sampler.refresh(host)
    assert metrics_of(x, vm)["memory_actual"] == str(128 * MiB)
    assert x.VM.get_memory_dynamic_max(vm) == str(128 * MiB)
