"""Property-based fuzzing of the wire codecs, the where language and the dispatcher, in process.

Shared by tests/test_fuzz_*.py (a bounded run in CI, the ``xenapi-ci`` profile) and bench/fuzz.py
(a million inputs, findings recorded instead of raised).  Each ``check_*`` states one property for
one input and raises :class:`Finding` when it does not hold; the strategies make the inputs.

Properties
----------
* ``xmlrpc.decode``/``jsonrpc.decode`` raise nothing but :class:`WireError`, whatever the bytes:
  random bytes, structured-but-wrong documents (random element trees, wrong scalar texts, deep
  nesting, huge ints, bad UTF-8, entities, DTDs, odd encodings) and well-formed calls.
* ``encode`` never raises, and encode -> decode gives back the value in its wire form.
* ``compile_where`` raises only :class:`WhereSyntaxError`; a compiled predicate returns a bool or
  raises :class:`WhereFieldError` (a field the record lacks), on any record of the store's types.
* ``Dispatcher.dispatch`` of any method name and params (right and wrong arity and types, refs that
  exist, refs that do not, any session) returns a Xen-API outcome: a result, or a declared error
  code with string params; never ``INTERNAL_ERROR`` from an unexpected exception, never a logged
  traceback, never an answer a codec cannot encode; an ``Async.`` call's task ends the same way.

A defect found and not yet fixed is listed in :data:`KNOWN_DEFECTS` (what, where, which input):
inputs that hit it are counted, not failed, so the suite stays a gate for everything else.  Each
has a strict xfail test that reproduces it; when it is fixed that test passes, fails the suite, and
its entry here must go.
"""
from __future__ import annotations

import contextlib
import logging
import math
import re
import signal
import string
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from xenapi.errors import ERRORS, INTERNAL_ERROR
from xenapi.model import types as T
from xenapi.state.where import WhereFieldError, WhereSyntaxError, compile_where
from xenapi.wire import Bare, Call, Failure, Fault, Limits, Success, WireError, jsonrpc, xmlrpc
from xenapi.wire.values import DateTime, I4

ROOT = Path(__file__).resolve().parents[1]
set_hypothesis_home_dir(str(ROOT / ".cache" / "hypothesis"))     # .cache/ is git-ignored

