"""domxml: build() output is schema-valid per hypervisor, and parse(build(record)) gives the record back."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from xenapi.backend import domxml

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

# name -> (hypervisor, record overrides, fields expected on parse beyond the record's own)
CASES = {
    "kvm-direct-kernel": ("kvm", DIRECT_KERNEL, {"domain_type": "hvm", "virt_type": "kvm"}),
    "qemu-bios-order": ("qemu", {}, {"domain_type": "hvm", "virt_type": "qemu"}),
    "test": ("test", DIRECT_KERNEL, {"domain_type": "hvm", "virt_type": "test"}),
    "xen-pv-kernel": ("xen", DIRECT_KERNEL | {"platform": {}}, {"domain_type": "pv"}),
    "xen-pv-pygrub": ("xen", {"PV_bootloader": "pygrub", "PV_bootloader_args": "-q", "HVM_boot_policy": "",
                              "HVM_boot_params": {}, "platform": {}}, {"domain_type": "pv"}),
    "xen-pvh": ("xen", DIRECT_KERNEL | {"platform": {}, "domain_type": "pvh"}, {"domain_type": "pvh"}),
    "xen-hvm": ("xen", {"platform": {"acpi": "true", "apic": "true", "pae": "true", "hap": "true",
                                     "viridian": "true"}}, {"domain_type": "hvm", "virt_type": "xen"}),
    "lxc": ("lxc", {"HVM_boot_policy": "", "HVM_boot_params": {}, "PV_args": "--verbose 'two words'",
                    "platform": {"init": "/usr/sbin/init", "lxc-root": "/srv/containers/web1"}},
            {"domain_type": "unspecified", "virt_type": "lxc"}),
}
ROUND_TRIP_FIELDS = [k for k in BASE] + ["domain_type"]


def record_for(case: str) -> tuple[str, dict, dict]:
    hypervisor, overrides, expected_extra = CASES[case]
    return hypervisor, BASE | overrides, expected_extra


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="virt-xml-validate not installed")
@pytest.mark.parametrize("case", CASES)
def test_build_validates_against_libvirt_domain_schema(case, tmp_path):
    hypervisor, record, _ = record_for(case)
    path = tmp_path / f"{case}.xml"
    path.write_text(domxml.build(record, hypervisor, uuid=UUID, name=f"vm-{case}"))
    result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + path.read_text()


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
