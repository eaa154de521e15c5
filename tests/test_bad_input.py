"""Hostile and broken input against a real server: each gets a clear Xen-API error or HTTP status,
no response ever carries a Python traceback, nothing is half-written, and the server keeps serving
(every test ends with a good call).  Spec: shared/reference/xenapi-wire-and-datamodel.md §1, §5.
"""
from __future__ import annotations

import json
import time
import uuid as _uuid
import xmlrpc.client

import pytest

from tests.conftest import start_server, stop_server
from tests.wire_client import Wire
from xenapi.model.declare import CTOR, RW

NOT_A_REF = "OpaqueRef:00000000-0000-0000-0000-000000000000"
def not_internal(description: list[str]) -> list[str]:
    assert description[0] != "INTERNAL_ERROR", description
    return description


# -- malformed requests: HTTP 500 (as xapi), plain text, no traceback ---------------------------

@pytest.mark.parametrize("body", [
    b"<methodCall><methodName>VM.get_all</methodName><params>",
    b"this is not xml",
    b"",
    b"\xff\xfe<methodCall/>",
    b"<methodCall><methodName>VM.get_all</methodName><bogus/></methodCall>",
    b"<methodCall><params></params></methodCall>",
    b"<methodCall><methodName>m</methodName><params><param><value><int>12x</int></value></param></params></methodCall>",
], ids=["truncated", "not_xml", "empty", "bad_encoding", "unknown_element", "no_method_name", "bad_int"])
def test_malformed_xmlrpc_gets_http_500_and_server_keeps_serving(wire, body):
    reply = wire.post("/", body)
    assert reply.status == 500
    assert reply.content_type == "text/plain"
    wire.assert_serving()


@pytest.mark.parametrize("body", [
    b'{"jsonrpc":"2.0","method":"VM.get_all","params":[',
    b"not json at all",
    b'{"jsonrpc":"2.0","method":"VM.get_all","params":["\xff"],"id":1}',
    b'{"jsonrpc":"2.0","method":42,"params":[],"id":1}',
    b'{"jsonrpc":"1.5","method":"VM.get_all","params":[],"id":1}',
    b'{"method":"VM.get_all","id":1}',
    b'"just a string"',
], ids=["truncated", "not_json", "bad_utf8", "method_not_string", "bad_version", "v1_without_params", "not_object"])
def test_malformed_jsonrpc_gets_http_500_and_server_keeps_serving(wire, body):
    reply = wire.post("/jsonrpc", body, "application/json")
    assert reply.status == 500
    wire.assert_serving()


@pytest.mark.parametrize("doc", [
    {"jsonrpc": "2.0", "method": "VM.get_all", "params": []},
    {"method": "VM.get_all", "params": []},
    {"jsonrpc": "2.0", "method": "VM.get_all", "params": [], "id": None},
], ids=["v2", "v1", "null_id"])
def test_jsonrpc_notification_without_id_is_refused_with_http_500(wire, doc):
    reply = wire.post("/jsonrpc", json.dumps(doc).encode(), "application/json")
    assert reply.status == 500
    assert b"result" not in reply.body
    wire.assert_serving()


def test_jsonrpc_batch_is_refused_whole_and_changes_nothing(wire, session):
    vm = wire.vm(session, "Halted")
    before = wire.value("VM.get_name_label", session, vm)
    batch = [{"jsonrpc": "2.0", "method": "VM.set_name_label", "params": [session, vm, "renamed"], "id": 1},
             {"jsonrpc": "2.0", "method": "VM.start", "params": [session], "id": 2}]
    reply = wire.post("/jsonrpc", json.dumps(batch).encode(), "application/json")
    assert reply.status == 500
    assert wire.value("VM.get_name_label", session, vm) == before
    wire.assert_serving()


