"""Live metrics: the sampler (libvirt's bulk statistics -> host_metrics, host_cpu, VM_metrics) and
GET /metrics (Prometheus text, read back with prometheus_client's own parser).

The in-process test driver reports host memory and CPU times but no domain figures, so the tests
that need domain figures write samples parsed from a statistics record a real QEMU domain gave
(``QEMU_RECORD``, in tests/metrics_support.py); tests/e2e/test_metrics_qemu.py takes them from a running guest.  libvirt calls
are counted by wrapping the binding's classes: the real methods still run.
"""
from __future__ import annotations

import time
from collections import Counter

import libvirt
import pytest
import XenAPI

from tests.conftest import guest_vm, node_xml, start_server, stop_server
from tests.metrics_support import GiB, QEMU_RECORD, metrics_of, qemu_sample, sampler_of, samples, scrape, value
from xenapi.backend import stats
from xenapi.backend.stats import CpuTimes, DomainSample
from xenapi.config import load

MiB = 1024 * 1024
METRIC_CLASSES = ["vm_metrics", "host_metrics", "host_cpu"]


@pytest.fixture
def libvirt_calls(monkeypatch):
    """Calls into libvirt from now on, by class.method.  UUIDString is left out: it reads the
    handle a bulk call returned and asks no driver."""
    calls: Counter[str] = Counter()

    def counting(name, method):
        def call(*args, **kwargs):
            calls[name] += 1
            return method(*args, **kwargs)
        return call

    for cls in (libvirt.virConnect, libvirt.virDomain):
        for name, method in list(vars(cls).items()):
            if callable(method) and not name.startswith("_") and name != "UUIDString":
                monkeypatch.setattr(cls, name, counting(f"{cls.__name__}.{name}", method))
    return calls


def guest_of(r, power_state: str) -> tuple:
    """(a root session's xenapi, a VM in that power state, its uuid)."""
    session = r.session()
    vm = guest_vm(session, power_state)
    return session.xenapi, vm, session.xenapi.VM.get_uuid(vm)


# ---- backend.stats: parsing and rates ---------------------------------------------------------

def test_a_qemu_record_gives_every_figure_in_bytes_and_nanoseconds():
    figures = stats.parse_domain(QEMU_RECORD)
    assert figures == DomainSample(cpu_time=2494476000, vcpu_times={0: 2180000000}, vcpus=1,
                                   memory_actual=256 * MiB, memory_free=None, disk_read_bytes=512,
                                   disk_write_bytes=0, net_rx_bytes=90, net_tx_bytes=0)


def test_a_driver_without_domain_figures_gives_none_not_zero():
    assert stats.parse_domain({}) == DomainSample()
    assert stats.parse_domain({"block.count": 0, "net.count": 1}).disk_read_bytes is None


def test_vcpu_utilisation_is_each_vcpus_time_over_the_wall_time():
    before = DomainSample(vcpu_times={0: 1_000_000_000, 1: 0})
    after = DomainSample(vcpu_times={0: 1_500_000_000, 1: 2_000_000_000})
    assert stats.vcpu_utilisation(before, after, 2_000_000_000) == {0: 0.25, 1: 1.0}


def test_vcpu_utilisation_spreads_the_domain_cpu_time_without_per_vcpu_times():
    assert stats.vcpu_utilisation(DomainSample(cpu_time=0, vcpus=2), DomainSample(cpu_time=10**9, vcpus=2),
                                  10**9) == {0: 0.5, 1: 0.5}


def test_vcpu_utilisation_is_none_without_times_and_clamped_after_a_restart():
    assert stats.vcpu_utilisation(DomainSample(), DomainSample(), 10**9) is None
    restarted = DomainSample(vcpu_times={0: 10**6})
    assert stats.vcpu_utilisation(DomainSample(vcpu_times={0: 5 * 10**9}), restarted, 10**9) == {0: 0.0}


def test_cpu_utilisation_is_the_busy_share_and_none_when_the_clock_stands_still():
    assert stats.cpu_utilisation(CpuTimes(100, 1000), CpuTimes(400, 2000)) == 0.3
    assert stats.cpu_utilisation(CpuTimes(100, 1000), CpuTimes(100, 1000)) is None


