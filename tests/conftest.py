"""Shared fixtures: a real server (real libvirt test driver, real SQLite, real HTTP) per test.

Each server gets its own libvirt host from a generated node file (``test:///<file>``), whose
state is private to that connection, so tests never see each other's domains.
"""
from __future__ import annotations

import itertools
import shutil
import textwrap
import uuid as _uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import XenAPI

from tests.private_libvirtd import PrivateLibvirtd
from xenapi.cli import http_api
from xenapi.config import Config
from xenapi.server import Server
from xenapi.transport.http import HTTPServer

ADMIN_PASSWORD = "admin-pw"
_serial = itertools.count(1)


def node_xml(domains: int = 2, running: int = 1, memory_kib: int = 8388608, cpus: int = 4) -> str:
    """A libvirt test-driver host: a 4-CPU, 8 GiB machine with ``domains`` small guests, and the
    network and host interface of libvirt's own test:///default (a NAT network, eth1)."""
    parts = []
    for n in range(domains):
        state = "" if n < running else "<test:runstate>5</test:runstate>"
        parts.append(f"""
          <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
            <name>vm{n}</name><uuid>{_uuid.uuid4()}</uuid><title>vm{n}</title>
            <memory>262144</memory><currentMemory>262144</currentMemory><vcpu>1</vcpu>
            <os><type arch='x86_64'>hvm</type></os>{state}
          </domain>""")
    return textwrap.dedent(f"""
        <node>
          <cpu><mode>paravirt</mode><nodes>1</nodes><sockets>1</sockets><cores>{cpus}</cores><threads>1</threads>
               <active>{cpus}</active><mhz>2400</mhz><model>x86_64</model></cpu>
          <memory>{memory_kib}</memory>{''.join(parts)}
          <network>
            <name>default</name><uuid>{_uuid.uuid4()}</uuid><forward mode='nat'/>
            <bridge name='virbr0' stp='on' delay='0'/>
            <ip address='192.168.122.1' netmask='255.255.255.0'>
              <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>
            </ip>
          </network>
          <interface type='ethernet' name='eth1'>
            <start mode='onboot'/><mtu size='1492'/>
            <protocol family='ipv4'><ip address='192.168.0.5' prefix='24'/><route gateway='192.168.0.1'/></protocol>
            <mac address='aa:bb:cc:dd:ee:ff'/>
          </interface>
        </node>""")


@dataclass
class Running:
    server: Server
    http: HTTPServer
    url: str
    uri: str

    def session(self, user: str = "root", password: str = ADMIN_PASSWORD) -> XenAPI.Session:
        s = XenAPI.Session(self.url)
        s.xenapi.login_with_password(user, password, "2.21", "pytest")
        return s

    def add_user(self, name: str, role: str, password: str = "pw") -> None:
        self.server.users.add(name, role, password)


def start_server(tmp_path: Path, *, domains: int = 2, running: int = 1, uris: list[str] | None = None,
                 **settings) -> Running:
    node = tmp_path / f"node-{next(_serial)}.xml"
    node.write_text(node_xml(domains, running))
    uri = f"test://{node}"
    settings.setdefault("libvirt_sync_wait", 60)        # tests start on a listed pool
    config = Config(listen="127.0.0.1:0", state=str(tmp_path / "state"), libvirt_uris=uris or [uri], **settings)
    server = Server(config)
    server.users.ensure_admin(ADMIN_PASSWORD)
    server.start()
    http = HTTPServer(("127.0.0.1", 0), http_api(server))
    http.start()
    host, port = http.address[:2]
    return Running(server, http, f"http://{host}:{port}", uri)


def stop_server(running: Running) -> None:
    running.server.drain()
    running.http.shutdown()
    running.server.stop()


@pytest.fixture
def running(tmp_path):
    r = start_server(tmp_path)
    yield r
    stop_server(r)


@pytest.fixture
def xapi(running):
    """A logged-in official XenAPI client session (pool-admin)."""
    session = running.session()
    yield session
    try:
        session.xenapi.session.logout()
    except Exception:
        pass


def fails(call, *args) -> list[str]:
    """The ErrorDescription of a call that must fail through the official client."""
    with pytest.raises(XenAPI.Failure) as e:
        call(*args)
    return e.value.details


def guest_vm(xapi, power_state: str) -> str:
    """The ref of a non-control-domain VM in ``power_state``."""
    for ref, rec in xapi.xenapi.VM.get_all_records().items():
        if not rec["is_control_domain"] and not rec["is_a_template"] and rec["power_state"] == power_state:
            return ref
    raise LookupError(power_state)


def default_sr(xapi) -> str:
    return xapi.xenapi.pool.get_default_SR(xapi.xenapi.pool.get_all()[0])


