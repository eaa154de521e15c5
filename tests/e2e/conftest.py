"""Fixtures for the end-to-end suite: a real libvirtd (QEMU driver) and a tiny real guest.

- ``libvirt_uri`` (session): ``qemu:///system``, answering. Starts the test daemon with
  ``scripts/libvirtd.sh start`` if it does not answer; if libvirtd cannot run, every test using
  it fails with the reason (never skipped). ``XENAPI_E2E_LIBVIRT_URI`` points the suite at another
  libvirt (e.g. a lab host's ``qemu+unix:///system?socket=...``) instead.
- ``libvirt_conn`` (session): an open libvirt-python connection to it.
- ``tiny_guest`` (session): the guest of ``guest.py`` (built once, cached in ``.cache/guest``):
  ``.kernel``, ``.initrd``, ``.cmdline``, ``.domain_xml(name, serial_log, virt_type='qemu',
  ignore_acpi=False, ...)``, ``.wait_for_serial(path, text, timeout)``.
- ``make_domain`` (function): ``make_domain(xml)`` defines a persistent domain and destroys and
  undefines it after the test, whatever happened; ``make_domain.name("x")`` gives a unique name;
  ``make_domain.track(name)`` adds one defined otherwise (e.g. with virsh) to the clean-up.
- ``start_xenapi`` (function): ``start_xenapi(**config)`` runs a server on that libvirt (in this
  process, HTTP on loopback) and returns an ``E2EServer`` with a logged-in official XenAPI
  session; stopped after the test, with the VMs it created (``.created``) shut down and destroyed.
  ``state=`` another server's (stopped) state directory restarts that server.
- ``local_sr_pool`` (function): the libvirt pool of the servers' "Local storage" SR (``xenapi-local``),
  usable before a server starts: defined over ``LOCAL_SR_PATH`` if it is not defined or its
  directory is gone (it would otherwise live in a pytest tmp directory that goes away).
Plain helpers (virsh, EventWatch, wait_task, tiny_vm_record) are in ``qemu_e2e.py``.

Tests marked ``libvirtd_restart`` stop and start the system libvirtd; they run after every other
test of the session (``pytest_collection_modifyitems`` below), so no other fixture has to live
through the restart.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(HERE) not in sys.path:  # guest.py sits beside this file (any pytest import mode)
    sys.path.insert(0, str(HERE))

import guest  # noqa: E402
from lab_hosts import lab_hosts  # noqa: F401,E402  (session fixture: two lab libvirt hosts, lab1/lab2)
from guest_image import tiny_image, tiny_image_template  # noqa: F401,E402  (the tiny guest's SYSLINUX disk, its image:tiny template)
from qemu_e2e import SYSTEM_URI, E2EServer, libvirt_uri_in_use, serving  # noqa: E402

NAME_PREFIX = "xe2e-"  # domains made by make_domain: xe2e-<pid>-<n>-<hint>


def pytest_configure(config):
    config.addinivalue_line("markers", "libvirtd_restart: stops and restarts the system libvirtd; "
                                       "runs after every other test")


def pytest_collection_modifyitems(session, config, items):
    """The libvirtd restart tests last (a stable sort keeps every other order)."""
    items.sort(key=lambda item: item.get_closest_marker("libvirtd_restart") is not None)


def _answers(uri: str) -> tuple[bool, str]:
    try:
        r = subprocess.run(["virsh", "-q", "-c", uri, "uri"], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        return False, "virsh not found (run scripts/setup.sh)"
    except subprocess.TimeoutExpired:
        return False, f"virsh -c {uri} uri timed out"
    return r.returncode == 0, (r.stdout + r.stderr).strip()


@pytest.fixture(scope="session")
def libvirt_uri() -> str:
    uri = libvirt_uri_in_use()
    ok, out = _answers(uri)
    if not ok and uri == SYSTEM_URI:
        if os.geteuid() != 0:
            pytest.fail(f"{uri} does not answer ({out}) and starting libvirtd needs root",
                        pytrace=False)
        try:
            r = subprocess.run(["bash", str(REPO / "scripts" / "libvirtd.sh"), "start"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=180)
            start_out = r.stdout
        except subprocess.TimeoutExpired as e:
            start_out = f"scripts/libvirtd.sh start timed out: {e.output or ''}"
        ok, out = _answers(uri)
        if not ok:
            pytest.fail(f"libvirtd cannot run: scripts/libvirtd.sh start said:\n{start_out}\n"
                        f"and {uri} still does not answer: {out}", pytrace=False)
    elif not ok:
        pytest.fail(f"{uri} (XENAPI_E2E_LIBVIRT_URI) does not answer: {out}", pytrace=False)
    return uri


@pytest.fixture(scope="session")
def libvirt_conn(libvirt_uri):
    try:
        import libvirt
    except ImportError as e:
        pytest.fail(f"libvirt-python is not installed ({e}); run scripts/setup.sh", pytrace=False)
    # errors still raise libvirtError; this only stops libvirt printing each one on stderr
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(libvirt_uri)
    _remove_stale_domains(conn)
    yield conn
    try:
        conn.close()
    except libvirt.libvirtError:
        pass


def _remove_stale_domains(conn) -> None:
    """Domains left by an earlier, killed test session (its pid is gone)."""
    import libvirt
    for dom in conn.listAllDomains():
        name = dom.name()
        if not name.startswith(NAME_PREFIX):
            continue
        pid = name[len(NAME_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            _drop(dom, libvirt)


def _drop(dom, libvirt) -> None:
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError:
        pass
    try:
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                          | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                          | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    except libvirt.libvirtError:
        pass


@pytest.fixture(scope="session")
def tiny_guest() -> guest.TinyGuest:
    try:
        return guest.build()
    except (guest.GuestBuildError, OSError, subprocess.SubprocessError) as e:
        pytest.fail(f"cannot build the tiny test guest: {e}", pytrace=False)


_counter = itertools.count(1)


class _DomainMaker:
    def __init__(self, conn):
        self.conn = conn
        self.domains = []

    @staticmethod
    def name(hint: str = "vm") -> str:
        """A unique domain name, recognised as ours by the stale-domain clean-up."""
        return f"{NAME_PREFIX}{os.getpid()}-{next(_counter)}-{hint}"

    def __call__(self, xml: str):
        dom = self.conn.defineXML(xml)
        self.domains.append(dom)
        return dom

    def track(self, name: str):
        """Clean up a domain defined some other way (virsh); returns it."""
        dom = self.conn.lookupByName(name)
        self.domains.append(dom)
        return dom

    def cleanup(self) -> None:
        import libvirt
        conn = _alive_or_reopened(self.conn)   # the test may have restarted libvirtd
        seen = set()
        for dom in reversed(self.domains):
            uuid = dom.UUIDString()
            if uuid not in seen:  # redefinitions return the same domain again
                seen.add(uuid)
                try:
                    _drop(conn.lookupByUUIDString(uuid), libvirt)
                except libvirt.libvirtError:
                    pass       # already gone
        if conn is not self.conn:
            conn.close()


def _alive_or_reopened(conn):
    import libvirt
    try:
        conn.getLibVersion()
        return conn
    except libvirt.libvirtError:
        return libvirt.open(libvirt_uri_in_use())


@pytest.fixture
def make_domain(libvirt_conn):
    maker = _DomainMaker(libvirt_conn)
    yield maker
    maker.cleanup()


@pytest.fixture
def start_xenapi(libvirt_uri, tmp_path):
    """``start_xenapi(**config)``: a server over the test libvirtd (``libvirt_uris`` overrides), its
    VMs in ``.created`` shut down and destroyed after the test, whatever happened."""
    import XenAPI

    servers = contextlib.ExitStack()
    started: list[E2EServer] = []

    def start(**settings) -> E2EServer:
        settings = {"libvirt_uris": [libvirt_uri], "state": str(tmp_path / f"state-{len(started)}"), **settings}
        started.append(servers.enter_context(serving(**settings)))
        return started[-1]

    with servers:
        yield start
        for s in started:
            for ref in s.created:              # whatever the test left, even on failure
                try:
                    if s.x.VM.get_power_state(ref) != "Halted":
                        s.x.VM.hard_shutdown(ref)
                    s.x.VM.destroy(ref)
                except XenAPI.Failure:
                    pass


LOCAL_SR_PATH = "/var/lib/xenapi-e2e/local-sr"     # the e2e servers' shared local SR, outside any tmp dir


@pytest.fixture
def local_sr_pool(libvirt_conn):
    """The pool of the "Local storage" SR (``xenapi-local``), usable by the next server.

    Every server under test on this libvirtd shares that one pool (a server adopts the pool of that
    name it finds), and a server defines it over its own state directory, a pytest tmp directory
    that pytest removes a few sessions later (other sessions' clean-up of old ones) while the pool
    stays defined: then no volume can be made in it.  So the pool is defined here, before the
    server starts, over ``LOCAL_SR_PATH``, if it is not defined or if its directory is gone (no
    volume of it can be in use then); a working pool is left as it is.  Yields the pool's name."""
    import uuid
    import xml.etree.ElementTree as ET

    import libvirt
    from storage import PLUGINS
    from xenapi.services.storage import LOCAL_POOL
    try:
        pool = libvirt_conn.storagePoolLookupByName(LOCAL_POOL)
    except libvirt.libvirtError:
        pool = None
    if pool is not None:
        path = ET.fromstring(pool.XMLDesc(0)).findtext("target/path")
        if path and os.path.isdir(path):
            yield LOCAL_POOL
            return
        try:
            if pool.isActive():
                pool.destroy()
            pool.undefine()
        except libvirt.libvirtError:
            pass                                  # another session got there first
    try:
        xml = PLUGINS["dir"].pool_xml(uuid=str(uuid.uuid4()), name=LOCAL_POOL,
                                      device_config={"location": LOCAL_SR_PATH})
        pool = libvirt_conn.storagePoolDefineXML(xml, 0)
        pool.build(0)                             # mkdir -p; harmless if it is there
        pool.create(0)
        pool.setAutostart(1)
    except libvirt.libvirtError:
        pool = libvirt_conn.storagePoolLookupByName(LOCAL_POOL)   # another session defined it meanwhile
        if not pool.isActive():
            pool.create(0)
    yield LOCAL_POOL