def test_a_test_driver_sample_has_the_host_figures_and_its_active_domains(quiet):
    host = quiet.server.hosts.master
    sample = stats.read(quiet.server.hosts.connection(host), quiet.server.hosts.facts(host).cpu_count)
    running = {rec["uuid"] for rec in quiet.server.store.records("VM").values()
               if rec["power_state"] == "Running" and not rec["is_control_domain"]}
    assert set(sample.domains) == running and all(d == DomainSample() for d in sample.domains.values())
    assert sample.memory_free >= 0                        # (0 here: the test driver has none)
    assert sorted(sample.cpu_times) == [0, 1, 2, 3]


# ---- the sampler: what it writes, and when not --------------------------------------------------

def test_a_sample_lands_in_vm_metrics_in_xapis_shape(quiet):
    x, vm, uuid = guest_of(quiet, "Running")
    sampler, host = sampler_of(quiet)
    sampler.write(host, qemu_sample(0, {uuid: {}}))
    sampler.write(host, qemu_sample(2, {uuid: {"vcpu.0.time": 2680000000, "block.0.rd.bytes": 4096}}))
    record = metrics_of(x, vm)
    assert record["memory_actual"] == str(256 * MiB) and record["VCPUs_number"] == "1"
    assert record["VCPUs_utilisation"] == {"0": 0.25}
    assert record["other_config"] == {"disk_read_bytes": "4096", "disk_write_bytes": "0",
                                      "net_rx_bytes": "90", "net_tx_bytes": "0"}
    host_metrics = x.host_metrics.get_record(x.host.get_metrics(host))
    # a test-driver host's free memory is the server's own figure, not the sample's (made up there)
    assert (host_metrics["memory_total"], host_metrics["memory_free"]) == \
        (str(8 * GiB), str(quiet.server.hosts.free_memory(host)))


def test_every_change_of_a_host_is_one_apply_and_one_event_per_changed_record(tmp_path):
    r = start_server(tmp_path, domains=3, running=3, metrics_interval=3600)
    try:
        x = r.session().xenapi
        vms = {x.VM.get_uuid(vm): vm for vm in x.VM.get_all() if not x.VM.get_is_control_domain(vm)}
        sampler, host = sampler_of(r)
        sampler.write(host, qemu_sample(0, {uuid: {} for uuid in vms}))
        token = x.event_from(METRIC_CLASSES, "", 0.0)["token"]
        generation = r.server.store.generation
        sampler.write(host, qemu_sample(1, {uuid: {"vcpu.0.time": 2180000000 + 10**8} for uuid in vms}))
        assert r.server.store.generation == generation + 1          # one Store.apply
        events = x.event_from(METRIC_CLASSES, token, 0.0)["events"]
        assert sorted(e["ref"] for e in events) == sorted(x.VM.get_metrics(vm) for vm in vms.values())
        assert all(e["snapshot"]["VCPUs_utilisation"] == {"0": 0.1} for e in events)
    finally:
        stop_server(r)


def test_a_refresh_that_finds_nothing_new_makes_no_event(quiet):
    x = quiet.session().xenapi
    sampler, host = sampler_of(quiet)
    sampler.refresh(host)
    token = x.event_from(METRIC_CLASSES, "", 0.0)["token"]
    sampler.refresh(host)
    assert x.event_from(METRIC_CLASSES, token, 0.0)["events"] == []


def test_steady_figures_make_no_event_and_a_moving_counter_makes_one(quiet):
    x, vm, uuid = guest_of(quiet, "Running")
    sampler, host = sampler_of(quiet)
    for second in range(3):                                        # the same 25 % every second
        sampler.write(host, qemu_sample(second, {uuid: {"vcpu.0.time": 2180000000 + second * 250_000_000}}))
    before = metrics_of(x, vm)
    token = x.event_from(METRIC_CLASSES, "", 0.0)["token"]
    sampler.write(host, qemu_sample(3, {uuid: {"vcpu.0.time": 2180000000 + 3 * 250_000_000}}))
    assert x.event_from(METRIC_CLASSES, token, 0.0)["events"] == []
    assert metrics_of(x, vm)["last_updated"] == before["last_updated"]
    sampler.write(host, qemu_sample(4, {uuid: {"vcpu.0.time": 2180000000 + 4 * 250_000_000, "net.1.rx.bytes": 900}}))
    events = x.event_from(METRIC_CLASSES, token, 0.0)["events"]
    assert [e["snapshot"]["other_config"]["net_rx_bytes"] for e in events] == ["900"]


