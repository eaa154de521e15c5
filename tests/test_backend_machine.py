"""machine: this machine's own facts (/proc, /sys, /dev/kvm) and the URI they decide."""
from __future__ import annotations

import os

import pytest

from xenapi.backend import machine


@pytest.mark.parametrize("uri,local,this", [
    ("test:///default", True, False), ("test+unix:///default?socket=/tmp/s", True, False),
    ("qemu:///system", True, True), ("qemu:///session", True, True), ("xen:///system", True, True),
    ("qemu+unix:///system?socket=/run/lab/libvirt-sock", True, True),
    ("qemu+ssh://root@h1/system", False, False), ("qemu+tls://h2.example/system", False, False),
    ("qemu+tcp://localhost/system", False, False), ("qemu://h3/system", False, False)])
def test_uri_locality(uri, local, this):
    assert machine.is_local_uri(uri) is local
    assert machine.is_this_machine(uri) is this


def test_detect_hypervisor_matches_what_this_machine_has():
    hypervisor = machine.detect_hypervisor()
    xen_dom0 = os.path.exists("/proc/xen/capabilities") and "control_d" in open("/proc/xen/capabilities").read()
    assert hypervisor == ("xen" if xen_dom0 else "kvm" if machine.kvm_usable() else "qemu")


def test_default_uri_per_hypervisor():
    assert machine.default_uri("xen") == "xen:///system"
    assert machine.default_uri("kvm") == machine.default_uri("qemu") == "qemu:///system"


def test_auto_resolves_through_detection_and_other_uris_stay():
    assert machine.resolve_uri("auto") == machine.default_uri(machine.detect_hypervisor())
    assert machine.resolve_uri("test:///default") == "test:///default"
    assert machine.resolve_uri("qemu+ssh://root@h1/system") == "qemu+ssh://root@h1/system"


def _nic(root, name: str, speed: str | None, physical: bool = True) -> None:
    (root / name).mkdir()
    if physical:
        (root / name / "device").mkdir()
    if speed is not None:
        (root / name / "speed").write_text(speed)


def test_nic_speeds_lists_physical_nics_with_unknown_speeds_as_none(tmp_path):
    _nic(tmp_path, "eth0", "1000\n")
    _nic(tmp_path, "eth1", "-1\n")           # no link
    _nic(tmp_path, "eth2", None)              # EINVAL on read: no speed file here
    _nic(tmp_path, "wlan0", "oops")
    _nic(tmp_path, "lo", None, physical=False)
    _nic(tmp_path, "virbr0", "10000", physical=False)
    assert machine.nic_speeds(tmp_path) == {"eth0": 1000, "eth1": None, "eth2": None, "wlan0": None}
    assert machine.nic_speeds(tmp_path / "absent") == {}


@pytest.mark.parametrize("text,speed", [("1000", 1000), ("25000", 25000), ("-1", None), ("0", None),
                                        ("4294967295", None), ("", None), (None, None), ("fast", None)])
def test_known_speed(text, speed):
    assert machine.known_speed(text) == speed


def test_cpuinfo_reads_the_first_processor_block(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 167\n"
                    "model name\t: Intel(R) Xeon(R) Processor\nstepping\t: 1\nflags\t\t: fpu avx2\n\n"
                    "processor\t: 1\nvendor_id\t: SomethingElse\n")
    info = machine.cpuinfo(path)
    assert info["vendor_id"] == "GenuineIntel" and info["model name"] == "Intel(R) Xeon(R) Processor"
    assert (info["cpu family"], info["model"], info["stepping"], info["flags"]) == ("6", "167", "1", "fpu avx2")
    assert machine.cpuinfo(tmp_path / "absent") == {}


def test_host_tpm_present_looks_for_a_kernel_tpm_device(tmp_path):
    assert not machine.host_tpm_present(tmp_path / "absent")
    (tmp_path / "tpmrm0").mkdir()             # the resource manager alone is not a TPM device
    assert not machine.host_tpm_present(tmp_path)
    (tmp_path / "tpm0").mkdir()
    assert machine.host_tpm_present(tmp_path)
