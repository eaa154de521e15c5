"""A guest's disks and NICs <-> libvirt ``<devices>`` elements, per hypervisor, from one table.

Callers describe devices neutrally (the later VBD/VIF/VDI classes map onto this), and the table
below decides how each kind of guest sees them:

* disk: ``{"kind": "disk", "path": "/images/a.qcow2", "type": "file"|"block", "format":
  "raw"|"qcow2", "device": "disk"|"cdrom", "readonly": False, "userdevice": 0}``.  Only ``path``
  is required (and may be "" for an empty CD drive); ``userdevice`` is xapi's VBD.userdevice, the
  slot that names the guest's device (0 -> vda/xvda/hda), by default the lowest free one.
  ``"type": "volume"`` with ``"pool"`` and ``"volume"`` (no path) names a libvirt storage volume,
  which libvirt resolves on the host when the guest starts: how a VBD names its VDI.
  LXC containers mount disks instead: ``"mount": "/srv"`` (required there), and ``"type": "dir"``
  is allowed (a host directory bind-mounted); they have no CD drives.
* nic: ``{"kind": "nic", "mac": "52:54:00:..", "network": "default"}`` or ``"bridge": "br0"``;
  neither: a bare tap (QEMU, Xen) or veth (LXC) with no host-side wiring (libvirt's
  ``type='ethernet'``).  No ``mac``: libvirt generates one.

Per hypervisor (``_FLAVOURS``):

* kvm/qemu/test: virtio disks (vda, vdb, ...) and virtio NICs.  CD drives cannot be virtio: IDE
  (hda-hdd) on the default ``pc`` machine, SATA (sda-sdf) on q35, which has no IDE.
* Xen PV (and PVH): the xen bus (xvda, ...) with the xen PV front ends (blkfront, netfront).  Files
  go through qdisk (``<driver name='qemu'>``: raw and qcow2), raw block devices through blkback
  (``phy``), as libvirt's libxl driver maps them.
* Xen HVM: as xapi does it, slots 0-3 are emulated IDE disks (hda-hdd) that the guest's PV drivers
  take over once loaded, slots from 4 on are PV-only (xvde, ...); NICs have no model, so libxl
  gives an emulated NIC plus its PV twin (``vif`` type ``ioemu``).
* lxc: ``<filesystem>`` mounts: a directory bind-mounted, a raw image through a loop device, a
  qcow2 image through qemu-nbd, a block device; NICs are veth pairs (libvirt's default for LXC).

``parse`` reads any domain's devices back into the same form (``userdevice`` from the target
name), so what ``build`` wrote comes back as given, with the defaults filled in.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import NamedTuple


class DeviceError(ValueError):
    """A device description that cannot be expressed for this guest."""


class _Bus(NamedTuple):
    name: str                   # <target bus=...>
    prefix: str                 # the guest's device name is prefix + the slot's letters
    slots: int | None = None    # how many slots it holds; past them the next bus in the chain


class _Flavour(NamedTuple):
    disk: tuple[_Bus, ...]      # tried in order for a slot
    cdrom: tuple[_Bus, ...]
    raw_block_driver: str       # <driver name=...> for raw block devices; "qemu" for everything else
    nic_model: str | None


_VIRTIO = _Bus("virtio", "vd")
_IDE = _Bus("ide", "hd", 4)
_SATA = _Bus("sata", "sd", 6)
_XEN = _Bus("xen", "xvd")
_FLAVOURS = {
    "virtio": _Flavour(disk=(_VIRTIO,), cdrom=(_IDE,), raw_block_driver="qemu", nic_model="virtio"),
    "virtio-q35": _Flavour(disk=(_VIRTIO,), cdrom=(_SATA,), raw_block_driver="qemu", nic_model="virtio"),
    "xen-pv": _Flavour(disk=(_XEN,), cdrom=(_XEN,), raw_block_driver="phy", nic_model="netfront"),
    "xen-hvm": _Flavour(disk=(_IDE, _XEN), cdrom=(_IDE, _XEN), raw_block_driver="phy", nic_model=None),
}
# LXC mounts: (disk type, format) -> the <filesystem> type and its <driver type=...> (None: no driver).
_LXC_MOUNTS = {("dir", "raw"): ("mount", None), ("file", "raw"): ("file", "loop"),
               ("file", "qcow2"): ("file", "nbd"), ("block", "raw"): ("block", None)}
_SOURCE_ATTR = {"file": "file", "block": "dev", "dir": "dir", "mount": "dir"}

DISK_DEFAULTS = {"type": "file", "path": "", "format": "raw", "device": "disk", "readonly": False}
_DISK_KEYS = frozenset(DISK_DEFAULTS) | {"kind", "userdevice", "pool", "volume"}
_LXC_DISK_KEYS = frozenset(DISK_DEFAULTS) | {"kind", "mount"}
_NIC_KEYS = frozenset({"kind", "mac", "network", "bridge"})
_FORMATS = ("raw", "qcow2")
_MAX_SLOT = 255
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_TARGET = re.compile(r"^(xvd|vd|hd|sd|fd)([a-z]+)$")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def flavour_of(hypervisor: str, *, hvm: bool, machine: str = "") -> str:
    """The ``_FLAVOURS`` key for a guest ("lxc" has its own code path)."""
    if hypervisor == "xen":
        return "xen-hvm" if hvm else "xen-pv"
    if hypervisor == "lxc":
        return "lxc"
    return "virtio-q35" if "q35" in machine else "virtio"


def nic_model(flavour: str) -> str | None:
    """The NIC model a guest of ``flavour`` gets (None: the hypervisor's own choice, or LXC's veth)."""
    table = _FLAVOURS.get(flavour)
    return table.nic_model if table else None


def target_name(flavour: str, slot: int, device: str = "disk") -> str:
    """The guest's name for the disk in ``slot`` (0 -> vda, xvda or hda), "" where there is none."""
    table = _FLAVOURS.get(flavour)
    bus = _bus_for(table.cdrom if device == "cdrom" else table.disk, slot) if table else None
    return bus.prefix + _letters(slot) if bus else ""


