"""The wire as clients see it: a real server over real HTTP, asserting bytes where the rule is
about bytes (shared/reference/xenapi-wire-and-datamodel.md §1-§4, xenapi-clients.md §7).
"""
from __future__ import annotations

import re
import threading
import time
import xmlrpc.client

import pytest

from tests.wire_client import Wire, failure, ok


GAP = re.compile(rb">\s+<")
XAPI_DATETIME = re.compile(r"\d{8}T\d{2}:\d{2}:\d{2}Z")
REF = re.compile(r"OpaqueRef:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SUCCESS_HEAD = (b'<?xml version="1.0"?><methodResponse><params><param><value><struct>'
                b'<member><name>Status</name><value>Success</value></member>'
                b'<member><name>Value</name>')
FAILURE_HEAD = (b'<?xml version="1.0"?><methodResponse><params><param><value><struct>'
                b'<member><name>Status</name><value>Failure</value></member>'
                b'<member><name>ErrorDescription</name>')


def nulls(value, path="") -> list[str]:
    """Paths of every JSON null inside ``value``."""
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in nulls(v, f"{path}/{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in nulls(v, f"{path}[{i}]")]
    return []


def wait_task(wire: Wire, session: str, task: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rec = wire.value("task.get_record", session, task)
        if rec["status"] != "pending" or time.monotonic() > deadline:
            return rec
        time.sleep(0.02)


# -- HTTP: content types, paths, keep-alive, concurrency -------------------------------------

@pytest.mark.parametrize("path", ["/", "/RPC2", "/xmlrpc", "/any/other/path"])
def test_xmlrpc_on_any_post_path_answers_content_type_exactly_text_xml(wire, session, path):
    good = wire.xml("VM.get_all", session, path=path)
    bad = wire.xml("VM.get_all", "OpaqueRef:not-a-session", path=path)
    for reply in (good, bad):
        assert reply.status == 200
        assert reply.content_type == "text/xml"
    assert good.xml()["Status"] == "Success"
    assert bad.xml()["Status"] == "Failure"


def test_jsonrpc_answers_content_type_exactly_application_json(wire, session):
    good = wire.json("VM.get_all", [session])
    bad = wire.json("VM.get_all", ["OpaqueRef:not-a-session"])
    for reply in (good, bad):
        assert reply.status == 200
        assert reply.content_type == "application/json"


def test_responses_allow_any_origin(wire, session):
    assert wire.xml("VM.get_all", session).headers.get("Access-Control-Allow-Origin") == "*"
    assert wire.json("VM.get_all", [session]).headers.get("Access-Control-Allow-Origin") == "*"


def test_keep_alive_serves_several_calls_on_one_connection(wire):
    conn = wire.connect()
    try:
        session = ok(wire.xml("session.login_with_password", "root", "admin-pw", conn=conn))
        sock = conn.sock
        replies = [wire.xml("VM.get_all", session, conn=conn),
                   wire.json("host.get_all", [session], conn=conn),
                   wire.xml("pool.get_all", session, conn=conn),
                   wire.xml("system.listMethods", conn=conn)]
        assert conn.sock is sock, "the server closed a keep-alive connection"
        for reply in replies:
            assert reply.status == 200
            assert reply.headers.get("Connection", "").lower() != "close"
            assert int(reply.headers["Content-Length"]) == len(reply.body)
    finally:
        conn.close()


def test_blocking_event_from_does_not_delay_a_call_on_another_connection(wire, session):
    token = wire.value("event_from", session, ["pool"], "", 0.0)["token"]
    pool = wire.value("pool.get_all", session)[0]
    blocked: dict = {}

    def long_poll():
        started = time.monotonic()
        blocked["reply"] = wire.xml("event.from", session, ["pool"], token, 30.0)
        blocked["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=long_poll)
    thread.start()
    try:
        time.sleep(0.2)                  # the long poll is now parked in the server
        started = time.monotonic()
        vms = wire.value("VM.get_all", session)
        elapsed = time.monotonic() - started
        assert elapsed < 10                    # not behind the 30 s long poll
        assert vms
        assert thread.is_alive(), "event.from returned before anything happened"
    finally:
        wire.value("event.inject", session, "pool", pool)   # end the long poll early
        thread.join(10)
    assert blocked["seconds"] < 4.0
    events = ok(blocked["reply"])["events"]
    assert [(e["class"], e["ref"]) for e in events] == [("pool", pool)]


# -- XML-RPC encoding --------------------------------------------------------------------------

def test_vm_get_all_records_response_is_compact_xml(wire, session):
    reply = wire.xml("VM.get_all_records", session)
    assert reply.body.startswith(SUCCESS_HEAD)
    assert GAP.search(reply.body) is None
    assert reply.body == reply.body.strip()
    assert len(ok(reply)) >= 3


def test_event_from_response_is_compact_xml(wire, session):
    reply = wire.xml("event.from", session, ["*"], "", 0.0)
    assert GAP.search(reply.body) is None
    assert reply.body == reply.body.strip()
    assert ok(reply)["events"]


def test_failure_response_is_compact_xml(wire):
    reply = wire.xml("VM.get_all", "OpaqueRef:nope")
    assert reply.body.startswith(FAILURE_HEAD)
    assert GAP.search(reply.body) is None


def test_xmlrpc_ints_are_untyped_decimal_strings(wire, session):
    vm = guest_vm_ref(wire, session, "Halted")
    record_bytes = wire.xml("VM.get_record", session, vm).body
    assert b"<member><name>memory_static_max</name><value>268435456</value></member>" in record_bytes
    assert b"<member><name>VCPUs_max</name><value>1</value></member>" in record_bytes
    assert b"<member><name>domid</name><value>-1</value></member>" in record_bytes
    everything = wire.xml("VM.get_all_records", session).body
    for tag in (b"<int>", b"<i4>", b"<i8>"):
        assert tag not in everything
    # 8 GiB does not fit a 32-bit XML-RPC int: it must still be a plain decimal string
    host = wire.value("host.get_all", session)[0]
    metrics = wire.value("host.get_metrics", session, host)
    assert b"<value>8589934592</value>" in wire.xml("host_metrics.get_record", session, metrics).body
    assert wire.xml("VM.get_memory_static_max", session, vm).body == \
        SUCCESS_HEAD + b"<value>268435456</value></member></struct></value></param></params></methodResponse>"


def test_jsonrpc_ints_are_json_numbers(wire, session):
    vm = guest_vm_ref(wire, session, "Halted")
    record = wire.json("VM.get_record", [session, vm]).json()["result"]
    assert record["memory_static_max"] == 268435456
    assert record["VCPUs_max"] == 1
    assert record["domid"] == -1
    assert b'"memory_static_max":268435456' in wire.json("VM.get_record", [session, vm]).body


@pytest.mark.parametrize("encoded, number", [
    ("<i4>7</i4>", 7), ("<int>8</int>", 8), ("<i8>4294967296</i8>", 4294967296), ("<string>9</string>", 9), ("10", 10),
])
def test_int_parameters_are_accepted_in_every_xmlrpc_form(wire, session, encoded, number):
    vm = guest_vm_ref(wire, session, "Halted")
    body = (f"<?xml version='1.0'?><methodCall><methodName>VM.set_user_version</methodName><params>"
            f"<param><value>{session}</value></param><param><value>{vm}</value></param>"
            f"<param><value>{encoded}</value></param></params></methodCall>").encode()
    assert ok(wire.post("/", body)) == ""
    assert wire.value("VM.get_user_version", session, vm) == str(number)


@pytest.mark.parametrize("value", [11, "11"])
def test_int_parameters_are_accepted_as_json_numbers_and_strings(wire, session, value):
    vm = guest_vm_ref(wire, session, "Halted")
    assert wire.json("VM.set_user_version", [session, vm, value]).json()["result"] == ""
    assert wire.json("VM.get_user_version", [session, vm]).json()["result"] == 11


def test_bools_and_floats_have_their_xmlrpc_types(wire, session):
    vm = guest_vm_ref(wire, session, "Halted")
    body = wire.xml("VM.get_record", session, vm).body
    assert b"<member><name>is_a_template</name><value><boolean>0</boolean></value></member>" in body
    assert re.search(rb"<member><name>HVM_shadow_multiplier</name><value><double>1(\.0)?</double></value>"
                     rb"</member>", body)


def test_datetimes_use_xapi_format_in_both_protocols(wire, session):
    task = wire.value("Async.VM.clone", session, guest_vm_ref(wire, session, "Halted"), "dt")
    wait_task(wire, session, task)
    xml_body = wire.xml("task.get_record", session, task).body.decode()
    stamps = re.findall(r"<dateTime.iso8601>(.*?)</dateTime.iso8601>", xml_body)
    assert len(stamps) == 2              # created and finished
    assert all(XAPI_DATETIME.fullmatch(s) for s in stamps), stamps
    record = wire.json("task.get_record", [session, task]).json()["result"]
    assert XAPI_DATETIME.fullmatch(record["created"]) and XAPI_DATETIME.fullmatch(record["finished"])
    vm = guest_vm_ref(wire, session, "Halted")
    assert b"<member><name>snapshot_time</name><value><dateTime.iso8601>19700101T00:00:00Z" \
           b"</dateTime.iso8601></value></member>" in wire.xml("VM.get_record", session, vm).body
    session_record = wire.json("session.get_record", [session, session]).json()["result"]
    assert XAPI_DATETIME.fullmatch(session_record["last_active"])


def test_records_of_every_listable_class_never_hold_nil_or_null(running, wire, session):
    checked = 0
    for name, decl in running.server.registry.classes.items():
        if not (decl.stored and decl.listable):
            continue
        xml_reply = wire.xml(f"{name}.get_all_records", session)
        assert xml_reply.xml()["Status"] == "Success", name
        assert b"<nil" not in xml_reply.body, name
        json_result = wire.json(f"{name}.get_all_records", [session]).json()["result"]
        assert nulls(json_result) == [], name
        checked += 1
    assert checked >= 8
    assert b"<nil" not in wire.xml("session.get_record", session, session).body
    assert nulls(wire.json("session.get_record", [session, session]).json()["result"]) == []


def test_null_refs_are_opaqueref_null(wire, session):
    vm = guest_vm_ref(wire, session, "Halted")
    assert wire.value("VM.get_resident_on", session, vm) == "OpaqueRef:NULL"
    assert b"<member><name>suspend_VDI</name><value>OpaqueRef:NULL</value></member>" in \
        wire.xml("VM.get_record", session, vm).body


def test_markup_in_values_is_escaped(wire, session):
    vm = guest_vm_ref(wire, session, "Halted")
    wire.value("VM.add_to_other_config", session, vm, "k<&>", "v<&>")
    body = wire.xml("VM.get_other_config", session, vm).body
    assert b"<member><name>k&lt;&amp;&gt;</name><value>v&lt;&amp;&gt;</value></member>" in body
    assert ok(wire.xml("VM.get_other_config", session, vm)) == {"k<&>": "v<&>"}


# -- envelopes --------------------------------------------------------------------------------

def test_success_envelope_is_status_and_value_and_void_is_empty_string(wire, session):
    vm = guest_vm_ref(wire, session, "Halted")
    reply = wire.xml("VM.set_name_description", session, vm, "described")
    assert reply.body == SUCCESS_HEAD + b"<value></value></member></struct></value></param></params></methodResponse>"
    assert reply.xml() == {"Status": "Success", "Value": ""}


@pytest.mark.parametrize("method, params, code", [
    ("VM.get_all", ["OpaqueRef:nope"], "SESSION_INVALID"),
    ("VM.frobnicate", ["{session}"], "MESSAGE_METHOD_UNKNOWN"),
    ("VM.start", ["{session}"], "MESSAGE_PARAMETER_COUNT_MISMATCH"),
    ("VM.get_record", ["{session}", "OpaqueRef:00000000-0000-0000-0000-000000000000"], "HANDLE_INVALID"),
    ("session.login_with_password", ["root", "wrong"], "SESSION_AUTHENTICATION_FAILED"),
])
def test_api_errors_are_failure_envelopes_never_faults(wire, session, method, params, code):
    params = [session if p == "{session}" else p for p in params]
    reply = wire.xml(method, *params)
    assert reply.status == 200
    assert reply.body.startswith(FAILURE_HEAD)
    assert b"<fault>" not in reply.body
    description = reply.xml()["ErrorDescription"]
    assert description[0] == code
    assert re.search(rb"<name>ErrorDescription</name><value><array><data>(<value>[^<]*</value>)+</data></array>",
                     reply.body), "every ErrorDescription element must be a plain string"


def test_python_xenapi_client_gets_failure_not_fault(running):
    import XenAPI
    session = running.session()
    with pytest.raises(XenAPI.Failure) as info:
        session.xenapi.VM.get_record("OpaqueRef:00000000-0000-0000-0000-000000000000")
    assert info.value.details == ["HANDLE_INVALID", "VM", "OpaqueRef:00000000-0000-0000-0000-000000000000"]


# -- method names: aliases, Async, system.listMethods ----------------------------------------

def test_class_underscore_message_alias_works_like_the_dotted_name(wire, session):
    assert sorted(wire.value("VM_get_all", session)) == sorted(wire.value("VM.get_all", session))
    result = wire.value("event_from", session, ["vm"], "", 0.0)
    assert {"events", "valid_ref_counts", "token"} <= set(result)
    assert wire.json("VM_get_all", [session]).json()["result"]


def test_async_clean_shutdown_returns_a_task_ref_that_succeeds_with_void(wire, session):
    vm = guest_vm_ref(wire, session, "Running")
    task = wire.value("Async.VM.clean_shutdown", session, vm)
    assert REF.fullmatch(task)
    record = wait_task(wire, session, task)
    assert record["status"] == "success"
    assert record["name_label"] == "Async.VM.clean_shutdown"
    assert record["result"] == "<value></value>"
    assert record["progress"] == 1.0
    assert wire.value("VM.get_power_state", session, vm) == "Halted"


def test_async_clone_task_result_is_the_new_ref_as_a_compact_xmlrpc_value(wire, session):
    vm = guest_vm_ref(wire, session, "Halted")
    task = wire.value("Async.VM.clone", session, vm, "the-clone")
    record = wait_task(wire, session, task)
    assert record["status"] == "success", record["error_info"]
    match = re.fullmatch(r"<value>(OpaqueRef:[0-9a-f-]{36})</value>", record["result"])
    assert match, record["result"]
    assert wire.value("VM.get_name_label", session, match.group(1)) == "the-clone"
    # the raw bytes carry the XML-RPC value escaped inside a string
    body = wire.xml("task.get_result", session, task).body
    assert b"<value>&lt;value&gt;OpaqueRef:" in body


def test_async_of_a_getter_gives_xapis_fault(wire, session):
    vm = guest_vm_ref(wire, session, "Halted")
    reply = wire.xml("Async.VM.get_name_label", session, vm)
    assert reply.status == 200
    assert b"<fault>" in reply.body
    with pytest.raises(xmlrpc.client.Fault) as info:
        xmlrpc.client.loads(reply.body)
    assert info.value.faultString == "No async mode for this operation (rpc: Async.VM.get_name_label)"


def test_system_list_methods_is_a_bare_array_of_sync_wire_names(wire):
    reply = wire.xml("system.listMethods")
    assert reply.status == 200
    assert reply.body.startswith(b'<?xml version="1.0"?><methodResponse><params><param><value><array><data>')
    assert b"Status" not in reply.body
    methods = reply.xml()
    assert isinstance(methods, list)
    assert {"VM.start", "session.login_with_password", "event.from", "VM.get_all_records"} <= set(methods)
    assert not [m for m in methods if m.startswith("Async.")]
    assert wire.json("system.listMethods", []).json()["result"] == methods


# -- JSON-RPC envelopes -----------------------------------------------------------------------

@pytest.mark.parametrize("call_id", [7, 0, 2**53 + 1, "a-string-id", "5e4b2e5c-7d4f-4f11-a7f4-1f0a3c9e8b11"])
def test_jsonrpc_v1_envelopes_echo_the_id_exactly(wire, session, call_id):
    good = wire.json("VM.get_all", [session], call_id=call_id, version=None).json()
    assert set(good) == {"result", "error", "id"}
    assert good["error"] is None and good["id"] == call_id and type(good["id"]) is type(call_id)
    assert isinstance(good["result"], list) and good["result"]
    bad = wire.json("VM.get_all", ["OpaqueRef:nope"], call_id=call_id, version=None).json()
    assert bad == {"result": None, "error": ["SESSION_INVALID", "OpaqueRef:nope"], "id": call_id}


@pytest.mark.parametrize("call_id", [7, 0, 2**53 + 1, "a-string-id", "5e4b2e5c-7d4f-4f11-a7f4-1f0a3c9e8b11"])
def test_jsonrpc_v2_envelopes_echo_the_id_exactly(wire, session, call_id):
    good = wire.json("VM.get_all", [session], call_id=call_id).json()
    assert set(good) == {"jsonrpc", "result", "id"}
    assert good["jsonrpc"] == "2.0" and good["id"] == call_id and type(good["id"]) is type(call_id)
    bad = wire.json("VM.get_all", ["OpaqueRef:nope"], call_id=call_id).json()
    assert bad == {"jsonrpc": "2.0", "error": {"code": 1, "message": "SESSION_INVALID", "data": ["OpaqueRef:nope"]},
                   "id": call_id}


def test_jsonrpc_void_result_is_empty_string(wire, session):
    vm = guest_vm_ref(wire, session, "Halted")
    assert wire.json("VM.set_name_description", [session, vm, "x"]).json() == \
        {"jsonrpc": "2.0", "result": "", "id": 1}


def test_sessions_are_shared_between_xmlrpc_and_jsonrpc(wire):
    from_xml = wire.login()
    assert wire.json("VM.get_all", [from_xml]).json()["result"]
    reply = wire.json("session.login_with_password", ["root", "admin-pw", "2.21", "pytest"]).json()
    from_json = reply["result"]
    assert REF.fullmatch(from_json)
    assert wire.value("VM.get_all", from_json)
    assert wire.json("session.logout", [from_json]).json()["result"] == ""
    assert failure(wire.xml("VM.get_all", from_json)) == ["SESSION_INVALID", from_json]


# -- events -----------------------------------------------------------------------------------

def test_event_records_have_xapi_fields_and_lowercase_classes(running, wire, session):
    result = wire.value("event.from", session, ["*"], "", 0.0)
    events = result["events"]
    assert events
    classes = set()
    for ev in events:
        assert {"id", "timestamp", "class", "operation", "ref", "snapshot"} <= set(ev), ev.keys()
        assert ev["id"].isdigit() and isinstance(ev["timestamp"], str)
        assert ev["class"] == ev["class"].lower()
        assert ev["operation"] == "add"
        assert ev["ref"].startswith("OpaqueRef:")
        classes.add(ev["class"])
    assert {"vm", "host", "pool"} <= classes
    vm_fields = {f.name for f in running.server.registry.classes["VM"].fields}
    for ev in events:
        if ev["class"] == "vm":
            assert set(ev["snapshot"]) == vm_fields


def test_event_from_reports_mod_then_del_with_the_right_shapes(wire, session):
    vm = guest_vm_ref(wire, session, "Halted")
    clone = wire.value("VM.clone", session, vm, "short-lived")
    token = wire.value("event.from", session, ["vm"], "", 0.0)["token"]
    wire.value("VM.set_name_description", session, clone, "changed")
    result = wire.value("event.from", session, ["VM"], token, 2.0)
    mods = [e for e in result["events"] if e["ref"] == clone]
    assert [e["operation"] for e in mods] == ["mod"]
    assert mods[0]["class"] == "vm" and mods[0]["snapshot"]["name_description"] == "changed"
    token = result["token"]
    wire.value("VM.destroy", session, clone)
    result = wire.value("event.from", session, ["vm"], token, 2.0)
    dels = [e for e in result["events"] if e["ref"] == clone]
    assert [e["operation"] for e in dels] == ["del"]
    assert "snapshot" not in dels[0]


def test_valid_ref_counts_are_i4_in_xmlrpc_and_numbers_in_jsonrpc(wire, session):
    count = len(wire.value("VM.get_all", session))
    reply = wire.xml("event.from", session, ["vm"], "", 0.0)
    assert f"<member><name>vm</name><value><i4>{count}</i4></value></member>".encode() in reply.body
    assert ok(reply)["valid_ref_counts"] == {"vm": count}
    everything = ok(wire.xml("event.from", session, ["*"], "", 0.0))["valid_ref_counts"]
    assert everything["vm"] == count and everything["pool"] == 1
    assert all(type(n) is int for n in everything.values())
    result = wire.json("event.from", [session, ["vm"], "", 0.0]).json()["result"]
    assert result["valid_ref_counts"] == {"vm": count}


def test_event_from_token_is_a_string_and_times_out_with_no_events(wire, session):
    token = wire.value("event.from", session, ["pool"], "", 0.0)["token"]
    started = time.monotonic()
    result = wire.value("event.from", session, ["pool"], token, 0.3)
    assert 0.25 <= time.monotonic() - started < 2.0
    assert result["events"] == []
    assert isinstance(result["token"], str) and result["token"]


# -- helpers needing the wire ----------------------------------------------------------------

def guest_vm_ref(wire: Wire, session: str, power_state: str) -> str:
    for ref, rec in wire.value("VM.get_all_records", session).items():
        if not rec["is_control_domain"] and not rec["is_a_template"] and rec["power_state"] == power_state:
            return ref
    raise LookupError(power_state)
