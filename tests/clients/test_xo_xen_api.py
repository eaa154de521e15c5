"""Xen Orchestra's Node client, npm ``xen-api@4.7.6``, against a real server.

Each test runs ``tests/clients/node/xo_client.mjs <scenario>`` (see that file) with Node, over
both transports: ``auto`` (JSON-RPC on /jsonrpc) and ``xml-rpc`` (which makes the library parse
our XML with its whitespace-intolerant parser).  The Node side prints a JSON report; the Python
side checks it, the server's state through the official XenAPI client, and -- through the
``calls`` spy -- what the library actually sent.  Node must exit on its own after
``disconnect()``: the library leaves its event.from long poll open, so that also checks that
session.logout ends a blocked event.from.

Storage: SR, VDI, VBD, PBD and SM objects reach XO's cache with every field and with the links
xo-server's ``xapi-object-to-xo.mjs`` follows (``$SR``, ``$VBDs``, ``$PBDs``, ``$host``...), and a VDI
that another session creates, renames and destroys appears, changes and leaves the cache (and its
SR's ``VDIs``) through event.from -- on the embedded default and on a private test:///<file> host.
"""
from __future__ import annotations

import pytest

from tests.conftest import vm_create_args

pytestmark = pytest.mark.clients

TRANSPORTS = {"auto": "jsonrpc2", "xml-rpc": "xmlrpc"}   # library option -> protocol the server decoded
both_transports = pytest.mark.parametrize("transport", list(TRANSPORTS))


def _no_event_loop_warnings(run) -> None:
    assert "_watchEvents" not in run.stderr, f"XO's event loop logged a failure:\n{run.stderr}"


@both_transports
def test_connect_syncs_every_vm_into_the_cache_with_all_fields_then_disconnects(running, xapi, calls,
                                                                                   xo_client, transport):
    run = xo_client("connect", running.url, transport)
    report = run.report

    records = xapi.xenapi.VM.get_all_records()
    assert report["status"] == "connected" and report["statusAfterDisconnect"] == "disconnected"
    assert report["watchEventsError"] is None
    _no_event_loop_warnings(run)
    assert report["counts"]["VM"] == len(records) == 3
    assert report["counts"]["pool"] == 1 and report["counts"]["host"] == 1
    assert report["pool"]["master"] == running.server.master_ref and report["pool"]["masterType"] == "host"
    by_ref = {vm["ref"]: vm for vm in report["vms"]}
    assert by_ref.keys() == records.keys()
    for ref, rec in records.items():
        vm = by_ref[ref]
        assert (vm["name_label"], vm["power_state"], vm["is_control_domain"]) == \
            (rec["name_label"], rec["power_state"], rec["is_control_domain"])
        assert set(vm["fields"]) == set(rec), "XO keeps only the first record's keys: records must be uniform"
        assert vm["byUuid"] == ref
        if not rec["is_control_domain"]:   # (the control domain's metrics: see test_xenapi_python)
            assert vm["metricsType"] == "VM_metrics"
        assert vm["residentOnType"] == ("host" if rec["power_state"] == "Running" else None)
    assert sum(vm["is_control_domain"] for vm in report["vms"]) == 1


@both_transports
def test_connect_sends_the_documented_sequence_over_the_chosen_protocol(running, calls, xo_client, transport):
    xo_client("connect", running.url, transport)

    methods = calls.methods()
    assert methods[:4] == ["session.login_with_password", "pool.get_all_records", "system.listMethods",
                           "event.inject"], methods
    assert len(calls.named("session.login_with_password")[0].params) == 2
    assert "VM.get_all_records" in methods and "event.from" in methods
    event_from = calls.named("event.from")[0]
    assert isinstance(event_from.params[3], float) and event_from.params[3] > 60
    assert calls.protocols() == {TRANSPORTS[transport]}
    logout = calls.wait_for("session.logout")
    assert type(logout.outcome).__name__ == "Success"
    # the long poll that was blocked when XO logged out has ended (Node could exit)
    assert all(c.outcome is not None for c in calls.named("event.from"))


