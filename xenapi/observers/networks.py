"""libvirt networks -> network and PIF records.

A libvirt network on a host is a PIF (that host's place on the network: its bridge); the network
is the libvirt network's uuid, shared by every host that defines a network with it, as an SR is
its pools'.  A network first seen here (one someone defined with virsh) is named after it and
marked ``discovered``: it goes with its last PIF unless VIFs still name it.  A network the API
made stays without PIFs (a libvirt network undefined behind the server's back): its VIFs keep
it, and starting a VM there says which host lacks it.
"""
from __future__ import annotations

from dataclasses import dataclass

from xenapi.backend.libvirt_errors import ERR_NO_NETWORK
from xenapi.backend.network_operations import NetworkState
from xenapi.observers import Observer, read_or_none
from xenapi.state.store import add, delete, derived_ref, derived_uuid, mod
from xenapi.wire.values import DateTime

DISCOVERED = "discovered"        # network.other_config key of a network nobody made through the API


@dataclass(frozen=True)
class HostNetwork:
    host: str
    net: NetworkState

    @property
    def key(self) -> str:
        return f"{self.host}/{self.net.uuid}"


def network_ref(uuid: str) -> str:
    return derived_ref("network", uuid)


def pif_fields(host: str, network: str, *, device: str, mac: str, mtu: int, vlan: int, physical: bool,
               attached: bool, ipv4: str, gateway: str = "", management: bool = False) -> dict:
    """A PIF's observed fields, for either kind (a libvirt network, a host interface)."""
    address, _, prefix = ipv4.partition("/")
    netmask = ""
    if prefix:
        bits = (0xFFFFFFFF << (32 - int(prefix))) & 0xFFFFFFFF
        netmask = ".".join(str((bits >> s) & 255) for s in (24, 16, 8, 0))
    return {"host": host, "network": network, "device": device, "MAC": mac, "MTU": mtu or 1500, "VLAN": vlan,
            "physical": physical, "currently_attached": attached, "management": management,
            "ip_configuration_mode": "Static" if address else "None", "IP": address, "netmask": netmask,
            "gateway": gateway}


def pif_ops(store, ref: str, key: str, fields: dict, metrics: dict, other_config: dict | None = None) -> list:
    """Add or update a PIF and its PIF_metrics (only what changed, so a quiet relist makes no event)."""
    metrics_ref = derived_ref("PIF_metrics", key)
    ops = []
    current = store.find("PIF", ref)
    if current is None:
        ops.append(add("PIF", ref, store.new_record("PIF", {
            **fields, "uuid": derived_uuid("PIF", key), "metrics": metrics_ref, "other_config": other_config or {}})))
    elif changed := {k: v for k, v in fields.items() if current[k] != v}:
        ops.append(mod("PIF", ref, changed))
    existing = store.find("PIF_metrics", metrics_ref)
    if existing is None:
        ops.append(add("PIF_metrics", metrics_ref, store.new_record("PIF_metrics", {
            **metrics, "uuid": derived_uuid("PIF_metrics", key), "last_updated": DateTime.now()})))
    elif changed := {k: v for k, v in metrics.items() if existing[k] != v}:
        ops.append(mod("PIF_metrics", metrics_ref, {**changed, "last_updated": DateTime.now()}))
    return ops


def pif_gone(store, ref: str) -> list:
    """Delete a PIF, its metrics, and its network if that was discovered and nothing else holds it."""
    rec = store.get("PIF", ref)
    ops = [delete("PIF", ref), delete("PIF_metrics", rec["metrics"])]
    net = store.find("network", rec["network"])
    if net is not None and net["PIFs"] == [ref] and not net["VIFs"] and net["other_config"].get(DISCOVERED) == "true":
        ops.append(delete("network", rec["network"]))
    return ops


class NetworkObserver(Observer):
    kind, cls = "network", "PIF"

    def __init__(self, store, networks):
        super().__init__(store)
        self.networks = networks
        self.names: dict[tuple[str, str], str] = {}      # (host, libvirt network name) -> network ref

    def list(self, host, conn):
        return [HostNetwork(host, n) for n in conn.list_networks()]

    def read(self, host, conn, key):
        uuid = key.split("/", 1)[1]
        state = read_or_none(lambda: conn.network_state(uuid), ERR_NO_NETWORK)
        return HostNetwork(host, state) if state is not None else None

    def key_of(self, state) -> str:
        return state.key

    def event_key(self, host: str, key: str) -> str:
        return f"{host}/{key}"        # an event names the network by its uuid

    def ref(self, key: str) -> str:
        return derived_ref("PIF", key)

    def key_in_store(self, ref):
        rec = self.store.find("PIF", ref)
        net = self.store.find("network", rec["network"]) if rec is not None else None
        if net is None:
            return None
        key = f"{rec['host']}/{net['uuid']}"
        return key if self.ref(key) == ref else None      # a host interface's PIF is not ours

    def loaded(self):
        return [ref for ref in self.store.refs("PIF") if self.key_in_store(ref) is not None]

    def observe(self, host, state):
        net = state.net
        network = network_ref(net.uuid)
        ops = []
        if not self.store.exists("network", network):
            ops.append(add("network", network, self.store.new_record("network", {
                "uuid": net.uuid, "name_label": net.name, "bridge": net.bridge, "managed": net.forward != "bridge",
                "MTU": net.mtu or 1500, "other_config": {DISCOVERED: "true", "libvirt_network": net.name}})))
        self.names[(host, net.name)] = network
        ops += pif_ops(self.store, self.ref(state.key), state.key,
                       pif_fields(host, network, device=net.bridge, mac=net.mac, mtu=net.mtu, vlan=net.vlan,
                                  physical=False, attached=net.active, ipv4=net.ipv4),
                       {"carrier": net.active, "speed": 0, "duplex": False, "device_name": f"libvirt network {net.name}"})
        return ops

    def gone(self, ref):
        return pif_gone(self.store, ref)

    def after_apply(self, host, states) -> None:
        self.networks.networks_seen(host, [s.net for s in states])

    def after_gone(self, host, key) -> None:
        if key is not None:
            where, uuid = key.split("/", 1)
            gone = network_ref(uuid)
            self.names = {k: v for k, v in self.names.items() if not (k[0] == where and v == gone)}
