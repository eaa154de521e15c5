"""SSH-key sessions: real OpenSSH (sshd + ssh from Debian) running `xenapi stdio --user`, and the
built-in paramiko server driven by the real `ssh` client.  Keys are generated per test."""
import base64
import os
import re
import shutil
import signal
import subprocess
import tempfile
import xmlrpc.client
from pathlib import Path

import paramiko
import pytest

from tests.ports import free_port, wait_for_port
from tests.ssh_support import forced, ssh
from tests.streams import XENAPI, xenapi_cli, call, error, guest, responses, serve_with_socket, stop_served, value
from xenapi.cli import ssh_server
from xenapi.transport.ssh import SSHServer, host_key

# ------------------------------------------------------------------------------------- OpenSSH
# The sshd, keys and served fixtures are in tests/conftest.py.

def test_openssh_a_known_key_runs_calls_as_its_user(sshd, served, keys):
    vm = guest(served)
    data = (call("session.login_with_password", "alice", "") + call("VM.get_all", "")
            + call("VM.start", "", vm, False, False))
    result = ssh(sshd.port, keys["alice"][0], "root", "xenapi", "stdio", data=data)
    assert result.returncode == 0, result.stderr
    session, vms, start = responses(result.stdout)               # stdout: the responses, nothing else
    assert vm in value(vms)
    assert error(start)[:2] == ["RBAC_PERMISSION_DENIED", "vm.start"]      # alice is read-only
    proxy_answers = responses(ssh(sshd.port, keys["bob"][0], "root", data=call("VM.start", "", vm, False, False)
                                  + call("session.login_with_password", "alice", "alice-pw")).stdout)
    assert value(proxy_answers[0]) == ""                          # bob (vm-operator) may, with no command given
    assert error(proxy_answers[1])[0] == "SESSION_AUTHENTICATION_FAILED"   # and stays bob
    assert value(session).startswith("OpaqueRef:")


def test_openssh_the_session_is_marked_ssh_from_the_clients_address(sshd, served, keys, caplog):
    import logging
    with caplog.at_level(logging.INFO, logger="xenapi"):
        result = ssh(sshd.port, keys["alice"][0], "root", data=call("VM.get_all", ""))
    assert result.returncode == 0 and value(responses(result.stdout)[0])
    assert re.search(r"event=login user=alice via=ssh addr=127\.0\.0\.1:\d+ originator=ssh", caplog.text)


def test_openssh_an_unknown_key_is_refused(sshd, keys):
    result = ssh(sshd.port, keys["stranger"][0], "root", "xenapi", data=call("VM.get_all", ""))
    assert result.returncode == 255 and result.stdout == b""
    assert b"Permission denied" in result.stderr


def test_openssh_a_revoked_key_is_refused(sshd, served, keys):
    assert ssh(sshd.port, keys["bob"][0], "root", data=call("VM.get_all", "")).returncode == 0
    sshd.authorized_keys.write_text(forced(served, "alice", keys["alice"][1]) + "\n")     # bob's line deleted
    result = ssh(sshd.port, keys["bob"][0], "root", data=call("VM.get_all", ""))
    assert result.returncode == 255 and result.stdout == b""


def test_openssh_a_key_whose_line_names_an_unknown_user_gets_nothing(sshd, served, keys):
    sshd.authorized_keys.write_text(forced(served, "mallory", keys["stranger"][1]) + "\n")
    result = ssh(sshd.port, keys["stranger"][0], "root", data=call("VM.get_all", ""))
    assert (result.returncode, result.stdout) == (1, b"")
    assert b"no such user 'mallory'" in result.stderr


def test_openssh_other_commands_are_refused(sshd, keys):
    result = ssh(sshd.port, keys["alice"][0], "root", "id", data=b"")
    assert (result.returncode, result.stdout) == (1, b"")
    assert b"refusing the command 'id'" in result.stderr


def test_openssh_refuses_the_subsystem_form_before_the_forced_command(sshd, keys):
    result = ssh(sshd.port, keys["alice"][0], "root", "xenapi", data=call("VM.get_all", ""), options=("-s",))
    assert (result.returncode, result.stdout) == (255, b"")        # docs/ssh.md: the built-in server's only
    assert b"subsystem request failed" in result.stderr


