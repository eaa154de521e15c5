"""A network's latency, as the Xen-API's read-only ``network.latency`` means it: the time in ms
for an ICMP round trip to a host on the same subnet, measured from the host with iputils ``ping``.

``measure`` runs ``ping -n -q -c COUNT -i 0.2 -W WAIT TARGET`` through ``run`` (the host's shell:
this machine, another host over SSH, or a network namespace) and reads ping's summary::

    3 packets transmitted, 3 received, 0% packet loss, time 407ms
    rtt min/avg/max/mdev = 0.057/0.153/0.344/0.134 ms

A target that does not answer is a measurement, not an error of the caller: ``rtt_ms`` None,
``loss`` 1.0, ``error`` "no reply".  ``measure`` never raises for what happens on the host;
``error`` says why there is no figure: "no reply", "unreachable: ..." (ping could not send: no
route, unknown name), "no ping binary", "timeout" (the command outlived ``timeout``), or
"ping failed: ..." for anything else.

``default_target`` picks what to ping for a network: the address in its libvirt ``<ip>`` (a
libvirt network's gateway, the host's own address on the bridge), or, for a subnet given as CIDR,
its first host (10.0.0.0/24 -> 10.0.0.1): the gateway by the usual convention.
"""
from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from defusedxml.ElementTree import fromstring as parse_untrusted

Run = Callable[[list[str], float], subprocess.CompletedProcess]

INTERVAL = 0.2                # seconds between echo requests (the least iputils allows any user)
GRACE = 2.0                   # seconds beyond ping's own budget before the command counts as hung
_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_LOSS = re.compile(r"([\d.]+)% packet loss")
_RTT = re.compile(r"(?:rtt|round-trip) min/avg/max(?:/mdev|/stddev)? = ([\d.]+)/([\d.]+)/([\d.]+)(?:/([\d.]+))? ?ms")
_UNREACHABLE = ("unreachable", "no route", "not known", "name resolution", "unknown host")   # ping's stderr
_NO_BINARY = ("No such file or directory", "not found", "command not found")


@dataclass(frozen=True)
class Measurement:
    target: str
    rtt_ms: float | None          # average round trip; None: no reply
    min_ms: float | None
    max_ms: float | None
    mdev_ms: float | None
    loss: float                   # 0..1, the share of echo requests without a reply
    sent: int
    received: int
    measured_at: datetime         # UTC, when the measurement ended
    error: str = ""               # "" with a figure; else why not (module doc)


def measure(run: Run, target: str, count: int = 3, timeout: float = 5.0) -> Measurement:
    """Ping ``target`` ``count`` times through ``run``; within about ``timeout`` seconds whatever
    the target does (each reply is waited for at most what is left after the sends)."""
    count = max(1, count)
    wait = max(0.1, timeout - (count - 1) * INTERVAL)
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", f"{INTERVAL:g}", "-W", f"{wait:.1f}", target]
    try:
        done = run(argv, timeout + GRACE)
    except subprocess.TimeoutExpired:
        return _failed(target, "timeout")
    except FileNotFoundError:
        return _failed(target, "no ping binary")
    except OSError as e:
        return _failed(target, f"ping failed: {e}")
    return parse(target, _text(done.stdout), _text(done.stderr), done.returncode)


def parse(target: str, stdout: str, stderr: str = "", returncode: int = 0) -> Measurement:
    """A Measurement from iputils ping's output (with or without -q)."""
    counts, loss, rtt = _COUNTS.search(stdout), _LOSS.search(stdout), _RTT.search(stdout)
    if counts is None:                          # ping never got to send: say why
        said = (stderr.strip() or stdout.strip()).splitlines()
        message = said[-1] if said else f"exit status {returncode}"
        if returncode in (126, 127) or any(s in message for s in _NO_BINARY):
            return _failed(target, "no ping binary")
        message = message.removeprefix("ping: ")
        if any(s in message.lower() for s in _UNREACHABLE):
            return _failed(target, f"unreachable: {message}")
        return _failed(target, f"ping failed: {message}")
    sent, received = int(counts.group(1)), int(counts.group(2))
    lost = float(loss.group(1)) / 100 if loss else (1 - received / sent if sent else 1.0)
    if rtt is None or received == 0:
        return Measurement(target, None, None, None, None, 1.0 if received == 0 else lost, sent, received,
                           _now(), "no reply" if received == 0 else "no round-trip figures")
    low, avg, high = float(rtt.group(1)), float(rtt.group(2)), float(rtt.group(3))
    mdev = float(rtt.group(4)) if rtt.group(4) else None
    return Measurement(target, avg, low, high, mdev, lost, sent, received, _now())


def default_target(network: str) -> str | None:
    """What to ping for a network given as libvirt network XML (the first IPv4 ``<ip address>``)
    or as an IPv4 subnet "a.b.c.d/n" (its first host; a /31 or /32: its first address)."""
    text = network.strip()
    if text.startswith("<"):
        root = parse_untrusted(text)
        for ip in root.iter("ip"):
            if ip.get("address") and ip.get("family", "ipv4") == "ipv4":
                return ip.get("address")
        return None
    try:
        subnet = ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        return None
    first = next(subnet.hosts(), None) if subnet.prefixlen < 31 else subnet.network_address
    return str(first) if first is not None else None


def _failed(target: str, error: str) -> Measurement:
    return Measurement(target, None, None, None, None, 1.0, 0, 0, _now(), error)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
