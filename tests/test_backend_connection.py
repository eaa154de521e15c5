"""HostConnection against libvirt's real test driver: in process, and through a private libvirtd.

test:///default is shared by every open in this process, so each test defines its own uniquely
named domains and removes them; state-mapping tests use a generated node file instead
(test:///<path>: independent state per open).
"""
from __future__ import annotations

import threading
import time
import uuid as uuidlib
from contextlib import contextmanager
from typing import Iterator

import pytest

from tests.conftest import vm_record
from xenapi.backend import domxml, stats
from xenapi.backend.connection import ERR_NO_DOMAIN, HostConnection, power_state
from xenapi.errors import BACKEND_FAILURE, HOST_NOT_LIVE, XenAPIError

SHARED_URI = "test:///default"
MIB = 1024 * 1024


class Recorder:
    """Collects on_domain_event / on_liveness calls from libvirt's threads; tests wait on it."""

    def __init__(self):
        self.events: list[tuple[str, str, str]] = []
        self.liveness: list[tuple[str, bool]] = []
        self._changed = threading.Condition()

    def domain_event(self, uri: str, uuid: str, kind: str) -> None:
        with self._changed:
            self.events.append((uri, uuid, kind))
            self._changed.notify_all()

    def live(self, uri: str, live: bool) -> None:
        with self._changed:
            self.liveness.append((uri, live))
            self._changed.notify_all()

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def kinds_for(self, uuid: str) -> list[str]:
        with self._changed:
            return [kind for _, u, kind in self.events if u == uuid]


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def host(recorder):
    connection = HostConnection(SHARED_URI, recorder.domain_event, recorder.live)
    connection.open()
    yield connection
    connection.close()


@pytest.fixture
def new_vm(host):
    """Factory: define a uniquely named domain on test:///default; every one is removed afterwards."""
    created = []

    def define(record: dict | None = None) -> str:
        uuid = str(uuidlib.uuid4())
        created.append(uuid)
        return host.define(domxml.build(record or vm_record(), "test", uuid=uuid, name=f"xenapi-{uuid[:13]}"))

    yield define
    for uuid in created:
        for cleanup in (host.destroy, host.undefine):
            try:
                cleanup(uuid)
            except XenAPIError:
                pass


def power(host: HostConnection, uuid: str) -> str:
    return host.domain_state(uuid).power_state


# ---- power states ------------------------------------------------------------------------------

# libvirt virDomainState values (stable ABI): 1 running, 2 blocked, 3 paused, 4 shutdown (in
# progress), 5 shutoff, 6 crashed, 7 pmsuspended; the node file's <test:runstate> sets them.
STATE_CASES = [(1, False, "Running"), (2, False, "Running"), (3, False, "Paused"), (4, False, "Running"),
               (5, False, "Halted"), (5, True, "Suspended"), (6, False, "Halted"), (7, False, "Paused")]


@pytest.mark.parametrize("state,managed_save,expected", STATE_CASES)
def test_power_state_table_maps_libvirt_states(state, managed_save, expected):
    assert power_state(state, managed_save, lambda: pytest.fail("only NOSTATE asks isActive")) == expected


def test_power_state_of_nostate_follows_is_active():
    assert power_state(0, False, lambda: True) == "Running"
    assert power_state(0, False, lambda: False) == "Halted"


def test_list_domains_reports_every_state_of_a_node_file(tmp_path, recorder):
    domains = "".join(
        f"""<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
              <name>s{i}</name><uuid>00000000-0000-0000-0000-00000000000{i}</uuid>
              <memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type></os>
              <test:runstate>{state}</test:runstate>{'<test:hasmanagedsave/>' if saved else ''}
            </domain>""" for i, (state, saved, _) in enumerate(STATE_CASES))
    node = tmp_path / "node.xml"
    node.write_text(f"<node><memory>4194304</memory>{domains}</node>")
    connection = HostConnection(f"test://{node}", recorder.domain_event, recorder.live)
    connection.open()
    try:
        listed = {d.name: d for d in connection.list_domains()}
    finally:
        connection.close()
    assert {name: d.power_state for name, d in listed.items()} == {
        f"s{i}": expected for i, (_, _, expected) in enumerate(STATE_CASES)}
    assert listed["s5"].domid == -1 and listed["s5"].libvirt_state.startswith("SHUTOFF:")
    assert listed["s0"].domid > 0 and domxml.parse(listed["s0"].xml)["name"] == "s0"


# ---- lifecycle ------------------------------------------------------------------------------------

def test_define_returns_the_uuid_of_a_halted_domain(host, new_vm):
    uuid = new_vm()
    state = host.domain_state(uuid)
    assert (state.uuid, state.power_state, state.domid) == (uuid, "Halted", -1)
    assert uuid in {d.uuid for d in host.list_domains()}
    assert domxml.parse(state.xml)["name_label"] == "test vm"


