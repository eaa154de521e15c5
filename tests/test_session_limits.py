"""Session limits (xenapi/state/sessions.py): the per-user cap evicts the least recently active session,
per user; idle sessions expire on use and in housekeeping.  The sessions' clock is one the test
moves, so nothing sleeps."""
from __future__ import annotations

import xmlrpc.client

import pytest

from tests.conftest import ADMIN_PASSWORD, start_server, stop_server


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server(tmp_path):
    running = start_server(tmp_path, max_per_user=2, idle_timeout=600)
    running.server.sessions.clock = Clock(running.server.sessions.clock())
    running.add_user("alice", "read-only", "pw")
    yield running, running.server.sessions.clock, xmlrpc.client.ServerProxy(running.url)
    stop_server(running)


def login(proxy, user: str = "root", password: str = ADMIN_PASSWORD) -> str:
    return proxy.session.login_with_password(user, password)["Value"]


def valid(proxy, session: str) -> bool:
    result = proxy.VM.get_all(session)
    assert result["Status"] == "Success" or result["ErrorDescription"] == ["SESSION_INVALID", session]
    return result["Status"] == "Success"


def test_past_the_cap_the_least_recently_active_session_goes(server):
    running, clock, proxy = server
    first = login(proxy)
    clock.now += 1
    second = login(proxy)
    clock.now += 1
    assert valid(proxy, first)             # first is now the more recently active
    clock.now += 1
    third = login(proxy)
    assert not valid(proxy, second)
    assert valid(proxy, first) and valid(proxy, third)


def test_the_cap_counts_each_user_on_its_own(server):
    running, clock, proxy = server
    mine = [login(proxy, "alice", "pw") for _ in range(2)]
    clock.now += 1
    for _ in range(3):
        login(proxy)
        clock.now += 1
    assert all(valid(proxy, s) for s in mine)


def test_an_evicted_sessions_object_is_gone(server):
    running, clock, proxy = server
    first = login(proxy)
    clock.now += 1
    login(proxy)
    clock.now += 1
    third = login(proxy)
    assert proxy.session.get_record(third, first)["ErrorDescription"] == ["HANDLE_INVALID", "session", first]
    assert running.server.store.find("session", first) is None


def test_an_idle_session_expires_and_an_active_one_does_not(server):
    running, clock, proxy = server
    idle, busy = login(proxy), login(proxy, "alice", "pw")
    for _ in range(3):
        clock.now += 400
        assert valid(proxy, busy)
    assert not valid(proxy, idle)
    assert running.server.store.find("session", idle) is None


def test_housekeeping_expires_idle_sessions_nobody_uses(server):
    running, clock, proxy = server
    idle = login(proxy)
    clock.now += 601
    assert running.server.sessions.expire_idle() == 1
    assert running.server.store.find("session", idle) is None
    assert not valid(proxy, idle)


def test_last_active_is_written_at_most_once_a_minute(server):
    running, clock, proxy = server
    session = login(proxy)
    written = proxy.session.get_last_active(session, session)["Value"]
    clock.now += 30
    assert proxy.session.get_last_active(session, session)["Value"] == written
    clock.now += 31
    valid(proxy, session)
    assert proxy.session.get_last_active(session, session)["Value"] != written


def test_sessions_of_a_restarted_server_keep_their_permissions(tmp_path):
    first = start_server(tmp_path)
    first.add_user("ro", "read-only", "pw")
    proxy = xmlrpc.client.ServerProxy(first.url)
    session = login(proxy, "ro", "pw")
    before = proxy.session.get_rbac_permissions(session, session)["Value"]
    stop_server(first)
    again = start_server(tmp_path, uris=[first.uri])
    try:
        proxy = xmlrpc.client.ServerProxy(again.url)
        assert proxy.session.get_rbac_permissions(session, session)["Value"] == before
        assert proxy.VM.start(session, "OpaqueRef:NULL", False, False)["ErrorDescription"][0] == \
            "RBAC_PERMISSION_DENIED"
    finally:
        stop_server(again)
