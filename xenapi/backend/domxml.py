"""Domain XML <-> Xen-API VM fields, with the per-hypervisor differences in one place.

Pure functions: no libvirt, no I/O.  ``parse`` reads XML that may come from anyone with access
to the host (virsh edit), but always as libvirt serialises it, which never carries a DTD: what
defusedxml guards against (entity expansion, external entities) needs one, so a document with a
DOCTYPE is refused and the rest goes to ElementTree's C parser.  defusedxml's parser is a Python
subclass that forces the pure-Python tree builder, twice as slow, and a relist parses every
domain of a host.  ``build`` writes with ElementTree so every name and value is escaped.

Mapping decisions (the ones a reader would otherwise have to reverse-engineer):

* ``name`` is libvirt's machine-safe, unique ``<name>``; ``name_label`` lives in ``<title>`` and
  ``name_description`` in ``<description>``.
* Memory: ``<memory>`` = memory_static_max, ``<currentMemory>`` = memory_dynamic_max and
  memory_dynamic_min.  libvirt has no static_min, so when it differs from dynamic_min it rides in
  our ownership stamp under the reserved key ``memory_static_min``; ``parse`` reports the stamp
  without reserved keys, so callers see exactly the stamp they wrote.
* Boot (xapi's rule: HVM_boot_policy "" means PV, "BIOS order" means HVM):
    - kvm/qemu/test are always HVM guests.  A non-empty PV_kernel means direct kernel boot
      (``<kernel>/<initrd>/<cmdline>``), otherwise the guest boots from HVM_boot_params["order"].
      PV_bootloader has no meaning there and is ignored.
    - xen is PV (``<type>xen</type>``, PV_bootloader or PV_kernel) unless HVM_boot_policy is set
      (xapi: any non-empty policy, normally "BIOS order", means HVM: ``<type>hvm</type>``);
      domain_type "pvh" selects ``<type>xenpvh</type>``.  A VM that says neither (no
      HVM_boot_policy, PV_bootloader or PV_kernel) boots as ``build``'s ``xen_boot`` says
      (xenapi.conf ``[libvirt] xen_boot``): "pv" gives it PV_bootloader "pygrub", as xapi's PV
      templates do (libxl finds pygrub in its own directory), "hvm" gives it HVM_boot_policy
      "BIOS order".  Either way the record parsed back shows what the guest will really do.
    - lxc runs ``platform["init"]`` (default /sbin/init) with PV_args split shell-style into
      ``<initarg>``s; ``platform["lxc-root"]`` is the host directory mounted as the container's
      ``/``.  ``build`` refuses a container without one (or with "/" itself), since libvirt would
      otherwise let it share the host's root filesystem; the server gives each new container
      its own directory (xenapi/services/vms.py).
  Parsing reports HVM_boot_policy "BIOS order" exactly for HVM guests without a direct kernel.
* Disks and NICs: ``fields["devices"]``, in the neutral form of ``devices.py``, which holds the
  per-hypervisor table (virtio for KVM/QEMU, the xen bus for PV, emulated IDE plus PV for Xen
  HVM, mounts and veth for LXC); ``parse`` reports every domain's devices in that form.
* platform: acpi/apic are on for HVM guests unless set to "false"; pae, hap, viridian when
  "true" (hap/viridian on Xen only); ``machine`` picks the QEMU machine type (default "pc":
  the simplest device model, fastest to boot under TCG); ``vnc`` = "false" drops the VNC display.
* KVM/QEMU/test guests get a pty serial console, VNC on 127.0.0.1 (autoport) and a
  qemu-guest-agent channel, so clean shutdown via the agent works once a guest runs one.
"""
from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET

from xenapi.backend import devices, interfaces

STAMP_NAMESPACE = "https://xenapi.dev/ns/vm/1"
STAMP_PREFIX = "xenapi"
STAMP_ELEMENT = "vm"
STAMP_STATIC_MIN_KEY = "memory_static_min"   # reserved stamp key, see module doc
STAMP_RESERVED_KEYS = frozenset({STAMP_STATIC_MIN_KEY})
HYPERVISORS = ("kvm", "qemu", "xen", "lxc", "test")
LXC_ROOT_KEY = "lxc-root"           # platform key: the container's root directory on the host
XEN_BOOTS = ("pv", "hvm")            # xenapi.conf [libvirt] xen_boot
DEFAULT_PV_BOOTLOADER = "pygrub"