# -- XML bombs and entities ----------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>
<methodCall><methodName>system.listMethods</methodName>
<params><param><value>&lol9;</value></param></params></methodCall>"""

QUADRATIC_BLOWUP = (b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "' + b"A" * 50_000 + b'">]>'
                    b"<methodCall><methodName>system.listMethods</methodName><params><param><value>"
                    + b"&a;" * 60_000 + b"</value></param></params></methodCall>")

PLAIN_DOCTYPE = (b'<?xml version="1.0"?><!DOCTYPE methodCall>'
                 b"<methodCall><methodName>system.listMethods</methodName></methodCall>")


@pytest.mark.parametrize("body", [BILLION_LAUGHS, QUADRATIC_BLOWUP, PLAIN_DOCTYPE],
                         ids=["billion_laughs", "quadratic_blowup", "plain_doctype"])
def test_dtd_and_entity_bombs_are_refused_fast(wire, body):
    assert len(body) < 300 * 1024
    started = time.monotonic()
    reply = wire.post("/", body)
    assert time.monotonic() - started < 2.0
    assert reply.status == 500
    assert len(reply.body) < 1000
    wire.assert_serving()


def xxe_bodies(session: str, vm: str) -> dict[str, bytes]:
    s, v = session.encode(), vm.encode()
    internal = b'<!DOCTYPE methodCall [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    return {
        # in the method name: MESSAGE_METHOD_UNKNOWN would echo it
        "method_name": b'<?xml version="1.0"?>' + internal +
                       b"<methodCall><methodName>&x;</methodName><params><param><value>" + s +
                       b"</value></param></params></methodCall>",
        # in a value that is stored and could be read back later
        "stored_value": b'<?xml version="1.0"?>' + internal +
                        b"<methodCall><methodName>VM.set_name_description</methodName><params>"
                        b"<param><value>" + s + b"</value></param><param><value>" + v +
                        b"</value></param><param><value>&x;</value></param></params></methodCall>",
        "parameter_entity": b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'
                            b"<methodCall><methodName>system.listMethods</methodName></methodCall>",
        "external_dtd": b'<?xml version="1.0"?><!DOCTYPE methodCall SYSTEM "file:///etc/passwd">'
                        b"<methodCall><methodName>system.listMethods</methodName></methodCall>",
        "xinclude": b'<?xml version="1.0"?><methodCall xmlns:xi="http://www.w3.org/2001/XInclude">'
                    b"<methodName>VM.set_name_description</methodName><params><param><value>" + s +
                    b"</value></param><param><value>" + v + b'</value></param><param><value>'
                    b'<xi:include href="file:///etc/passwd" parse="text"/></value></param></params></methodCall>',
    }


def test_external_entities_never_read_local_files(wire, session):
    vm = wire.vm(session, "Halted")
    for name, body in xxe_bodies(session, vm).items():
        reply = wire.post("/", body)          # clean() checks no passwd line is in the reply
        assert reply.status in (400, 500), name
    description = wire.value("VM.get_name_description", session, vm)
    assert "root:" not in description
    record = wire.xml("VM.get_record", session, vm)
    assert record.status == 200
    wire.assert_serving()


# -- sizes and depth ---------------------------------------------------------------------------

def test_body_over_configured_limit_gets_413_in_both_protocols(tmp_path):
    running = start_server(tmp_path, max_body_bytes=2048)
    try:
        wire = Wire(running)
        session = wire.login()
        padding = "x" * 4096
        assert wire.xml("VM.get_by_name_label", session, padding).status == 413
        assert wire.json("VM.get_by_name_label", [session, padding]).status == 413
        assert wire.value("VM.get_by_name_label", session, "x" * 100) == []
        wire.assert_serving()
    finally:
        stop_server(running)


def test_body_over_default_300_kib_gets_413(wire, session):
    big = "x" * (300 * 1024 + 1)
    assert wire.xml("VM.get_by_name_label", session, big).status == 413
    wire.assert_serving()


def _nested_xml(depth: int) -> bytes:
    assert depth * 42 < 300 * 1024       # under the body limit: the depth limit must be what refuses it
    return (b"<methodCall><methodName>VM.get_all</methodName><params><param>"
            + b"<value><array><data>" * depth + b"</data></array></value>" * depth
            + b"</param></params></methodCall>")


@pytest.mark.parametrize("depth", [100, 5_000])
def test_deeply_nested_xmlrpc_values_get_400(wire, depth):
    reply = wire.post("/", _nested_xml(depth))
    assert reply.status == 400
    wire.assert_serving()


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_jsonrpc_values_get_400(wire, depth):
    body = b'{"jsonrpc":"2.0","method":"VM.get_all","id":1,"params":' + b"[" * depth + b"]" * depth + b"}"
    reply = wire.post("/jsonrpc", body, "application/json")
    assert reply.status == 400
    wire.assert_serving()


def test_too_many_values_gets_400(wire):
    body = b'{"jsonrpc":"2.0","method":"VM.get_all","id":1,"params":[[' + b",".join([b"0"] * 120_000) + b"]]}"
    assert len(body) < 300 * 1024
    assert wire.post("/jsonrpc", body, "application/json").status == 400
    wire.assert_serving()


# -- wrong types -------------------------------------------------------------------------------

def test_non_bool_start_paused_gives_field_type_error_naming_it(wire, session):
    vm = wire.vm(session, "Halted")
    assert wire.error("VM.start", session, vm, "maybe", False) == ["FIELD_TYPE_ERROR", "start_paused"]
    assert wire.json_error("VM.start", [session, vm, 5, False]) == ["FIELD_TYPE_ERROR", "start_paused"]
    assert wire.error("VM.start", session, vm, None, False) == ["FIELD_TYPE_ERROR", "start_paused"]
    assert wire.error("VM.start", session, vm, False, [True]) == ["FIELD_TYPE_ERROR", "force"]
    assert wire.value("VM.get_power_state", session, vm) == "Halted"
    wire.assert_serving()


@pytest.mark.parametrize("method, params, field", [
    ("VM.set_memory_limits", ["{vm}", "lots", "1", "1", "1"], "static_min"),
    ("VM.set_memory_limits", ["{vm}", "1", "2.5", "1", "1"], "static_max"),
    ("VM.get_record", [42], "self"),
    ("VM.set_other_config", ["{vm}", ["not", "a", "map"]], "value"),
    ("VM.set_tags", ["{vm}", "not-a-set"], "value"),
    ("event.from", ["vm", "", 0.0], "classes"),
    ("event.from", [["vm"], "", "soon"], "timeout"),
    ("VM.create", ["not a record"], "args"),
])
def test_wrong_parameter_type_gives_field_type_error_naming_the_parameter(wire, session, method, params, field):
    vm = wire.vm(session, "Halted")
    params = [vm if p == "{vm}" else p for p in params]
    assert wire.json_error(method, [session, *params]) == ["FIELD_TYPE_ERROR", field]
    wire.assert_serving()


def test_type_check_comes_before_the_session_check(wire):
    assert wire.error("VM.start", "OpaqueRef:bogus", NOT_A_REF, "maybe", False) == ["FIELD_TYPE_ERROR", "start_paused"]


def test_bad_enum_value_gives_invalid_value(wire, session):
    vm = wire.vm(session, "Halted")
    before = wire.value("VM.get_actions_after_shutdown", session, vm)
    description = wire.error("VM.set_actions_after_shutdown", session, vm, "explode")
    assert description[0] == "INVALID_VALUE" and "explode" in description
    assert wire.value("VM.get_actions_after_shutdown", session, vm) == before
    assert wire.value("VM.set_actions_after_shutdown", session, vm, "RESTART") == ""   # enums: any case
    assert wire.value("VM.get_actions_after_shutdown", session, vm) == "restart"
    wire.assert_serving()


def test_int_beyond_int64_is_refused_not_an_internal_error(wire, session):
    """xapi's int is int64: a bigger number must fail with a Xen-API error, never reach libvirt."""
    vm = wire.vm(session, "Halted")
    huge = 10 ** 30
    before = wire.value("VM.get_record", session, vm)
    description = wire.json_error("VM.set_memory_limits", [session, vm, huge, huge, huge, huge])
    not_internal(description)
    assert wire.json_error("VM.set_user_version", [session, vm, huge])[0] == "FIELD_TYPE_ERROR"
    after = wire.value("VM.get_record", session, vm)
    assert after["memory_static_max"] == before["memory_static_max"]
    assert after["user_version"] == before["user_version"]
    wire.assert_serving()


