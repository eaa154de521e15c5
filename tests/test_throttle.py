"""Failed-login throttling (auth/throttle.py): the throttle alone with a clock the test moves, then
through a real server over HTTP from two source addresses (127.0.0.1 and 127.0.0.2)."""
from __future__ import annotations

import http.client
import threading
import time
import xmlrpc.client
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import XenAPI

from auth.throttle import LoginThrottle, Refusal
from tests.conftest import ADMIN_PASSWORD, start_server, stop_server
from tests.ssh_support import keypair, ssh
from tests.streams import call, responses, serve_with_socket, stop_served, value
from xenapi import cli
from xenapi.transport.ssh import host_key


class Attempt:
    """``throttle.attempt`` on a thread of its own, seen to be waiting before the test goes on."""

    def __init__(self, throttle: LoginThrottle, user: str, source: str):
        waiting = throttle.waiting
        self._result = []
        self._thread = threading.Thread(target=lambda: self._result.append(throttle.attempt(user, source)))
        self._thread.start()
        deadline = time.monotonic() + 10
        while throttle.waiting <= waiting and time.monotonic() < deadline:
            time.sleep(0.001)
        assert throttle.waiting > waiting and not self._result

    def result(self):
        self._thread.join(timeout=10)
        assert self._result, "still waiting"
        return self._result[0]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(throttle: LoginThrottle, user: str, source: str, times: int = 1) -> None:
    for _ in range(times):
        assert throttle.attempt(user, source) is None
        throttle.done(user, source, ok=False)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def throttle(clock):
    return LoginThrottle(per_user=3, per_source=5, window=300, lockout=60, clock=clock)


# -- the throttle itself ------------------------------------------------------------------------

def test_a_user_name_is_locked_after_its_limit_until_the_lockout_ends(throttle, clock):
    fail(throttle, "alice", "10.0.0.1", 3)
    assert throttle.attempt("alice", "10.0.0.2") == Refusal(60.0)         # from anywhere
    clock.now += 59
    assert throttle.attempt("alice", "10.0.0.3").wait == pytest.approx(1.0)
    clock.now += 1
    assert throttle.attempt("alice", "10.0.0.3") is None


def test_a_locked_name_does_not_lock_other_names(throttle):
    fail(throttle, "alice", "10.0.0.1", 3)
    assert throttle.attempt("bob", "10.0.0.9") is None


def test_a_source_is_locked_after_its_limit_whatever_the_names(throttle):
    for name in ("a", "b", "c", "d", "e"):
        fail(throttle, name, "10.0.0.1")
    assert throttle.attempt("root", "10.0.0.1") == Refusal(60.0)
    assert throttle.attempt("root", "10.0.0.2") is None


def test_success_clears_the_names_failures_but_not_the_sources(throttle):
    fail(throttle, "alice", "10.0.0.1", 2)
    assert throttle.attempt("alice", "10.0.0.1") is None
    throttle.done("alice", "10.0.0.1", ok=True)
    fail(throttle, "alice", "10.0.0.1", 2)
    assert throttle.attempt("alice", "10.0.0.7") is None          # 2 + 2 failures, a success between
    throttle.done("alice", "10.0.0.7", ok=True)
    fail(throttle, "bob", "10.0.0.1", 1)                          # the source's fifth failure
    assert throttle.attempt("carol", "10.0.0.1") == Refusal(60.0)


def test_failures_older_than_the_window_are_forgotten(throttle, clock):
    fail(throttle, "alice", "10.0.0.1", 2)
    clock.now += 301
    fail(throttle, "alice", "10.0.0.1", 2)
    assert throttle.attempt("alice", "10.0.0.1") is None


def test_attempts_in_flight_count_toward_the_limit(clock):
    throttle = LoginThrottle(per_user=3, per_source=5, window=300, lockout=60, clock=clock, max_wait=0)
    for _ in range(3):
        assert throttle.attempt("alice", "10.0.0.1") is None      # three passwords being checked
    assert throttle.attempt("alice", "10.0.0.2") == Refusal(1.0, busy=True)     # no turn within max_wait
    for _ in range(3):
        throttle.done("alice", "10.0.0.1", ok=False)
    assert throttle.attempt("alice", "10.0.0.2") == Refusal(60.0)


