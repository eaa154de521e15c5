"""Helpers for the end-to-end tests (plain functions and classes; the fixtures are in conftest.py):
``virsh(...)`` against the suite's libvirt, ``E2EServer`` (a server under test with its logged-in
official XenAPI session), ``EventWatch`` (follow event.from), ``wait_task`` and ``tiny_vm_record``
(a VM.create record booting the tiny guest), ``define_guest`` (a tiny guest with a serial log,
defined behind the server's back and adopted by it), ``EventRecorder`` (events seen while a call
runs), ``SerialConsole``/``start_with_console`` (the serial console of a VM the server made, a pty,
copied to a file), ``qemu_img_info`` and ``write_iso`` (a real ISO 9660 image).
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import struct
import subprocess
import termios
import threading
import time
import tty
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_URI = "qemu:///system"
MiB = 1024 * 1024


def libvirt_uri_in_use() -> str:
    return os.environ.get("XENAPI_E2E_LIBVIRT_URI", SYSTEM_URI)


def virsh(*args: str, timeout: float = 60) -> str:
    """Run ``virsh -c <suite's URI> args...``; raise with virsh's message if it fails."""
    r = subprocess.run(["virsh", "-q", "-c", libvirt_uri_in_use(), *args], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)} failed: {(r.stdout + r.stderr).strip()}")
    return r.stdout.strip()


@dataclass
class E2EServer:
    server: object             # xenapi.server.Server
    http: object               # xenapi.transport.http.HTTPServer
    url: str
    session: object            # XenAPI.Session, logged in as root
    created: list = field(default_factory=list)   # VM refs to shut down and destroy after the test

    @property
    def x(self):
        return self.session.xenapi

    def vm_of(self, dom, timeout: float = 30.0) -> str:
        """The ref of the VM the server shows for libvirt domain ``dom`` (defined behind its back,
        so it arrives through libvirt's events): waits until it does."""
        import XenAPI
        uuid = dom.UUIDString() if hasattr(dom, "UUIDString") else str(dom)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.x.VM.get_by_uuid(uuid)
            except XenAPI.Failure as e:
                if e.details[0] != "UUID_INVALID" or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def events(self, *classes: str) -> "EventWatch":
        return EventWatch(self.x, list(classes) or ["vm"])

    def new_session(self):
        """Another logged-in session (an XenAPI.Session is not for two threads at once)."""
        import XenAPI
        from tests.conftest import ADMIN_PASSWORD
        session = XenAPI.Session(self.url)
        session.xenapi.login_with_password("root", ADMIN_PASSWORD, "2.21", "e2e")
        return session


@contextlib.contextmanager
def serving(**settings):
    """A xenapi server in this process (HTTP on loopback) with ``settings`` (Config fields), and
    an official XenAPI session logged in as root; logged out and stopped after, whatever happened.
    Defaults fit the tiny real guest: TCG domains, a 30 s clean shutdown, a 60 s wait for the
    first listing."""
    import XenAPI
    from tests.conftest import ADMIN_PASSWORD
    from xenapi.config import Config
    from xenapi.server import Server
    from xenapi.cli import http_api
    from xenapi.transport.http import HTTPServer

    settings = {"domain_type": "qemu", "clean_shutdown_timeout": 30, "libvirt_sync_wait": 60, **settings}
    server = Server(Config(listen="127.0.0.1:0", **settings))
    server.users.ensure_admin(ADMIN_PASSWORD)
    server.start()
    http = HTTPServer(("127.0.0.1", 0), http_api(server))
    http.start()
    try:
        url = f"http://127.0.0.1:{http.address[1]}"
        session = XenAPI.Session(url)
        session.xenapi.login_with_password("root", ADMIN_PASSWORD, "2.21", "e2e")
        yield E2EServer(server, http, url, session)
        with contextlib.suppress(Exception):
            session.xenapi.session.logout()
    finally:
        http.shutdown()
        server.stop()


@dataclass
class Guest:
    vm: str                   # the VM's ref on the server
    dom: object               # the libvirt domain
    log: Path                 # its serial console
    tiny_guest: object

    @property
    def name(self) -> str:
        return self.dom.name()

    def wait_up(self, count: int = 1, timeout: float = 90) -> None:
        """Until the guest has printed its ready line ``count`` times (ready for the power button)."""
        self.tiny_guest.wait_for_serial(self.log, self.tiny_guest.ready_text, timeout, count=count)

    def libvirt_id(self) -> int:
        """The domain's ID now (a virDomain object keeps the one it was looked up with)."""
        return self.dom.connect().lookupByUUIDString(self.dom.UUIDString()).ID()

    def serial(self) -> str:
        return self.log.read_text(errors="replace")


def define_guest(server: E2EServer, make_domain, tiny_guest, directory: Path, hint: str, **xml) -> Guest:
    """A tiny guest defined in libvirt (with a serial log file, which VM.create does not give),
    seen by the server through libvirt's events; ``xml``: options of ``domain_xml``."""
    log = directory / f"{hint}-serial.log"
    dom = make_domain(tiny_guest.domain_xml(make_domain.name(hint), log, **xml))
    return Guest(server.vm_of(dom), dom, log, tiny_guest)


class EventRecorder:
    """Records every event of ``classes`` on its own session and thread while a ``with`` block runs,
    so the states a call passes through are seen one by one (event.from coalesces what piles up)."""

    def __init__(self, server: E2EServer, *classes: str):
        self.session = server.new_session()
        self.classes = list(classes) or ["vm"]
        self.token = self.session.xenapi.event_from(self.classes, "", 0.0)["token"]
        self.events: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self.session.xenapi.event_from(self.classes, self.token, 0.2)
            self.token = batch["token"]
            self.events.extend(batch["events"])

    def __enter__(self) -> "EventRecorder":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        # the call has returned, so its last change is in the store: collect what is left
        self.events.extend(self.session.xenapi.event_from(self.classes, self.token, 0.0)["events"])
        self.session.xenapi.session.logout()

    def of(self, ref: str) -> list[dict]:
        return [e for e in self.events if e["ref"] == ref]


class EventWatch:
    """event.from from now on: ``wait(predicate)`` returns the first later event matching it and
    keeps the token, so successive waits see successive changes."""

    def __init__(self, x, classes: list[str]):
        self.x, self.classes = x, classes
        self.token = x.event_from(classes, "", 0.0)["token"]
        self.seen: list[dict] = []
        self._pending: list[dict] = []     # the rest of a batch, for the next wait

    def wait(self, predicate, timeout: float = 60.0, what: str = "") -> dict:
        deadline = time.monotonic() + timeout
        while True:
            while self._pending:
                event = self._pending.pop(0)
                self.seen.append(event)
                if predicate(event):
                    return event
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {what or 'matching'} {self.classes} event within {timeout} s; saw "
                                     f"{[(e['class'], e['operation'], e['ref']) for e in self.seen[-20:]]}")
            batch = self.x.event_from(self.classes, self.token, max(0.1, deadline - time.monotonic()))
            self.token = batch["token"]
            self._pending = list(batch["events"])

    def vm(self, ref: str, operation: str = "mod", timeout: float = 60.0, **fields) -> dict:
        """Wait for an event on VM ``ref`` with that operation and (for add/mod) snapshot fields."""
        def match(e):
            return (e["class"] == "vm" and e["ref"] == ref and e["operation"] == operation
                    and all(e["snapshot"].get(k) == v for k, v in fields.items()))
        return self.wait(match, timeout, f"{operation} {fields}")



