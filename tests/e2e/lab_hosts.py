"""Two real libvirt hosts on this machine, each in its own namespaces: ``LabHosts`` and the
``lab_hosts`` session fixture.

Learned from shared/lab (lab.sh, lab.md), rebuilt here so that a test run owns everything it
starts.  Each host (``lab1``, ``lab2``):

- its own network namespace (named ``<tag>-1``/``<tag>-2``, loopback up), joined to the other
  by a veth pair (``eth0`` in both) with ``<prefix>.1/24`` and ``<prefix>.2/24``;
- its own mount namespace (private propagation) with bind mounts of its state directory over
  ``/etc/libvirt``, ``/run/libvirt``, ``/var/lib/libvirt``, ``/var/log/libvirt``,
  ``/var/cache/libvirt`` and ``/etc/hosts``; the root mount namespace (and so the main test
  libvirtd's ``/run/libvirt``) is not touched;
- its own UTS namespace (hostname ``lab1``/``lab2``) and its own ``host_uuid``;
- optionally files it lacks (``LabHosts(masked={"lab2": ("/usr/bin/swtpm", ...)})``): an empty,
  non-executable file bound over each in its mount namespace, so that host really differs (e.g.
  its libvirtd finds no swtpm and offers no TPM emulator); without the option, nothing is masked;
- its own virtlogd and libvirtd (every installed driver: QEMU, network, storage, ...), with
  TCP listening on its link address inside its netns (``qemu+tcp://<address>/system``, auth
  none, for peer-to-peer migration) and QEMU's migration address on the link;
- a child subreaper (perl, ``PR_SET_CHILD_SUBREAPER``) as the parent of the daemons and every
  QEMU they start: PID 1 in this sandbox reaps orphans only every ~1.5 s, which libvirt would
  wait on at every destroy and migration (lab.md, gotcha 1).

From the root namespace a host is ``host.uri`` = ``qemu+unix:///system?socket=<dir>/run/libvirt-sock``.
``host.exec_prefix`` (``nsenter --target <reaper> --net --mount --uts --``) runs a command on the
host (its ``virsh`` means that host); ``host.shell`` is a ``HostShell`` over it.
``host.kill_libvirtd()`` / ``host.start_libvirtd()`` (``restart_libvirtd()``) kill its libvirtd
(SIGKILL: its guests keep running) and start it again under a subreaper of its own.

Network rules: the link prefix ``10.231.N.0/24`` and the "guest" prefix ``10.232.N.0/24`` (for
tests putting guests behind the hosts) are leased by adding ``ip route add unreachable`` for
both in the root namespace (the first free N: the route itself is the lock against another test
run), and the routes are removed at stop.

``stop()`` destroys the hosts' running domains, stops the daemons by PID (checked: right command,
inside our netns), kills by PID whatever else still runs inside our network namespaces (QEMU,
dnsmasq), waits for the subreapers, deletes the namespaces (with them the veth pairs), the routes
and the state directory.  It runs on any failure of ``start()`` too.

``add_netns_guest(host, bridge, address)`` puts a "guest": a fresh network namespace whose
``eth0`` is a veth to ``bridge`` on ``host``; removed at ``stop()`` (or ``guest.remove()``).
"""
from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from xenapi.backend.host_shell import HostShell

LINK_BASE = "10.231"
GUEST_BASE = "10.232"
LINK_DEVICE = "eth0"

# Subreaper: the daemons and every QEMU libvirtd double-forks are re-parented to it and reaped
# at once. It exits when it has no child left.
REAPER_PL = r"""
my %nr = (x86_64 => 157, aarch64 => 167);
my $n = $nr{(POSIX::uname())[4]};
if (!defined $n or syscall($n, 36, 1, 0, 0, 0) != 0) { warn "reaper: no PR_SET_CHILD_SUBREAPER: $!\n"; }
my $c = fork() // die "fork: $!";
if (!$c) { exec(@ARGV) or die "exec @ARGV: $!"; }
1 while wait() != -1;
"""


class LabError(RuntimeError):
    pass


def _sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _netns_inode(name: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return None


def _pids_in_netns(inode: int | None) -> list[int]:
    if inode is None:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/net") == f"net:[{inode}]":
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in pids if _alive(p)]
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.01)


