"""A shell on a host, for what libvirt cannot do there (VXLAN devices, ``ping`` for a latency).

``HostShell.for_uri(uri, exec_prefix)`` picks how a command reaches the host of a libvirt URI:

- an explicit ``exec_prefix`` (configuration) wins: the command runs as ``exec_prefix + argv``
  on this machine, e.g. ``["nsenter", "--target=PID", "--net", "--mount", "--uts", "--"]`` (how
  the test lab reaches its hosts) or ``["ssh", "root@h", "--"]``;
- a local URI (no host part: ``qemu:///system``, ``qemu+unix:///system?socket=...``,
  ``lxc:///``) runs the command here;
- ``qemu+ssh://[user@]host[:port]/...`` (also ``+libssh``/``+libssh2``) runs it through
  ``ssh -o BatchMode=yes [user@]host``, with the argv quoted for the remote shell, honouring the
  URI's port and its ``keyfile``, ``known_hosts`` and ``no_verify`` parameters as libvirt does;
- ``test:///...`` (libvirt's test driver, a simulated host) and remote transports without a
  shell (``tcp``, ``tls``) have none: ``available`` is False and ``why_not`` says why.

``run(argv, timeout)`` returns the ``CompletedProcess`` (text, stdout and stderr captured)
whatever the exit status; it raises ``HostShellError`` only when the command could not run:
no shell for this host, the runner (``ssh``, ``nsenter``) missing, or the timeout passed (the
runner is killed).  Through ssh, exit status 255 may also mean that ssh itself failed.
"""
from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

SSH_TRANSPORTS = {"ssh", "libssh", "libssh2"}


class HostShellError(RuntimeError):
    """A command could not be run on a host (no shell there, runner missing, timeout)."""


@dataclass(frozen=True)
class HostShell:
    """How to run a command on one host. Build it with ``for_uri`` (or ``local()``)."""

    description: str                      # e.g. "local", "ssh root@h1", "exec prefix nsenter ..."
    prefix: tuple[str, ...] = ()          # argv prefix (ssh and its options, nsenter, ...)
    quote: bool = False                   # argv joined with shlex.join for a remote shell (ssh)
    why_not: str = ""                     # non-empty: no shell on this host, and why

    @property
    def available(self) -> bool:
        return not self.why_not

    @classmethod
    def local(cls) -> "HostShell":
        return cls("local")

    @classmethod
    def unavailable(cls, why_not: str) -> "HostShell":
        return cls("none", why_not=why_not)

    @classmethod
    def for_uri(cls, uri: str, exec_prefix: list[str] | None = None) -> "HostShell":
        if exec_prefix is not None:
            if not exec_prefix:
                return cls.local()
            return cls("exec prefix " + shlex.join(exec_prefix), tuple(exec_prefix))
        try:
            parts = urlsplit(uri)
        except ValueError as e:
            return cls.unavailable(f"cannot parse libvirt URI {uri!r}: {e}")
        if not parts.scheme:
            return cls.unavailable(f"cannot tell the host of libvirt URI {uri!r} (no scheme)")
        driver, _, transport = parts.scheme.lower().partition("+")
        if driver == "test":
            return cls.unavailable(f"{uri} is libvirt's test driver, a simulated host: "
                                   "there is no machine to run commands on")
        if not parts.hostname:                      # qemu:///system, qemu+unix:///..., lxc:///
            return cls.local()
        if transport in SSH_TRANSPORTS:
            return cls._ssh(uri, parts)
        return cls.unavailable(
            f"no shell on the host of {uri}: its transport ({transport or 'tls'}) carries only "
            "libvirt; use a qemu+ssh:// URI or configure an exec prefix for this host")

    @classmethod
    def _ssh(cls, uri: str, parts) -> "HostShell":
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        try:
            port = parts.port
        except ValueError:
            return cls.unavailable(f"bad port in libvirt URI {uri!r}")
        if port:
            argv += ["-p", str(port)]
        if params.get("keyfile"):
            argv += ["-i", params["keyfile"]]
        if params.get("known_hosts"):
            argv += ["-o", f"UserKnownHostsFile={params['known_hosts']}"]
        if params.get("no_verify") == "1":
            argv += ["-o", "StrictHostKeyChecking=no"]
        host = parts.hostname                      # ssh takes a bare IPv6 address as destination
        destination = f"{unquote(parts.username)}@{host}" if parts.username else host
        argv += ["--", destination]
        return cls("ssh " + destination, tuple(argv), quote=True)

    def argv_for(self, argv: list[str]) -> list[str]:
        """The argv run on this machine to run ``argv`` on the host."""
        if not self.available:
            raise HostShellError(self.why_not)
        argv = [str(a) for a in argv]
        if not argv:
            raise ValueError("empty command")
        if self.quote:
            return [*self.prefix, shlex.join(argv)]
        return [*self.prefix, *argv]

    def run(self, argv: list[str], timeout: float = 30.0, input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` on the host; the result whatever the exit status (see the module doc)."""
        full = self.argv_for(argv)
        env = dict(os.environ, LC_ALL="C")        # messages in English, for the errors we report
        try:
            return subprocess.run(full, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            raise HostShellError(f"{shlex.join(argv)} on {self.description}: no answer after {timeout:g} s "
                                 "(killed)") from e
        except OSError as e:                       # runner missing (ssh, nsenter) or not executable
            raise HostShellError(f"cannot run {shlex.join(full)} ({self.description}): {e}") from e

    def __str__(self) -> str:
        return self.description if self.available else f"no shell ({self.why_not})"


def for_uri(uri: str, exec_prefix: list[str] | None = None) -> HostShell:
    return HostShell.for_uri(uri, exec_prefix)