def test_power_cycle_walks_through_every_xenapi_state(host, new_vm):
    uuid = new_vm()
    host.start(uuid, paused=False)
    assert power(host, uuid) == "Running" and host.domain_state(uuid).domid > 0
    host.pause(uuid)
    assert power(host, uuid) == "Paused"
    host.unpause(uuid)
    assert power(host, uuid) == "Running"
    host.save(uuid)
    assert power(host, uuid) == "Suspended" and host.domain_state(uuid).domid == -1
    host.restore(uuid, paused=False)
    assert power(host, uuid) == "Running"
    host.reboot(uuid)
    host.reset(uuid)
    assert power(host, uuid) == "Running"
    host.shutdown(uuid)
    assert power(host, uuid) == "Halted"          # the test driver shuts down synchronously


def test_start_paused_falls_back_where_start_paused_is_unsupported(host, new_vm):
    uuid = new_vm()
    host.start(uuid, paused=True)
    assert power(host, uuid) == "Paused"
    host.destroy(uuid)
    assert power(host, uuid) == "Halted"


def test_restore_paused_resumes_the_image_paused(host, new_vm):
    uuid = new_vm()
    host.start(uuid)
    host.save(uuid)
    host.restore(uuid, paused=True)
    assert power(host, uuid) == "Paused"


def test_discard_save_turns_a_suspended_domain_halted(host, new_vm):
    uuid = new_vm()
    host.start(uuid)
    host.save(uuid)
    host.discard_save(uuid)
    assert power(host, uuid) == "Halted"
    host.start(uuid)                        # a cold boot now, not a restore
    assert power(host, uuid) == "Running"


def test_undefine_removes_a_suspended_domain_with_its_image(host, new_vm):
    uuid = new_vm()
    host.start(uuid)
    host.save(uuid)
    host.undefine(uuid)
    with pytest.raises(XenAPIError) as raised:
        host.domain_state(uuid)
    assert raised.value.code == BACKEND_FAILURE and raised.value.params[2] == ERR_NO_DOMAIN


def test_start_of_a_running_domain_raises_backend_failure(host, new_vm):
    uuid = new_vm()
    host.start(uuid)
    with pytest.raises(XenAPIError) as raised:
        host.start(uuid)
    assert raised.value.code == BACKEND_FAILURE
    assert raised.value.params[:2] == (SHARED_URI, "start")
    assert raised.value.params[2].isdigit() and "running" in raised.value.params[3]


def test_define_of_schema_invalid_xml_raises_backend_failure(host):
    with pytest.raises(XenAPIError) as raised:
        host.define("<domain type='test'><name>bad</name><memory>lots</memory></domain>")
    assert raised.value.code == BACKEND_FAILURE and raised.value.params[1] == "define"


# ---- configuration ----------------------------------------------------------------------------

def test_setters_change_the_persistent_definition(host, new_vm):
    uuid = new_vm()
    host.set_title(uuid, "new\nname")
    host.set_description(uuid, "described")
    host.set_stamp(uuid, {"ref": "OpaqueRef:other", "is_a_template": "true"})
    host.set_memory(uuid, 1024 * MIB, 512 * MIB, static_min=256 * MIB)
    host.set_vcpus(uuid, 4, 3)
    parsed = domxml.parse(host.xml(uuid, inactive=True))
    assert parsed["name_label"] == "new name" and parsed["name_description"] == "described"
    assert parsed["stamp"] == {"ref": "OpaqueRef:other", "is_a_template": "true"}
    assert (parsed["memory_static_max"], parsed["memory_dynamic_max"], parsed["memory_static_min"]) == (
        1024 * MIB, 512 * MIB, 256 * MIB)
    assert (parsed["VCPUs_max"], parsed["VCPUs_at_startup"]) == (4, 3)


def test_set_stamp_keeps_the_reserved_static_min(host, new_vm):
    uuid = new_vm(vm_record() | {"memory_static_min": 64 * MIB})
    host.set_stamp(uuid, {})
    parsed = domxml.parse(host.xml(uuid))
    assert parsed["stamp"] == {} and parsed["memory_static_min"] == 64 * MIB


def test_title_and_stamp_apply_live_and_persistently_on_a_running_domain(host, new_vm):
    uuid = new_vm()
    host.start(uuid)
    host.set_title(uuid, "renamed")
    host.set_stamp(uuid, {"ref": "OpaqueRef:live"})
    for inactive in (False, True):
        parsed = domxml.parse(host.xml(uuid, inactive=inactive))
        assert (parsed["name_label"], parsed["stamp"]) == ("renamed", {"ref": "OpaqueRef:live"})


