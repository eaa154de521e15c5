"""`xenapi stdio`: the real command, relaying through a real server's unix socket (docs/ssh.md)."""
import json
import logging
import os
import socket
import subprocess
import xmlrpc.client

import pytest

from tests.streams import XENAPI, END, call, error, guest, jcall, responses, value

RIGHT_AFTER = b"<methodCall><methodName>VM.get_all</methodName><params><param><value></value></param></params></methodCall>"


def test_requests_are_answered_one_by_one_as_the_stream_user_until_the_end(served):
    stream = served.stream("--user", "alice")
    session = value(stream.ask(call("session.login_with_password", "alice", "not checked")))
    assert value(stream.ask(call("session.login_with_password", "alice", "", "2.21", "x"))) == session
    assert value(stream.ask(call("session.get_auth_user_name", "", session))) == "alice"
    assert value(stream.ask(call("session.get_originator", "", session))) == "stdio"
    user = value(stream.ask(call("session.get_this_user", "", session)))
    assert value(stream.ask(call("user.get_short_name", session, user))) == "alice"
    status, rest, err = stream.close()
    assert (status, rest) == (0, b""), err
    proxy = xmlrpc.client.ServerProxy(served.running.url)
    assert proxy.VM.get_all(session)["ErrorDescription"] == ["SESSION_INVALID", session]   # ended with the stream


def test_the_stream_user_has_exactly_the_permissions_of_her_role(served):
    vm = guest(served)
    start = call("VM.start", "", vm, False, False)
    alice = responses(served.stdio(call("VM.get_all", "") + start, "--user", "alice").stdout)
    assert vm in value(alice[0])
    assert error(alice[1])[:2] == ["RBAC_PERMISSION_DENIED", "vm.start"]
    bob = responses(served.stdio(start + call("VM.get_power_state", "", vm), "--user", "bob").stdout)
    assert value(bob[0]) == "" and value(bob[1]) == "Running"


def test_a_stream_cannot_log_in_as_anyone_else(served):
    answers = responses(served.stdio(call("session.login_with_password", "bob", "bob-pw")
                                     + call("session.login_with_password", "root", "admin-pw"), "--user", "alice").stdout)
    assert [error(a) for a in answers] == [["SESSION_AUTHENTICATION_FAILED", "bob", "Authentication failure"],
                                           ["SESSION_AUTHENTICATION_FAILED", "root", "Authentication failure"]]


def test_concatenated_documents_with_nothing_between_them_all_get_answers(served):
    docs = [call("VM.get_all", "").strip(), RIGHT_AFTER, call("host.get_all", "").strip(), RIGHT_AFTER]
    result = served.stdio(b"".join(docs), "--user", "alice")
    assert result.returncode == 0, result.stderr
    answers = responses(result.stdout)              # and nothing else on stdout
    assert len(answers) == 4 and all(a["Status"] == "Success" for a in answers)
    assert END not in result.stderr


def test_broken_documents_get_an_error_each_and_the_stream_goes_on(served):
    good = call("VM.get_all", "")
    docs = [
        good,
        b"<methodCall><methodName>VM.get_all</methodName><params>",            # truncated: the next call begins
        good,
        b"this is not XML\n",
        b"<methodCall><methodName>VM.get_all</methodName><params><param><value><int>x</int></value></param>"
        b"</params></methodCall>",
        b'<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><methodCall><methodName>&b;'
        b"</methodName></methodCall>",
        b"<methodResponse><params/></methodResponse>",
        good,
    ]
    result = served.stdio(b"".join(docs), "--user", "alice")
    answers = responses(result.stdout)
    assert [a["Status"] for a in answers] == ["Success", "Failure", "Success", "Failure", "Failure", "Failure",
                                              "Failure", "Success"]
    for broken in (answers[1], answers[3], answers[4], answers[5], answers[6]):
        assert error(broken)[:2] == ["XMLRPC_UNMARSHAL_FAILURE", "methodCall"]
    assert "forbidden XML construct" in error(answers[5])[2]
    assert result.returncode == 0


def test_an_oversized_document_is_refused_and_the_next_one_answered(served):
    huge = call("VM.set_name_label", "", guest(served), "x" * (served.server.config.max_body_bytes + 10))
    answers = responses(served.stdio(huge + call("VM.get_all", ""), "--user", "alice").stdout)
    assert error(answers[0]) == ["XMLRPC_UNMARSHAL_FAILURE", "methodCall",
                                 f"the document is over {served.server.config.max_body_bytes} bytes"]
    assert value(answers[1])


def test_json_rpc_lines_work_the_same_way_and_mix_with_xml(served):
    data = (jcall("VM.get_all", "", id="a") + jcall("VM.get_all", "", id=7, v2=False) + b"{not json\n"
            + jcall("VM.start", "", guest(served), False, False, id=8) + call("host.get_all", ""))
    out = served.stdio(data, "--user", "alice").stdout
    lines = out.split(b"\n", 4)
    v2, v1, broken, denied = (json.loads(line) for line in lines[:4])
    assert v2["jsonrpc"] == "2.0" and v2["id"] == "a" and len(v2["result"]) >= 2
    assert v1["error"] is None and v1["id"] == 7 and v1["result"] == v2["result"]
    assert broken["id"] is None and broken["error"]["message"] == "XMLRPC_UNMARSHAL_FAILURE"
    assert denied["id"] == 8 and denied["error"]["message"] == "RBAC_PERMISSION_DENIED"
    assert value(responses(lines[4])[0])


