"""Settings: xenapi.conf's keys, their defaults, and the command line on top."""
from __future__ import annotations

import configparser
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
    libvirt_uris: list[str] = field(default_factory=lambda: [DEFAULT_URI])
    domain_type: str = "auto"
    idle_timeout: float = 86400.0
    max_per_user: int = 500
    clean_shutdown_timeout: float = 60.0
    task_keep_seconds: float = 3900.0
    task_keep_count: int = 200
    event_log_size: int = 50_000
    metrics_interval: float = 5.0

    @property
    def database(self) -> str:
        return ":memory:" if self.state == ":memory:" else str(Path(self.state) / "xenapi.db")

    def listen_address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"listen must be HOST:PORT, got {self.listen!r}")
        return host.strip("[]"), int(port)


# (section, key) in the file -> attribute; the type comes from the dataclass default.
_KEYS = {
    ("server", "listen"): "listen", ("server", "unix_socket"): "unix_socket", ("server", "state"): "state",
    ("server", "max_body_bytes"): "max_body_bytes", ("server", "max_connections"): "max_connections",
    ("libvirt", "uri"): "libvirt_uris", ("libvirt", "domain_type"): "domain_type",
    ("sessions", "idle_timeout"): "idle_timeout", ("sessions", "max_per_user"): "max_per_user",
    ("vm", "clean_shutdown_timeout"): "clean_shutdown_timeout",
    ("tasks", "keep_seconds"): "task_keep_seconds", ("tasks", "keep_count"): "task_keep_count",
    ("events", "log_size"): "event_log_size", ("metrics", "interval"): "metrics_interval",
}


def load(path: str | None) -> Config:
    config = Config()
    if not path:
        return config
    parser = configparser.ConfigParser()
    if not parser.read(path):
        raise ValueError(f"cannot read config file {path}")
    types = {f.name: type(getattr(config, f.name)) for f in dc_fields(config)}
    for section in parser.sections():
        for key, text in parser.items(section):
            attr = _KEYS.get((section, key))
            if attr is None:
                raise ValueError(f"{path}: unknown setting [{section}] {key}")
            if types[attr] is list:
                value = text.split()
            else:
                try:
                    value = types[attr](text)
                except ValueError:
                    raise ValueError(f"{path}: [{section}] {key} = {text!r} is not a {types[attr].__name__}") from None
            setattr(config, attr, value)
    return config