# ------------------------------------------------------------------------------ the built-in server

@pytest.fixture
def builtin(served, tmp_path):
    server = ssh_server(served.server, ("127.0.0.1", 0), host_key(str(tmp_path / "ssh_host_key")))
    server.start()
    yield server
    server.shutdown()


def test_builtin_a_registered_key_gets_in_as_its_user(builtin, served, keys):
    added = xenapi_cli(served.server.config.state, "user", "key", "add", "alice", str(keys["alice"][0]) + ".pub")
    assert added.returncode == 0, added.stderr
    fingerprint = added.stdout.split()[1]
    assert fingerprint.startswith("SHA256:")
    assert xenapi_cli(served.server.config.state, "user", "key", "list", "alice").stdout == f"{fingerprint}\tssh-ed25519\talice@test\n"
    vm = guest(served)
    data = call("session.login_with_password", "alice", "x") + call("VM.start", "", vm, False, False)
    for command in (["xenapi"], ["xenapi", "stdio"], ["/usr/local/bin/xenapi", "stdio"], []):
        result = ssh(builtin.address[1], keys["alice"][0], "alice", *command, data=data)
        assert result.returncode == 0, (command, result.stderr)
        login, start = responses(result.stdout)
        assert value(login).startswith("OpaqueRef:")
        assert error(start)[:2] == ["RBAC_PERMISSION_DENIED", "vm.start"]


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_builtin_rsa_and_ecdsa_keys_work_too(builtin, served, tmp_path, kind):
    key = tmp_path / kind
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(key)], check=True)
    served.server.keys.add("alice", (tmp_path / f"{kind}.pub").read_text())
    result = ssh(builtin.address[1], key, "alice", "xenapi", data=call("VM.get_all", ""))
    assert result.returncode == 0, result.stderr
    assert value(responses(result.stdout)[0])


def test_builtin_the_xenapi_subsystem_carries_the_stream(builtin, served, keys):
    served.server.keys.add("bob", keys["bob"][1])
    vm = guest(served)
    result = ssh(builtin.address[1], keys["bob"][0], "bob", "xenapi", options=("-s",),
                 data=call("VM.start", "", vm, False, False) + call("VM.get_power_state", "", vm))
    assert result.returncode == 0, result.stderr
    assert [value(r) for r in responses(result.stdout)] == ["", "Running"]


def test_builtin_unknown_revoked_and_other_users_keys_are_refused(builtin, served, keys):
    served.server.keys.add("alice", keys["alice"][1])
    served.server.keys.add("bob", keys["bob"][1])
    port = builtin.address[1]
    data = call("VM.get_all", "")
    assert ssh(port, keys["alice"][0], "alice", "xenapi", data=data).returncode == 0
    unknown = ssh(port, keys["stranger"][0], "alice", "xenapi", data=data)
    assert unknown.returncode == 255 and b"Permission denied (publickey)" in unknown.stderr
    wrong_user = ssh(port, keys["bob"][0], "alice", "xenapi", data=data)               # bob's key, alice's name
    assert wrong_user.returncode == 255 and wrong_user.stdout == b""
    no_user = ssh(port, keys["alice"][0], "mallory", "xenapi", data=data)
    assert no_user.returncode == 255
    fingerprint = served.server.keys.of("alice")[0].fingerprint
    revoked = xenapi_cli(served.server.config.state, "user", "key", "del", "alice", fingerprint)                  # from the command line
    assert revoked.returncode == 0, revoked.stderr
    after = ssh(port, keys["alice"][0], "alice", "xenapi", data=data)
    assert after.returncode == 255 and after.stdout == b""


