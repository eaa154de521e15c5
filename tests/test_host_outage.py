"""A host whose libvirtd is frozen (SIGSTOP: it accepts connections but answers nothing) never
holds the server: start-up goes on past ``[libvirt] open_timeout`` with the host not live, calls
to a host that freezes later fail within the keep-alive bound, and the host comes back by itself
once the daemon runs again.  The daemon is a private one (tests/private_libvirtd.py).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import XenAPI

from tests.conftest import start_server, stop_server, wait_for_event
from xenapi.backend.connection import KEEPALIVE_COUNT, KEEPALIVE_INTERVAL, OPEN_TIMEOUT as DEFAULT_OPEN_TIMEOUT
from xenapi.config import Config, load

OPEN_TIMEOUT = 1.0
KEEPALIVE = {"libvirt_keepalive_interval": 1, "libvirt_keepalive_count": 2}   # silence noticed within 3 s
SLACK = 5.0                     # scheduling on a busy machine; the point is "bounded", not "fast"


def _host_of(running, uri: str) -> tuple[str, str]:
    host = running.server.hosts.ref_of(uri)
    return host, running.server.store.get("host", host)["metrics"]


def _wait_live(session, metrics: str, token: str, live: bool) -> None:
    wait_for_event(session, ["host_metrics"], token, lambda e: e["ref"] == metrics and e["snapshot"]["live"] is live,
                   timeout=30)


def test_start_up_against_a_frozen_libvirtd_goes_on_and_the_host_joins_when_it_thaws(tmp_path, libvirtd):
    libvirtd.start()
    with libvirtd.frozen():
        started = time.monotonic()
        running = start_server(tmp_path, uris=[libvirtd.uri], libvirt_open_timeout=OPEN_TIMEOUT)
        try:
            assert time.monotonic() - started < OPEN_TIMEOUT + SLACK
            session = running.session()
            x = session.xenapi
            host, metrics = _host_of(running, libvirtd.uri)
            assert x.host_metrics.get_live(metrics) is False
            assert [r["is_control_domain"] for r in x.VM.get_all_records().values()] == [True]   # reads answer
            assert x.host.get_record(host)["metrics"] == metrics
            token = x.event_from(["vm"], "", 0.0)["token"]
        except BaseException:
            stop_server(running)
            raise
    try:
        added = wait_for_event(session, ["vm"], token, lambda e: e["operation"] == "add", timeout=30)
        assert x.host_metrics.get_live(metrics) is True
        assert (added["snapshot"]["name_label"], added["snapshot"]["power_state"]) == ("test", "Running")
        assert added["snapshot"]["resident_on"] == host
    finally:
        stop_server(running)


def test_calls_to_a_libvirtd_that_freezes_fail_within_the_keepalive_bound(tmp_path, libvirtd):
    libvirtd.start()
    running = start_server(tmp_path, uris=[libvirtd.uri], libvirt_open_timeout=OPEN_TIMEOUT, **KEEPALIVE)
    try:
        session = running.session()
        x = session.xenapi
        _, metrics = _host_of(running, libvirtd.uri)
        vm = next(ref for ref, rec in x.VM.get_all_records().items() if rec["name_label"] == "test")
        token = x.event_from(["host_metrics"], "", 0.0)["token"]
        with libvirtd.frozen():
            started = time.monotonic()
            with pytest.raises(XenAPI.Failure) as failure:
                x.VM.pause(vm)                     # reaches libvirtd, which does not answer
            assert failure.value.details[0] in ("HOST_NOT_LIVE", "HOST_OFFLINE")
            assert time.monotonic() - started < 1 * (2 + 1) + SLACK
            _wait_live(session, metrics, token, False)
            token = x.event_from(["host_metrics"], "", 0.0)["token"]
            assert x.VM.get_power_state(vm) == "Running"          # reads are the store's
        _wait_live(session, metrics, token, True)
        x.VM.pause(vm)                             # and the host serves calls again
        assert x.VM.get_power_state(vm) == "Paused"
    finally:
        stop_server(running)


def test_the_shipped_config_states_the_backends_defaults():
    shipped = load(str(Path(__file__).parents[1] / "xenapi.conf"))
    for config in (shipped, Config()):
        assert (config.libvirt_open_timeout, config.libvirt_keepalive_interval, config.libvirt_keepalive_count) == (
            DEFAULT_OPEN_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
