"""domxml: build() output is schema-valid per hypervisor, and parse(build(record)) gives the record back,
disks and NICs included; the per-hypervisor device table (virtio, xen bus, emulated IDE + PV, LXC mounts)."""
from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from xenapi import config
from xenapi.backend import devices, domxml

UUID = "b71e58c7-aa05-415c-baa7-5296a4b6720a"
MIB = 1024 * 1024

BASE = {
    "name_label": "web 1", "name_description": "the first web server",
    "memory_static_max": 512 * MIB, "memory_dynamic_max": 256 * MIB, "memory_dynamic_min": 256 * MIB,
    "memory_static_min": 256 * MIB, "VCPUs_max": 4, "VCPUs_at_startup": 2,
    "actions_after_shutdown": "destroy", "actions_after_reboot": "restart",
    "actions_after_crash": "coredump_and_restart",
    "PV_bootloader": "", "PV_bootloader_args": "", "PV_kernel": "", "PV_ramdisk": "", "PV_args": "",
    "HVM_boot_policy": "BIOS order", "HVM_boot_params": {"order": "dc"},
    "platform": {"acpi": "true", "apic": "true", "machine": "pc"},
    "stamp": {"ref": "OpaqueRef:1f0e", "is_a_template": "false"},
}
DIRECT_KERNEL = {"PV_kernel": "/boot/vmlinuz", "PV_ramdisk": "/boot/initrd.img",
                 "PV_args": "console=ttyS0 root=/dev/vda", "HVM_boot_policy": "", "HVM_boot_params": {}}
PV_PYGRUB = {"PV_bootloader": "pygrub", "PV_bootloader_args": "-q", "HVM_boot_policy": "", "HVM_boot_params": {},
             "platform": {}}
LXC = {"HVM_boot_policy": "", "HVM_boot_params": {}, "PV_args": "--verbose 'two words'",
       "platform": {"init": "/usr/sbin/init", "lxc-root": "/srv/containers/web1"}}


def disk(path: str, **options) -> dict:
    return {"kind": "disk", "path": path, **options}


def parsed_disk(path: str, **options) -> dict:
    """What parse reports for a disk: the neutral form with every default filled in."""
    return {"kind": "disk", **devices.DISK_DEFAULTS, "path": path, **options}


def nic(**options) -> dict:
    return {"kind": "nic", **options}


def parsed_nic(**options) -> dict:
    return {"kind": "nic", "mac": "", **options}


# Disks and NICs of every flavour: (devices given, devices parse reports).
VIRTIO_DEVICES = (
    [disk("/images/root.qcow2", format="qcow2"), disk("/dev/vg0/data", type="block", readonly=True),
     disk("", device="cdrom"), disk("/images/scratch.raw", userdevice=5),
     nic(network="default", mac="52:54:00:AA:BB:01"), nic(bridge="br0"), nic()],
    [parsed_disk("/images/root.qcow2", format="qcow2", userdevice=0),
     parsed_disk("/dev/vg0/data", type="block", readonly=True, userdevice=1),
     parsed_disk("", device="cdrom", readonly=True, userdevice=2),
     parsed_disk("/images/scratch.raw", userdevice=5),
     parsed_nic(network="default", mac="52:54:00:aa:bb:01"), parsed_nic(bridge="br0"), parsed_nic()])
Q35_DEVICES = (
    [disk("/isos/install.iso", device="cdrom"), disk("/images/root.qcow2", format="qcow2")],
    [parsed_disk("/isos/install.iso", device="cdrom", readonly=True, userdevice=0),
     parsed_disk("/images/root.qcow2", format="qcow2", userdevice=1)])
XEN_PV_DEVICES = (
    [disk("/images/root.qcow2", format="qcow2"), disk("/dev/vg0/data", type="block"),
     disk("/isos/tools.iso", device="cdrom"), nic(bridge="xenbr0", mac="00:16:3e:00:00:01")],
    [parsed_disk("/images/root.qcow2", format="qcow2", userdevice=0),
     parsed_disk("/dev/vg0/data", type="block", userdevice=1),
     parsed_disk("/isos/tools.iso", device="cdrom", readonly=True, userdevice=2),
     parsed_nic(bridge="xenbr0", mac="00:16:3e:00:00:01")])
