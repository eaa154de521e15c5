"""A tiny real Linux guest for the end-to-end tests.

Built from two Debian packages (the ``linux-image-*-cloud-amd64`` kernel that the
``linux-image-cloud-amd64`` metapackage points at, and ``busybox-static``): the kernel plus a
~1.5 MiB busybox initramfs, booted directly (no disk, no bootloader), serial console to a file.
It boots in ~3 s under TCG, prints ``tiny guest up`` on its serial console, then its uptime
every 2 s, and answers the ACPI power button with ``poweroff`` -- so libvirt's ``shutdown``
(clean shutdown) and ``reboot`` (the guest powers off and libvirt restarts it) work for real.

It also has the drivers of the disks the server gives a guest (virtio-blk, hot-plugged too, and
the IDE CD drive of the ``pc`` machine), loaded right after it is up (they take about a second
under TCG, which the ready line does not wait for), and then prints the block devices it has,
with their sizes in 512-byte sectors, when they change (checked at each 2 s tick):
``block devices: sr0=88 vda=2048``
(``block_devices(text)`` reads the last such line), and the medium in the CD drive, the volume
ID of its ISO 9660 file system, or ``none`` (an empty drive, whose sr0 reports 2097151 sectors):
``sr0 medium: <ID>`` (``cd_medium(text)``).  Each tick reads the drive, as udev's polling would
elsewhere, so the kernel notices a medium put in or taken out.

It has a NIC driver too (virtio-net, hot-plugged NICs included), loaded after the block drivers;
``lo`` is up and IPv6 off (the guest sends nothing a test did not ask for).  Once the driver is in,
each tick prints its network devices (lo aside) with their MACs when they change:
``net devices: eth0=52:54:00:12:34:56 eth1=52:54:00:ab:cd:ef`` (``net_devices(text)``).

And a command channel on the same console (``guest_net.GuestShell``): a line
``@xe <id> <command>`` typed on it runs the command in sh, answered with ``@xe <id> begin``, each
output line as ``@xe <id> | <line>``, and ``@xe <id> end rc=<status>``; the guest prints
``@xe ready`` (after the ready line) once it reads commands.  It turns the console's echo off and
keeps the kernel's console messages to errors (``dmesg -n 4``) from then on, so that nothing lands
inside a framed line.  ``domain_xml(..., serial="pty")`` gives a domain a pty console (as the
server's VMs have) instead of the file.

With ``ignore_acpi=1`` on the kernel command line (``TinyGuest.domain_xml(...,
ignore_acpi=True)``) the same initrd logs ``power button: ignored`` and keeps running, to test
clean-shutdown timeouts and their fallbacks.  With ``poweroff_after=N``
(``domain_xml(..., poweroff_after=N)``) it powers itself off N seconds after it is up, a change
nobody asked libvirt for.  Every domain gets a VNC display on 127.0.0.1 (``vnc=False`` drops it),
as the server's own VMs do, so console records can be checked against what libvirt assigned.

Facts this relies on (found the hard way, see shared/lab/README.md):
- ``button.ko`` and ``evdev.ko`` are modules in this kernel; load ``button`` first so that
  ``evdev`` binds the power button's input device when it loads.
- busybox ``acpid`` exits at once unless ``/var/log`` and ``/var/run`` exist; its default map
  runs ``<confdir>/PWRF/00000080`` on the power button.
- A press before acpid holds the input devices is lost, so the guest reports ready only after it
  does: a test may press the button as soon as it has seen ``tiny guest up``.
- Below 256 MiB the kernel may fail ("Invalid physical address chosen"); ``nokaslr`` avoids a
  slow KASLR path under TCG.
- Domain type ``qemu`` (TCG), not ``kvm``: under this sandbox's nested ``/dev/kvm``, Linux guests
  with ``type='kvm'`` hang after decompression or fail with an MSR assertion (host-passthrough);
  only boot-sector guests run under KVM here. Production hosts use KVM; the management code
  must not care, and the tests use TCG.

Used by ``tests/e2e/conftest.py`` (fixture ``tiny_guest``) and by ``scripts/setup.sh``
(``python tests/e2e/guest.py download``). Standard library only, so it runs with any Python 3.

CLI: ``python tests/e2e/guest.py download`` (fetch the .debs into the cache),
``python tests/e2e/guest.py build`` (build, print the paths and an example domain XML).
"""

