"""Storage through the official client on libvirt's test driver: SM, SR, PBD, VDI and VBD with
xapi's fields, constructors and errors (shared/reference/xenapi-storage-network-pool.md section 1),
allowed operations, events, and pools and volumes changed behind the server's back."""
import threading
import time

import pytest
import XenAPI

from classes.enums import ENUMS
from tests.conftest import default_sr, fails, guest_vm, new_vbd, new_vdi, wait_for_event
from xenapi.model.types import NULL_REF

MiB = 1024 * 1024
PLUGIN_TYPES = {"dir", "iso", "lvm", "nfs", "iscsi", "rbd"}
EPOCH = "19700101T00:00:00Z"


# -- helpers ---------------------------------------------------------------------------------------

def the_host(xapi) -> str:
    return xapi.xenapi.host.get_all()[0]


def conn(running):
    """The server's own libvirt connection to its (only) host."""
    return running.server.hosts.connection(running.server.master_ref)


def pools(running) -> dict:
    """uuid -> PoolState of every libvirt pool on the host."""
    return {p.uuid: p for p in conn(running).list_pools()}


def make_sr(xapi, directory, name="second") -> str:
    """A dir SR made with SR.create in ``directory``."""
    return xapi.xenapi.SR.create(the_host(xapi), {"location": str(directory)}, "0", name, "made by pytest",
                                 "dir", "", False, {})


def volume_name(xapi, vdi) -> str:
    return xapi.xenapi.VDI.get_location(vdi).rsplit("/", 1)[1]


def wait_until(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout} s")


def finish(xapi, task) -> dict:
    wait_until(lambda: xapi.xenapi.task.get_status(task) != "pending", what="task end")
    return xapi.xenapi.task.get_record(task)


def task_ref(result: str) -> str:
    """A task's result as xapi writes it: ``<value>OpaqueRef:...</value>``."""
    assert result.startswith("<value>") and result.endswith("</value>"), result
    return result[len("<value>"):-len("</value>")]


def mismatched_operations(xapi, cls: str, ref: str, enum: str) -> list:
    """Operations where allowed_operations and assert_operation_valid disagree (should be [])."""
    api = getattr(xapi.xenapi, cls)
    allowed = set(api.get_allowed_operations(ref))
    wrong = []
    for op in ENUMS[enum].values:
        try:
            api.assert_operation_valid(ref, op)
            valid, error = True, None
        except XenAPI.Failure as e:
            valid, error = False, e.details
        if valid != (op in allowed):
            wrong.append((cls, op, op in allowed, error))
    return wrong


def collect_events(xapi, classes, token, wanted: set, timeout=10.0) -> set:
    """(class, operation, ref) of the events from ``token`` until all of ``wanted`` were seen."""
    seen: set = set()
    deadline = time.monotonic() + timeout
    while not wanted <= seen and time.monotonic() < deadline:
        batch = xapi.xenapi.event_from(classes, token, max(0.1, deadline - time.monotonic()))
        token = batch["token"]
        seen |= {(e["class"], e["operation"], e["ref"]) for e in batch["events"]}
    assert wanted <= seen, f"missing events: {wanted - seen}"
    return seen


# -- SM and the local SR ---------------------------------------------------------------------------

def test_sm_has_one_record_per_plugin_with_features_capabilities_and_configuration(xapi):
    records = xapi.xenapi.SM.get_all_records()
    by_type = {rec["type"]: rec for rec in records.values()}
    assert len(records) == len(by_type) == 6 and set(by_type) == PLUGIN_TYPES
    for sm_type, rec in by_type.items():
        assert rec["features"] and set(rec["features"].values()) == {"1"}          # {s:i}: int64 as strings
        assert rec["capabilities"] == sorted(rec["features"])
        assert {"SR_CREATE", "SR_ATTACH", "SR_DETACH", "SR_SCAN", "VDI_ATTACH"} <= set(rec["features"])
        assert rec["configuration"] and all(isinstance(v, str) and v for v in rec["configuration"].values())
        assert rec["required_api_version"] == "1.0" and rec["version"] == "1.0"
        assert rec["name_label"] and rec["vendor"] and rec["copyright"]
        assert rec["driver_filename"] == f"storage/{sm_type}.py"
        assert rec["required_cluster_stack"] == [] and rec["other_config"] == {}
    assert set(by_type["dir"]["configuration"]) == {"location"}
    assert {"VDI_CREATE", "VDI_DELETE", "VDI_RESIZE", "VDI_CLONE", "VDI_SNAPSHOT",
            "THIN_PROVISIONING"} <= set(by_type["dir"]["features"])
    assert "VDI_RESIZE" not in by_type["iso"]["features"] and "VDI_CREATE" in by_type["iso"]["features"]
    assert "VDI_CREATE" not in by_type["iscsi"]["features"]                     # LUNs are made by the target
    assert {"server", "serverpath"} <= set(by_type["nfs"]["configuration"])
    assert {"target", "targetIQN"} <= set(by_type["iscsi"]["configuration"])
    assert {"monitors", "pool"} <= set(by_type["rbd"]["configuration"])
    assert "SR_PROBE" in by_type["lvm"]["features"] and "SR_PROBE" not in by_type["dir"]["features"]
    assert sorted(xapi.xenapi.SR.get_supported_types()) == sorted(PLUGIN_TYPES)


def test_each_host_has_a_local_storage_sr_that_is_the_pool_default(running, xapi):
    host = the_host(xapi)
    local = [ref for ref, rec in xapi.xenapi.SR.get_all_records().items()
             if rec["other_config"].get("i18n-key") == "local-storage"]
    assert len(local) == 1
    sr = local[0]
    rec = xapi.xenapi.SR.get_record(sr)
    assert (rec["name_label"], rec["type"], rec["content_type"], rec["shared"]) == (
        "Local storage", "dir", "user", False)
    assert rec["other_config"] == {"i18n-key": "local-storage"}
    assert int(rec["physical_size"]) > 0 and len(rec["PBDs"]) == 1
    pbd = xapi.xenapi.PBD.get_record(rec["PBDs"][0])
    assert pbd["host"] == host and pbd["SR"] == sr and pbd["currently_attached"] is True
    assert pbd["device_config"] == {"location": pools(running)[rec["uuid"]].path}
    assert pools(running)[rec["uuid"]].active
    assert xapi.xenapi.pool.get_default_SR(xapi.xenapi.pool.get_all()[0]) == sr == default_sr(xapi)
    assert xapi.xenapi.host.get_PBDs(host) == rec["PBDs"]


# -- VDI.create ----------------------------------------------------------------------------------