def test_invalid_unicode_in_a_string_parameter_gives_invalid_value(wire, session):
    """§1.4: UTF-8 validity is checked first: INVALID_VALUE ["Invalid UTF-8 string in parameter", s].
    A JSON lone surrogate escape decodes to a string with no UTF-8 form."""
    vm = wire.vm(session, "Halted")
    body = ('{"jsonrpc":"2.0","id":1,"method":"VM.add_to_other_config","params":["%s","%s","k","bad\\ud800"]}'
            % (session, vm)).encode()
    reply = wire.post("/jsonrpc", body, "application/json").json()
    assert reply.get("error", {}).get("message") == "INVALID_VALUE", reply
    assert reply["error"]["data"][0] == "Invalid UTF-8 string in parameter"
    assert wire.value("VM.get_other_config", session, vm) == {}
    wire.assert_serving()


# -- wrong arity -------------------------------------------------------------------------------

def test_vm_start_with_one_argument_gives_count_mismatch_excluding_session(wire, session):
    vm = wire.vm(session, "Halted")
    assert wire.error("VM.start", session, vm) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.start", "3", "1"]
    assert wire.json_error("VM.start", [session, vm]) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.start", "3", "1"]
    assert wire.error("VM.start", session, vm, False, False, True) == \
        ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.start", "3", "4"]
    wire.assert_serving()


