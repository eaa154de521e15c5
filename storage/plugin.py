"""The storage plugin interface: what an SR type is, and how it maps onto a libvirt storage pool.

A ``Plugin`` states an SR type (= SM.type) and everything the SR/VDI classes need to drive libvirt
for it: the pool XML made from xapi's ``device_config`` (and SR.probe's source spec), the volume
XML of a new VDI, how a VDI's UUID names its volume (``derived_vdi_uuid`` for volumes named
otherwise), and the SM record with honest ``features`` (only what libvirt's storage backend for
that pool type really does; see each plugin's module).

Everything here is pure: no libvirt connection, no file system.  The XML is built with
ElementTree, so every value is escaped; values that XML cannot carry (control characters) are
refused first with xapi's ``BadCharacter`` error.

Shared building blocks for the plugin modules: ``DeviceConfig`` (checked ``device_config``
access), the value checks (``absolute_path``, ``host_name``, ``port``, ``iqn``, ``hosts``,
``uuid_value``) and the XML pieces (``element``, ``host_elements``, ``auth_element``).
"""
from __future__ import annotations

import ipaddress
import re
import unicodedata
import uuid as _uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field

VENDOR = "xenapi"
COPYRIGHT = "the xenapi-server authors (LGPL-2.1-or-later)"
VERSION = "1.0"
REQUIRED_API_VERSION = "1.0"

# xapi's SM error numbers (xapi-project/sm drivers/XE_SR_ERRORCODES.xml): name -> (code, description).
# A PluginError reaches a client as SR_BACKEND_FAILURE_<code> ["", reason, ""], except the codes
# that xapi maps to errors of their own (16 SR_DEVICE_IN_USE, 24 VDI_IN_USE, 39 SR_NOT_EMPTY,
# 144 VDI_MISSING; 38 is "not implemented").
ERRORS: dict[str, tuple[int, str]] = {
    "InvalidArg": (1, "Invalid argument"),
    "BadCharacter": (2, "A bad character was detected in the dconf string"),
    "InvalidSecret": (20, "No such secret."),
    "Unimplemented": (38, "The requested method is not supported/implemented"),
    "SRNoSpace": (44, "There is insufficient space"),
    "SRUnknownType": (48, "Unknown repository type"),
    "SRBadXML": (49, "Malformed XML string"),
    "NFSVersion": (72, "Required NFS server version unsupported"),
    "VDISize": (79, "VDI Invalid size"),
    "ConfigDeviceMissing": (90, "The request is missing the device parameter"),
    "ConfigDeviceInvalid": (91, "The device is not a valid path"),
    "ConfigLocationMissing": (94, "The request is missing the location parameter"),
    "ConfigTargetMissing": (95, "The request is missing the target parameter"),
    "ConfigTargetIQNMissing": (96, "The request is missing or has an incorrect target IQN parameter"),
    "ConfigServerPathMissing": (101, "The request is missing the serverpath parameter"),
    "ConfigServerMissing": (102, "The request is missing the server parameter"),
    "ConfigServerPathBad": (103, "The serverpath argument is not valid"),
    "InvalidIQN": (106, "The IQN provided is an invalid format"),
    "ConfigParamsMissing": (115, "Not all required parameters specified."),
    "ISCSIPort": (142, "Incorrect value for iSCSI port, must be a number between 1 and 65535"),
    "ISOLocalPath": (226, "Invalid local path"),
}


class PluginError(Exception):
    """A storage error with xapi's SM error number (``code``) and text (``reason``).

    ``reason`` is the SM description, with the detail appended as SM does: ``"... [opterr=...]"``.
    """

    def __init__(self, code: int, reason: str, name: str = ""):
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason
        self.name = name

    @classmethod
    def named(cls, name: str, opterr: str | None = None) -> PluginError:
        code, text = ERRORS[name]
        return cls(code, f"{text} [opterr={opterr}]" if opterr else text, name)

    def failure(self) -> list[str]:
        """The generic xapi ErrorDescription: ``["SR_BACKEND_FAILURE_<code>", "", reason, ""]``."""
        return [f"SR_BACKEND_FAILURE_{self.code}", "", self.reason, ""]


@dataclass(frozen=True)
class Backing:
    """A volume's backing file (qcow2 overlays): its path and format."""
    path: str
    format: str = "qcow2"


