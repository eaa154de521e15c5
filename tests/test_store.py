"""The store: atomic batches, copy-on-write records, the change log, persistence."""
import pytest

from classes import REGISTRY
from xenapi.errors import XenAPIError
from xenapi.store import Store, add, delete, mod


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
    from xenapi.store import StoreClosed
    store = Store(REGISTRY.classes, str(tmp_path / "x.db"))
    ref = store.create("pool", {"name_label": "p"})
    store.close()
    with pytest.raises(StoreClosed):
        store.update("pool", ref, {"name_label": "q"})
    assert store.get("pool", ref)["name_label"] == "p"
