"""Settings: xenapi.conf's keys, their defaults, and the command line on top."""
from __future__ import annotations

import configparser
import re
import shlex
from dataclasses import dataclass, field, fields as dc_fields
from pathlib import Path

DEFAULT_URI = "test:///default"


@dataclass
class Config:
    listen: str = "127.0.0.1:8080"
    unix_socket: str = ""
    state: str = "/var/lib/xenapi"
    max_body_bytes: int = 300 * 1024
    max_connections: int = 800
    max_connections_per_source: int = 200
    header_timeout: float = 20.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 120.0
    libvirt_uris: list[str] = field(default_factory=lambda: [DEFAULT_URI])
    domain_type: str = "auto"
    xen_boot: str = "pv"
    libvirt_open_timeout: float = 10.0
    libvirt_sync_wait: float = 0.2
    libvirt_keepalive_interval: int = 5
    libvirt_keepalive_count: int = 3
    idle_timeout: float = 86400.0
    max_per_user: int = 500
    login_failures_per_user: int = 5
    login_failures_per_source: int = 20
    login_failure_window: float = 300.0
    login_lockout: float = 60.0
    login_wait: float = 30.0
    audit_keep: int = 100_000
    clean_shutdown_timeout: float = 60.0
    task_keep_seconds: float = 3900.0
    task_keep_count: int = 200
    event_log_size: int = 50_000
    metrics_interval: float = 5.0
    metrics_public: bool = False
    storage_local_path: str = ""
    storage_poll_interval: float = 0.5
    # URI -> the argv prefix that runs a command on that host (nsenter, ip netns exec, a custom ssh):
    # the [host_exec] section; hosts without one get a local shell (local URIs) or ssh (qemu+ssh)
    host_exec: dict = field(default_factory=dict)
    # URI -> the URI the other hosts' libvirtd dial to reach that host in a peer-to-peer live
    # migration: the [migrate_uri] section; a host without one is dialled at its own URI (right
    # for qemu+ssh/qemu+tcp URIs; a unix-socket or qemu:///system URI means "this machine" there)
    migrate_uris: dict = field(default_factory=dict)
    network_latency_interval: float = 300.0
    storage_resync_interval: float = 300.0
    tls_cert: str = ""
    tls_key: str = ""
    tls_self_signed: bool = False
    ssh_listen: str = ""
    ssh_host_key: str = ""
    ssh_allow_passwords: bool = False

    @property
    def database(self) -> str:
        return ":memory:" if self.state == ":memory:" else str(Path(self.state) / "xenapi.db")

    def http_limits(self) -> dict:
        """The HTTP listeners' limits, as keyword arguments of transport.http.HTTPServer."""
        return {"max_body_bytes": self.max_body_bytes, "max_connections": self.max_connections,
                "max_connections_per_source": self.max_connections_per_source,
                "header_timeout": self.header_timeout, "body_timeout": self.body_timeout,
                "keepalive_timeout": self.keepalive_timeout}

    def listen_address(self) -> tuple[str, int]:
        return _host_port("listen", self.listen)

    def ssh_address(self) -> tuple[str, int]:
        return _host_port("ssh listen", self.ssh_listen)

    def unix_socket_path(self) -> str:
        """The unix socket: unix_socket, by default <state>/xenapi.sock; "" for none (``off``)."""
        if self.unix_socket == "off" or (not self.unix_socket and self.state == ":memory:"):
            return ""
        return self.unix_socket or str(Path(self.state) / "xenapi.sock")

    def ssh_host_key_path(self) -> str:
        return self.ssh_host_key or str(Path(self.state) / "ssh_host_ed25519_key")