XEN_HVM_DEVICES = (   # xapi's layout: CD in slot 3, disks fill 0-2 (emulated IDE + PV), then 4, 5 (PV only)
    [disk("/isos/install.iso", device="cdrom", userdevice=3)]
    + [disk(f"/images/d{n}.raw") for n in range(5)] + [nic(network="default")],
    [parsed_disk("/isos/install.iso", device="cdrom", readonly=True, userdevice=3)]
    + [parsed_disk(f"/images/d{n}.raw", userdevice=slot) for n, slot in enumerate((0, 1, 2, 4, 5))]
    + [parsed_nic(network="default")])
LXC_DEVICES = (
    [disk("/srv/shared", type="dir", mount="/srv", readonly=True), disk("/images/data.raw", mount="/data"),
     disk("/images/tools.qcow2", format="qcow2", mount="/opt/tools"),
     disk("/dev/vg0/logs", type="block", mount="/var/log"), nic(bridge="br0"), nic()],
    [parsed_disk("/srv/shared", type="dir", mount="/srv", readonly=True),
     parsed_disk("/images/data.raw", mount="/data"),
     parsed_disk("/images/tools.qcow2", format="qcow2", mount="/opt/tools"),
     parsed_disk("/dev/vg0/logs", type="block", mount="/var/log"), parsed_nic(bridge="br0"), parsed_nic()])


def with_devices(given_and_parsed: tuple[list, list], overrides: dict, expected: dict) -> tuple[dict, dict]:
    given, parsed = given_and_parsed
    return overrides | {"devices": given}, expected | {"devices": parsed}


# name -> (hypervisor, record overrides, fields expected on parse beyond the record's own)
CASES = {
    "kvm-direct-kernel": ("kvm", DIRECT_KERNEL, {"domain_type": "hvm", "virt_type": "kvm"}),
    "qemu-bios-order": ("qemu", {}, {"domain_type": "hvm", "virt_type": "qemu", "devices": []}),
    "test": ("test", DIRECT_KERNEL, {"domain_type": "hvm", "virt_type": "test"}),
    "xen-pv-kernel": ("xen", DIRECT_KERNEL | {"platform": {}}, {"domain_type": "pv"}),
    "xen-pv-pygrub": ("xen", PV_PYGRUB, {"domain_type": "pv"}),
    "xen-pvh": ("xen", DIRECT_KERNEL | {"platform": {}, "domain_type": "pvh"}, {"domain_type": "pvh"}),
    "xen-hvm": ("xen", {"platform": {"acpi": "true", "apic": "true", "pae": "true", "hap": "true",
                                     "viridian": "true"}}, {"domain_type": "hvm", "virt_type": "xen"}),
    "lxc": ("lxc", LXC, {"domain_type": "unspecified", "virt_type": "lxc", "devices": []}),
    "kvm-devices": ("kvm", *with_devices(VIRTIO_DEVICES, DIRECT_KERNEL, {"domain_type": "hvm"})),
    "qemu-q35-devices": ("qemu", *with_devices(Q35_DEVICES, {"platform": BASE["platform"] | {"machine": "q35"}},
                                               {"domain_type": "hvm"})),
    "test-devices": ("test", *with_devices(VIRTIO_DEVICES, {}, {"domain_type": "hvm"})),
    "xen-pv-devices": ("xen", *with_devices(XEN_PV_DEVICES, PV_PYGRUB, {"domain_type": "pv"})),
    "xen-hvm-devices": ("xen", *with_devices(XEN_HVM_DEVICES, {"platform": {"acpi": "true", "apic": "true"}},
                                             {"domain_type": "hvm"})),
    "lxc-devices": ("lxc", *with_devices(LXC_DEVICES, LXC, {"domain_type": "unspecified"})),
}
ROUND_TRIP_FIELDS = [k for k in BASE] + ["domain_type", "devices"]