@both_transports
def test_call_starts_and_call_async_stops_a_vm_and_destroys_its_task(running, xapi, calls, xo_client, transport):
    run = xo_client("power", running.url, transport)
    report = run.report
    ref = report["ref"]

    assert report["startResult"] == "" and report["afterStart"] == "Running"
    assert report["shutdownResult"] == "" and report["afterShutdown"] == "Halted"
    assert report["tasksLeft"] == 0
    _no_event_loop_warnings(run)
    assert xapi.xenapi.VM.get_power_state(ref) == "Halted"
    assert xapi.xenapi.task.get_all() == []
    start = calls.named("VM.start")[0]
    assert start.params[1:] == (ref, False, False)
    async_call = calls.named("Async.VM.clean_shutdown")[0]
    task = async_call.outcome.value
    assert task.startswith("OpaqueRef:")
    assert [c.params[1] for c in calls.named("task.destroy")] == [task]
    # XO learns the task's end from event.from, never by polling
    assert "task.get_status" not in calls.methods() and "task.get_record" not in calls.methods()
    barrier_keys = [c.params[2] for c in calls.named("pool.add_to_other_config")]
    assert barrier_keys and all(key.startswith("xo:barrier:") for key in barrier_keys)


@both_transports
def test_errors_reach_xo_as_xapi_codes_with_params(running, xo_client, transport):
    report = xo_client("errors", running.url, transport).report
    ref = report["ref"]

    assert report["sync"]["error"]["code"] == "VM_BAD_POWER_STATE"
    assert report["sync"]["error"]["params"] == [ref, "halted", "running"]
    assert report["async"]["error"]["code"] == "VM_BAD_POWER_STATE"
    assert report["async"]["error"]["params"] == [ref, "halted", "running"]
    assert report["async"]["error"]["taskStatus"] == "failure"
    bad = "OpaqueRef:00000000-0000-0000-0000-00000000dead"
    assert report["badHandle"]["error"]["code"] == "HANDLE_INVALID"
    assert report["badHandle"]["error"]["params"] == ["VM", bad]
    assert report["unknownMethod"]["error"]["code"] == "MESSAGE_METHOD_UNKNOWN"
    assert report["unknownMethod"]["error"]["params"] == ["VM.no_such_message"]


@both_transports
def test_set_field_and_set_field_entry_are_seen_through_the_event_cache(running, xapi, calls, xo_client,
                                                                       transport):
    report = xo_client("fields", running.url, transport).report
    ref = report["ref"]

    assert report["afterSet"]["name_description"] == "described by XO"
    assert report["afterSet"]["other_config"].get("xo:test") == "two"
    assert "xo:test" not in report["afterRemove"]
    assert report["byUuid"] == {"ref": ref, "name_label": xapi.xenapi.VM.get_name_label(ref),
                                "name_description": "described by XO"}
    assert xapi.xenapi.VM.get_name_description(ref) == "described by XO"
    assert "xo:test" not in xapi.xenapi.VM.get_other_config(ref)
    # setFieldEntry removes first, so the second add never meets MAP_DUPLICATE_KEY
    adds = calls.named("VM.add_to_other_config")
    assert len(adds) == 2 and all(type(c.outcome).__name__ == "Success" for c in adds)


def _halt_through_the_api(running, xapi, ref):
    xapi.xenapi.VM.hard_shutdown(ref)


def _halt_behind_the_servers_back(running, xapi, ref):
    running.server.hosts.connection(running.server.master_ref).destroy(xapi.xenapi.VM.get_uuid(ref))


@both_transports
@pytest.mark.parametrize("halt", [_halt_through_the_api, _halt_behind_the_servers_back],
                         ids=["by-another-client", "in-libvirt"])
def test_cache_follows_a_vm_halted_elsewhere_while_connected(running, xapi, xo_client, transport, halt):
    node = xo_client.start("watch", running.url, transport, expect="Halted")
    try:
        ref = node.wait_ready()
        assert xapi.xenapi.VM.get_power_state(ref) == "Running"
        halt(running, xapi, ref)
        run = node.finish()
    finally:
        node.kill()

    assert run.report["ref"] == ref and run.report["powerState"] == "Halted"
    assert "Halted" in run.report["seen"]
    _no_event_loop_warnings(run)


def test_wrong_password_makes_connect_fail_with_authentication_failed(running, xo_client):
    report = xo_client("connect", running.url, "auto", exit_code=2, password="wrong").report

    assert report["error"]["code"] == "SESSION_AUTHENTICATION_FAILED"
    assert report["error"]["params"][0] == "root"


# ------------------------------------------------------------------------------ storage ---
EMBEDDED = "test:///default"     # the server's default host (conftest.py's ``running`` takes it as a parameter)
NODE_FILE = None                 # the root fixture's private test:///<file> host
NULL = "OpaqueRef:NULL"
MiB = 1024 * 1024
STORAGE_CLASSES = ("SR", "VDI", "VBD", "PBD", "SM")