class RouteLease:
    """``ip route add unreachable`` for a set of /24 prefixes in the root namespace; the first N
    for which every route could be added wins (an existing route means someone else uses it)."""

    def __init__(self, bases: tuple[str, ...]):
        self.prefixes: list[str] = []
        for n in range(256):
            got = []
            for base in bases:
                prefix = f"{base}.{n}.0/24"
                if _sh("ip", "route", "add", "unreachable", prefix, check=False).returncode != 0:
                    break
                got.append(prefix)
            if len(got) == len(bases):
                self.n = n
                self.prefixes = got
                return
            for prefix in got:
                _sh("ip", "route", "del", "unreachable", prefix, check=False)
        raise LabError(f"no free /24 under {bases} (every one has a route in the root namespace)")

    def release(self) -> None:
        for prefix in self.prefixes:
            _sh("ip", "route", "del", "unreachable", prefix, check=False)
        self.prefixes = []


@dataclass
class LabHost:
    """One lab host. ``uri`` from anywhere on the machine; ``exec_prefix``/``shell`` to run commands on it."""

    name: str                  # lab1 / lab2 (also its hostname)
    netns: str                 # its network namespace (ip netns)
    address: str               # its address on the link (eth0), e.g. 10.231.0.1
    dir: Path                  # its state directory (etc, run, lib, log, cache)
    host_uuid: str
    link_device: str = LINK_DEVICE
    reaper: subprocess.Popen | None = None
    _netns_inode: int | None = None
    masked: tuple[str, ...] = ()   # files this host lacks: an empty, non-executable file over each, in its mount namespace
    _restarts: list = field(default_factory=list)     # the subreapers of libvirtds started again

    @property
    def socket(self) -> Path:
        return self.dir / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def tcp_uri(self) -> str:
        """Only from inside the lab's network namespaces (e.g. a peer-to-peer migration's destination)."""
        return f"qemu+tcp://{self.address}/system"

    @property
    def exec_prefix(self) -> list[str]:
        if self.reaper is None or not _alive(self.reaper.pid):
            raise LabError(f"{self.name} is not running")
        return ["nsenter", f"--target={self.reaper.pid}", "--net", "--mount", "--uts", "--"]

    @property
    def shell(self) -> HostShell:
        return HostShell.for_uri(self.uri, self.exec_prefix)

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a command on the host (in its namespaces)."""
        return _sh(*self.exec_prefix, *argv, check=check, timeout=timeout)

    def pid_of(self, daemon: str) -> int | None:
        try:
            return int((self.dir / f"{daemon}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _ours(self, pid: int | None, comm: str | None = None) -> bool:
        if not pid or not _alive(pid) or (comm and _comm(pid) != comm):
            return False
        try:
            return os.readlink(f"/proc/{pid}/ns/net") == f"net:[{self._netns_inode}]"
        except OSError:
            return False

    # ---- start / stop
    def _write_config(self, peers: list["LabHost"]) -> None:
        d = self.dir
        for sub in ("etc/qemu", "run", "lib/images", "log/qemu", "cache/qemu/capabilities"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "etc/libvirtd.conf").write_text(f"""# lab host {self.name} (tests/e2e/lab_hosts.py)
host_uuid = "{self.host_uuid}"
listen_tls = 0
listen_tcp = 1
listen_addr = "{self.address}"
auth_tcp = "none"
auth_unix_ro = "none"
auth_unix_rw = "none"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0700"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
""")
        (d / "etc/virtlogd.conf").write_text('log_outputs = "3:file:/var/log/libvirt/virtlogd.log"\n')
        (d / "etc/qemu.conf").write_text(f"""# lab host {self.name}
user = "root"
group = "root"
security_driver = "none"
dynamic_ownership = 0
remember_owner = 0
cgroup_controllers = [ ]
migration_address = "{self.address}"
migration_host = "{self.address}"
""")
        if Path("/etc/libvirt/nwfilter").is_dir():     # libvirt's default nwfilters, as installed
            shutil.copytree("/etc/libvirt/nwfilter", d / "etc/nwfilter", dirs_exist_ok=True)
        # the QEMU capabilities the machine's own libvirtd cached: libvirt validates them (same
        # QEMU and libvirtd binaries, kernel, CPU) and probes again if they do not fit
        caps = Path("/var/cache/libvirt/qemu/capabilities")
        if caps.is_dir():
            for f in caps.glob("*.xml"):
                shutil.copy2(f, d / "cache/qemu/capabilities" / f.name)
        (d / "hosts").write_text("127.0.0.1 localhost\n" +
                                 "".join(f"{h.address} {h.name}\n" for h in peers))
        if self.masked:
            (d / "masked").write_text("")
            (d / "masked").chmod(0o644)
        masks = "".join(f'mount --bind "{d}/masked" "{path}"\n' for path in self.masked)
        (d / "boot.sh").write_text(f"""#!/bin/sh