def test_login_with_one_or_five_arguments_gives_count_mismatch(wire):
    assert wire.error("session.login_with_password", "root") == \
        ["MESSAGE_PARAMETER_COUNT_MISMATCH", "session.login_with_password", "2", "1"]
    assert wire.error("session.login_with_password", "root", "admin-pw", "1.1", "x", "extra") == \
        ["MESSAGE_PARAMETER_COUNT_MISMATCH", "session.login_with_password", "2", "5"]
    for params in (("root", "admin-pw"), ("root", "admin-pw", "1.1"), ("root", "admin-pw", "1.1", "me")):
        assert wire.value("session.login_with_password", *params).startswith("OpaqueRef:")


def test_extra_argument_to_a_getter_gives_count_mismatch(wire, session):
    assert wire.error("VM.get_all", session, "extra") == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_all", "0", "1"]


def test_alias_and_async_report_the_canonical_wire_name_in_count_mismatch(wire, session):
    assert wire.error("VM_start", session) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.start", "3", "0"]
    assert wire.error("Async.VM.start", session) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.start", "3", "0"]


def test_arity_is_checked_before_the_session(wire):
    assert wire.error("VM.start", "OpaqueRef:bogus") == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.start", "3", "0"]


# -- unknown methods ---------------------------------------------------------------------------

def test_unknown_method_gives_message_method_unknown_with_its_name(wire, session):
    assert wire.error("VM.frobnicate", session, "x") == ["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"]
    assert wire.error("Nope.get_all", session) == ["MESSAGE_METHOD_UNKNOWN", "Nope.get_all"]
    assert wire.error("Async.VM.frobnicate", session) == ["MESSAGE_METHOD_UNKNOWN", "Async.VM.frobnicate"]
    assert wire.error("VM.frobnicate") == ["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"]
    assert wire.json_error("VM.frobnicate", [session]) == ["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"]
    wire.assert_serving()


def test_unknown_method_with_invalid_session_gives_session_invalid_first(wire):
    assert wire.error("VM.frobnicate", "OpaqueRef:bogus", "x") == ["SESSION_INVALID", "OpaqueRef:bogus"]
    assert wire.json_error("VM.frobnicate", ["OpaqueRef:bogus"]) == ["SESSION_INVALID", "OpaqueRef:bogus"]


def test_non_string_session_gives_a_xenapi_error(wire):
    reply = wire.json("VM.get_all", [{"not": "a session"}]).json()
    assert reply["error"]["message"] in ("SESSION_INVALID", "FIELD_TYPE_ERROR")


# -- unknown and stale references ----------------------------------------------------------------

@pytest.mark.parametrize("ref", [NOT_A_REF, "garbage", "OpaqueRef:NULL", ""])
def test_unknown_vm_ref_gives_handle_invalid_with_class_and_ref(wire, session, ref):
    assert wire.error("VM.get_record", session, ref) == ["HANDLE_INVALID", "VM", ref]
    assert wire.error("VM.start", session, ref, False, False) == ["HANDLE_INVALID", "VM", ref]
    wire.assert_serving()


def test_ref_of_another_class_gives_handle_invalid(wire, session):
    host = wire.value("host.get_all", session)[0]
    assert wire.error("VM.get_record", session, host) == ["HANDLE_INVALID", "VM", host]


