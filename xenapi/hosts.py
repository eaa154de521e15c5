"""Hosts: one libvirt connection each, the host objects the API shows for them, and their control
domains.  Host refs are derived from the URI, so they stay the same across restarts and are known
even while a host's libvirtd is down.
"""
from __future__ import annotations

import logging
import re
from urllib.parse import urlparse

from xenapi import errors as E
from xenapi import host_facts
from xenapi.backend import hostinfo, machine
from xenapi.backend.connection import HostConnection
from xenapi.backend.hostinfo import HostFacts
from xenapi.errors import XenAPIError
from xenapi.sampler import Sampler
from xenapi.store import add, derived_ref, derived_uuid, mod
from xenapi.wire.values import DateTime

log = logging.getLogger(__name__)

# libvirt's getType() -> the domain type new VMs get on that host (QEMU: decided by domain_type).
_VIRT_TYPE = {"Xen": "xen", "LXC": "lxc", "TEST": "test"}


class Hosts:
    def __init__(self, server, uris: list[str]):
        self.server = server
        self.store = server.store
        self.refs: list[str] = []
        self._by_uri: dict[str, str] = {}
        self._conns: dict[str, HostConnection] = {}
        self._facts: dict[str, HostFacts] = {}
        self.sampler = Sampler(self, server.config.metrics_interval)
        for uri in dict.fromkeys(map(_resolved, uris)):
            ref = derived_ref("host", uri)
            self.refs.append(ref)
            self._by_uri[uri] = ref
            self._conns[ref] = HostConnection(
                uri, self._domain_event, server.reconciler.on_liveness, open_timeout=server.config.libvirt_open_timeout,
                keepalive=(server.config.libvirt_keepalive_interval, server.config.libvirt_keepalive_count))

    @property
    def master(self) -> str:
        return self.refs[0]

    def ref_of(self, uri: str) -> str:
        return self._by_uri[uri]

    def connection(self, host: str) -> HostConnection:
        conn = self._conns.get(host)
        if conn is None:
            raise XenAPIError(E.HANDLE_INVALID, "host", host)
        if not conn.live:
            raise XenAPIError(E.HOST_OFFLINE, host)
        return conn

    def facts(self, host: str) -> HostFacts:
        return self._facts[host]

    def home_of(self, vm: str) -> str:
        host = self.server.reconciler.homes.get(vm)
        if host is None:
            raise XenAPIError(E.OPERATION_NOT_ALLOWED, f"VM {vm} is not defined on any connected host")
        return host

    def virt_type(self, host: str) -> str:
        facts = self._facts[host]
        if facts.hypervisor in _VIRT_TYPE:
            return _VIRT_TYPE[facts.hypervisor]
        wanted = self.server.config.domain_type
        if wanted != "auto":
            return wanted
        return "kvm" if "kvm" in facts.virt_types else "qemu"

    # -- start-up and liveness -------------------------------------------------------------
    def start(self) -> None:
        """Connect every host (a dead one keeps retrying in the background) and show it."""
        for ref, conn in self._conns.items():
            try:
                conn.open(keep_trying=True)
            except XenAPIError as e:
                log.warning("event=host-unreachable uri=%s error=%s", conn.uri, e.code)
            self._publish(ref)
            if conn.live:
                self.server.reconciler.relist(ref)
        if self.all_live():
            self.server.reconciler.drop_unclaimed()
        self.sampler.start()

    def stop(self) -> None:
        self.sampler.stop()
        for conn in self._conns.values():
            conn.close()

    def all_live(self) -> bool:
        return all(conn.live for conn in self._conns.values())

    def set_live(self, host: str, live: bool) -> None:
        if live:
            self._publish(host)
        elif self.store.exists("host", host):
            self.store.update("host_metrics", self.store.get("host", host)["metrics"],
                              {"live": False, "last_updated": DateTime.now()})
        log.info("event=host-%s host=%s", "up" if live else "down", host)

    def free_memory(self, host: str) -> int:
        """Bytes free on the host now: one getFreeMemory, nothing else re-read."""
        return self.connection(host).read("free_memory", hostinfo.free_memory)

    # -- the API's view of a host ----------------------------------------------------------
    def _publish(self, host: str) -> None:
        conn = self._conns[host]
        if conn.live:
            try:
                self._facts[host] = conn.host_facts()
            except XenAPIError as e:
                log.warning("event=host-facts-failed uri=%s error=%s", conn.uri, e.code)
        facts = self._facts.get(host)
        uri = conn.uri
        metrics = derived_ref("host_metrics", uri)
        control = derived_ref("VM", f"control/{uri}")
        cpus = [derived_ref("host_cpu", f"{uri}/{n}") for n in range(facts.cpu_count if facts else 0)]
        derived = self._host_fields(uri, facts, metrics, control, cpus)
        ops = [self._upsert("host", host, derived, derived_uuid("host", uri))]
        ops.append(self._upsert("host_metrics", metrics, {
            "memory_total": facts.memory_total if facts else 0, "memory_free": facts.memory_free if facts else 0,
            "live": conn.live, "last_updated": DateTime.now()}, derived_uuid("host_metrics", uri)))
        for n, ref in enumerate(cpus):
            ops.append(self._upsert("host_cpu", ref, host_facts.host_cpu(host, n, facts),
                                    derived_uuid("host_cpu", f"{uri}/{n}")))
        control_metrics = derived_ref("VM_metrics", f"control/{uri}")
        ops.append(self._upsert("VM_metrics", control_metrics, {
            "memory_actual": facts.memory_total if facts else 0, "VCPUs_number": facts.cpu_count if facts else 0,
            "last_updated": DateTime.now()}, derived_uuid("VM_metrics", f"control/{uri}")))
        ops.append(self._upsert("VM", control, {**self._control_domain(host, facts), "metrics": control_metrics},
                                derived_uuid("VM", f"control/{uri}")))
        self.store.apply(ops)

    def _upsert(self, cls: str, ref: str, fields: dict, uuid: str):
        if self.store.exists(cls, ref):
            return mod(cls, ref, fields)
        return add(cls, ref, self.store.new_record(cls, {**fields, "uuid": uuid}))

    def _host_fields(self, uri, facts: HostFacts | None, metrics, control, cpus) -> dict:
        fields = {"metrics": metrics, "control_domain": control, "host_CPUs": cpus,
                  "address": urlparse(uri).hostname or "127.0.0.1",
                  "API_version_vendor_implementation": {"libvirt_uri": uri}}
        if facts is None:
            return fields
        existing = self.store.find("host", derived_ref("host", uri))
        fields.update(
            hostname=facts.hostname,
            software_version=host_facts.software_version(uri, facts),
            capabilities=facts.capabilities,
            cpu_info=host_facts.cpu_info(facts),
            chipset_info=host_facts.chipset_info(facts),
            nic_speeds=host_facts.nic_speeds(facts),
            license_params={"sku_type": "free", "expiry": "never"},
            bios_strings={},
        )
        if existing is None or not existing["name_label"]:
            fields["name_label"] = facts.hostname
        return fields

    def _control_domain(self, host: str, facts: HostFacts | None) -> dict:
        memory = facts.memory_total if facts else 0
        return {
            "name_label": f"Control domain on host: {facts.hostname if facts else host}",
            "name_description": "The host's own operating system (libvirt's side of the host).",
            "is_control_domain": True, "power_state": "Running", "resident_on": host, "domid": 0,
            "memory_static_max": memory, "memory_dynamic_max": memory, "memory_dynamic_min": memory,
            "memory_static_min": memory, "VCPUs_max": facts.cpu_count if facts else 1,
            "VCPUs_at_startup": facts.cpu_count if facts else 1, "allowed_operations": [],
            "domain_type": "pv" if facts and facts.hypervisor == "Xen" else "unspecified",
        }

    def _domain_event(self, uri: str, uuid: str, kind: str) -> None:
        """libvirt's loop thread: the reconciler observes the domain; its figures follow soon after."""
        self.server.reconciler.on_domain_event(uri, uuid, kind)
        if kind.startswith("lifecycle:") or kind == "balloon":
            self.sampler.poke(self._by_uri[uri])


def _resolved(uri: str) -> str:
    resolved = machine.resolve_uri(uri)
    if resolved != uri:
        log.info("event=libvirt-uri-detected configured=%s uri=%s", uri, resolved)
    return resolved


def libvirt_name(label: str, uuid: str) -> str:
    """A machine-safe libvirt name from a label, unique by the uuid's first group."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.")[:40] or "vm"
    return f"{base}-{uuid[:8]}"
