"""JSON-RPC codec for ``POST /jsonrpc``, versions 1.0 and 2.0 as xapi speaks them (ocaml-rpc
``Jsonrpc``).

decode: ``{"method", "params": [...], "id"}`` is version 1 (params required, an array);
``"jsonrpc": "2.0"`` is version 2 (params optional, an array or one named object passed as a
single dict).  ``id`` is mandatory and must be a string or an integer: notifications are
refused, as xapi does.  Refusals are :class:`WireError`: 413 over the size limit, 400 for too
deep or too many values, 500 for anything malformed (xapi's status for a malformed request).

encode: results as xapi sends them: ints are JSON numbers, datetimes their wire string,
``None`` is ``""``, sets and tuples are arrays, bytes are base64 text.  The id is echoed as
received.  Errors: v1 ``"error": [CODE, params...]``; v2 ``{"code": 1, "message": CODE,
"data": [params...]}``.
"""
from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Mapping
from enum import Enum

from xenapi.errors import INTERNAL_ERROR
from xenapi.wire import Bare, Call, Failure, Fault, Limits, Success, WireError
from xenapi.wire.values import DateTime, FrozenRecord
from xenapi.wire.xmlrpc import map_key

log = logging.getLogger(__name__)

__all__ = ["decode", "encode"]


# ---------------------------------------------------------------------------------------- decode

def _malformed(why: str) -> WireError:
    return WireError(f"malformed JSON-RPC request: {why}", 500)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _check_limits(params: list, limits: Limits) -> None:
    """Count values and nesting without recursion (json.loads itself is bounded by the
    interpreter's recursion limit, which surfaces as RecursionError)."""
    items = 0
    pending = [(params, 0)]
    while pending:
        container, depth = pending.pop()
        if depth > limits.max_depth:
            raise WireError(f"values nested deeper than {limits.max_depth}", 400)
        children = container.values() if type(container) is dict else container
        items += len(children)
        if items > limits.max_items:
            raise WireError(f"more than {limits.max_items} values", 400)
        pending.extend((c, depth + 1) for c in children if type(c) is list or type(c) is dict)


def decode(body: bytes, limits: Limits = Limits()) -> Call:
    """Parse a JSON-RPC request; raise :class:`WireError` on anything else."""
    if len(body) > limits.max_body_bytes:
        raise WireError(f"request body over {limits.max_body_bytes} bytes", 413)
    try:
        doc = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise WireError("JSON nested too deeply", 400) from None
    except ValueError as e:              # JSONDecodeError and UnicodeDecodeError included
        raise _malformed(str(e)) from None
    if type(doc) is not dict:
        raise _malformed("the body is not a JSON object")

    version = doc.get("jsonrpc")
    if version is None:
        protocol = "jsonrpc1"
        if "params" not in doc:
            raise _malformed("'params' is required")
    elif version == "2.0":
        protocol = "jsonrpc2"
    else:
        raise _malformed("'jsonrpc' must be \"2.0\"")

    method = doc.get("method")
    if type(method) is not str or not method:
        raise _malformed("'method' must be a non-empty string")

    params = doc.get("params")
    if params is None and protocol == "jsonrpc2":
        params = []
    elif type(params) is dict and protocol == "jsonrpc2":
        params = [params]                # by-name params travel as one struct
    elif type(params) is not list:
        raise _malformed("'params' must be an array")

    call_id = doc.get("id")
    if call_id is None:
        raise _malformed("'id' is required: notifications are not supported")
    if type(call_id) is not str and type(call_id) is not int:
        raise _malformed("'id' must be a string or an integer")

    _check_limits(params, limits)
    return Call(method, tuple(params), protocol, call_id)


# ---------------------------------------------------------------------------------------- encode

_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                         check_circular=False)   # _plain builds a fresh tree, so no cycles
_AS_IS = frozenset({str, int, bool})                 # exact types json emits as xapi does


def _plain(v):
    """``v`` as builtins json can emit, following xapi's JSON value rules."""
    t = type(v)
    if t is str or t is int or t is bool:
        return v
    if t is dict:                        # scalars inline: records are mostly strings
        return {k if type(k) is str else map_key(k):
                x if type(x) in _AS_IS else _plain(x) for k, x in v.items()}
    if t is list or t is tuple:
        return [x if type(x) in _AS_IS else _plain(x) for x in v]
    if v is None:
        return ""
    if t is float:
        return v if v - v == 0 else repr(v)   # nan and inf are not JSON numbers
    if t is DateTime:
        return v.wire()
    return _other(v)


def _other(v):
    """The slow path: subclasses (I4, enums), sets, bytes and other containers."""
    if isinstance(v, Enum):
        return _plain(v.value)
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return _plain(float(v))
    if isinstance(v, Mapping):
        return _plain(dict(v))
    if isinstance(v, (set, frozenset)):
        return [_plain(x) for x in v]
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(v).decode("ascii")
    raise TypeError(f"cannot encode {type(v).__name__} in JSON-RPC")


def _result_text(value) -> str:
    """The JSON text of a result.  Records keep theirs (FrozenRecord.json), so a listing of
    10,000 records joins cached texts instead of walking a million fields again."""
    if type(value) is FrozenRecord:
        text = value.json
        if text is None:
            text = value.json = _JSON.encode(_plain(dict(value)))
        return text
    if type(value) is dict and value and all(type(v) is FrozenRecord for v in value.values()):
        return "{" + ",".join(f"{_JSON.encode(k if type(k) is str else map_key(k))}:{_result_text(v)}"
                              for k, v in value.items()) + "}"
    return _JSON.encode(_plain(value))


def _success_text(outcome, call: Call) -> str:
    result, call_id = _result_text(outcome.value), _JSON.encode(call.id)   # as the client sent it
    if call.protocol == "jsonrpc2":
        return f'{{"jsonrpc":"2.0","result":{result},"id":{call_id}}}'
    return f'{{"result":{result},"error":null,"id":{call_id}}}'


def _envelope(outcome, call: Call) -> dict:
    """The envelope of an error (a result's is written by _success_text)."""
    v2 = call.protocol == "jsonrpc2"
    kind = type(outcome)
    if kind is Failure:
        code, *params = [str(d) for d in outcome.description]
        error = {"code": 1, "message": code, "data": params} if v2 else [code, *params]
    elif kind is Fault:
        error = {"code": int(outcome.code), "message": str(outcome.message)}
    else:
        raise TypeError(f"not an outcome: {kind.__name__}")
    if v2:
        return {"jsonrpc": "2.0", "error": error, "id": call.id}
    return {"result": None, "error": error, "id": call.id}


def encode(outcome, call: Call) -> bytes:
    """The JSON-RPC response to ``call``.  Never raises: a value with no wire form becomes
    ``INTERNAL_ERROR`` and its traceback goes to the log under an id."""
    try:
        if type(outcome) is Success or type(outcome) is Bare:   # JSON-RPC has no Status struct: both are a result
            return _success_text(outcome, call).encode("utf-8", "replace")
        return _JSON.encode(_envelope(outcome, call)).encode("utf-8", "replace")
    except Exception:
        ref = uuid.uuid4().hex[:12]
        log.exception("unencodable response id=%s method=%s", ref, call.method)
        failure = Failure([INTERNAL_ERROR, f"the response could not be encoded (log id {ref})"])
        return _JSON.encode(_envelope(failure, call)).encode("utf-8", "replace")
