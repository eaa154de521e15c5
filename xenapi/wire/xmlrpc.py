"""XML-RPC codec, byte-compatible with what xapi emits (ocaml-rpc ``Xmlrpc.to_string``).

decode: a ``<methodCall>`` body -> :class:`Call`.  Parsed by C expat behind defusedxml's guard
(no DTD, no entity declarations, no external entities), with the grammar checked while it
streams.  Refusals are :class:`WireError` with an HTTP status hint: 413 for a body over the
size limit, 400 for too deep or too many values, 500 for anything malformed (xapi answers a
parse error with HTTP 500).

encode: an outcome -> a compact ``<methodResponse>`` (no whitespace between tags: Xen
Orchestra's parser breaks on it).  Values follow xapi, not the XML-RPC spec: strings and ints
are untyped ``<value>text</value>`` (int64 as a decimal string), ``None`` is ``<value></value>``
(never ``<nil/>``), map keys are stringified.  Hand-written rather than ``xmlrpc.client.dumps``
because it is on the hot path and dumps pretty-prints and refuses ints above 2^31.
"""
from __future__ import annotations

import base64
import binascii
import logging
import re
import uuid
from collections.abc import Mapping
from enum import Enum
from xml.parsers.expat import ExpatError

from defusedxml import DefusedXmlException
from defusedxml.xmlrpc import DefusedExpatParser

from xenapi.errors import INTERNAL_ERROR
from xenapi.wire import Bare, Call, Failure, Fault, Limits, Success, WireError
from xenapi.wire.values import DateTime, FrozenRecord, I4

log = logging.getLogger(__name__)

__all__ = ["decode", "encode", "value_to_string", "map_key"]


# ---------------------------------------------------------------------------------------- decode

def _int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise ValueError(f"not an integer: {text[:40]!r}")
    return int(text)


def _bool(text: str) -> bool:
    flag = _BOOLEANS.get(text.strip().lower())
    if flag is None:
        raise ValueError(f"not a boolean: {text[:40]!r}")
    return flag


def _base64(text: str) -> bytes:
    # Line breaks are allowed (xmlrpc.client sends them every 76 characters); nothing else is.
    # Non-ASCII raises UnicodeError and bad base64 binascii.Error: both ValueErrors.
    return binascii.a2b_base64("".join(text.split()).encode("ascii"), strict_mode=True)


_INT = re.compile(r"\s*[-+]?[0-9]+\s*")
_BOOLEANS = {"1": True, "0": False, "true": True, "false": False}
_SCALARS = {
    "string": str, "int": _int, "i4": _int, "i8": _int, "boolean": _bool, "double": float,
    "dateTime.iso8601": DateTime.parse, "base64": _base64,
}
_TYPES = {*_SCALARS, "nil", "array", "struct"}

# The grammar as one table: each element and the parents it may appear under ("" is the root).
_PARENTS: dict[str, frozenset[str]] = {
    "methodCall": frozenset({""}),
    "methodName": frozenset({"methodCall"}),
    "params": frozenset({"methodCall"}),
    "param": frozenset({"params"}),
    "value": frozenset({"param", "data", "member"}),
    "data": frozenset({"array"}),
    "member": frozenset({"struct"}),
    "name": frozenset({"member"}),
    **{t: frozenset({"value"}) for t in _TYPES},
}


class _Member:
    __slots__ = ("name", "value", "filled")

    def __init__(self) -> None:
        self.name: str | None = None
        self.value = None
        self.filled = False

    def append(self, value) -> None:     # same shape as list.append, so _emit needs no branch
        if self.filled:
            raise _malformed("<member> with more than one <value>")
        self.value, self.filled = value, True


def _malformed(why: str) -> WireError:
    return WireError(f"malformed XML-RPC request: {why}", 500)


