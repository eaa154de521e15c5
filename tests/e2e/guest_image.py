"""The tiny guest (guest.py) as a bootable BIOS disk, and the ``image:tiny`` template made from it.

The disk: a raw image holding one FAT file system over the whole disk (a "superfloppy": no
partition table; SeaBIOS boots its first sector as it boots any disk's), made bootable with
SYSLINUX, with the tiny guest's kernel and initrd and a ``syslinux.cfg`` that boots them at once
with the tiny guest's command line.  SYSLINUX writes its own lines (``SYSLINUX 6.04 ...``,
``Loading vmlinuz... ok``) on the serial console too, so a console shows that the guest came up
through the bootloader on its disk, not from a kernel libvirt was given.  All of it is made on the
unmounted image file, no root needed: ``mformat`` and ``mcopy`` (mtools) make the file system and
put the files in, ``syslinux --install`` (which works through mtools) writes the boot sector and
``ldlinux.sys``/``ldlinux.c32``.  Debian packages: ``syslinux`` (which depends on ``mtools``).

Built once per guest build, cached as ``<guest cache>/image-<key>/tiny.img`` beside the guest's
``build-<key>`` (key: the guest build's directory, which is keyed by its inputs' hashes, the
command line and this module's build format); superseded images are removed after a day.

Fixtures (for ``tests/e2e/conftest.py``: ``from guest_image import tiny_image, tiny_image_template``):

- ``tiny_image`` (session): the built disk (``TinyImage``: ``.path``, ``.size``, ``.boot_sector``).
- ``tiny_image_template`` (function): ``tiny_image_template(server=None, name="tiny")`` makes the
  ``image:<name>`` template on a running server (an ``E2EServer`` of ``start_xenapi``; None starts
  one with the defaults): a VDI in the pool's default SR (VDI.create, then the image's bytes with
  ``PUT /import_raw_vdi``), and a VM through the API (``is_a_template`` true, ``other_config
  template "image:<name>"``, BIOS boot from its disk: ``HVM_boot_policy`` "BIOS order", order "c",
  no kernel) with a bootable RW disk VBD at userdevice 0 on that VDI.  Returns an ``ImageTemplate``
  (``.server``, ``.x``, ``.vm``, ``.vdi``, ``.sr``, ``.location``, ``.image``, ``.import_s``).
  After the test it removes the template and its VDI, and before them whatever the test left that
  was made from it: VMs on a disk that is an overlay of the template's VDI, and those overlays.

CLI: ``python tests/e2e/guest_image.py build`` (build the guest and the disk, print the path).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode, urlparse

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import guest  # noqa: E402

IMAGE_FORMAT = 1             # bump when the image's build procedure changes
IMAGE_NAME = "tiny.img"
MiB = 1024 * 1024
SLACK = 4 * MiB              # free room on the file system beyond the kernel, initrd and SYSLINUX's files
HEADS, SECTORS = 64, 32      # the FAT's geometry: 1 MiB cylinders (only the BPB's fields; LBA is used)
VOLUME_LABEL = "TINYGUEST"
OLD_IMAGE_KEEP_SECONDS = guest.OLD_BUILD_KEEP_SECONDS
TOOLS = {"mformat": "mtools", "mcopy": "mtools", "syslinux": "syslinux"}   # program: its Debian package


class GuestImageError(RuntimeError):
    pass


def syslinux_cfg(cmdline: str) -> str:
    """SYSLINUX's configuration: its console on COM1 too, no prompt, the tiny guest at once."""
    return ("SERIAL 0 115200\n"
            "DEFAULT tiny\n"
            "PROMPT 0\n"
            "TIMEOUT 0\n"
            "LABEL tiny\n"
            "  KERNEL vmlinuz\n"
            "  INITRD initrd.gz\n"
            f"  APPEND {cmdline}\n")


