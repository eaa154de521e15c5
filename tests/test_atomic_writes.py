"""Read-modify-writes are atomic (xenapi/model/registry.py, xenapi/state/store.py ``modify`` and
``object_lock``): concurrent writers through every generated map and set message lose nothing, and
a ``kill -9`` of a real ``xenapi serve`` in the middle of them loses no acknowledged write and
leaves no record half-written."""
from __future__ import annotations

import http.client
import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import XenAPI

from classes import REGISTRY
from tests.conftest import ADMIN_PASSWORD, guest_vm, new_vbd, new_vdi, node_xml, start_server, stop_server
from tests.serve_process import Serve
from xenapi.model import types as T
from xenapi.model.declare import RW
from xenapi.state.store import ObjectLocks, Store

WRITERS = 8
KEYS = 18                   # per writer: two thirds added first, then half of those removed while the rest go in

# Classes with no object on a fresh test-driver server (a guest agent's metrics, a grant, a console
# of a guest with graphics, VIF metrics xapi no longer fills, and what the test driver's simulated
# host cannot build: VLANs, tunnels, bonds); their messages are the same generated code as the others'.
NO_OBJECT = {"VM_guest_metrics", "grant", "console", "VIF_metrics", "VLAN", "tunnel", "Bond"}


def collection_fields() -> list[tuple[str, str]]:
    """Every RW map and set field of every class that has an object to write to."""
    return [(cls, f.name) for cls, decl in REGISTRY.classes.items() if decl.stored and cls not in NO_OBJECT
            for f in decl.fields if f.qualifier == RW and isinstance(f.type, (T.Map, T.Set))]


def test_every_rw_map_and_set_field_of_vm_is_tried():
    vm = {name for cls, name in collection_fields() if cls == "VM"}
    assert {"other_config", "tags", "profiles", "xenstore_data", "platform", "blocked_operations"} <= vm
    assert vm == {f.name for f in REGISTRY.classes["VM"].fields
                  if f.qualifier == RW and isinstance(f.type, (T.Map, T.Set))}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("atomic"), metrics_interval=3600)
    yield running
    stop_server(running)


def login(running) -> XenAPI.Session:
    session = XenAPI.Session(running.url)
    session.xenapi.login_with_password("root", ADMIN_PASSWORD, "2.21", "pytest")
    return session


def target(running, session, cls: str) -> str:
    """An object of ``cls`` to write to."""
    if cls == "task":
        return session.xenapi.task.create("atomic", "concurrent writers")
    if cls == "session":
        return login(running).handle                 # a session of its own, written by others
    if cls == "VM":
        return guest_vm(session, "Halted")
    if cls == "VDI":
        return new_vdi(session)
    if cls == "VBD":
        return new_vbd(session, guest_vm(session, "Halted"), new_vdi(session))
    if cls == "security_group":
        return session.xenapi.security_group.create({"name_label": "atomic"})
    if cls == "VIF":
        network = session.xenapi.network.create({"name_label": "atomic", "other_config": {}})
        vm = guest_vm(session, "Halted")
        device = session.xenapi.VM.get_allowed_VIF_devices(vm)[0]
        return session.xenapi.VIF.create({"device": device, "network": network, "VM": vm,
                                          "MAC": "", "MTU": "1500", "other_config": {}, "qos_algorithm_type": "",
                                          "qos_algorithm_params": {}})
    return sorted(running.server.store.refs(cls))[0]


def writer_keys(cls: str, field: str) -> list[list[str]]:
    """Distinct keys (or set members) for each writer: names of their own, or the enum's values."""
    ftype = next(f.type for f in REGISTRY.classes[cls].fields if f.name == field)
    key_type = ftype.key if isinstance(ftype, T.Map) else ftype.of
    if isinstance(key_type, T.Enum):
        values = sorted(key_type.values)
        return [values[n::WRITERS] for n in range(WRITERS)]
    return [[f"w{n}-{k}" for k in range(KEYS)] for n in range(WRITERS)]


def members(value) -> set[str]:
    return set(value) if not isinstance(value, dict) else set(value.keys())