def test_vdi_create_gives_the_record_xapi_would(running, xapi):
    sr = default_sr(xapi)
    allocation = int(xapi.xenapi.SR.get_virtual_allocation(sr))
    vdi = new_vdi(xapi, 3 * MiB, name_label="data", name_description="a disk", other_config={"k": "v"},
                  tags=["t1"], xenstore_data={"vm-data/x": "1"})
    rec = xapi.xenapi.VDI.get_record(vdi)
    uuid = rec["uuid"]
    assert rec["location"].endswith(f"/{uuid}.qcow2")
    assert rec["location"].startswith(pools(running)[xapi.xenapi.SR.get_uuid(sr)].path + "/")
    assert volume_name(xapi, vdi).removesuffix(".qcow2") == uuid
    assert f"{uuid}.qcow2" in conn(running).volume_names(xapi.xenapi.SR.get_uuid(sr))
    expected = {
        "uuid": uuid, "name_label": "data", "name_description": "a disk",
        "allowed_operations": ["clone", "copy", "destroy", "forget", "resize", "snapshot", "update"],
        "current_operations": {}, "SR": sr, "VBDs": [], "crash_dumps": [], "virtual_size": str(3 * MiB),
        "type": "user", "sharable": False, "read_only": False, "other_config": {"k": "v"}, "storage_lock": False,
        "location": rec["location"], "managed": True, "missing": False, "parent": NULL_REF,
        "xenstore_data": {"vm-data/x": "1"}, "is_a_snapshot": False, "snapshot_of": NULL_REF, "snapshots": [],
        "tags": ["t1"], "allow_caching": False, "on_boot": "persist", "metadata_of_pool": NULL_REF,
        "metadata_latest": False, "is_tools_iso": False, "cbt_enabled": False,
    }
    assert {k: rec[k] for k in expected} == expected
    assert set(rec) == set(expected) | {"physical_utilisation", "sm_config", "snapshot_time"}
    assert str(rec["snapshot_time"]) == EPOCH and int(rec["physical_utilisation"]) >= 0
    assert sorted(rec["allowed_operations"]) == rec["allowed_operations"]
    assert vdi in xapi.xenapi.SR.get_VDIs(sr)
    assert int(xapi.xenapi.SR.get_virtual_allocation(sr)) == allocation + 3 * MiB
    assert xapi.xenapi.VDI.get_by_uuid(uuid) == vdi


def test_vdi_create_without_a_required_field_is_an_internal_error_and_makes_nothing(running, xapi):
    sr = default_sr(xapi)
    before, volumes = set(xapi.xenapi.VDI.get_all()), set(conn(running).volume_names(xapi.xenapi.SR.get_uuid(sr)))
    full = {"SR": sr, "virtual_size": str(MiB), "type": "user", "sharable": False, "read_only": False,
            "other_config": {}}
    for field in full:
        record = {k: v for k, v in full.items() if k != field}
        assert fails(xapi.xenapi.VDI.create, record) == ["INTERNAL_ERROR", f'Dispatcher_FieldNotFound("{field}")']
    assert set(xapi.xenapi.VDI.get_all()) == before
    assert set(conn(running).volume_names(xapi.xenapi.SR.get_uuid(sr))) == volumes
    vdi = xapi.xenapi.VDI.create(full)                       # name_label, tags... have defaults
    assert (xapi.xenapi.VDI.get_name_label(vdi), xapi.xenapi.VDI.get_tags(vdi)) == ("", [])


@pytest.mark.parametrize("size", ["-1", "0"])
def test_vdi_create_with_a_size_that_is_not_positive_is_sr_backend_failure_79(xapi, size):
    before = set(xapi.xenapi.VDI.get_all())
    details = fails(new_vdi, xapi, int(size))
    assert details[:2] == ["SR_BACKEND_FAILURE_79", ""] and details[3] == "" and len(details) == 4
    assert details[2].startswith("VDI Invalid size [opterr=")
    assert set(xapi.xenapi.VDI.get_all()) == before


def test_vdi_create_beyond_the_sr_is_sr_backend_failure_44(xapi):
    sr = default_sr(xapi)
    before = set(xapi.xenapi.VDI.get_all())
    size = int(xapi.xenapi.SR.get_physical_size(sr)) + MiB
    details = fails(new_vdi, xapi, size)
    assert details[:3] == ["SR_BACKEND_FAILURE_44", "", "There is insufficient space"] and len(details) == 4
    assert set(xapi.xenapi.VDI.get_all()) == before
    assert xapi.xenapi.SR.get_virtual_allocation(sr) == "0"


def test_vdi_create_on_an_unknown_sr_is_handle_invalid(xapi):
    assert fails(new_vdi, xapi, MiB, "OpaqueRef:no-such-sr") == ["HANDLE_INVALID", "SR", "OpaqueRef:no-such-sr"]


def test_vdi_create_of_cbt_metadata_is_vdi_incompatible_type(xapi):
    before = set(xapi.xenapi.VDI.get_all())
    assert fails(lambda: new_vdi(xapi, MiB, type="cbt_metadata")) == ["VDI_INCOMPATIBLE_TYPE", "", "cbt_metadata"]
    assert set(xapi.xenapi.VDI.get_all()) == before


# -- VDI messages --------------------------------------------------------------------------------

def test_resize_grows_and_refusing_to_shrink_is_sr_backend_failure_79(running, xapi):
    sr = default_sr(xapi)
    vdi = new_vdi(xapi, MiB)
    xapi.xenapi.VDI.resize(vdi, str(4 * MiB))
    assert xapi.xenapi.VDI.get_virtual_size(vdi) == str(4 * MiB)
    assert xapi.xenapi.SR.get_virtual_allocation(sr) == str(4 * MiB)
    assert conn(running).volume_state(xapi.xenapi.SR.get_uuid(sr), volume_name(xapi, vdi)).capacity == 4 * MiB
    assert fails(xapi.xenapi.VDI.resize, vdi, str(2 * MiB)) == [
        "SR_BACKEND_FAILURE_79", "", "VDI Invalid size [opterr=shrinking not allowed]", ""]
    assert xapi.xenapi.VDI.get_virtual_size(vdi) == str(4 * MiB)
    assert xapi.xenapi.VDI.get_current_operations(vdi) == {}


def test_clone_is_a_new_disk_with_the_source_metadata(xapi):
    vdi = new_vdi(xapi, 2 * MiB, name_label="src", name_description="d", other_config={"a": "b"}, tags=["x"])
    clone = xapi.xenapi.VDI.clone(vdi, {})
    src, dst = xapi.xenapi.VDI.get_record(vdi), xapi.xenapi.VDI.get_record(clone)
    assert dst["uuid"] != src["uuid"] and dst["location"] != src["location"]
    assert dst["location"].endswith(f"/{dst['uuid']}.qcow2")
    for field in ("name_label", "name_description", "virtual_size", "type", "sharable", "other_config", "tags", "SR"):
        assert dst[field] == src[field], field
    assert (dst["is_a_snapshot"], dst["snapshot_of"], dst["read_only"]) == (False, NULL_REF, False)
    assert xapi.xenapi.VDI.get_snapshots(vdi) == []
    assert {vdi, clone} <= set(xapi.xenapi.SR.get_VDIs(src["SR"]))