@dataclasses.dataclass(frozen=True)
class TinyImage:
    path: Path               # the raw disk image
    size: int                # its size in bytes (whole MiB)
    cmdline: str             # the kernel command line SYSLINUX boots it with

    @property
    def boot_sector(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read(512)


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    if r.returncode != 0:
        raise GuestImageError(f"{' '.join(cmd)} failed ({r.returncode}): {(r.stdout + r.stderr).strip()}")


def _missing_tools() -> list[str]:
    return [f"{program} (Debian package {package})" for program, package in TOOLS.items()
            if shutil.which(program) is None]


def _build_into(image: Path, tiny: guest.TinyGuest) -> int:
    """The bootable disk at ``image``; its size."""
    files = [tiny.kernel, tiny.initrd]
    size = -(-(sum(f.stat().st_size for f in files) + SLACK) // MiB) * MiB
    with open(image, "wb") as f:
        f.truncate(size)                            # sparse zeros
    cfg = image.parent / "syslinux.cfg"
    cfg.write_text(syslinux_cfg(tiny.cmdline))
    img = str(image)
    # FAT over the whole disk (mformat picks FAT16 at this size); then the files; then SYSLINUX's
    # boot sector and ldlinux.sys/.c32, which syslinux writes through mtools into the image file
    _run(["mformat", "-i", img, "-T", str(size // 512), "-h", str(HEADS), "-s", str(SECTORS),
          "-v", VOLUME_LABEL, "::"])
    _run(["mcopy", "-i", img, "-m", *map(str, files), str(cfg), "::"])
    _run(["syslinux", "--install", img])
    cfg.unlink()
    with open(image, "rb") as f:
        sector = f.read(512)
    if sector[510:512] != b"\x55\xaa" or b"SYSLINUX" not in sector:
        raise GuestImageError(f"{image}: no SYSLINUX boot sector after syslinux --install")
    return size


def _key(tiny: guest.TinyGuest) -> str:
    h = hashlib.sha256(f"{IMAGE_FORMAT}\n{tiny.kernel.parent.name}\n{syslinux_cfg(tiny.cmdline)}".encode())
    for f in (tiny.kernel, tiny.initrd):             # the build directory's name says it, but be sure
        st = f.stat()
        h.update(f"{f.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


class _locked:
    """An exclusive flock on <cache>/.image-lock: concurrent sessions build the disk once."""

    def __init__(self, cache: Path):
        cache.mkdir(parents=True, exist_ok=True)
        self.path = cache / ".image-lock"

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def build(tiny: guest.TinyGuest | None = None, cache: Path | None = None) -> TinyImage:
    """The tiny guest's bootable disk, built once into ``<cache>/image-<key>/`` (cache: the guest's)."""
    tiny = tiny or guest.build()
    cache = Path(cache) if cache is not None else tiny.kernel.parent.parent
    out = cache / f"image-{_key(tiny)}"
    path = out / IMAGE_NAME

    def made() -> TinyImage:
        return TinyImage(path, path.stat().st_size, tiny.cmdline)

    if path.exists():
        return made()
    with _locked(cache):
        if path.exists():
            return made()
        missing = _missing_tools()
        if missing:
            raise GuestImageError(f"cannot build the tiny guest's disk: missing {', '.join(missing)}; "
                                  f"run scripts/setup.sh")
        t0 = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix="tmp-image-", dir=cache))
        try:
            size = _build_into(tmp / IMAGE_NAME, tiny)
            os.chmod(tmp, 0o755)
            os.chmod(tmp / IMAGE_NAME, 0o644)
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in cache.glob("image-*"):
            if old != out and time.time() - old.stat().st_mtime > OLD_IMAGE_KEEP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        guest._log(f"built {path} ({size // MiB} MiB, SYSLINUX on FAT) in {time.monotonic() - t0:.2f} s")
    return made()


# -- the image: template on a server ------------------------------------------------------------------

@dataclasses.dataclass
class ImageTemplate:
    server: object           # qemu_e2e.E2EServer
    vm: str                  # the template
    vdi: str                 # its disk, holding the image
    sr: str                  # the pool's default SR, where that disk is
    location: str            # the disk's volume (a file in the SR's pool)
    image: TinyImage
    import_s: float          # VDI.create + PUT /import_raw_vdi, seconds

    @property
    def x(self):
        return self.server.x


def template_record(label: str, name: str = "tiny") -> dict:
    """VM.create's record of the ``image:<name>`` template: the tiny guest's VM (qemu_e2e's
    ``tiny_vm_record``) booted by the BIOS from its disk, no kernel given to libvirt."""
    from types import SimpleNamespace

    from qemu_e2e import tiny_vm_record
    no_kernel = SimpleNamespace(kernel="", initrd="", cmdline="")
    return {**tiny_vm_record(no_kernel, label),
            "name_description": "the tiny guest on a SYSLINUX disk (tests/e2e/guest_image.py)",
            "is_a_template": True, "PV_kernel": "", "PV_ramdisk": "", "PV_args": "",
            "HVM_boot_policy": "BIOS order", "HVM_boot_params": {"order": "c"},
            "other_config": {"template": f"image:{name}"}}


def upload(server, vdi: str, image: Path) -> None:
    """PUT /import_raw_vdi (xapi's raw upload) of the file ``image`` into ``vdi``."""
    url = urlparse(server.url)
    size = image.stat().st_size
    query = urlencode({"session_id": server.session._session, "vdi": vdi, "format": "raw"})
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    try:
        with open(image, "rb") as body:
            connection.request("PUT", f"/import_raw_vdi?{query}", body=body,
                               headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
        response = connection.getresponse()
        status, text = response.status, response.read()
    finally:
        connection.close()
    if status != 200:
        raise GuestImageError(f"PUT /import_raw_vdi?vdi={vdi}&format=raw ({size} bytes): {status} {text[:300]!r}")


def make_template(server, image: TinyImage, name: str = "tiny") -> ImageTemplate:
    """The ``image:<name>`` template of ``image`` on ``server`` (see the module docstring).  On
    failure whatever it made is removed before the error goes on."""
    import XenAPI
    from xenapi.model.types import NULL_REF
    x = server.x
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    if sr == NULL_REF:
        raise GuestImageError("the server's pool has no default SR")
    t0 = time.monotonic()
    vdi = x.VDI.create({"SR": sr, "virtual_size": str(image.size), "type": "system", "sharable": False,
                        "read_only": False, "other_config": {}, "name_label": f"image:{name}",
                        "name_description": "the tiny guest's SYSLINUX disk (tests/e2e/guest_image.py)",
                        "xenstore_data": {}, "sm_config": {}, "tags": []})
    vm = None
    try:
        upload(server, vdi, image.path)
        import_s = time.monotonic() - t0
        vm = x.VM.create(template_record(f"xe2e-{os.getpid()}-image-{name}", name))
        x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": "0", "bootable": True, "mode": "RW", "type": "Disk",
                      "unpluggable": False, "empty": False, "other_config": {}, "qos_algorithm_type": "",
                      "qos_algorithm_params": {}})
        return ImageTemplate(server, vm, vdi, sr, x.VDI.get_location(vdi), image, import_s)
    except BaseException:
        for call, ref in ((x.VM.destroy, vm), (x.VDI.destroy, vdi)):
            if ref is not None:
                try:
                    call(ref)
                except XenAPI.Failure:
                    pass
        raise


def remove_template(template: ImageTemplate) -> list[str]:
    """Remove what was made from ``template`` (VMs on overlays of its disk, the overlays), then the
    template and its disk.  Returns the errors met (it goes on past each)."""
    import XenAPI
    x, errors = template.x, []

    def attempt(what, call, *args):
        try:
            call(*args)
        except XenAPI.Failure as e:
            if e.details[0] != "HANDLE_INVALID":
                errors.append(f"{what}: {e.details}")
        except Exception as e:                      # noqa: BLE001 - report, go on cleaning
            errors.append(f"{what}: {e!r}")

    def vms_on(vdi):
        try:
            return [x.VBD.get_VM(b) for b in x.VDI.get_VBDs(vdi)]
        except XenAPI.Failure:
            return []

    overlays = []
    for vdi, rec in x.VDI.get_all_records().items():
        if rec["sm_config"].get("backing") == template.location:
            overlays.append(vdi)
    for vm in dict.fromkeys([vm for vdi in overlays for vm in vms_on(vdi)] + [template.vm]):
        attempt(f"VM.hard_shutdown {vm}", lambda v: x.VM.get_power_state(v) != "Halted" and x.VM.hard_shutdown(v), vm)
        attempt(f"VM.destroy {vm}", x.VM.destroy, vm)
    for vdi in overlays + [template.vdi]:
        attempt(f"VDI.destroy {vdi}", x.VDI.destroy, vdi)
    return errors


# -- fixtures -------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_image(tiny_guest) -> TinyImage:
    try:
        return build(tiny_guest)
    except (GuestImageError, OSError, subprocess.SubprocessError) as e:
        pytest.fail(f"cannot build the tiny guest's bootable disk: {e}", pytrace=False)


@pytest.fixture
def tiny_image_template(tiny_image, start_xenapi, local_sr_pool):
    made: list[ImageTemplate] = []

    def make(server=None, name: str = "tiny") -> ImageTemplate:
        made.append(make_template(server if server is not None else start_xenapi(), tiny_image, name))
        return made[-1]

    yield make
    errors = [e for template in reversed(made) for e in remove_template(template)]
    assert not errors, f"clean-up of the image template failed: {errors}"


def main(argv: list[str]) -> int:
    if argv[1:] != ["build"]:
        print(f"usage: {argv[0]} build", file=sys.stderr)
        return 2
    try:
        image = build()
    except (GuestImageError, guest.GuestBuildError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"image:   {image.path} ({image.size // MiB} MiB)\ncmdline: {image.cmdline}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
