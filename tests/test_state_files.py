"""The state directory and the database files are the server's account's alone: the database holds
live session refs (bearer credentials), password hashes and the audit log.  A real server, the
real `xenapi` command, and a real other account (uid 65534) trying to read."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import start_server, stop_server
from tests.streams import XENAPI

NOBODY = 65534
_READ_DB = """
import sys
for path in sys.argv[1:]:
    try:
        open(path, "rb").read(16)
        print("read", path)
    except OSError as e:
        print("refused", type(e).__name__)
"""


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def db_files(state: Path) -> list[Path]:
    return [state / name for name in ("xenapi.db", "xenapi.db-wal", "xenapi.db-shm")]


@pytest.fixture
def open_dir():
    """A directory everyone may traverse (pytest's own are 0700), so only the state's modes protect it."""
    directory = Path(tempfile.mkdtemp(prefix="xenapi-state-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_a_new_state_directory_and_its_database_files_are_private(open_dir):
    running = start_server(open_dir)
    try:
        running.session()                         # a session row: the WAL has been written
        state = Path(running.server.config.state)
        assert mode(state) == 0o700
        assert [mode(f) for f in db_files(state)] == [0o600] * 3
    finally:
        stop_server(running)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a reader as another uid")
def test_another_account_cannot_read_the_database_even_through_a_loosened_directory(open_dir):
    running = start_server(open_dir)
    try:
        running.session()
        state = Path(running.server.config.state)
        paths = [str(f) for f in db_files(state)]

        def as_nobody() -> list[str]:
            return subprocess.run(["/usr/bin/python3", "-c", _READ_DB, *paths], user=NOBODY, cwd="/",
                                  capture_output=True, text=True, timeout=30).stdout.split("\n")[:3]
        assert as_nobody() == ["refused PermissionError"] * 3        # the directory stops it
        state.chmod(0o755)                                           # an administrator's slip ...
        assert as_nobody() == ["refused PermissionError"] * 3        # ... the files' own modes still do
    finally:
        stop_server(running)


def test_loose_modes_of_an_existing_state_are_tightened_at_start_and_logged(open_dir, caplog):
    first = start_server(open_dir)
    first.session()
    stop_server(first)
    state = open_dir / "state"
    state.chmod(0o755)
    for f in db_files(state):
        if f.exists():
            f.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="xenapi.state.store"):
        again = start_server(open_dir, uris=[first.uri])
    try:
        assert mode(state) == 0o700
        assert all(mode(f) == 0o600 for f in db_files(state) if f.exists())
        assert f"event=state-mode-tightened path={state} mode=755->700" in caplog.text
        assert f"event=state-mode-tightened path={state / 'xenapi.db'} mode=644->600" in caplog.text
    finally:
        stop_server(again)


def test_the_command_line_makes_a_private_state_too(open_dir):
    state = open_dir / "cli-state"
    added = subprocess.run([XENAPI, "user", "add", "alice", "--role", "read-only", "--password-stdin",
                            "--state", str(state)], input="pw\n", capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    assert mode(state) == 0o700
    assert all(mode(f) == 0o600 for f in db_files(state) if f.exists())
    assert mode(state / "xenapi.db") == 0o600