from __future__ import annotations

import dataclasses
import fcntl
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XENAPI_GUEST_CACHE", REPO / ".cache" / "guest"))
KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX = "busybox-static"
OLD_BUILD_KEEP_SECONDS = 86400  # superseded builds are removed after a day
BUILD_FORMAT = 3  # bump when the build procedure changes (the init text is hashed anyway)

READY_TEXT = "tiny guest up"
POWEROFF_TEXT = "power button: powering off"
IGNORED_TEXT = "power button: ignored"
SELF_POWEROFF_TEXT = "powering off by itself"
CMDLINE = "console=ttyS0 panic=-1 nokaslr"
IGNORE_ACPI_ARG = "ignore_acpi=1"
VNC_XML = "    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>\n"
BLOCK_DEVICES_TEXT = "block devices:"
CD_MEDIUM_TEXT = "sr0 medium:"
NET_DEVICES_TEXT = "net devices:"
COMMAND_PREFIX = "@xe"      # the command channel's lines (guest_net.GuestShell)
COMMAND_READY_TEXT = "@xe ready"
# Block drivers (modules in this kernel), in load order: each after the modules it depends on.
# virtio-blk for the server's disks (PCI hot-plug itself, acpiphp, is built in); the PIIX IDE
# controller, SCSI and sr for the CD drive.
BLOCK_MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
                 "virtio_blk", "scsi_common", "scsi_mod", "libata", "ata_piix", "cdrom", "sr_mod")
# The NIC driver, loaded after the block drivers (it needs virtio_pci): virtio-net and what it
# depends on in this kernel (``modinfo -F depends virtio_net.ko``: virtio_ring, virtio, net_failover;
# net_failover: failover).
NET_MODULES = ("failover", "net_failover", "virtio_net")