def test_destroyed_vm_ref_gives_handle_invalid_everywhere(wire, session):
    clone = wire.value("VM.clone", session, wire.vm(session, "Halted"), "doomed")
    wire.value("VM.destroy", session, clone)
    assert wire.error("VM.get_record", session, clone) == ["HANDLE_INVALID", "VM", clone]
    assert wire.error("VM.get_name_label", session, clone) == ["HANDLE_INVALID", "VM", clone]
    assert wire.error("VM.start", session, clone, False, False) == ["HANDLE_INVALID", "VM", clone]
    assert wire.error("VM.destroy", session, clone) == ["HANDLE_INVALID", "VM", clone]
    assert clone not in wire.value("VM.get_all", session)
    wire.assert_serving()


def test_unknown_uuid_gives_uuid_invalid(wire, session):
    unknown = str(_uuid.uuid4())
    assert wire.error("VM.get_by_uuid", session, unknown) == ["UUID_INVALID", "VM", unknown]
    host = wire.value("host.get_all", session)[0]
    host_uuid = wire.value("host.get_uuid", session, host)
    assert wire.error("VM.get_by_uuid", session, host_uuid) == ["UUID_INVALID", "VM", host_uuid]


@pytest.mark.parametrize("expr", ['field "power_state" = ', 'field "power_state" = "Running" and', "(((", '"unterminated'])
def test_get_all_records_where_with_bad_expression_gives_invalid_value(wire, session, expr):
    description = wire.error("VM.get_all_records_where", session, expr)
    assert description[0] == "INVALID_VALUE"
    assert description[1] == expr
    wire.assert_serving()


# -- clients that go away ------------------------------------------------------------------------