def new_vdi(xapi, size: int = 1 << 20, sr: str | None = None, **fields) -> str:
    """A VDI made through the API, as Ansible's and XO's VDI.create records have it."""
    return xapi.xenapi.VDI.create({"SR": sr or default_sr(xapi), "virtual_size": str(size), "type": "user",
                                   "sharable": False, "read_only": False, "other_config": {},
                                   "name_label": "pytest disk", **fields})


def new_vbd(xapi, vm: str, vdi: str, userdevice: str = "autodetect", **fields) -> str:
    """A disk VBD (or, with type CD, a CD drive) made through the API, as Ansible's records have it."""
    cd = fields.get("type") == "CD"
    return xapi.xenapi.VBD.create({"VM": vm, "VDI": vdi, "userdevice": userdevice, "bootable": False,
                                   "mode": "RO" if cd else "RW", "type": "Disk",
                                   "empty": vdi == "OpaqueRef:NULL", "other_config": {},
                                   "qos_algorithm_type": "", "qos_algorithm_params": {}, **fields})


def wait_for_event(xapi, classes: list[str], token: str, predicate, timeout: float = 10.0) -> dict:
    """Loop event_from until an event satisfies ``predicate``; a change may take several batches."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = xapi.xenapi.event_from(classes, token, max(0.1, deadline - time.monotonic()))
        token = batch["token"]
        for event in batch["events"]:
            if predicate(event):
                return event
    raise AssertionError(f"no matching {classes} event within {timeout} s")


@pytest.fixture
def wire(running):
    """Raw HTTP to the running server (tests/wire_client.py), for suites that assert bytes."""
    from tests.wire_client import Wire
    return Wire(running)


@pytest.fixture
def session(wire) -> str:
    """A root session ref, logged in over the raw wire."""
    return wire.login()


def vm_record(label: str = "test vm") -> dict:
    """A small VM's fields as domxml.build takes them (256 MiB maximum, 2 vCPUs, 1 at start)."""
    mib = 1024 * 1024
    return {"name_label": label, "memory_static_max": 256 * mib, "memory_dynamic_max": 128 * mib,
            "memory_dynamic_min": 128 * mib, "memory_static_min": 128 * mib, "VCPUs_max": 2,
            "VCPUs_at_startup": 1, "stamp": {"ref": "OpaqueRef:test"}}


def vm_create_args(**over) -> dict:
    """VM.create's record over the wire, as xapi's clients send it: a small HVM guest."""
    mib = 1024 * 1024
    rec = {"name_label": "new", "user_version": "1", "is_a_template": False, "affinity": "OpaqueRef:NULL",
           "memory_static_max": str(256 * mib), "memory_dynamic_max": str(256 * mib),
           "memory_dynamic_min": str(256 * mib), "memory_static_min": str(256 * mib), "VCPUs_params": {},
           "VCPUs_max": "2", "VCPUs_at_startup": "1", "actions_after_shutdown": "destroy",
           "actions_after_reboot": "restart", "actions_after_crash": "destroy", "PV_bootloader": "",
           "PV_kernel": "", "PV_ramdisk": "", "PV_args": "", "PV_bootloader_args": "", "PV_legacy_args": "",
           "HVM_boot_policy": "BIOS order", "HVM_boot_params": {"order": "c"}, "platform": {}, "PCI_bus": "",
           "other_config": {"owner": "tests"}, "recommendations": ""}
    rec.update(over)
    return rec


@pytest.fixture
def quiet(tmp_path):
    """A server whose sampler only runs when a test (or an event) asks."""
    r = start_server(tmp_path, metrics_interval=3600)
    yield r
    stop_server(r)


@pytest.fixture
def served(tmp_path):
    """A server with a unix socket for ``xenapi stdio`` and users alice (read-only), bob (vm-operator)."""
    from tests.streams import serve_with_socket, stop_served
    s = serve_with_socket(tmp_path)
    yield s
    stop_served(s)


@pytest.fixture
def keys(tmp_path):
    """alice's, bob's and a stranger's Ed25519 keys: {name: (private key file, public key line)}."""
    from tests.ssh_support import keypair
    directory = tmp_path / "keys"
    directory.mkdir()
    return {name: keypair(directory, name) for name in ("alice", "bob", "stranger")}


@pytest.fixture
def sshd(tmp_path, served, keys):
    """A real sshd forcing ``xenapi stdio --user`` for alice's and bob's keys (tests/ssh_support.py)."""
    from tests.ssh_support import running_sshd
    with running_sshd(tmp_path / "sshd", served, keys) as daemon:
        yield daemon


@pytest.fixture
def libvirtd():
    """A private libvirtd (tests/private_libvirtd.py), not started yet; removed afterwards."""
    if shutil.which("libvirtd") is None:
        pytest.fail("libvirtd is not installed: run scripts/setup.sh")
    daemon = PrivateLibvirtd()
    try:
        yield daemon
    finally:
        daemon.remove()
