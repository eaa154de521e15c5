"""Helpers for the metrics suites: a sample built from a real QEMU statistics record, readers of
VM_metrics, and GET /metrics read back with prometheus_client's own parser."""
from __future__ import annotations

import base64
import http.client
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_PASSWORD
from xenapi.backend import stats
from xenapi.backend.stats import HostSample

GiB = 1024 * 1024 * 1024

# One domain's getAllDomainStats record from QEMU 7.2 / libvirt 9.0 (the tiny guest with a virtio
# disk, a user-mode NIC, which has no counters, and a tap NIC), cut to the keys that matter.
QEMU_RECORD = {
    "state.state": 1, "state.reason": 1, "cpu.time": 2494476000, "cpu.user": 1824642000,
    "cpu.system": 669834000, "balloon.current": 262144, "balloon.maximum": 262144, "balloon.rss": 208832,
    "vcpu.current": 1, "vcpu.maximum": 1, "vcpu.0.state": 1, "vcpu.0.time": 2180000000, "vcpu.0.wait": 0,
    "net.count": 2, "net.1.name": "vnet0", "net.1.rx.bytes": 90, "net.1.rx.pkts": 1, "net.1.tx.bytes": 0,
    "net.1.tx.pkts": 0, "block.count": 1, "block.0.name": "vda", "block.0.path": "/tmp/disk.raw",
    "block.0.rd.reqs": 1, "block.0.rd.bytes": 512, "block.0.wr.reqs": 0, "block.0.wr.bytes": 0,
    "block.0.capacity": 4194304,
}


def qemu_sample(taken_s: float, domains: dict[str, dict]) -> HostSample:
    """A host sample taken ``taken_s`` seconds in, with QEMU_RECORD-based records per domain uuid."""
    figures = {uuid: stats.parse_domain(QEMU_RECORD | raw) for uuid, raw in domains.items()}
    return HostSample(int(taken_s * 1e9), figures, 3 * GiB, {})


def metrics_of(x, vm: str) -> dict:
    return x.VM_metrics.get_record(x.VM.get_metrics(vm))


def sampler_of(r):
    return r.server.hosts.sampler, r.server.hosts.master


def scrape(r, *, user: str | None = "root", password: str = ADMIN_PASSWORD, query: str = "", method="GET"):
    """GET /metrics; returns (status, headers, text)."""
    address = urlsplit(r.url)
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        conn.request(method, "/metrics" + query, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        conn.close()


def samples(text: str) -> dict[str, list]:
    """Every sample of the exposition by sample name (``x_total``, ``x_bucket``...)."""
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def value(found: dict, name: str, **labels) -> float:
    matches = [s.value for s in found.get(name, []) if labels.items() <= s.labels.items()]
    assert len(matches) == 1, f"{name}{labels}: {matches}"
    return matches[0]
