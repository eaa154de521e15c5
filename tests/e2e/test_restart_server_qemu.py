"""End to end: what changed in libvirt while the server was down is in the store when it comes back.

A server on the real libvirtd sees five tiny guests and is given what only it keeps (other_config,
profiles, tags), then stops.  Meanwhile, with virsh, one guest is started, a running one destroyed,
one undefined, one retitled and resized, and a new one defined.  The server restarts on the same
state directory: its first relist brings every VM in line with libvirt (power states, the undefined
VM and its metrics gone, the new one there, the changed fields), the store-only fields of the VMs
that still exist have survived, and an event.from token of the earlier run is answered as "": every
VM as an add, from which a client re-seeds its cache.
"""
import pytest
import XenAPI

from qemu_e2e import MiB, define_guest, virsh

pytestmark = pytest.mark.e2e
NULL = "OpaqueRef:NULL"


def test_a_restarted_server_catches_up_with_what_virsh_changed_meanwhile(start_xenapi, make_domain, tiny_guest,
                                                                         tmp_path):
    first = start_xenapi()
    x = first.x
    guests = {hint: define_guest(first, make_domain, tiny_guest, tmp_path, hint)
              for hint in ("started", "destroyed", "undefined", "changed")}
    x.VM.start(guests["destroyed"].vm, False, False)
    x.VM.add_to_other_config(guests["started"].vm, "owner", "alice")
    x.VM.set_profiles(guests["changed"].vm, ["gold"])
    x.VM.set_tags(guests["destroyed"].vm, ["web"])
    x.VM.set_tags(guests["undefined"].vm, ["doomed"])
    undefined_metrics = x.VM.get_metrics(guests["undefined"].vm)
    token = x.event_from(["vm"], "", 0.0)["token"]
    state = first.server.config.state
    first.http.shutdown()
    first.server.stop()                # (the fixture's stop at the end finds it stopped: harmless)

    virsh("start", guests["started"].name)
    virsh("destroy", guests["destroyed"].name)
    virsh("undefine", guests["undefined"].name)
    changed = guests["changed"].name
    virsh("setmaxmem", changed, str(384 * 1024), "--config")            # KiB
    virsh("setmem", changed, str(320 * 1024), "--config")
    virsh("desc", changed, "--config", "--title", "renamed while away")
    new_name = make_domain.name("new")
    xml = tmp_path / "new.xml"
    xml.write_text(tiny_guest.domain_xml(new_name, tmp_path / "new-serial.log"))
    virsh("define", str(xml))
    new_uuid = make_domain.track(new_name).UUIDString()

    second = start_xenapi(state=state)
    x = second.x
    records = x.VM.get_all_records()
    [host] = x.host.get_all()

    started = records[guests["started"].vm]
    assert (started["power_state"], started["resident_on"]) == ("Running", host)
    assert int(started["domid"]) == guests["started"].libvirt_id()
    assert started["other_config"] == {"owner": "alice"}
    assert guests["started"].vm in x.host.get_resident_VMs(host)

    destroyed = records[guests["destroyed"].vm]
    assert (destroyed["power_state"], destroyed["resident_on"], destroyed["domid"]) == ("Halted", NULL, "-1")
    assert destroyed["tags"] == ["web"]
    assert x.VM_metrics.get_memory_actual(destroyed["metrics"]) == "0"

    for ref, cls in ((guests["undefined"].vm, "VM"), (undefined_metrics, "VM_metrics")):
        with pytest.raises(XenAPI.Failure) as gone:
            getattr(x, cls).get_record(ref)
        assert gone.value.details == ["HANDLE_INVALID", cls, ref]

    resized = records[guests["changed"].vm]
    assert (resized["name_label"], resized["memory_static_max"], resized["memory_dynamic_max"]) == (
        "renamed while away", str(384 * MiB), str(320 * MiB))
    assert resized["profiles"] == ["gold"] and resized["power_state"] == "Halted"

    added = records[x.VM.get_by_uuid(new_uuid)]
    assert (added["name_label"], added["power_state"], added["other_config"]) == (new_name, "Halted", {})

    batch = x.event_from(["vm"], token, 0.0)           # a token of the earlier run: as if ""
    assert {e["ref"] for e in batch["events"]} == set(x.VM.get_all())
    assert {e["operation"] for e in batch["events"]} == {"add"}

    x.VM.hard_shutdown(guests["started"].vm)           # and the restarted server drives libvirt
    assert x.VM.get_power_state(guests["started"].vm) == "Halted"
