"""Sessions: login forms, failures, logout, idle expiry, the per-user cap; and the CLI's users."""
import subprocess
import sys
import time
import xmlrpc.client

import pytest
import XenAPI

from tests.conftest import ADMIN_PASSWORD, start_server, stop_server


@pytest.mark.parametrize("args", [("root", ADMIN_PASSWORD), ("root", ADMIN_PASSWORD, "1.1"),
                                  ("root", ADMIN_PASSWORD, "2.21", "scripts")])
def test_login_takes_two_three_or_four_arguments(running, args):
    proxy = xmlrpc.client.ServerProxy(running.url)
    result = proxy.session.login_with_password(*args)
    assert result["Status"] == "Success" and result["Value"].startswith("OpaqueRef:")


def test_wrong_password_and_unknown_user_fail_alike(running):
    proxy = xmlrpc.client.ServerProxy(running.url)
    for user in ("root", "nobody-here"):
        result = proxy.session.login_with_password(user, "wrong")
        assert result["ErrorDescription"] == ["SESSION_AUTHENTICATION_FAILED", user, "Authentication failure"]


def test_session_record_describes_the_user(running, xapi):
    ref = xapi._session
    rec = xapi.xenapi.session.get_record(ref)
    assert rec["auth_user_name"] == "root" and rec["is_local_superuser"]
    assert rec["this_host"] == xapi.xenapi.session.get_this_host(ref) == running.server.master_ref
    assert xapi.xenapi.session.get_subject(ref) == "OpaqueRef:NULL"
    assert "vm.start" in xapi.xenapi.session.get_rbac_permissions(ref)
    user = xapi.xenapi.session.get_this_user(ref)
    assert xapi.xenapi.user.get_short_name(user) == "root"


def test_logged_out_session_is_invalid(running):
    proxy = xmlrpc.client.ServerProxy(running.url)
    session = proxy.session.login_with_password("root", ADMIN_PASSWORD)["Value"]
    assert proxy.session.logout(session) == {"Status": "Success", "Value": ""}
    assert proxy.VM.get_all(session)["ErrorDescription"] == ["SESSION_INVALID", session]


def test_session_refs_are_random_and_unlisted(running):
    proxy = xmlrpc.client.ServerProxy(running.url)
    a = proxy.session.login_with_password("root", ADMIN_PASSWORD)["Value"]
    b = proxy.session.login_with_password("root", ADMIN_PASSWORD)["Value"]
    assert a != b
    assert proxy.session.get_all(a)["ErrorDescription"][0] == "MESSAGE_METHOD_UNKNOWN"


def test_idle_sessions_expire(tmp_path):
    running = start_server(tmp_path, idle_timeout=0.2)
    try:
        proxy = xmlrpc.client.ServerProxy(running.url)
        session = proxy.session.login_with_password("root", ADMIN_PASSWORD)["Value"]
        time.sleep(0.4)
        assert proxy.VM.get_all(session)["ErrorDescription"] == ["SESSION_INVALID", session]
    finally:
        stop_server(running)


def test_sessions_beyond_the_per_user_cap_evict_the_oldest(tmp_path):
    running = start_server(tmp_path, max_per_user=2)
    try:
        proxy = xmlrpc.client.ServerProxy(running.url)
        first, second, third = (proxy.session.login_with_password("root", ADMIN_PASSWORD)["Value"] for _ in range(3))
        assert proxy.VM.get_all(first)["ErrorDescription"][0] == "SESSION_INVALID"
        assert proxy.VM.get_all(third)["Status"] == "Success"
    finally:
        stop_server(running)