def test_snapshot_is_marked_and_related_from_both_sides(xapi):
    vdi = new_vdi(xapi, 2 * MiB, name_label="disk")
    snap = xapi.xenapi.VDI.snapshot(vdi, {})
    rec = xapi.xenapi.VDI.get_record(snap)
    assert rec["is_a_snapshot"] is True and rec["snapshot_of"] == vdi
    assert str(rec["snapshot_time"]) != EPOCH
    assert (rec["name_label"], rec["virtual_size"], rec["SR"]) == ("disk", str(2 * MiB), xapi.xenapi.VDI.get_SR(vdi))
    assert xapi.xenapi.VDI.get_snapshots(vdi) == [snap]
    assert xapi.xenapi.VDI.get_snapshots(snap) == [] and xapi.xenapi.VDI.get_is_a_snapshot(vdi) is False
    second = xapi.xenapi.VDI.snapshot(vdi, {})
    assert set(xapi.xenapi.VDI.get_snapshots(vdi)) == {snap, second}
    xapi.xenapi.VDI.destroy(snap)
    assert xapi.xenapi.VDI.get_snapshots(vdi) == [second]


def test_snapshot_of_a_sharable_vdi_is_vdi_is_sharable(xapi):
    vdi = new_vdi(xapi, MiB, sharable=True)
    assert fails(xapi.xenapi.VDI.snapshot, vdi, {}) == ["VDI_IS_SHARABLE", vdi]
    assert "snapshot" not in xapi.xenapi.VDI.get_allowed_operations(vdi)


def test_copy_into_the_same_sr_makes_an_independent_vdi(xapi):
    sr = default_sr(xapi)
    vdi = new_vdi(xapi, 2 * MiB, name_label="orig", other_config={"o": "c"})
    copy = xapi.xenapi.VDI.copy(vdi, sr)
    src, dst = xapi.xenapi.VDI.get_record(vdi), xapi.xenapi.VDI.get_record(copy)
    assert copy != vdi and dst["uuid"] != src["uuid"] and dst["SR"] == sr
    assert (dst["name_label"], dst["virtual_size"], dst["other_config"]) == ("orig", str(2 * MiB), {"o": "c"})
    assert dst["is_a_snapshot"] is False and dst["read_only"] is False
    xapi.xenapi.VDI.destroy(vdi)
    assert xapi.xenapi.VDI.get_virtual_size(copy) == str(2 * MiB)        # the copy outlives its source


def test_copy_into_a_second_sr_made_with_sr_create(running, xapi, tmp_path):
    sr2 = make_sr(xapi, tmp_path / "second-sr")
    vdi = new_vdi(xapi, 2 * MiB, name_label="moving")
    copy = xapi.xenapi.VDI.copy(vdi, sr2)
    rec = xapi.xenapi.VDI.get_record(copy)
    assert rec["SR"] == sr2 and rec["name_label"] == "moving" and rec["virtual_size"] == str(2 * MiB)
    assert rec["location"] == f"{tmp_path / 'second-sr'}/{rec['uuid']}.qcow2"
    assert xapi.xenapi.SR.get_VDIs(sr2) == [copy]
    assert xapi.xenapi.SR.get_virtual_allocation(sr2) == str(2 * MiB)
    assert f"{rec['uuid']}.qcow2" in conn(running).volume_names(xapi.xenapi.SR.get_uuid(sr2))
    assert xapi.xenapi.VDI.get_SR(vdi) == default_sr(xapi)                 # the source stays


def test_async_copy_returns_its_vdi_in_the_task_with_full_progress(xapi, tmp_path):
    sr2 = make_sr(xapi, tmp_path / "async-sr")
    vdi = new_vdi(xapi, MiB)
    task = xapi.xenapi.Async.VDI.copy(vdi, sr2)
    rec = finish(xapi, task)
    assert rec["status"] == "success" and rec["error_info"] == []
    copy = task_ref(rec["result"])
    assert xapi.xenapi.VDI.get_SR(copy) == sr2 and rec["progress"] == 1.0
    assert xapi.xenapi.VDI.get_current_operations(vdi) == {}


def test_a_running_copy_shows_in_current_operations_and_blocks_nothing(running, xapi):
    vdi = new_vdi(xapi, MiB)
    connection = conn(running)
    release, started = threading.Event(), threading.Event()
    real_copy = connection.copy_volume

    def slow_copy(*args):
        started.set()
        release.wait(10)
        return real_copy(*args)
    connection.copy_volume = slow_copy
    try:
        task = xapi.xenapi.Async.VDI.copy(vdi, default_sr(xapi))
        assert started.wait(10)
        assert xapi.xenapi.VDI.get_current_operations(vdi) == {task: "copy"}
        # a copy blocks no other operation (xapi's check_operation_error)
        assert xapi.xenapi.VDI.get_allowed_operations(vdi) == [
            "clone", "copy", "destroy", "forget", "resize", "snapshot", "update"]
        assert mismatched_operations(xapi, "VDI", vdi, "vdi_operations") == []
    finally:
        release.set()
    rec = finish(xapi, task)
    assert rec["status"] == "success" and rec["progress"] == 1.0
    assert xapi.xenapi.VDI.get_current_operations(vdi) == {}


def test_destroy_removes_the_record_and_the_volume(running, xapi):
    sr = default_sr(xapi)
    vdi = new_vdi(xapi, MiB)
    name = volume_name(xapi, vdi)
    xapi.xenapi.VDI.destroy(vdi)
    assert fails(xapi.xenapi.VDI.get_record, vdi) == ["HANDLE_INVALID", "VDI", vdi]
    assert name not in conn(running).volume_names(xapi.xenapi.SR.get_uuid(sr))
    assert vdi not in xapi.xenapi.SR.get_VDIs(sr) and xapi.xenapi.SR.get_virtual_allocation(sr) == "0"


def test_forget_then_scan_brings_the_same_vdi_back(running, xapi):
    sr = default_sr(xapi)
    vdi = new_vdi(xapi, 2 * MiB)
    uuid, location = xapi.xenapi.VDI.get_uuid(vdi), xapi.xenapi.VDI.get_location(vdi)
    xapi.xenapi.VDI.forget(vdi)
    assert fails(xapi.xenapi.VDI.get_record, vdi)[0] == "HANDLE_INVALID" and vdi not in xapi.xenapi.SR.get_VDIs(sr)
    assert f"{uuid}.qcow2" in conn(running).volume_names(xapi.xenapi.SR.get_uuid(sr))     # the data stays
    xapi.xenapi.SR.scan(sr)
    rec = xapi.xenapi.VDI.get_record(vdi)
    assert (rec["uuid"], rec["location"], rec["virtual_size"], rec["managed"], rec["missing"]) == (
        uuid, location, str(2 * MiB), True, False)
    assert xapi.xenapi.VDI.get_by_uuid(uuid) == vdi and vdi in xapi.xenapi.SR.get_VDIs(sr)


def test_set_name_label_and_description(xapi):
    vdi = new_vdi(xapi)
    xapi.xenapi.VDI.set_name_label(vdi, "renamed")
    xapi.xenapi.VDI.set_name_description(vdi, "described")
    assert (xapi.xenapi.VDI.get_name_label(vdi), xapi.xenapi.VDI.get_name_description(vdi)) == ("renamed", "described")
    assert xapi.xenapi.VDI.get_by_name_label("renamed") == [vdi]


