"""HTTPS: the self-signed pair, the server's TLS context, real clients over it, and `xenapi serve`'s
TLS settings end to end (a real server process, restarted)."""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import warnings
import xmlrpc.client
from pathlib import Path

import pytest
import XenAPI
from cryptography import x509

from tests.clients.conftest import XoClient
from tests.conftest import ADMIN_PASSWORD, start_server, stop_server
from tests.doors import https_door
from xenapi import config as configuration
from xenapi import tls
from xenapi.config import Config

SERVE_TIMEOUT = 30.0


@pytest.fixture
def https(tmp_path):
    running = start_server(tmp_path)
    door = https_door(running, tmp_path / "state")
    yield running, door
    door.close()
    stop_server(running)


def peer_fingerprint(url: str) -> str:
    """SHA-256 of the certificate the server at ``url`` presents, as tls.fingerprint writes it."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as sock:
        return hashlib.sha256(sock.getpeercert(binary_form=True)).digest().hex(":").upper()


def handshake(url: str, context: ssl.SSLContext, server_hostname: str) -> str:
    """The TLS version negotiated with the server at ``url`` (raises what the handshake raises)."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=server_hostname) as sock:
        return sock.version()


# ------------------------------------------------------------------------ the self-signed pair

def test_self_signed_pair_is_made_with_a_private_key_and_the_machines_names(tmp_path):
    pair = tls.self_signed_pair(tmp_path / "tls", tls.subject_names("192.0.2.10:443"))

    assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pair.key.parent.stat().st_mode) == 0o700
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(names.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert {"localhost", socket.gethostname()} <= dns
    assert {"127.0.0.1", "::1", "192.0.2.10"} <= ips
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 3650


def test_self_signed_pair_is_reused_not_remade(tmp_path):
    first = tls.self_signed_pair(tmp_path / "tls", ["localhost"])
    cert, key = first.cert.read_bytes(), first.key.read_bytes()

    again = tls.self_signed_pair(tmp_path / "tls", ["localhost", "other-name"])

    assert (again.cert.read_bytes(), again.key.read_bytes()) == (cert, key)
    assert tls.fingerprint(again.cert) == tls.fingerprint(first.cert)


def test_key_left_without_its_certificate_is_replaced(tmp_path):
    directory = tmp_path / "tls"
    directory.mkdir()
    (directory / tls.KEY_NAME).write_text("half of an interrupted first start")

    pair = tls.self_signed_pair(directory, ["localhost"])

    assert b"PRIVATE KEY" in pair.key.read_bytes()
    tls.server_context(pair)                     # the new key matches the new certificate


def test_certificate_without_its_key_is_an_error_not_a_new_pair(tmp_path):
    pair = tls.self_signed_pair(tmp_path / "tls", ["localhost"])
    cert = pair.cert.read_bytes()
    pair.key.unlink()

    with pytest.raises(tls.TLSError, match="exists but its key"):
        tls.self_signed_pair(tmp_path / "tls", ["localhost"])
    assert pair.cert.read_bytes() == cert


def test_config_file_tls_settings(tmp_path):
    path = tmp_path / "xenapi.conf"
    path.write_text("[tls]\ncert = /etc/x.crt\nkey = /etc/x.key\nself_signed = yes\n")
    config = configuration.load(str(path))
    assert (config.tls_cert, config.tls_key, config.tls_self_signed) == ("/etc/x.crt", "/etc/x.key", True)

    path.write_text("[tls]\nself_signed = false\n")
    assert configuration.load(str(path)).tls_self_signed is False
    path.write_text("[tls]\nself_signed = maybe\n")
    with pytest.raises(ValueError, match="self_signed"):
        configuration.load(str(path))


def test_shipped_config_documents_tls_off_by_default():
    config = configuration.load(str(Path(__file__).parents[1] / "xenapi.conf"))
    assert (config.tls_cert, config.tls_key, config.tls_self_signed) == ("", "", False)
    assert tls.context_for(config) is None


@pytest.mark.parametrize("settings, message", [
    ({"tls_cert": "/nonexistent/server.crt", "tls_key": "/nonexistent/server.key"}, "does not exist"),
    ({"tls_cert": "CERT"}, "needs both"),
    ({"tls_cert": "CERT", "tls_key": "OTHER_KEY"}, "does not belong"),
    ({"tls_cert": "KEY", "tls_key": "KEY"}, "holds no PEM certificate"),
    ({"tls_cert": "CERT", "tls_key": "CERT"}, "holds no PEM private key"),
    ({"tls_self_signed": True, "state": ":memory:"}, "state directory"),
])
def test_unusable_tls_settings_are_named(tmp_path, settings, message):
    mine = tls.self_signed_pair(tmp_path / "mine", ["localhost"])
    other = tls.self_signed_pair(tmp_path / "other", ["localhost"])
    files = {"CERT": str(mine.cert), "KEY": str(mine.key), "OTHER_KEY": str(other.key)}
    config = Config(**{"state": str(tmp_path / "state"), **{k: files.get(v, v) for k, v in settings.items()}})

    with pytest.raises(tls.TLSError, match=message):
        tls.context_for(config)


# ------------------------------------------------------------------------ clients over HTTPS

def test_official_xenapi_client_with_ignore_ssl_works_over_https(https):
    running, door = https
    session = XenAPI.Session(door.url, ignore_ssl=True)
    session.xenapi.login_with_password("root", ADMIN_PASSWORD, "2.21", "pytest-tls")
    session_ref = session.handle

    records = session.xenapi.VM.get_all_records()
    session.xenapi.session.logout()

    assert len(records) == 3 and sum(r["is_control_domain"] for r in records.values()) == 1
    assert not running.server.sessions.is_live(session_ref)


def test_official_client_verifying_certificates_refuses_the_self_signed_one(https):
    _, door = https
    with pytest.raises(ssl.SSLCertVerificationError, match="self-signed"):
        XenAPI.Session(door.url).xenapi.login_with_password("root", ADMIN_PASSWORD, "2.21", "pytest-tls")


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", socket.gethostname()])
def test_certificate_pinned_as_its_own_authority_verifies_for_each_name(https, hostname):
    _, door = https
    pinned = ssl.create_default_context(cafile=door.cert)
    assert handshake(door.url, pinned, hostname) in ("TLSv1.2", "TLSv1.3")


def test_tls_below_1_2_is_refused(https):
    _, door = https
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():              # that TLS 1.1 is deprecated is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):     # the server's alert
        handshake(door.url, old, "localhost")


def test_plain_http_to_the_https_port_fails_cleanly_and_the_server_keeps_serving(https):
    _, door = https
    plain = door.url.replace("https://", "http://")
    with pytest.raises((OSError, http.client.HTTPException, xmlrpc.client.ProtocolError)):
        XenAPI.Session(plain).xenapi.login_with_password("root", ADMIN_PASSWORD, "2.21", "pytest-tls")

    session = XenAPI.Session(door.url, ignore_ssl=True)
    session.xenapi.login_with_password("root", ADMIN_PASSWORD, "2.21", "pytest-tls")
    assert session.xenapi.pool.get_all()
    session.xenapi.session.logout()


@pytest.mark.clients
@pytest.mark.parametrize("transport", ["auto", "xml-rpc"])
def test_xen_orchestra_client_with_allow_unauthorized_connects_over_https(https, transport):
    running, door = https
    run = XoClient()("connect", door.url, transport)     # xo_client.mjs sets allowUnauthorized: true

    report = run.report
    assert report["status"] == "connected" and report["statusAfterDisconnect"] == "disconnected"
    assert report["watchEventsError"] is None
    assert report["counts"]["VM"] == running.server.store.count("VM") == 3
    assert report["pool"]["master"] == running.server.master_ref


# ------------------------------------------------------------------------ `xenapi serve`

class Served:
    """A `xenapi serve` process; ``url`` once it listens."""

    def __init__(self, state: Path, *args: str):
        self.state = state
        self.log = state.parent / f"serve-{os.getpid()}-{id(self)}.log"
        env = {**os.environ, "XENAPI_ADMIN_PASSWORD": ADMIN_PASSWORD}
        with open(self.log, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "xenapi.cli", "serve", "--listen", "127.0.0.1:0", "--state", str(state),
                 "--libvirt", "test:///default", *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        self.url = self._wait_listening()

    def _wait_listening(self) -> str:
        import time
        deadline = time.monotonic() + SERVE_TIMEOUT
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            found = re.search(r"event=listening scheme=(\w+) address=\('([\d.]+)', (\d+)\)", text)
            if found:
                return f"{found[1]}://{found[2]}:{found[3]}"
            if self.proc.poll() is not None:
                raise AssertionError(f"xenapi serve exited {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"xenapi serve did not listen within {SERVE_TIMEOUT} s")

    def logged_fingerprint(self) -> str:
        return re.search(r"event=tls cert=\S+ sha256=(\S+)", self.log.read_text())[1]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=SERVE_TIMEOUT)


def test_serve_with_self_signed_tls_makes_the_pair_once_and_reuses_it_on_restart(tmp_path):
    state = tmp_path / "state"
    first = Served(state, "--tls-self-signed")
    try:
        assert first.url.startswith("https://")
        fingerprint = peer_fingerprint(first.url)
        session = XenAPI.Session(first.url, ignore_ssl=True)
        session.xenapi.login_with_password("root", ADMIN_PASSWORD, "2.21", "pytest-tls")
        assert session.xenapi.VM.get_all()
        session.xenapi.session.logout()
    finally:
        assert first.stop() == 0
    assert fingerprint == first.logged_fingerprint() == tls.fingerprint(state / "tls" / "server.crt")
    assert "event=tls-self-signed-created" in first.log.read_text()

    second = Served(state, "--tls-self-signed")
    try:
        assert peer_fingerprint(second.url) == fingerprint
    finally:
        assert second.stop() == 0
    assert "event=tls-self-signed-created" not in second.log.read_text()


def test_serve_with_given_certificate_and_key(tmp_path):
    pair = tls.self_signed_pair(tmp_path / "given", ["localhost"])
    served = Served(tmp_path / "state", "--tls-cert", str(pair.cert), "--tls-key", str(pair.key))
    try:
        assert served.url.startswith("https://")
        assert peer_fingerprint(served.url) == tls.fingerprint(pair.cert)
    finally:
        served.stop()
    assert not (tmp_path / "state" / "tls").exists()


@pytest.mark.parametrize("args, message", [
    (["--tls-cert", "/nonexistent/server.crt", "--tls-key", "/nonexistent/server.key"],
     "TLS certificate file /nonexistent/server.crt does not exist"),
    (["--tls-cert", "CERT"], "TLS needs both a certificate"),
    (["--tls-cert", "CERT", "--tls-key", "CERT"], "holds no PEM private key"),
])
def test_serve_with_unusable_tls_files_stops_with_one_line_and_starts_nothing(tmp_path, args, message):
    pair = tls.self_signed_pair(tmp_path / "given", ["localhost"])
    state = tmp_path / "state"
    argv = [str(pair.cert) if a == "CERT" else a for a in args]

    proc = subprocess.run([sys.executable, "-m", "xenapi.cli", "serve", "--listen", "127.0.0.1:0",
                           "--state", str(state), "--libvirt", "test:///default", *argv],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=SERVE_TIMEOUT)

    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("xenapi: ") and message in last
    assert "Traceback" not in proc.stderr
    assert not state.exists()                     # it stopped before making anything