ET.register_namespace(STAMP_PREFIX, STAMP_NAMESPACE)
_STAMP_TAG = f"{{{STAMP_NAMESPACE}}}{STAMP_ELEMENT}"


class DomainXMLError(ValueError):
    """The text is not a usable libvirt domain description, or a field cannot be expressed."""


# ---- tables ---------------------------------------------------------------------------------

_MEMORY_UNITS = {u: 1 for u in ("b", "bytes")} | {
    u: 1024 ** p for p, us in enumerate((("k", "KiB"), ("M", "MiB"), ("G", "GiB"), ("T", "TiB"),
                                          ("P", "PiB"), ("E", "EiB")), start=1) for u in us} | {
    u: 1000 ** p for p, u in enumerate(("KB", "MB", "GB", "TB", "PB", "EB"), start=1)}

# Xen-API on_normal_exit <-> libvirt on_poweroff/on_reboot.
_NORMAL_EXIT_FROM_LIBVIRT = {"destroy": "destroy", "restart": "restart",
                             "preserve": "destroy", "rename-restart": "restart"}
_NORMAL_EXIT_TO_LIBVIRT = {"destroy": "destroy", "restart": "restart"}
# Xen-API on_crash_behaviour <-> libvirt on_crash: same words, different spelling.
_CRASH_FROM_LIBVIRT = {"destroy": "destroy", "coredump-destroy": "coredump_and_destroy",
                       "restart": "restart", "coredump-restart": "coredump_and_restart",
                       "preserve": "preserve", "rename-restart": "rename_restart"}
_CRASH_TO_LIBVIRT = {v: k for k, v in _CRASH_FROM_LIBVIRT.items()}
# libvirt's defaults when the elements are absent.
_ACTION_DEFAULTS = {"on_poweroff": "destroy", "on_reboot": "restart", "on_crash": "destroy"}

_OS_TYPE_TO_DOMAIN_TYPE = {"hvm": "hvm", "xen": "pv", "linux": "pv", "xenpvh": "pvh",
                           "exe": "unspecified"}
_BOOT_DEV_TO_ORDER = {"hd": "c", "cdrom": "d", "network": "n", "fd": "a"}
_ORDER_TO_BOOT_DEV = {v: k for k, v in _BOOT_DEV_TO_ORDER.items()}
BOOT_DEVICES = _ORDER_TO_BOOT_DEV     # HVM_boot_params order letter -> <boot dev>

# platform key -> hypervisors whose <features> element of that name we write.
_FEATURE_FLAGS = {"acpi": ("kvm", "qemu", "test", "xen"), "apic": ("kvm", "qemu", "test", "xen"),
                  "pae": ("kvm", "qemu", "test", "xen"), "hap": ("xen",), "viridian": ("xen",)}
_ON_UNLESS_FALSE = ("acpi", "apic")     # HVM guests want these unless the caller says no
# platform keys a domain's XML holds (parse reads them back); any other key (cores-per-socket,
# device-model, ...) is the store's alone
XML_PLATFORM_KEYS = frozenset(_FEATURE_FLAGS) | {"machine", "init", "lxc-root"}
# the map fields split so: these keys are the XML's, every other key the store's
XML_KEYS = {"platform": XML_PLATFORM_KEYS, "HVM_boot_params": frozenset({"order"})}
_TRUE_WORDS = {"true", "1", "yes", "on"}
FEATURE_FLAGS, TRUE_WORDS = _FEATURE_FLAGS, _TRUE_WORDS     # for the in-place edits of backend/rewrite.py

_DEFAULT_MACHINE = "pc"
_DEFAULT_LXC_INIT = "/sbin/init"
_AGENT_CHANNEL = "org.qemu.guest_agent.0"

_XML_INVALID_CHARS = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_XML_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


# ---- parse ----------------------------------------------------------------------------------

