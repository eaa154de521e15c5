"""Loopback ports for servers that tests and benchmarks run as processes (sshd, ``xenapi serve``)."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, *, proc: subprocess.Popen | None = None,
                  log: Path | None = None) -> None:
    """Until something accepts on 127.0.0.1:``port``; AssertionError after ``timeout`` or, sooner,
    when ``proc`` (the server) exits, with its ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            output = log.read_text(errors="replace") if log is not None else ""
            raise AssertionError(f"exited with {proc.returncode}: {output}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")
