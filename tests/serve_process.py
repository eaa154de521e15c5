"""A real ``xenapi serve`` in a process of its own, for tests that restart or kill it.

The state directory outlives the process, so a test can stop (SIGTERM) or kill (SIGKILL) the
server and start another on the same state.  ``test:///default`` lives in the server's process,
so each start of it is a fresh driver: exactly what a restart of the embedded default is.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import XenAPI

from tests.conftest import ADMIN_PASSWORD
from tests.ports import free_port, wait_for_port


class Serve:
    def __init__(self, directory: Path, uri: str):
        self.directory = directory
        self.port = free_port()
        self.log = directory / f"serve-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xenapi.cli", "serve", "--listen", f"127.0.0.1:{self.port}",
             "--state", str(directory / "state"), "--libvirt", uri],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"),
            env={**os.environ, "XENAPI_ADMIN_PASSWORD": ADMIN_PASSWORD})
        wait_for_port(self.port, 60, proc=self.proc, log=self.log)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until_synced(self.session())

    def session(self) -> XenAPI.Session:
        session = XenAPI.Session(self.url)
        session.xenapi.login_with_password("root", ADMIN_PASSWORD, "2.21", "pytest")
        return session

    def kill(self) -> None:
        self.proc.kill()                               # SIGKILL: no handler, no clean close
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def wait_until_synced(session: XenAPI.Session, timeout: float = 60.0) -> None:
    """Wait until every host's domains are listed (``other_config:libvirt_sync``): a server
    answers before that when its hosts are slow to list ([libvirt] sync_wait)."""
    deadline = time.monotonic() + timeout
    while True:
        states = {rec["other_config"].get("libvirt_sync") for rec in session.xenapi.host.get_all_records().values()}
        if states == {"synced"}:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"hosts not listed within {timeout} s: {states}")
        time.sleep(0.05)