def _vdi(x, sr: str, size: int, name: str) -> str:
    return x.VDI.create({"SR": sr, "virtual_size": str(size), "type": "user", "sharable": False,
                         "read_only": False, "other_config": {}, "name_label": name, "name_description": ""})


def _vbd(x, vm: str, vdi: str, userdevice: str, cd: bool = False) -> str:
    return x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": userdevice, "bootable": not cd,
                         "mode": "RO" if cd else "RW", "type": "CD" if cd else "Disk", "empty": vdi == NULL,
                         "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {},
                         "unpluggable": False})


def _storage_in_use(running, x, tmp_path) -> dict:
    """A halted VM with a disk, a CD drive holding an ISO and an empty one: every storage class has objects."""
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    iso_sr = x.SR.create(running.server.master_ref, {"location": str(tmp_path / "isos")}, "0", "ISO library", "",
                         "iso", "iso", False, {})
    iso = _vdi(x, iso_sr, 4 * MiB, "xo.iso")
    vm = x.VM.create(vm_create_args(name_label="xo storage"))
    disk = _vdi(x, sr, 64 * MiB, "xo disk")
    vbds = [_vbd(x, vm, disk, "0"), _vbd(x, vm, NULL, "3", cd=True), _vbd(x, vm, NULL, "2", cd=True)]
    x.VBD.insert(vbds[1], iso)
    return {"sr": sr, "iso_sr": iso_sr, "vm": vm, "vdis": [disk, iso], "vbds": vbds}


def _uuid(x, cls: str, ref: str) -> str | None:
    return None if ref == NULL else getattr(x, cls).get_uuid(ref)


def _check_cache_against_the_api(x, cache: dict, master: str) -> None:
    pool_uuid = x.pool.get_uuid(x.pool.get_all()[0])
    for cls in STORAGE_CLASSES:
        records = getattr(x, cls).get_all_records()
        objects = {o["ref"]: o for o in cache[cls]}
        assert objects.keys() == records.keys(), cls
        for ref, rec in records.items():
            o = objects[ref]
            assert o["$type"] == cls and o["id"] == o["uuid"] == rec["uuid"]
            assert set(o["fields"]) == set(rec), f"{cls}: XO keeps the first record's keys, records must be uniform"
            assert o["pool"] == pool_uuid
            assert "MISSING" not in str(o["links"]), f"{cls} {ref} links to objects XO cannot find: {o['links']}"
            xo = o["xo"]
            if cls == "SR":
                assert o["links"]["PBDs"] == ["PBD"] * len(rec["PBDs"])
                assert o["links"].get("VDIs", []) == ["VDI"] * len(rec["VDIs"])
                assert (xo["SR_type"], xo["content_type"], xo["shared"], xo["name_label"]) == \
                    (rec["type"], rec["content_type"], rec["shared"], rec["name_label"])
                assert (xo["size"], xo["usage"], xo["physical_usage"]) == \
                    (int(rec["physical_size"]), int(rec["virtual_allocation"]), int(rec["physical_utilisation"]))
                assert xo["VDIs"] == [_uuid(x, "VDI", v) for v in rec["VDIs"]]
                assert xo["$PBDs"] == [_uuid(x, "PBD", p) for p in rec["PBDs"]]
                assert xo["$container"] == x.host.get_uuid(master)       # local SRs belong to their host
            elif cls == "VDI":
                assert o["links"]["SR"] == "SR" and o["links"].get("VBDs", []) == ["VBD"] * len(rec["VBDs"])
                assert (xo["size"], xo["usage"], xo["VDI_type"], xo["name_label"], xo["missing"], xo["managed"]) == \
                    (int(rec["virtual_size"]), int(rec["physical_utilisation"]), rec["type"], rec["name_label"],
                     rec["missing"], rec["managed"])
                assert xo["$SR"] == _uuid(x, "SR", rec["SR"])
                assert xo["$VBDs"] == [_uuid(x, "VBD", b) for b in rec["VBDs"]]
            elif cls == "VBD":
                assert o["links"]["VM"] == "VM" and o["links"].get("VDI") == (None if rec["VDI"] == NULL else "VDI")
                assert (xo["position"], xo["is_cd_drive"], xo["read_only"], xo["bootable"], xo["attached"]) == \
                    (rec["userdevice"], rec["type"] == "CD", rec["mode"] == "RO", rec["bootable"],
                     rec["currently_attached"])
                assert xo["device"] == (rec["device"] or None)
                assert (xo["VM"], xo["VDI"]) == (_uuid(x, "VM", rec["VM"]), _uuid(x, "VDI", rec["VDI"]))
            elif cls == "PBD":
                assert (o["links"]["host"], o["links"]["SR"]) == ("host", "SR")
                assert (xo["host"], xo["SR"], xo["attached"], xo["device_config"]) == \
                    (x.host.get_uuid(rec["host"]), _uuid(x, "SR", rec["SR"]), rec["currently_attached"],
                     rec["device_config"])


