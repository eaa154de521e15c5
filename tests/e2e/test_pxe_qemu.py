"""A ``pxe:`` template booting for real over the network its template names.

The TFTP root is a PXELINUX tree of this test's (pxelinux.0 and ldlinux.c32 from the pxelinux and
syslinux-common packages, the tiny guest's kernel and initrd, ``pxelinux.cfg/tiny``, and a
``pxelinux.cfg/default`` booting the same kernel with another command line, which must not be the
one used).  The network is made through the API:
isolated, the host at .1 of a private /24 whose /16 is otherwise unreachable meanwhile, libvirt's
dnsmasq serving DHCP (with ``pxelinux.0`` as boot file) and TFTP on that bridge only.  A ``pxe:tiny``
template (no kernel, BIOS order "n") is cloned and provisioned: the VM gets a VIF on the network
and ``pxelinux.cfg/01-<its MAC>``; started, QEMU's iPXE ROM gets an address and pxelinux.0 from
dnsmasq, PXELINUX (on the serial console) reads the per-MAC file, loads the kernel and initrd over
TFTP, and the tiny guest comes up.  VM.destroy removes the per-MAC file.
"""
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import XenAPI

from qemu_e2e import start_with_console, tiny_vm_record

PREFIX = "10.238"           # 10.238.<n>.0/24 for this test; the rest of 10.238/16 is unreachable meanwhile
PXELINUX = Path("/usr/lib/PXELINUX/pxelinux.0")
LDLINUX = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
BOOT_TIMEOUT = 240          # TCG: ~8 MB of kernel and initrd over TFTP; generous, not a measurement


def sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def tftp_root(tiny_guest) -> Path:
    """A PXELINUX tree that libvirt's dnsmasq (an unprivileged user) can read: outside pytest's
    private tmp directories, directories 0755, files 0644."""
    root = Path(tempfile.mkdtemp(prefix="xenapi-e2e-pxe-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    (root / "pxelinux.cfg").mkdir(mode=0o755)
    for source, name in ((PXELINUX, "pxelinux.0"), (LDLINUX, "ldlinux.c32"),
                         (tiny_guest.kernel, "vmlinuz"), (tiny_guest.initrd, "initrd.gz")):
        shutil.copyfile(source, root / name)
    # the same kernel either way; the command line says which configuration PXELINUX used
    for name in ("tiny", "default"):
        (root / "pxelinux.cfg" / name).write_text(
            f"SERIAL 0 115200\nDEFAULT tiny\nLABEL tiny\n  KERNEL vmlinuz\n  INITRD initrd.gz\n"
            f"  APPEND {tiny_guest.cmdline} xenapi_pxe_config={name}\n")
    for path in root.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return root


def test_a_pxe_template_boots_the_tiny_guest_over_its_network(start_xenapi, tiny_guest, tmp_path):
    assert PXELINUX.is_file() and LDLINUX.is_file(), "pxelinux and syslinux-common are installed by scripts/setup.sh"
    subnet = f"{PREFIX}.{secrets.randbelow(200) + 20}"
    root = tftp_root(tiny_guest)
    sh("ip", "route", "add", "unreachable", f"{PREFIX}.0.0/16", check=False)
    server = start_xenapi()
    x = server.x
    net = template = vm = console = None
    try:
        net = x.network.create({"name_label": "pxe e2e", "name_description": "", "MTU": "1500", "other_config": {
            "ipv4": f"{subnet}.1/24", "dhcp": f"{subnet}.10-{subnet}.50", "tftp_root": str(root),
            "boot_file": "pxelinux.0"}})
        bridge = x.network.get_bridge(net)
        assert f"inet {subnet}.1/24" in sh("ip", "-4", "-o", "addr", "show", "dev", bridge).stdout
        template = x.VM.create({**tiny_vm_record(tiny_guest, "tiny over PXE"), "is_a_template": True,
                                "PV_kernel": "", "PV_ramdisk": "", "PV_args": "",
                                "HVM_boot_policy": "BIOS order", "HVM_boot_params": {"order": "n"},
                                "other_config": {"template": "pxe:tiny", "pxe_config": "tiny",
                                                 "pxe_network": x.network.get_uuid(net)}})
        server.created.append(template)
        vm = x.VM.clone(template, "pxe guest")
        server.created.append(vm)
        x.VM.provision(vm)
        vifs = [x.VIF.get_record(v) for v in x.VM.get_VIFs(vm)]
        assert [(v["network"], v["device"]) for v in vifs] == [(net, "0")]
        per_mac = root / "pxelinux.cfg" / ("01-" + vifs[0]["MAC"].replace(":", "-"))
        assert per_mac.read_text().endswith((root / "pxelinux.cfg" / "tiny").read_text())

        log = tmp_path / "pxe-serial.log"
        started = time.monotonic()
        console = start_with_console(x, vm, log)
        tiny_guest.wait_for_serial(log, tiny_guest.ready_text, BOOT_TIMEOUT)
        took = time.monotonic() - started
        serial = console.text()
        assert "PXELINUX" in serial and "Loading vmlinuz... ok" in serial, serial[:3000]
        command_line = next(line for line in serial.splitlines() if "Command line:" in line)
        assert "xenapi_pxe_config=tiny" in command_line, command_line    # the per-MAC copy, not default
        print(f"\nPXE boot of the tiny guest: up {took:.1f} s after VM.start (TCG)")

        x.VM.hard_shutdown(vm)
        x.VM.destroy(vm)
        server.created.remove(vm)
        assert not per_mac.exists()
        assert sorted(p.name for p in (root / "pxelinux.cfg").iterdir()) == ["default", "tiny"]
    finally:
        if console is not None:
            console.close()
        for ref in (vm, template):
            if ref is None:
                continue
            try:
                if x.VM.get_power_state(ref) != "Halted":
                    x.VM.hard_shutdown(ref)
                x.VM.destroy(ref)
                server.created.remove(ref)
            except XenAPI.Failure:
                pass
        if net is not None:
            x.network.destroy(net)
        shutil.rmtree(root, ignore_errors=True)
        sh("ip", "route", "del", "unreachable", f"{PREFIX}.0.0/16", check=False)