def test_an_attempt_past_the_limit_waits_for_a_check_to_end_and_a_success_frees_its_place(throttle):
    for _ in range(3):
        assert throttle.attempt("alice", "10.0.0.1") is None
    waiter = Attempt(throttle, "alice", "10.0.0.2")
    throttle.done("alice", "10.0.0.1", ok=True)                  # a right password: no failure counted
    assert waiter.result() is None
    assert not throttle._counts[("user", "alice")].failures


def test_waiting_attempts_are_refused_at_once_when_the_checks_under_way_lock_the_name(throttle):
    for _ in range(3):
        assert throttle.attempt("alice", "10.0.0.1") is None
    waiters = [Attempt(throttle, "alice", f"10.0.0.{n}") for n in (2, 3, 4)]
    for _ in range(3):
        throttle.done("alice", "10.0.0.1", ok=False)
    assert [w.result() for w in waiters] == [Refusal(60.0)] * 3


def test_a_locked_name_is_refused_without_waiting(throttle):
    fail(throttle, "alice", "10.0.0.1", 3)
    start = time.monotonic()
    assert throttle.attempt("alice", "10.0.0.2") == Refusal(60.0)
    assert throttle.waiting == 0 and time.monotonic() - start < throttle.max_wait / 2


def test_concurrent_right_passwords_all_get_in_and_never_more_than_the_limit_at_once(throttle):
    in_flight, most, guard = [0], [0], threading.Lock()

    def login():
        if throttle.attempt("alice", "10.0.0.1") is not None:
            return False
        with guard:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.002)                                         # the password check
        with guard:
            in_flight[0] -= 1
        throttle.done("alice", "10.0.0.1", ok=True)
        return True

    with ThreadPoolExecutor(40) as pool:
        assert all(pool.map(lambda _: login(), range(40)))
    assert most[0] <= 3                                           # per_user: 3
    assert not throttle._counts                                   # nothing pending, nothing failed


def test_concurrent_wrong_passwords_get_exactly_the_limits_worth_of_checks(throttle):
    def guess(user):
        refusal = throttle.attempt(user, "10.0.0.1")
        if refusal is None:
            throttle.done(user, "10.0.0.1", ok=False)
        return refusal

    with ThreadPoolExecutor(20) as pool:
        one_name = list(pool.map(guess, ["alice"] * 20))
    assert one_name.count(None) == 3 and set(one_name) == {None, Refusal(60.0)}
    with ThreadPoolExecutor(20) as pool:                         # the source: 3 failures so far, 5 allowed
        many_names = list(pool.map(guess, [f"user{n}" for n in range(20)]))
    assert many_names.count(None) == 2 and set(many_names) == {None, Refusal(60.0)}


def test_the_tables_stay_bounded(clock):
    throttle = LoginThrottle(per_user=3, per_source=1000, window=300, lockout=60, clock=clock, max_keys=50)
    for n in range(500):
        fail(throttle, f"made-up-{n}", "10.0.0.1")
    assert len(throttle._counts) <= 50


def test_a_zero_limit_turns_that_half_off(clock):
    throttle = LoginThrottle(per_user=0, per_source=2, window=300, lockout=60, clock=clock)
    for n in range(10):
        fail(throttle, "alice", f"10.0.0.{n}")
    assert throttle.attempt("alice", "10.0.0.99") is None        # no per-user limit
    fail(throttle, "x", "10.0.0.0")
    assert throttle.attempt("y", "10.0.0.0") == Refusal(60.0)            # the per-source one still holds


# -- through the server -----------------------------------------------------------------------

class Peer:
    """XML-RPC from a chosen local source address (the server sees it as the client's address)."""

    def __init__(self, url: str, source: str):
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15, source_address=(source, 0))

    def login(self, user: str, password: str) -> dict:
        self.conn.request("POST", "/", xmlrpc.client.dumps((user, password), "session.login_with_password").encode(),
                          {"Content-Type": "text/xml"})
        return xmlrpc.client.loads(self.conn.getresponse().read())[0][0]


@pytest.fixture
def server(tmp_path):
    running = start_server(tmp_path, login_failures_per_user=3, login_failures_per_source=6, login_lockout=60)
    running.add_user("alice", "read-only", "right")
    running.add_user("bob", "read-only", "right")
    here, there = Peer(running.url, "127.0.0.1"), Peer(running.url, "127.0.0.2")
    yield running, here, there
    stop_server(running)


LOCKED = ["SESSION_AUTHENTICATION_FAILED", "alice", "Authentication failure: too many failed logins; try again in 60 s"]