# device case -> what each device element must say: disks (target dev, bus, driver name),
# mounts (filesystem type, driver type, target dir), NICs (interface type, model or None).
DEVICE_ELEMENTS = {
    "kvm-devices": [("vda", "virtio", "qemu"), ("vdb", "virtio", "qemu"), ("hdc", "ide", "qemu"),
                    ("vdf", "virtio", "qemu"), ("network", "virtio"), ("bridge", "virtio"), ("ethernet", "virtio")],
    "qemu-q35-devices": [("sda", "sata", "qemu"), ("vdb", "virtio", "qemu")],
    "test-devices": [("vda", "virtio", "qemu"), ("vdb", "virtio", "qemu"), ("hdc", "ide", "qemu"),
                     ("vdf", "virtio", "qemu"), ("network", "virtio"), ("bridge", "virtio"), ("ethernet", "virtio")],
    "xen-pv-devices": [("xvda", "xen", "qemu"), ("xvdb", "xen", "phy"), ("xvdc", "xen", "qemu"),
                       ("bridge", "netfront")],
    "xen-hvm-devices": [("hdd", "ide", "qemu"), ("hda", "ide", "qemu"), ("hdb", "ide", "qemu"), ("hdc", "ide", "qemu"),
                        ("xvde", "xen", "qemu"), ("xvdf", "xen", "qemu"), ("network", None)],
    "lxc-devices": [("mount", None, "/"), ("mount", None, "/srv"), ("file", "loop", "/data"),
                    ("file", "nbd", "/opt/tools"), ("block", None, "/var/log"), ("bridge", None), ("ethernet", None)],
}


def record_for(case: str) -> tuple[str, dict, dict]:
    hypervisor, overrides, expected_extra = CASES[case]
    return hypervisor, BASE | overrides, expected_extra


def validate(tmp_path, name: str, xml: str) -> None:
    """libvirt's own RelaxNG schemas, through virt-xml-validate (libvirt-clients, scripts/setup.sh)."""
    if shutil.which("virt-xml-validate") is None:
        pytest.fail("virt-xml-validate is not installed: run scripts/setup.sh (Debian package libvirt-clients)")
    path = tmp_path / f"{name}.xml"
    path.write_text(xml)
    result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + xml


@pytest.mark.parametrize("case", CASES)
def test_build_validates_against_libvirt_domain_schema(case, tmp_path):
    hypervisor, record, _ = record_for(case)
    validate(tmp_path, case, domxml.build(record, hypervisor, uuid=UUID, name=f"vm-{case}"))


def device_elements(xml: str) -> list[tuple]:
    out = []
    for element in ET.fromstring(xml).find("devices"):
        driver, target, model = element.find("driver"), element.find("target"), element.find("model")
        if element.tag == "disk":
            out.append((target.get("dev"), target.get("bus"), driver.get("name")))
        elif element.tag == "filesystem":
            out.append((element.get("type"), driver.get("type") if driver is not None else None, target.get("dir")))
        elif element.tag == "interface":
            out.append((element.get("type"), model.get("type") if model is not None else None))
    return out


@pytest.mark.parametrize("case", DEVICE_ELEMENTS)
def test_each_hypervisor_gets_its_own_buses_drivers_and_nic_models(case):
    hypervisor, record, _ = record_for(case)
    assert device_elements(domxml.build(record, hypervisor, uuid=UUID, name="d")) == DEVICE_ELEMENTS[case]


@pytest.mark.parametrize("case", CASES)
def test_parse_of_build_round_trips_the_record(case):
    hypervisor, record, expected_extra = record_for(case)
    parsed = domxml.parse(domxml.build(record, hypervisor, uuid=UUID, name=f"vm-{case}"))
    expected = {k: record[k] for k in ROUND_TRIP_FIELDS if k in record} | expected_extra
    if hypervisor == "xen" or hypervisor == "lxc":
        expected["platform"] = {k: v for k, v in record["platform"].items() if k != "machine"}
    assert {k: parsed[k] for k in expected} == expected
    assert (parsed["uuid"], parsed["name"]) == (UUID, f"vm-{case}")


def test_build_escapes_markup_and_flattens_title_newlines():
    record = BASE | {"name_label": "a <b> & \"c\"\nsecond line", "name_description": "x]]>y\x00z"}
    parsed = domxml.parse(domxml.build(record, "kvm", uuid=UUID, name="esc"))
    assert parsed["name_label"] == 'a <b> & "c" second line'
    assert parsed["name_description"] == "x]]>yz"          # NUL cannot exist in XML: dropped


def test_static_min_rides_in_the_stamp_but_parse_hides_the_reserved_key():
    record = BASE | {"memory_static_min": 128 * MIB}
    xml = domxml.build(record, "kvm", uuid=UUID, name="smin")
    assert domxml.STAMP_STATIC_MIN_KEY in xml
    parsed = domxml.parse(xml)
    assert parsed["memory_static_min"] == 128 * MIB
    assert parsed["stamp"] == BASE["stamp"]


