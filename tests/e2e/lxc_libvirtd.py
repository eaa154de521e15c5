"""A private, privileged libvirtd serving only libvirt's LXC driver, for the LXC end-to-end test.

Why not ``lxc:///system``: it answers here, but no container starts on it. This machine's kernel
mounts cgroups "hybrid": v1 hierarchies under /sys/fs/cgroup plus a cgroup2 at
/sys/fs/cgroup/unified that holds a controller (hugetlb). libvirt then uses both, and
libvirt_lxc sets the container's cgroups up v2 first: it makes /sys/fs/cgroup/unified inside the
container, where /sys/fs/cgroup is still the empty, read-only sysfs directory (v1's tmpfs comes
later), and fails ("Unable to create directory /sys/fs/cgroup/unified: No such file or
directory"; libvirt 9.0, and upstream's virCgroupV2BindMount is unchanged). A host with pure v1,
pure v2, or a controller-less systemd hybrid does not hit this.

So this daemon runs in its own mount namespace (``unshare -m``), where that cgroup2 mount is
unmounted (libvirt sees v1 only) and libvirt's state, config, log and cache directories are
private temporary ones: it shares nothing with the system libvirtd, sees none of its guests and
leaves nothing behind. ``LIBVIRT_DRIVER_DIR`` points at a directory holding only the LXC driver,
so no QEMU, network or storage driver starts in it. It is the real libvirtd and the real LXC
driver (libvirt_lxc, namespaces, cgroups); only its surroundings are private.

``XENAPI_E2E_LXC_URI`` points the test at another LXC libvirt instead (a host where
``lxc:///system`` starts containers).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

LXC_DRIVER = next((p for pattern in ("/usr/lib/*/libvirt/connection-driver/libvirt_driver_lxc.so",
                                      "/usr/lib*/libvirt/connection-driver/libvirt_driver_lxc.so")
                   for p in sorted(Path("/").glob(pattern.lstrip("/")))),
                  Path("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_lxc.so"))
LXC_HELPER = Path("/usr/lib/libvirt/libvirt_lxc")
# libvirt's own directories, each replaced by a private one inside the namespace
PRIVATE_DIRS = ("/run/libvirt", "/etc/libvirt", "/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt")

_NAMESPACE_SCRIPT = r"""
set -e
# hybrid cgroups with a controller on the cgroup2 side: hide it, libvirt_lxc trips over it
if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi
dir=$1; shift
i=0
for target in "$@"; do
  mkdir -p "$target" "$dir/fs/$i"
  mount --bind "$dir/fs/$i" "$target"
  i=$((i + 1))
done
exec env LIBVIRT_DRIVER_DIR="$dir/drivers" libvirtd -f "$dir/libvirtd.conf" -p "$dir/libvirtd.pid"
"""


def missing() -> str:
    """Why this daemon cannot run here ("" if it can)."""
    if os.geteuid() != 0:
        return "the LXC driver needs a privileged libvirtd: run the tests as root"
    for tool in ("libvirtd", "unshare", "mountpoint"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh)"
    for path in (LXC_DRIVER, LXC_HELPER):
        if not path.exists():
            return f"{path} is missing: install libvirt-daemon-driver-lxc (scripts/setup.sh)"
    return ""


class LxcLibvirtd:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="xenapi-lxcd-"))
        (self.dir / "drivers").mkdir()
        (self.dir / "drivers" / LXC_DRIVER.name).symlink_to(LXC_DRIVER)
        (self.dir / "sock").mkdir()
        (self.dir / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{self.dir / "sock"}"\nunix_sock_rw_perms = "0700"\n'
            'auth_unix_rw = "none"\nauth_unix_ro = "none"\nlog_outputs = "3:stderr"\n')
        self.socket = self.dir / "sock" / "libvirt-sock"
        self.uri = f"lxc+unix:///system?socket={self.socket}"
        self.log = self.dir / "libvirtd.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", _NAMESPACE_SCRIPT, "sh",
             str(self.dir), *PRIVATE_DIRS],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"), start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the private LXC libvirtd did not start: {self.log.read_text(errors='replace')}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        r = subprocess.run(["virsh", "-q", "-c", self.uri, "uri"], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=10)
        return r.returncode == 0

    def stop(self) -> None:
        """Destroy what still runs (a container outlives its daemon), stop the daemon, remove its files."""
        if self.process is not None and self.process.poll() is None:
            if self.socket.exists():
                names = subprocess.run(["virsh", "-q", "-c", self.uri, "list", "--name"], capture_output=True,
                                       text=True, stdin=subprocess.DEVNULL, timeout=30).stdout.split()
                for name in names:
                    subprocess.run(["virsh", "-q", "-c", self.uri, "destroy", name], capture_output=True,
                                   stdin=subprocess.DEVNULL, timeout=30)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