def add(parent: ET.Element, devices: list[dict], flavour: str) -> None:
    """Append the elements for ``devices`` to ``<devices>``, in the order given."""
    if not isinstance(devices, list):
        raise DeviceError("devices must be a list")
    if flavour == "lxc":
        for device in devices:
            if _kind(device) == "disk":
                _add_mount(parent, device)
            else:
                _add_nic(parent, device, None)
        return
    table = _FLAVOURS[flavour]
    slots = _assign_slots(devices, table)
    for index, device in enumerate(devices):
        if _kind(device) == "disk":
            _add_disk(parent, device, table, slots[index])
        else:
            _add_nic(parent, device, table.nic_model)


def to_xml(devices: list[dict], flavour: str) -> str:
    """The device elements alone, as text (for a domain XML written some other way)."""
    parent = ET.Element("devices")
    add(parent, devices, flavour)
    ET.indent(parent)
    return "".join(ET.tostring(child, encoding="unicode") for child in parent)


def parse(root: ET.Element, *, skip_root_mount: bool = False) -> list[dict]:
    """The disks, mounts and NICs of a parsed ``<domain>`` in the neutral form, in document order
    (``build``'s order; libvirt itself keeps disks sorted by bus and name, and NICs after them).
    ``skip_root_mount``: leave out a directory mounted at "/" (reported as platform:lxc-root)."""
    devices = []
    for element in root.iterfind("devices/*"):
        if element.tag == "disk":
            devices.append(_parse_disk(element))
        elif element.tag == "filesystem":
            mount = _parse_mount(element)
            if not (skip_root_mount and mount["type"] == "dir" and mount["mount"] == "/"):
                devices.append(mount)
        elif element.tag == "interface":
            devices.append(_parse_nic(element))
    return devices


# ---- build ----------------------------------------------------------------------------------

def _kind(device) -> str:
    if not isinstance(device, dict) or device.get("kind") not in ("disk", "nic"):
        raise DeviceError(f"a device is a dict with kind 'disk' or 'nic', got {device!r}")
    return device["kind"]


