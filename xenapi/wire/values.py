"""Python values that carry a wire type the plain builtins cannot express.

The codecs are type-agnostic: they encode what they are given.  Ints become decimal strings in
XML-RPC and numbers in JSON-RPC; these wrappers cover the three exceptions.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

WIRE_DATETIME = "%Y%m%dT%H:%M:%SZ"   # xapi's format: basic date, extended time, UTC


@dataclass(frozen=True, slots=True)
class DateTime:
    """A UTC instant, emitted as xapi does (``20250319T04:16:24Z``); seconds since the epoch."""
    seconds: float

    @classmethod
    def now(cls) -> "DateTime":
        return cls(_dt.datetime.now(_dt.timezone.utc).timestamp())

    def wire(self) -> str:
        d = _dt.datetime.fromtimestamp(int(self.seconds), _dt.timezone.utc)
        # by hand, not strftime: glibc's %Y gives years before 1000 fewer than four digits
        return f"{d.year:04d}{d.month:02d}{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}Z"

    @classmethod
    def parse(cls, text: str) -> "DateTime":
        """Any ISO 8601 form xapi accepts; no zone means UTC.  Raises ValueError."""
        s = text.strip()
        for fmt in ("%Y%m%dT%H:%M:%SZ", "%Y%m%dT%H:%M:%S", "%Y%m%dT%H%M%SZ", "%Y%m%dT%H%M%S"):
            try:
                return cls(_dt.datetime.strptime(s, fmt).replace(tzinfo=_dt.timezone.utc).timestamp())
            except ValueError:
                pass
        d = _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
        if d.tzinfo is None:
            d = d.replace(tzinfo=_dt.timezone.utc)
        return cls(d.timestamp())


NEVER = DateTime(0.0)   # xapi's "never": 19700101T00:00:00Z


class I4(int):
    """An int that XML-RPC must send as <i4> (xapi does so only for event.from's valid_ref_counts)."""
    __slots__ = ()


class FrozenRecord(dict):
    """A record as the store holds it: never changed once installed (writes build a new one), so
    the codecs may keep its wire form and send it again without re-encoding.  Reads of 1,000
    records then cost a join, not a walk of 90,000 fields."""
    __slots__ = ("xml", "json")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.xml: str | None = None            # filled by the XML-RPC codec on first encoding
        self.json: str | None = None           # ... and by the JSON-RPC codec

    def forget_wire(self) -> None:
        """Drop the cached encodings (a newer version replaced this one; an old one is seldom sent)."""
        self.xml = self.json = None

    def _frozen(self, *args, **kwargs):
        raise TypeError("store records are copy-on-write: build a new dict instead")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _frozen

    def __reduce__(self):
        return dict, (dict(self),)