def test_a_vm_that_stops_loses_its_live_figures_and_keeps_the_clients_keys(quiet):
    x, vm, uuid = guest_of(quiet, "Running")
    x.VM_metrics.add_to_other_config(x.VM.get_metrics(vm), "owner", "ops")
    sampler, host = sampler_of(quiet)
    sampler.write(host, qemu_sample(0, {uuid: {}}))
    sampler.write(host, qemu_sample(1, {uuid: {"vcpu.0.time": 2180000000 + 10**8}}))
    x.VM.hard_shutdown(vm)
    sampler.refresh(host)                                          # the real driver: the domain is gone
    record = metrics_of(x, vm)
    assert record["VCPUs_utilisation"] == {} and record["memory_actual"] == "0"
    assert record["other_config"] == {"owner": "ops"}


def test_a_refresh_makes_the_same_few_bulk_calls_for_2_or_200_vms(tmp_path, libvirt_calls):
    calls = {}
    for n in (2, 200):
        (tmp_path / str(n)).mkdir()
        r = start_server(tmp_path / str(n), domains=n, running=n, metrics_interval=3600)
        try:
            sampler, host = sampler_of(r)
            libvirt_calls.clear()
            sampler.refresh(host)
            calls[n] = dict(libvirt_calls)
        finally:
            stop_server(r)
    assert calls[2] == calls[200], "a refresh must not make calls per VM"
    assert calls[200]["virConnect.getAllDomainStats"] == 1
    assert not [name for name in calls[200] if name.startswith("virDomain.")]


def test_reading_the_metrics_of_200_vms_asks_libvirt_nothing(tmp_path, libvirt_calls):
    # (the storage poller asks libvirt on its own period: not a read of anyone's)
    r = start_server(tmp_path, domains=200, running=200, metrics_interval=3600, storage_poll_interval=3600)
    try:
        x = r.session().xenapi
        sampler, host = sampler_of(r)
        sampler.refresh(host)
        libvirt_calls.clear()
        records = x.VM_metrics.get_all_records()
        for vm in x.VM.get_all():
            assert x.VM_metrics.get_record(x.VM.get_metrics(vm))["VCPUs_number"] == "1" or \
                x.VM.get_is_control_domain(vm)
        status, _, text = scrape(r)
        assert status == 200 and len(samples(text)["xenapi_vm_memory_actual_bytes"]) == 201
        assert len(records) == 201 and sum(libvirt_calls.values()) == 0, libvirt_calls
    finally:
        stop_server(r)


def test_starting_a_vm_refreshes_its_host_soon(quiet, libvirt_calls):
    x, vm, _ = guest_of(quiet, "Halted")
    libvirt_calls.clear()
    x.VM.start(vm, False, False)
    deadline = time.monotonic() + 10
    while libvirt_calls["virConnect.getAllDomainStats"] == 0:      # nobody else calls it after start-up
        assert time.monotonic() < deadline, "no refresh after the VM started"
        time.sleep(0.05)


def test_a_host_that_is_down_does_not_stop_the_others_refreshing(tmp_path, libvirt_calls):
    node = tmp_path / "node.xml"
    node.write_text(node_xml())
    r = start_server(tmp_path, uris=[f"test://{node}", f"test://{tmp_path / 'missing.xml'}"], metrics_interval=0.05)
    try:
        libvirt_calls.clear()
        deadline = time.monotonic() + 10
        while libvirt_calls["virConnect.getAllDomainStats"] < 3:
            assert time.monotonic() < deadline, "the loop stopped refreshing the live host"
            time.sleep(0.05)
        down = r.server.store.get("host", r.server.hosts.refs[1])
        assert r.server.store.get("host_metrics", down["metrics"])["live"] is False
    finally:
        stop_server(r)


# ---- GET /metrics -------------------------------------------------------------------------------

