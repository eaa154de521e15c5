"""Fixtures for the real-client tests: a spy on the dispatcher and runners for the external clients.

- ``running`` (function): the root fixture's server (a private ``test:///<file>`` host with vm0, vm1),
  or, with ``@pytest.mark.parametrize("running", [EMBEDDED], indirect=True)``, a server on the
  embedded default, libvirt's in-process ``test:///default`` (whose "Local storage" SR is the
  driver's own ``default-pool``).  ``xapi`` and ``calls`` follow whichever it is.
- ``calls`` (function): records every call the ``running`` server dispatches (method, params,
  protocol, outcome), whatever the transport, so a test can check what a real client actually sent
  -- the same request log the reference notes were written from.  The server itself is unchanged:
  the spy wraps ``server.dispatcher.dispatch`` and passes everything through.
- ``xo_client`` (session): runs ``tests/clients/node/xo_client.mjs <scenario>`` with Node against a
  URL and returns its JSON report.  Needs ``node`` and npm ``xen-api@4.7.6`` in
  ``tests/e2e/node/node_modules`` (``scripts/setup.sh`` installs it); missing either FAILS the test.
- ``ansible_module`` (function): runs ``ansible localhost -c local -m community.general.<module>``
  with the JSON stdout callback and returns the module's result dict; arguments holding a list or a
  dict (xenserver_guest's disks, cdrom) are passed as one JSON object.  Needs ``ansible`` in the
  same venv as the running Python (``pip install -e '.[test]'``); missing it FAILS the test.
  Everything Ansible writes (HOME, local temp) goes under the test's tmp_path.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import start_server, stop_server

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NODE_DIR = REPO / "tests" / "e2e" / "node"
XEN_API_PACKAGE = NODE_DIR / "node_modules" / "xen-api"
XEN_API_VERSION = "4.7.6"
XO_SCRIPT = HERE / "node" / "xo_client.mjs"
NODE_TIMEOUT = 60.0
ANSIBLE_TIMEOUT = 120.0


EMBEDDED = "test:///default"      # the server's default host: libvirt's in-process test driver
NODE_FILE = None                  # the root fixture's own test:///<file> host


# ------------------------------------------------------------------------------ servers ---
@pytest.fixture
def running(request, tmp_path):
    """As tests/conftest.py's ``running``; an indirect parameter picks the libvirt URI instead.

    ``test:///default`` is one driver per process, shared by every connection open to it and
    reset when the last one closes: the server is its only user here, so each test starts on the
    driver's pristine state (its running ``test`` domain and its ``default-pool``)."""
    uri = getattr(request, "param", NODE_FILE)
    r = start_server(tmp_path, uris=[uri] if uri else None)
    yield r
    stop_server(r)


# ------------------------------------------------------------------------------ call spy ---
@dataclass
class Recorded:
    method: str
    params: tuple
    protocol: str
    outcome: Any = None          # xenapi.wire Success | Failure | Bare | Fault, once answered


@dataclass
class CallLog:
    entries: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()

    def methods(self) -> list[str]:
        with self.lock:
            return [e.method for e in self.entries]

    def named(self, method: str) -> list[Recorded]:
        with self.lock:
            return [e for e in self.entries if e.method == method]

    def of_originator(self, originator: str) -> "CallLog":
        """The calls of the sessions a client opened with this originator (its logins included)."""
        with self.lock:
            logins = [e for e in self.entries if e.method == "session.login_with_password"
                      and e.params[3:4] == (originator,)]
            sessions = {e.outcome.value for e in logins if type(e.outcome).__name__ == "Success"}
            login_ids = {id(e) for e in logins}
            mine = [e for e in self.entries
                    if id(e) in login_ids or (e.params and isinstance(e.params[0], str) and e.params[0] in sessions)]
        return CallLog(mine)

    def protocols(self) -> set[str]:
        with self.lock:
            return {e.protocol for e in self.entries}

    def wait_in_flight(self, method: str, timeout: float = 10.0) -> Recorded:
        """A call of ``method`` the server has received and not yet answered (a blocked long poll)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.named(method):
                if e.outcome is None:
                    return e
            time.sleep(0.01)
        raise AssertionError(f"no {method} call in flight within {timeout} s; calls: {self.methods()}")

    def wait_for(self, method: str, timeout: float = 10.0) -> Recorded:
        """The first answered call of ``method``; calls arrive from other processes, so poll."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.named(method):
                if e.outcome is not None:
                    return e
            time.sleep(0.02)
        raise AssertionError(f"{method} was not called within {timeout} s; calls: {self.methods()}")


@pytest.fixture
def calls(running, monkeypatch) -> CallLog:
    log = CallLog()
    real = running.server.dispatcher.dispatch

    def spy(call):
        entry = Recorded(call.method, tuple(call.params), call.protocol)
        with log.lock:
            log.entries.append(entry)
        entry.outcome = real(call)
        return entry.outcome

    monkeypatch.setattr(running.server.dispatcher, "dispatch", spy)
    return log


# ------------------------------------------------------------------------------ Node (XO) ---
def _node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the Xen Orchestra client tests need Node >= 18 "
                    "(run scripts/setup.sh)", pytrace=False)
    return node


def _xen_api_module() -> Path:
    manifest = XEN_API_PACKAGE / "package.json"
    if not manifest.is_file():
        pytest.fail(f"npm xen-api is not installed in {NODE_DIR}/node_modules; run scripts/setup.sh "
                    f"(or: cd {NODE_DIR} && npm ci)", pytrace=False)
    version = json.loads(manifest.read_text())["version"]
    if version != XEN_API_VERSION:
        pytest.fail(f"npm xen-api {version} is installed in {NODE_DIR}, the tests pin {XEN_API_VERSION}; "
                    "run scripts/setup.sh", pytrace=False)
    return XEN_API_PACKAGE / "index.mjs"


