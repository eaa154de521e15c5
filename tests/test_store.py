"""The store: atomic batches, copy-on-write records, the change log, persistence."""
import pytest

from classes import REGISTRY
from xenapi.errors import XenAPIError
from xenapi.state.store import Store, add, delete, mod


@pytest.fixture
def store(tmp_path):
    return Store(REGISTRY.classes, str(tmp_path / "db.sqlite"), log_size=10)


def _task(store, label="t"):
    return store.create("task", {"name_label": label})


def test_create_fills_every_declared_field(store):
    ref = _task(store)
    rec = store.get("task", ref)
    assert set(rec) == {f.name for f in REGISTRY.classes["task"].fields}
    assert rec["status"] == "pending" and rec["uuid"]


def test_records_are_never_mutated_in_place(store):
    ref = _task(store)
    before = store.get("task", ref)
    store.update("task", ref, {"name_label": "after"})
    assert before["name_label"] == "t" and store.get("task", ref)["name_label"] == "after"


def test_batch_with_a_bad_ref_changes_nothing(store):
    ref = _task(store)
    last = store.last_id
    with pytest.raises(XenAPIError) as e:
        store.apply([mod("task", ref, {"name_label": "x"}), mod("task", "OpaqueRef:missing", {"name_label": "y"})])
    assert e.value.description == ["HANDLE_INVALID", "task", "OpaqueRef:missing"]
    assert store.get("task", ref)["name_label"] == "t" and store.last_id == last


def test_unchanged_update_makes_no_event(store):
    ref = _task(store)
    last = store.last_id
    store.update("task", ref, {"name_label": "t"})
    assert store.last_id == last


def test_change_log_reports_add_mod_del_in_order(store):
    ref = _task(store)
    store.update("task", ref, {"progress": 0.5})
    store.delete("task", ref)
    ops = [(c.op, c.ref) for c in store.changes_after(0)]
    assert ops == [("add", ref), ("mod", ref), ("del", ref)]


def test_change_log_beyond_its_size_says_so(store):
    for n in range(15):
        _task(store, str(n))
    assert store.changes_after(0) is None
    assert len(store.changes_after(store.last_id - 3)) == 3


def test_persisted_objects_survive_a_restart(tmp_path):
    path = str(tmp_path / "db.sqlite")
    first = Store(REGISTRY.classes, path)
    ref = first.create("task", {"name_label": "kept", "other_config": {"k": "v"}})
    second = Store(REGISTRY.classes, path)
    assert second.load() == 1
    rec = second.get("task", ref)
    assert rec["name_label"] == "kept" and rec["other_config"] == {"k": "v"}
    assert second.by_uuid("task", rec["uuid"]) == ref


def test_uuid_lookup_of_unknown_uuid_raises_uuid_invalid(store):
    with pytest.raises(XenAPIError) as e:
        store.by_uuid("task", "nope")
    assert e.value.description == ["UUID_INVALID", "task", "nope"]


def test_wait_returns_when_a_change_lands(store):
    import threading
    generation = store.generation
    threading.Timer(0.05, lambda: _task(store)).start()
    assert store.wait(generation, 5.0) > generation


def test_a_write_after_close_raises_store_closed_and_changes_nothing(tmp_path):
    from xenapi.state.store import StoreClosed
    store = Store(REGISTRY.classes, str(tmp_path / "x.db"))
    ref = store.create("pool", {"name_label": "p"})
    store.close()
    with pytest.raises(StoreClosed):
        store.update("pool", ref, {"name_label": "q"})
    assert store.get("pool", ref)["name_label"] == "p"


# -- relations: only the ref is written; the store keeps the set on the other side ----------------

@pytest.fixture
def related(tmp_path):
    return Store(REGISTRY.classes, str(tmp_path / "db.sqlite"), relations=REGISTRY.relations)


def test_a_ref_written_moves_its_object_between_sets_with_events_on_both_sides(related):
    a = related.create("host", {"name_label": "a"})
    b = related.create("host", {"name_label": "b"})
    vm = related.create("VM", {"name_label": "v", "resident_on": a})
    assert related.get("host", a)["resident_VMs"] == [vm]
    mark = related.last_id
    related.update("VM", vm, {"resident_on": b})
    assert related.get("host", a)["resident_VMs"] == [] and related.get("host", b)["resident_VMs"] == [vm]
    assert {(c.cls, c.ref, c.op) for c in related.changes_after(mark)} == {
        ("VM", vm, "mod"), ("host", a, "mod"), ("host", b, "mod")}
    related.delete("VM", vm)
    assert related.get("host", b)["resident_VMs"] == []


def test_one_batch_writes_a_set_once_however_many_refs_join_it(related):
    host = related.create("host", {"name_label": "h"})
    mark = related.last_id
    vms = [f"OpaqueRef:vm-{n}" for n in range(50)]
    related.apply([add("VM", ref, related.new_record("VM", {"resident_on": host})) for ref in vms])
    assert related.get("host", host)["resident_VMs"] == sorted(vms)
    assert [c.ref for c in related.changes_after(mark) if c.cls == "host"] == [host]


def test_an_object_added_after_the_refs_to_it_gets_its_set(related):
    vm = related.create("VM", {"name_label": "v", "resident_on": "OpaqueRef:later"})
    related.apply([add("host", "OpaqueRef:later", related.new_record("host", {"name_label": "late"}))])
    assert related.get("host", "OpaqueRef:later")["resident_VMs"] == [vm]


def test_a_relations_set_is_never_written_directly(related):
    host = related.create("host", {"name_label": "h"})
    with pytest.raises(ValueError, match="kept by the store"):
        related.update("host", host, {"resident_VMs": ["OpaqueRef:x"]})


def test_loading_rebuilds_the_sets_from_the_refs(tmp_path):
    path = str(tmp_path / "db.sqlite")
    first = Store(REGISTRY.classes, path, relations=REGISTRY.relations)
    vm = first.create("VM", {"name_label": "v"})                       # VM records persist
    first.update("VM", vm, {"resident_on": "OpaqueRef:host-of-last-run"})
    first.close()
    again = Store(REGISTRY.classes, path, relations=REGISTRY.relations)
    again.load()
    again.apply([add("host", "OpaqueRef:host-of-last-run", again.new_record("host", {}))])
    assert again.get("host", "OpaqueRef:host-of-last-run")["resident_VMs"] == [vm]


def test_derived_ids_are_the_standard_uuid5_of_their_names():
    """The hand-rolled uuid5 (no UUID object per ref: a relist derives several per domain) gives
    exactly what uuid.uuid5 gives, so refs stay the same across versions and restarts."""
    import uuid

    from xenapi.state.store import _NS, derived_ref, derived_uuid, uuid5
    for name in ("VM/6b2d1f0e-6c1a-4c55-9a64-7a2f3f1d0c11", "", "é/ü/漢字", "x" * 1000):
        assert uuid5(name) == str(uuid.uuid5(_NS, name))
    assert derived_ref("VM", "abc") == "OpaqueRef:" + str(uuid.uuid5(_NS, "VM/abc"))
    assert derived_uuid("VM", "abc") == str(uuid.uuid5(_NS, "uuid/VM/abc"))
