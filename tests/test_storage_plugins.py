"""Storage plugins (storage/): their pool and volume XML against libvirt's own schemas and
parsers, their device_config checks with xapi's SM error numbers, VDI UUID <-> volume names,
SM records; the dir and iso plugins on a real libvirtd (qemu:///system).

``system_conn`` (module fixture, also used by tests/test_storage_iscsi.py) is an open
qemu:///system connection; if none answers it starts the test daemon with
``scripts/libvirtd.sh start`` (as tests/e2e does), and skips only if libvirtd cannot be reached.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid as _uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from storage import PLUGINS, Backing, Plugin, PluginError, derived_vdi_uuid, plugin_for_pool
from storage.iscsi import default_initiator_iqn

REPO = Path(__file__).resolve().parents[1]
SYSTEM_URI = "qemu:///system"
MiB = 1024 * 1024
SR_UUID = "3f1c2b9e-8a47-4d2e-9b6a-0c5d7e8f9a10"
VDI_UUID = "0b7e4a52-9c3d-4f1e-8a6b-2d5c7e9f1a34"
SECRET = "2ec115d7-3a88-3ceb-bc12-0ac909a6fd87"
IQN = "iqn.2024-01.org.xenapi.test:target1"

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)   # errors still raise libvirtError

# xapi's feature names (shared/reference/xenapi-storage-network-pool.md 1.8, X: xapi/smint.ml)
XAPI_FEATURES = set("""SR_CREATE SR_DELETE SR_ATTACH SR_DETACH SR_SCAN SR_PROBE SR_UPDATE SR_SUPPORTS_LOCAL_CACHING
    SR_METADATA SR_TRIM SR_MULTIPATH SR_CACHING SR_STATS VDI_CREATE VDI_DELETE VDI_ATTACH VDI_DETACH VDI_MIRROR
    VDI_MIRROR_IN VDI_RESIZE VDI_RESIZE_ONLINE VDI_CLONE VDI_SNAPSHOT VDI_ACTIVATE VDI_ACTIVATE_READONLY
    VDI_DEACTIVATE VDI_UPDATE VDI_INTRODUCE VDI_GENERATE_CONFIG VDI_ATTACH_OFFLINE VDI_RESET_ON_BOOT
    VDI_CONFIG_CBT VDI_COMPOSE VDI_READ_CACHING VDI_REVERT LARGE_VDI THIN_PROVISIONING""".split())

# device_configs that must give valid pools, a few per plugin (odd but legal values included)
GOOD = {
    "dir": [{"location": "/var/lib/xenapi/sr/local"},
            {"location": "/srv/a dir & <more> \"quoted\" 'and' ünïcode/"}],
    "iso": [{"location": "/srv/iso"}, {"location": "/srv/isos & <images>", "legacy_mode": "true"}],
    "lvm": [{"device": "/dev/sdb"}, {"device": "/dev/sdb, /dev/disk/by-id/wwn-0x5000c500a1b2c3d4"},
            {"vgname": "existing_vg"}, {"device": "/dev/sdc", "vgname": "vg.xen+1"}],
    "nfs": [{"server": "nfs.example.com", "serverpath": "/export/sr"},
            {"server": "192.0.2.10", "serverpath": "/export/a&b", "nfsversion": "4.1", "location": "/mnt/sr"},
            {"server": "2001:db8::10", "serverpath": "/x", "nfsversion": "3"}],
    "iscsi": [{"target": "192.0.2.20", "targetIQN": IQN},
              {"target": "san.example.com", "port": "3261", "targetIQN": IQN,
               "initiatorIQN": "iqn.1993-08.org.debian:01:abcdef", "chapuser": "u&<>", "chap_secret_uuid": SECRET}],
    "rbd": [{"monitors": "mon1.example.com", "pool": "rbd"},
            {"monitors": "192.0.2.1:6789, [2001:db8::1]:3300,2001:db8::2", "pool": "vms",
             "auth_user": "admin", "secret_uuid": SECRET}],
}
GOOD_CASES = [(t, dc) for t, dcs in GOOD.items() for dc in dcs]
MAKERS = [t for t, p in PLUGINS.items() if "VDI_CREATE" in p.features]


def case_id(case) -> str:
    return f"{case[0]}-{GOOD[case[0]].index(case[1])}"


def pool_of(sr_type: str, device_config=None, name: str | None = None) -> str:
    return PLUGINS[sr_type].pool_xml(uuid=SR_UUID, name=name or f"sr-{sr_type}",
                                     device_config=GOOD[sr_type][0] if device_config is None else device_config)


def validate(tmp_path: Path, xml: str, kind: str) -> None:
    """virt-xml-validate against libvirt's RelaxNG schema (storagepool / storagevol)."""
    tool = shutil.which("virt-xml-validate")
    if tool is None:
        pytest.fail("virt-xml-validate not found: install libvirt-clients (scripts/setup.sh)")
    path = tmp_path / f"{kind}-{_uuid.uuid4().hex[:8]}.xml"
    path.write_text(xml, encoding="utf-8")
    r = subprocess.run([tool, str(path), kind], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{kind} XML does not validate:\n{xml}\n{r.stdout}{r.stderr}"


def code_of(call, *args, **kwargs) -> int:
    with pytest.raises(PluginError) as e:
        call(*args, **kwargs)
    assert isinstance(e.value.reason, str) and e.value.reason
    return e.value.code


# ------------------------------------------------------------------ schemas ---

@pytest.mark.parametrize("case", GOOD_CASES, ids=case_id)
def test_pool_xml_validates(tmp_path, case):
    sr_type, dc = case
    validate(tmp_path, pool_of(sr_type, dc, name="pool & <name>"), "storagepool")


@pytest.mark.parametrize("sr_type", MAKERS)
@pytest.mark.parametrize("size", [1, 10 * 1024**3, 2**62])
def test_volume_xml_validates(tmp_path, sr_type, size):
    plugin = PLUGINS[sr_type]
    validate(tmp_path, plugin.volume_xml(name=plugin.volume_name(VDI_UUID), size=size), "storagevol")


@pytest.mark.parametrize("sr_type", [t for t in MAKERS if PLUGINS[t].volume_format == "qcow2"])
@pytest.mark.parametrize("backing", [Backing("/srv/sr/base.qcow2"), Backing("/srv/a & <b>/raw.img", "raw")])
def test_qcow2_volume_with_backing_validates(tmp_path, sr_type, backing):
    plugin = PLUGINS[sr_type]
    xml = plugin.volume_xml(name=plugin.volume_name(VDI_UUID), size=MiB, backing=backing)
    validate(tmp_path, xml, "storagevol")
    store = ET.fromstring(xml).find("backingStore")
    assert store.findtext("path") == backing.path
    assert store.find("format").get("type") == backing.format


# ------------------------------------------------------------------ what the XML says ---

def test_values_are_escaped_and_read_back_exactly():
    odd = "/srv/a&b <c> \"d\" 'e' &amp; ]]>"
    xml = PLUGINS["dir"].pool_xml(uuid=SR_UUID, name="n&<>\"'", device_config={"location": odd})
    assert "<c>" not in xml and "&amp;amp;" in xml
    root = ET.fromstring(xml)
    assert root.findtext("target/path") == odd
    assert root.findtext("name") == "n&<>\"'"
    assert root.findtext("uuid") == SR_UUID
    xml = PLUGINS["iscsi"].pool_xml(uuid=SR_UUID, name="x", device_config=GOOD["iscsi"][1])
    assert ET.fromstring(xml).find("source/auth").get("username") == "u&<>"


def test_pool_xml_carries_the_device_config():
    root = ET.fromstring(pool_of("nfs", GOOD["nfs"][1]))
    assert (root.get("type"), root.find("source/host").get("name"), root.find("source/dir").get("path"),
            root.find("source/protocol").get("ver"), root.findtext("target/path")) == \
        ("netfs", "192.0.2.10", "/export/a&b", "4.1", f"/mnt/sr/{SR_UUID}")
    assert ET.fromstring(pool_of("nfs")).findtext("target/path") == f"/var/lib/xenapi/sr/{SR_UUID}"

    root = ET.fromstring(pool_of("lvm", GOOD["lvm"][1]))
    assert [d.get("path") for d in root.findall("source/device")] == \
        ["/dev/sdb", "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"]
    assert root.findtext("source/name") == f"VG_XenStorage-{SR_UUID}"
    assert root.findtext("target/path") == f"/dev/VG_XenStorage-{SR_UUID}"
    assert ET.fromstring(pool_of("lvm", {"vgname": "existing_vg"})).findall("source/device") == []

    root = ET.fromstring(pool_of("iscsi"))
    assert root.find("source/host").attrib == {"name": "192.0.2.20", "port": "3260"}
    assert root.find("source/device").get("path") == IQN
    assert root.find("source/initiator/iqn").get("name") == default_initiator_iqn()
    assert root.find("target") is None

    root = ET.fromstring(pool_of("rbd", GOOD["rbd"][1]))
    assert [h.attrib for h in root.findall("source/host")] == \
        [{"name": "192.0.2.1", "port": "6789"}, {"name": "2001:db8::1", "port": "3300"}, {"name": "2001:db8::2"}]
    assert root.findtext("source/name") == "vms"
    assert root.find("source/auth").attrib == {"type": "ceph", "username": "admin"}
    assert root.find("source/auth/secret").get("uuid") == SECRET


def test_volume_xml_sizes_and_formats():
    for sr_type in MAKERS:
        plugin = PLUGINS[sr_type]
        root = ET.fromstring(plugin.volume_xml(name=plugin.volume_name(VDI_UUID), size=5 * MiB))
        assert root.findtext("capacity") == str(5 * MiB) and root.find("capacity").get("unit") == "bytes"
        assert root.findtext("allocation") == (str(5 * MiB) if sr_type == "lvm" else "0"), sr_type
        assert root.find("target/format").get("type") == plugin.disk_format
    assert [PLUGINS[t].disk_format for t in ("dir", "nfs", "iso", "lvm", "rbd")] == \
        ["qcow2", "qcow2", "raw", "raw", "raw"]


def test_default_initiator_iqn_is_a_valid_iqn():
    assert default_initiator_iqn("Host_01.Example.COM") == "iqn.2024-01.org.xenapi:host-01.example.com"
    assert default_initiator_iqn("---") == "iqn.2024-01.org.xenapi:localhost"
    PLUGINS["iscsi"].pool_xml(uuid=SR_UUID, name="x", device_config={
        "target": "h", "targetIQN": IQN, "initiatorIQN": default_initiator_iqn("Ünïcode host")})


def test_needs_build():
    assert PLUGINS["dir"].needs_build({"location": "/x"}) and PLUGINS["nfs"].needs_build({})
    assert PLUGINS["lvm"].needs_build({"device": "/dev/sdb"}) and not PLUGINS["lvm"].needs_build({"vgname": "vg"})
    assert not PLUGINS["iscsi"].needs_build({}) and not PLUGINS["rbd"].needs_build({})


# ------------------------------------------------------------------ bad input ---

CONTROL = ["\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\x85", "\ud800", "\ufffe"]

ISCSI = {"target": "h", "targetIQN": IQN}
RBD = {"monitors": "m", "pool": "p"}
BAD = [   # (SR type, device_config, xapi SM error code)
    ("dir", {}, 94), ("dir", {"location": ""}, 94), ("dir", {"location": "   "}, 94),
    ("dir", {"location": "relative/path"}, 1), ("dir", {"location": "/"}, 1),
    ("dir", {"location": 5}, 1), ("dir", {"location": None}, 1),
    ("iso", {}, 94), ("iso", {"location": "nfs.example.com:/isos"}, 226), ("iso", {"location": "//srv/share"}, 226),
    ("lvm", {}, 90), ("lvm", {"device": ""}, 90), ("lvm", {"device": "sdb"}, 91), ("lvm", {"device": "/dev/sdb,,"}, 91),
    ("lvm", {"vgname": "-bad"}, 1), ("lvm", {"vgname": "a/b"}, 1), ("lvm", {"vgname": ".."}, 1),
    ("nfs", {"serverpath": "/x"}, 102), ("nfs", {"server": "nfs"}, 101),
    ("nfs", {"server": "nfs", "serverpath": "x"}, 103), ("nfs", {"server": "a b", "serverpath": "/x"}, 102),
    ("nfs", {"server": "nfs", "serverpath": "/x", "nfsversion": "5"}, 72),
    ("nfs", {"server": "nfs", "serverpath": "/x", "location": "rel"}, 1),
    ("iscsi", {"targetIQN": IQN}, 95), ("iscsi", {"target": "h"}, 96),
    ("iscsi", {**ISCSI, "targetIQN": "iqn.2024-13.org.x:t"}, 96),
    ("iscsi", {**ISCSI, "targetIQN": "eui.02004567A425678D"}, 96),
    ("iscsi", {**ISCSI, "port": "0"}, 142), ("iscsi", {**ISCSI, "port": "x"}, 142),
    ("iscsi", {**ISCSI, "port": "65536"}, 142), ("iscsi", {**ISCSI, "initiatorIQN": "me"}, 106),
    ("iscsi", {**ISCSI, "target": "h1,h2"}, 1), ("iscsi", {**ISCSI, "chappassword": "pw"}, 1),
    ("iscsi", {**ISCSI, "chapuser": "u"}, 115), ("iscsi", {**ISCSI, "chapuser": "u", "chap_secret_uuid": "nope"}, 20),
    ("rbd", {"pool": "rbd"}, 115), ("rbd", {"monitors": "m"}, 115), ("rbd", {**RBD, "monitors": "m:99999"}, 1),
    ("rbd", {**RBD, "monitors": "m,,n"}, 1), ("rbd", {**RBD, "pool": "p@snap"}, 1),
    ("rbd", {**RBD, "secret_uuid": SECRET}, 115), ("rbd", {**RBD, "auth_user": "admin", "secret_uuid": "x"}, 20),
    ("dir", {"location": "/srv/a\nb"}, 2), ("nfs", {"server": "n", "serverpath": "/x\ty"}, 2),
    ("iscsi", {**ISCSI, "targetIQN": IQN + "\n"}, 2), ("rbd", {**RBD, "pool": "p\x00"}, 2),
] + [(t, {**GOOD[t][0], "extra": f"a{c}b"}, 2) for t in PLUGINS for c in CONTROL] \
  + [(t, {**GOOD[t][0], f"k{c}": "v"}, 2) for t in ("dir", "rbd") for c in ("\n", "\x00")]


@pytest.mark.parametrize("sr_type, device_config, code", BAD,
                         ids=lambda v: repr(v)[:40] if isinstance(v, dict) else str(v))
def test_bad_device_config(sr_type, device_config, code):
    assert code_of(PLUGINS[sr_type].pool_xml, uuid=SR_UUID, name="x", device_config=device_config) == code


def test_the_error_carries_xapi_text():
    with pytest.raises(PluginError) as e:
        PLUGINS["dir"].pool_xml(uuid=SR_UUID, name="x", device_config={})
    assert (e.value.code, e.value.name) == (94, "ConfigLocationMissing")
    assert e.value.reason.startswith("The request is missing the location parameter [opterr=")
    assert e.value.failure() == ["SR_BACKEND_FAILURE_94", "", e.value.reason, ""]


@pytest.mark.parametrize("sr_type", list(PLUGINS))
def test_bad_pool_name_and_uuid(sr_type):
    plugin = PLUGINS[sr_type]
    for name in ("", "a/b", "a\nb", ".", 7):
        assert code_of(plugin.pool_xml, uuid=SR_UUID, name=name, device_config=GOOD[sr_type][0]) in (1, 2)
    for uuid in ("", "not-a-uuid", SR_UUID + "0", "3f1c2b9e\n8a47"):
        assert code_of(plugin.pool_xml, uuid=uuid, name="x", device_config=GOOD[sr_type][0]) in (1, 2)
    assert code_of(plugin.pool_xml, uuid=SR_UUID, name="x", device_config=["location"]) == 1


@pytest.mark.parametrize("sr_type", MAKERS)
@pytest.mark.parametrize("size", [0, -1, -(2**40), 2**64, 1.5, True, "10", None])
def test_bad_sizes(sr_type, size):
    assert code_of(PLUGINS[sr_type].volume_xml, name="v", size=size) == 79


@pytest.mark.parametrize("sr_type", MAKERS)
def test_bad_volume_names(sr_type):
    plugin = PLUGINS[sr_type]
    for name in ("", "a/b", "..", "a\nb", "a\x00b"):
        assert code_of(plugin.volume_xml, name=name, size=MiB) in (1, 2)


def test_volume_name_rules_per_backend():
    assert code_of(PLUGINS["lvm"].volume_xml, name="a b", size=MiB) == 1       # not an LV name
    assert code_of(PLUGINS["lvm"].volume_xml, name="-x", size=MiB) == 1
    assert code_of(PLUGINS["rbd"].volume_xml, name="img@snap", size=MiB) == 1
    PLUGINS["dir"].volume_xml(name="any name & <chars>.qcow2", size=MiB)


def test_what_a_plugin_cannot_do():
    iscsi = PLUGINS["iscsi"]
    assert code_of(iscsi.volume_xml, name="unit:0:0:1", size=MiB) == 38
    assert code_of(iscsi.volume_name, VDI_UUID) == 38
    for sr_type in ("lvm", "rbd", "iso"):       # only qcow2 volumes have backing files
        assert code_of(PLUGINS[sr_type].volume_xml, name="v", size=MiB, backing=Backing("/x.qcow2")) == 38
    dir_ = PLUGINS["dir"]
    assert code_of(dir_.volume_xml, name="v", size=MiB, backing=Backing("relative.qcow2")) == 1
    assert code_of(dir_.volume_xml, name="v", size=MiB, backing=Backing("/x.vmdk", "vmdk")) == 1
    assert code_of(dir_.volume_xml, name="v", size=MiB, backing=Backing("/x\n.qcow2")) == 2


# ------------------------------------------------------------------ VDI UUID <-> volume name ---

@pytest.mark.parametrize("sr_type", MAKERS)
def test_volume_name_round_trip(sr_type):
    plugin = PLUGINS[sr_type]
    for vdi in (VDI_UUID, str(_uuid.uuid4()), VDI_UUID.upper(), "{" + VDI_UUID + "}"):
        canonical = str(_uuid.UUID(vdi))
        assert plugin.volume_name(vdi) == canonical + plugin.extension
        assert plugin.vdi_uuid(plugin.volume_name(vdi)) == canonical
    assert {"dir": ".qcow2", "nfs": ".qcow2", "iso": ".iso", "lvm": "", "rbd": ""}[sr_type] == plugin.extension
    foreign = ["debian-12.iso", "disk.qcow2", VDI_UUID.upper() + plugin.extension, VDI_UUID + ".raw",
               VDI_UUID + plugin.extension + ".bak", "x" + VDI_UUID + plugin.extension,
               VDI_UUID.replace("-", "") + plugin.extension, "", "unit:0:0:1", None]
    if plugin.extension:
        foreign.append(VDI_UUID)
    for name in foreign:
        assert plugin.vdi_uuid(name) is None, name
    assert code_of(plugin.volume_name, "not-a-uuid") == 1


def test_iscsi_volumes_are_never_ours():
    assert PLUGINS["iscsi"].vdi_uuid("unit:0:0:1") is None
    assert PLUGINS["iscsi"].vdi_uuid(VDI_UUID) is None


def test_derived_vdi_uuid_is_stable_and_distinct():
    a = derived_vdi_uuid(SR_UUID, "/srv/iso/debian.iso")
    assert a == derived_vdi_uuid(SR_UUID, "/srv/iso/debian.iso") == str(_uuid.UUID(a))
    assert a != derived_vdi_uuid(SR_UUID, "/srv/iso/other.iso")
    assert a != derived_vdi_uuid(VDI_UUID, "/srv/iso/debian.iso")


# ------------------------------------------------------------------ SM records, the registry ---

def test_the_registry():
    assert set(PLUGINS) == {"dir", "iso", "lvm", "nfs", "iscsi", "rbd"}
    assert {t: p.pool_type for t, p in PLUGINS.items()} == {
        "dir": "dir", "iso": "dir", "lvm": "logical", "nfs": "netfs", "iscsi": "iscsi-direct", "rbd": "rbd"}
    assert {t: p.volume_format for t, p in PLUGINS.items()} == {
        "dir": "qcow2", "iso": "iso", "lvm": "raw", "nfs": "qcow2", "iscsi": "raw", "rbd": "raw"}
    assert [t for t, p in PLUGINS.items() if p.shared] == ["nfs", "iscsi", "rbd"]
    assert [t for t, p in PLUGINS.items() if p.read_only] == ["iso"]
    assert [t for t, p in PLUGINS.items() if p.content_type != "user"] == ["iso"]
    assert all(isinstance(p, Plugin) and p.type == t for t, p in PLUGINS.items())
    assert len({hash(p) for p in PLUGINS.values()}) == len(PLUGINS)


@pytest.mark.parametrize("sr_type", list(PLUGINS))
def test_sm_record(sr_type):
    plugin = PLUGINS[sr_type]
    rec = plugin.sm_record()
    assert set(rec) == {"name_label", "name_description", "type", "vendor", "copyright", "version",
                        "required_api_version", "configuration", "capabilities", "features",
                        "driver_filename", "required_cluster_stack", "other_config"}
    for key in ("name_label", "name_description", "type", "vendor", "copyright", "version",
                "required_api_version", "driver_filename"):
        assert isinstance(rec[key], str) and rec[key], key
    assert (rec["type"], rec["vendor"], rec["version"], rec["required_api_version"]) == (sr_type, "xenapi", "1.0", "1.0")
    assert rec["driver_filename"] == f"storage/{sr_type}.py" and (REPO / rec["driver_filename"]).is_file()
    assert rec["configuration"] and all(isinstance(k, str) and isinstance(v, str) and v
                                        for k, v in rec["configuration"].items())
    assert all(type(v) is int and v >= 1 and isinstance(k, str) for k, v in rec["features"].items())
    assert rec["capabilities"] == sorted(rec["features"]) and all(isinstance(c, str) for c in rec["capabilities"])
    assert set(rec["features"]) <= XAPI_FEATURES
    assert rec["required_cluster_stack"] == [] and rec["other_config"] == {}
    rec["features"]["X"] = 1                         # a copy: the plugin is not changed
    assert "X" not in plugin.features
    # every key a pool_xml reads is documented
    assert set(rec["configuration"]) >= {k for dc in GOOD[sr_type] for k in dc} - {"legacy_mode"}


def test_features_are_honest():
    """Only what libvirt's storage backend for the pool type does (see each plugin's docstring)."""
    f = {t: set(p.features) for t, p in PLUGINS.items()}
    every = {"SR_CREATE", "SR_ATTACH", "SR_DETACH", "SR_SCAN", "SR_UPDATE", "VDI_ATTACH", "VDI_DETACH", "VDI_INTRODUCE"}
    assert all(every <= s for s in f.values())
    assert not f["iscsi"] & {"VDI_CREATE", "VDI_DELETE", "VDI_RESIZE", "VDI_CLONE", "VDI_SNAPSHOT", "SR_DELETE"}
    assert not f["lvm"] & {"THIN_PROVISIONING", "VDI_CLONE", "VDI_SNAPSHOT", "VDI_RESIZE"}
    assert {"VDI_CLONE", "VDI_SNAPSHOT", "VDI_RESIZE", "THIN_PROVISIONING"} <= f["rbd"]
    assert not f["rbd"] & {"SR_PROBE", "SR_DELETE"}
    assert f["nfs"] == f["dir"] | {"SR_PROBE"}          # the same file-system backend, plus showmount
    assert "SR_PROBE" in f["lvm"] and "SR_PROBE" in f["iscsi"] and "SR_PROBE" not in f["dir"]
    assert not any(s & {"VDI_MIRROR", "VDI_RESIZE_ONLINE", "VDI_GENERATE_CONFIG"} for s in f.values())
    assert [t for t, p in PLUGINS.items() if not p.transfer] == ["iscsi", "rbd"]
    assert [t for t, p in PLUGINS.items() if p.thin] == ["dir", "nfs", "rbd"]


@pytest.mark.parametrize("sr_type", list(PLUGINS))
def test_plugin_for_pool_classifies_our_own_pools(sr_type):
    plugin = PLUGINS[sr_type]
    found = plugin_for_pool(plugin.pool_type, pool_of(sr_type))
    assert found is (PLUGINS["dir"] if sr_type == "iso" else plugin)


def test_plugin_for_pool_other_pools():
    cifs = "<pool type='netfs'><name>c</name><source><host name='s'/><dir path='share'/><format type='cifs'/></source></pool>"
    auto = "<pool type='netfs'><name>c</name><source><host name='s'/><dir path='/e'/></source></pool>"
    assert plugin_for_pool("netfs", auto) is PLUGINS["nfs"]
    assert code_of(plugin_for_pool, "netfs", cifs) == 48
    assert code_of(plugin_for_pool, "netfs", "<pool") == 49
    for pool_type in ("fs", "disk", "iscsi", "scsi", "mpath", "zfs", "gluster", "vstorage", ""):
        assert code_of(plugin_for_pool, pool_type, "<pool/>") == 48


# ------------------------------------------------------------------ libvirt's test driver ---

@pytest.fixture
def test_conn():
    conn = libvirt.open("test:///default")
    made = []
    yield conn, made
    for pool in made:
        try:
            if pool.isActive():
                pool.destroy()
            pool.undefine()
        except libvirt.libvirtError:
            pass
    conn.close()


def unique_name(hint: str) -> str:
    return f"xenapi-test-{os.getpid()}-{_uuid.uuid4().hex[:8]}-{hint}"


def define(conn, made, sr_type, device_config, uuid=None):
    pool = conn.storagePoolDefineXML(PLUGINS[sr_type].pool_xml(uuid=uuid or str(_uuid.uuid4()),
                                                               name=unique_name(sr_type),
                                                               device_config=device_config))
    made.append(pool)
    return pool


def test_dir_pool_and_volume_on_the_test_driver(test_conn):
    conn, made = test_conn
    plugin = PLUGINS["dir"]
    sr = str(_uuid.uuid4())
    pool = define(conn, made, "dir", {"location": "/any/path/the & test driver <accepts>"}, uuid=sr)
    pool.create(0)
    assert pool.UUIDString() == sr
    assert ET.fromstring(pool.XMLDesc(0)).findtext("target/path") == "/any/path/the & test driver <accepts>"
    vol = pool.createXML(plugin.volume_xml(name=plugin.volume_name(VDI_UUID), size=3 * MiB), 0)
    again = pool.storageVolLookupByName(VDI_UUID + ".qcow2")
    assert again.name() == vol.name() == VDI_UUID + ".qcow2"
    assert plugin.vdi_uuid(again.name()) == VDI_UUID
    root = ET.fromstring(again.XMLDesc(0))
    assert root.findtext("capacity") == str(3 * MiB)
    assert root.find("target/format").get("type") == "qcow2"
    assert again.path() == f"/any/path/the & test driver <accepts>/{VDI_UUID}.qcow2"
    assert again.info()[1] == 3 * MiB
    vol.delete(0)
    assert pool.numOfVolumes() == 0


def said(root: ET.Element, path: str) -> list:
    return [(e.attrib, (e.text or "").strip() or None) for e in root.findall(path)]


@pytest.mark.parametrize("case", GOOD_CASES, ids=case_id)
def test_every_pool_on_the_test_driver(test_conn, case):
    """libvirt's own parser (beyond the RelaxNG schema) takes every plugin's XML, and keeps it."""
    conn, made = test_conn
    sr_type, dc = case
    plugin = PLUGINS[sr_type]
    pool = define(conn, made, sr_type, dc)
    pool.create(0)
    mine = ET.fromstring(plugin.pool_xml(uuid=pool.UUIDString(), name=pool.name(), device_config=dc))
    theirs = ET.fromstring(pool.XMLDesc(0))
    assert theirs.get("type") == plugin.pool_type
    for path in ("source/host", "source/device", "source/dir", "source/name", "source/initiator/iqn",
                 "source/auth", "source/auth/secret", "source/protocol", "target/path"):
        assert said(mine, path) == said(theirs, path), path
    if "VDI_CREATE" in plugin.features:
        vol = pool.createXML(plugin.volume_xml(name=plugin.volume_name(VDI_UUID), size=MiB), 0)
        assert vol.info()[1] == MiB
        assert plugin.vdi_uuid(vol.name()) == VDI_UUID


def test_probe_specs_on_the_test_driver(test_conn):
    """SR.probe: the source spec each probing plugin gives findStoragePoolSources."""
    conn, _ = test_conn
    found = ET.fromstring(conn.findStoragePoolSources("netfs", PLUGINS["nfs"].probe_xml({"server": "nfs.example"}), 0))
    assert found.find("source/host").get("name") == "nfs.example" and found.find("source/dir") is not None
    assert PLUGINS["lvm"].probe_xml({}) == ""
    assert ET.fromstring(conn.findStoragePoolSources("logical", PLUGINS["lvm"].probe_xml({}) or None, 0)).findall("source")
    spec = ET.fromstring(PLUGINS["iscsi"].probe_xml({"target": "192.0.2.20", "port": "3261"}))
    assert spec.find("host").attrib == {"name": "192.0.2.20", "port": "3261"}
    assert spec.find("initiator/iqn").get("name") == default_initiator_iqn()
    assert code_of(PLUGINS["iscsi"].probe_xml, {}) == 95
    assert code_of(PLUGINS["nfs"].probe_xml, {"server": "a\nb"}) == 2
    for sr_type in ("dir", "iso", "rbd"):
        assert code_of(PLUGINS[sr_type].probe_xml, GOOD[sr_type][0]) == 38


# ------------------------------------------------------------------ a real libvirtd ---

def _libvirtd_start_output() -> str:
    try:
        r = subprocess.run(["bash", str(REPO / "scripts" / "libvirtd.sh"), "start"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
        return r.stdout
    except subprocess.TimeoutExpired as e:
        return f"scripts/libvirtd.sh start timed out: {e.output or ''}"


@pytest.fixture(scope="module")
def system_conn():
    """qemu:///system, started with scripts/libvirtd.sh if it does not answer (root only)."""
    try:
        conn = libvirt.open(SYSTEM_URI)
    except libvirt.libvirtError as first:
        if os.geteuid() != 0:
            pytest.skip(f"{SYSTEM_URI} does not answer ({first}) and starting libvirtd needs root")
        said = _libvirtd_start_output()
        try:
            conn = libvirt.open(SYSTEM_URI)
        except libvirt.libvirtError as e:
            pytest.skip(f"libvirtd cannot be reached: {e}; scripts/libvirtd.sh start said:\n{said[-3000:]}")
    yield conn
    try:
        conn.close()
    except libvirt.libvirtError:
        pass


class Pools:
    """Pools a test made on a real libvirtd: stopped, emptied and undefined afterwards, whatever happened."""

    def __init__(self, conn):
        self.conn, self.pools = conn, []

    def define(self, xml: str):
        pool = self.conn.storagePoolDefineXML(xml, 0)
        self.pools.append(pool)
        return pool

    def cleanup(self) -> None:
        for pool in reversed(self.pools):
            try:
                if pool.isActive():
                    if pool.XMLDesc(0).startswith("<pool type='dir'"):
                        for vol in pool.listAllVolumes(0):
                            vol.delete(0)
                    pool.destroy()
            except libvirt.libvirtError:
                pass
            try:
                pool.undefine()
            except libvirt.libvirtError:
                pass


@pytest.fixture
def system_pools(system_conn):
    pools = Pools(system_conn)
    yield pools
    pools.cleanup()


def qemu_img_info(path: str) -> dict:
    r = subprocess.run(["qemu-img", "info", "--output=json", "-U", path], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_dir_plugin_on_a_real_libvirtd(system_pools, tmp_path):
    plugin = PLUGINS["dir"]
    location = tmp_path / "sr & <dir>"
    sr = str(_uuid.uuid4())
    pool = system_pools.define(plugin.pool_xml(uuid=sr, name=unique_name("dir"),
                                               device_config={"location": str(location)}))
    assert plugin.needs_build({"location": str(location)})
    pool.build(0)
    assert location.is_dir()
    pool.create(0)
    assert pool.UUIDString() == sr

    base_uuid, child_uuid, clone_uuid = (str(_uuid.uuid4()) for _ in range(3))
    base = pool.createXML(plugin.volume_xml(name=plugin.volume_name(base_uuid), size=16 * MiB), 0)
    assert base.path() == str(location / f"{base_uuid}.qcow2")
    info = qemu_img_info(base.path())
    assert (info["format"], info["virtual-size"]) == ("qcow2", 16 * MiB)
    assert (location / f"{base_uuid}.qcow2").stat().st_size < MiB          # thin

    child = pool.createXML(plugin.volume_xml(name=plugin.volume_name(child_uuid), size=16 * MiB,
                                             backing=Backing(base.path(), "qcow2")), 0)
    info = qemu_img_info(child.path())
    assert info["format"] == "qcow2" and info["virtual-size"] == 16 * MiB
    assert info["backing-filename"] == base.path()
    assert info.get("backing-filename-format", "qcow2") == "qcow2"
    assert ET.fromstring(child.XMLDesc(0)).findtext("backingStore/path") == base.path()

    # VDI_RESIZE and VDI_CLONE, as claimed
    child.resize(32 * MiB, 0)
    assert qemu_img_info(child.path())["virtual-size"] == 32 * MiB
    clone = pool.createXMLFrom(plugin.volume_xml(name=plugin.volume_name(clone_uuid), size=16 * MiB), base, 0)
    assert qemu_img_info(clone.path())["format"] == "qcow2"

    pool.refresh(0)
    assert sorted(plugin.vdi_uuid(n) for n in pool.listVolumes()) == sorted([base_uuid, child_uuid, clone_uuid])
    for vol in (clone, child, base):
        vol.delete(0)
    assert pool.numOfVolumes() == 0 and list(location.iterdir()) == []
    pool.destroy()
    pool.delete(0)                                   # SR_DELETE: the empty directory goes
    assert not location.exists()
    pool.undefine()


def test_iso_plugin_on_a_real_libvirtd(system_conn, system_pools, tmp_path):
    """An ISO library over existing files, and an empty ISO VDI filled by an upload (VDI import)."""
    plugin = PLUGINS["iso"]
    library = tmp_path / "isos"
    library.mkdir()
    (library / "debian-12.iso").write_bytes(b"\0" * 32768 + b"\1CD001\1" + b"\0" * 2041)
    pool = system_pools.define(plugin.pool_xml(uuid=str(_uuid.uuid4()), name=unique_name("iso"),
                                               device_config={"location": str(library)}))
    pool.build(0)
    pool.create(0)
    assert pool.listVolumes() == ["debian-12.iso"] and plugin.vdi_uuid("debian-12.iso") is None

    vdi = str(_uuid.uuid4())
    content = os.urandom(64 * 1024)
    vol = pool.createXML(plugin.volume_xml(name=plugin.volume_name(vdi), size=len(content)), 0)
    assert vol.info()[1] == len(content) and plugin.vdi_uuid(vol.name()) == vdi
    assert os.stat(vol.path()).st_blocks * 512 < len(content)           # sparse until filled
    stream = system_conn.newStream(0)
    vol.upload(stream, 0, len(content), 0)
    stream.send(content)
    stream.finish()
    assert Path(vol.path()).read_bytes() == content
    vol.delete(0)
    pool.destroy()
    assert (library / "debian-12.iso").exists()