def _disk_fields(disk: dict, keys: frozenset) -> dict:
    unknown = set(disk) - keys
    if unknown:
        raise DeviceError(f"unknown disk keys {sorted(unknown)}; expected some of {sorted(keys)}")
    disk = DISK_DEFAULTS | disk
    if disk["format"] not in _FORMATS:
        raise DeviceError(f"disk format must be one of {_FORMATS}, got {disk['format']!r}")
    if disk["device"] not in ("disk", "cdrom"):
        raise DeviceError(f"disk device must be 'disk' or 'cdrom', got {disk['device']!r}")
    if not isinstance(disk["readonly"], bool):
        raise DeviceError(f"disk readonly must be a bool, got {disk['readonly']!r}")
    path = disk["path"]
    if disk["type"] == "volume":
        if not all(isinstance(disk.get(k), str) and disk[k] and not _CONTROL.search(disk[k]) for k in ("pool", "volume")):
            raise DeviceError("a volume disk names its storage pool and volume")
        return disk
    if not _is_host_path(path, empty_ok=True):
        raise DeviceError(f"disk path must be an absolute host path, got {path!r}")
    if not path and disk["device"] != "cdrom":
        raise DeviceError("a disk needs a path (only a CD drive may be empty)")
    return disk


def _is_host_path(path, *, empty_ok: bool = False) -> bool:
    """An absolute path XML can carry (no control characters), or "" where allowed."""
    if not isinstance(path, str):
        return False
    return (empty_ok and not path) or (path.startswith("/") and not _CONTROL.search(path))


def _assign_slots(devices: list[dict], table: _Flavour) -> dict[int, int]:
    """Device index -> slot: the slots asked for, then the lowest free slot each device's bus takes."""
    slots, taken = {}, set()
    for index, device in enumerate(devices):
        if _kind(device) == "disk" and "userdevice" in device:
            slot = device["userdevice"]
            if isinstance(slot, str) and slot.isdigit():
                slot = int(slot)
            if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot <= _MAX_SLOT:
                raise DeviceError(f"userdevice must be a slot 0..{_MAX_SLOT}, got {device['userdevice']!r}")
            if slot in taken:
                raise DeviceError(f"two disks in slot {slot}")
            slots[index] = slot
            taken.add(slot)
    for index, device in enumerate(devices):
        if _kind(device) == "disk" and index not in slots:
            buses = table.cdrom if device.get("device") == "cdrom" else table.disk
            free = next((s for s in range(_MAX_SLOT + 1) if s not in taken and _bus_for(buses, s)), None)
            if free is None:
                raise DeviceError(f"no free slot on the {'/'.join(b.name for b in buses)} bus")
            slots[index] = free
            taken.add(free)
    return slots


def _bus_for(buses: tuple[_Bus, ...], slot: int) -> _Bus | None:
    for bus in buses:
        if bus.slots is None or slot < bus.slots:
            return bus        # a later bus keeps the slot's letters: xapi's slot 4 on Xen HVM is xvde
    return None


def _add_disk(parent: ET.Element, disk: dict, table: _Flavour, slot: int) -> None:
    disk = _disk_fields(disk, _DISK_KEYS)
    if disk["type"] not in ("file", "block", "volume"):
        raise DeviceError(f"disk type must be 'file', 'block' or 'volume', got {disk['type']!r}")
    bus = _bus_for(table.cdrom if disk["device"] == "cdrom" else table.disk, slot)
    if bus is None:
        raise DeviceError(f"slot {slot} does not exist for a {disk['device']} here")
    element = ET.SubElement(parent, "disk", type=disk["type"], device=disk["device"])
    raw_block = disk["type"] == "block" and disk["format"] == "raw"
    ET.SubElement(element, "driver", name=table.raw_block_driver if raw_block else "qemu", type=disk["format"])
    if disk["type"] == "volume":
        ET.SubElement(element, "source", pool=disk["pool"], volume=disk["volume"])
    elif disk["path"]:
        ET.SubElement(element, "source", {_SOURCE_ATTR[disk["type"]]: disk["path"]})
    ET.SubElement(element, "target", dev=bus.prefix + _letters(slot), bus=bus.name)
    if disk["readonly"] or disk["device"] == "cdrom":
        ET.SubElement(element, "readonly")


def _add_mount(parent: ET.Element, disk: dict) -> None:
    disk = _disk_fields(disk, _LXC_DISK_KEYS)
    if disk["device"] != "disk":
        raise DeviceError("an LXC container has no CD drive: mount the image as a read-only disk")
    mount = disk.get("mount")
    if not _is_host_path(mount):
        raise DeviceError(f"an LXC disk needs 'mount', the absolute directory it appears at, got {mount!r}")
    kind = _LXC_MOUNTS.get((disk["type"], disk["format"]))
    if kind is None:
        raise DeviceError(f"an LXC container cannot mount a {disk['format']} {disk['type']}; "
                          f"it mounts {sorted(f'{f} {t}' for t, f in _LXC_MOUNTS)}")
    fs_type, driver = kind
    element = ET.SubElement(parent, "filesystem", type=fs_type)
    if driver:
        ET.SubElement(element, "driver", type=driver, format=disk["format"])
    ET.SubElement(element, "source", {_SOURCE_ATTR[fs_type]: disk["path"]})
    ET.SubElement(element, "target", dir=mount)
    if disk["readonly"]:
        ET.SubElement(element, "readonly")