@pytest.mark.parametrize("cls,field", collection_fields(), ids=[f"{c}.{f}" for c, f in collection_fields()])
def test_concurrent_writers_through_the_generated_messages_lose_nothing(server, cls, field):
    root = login(server)
    ref = target(server, root, cls)
    api = getattr(root.xenapi, cls)
    is_map = isinstance(next(f.type for f in REGISTRY.classes[cls].fields if f.name == field), T.Map)
    add_name, remove_name = (f"add_to_{field}", f"remove_from_{field}") if is_map else (f"add_{field}", f"remove_{field}")
    before = members(getattr(api, f"get_{field}")(ref))
    keys = writer_keys(cls, field)
    sessions = [login(server) for _ in range(WRITERS)]
    start = threading.Barrier(WRITERS)

    def write(n: int) -> tuple[set[str], set[str]]:
        mine = getattr(sessions[n].xenapi, cls)
        add = (lambda k: getattr(mine, add_name)(ref, k, f"value of {k}")) if is_map else \
              (lambda k: getattr(mine, add_name)(ref, k))
        remove = lambda k: getattr(mine, remove_name)(ref, k)     # noqa: E731
        first, later = keys[n][: len(keys[n]) * 2 // 3], keys[n][len(keys[n]) * 2 // 3:]
        added, removed = set(), set()
        start.wait()
        for k in first:                                  # every call returns only once acknowledged
            add(k)
            added.add(k)
        for gone, new in zip(first[::2], later + [None] * len(first)):
            remove(gone)
            removed.add(gone)
            if new is not None:
                add(new)
                added.add(new)
        return added, removed

    with ThreadPoolExecutor(WRITERS) as pool:
        results = list(pool.map(write, range(WRITERS)))
    added = set().union(*(a for a, _ in results))
    removed = set().union(*(r for _, r in results))
    after = getattr(api, f"get_{field}")(ref)
    assert members(after) == (before | added) - removed
    if is_map:
        assert all(after[k] == f"value of {k}" for k in added - removed)


def test_a_duplicate_key_is_refused_atomically(server):
    """Of eight concurrent add_to_other_config with one key, exactly one wins; the rest get
    MAP_DUPLICATE_KEY, and the value is the winner's."""
    sessions = [login(server) for _ in range(WRITERS)]
    vm = guest_vm(sessions[0], "Halted")
    start = threading.Barrier(WRITERS)

    def add(n):
        start.wait()
        try:
            sessions[n].xenapi.VM.add_to_other_config(vm, "contested", f"writer {n}")
            return n
        except XenAPI.Failure as e:
            assert e.details[0] == "MAP_DUPLICATE_KEY"
            return None

    with ThreadPoolExecutor(WRITERS) as pool:
        winners = [n for n in pool.map(add, range(WRITERS)) if n is not None]
    assert len(winners) == 1
    assert sessions[0].xenapi.VM.get_other_config(vm)["contested"] == f"writer {winners[0]}"


# -- the store's primitives --------------------------------------------------------------------

def test_modify_runs_its_change_on_the_current_record_and_a_raise_writes_nothing():
    store = Store(REGISTRY.classes)
    ref = store.create("pool", {"other_config": {"a": "1"}})
    store.modify("pool", ref, lambda rec: {"other_config": {**rec["other_config"], "b": "2"}})
    assert store.get("pool", ref)["other_config"] == {"a": "1", "b": "2"}
    last = store.last_id

    def refuse(rec):
        raise ValueError("no")
    with pytest.raises(ValueError):
        store.modify("pool", ref, refuse)
    assert store.last_id == last and store.get("pool", ref)["other_config"] == {"a": "1", "b": "2"}
    store.modify("pool", ref, lambda rec: {})                        # nothing to change: no event
    assert store.last_id == last


def test_modify_sees_earlier_ops_of_its_batch():
    from xenapi.state.store import modify
    store = Store(REGISTRY.classes)
    ref = store.create("pool", {"tags": []})
    store.apply([modify("pool", ref, lambda rec, n=n: {"tags": [*rec["tags"], n]}) for n in "abc"])
    assert store.get("pool", ref)["tags"] == ["a", "b", "c"]


def test_object_locks_are_per_object_and_forgotten_when_free():
    locks = ObjectLocks()
    inside = threading.Event()
    release = threading.Event()

    def hold_a():
        with locks.hold("a"):
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=hold_a)
    holder.start()
    assert inside.wait(10)
    with locks.hold("b"):                              # another object: no wait while "a" is held
        assert len(locks) == 2
    got_a = threading.Event()

    def take_a():
        with locks.hold("a"):
            got_a.set()

    waiter = threading.Thread(target=take_a)
    waiter.start()
    assert not got_a.wait(0.05)                        # the same object: it waits its turn
    release.set()
    holder.join(10)
    waiter.join(10)
    assert got_a.is_set() and len(locks) == 0          # the table holds only locks in use


