"""The server's wiring: every part is handed the parts it uses, none the server itself, and
message bodies see only the declared Services (README "Layout")."""
from __future__ import annotations

import dataclasses

from xenapi.config import Config
from xenapi.context import Context, Services
from xenapi.server import Server


def _parts(server: Server) -> dict[str, object]:
    """Every object the server built, with the observers the reconciler drives."""
    parts = {name: value for name, value in vars(server).items()
             if not name.startswith("_") and name not in ("config", "registry", "master_ref")}
    parts.update({f"observer:{kind}": o for kind, o in server.reconciler.observers.items()})
    parts["sampler"] = server.hosts.sampler
    return parts


def _holds(obj, target) -> list[str]:
    """The attributes of ``obj`` (and of the callables it keeps) that are ``target``."""
    found = []
    for name, value in (vars(obj).items() if hasattr(obj, "__dict__") else ()):
        if value is target or getattr(value, "__self__", None) is target:
            found.append(name)
        if isinstance(value, list) and any(getattr(v, "__self__", None) is target for v in value):
            found.append(name)
    return found


def test_no_part_holds_the_server(tmp_path):
    server = Server(Config(state=str(tmp_path / "state")))
    try:
        holders = {name: held for name, part in _parts(server).items() if (held := _holds(part, server))}
        assert holders == {}
        assert len(_parts(server)) > 20       # the walk saw the whole graph, not an empty one
    finally:
        server.store.close()


def test_message_bodies_see_services_not_the_layers_under_them(tmp_path):
    fields = {f.name for f in dataclasses.fields(Services)}
    assert {"vms", "storage", "networks", "placement", "moves", "hosts", "sessions", "tasks"} <= fields
    assert not fields & {"reconciler", "config", "dispatcher", "server", "migration", "metrics"}
    assert "server" not in {f.name for f in dataclasses.fields(Context)}
    server = Server(Config(state=str(tmp_path / "state")))
    try:
        ctx = server.context()
        assert ctx.services is server.services and ctx.store is server.store
        for name in fields:                  # the bundle holds the very parts the server built
            assert getattr(server.services, name) is getattr(server, name)
    finally:
        server.store.close()