def parse(xml: str) -> dict:
    """The Xen-API VM fields derivable from a libvirt domain XML document.

    Elements are reached child by child: ``find`` of a plain tag runs in C, while a path such as
    "os/type" goes through ElementPath in Python, which a relist of thousands of domains feels.
    (libvirt writes one <os>, <devices> and <metadata> at most; the first is the one read.)"""
    root = _domain_root(xml)
    os_el, devices_el = root.find("os"), root.find("devices")

    name = _text(root, "name")
    current_memory = _memory_bytes(root.find("currentMemory")) or _memory_bytes(root.find("memory"))
    vcpus_max = int(_text(root, "vcpu", "1"))
    vcpu = root.find("vcpu")
    os_type = _text(os_el, "type", "hvm")
    kernel = _text(os_el, "kernel")
    raw_stamp = _stamp(root)
    stamp = {k: v for k, v in raw_stamp.items() if k not in STAMP_RESERVED_KEYS}
    fields = {
        "uuid": _text(root, "uuid"),
        "name": name,
        # ours always carry a stamp and keep name_label in <title> (absent when empty); a domain
        # defined by someone else is labelled by its libvirt name
        "name_label": _text(root, "title") or ("" if raw_stamp else name),
        "name_description": _text(root, "description"),
        "memory_static_max": _memory_bytes(root.find("memory")),
        "memory_dynamic_max": current_memory,
        "memory_dynamic_min": current_memory,
        "memory_static_min": _int_or(raw_stamp.get(STAMP_STATIC_MIN_KEY), current_memory),
        "VCPUs_max": vcpus_max,
        "VCPUs_at_startup": int(vcpu.get("current", vcpus_max)) if vcpu is not None else vcpus_max,
        "actions_after_shutdown": _NORMAL_EXIT_FROM_LIBVIRT.get(_action(root, "on_poweroff"), "destroy"),
        "actions_after_reboot": _NORMAL_EXIT_FROM_LIBVIRT.get(_action(root, "on_reboot"), "restart"),
        "actions_after_crash": _CRASH_FROM_LIBVIRT.get(_action(root, "on_crash"), "destroy"),
        "PV_bootloader": _text(root, "bootloader"),
        "PV_bootloader_args": _text(root, "bootloader_args"),
        "PV_kernel": kernel,
        "PV_ramdisk": _text(os_el, "initrd"),
        "PV_args": (shlex.join(e.text or "" for e in _children(os_el, "initarg")) if os_type == "exe"
                    else _text(os_el, "cmdline")),
        "HVM_boot_policy": "BIOS order" if os_type == "hvm" and not kernel else "",
        "HVM_boot_params": _boot_params(os_el),
        "platform": _platform(root, os_el, devices_el, os_type),
        "domain_type": _OS_TYPE_TO_DOMAIN_TYPE.get(os_type, "unspecified"),
        "virt_type": root.get("type", ""),
        "stamp": stamp,
        "consoles": _consoles(devices_el),
        "macs": [address for i in _children(devices_el, "interface") for m in i.findall("mac")
                 if (address := m.get("address"))],
        "devices": devices.parse(root, skip_root_mount=os_type == "exe"),
        "vifs": interfaces.parse_all(root),
    }
    return fields


def parse_vifs(xml: str) -> list[dict]:
    """Only the network interfaces of a domain's XML (a running domain's persistent definition)."""
    return interfaces.parse_all(_domain_root(xml))


def parse_devices(xml: str) -> list[dict]:
    """Only the devices of a domain's XML (a running domain's persistent definition, for its VBDs):
    the rest of ``parse`` is not needed there."""
    root = _domain_root(xml)
    return devices.parse(root, skip_root_mount=root.findtext("os/type") == "exe")


def _domain_root(xml: str) -> ET.Element:
    """The ``<domain>`` element of libvirt's own serialisation (ElementTree's C parser; a DTD,
    which libvirt never writes, is refused: the part of defusedxml that matters here)."""
    if "<!DOCTYPE" in xml:
        raise DomainXMLError("unparsable domain XML: a DTD (libvirt never writes one)")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise DomainXMLError(f"unparsable domain XML: {e}") from e
    if root.tag != "domain":
        raise DomainXMLError(f"expected <domain>, got <{root.tag}>")
    return root


def device_flavour(parsed: dict) -> str:
    """The ``devices`` flavour of a parsed domain: how its disks are named and attached."""
    hypervisor = parsed["virt_type"] if parsed["virt_type"] in ("xen", "lxc") else "kvm"
    return devices.flavour_of(hypervisor, hvm=parsed["domain_type"] == "hvm",
                              machine=parsed["platform"].get("machine", ""))


def _text(parent: ET.Element | None, tag: str, default: str = "") -> str:
    """The stripped text of ``parent``'s child ``tag`` (a plain tag, no path), else ``default``."""
    element = parent.find(tag) if parent is not None else None
    return element.text.strip() if element is not None and element.text else default


def _children(parent: ET.Element | None, tag: str) -> list[ET.Element]:
    return parent.findall(tag) if parent is not None else []


def _int_or(value: str | None, default: int) -> int:
    return int(value) if value is not None and value.isdigit() else default