def test_build_without_stamp_writes_no_metadata():
    xml = domxml.build(BASE | {"stamp": {}}, "kvm", uuid=UUID, name="plain")
    assert "<metadata" not in xml
    assert domxml.parse(xml)["stamp"] == {}


def test_build_rejects_a_stamp_key_that_is_not_an_xml_name():
    with pytest.raises(domxml.DomainXMLError):
        domxml.build(BASE | {"stamp": {"bad key": "x"}}, "kvm", uuid=UUID, name="bad")


def test_build_rejects_unknown_hypervisor_and_missing_memory():
    with pytest.raises(domxml.DomainXMLError):
        domxml.build(BASE, "vmware", uuid=UUID, name="x")
    with pytest.raises(domxml.DomainXMLError):
        domxml.build({k: v for k, v in BASE.items() if k != "memory_static_max"}, "kvm", uuid=UUID, name="x")


def test_vnc_is_added_unless_platform_says_false():
    assert "<graphics" in domxml.build(BASE, "kvm", uuid=UUID, name="v")
    no_vnc = BASE | {"platform": BASE["platform"] | {"vnc": "false"}}
    assert "<graphics" not in domxml.build(no_vnc, "kvm", uuid=UUID, name="v")


def test_acpi_false_removes_the_feature_and_parses_back_false():
    record = BASE | {"platform": {"acpi": "false", "apic": "true", "machine": "pc"}}
    assert domxml.parse(domxml.build(record, "kvm", uuid=UUID, name="a"))["platform"]["acpi"] == "false"


LIVE_XML = """<domain type='kvm' id='7'>
  <name>web1</name><uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
  <memory unit='MiB'>1024</memory><currentMemory unit='KiB'>524288</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><boot dev='network'/><boot dev='hd'/></os>
  <on_poweroff>preserve</on_poweroff><on_reboot>rename-restart</on_reboot><on_crash>coredump-destroy</on_crash>
  <devices>
    <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/></interface>
    <interface type='bridge'><mac address='52:54:00:dd:ee:ff'/><source bridge='br0'/></interface>
    <interface type='user'/>
    <disk type='network' device='disk'><driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/web1'/><target dev='sdb' bus='scsi'/></disk>
    <disk type='file' device='floppy'><source file='/srv/boot.img'/><target dev='fda'/></disk>
    <graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'><listen type='address' address='127.0.0.1'/></graphics>
    <graphics type='vnc' port='-1' autoport='yes'/>
    <graphics type='vnc' port='5902'><listen type='address' address='::1'/></graphics>
  </devices>
</domain>"""


def test_parse_reads_a_foreign_live_definition():
    parsed = domxml.parse(LIVE_XML)
    assert parsed["name_label"] == "web1" and parsed["name_description"] == ""
    assert parsed["memory_static_max"] == 1024 * MIB
    assert parsed["memory_dynamic_max"] == parsed["memory_dynamic_min"] == parsed["memory_static_min"] == 512 * MIB
    assert (parsed["VCPUs_max"], parsed["VCPUs_at_startup"]) == (2, 2)
    assert (parsed["actions_after_shutdown"], parsed["actions_after_reboot"],
            parsed["actions_after_crash"]) == ("destroy", "restart", "coredump_and_destroy")
    assert parsed["HVM_boot_policy"] == "BIOS order" and parsed["HVM_boot_params"] == {"order": "nc"}
    assert parsed["platform"] == {"acpi": "false", "apic": "false", "machine": "pc-i440fx-7.2"}
    assert parsed["macs"] == ["52:54:00:aa:bb:cc", "52:54:00:dd:ee:ff"]
    assert parsed["devices"] == [
        parsed_nic(mac="52:54:00:aa:bb:cc", network="default"), parsed_nic(mac="52:54:00:dd:ee:ff", bridge="br0"),
        parsed_nic(type="user"), parsed_disk("pool/web1", type="network", userdevice=1),
        parsed_disk("/srv/boot.img", device="floppy", userdevice=0)]
    assert parsed["consoles"] == [{"protocol": "rfb", "location": "vnc://127.0.0.1:5901"},
                                  {"protocol": "rfb", "location": "vnc://[::1]:5902"}]


