"""Edits of an existing domain XML that keep everything we do not model (devices, disks, ...).

``domxml.build`` writes a domain from a record; these change one thing in a domain that already
exists, so a clone or a PV_args change never drops a device someone added with virsh.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

from defusedxml.ElementTree import fromstring as parse_untrusted

from xenapi.backend import devices, domxml, interfaces

# Xen-API field -> (parent path, element) it lives in, for fields edited in place.
_OS_ELEMENTS = {"PV_kernel": "kernel", "PV_ramdisk": "initrd", "PV_args": "cmdline"}
_ACTIONS = {"actions_after_shutdown": ("on_poweroff", {"destroy": "destroy", "restart": "restart"}),
            "actions_after_reboot": ("on_reboot", {"destroy": "destroy", "restart": "restart"})}
_TOP_ELEMENTS = {"PV_bootloader": "bootloader", "PV_bootloader_args": "bootloader_args"}
EDITABLE = frozenset(_OS_ELEMENTS) | frozenset(_ACTIONS) | frozenset(_TOP_ELEMENTS) | set(domxml.XML_KEYS)


def _load(xml: str) -> ET.Element:
    ET.register_namespace(domxml.STAMP_PREFIX, domxml.STAMP_NAMESPACE)
    return parse_untrusted(xml)


def clone(xml: str, *, uuid: str, name: str, title: str, stamp: dict[str, str]) -> str:
    """The same machine under a new identity: uuid, name, title, fresh MACs, our stamp."""
    root = _load(xml)
    for tag, text in (("uuid", uuid), ("name", name)):
        element = root.find(tag)
        if element is None:
            element = ET.SubElement(root, tag)
        element.text = text
    title_el = root.find("title")
    if title_el is None:
        title_el = ET.Element("title")
        root.insert(2, title_el)
    title_el.text = domxml.one_line(title)
    for interface in root.findall("devices/interface"):
        mac = interface.find("mac")
        if mac is not None:
            interface.remove(mac)              # libvirt generates a new one on define
    for graphics in root.findall("devices/graphics"):
        if graphics.get("autoport") == "yes":
            graphics.attrib.pop("port", None)
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.SubElement(root, "metadata")
    for old in metadata.findall(f"{{{domxml.STAMP_NAMESPACE}}}{domxml.STAMP_ELEMENT}"):
        metadata.remove(old)
    metadata.append(domxml.stamp_element(stamp))
    return ET.tostring(root, encoding="unicode")


def writable_disks(xml: str) -> list[str]:
    """Sources of disks and filesystems a clone would share for writing; read-only ones and CDs
    are safe, and a container's root is the clone's own (xenapi/services/templates.py)."""
    root = _load(xml)
    return [d["path"] for d in devices.parse(root, skip_root_mount=root.findtext("os/type") == "exe")
            if d["kind"] == "disk" and d["path"] and d["device"] not in ("cdrom", "floppy") and not d["readonly"]]


def set_field(xml: str, field: str, value: str) -> str:
    """Set one editable Xen-API field in a domain's XML."""
    root = _load(xml)
    if field in _OS_ELEMENTS:
        _set_text(root.find("os"), _OS_ELEMENTS[field], value)
    elif field in _TOP_ELEMENTS:
        _set_text(root, _TOP_ELEMENTS[field], value)
    elif field == "HVM_boot_params":
        _set_boot_order(root, value)
    elif field == "platform":
        _set_platform(root, value)
    else:
        tag, table = _ACTIONS[field]
        element = root.find(tag)
        if element is None:
            element = ET.SubElement(root, tag)
        element.text = table[value]
    return ET.tostring(root, encoding="unicode")


def _set_text(parent: ET.Element, tag: str, value: str) -> None:
    """``<tag>value</tag>`` in ``parent``, or no such element when the value is empty."""
    element = parent.find(tag)
    if not value:
        if element is not None:
            parent.remove(element)
        return
    if element is None:
        element = ET.SubElement(parent, tag)
    element.text = value


def _set_platform(root: ET.Element, platform: dict) -> None:
    """The platform keys the XML holds, as ``domxml.build`` writes them: a feature flag this kind of
    guest has (acpi, apic, pae; hap, viridian on Xen) present when true, absent when false, and
    the machine type; keys not given are left as they are, every other key is the store's."""
    hypervisor = root.get("type", "")
    features = root.find("features")
    for flag, value in platform.items():
        if flag not in domxml.FEATURE_FLAGS or hypervisor not in domxml.FEATURE_FLAGS[flag]:
            continue
        if features is None:
            features = ET.Element("features")
            root.insert(list(root).index(root.find("os")) + 1 if root.find("os") is not None else len(root), features)
        for old in features.findall(flag):
            features.remove(old)
        if str(value).lower() in domxml.TRUE_WORDS:
            ET.SubElement(features, flag)
    os_type = root.find("os/type")
    if platform.get("machine") and os_type is not None and os_type.text == "hvm":
        os_type.set("machine", platform["machine"])