def _memory_bytes(element: ET.Element | None) -> int:
    if element is None or not (element.text or "").strip():
        return 0
    unit = element.get("unit", "KiB")
    if unit not in _MEMORY_UNITS:
        raise DomainXMLError(f"unknown memory unit {unit!r}")
    return int(element.text.strip()) * _MEMORY_UNITS[unit]


def _action(root: ET.Element, element: str) -> str:
    return _text(root, element, _ACTION_DEFAULTS[element])


def _boot_params(os_el: ET.Element | None) -> dict[str, str]:
    order = "".join(_BOOT_DEV_TO_ORDER.get(b.get("dev", ""), "") for b in _children(os_el, "boot"))
    return {"order": order} if order else {}


def _platform(root: ET.Element, os_el: ET.Element | None, devices_el: ET.Element | None,
              os_type: str) -> dict[str, str]:
    platform = {}
    if os_type == "hvm":
        platform.update({flag: "false" for flag in _ON_UNLESS_FALSE})
    features = root.find("features")
    present = {child.tag: child for child in features} if features is not None else {}
    for flag in _FEATURE_FLAGS:
        element = present.get(flag)
        if element is not None:
            platform[flag] = "false" if element.get("state") == "off" else "true"
    os_type_element = os_el.find("type") if os_el is not None else None
    machine = os_type_element.get("machine") if os_type_element is not None else None
    if machine and os_type == "hvm":
        platform["machine"] = machine
    if os_type == "exe":
        platform["init"] = _text(os_el, "init", _DEFAULT_LXC_INIT)
        for fs in _children(devices_el, "filesystem"):
            target, source = fs.find("target"), fs.find("source")
            if target is not None and target.get("dir") == "/" and source is not None and source.get("dir"):
                platform[LXC_ROOT_KEY] = source.get("dir")
    return platform


def _stamp(root: ET.Element) -> dict[str, str]:
    metadata = root.find("metadata")
    element = metadata.find(_STAMP_TAG) if metadata is not None else None
    return dict(element.attrib) if element is not None else {}


def _consoles(devices_el: ET.Element | None) -> list[dict[str, str]]:
    consoles = []
    for graphics in _children(devices_el, "graphics"):
        if graphics.get("type") != "vnc":
            continue
        port = _int_or(graphics.get("port"), -1)
        if port <= 0:                    # -1: autoport not yet assigned (domain off)
            continue
        listen = graphics.find("listen")
        host = graphics.get("listen") or (listen.get("address") if listen is not None else None) or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        consoles.append({"protocol": "rfb", "location": f"vnc://{host}:{port}"})
    return consoles


# ---- build ----------------------------------------------------------------------------------

def build(fields: dict, hypervisor: str, *, uuid: str, name: str, xen_boot: str = "pv") -> str:
    """Domain XML for a Xen-API VM record (same field names as ``parse`` returns).
    ``xen_boot``: how a Xen VM that names no way to boot boots ("pv" or "hvm"; see the module doc)."""
    if hypervisor not in HYPERVISORS:
        raise DomainXMLError(f"unknown hypervisor {hypervisor!r}; expected one of {HYPERVISORS}")
    if hypervisor == "xen":
        fields = with_xen_boot_default(fields, xen_boot)
    static_max = _as_int(fields, "memory_static_max", None)
    dynamic_max = _as_int(fields, "memory_dynamic_max", static_max)
    dynamic_min = _as_int(fields, "memory_dynamic_min", dynamic_max)
    static_min = _as_int(fields, "memory_static_min", dynamic_min)
    vcpus_max = _as_int(fields, "VCPUs_max", 1)
    vcpus_at_startup = min(_as_int(fields, "VCPUs_at_startup", vcpus_max), vcpus_max)

    domain = ET.Element("domain", type=hypervisor)
    _add(domain, "name", name)
    _add(domain, "uuid", uuid)
    if fields.get("name_label"):
        _add(domain, "title", one_line(fields["name_label"]))
    if fields.get("name_description"):
        _add(domain, "description", xml_safe(fields["name_description"]))
    stamp = dict(fields.get("stamp") or {})
    if static_min != dynamic_min:
        stamp[STAMP_STATIC_MIN_KEY] = str(static_min)
    if stamp:
        ET.SubElement(domain, "metadata").append(stamp_element(stamp))
    _add(domain, "memory", str(_kib(static_max)), unit="KiB")
    _add(domain, "currentMemory", str(_kib(dynamic_max)), unit="KiB")
    vcpu = _add(domain, "vcpu", str(vcpus_max), placement="static")
    if vcpus_at_startup < vcpus_max:
        vcpu.set("current", str(vcpus_at_startup))

    platform = {k: str(v) for k, v in (fields.get("platform") or {}).items()}
    is_hvm = _OS_BUILDERS[hypervisor](domain, fields, platform)
    if is_hvm:
        _add_features(domain, hypervisor, platform)
        ET.SubElement(domain, "clock", offset="utc")
    _add(domain, "on_poweroff", _NORMAL_EXIT_TO_LIBVIRT.get(fields.get("actions_after_shutdown"), "destroy"))
    _add(domain, "on_reboot", _NORMAL_EXIT_TO_LIBVIRT.get(fields.get("actions_after_reboot"), "restart"))
    _add(domain, "on_crash", _CRASH_TO_LIBVIRT.get(fields.get("actions_after_crash"), "destroy"))
    devices_element = ET.SubElement(domain, "devices")
    try:
        devices.add(devices_element, fields.get("devices") or [],
                    devices.flavour_of(hypervisor, hvm=is_hvm, machine=platform.get("machine") or _DEFAULT_MACHINE))
    except devices.DeviceError as e:
        raise DomainXMLError(str(e)) from e
    _DEVICE_BUILDERS[hypervisor](devices_element, is_hvm, platform)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode")