def test_after_three_failures_even_the_right_password_is_refused(server):
    running, here, _ = server
    for _ in range(3):
        assert here.login("alice", "wrong")["ErrorDescription"] == \
            ["SESSION_AUTHENTICATION_FAILED", "alice", "Authentication failure"]
    assert here.login("alice", "right")["ErrorDescription"] == LOCKED


def test_a_locked_user_does_not_lock_others_and_is_locked_from_every_source(server):
    running, here, there = server
    for _ in range(3):
        here.login("alice", "wrong")
    assert here.login("bob", "right")["Status"] == "Success"
    assert there.login("alice", "right")["ErrorDescription"] == LOCKED


def test_a_source_that_failed_too_often_is_refused_but_others_are_not(server):
    running, here, there = server
    for name in ("u1", "u2", "u3", "u4", "u5", "u6"):
        here.login(name, "guess")
    refused = here.login("root", ADMIN_PASSWORD)
    assert refused["ErrorDescription"][:2] == ["SESSION_AUTHENTICATION_FAILED", "root"]
    assert "too many failed logins" in refused["ErrorDescription"][2]
    assert there.login("root", ADMIN_PASSWORD)["Status"] == "Success"


def test_unknown_and_real_names_are_throttled_alike(server):
    running, here, there = server
    for _ in range(3):
        there.login("nosuchuser", "x")
        here.login("alice", "x")
    assert there.login("nosuchuser", "x")["ErrorDescription"][2] == here.login("alice", "x")["ErrorDescription"][2]


def test_a_success_resets_the_users_count(server):
    running, here, _ = server
    for _ in range(2):
        here.login("alice", "wrong")
    assert here.login("alice", "right")["Status"] == "Success"
    for _ in range(2):
        here.login("alice", "wrong")
    assert here.login("alice", "right")["Status"] == "Success"


def test_the_lock_ends_after_the_lockout(server):
    running, here, _ = server
    clock = Clock()
    running.server.sessions.throttle.clock = clock
    for _ in range(3):
        here.login("alice", "wrong")
    clock.now += 30
    assert here.login("alice", "right")["ErrorDescription"][2].endswith("try again in 30 s")
    clock.now += 30
    assert here.login("alice", "right")["Status"] == "Success"


def test_refused_logins_are_in_the_audit_log(server):
    running, here, there = server
    for _ in range(4):
        here.login("alice", "wrong")
    rows = running.session().xenapi.audit.get_records("0", "100")
    mine = [(r["user"], r["outcome"], r["address"].split(":")[0]) for r in rows if r["user"] == "alice"]
    assert mine == [("alice", "SESSION_AUTHENTICATION_FAILED", "127.0.0.1")] * 4


# -- concurrent logins through the server ---------------------------------------------------------

def test_32_concurrent_logins_with_the_right_password_all_get_in(tmp_path):
    running = start_server(tmp_path)                    # the default limits: 5 per name, 20 per source
    try:
        start = threading.Barrier(32)

        def login(_):
            session = XenAPI.Session(running.url)
            start.wait()
            session.xenapi.login_with_password("root", ADMIN_PASSWORD, "2.21", "pytest")
            return session.xenapi.session.get_this_user(session.handle)

        with ThreadPoolExecutor(32) as pool:
            users = list(pool.map(login, range(32)))
        assert len(users) == 32 and len(set(users)) == 1
    finally:
        stop_server(running)


def concurrently(url: str, source: str, logins: list[tuple[str, str]]) -> list[list[str]]:
    """The ErrorDescription (or ["ok"]) of each login, all sent at once, each on its own connection."""
    peers = [Peer(url, source) for _ in logins]
    start = threading.Barrier(len(logins))

    def login(n):
        start.wait()
        answer = peers[n].login(*logins[n])
        return ["ok"] if answer["Status"] == "Success" else answer["ErrorDescription"]

    with ThreadPoolExecutor(len(logins)) as pool:
        return list(pool.map(login, range(len(logins))))


def test_concurrent_wrong_passwords_lock_the_name_and_the_right_one_is_refused_after(server):
    running, here, there = server
    answers = concurrently(running.url, "127.0.0.1", [("alice", f"guess{n}") for n in range(16)])
    assert answers.count(["SESSION_AUTHENTICATION_FAILED", "alice", "Authentication failure"]) == 3   # per name: 3
    assert answers.count(LOCKED) == 13
    assert here.login("alice", "right")["ErrorDescription"] == LOCKED
    assert there.login("alice", "right")["ErrorDescription"] == LOCKED