BACKING_FORMATS = ("qcow2", "raw")
_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_DERIVED = _uuid.UUID("5bb8e6a4-2c57-4cf3-9d0e-6f1c1f0a7a51")   # namespace of derived VDI UUIDs


def derived_vdi_uuid(sr_uuid: str, volume_key: str) -> str:
    """A stable UUID for a volume whose name is not a VDI UUID (an ISO file, a LUN): the same
    volume in the same SR always gets the same one."""
    return str(_uuid.uuid5(_DERIVED, f"{sr_uuid}/{volume_key}"))


# ------------------------------------------------------------------ value checks ---

def clean(value: str, what: str) -> str:
    """``value`` if XML can carry it and it has no control characters (newlines, tabs included)."""
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cs") or ch in "\ufffe\uffff":
            raise PluginError.named("BadCharacter", f"{what} has the character U+{ord(ch):04X}")
    return value


class DeviceConfig:
    """A checked ``device_config``: string keys and values, none with control characters.
    An empty (or blank) value counts as absent, as in xapi's SM drivers."""

    def __init__(self, values: Mapping[str, str]):
        if not isinstance(values, Mapping):
            raise PluginError.named("InvalidArg", "device_config must be a map of strings")
        for key, value in values.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise PluginError.named("InvalidArg", f"device_config:{key!r} must be a string")
            clean(key, "a device_config key")
            clean(value, f"device_config:{key}")
        self._values = dict(values)

    def get(self, key: str, default: str | None = None) -> str | None:
        value = self._values.get(key, "").strip()
        return value or default

    def require(self, key: str, error: str) -> str:
        value = self.get(key)
        if value is None:
            raise PluginError.named(error, f"device_config:{key} is required")
        return value


def uuid_value(value: str, error: str = "InvalidArg", what: str = "uuid") -> str:
    """A UUID in canonical (lower-case, dashed) form."""
    try:
        return str(_uuid.UUID(clean(value, what)))
    except (ValueError, TypeError, AttributeError):
        raise PluginError.named(error, f"{what} {value!r} is not a UUID") from None


def absolute_path(value: str, error: str, what: str) -> str:
    """An absolute path other than ``/`` (libvirt's absFilePath), without a trailing slash."""
    path = value.rstrip("/")
    if not value.startswith("/") or not path:
        raise PluginError.named(error, f"{what} must be an absolute path, not {value!r}")
    return path


_DNS = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")


