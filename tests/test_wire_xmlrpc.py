import re
import time
import xmlrpc.client

import pytest

from xenapi.wire import Bare, Call, Failure, Fault, Limits, Success, WireError
from xenapi.wire import xmlrpc as codec
from xenapi.wire.values import NEVER, DateTime, I4

COMPACT_GAP = re.compile(rb">\s+<")


def call_body(method: str, *params, **kwargs) -> bytes:
    """A request as Python's xmlrpc.client sends it (pretty-printed, typed <string>s)."""
    return xmlrpc.client.dumps(params, method, allow_none=True, **kwargs).encode()


def wrap(params_xml: str, method: str = "m") -> bytes:
    return (f"<?xml version='1.0'?><methodCall><methodName>{method}</methodName>"
            f"<params>{params_xml}</params></methodCall>").encode()


def value_of(response: bytes):
    """The Value of a Success envelope, parsed by the stdlib client."""
    (envelope,), _ = xmlrpc.client.loads(response, use_builtin_types=True)
    assert envelope["Status"] == "Success"
    return envelope["Value"]


# -- decode: values ----------------------------------------------------------------------------

def test_decode_python_client_request_gives_method_and_params():
    body = call_body("VM.start", "OpaqueRef:s", "OpaqueRef:vm", False, True)
    assert codec.decode(body) == Call("VM.start", ("OpaqueRef:s", "OpaqueRef:vm", False, True))


def test_decode_untyped_and_string_values_are_strings():
    call = codec.decode(wrap("<param><value>plain</value></param>"
                             "<param><value><string>typed</string></value></param>"
                             "<param><value></value></param><param><value/></param>"
                             "<param><value><string/></value></param>"))
    assert call.params == ("plain", "typed", "", "", "")


@pytest.mark.parametrize("tag", ["int", "i4", "i8"])
def test_decode_integer_tags_give_int(tag):
    assert codec.decode(wrap(f"<param><value><{tag}>-42</{tag}></value></param>")).params == (-42,)


def test_decode_int64_beyond_32_bits_is_exact():
    assert codec.decode(wrap("<param><value><i8>9223372036854775807</i8></value></param>")).params \
        == (9223372036854775807,)


def test_decode_double_boolean_nil_base64():
    call = codec.decode(call_body("m", 2.5, True, False, None, xmlrpc.client.Binary(b"\x00\xff")))
    assert call.params == (2.5, True, False, None, b"\x00\xff")


def test_decode_datetime_gives_wire_datetime():
    call = codec.decode(wrap("<param><value><dateTime.iso8601>20250319T04:16:24Z"
                             "</dateTime.iso8601></value></param>"))
    assert call.params == (DateTime.parse("20250319T04:16:24Z"),)
    assert call.params[0].wire() == "20250319T04:16:24Z"


def test_decode_nested_struct_and_array():
    record = {"name_label": "vm", "VCPUs_max": "2", "tags": ["a", "b"], "other_config": {}}
    assert codec.decode(call_body("VM.create", "S", record)).params == ("S", record)


def test_decode_xml_escapes_and_utf8_text():
    call = codec.decode(call_body("m", "a&b<c>\"d\" é ☃ \U0001F600"))
    assert call.params == ("a&b<c>\"d\" é ☃ \U0001F600",)


def test_decode_call_without_params_gives_empty_tuple():
    body = b"<methodCall><methodName>system.listMethods</methodName></methodCall>"
    assert codec.decode(body) == Call("system.listMethods", ())


def test_decode_sets_protocol_xmlrpc():
    assert codec.decode(call_body("m")).protocol == "xmlrpc"


# -- decode: refusals --------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<methodCall><methodName>&lol9;</methodName></methodCall>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<methodCall><methodName>m</methodName>
<params><param><value>&x;</value></param></params></methodCall>"""

PLAIN_DOCTYPE = b"""<?xml version="1.0"?><!DOCTYPE methodCall>
<methodCall><methodName>m</methodName></methodCall>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY, PLAIN_DOCTYPE],
                         ids=["billion_laughs", "external_entity", "doctype"])
def test_decode_doctype_raises_wire_error_fast(body):
    start = time.perf_counter()
    with pytest.raises(WireError) as raised:
        codec.decode(body)
    assert time.perf_counter() - start < 0.1
    assert raised.value.status_hint == 500


def test_decode_oversized_body_raises_413():
    body = call_body("m", "x" * 2000)
    with pytest.raises(WireError) as raised:
        codec.decode(body, Limits(max_body_bytes=1000))
    assert raised.value.status_hint == 413


def test_decode_default_limit_is_xapi_300_kib():
    with pytest.raises(WireError) as raised:
        codec.decode(call_body("m", "x" * (300 * 1024)))
    assert raised.value.status_hint == 413


def test_decode_nesting_over_depth_limit_raises_400():
    nested: list = []
    for _ in range(10):
        nested = [nested]
    codec.decode(call_body("m", nested), Limits(max_depth=11))
    with pytest.raises(WireError) as raised:
        codec.decode(call_body("m", nested), Limits(max_depth=10))
    assert raised.value.status_hint == 400


