"""A throw-away libvirtd for tests and benchmarks that must stop, kill or restart a real daemon
without touching the system one."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


class PrivateLibvirtd:
    """A throw-away libvirtd serving the test driver on its own socket (never the system one).

    As root it runs as ``nobody``: an unprivileged ("session") daemon keeps every driver's
    state under our temporary directory, so it cannot collide with a system libvirtd.
    """

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="xenapi-libvirtd-"))
        self.run_dir = self.dir / "run"
        for d in (self.dir / "home", self.run_dir):
            d.mkdir()
        (self.dir / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{self.run_dir}"\nunix_sock_rw_perms = "0777"\nunix_sock_ro_perms = "0777"\n'
            'auth_unix_rw = "none"\nauth_unix_ro = "none"\nlog_outputs = "3:stderr"\n')
        for path in (self.dir, self.dir / "home", self.run_dir, self.dir / "libvirtd.conf"):
            path.chmod(0o777 if path.is_dir() else 0o644)
        self.socket = self.run_dir / "libvirt-sock"
        self.uri = f"test+unix:///default?socket={self.socket}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        home = self.dir / "home"
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "XDG_RUNTIME_DIR": str(self.run_dir),
               "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache")}
        as_nobody = {"user": "nobody", "group": pwd.getpwnam("nobody").pw_gid, "extra_groups": []} \
            if os.geteuid() == 0 else {}
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            ["libvirtd", "-f", str(self.dir / "libvirtd.conf"), "-p", str(self.run_dir / "libvirtd.pid")],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.dir / "libvirtd.log", "ab"), **as_nobody)
        deadline = time.monotonic() + 15
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"libvirtd did not start: {(self.dir / 'libvirtd.log').read_text()}")
            time.sleep(0.05)

    @contextmanager
    def frozen(self):
        """The daemon stopped (SIGSTOP): it still accepts connections but answers nothing."""
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
