"""Helpers for the SSH suites: keys made by ssh-keygen, the real OpenSSH client, and a real sshd
whose authorized_keys force ``xenapi stdio --user`` (docs/ssh.md).  The fixtures built on them
(``keys``, ``sshd``) are in tests/conftest.py."""
from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.ports import free_port, wait_for_port
from tests.streams import XENAPI, Served

SSHD = "/usr/sbin/sshd"


def keypair(directory: Path, name: str) -> tuple[Path, str]:
    """(private key file, public key line) of a new Ed25519 key made by ssh-keygen."""
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test", "-f", str(path)], check=True)
    return path, (directory / f"{name}.pub").read_text().strip()


def ssh(port: int, key: Path, user: str, *command: str, data: bytes = b"", options: tuple = ()) -> subprocess.CompletedProcess:
    """The real OpenSSH client, non-interactive, trusting any host key, offering only ``key``."""
    return subprocess.run(["ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                           *options, "-p", str(port), f"{user}@127.0.0.1", *command],
                          input=data, capture_output=True, timeout=60)


@dataclass
class OpenSSH:
    port: int
    authorized_keys: Path
    proc: subprocess.Popen


def forced(served: Served, user: str, public: str) -> str:
    """The authorized_keys line an administrator writes (docs/ssh.md), pointing at the test server's socket."""
    return f'command="{XENAPI} stdio --user {user} --unix-socket {served.socket}",restrict {public}'


@contextmanager
def running_sshd(directory: Path, served: Served, keys: dict[str, tuple[Path, str]]) -> Iterator[OpenSSH]:
    """A real sshd on a loopback port: its own host key, its own authorized_keys (alice's and bob's keys)."""
    if os.getuid() != 0:
        pytest.skip("sshd must run as root to log in as root")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)        # sshd's privilege-separation directory
    directory.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / "host_key")], check=True)
    authorized = directory / "authorized_keys"
    authorized.write_text("".join(forced(served, user, keys[user][1]) + "\n" for user in ("alice", "bob")))
    port = free_port()
    config = directory / "sshd_config"
    config.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {directory / 'host_key'}
PidFile {directory / 'sshd.pid'}
AuthorizedKeysFile {authorized}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
""")
    log = directory / "sshd.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=stderr)
    try:
        wait_for_port(port, proc=proc, log=log)
        yield OpenSSH(port, authorized, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