def host_name(value: str, error: str, what: str) -> str:
    """A DNS name or an IPv4/IPv6 address (libvirt's dnsName / ipAddr)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if _DNS.fullmatch(value) and not value.replace(".", "").isdigit():
        return value
    raise PluginError.named(error, f"{what} {value!r} is not a host name or IP address")


def port(value: str, error: str, what: str) -> int:
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= 65535:
        raise PluginError.named(error, f"{what} {value!r} is not a port number (1-65535)")
    return int(value)


def hosts(value: str, error: str, what: str) -> list[tuple[str, int | None]]:
    """``host[:port]`` items, comma-separated; an IPv6 address with a port is ``[addr]:port``."""
    found = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            raise PluginError.named(error, f"{what} {value!r} has an empty item")
        bracketed = re.fullmatch(r"\[([^\]]+)\](?::(.*))?", item)
        if bracketed:
            name, number = bracketed.group(1), bracketed.group(2)
        elif item.count(":") == 1:
            name, number = item.split(":")
        else:                                   # a name, an IPv4 address or a bare IPv6 address
            name, number = item, None
        found.append((host_name(name, error, what),
                      None if number is None else port(number, error, f"{what} port")))
    return found


_IQN = re.compile(r"iqn\.[0-9]{4}-(0[1-9]|1[0-2])\.[a-zA-Z0-9.\-]+(:.+)?")


def iqn(value: str, error: str, what: str) -> str:
    """An iSCSI qualified name (libvirt's IscsiQualifiedName: ``iqn.YYYY-MM.domain[:name]``)."""
    if not _IQN.fullmatch(value) or " " in value:
        raise PluginError.named(error, f"{what} {value!r} is not an iSCSI qualified name (iqn.YYYY-MM.domain:name)")
    return value


def object_name(value: str, what: str) -> str:
    """A libvirt object or volume name: not empty, no ``/``, not ``.`` or ``..``."""
    if not isinstance(value, str) or not value or "/" in value or value in (".", ".."):
        raise PluginError.named("InvalidArg", f"{what} {value!r} is not a valid name")
    return clean(value, what)


# ------------------------------------------------------------------ XML pieces ---

def element(tag: str, text: str | None = None, children=(), **attrs: str | int | None) -> ET.Element:
    """``<tag attr=...>text or children</tag>``; attributes that are None are left out."""
    node = ET.Element(tag, {k: str(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        node.text = text
    node.extend(children)
    return node


def host_elements(items: list[tuple[str, int | None]]) -> list[ET.Element]:
    return [element("host", name=name, port=number) for name, number in items]


def auth_element(kind: str, username: str, secret_uuid: str) -> ET.Element:
    """``<auth type='chap|ceph' username=...><secret uuid=.../></auth>`` (a libvirt secret)."""
    return element("auth", type=kind, username=username, children=[element("secret", uuid=secret_uuid)])


def auth_from(dc: DeviceConfig, user_key: str, secret_key: str, kind: str) -> list[ET.Element]:
    """The ``<auth>`` of a user and a libvirt secret named by two device_config keys, given both
    or neither (then no element)."""
    user, secret = dc.get(user_key), dc.get(secret_key)
    if user is None and secret is None:
        return []
    if user is None or secret is None:
        missing = user_key if user is None else secret_key
        raise PluginError.named("ConfigParamsMissing",
                                f"device_config:{user_key} and {secret_key} go together; {missing} is missing")
    return [auth_element(kind, user, uuid_value(secret, "InvalidSecret", f"device_config:{secret_key}"))]


def to_xml(root: ET.Element) -> str:
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


# ------------------------------------------------------------------ the plugin ---

@dataclass(frozen=True)
class Plugin:
    """One SR type on one libvirt pool type.  Subclasses (one per module) fill in
    ``pool_source`` / ``pool_target``; everything else is shared."""
    type: str                       # SR.type and SM.type
    name: str                       # SM.name_label
    description: str                # SM.name_description
    pool_type: str                  # libvirt pool type
    features: dict[str, int] = field(hash=False)        # SM.features
    configuration: dict[str, str] = field(hash=False)   # SM.configuration: device_config key -> description
    content_type: str = "user"      # SR.content_type ("iso" for the ISO library)
    volume_format: str = "raw"      # what a VDI's volume holds: qcow2, raw, iso
    read_only: bool = False         # VDIs are read-only to VMs
    shared: bool = False            # one pool may be seen from several hosts
    extension: str = ""             # volume name = VDI UUID + extension
    transfer: bool = True           # libvirt uploads to / downloads from its volumes (VDI import/export)
    volume_chars: str = r"[^/]+"    # the volume names the backend takes (a regular expression)
    preallocate: bool = False       # a new volume is fully allocated (else sparse / thin)

    # -- what subclasses state --------------------------------------------------------------
    def pool_source(self, dc: DeviceConfig, uuid: str) -> list[ET.Element] | None:
        """The children of the pool's ``<source>`` (None: no ``<source>``)."""
        return None

    def pool_target(self, dc: DeviceConfig, uuid: str) -> str | None:
        """The pool's ``<target><path>`` (None: no ``<target>``)."""
        return None

    def probe_source(self, dc: DeviceConfig) -> list[ET.Element] | None:
        """The children of SR.probe's ``<source>`` spec (None: libvirt needs no spec)."""
        return None

    def needs_build(self, device_config: dict[str, str]) -> bool:
        """Whether SR.create calls the pool's build() after defining it (mkdir, vgcreate, ...)."""
        return False

    # -- derived facts ------------------------------------------------------------------------
    @property
    def disk_format(self) -> str:
        """The format of the volume's bytes, as a domain ``<disk><driver type=...>`` and libvirt's
        volume XML name it: an ISO image is a raw file."""
        return "raw" if self.volume_format == "iso" else self.volume_format

    @property
    def thin(self) -> bool:
        """Volumes take space as they are written (SR space checks count virtual sizes loosely)."""
        return "THIN_PROVISIONING" in self.features

    @property
    def driver_filename(self) -> str:
        return type(self).__module__.replace(".", "/") + ".py"

    # -- XML ----------------------------------------------------------------------------------
    def pool_xml(self, *, uuid: str, name: str, device_config: dict[str, str]) -> str:
        dc = DeviceConfig(device_config)
        uuid = uuid_value(uuid, what="the SR uuid")
        pool = element("pool", type=self.pool_type)
        pool.append(element("name", object_name(name, "the pool name")))
        pool.append(element("uuid", uuid))
        source = self.pool_source(dc, uuid)
        if source is not None:
            pool.append(element("source", children=source))
        target = self.pool_target(dc, uuid)
        if target is not None:
            pool.append(element("target", children=[element("path", target)]))
        return to_xml(pool)

    def probe_xml(self, device_config: dict[str, str]) -> str:
        """SR.probe's source spec for virConnectFindStoragePoolSources(pool_type, spec) ("" = none)."""
        if "SR_PROBE" not in self.features:
            raise PluginError.named("Unimplemented", f"{self.type} SRs cannot be probed")
        source = self.probe_source(DeviceConfig(device_config))
        return "" if source is None else to_xml(element("source", children=source))

    def volume_xml(self, *, name: str, size: int, backing: Backing | None = None) -> str:
        if "VDI_CREATE" not in self.features:
            raise PluginError.named("Unimplemented", f"{self.type} SRs do not create volumes")
        name = object_name(name, "the volume name")
        if not re.fullmatch(self.volume_chars, name):
            raise PluginError.named("InvalidArg", f"{name!r} is not a {self.pool_type} volume name")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size < 2**63:
            raise PluginError.named("VDISize", f"the size must be a positive number of bytes, not {size!r}")
        volume = element("volume")
        volume.append(element("name", name))
        volume.append(element("capacity", str(size), unit="bytes"))
        volume.append(element("allocation", str(size) if self.preallocate else "0", unit="bytes"))
        target = [element("format", type=self.disk_format)]
        if self.disk_format == "qcow2":
            target.append(element("compat", "1.1"))      # qcow2 v3 (libvirt's default is v2, compat 0.10)
        volume.append(element("target", children=target))
        if backing is not None:
            volume.append(self._backing(backing))
        return to_xml(volume)

    def _backing(self, backing: Backing) -> ET.Element:
        if self.volume_format != "qcow2":
            raise PluginError.named("Unimplemented", f"{self.volume_format} volumes have no backing store")
        if backing.format not in BACKING_FORMATS:
            raise PluginError.named("InvalidArg", f"backing format {backing.format!r} is not one of {BACKING_FORMATS}")
        path = absolute_path(clean(backing.path, "the backing path"), "InvalidArg", "the backing path")
        return element("backingStore", children=[element("path", path), element("format", type=backing.format)])

    # -- VDI UUID <-> volume name ---------------------------------------------------------------
    def volume_name(self, vdi_uuid: str) -> str:
        if "VDI_CREATE" not in self.features:
            raise PluginError.named("Unimplemented", f"{self.type} volumes are named by the storage, not by VDI UUIDs")
        return uuid_value(vdi_uuid, what="the VDI uuid") + self.extension

    def vdi_uuid(self, volume_name: str) -> str | None:
        """The VDI UUID a volume name stands for, or None if it is not a name this plugin gives."""
        if "VDI_CREATE" not in self.features or not isinstance(volume_name, str):
            return None
        match = re.fullmatch(f"({_UUID}){re.escape(self.extension)}", volume_name)
        return match.group(1) if match else None

    # -- the SM record --------------------------------------------------------------------------
    def sm_record(self) -> dict:
        return {
            "name_label": self.name,
            "name_description": self.description,
            "type": self.type,
            "vendor": VENDOR,
            "copyright": COPYRIGHT,
            "version": VERSION,
            "required_api_version": REQUIRED_API_VERSION,
            "configuration": dict(self.configuration),
            "capabilities": sorted(self.features),
            "features": dict(self.features),
            "driver_filename": self.driver_filename,
            "required_cluster_stack": [],
            "other_config": {},
        }


# What every pool type does, whatever its backend: SR.create defines the pool (and builds it where
# ``needs_build``), plug/unplug = pool create/destroy, SR.scan and SR.update = pool refresh + info,
# VDI.update = volume refresh, a volume is attached as a domain disk, and SR.scan introduces the
# volumes it finds.
EVERY_POOL = ("SR_CREATE", "SR_ATTACH", "SR_DETACH", "SR_SCAN", "SR_UPDATE", "VDI_UPDATE",
              "VDI_ATTACH", "VDI_DETACH", "VDI_INTRODUCE")


def feature_set(*names: str) -> dict[str, int]:
    """SM.features: EVERY_POOL's and ``names``, each at version 1."""
    return {name: 1 for name in (*EVERY_POOL, *names)}