def test_introduce_of_an_existing_volume_makes_its_record(xapi):
    sr = default_sr(xapi)
    vdi = new_vdi(xapi, 2 * MiB)
    uuid, location = xapi.xenapi.VDI.get_uuid(vdi), xapi.xenapi.VDI.get_location(vdi)
    xapi.xenapi.VDI.forget(vdi)
    ref = xapi.xenapi.VDI.introduce("", "introduced", "back again", sr, "user", False, False, {"k": "v"},
                                    location, {}, {}, True, "0", "0", NULL_REF, False, EPOCH, NULL_REF)
    rec = xapi.xenapi.VDI.get_record(ref)
    assert ref == vdi and rec["uuid"] == uuid
    assert (rec["name_label"], rec["name_description"], rec["other_config"]) == ("introduced", "back again", {"k": "v"})
    assert (rec["SR"], rec["location"], rec["virtual_size"], rec["managed"]) == (sr, location, str(2 * MiB), True)
    missing = location.rsplit("/", 1)[0] + "/no-such-volume.qcow2"
    assert fails(xapi.xenapi.VDI.introduce, "", "x", "", sr, "user", False, False, {}, missing, {}, {}, True,
                 "0", "0", NULL_REF, False, EPOCH, NULL_REF)[0] == "VDI_MISSING"


# -- SR and PBD ------------------------------------------------------------------------------------

def test_sr_create_makes_a_plugged_dir_sr_on_a_libvirt_pool(running, xapi, tmp_path):
    host = the_host(xapi)
    sr = make_sr(xapi, tmp_path / "made")
    rec = xapi.xenapi.SR.get_record(sr)
    assert (rec["name_label"], rec["name_description"], rec["type"], rec["content_type"], rec["shared"]) == (
        "second", "made by pytest", "dir", "user", False)
    assert rec["VDIs"] == [] and rec["virtual_allocation"] == "0" and int(rec["physical_size"]) > 0
    assert len(rec["PBDs"]) == 1
    pbd = xapi.xenapi.PBD.get_record(rec["PBDs"][0])
    assert (pbd["host"], pbd["SR"], pbd["currently_attached"]) == (host, sr, True)
    assert pbd["device_config"] == {"location": str(tmp_path / "made")}
    pool = pools(running)[rec["uuid"]]
    assert pool.active and pool.path == str(tmp_path / "made") and pool.pool_type == "dir"
    assert rec["PBDs"][0] in xapi.xenapi.host.get_PBDs(host)
    assert xapi.xenapi.SR.get_by_name_label("second") == [sr]


def test_sr_destroy_follows_xapi_pbd_and_vdi_rules(running, xapi, tmp_path):
    sr = make_sr(xapi, tmp_path / "doomed")
    uuid = xapi.xenapi.SR.get_uuid(sr)
    pbd = xapi.xenapi.SR.get_PBDs(sr)[0]
    vdi = new_vdi(xapi, MiB, sr)
    # an attached PBD blocks destroy and forget, before the VDIs are looked at (CA-70294)
    assert fails(xapi.xenapi.SR.destroy, sr) == ["SR_HAS_PBD", sr]
    assert fails(xapi.xenapi.SR.forget, sr) == ["SR_HAS_PBD", sr]
    xapi.xenapi.PBD.unplug(pbd)
    assert fails(xapi.xenapi.SR.destroy, sr) == ["SR_NOT_EMPTY"]
    assert xapi.xenapi.SR.get_VDIs(sr) == [vdi]
    xapi.xenapi.PBD.plug(pbd)
    xapi.xenapi.VDI.destroy(vdi)
    xapi.xenapi.PBD.unplug(pbd)
    xapi.xenapi.SR.destroy(sr)
    assert fails(xapi.xenapi.SR.get_record, sr) == ["HANDLE_INVALID", "SR", sr]
    assert fails(xapi.xenapi.PBD.get_record, pbd)[0] == "HANDLE_INVALID"
    assert uuid not in pools(running)


def test_an_unplugged_sr_keeps_its_vdis_as_xapi_does(running, xapi, tmp_path):
    sr = make_sr(xapi, tmp_path / "unplugged")
    pbd = xapi.xenapi.SR.get_PBDs(sr)[0]
    vdi = new_vdi(xapi, 2 * MiB, sr, name_label="kept")
    before = xapi.xenapi.VDI.get_record(vdi)
    xapi.xenapi.PBD.unplug(pbd)
    assert xapi.xenapi.PBD.get_currently_attached(pbd) is False
    assert not pools(running)[xapi.xenapi.SR.get_uuid(sr)].active
    time.sleep(1.5)                                      # three storage polls
    running.server.reconciler.relist_storage(running.server.master_ref)      # and a periodic resync
    running.server.reconciler.refresh(running.server.master_ref,                # and a re-read of its volume
                                      f"{xapi.xenapi.SR.get_uuid(sr)}/{volume_name(xapi, vdi)}", "volume")
    rec = xapi.xenapi.VDI.get_record(vdi)
    assert xapi.xenapi.SR.get_VDIs(sr) == [vdi]
    assert {k: v for k, v in rec.items() if k != "allowed_operations"} == {
        k: v for k, v in before.items() if k != "allowed_operations"}
    assert xapi.xenapi.SR.get_virtual_allocation(sr) == str(2 * MiB)
    assert fails(xapi.xenapi.VDI.resize, vdi, str(4 * MiB)) == ["SR_HAS_NO_PBDS", sr]
    assert "resize" not in rec["allowed_operations"]
    assert fails(xapi.xenapi.SR.scan, sr) == ["SR_HAS_NO_PBDS", sr]
    xapi.xenapi.PBD.plug(pbd)
    assert xapi.xenapi.VDI.get_record(vdi)["uuid"] == before["uuid"]
    assert "resize" in xapi.xenapi.VDI.get_allowed_operations(vdi)
    xapi.xenapi.VDI.resize(vdi, str(4 * MiB))
    assert xapi.xenapi.VDI.get_virtual_size(vdi) == str(4 * MiB)


def test_sr_forget_removes_the_records_and_the_pool_definition(running, xapi, tmp_path):
    sr = make_sr(xapi, tmp_path / "forgotten")
    uuid = xapi.xenapi.SR.get_uuid(sr)
    pbd = xapi.xenapi.SR.get_PBDs(sr)[0]
    vdi = new_vdi(xapi, MiB, sr)
    xapi.xenapi.PBD.unplug(pbd)
    xapi.xenapi.SR.forget(sr)
    for cls, ref in (("SR", sr), ("PBD", pbd), ("VDI", vdi)):
        assert fails(getattr(xapi.xenapi, cls).get_record, ref)[0] == "HANDLE_INVALID"
    assert uuid not in pools(running)
    assert pbd not in xapi.xenapi.host.get_PBDs(the_host(xapi))