@pytest.mark.parametrize("text", ["", "<domain", "<network/>",
                                  "<!DOCTYPE d [<!ENTITY x 'y'>]><domain>&x;</domain>"])
def test_parse_rejects_broken_foreign_and_entity_laden_xml(text):
    with pytest.raises(domxml.DomainXMLError):
        domxml.parse(text)


def test_parse_rejects_unknown_memory_unit():
    with pytest.raises(domxml.DomainXMLError):
        domxml.parse("<domain type='kvm'><name>x</name><memory unit='parsecs'>3</memory></domain>")


# ---- devices the table cannot express --------------------------------------------------------

@pytest.mark.parametrize("hypervisor, overrides, bad, message", [
    ("kvm", {}, [disk("/a.iso", device="cdrom", userdevice=4)], "slot 4 does not exist"),
    ("kvm", {}, [disk(f"/{n}.iso", device="cdrom") for n in range(5)], "no free slot on the ide bus"),
    ("kvm", {}, [disk("/a", userdevice=1), disk("/b", userdevice="1")], "two disks in slot 1"),
    ("kvm", {}, [disk("/a", userdevice=-1)], "userdevice must be a slot"),
    ("kvm", {}, [disk("/a", size=3)], "unknown disk keys ['size']"),
    ("kvm", {}, [disk("/a", format="vmdk")], "disk format must be one of"),
    ("kvm", {}, [disk("images/a.raw")], "absolute host path"),
    ("kvm", {}, [disk("/images/a\nb.raw")], "absolute host path"),
    ("kvm", {}, [disk("")], "a disk needs a path"),
    ("kvm", {}, [disk("/a", readonly="yes")], "readonly must be a bool"),
    ("kvm", {}, [disk("/srv", type="dir")], "disk type must be 'file', 'block' or 'volume'"),
    ("kvm", {}, [nic(network="default", bridge="br0")], "not both"),
    ("kvm", {}, [nic(mac="52:54:00:zz:00:01")], "mac must look like"),
    ("kvm", {}, [nic(bridge=["br0"])], "nic bridge must be a string"),
    ("kvm", {}, [{"kind": "usb"}], "kind 'disk' or 'nic'"),
    ("kvm", {}, {"kind": "disk"}, "devices must be a list"),
    ("lxc", LXC, [disk("/a.iso", device="cdrom", mount="/cd")], "no CD drive"),
    ("lxc", LXC, [disk("/images/a.raw")], "needs 'mount'"),
    ("lxc", LXC, [disk("/images/a.raw", mount="data")], "needs 'mount'"),
    ("lxc", LXC, [disk("/srv", type="dir", format="qcow2", mount="/srv")], "cannot mount a qcow2 dir"),
    ("lxc", LXC, [disk("/a", mount="/a", userdevice=0)], "unknown disk keys ['userdevice']"),
])
def test_build_refuses_devices_it_cannot_express(hypervisor, overrides, bad, message):
    with pytest.raises(domxml.DomainXMLError) as caught:
        domxml.build(BASE | overrides | {"devices": bad}, hypervisor, uuid=UUID, name="bad")
    assert message in str(caught.value)


def test_device_xml_alone_is_what_build_puts_in_the_domain():
    given, _ = VIRTIO_DEVICES
    whole = domxml.build(BASE | {"devices": given}, "qemu", uuid=UUID, name="d")
    alone = ET.fromstring(f"<devices>{devices.to_xml(given, 'virtio')}</devices>")
    canonical = [ET.canonicalize(ET.tostring(e), strip_text=True) for e in ET.fromstring(whole).find("devices")]
    assert [ET.canonicalize(ET.tostring(e), strip_text=True) for e in alone] == canonical[:len(given)]


# ---- how a Xen guest boots when it does not say ----------------------------------------------

NO_BOOT = {"HVM_boot_policy": "", "HVM_boot_params": {}, "PV_bootloader": "", "PV_kernel": "", "platform": {}}


@pytest.mark.parametrize("xen_boot, expected", [
    ("pv", {"domain_type": "pv", "PV_bootloader": "pygrub", "HVM_boot_policy": ""}),
    ("hvm", {"domain_type": "hvm", "PV_bootloader": "", "HVM_boot_policy": "BIOS order"}),
])
def test_a_xen_vm_naming_no_boot_method_follows_xen_boot(xen_boot, expected, tmp_path):
    xml = domxml.build(BASE | NO_BOOT, "xen", uuid=UUID, name="nb", xen_boot=xen_boot)
    parsed = domxml.parse(xml)
    assert {k: parsed[k] for k in expected} == expected
    validate(tmp_path, f"xen-default-{xen_boot}", xml)


