"""The embedded default (libvirt's in-process test:///default) keeps what users do on it across a
restart of ``xenapi serve``, as a real libvirtd would: VMs created, edited, started, paused or
destroyed through the API come back as they were, after a clean stop and after a kill -9."""
from __future__ import annotations

import pytest

from tests.conftest import vm_create_args
from tests.serve_process import Serve

URI = "test:///default"


def _labelled(x) -> dict[str, dict]:
    return {rec["name_label"]: rec for rec in x.VM.get_all_records().values() if not rec["is_control_domain"]}


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_restart_of_the_embedded_default_keeps_what_users_did(tmp_path, how):
    first = Serve(tmp_path, URI)
    try:
        x = first.session().xenapi
        builtin = x.VM.get_by_name_label("test")[0]             # the driver's own domain, running at start
        x.VM.set_name_description(builtin, "edited before the restart")
        x.VM.hard_shutdown(builtin)
        made = x.VM.create(vm_create_args(name_label="made", name_description="made through the API"))
        x.VM.add_to_other_config(made, "team", "alice")
        x.VM.start(made, False, False)
        paused = x.VM.create(vm_create_args(name_label="paused"))
        x.VM.start(paused, False, False)
        x.VM.pause(paused)
        gone = x.VM.create(vm_create_args(name_label="gone"))
        x.VM.destroy(gone)
        before = _labelled(x)
    finally:
        first.kill() if how == "kill" else first.stop()

    again = Serve(tmp_path, URI)                                # a fresh driver: it knows only "test"
    try:
        x = again.session().xenapi
        after = _labelled(x)
        assert set(after) == {"test", "made", "paused"}
        assert after["test"]["name_description"] == "edited before the restart"
        assert after["test"]["power_state"] == "Halted"
        assert after["made"]["name_description"] == "made through the API"
        assert after["made"]["other_config"] == {"owner": "tests", "team": "alice"}
        assert (after["made"]["power_state"], after["paused"]["power_state"]) == ("Running", "Paused")
        for label in ("test", "made", "paused"):                # the same objects: refs and uuids kept
            assert after[label]["uuid"] == before[label]["uuid"]
        assert x.VM.get_by_uuid(after["made"]["uuid"]) == made
        host = x.host.get_all()[0]
        assert set(x.host.get_resident_VMs(host)) >= {made, paused}
        assert x.host.get_other_config(host)["libvirt_sync"] == "synced"
    finally:
        again.stop()

    third = Serve(tmp_path, URI)                                # and again: nothing drifts
    try:
        x = third.session().xenapi
        assert set(_labelled(x)) == {"test", "made", "paused"}
        x.VM.destroy(x.VM.get_by_name_label("test")[0])          # the built-in domain stays gone too
    finally:
        third.stop()
    fourth = Serve(tmp_path, URI)
    try:
        assert set(_labelled(fourth.session().xenapi)) == {"made", "paused"}
    finally:
        fourth.stop()


def test_the_embedded_defaults_memory_is_coherent_and_its_stock_vm_qualifies(tmp_path):
    """libvirt's test driver says 3 GiB (getInfo), 6 GiB (its NUMA cells) and about 3 MiB free;
    the server shows the cells' total, a nominal OS for the control domain, and free memory as the
    total less that and what the running guests are given, so placement behaves as on a real host."""
    from xenapi.services.placement import SIMULATED_OS_MEMORY
    serve = Serve(tmp_path, URI)
    try:
        x = serve.session().xenapi
        host = x.host.get_all()[0]
        builtin = x.VM.get_by_name_label("test")[0]
        total = int(x.host_metrics.get_memory_total(x.host.get_metrics(host)))
        given = int(x.VM.get_memory_dynamic_max(builtin))
        assert total == 6 << 30 and x.VM.get_power_state(builtin) == "Running"
        dom0 = x.host.get_control_domain(host)
        assert int(x.VM.get_memory_static_max(dom0)) == SIMULATED_OS_MEMORY
        assert int(x.host.compute_free_memory(host)) == total - SIMULATED_OS_MEMORY - given
        x.VM.hard_shutdown(builtin)
        assert int(x.host.compute_free_memory(host)) == total - SIMULATED_OS_MEMORY
        assert x.host.qualify(builtin, host) is True and x.VM.get_possible_hosts(builtin) == [host]
        x.VM.start(builtin, False, False)
        assert x.VM.get_resident_on(builtin) == host
    finally:
        serve.stop()