def test_sr_introduce_then_pbd_create_plug_unplug_destroy(running, xapi, tmp_path):
    host = the_host(xapi)
    sr = xapi.xenapi.SR.introduce("", "introduced", "by hand", "DIR", "", False, {})
    rec = xapi.xenapi.SR.get_record(sr)
    assert (rec["type"], rec["PBDs"], rec["VDIs"], rec["other_config"]) == ("dir", [], [], {})
    assert (rec["physical_size"], rec["physical_utilisation"], rec["virtual_allocation"]) == ("-1", "-1", "0")
    uuid = rec["uuid"]
    assert fails(xapi.xenapi.SR.introduce, uuid, "again", "", "dir", "", False, {}) == ["SR_UUID_EXISTS", uuid]
    assert fails(xapi.xenapi.SR.destroy, sr) == ["SR_HAS_NO_PBDS", sr]

    config = {"location": str(tmp_path / "introduced")}
    pbd = xapi.xenapi.PBD.create({"host": host, "SR": sr, "device_config": config})
    assert xapi.xenapi.PBD.get_record(pbd) == {
        "uuid": xapi.xenapi.PBD.get_uuid(pbd), "host": host, "SR": sr, "device_config": config,
        "currently_attached": False, "other_config": {}}
    assert xapi.xenapi.SR.get_PBDs(sr) == [pbd] and not pools(running)[uuid].active
    assert fails(xapi.xenapi.PBD.create, {"host": host, "SR": sr, "device_config": config}) == [
        "PBD_EXISTS", sr, host, pbd]
    assert fails(xapi.xenapi.PBD.create, {"host": host, "SR": sr})[0] == "INTERNAL_ERROR"

    xapi.xenapi.PBD.plug(pbd)
    assert xapi.xenapi.PBD.get_currently_attached(pbd) is True and pools(running)[uuid].active
    assert int(xapi.xenapi.SR.get_physical_size(sr)) > 0                # observed once plugged
    assert fails(xapi.xenapi.PBD.destroy, pbd) == ["OPERATION_NOT_ALLOWED", "PBD is currently attached"]
    vdi = new_vdi(xapi, MiB, sr)
    assert xapi.xenapi.SR.get_VDIs(sr) == [vdi]
    xapi.xenapi.VDI.destroy(vdi)

    xapi.xenapi.PBD.unplug(pbd)
    assert xapi.xenapi.PBD.get_currently_attached(pbd) is False and not pools(running)[uuid].active
    assert "destroy" in xapi.xenapi.SR.get_allowed_operations(sr)         # unplugged and empty
    xapi.xenapi.PBD.destroy(pbd)
    assert fails(xapi.xenapi.PBD.get_record, pbd)[0] == "HANDLE_INVALID" and uuid not in pools(running)
    # as xapi's: the SR outlives its last PBD, until SR.forget
    assert xapi.xenapi.SR.get_PBDs(sr) == [] and xapi.xenapi.SR.get_uuid(sr) == uuid
    assert fails(xapi.xenapi.SR.destroy, sr) == ["SR_HAS_NO_PBDS", sr]
    assert "destroy" not in xapi.xenapi.SR.get_allowed_operations(sr)
    xapi.xenapi.SR.forget(sr)
    assert fails(xapi.xenapi.SR.get_record, sr) == ["HANDLE_INVALID", "SR", sr]


def test_pbd_unplug_with_attached_vdis_is_vdi_in_use_with_their_refs(running, xapi, tmp_path):
    sr = make_sr(xapi, tmp_path / "busy")
    pbd = xapi.xenapi.SR.get_PBDs(sr)[0]
    vm = guest_vm(xapi, "Halted")
    vdis = [new_vdi(xapi, MiB, sr), new_vdi(xapi, MiB, sr)]
    idle = new_vdi(xapi, MiB, sr)
    for vdi in vdis:
        new_vbd(xapi, vm, vdi)
    xapi.xenapi.VM.start(vm, False, False)
    details = fails(xapi.xenapi.PBD.unplug, pbd)
    assert details[0] == "VDI_IN_USE" and sorted(details[1:]) == sorted(vdis) and idle not in details
    assert xapi.xenapi.PBD.get_currently_attached(pbd) is True
    xapi.xenapi.VM.hard_shutdown(vm)
    xapi.xenapi.PBD.unplug(pbd)
    assert xapi.xenapi.PBD.get_currently_attached(pbd) is False


def test_sr_create_with_an_unknown_type_is_sr_unknown_driver(running, xapi, tmp_path):
    before, pools_before = set(xapi.xenapi.SR.get_all()), set(pools(running))
    assert fails(xapi.xenapi.SR.create, the_host(xapi), {"location": str(tmp_path / "x")}, "0", "n", "",
                 "nosuchtype", "", False, {}) == ["SR_UNKNOWN_DRIVER", "nosuchtype"]
    assert set(xapi.xenapi.SR.get_all()) == before and set(pools(running)) == pools_before


@pytest.mark.parametrize("device_config, code, reason", [
    ({}, "SR_BACKEND_FAILURE_94",
     "The request is missing the location parameter [opterr=device_config:location is required]"),
    ({"location": "  "}, "SR_BACKEND_FAILURE_94",
     "The request is missing the location parameter [opterr=device_config:location is required]"),
    ({"location": "relative/dir"}, "SR_BACKEND_FAILURE_1",
     "Invalid argument [opterr=device_config:location must be an absolute path, not 'relative/dir']"),
])
def test_sr_create_with_a_bad_device_config_fails_and_leaves_nothing(running, xapi, device_config, code, reason):
    before = (set(xapi.xenapi.SR.get_all()), set(xapi.xenapi.PBD.get_all()), set(pools(running)))
    assert fails(xapi.xenapi.SR.create, the_host(xapi), device_config, "0", "bad", "", "dir", "", False, {}) == [
        code, "", reason, ""]
    assert (set(xapi.xenapi.SR.get_all()), set(xapi.xenapi.PBD.get_all()), set(pools(running))) == before
    assert xapi.xenapi.SR.get_by_name_label("bad") == []


def test_sr_create_that_libvirt_refuses_midway_leaves_nothing(running, xapi, tmp_path):
    from xenapi.errors import XenAPIError
    connection = conn(running)

    def refuse(uuid):
        raise XenAPIError("BACKEND_FAILURE", running.uri, "start_pool", "1", "cannot start the pool")
    connection.start_pool = refuse
    before = (set(xapi.xenapi.SR.get_all()), set(xapi.xenapi.PBD.get_all()), set(pools(running)))
    assert fails(make_sr, xapi, tmp_path / "refused", "refused")[:3] == ["BACKEND_FAILURE", running.uri, "start_pool"]
    time.sleep(0.6)                                      # a storage poll that might have seen the pool
    assert (set(xapi.xenapi.SR.get_all()), set(xapi.xenapi.PBD.get_all()), set(pools(running))) == before
    assert xapi.xenapi.SR.get_by_name_label("refused") == []


# -- VBD -------------------------------------------------------------------------------------------