INIT = r"""#!/bin/busybox sh
# /init of the xenapi e2e tiny guest (tests/e2e/guest.py)
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
# loopback up; no IPv6 unless a test turns it on (no router solicitations or DAD of its own: the
# guest sends only what a test makes it send)
ip link set lo up
echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
# button before evdev, so that evdev binds the power button's input device when it loads
insmod /lib/button.ko; insmod /lib/evdev.ko
# busybox acpid exits at once without /var/log and /var/run
mkdir -p /etc/acpi/PWRF /var/run /var/log
case " $(cat /proc/cmdline) " in
  *" ignore_acpi=1 "*)
    mode=ignore
    printf '#!/bin/sh\necho "power button: ignored" >/dev/console\n' > /etc/acpi/PWRF/00000080 ;;
  *)
    mode=poweroff
    printf '#!/bin/sh\necho "power button: powering off" >/dev/console\npoweroff -f\n' > /etc/acpi/PWRF/00000080 ;;
esac
chmod +x /etc/acpi/PWRF/00000080
# (acpid -f logs to /var/log/acpid.log, and its actions' output goes there: they write to
# /dev/console themselves)
acpid -f -c /etc/acpi &
# ready only once acpid holds the input devices: a press before that would be lost
while ! ls -l /proc/$!/fd 2>/dev/null | grep -q input; do sleep 0.1; done
echo "tiny guest up (power button: $mode)"
# the disk and CD drivers, loaded while the guest already runs (about a second under TCG): the block
# device lines below begin once they are in; then the NIC driver, and the net device lines
(for m in @BLOCK_MODULES@; do insmod /lib/$m.ko; done; : > /tmp/block-drivers
 for m in @NET_MODULES@; do insmod /lib/$m.ko; done; : > /tmp/net-drivers) &
# The command channel (tests/e2e/guest_net.py): a line "@xe <id> <command>" typed on the console
# runs <command> in sh (stdin /dev/null, one at a time), answered with "@xe <id> begin", each line
# of its output as "@xe <id> | <line>", then "@xe <id> end rc=<status>"; other input is ignored.
# No echo of the input; the kernel's console messages only from errors up (they could land inside
# a framed line).
stty -F /dev/ttyS0 -echo 2>/dev/null; dmesg -n 4
(cr=$(printf '\r')
 while IFS= read -r line; do
   line=${line%$cr}
   case "$line" in
     "@xe "*" "*)
       rest=${line#@xe }; id=${rest%% *}; cmd=${rest#* }
       echo "@xe $id begin"
       sh -c "$cmd" </dev/null >/tmp/xe-out 2>&1; rc=$?
       while IFS= read -r out || [ -n "$out" ]; do printf '@xe %s | %s\n' "$id" "$out"; done </tmp/xe-out
       rm -f /tmp/xe-out
       echo "@xe $id end rc=$rc" ;;
   esac
 done </dev/ttyS0) &
echo "@xe ready"
# poweroff_after=N: the guest powers itself off N seconds after it is up (no request from outside)
for arg in $(cat /proc/cmdline); do
  case "$arg" in poweroff_after=*) (sleep "${arg#*=}"; echo "powering off by itself"; poweroff -f) & ;; esac
done
# each block device and its size in 512-byte sectors, and the CD in sr0 (the volume ID of its
# ISO 9660 file system: 32 bytes at offset 40 of sector 16; reading it makes the kernel look at
# the drive), each printed when it changes
blocks() { for d in /sys/block/*; do [ -e "$d/size" ] && printf ' %s=%s' "${d##*/}" "$(cat "$d/size")"; done; }
# each network device but lo, with its MAC address, printed when the set changes
nets() { for d in /sys/class/net/*; do [ "${d##*/}" = lo ] || printf ' %s=%s' "${d##*/}" "$(cat "$d/address")"; done; }
last_blocks=- last_medium=- last_nets=-
while true; do
  echo "uptime $(cut -d' ' -f1 /proc/uptime)"
  [ -e /tmp/block-drivers ] || { sleep 2; continue; }
  if [ -e /dev/sr0 ]; then
    medium=$(dd if=/dev/sr0 bs=2048 skip=16 count=1 2>/dev/null | dd bs=1 skip=40 count=32 2>/dev/null | sed 's/ *$//')
    if [ "${medium:-none}" != "$last_medium" ]; then
      last_medium=${medium:-none}
      echo "sr0 medium: $last_medium"
    fi
  fi
  now="$(blocks)"
  if [ "$now" != "$last_blocks" ]; then
    last_blocks=$now
    echo "block devices:$now"
  fi
  if [ -e /tmp/net-drivers ]; then
    now="$(nets)"
    if [ "$now" != "$last_nets" ]; then
      last_nets=$now
      echo "net devices:$now"
    fi
  fi
  sleep 2
done
""".replace("@BLOCK_MODULES@", " ".join(BLOCK_MODULES)).replace("@NET_MODULES@", " ".join(NET_MODULES))


class GuestBuildError(RuntimeError):
    pass