def _add_nic(parent: ET.Element, nic: dict, model: str | None) -> None:
    unknown = set(nic) - _NIC_KEYS
    if unknown:
        raise DeviceError(f"unknown nic keys {sorted(unknown)}; expected some of {sorted(_NIC_KEYS)}")
    for key in ("mac", "network", "bridge"):
        if not isinstance(nic.get(key, ""), str):
            raise DeviceError(f"nic {key} must be a string, got {nic[key]!r}")
    if nic.get("network") and nic.get("bridge"):
        raise DeviceError("a nic joins a network or a bridge, not both")
    mac = nic.get("mac", "")
    if mac and not _MAC.match(mac):
        raise DeviceError(f"mac must look like 52:54:00:12:34:56, got {mac!r}")
    wiring = "network" if nic.get("network") else "bridge" if nic.get("bridge") else "ethernet"
    element = ET.SubElement(parent, "interface", type=wiring)
    if mac:
        ET.SubElement(element, "mac", address=mac.lower())
    if wiring != "ethernet":
        ET.SubElement(element, "source", {wiring: nic[wiring]})
    if model:
        ET.SubElement(element, "model", type=model)


def _letters(slot: int) -> str:
    """libvirt's disk naming: 0 -> a, 25 -> z, 26 -> aa."""
    name, n = "", slot + 1
    while n:
        n, rest = divmod(n - 1, 26)
        name = chr(ord("a") + rest) + name
    return name


def _slot(letters: str) -> int:
    n = 0
    for c in letters:
        n = n * 26 + ord(c) - ord("a") + 1
    return n - 1


# ---- parse ----------------------------------------------------------------------------------

def _parse_disk(element: ET.Element) -> dict:
    source, target, driver = element.find("source"), element.find("target"), element.find("driver")
    disk_type = element.get("type", "file")
    disk = {
        "kind": "disk", "type": disk_type,
        "path": _source_path(source, disk_type),
        "format": (driver.get("type") if driver is not None else None) or "raw",
        "device": element.get("device", "disk"),
        "readonly": element.find("readonly") is not None,
    }
    if disk_type == "volume" and source is not None:
        disk.update(pool=source.get("pool", ""), volume=source.get("volume", ""))
    match = _TARGET.match(target.get("dev", "")) if target is not None else None
    if match:
        disk["userdevice"] = _slot(match.group(2))
    return disk


def slot_of(element: ET.Element) -> int | None:
    """The slot (xapi's userdevice) a ``<disk>`` element's target names, None if it names none."""
    target = element.find("target")
    match = _TARGET.match(target.get("dev", "")) if target is not None else None
    return _slot(match.group(2)) if match else None


def _parse_mount(element: ET.Element) -> dict:
    fs_type = element.get("type", "mount")
    driver, target = element.find("driver"), element.find("target")
    return {
        "kind": "disk", "type": "dir" if fs_type == "mount" else fs_type,
        "path": _source_path(element.find("source"), fs_type),
        "format": (driver.get("format") if driver is not None else None) or "raw",
        "device": "disk", "readonly": element.find("readonly") is not None,
        "mount": target.get("dir", "") if target is not None else "",
    }


def _source_path(source: ET.Element | None, source_type: str) -> str:
    if source is None:
        return ""
    return source.get(_SOURCE_ATTR.get(source_type, "file")) or source.get("name") or ""


def _parse_nic(element: ET.Element) -> dict:
    mac, source = element.find("mac"), element.find("source")
    wiring = element.get("type", "")
    nic = {"kind": "nic", "mac": mac.get("address", "") if mac is not None else ""}
    if wiring in ("network", "bridge"):
        nic[wiring] = source.get(wiring, "") if source is not None else ""
    elif wiring != "ethernet":
        nic["type"] = wiring          # user, direct, vhostuser, ...: shown, not built
    return nic
