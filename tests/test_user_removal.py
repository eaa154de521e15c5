"""A user removed with the real `xenapi user del` (another process, the same database) loses every
session: over HTTP, on a stream, after a restart, and when a new user of the same name is added."""
from __future__ import annotations

import time
import xmlrpc.client

from tests.conftest import start_server, stop_server
from tests.streams import call, error, value, xenapi_ok
from xenapi.state.sessions import USERS_CHECK_EVERY

BOUND = USERS_CHECK_EVERY + 4.0      # the server looks once a second; the rest is slack for a slow machine


def refused_within_bound(proxy, session: str) -> list[str]:
    """Call with ``session`` until it is refused (the first call after the user's removal may still
    pass: the server looks at most once a second); the refusal."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        answer = proxy.VM.get_all(session)
        if answer["Status"] != "Success":
            return answer["ErrorDescription"]
        time.sleep(0.05)
    raise AssertionError(f"the session still works {BOUND} s after its user was removed")


def test_deleting_a_user_ends_her_sessions_over_http_and_on_streams(served):
    proxy = xmlrpc.client.ServerProxy(served.running.url)
    alice = proxy.session.login_with_password("alice", "alice-pw")["Value"]
    bob = proxy.session.login_with_password("bob", "bob-pw")["Value"]
    stream = served.stream("--user", "alice")
    streams_session = value(stream.ask(call("session.login_with_password", "alice", "")))
    assert value(stream.ask(call("VM.get_all", "")))

    xenapi_ok(served.server.config.state, "user", "del", "alice")

    assert refused_within_bound(proxy, alice) == ["SESSION_INVALID", alice]
    assert error(stream.ask(call("VM.get_all", ""))) == ["SESSION_INVALID", streams_session]
    assert error(stream.ask(call("session.login_with_password", "alice", "")))[:2] == \
        ["SESSION_AUTHORIZATION_FAILED", "alice"]                         # and no new one
    assert stream.close()[0] == 0
    assert proxy.VM.get_all(bob)["Status"] == "Success"                     # others keep theirs
    assert proxy.session.login_with_password("alice", "alice-pw")["ErrorDescription"][0] == \
        "SESSION_AUTHENTICATION_FAILED"
    assert not any(rec["auth_user_name"] == "alice" for rec in served.server.store.records("session").values())


def test_a_user_removed_and_added_again_is_another_user(served):
    proxy = xmlrpc.client.ServerProxy(served.running.url)
    old = proxy.session.login_with_password("alice", "alice-pw")["Value"]
    state = served.server.config.state
    xenapi_ok(state, "user", "del", "alice")
    xenapi_ok(state, "user", "add", "alice", "--role", "pool-admin", "--password-stdin", data="new-pw\n")
    assert refused_within_bound(proxy, old) == ["SESSION_INVALID", old]
    new = proxy.session.login_with_password("alice", "new-pw")["Value"]
    assert proxy.VM.get_all(new)["Status"] == "Success"


def test_a_restart_does_not_revive_the_sessions_of_a_user_removed_meanwhile(tmp_path):
    first = start_server(tmp_path)
    first.add_user("alice", "read-only", "pw")
    first.add_user("bob", "read-only", "pw")
    proxy = xmlrpc.client.ServerProxy(first.url)
    alice = proxy.session.login_with_password("alice", "pw")["Value"]
    bob = proxy.session.login_with_password("bob", "pw")["Value"]
    state = first.server.config.state
    stop_server(first)
    xenapi_ok(state, "user", "del", "alice")
    again = start_server(tmp_path, uris=[first.uri])
    try:
        proxy = xmlrpc.client.ServerProxy(again.url)
        assert proxy.VM.get_all(alice)["ErrorDescription"] == ["SESSION_INVALID", alice]
        assert proxy.VM.get_all(bob)["Status"] == "Success"
        assert again.server.store.find("session", alice) is None
    finally:
        stop_server(again)