def test_a_json_line_nested_past_pythons_stack_is_an_error_and_the_stream_goes_on(served):
    data = b"{\"id\": " + b"[" * 200_000 + b"\n" + jcall("VM.get_all", "", id="after")
    out = served.stdio(data, "--user", "alice").stdout
    broken, after = (json.loads(line) for line in out.split(b"\n")[:2])
    assert broken["id"] is None and broken["error"]["message"] == "XMLRPC_UNMARSHAL_FAILURE"
    assert after["id"] == "after" and after["result"]


def test_without_user_the_caller_logs_in_with_a_password(served):
    answers = responses(served.stdio(call("VM.get_all", "") + call("session.login_with_password", "alice", "wrong")
                                     + call("session.login_with_password", "alice", "alice-pw")).stdout)
    assert error(answers[0]) == ["SESSION_INVALID", ""]
    assert error(answers[1])[0] == "SESSION_AUTHENTICATION_FAILED"
    assert value(answers[2]).startswith("OpaqueRef:")


def test_logging_out_ends_the_streams_session_and_a_new_login_opens_another(served):
    stream = served.stream("--user", "alice")
    first = value(stream.ask(call("session.login_with_password", "alice", "")))
    assert value(stream.ask(call("session.logout", ""))) == ""
    assert error(stream.ask(call("VM.get_all", ""))) == ["SESSION_INVALID", first]
    second = value(stream.ask(call("session.login_with_password", "alice", "")))
    assert second != first and value(stream.ask(call("VM.get_all", "")))
    assert stream.close()[0] == 0


def test_ssh_connection_marks_the_stream_as_ssh_with_the_clients_address(served, caplog):
    env = {**os.environ, "SSH_CONNECTION": "192.0.2.7 50412 127.0.0.1 22", "SSH_ORIGINAL_COMMAND": "xenapi stdio"}
    with caplog.at_level(logging.INFO, logger="xenapi"):
        out = served.stdio(call("session.login_with_password", "alice", ""), "--user", "alice", env=env).stdout
        session = value(responses(out)[0])
    assert "event=login user=alice via=ssh addr=192.0.2.7:50412 originator=ssh" in caplog.text
    assert session.startswith("OpaqueRef:")


def test_a_forced_command_refuses_other_commands_the_client_asks_for(served):
    env = {**os.environ, "SSH_ORIGINAL_COMMAND": "cat /etc/shadow"}
    result = served.stdio(call("VM.get_all", ""), "--user", "alice", env=env)
    assert (result.returncode, result.stdout) == (1, b"")
    assert b"refusing the command 'cat /etc/shadow'" in result.stderr


def test_an_unknown_user_is_refused_with_nothing_on_stdout(served):
    result = served.stdio(call("VM.get_all", ""), "--user", "mallory")
    assert (result.returncode, result.stdout) == (1, b"")
    assert b"no such user 'mallory'" in result.stderr


def test_no_server_means_exit_status_1_and_a_message(tmp_path):
    result = subprocess.run([XENAPI, "stdio", "--user", "alice", "--unix-socket", str(tmp_path / "none.sock")],
                            input=call("VM.get_all", ""), capture_output=True, timeout=60)
    assert (result.returncode, result.stdout) == (1, b"")
    assert b"cannot reach the xenapi server" in result.stderr


_RAW_UPGRADE = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
user = "X-Xenapi-Transport-User: root\\r\\n" if sys.argv[2] == "assert" else ""
s.sendall(("POST / HTTP/1.1\\r\\nHost: x\\r\\nConnection: Upgrade\\r\\nUpgrade: xenapi-stream\\r\\n"
           "Content-Length: 0\\r\\n" + user + "\\r\\n").encode())
print(s.recv(4096).split(b"\\r\\n")[0].decode())
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as another uid")
def test_only_root_or_the_servers_user_may_assert_a_user(served):
    os.chmod(os.path.dirname(served.socket), 0o755)
    os.chmod(served.socket, 0o666)                 # let uid 65534 connect at all: SO_PEERCRED must stop it

    def as_nobody(mode):
        return subprocess.run(["/usr/bin/python3", "-c", _RAW_UPGRADE, served.socket, mode], user=65534,
                              capture_output=True, text=True, timeout=30, cwd="/").stdout.strip()
    assert as_nobody("assert") == "HTTP/1.1 403 Forbidden"
    assert as_nobody("plain") == "HTTP/1.1 101 Switching Protocols"     # a plain relay: passwords needed


def test_the_upgrade_is_refused_over_tcp(served):
    host, port = served.running.http.address[:2]
    with socket.create_connection((host, port)) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: xenapi-stream\r\n"
                  b"X-Xenapi-Transport-User: root\r\nContent-Length: 0\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 400 ")