def test_vbd_create_on_a_halted_vm_links_both_sides_and_takes_the_first_free_slot(running, xapi):
    vm = guest_vm(xapi, "Halted")
    first, second, third = new_vdi(xapi), new_vdi(xapi), new_vdi(xapi)
    vbd0 = new_vbd(xapi, vm, first)
    rec = xapi.xenapi.VBD.get_record(vbd0)
    assert (rec["VM"], rec["VDI"], rec["userdevice"], rec["device"], rec["type"], rec["mode"]) == (
        vm, first, "0", "vda", "Disk", "RW")
    assert (rec["empty"], rec["currently_attached"], rec["bootable"], rec["unpluggable"]) == (False, False, False, True)
    assert (rec["other_config"], rec["qos_algorithm_type"], rec["qos_algorithm_params"]) == ({}, "", {})
    assert rec["allowed_operations"] == ["attach"] and rec["current_operations"] == {}
    assert xapi.xenapi.VM.get_VBDs(vm) == [vbd0] and xapi.xenapi.VDI.get_VBDs(first) == [vbd0]
    vbd1 = new_vbd(xapi, vm, second, bootable=True, other_config={"owner": "me"})
    assert (xapi.xenapi.VBD.get_userdevice(vbd1), xapi.xenapi.VBD.get_device(vbd1)) == ("1", "vdb")
    assert xapi.xenapi.VBD.get_bootable(vbd1) is True and xapi.xenapi.VBD.get_other_config(vbd1) == {"owner": "me"}
    xapi.xenapi.VBD.destroy(vbd0)
    again = new_vbd(xapi, vm, third)                             # slot 0 is free again
    assert xapi.xenapi.VBD.get_userdevice(again) == "0"
    assert set(xapi.xenapi.VM.get_VBDs(vm)) == {again, vbd1}
    # the disks are in the domain's persistent definition
    xml = conn(running).xml(xapi.xenapi.VM.get_uuid(vm), inactive=True)
    assert volume_name(xapi, third) in xml and volume_name(xapi, second) in xml
    assert volume_name(xapi, first) not in xml


def test_vbd_create_refusals_carry_xapi_parameters_and_make_nothing(xapi):
    vm = guest_vm(xapi, "Halted")
    vdi = new_vdi(xapi)
    new_vbd(xapi, vm, vdi, "0")
    other = new_vdi(xapi)
    read_only = new_vdi(xapi, read_only=True)
    statefile = new_vdi(xapi, type="ha_statefile")
    before = set(xapi.xenapi.VM.get_VBDs(vm))
    assert fails(new_vbd, xapi, vm, other, "0") == ["DEVICE_ALREADY_EXISTS", "0"]
    assert fails(new_vbd, xapi, vm, other, "xvda") == ["DEVICE_ALREADY_EXISTS", "xvda"]     # slot 0 by name
    assert fails(new_vbd, xapi, vm, other, "hda") == ["DEVICE_ALREADY_EXISTS", "hda"]
    assert fails(new_vbd, xapi, vm, other, "not-a-device") == ["INVALID_DEVICE", "not-a-device"]
    assert fails(lambda: new_vbd(xapi, vm, NULL_REF, type="CD", mode="RW")) == ["VBD_CDS_MUST_BE_READONLY"]
    assert fails(new_vbd, xapi, vm, NULL_REF) == ["VBD_NOT_REMOVABLE_MEDIA", "in constructor"]
    assert fails(new_vbd, xapi, vm, read_only) == ["VDI_READONLY", read_only]
    assert fails(new_vbd, xapi, vm, statefile) == ["VDI_INCOMPATIBLE_TYPE", statefile, "ha_statefile"]
    record = {"VM": vm, "VDI": other, "userdevice": "autodetect", "bootable": False, "mode": "RW", "type": "Disk",
              "empty": False, "other_config": {}, "qos_algorithm_type": ""}
    assert fails(xapi.xenapi.VBD.create, record) == [
        "INTERNAL_ERROR", 'Dispatcher_FieldNotFound("qos_algorithm_params")']
    assert set(xapi.xenapi.VM.get_VBDs(vm)) == before
    assert xapi.xenapi.VDI.get_VBDs(other) == [] and xapi.xenapi.VDI.get_VBDs(read_only) == []
    ro_vbd = new_vbd(xapi, vm, read_only, mode="RO")                  # read-only is fine
    assert xapi.xenapi.VBD.get_mode(ro_vbd) == "RO"


def test_empty_cd_drive_insert_and_eject_on_a_halted_vm(xapi):
    vm = guest_vm(xapi, "Halted")
    disk = new_vbd(xapi, vm, new_vdi(xapi))
    cd = new_vbd(xapi, vm, NULL_REF, type="CD")
    media = new_vdi(xapi, name_label="installer")
    rec = xapi.xenapi.VBD.get_record(cd)
    assert (rec["type"], rec["mode"], rec["empty"], rec["VDI"], rec["userdevice"]) == ("CD", "RO", True, NULL_REF, "1")
    assert rec["allowed_operations"] == ["attach", "insert"]
    assert fails(xapi.xenapi.VBD.eject, cd) == ["VBD_IS_EMPTY", cd]
    xapi.xenapi.VBD.insert(cd, media)
    assert (xapi.xenapi.VBD.get_empty(cd), xapi.xenapi.VBD.get_VDI(cd)) == (False, media)
    assert xapi.xenapi.VDI.get_VBDs(media) == [cd]
    assert xapi.xenapi.VBD.get_allowed_operations(cd) == ["attach", "eject"]
    assert fails(xapi.xenapi.VBD.insert, cd, media) == ["VBD_NOT_EMPTY", cd]
    xapi.xenapi.VBD.eject(cd)
    assert (xapi.xenapi.VBD.get_empty(cd), xapi.xenapi.VBD.get_VDI(cd)) == (True, NULL_REF)
    assert xapi.xenapi.VDI.get_VBDs(media) == []
    assert fails(xapi.xenapi.VBD.insert, disk, media) == ["VBD_NOT_REMOVABLE_MEDIA", disk]
    assert fails(xapi.xenapi.VBD.eject, disk) == ["VBD_NOT_REMOVABLE_MEDIA", disk]
    xapi.xenapi.VBD.destroy(cd)
    assert xapi.xenapi.VM.get_VBDs(vm) == [disk]
    assert fails(xapi.xenapi.VBD.get_record, cd) == ["HANDLE_INVALID", "VBD", cd]


def test_vbd_destroy_on_a_halted_vm_unlinks_both_sides(running, xapi):
    vm = guest_vm(xapi, "Halted")
    vdi = new_vdi(xapi)
    vbd = new_vbd(xapi, vm, vdi)
    xapi.xenapi.VBD.destroy(vbd)
    assert fails(xapi.xenapi.VBD.get_record, vbd) == ["HANDLE_INVALID", "VBD", vbd]
    assert xapi.xenapi.VM.get_VBDs(vm) == [] and xapi.xenapi.VDI.get_VBDs(vdi) == []
    assert volume_name(xapi, vdi) not in conn(running).xml(xapi.xenapi.VM.get_uuid(vm), inactive=True)
    assert xapi.xenapi.VDI.get_virtual_size(vdi) == str(MiB)                  # the disk stays


def test_plug_and_unplug_on_a_halted_vm_are_vm_bad_power_state(xapi):
    vm = guest_vm(xapi, "Halted")
    vbd = new_vbd(xapi, vm, new_vdi(xapi))
    assert fails(xapi.xenapi.VBD.plug, vbd) == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    assert fails(xapi.xenapi.VBD.unplug, vbd) == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    assert xapi.xenapi.VBD.get_currently_attached(vbd) is False


