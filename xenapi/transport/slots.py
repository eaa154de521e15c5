"""Connection slots: the server-wide cap and each source address's share of it.

Without a share, one address that opens ``max_connections`` connections and sends nothing (or
half a request, slowly) shuts every other client out with 503 until it lets go.  With one, it
holds at most ``per_source`` slots and the rest stay for everyone else.

A source is an IPv4 address, or an IPv6 address's /64: one machine is normally given a whole
/64 and can pick any address in it, so counting single IPv6 addresses would give it 2**64
shares.  An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) counts as its IPv4 address.  A
connection without an address (a unix socket's) only counts towards the cap.
"""
from __future__ import annotations

import ipaddress


def source_of(host: str) -> str:
    """The source a connection from ``host`` (an IP address as accept() gives it) counts for."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.split("%", 1)[0])   # without a zone (fe80::1%eth0)
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


class Slots:
    """Counts of open connections, in all and per source.  Not locked: the caller holds its own
    lock around take() and give_back()."""

    def __init__(self, total: int, per_source: int | None):
        self.total = total
        self.per_source = per_source or None     # None or 0: no share, only the cap
        self.used = 0
        self._by_source: dict[str, int] = {}

    def take(self, source: str | None) -> str | None:
        """Take a slot for a connection from ``source`` (None: no address); None when taken, or
        why not (the setting that refuses it)."""
        if self.used >= self.total:
            return f"max_connections={self.total}"
        if source is not None and self.per_source is not None:
            held = self._by_source.get(source, 0)
            if held >= self.per_source:
                return f"max_connections_per_source={self.per_source}"
            self._by_source[source] = held + 1
        self.used += 1
        return None

    def give_back(self, source: str | None) -> None:
        self.used -= 1
        if source is not None and self.per_source is not None:
            held = self._by_source.pop(source) - 1
            if held:
                self._by_source[source] = held

    def held_by(self, source: str) -> int:
        return self._by_source.get(source, 0)