def wait_task(x, task: str, timeout: float = 120.0, *, poll: float = 0.1) -> dict:
    """Poll task.get_status as clients do until the task is no longer pending; its record."""
    deadline = time.monotonic() + timeout
    while x.task.get_status(task) == "pending":
        assert time.monotonic() < deadline, f"task {task} still pending after {timeout} s"
        time.sleep(poll)
    return x.task.get_record(task)


def wait_for_metrics(x, ref: str, ready, what: str, timeout: float = 90.0) -> dict:
    """The VM_metrics record ``ref`` once ``ready(record)`` holds (the sampler runs on its period)."""
    deadline = time.monotonic() + timeout
    while not ready(record := x.VM_metrics.get_record(ref)):
        assert time.monotonic() < deadline, f"VM_metrics never showed {what}: {record}"
        time.sleep(0.2)
    return record


def tiny_vm_record(tiny_guest, label: str) -> dict:
    """A complete VM.create record for the tiny guest (direct kernel boot)."""
    return {
        "name_label": label, "name_description": "tiny real guest", "user_version": "1",
        "is_a_template": False, "affinity": "OpaqueRef:NULL",
        "memory_static_max": str(256 * MiB), "memory_dynamic_max": str(256 * MiB),
        "memory_dynamic_min": str(256 * MiB), "memory_static_min": str(256 * MiB),
        "VCPUs_params": {}, "VCPUs_max": "1", "VCPUs_at_startup": "1",
        "actions_after_shutdown": "destroy", "actions_after_reboot": "restart", "actions_after_crash": "destroy",
        "PV_bootloader": "", "PV_kernel": str(tiny_guest.kernel), "PV_ramdisk": str(tiny_guest.initrd),
        "PV_args": tiny_guest.cmdline, "PV_bootloader_args": "", "PV_legacy_args": "",
        "HVM_boot_policy": "", "HVM_boot_params": {}, "platform": {"acpi": "true"}, "PCI_bus": "",
        "other_config": {}, "recommendations": "",
    }