def test_a_started_vm_holds_its_disks(xapi):
    vm = guest_vm(xapi, "Halted")
    vdi = new_vdi(xapi)
    vbd = new_vbd(xapi, vm, vdi)
    free_ops = xapi.xenapi.VDI.get_allowed_operations(vdi)
    xapi.xenapi.VM.start(vm, False, False)
    assert xapi.xenapi.VBD.get_currently_attached(vbd) is True
    assert fails(xapi.xenapi.VDI.destroy, vdi) == ["VDI_IN_USE", vdi, "destroy"]
    assert fails(xapi.xenapi.VDI.resize, vdi, str(2 * MiB)) == ["VDI_IN_USE", vdi, "resize"]
    assert fails(xapi.xenapi.VDI.forget, vdi) == ["VDI_IN_USE", vdi, "forget"]
    # what xapi allows on a disk attached read-write: clone and snapshot (copy needs every attachment RO)
    assert xapi.xenapi.VDI.get_allowed_operations(vdi) == ["clone", "snapshot"]
    vbd_uuid, vm_uuid = xapi.xenapi.VBD.get_uuid(vbd), xapi.xenapi.VM.get_uuid(vm)
    assert fails(xapi.xenapi.VBD.destroy, vbd) == [
        "OPERATION_NOT_ALLOWED", f"VBD '{vbd_uuid}' still attached to '{vm_uuid}'"]
    unplug = fails(xapi.xenapi.VBD.unplug, vbd)
    assert unplug[0] == "OPERATION_NOT_ALLOWED" and "hotplug" in unplug[1] and "TEST" in unplug[1]
    assert fails(xapi.xenapi.VBD.unplug_force, vbd) == unplug
    assert fails(xapi.xenapi.VBD.plug, vbd) == ["DEVICE_ALREADY_ATTACHED", vbd]
    assert xapi.xenapi.VBD.get_currently_attached(vbd) is True
    snap = xapi.xenapi.VDI.snapshot(vdi, {})                     # allowed live
    assert xapi.xenapi.VDI.get_snapshot_of(snap) == vdi
    xapi.xenapi.VM.hard_shutdown(vm)
    assert xapi.xenapi.VBD.get_currently_attached(vbd) is False
    assert xapi.xenapi.VDI.get_allowed_operations(vdi) == free_ops
    xapi.xenapi.VBD.destroy(vbd)


def test_vbd_create_on_a_running_vm_is_not_attached_until_plugged(xapi):
    vm = guest_vm(xapi, "Running")
    vbd = new_vbd(xapi, vm, new_vdi(xapi))
    assert xapi.xenapi.VBD.get_currently_attached(vbd) is False
    details = fails(xapi.xenapi.VBD.plug, vbd)
    assert details[0] == "OPERATION_NOT_ALLOWED" and "hotplug" in details[1]
    assert fails(xapi.xenapi.VBD.unplug, vbd) == ["DEVICE_ALREADY_DETACHED", vbd]
    xapi.xenapi.VBD.destroy(vbd)                                  # a detached VBD goes, running or not
    assert xapi.xenapi.VM.get_VBDs(vm) == []


def test_vm_destroy_keeps_its_vdis_and_removes_its_vbds(xapi):
    vm = guest_vm(xapi, "Halted")
    vdis = [new_vdi(xapi), new_vdi(xapi)]
    vbds = [new_vbd(xapi, vm, vdi) for vdi in vdis]
    cd = new_vbd(xapi, vm, NULL_REF, type="CD")
    xapi.xenapi.VM.destroy(vm)
    for vbd in (*vbds, cd):
        assert fails(xapi.xenapi.VBD.get_record, vbd) == ["HANDLE_INVALID", "VBD", vbd]
    for vdi in vdis:
        assert xapi.xenapi.VDI.get_VBDs(vdi) == [] and xapi.xenapi.VDI.get_SR(vdi) == default_sr(xapi)
        xapi.xenapi.VDI.destroy(vdi)                              # and they are free to go


# -- allowed operations ------------------------------------------------------------------------------

def test_allowed_operations_agree_with_assert_operation_valid_in_every_state(xapi, tmp_path):
    """For every SR, VDI and VBD operation, in many states: listed in allowed_operations exactly
    when assert_operation_valid accepts it."""
    wrong = []

    def check_all():
        for cls, enum in (("SR", "storage_operations"), ("VDI", "vdi_operations"), ("VBD", "vbd_operations")):
            for ref in getattr(xapi.xenapi, cls).get_all():
                wrong.extend(mismatched_operations(xapi, cls, ref, enum))

    halted, running_vm = guest_vm(xapi, "Halted"), guest_vm(xapi, "Running")
    sr2 = make_sr(xapi, tmp_path / "ops")
    disk = new_vdi(xapi)
    new_vdi(xapi, read_only=True)
    new_vdi(xapi, sharable=True)
    xapi.xenapi.VDI.snapshot(disk, {})
    new_vbd(xapi, halted, disk)
    cd = new_vbd(xapi, halted, NULL_REF, type="CD")
    new_vbd(xapi, running_vm, new_vdi(xapi, sr=sr2))
    empty_sr = xapi.xenapi.SR.introduce("", "no pbds", "", "dir", "", False, {})
    check_all()                                            # halted VM, plugged SRs, a detached disk
    xapi.xenapi.VBD.insert(cd, new_vdi(xapi))
    xapi.xenapi.VM.start(halted, False, False)
    check_all()                                            # attached disks and a full CD
    xapi.xenapi.VM.hard_shutdown(halted)
    xapi.xenapi.VM.hard_shutdown(running_vm)
    xapi.xenapi.PBD.unplug(xapi.xenapi.SR.get_PBDs(sr2)[0])
    check_all()                                            # an unplugged SR with VDIs
    assert xapi.xenapi.SR.get_allowed_operations(empty_sr) and wrong == []


# -- events ----------------------------------------------------------------------------------------

def test_events_follow_vdi_and_vbd_through_create_relation_and_destroy(xapi):
    classes = ["VDI", "VBD", "SR", "VM"]
    sr, vm = default_sr(xapi), guest_vm(xapi, "Halted")
    token = xapi.xenapi.event_from(classes, "", 0.0)["token"]
    vdi = new_vdi(xapi)
    collect_events(xapi, classes, token, {("vdi", "add", vdi), ("sr", "mod", sr)})
    token = xapi.xenapi.event_from(classes, token, 0.0)["token"]
    vbd = new_vbd(xapi, vm, vdi)
    collect_events(xapi, classes, token, {("vbd", "add", vbd), ("vm", "mod", vm), ("vdi", "mod", vdi)})
    token = xapi.xenapi.event_from(classes, token, 0.0)["token"]
    xapi.xenapi.VBD.destroy(vbd)
    collect_events(xapi, classes, token, {("vbd", "del", vbd), ("vm", "mod", vm), ("vdi", "mod", vdi)})
    token = xapi.xenapi.event_from(classes, token, 0.0)["token"]
    xapi.xenapi.VDI.destroy(vdi)
    collect_events(xapi, classes, token, {("vdi", "del", vdi), ("sr", "mod", sr)})


def test_event_snapshots_carry_the_new_relation(xapi):
    vm = guest_vm(xapi, "Halted")
    vdi = new_vdi(xapi)
    token = xapi.xenapi.event_from(["VDI", "VBD", "SR"], "", 0.0)["token"]
    vbd = new_vbd(xapi, vm, vdi)
    event = wait_for_event(xapi, ["VDI", "VBD", "SR"], token,
                           lambda e: e["class"] == "vdi" and e["ref"] == vdi and e["operation"] == "mod")
    assert event["snapshot"]["VBDs"] == [vbd]
    event = wait_for_event(xapi, ["VDI", "VBD", "SR"], token, lambda e: e["ref"] == vbd)
    assert event["operation"] == "add" and (event["snapshot"]["VM"], event["snapshot"]["VDI"]) == (vm, vdi)