def test_metrics_parse_and_carry_server_host_and_vm_figures(quiet):
    x, vm, uuid = guest_of(quiet, "Running")
    label = x.VM.get_name_label(vm)
    with pytest.raises(XenAPI.Failure):
        x.VM.get_record("OpaqueRef:nonsense")
    sampler, host = sampler_of(quiet)
    sampler.write(host, qemu_sample(0, {uuid: {}}))
    sampler.write(host, qemu_sample(2, {uuid: {"vcpu.0.time": 2680000000}}))
    status, headers, text = scrape(quiet)
    assert status == 200 and headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    found = samples(text)
    calls = value(found, "xenapi_calls_total")
    assert calls >= 4 and value(found, "xenapi_call_errors_total", code="HANDLE_INVALID") == 1
    assert value(found, "xenapi_sessions") == 1
    buckets = [s.value for s in found["xenapi_call_duration_seconds_bucket"]]
    assert buckets == sorted(buckets) and buckets[-1] == value(found, "xenapi_call_duration_seconds_count") == calls
    assert 0 < value(found, "xenapi_call_duration_seconds_sum")
    host_uuid = x.host.get_uuid(host)
    assert value(found, "xenapi_host_live", uuid=host_uuid) == 1
    assert value(found, "xenapi_host_memory_total_bytes", uuid=host_uuid) == 8 * GiB
    assert value(found, "xenapi_host_memory_free_bytes", uuid=host_uuid) == quiet.server.hosts.free_memory(host)
    vm_labels = {"uuid": uuid, "name_label": label}
    assert value(found, "xenapi_vm_power_state", power_state="Running", **vm_labels) == 1
    assert value(found, "xenapi_vm_power_state", power_state="Halted", **vm_labels) == 0
    assert value(found, "xenapi_vm_memory_actual_bytes", **vm_labels) == 256 * MiB
    assert value(found, "xenapi_vm_vcpus", **vm_labels) == 1
    assert value(found, "xenapi_vm_vcpu_utilisation", vcpu="0", **vm_labels) == 0.25
    assert value(found, "xenapi_vm_disk_read_bytes_total", **vm_labels) == 512
    assert value(found, "xenapi_vm_net_rx_bytes_total", **vm_labels) == 90
    assert "xenapi_vm_memory_free_bytes" not in found          # the record has no balloon.unused


def test_label_values_are_escaped_and_read_back_intact(quiet):
    x, vm, uuid = guest_of(quiet, "Halted")
    x.VM.set_name_label(vm, 'say "hi"\\ then\nmore')
    awkward = x.VM.get_name_label(vm)                  # as the store keeps it (libvirt titles are one line)
    assert '"' in awkward and "\\" in awkward
    _, _, text = scrape(quiet)
    labels = [s.labels for s in samples(text)["xenapi_vm_power_state"] if s.labels["uuid"] == uuid]
    assert labels and all(label["name_label"] == awkward for label in labels)


def test_metrics_want_credentials_by_default(quiet):
    status, headers, text = scrape(quiet, user=None)
    assert status == 401 and headers["www-authenticate"].startswith("Basic ") and "xenapi_" not in text
    assert scrape(quiet, password="wrong")[0] == 401
    assert scrape(quiet, user=None, query="?session_id=OpaqueRef:not-a-session")[0] == 401


def test_basic_auth_logs_in_for_the_request_only(quiet):
    before = quiet.server.store.count("session")
    assert scrape(quiet)[0] == 200
    assert quiet.server.store.count("session") == before


def test_a_read_only_user_or_a_live_session_may_scrape(quiet):
    quiet.add_user("watcher", "read-only", "watch-pw")
    assert scrape(quiet, user="watcher", password="watch-pw")[0] == 200
    session = quiet.session("watcher", "watch-pw")
    assert scrape(quiet, user=None, query=f"?session_id={session._session}")[0] == 200
    session.xenapi.session.logout()
    assert scrape(quiet, user=None, query=f"?session_id={session._session}")[0] == 401


def test_public_metrics_need_no_credentials_and_only_get_is_served(tmp_path):
    r = start_server(tmp_path, metrics_interval=3600, metrics_public=True)
    try:
        status, _, text = scrape(r, user=None)
        assert status == 200 and "xenapi_calls_total" in samples(text)
        status, headers, _ = scrape(r, user=None, method="PUT")
        assert status == 405 and "GET" in headers["allow"]
    finally:
        stop_server(r)


def test_metrics_public_is_read_from_the_config_file(tmp_path):
    conf = tmp_path / "xenapi.conf"
    conf.write_text("[metrics]\ninterval = 2.5\npublic = yes\n")
    config = load(str(conf))
    assert (config.metrics_interval, config.metrics_public) == (2.5, True)
    assert load(None).metrics_public is False
