"""Fuzzing the wire codecs (xenapi/wire/): decode raises only WireError, encode never raises, and
values survive encode -> decode in their wire form.  Properties and inputs: tests/fuzzing.py."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import fuzzing as F
from xenapi.wire import Limits, WireError, xmlrpc
from xenapi.wire.values import DateTime

CI = settings.get_profile("xenapi-ci")
SMALL = Limits(max_body_bytes=4096, max_depth=8, max_items=64)


@settings(CI)
@given(st.binary(max_size=2000))
def test_xmlrpc_decode_of_any_bytes_raises_only_wire_error(body):
    F.check_xml_decode(body)


@settings(CI)
@given(F.xml_documents(), st.sampled_from([Limits(), SMALL]))
def test_xmlrpc_decode_of_wrong_documents_raises_only_wire_error(body, limits):
    F.check_xml_decode(body, limits)


@settings(CI)
@given(F.wire_values)
def test_xmlrpc_value_survives_encode_then_decode(value):
    F.check_xml_roundtrip(value)


@settings(CI)
@given(F.outcomes)
def test_xmlrpc_encode_of_any_outcome_never_raises(outcome):
    F.check_xml_encode_never_raises(outcome)


@settings(CI)
@given(st.binary(max_size=2000))
def test_jsonrpc_decode_of_any_bytes_raises_only_wire_error(body):
    F.check_json_decode(body)


@settings(CI)
@given(F.json_documents(), st.sampled_from([Limits(), SMALL]))
def test_jsonrpc_decode_of_wrong_documents_raises_only_wire_error(body, limits):
    F.check_json_decode(body, limits)


@settings(CI)
@given(F.wire_values, st.lists(F.json_values, max_size=4))
def test_jsonrpc_value_survives_encode_and_params_survive_decode(value, params):
    F.check_json_roundtrip(value, params)


@settings(CI)
@given(F.outcomes, st.sampled_from(["jsonrpc1", "jsonrpc2"]))
def test_jsonrpc_encode_of_any_outcome_never_raises(outcome, protocol):
    F.check_json_encode_never_raises(outcome, protocol)


# -- defects fuzzing found, fixed: regressions -----------------------------------------------------

@pytest.mark.parametrize("encoding", ["foo", "utf-7", "utf-32", "hex", "idna"])
def test_xml_declaration_with_an_unusable_encoding_is_a_wire_error(encoding):
    body = f'<?xml version="1.0" encoding="{encoding}"?><methodCall><methodName>a</methodName></methodCall>'
    with pytest.raises(WireError):
        xmlrpc.decode(body.encode())


def test_datetime_before_year_1000_keeps_four_year_digits():
    assert DateTime.parse("0999-12-31T23:59:59Z").wire() == "09991231T23:59:59Z"