class SerialConsole:
    """The serial console of a running VM that the server defined (``<serial type='pty'>``, not
    the file of ``define_guest``): a thread copies what the guest writes to its pty into ``log``, so
    ``wait_for_serial(log, ...)`` and ``.text()`` read it as a file console.  The pty is put in raw
    mode, so nothing the guest writes is echoed back to it as input.

    QEMU drops what the guest writes while nobody has the pty open, so a console opened after boot
    misses the start: ``start_with_console`` starts the VM paused and opens this before it runs."""

    def __init__(self, pty: str, log: Path):
        self.pty, self.log = pty, Path(log)
        self.fd = os.open(pty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            tty.setraw(self.fd, termios.TCSANOW)
        except BaseException:
            os.close(self.fd)
            raise
        self.opened = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._copy, name=f"console-{os.path.basename(pty)}", daemon=True)
        self._thread.start()

    @classmethod
    def of_domain(cls, uuid: str, log: Path) -> "SerialConsole":
        """The console of the running domain ``uuid``, from the pty in its live definition."""
        root = ET.fromstring(virsh("dumpxml", uuid))
        source = root.find("devices/serial[@type='pty']/source")
        if source is None or not source.get("path"):
            raise AssertionError(f"domain {uuid} has no pty serial console: {ET.tostring(root, 'unicode')}")
        return cls(source.get("path"), log)

    def _copy(self) -> None:
        with open(self.log, "ab", buffering=0) as out:
            while not self._stop.is_set():
                ready, _, _ = select.select([self.fd], [], [], 0.1)
                if not ready:
                    continue
                try:
                    data = os.read(self.fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:          # EIO: the other end (QEMU) closed, the domain is gone
                    return
                if not data:
                    return
                out.write(data)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def size(self) -> int:
        """Bytes copied so far (an ``offset`` for ``wait_for_serial``: what comes after now)."""
        return self.log.stat().st_size if self.log.exists() else 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        os.close(self.fd)


def start_with_console(x, vm: str, log: Path) -> SerialConsole:
    """VM.start ``vm`` with its serial console copied to ``log`` from its first byte: started paused,
    the console opened, then VM.unpause.  The caller closes the console."""
    x.VM.start(vm, True, False)
    console = SerialConsole.of_domain(x.VM.get_uuid(vm), log)
    try:
        x.VM.unpause(vm)
    except BaseException:
        console.close()
        raise
    return console


def qemu_img_info(path: str) -> dict:
    """``qemu-img info --output=json`` of an image not in use (format, virtual-size, backing-filename)."""
    r = subprocess.run(["qemu-img", "info", "--output=json", str(path)], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"qemu-img info {path} failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


# -- ISO 9660 ------------------------------------------------------------------------------------

ISO_SECTOR = 2048


def _both16(n: int) -> bytes:
    return struct.pack("<H", n) + struct.pack(">H", n)


def _both32(n: int) -> bytes:
    return struct.pack("<I", n) + struct.pack(">I", n)


def _iso_record(name: bytes, extent: int, size: int, directory: bool) -> bytes:
    """An ISO 9660 directory record (ECMA-119 9.1), padded to an even length."""
    rec = (bytes([33 + len(name), 0]) + _both32(extent) + _both32(size) + bytes(7)
           + bytes([2 if directory else 0, 0, 0]) + _both16(1) + bytes([len(name)]) + name)
    return rec + b"\0" * (len(rec) % 2)


def iso_image(volume_id: str, files: dict[str, bytes]) -> bytes:
    """A minimal ISO 9660 image (level 1): a primary volume descriptor naming ``volume_id``, its
    terminator, the path tables and one root directory holding ``files`` (8.3 upper-case names)."""
    def text(value: str, n: int) -> bytes:
        return value.encode("ascii")[:n].ljust(n)
    root = 20                                # sectors: 16 PVD, 17 terminator, 18-19 path tables, 20 root
    extents, at = {}, root + 1
    for name, data in files.items():
        extents[name] = at
        at += max(1, -(-len(data) // ISO_SECTOR))
    directory = _iso_record(b"\0", root, ISO_SECTOR, True) + _iso_record(b"\1", root, ISO_SECTOR, True)
    for name in files:
        directory += _iso_record(f"{name.upper()};1".encode("ascii"), extents[name], len(files[name]), False)
    assert len(directory) <= ISO_SECTOR
    path_l = bytes([1, 0]) + struct.pack("<IH", root, 1) + b"\0\0"   # the root: name 0x00, padded
    path_m = bytes([1, 0]) + struct.pack(">IH", root, 1) + b"\0\0"
    never = b"0" * 16 + b"\0"                                          # a date not specified
    pvd = (b"\x01CD001\x01\0" + text("", 32) + text(volume_id, 32) + bytes(8) + _both32(at) + bytes(32)
           + _both16(1) + _both16(1) + _both16(ISO_SECTOR) + _both32(len(path_l))
           + struct.pack("<I", 18) + bytes(4) + struct.pack(">I", 19) + bytes(4)
           + _iso_record(b"\0", root, ISO_SECTOR, True) + text("", 128) * 4 + text("", 37) * 3 + never * 4
           + b"\x01\0")
    image = bytearray(ISO_SECTOR * at)
    for sector, data in ((16, pvd), (17, b"\xffCD001\x01"), (18, path_l), (19, path_m), (root, directory),
                         *((extents[n], d) for n, d in files.items())):
        image[sector * ISO_SECTOR:sector * ISO_SECTOR + len(data)] = data
    return bytes(image)


def write_iso(path: Path, volume_id: str, files: dict[str, bytes]) -> str:
    """A real ISO 9660 image at ``path``: made by genisoimage, xorriso or mkisofs where one is
    installed, else by ``iso_image``; returns which made it."""
    path = Path(path)
    for tool in ("genisoimage", "xorriso", "mkisofs"):
        program = shutil.which(tool)
        if program is None:
            continue
        content = path.parent / f".{path.name}.content"
        content.mkdir()
        try:
            for name, data in files.items():
                (content / name).write_bytes(data)
            command = [program, *(["-as", "mkisofs"] if tool == "xorriso" else []), "-quiet", "-V", volume_id,
                       "-o", str(path), str(content)]
            subprocess.run(command, check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        finally:
            shutil.rmtree(content, ignore_errors=True)
        return tool
    path.write_bytes(iso_image(volume_id, files))
    return "iso_image"
