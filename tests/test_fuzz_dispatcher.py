"""Fuzzing the dispatcher (xenapi/dispatcher.py) in process, on a real server (libvirt's test
driver): any method name, session and params end in a Xen-API outcome, never in an unexpected
exception.  Properties and inputs: tests/fuzzing.py."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import fuzzing as F
from xenapi.wire import Call, Failure

CI = settings.get_profile("xenapi-ci")


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    h = F.start_harness(tmp_path_factory.mktemp("fuzz-dispatcher"))
    yield h
    F.stop_harness(h)


@settings(CI)
@given(data=st.data())
def test_any_call_ends_in_a_xen_api_outcome(harness, data):
    F.check_dispatch(harness, data.draw(F.dispatcher_calls(harness)))


# -- defects fuzzing found, fixed: regressions -----------------------------------------------------

def test_float_param_given_an_int_beyond_float_is_field_type_error(harness):
    call = Call("task.set_progress", (harness.session("root"), "OpaqueRef:NULL", 10 ** 400), "jsonrpc2", 1)
    outcome = harness.server.dispatcher.dispatch(call)
    assert isinstance(outcome, Failure) and outcome.description[0] == "FIELD_TYPE_ERROR", outcome


def test_get_all_records_where_with_a_deep_expression_is_not_an_internal_error(harness):
    expr = "(" * 400 + 'field "name_label" = "x"' + ")" * 400
    outcome = harness.server.dispatcher.dispatch(Call("VM.get_all_records_where", (harness.session("root"), expr)))
    assert not (isinstance(outcome, Failure) and outcome.description[0] == "INTERNAL_ERROR"), outcome


def test_assert_operation_valid_with_an_unimplemented_operation_is_refused_not_internal_error(harness):
    store = harness.server.store
    vm = next(ref for ref, rec in store.records("VM").items()
              if not rec["is_control_domain"] and not rec["is_a_template"])
    outcome = harness.server.dispatcher.dispatch(
        Call("VM.assert_operation_valid", (harness.session("root"), vm, "snapshot")))
    assert isinstance(outcome, Failure) and outcome.description[0] != "INTERNAL_ERROR", outcome


def test_event_from_token_with_superscript_digits_is_a_parse_failure(harness):
    outcome = harness.server.dispatcher.dispatch(Call("event.from", (harness.session("root"), ["*"], "²,1", 0.0)))
    assert isinstance(outcome, Failure) and outcome.description[0] == "EVENT_FROM_TOKEN_PARSE_FAILURE", outcome