# -- behind the server's back ------------------------------------------------------------------------

def test_a_volume_made_and_deleted_behind_the_back_is_a_vdi_add_and_del(running, xapi):
    sr = default_sr(xapi)
    pool = xapi.xenapi.SR.get_uuid(sr)
    token = xapi.xenapi.event_from(["VDI"], "", 0.0)["token"]
    started = time.monotonic()
    name = conn(running).create_volume(pool, "<volume><name>by-virsh.img</name>"
                                             "<capacity unit='bytes'>3145728</capacity>"
                                             "<target><format type='raw'/></target></volume>")
    added = wait_for_event(xapi, ["VDI"], token, lambda e: e["operation"] == "add", timeout=5)
    assert time.monotonic() - started < 5
    vdi, snapshot = added["ref"], added["snapshot"]
    assert (snapshot["name_label"], snapshot["SR"], snapshot["virtual_size"]) == ("by-virsh.img", sr, "3145728")
    assert snapshot["location"].endswith("/by-virsh.img") and snapshot["managed"] is True
    assert xapi.xenapi.VDI.get_record(vdi)["uuid"] == snapshot["uuid"] and vdi in xapi.xenapi.SR.get_VDIs(sr)
    xapi.xenapi.VDI.set_name_label(vdi, "adopted")            # a found volume is a VDI like any other
    conn(running).delete_volume(pool, name)
    wait_for_event(xapi, ["VDI"], token, lambda e: e["operation"] == "del" and e["ref"] == vdi, timeout=5)
    assert fails(xapi.xenapi.VDI.get_record, vdi)[0] == "HANDLE_INVALID"


def test_a_volume_named_by_a_uuid_behind_the_back_takes_that_uuid(running, xapi):
    sr = default_sr(xapi)
    uuid = "0badc0de-1234-4321-8888-123456789abc"
    token = xapi.xenapi.event_from(["VDI"], "", 0.0)["token"]
    conn(running).create_volume(xapi.xenapi.SR.get_uuid(sr), f"<volume><name>{uuid}.qcow2</name>"
                                "<capacity unit='bytes'>1048576</capacity>"
                                "<target><format type='qcow2'/></target></volume>")
    added = wait_for_event(xapi, ["VDI"], token, lambda e: e["operation"] == "add", timeout=5)
    assert added["snapshot"]["uuid"] == uuid and xapi.xenapi.VDI.get_by_uuid(uuid) == added["ref"]


def test_a_pool_defined_and_started_behind_the_back_is_an_sr_with_a_pbd(running, xapi, tmp_path):
    host = the_host(xapi)
    uuid = "11111111-2222-4333-8444-555555555555"
    token = xapi.xenapi.event_from(["SR", "PBD"], "", 0.0)["token"]
    connection = conn(running)
    connection.define_pool(f"<pool type='dir'><name>by-virsh</name><uuid>{uuid}</uuid>"
                           f"<target><path>{tmp_path / 'by-virsh'}</path></target></pool>", build=False)
    connection.start_pool(uuid)
    added = wait_for_event(xapi, ["SR", "PBD"], token, lambda e: e["class"] == "sr" and e["operation"] == "add",
                           timeout=5)
    sr = added["ref"]
    wait_until(lambda: any(xapi.xenapi.PBD.get_currently_attached(p) for p in xapi.xenapi.SR.get_PBDs(sr)),
               timeout=5, what="an attached PBD")
    rec = xapi.xenapi.SR.get_record(sr)
    assert (rec["uuid"], rec["name_label"], rec["type"], rec["content_type"]) == (uuid, "by-virsh", "dir", "user")
    assert len(rec["PBDs"]) == 1
    pbd = xapi.xenapi.PBD.get_record(rec["PBDs"][0])
    assert (pbd["host"], pbd["SR"], pbd["device_config"]) == (host, sr, {"location": str(tmp_path / "by-virsh")})
    vdi = new_vdi(xapi, MiB, sr)                                 # and it is usable
    assert xapi.xenapi.VDI.get_SR(vdi) == sr
    connection.stop_pool(uuid)
    wait_until(lambda: not xapi.xenapi.PBD.get_currently_attached(rec["PBDs"][0]), timeout=5, what="a detached PBD")
    assert xapi.xenapi.SR.get_VDIs(sr) == [vdi]                  # kept while the pool is stopped
    assert "resize" not in xapi.xenapi.VDI.get_allowed_operations(vdi)
    assert fails(xapi.xenapi.VDI.assert_operation_valid, vdi, "resize") == ["SR_HAS_NO_PBDS", sr]
    connection.undefine_pool(uuid)
    wait_for_event(xapi, ["SR", "PBD"], token, lambda e: e["ref"] == sr and e["operation"] == "del", timeout=5)
    assert fails(xapi.xenapi.VDI.get_record, vdi)[0] == "HANDLE_INVALID"


# -- where -----------------------------------------------------------------------------------------

def test_where_compares_virtual_size_numerically_within_one_sr(xapi, tmp_path):
    sr, sr2 = default_sr(xapi), make_sr(xapi, tmp_path / "where")
    small, medium = new_vdi(xapi, MiB), new_vdi(xapi, 9 * MiB)
    large = new_vdi(xapi, 10 * MiB)
    elsewhere = new_vdi(xapi, 10 * MiB, sr2)
    found = xapi.xenapi.VDI.get_all_records_where(f'field "virtual_size" >= "{9 * MiB}" and field "SR" = "{sr}"')
    assert set(found) == {medium, large}                       # 9 MiB < 10 MiB numerically, not as text
    assert all(rec["SR"] == sr for rec in found.values())
    found = xapi.xenapi.VDI.get_all_records_where(f'field "virtual_size" < "{9 * MiB}" and field "SR" = "{sr}"')
    assert set(found) == {small}
    found = xapi.xenapi.VDI.get_all_records_where(f'field "virtual_size" > "{9 * MiB}"')
    assert set(found) == {large, elsewhere}
    assert set(xapi.xenapi.VDI.get_all_records_where(f'field "SR" = "{sr2}"')) == {elsewhere}


def test_a_relist_keeps_the_vbds_a_running_guest_has_in_its_definition_only(running, xapi):
    """A bulk relist reads running domains without their persistent definitions (a second XMLDesc
    each); a VBD made on a running VM (in the definition only, not plugged) stays, detached."""
    x = xapi.xenapi
    vm = guest_vm(xapi, "Running")
    vbd = new_vbd(xapi, vm, new_vdi(xapi))
    assert x.VBD.get_currently_attached(vbd) is False
    running.server.reconciler.relist(running.server.hosts.master)
    assert vbd in x.VM.get_VBDs(vm) and x.VBD.get_currently_attached(vbd) is False
    running.server.reconciler.refresh(running.server.hosts.master, x.VM.get_uuid(vm))   # a full read finds it too
    assert vbd in x.VM.get_VBDs(vm)