def _log(msg: str) -> None:
    print(f"[guest] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- packages ---

def _debs_dir(cache: Path) -> Path:
    return cache / "debs"


def find_debs(cache: Path = CACHE) -> tuple[Path, Path] | None:
    """(kernel .deb, busybox-static .deb) in the cache, or None."""
    d = _debs_dir(cache)
    kernels = sorted(d.glob("linux-image-*-cloud-amd64_*.deb"))
    busyboxes = sorted(d.glob(f"{BUSYBOX}_*.deb"))
    if kernels and busyboxes:
        return kernels[-1], busyboxes[-1]
    return None


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _apt_update() -> None:
    _log("apt-get update")
    r = _run(["apt-get", "update", "-q"])
    if r.returncode != 0:
        raise GuestBuildError(f"apt-get update failed:\n{r.stdout}{r.stderr}")


def _kernel_package() -> str | None:
    r = _run(["apt-cache", "depends", KERNEL_META])
    m = re.search(r"Depends: (linux-image-[0-9]\S*)", r.stdout)
    return m.group(1) if m else None


def download_debs(cache: Path = CACHE) -> tuple[Path, Path]:
    """Fetch the kernel and busybox-static .debs with ``apt-get download`` (once)."""
    found = find_debs(cache)
    if found:
        return found
    d = _debs_dir(cache)
    d.mkdir(parents=True, exist_ok=True)
    with _locked(cache):
        found = find_debs(cache)
        if found:
            return found
        updated = False
        kpkg = _kernel_package()
        if not kpkg:  # no package lists yet (fresh machine)
            _apt_update()
            updated = True
            kpkg = _kernel_package()
            if not kpkg:
                raise GuestBuildError(f"apt-cache depends {KERNEL_META}: no kernel package found")
        tmp = Path(tempfile.mkdtemp(prefix="download-", dir=cache))
        try:
            while True:
                _log(f"apt-get download {kpkg} {BUSYBOX}")
                r = _run(["apt-get", "download", "-q", kpkg, BUSYBOX], cwd=tmp)
                if r.returncode == 0:
                    break
                if updated:  # stale package lists (a version gone from the mirror): update once
                    raise GuestBuildError(f"apt-get download failed:\n{r.stdout}{r.stderr}")
                _apt_update()
                updated = True
                kpkg = _kernel_package() or kpkg
            for old in d.glob("*.deb"):
                old.unlink()
            for f in tmp.glob("*.deb"):
                f.rename(d / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    found = find_debs(cache)
    if not found:
        raise GuestBuildError(f"apt-get download left no packages in {d}")
    return found


# ------------------------------------------------------------------------------ build ---

class _locked:
    """An exclusive flock on CACHE/.lock (concurrent test sessions build only once)."""

    def __init__(self, cache: Path):
        cache.mkdir(parents=True, exist_ok=True)
        self.path = cache / ".lock"

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def extract(deb: Path, want: re.Pattern) -> dict[str, bytes]:
    """Members of a .deb's data tarball whose path matches ``want``: {path: bytes}."""
    p = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=p.stdout, mode="r|") as tar:
            for m in tar:
                if m.isfile() and want.search(m.name):
                    out[m.name] = tar.extractfile(m).read()
    finally:
        p.stdout.close()
        if p.wait() != 0:
            raise GuestBuildError(f"dpkg-deb --fsys-tarfile {deb} failed")
    return out


def busybox_binary(deb: Path) -> bytes:
    """The static busybox of a busybox-static .deb (the guest's init, and an LXC container's)."""
    found = extract(deb, re.compile(r"^\./(usr/)?bin/busybox$"))
    if not found:
        raise GuestBuildError(f"no bin/busybox in {deb.name}")
    return next(iter(found.values()))


def _module(files: dict[str, bytes], name: str) -> bytes:
    for path, data in files.items():
        base = path.rsplit("/", 1)[-1]
        if base == f"{name}.ko":
            return data
        if base == f"{name}.ko.xz":
            return lzma.decompress(data)
    raise GuestBuildError(f"kernel module {name}.ko not found in the kernel package")


def _cpio_newc(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """An uncompressed newc cpio archive of (path, mode, data, rdev) entries, mtime 0."""
    buf = io.BytesIO()

    def pad(n: int) -> None:
        buf.write(b"\0" * (-n % 4))

    for ino, (name, mode, data, rdev) in enumerate(
            entries + [("TRAILER!!!", 0, b"", 0)], start=1):
        nb = name.encode() + b"\0"
        fields = [ino if name != "TRAILER!!!" else 0, mode, 0, 0,
                  2 if mode & 0o170000 == 0o040000 else 1, 0, len(data),
                  0, 0, rdev >> 8, rdev & 0xFF, len(nb), 0]
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        buf.write(hdr + nb)
        pad(len(hdr) + len(nb))
        buf.write(data)
        pad(len(data))
    return buf.getvalue()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _build_into(out: Path, kernel_deb: Path, busybox_deb: Path) -> None:
    kfiles = extract(kernel_deb, re.compile(
        r"^\./boot/vmlinuz-|/kernel/drivers/(acpi/button|input/evdev)\.ko(\.xz)?$"
        rf"|/kernel/(drivers|net)/.*/({'|'.join(BLOCK_MODULES + NET_MODULES)})\.ko(\.xz)?$"))
    vmlinuz = [v for k, v in kfiles.items() if "/boot/vmlinuz-" in k]
    if len(vmlinuz) != 1:
        raise GuestBuildError(f"expected one /boot/vmlinuz-* in {kernel_deb.name}")
    busybox = busybox_binary(busybox_deb)
    D, F, X = 0o040755, 0o100644, 0o100755
    entries = [(d, D, b"", 0) for d in ("bin", "dev", "etc", "lib", "proc", "sys", "tmp", "var")]
    entries += [
        ("dev/console", 0o020600, b"", (5 << 8) | 1),
        ("bin/busybox", X, busybox, 0),
        ("lib/button.ko", F, _module(kfiles, "button"), 0),
        ("lib/evdev.ko", F, _module(kfiles, "evdev"), 0),
        *((f"lib/{name}.ko", F, _module(kfiles, name), 0) for name in BLOCK_MODULES + NET_MODULES),
        ("init", X, INIT.encode(), 0),
    ]
    (out / "vmlinuz").write_bytes(vmlinuz[0])
    (out / "initrd.gz").write_bytes(gzip.compress(_cpio_newc(entries), compresslevel=6, mtime=0))
    (out / "SOURCES").write_text(f"{kernel_deb.name}\n{busybox_deb.name}\n")


@dataclasses.dataclass(frozen=True)
class TinyGuest:
    kernel: Path
    initrd: Path
    cmdline: str = CMDLINE
    ready_text: str = READY_TEXT

    @property
    def cmdline_ignore_acpi(self) -> str:
        return f"{self.cmdline} {IGNORE_ACPI_ARG}"

    def domain_xml(self, name: str, serial_log: str | os.PathLike, virt_type: str = "qemu", *,
                   ignore_acpi: bool = False, memory_mib: int = 256, vcpus: int = 1,
                   uuid: str | None = None, extra_devices: str = "",
                   on_poweroff: str = "destroy", on_reboot: str = "restart",
                   on_crash: str = "destroy", vnc: bool = True,
                   poweroff_after: float | None = None, serial: str = "file") -> str:
        """libvirt domain XML booting this guest; serial console written to ``serial_log``.

        ``virt_type`` 'qemu' (TCG) is the one that works for Linux guests under this sandbox's
        nested KVM (see the module docstring). ``ignore_acpi`` selects the init that ignores
        the power button. ``extra_devices`` is raw XML put inside <devices>. ``vnc`` adds a VNC
        display (autoport, 127.0.0.1); ``poweroff_after`` makes the guest power itself off that
        many seconds after it is up.  ``serial="pty"`` gives it a pty serial console instead of
        the file (``serial_log`` unused, may be None), as the server's own VMs have: read and
        typed into with ``qemu_e2e.SerialConsole`` (the command channel of ``guest_net``).
        """
        if memory_mib < 256:
            raise ValueError("the tiny guest needs >= 256 MiB (the kernel may fail below)")
        cmdline = self.cmdline_ignore_acpi if ignore_acpi else self.cmdline
        if poweroff_after is not None:
            cmdline += f" poweroff_after={float(poweroff_after):g}"
        if vnc:
            extra_devices = VNC_XML + extra_devices
        uuid_xml = f"\n  <uuid>{escape(uuid)}</uuid>" if uuid else ""
        if serial == "file":
            serial_xml = f"""    <serial type='file'>
      <source path={quoteattr(str(serial_log))}/>
      <target port='0'/>
    </serial>"""
        elif serial == "pty":
            serial_xml = """    <serial type='pty'>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>"""
        else:
            raise ValueError(f"serial must be 'file' or 'pty', not {serial!r}")
        return f"""<domain type={quoteattr(virt_type)}>
  <name>{escape(name)}</name>{uuid_xml}
  <memory unit='MiB'>{int(memory_mib)}</memory>
  <vcpu>{int(vcpus)}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(self.kernel))}</kernel>
    <initrd>{escape(str(self.initrd))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>{escape(on_poweroff)}</on_poweroff>
  <on_reboot>{escape(on_reboot)}</on_reboot>
  <on_crash>{escape(on_crash)}</on_crash>
  <devices>
{serial_xml}
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
{extra_devices}
  </devices>
</domain>
"""

    @staticmethod
    def wait_for_serial(path, text, timeout=60.0, *, offset=0, count=1):
        return wait_for_serial(path, text, timeout, offset=offset, count=count)


def wait_for_serial(path: str | os.PathLike, text: str, timeout: float = 60.0, *,
                    offset: int = 0, count: int = 1) -> str:
    """Wait until ``text`` occurs ``count`` times in the file after byte ``offset``.

    Returns the file's content from ``offset`` (decoded, errors replaced). Raises TimeoutError
    with the log's tail if it does not appear within ``timeout`` seconds. (QEMU truncates a
    file serial log when the domain starts; a guest reboot keeps appending.)
    """
    deadline = time.monotonic() + timeout
    content = ""
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                content = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            content = ""
        if content.count(text) >= count:
            return content
        if time.monotonic() >= deadline:
            tail = "\n".join(content.splitlines()[-25:])
            raise TimeoutError(f"{text!r} (x{count}) not seen in {path} within {timeout} s; "
                               f"last lines:\n{tail}")
        time.sleep(0.1)


def block_devices(text: str) -> dict[str, int] | None:
    """The guest's block devices in the last complete ``block devices:`` line of its serial output
    ``text`` (a console copied mid-line ends in half a line): {name: size in 512-byte sectors};
    None if it printed none yet."""
    complete = text if text.endswith("\n") else text.rpartition("\n")[0]
    lines = [line for line in complete.splitlines() if line.startswith(BLOCK_DEVICES_TEXT)]
    if not lines:
        return None
    entries = lines[-1][len(BLOCK_DEVICES_TEXT):].split()
    return {name: int(size) for name, _, size in (entry.partition("=") for entry in entries)}


def cd_medium(text: str) -> str | None:
    """The medium in the guest's CD drive in the last ``sr0 medium:`` line of ``text``: its ISO 9660
    volume ID, "none" for an empty drive; None if it printed none yet."""
    lines = [line for line in text.splitlines() if line.startswith(CD_MEDIUM_TEXT)]
    return lines[-1][len(CD_MEDIUM_TEXT):].strip() if lines else None


def net_devices(text: str) -> dict[str, str] | None:
    """The guest's network devices (lo aside) in the last ``net devices:`` line of its serial output
    ``text``: {name: MAC address}; None if it printed none yet (its NIC driver not loaded yet)."""
    lines = [line.strip() for line in text.splitlines() if line.startswith(NET_DEVICES_TEXT)]
    if not lines:
        return None
    entries = lines[-1][len(NET_DEVICES_TEXT):].split()
    return {name: mac for name, _, mac in (entry.partition("=") for entry in entries)}


def build(cache: Path = CACHE, download: bool = True) -> TinyGuest:
    """Build the guest once into ``cache/build-<key>/`` (key: inputs' hashes) and return it.

    Downloads the .debs first if they are not in the cache (``download=True``).
    """
    debs = find_debs(cache) or (download_debs(cache) if download else None)
    if not debs:
        raise GuestBuildError(f"no guest packages in {_debs_dir(cache)}: run scripts/setup.sh")
    kdeb, bdeb = debs
    h = hashlib.sha256(f"{BUILD_FORMAT}\n{INIT}\n".encode())
    for deb in debs:
        h.update(f"{deb.name}\n{_sha256(deb)}\n".encode())
    key = h.hexdigest()[:16]
    out = cache / f"build-{key}"
    guest = TinyGuest(kernel=out / "vmlinuz", initrd=out / "initrd.gz")
    if (out / "SOURCES").exists():
        return guest
    with _locked(cache):
        if (out / "SOURCES").exists():
            return guest
        t0 = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix="tmp-build-", dir=cache))
        try:
            _build_into(tmp, kdeb, bdeb)
            os.chmod(tmp, 0o755)  # readable by QEMU whatever user it runs as
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in cache.glob("build-*"):
            # a test session started before this build may still boot from an older one
            if old != out and time.time() - old.stat().st_mtime > OLD_BUILD_KEEP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        _log(f"built {out} from {kdeb.name}, {bdeb.name} in {time.monotonic() - t0:.1f} s")
    return guest


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else ""
    try:
        if cmd == "download":
            k, b = download_debs()
            print(f"guest packages: {k.name}, {b.name}")
        elif cmd == "build":
            g = build()
            print(f"kernel:  {g.kernel}\ninitrd:  {g.initrd}\ncmdline: {g.cmdline}")
            print(g.domain_xml("tiny-guest", "/tmp/tiny-guest-serial.log"))
        else:
            print(f"usage: {argv[0]} download|build", file=sys.stderr)
            return 2
    except GuestBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