# CI: a few hundred inputs per property, no deadline (a dispatcher call may wait on libvirt).
settings.register_profile(
    "xenapi-ci", max_examples=300, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
# bench/fuzz.py: chunks of inputs, no shrinking (a finding is recorded as it came), no database.
settings.register_profile(
    "xenapi-bench", parent=settings.get_profile("xenapi-ci"), max_examples=2000, database=None,
    phases=[p for p in settings.default.phases if p.name in ("generate",)])


class Finding(AssertionError):
    """A property that did not hold.  ``kind``: crash (an undeclared exception), hang (over the
    time limit), traceback (logged or sent), wrong (a wrong answer)."""

    def __init__(self, kind: str, target: str, detail: str, data=None):
        super().__init__(f"{kind} in {target}: {detail}")
        self.kind, self.target, self.detail, self.data = kind, target, detail, data


class Hang(BaseException):
    """Raised into the main thread when one input runs over its time limit (BaseException, so
    that no ``except Exception`` under test swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Interrupt the main thread after ``seconds`` (SIGALRM); a no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread() or not seconds:
        yield
        return

    def ring(signum, frame):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- known defects ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class KnownDefect:
    id: str
    where: str            # the file to fix
    what: str
    matches: object       # (target, exception or log text) -> bool


# Empty now: the six found so far (an XML declaration's unusable encoding, where expressions deep
# enough to recurse out, VM.assert_operation_valid with an operation not implemented, event.from
# tokens of non-ASCII digits, dates before year 1000, float parameters beyond any float) are fixed,
# each with a regression test in tests/test_fuzz_*.py.
KNOWN_DEFECTS: list[KnownDefect] = []


def known_defect(target: str, exc) -> KnownDefect | None:
    for defect in KNOWN_DEFECTS:
        if defect.matches(target, exc):
            return defect
    return None


@dataclass
class Tally:
    """Inputs run and what they found, per target (bench/fuzz.py prints it)."""
    runs: dict = field(default_factory=dict)
    known: dict = field(default_factory=dict)
    findings: list = field(default_factory=list)

    def ran(self, target: str) -> None:
        self.runs[target] = self.runs.get(target, 0) + 1

    def hit(self, defect: KnownDefect) -> None:
        self.known[defect.id] = self.known.get(defect.id, 0) + 1


TALLY = Tally()


def _undeclared(target: str, exc: BaseException, data) -> None:
    """An exception a target may not raise: a known defect is counted, anything else a Finding."""
    defect = known_defect(target, exc)
    if defect is not None:
        TALLY.hit(defect)
        return
    raise Finding("crash", target, f"{type(exc).__name__}: {exc}"[:500], data) from exc


# -- values ----------------------------------------------------------------------------------------

_INT64 = 2 ** 63
ints = st.one_of(st.integers(-2 ** 31, 2 ** 31), st.integers(-_INT64, _INT64 - 1),
                 st.sampled_from([_INT64, -_INT64 - 1, 2 ** 64, 10 ** 308, 10 ** 400, -(10 ** 400)]),
                 st.integers())
floats = st.floats(allow_nan=True, allow_infinity=True)
texts = st.text(max_size=40)
# DateTimes whose wire form exists (years 1..9999 UTC) at whole seconds
datetimes = st.integers(-62135596800, 253402300799).map(lambda s: DateTime(float(s)))
scalars = st.one_of(texts, ints, floats, st.booleans(), st.none(), datetimes, st.binary(max_size=20),
                    st.integers(-2 ** 31, 2 ** 31 - 1).map(I4))


def value_trees(leaves=scalars, max_leaves=25):
    """Nested lists and string-keyed dicts of ``leaves``: what a result or a parameter can be."""
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(texts, inner, max_size=5)), max_leaves=max_leaves)


wire_values = value_trees()
json_values = st.recursive(
    st.one_of(st.text(max_size=40), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
              st.booleans(), st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=25)


def _weighted(draw, percent: int) -> bool:
    return draw(st.integers(0, 99)) < percent


def _float_equal(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def same(a, b) -> bool:
    """Equality where nan equals nan and list/dict shapes must match exactly."""
    if type(a) is float and type(b) is float:
        return _float_equal(a, b)
    if type(a) is not type(b):
        return False
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


# -- XML-RPC ---------------------------------------------------------------------------------------

_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_wire_form(v):
    """What our XML-RPC decode gives back for a value our encode wrote (xapi's rules: ints travel
    as untyped strings, None as an empty string, XML-illegal characters are dropped)."""
    if type(v) is bool:
        return v
    if type(v) is I4:
        return int(v)
    if type(v) is int:
        return str(v)
    if type(v) is str:
        return _XML_ILLEGAL.sub("", v)
    if v is None:
        return ""
    if type(v) is DateTime:
        return DateTime(float(int(v.seconds)))
    if type(v) is list:
        return [xml_wire_form(x) for x in v]
    if type(v) is dict:
        return {_XML_ILLEGAL.sub("", k): xml_wire_form(x) for k, x in v.items()}
    return v                              # float, bytes


_YEAR_1000 = -30610224000       # 1000-01-01T00:00:00Z


def _before_1000(v) -> bool:
    if type(v) is DateTime:
        return v.seconds < _YEAR_1000
    if type(v) is list:
        return any(_before_1000(x) for x in v)
    if type(v) is dict:
        return any(_before_1000(x) for x in v.values())
    return False


def method_call(method: str, values_xml: list[str]) -> bytes:
    params = "".join(f"<param>{v}</param>" for v in values_xml)
    return f"<?xml version='1.0'?><methodCall><methodName>{method}</methodName><params>{params}</params>" \
           f"</methodCall>".encode("utf-8", "surrogatepass")


_TAGS = ["methodCall", "methodName", "params", "param", "value", "array", "data", "struct", "member",
         "name", "string", "int", "i4", "i8", "boolean", "double", "dateTime.iso8601", "base64", "nil"]
_SCALAR_TEXT = {
    "int": st.one_of(ints.map(str), st.sampled_from(["", " 1 ", "+1", "1.0", "0x10", "1e3", "9" * 5000, "٣"])),
    "boolean": st.sampled_from(["0", "1", "true", "false", "TRUE", "2", "", " 1", "yes"]),
    "double": st.one_of(floats.map(repr), st.sampled_from(["nan", "-inf", "1e999", "", "0x1p3", "1_0", "١"])),
    "dateTime.iso8601": st.one_of(datetimes.map(DateTime.wire), st.sampled_from(
        ["", "20250319T04:16:24", "2025-03-19T04:16:24+14:00", "00000000T00:00:00", "99991231T23:59:59-14:00",
         "0001-01-01T00:00:00+14:00", "20250230T00:00:00Z", "2025-W12", "now"])),
    "base64": st.one_of(st.binary(max_size=20).map(lambda b: __import__("base64").b64encode(b).decode()),
                        st.sampled_from(["!!", "QQ", "QQ==\n", "é", "QQ=="])),
}
_ENTITIES = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "&#13;", "&#0;", "&#x1F600;", "&#xD800;", "&#x110000;",
             "&undefined;", "&#65", "&", "<![CDATA[x<y]]>", "<!-- c -->", "<?pi x?>"]
_ENCODINGS = ["utf-8", "UTF-8", "utf-16", "latin-1", "iso-8859-1", "ascii", "us-ascii", "cp1252", "utf-7", "utf-32",
              "foo", "hex", "idna", "rot13", "", "ebcdic-cp-us", "shift_jis", "x-unknown"]


@st.composite
def xml_text(draw):
    parts = draw(st.lists(st.one_of(st.text(max_size=8), st.sampled_from(_ENTITIES)), max_size=4))
    return "".join(p if p in _ENTITIES else p.replace("&", "&amp;").replace("<", "&lt;") for p in parts)


def _element(children):
    @st.composite
    def make(draw):
        tag = draw(st.one_of(st.sampled_from(_TAGS), st.sampled_from(["x", "Value", "methodResponse", "fault",
                                                                      "a:b", "value xmlns='urn:x'"])))
        text = draw(_SCALAR_TEXT[tag]) if tag in _SCALAR_TEXT and draw(st.booleans()) else draw(xml_text())
        inner = draw(st.lists(children, max_size=4))
        end = tag.split()[0]
        return f"<{tag}>{text}{''.join(inner)}</{end}>" if draw(st.integers(0, 9)) else f"<{tag}/>"
    return make()


xml_trees = st.recursive(xml_text(), _element, max_leaves=30)


@st.composite
def typed_xml_value(draw, depth=0):
    """A <value> that is well formed but maybe wrong: right tags with bad texts, extra children,
    deep nesting."""
    kind = draw(st.sampled_from(["untyped", "scalar", "array", "struct", "empty", "deep"] if depth < 4
                                else ["untyped", "scalar", "empty"]))
    if kind == "untyped":
        return f"<value>{draw(xml_text())}</value>"
    if kind == "empty":
        return draw(st.sampled_from(["<value/>", "<value></value>", "<value><nil/></value>", "<value><string/></value>",
                                     "<value><array/></value>", "<value><struct/></value>",
                                     "<value><array><data/></array></value>"]))
    if kind == "scalar":
        tag = draw(st.sampled_from(sorted(_SCALAR_TEXT) + ["string", "i4", "i8"]))
        text = draw(_SCALAR_TEXT.get(tag if tag not in ("i4", "i8") else "int", xml_text()))
        return f"<value><{tag}>{text}</{tag}></value>"
    if kind == "deep":
        n = draw(st.integers(1, 120))
        return "<value><array><data>" * n + "<value>x</value>" + "</data></array></value>" * n
    items = draw(st.lists(typed_xml_value(depth + 1), max_size=4))
    if kind == "array":
        return f"<value><array><data>{''.join(items)}</data></array></value>"
    names = draw(st.lists(xml_text(), min_size=len(items), max_size=len(items)))
    members = "".join(f"<member><name>{n}</name>{v}</member>" for n, v in zip(names, items))
    return f"<value><struct>{members}</struct></value>"


@st.composite
def xml_documents(draw):
    """Bytes that look like a methodCall, are often well formed, and are wrong in some way."""
    shape = draw(st.sampled_from(["call", "call", "tree", "dtd"]))
    if shape == "call":
        method = draw(st.one_of(st.sampled_from(["VM.get_all", "session.login_with_password", ""]), xml_text()))
        values = draw(st.lists(typed_xml_value(), max_size=4))
        body = f"<methodCall><methodName>{method}</methodName><params>" + \
               "".join(f"<param>{v}</param>" for v in values) + "</params></methodCall>"
    elif shape == "tree":
        body = draw(xml_trees)
    else:
        body = draw(st.sampled_from([
            '<!DOCTYPE m [<!ENTITY a "aaaa">]><methodCall><methodName>&a;</methodName></methodCall>',
            '<!DOCTYPE m SYSTEM "file:///etc/passwd"><methodCall/>',
            '<!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]><methodCall><methodName>&x;</methodName></methodCall>',
            '<!DOCTYPE m [<!ENTITY % p "x">]><methodCall/>',
        ]))
    prolog = ""
    if draw(st.booleans()):
        encoding = draw(st.sampled_from(_ENCODINGS))
        prolog = f'<?xml version="1.0"{f" encoding={encoding!r}" if encoding else ""}?>'
    text = prolog + draw(st.sampled_from(["", " ", "\ufeff", "<!-- x -->"])) + body
    data = text.encode("utf-8", "surrogatepass")
    mutation = draw(st.sampled_from(["none", "none", "insert", "truncate", "utf16"]))
    if mutation == "insert":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    elif mutation == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif mutation == "utf16":
        data = text.encode("utf-16", "surrogatepass")
    return data


def check_xml_decode(body: bytes, limits: Limits = Limits()) -> None:
    """xmlrpc.decode raises nothing but WireError, and what it returns is a Call."""
    TALLY.ran("xmlrpc.decode")
    try:
        call = xmlrpc.decode(body, limits)
    except WireError:
        return
    except Exception as e:                    # noqa: BLE001 - the property under test
        _undeclared("xmlrpc.decode", e, body)
        return
    if not isinstance(call, Call) or not isinstance(call.method, str) or not isinstance(call.params, tuple):
        raise Finding("wrong", "xmlrpc.decode", f"not a Call: {call!r}"[:300], body)


def check_xml_roundtrip(value) -> None:
    """value_to_string -> decode gives back the value in its wire form; encode never raises."""
    TALLY.ran("xmlrpc.roundtrip")
    try:
        body = method_call("m", [xmlrpc.value_to_string(value)])
        got = xmlrpc.decode(body, Limits(max_body_bytes=10 ** 8, max_items=10 ** 7)).params[0]
        response = xmlrpc.encode(Success(value))
    except Exception as e:                    # noqa: BLE001
        if _before_1000(value):
            return _undeclared("xmlrpc.roundtrip", ValueError("a date before 1000"), value)
        raise Finding("crash", "xmlrpc.roundtrip", f"{type(e).__name__}: {e}"[:500], value) from e
    want = xml_wire_form(value)
    if not same(got, want):
        if _before_1000(value):
            return _undeclared("xmlrpc.roundtrip", ValueError("a date before 1000"), value)
        raise Finding("wrong", "xmlrpc.roundtrip", f"sent {want!r}, decoded {got!r}"[:500], value)
    if b"could not be encoded" in response:
        raise Finding("wrong", "xmlrpc.encode", "a wire value was refused", value)


def check_xml_encode_never_raises(outcome) -> None:
    TALLY.ran("xmlrpc.encode")
    try:
        body = xmlrpc.encode(outcome)
    except Exception as e:                    # noqa: BLE001
        raise Finding("crash", "xmlrpc.encode", f"{type(e).__name__}: {e}"[:500], outcome) from e
    if not isinstance(body, bytes) or b"Traceback" in body:
        raise Finding("traceback", "xmlrpc.encode", repr(body[:300]), outcome)


# -- JSON-RPC --------------------------------------------------------------------------------------

def json_wire_form(v):
    """What a JSON-RPC client reads for a value our encode wrote (a lone surrogate, which no
    UTF-8 can carry, arrives as "?")."""
    if type(v) is str:
        return v.encode("utf-8", "replace").decode("utf-8")
    if type(v) is bool or type(v) is int or type(v) is I4:
        return int(v) if type(v) is I4 else v
    if v is None:
        return ""
    if type(v) is float:
        return v if math.isfinite(v) else repr(v)
    if type(v) is DateTime:
        return v.wire()
    if type(v) is bytes:
        return __import__("base64").b64encode(v).decode("ascii")
    if type(v) is list:
        return [json_wire_form(x) for x in v]
    if type(v) is dict:
        return {json_wire_form(k): json_wire_form(x) for k, x in v.items()}
    raise TypeError(type(v))


@st.composite
def json_documents(draw):
    """Bytes that look like a JSON-RPC request and are wrong in some way, or right."""
    import json
    doc = {}
    for key, values in (("jsonrpc", st.one_of(st.just("2.0"), st.just("1.0"), json_values)),
                        ("method", st.one_of(st.sampled_from(["VM.get_all", "event.from", ""]), json_values)),
                        ("params", st.one_of(st.lists(json_values, max_size=4), json_values)),
                        ("id", st.one_of(st.integers(), st.text(max_size=5), json_values))):
        if draw(st.integers(0, 5)):
            doc[key] = draw(values)
    text = json.dumps(draw(st.one_of(st.just(doc), json_values)), ensure_ascii=draw(st.booleans()))
    shape = draw(st.sampled_from(["none", "none", "deep", "bignum", "constant", "insert", "truncate", "utf16", "dup"]))
    if shape == "deep":
        n = draw(st.integers(1, 3000))
        text = text.replace('"params": [', '"params": [' + "[" * n, 1).replace("]", "]" + "]" * n, 1)
    elif shape == "bignum":
        text = text.replace('"id": ', '"id": ' + "9" * draw(st.integers(300, 5000)) + ", \"x\": ", 1)
    elif shape == "constant":
        text = text.replace('"id": ', '"id": ' + draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"])) +
                            ', "y": ', 1)
    elif shape == "dup":
        text = text[:-1] + ', "id": 2, "method": 3}' if text.endswith("}") else text
    data = text.encode("utf-8", "surrogatepass")
    if shape == "insert":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    elif shape == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif shape == "utf16":
        data = text.encode(draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32"])), "surrogatepass")
    return data


def check_json_decode(body: bytes, limits: Limits = Limits()) -> None:
    TALLY.ran("jsonrpc.decode")
    try:
        call = jsonrpc.decode(body, limits)
    except WireError:
        return
    except Exception as e:                    # noqa: BLE001
        _undeclared("jsonrpc.decode", e, body)
        return
    if not (isinstance(call, Call) and type(call.method) is str and call.method and type(call.params) is tuple
            and type(call.id) in (str, int) and call.protocol in ("jsonrpc1", "jsonrpc2")):
        raise Finding("wrong", "jsonrpc.decode", f"not a valid Call: {call!r}"[:300], body)


def check_json_roundtrip(value, params) -> None:
    """encode writes xapi's JSON form of any value; a request's params decode exactly as sent."""
    import json
    TALLY.ran("jsonrpc.roundtrip")
    call = Call("m", (), "jsonrpc2", 7)
    try:
        reply = json.loads(jsonrpc.encode(Success(value), call))
        body = json.dumps({"jsonrpc": "2.0", "method": "m", "params": params, "id": 7}).encode()
        got = jsonrpc.decode(body, Limits(max_body_bytes=10 ** 8, max_items=10 ** 7))
    except Exception as e:                    # noqa: BLE001
        raise Finding("crash", "jsonrpc.roundtrip", f"{type(e).__name__}: {e}"[:500], (value, params)) from e
    if reply.get("id") != 7 or "error" in reply or not same(reply["result"], json_wire_form(value)):
        raise Finding("wrong", "jsonrpc.encode", f"sent {value!r}, client read {reply!r}"[:500], value)
    if not same(list(got.params), params):
        raise Finding("wrong", "jsonrpc.decode", f"sent {params!r}, decoded {got.params!r}"[:500], params)


def check_json_encode_never_raises(outcome, protocol: str) -> None:
    TALLY.ran("jsonrpc.encode")
    try:
        body = jsonrpc.encode(outcome, Call("m", (), protocol, 1))
    except Exception as e:                    # noqa: BLE001
        raise Finding("crash", "jsonrpc.encode", f"{type(e).__name__}: {e}"[:500], outcome) from e
    if not isinstance(body, bytes) or b"Traceback" in body:
        raise Finding("traceback", "jsonrpc.encode", repr(body[:300]), outcome)


outcomes = st.one_of(
    st.builds(Success, value_trees(st.one_of(scalars, st.builds(object), st.complex_numbers(),
                                             st.frozensets(st.integers(), max_size=3)))),
    st.builds(Failure, st.lists(st.one_of(texts, ints), max_size=4)),
    st.builds(Bare, wire_values),
    st.builds(Fault, texts, st.integers(-2 ** 40, 2 ** 40)),
    st.builds(object))


# -- where ------------------------------------------------------------------------------------------

_WHERE_WORDS = ["true", "false", "field", "and", "or", "not", "in", "(", ")", "=", '"name_label"', '"tags"',
                '"power_state"', '"Running"', '""', '"other_config"', '"memory_static_max"', '"_ref"', '"x"',
                '"VCPUs__max"', '"HVM_shadow_multiplier"', '"snapshot_time"', '"', "'a'", "<>", "!=", "TRUE", "42"]


@st.composite
def where_texts(draw):
    shape = draw(st.sampled_from(["soup", "soup", "soup", "text", "deep"]))
    if shape == "text":
        return draw(st.text(max_size=60))
    if shape == "deep":
        n = draw(st.integers(1, 1500))
        unit = draw(st.sampled_from(["(", "not ", "true and ", "true or ", "not ("]))
        tail = ")" * n if "(" in unit else ""
        return unit * n + 'field "name_label" = "x"' + tail
    words = draw(st.lists(st.one_of(st.sampled_from(_WHERE_WORDS),
                                    st.text(alphabet=string.ascii_letters + "_", max_size=6).map(lambda s: f'"{s}"')),
                          max_size=16))
    seps = draw(st.lists(st.sampled_from([" ", "", "\t", "\n", "\r", "  "]), min_size=len(words), max_size=len(words)))
    return "".join(w + s for w, s in zip(words, seps))


def typed_value(t: T.WireType, refs=None, depth: int = 0):
    """A strategy for values a store record of type ``t`` holds (right type, any content)."""
    if t is T.String:
        return texts
    if t is T.Int:
        return st.integers(-_INT64, _INT64 - 1)
    if t is T.Float:
        return floats
    if t is T.Bool:
        return st.booleans()
    if t is T.Timestamp:
        return datetimes
    if isinstance(t, T.Ref):
        return st.one_of(st.just(T.NULL_REF), st.uuids().map(lambda u: f"OpaqueRef:{u}"), existing(t.cls, refs))
    if isinstance(t, T.Enum):
        return st.sampled_from(t.values)
    if isinstance(t, T.Set):
        return st.lists(typed_value(t.of, refs, depth + 1), max_size=4 if depth < 2 else 0)
    if isinstance(t, T.Map):
        return st.dictionaries(typed_value(t.key, refs, depth + 1), typed_value(t.value, refs, depth + 1),
                               max_size=4 if depth < 2 else 0)
    return wire_values                        # Any, Record, Void


def existing(cls: str, refs):
    """A ref of an object of ``cls`` that exists now (OpaqueRef:NULL if none).  It draws the same
    way whatever the store holds, as hypothesis requires of a strategy."""
    known = sorted((refs or {}).get(cls, ()))
    return st.integers(0, 2 ** 20).map(lambda i: known[i % len(known)] if known else T.NULL_REF)


_WHERE_FIELDS = frozenset(w.strip('"') for w in _WHERE_WORDS if w.startswith('"')) | {"VCPUs_max"}


@st.composite
def store_records(draw, registry):
    """A record as the store holds it, of a random declared class: the fields the expressions
    name, mostly, and a few others (a record lacking a field the expression names is an input too)."""
    decl = registry.classes[draw(st.sampled_from(sorted(registry.classes)))]
    rec = {}
    for f in decl.fields:
        if _weighted(draw, 90 if f.name in _WHERE_FIELDS else 10):
            rec[f.name] = draw(typed_value(f.type))
    return rec


def check_where(expr, records, ref=None) -> None:
    """compile_where raises only WhereSyntaxError; the predicate only WhereFieldError, else a bool."""
    TALLY.ran("where.compile")
    try:
        predicate = compile_where(expr)
    except WhereSyntaxError as e:
        if not (isinstance(e.xapi_params, list) and len(e.xapi_params) == 2
                and all(isinstance(p, str) for p in e.xapi_params)):
            raise Finding("wrong", "where.compile", f"xapi_params {e.xapi_params!r}", expr) from e
        return
    except TypeError as e:                    # declared for a non-string expression only
        if isinstance(expr, str):
            _undeclared("where.compile", e, expr)
        return
    except Exception as e:                    # noqa: BLE001
        _undeclared("where.compile", e, expr)
        return
    for rec in records:
        TALLY.ran("where.match")
        try:
            result = predicate(rec, ref)
        except WhereFieldError as e:
            if e.field not in predicate.fields:
                raise Finding("wrong", "where.match", f"missing field {e.field!r} is not in the expression",
                              (expr, rec)) from e
            continue
        except Exception as e:                # noqa: BLE001
            _undeclared("where.match", e, (expr, rec))
            continue
        if type(result) is not bool:
            raise Finding("wrong", "where.match", f"returned {result!r}", (expr, rec))


# -- the dispatcher ---------------------------------------------------------------------------------

class LogTrap(logging.Handler):
    """Collects every log record that carries a traceback (exc_info) while installed."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        if record.exc_info:
            self.records.append(record)

    def texts(self) -> list[str]:
        out = []
        for r in self.records:
            exc = r.exc_info[1]
            out.append(f"{r.getMessage()}: {type(exc).__name__}: {exc}"[:600])
        return out


@dataclass
class Harness:
    """A real server in process (libvirt's test driver, in-memory SQLite) and its sessions."""
    server: object
    sessions: dict
    trap: LogTrap
    blocking: frozenset = frozenset({"event.next"})

    def session(self, name: str) -> str:
        ref = self.sessions.get(name)
        try:
            self.server.sessions.check(ref)
        except Exception:                     # noqa: BLE001 - logged out or evicted: open another
            ref = self.sessions[name] = self.server.sessions.open(name)
        return ref


def start_harness(tmp: Path):
    """Start the server the dispatcher fuzz runs against (stop it with :func:`stop_harness`)."""
    from tests.conftest import ADMIN_PASSWORD, node_xml
    from xenapi.config import Config
    from xenapi.server import Server

    tmp.mkdir(parents=True, exist_ok=True)
    node = tmp / "node.xml"
    node.write_text(node_xml(4, 2))
    config = Config(listen="127.0.0.1:0", state=str(tmp / "state"), libvirt_uris=[f"test://{node}"],
                    clean_shutdown_timeout=0.2, metrics_interval=3600)
    server = Server(config)
    server.users.ensure_admin(ADMIN_PASSWORD)
    server.users.add("alice", "read-only", "alice-pw")
    server.users.add("bob", "vm-operator", "bob-pw")
    server.start()
    trap = LogTrap()
    logging.getLogger().addHandler(trap)
    harness = Harness(server, {}, trap)
    for name in ("root", "alice", "bob"):
        harness.session(name)
    return harness


def stop_harness(harness: Harness) -> None:
    logging.getLogger().removeHandler(harness.trap)
    harness.server.drain()
    harness.server.stop()


@st.composite
def loose_value(draw, t: T.WireType, refs):
    """A value for a parameter of type ``t``: mostly of its type, in any of the spellings clients
    send (ints as strings, bools as text, enums in any case), a ref that exists when one does;
    sometimes a value of any other type."""
    if not _weighted(draw, 90):
        return draw(wire_values)
    if isinstance(t, T.Ref):            # (existing() draws alike whatever the store holds)
        return draw(existing(t.cls, refs)) if _weighted(draw, 80) else draw(typed_value(t, refs))
    if isinstance(t, T.Set) and isinstance(t.of, T.Ref) and _weighted(draw, 80):
        return draw(st.lists(existing(t.of.cls, refs), max_size=3))
    right = typed_value(t, refs)
    if t is T.Int:
        return draw(st.one_of(right, right.map(str), ints, st.floats(), st.sampled_from(["", " 1", "0x1", "1e3"])))
    if t is T.Float:
        return draw(st.one_of(right, ints, st.sampled_from(["1.5", "nan", "inf", "-0", "x"])))
    if t is T.Bool:
        return draw(st.one_of(right, st.sampled_from(["true", "FALSE", "1", "0", "yes", ""]), st.integers(0, 1)))
    if t is T.Timestamp:
        return draw(st.one_of(right, right.map(DateTime.wire), _SCALAR_TEXT["dateTime.iso8601"]))
    if isinstance(t, T.Enum):
        return draw(st.one_of(right, right, right.map(str.upper), right.map(str.swapcase), texts))
    if isinstance(t, T.Record):
        return draw(_record_value(t.cls, refs))
    return draw(right)


@st.composite
def _record_value(draw, cls: str, refs):
    """A constructor's record: each field of the class or not, of its type or not, plus strays."""
    from classes import REGISTRY
    decl = REGISTRY.classes.get(cls)
    rec = {}
    share = draw(st.sampled_from([60, 100]))       # 100: every field, so that a create can succeed
    hints = _hints(refs)
    for f in decl.fields if decl else ():
        if _weighted(draw, share):
            hinted = f.name in hints and _weighted(draw, 50)
            rec[f.name] = draw(hints[f.name]) if hinted else draw(loose_value(f.type, refs))
    if _weighted(draw, 10):
        rec.update(draw(st.dictionaries(texts, wire_values, max_size=2)))
    return rec


_DIGITS = st.text(alphabet=st.sampled_from("0123456789²³¹٣۴߅१০੩૪୫௬౭೮൯๑໒༣၄႕០᠑᥆᧓᪇᭐᮱᱂᱓꘠꣐꤁꧑꩓꯴０１⁰₀①"), min_size=1, max_size=22)


def _hints(refs):
    """Values for parameters by name, where a type alone would rarely hit what matters."""
    uuids = st.sampled_from(["", "not-a-uuid", "00000000-0000-0000-0000-000000000000"])
    return {
        "classes": st.lists(st.one_of(st.sampled_from(["*", "vm", "VM", "task", "host", "pool", "vm_metrics", "",
                                                       "vm/", "session", "event", "nosuchclass", "vm/*"]),
                                      existing("VM", refs).map(lambda r: f"vm/{r}"), texts), max_size=4),
        "token": st.one_of(st.just(""), st.tuples(_DIGITS, _DIGITS).map(",".join),
                           st.integers(0, 10 ** 6).map(lambda n: f"{0:020d},{n:020d}"), texts),
        "expr": where_texts(),
        "where": where_texts(),
        "uuid": uuids,
        "key": st.sampled_from(["folder", "pci", "hvm_serial", "XenCenter.CustomFields.x", "owner", "", "k"]),
        "class": st.sampled_from(["VM", "vm", "host", "task", "session", "nosuchclass", ""]),
        "ref": existing("VM", refs),
        "operations": st.lists(st.sampled_from(["start", "read", "*", "get_*", "VM.start", "nosuch", ""]), max_size=3),
        "subject": st.sampled_from(["alice", "bob", "group:ops", "root", "", "nosuchuser"]),
    }


_ODD_NAMES = ["system.listMethods", "system.isAlive", "Async.", "", ".", "VM.", "Async.Async.VM.get_all",
              "vm.get_all", "VM.get_all ", "VM..get_all", "_get_all"]


@st.composite
def dispatcher_calls(draw, harness: Harness):
    """A Call: a known method in any spelling (or any name), a session of any kind, params of the
    right count and types or not.  Weighted so that most calls get past the checks to the body."""
    server = harness.server
    registry = server.registry
    roll = draw(st.integers(0, 99))
    if roll < 85:
        # half of them among the messages that do more than read a field (the getters are most of the API)
        pool = sorted(registry.messages) if _weighted(draw, 50) else sorted(
            name for name, m in registry.messages.items() if not (m.implicit and m.name.startswith("get_")))
        msg = registry.messages[draw(st.sampled_from(pool))]
        spelling = draw(st.integers(0, 9))
        if msg.is_async and spelling < 4:
            method = f"Async.{msg.wire_name}"
        elif spelling == 9:
            method = draw(st.sampled_from([f"Async.{msg.wire_name}", f"{msg.cls}_{msg.name}"]))
        else:
            method = msg.wire_name
    elif roll < 92:
        method = draw(st.sampled_from(_ODD_NAMES))
    else:
        method = draw(texts)
    found = registry.lookup(method)
    msg = found[0] if found else None
    refs = {cls: server.store.refs(cls) for cls, decl in registry.classes.items() if decl.stored}
    roll = draw(st.integers(0, 99))
    if msg is not None and msg.wire_name in harness.blocking:
        session = server.sessions.open("root")      # never registered for events: event.next returns at once
    elif roll < 50:
        session = harness.session("root")
    elif roll < 60:
        session = harness.session("alice")
    elif roll < 70:
        session = harness.session("bob")
    elif roll < 76:
        session = server.sessions.open("root")
    elif roll < 80:
        session = server.sessions.open("bob")
        server.sessions.logout(session)
    elif roll < 84:
        session = T.NULL_REF
    elif roll < 90:
        session = draw(st.one_of(texts, st.uuids().map(lambda u: f"OpaqueRef:{u}")))
    elif roll < 95:
        session = draw(existing(draw(st.sampled_from(sorted(refs))), refs))
    else:
        session = draw(wire_values)
    if msg is None:
        params = [session, *draw(st.lists(wire_values, max_size=3))]
    else:
        hints = _hints(refs)
        params = [draw(hints[p.name]) if p.name in hints and _weighted(draw, 50) else draw(loose_value(p.type, refs))
                  for p in msg.params]
        roll = draw(st.integers(0, 99))
        if roll < 10:
            params = params[:msg.required]
        elif roll < 15 and params:
            params = params[:draw(st.integers(0, len(params) - 1))]
        elif roll < 20:
            params += draw(st.lists(wire_values, min_size=1, max_size=2))
        if msg.session and _weighted(draw, 97):
            params = [session, *params]
        if msg.wire_name == "event.from" and len(params) >= 4 and not isinstance(params[3], (list, dict)):
            params[3] = draw(st.sampled_from([0, 0.0, "0", 0.01]))   # it waits for its timeout, by design
    protocol = draw(st.sampled_from(["xmlrpc", "jsonrpc1", "jsonrpc2"]))
    from xenapi.context import Identity
    return Call(method, tuple(params), protocol, 1, Identity(via="http", address="127.0.0.1:1"))


_UNEXPECTED = "unexpected server error"


def _task_end(harness: Harness, task: str, limit: float) -> dict | None:
    store = harness.server.store
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        rec = store.find("task", task)
        if rec is None or rec["status"] != "pending":
            return rec
        store.wait(store.generation, 0.05)
    return store.find("task", task)


def check_dispatch(harness: Harness, call: Call, limit: float = 10.0) -> None:
    """One call through the dispatcher ends in a Xen-API outcome, with no traceback anywhere."""
    TALLY.ran("dispatch")
    harness.trap.records.clear()
    target = "dispatch"
    try:
        with time_limit(limit):
            outcome = harness.server.dispatcher.dispatch(call)
            if isinstance(outcome, Success) and call.method.startswith("Async.") and isinstance(outcome.value, str):
                target = "dispatch.task"
                task = _task_end(harness, outcome.value, limit / 2)
                if task is not None and task["status"] == "pending":
                    raise Hang()
                if task is not None and task["error_info"]:
                    _check_failure(harness, target, call, task["error_info"])
    except Hang:
        raise Finding("hang", target, f"{call.method} over {limit} s", call) from None
    except Finding:
        raise
    except Exception as e:                    # noqa: BLE001 - dispatch() itself must never raise
        raise Finding("crash", target, f"{type(e).__name__}: {e}"[:500], call) from e
    if not isinstance(outcome, (Success, Failure, Bare, Fault)):
        raise Finding("wrong", target, f"not an outcome: {outcome!r}"[:300], call)
    if isinstance(outcome, Fault) and not call.method.startswith("Async."):
        raise Finding("wrong", target, f"a fault for a sync call: {outcome!r}", call)
    if isinstance(outcome, Failure):
        _check_failure(harness, target, call, outcome.description)
    for codec in (xmlrpc, jsonrpc):
        wire_call = call if codec is xmlrpc or call.protocol != "xmlrpc" else Call(call.method, (), "jsonrpc2", 1)
        body = codec.encode(outcome, wire_call)
        if b"could not be encoded" in body or b"Traceback" in body:
            raise Finding("traceback", f"{codec.__name__.rsplit('.', 1)[-1]}.encode",
                          f"{call.method}: {body[:300]!r}", call)
    _check_logs(harness, target, call)


def _check_failure(harness: Harness, target: str, call: Call, description) -> None:
    if not description or not all(isinstance(d, str) for d in description) or description[0] not in ERRORS:
        raise Finding("wrong", target, f"undeclared error {description!r}"[:300], call)
    if description[0] == INTERNAL_ERROR and _UNEXPECTED in " ".join(description[1:]):
        logged = harness.trap.texts()
        text = " | ".join(logged) or " ".join(description)
        defect = known_defect(target, text)
        if defect is not None:
            TALLY.hit(defect)
            harness.trap.records.clear()
            return
        raise Finding("crash", target, f"{call.method}: INTERNAL_ERROR; log: {text}"[:800], call)


def _check_logs(harness: Harness, target: str, call: Call) -> None:
    logged = harness.trap.texts()
    if logged:
        defect = known_defect(target, " | ".join(logged))
        if defect is not None:
            TALLY.hit(defect)
            return
        raise Finding("traceback", target, f"{call.method}: logged {' | '.join(logged)}"[:800], call)
