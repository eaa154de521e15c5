"""A VIF's rate limit enforced with tc on its host, where libvirt's ``<bandwidth>`` cannot be.

libvirt limits a guest's sending rate with an ingress ``police`` action on the tap device and its
receiving rate with HTB + SFQ; a kernel without ``act_police`` or ``sch_sfq`` makes a domain with
``<bandwidth>`` fail to start.  Where the host has what ``probe`` finds instead (an ``ifb`` device,
``u32`` + ``mirred``, ``tbf``), the server shapes itself: what the guest sends (the tap's ingress)
is redirected to an ifb device ``xq<tap>`` and leaves it through a token bucket at the VIF's rate.

    tc qdisc add dev <tap> handle ffff: ingress
    tc filter add dev <tap> parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev xq<tap>
    tc qdisc add dev xq<tap> root tbf rate <kbps>kbit burst <..> latency 50ms

Functions take a ``HostShell`` (xenapi/backend/host_shell.py).
"""
from __future__ import annotations

import secrets

from xenapi.backend.host_shell import HostShell

LIBVIRT, IFB = "libvirt", "ifb"       # how a host limits a VIF's rate (None: it cannot)
_PREFIX = "xq"
_TIMEOUT = 10.0


class ShapingError(RuntimeError):
    pass


def _ok(shell: HostShell, *argv: str) -> bool:
    return shell.run(list(argv), timeout=_TIMEOUT).returncode == 0


def _must(shell: HostShell, *argv: str) -> None:
    result = shell.run(list(argv), timeout=_TIMEOUT)
    if result.returncode != 0:
        raise ShapingError(f"{' '.join(argv)} on {shell.description}: {result.stderr.strip()}")


def probe(shell: HostShell) -> str | None:
    """How this host can limit a guest's sending rate: ``LIBVIRT`` (its kernel has what libvirt's
    ``<bandwidth>`` uses), ``IFB`` (what ``shape`` uses), or None; checked on a throwaway device."""
    if not shell.available:
        return None
    device = f"xqp{secrets.token_hex(4)}"
    if not _ok(shell, "ip", "link", "add", "name", device, "type", "ifb"):
        return None
    try:
        if (_ok(shell, "tc", "qdisc", "add", "dev", device, "root", "sfq")
                and _ok(shell, "tc", "qdisc", "add", "dev", device, "handle", "ffff:", "ingress")
                and _ok(shell, "tc", "filter", "add", "dev", device, "parent", "ffff:", "protocol", "all", "u32",
                        "match", "u32", "0", "0", "police", "rate", "1mbit", "burst", "10k", "drop")):
            return LIBVIRT
        _ok(shell, "tc", "qdisc", "del", "dev", device, "root")
        _ok(shell, "tc", "qdisc", "del", "dev", device, "ingress")
        if (_ok(shell, "tc", "qdisc", "add", "dev", device, "handle", "ffff:", "ingress")
                and _ok(shell, "tc", "filter", "add", "dev", device, "parent", "ffff:", "protocol", "all", "u32",
                        "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", device)
                and _ok(shell, "tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", "1mbit", "burst", "10k",
                        "latency", "50ms")):
            return IFB
        return None
    finally:
        _ok(shell, "ip", "link", "del", device)


def ifb_name(tap: str) -> str:
    name = f"{_PREFIX}{tap}"
    if len(name) > 15:
        raise ShapingError(f"tap device {tap!r}: {name!r} is too long for an ifb device name")
    return name


def shape(shell: HostShell, tap: str, kbps: int) -> None:
    """Limit what the guest behind ``tap`` sends to ``kbps`` kbit/s (replacing any earlier limit)."""
    unshape(shell, tap)
    ifb = ifb_name(tap)
    burst = max(kbps * 1000 // 8 // 50, 16 * 1024)      # 20 ms of traffic, at least 16 KiB (a few full frames)
    _must(shell, "ip", "link", "add", "name", ifb, "type", "ifb")
    try:
        _must(shell, "ip", "link", "set", ifb, "up")
        _must(shell, "tc", "qdisc", "add", "dev", ifb, "root", "tbf", "rate", f"{kbps}kbit", "burst", str(burst),
              "latency", "50ms")
        _must(shell, "tc", "qdisc", "add", "dev", tap, "handle", "ffff:", "ingress")
        _must(shell, "tc", "filter", "add", "dev", tap, "parent", "ffff:", "protocol", "all", "u32", "match", "u32",
              "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb)
    except ShapingError:
        unshape(shell, tap)
        raise


def unshape(shell: HostShell, tap: str) -> None:
    """No limit on ``tap`` any more (nothing to undo is fine; a tap already gone too)."""
    _ok(shell, "tc", "qdisc", "del", "dev", tap, "handle", "ffff:", "ingress")
    _ok(shell, "ip", "link", "del", ifb_name(tap))