# -- kill -9 during concurrent writes ------------------------------------------------------------

def serve(directory: Path) -> Serve:
    """A real ``xenapi serve`` on a test-driver node file: the same domains, so the same refs, on
    every start, and a state directory that outlives it."""
    node = directory / "node.xml"
    if not node.exists():
        node.write_text(node_xml(domains=2, running=0))
    return Serve(directory, f"test://{node}")


def persisted_rows(database: Path) -> list[tuple[str, str, dict]]:
    """Every persisted object as SQLite has it after the kill, checked sound and complete: each row
    loads and holds every field its class declares."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = conn.execute("SELECT ref, cls, data FROM objects").fetchall()
    finally:
        conn.close()
    out = []
    for ref, cls, data in rows:
        record = json.loads(data)
        assert set(record) == {f.name for f in REGISTRY.classes[cls].fields}, (cls, ref)
        out.append((ref, cls, record))
    return out


def test_kill_9_during_concurrent_writes_loses_no_acknowledged_write(tmp_path):
    served = serve(tmp_path)
    stop = threading.Event()
    acked_add, acked_remove, tried_remove = set(), set(), set()
    noted = threading.Lock()
    try:
        root = served.session()
        vm = guest_vm(root, "Halted")
        sessions = [served.session() for _ in range(WRITERS)]

        def write(n: int) -> int:
            api = sessions[n].xenapi.VM
            calls = 0
            try:
                for k in range(100_000):
                    if stop.is_set():
                        break
                    key = f"w{n}-{k}"
                    api.add_to_other_config(vm, key, key)
                    api.add_tags(vm, key)
                    with noted:
                        acked_add.add(key)
                    if k % 3 == 2:                     # now and then take an older key out again
                        old = f"w{n}-{k - 2}"
                        with noted:
                            tried_remove.add(old)
                        api.remove_from_other_config(vm, old)
                        api.remove_tags(vm, old)
                        with noted:
                            acked_remove.add(old)
                    calls += 1
            except (OSError, http.client.HTTPException):  # the server died under the call: unacknowledged
                pass
            return calls

        with ThreadPoolExecutor(WRITERS) as pool:
            futures = [pool.submit(write, n) for n in range(WRITERS)]
            deadline = time.monotonic() + 30
            while len(acked_add) < WRITERS * 20 and time.monotonic() < deadline:
                time.sleep(0.01)
            served.kill()                              # in the middle of the writes
            stop.set()
            assert all(f.result(timeout=60) > 0 for f in futures)
        assert len(acked_add) >= WRITERS * 20

        def check(other_config: dict, tags: list) -> None:
            for key in acked_add - tried_remove:       # acknowledged, never asked to go: there
                assert other_config.get(key) == key and key in tags, key
            for key in acked_remove:                   # acknowledged removal: gone
                assert key not in other_config and key not in tags, key

        rows = persisted_rows(tmp_path / "state" / "xenapi.db")
        (stored,) = [rec for ref, cls, rec in rows if ref == vm]
        check(stored["other_config"], stored["tags"])
        for key in set(stored["other_config"]) ^ set(stored["tags"]):   # the two halves of one write
            assert key in tried_remove or key not in acked_add, key     # differ only where a call was cut

        served = serve(tmp_path)                       # the restart
        again = served.session()
        record = again.xenapi.VM.get_record(vm)
        check(record["other_config"], record["tags"])
        assert record["other_config"] == stored["other_config"] and sorted(record["tags"]) == sorted(stored["tags"])
        for ref, cls, rec in rows:                     # the persisted objects of the API came back whole
            if cls in ("VM", "pool", "user"):
                assert getattr(again.xenapi, cls).get_record(ref)["uuid"] == rec["uuid"]
    finally:
        stop.set()
        served.stop()