def test_concurrent_wrong_passwords_lock_the_source_and_others_are_still_served(server):
    running, here, there = server
    answers = concurrently(running.url, "127.0.0.1", [(f"user{n}", "guess") for n in range(16)])
    failed = [a for a in answers if a[2] == "Authentication failure"]
    assert len(failed) == 6                                                  # per source: 6
    assert all("too many failed logins" in a[2] for a in answers if a not in failed)
    assert "too many failed logins" in here.login("root", ADMIN_PASSWORD)["ErrorDescription"][2]
    assert there.login("root", ADMIN_PASSWORD)["Status"] == "Success"


# -- every password check is throttled; key logins are not ----------------------------------------

LOCKED_ROOT = ["SESSION_AUTHENTICATION_FAILED", "root", LOCKED[2]]


def test_change_password_checks_the_old_password_under_the_throttle(server):
    running, here, _ = server
    alice = running.session("alice", "right")
    for _ in range(3):
        with pytest.raises(XenAPI.Failure) as e:
            alice.xenapi.session.change_password("guess", "new")
        assert e.value.details == ["SESSION_AUTHENTICATION_FAILED", "alice", "Authentication failure"]
    with pytest.raises(XenAPI.Failure) as e:                        # the right one is refused now
        alice.xenapi.session.change_password("right", "new")
    assert e.value.details == LOCKED
    assert here.login("alice", "right")["ErrorDescription"] == LOCKED    # one throttle for logins and this
    assert running.server.users.authenticate("alice", "right") is not None


def test_change_password_refuses_an_empty_new_password_and_keeps_the_old(server):
    running, _, _ = server
    with pytest.raises(XenAPI.Failure) as e:
        running.session("alice", "right").xenapi.session.change_password("right", "")
    assert e.value.details == ["INVALID_VALUE", "new_pwd", ""]
    assert running.server.users.authenticate("alice", "right") is not None


def test_anyone_can_lock_roots_password_logins_but_keys_still_get_in(tmp_path):
    served = serve_with_socket(tmp_path)
    ssh_server = cli.ssh_server(served.server, ("127.0.0.1", 0), host_key(str(tmp_path / "hk")))
    ssh_server.start()
    try:
        peer = Peer(served.running.url, "127.0.0.1")
        for _ in range(5):                                          # [logins] failures_per_user, default
            peer.login("root", "wrong")
        assert peer.login("root", ADMIN_PASSWORD)["ErrorDescription"] == LOCKED_ROOT
        local = served.stdio(call("VM.get_all", ""), "--user", "root")          # `xenapi stdio --user root`
        assert local.returncode == 0 and value(responses(local.stdout)[0])
        key, public = keypair(tmp_path, "root-key")
        served.server.keys.add("root", public)
        remote = ssh(ssh_server.address[1], key, "root", "xenapi", data=call("VM.get_all", ""))   # the built-in server
        assert remote.returncode == 0 and value(responses(remote.stdout)[0])
    finally:
        ssh_server.shutdown()
        stop_served(served)


def test_failures_per_user_0_turns_the_per_name_lock_off(tmp_path):
    running = start_server(tmp_path, login_failures_per_user=0, login_failures_per_source=20)
    try:
        here, there = Peer(running.url, "127.0.0.1"), Peer(running.url, "127.0.0.2")
        for peer in (here, there):
            for _ in range(8):                                      # 16 failures for root, 8 per source
                assert peer.login("root", "wrong")["ErrorDescription"][2] == "Authentication failure"
        assert here.login("root", ADMIN_PASSWORD)["Status"] == "Success"
    finally:
        stop_server(running)


def test_a_source_is_its_host_whichever_transport_wrote_the_address():
    from xenapi.context import Identity, peer_address
    from xenapi.state.sessions import source_of
    for host in ("127.0.0.1", "::1", "fe80::1%eth0"):
        http = Identity(via="http", address=peer_address(host, 40000))
        ssh = Identity(via="ssh", address=peer_address(host, 22))
        assert source_of(http) == source_of(ssh) == host
    assert source_of(Identity(via="unix", address="unix")) == "unix"
    assert source_of(Identity(via="stdio", address="")) == "stdio"