def _set_boot_order(root: ET.Element, params: dict) -> None:
    """``<os><boot dev=.../>`` from HVM_boot_params' order ("cdn": disk, CD, network), in place of
    the old ones; nothing else of ``<os>`` (firmware, loader, kernel) changes, and the other keys
    are the store's (domxml.XML_KEYS)."""
    os_el = root.find("os")
    for boot in os_el.findall("boot"):
        os_el.remove(boot)
    devices = [domxml.BOOT_DEVICES[c] for c in params.get("order", "").lower() if c in domxml.BOOT_DEVICES]
    after = max((i for i, e in enumerate(os_el) if e.tag in ("type", "loader", "nvram")), default=-1) + 1
    for n, dev in enumerate(dict.fromkeys(devices)):
        element = ET.Element("boot", dev=dev)
        element.tail = os_el[0].tail if len(os_el) else None
        os_el.insert(after + n, element)


# ---- disks (VBDs) -----------------------------------------------------------------------------

def _disk_at(root: ET.Element, slot: int) -> ET.Element | None:
    for element in root.iterfind("devices/disk"):
        if devices.slot_of(element) == slot:
            return element
    return None


def disk_slots(xml: str) -> set[int]:
    """The slots (userdevices) the domain's disks take."""
    return {s for e in _load(xml).iterfind("devices/disk") if (s := devices.slot_of(e)) is not None}


def disk_element(disk: dict, flavour: str) -> str:
    """One ``<disk>`` as text, as ``devices`` writes it for this kind of guest (for hot-plug)."""
    return devices.to_xml([disk], flavour)


def add_disk(xml: str, disk: dict, flavour: str) -> str:
    root = _load(xml)
    parent = root.find("devices")
    if parent is None:
        parent = ET.SubElement(root, "devices")
    scratch = ET.Element("devices")
    devices.add(scratch, [disk], flavour)
    parent.insert(len(parent.findall("disk")), scratch[0])     # after the other disks, as libvirt keeps them
    return ET.tostring(root, encoding="unicode")


def remove_disk(xml: str, slot: int) -> str:
    root = _load(xml)
    element = _disk_at(root, slot)
    if element is not None:
        root.find("devices").remove(element)
    return ET.tostring(root, encoding="unicode")


def live_disk(xml: str, slot: int) -> str:
    """The ``<disk>`` in ``slot`` of a definition, as text (to detach or update it)."""
    element = _disk_at(_load(xml), slot)
    return ET.tostring(element, encoding="unicode") if element is not None else ""


def set_source(xml: str, slot: int, source: dict | None) -> str:
    """The disk or CD drive in ``slot`` on volume ``source`` ({"pool", "volume"}), or empty (None:
    a CD drive's eject)."""
    root = _load(xml)
    element = _disk_at(root, slot)
    for old in element.findall("source"):
        element.remove(old)
    if source is None:
        element.set("type", "file")
    else:
        element.set("type", "volume")
        new = ET.Element("source", pool=source["pool"], volume=source["volume"])
        element.insert(1 if element.find("driver") is not None else 0, new)
        driver = element.find("driver")
        if source.get("format") and driver is not None:
            driver.set("type", source["format"])
    return ET.tostring(root, encoding="unicode")


def set_disk_mode(xml: str, slot: int, read_only: bool) -> str:
    root = _load(xml)
    element = _disk_at(root, slot)
    for old in element.findall("readonly"):
        element.remove(old)
    if read_only:
        ET.SubElement(element, "readonly")
    return ET.tostring(root, encoding="unicode")


def set_name(xml: str, name: str) -> str:
    """The domain under another libvirt name (a host where its name is taken by another domain)."""
    root = _load(xml)
    _set_text(root, "name", name)
    return ET.tostring(root, encoding="unicode")


def set_container_root(xml: str, path: str) -> str:
    """An LXC container's root (the directory mounted at "/") moved to ``path``."""
    root = _load(xml)
    for fs in root.iterfind("devices/filesystem"):
        target, source = fs.find("target"), fs.find("source")
        if target is not None and target.get("dir") == "/" and source is not None and source.get("dir"):
            source.set("dir", path)
    return ET.tostring(root, encoding="unicode")



# ---- network interfaces (VIFs) ------------------------------------------------------------------

def _edited(xml: str, edit) -> str:
    root = _load(xml)
    edit(root)
    return ET.tostring(root, encoding="unicode")


def interface_devices(xml: str) -> set[int]:
    """The VIF device numbers the domain's interfaces take."""
    return interfaces.devices_taken(_load(xml))


def interface_element(vif: dict, flavour: str) -> str:
    """One ``<interface>`` as text, as a guest of ``flavour`` gets it (to attach it)."""
    return ET.tostring(interfaces.element(vif, flavour), encoding="unicode")


def add_interface(xml: str, vif: dict, flavour: str) -> str:
    return _edited(xml, lambda root: interfaces.add(root, vif, flavour))


def remove_interface(xml: str, device: int) -> str:
    return _edited(xml, lambda root: interfaces.remove(root, device))


def interface_text(xml: str, device: int) -> str:
    """The ``<interface>`` of VIF ``device`` as text, "" if the domain has none."""
    return interfaces.text_of(_load(xml), device)


def change_interface(xml: str, device: int, **changes) -> str:
    return _edited(xml, lambda root: interfaces.change(root, device, **changes))
