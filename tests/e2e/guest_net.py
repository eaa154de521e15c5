"""Networking of the tiny guest for the end-to-end tests: a shell on its serial console, and helpers
that make two guests talk (addresses, ping, TCP ports, throughput), plus the host-side pieces a
network test needs (an isolated libvirt network, an ``unreachable`` route for the private prefix
the guests use).

The command channel (the guest side is in ``guest.INIT``): the test types a line

    @xe <id> <command>

on the guest's serial console (``<id>``: letters, digits, ``-``); the guest runs ``<command>`` with
``sh -c`` (stdin /dev/null, one command at a time, so a long one holds the next back: put servers
in the background with ``&``) and answers

    @xe <id> begin
    @xe <id> | <each line of its stdout and stderr>
    @xe <id> end rc=<exit status>

Every other line the guest prints (``uptime``, ``block devices:``, ``net devices:``, ...) goes on
as before, in between; lines typed without the prefix are ignored; the guest does not echo what
is typed (except what arrives before its init turned echo off, which cannot look like an answer).
The console is the one a ``qemu_e2e.SerialConsole`` copies to a log file (a VM the xenapi server
defined, ``<serial type='pty'>``), or that of a raw libvirt domain made with
``TinyGuest.domain_xml(..., serial="pty")``.  The guest prints ``@xe ready`` once it reads commands;
a shell opened later (having missed that line) probes with ``true`` (``GuestShell.wait_ready``).

The guest's busybox has ``ip``, ``ping``, ``nc`` (``-l -p PORT``, ``-w SEC``: connect or accept
timeout), ``dd``, ``netstat``, ``timeout``, ``tc``, ``brctl``; its ``date`` has no ``%N``, so times are
read from ``/proc/uptime`` (10 ms).  Its IPv6 is off (no traffic of its own) and its NICs are
virtio-net (``eth0``, ``eth1``, ... in the order the kernel finds them: match them by MAC with
``guest.net_devices``/``wait_for_net_device``).

busybox ``nc`` stops as soon as the other end closes its sending half, and a listener whose stdin is
/dev/null closes it at once: so listeners here read from a ``sleep`` (their stdin stays open).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import re
import secrets
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import guest
from qemu_e2e import SerialConsole

KERNEL_LINE = re.compile(r"\[ *\d+\.\d{6}\] [^\n]*\n")   # a kernel console message, even inside a line
MAX_COMMAND = 3000          # a canonical-mode tty line holds 4095 bytes


class GuestShellTimeout(TimeoutError):
    pass


class GuestCommandFailed(AssertionError):
    pass


class GuestShell:
    """Commands run in a tiny guest through its serial console.

    ``GuestShell(console)`` with a ``qemu_e2e.SerialConsole`` (left open on ``close``), or
    ``GuestShell(pty_path, log)``, which opens one on that pty copying to ``log`` (closed on
    ``close``).  ``run(command, timeout) -> (rc, output)``; ``check(command) -> output`` (raises
    ``GuestCommandFailed`` unless rc is 0).  Thread-safe (one command at a time per shell)."""

    _ids = itertools.count(1)

    def __init__(self, console: SerialConsole | str | os.PathLike, log: Path | None = None, *,
                 name: str = ""):
        if isinstance(console, SerialConsole):
            self.console, self._owned = console, False
        else:
            if log is None:
                raise ValueError("GuestShell(pty_path, log): a log file for the console is needed")
            self.console, self._owned = SerialConsole(str(console), Path(log)), True
        self.name = name or os.path.basename(self.console.pty)
        self._token = secrets.token_hex(3)
        self._lock = threading.Lock()

    @classmethod
    def of_domain(cls, dom, log: Path, *, name: str = "") -> "GuestShell":
        """The shell of running libvirt domain ``dom`` (a pty serial console), its console copied to
        ``log`` from now on."""
        return cls(pty_of(dom), log, name=name or dom.name())

    # -- the channel -------------------------------------------------------------------------------

    def _new_id(self) -> str:
        return f"{self._token}-{next(self._ids)}"

    def _send(self, line: str) -> None:
        data = (line + "\n").encode()
        while data:
            try:
                data = data[os.write(self.console.fd, data):]
            except BlockingIOError:
                time.sleep(0.01)

    def _text(self, offset: int) -> str:
        try:
            with open(self.console.log, "rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        return KERNEL_LINE.sub("", text.replace("\r", ""))

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.console.text().replace("\r", "").splitlines()[-lines:])

    @staticmethod
    def _answer(text: str, cid: str) -> tuple[int, str] | None:
        end = re.search(rf"^@xe {re.escape(cid)} end rc=(\d+)$", text, re.M)
        if end is None:
            return None
        prefix = f"@xe {cid} | "
        output = [line[len(prefix):] for line in text[:end.start()].splitlines() if line.startswith(prefix)]
        return int(end.group(1)), "\n".join(output)

    def run(self, command: str, timeout: float = 30.0) -> tuple[int, str]:
        """Run ``command`` (one line of sh) in the guest: (exit status, its output, stdout and stderr
        together, without the last newline).  Raises GuestShellTimeout, with the console's tail,
        if no answer comes within ``timeout`` seconds (the command may still be running then, and
        holds the guest's next commands back until it ends)."""
        if "\n" in command or "\r" in command or any(ord(c) < 32 and c != "\t" or c == "\x7f" for c in command):
            raise ValueError(f"one line without control characters, please: {command!r}")
        if len(command) > MAX_COMMAND:
            raise ValueError(f"command longer than {MAX_COMMAND} characters")
        with self._lock:
            cid = self._new_id()
            offset = self.console.size()
            self._send(f"@xe {cid} {command}")
            deadline = time.monotonic() + timeout
            while True:
                answer = self._answer(self._text(offset), cid)
                if answer is not None:
                    return answer
                if time.monotonic() >= deadline:
                    raise GuestShellTimeout(
                        f"{self.name}: no answer to {command!r} (id {cid}) within {timeout} s; "
                        f"console ({self.console.log}) ends with:\n{self.tail()}")
                time.sleep(0.05)

    def check(self, command: str, timeout: float = 30.0) -> str:
        """``run``, raising GuestCommandFailed unless the command exits 0; its output."""
        rc, output = self.run(command, timeout)
        if rc != 0:
            raise GuestCommandFailed(f"{self.name}: {command!r} exited {rc}:\n{output}")
        return output

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Until the guest answers commands (probes with ``true`` every 2 s, as a console opened
        after boot has missed ``@xe ready``); the seconds it took."""
        t0 = time.monotonic()
        offset = self.console.size()
        ids: list[str] = []
        with self._lock:
            while True:
                text = self._text(offset)
                if any(self._answer(text, cid) is not None for cid in ids):
                    return time.monotonic() - t0
                if time.monotonic() - t0 >= timeout:
                    raise GuestShellTimeout(f"{self.name}: no answer on the command channel within "
                                            f"{timeout} s; console ({self.console.log}) ends with:\n"
                                            f"{self.tail()}")
                if not ids or time.monotonic() - t0 >= 2 * len(ids):
                    ids.append(self._new_id())
                    self._send(f"@xe {ids[-1]} true")
                time.sleep(0.05)

    def close(self) -> None:
        if self._owned:
            self.console.close()

    def __enter__(self) -> "GuestShell":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pty_of(dom) -> str:
    """The pty of the serial console of running libvirt domain ``dom``."""
    source = ET.fromstring(dom.XMLDesc(0)).find("devices/serial[@type='pty']/source")
    if source is None or not source.get("path"):
        raise AssertionError(f"domain {dom.name()} has no pty serial console (running?)")
    return source.get("path")


def start_with_shell(dom, log: Path) -> GuestShell:
    """Start libvirt domain ``dom`` (``serial="pty"``) with its console copied to ``log`` from its
    first byte (started paused, the console opened, resumed): its shell, ready once
    ``wait_ready`` returns.  The caller closes it."""
    import libvirt
    dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    shell = GuestShell.of_domain(dom, log)
    try:
        dom.resume()
    except BaseException:
        shell.close()
        raise
    return shell


# -- guest-side helpers --------------------------------------------------------------------------

def configure(shell: GuestShell, dev: str, cidr: str) -> None:
    """Give guest device ``dev`` address ``cidr`` (e.g. ``10.1.2.3/24``) and set it up."""
    shell.check(f"ip addr add {cidr} dev {dev} && ip link set {dev} up")


def wait_for_net_devices(source, predicate, timeout: float = 60.0, *, offset: int = 0) -> dict[str, str]:
    """The guest's network devices ({name: MAC}, lo aside) once its latest ``net devices:`` line
    (printed at its 2 s tick when they change) satisfies ``predicate``.  ``source``: a
    GuestShell, a SerialConsole or a log path; only what it printed after byte ``offset`` counts."""
    log = source.console.log if isinstance(source, GuestShell) else getattr(source, "log", source)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(log, "rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            text = ""
        devices = guest.net_devices(KERNEL_LINE.sub("", text.replace("\r", "")))
        if devices is not None and predicate(devices):
            return devices
        if time.monotonic() >= deadline:
            tail = "\n".join(text.replace("\r", "").splitlines()[-25:])
            raise TimeoutError(f"net devices in {log} never as wanted within {timeout} s "
                               f"(last: {devices}); last lines:\n{tail}")
        time.sleep(0.1)


def wait_for_net_device(source, mac: str, timeout: float = 60.0, *, offset: int = 0) -> str:
    """The name (``eth1``...) of the guest's device with MAC ``mac``, once it has one."""
    mac = mac.lower()
    devices = wait_for_net_devices(source, lambda d: mac in (m.lower() for m in d.values()), timeout,
                                   offset=offset)
    return next(name for name, m in devices.items() if m.lower() == mac)


def net_devices_now(shell: GuestShell) -> dict[str, str]:
    """The guest's network devices ({name: MAC}, lo aside) as it has them now (asked through its
    shell, not from its 2 s tick)."""
    output = shell.check("for d in /sys/class/net/*; do n=${d##*/}; [ $n = lo ] || echo $n=$(cat $d/address); done")
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


PING_TIME = re.compile(r"time=([\d.]+) ms")


def ping(shell: GuestShell, address: str, count: int = 3, *, wait: float = 5.0) -> list[float]:
    """``ping -c count`` from the guest: the round trips in ms of the replies (empty: none came,
    falsy).  ``wait``: seconds ping waits in all (``-w``)."""
    # -W too: without it busybox waits 10 s for a reply that never comes, whatever -w says
    _, output = shell.run(f"ping -c {int(count)} -i 0.2 -w {max(1, int(wait))} -W {max(1, int(wait))} {address}",
                          timeout=wait + 15)
    return [float(t) for t in PING_TIME.findall(output)]


def _listen_command(port: int, out: str, accept_within: float, stay: float) -> str:
    # stdin a sleep: a listener whose stdin ends closes its sending half, which stops the peer's nc
    wait = max(1, int(accept_within))
    return (f"(sleep {int(wait + stay)} | nc -l -w {wait} -p {int(port)} > {out} 2>/dev/null) & "
            f"i=0; while ! netstat -ltn | grep -q ':{int(port)} '; do i=$((i+1)); "
            f"[ $i -gt 100 ] && {{ echo 'not listening'; exit 1; }}; sleep 0.1; done")


def listen(shell: GuestShell, port: int, *, out: str = "/dev/null", accept_within: float = 30.0,
           stay: float = 120.0) -> None:
    """A TCP listener (busybox ``nc -l``) on ``port`` in the guest, in the background, writing what it
    receives to ``out``; returns once it listens.  It gives up if nobody connects within
    ``accept_within`` s, and ends when its peer has sent everything (at most ``stay`` s later)."""
    shell.check(_listen_command(port, out, accept_within, stay))


def connect(shell: GuestShell, address: str, port: int, *, payload: str = "", timeout: float = 2.0) -> bool:
    """Whether a TCP connection from the guest to ``address``:``port`` is made (within ``timeout``
    s: ``nc -w``), sending ``payload`` (a word) if given."""
    if payload and not re.fullmatch(r"[\w.-]+", payload):
        raise ValueError("payload: one word")
    rc, _ = shell.run(f"echo {payload} | nc -w {max(1, int(timeout))} {address} {int(port)}",
                      timeout=timeout + 20)
    return rc == 0


def port_reachable(client: GuestShell, server: GuestShell, address: str, port: int, *,
                   timeout: float = 2.0) -> bool:
    """Whether guest ``client`` reaches TCP ``port`` of guest ``server`` at ``address``: a listener
    in ``server`` (gone afterwards), a connection from ``client`` carrying a fresh token, True only if
    the listener received that token."""
    token = f"xe{secrets.token_hex(6)}"
    out = f"/tmp/rx-{int(port)}"
    server.check(f"rm -f {out}")
    listen(server, port, out=out, accept_within=timeout + 30, stay=30)
    try:
        connected = connect(client, address, port, payload=token, timeout=timeout)
        received = ""
        if connected:   # the listener writes what it got and exits as the client finishes
            deadline = time.monotonic() + 10
            while token not in received and time.monotonic() < deadline:
                received = server.run(f"cat {out}")[1]
                time.sleep(0.1)
        return connected and token in received
    finally:
        stop_listener(server, port)
        server.run(f"rm -f {out}")


def stop_listener(shell: GuestShell, port: int) -> None:
    """Kill the guest's ``nc`` listening on ``port`` (if still there)."""
    shell.run(f"for p in $(pidof nc); do case \"$(tr '\\0' ' ' </proc/$p/cmdline) \" in "
              f"*' -p {int(port)} '*) kill $p;; esac; done; true")


@dataclass
class Throughput:
    nbytes: int
    seconds: float           # the sender's clock: from before dd to nc's end (all received)
    wall_seconds: float      # the host's clock around the sender's command (console round trip too)

    @property
    def mbit_s(self) -> float:
        return self.nbytes * 8 / self.seconds / 1e6


def throughput(sender: GuestShell, receiver: GuestShell, address: str, *, megabytes: float = 4.0,
               port: int = 5001, timeout: float = 180.0) -> Throughput:
    """One TCP transfer of ``megabytes`` (10^6 bytes) of zeros from guest ``sender`` to ``receiver``
    (listening at ``address``:``port``), timed in the sender from before ``dd`` until its ``nc``
    ends, which is when the receiver has it all and closed (busybox nc); Mbit/s in ``.mbit_s``."""
    bs = 65536
    count = max(1, int(megabytes * 1e6 // bs))
    listen(receiver, port, accept_within=30, stay=timeout)
    t0 = time.monotonic()
    output = sender.check(
        f"t0=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero bs={bs} count={count} 2>/dev/null "
        f"| nc {address} {int(port)} || exit 1; t1=$(cut -d' ' -f1 /proc/uptime); echo \"xfer $t0 $t1\"",
        timeout=timeout)
    wall = time.monotonic() - t0
    m = re.search(r"^xfer ([\d.]+) ([\d.]+)$", output, re.M)
    if m is None:
        raise GuestCommandFailed(f"{sender.name}: no timing in {output!r}")
    seconds = max(float(m.group(2)) - float(m.group(1)), 0.01)
    return Throughput(bs * count, seconds, wall)


# -- host-side helpers ---------------------------------------------------------------------------

def random_mac() -> str:
    """A locally unique 52:54:00 (QEMU) MAC address."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def interface_xml(network: str, mac: str, *, bandwidth: str = "") -> str:
    """A virtio ``<interface type='network'>`` on libvirt network ``network`` (``bandwidth``: the
    inside of a ``<bandwidth>`` element, e.g. ``<outbound average='1250'/>``, KB/s)."""
    bw = f"\n      <bandwidth>{bandwidth}</bandwidth>" if bandwidth else ""
    return (f"    <interface type='network'>\n      <source network={quoteattr(network)}/>\n"
            f"      <mac address={quoteattr(mac)}/>\n      <model type='virtio'/>{bw}\n    </interface>\n")


def host_taps(dom) -> list[str]:
    """The host-side devices (tap, ``vnetN``) of running domain ``dom``'s interfaces."""
    root = ET.fromstring(dom.XMLDesc(0))
    return [t.get("dev") for t in root.findall("devices/interface/target") if t.get("dev")]


def unaddress_taps(dom) -> list[str]:
    """Turn IPv6 off on ``dom``'s taps in the host, which removes the link-local address the kernel
    gave each (the host then has no address on the isolated network at all, and sends nothing
    there); the taps."""
    taps = host_taps(dom)
    for tap in taps:
        with contextlib.suppress(FileNotFoundError):   # gone meanwhile
            Path(f"/proc/sys/net/ipv6/conf/{tap}/disable_ipv6").write_text("1\n")
    return taps


NETWORK_PREFIX = "xe2e-"      # networks made by isolated_network: xe2e-<pid>-<n>-<hint>
_net_counter = itertools.count(1)


def _remove_stale_networks(conn) -> None:
    """Networks left by a killed test session (its pid is gone)."""
    import libvirt
    for net in conn.listAllNetworks():
        name = net.name()
        pid = name[len(NETWORK_PREFIX):].split("-", 1)[0]
        if name.startswith(NETWORK_PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(libvirt.libvirtError):
                if net.isActive():
                    net.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                net.undefine()


@contextlib.contextmanager
def isolated_network(conn, hint: str = "net"):
    """A running libvirt network with no ``<forward>`` and no ``<ip>``: a bridge with no address on
    the host (no dnsmasq), reaching nothing but the guests on it.  Yields its name; destroyed and
    undefined afterwards, whatever happened."""
    import libvirt
    _remove_stale_networks(conn)
    name = f"{NETWORK_PREFIX}{os.getpid()}-{next(_net_counter)}-{hint}"
    # stp off: a port (a hot-plugged NIC's tap) forwards at once, not after STP's listening and
    # learning states (2 s each at least)
    net = conn.networkDefineXML(f"<network><name>{escape(name)}</name><bridge stp='off'/></network>")
    try:
        net.create()
        bridge = net.bridgeName()
        addresses = subprocess.run(["ip", "-o", "addr", "show", "dev", bridge], capture_output=True,
                                   text=True).stdout.strip()
        if addresses:
            raise AssertionError(f"network {name}: its bridge {bridge} has host addresses:\n{addresses}")
        yield name
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            if net.isActive():
                net.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            net.undefine()


def _routes() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    nets = []
    for line in out.splitlines():
        words = line.split()
        if words and words[0] in ("unreachable", "blackhole", "prohibit", "local", "broadcast"):
            words = words[1:]
        if words and words[0] != "default":
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.ip_network(words[0], strict=False))
    return nets


@contextlib.contextmanager
def unreachable_route(prefix: str | None = None):
    """``ip route add unreachable <prefix>`` in the root namespace while the block runs (removed
    after, whatever happened): the host cannot send anything to the private prefix the guests use.
    Without ``prefix``, a free 10.x.y.0/24 (overlapping no route of the host) is taken; the route
    itself reserves it against another test doing the same.  Yields the prefix."""
    candidates = [prefix] if prefix else None
    if candidates is None:
        taken = _routes()
        start = secrets.randbelow(200 * 250)
        candidates = []
        for i in range(64):
            n = (start + i * 7919) % (200 * 250)
            net = ipaddress.ip_network(f"10.{50 + n // 250}.{n % 250}.0/24")
            if not any(net.overlaps(t) for t in taken):
                candidates.append(str(net))
    for candidate in candidates:
        r = subprocess.run(["ip", "route", "add", "unreachable", candidate], capture_output=True, text=True)
        if r.returncode == 0:
            break
        if prefix:
            raise AssertionError(f"ip route add unreachable {candidate}: {r.stderr.strip()}")
    else:
        raise AssertionError("no free private /24 for an unreachable route")
    try:
        yield candidate
    finally:
        subprocess.run(["ip", "route", "del", "unreachable", candidate], capture_output=True)


def host(prefix: str, n: int) -> str:
    """Address ``n`` of ``prefix`` (``host("10.1.2.0/24", 5)`` -> ``"10.1.2.5"``)."""
    return str(ipaddress.ip_network(prefix)[n])


def cidr(prefix: str, n: int) -> str:
    """Address ``n`` of ``prefix`` with its length (``"10.1.2.5/24"``)."""
    net = ipaddress.ip_network(prefix)
    return f"{net[n]}/{net.prefixlen}"