def test_a_sample_of_a_driver_without_domain_stats_has_host_figures_only(host, new_vm):
    host.start(new_vm())
    sample = stats.read(host, host.host_facts().cpu_count)
    assert sample.memory_free > 0 and sample.cpu_times and set(sample.domains) <= {d.uuid for d in host.list_domains()}
    assert all(d.cpu_time is None for d in sample.domains.values())


# ---- events ------------------------------------------------------------------------------------

def test_changes_made_by_another_connection_reach_on_domain_event(host, recorder, new_vm):
    other = HostConnection(SHARED_URI, lambda *a: None, lambda *a: None)
    other.open()
    try:
        uuid = new_vm()
        other.start(uuid)
        other.set_title(uuid, "from elsewhere")
        other.destroy(uuid)
        expected = ["defined", "lifecycle:STARTED:BOOTED", "metadata", "lifecycle:STOPPED:DESTROYED"]
        assert recorder.wait_for(lambda: recorder.kinds_for(uuid)[:4] == expected), recorder.kinds_for(uuid)
        assert all(uri == SHARED_URI for uri, u, _ in recorder.events if u == uuid)
    finally:
        other.close()


def test_a_raising_event_handler_does_not_stop_later_events(recorder, new_vm, host):
    seen_by_flaky = Recorder()

    def flaky(uri, uuid, kind):
        seen_by_flaky.domain_event(uri, uuid, kind)
        raise RuntimeError("handler bug")

    watcher = HostConnection(SHARED_URI, flaky, recorder.live)
    watcher.open()
    try:
        uuid = new_vm()
        host.start(uuid)                       # after "defined" already raised in flaky
        assert seen_by_flaky.wait_for(lambda: "lifecycle:STARTED:BOOTED" in seen_by_flaky.kinds_for(uuid))
        assert recorder.wait_for(lambda: "lifecycle:STARTED:BOOTED" in recorder.kinds_for(uuid))
    finally:
        watcher.close()


# ---- liveness ----------------------------------------------------------------------------------

def test_operations_after_close_raise_host_not_live_at_once(recorder):
    connection = HostConnection(SHARED_URI, recorder.domain_event, recorder.live)
    connection.open()
    connection.close()
    assert not connection.live
    started = time.monotonic()
    for operation in (connection.list_domains, connection.host_facts, lambda: connection.start("x")):
        with pytest.raises(XenAPIError) as raised:
            operation()
        assert raised.value.code == HOST_NOT_LIVE
    assert time.monotonic() - started < 2          # at once: no wait on a timeout


def test_open_of_an_unreachable_host_raises_host_not_live(recorder, tmp_path):
    connection = HostConnection(f"test+unix:///default?socket={tmp_path}/absent-sock",
                                recorder.domain_event, recorder.live)
    with pytest.raises(XenAPIError) as raised:
        connection.open()
    assert raised.value.code == HOST_NOT_LIVE and not connection.live


@contextmanager
def reconnecting(libvirtd, recorder, **options) -> Iterator[HostConnection]:
    """A connection to the private daemon (the libvirtd fixture) that retries every 0.05-0.2 s;
    closed afterwards."""
    connection = HostConnection(libvirtd.uri, recorder.domain_event, recorder.live,
                                backoff_initial=0.05, backoff_max=0.2, **options)
    try:
        yield connection
    finally:
        connection.close()


def _open_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("libvirt-open-")]


def wait_for_log(caplog, text: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in r.getMessage() for r in caplog.records):
            return True
        time.sleep(0.01)
    return False


def test_daemon_death_marks_host_not_live_and_restart_reconnects(libvirtd, recorder, caplog):
    caplog.set_level("INFO", logger="xenapi.backend")
    libvirtd.start()
    with reconnecting(libvirtd, recorder) as connection:
        connection.open()
        assert connection.live and [d.name for d in connection.list_domains()] == ["test"]

        libvirtd.kill()
        assert recorder.wait_for(lambda: (libvirtd.uri, False) in recorder.liveness), recorder.liveness
        assert not connection.live
        started = time.monotonic()
        with pytest.raises(XenAPIError) as raised:
            connection.list_domains()
        assert raised.value.code == HOST_NOT_LIVE and time.monotonic() - started < 2   # no timeout waited
        assert wait_for_log(caplog, "event=host_reconnect_failed")     # it keeps trying meanwhile

        libvirtd.start()
        assert recorder.wait_for(lambda: recorder.liveness[-1:] == [(libvirtd.uri, True)], timeout=15)
        assert connection.live and [d.name for d in connection.list_domains()] == ["test"]

        # Events were re-registered on the new connection: a change made elsewhere arrives.
        other = HostConnection(libvirtd.uri, lambda *a: None, lambda *a: None)
        other.open()
        try:
            uuid = other.define(domxml.build(vm_record(), "test", uuid=str(uuidlib.uuid4()), name="after-restart"))
            assert recorder.wait_for(lambda: "defined" in recorder.kinds_for(uuid))
        finally:
            other.close()