def with_xen_boot_default(fields: dict, xen_boot: str) -> dict:
    """The record a Xen guest boots with: unchanged if it names a way to boot (HVM_boot_policy,
    PV_bootloader, PV_kernel, or domain_type pvh), else the host's ``xen_boot`` default."""
    if xen_boot not in XEN_BOOTS:
        raise DomainXMLError(f"xen_boot must be one of {XEN_BOOTS}, got {xen_boot!r}")
    if (fields.get("HVM_boot_policy") or fields.get("PV_bootloader") or fields.get("PV_kernel")
            or fields.get("domain_type") == "pvh"):
        return fields
    if xen_boot == "hvm":
        return {**fields, "HVM_boot_policy": "BIOS order"}
    return {**fields, "PV_bootloader": DEFAULT_PV_BOOTLOADER}


def stamp_element(stamp: dict[str, str]) -> ET.Element:
    """Our ownership stamp, ``<xenapi:vm k="v" .../>``, as an element."""
    for key in stamp:
        if not _XML_NAME.match(key):
            raise DomainXMLError(f"stamp key {key!r} is not a valid XML attribute name")
    return ET.Element(_STAMP_TAG, {k: xml_safe(str(v)) for k, v in stamp.items()})


def stamp_xml(stamp: dict[str, str]) -> str:
    """The stamp as text for ``virDomainSetMetadata`` (libvirt adds its own prefix)."""
    element = stamp_element(stamp)
    element.tag = STAMP_ELEMENT       # setMetadata takes the namespace as a separate argument
    return ET.tostring(element, encoding="unicode")


def one_line(text: str) -> str:
    """libvirt refuses titles containing newlines."""
    return xml_safe(" ".join(text.splitlines()))


def xml_safe(text: str) -> str:
    """Drop characters XML 1.0 cannot carry at all (NUL and most C0 controls)."""
    return _XML_INVALID_CHARS.sub("", text)


