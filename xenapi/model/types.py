"""Xen-API types: what a field or parameter holds, how a wire value converts to it, its empty value.

Conversion is lenient where real clients differ (Python sends int64 as strings, XO stringifies JS
integers, JSON-RPC sends numbers) and strict where xapi is: a value of the wrong shape raises
FIELD_TYPE_ERROR naming the field or parameter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xenapi.errors import FIELD_TYPE_ERROR, INVALID_VALUE, XenAPIError
from xenapi.wire.values import NEVER, DateTime

NULL_REF = "OpaqueRef:NULL"
REF_PREFIX = "OpaqueRef:"


class WireType:
    """Base: ``convert`` turns a decoded wire value into the stored Python value."""
    doc_name = "?"

    def convert(self, value: Any, where: str) -> Any:
        raise NotImplementedError

    def empty(self) -> Any:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.doc_name


def _wrong(where: str) -> XenAPIError:
    return XenAPIError(FIELD_TYPE_ERROR, where)


class _String(WireType):
    doc_name = "string"

    def convert(self, value, where):
        if isinstance(value, str):
            return value
        raise _wrong(where)

    def empty(self):
        return ""


class _Int(WireType):
    doc_name = "int"
    _RANGE = range(-2**63, 2**63)          # every Xen-API int is an int64

    def convert(self, value, where):
        if isinstance(value, bool):
            raise _wrong(where)
        if isinstance(value, str):
            try:
                value = int(value.strip(), 10)
            except ValueError:
                raise _wrong(where) from None
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and value in self._RANGE:
            return value
        raise _wrong(where)

    def empty(self):
        return 0


class _Float(WireType):
    doc_name = "float"

    def convert(self, value, where):
        if isinstance(value, bool):
            raise _wrong(where)
        if isinstance(value, (int, float, str)):
            try:
                return float(value)
            except (ValueError, OverflowError):    # "x", or an int beyond any float (10**400)
                pass
        raise _wrong(where)

    def empty(self):
        return 0.0


class _Bool(WireType):
    doc_name = "bool"
    _TEXT = {"true": True, "false": False, "1": True, "0": False}

    def convert(self, value, where):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in self._TEXT:
            return self._TEXT[value.lower()]
        raise _wrong(where)

    def empty(self):
        return False


class _DateTime(WireType):
    doc_name = "datetime"

    def convert(self, value, where):
        if isinstance(value, DateTime):
            return value
        if isinstance(value, str):
            try:
                return DateTime.parse(value)
            except ValueError:
                raise XenAPIError(INVALID_VALUE, where, value) from None
        raise _wrong(where)

    def empty(self):
        return NEVER


String, Int, Float, Bool, Timestamp = _String(), _Int(), _Float(), _Bool(), _DateTime()


@dataclass(frozen=True)
class Ref(WireType):
    """A reference to an object of class ``cls``.  Existence is checked by the dispatcher."""
    cls: str

    @property
    def doc_name(self):
        return f"{self.cls} ref"

    def convert(self, value, where):
        if isinstance(value, str):
            return value
        raise _wrong(where)

    def empty(self):
        return NULL_REF


@dataclass(frozen=True)
class Enum(WireType):
    """Emitted exactly as declared; parsed case-insensitively, as xapi does."""
    name: str
    values: tuple[str, ...]

    @property
    def doc_name(self):
        return self.name

    def __post_init__(self):
        object.__setattr__(self, "_canon", {v.lower(): v for v in self.values})

    def convert(self, value, where):
        if isinstance(value, str):
            canon = self._canon.get(value.lower())
            if canon is not None:
                return canon
            raise XenAPIError(INVALID_VALUE, where, value)
        raise _wrong(where)

    def empty(self):
        return self.values[0]


@dataclass(frozen=True)
class Set(WireType):
    of: WireType

    @property
    def doc_name(self):
        return f"{self.of} set"

    def convert(self, value, where):
        if isinstance(value, (list, tuple)):
            return [self.of.convert(v, where) for v in value]
        raise _wrong(where)

    def empty(self):
        return []


@dataclass(frozen=True)
class Map(WireType):
    key: WireType
    value: WireType

    @property
    def doc_name(self):
        return f"({self.key} -> {self.value}) map"

    def convert(self, value, where):
        if isinstance(value, dict):
            return {self.key.convert(k, where): self.value.convert(v, where) for k, v in value.items()}
        raise _wrong(where)

    def empty(self):
        return {}


@dataclass(frozen=True)
class Record(WireType):
    """A class's record, as a constructor takes it; fields are converted by the constructor."""
    cls: str

    @property
    def doc_name(self):
        return f"{self.cls} record"

    def convert(self, value, where):
        if isinstance(value, dict):
            return value
        raise _wrong(where)

    def empty(self):
        return {}


class _Void(WireType):
    doc_name = "void"

    def convert(self, value, where):
        return value

    def empty(self):
        return ""


class _Any(WireType):
    """Untyped: event records and other composite results that xapi itself types loosely."""
    doc_name = "any"

    def convert(self, value, where):
        return value

    def empty(self):
        return ""


Void, Any_ = _Void(), _Any()
S2S = Map(String, String)


def refs_in(t: WireType) -> str | None:
    """The class a Ref, Ref set or Ref-keyed/valued map points at, for relation checks."""
    if isinstance(t, Ref):
        return t.cls
    if isinstance(t, Set):
        return refs_in(t.of)
    return None