class _CallBuilder:
    """expat target (start/end/data) that builds the method name and params as they stream."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.method: str | None = None
        self.params: list | None = None
        self._open = [""]                # element names from the root; [-1] is the parent
        self._text: list[str] = []       # character data since the last start tag
        self.data = self._text.append    # expat then calls C directly, with no Python frame
        self._stack: list = []           # containers being filled: params, arrays, structs, members
        self._typed = False              # the innermost open <value> already has its typed child
        self._depth = 0                  # open arrays and structs
        self._items = 0                  # <value>s seen
        self._param_start = 0            # len(params) when the open <param> began

    def xml(self, encoding, standalone) -> None:   # called by ExpatParser; nothing to do
        pass

    def start(self, tag: str, attrs) -> None:
        if self._open[-1] not in _PARENTS.get(tag, ()):
            raise _malformed(f"unexpected <{tag[:40]}> in <{self._open[-1]}>")
        self._open.append(tag)
        self._text.clear()
        if tag == "value":
            self._items += 1
            if self._items > self.limits.max_items:
                raise WireError(f"more than {self.limits.max_items} values", 400)
            self._typed = False
        elif tag in _TYPES:
            if self._typed:
                raise _malformed("<value> with more than one child")
            self._typed = True
            if tag == "array" or tag == "struct":
                self._depth += 1
                if self._depth > self.limits.max_depth:
                    raise WireError(f"values nested deeper than {self.limits.max_depth}", 400)
                self._stack.append([] if tag == "array" else {})
        elif tag == "member":
            self._stack.append(_Member())
        elif tag == "params":
            if self.params is not None:
                raise _malformed("more than one <params>")
            self.params = []
            self._stack.append(self.params)
        elif tag == "param":
            self._param_start = len(self.params)
        elif tag == "methodName" and self.method is not None:
            raise _malformed("more than one <methodName>")

    def end(self, tag: str) -> None:
        self._open.pop()
        convert = _SCALARS.get(tag)
        if convert is not None:
            text = "".join(self._text)
            try:
                self._stack[-1].append(convert(text))
            except (ValueError, OverflowError) as e:
                raise _malformed(f"bad <{tag}>: {e}") from None
        elif tag == "value":
            if not self._typed:          # untyped <value>text</value> is a string
                self._stack[-1].append("".join(self._text))
            self._typed = True           # the enclosing <value> (if any) holds a container
        elif tag == "member":
            member = self._stack.pop()
            if member.name is None or not member.filled:
                raise _malformed("<member> needs a <name> and a <value>")
            self._stack[-1][member.name] = member.value
        elif tag == "array" or tag == "struct":
            self._depth -= 1
            container = self._stack.pop()
            self._stack[-1].append(container)
        elif tag == "name":
            member = self._stack[-1]
            if member.name is not None:
                raise _malformed("<member> with more than one <name>")
            member.name = "".join(self._text)
        elif tag == "nil":
            self._stack[-1].append(None)
        elif tag == "param":
            if len(self.params) != self._param_start + 1:
                raise _malformed("<param> must hold exactly one <value>")
        elif tag == "methodName":
            self.method = "".join(self._text).strip()


def decode(body: bytes, limits: Limits = Limits()) -> Call:
    """Parse an XML-RPC ``<methodCall>``; raise :class:`WireError` on anything else."""
    if len(body) > limits.max_body_bytes:
        raise WireError(f"request body over {limits.max_body_bytes} bytes", 413)
    builder = _CallBuilder(limits)
    parser = DefusedExpatParser(builder, forbid_dtd=True)
    parser._parser.buffer_text = True    # one data() call per text node, not one per line
    try:
        parser.feed(body)
        parser.close()
    except ExpatError as e:
        raise _malformed(str(e)) from None
    except DefusedXmlException as e:
        raise _malformed(f"forbidden XML construct: {type(e).__name__}") from None
    except (LookupError, ValueError) as e:   # an XML declaration's encoding that Python's codecs refuse
        raise _malformed(f"unusable encoding: {e}") from None
    if not builder.method:
        raise _malformed("no <methodName>")
    return Call(builder.method, tuple(builder.params or ()), "xmlrpc")


# ---------------------------------------------------------------------------------------- encode

# Characters XML 1.0 cannot carry (C0 controls except tab/LF/CR, surrogates, U+FFFE/U+FFFF) are
# dropped, as xapi does; CR becomes a reference so that parsers do not normalise it to LF.
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _text(s: str) -> str:
    """Escape ``s`` as XML character data.  isprintable() is false for every character that
    needs work (and for a few that do not, such as tab), so a clean string costs one C scan."""
    if s.isprintable() and "&" not in s and "<" not in s and ">" not in s:
        return s
    s = _ILLEGAL.sub("", s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("\r", "&#13;")


def map_key(key) -> str:
    """A map key as a wire string: xapi stringifies keys of any type (ref, int, enum...)."""
    if isinstance(key, str):
        return str.__str__(key)
    if key is None:
        return ""
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, Enum):
        return map_key(key.value)
    if isinstance(key, DateTime):
        return key.wire()
    if isinstance(key, int):
        return int.__repr__(key)
    if isinstance(key, float):
        return float.__repr__(key)
    raise TypeError(f"cannot use {type(key).__name__} as a map key")


def _value(v, out) -> None:
    """Append the ``<value>`` text of ``v`` through ``out`` (a list's append)."""
    t = type(v)
    if t is str:
        out(f"<value>{_text(v)}</value>")
    elif t is FrozenRecord:
        xml = v.xml
        if xml is None:
            parts: list[str] = []
            _struct(v, parts.append)
            xml = v.xml = "".join(parts)
        out(xml)
    elif t is dict:
        _struct(v, out)
    elif t is list or t is tuple:
        out("<value><array><data>")
        for x in v:
            _value(x, out)
        out("</data></array></value>")
    elif t is bool:                      # before int: bool is an int subclass
        out("<value><boolean>1</boolean></value>" if v else "<value><boolean>0</boolean></value>")
    elif t is int:
        out(f"<value>{int.__repr__(v)}</value>")
    elif v is None:
        out("<value></value>")
    elif t is float:
        out(f"<value><double>{float.__repr__(v)}</double></value>")   # shortest round-trip form
    elif t is DateTime:
        out(f"<value><dateTime.iso8601>{v.wire()}</dateTime.iso8601></value>")
    elif t is I4:
        out(f"<value><i4>{int.__repr__(v)}</i4></value>")
    else:
        _other(v, out)


def _struct(v: dict, out) -> None:
    out("<value><struct>")
    for k, x in v.items():
        out(f"<member><name>{_text(k if type(k) is str else map_key(k))}</name>")
        _value(x, out)
        out("</member>")
    out("</struct></value>")


def _other(v, out) -> None:
    """The slow path: subclasses, enums, sets, bytes and other containers."""
    if isinstance(v, Enum):
        _value(v.value, out)
    elif isinstance(v, str):
        _value(str.__str__(v), out)
    elif isinstance(v, I4):
        out(f"<value><i4>{int.__repr__(v)}</i4></value>")
    elif isinstance(v, int):
        _value(int(v), out)
    elif isinstance(v, float):
        _value(float(v), out)
    elif isinstance(v, Mapping):
        _value(dict(v), out)
    elif isinstance(v, (list, tuple, set, frozenset)):
        _value(list(v), out)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        out(f"<value><base64>{base64.b64encode(v).decode('ascii')}</base64></value>")
    else:
        raise TypeError(f"cannot encode {type(v).__name__} in XML-RPC")


def value_to_string(value) -> str:
    """The compact ``<value>...</value>`` text of one value (task.result holds this).

    Raises TypeError for a value with no wire form.
    """
    parts: list[str] = []
    _value(value, parts.append)
    return "".join(parts)


_RESPONSE = '<?xml version="1.0"?><methodResponse><params><param>'
_RESPONSE_END = "</param></params></methodResponse>"
_SUCCESS = ("<value><struct><member><name>Status</name><value>Success</value></member>"
            "<member><name>Value</name>")
_FAILURE = ("<value><struct><member><name>Status</name><value>Failure</value></member>"
            "<member><name>ErrorDescription</name>")
_STRUCT_END = "</member></struct></value>"


def _response(outcome) -> str:
    parts = [_RESPONSE]
    out = parts.append
    kind = type(outcome)
    if kind is Success:
        out(_SUCCESS)
        _value(outcome.value, out)
        out(_STRUCT_END)
    elif kind is Failure:
        out(_FAILURE)
        _value(list(outcome.description), out)
        out(_STRUCT_END)
    elif kind is Bare:
        _value(outcome.value, out)
    elif kind is Fault:
        parts[0] = '<?xml version="1.0"?><methodResponse><fault>'
        out(f"<value><struct><member><name>faultCode</name><value><int>{int(outcome.code)}</int>"
            f"</value></member><member><name>faultString</name>")
        _value(str(outcome.message), out)
        out("</member></struct></value></fault></methodResponse>")
        return "".join(parts)
    else:
        raise TypeError(f"not an outcome: {kind.__name__}")
    out(_RESPONSE_END)
    return "".join(parts)


def encode(outcome, call: Call | None = None) -> bytes:
    """A ``<methodResponse>`` for ``outcome``.  Never raises: a value with no wire form
    becomes ``Failure INTERNAL_ERROR`` and its traceback goes to the log under an id."""
    try:
        return _response(outcome).encode("utf-8")
    except Exception:
        ref = uuid.uuid4().hex[:12]
        log.exception("unencodable response id=%s method=%s", ref, call.method if call else "-")
        failure = Failure([INTERNAL_ERROR, f"the response could not be encoded (log id {ref})"])
        return _response(failure).encode("utf-8")