def _add(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    element.text = text
    return element


def _as_int(fields: dict, key: str, default: int | None) -> int:
    value = fields.get(key, default)
    if value is None or value == "":
        raise DomainXMLError(f"{key} is required")
    try:
        return int(value)
    except (TypeError, ValueError) as e:
        raise DomainXMLError(f"{key} must be an integer, got {value!r}") from e


def _kib(size_bytes: int) -> int:
    return -(-size_bytes // 1024)       # round up: never give a guest less than asked


def _is_true(platform: dict[str, str], key: str) -> bool:
    return platform.get(key, "").lower() in _TRUE_WORDS


def _is_false(platform: dict[str, str], key: str) -> bool:
    return key in platform and not _is_true(platform, key)


def _add_boot_order(os_element: ET.Element, fields: dict) -> None:
    order = (fields.get("HVM_boot_params") or {}).get("order", "")
    for dev in dict.fromkeys(_ORDER_TO_BOOT_DEV[c] for c in order.lower() if c in _ORDER_TO_BOOT_DEV):
        ET.SubElement(os_element, "boot", dev=dev)


def _add_kernel(os_element: ET.Element, fields: dict) -> None:
    for field, tag in (("PV_kernel", "kernel"), ("PV_ramdisk", "initrd"), ("PV_args", "cmdline")):
        if fields.get(field):
            _add(os_element, tag, xml_safe(fields[field]))


def _os_qemu(domain: ET.Element, fields: dict, platform: dict[str, str]) -> bool:
    os_element = ET.SubElement(domain, "os")
    _add(os_element, "type", "hvm", machine=platform.get("machine") or _DEFAULT_MACHINE)
    if fields.get("PV_kernel"):
        _add_kernel(os_element, fields)
    else:
        _add_boot_order(os_element, fields)
    return True


def _os_xen(domain: ET.Element, fields: dict, platform: dict[str, str]) -> bool:
    if fields.get("HVM_boot_policy"):
        os_element = ET.SubElement(domain, "os")
        _add(os_element, "type", "hvm")
        _add_boot_order(os_element, fields)
        return True
    if fields.get("PV_bootloader"):
        _add(domain, "bootloader", xml_safe(fields["PV_bootloader"]))
        if fields.get("PV_bootloader_args"):
            _add(domain, "bootloader_args", xml_safe(fields["PV_bootloader_args"]))
    os_element = ET.SubElement(domain, "os")
    _add(os_element, "type", "xenpvh" if fields.get("domain_type") == "pvh" else "xen")
    _add_kernel(os_element, fields)
    return False


def is_container_root(path: str) -> bool:
    """An LXC root must be an absolute host directory other than "/" (never the host's own)."""
    return path.startswith("/") and bool(path.strip("/"))


def _os_lxc(domain: ET.Element, fields: dict, platform: dict[str, str]) -> bool:
    root = platform.get(LXC_ROOT_KEY, "")
    if not is_container_root(root):
        raise DomainXMLError(f"an LXC container needs platform:lxc-root, a host directory other than / "
                             f"for its root filesystem (got {root!r}); without one it would share the host's")
    os_element = ET.SubElement(domain, "os")
    _add(os_element, "type", "exe")
    _add(os_element, "init", platform.get("init") or _DEFAULT_LXC_INIT)
    for arg in shlex.split(fields.get("PV_args") or ""):
        _add(os_element, "initarg", xml_safe(arg))
    return False


# Each adds <os> (and Xen's <bootloader>) and says whether the guest is HVM.
_OS_BUILDERS = {"kvm": _os_qemu, "qemu": _os_qemu, "test": _os_qemu, "xen": _os_xen, "lxc": _os_lxc}


def _add_features(domain: ET.Element, hypervisor: str, platform: dict[str, str]) -> None:
    features = ET.SubElement(domain, "features")
    for flag, hypervisors in _FEATURE_FLAGS.items():
        wanted = not _is_false(platform, flag) if flag in _ON_UNLESS_FALSE else _is_true(platform, flag)
        if wanted and hypervisor in hypervisors:
            ET.SubElement(features, flag)


def _devices_qemu(parent: ET.Element, is_hvm: bool, platform: dict[str, str]) -> None:
    _add_serial_console(parent)
    channel = ET.SubElement(parent, "channel", type="unix")
    ET.SubElement(channel, "target", type="virtio", name=_AGENT_CHANNEL)
    _add_vnc(parent, platform)


def _devices_xen(parent: ET.Element, is_hvm: bool, platform: dict[str, str]) -> None:
    if is_hvm:
        _add_serial_console(parent)
        _add_vnc(parent, platform)
    else:
        console = ET.SubElement(parent, "console", type="pty")
        ET.SubElement(console, "target", type="xen", port="0")


def _devices_lxc(parent: ET.Element, is_hvm: bool, platform: dict[str, str]) -> None:
    filesystem = ET.Element("filesystem", type="mount")     # the root before other mounts (as virsh shows it)
    ET.SubElement(filesystem, "source", dir=platform[LXC_ROOT_KEY])
    ET.SubElement(filesystem, "target", dir="/")
    parent.insert(0, filesystem)
    ET.SubElement(parent, "console", type="pty")


_DEVICE_BUILDERS = {"kvm": _devices_qemu, "qemu": _devices_qemu, "test": _devices_qemu,
                    "xen": _devices_xen, "lxc": _devices_lxc}


def _add_serial_console(parent: ET.Element) -> None:
    serial = ET.SubElement(parent, "serial", type="pty")
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(parent, "console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")


def _add_vnc(parent: ET.Element, platform: dict[str, str]) -> None:
    if not _is_false(platform, "vnc"):
        ET.SubElement(parent, "graphics", type="vnc", autoport="yes", listen="127.0.0.1")