# lab host {self.name}: runs inside netns {self.netns}, in a private mount + UTS namespace
set -e
mount --bind "{d}/etc"   /etc/libvirt
mount --bind "{d}/run"   /run/libvirt
mount --bind "{d}/lib"   /var/lib/libvirt
mount --bind "{d}/log"   /var/log/libvirt
mount --bind "{d}/cache" /var/cache/libvirt
mount --bind "{d}/hosts" /etc/hosts
{masks}hostname {self.name}
# privileged daemons default to /run/virtlogd.pid and /run/libvirtd.pid (the machine's own)
virtlogd -d -p "{d}/virtlogd.pid" -f /etc/libvirt/virtlogd.conf
libvirtd -d -l -p "{d}/libvirtd.pid" -f /etc/libvirt/libvirtd.conf
echo ok >"{d}/boot.status"
""")

    def _launch(self) -> None:
        log = open(self.dir / "startup.log", "ab")
        try:
            # ip netns exec (remounts /sys for the netns) -> unshare (mount + UTS) -> perl, all by
            # exec: the Popen's pid is the subreaper, inside all three namespaces
            self.reaper = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--uts", "--propagation", "private",
                 "--", "perl", "-MPOSIX", "-e", REAPER_PL, "/bin/sh", str(self.dir / "boot.sh")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()

    def _wait_answering(self, deadline: float) -> None:
        import libvirt
        status = self.dir / "boot.status"
        while not status.exists():
            if self.reaper.poll() is not None or (time.monotonic() > deadline):
                raise LabError(f"{self.name} did not start:\n{self.logs()}")
            time.sleep(0.005)
        # libvirtd -d returns once its sockets are there; opening waits for its drivers
        while True:
            try:
                conn = libvirt.open(self.uri)
                conn.close()
                return
            except libvirt.libvirtError:
                if time.monotonic() > deadline or not self._ours(self.pid_of("libvirtd"), "libvirtd"):
                    raise LabError(f"{self.name}: libvirtd does not answer:\n{self.logs()}")
                time.sleep(0.01)

    # ---- its libvirtd killed and started again (a host's daemon dying under the server)
    def kill_libvirtd(self, sig: int = signal.SIGKILL, timeout: float = 10) -> int:
        """Kill this host's libvirtd (SIGKILL: as a crash would); virtlogd and the guests' QEMUs
        keep running.  Returns once it is gone; its pid."""
        pid = self.pid_of("libvirtd")
        if not self._ours(pid, "libvirtd"):
            raise LabError(f"{self.name}: libvirtd is not running")
        os.kill(pid, sig)
        if _wait_gone([pid], timeout):
            raise LabError(f"{self.name}: libvirtd {pid} still runs {timeout} s after signal {sig}")
        return pid

    def start_libvirtd(self, timeout: float = 60) -> None:
        """Start this host's libvirtd again (after ``kill_libvirtd``), in the host's namespaces and
        under a subreaper of its own, as at boot; returns once it answers (it has reconnected to
        its running guests by then)."""
        import libvirt
        if self._ours(self.pid_of("libvirtd"), "libvirtd"):
            raise LabError(f"{self.name}: libvirtd already runs")
        log = open(self.dir / "startup.log", "ab")
        try:
            self._restarts.append(subprocess.Popen(
                [*self.exec_prefix, "perl", "-MPOSIX", "-e", REAPER_PL, "libvirtd", "-d", "-l",
                 "-p", str(self.dir / "libvirtd.pid"), "-f", "/etc/libvirt/libvirtd.conf"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._ours(self.pid_of("libvirtd"), "libvirtd"):
                try:
                    libvirt.open(self.uri).close()
                    return
                except libvirt.libvirtError:
                    pass
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: libvirtd started again does not answer:\n{self.logs()}")
            time.sleep(0.01)

    def restart_libvirtd(self, sig: int = signal.SIGKILL) -> None:
        self.kill_libvirtd(sig)
        self.start_libvirtd()

    def logs(self) -> str:
        out = []
        for f in ("startup.log", "log/libvirtd.log", "log/virtlogd.log"):
            try:
                text = (self.dir / f).read_text(errors="replace")
            except OSError:
                continue
            out.append(f"--- {self.dir / f}\n" + "\n".join(text.splitlines()[-30:]))
        return "\n".join(out)

    def _destroy_domains(self) -> None:
        if not self._ours(self.pid_of("libvirtd"), "libvirtd"):
            return
        try:
            import libvirt
            conn = libvirt.open(self.uri)
        except Exception:
            return
        try:
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                try:
                    dom.destroy()
                except libvirt.libvirtError:
                    pass
        finally:
            conn.close()

    def _term_daemons(self) -> list[int]:
        pids = []
        for daemon in ("libvirtd", "virtlogd"):
            pid = self.pid_of(daemon)
            if self._ours(pid, daemon):
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
        return pids

    def _finish_stop(self) -> None:
        """After the daemons are gone: the rest of our netns by PID, the subreaper, the netns."""
        for pid in _pids_in_netns(self._netns_inode):
            if self.reaper is not None and pid == self.reaper.pid:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for reaper in self._restarts:
            try:
                reaper.wait(timeout=10)
            except subprocess.TimeoutExpired:
                reaper.kill()
                reaper.wait(timeout=10)
        if self.reaper is not None:
            try:
                self.reaper.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.reaper.kill()
                self.reaper.wait(timeout=10)
        if _netns_inode(self.netns) is not None:
            _sh("ip", "netns", "del", self.netns, check=False)

    def stop(self) -> None:
        """Stop this host: its domains, daemons and every process in its netns; delete its netns
        (and with it the veth pair).  The state directory stays until ``LabHosts.stop()``."""
        self._destroy_domains()
        left = _wait_gone(self._term_daemons(), 10)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        self._finish_stop()


@dataclass
class NetnsGuest:
    """A "guest": a network namespace whose ``eth0`` is a veth to a bridge on a lab host."""

    netns: str
    host: LabHost
    port: str                  # the veth end on the host (a port of the bridge)
    address: str               # with its prefix length, e.g. 10.232.0.11/24
    removed: bool = field(default=False)

    @property
    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return _sh(*self.exec_prefix, *argv, check=check, timeout=timeout)

    def ping(self, address: str, count: int = 1, wait: float = 2, size: int | None = None,
             dont_fragment: bool = False) -> bool:
        argv = ["ping", "-n", "-q", "-c", str(count), "-W", f"{wait:g}"]
        if size is not None:
            argv += ["-s", str(size)]
        if dont_fragment:
            argv += ["-M", "do"]
        return self.run(*argv, address, check=False, timeout=wait * count + 10).returncode == 0

    def remove(self) -> None:
        if self.removed:
            return
        for pid in _pids_in_netns(_netns_inode(self.netns)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if _netns_inode(self.netns) is not None:
            _sh("ip", "netns", "del", self.netns, check=False)
        self.removed = True


class LabHosts:
    """Two lab hosts, ``lab1`` and ``lab2`` (see the module doc). A context manager."""

    def __init__(self, probe_qemu: bool = False, masked: dict[str, tuple[str, ...]] | None = None):
        """``masked``: per host name (``lab2``), files that host lacks (e.g. ``/usr/bin/swtpm``: its
        libvirtd then offers no TPM emulator), each covered by an empty, non-executable file in
        that host's mount namespace before its daemons start; the machine itself is untouched."""
        self.probe_qemu = probe_qemu
        self.masked = dict(masked or {})
        self.tag = ""
        self.dir: Path | None = None
        self.hosts: list[LabHost] = []
        self.guests: list[NetnsGuest] = []
        self._lease: RouteLease | None = None
        self.start_seconds = 0.0
        self.stop_seconds = 0.0

    @property
    def lab1(self) -> LabHost:
        return self.hosts[0]

    @property
    def lab2(self) -> LabHost:
        return self.hosts[1]

    @property
    def link_prefix(self) -> str:
        return self._lease.prefixes[0]

    @property
    def guest_prefix(self) -> str:
        """A /24 reserved (unreachable from the root namespace) for guests behind the hosts."""
        return self._lease.prefixes[1]

    def xenapi_settings(self) -> dict:
        """The Config fields of a xenapi server over both hosts, lab1 the master: their URIs, how
        the server runs commands on them, and how their libvirtds dial each other (over TCP inside
        the lab: the server reaches them through their unix sockets)."""
        return {"libvirt_uris": [h.uri for h in self.hosts], "host_exec": {h.uri: h.exec_prefix for h in self.hosts},
                "migrate_uris": {h.uri: h.tcp_uri for h in self.hosts}}

    def guest_address(self, n: int) -> str:
        """``<guest prefix>.n/24``"""
        net = ipaddress.ip_network(self.guest_prefix)
        return f"{net.network_address + n}/{net.prefixlen}"

    def __enter__(self) -> "LabHosts":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        t0 = time.monotonic()
        if os.geteuid() != 0:
            raise LabError("the lab hosts need root (network namespaces, a privileged libvirtd)")
        for tool in ("ip", "unshare", "nsenter", "perl", "libvirtd", "virtlogd"):
            if shutil.which(tool) is None:
                raise LabError(f"missing {tool}")
        try:
            self.dir = Path(tempfile.mkdtemp(prefix="xenapi-lab-", dir="/run"))
            while True:
                self.tag = "xl" + secrets.token_hex(3)
                if not any(Path(f"/run/netns/{self.tag}-{i}").exists() for i in (1, 2, "g1")):
                    break
            self._lease = RouteLease((LINK_BASE, GUEST_BASE))
            net = ipaddress.ip_network(self.link_prefix)
            self.hosts = [LabHost(name=f"lab{i}", netns=f"{self.tag}-{i}", address=str(net.network_address + i),
                                  dir=self.dir / f"lab{i}", host_uuid=str(uuid.uuid4()),
                                  masked=tuple(self.masked.get(f"lab{i}", ()))) for i in (1, 2)]
            for host in self.hosts:
                _sh("ip", "netns", "add", host.netns)
                host._netns_inode = _netns_inode(host.netns)
                _sh("ip", "-n", host.netns, "link", "set", "lo", "up")
            _sh("ip", "link", "add", LINK_DEVICE, "netns", self.lab1.netns, "type", "veth",
                "peer", "name", LINK_DEVICE, "netns", self.lab2.netns)
            for host in self.hosts:
                _sh("ip", "-n", host.netns, "addr", "add", f"{host.address}/{net.prefixlen}", "dev", LINK_DEVICE)
                _sh("ip", "-n", host.netns, "link", "set", LINK_DEVICE, "up")
                host._write_config(self.hosts)
            for host in self.hosts:
                host._launch()
            deadline = time.monotonic() + 60
            for host in self.hosts:
                host._wait_answering(deadline)
            if self.probe_qemu:
                probes = [subprocess.Popen(["virsh", "-q", "-c", h.uri, "domcapabilities"], stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for h in self.hosts]
                for p in probes:
                    p.wait(timeout=120)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0

    def add_netns_guest(self, host: LabHost, bridge: str, address: str, mtu: int | None = None) -> NetnsGuest:
        """A fresh netns whose ``eth0`` (``address``, with prefix length) is a veth to ``bridge`` on ``host``."""
        n = len(self.guests) + 1
        guest = NetnsGuest(netns=f"{self.tag}-g{n}", host=host, port=f"g{n}p", address=address)
        self.guests.append(guest)
        _sh("ip", "netns", "add", guest.netns)
        _sh("ip", "-n", guest.netns, "link", "set", "lo", "up")
        _sh("ip", "link", "add", "eth0", "netns", guest.netns, "type", "veth", "peer", "name", guest.port,
            "netns", host.netns)
        if mtu:
            _sh("ip", "-n", guest.netns, "link", "set", "eth0", "mtu", str(mtu))
            _sh("ip", "-n", host.netns, "link", "set", guest.port, "mtu", str(mtu))
        _sh("ip", "-n", guest.netns, "addr", "add", address, "dev", "eth0")
        _sh("ip", "-n", guest.netns, "link", "set", "eth0", "up")
        _sh("ip", "-n", host.netns, "link", "set", guest.port, "master", bridge, "up")
        return guest

    def stop(self) -> None:
        """Stop everything ``start`` (and ``add_netns_guest``) made; safe to call twice."""
        t0 = time.monotonic()
        errors = []
        for guest in self.guests:
            try:
                guest.remove()
            except Exception as e:
                errors.append(e)
        # both hosts at once: their domains, then TERM to all daemons, then wait for them all
        for host in self.hosts:
            try:
                host._destroy_domains()
            except Exception as e:
                errors.append(e)
        pids = []
        for host in self.hosts:
            pids += host._term_daemons()
        for pid in _wait_gone(pids, 10):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for host in self.hosts:
            try:
                host._finish_stop()
            except Exception as e:
                errors.append(e)
        if self._lease is not None:
            self._lease.release()
        if self.dir is not None and self.dir.name.startswith("xenapi-lab-"):
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self.stop_seconds = time.monotonic() - t0
        if errors:
            raise LabError(f"stopping the lab hosts: {errors}")


@pytest.fixture(scope="session")
def lab_hosts():
    """Two running lab hosts (``LabHosts``) for the whole session; stopped at its end."""
    try:
        lab = LabHosts()
        lab.start()
    except LabError as e:
        pytest.fail(f"the lab hosts cannot start: {e}", pytrace=False)
    try:
        yield lab
    finally:
        lab.stop()