def test_client_disconnecting_mid_body_leaves_server_serving(wire, session):
    body = xmlrpc.client.dumps((session,), "VM.get_all").encode()
    sock = wire.raw_socket()
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body[: len(body) // 2])
    sock.close()
    sock = wire.raw_socket()
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le")   # half a head
    sock.close()
    wire.assert_serving()


def test_client_disconnecting_while_its_call_blocks_leaves_server_serving(wire, session):
    token = wire.value("event.from", session, ["pool"], "", 0.0)["token"]
    body = xmlrpc.client.dumps((session, ["pool"], token, 0.5), "event.from").encode()
    sock = wire.raw_socket()
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    sock.close()                         # the answer, 0.5 s later, has nowhere to go
    time.sleep(0.7)
    wire.assert_serving()
    assert wire.value("VM.get_all", session)


# -- libvirt failures: a Xen-API error, never INTERNAL_ERROR; nothing half-written ----------------

def _create_record(wire: Wire, running, session: str, **overrides) -> dict:
    """A complete constructor record (as clients build one from an existing VM's record)."""
    source = wire.value("VM.get_record", session, wire.vm(session, "Halted"))
    names = {f.name for f in running.server.registry.classes["VM"].fields if f.qualifier in (RW, CTOR)}
    return {**{k: v for k, v in source.items() if k in names}, **overrides}


# xapi's VM.create: these keys are required, every other field has a datamodel default (reference §2.5, §1.4)
XAPI_VM_CREATE_REQUIRED = """user_version is_a_template affinity memory_static_max memory_dynamic_max memory_dynamic_min
    memory_static_min VCPUs_params VCPUs_max VCPUs_at_startup actions_after_shutdown actions_after_reboot actions_after_crash
    PV_bootloader PV_kernel PV_ramdisk PV_args PV_bootloader_args PV_legacy_args HVM_boot_policy HVM_boot_params platform
    PCI_bus other_config recommendations""".split()


def test_vm_create_with_only_xapis_required_keys_succeeds(wire, session):
    source = wire.value("VM.get_record", session, wire.vm(session, "Halted"))
    record = {k: source[k] for k in XAPI_VM_CREATE_REQUIRED}
    envelope = wire.xml("VM.create", session, record).envelope()
    assert envelope["Status"] == "Success", envelope
    assert wire.value("VM.get_power_state", session, envelope["Value"]) == "Halted"


def test_vm_create_missing_a_required_key_gives_field_not_found_and_no_vm(wire, session):
    source = wire.value("VM.get_record", session, wire.vm(session, "Halted"))
    record = {k: source[k] for k in XAPI_VM_CREATE_REQUIRED if k != "memory_static_max"}
    before = set(wire.value("VM.get_all", session))
    description = wire.error("VM.create", session, {**record, "name_label": "incomplete"})
    assert description[0] == "INTERNAL_ERROR"
    assert "memory_static_max" in description[1], description
    assert set(wire.value("VM.get_all", session)) == before
    wire.assert_serving()


def test_vm_create_with_a_record_libvirt_rejects_gives_backend_failure_and_no_vm(running, wire, session):
    before = wire.value("VM.get_all_records", session)
    domains_before = len(running.server.hosts.connection(running.server.master_ref).list_domains())
    record = _create_record(wire, running, session, name_label="rejected", VCPUs_max="100000",
                            VCPUs_at_startup="100000")
    description = not_internal(wire.error("VM.create", session, record))
    assert description[0] == "BACKEND_FAILURE"
    assert wire.value("VM.get_all_records", session).keys() == before.keys()
    assert wire.value("VM.get_by_name_label", session, "rejected") == []
    assert len(running.server.hosts.connection(running.server.master_ref).list_domains()) == domains_before
    assert wire.value("VM.create", session, _create_record(wire, running, session, name_label="accepted"))


@pytest.mark.parametrize("memory", ["0", "-1048576"])
def test_vm_create_with_impossible_memory_gives_a_xenapi_error_and_no_vm(running, wire, session, memory):
    before = set(wire.value("VM.get_all", session))
    record = _create_record(wire, running, session, name_label="no-memory", memory_static_max=memory,
                            memory_dynamic_max=memory, memory_dynamic_min=memory, memory_static_min=memory)
    not_internal(wire.error("VM.create", session, record))
    assert set(wire.value("VM.get_all", session)) == before
    wire.assert_serving()


def test_libvirt_refusing_a_change_leaves_the_record_unchanged(wire, session):
    vm = wire.vm(session, "Halted")
    before = wire.value("VM.get_record", session, vm)
    description = not_internal(wire.error("VM.set_VCPUs_max", session, vm, "100000"))
    assert description[0] == "BACKEND_FAILURE"
    assert description[2] == "set_vcpus"
    after = wire.value("VM.get_record", session, vm)
    assert (after["VCPUs_max"], after["VCPUs_at_startup"]) == (before["VCPUs_max"], before["VCPUs_at_startup"])
    assert after["current_operations"] == {}
    assert "changing_VCPUs" in after["allowed_operations"]
    wire.assert_serving()


def test_refused_memory_limits_leave_the_record_unchanged(wire, session):
    vm = wire.vm(session, "Halted")
    before = wire.value("VM.get_record", session, vm)
    assert wire.error("VM.set_memory_limits", session, vm, "512", "256", "256", "256")[0] == \
        "MEMORY_CONSTRAINT_VIOLATION"
    after = wire.value("VM.get_record", session, vm)
    for field in ("memory_static_min", "memory_static_max", "memory_dynamic_min", "memory_dynamic_max"):
        assert after[field] == before[field]
    assert after["current_operations"] == {}


def test_domain_undefined_behind_the_servers_back_gives_a_clear_error_on_start(running, wire, session):
    vm = wire.vm(session, "Halted")
    uuid = wire.value("VM.get_uuid", session, vm)
    running.server.hosts.connection(running.server.master_ref).undefine(uuid)
    description = not_internal(wire.error("VM.start", session, vm, False, False))
    assert description[0] in ("HANDLE_INVALID", "BACKEND_FAILURE", "OPERATION_NOT_ALLOWED")
    wire.assert_serving()


def test_domain_started_behind_the_servers_back_gives_a_clear_error_on_start(running, wire, session):
    vm = wire.vm(session, "Halted")
    uuid = wire.value("VM.get_uuid", session, vm)
    running.server.hosts.connection(running.server.master_ref).start(uuid)
    description = not_internal(wire.error("VM.start", session, vm, False, False))
    assert description[0] in ("BACKEND_FAILURE", "VM_BAD_POWER_STATE")
    deadline = time.monotonic() + 5
    while wire.value("VM.get_power_state", session, vm) != "Running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wire.value("VM.get_power_state", session, vm) == "Running"


def test_lost_libvirt_connection_gives_host_error_and_reads_keep_working(running, wire, session):
    vm = wire.vm(session, "Halted")
    running.server.hosts.connection(running.server.master_ref).close()
    description = not_internal(wire.error("VM.start", session, vm, False, False))
    assert description[0] in ("HOST_OFFLINE", "HOST_NOT_LIVE")
    assert wire.value("VM.get_power_state", session, vm) == "Halted"
    assert wire.value("VM.get_current_operations", session, vm) == {}
    wire.assert_serving()