@both_transports
@pytest.mark.parametrize("running", [EMBEDDED, NODE_FILE], indirect=True, ids=["embedded-default", "node-file"])
def test_storage_objects_are_in_the_cache_and_a_vdi_made_renamed_and_destroyed_elsewhere_follows(
        running, xapi, calls, xo_client, tmp_path, transport):
    x = xapi.xenapi
    made = _storage_in_use(running, x, tmp_path)
    sr, master = made["sr"], running.server.master_ref
    node = xo_client.start("storage", running.url, transport, name="made elsewhere", renamed="renamed elsewhere")
    try:
        assert node.wait_ready() == sr                       # XO's pool.default_SR
        other = running.session()
        try:
            vdi = _vdi(other.xenapi, sr, 96 * MiB, "made elsewhere")
            assert node.wait_for("SEEN") == [vdi]
            other.xenapi.VDI.set_name_label(vdi, "renamed elsewhere")
            assert node.wait_for("RENAMED") == [vdi]
            uuid = x.VDI.get_uuid(vdi)
            other.xenapi.VDI.destroy(vdi)
        finally:
            other.xenapi.session.logout()
        run = node.finish()
    finally:
        node.kill()
    report = run.report
    _no_event_loop_warnings(run)

    # the cache at connect: every storage object, as the API has it (the VDI was made after)
    initial = report["initial"]
    refs = {cls: {o["ref"] for o in initial[cls]} for cls in STORAGE_CLASSES}
    assert {sr, made["iso_sr"]} <= refs["SR"] and set(made["vdis"]) <= refs["VDI"] and set(made["vbds"]) <= refs["VBD"]
    assert {p for s in (sr, made["iso_sr"]) for p in x.SR.get_PBDs(s)} <= refs["PBD"] and refs["SM"]
    _check_cache_against_the_api(x, initial, master)
    by_ref = {o["ref"]: o for cls in STORAGE_CLASSES for o in initial[cls]}
    disk, iso = made["vdis"]
    assert by_ref[disk]["xo"]["$SR"] == x.SR.get_uuid(sr) and by_ref[iso]["xo"]["$SR"] == x.SR.get_uuid(made["iso_sr"])
    assert by_ref[made["vbds"][1]]["xo"]["VDI"] == x.VDI.get_uuid(iso)     # the CD holding the ISO
    assert by_ref[made["vbds"][2]]["xo"]["VDI"] is None                   # the empty one
    assert by_ref[sr]["xo"]["name_label"] == "Local storage"

    # the VDI made elsewhere: in the cache with its SR's VDIs listing it, renamed, then gone
    seen, renamed = report["seen"], report["renamed"]
    assert (seen["ref"], seen["uuid"], seen["$type"]) == (vdi, uuid, "VDI")
    assert (seen["xo"]["name_label"], seen["xo"]["size"], seen["xo"]["$SR"], seen["xo"]["$VBDs"]) == \
        ("made elsewhere", 96 * MiB, x.SR.get_uuid(sr), [])
    assert seen["links"]["SR"] == "SR" and set(seen["fields"]) == set(x.VDI.get_record(disk))
    assert renamed["xo"]["name_label"] == "renamed elsewhere" and renamed["xo"]["size"] == 96 * MiB
    assert report["gone"] == {"byRef": None, "byUuid": None, "srVDIs": x.SR.get_VDIs(sr)}
    assert vdi not in report["gone"]["srVDIs"]
    assert report["history"][0] == ["add", "made elsewhere"] and report["history"][-1] == ["remove", None]
    assert ["update", "renamed elsewhere"] in report["history"]
    # XO follows the storage classes by the names system.listMethods spells them with (event.from
    # answers with lower-case classes, which the library maps back)
    assert all(set(STORAGE_CLASSES) <= set(call.params[1]) for call in calls.named("event.from"))