def test_decode_deep_nesting_within_size_limit_raises_without_recursion_error():
    body = wrap("<param>" + "<value><array><data>" * 20000 + "</data></array></value>" * 20000
                + "</param>")
    with pytest.raises(WireError) as raised:
        codec.decode(body, Limits(max_body_bytes=10**7))
    assert raised.value.status_hint == 400


def test_decode_too_many_values_raises_400():
    with pytest.raises(WireError) as raised:
        codec.decode(call_body("m", list(range(50))), Limits(max_items=20))
    assert raised.value.status_hint == 400


MALFORMED = {
    "empty": b"",
    "not_xml": b"not xml",
    "truncated": b"<methodCall><methodName>m</methodName>",
    "no_method_name": b"<methodCall><params></params></methodCall>",
    "blank_method_name": b"<methodCall><methodName> </methodName></methodCall>",
    "wrong_root": b"<methodResponse><params></params></methodResponse>",
    "bad_int": wrap("<param><value><int>12x</int></value></param>"),
    "empty_int": wrap("<param><value><int></int></value></param>"),
    "bad_boolean": wrap("<param><value><boolean>2</boolean></value></param>"),
    "bad_double": wrap("<param><value><double>x</double></value></param>"),
    "bad_datetime": wrap("<param><value><dateTime.iso8601>yesterday</dateTime.iso8601>"
                         "</value></param>"),
    "bad_base64": wrap("<param><value><base64>!!!</base64></value></param>"),
    "unknown_type": wrap("<param><value><foo>1</foo></value></param>"),
    "two_typed_children": wrap("<param><value><int>1</int><int>2</int></value></param>"),
    "two_values_in_param": wrap("<param><value>a</value><value>b</value></param>"),
    "empty_param": wrap("<param></param>"),
    "member_without_name": wrap("<param><value><struct><member><value>x</value></member>"
                                "</struct></value></param>"),
    "member_without_value": wrap("<param><value><struct><member><name>a</name></member>"
                                 "</struct></value></param>"),
    "array_without_data": wrap("<param><value><array><value>x</value></array></value></param>"),
    "type_outside_value": wrap("<param><int>1</int></param>"),
    "two_method_names":
        b"<methodCall><methodName>m</methodName><methodName>n</methodName></methodCall>",
    "not_utf8": b"<methodCall><methodName>\xff\xfe</methodName></methodCall>",
    "illegal_character": b"<methodCall><methodName>a&#1;</methodName></methodCall>",
    "undefined_entity": b"<methodCall><methodName>&undefined;</methodName></methodCall>",
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_decode_malformed_request_raises_wire_error_500(body):
    with pytest.raises(WireError) as raised:
        codec.decode(body)
    assert raised.value.status_hint == 500


# -- encode: envelopes -------------------------------------------------------------------------

def test_encode_success_is_xapi_envelope_byte_for_byte():
    assert codec.encode(Success("OpaqueRef:abc")) == (
        b'<?xml version="1.0"?><methodResponse><params><param><value><struct>'
        b"<member><name>Status</name><value>Success</value></member>"
        b"<member><name>Value</name><value>OpaqueRef:abc</value></member>"
        b"</struct></value></param></params></methodResponse>")


def test_encode_failure_gives_error_description_strings():
    out = codec.encode(Failure(["VM_BAD_POWER_STATE", "OpaqueRef:vm", "halted", "running"]))
    (envelope,), _ = xmlrpc.client.loads(out)
    assert envelope == {
        "Status": "Failure",
        "ErrorDescription": ["VM_BAD_POWER_STATE", "OpaqueRef:vm", "halted", "running"]}


def test_encode_bare_has_no_status_envelope():
    out = codec.encode(Bare(["VM.start", "VM.get_all"]))
    assert xmlrpc.client.loads(out)[0] == (["VM.start", "VM.get_all"],)
    assert b"Status" not in out


def test_encode_fault_raises_fault_in_python_client():
    out = codec.encode(Fault("No async mode for this operation"))
    with pytest.raises(xmlrpc.client.Fault) as raised:
        xmlrpc.client.loads(out)
    assert raised.value.faultCode == 500
    assert raised.value.faultString == "No async mode for this operation"


@pytest.mark.parametrize("outcome", [
    Success({"a": [1, True, None, 1.5, {"b": "c"}], "d": NEVER}),
    Failure(["SESSION_INVALID", "OpaqueRef:x"]),
    Bare(["x"]),
    Fault("boom"),
], ids=["success", "failure", "bare", "fault"])
def test_encode_output_is_compact(outcome):
    out = codec.encode(outcome)
    assert out.startswith(b'<?xml version="1.0"?><methodResponse>')
    assert not COMPACT_GAP.search(out)
    assert b"\n" not in out


# -- encode: value rules -----------------------------------------------------------------------

def test_encode_int_is_untyped_decimal_string_even_beyond_32_bits():
    assert codec.value_to_string(123) == "<value>123</value>"
    assert value_of(codec.encode(Success(2**40))) == str(2**40)


def test_encode_bool_is_boolean_not_int():
    assert codec.value_to_string(True) == "<value><boolean>1</boolean></value>"
    assert codec.value_to_string(False) == "<value><boolean>0</boolean></value>"


def test_encode_i4_is_the_only_typed_int():
    assert codec.value_to_string(I4(7)) == "<value><i4>7</i4></value>"
    assert value_of(codec.encode(Success({"VM": I4(3)}))) == {"VM": 3}


@pytest.mark.parametrize("number", [0.1, 1.0, -2.5e-300, 1e16, 2**53 + 0.0, 1 / 3])
def test_encode_float_is_double_that_round_trips(number):
    text = codec.value_to_string(number)
    assert text.startswith("<value><double>")
    assert value_of(codec.encode(Success(number))) == number


def test_encode_datetime_uses_xapi_format():
    assert codec.value_to_string(DateTime.parse("20250319T04:16:24Z")) == \
        "<value><dateTime.iso8601>20250319T04:16:24Z</dateTime.iso8601></value>"
    assert codec.value_to_string(NEVER) == \
        "<value><dateTime.iso8601>19700101T00:00:00Z</dateTime.iso8601></value>"


def test_encode_none_is_empty_value_never_nil():
    assert codec.value_to_string(None) == "<value></value>"
    assert b"nil" not in codec.encode(Success({"a": None, "b": [None]}))


def test_encode_map_keys_are_stringified():
    out = codec.encode(Success({1: "a", 2.5: "c", DateTime(0): "d", None: "e"}))
    assert value_of(out) == {"1": "a", "2.5": "c", "19700101T00:00:00Z": "d", "": "e"}
    assert value_of(codec.encode(Success({True: "b"}))) == {"true": "b"}


def test_encode_list_tuple_set_are_arrays():
    out = codec.encode(Success([("a",), {"b"}, frozenset(), []]))
    assert value_of(out) == [["a"], ["b"], [], []]


def test_encode_bytes_are_base64():
    assert codec.value_to_string(b"hi") == "<value><base64>aGk=</base64></value>"


def test_encode_escapes_markup_in_values_and_keys():
    out = codec.encode(Success({"<k&>": "a&b<c>d]]>"}))
    assert value_of(out) == {"<k&>": "a&b<c>d]]>"}
    assert b"&amp;b&lt;c&gt;d" in out


def test_encode_drops_characters_illegal_in_xml():
    out = codec.encode(Success("a\x00b\x01c\x1fd\ud800e\ufffff"))
    assert value_of(out) == "abcdef"


def test_encode_keeps_tab_newline_and_carriage_return():
    assert value_of(codec.encode(Success("a\tb\nc\r\nd"))) == "a\tb\nc\r\nd"


def test_encode_enums_use_their_value():
    import enum

    class Power(str, enum.Enum):
        RUNNING = "Running"

    class Count(enum.IntEnum):
        TWO = 2

    assert codec.value_to_string(Power.RUNNING) == "<value>Running</value>"
    assert codec.value_to_string(Count.TWO) == "<value>2</value>"


def test_encode_unencodable_value_gives_internal_error_failure(caplog):
    out = codec.encode(Success({"x": object()}), Call("VM.get_record", ()))
    (envelope,), _ = xmlrpc.client.loads(out)
    assert envelope["Status"] == "Failure"
    assert envelope["ErrorDescription"][0] == "INTERNAL_ERROR"
    assert "VM.get_record" in caplog.text


def test_encode_self_referencing_value_gives_internal_error_failure():
    loop: list = []
    loop.append(loop)
    (envelope,), _ = xmlrpc.client.loads(codec.encode(Success(loop)))
    assert envelope["ErrorDescription"][0] == "INTERNAL_ERROR"


def test_value_to_string_of_ref_is_compact_value():
    assert codec.value_to_string("OpaqueRef:abc") == "<value>OpaqueRef:abc</value>"


def test_value_to_string_of_unencodable_raises_type_error():
    with pytest.raises(TypeError):
        codec.value_to_string(object())


def test_encode_then_decode_round_trips_a_record_with_ints_as_strings():
    record = {"uuid": "u", "VCPUs_max": 4, "is_a_template": False, "memory": 2**33,
              "other_config": {"k": "v"}, "tags": ["t"], "start_time": NEVER, "ratio": 0.5}
    body = wrap("<param>" + codec.value_to_string(record) + "</param>")
    assert codec.decode(body).params == ({**record, "VCPUs_max": "4", "memory": str(2**33)},)


def test_decode_base64_with_line_breaks_from_python_client():
    data = bytes(range(256)) * 2
    assert codec.decode(call_body("m", xmlrpc.client.Binary(data))).params == (data,)
