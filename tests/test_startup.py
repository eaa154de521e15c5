"""Start-up of a pool: hosts are connected and listed side by side, the server answers before a big
or frozen host is listed, a host says how far its listing is (other_config:libvirt_sync), its VMs
arrive as events, and a relist never lets an older read of a domain overwrite a newer one.
"""
from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import node_xml, start_server, stop_server, wait_for_event
from xenapi.state.store import derived_ref

SYNC = "libvirt_sync"


def _node(tmp_path: Path, name: str, domains: int, running: int) -> str:
    path = tmp_path / f"{name}.xml"
    path.write_text(node_xml(domains, running))
    return f"test://{path}"


def _sync_states(x) -> dict[str, str]:
    return {ref: rec["other_config"].get(SYNC) for ref, rec in x.host.get_all_records().items()}


def test_a_frozen_host_holds_up_neither_the_answers_nor_the_other_hosts(tmp_path, libvirtd):
    libvirtd.start()
    big = _node(tmp_path, "big", 1500, 700)
    with libvirtd.frozen():
        started = time.monotonic()
        running = start_server(tmp_path, uris=[libvirtd.uri, big], libvirt_sync_wait=0, libvirt_open_timeout=30)
        try:
            assert time.monotonic() - started < 10            # not the 30 s the frozen host may take
            session = running.session()
            x = session.xenapi
            frozen, listed = running.server.hosts.ref_of(libvirtd.uri), running.server.hosts.ref_of(big)
            assert _sync_states(x)[frozen] == "connecting"
            token = x.event_from(["host"], "", 0.0)["token"]
            if _sync_states(x)[listed] != "synced":
                wait_for_event(session, ["host"], token, lambda e: e["ref"] == listed and
                               e["snapshot"]["other_config"].get(SYNC) == "synced", timeout=60)
            assert _sync_states(x)[frozen] == "connecting"
            resident = set(x.host.get_resident_VMs(listed))
            records = x.VM.get_all_records()
            on_big = {ref for ref, rec in records.items() if running.server.reconciler.homes.get(ref) == listed}
            assert len(on_big) == 1500
            running_there = {ref for ref in on_big if records[ref]["power_state"] == "Running"}
            assert len(running_there) == 700
            assert resident == running_there | {x.host.get_control_domain(listed)}
            token = x.event_from(["host"], "", 0.0)["token"]
        except BaseException:
            stop_server(running)
            raise
    try:                                                      # thawed: it connects and is listed by itself
        wait_for_event(session, ["host"], token, lambda e: e["ref"] == frozen and
                       e["snapshot"]["other_config"].get(SYNC) == "synced", timeout=60)
        assert "test" in {rec["name_label"] for rec in x.VM.get_all_records().values()}
    finally:
        stop_server(running)


def test_the_vms_of_hosts_being_listed_arrive_as_events(tmp_path):
    uris = [_node(tmp_path, f"host{n}", 800, 300) for n in range(3)]
    running = start_server(tmp_path, uris=uris, libvirt_sync_wait=0)
    try:
        session = running.session()
        x = session.xenapi
        seen: dict[str, str] = {}                              # VM ref -> last operation
        sync_seen: dict[str, list[str]] = {}
        token, deadline = "", time.monotonic() + 120
        while time.monotonic() < deadline:
            batch = x.event_from(["vm", "host"], token, 1.0)
            token = batch["token"]
            for event in batch["events"]:
                if event["class"] == "vm":
                    seen[event["ref"]] = event["operation"]
                else:
                    sync_seen.setdefault(event["ref"], []).append(event["snapshot"]["other_config"].get(SYNC))
            if set(_sync_states(x).values()) == {"synced"} and not batch["events"]:
                break
        assert set(seen) == set(x.VM.get_all()) and len(seen) == 3 * 801
        assert all(op != "del" for op in seen.values())
        for host in running.server.hosts.refs:
            assert sync_seen[host][-1] == "synced"
    finally:
        stop_server(running)


def test_an_older_read_of_a_domain_never_overwrites_a_newer_one(tmp_path):
    running = start_server(tmp_path, domains=3, running=3)
    try:
        x = running.session().xenapi
        server = running.server
        host = server.hosts.master
        conn = server.hosts.connection(host)
        reconciler = server.reconciler
        uuid = next(s.uuid for s in conn.list_domains())
        vm = derived_ref("VM", uuid)
        old_read, old_state = next(reconciler._reads), conn.domain_state(uuid)   # a relist's read, slow to land
        x.VM.hard_shutdown(vm)                                 # a newer read lands first
        with reconciler._lock:
            reconciler._observe_batch(reconciler.domains, host, [old_state], old_read)
        assert x.VM.get_power_state(vm) == "Halted"
        assert vm not in x.host.get_resident_VMs(host)

        old_read, old_state = next(reconciler._reads), conn.domain_state(uuid)
        x.VM.destroy(vm)
        with reconciler._lock:                                 # nor brings a destroyed VM back
            reconciler._observe_batch(reconciler.domains, host, [old_state], old_read)
        assert vm not in x.VM.get_all()
    finally:
        stop_server(running)