def test_builtin_deleting_a_user_removes_her_keys(builtin, served, keys):
    served.server.keys.add("bob", keys["bob"][1])
    assert xenapi_cli(served.server.config.state, "user", "del", "bob").returncode == 0
    assert xenapi_cli(served.server.config.state, "user", "key", "list", "bob").stdout == ""
    assert ssh(builtin.address[1], keys["bob"][0], "bob", "xenapi", data=call("VM.get_all", "")).returncode == 255
    again = xenapi_cli(served.server.config.state, "user", "add", "bob", "--role", "pool-admin", "--password-stdin", data="pw\n")
    assert again.returncode == 0     # a new bob does not inherit the old bob's key
    assert ssh(builtin.address[1], keys["bob"][0], "bob", "xenapi", data=call("VM.get_all", "")).returncode == 255


def test_builtin_other_commands_get_a_message_and_exit_status_1(builtin, served, keys):
    served.server.keys.add("alice", keys["alice"][1])
    result = ssh(builtin.address[1], keys["alice"][0], "alice", "cat", "/etc/passwd")
    assert (result.returncode, result.stdout) == (1, b"")
    assert b"runs only the Xen-API stream" in result.stderr
    forward = ssh(builtin.address[1], keys["alice"][0], "alice",
                  options=("-N", "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:22"))
    assert forward.returncode == 255                                # port forwarding is refused


