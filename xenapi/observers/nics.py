"""A host's network interfaces -> PIF records (physical or not), each on its own network.

Read through libvirt (``xenapi/backend/host_nics.py``: node devices, or the interfaces where a
driver lists none, as libvirt's test driver does).  Each interface is on the network "Pool-wide
network associated with <device>" (xapi's name), shared by the hosts that have an interface of
that name and unmanaged (guests join it through the interface: a bridge as it is, a NIC through
macvtap).  The management PIF is the interface that carries the host's address, else the first
physical one with a link (``host_nics.management_device``).  Interfaces are listed on connect
and at each resync; libvirt sends no event for them.

Bridges of libvirt networks and guests' tap devices are not host interfaces: the first are their
networks' PIFs (observers/networks.py), the second belong to VIFs.
"""
from __future__ import annotations

from dataclasses import dataclass

from xenapi.backend import host_nics
from xenapi.observers import Observer
from xenapi.observers.networks import DISCOVERED, pif_fields, pif_gone, pif_ops
from xenapi.state.store import add, derived_ref, derived_uuid

READ_ONLY_KEY, READ_ONLY_REASON_KEY = "read_only", "read_only_reason"


@dataclass(frozen=True)
class HostNic:
    host: str
    nic: host_nics.Nic
    management: bool
    writable: tuple[bool, str]

    @property
    def key(self) -> str:
        return nic_key(self.host, self.nic.device)


def nic_key(host: str, device: str) -> str:
    return f"{host}/nic/{device}"


def physical_network_ref(device: str) -> str:
    return derived_ref("network", f"nic/{device}")


class NicObserver(Observer):
    kind, cls = "nic", "PIF"

    def __init__(self, store, networks, network_observer):
        super().__init__(store)
        self.networks, self.network_observer = networks, network_observer

    def list(self, host, conn):
        bridges = {rec["device"] for ref in self.network_observer.homes_on(host)
                   if (rec := self.store.find("PIF", ref)) is not None}
        nics, writable = conn.read("host_nics", lambda c: (host_nics.read_nics(c, exclude=bridges),
                                                            host_nics.interfaces_writable(c)))
        address = self.store.get("host", host)["address"] if self.store.exists("host", host) else ""
        management = host_nics.management_device(nics, address)
        return [HostNic(host, n, n.device == management, writable) for n in nics]

    def read(self, host, conn, key):
        device = key.split("/nic/", 1)[1]
        return next((s for s in self.list(host, conn) if s.nic.device == device), None)

    def key_of(self, state) -> str:
        return state.key

    def ref(self, key: str) -> str:
        return derived_ref("PIF", key)

    def key_in_store(self, ref):
        rec = self.store.find("PIF", ref)
        if rec is None:
            return None
        key = nic_key(rec["host"], rec["device"])
        return key if self.ref(key) == ref else None

    def loaded(self):
        return [ref for ref in self.store.refs("PIF") if self.key_in_store(ref) is not None]

    def observe(self, host, state):
        nic = state.nic
        network = physical_network_ref(nic.device)
        ops = []
        if not self.store.exists("network", network):
            ops.append(add("network", network, self.store.new_record("network", {
                "uuid": derived_uuid("network", f"nic/{nic.device}"),
                "name_label": f"Pool-wide network associated with {nic.device}",
                "bridge": nic.device, "managed": False, "MTU": nic.mtu or 1500, "other_config": {DISCOVERED: "true"}})))
        ok, reason = state.writable
        other_config = {} if ok else {READ_ONLY_KEY: "true", READ_ONLY_REASON_KEY: reason}
        ops += pif_ops(self.store, self.ref(state.key), state.key,
                       pif_fields(host, network, device=nic.device, mac=nic.mac, mtu=nic.mtu, vlan=-1,
                                  physical=nic.physical, attached=nic.carrier,
                                  ipv4=nic.ipv4[0] if nic.ipv4 else "", management=state.management),
                       {"carrier": nic.carrier, "speed": nic.speed_mbit or 0, "duplex": bool(nic.speed_mbit),
                        "device_name": nic.kind},
                       other_config)
        return ops

    def gone(self, ref):
        return pif_gone(self.store, ref)

    def after_apply(self, host, states) -> None:
        self.networks.refresh_bandwidth()