def test_sessions_and_settings_survive_a_restart(tmp_path):
    running = start_server(tmp_path)
    proxy = xmlrpc.client.ServerProxy(running.url)
    session = proxy.session.login_with_password("root", ADMIN_PASSWORD)["Value"]
    vm = next(r for r, v in proxy.VM.get_all_records(session)["Value"].items() if not v["is_control_domain"])
    proxy.VM.add_to_other_config(session, vm, "owner", "alice")
    stop_server(running)
    again = start_server(tmp_path, uris=[running.uri])
    try:
        proxy = xmlrpc.client.ServerProxy(again.url)
        assert proxy.VM.get_other_config(session, vm)["Value"] == {"owner": "alice"}
    finally:
        stop_server(again)


def test_change_password(running, xapi):
    running.add_user("carol", "read-only", "old")
    carol = running.session("carol", "old")
    carol.xenapi.session.change_password("old", "new")
    assert running.server.users.authenticate("carol", "new") is not None


def _cli(state, *args, stdin=""):
    return subprocess.run([sys.executable, "-m", "xenapi.cli", *args, "--state", str(state)], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_cli_adds_lists_and_deletes_users(tmp_path):
    added = _cli(tmp_path, "user", "add", "alice", "--role", "vm-operator", "--password-stdin", stdin="s3cret\n")
    assert added.returncode == 0, added.stderr
    assert "alice\tvm-operator" in _cli(tmp_path, "user", "list").stdout
    again = _cli(tmp_path, "user", "add", "alice", "--role", "vm-operator", "--password-stdin", stdin="x\n")
    assert again.returncode == 1 and "already exists" in again.stderr
    bad_role = _cli(tmp_path, "user", "add", "bob", "--role", "emperor", "--password-stdin", stdin="x\n")
    assert bad_role.returncode == 2
    assert _cli(tmp_path, "user", "del", "alice").returncode == 0
    assert "alice" not in _cli(tmp_path, "user", "list").stdout


def test_cli_user_reaches_a_running_server(tmp_path):
    running = start_server(tmp_path)
    try:
        assert _cli(tmp_path / "state", "user", "add", "dave", "--role", "read-only", "--password-stdin",
                    stdin="pw\n").returncode == 0
        dave = running.session("dave", "pw")
        assert dave.xenapi.VM.get_all()
        with pytest.raises(XenAPI.Failure) as e:
            dave.xenapi.VM.start(dave.xenapi.VM.get_all()[0], False, False)
        assert e.value.details[0] == "RBAC_PERMISSION_DENIED"
    finally:
        stop_server(running)


def test_serve_creates_root_with_a_printed_password_once(tmp_path):
    import os
    import signal
    env = {k: v for k, v in os.environ.items() if k != "XENAPI_ADMIN_PASSWORD"}
    proc = subprocess.Popen([sys.executable, "-m", "xenapi.cli", "serve", "--listen", "127.0.0.1:0",
                             "--state", str(tmp_path)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        deadline = time.monotonic() + 30
        while "password:" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        password = line.rsplit(": ", 1)[1].strip()
        assert len(password) >= 16
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert "root\tpool-admin" in _cli(tmp_path, "user", "list").stdout


def test_serve_stops_promptly_whichever_thread_the_signal_lands_on(tmp_path):
    """The kernel gives a process-directed signal to any thread; send it to a worker thread on
    purpose (tgkill) and the server must still stop at once, not at its main thread's next wake."""
    import ctypes
    import os
    import signal
    proc = subprocess.Popen([sys.executable, "-m", "xenapi.cli", "serve", "--listen", "127.0.0.1:0",
                             "--state", str(tmp_path)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "XENAPI_ADMIN_PASSWORD": "pw"})
    try:
        deadline = time.monotonic() + 30
        while "event=listening" not in proc.stderr.readline() and time.monotonic() < deadline:
            pass
        workers = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid]
        assert workers
        libc = ctypes.CDLL(None, use_errno=True)
        sys_tgkill = {"x86_64": 234, "aarch64": 131}[os.uname().machine]
        assert libc.syscall(sys_tgkill, proc.pid, workers[0], signal.SIGTERM) == 0
        start = time.monotonic()
        proc.wait(timeout=10)
        assert time.monotonic() - start < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
