"""GET /metrics: host, VM and server figures in Prometheus' text format (version 0.0.4).

A scrape reads the store (what the metrics sampler last wrote) and the server's own counters; it
never calls libvirt, so it costs the same however slow a host is.  prometheus_client formats and
escapes the text (and its parser reads it back in the tests).

Access (``[metrics] public``): false, the default, asks for a live session as
``?session_id=OpaqueRef:...`` or HTTP basic auth of a local user, whose password is checked
through the login throttle and log like any other (no session is made for a scrape).
Any role will do: read-only is the lowest, and it may read every figure through the API anyway.
true serves anyone who reaches the port, for a scraper on a trusted management network.
"""
from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from xenapi.context import Identity
from xenapi.errors import XenAPIError
from xenapi.metrics import BUCKETS_MS, Metrics
from xenapi.services.sampler import LIVE_KEYS
from xenapi.transport.http import Request, Response

if TYPE_CHECKING:
    from xenapi.state.sessions import Sessions
    from xenapi.state.store import Store

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
POWER_STATES = ("Halted", "Paused", "Running", "Suspended")
_LABELS = ["uuid", "name_label"]
_CHALLENGE = [("WWW-Authenticate", 'Basic realm="xenapi", charset="UTF-8"')]
# VM_metrics.other_config keys the sampler keeps -> (metric, help); counters get "_total" added.
_VM_COUNTERS = {
    "disk_read_bytes": ("xenapi_vm_disk_read_bytes", "Bytes the VM read from its disks."),
    "disk_write_bytes": ("xenapi_vm_disk_write_bytes", "Bytes the VM wrote to its disks."),
    "net_rx_bytes": ("xenapi_vm_net_rx_bytes", "Bytes the VM received on its NICs."),
    "net_tx_bytes": ("xenapi_vm_net_tx_bytes", "Bytes the VM sent on its NICs."),
}
assert set(_VM_COUNTERS) | {"memory_free"} == set(LIVE_KEYS)


@dataclass(frozen=True)
class Exporter:
    """GET /metrics: ``store`` and ``metrics`` are what a scrape reads, ``sessions`` what lets a
    scraper in unless ``public`` ([metrics] public)."""
    store: Store
    metrics: Metrics
    sessions: Sessions
    public: bool = False

    def serve(self, request: Request, identity: Identity) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, "text/plain", b"GET only\n", [("Allow", "GET, HEAD")])
        if not self.public and not _authorised(self.sessions, request, identity):
            log.info("event=metrics-denied via=%s addr=%s", identity.via, identity.address or "-")
            return Response(401, "text/plain", b"authentication required\n", _CHALLENGE)
        return Response(200, CONTENT_TYPE, generate_latest(Collector(self.store, self.metrics)))


def _authorised(sessions: Sessions, request: Request, identity: Identity) -> bool:
    """A live session, or a user's credentials, checked through the login throttle and log as
    any password is (no session is made: the scrape needs none)."""
    session_ids = parse_qs(request.query).get("session_id")
    credentials = _basic_credentials(request.headers.get("authorization", ""))
    try:
        if session_ids:
            sessions.check(session_ids[0])
        elif credentials:
            sessions.authenticate(*credentials, identity)
        else:
            return False
    except XenAPIError:
        return False
    return True


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, colon, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (name, password) if colon else None


class Collector:
    """prometheus_client's collector protocol over the store: one consistent read per scrape."""

    def __init__(self, store: Store, metrics: Metrics):
        self.store = store
        self.metrics = metrics

    def collect(self):
        yield from self._server_families()
        yield from self._host_families()
        yield from self._vm_families()

    def _server_families(self):
        snap = self.metrics.snapshot()
        calls = CounterMetricFamily("xenapi_calls", "Xen-API calls served.")
        calls.add_metric([], snap.calls)
        errors = CounterMetricFamily("xenapi_call_errors", "Calls that failed, by Xen-API error code.", labels=["code"])
        for code, count in sorted(snap.errors.items()):
            errors.add_metric([code], count)
        sessions = GaugeMetricFamily("xenapi_sessions", "Sessions logged in.", value=self.store.count("session"))
        cumulative, buckets = 0, []
        for bound, count in zip([*map(str, (ms / 1000 for ms in BUCKETS_MS)), "+Inf"], snap.latency):
            cumulative += count
            buckets.append((bound, cumulative))
        latency = HistogramMetricFamily("xenapi_call_duration_seconds", "Time to serve a call.",
                                        buckets=buckets, sum_value=snap.latency_sum_ms / 1000)
        return [calls, errors, sessions, latency]

    def _host_families(self):
        live = _gauge("xenapi_host_live", "1 while the host's libvirt connection is up.")
        total = _gauge("xenapi_host_memory_total_bytes", "The host's memory.")
        free = _gauge("xenapi_host_memory_free_bytes", "The host's free memory.")
        cpu = _gauge("xenapi_host_cpu_utilisation", "Busy share of a host CPU (0..1).", ["cpu"])
        for host in self.store.records("host").values():
            labels = [host["uuid"], host["name_label"]]
            metrics = self.store.find("host_metrics", host["metrics"])
            if metrics is not None:
                live.add_metric(labels, int(metrics["live"]))
                total.add_metric(labels, metrics["memory_total"])
                free.add_metric(labels, metrics["memory_free"])
            for ref in host["host_CPUs"]:
                if (record := self.store.find("host_cpu", ref)) is not None:
                    cpu.add_metric([*labels, str(record["number"])], record["utilisation"])
        return [live, total, free, cpu]

    def _vm_families(self):
        power = _gauge("xenapi_vm_power_state", "1 for the VM's power state, 0 for the others.", ["power_state"])
        memory = _gauge("xenapi_vm_memory_actual_bytes", "Memory the VM has now (its balloon's size).")
        vcpus = _gauge("xenapi_vm_vcpus", "vCPUs the VM runs with.")
        utilisation = _gauge("xenapi_vm_vcpu_utilisation", "Busy share of a vCPU (0..1).", ["vcpu"])
        free = _gauge("xenapi_vm_memory_free_bytes", "Memory the guest leaves unused (where its balloon driver says).")
        counters = {key: CounterMetricFamily(name, doc, labels=_LABELS) for key, (name, doc) in _VM_COUNTERS.items()}
        for vm in self.store.records("VM").values():
            if vm["is_a_template"]:
                continue
            labels = [vm["uuid"], vm["name_label"]]
            for state in POWER_STATES:
                power.add_metric([*labels, state], int(vm["power_state"] == state))
            metrics = self.store.find("VM_metrics", vm["metrics"])
            if metrics is None:
                continue
            memory.add_metric(labels, metrics["memory_actual"])
            vcpus.add_metric(labels, metrics["VCPUs_number"])
            for n, share in sorted(metrics["VCPUs_utilisation"].items()):
                utilisation.add_metric([*labels, str(n)], share)
            live = metrics["other_config"]       # writable by clients too: skip what is not a number
            for key, family in [("memory_free", free), *counters.items()]:
                if live.get(key, "").isdigit():
                    family.add_metric(labels, int(live[key]))
        return [power, memory, vcpus, utilisation, free, *counters.values()]


def _gauge(name: str, doc: str, extra_labels: list[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=[*_LABELS, *extra_labels])