@pytest.mark.parametrize("says, domain_type", [
    ({"PV_kernel": "/boot/vmlinuz"}, "pv"), ({"PV_bootloader": "/usr/bin/pvgrub"}, "pv"),
    ({"HVM_boot_policy": "BIOS order"}, "hvm"), ({"domain_type": "pvh", "PV_kernel": "/boot/vmlinuz"}, "pvh")])
def test_a_xen_vm_that_names_its_boot_keeps_it_whatever_xen_boot_says(says, domain_type):
    for xen_boot in domxml.XEN_BOOTS:
        parsed = domxml.parse(domxml.build(BASE | NO_BOOT | says, "xen", uuid=UUID, name="b", xen_boot=xen_boot))
        assert parsed["domain_type"] == domain_type
        assert parsed["PV_bootloader"] == says.get("PV_bootloader", "")
        assert all(parsed[k] == v for k, v in says.items())


def test_xen_boot_must_be_pv_or_hvm():
    with pytest.raises(domxml.DomainXMLError, match="xen_boot"):
        domxml.build(BASE | NO_BOOT, "xen", uuid=UUID, name="x", xen_boot="pvh")


def test_xenapi_conf_sets_xen_boot_and_refuses_other_words(tmp_path):
    path = tmp_path / "xenapi.conf"
    assert config.load(None).xen_boot == "pv"
    path.write_text("[libvirt]\nxen_boot = hvm\n")
    assert config.load(str(path)).xen_boot == "hvm"
    path.write_text("[libvirt]\nxen_boot = pvh\n")
    with pytest.raises(ValueError, match="xen_boot = 'pvh' is not one of pv, hvm"):
        config.load(str(path))


# ---- LXC never shares the host's root --------------------------------------------------------

@pytest.mark.parametrize("root", [None, "", "/", "//", "relative/dir"])
def test_an_lxc_container_without_a_root_of_its_own_is_refused(root):
    platform = {"init": "/sbin/init"} | ({"lxc-root": root} if root is not None else {})
    with pytest.raises(domxml.DomainXMLError, match="lxc-root"):
        domxml.build(BASE | LXC | {"platform": platform}, "lxc", uuid=UUID, name="c")


def test_libvirt_test_driver_takes_the_devices_and_gives_them_back():
    """A real libvirt driver parses what the builder wrote and reports it in the same neutral form
    (with the MACs libvirt generated for the NICs that had none; libvirt keeps disks sorted by bus)."""
    import libvirt
    import uuid as uuidlib
    given, expected = VIRTIO_DEVICES
    conn = libvirt.open("test:///default")
    xml = domxml.build(BASE | {"devices": given}, "test", uuid=str(uuidlib.uuid4()), name="devices-back")
    dom = conn.defineXML(xml)
    try:
        back = domxml.parse(dom.XMLDesc())["devices"]
    finally:
        dom.undefine()
        conn.close()
    assert all(d["mac"].startswith("52:54:00:") for d in back if d["kind"] == "nic")
    nics = [n for n in expected if n["kind"] == "nic"]
    assert [n | {"mac": ""} if not e["mac"] else n for n, e in zip(back[-len(nics):], nics)] == nics
    assert sorted(back[:-len(nics)], key=repr) == sorted(expected[:-len(nics)], key=repr)


def test_a_clone_would_share_writable_disks_and_filesystems_but_not_read_only_ones():
    from xenapi.backend import rewrite
    hypervisor, record, _ = record_for("lxc-devices")
    xml = domxml.build(record, hypervisor, uuid="6b3c3c1e-0000-4000-8000-000000000001", name="c")
    shared = rewrite.writable_disks(xml)
    assert shared and all(s.startswith("/") for s in shared)          # the root mount is among them
    ro = ET.fromstring(xml)
    for fs in ro.findall("devices/filesystem") + ro.findall("devices/disk"):
        ET.SubElement(fs, "readonly")
    assert rewrite.writable_disks(ET.tostring(ro, encoding="unicode")) == []
