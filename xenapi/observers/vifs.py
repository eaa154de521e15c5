"""A domain's network interfaces -> its VIF records (part of the domain observer's observation).

Every ``<interface>`` of the persistent definition (and of the live one, for an interface
hot-plugged there alone) is a VIF, keyed by the VM and its device number (``interfaces``: the
``ua-vif<N>`` alias).  What libvirt says (network, MAC, device, attached) is overwritten at each
observation; MTU, QoS, locking and other_config are the store's, given by VIF.create (``expect``).
An interface on no network the server knows is no VIF until one turns up (``unresolved``).
"""
from __future__ import annotations

from xenapi.model.types import NULL_REF
from xenapi.state.store import add, delete, derived_ref, derived_uuid, mod


def vif_ref(vm_uuid: str, device) -> str:
    return derived_ref("VIF", f"{vm_uuid}/{device}")


def vif_ops(store, networks, vm: str, vm_uuid: str, host: str, configured: list[dict] | None,
            live: list[dict] | None) -> list:
    """Operations that make VM ``vm``'s VIFs those of its interfaces; ``live``: the running guest's
    (None when it is not running); ``configured`` None: the persistent definition was not read (a
    bulk listing), so VIFs the running guest lacks are kept as they were, detached."""
    found = {v["device"]: v for v in configured or ()}
    attached = {v["device"]: v for v in live or ()}
    for device, vif in attached.items():
        found.setdefault(device, vif)              # hot-plugged into the running guest only
    ops, wanted = [], set()
    for device, vif in found.items():
        network = networks.network_of(host, vif["wiring"], vif["source"])
        if network == NULL_REF:
            networks.unresolved.add((host, vm_uuid))
            continue
        ref = vif_ref(vm_uuid, device)
        wanted.add(ref)
        fields = {"VM": vm, "network": network, "device": str(device), "MAC": vif["mac"],
                  "currently_attached": device in attached}
        runtime = {"target": attached[device]["target"]} if device in attached and attached[device]["target"] else {}
        current = store.find("VIF", ref)
        if current is None:
            ops.append(add("VIF", ref, store.new_record("VIF", {
                "MTU": vif["mtu"] or 1500, "qos_algorithm_type": "ratelimit" if vif["kbps"] else "",
                "qos_algorithm_params": {"kbps": str(vif["kbps"])} if vif["kbps"] else {},
                **networks.expected_vif(ref), **fields, "runtime_properties": runtime,
                "uuid": derived_uuid("VIF", f"{vm_uuid}/{device}")})))
        else:
            changed = {k: v for k, v in fields.items() if current[k] != v}
            if current["runtime_properties"] != runtime:
                changed["runtime_properties"] = runtime
            if changed:
                ops.append(mod("VIF", ref, changed))
    vm_rec = store.find("VM", vm)
    for ref in (vm_rec["VIFs"] if vm_rec else ()):
        if ref in wanted:
            continue
        if configured is None:
            ops.append(mod("VIF", ref, {"currently_attached": False}))
        else:
            ops.append(delete("VIF", ref))
    return ops
