import enum
import json

import pytest

from xenapi.wire import Bare, Call, Failure, Fault, Limits, Success, WireError
from xenapi.wire import jsonrpc as codec
from xenapi.wire.values import NEVER, DateTime, I4

V1 = Call("VM.get_all", ("S",), "jsonrpc1", 7)
V2 = Call("VM.get_all", ("S",), "jsonrpc2", "0b6a1f0c-uuid")


def request(**fields) -> bytes:
    return json.dumps(fields).encode()


def result_of(outcome, call=V2):
    return json.loads(codec.encode(outcome, call))["result"]


# -- decode ------------------------------------------------------------------------------------

def test_decode_v1_request_gives_jsonrpc1_call():
    call = codec.decode(request(method="session.login_with_password", params=["u", "p"], id=1))
    assert call == Call("session.login_with_password", ("u", "p"), "jsonrpc1", 1)


def test_decode_v2_request_as_xen_orchestra_sends_it():
    body = b'{"id":0,"jsonrpc":"2.0","method":"pool.get_all_records","params":["OpaqueRef:s"]}'
    assert codec.decode(body) == Call("pool.get_all_records", ("OpaqueRef:s",), "jsonrpc2", 0)


def test_decode_v2_named_params_become_one_struct_param():
    call = codec.decode(request(jsonrpc="2.0", method="m", params={"a": 1}, id="x"))
    assert call.params == ({"a": 1},)


@pytest.mark.parametrize("params", [None, "absent"])
def test_decode_v2_without_params_gives_empty_tuple(params):
    fields = {"jsonrpc": "2.0", "method": "system.listMethods", "id": 1}
    if params != "absent":
        fields["params"] = params
    assert codec.decode(request(**fields)).params == ()


def test_decode_keeps_json_types():
    call = codec.decode(request(method="m", params=[4294967296, 1.5, True, None, {"k": ["v"]}],
                                id=1))
    assert call.params == (4294967296, 1.5, True, None, {"k": ["v"]})


@pytest.mark.parametrize("call_id", [0, 42, "uuid-string", ""])
def test_decode_keeps_id_exactly(call_id):
    assert codec.decode(request(jsonrpc="2.0", method="m", params=[], id=call_id)).id == call_id


def test_decode_oversized_body_raises_413():
    body = request(method="m", params=["x" * 2000], id=1)
    with pytest.raises(WireError) as raised:
        codec.decode(body, Limits(max_body_bytes=1000))
    assert raised.value.status_hint == 413


def test_decode_nesting_over_depth_limit_raises_400():
    nested: list = []
    for _ in range(10):
        nested = [nested]                # eleven arrays, as in the XML-RPC test
    codec.decode(request(method="m", params=[nested], id=1), Limits(max_depth=11))
    with pytest.raises(WireError) as raised:
        codec.decode(request(method="m", params=[nested], id=1), Limits(max_depth=10))
    assert raised.value.status_hint == 400


def test_decode_nesting_deeper_than_recursion_limit_raises_400():
    body = b'{"method":"m","id":1,"params":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(WireError) as raised:
        codec.decode(body, Limits(max_body_bytes=10**6))
    assert raised.value.status_hint == 400


def test_decode_too_many_values_raises_400():
    with pytest.raises(WireError) as raised:
        codec.decode(request(method="m", params=[{"a": list(range(30))}], id=1),
                     Limits(max_items=20))
    assert raised.value.status_hint == 400