@dataclass
class NodeRun:
    report: dict          # the script's JSON report (last stdout line)
    stderr: str           # XO's console.warn output (event-loop failures land here)
    seconds: float


class XoClient:
    def __init__(self):
        self.node = _node_binary()
        self.module = _xen_api_module()

    def __call__(self, scenario: str, url: str, transport: str = "auto", *, exit_code: int = 0,
                 **options) -> NodeRun:
        """Run a scenario to its end; exit_code 2 expects the scenario to report an error."""
        config = {"url": url, "transport": transport, "module": str(self.module), **options}
        start = time.monotonic()
        try:
            proc = subprocess.run([self.node, str(XO_SCRIPT), scenario, json.dumps(config)],
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=NODE_TIMEOUT, cwd=HERE / "node")
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"xo_client.mjs {scenario} ({transport}) did not finish within {NODE_TIMEOUT} s "
                        f"(a long poll kept Node alive after disconnect?)\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}",
                        pytrace=False)
        seconds = time.monotonic() - start
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        if proc.returncode != exit_code or not lines:
            pytest.fail(f"xo_client.mjs {scenario} ({transport}) exited {proc.returncode}, not {exit_code}\n"
                        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}", pytrace=False)
        return NodeRun(json.loads(lines[-1]), proc.stderr, seconds)

    def start(self, scenario: str, url: str, transport: str = "auto", **options) -> "NodeProcess":
        """Start a scenario that prints ``READY <ref>`` once connected and then waits for the test."""
        config = {"url": url, "transport": transport, "module": str(self.module), **options}
        proc = subprocess.Popen([self.node, str(XO_SCRIPT), scenario, json.dumps(config)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE / "node")
        return NodeProcess(proc, f"{scenario} ({transport})")


class NodeProcess:
    def __init__(self, proc: subprocess.Popen, name: str):
        self.proc = proc
        self.name = name
        self.start = time.monotonic()

    def wait_ready(self, timeout: float = NODE_TIMEOUT) -> str:
        """The word after READY; fails (and kills Node) on exit or timeout first."""
        return self.wait_for("READY", timeout)[0]

    def wait_for(self, marker: str, timeout: float = NODE_TIMEOUT) -> list[str]:
        """The words after ``marker`` on the scenario's next stdout line (a handshake such as
        ``SEEN <ref>``); fails (and kills Node) on another line, exit or timeout first."""
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        line = box[0] if box else ""
        if line.split()[:1] != [marker]:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"xo_client.mjs {self.name} never printed {marker}: {line!r}\nstdout:\n{out}\n"
                        f"stderr:\n{err}", pytrace=False)
        return line.split()[1:]

    def finish(self, timeout: float = NODE_TIMEOUT) -> NodeRun:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"xo_client.mjs {self.name} did not finish within {timeout} s\nstdout:\n{out}\n"
                        f"stderr:\n{err}", pytrace=False)
        lines = [line for line in out.splitlines() if line.strip()]
        if self.proc.returncode != 0 or not lines:
            pytest.fail(f"xo_client.mjs {self.name} exited {self.proc.returncode}\nstdout:\n{out}\nstderr:\n{err}",
                        pytrace=False)
        return NodeRun(json.loads(lines[-1]), err, time.monotonic() - self.start)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture(scope="session")
def xo_client() -> XoClient:
    return XoClient()


# ------------------------------------------------------------------------------ Ansible ---
def _ansible_binary() -> Path:
    ansible = Path(sys.executable).parent / "ansible"
    if not ansible.is_file():
        pytest.fail(f"ansible is not installed beside {sys.executable} ({ansible} is missing); "
                    "run scripts/setup.sh (pip install -e '.[test]' installs ansible==12.3.0)", pytrace=False)
    return ansible


@dataclass
class AnsibleRun:
    result: dict           # the module's result for localhost (failed, changed, msg, instance...)
    seconds: float


@pytest.fixture
def ansible_module(tmp_path):
    ansible = _ansible_binary()
    home = tmp_path / "ansible-home"
    (home / "tmp").mkdir(parents=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")},
        "HOME": str(home),
        "ANSIBLE_HOME": str(home / ".ansible"),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(home / "tmp"),
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",          # ad-hoc `ansible` then honours the stdout callback
        "ANSIBLE_STDOUT_CALLBACK": "json",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
    }

    def run(module: str, **args) -> AnsibleRun:
        if any(isinstance(v, (dict, list)) for v in args.values()):
            argv = json.dumps(args)             # lists of disks, a cdrom dict: `ansible -a '{...}'` takes JSON
        else:
            argv = " ".join(f"{k}={_quote(v)}" for k, v in args.items())
        start = time.monotonic()
        try:
            proc = subprocess.run([str(ansible), "localhost", "-c", "local", "-m", f"community.general.{module}",
                                   "-a", argv], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  env=env, cwd=tmp_path, timeout=ANSIBLE_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"ansible {module} did not finish within {ANSIBLE_TIMEOUT} s\nstdout:\n{e.stdout}\n"
                        f"stderr:\n{e.stderr}", pytrace=False)
        try:
            report = json.loads(proc.stdout)
            result = report["plays"][0]["tasks"][0]["hosts"]["localhost"]
        except (ValueError, KeyError, IndexError):
            pytest.fail(f"ansible {module} gave no JSON result (exit {proc.returncode})\nstdout:\n{proc.stdout}\n"
                        f"stderr:\n{proc.stderr}", pytrace=False)
        return AnsibleRun(result, time.monotonic() - start)

    return run


def _quote(value) -> str:
    text = str(value)
    return text if text and not any(c in text for c in " '\"\\=") else json.dumps(text)