def test_open_keep_trying_connects_once_the_daemon_appears(libvirtd, recorder):
    with reconnecting(libvirtd, recorder) as connection:
        with pytest.raises(XenAPIError):
            connection.open(keep_trying=True)
        libvirtd.start()
        assert recorder.wait_for(lambda: (libvirtd.uri, True) in recorder.liveness, timeout=15)
        assert connection.live


def test_a_connection_error_during_a_call_marks_host_not_live_and_reconnects(libvirtd, recorder):
    """White box: silence the close callback so the failing call itself must notice the death."""
    libvirtd.start()
    with reconnecting(libvirtd, recorder) as connection:
        connection.open()
        connection._conn.unregisterCloseCallback()
        libvirtd.kill()
        with pytest.raises(XenAPIError) as raised:
            connection.list_domains()
        assert raised.value.code == HOST_NOT_LIVE and not connection.live
        assert recorder.liveness == [(libvirtd.uri, False)]
        libvirtd.start()
        assert recorder.wait_for(lambda: recorder.liveness[-1:] == [(libvirtd.uri, True)], timeout=15)
        assert [d.name for d in connection.list_domains()] == ["test"]


def test_every_death_and_return_is_reported_once_and_in_order(libvirtd, recorder):
    libvirtd.start()
    with reconnecting(libvirtd, recorder) as connection:
        connection.open()
        connection.open()                    # already live: nothing happens
        for cycle in (1, 2):                 # the second death proves the close callback came back too
            libvirtd.kill()
            assert recorder.wait_for(lambda: len(recorder.liveness) == 2 * cycle - 1)
            libvirtd.start()
            assert recorder.wait_for(lambda: len(recorder.liveness) == 2 * cycle, timeout=15)
        assert recorder.liveness == [(libvirtd.uri, False), (libvirtd.uri, True)] * 2
        assert connection.live


# ---- a frozen daemon: bounded waits ------------------------------------------------------------

def test_open_of_a_frozen_daemon_gives_up_at_the_deadline_and_connects_once_it_thaws(libvirtd, recorder):
    libvirtd.start()
    with reconnecting(libvirtd, recorder, open_timeout=0.3) as connection:
        with libvirtd.frozen():
            started = time.monotonic()
            with pytest.raises(XenAPIError) as raised:
                connection.open(keep_trying=True)
            assert raised.value.code == HOST_NOT_LIVE and time.monotonic() - started < 3
            with pytest.raises(XenAPIError) as raised:
                connection.list_domains()
            assert raised.value.code == HOST_NOT_LIVE
            time.sleep(1.0)                    # several deadlines pass: still the one attempt, no pile-up
            assert len(_open_threads()) == 1 and recorder.liveness == []
        assert recorder.wait_for(lambda: recorder.liveness == [(libvirtd.uri, True)], timeout=15)
        assert [d.name for d in connection.list_domains()] == ["test"]
        assert _open_threads() == []


def test_close_abandons_an_open_held_by_a_frozen_daemon(libvirtd, recorder):
    libvirtd.start()
    connection = HostConnection(libvirtd.uri, recorder.domain_event, recorder.live, open_timeout=0.3)
    with libvirtd.frozen():
        with pytest.raises(XenAPIError):
            connection.open(keep_trying=True)
        started = time.monotonic()
        connection.close()
        assert time.monotonic() - started < 3
        [attempt] = _open_threads()
    attempt.join(timeout=15)                   # the daemon answers it now; its connection is closed unused
    assert not attempt.is_alive() and not connection.live and recorder.liveness == []


def test_a_call_to_a_daemon_that_freezes_fails_within_the_keepalive_bound(libvirtd, recorder):
    libvirtd.start()
    with reconnecting(libvirtd, recorder, keepalive=(1, 2)) as connection:
        connection.open()
        with libvirtd.frozen():
            started = time.monotonic()
            with pytest.raises(XenAPIError) as raised:
                connection.list_domains()
            assert raised.value.code == HOST_NOT_LIVE
            assert time.monotonic() - started < 1 * (2 + 1) + 3      # interval * (count + 1), and slack
            assert recorder.wait_for(lambda: recorder.liveness == [(libvirtd.uri, False)])
        assert recorder.wait_for(lambda: recorder.liveness[-1:] == [(libvirtd.uri, True)], timeout=15)
        assert [d.name for d in connection.list_domains()] == ["test"]
