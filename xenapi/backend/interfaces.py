"""A VM's network interfaces (VIFs) <-> libvirt ``<interface>`` elements.

A VIF is described neutrally: ``{"device": 0, "mac": "..", "wiring": "network"|"bridge"|"direct",
"source": <libvirt network name | host bridge | host NIC>, "mtu": 0, "kbps": 0, "filter": ""}``.

- ``device`` is xapi's VIF.device, kept in the element's user alias ``ua-vif<N>`` (libvirt keeps
  aliases with the ``ua-`` prefix in the persistent definition).  An interface someone added with
  virsh has no alias: it takes the lowest number free, in document order.
- ``wiring`` "direct" puts the guest straight on a host NIC (macvtap, bridge mode): how a network
  riding a physical interface without a bridge is joined.
- ``kbps`` is the guest's sending rate in kilobits per second (xapi's ratelimit), written as
  libvirt's ``<bandwidth><outbound average>`` in kilobytes per second; tc enforces it on the host.
- ``filter`` is the nwfilter the interface references (security groups), "" for none.
- ``target`` (parsed only) is the host-side device of a running guest (vnet0).

The model per kind of guest comes from ``devices`` (virtio for KVM, netfront for Xen PV, none
for Xen HVM (libxl's emulated NIC and its PV twin), veth for LXC).
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from xenapi.backend import devices

ALIAS_PREFIX = "ua-vif"
_ALIAS = re.compile(rf"^{ALIAS_PREFIX}(\d+)$")
WIRINGS = ("network", "bridge", "direct")


def element(vif: dict, flavour: str) -> ET.Element:
    """The ``<interface>`` for ``vif`` in a guest of ``flavour`` (devices' flavour names)."""
    wiring = vif["wiring"]
    if wiring not in WIRINGS:
        raise devices.DeviceError(f"a VIF is wired to a network, a bridge or a host NIC, not {wiring!r}")
    el = ET.Element("interface", type=wiring)
    ET.SubElement(el, "mac", address=vif["mac"].lower())
    source = {"network": {"network": vif["source"]}, "bridge": {"bridge": vif["source"]},
              "direct": {"dev": vif["source"], "mode": "bridge"}}[wiring]
    ET.SubElement(el, "source", source)
    if vif.get("kbps"):
        bandwidth = ET.SubElement(el, "bandwidth")
        ET.SubElement(bandwidth, "outbound", average=str(max(1, int(vif["kbps"]) // 8)))
    model = devices.nic_model(flavour)
    if model:
        ET.SubElement(el, "model", type=model)
    if vif.get("filter"):
        ET.SubElement(el, "filterref", filter=vif["filter"])
    if vif.get("mtu"):
        ET.SubElement(el, "mtu", size=str(int(vif["mtu"])))
    ET.SubElement(el, "alias", name=f"{ALIAS_PREFIX}{int(vif['device'])}")
    return el


def parse(el: ET.Element) -> dict:
    """One ``<interface>`` in the neutral form (``device`` None when it has no alias of ours)."""
    mac, source, target = el.find("mac"), el.find("source"), el.find("target")
    alias = el.find("alias")
    match = _ALIAS.match(alias.get("name", "")) if alias is not None else None
    wiring = el.get("type", "")
    src = ""
    if source is not None:
        src = source.get({"network": "network", "bridge": "bridge", "direct": "dev"}.get(wiring, "network"), "")
    outbound = el.find("bandwidth/outbound")
    mtu = el.find("mtu")
    filterref = el.find("filterref")
    return {
        "device": int(match.group(1)) if match else None,
        "mac": (mac.get("address", "") if mac is not None else "").lower(),
        "wiring": wiring, "source": src,
        "mtu": int(mtu.get("size", "0")) if mtu is not None and mtu.get("size", "").isdigit() else 0,
        "kbps": int(outbound.get("average", "0")) * 8 if outbound is not None and outbound.get("average", "").isdigit() else 0,
        "filter": filterref.get("filter", "") if filterref is not None else "",
        "target": target.get("dev", "") if target is not None else "",
    }


def parse_all(root: ET.Element) -> list[dict]:
    """Every interface of a parsed ``<domain>``, each with a device number: its alias's, or for
    one without, the lowest number free, in document order."""
    vifs = [parse(el) for el in root.iterfind("devices/interface")]
    taken = {v["device"] for v in vifs if v["device"] is not None}
    free = (n for n in range(10_000) if n not in taken)
    for vif in vifs:
        if vif["device"] is None:
            vif["device"] = next(free)
    return vifs


def _at(root: ET.Element, device: int) -> ET.Element | None:
    elements = list(root.iterfind("devices/interface"))
    numbered = parse_all(root)
    for el, vif in zip(elements, numbered):
        if vif["device"] == device:
            return el
    return None


def devices_taken(root: ET.Element) -> set[int]:
    return {v["device"] for v in parse_all(root)}


def add(root: ET.Element, vif: dict, flavour: str) -> None:
    parent = root.find("devices")
    if parent is None:
        parent = ET.SubElement(root, "devices")
    parent.append(element(vif, flavour))


def remove(root: ET.Element, device: int) -> None:
    el = _at(root, device)
    if el is not None:
        root.find("devices").remove(el)


def text_of(root: ET.Element, device: int) -> str:
    """The interface of VIF ``device``, as text (to hot-plug, detach or update it); "" if none."""
    el = _at(root, device)
    return ET.tostring(el, encoding="unicode") if el is not None else ""


def change(root: ET.Element, device: int, **changes) -> bool:
    """Change the source (``wiring`` + ``source``), ``kbps``, ``mtu`` or ``filter`` of VIF
    ``device`` in place, keeping everything else libvirt wrote (its PCI address, target, model).
    False if the domain has no such interface."""
    el = _at(root, device)
    if el is None:
        return False
    if "source" in changes:
        wiring = changes["wiring"]
        el.set("type", wiring)
        for old in el.findall("source"):
            el.remove(old)
        attrs = {"network": {"network": changes["source"]}, "bridge": {"bridge": changes["source"]},
                 "direct": {"dev": changes["source"], "mode": "bridge"}}[wiring]
        el.insert(1, ET.Element("source", attrs))
    if "kbps" in changes:
        for old in el.findall("bandwidth"):
            el.remove(old)
        if changes["kbps"]:
            bandwidth = ET.SubElement(el, "bandwidth")
            ET.SubElement(bandwidth, "outbound", average=str(max(1, int(changes["kbps"]) // 8)))
    if "mtu" in changes:
        for old in el.findall("mtu"):
            el.remove(old)
        if changes["mtu"]:
            ET.SubElement(el, "mtu", size=str(int(changes["mtu"])))
    if "filter" in changes:
        for old in el.findall("filterref"):
            el.remove(old)
        if changes["filter"]:
            ET.SubElement(el, "filterref", filter=changes["filter"])
    return True