MALFORMED = {
    "empty": b"",
    "not_json": b"{method",
    "not_utf8": b'{"method":"\xff","params":[],"id":1}',
    "array_body": b"[]",
    "notification_v2": request(jsonrpc="2.0", method="m", params=[]),
    "notification_v1_null_id": request(method="m", params=[], id=None),
    "id_is_object": request(method="m", params=[], id={}),
    "id_is_bool": request(method="m", params=[], id=True),
    "id_is_float": request(method="m", params=[], id=1.5),
    "no_method": request(params=[], id=1),
    "method_not_string": request(method=3, params=[], id=1),
    "empty_method": request(method="", params=[], id=1),
    "v1_without_params": request(method="m", id=1),
    "v1_named_params": request(method="m", params={"a": 1}, id=1),
    "params_string": request(jsonrpc="2.0", method="m", params="x", id=1),
    "wrong_version": request(jsonrpc="1.0", method="m", params=[], id=1),
    "nan_literal": b'{"method":"m","params":[NaN],"id":1}',
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_decode_malformed_request_raises_wire_error_500(body):
    with pytest.raises(WireError) as raised:
        codec.decode(body)
    assert raised.value.status_hint == 500


# -- encode: envelopes -------------------------------------------------------------------------

def test_encode_v1_success_has_null_error_and_echoes_id():
    assert json.loads(codec.encode(Success("OpaqueRef:x"), V1)) == \
        {"result": "OpaqueRef:x", "error": None, "id": 7}


def test_encode_v1_failure_is_error_array():
    assert json.loads(codec.encode(Failure(["HANDLE_INVALID", "VM", "OpaqueRef:x"]), V1)) == \
        {"result": None, "error": ["HANDLE_INVALID", "VM", "OpaqueRef:x"], "id": 7}


def test_encode_v2_success_has_version_and_no_error():
    assert json.loads(codec.encode(Success(["a"]), V2)) == \
        {"jsonrpc": "2.0", "result": ["a"], "id": "0b6a1f0c-uuid"}


def test_encode_v2_failure_is_error_object_with_code_1():
    out = json.loads(codec.encode(Failure(["SESSION_INVALID", "OpaqueRef:s"]), V2))
    assert out == {"jsonrpc": "2.0", "id": "0b6a1f0c-uuid",
                   "error": {"code": 1, "message": "SESSION_INVALID", "data": ["OpaqueRef:s"]}}


def test_encode_bare_is_plain_result():
    assert json.loads(codec.encode(Bare(["VM.start"]), V2)) == \
        {"jsonrpc": "2.0", "result": ["VM.start"], "id": "0b6a1f0c-uuid"}


@pytest.mark.parametrize("call", [V1, V2], ids=["v1", "v2"])
def test_encode_fault_is_error_object(call):
    out = json.loads(codec.encode(Fault("No async mode"), call))
    assert out["error"] == {"code": 500, "message": "No async mode"}
    assert out["id"] == call.id


def test_encode_output_is_compact_utf8():
    out = codec.encode(Success({"a": ["é", 1]}), V2)
    assert b" " not in out
    assert "é".encode() in out


# -- encode: value rules -----------------------------------------------------------------------

def test_encode_int64_is_json_number():
    assert result_of(Success(2**40)) == 2**40
    assert b"1099511627776" in codec.encode(Success(2**40), V2)


def test_encode_bool_is_json_boolean():
    out = codec.encode(Success([True, False]), V2)
    assert out.startswith(b'{"jsonrpc":"2.0","result":[true,false]')


def test_encode_i4_is_plain_number():
    assert result_of(Success({"VM": I4(3)})) == {"VM": 3}


def test_encode_datetime_is_wire_string():
    assert result_of(Success([DateTime.parse("20250319T04:16:24Z"), NEVER])) == \
        ["20250319T04:16:24Z", "19700101T00:00:00Z"]


def test_encode_none_is_empty_string():
    assert result_of(Success({"a": None, "b": [None]})) == {"a": "", "b": [""]}
    assert result_of(Success(None)) == ""


def test_encode_sets_and_tuples_are_arrays():
    assert result_of(Success({"s": {"x"}, "t": ("y", 1), "f": frozenset()})) == \
        {"s": ["x"], "t": ["y", 1], "f": []}


def test_encode_bytes_are_base64_strings():
    assert result_of(Success(b"hi")) == "aGk="


def test_encode_map_keys_are_stringified():
    assert result_of(Success({1: "a", DateTime(0): "b"})) == {"1": "a", "19700101T00:00:00Z": "b"}


def test_encode_non_finite_float_is_string_not_invalid_json():
    assert result_of(Success([float("nan"), float("inf")])) == ["nan", "inf"]


def test_encode_enum_uses_its_value():
    class Power(str, enum.Enum):
        HALTED = "Halted"

    assert result_of(Success(Power.HALTED)) == "Halted"


def test_encode_unencodable_value_gives_internal_error(caplog):
    out = json.loads(codec.encode(Success(object()), V2))
    assert out["error"]["message"] == "INTERNAL_ERROR"
    assert out["id"] == V2.id
    assert "VM.get_all" in caplog.text


def test_encode_unencodable_value_in_v1_gives_error_array():
    out = json.loads(codec.encode(Success({"x": object()}), V1))
    assert out["result"] is None and out["error"][0] == "INTERNAL_ERROR"