def password_login(server: SSHServer, user: str, password: str) -> bool:
    """Log in with a password (paramiko's client) and run one call; False if authentication fails."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect("127.0.0.1", server.address[1], user, password, allow_agent=False, look_for_keys=False,
                       timeout=10)
        channel = client.get_transport().open_session()
        channel.exec_command("xenapi")
        channel.sendall(call("VM.get_all", ""))
        channel.shutdown_write()
        assert value(responses(channel.makefile("rb").read())[0])
    except paramiko.AuthenticationException:
        return False
    finally:
        client.close()
    return True


def test_builtin_passwords_are_refused_unless_allowed(served, tmp_path):
    key = host_key(str(tmp_path / "hk"))
    for allowed in (False, True):
        server = ssh_server(served.server, ("127.0.0.1", 0), key, allow_passwords=allowed)
        server.start()
        try:
            assert password_login(server, "alice", "alice-pw") is allowed
        finally:
            server.shutdown()


def test_builtin_passwords_are_throttled_and_audited_like_logins(tmp_path):
    served = serve_with_socket(tmp_path, login_failures_per_user=3)
    server = ssh_server(served.server, ("127.0.0.1", 0), host_key(str(tmp_path / "hk")), allow_passwords=True)
    server.start()
    try:
        assert password_login(server, "alice", "alice-pw")
        for _ in range(3):
            assert not password_login(server, "alice", "guess")
        assert not password_login(server, "alice", "alice-pw")         # locked: the right one is refused too
        locked = xmlrpc.client.ServerProxy(served.running.url).session.login_with_password("alice", "alice-pw")
        assert "too many failed logins" in locked["ErrorDescription"][2]          # one throttle for both doors
        rows = [r for r in served.server.audit.after(0, 1000) if r["user"] == "alice"]
        assert [(r["method"], r["via"], r["outcome"]) for r in rows] == [
            ("session.login_with_password", "ssh", "ok"), ("session.logout", "ssh", "ok"),
            *[("session.login_with_password", "ssh", "SESSION_AUTHENTICATION_FAILED")] * 4,
            ("session.login_with_password", "http", "SESSION_AUTHENTICATION_FAILED")]
        assert all(re.fullmatch(r"127\.0\.0\.1:\d+", r["address"]) for r in rows)
    finally:
        server.shutdown()
        stop_served(served)


def test_builtin_key_sessions_are_audited_from_the_clients_address(builtin, served, keys):
    served.server.keys.add("bob", keys["bob"][1])
    vm = guest(served)
    result = ssh(builtin.address[1], keys["bob"][0], "bob", "xenapi",
                 data=call("VM.start", "", vm, False, False))
    assert result.returncode == 0 and value(responses(result.stdout)[0]) == ""
    rows = [r for r in served.server.audit.after(0, 1000) if r["user"] == "bob"]
    assert [(r["method"], r["via"], r["outcome"]) for r in rows] == [
        ("session.login_with_key", "ssh", "ok"), ("VM.start", "ssh", "ok"),
        ("session.logout", "ssh", "ok")]
    assert len({r["address"] for r in rows}) == 1 and re.fullmatch(r"127\.0\.0\.1:\d+", rows[0]["address"])
    assert rows[1]["objects"] == [f"VM/{vm}"]


def test_builtin_host_key_is_made_once_private_and_reused(tmp_path):
    path = tmp_path / "state" / "ssh_host_ed25519_key"
    first = host_key(str(path))
    assert first.get_name() == "ssh-ed25519"
    assert path.stat().st_mode & 0o777 == 0o600
    assert host_key(str(path)).fingerprint == first.fingerprint


def test_bad_public_key_files_are_refused_by_the_cli(served, tmp_path):
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-ed25519 not-base64!\n")
    result = xenapi_cli(served.server.config.state, "user", "key", "add", "alice", str(bad))
    assert result.returncode == 1 and "not valid base64" in result.stderr
    bad.write_text("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIHg1\n")        # an ed25519 blob labelled ssh-rsa
    assert "not a ssh-rsa key" in xenapi_cli(served.server.config.state, "user", "key", "add", "alice", str(bad)).stderr
    good = (tmp_path / "alice.pub")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "alice")], check=True)
    kind, blob, _ = good.read_text().split()
    bad.write_text(f"{kind} {base64.b64encode(base64.b64decode(blob)[:-5]).decode()}\n")      # truncated
    assert "not a ssh-ed25519 key" in xenapi_cli(served.server.config.state, "user", "key", "add", "alice", str(bad)).stderr
    assert served.server.keys.of("alice") == []
    assert "no user 'nobody'" in xenapi_cli(served.server.config.state, "user", "key", "add", "nobody", "-",
                                     data="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHg1x9c4bVo3rDLu3vXG0ucJmHmbSx4UyU1LaRmvJbAl\n").stderr


# ------------------------------------------------------------------------- `xenapi serve`, whole

def test_serve_runs_the_ssh_server_and_the_default_socket_for_stdio(keys):
    state = Path(tempfile.mkdtemp(prefix="xenapi-"))      # short: the socket lives in it
    env = {**os.environ, "XENAPI_ADMIN_PASSWORD": "admin-pw"}
    fingerprints = []
    try:
        subprocess.run([XENAPI, "user", "add", "alice", "--role", "read-only", "--password-stdin", "--state", str(state)],
                       input=b"pw\n", check=True, capture_output=True, env=env)
        subprocess.run([XENAPI, "user", "key", "add", "alice", str(keys["alice"][0]) + ".pub", "--state", str(state)],
                       check=True, capture_output=True)
        for _ in range(2):                                    # the host key survives a restart
            port = free_port()
            log = state / "serve.log"
            with open(log, "wb") as stderr:
                proc = subprocess.Popen([XENAPI, "serve", "--listen", "127.0.0.1:0", "--ssh-listen",
                                         f"127.0.0.1:{port}", "--state", str(state)], stderr=stderr, env=env)
            try:
                wait_for_port(port, 60, proc=proc, log=log)
                assert (state / "xenapi.sock").stat().st_mode & 0o777 == 0o600
                local = subprocess.run([XENAPI, "stdio", "--user", "alice", "--state", str(state)],
                                       input=call("VM.get_all", ""), capture_output=True, timeout=60)
                assert local.returncode == 0, local.stderr
                assert value(responses(local.stdout)[0])
                remote = ssh(port, keys["alice"][0], "alice", "xenapi", data=call("VM.get_all", ""))
                assert remote.returncode == 0, remote.stderr
                assert value(responses(remote.stdout)[0]) == value(responses(local.stdout)[0])
                scan = subprocess.run(["ssh-keyscan", "-t", "ed25519", "-p", str(port), "127.0.0.1"],
                                      capture_output=True, text=True, timeout=30)
                fingerprints.append(scan.stdout.split()[-1])
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        assert fingerprints[0] == fingerprints[1]
    finally:
        shutil.rmtree(state, ignore_errors=True)