def _host_port(name: str, value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{name} must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


# (section, key) in the file -> attribute; the type comes from the dataclass default.
_KEYS = {
    ("server", "listen"): "listen", ("server", "unix_socket"): "unix_socket", ("server", "state"): "state",
    ("server", "max_body_bytes"): "max_body_bytes", ("server", "max_connections"): "max_connections",
    ("server", "max_connections_per_source"): "max_connections_per_source",
    ("server", "header_timeout"): "header_timeout", ("server", "body_timeout"): "body_timeout",
    ("server", "keepalive_timeout"): "keepalive_timeout",
    ("libvirt", "uri"): "libvirt_uris", ("libvirt", "domain_type"): "domain_type", ("libvirt", "xen_boot"): "xen_boot",
    ("libvirt", "open_timeout"): "libvirt_open_timeout", ("libvirt", "keepalive_interval"): "libvirt_keepalive_interval",
    ("libvirt", "keepalive_count"): "libvirt_keepalive_count", ("libvirt", "sync_wait"): "libvirt_sync_wait",
    ("sessions", "idle_timeout"): "idle_timeout", ("sessions", "max_per_user"): "max_per_user",
    ("logins", "failures_per_user"): "login_failures_per_user",
    ("logins", "failures_per_source"): "login_failures_per_source",
    ("logins", "window"): "login_failure_window", ("logins", "lockout"): "login_lockout",
    ("logins", "wait"): "login_wait",
    ("audit", "keep"): "audit_keep",
    ("vm", "clean_shutdown_timeout"): "clean_shutdown_timeout",
    ("tasks", "keep_seconds"): "task_keep_seconds", ("tasks", "keep_count"): "task_keep_count",
    ("events", "log_size"): "event_log_size", ("metrics", "interval"): "metrics_interval",
    ("metrics", "public"): "metrics_public",
    ("storage", "local_path"): "storage_local_path", ("storage", "poll_interval"): "storage_poll_interval",
    ("storage", "resync_interval"): "storage_resync_interval",
    ("network", "latency_interval"): "network_latency_interval",
    ("tls", "cert"): "tls_cert", ("tls", "key"): "tls_key", ("tls", "self_signed"): "tls_self_signed",
    ("ssh", "listen"): "ssh_listen", ("ssh", "host_key"): "ssh_host_key",
    ("ssh", "allow_passwords"): "ssh_allow_passwords",
}

# Settings with a fixed set of values.
_CHOICES = {"xen_boot": ("pv", "hvm")}
# Time limits that must be above zero (0 would close every connection at once).
_POSITIVE = {"header_timeout", "body_timeout", "keepalive_timeout", "storage_poll_interval"}


# "URI = DIAL_URI": the split is at the first "=" followed by a URI scheme, since a unix-socket
# URI's own query (?socket=/run/...) has "=" in it too (configparser splits at the first one)
_MIGRATE_URI_LINE = re.compile(r"^(?P<uri>.+?)\s*=\s*(?P<dial>[A-Za-z][A-Za-z0-9+.-]*:.*)$")


def _migrate_uri(path: str, key: str, text: str) -> tuple[str, str]:
    match = _MIGRATE_URI_LINE.match(f"{key}={text}")
    if match is None:
        raise ValueError(f"{path}: [migrate_uri] {key} = {text!r}: expected URI = URI the other hosts dial")
    return match.group("uri"), match.group("dial").strip()


# "URI = command words": the URI has no spaces, so the split is at the "=" after its last character
_HOST_EXEC_LINE = re.compile(r"^(?P<uri>\S+)\s*=\s*(?P<command>.+)$")


def _host_exec(path: str, key: str, text: str) -> tuple[str, list[str]]:
    match = _HOST_EXEC_LINE.match(f"{key}={text}")
    if match is None or not shlex.split(match.group("command")):
        raise ValueError(f"{path}: [host_exec] {key} = {text!r}: expected URI = the command prefix that runs "
                         "a command on that host")
    return match.group("uri"), shlex.split(match.group("command"))


def load(path: str | None) -> Config:
    config = Config()
    if not path:
        return config
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str            # [host_exec] and [migrate_uri] keys are URIs: case and colons kept
    if not parser.read(path):
        raise ValueError(f"cannot read config file {path}")
    types = {f.name: type(getattr(config, f.name)) for f in dc_fields(config)}
    for section in parser.sections():
        if section == "host_exec":
            config.host_exec = dict(_host_exec(path, key, text) for key, text in parser.items(section))
            continue
        if section == "migrate_uri":
            config.migrate_uris = dict(_migrate_uri(path, key, text) for key, text in parser.items(section))
            continue
        for key, text in parser.items(section):
            attr = _KEYS.get((section, key.lower()))
            if attr is None:
                raise ValueError(f"{path}: unknown setting [{section}] {key}")
            if types[attr] is list:
                value = text.split()
            elif types[attr] is bool:        # bool("false") is True: use configparser's words
                try:
                    value = parser.getboolean(section, key)
                except ValueError:
                    raise ValueError(f"{path}: [{section}] {key} = {text!r} is not yes/no/true/false/on/off/1/0") from None
            else:
                try:
                    value = types[attr](text)
                except ValueError:
                    raise ValueError(f"{path}: [{section}] {key} = {text!r} is not a {types[attr].__name__}") from None
            if attr in _CHOICES and value not in _CHOICES[attr]:
                raise ValueError(f"{path}: [{section}] {key} = {text!r} is not one of {', '.join(_CHOICES[attr])}")
            if attr in _POSITIVE and not value > 0:
                raise ValueError(f"{path}: [{section}] {key} = {text!r} must be above 0")
            setattr(config, attr, value)
    return config
