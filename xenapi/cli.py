"""The ``xenapi`` command: run the server, and manage its local users.

Example:
    xenapi serve --listen 127.0.0.1:8080 --state ./state
    echo s3cret | xenapi user add alice --role vm-operator --password-stdin --state ./state
"""
from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sys
import threading

from xenapi import config as configuration

log = logging.getLogger("xenapi")


def _config(args) -> configuration.Config:
    cfg = configuration.load(args.config)
    if getattr(args, "listen", None):
        cfg.listen = args.listen
    if getattr(args, "libvirt", None):
        cfg.libvirt_uris = args.libvirt
    if getattr(args, "state", None):
        cfg.state = args.state
    if getattr(args, "unix_socket", None):
        cfg.unix_socket = args.unix_socket
    return cfg


def _logging(verbose: bool) -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def cmd_serve(args) -> int:
    """Run the server until SIGINT or SIGTERM.

    Example: xenapi serve --listen 127.0.0.1:8080 --libvirt test:///default --state /var/lib/xenapi
    """
    _logging(args.verbose)
    from xenapi.api import Api
    from xenapi.server import Server
    from xenapi.transport.http import HTTPServer

    cfg = _config(args)
    server = Server(cfg)
    generated = server.users.ensure_admin(os.environ.get("XENAPI_ADMIN_PASSWORD"))
    if generated:
        print(f"created user root (pool-admin) with password: {generated}", file=sys.stderr, flush=True)
    server.start()
    api = Api(server)
    listeners = [HTTPServer(cfg.listen_address(), api, max_body_bytes=cfg.max_body_bytes,
                            max_connections=cfg.max_connections)]
    if cfg.unix_socket:
        listeners.append(HTTPServer(cfg.unix_socket, api, max_body_bytes=cfg.max_body_bytes,
                                    max_connections=cfg.max_connections))
    for listener in listeners:
        listener.start()
        log.info("event=listening address=%s", listener.address)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    log.info("event=stopping")
    for listener in listeners:
        listener.shutdown()
    server.stop()
    return 0


def _users(args):
    from auth.users import Users
    from xenapi.store import Store
    from classes import REGISTRY
    cfg = _config(args)
    if cfg.state != ":memory:":
        os.makedirs(cfg.state, exist_ok=True)
    store = Store(REGISTRY.classes, cfg.database)
    return Users(store.db, store.db_lock)


def cmd_user_add(args) -> int:
    """Add a local user with one of xapi's roles.

    Example: echo 's3cret' | xenapi user add alice --role vm-operator --password-stdin
    """
    from auth.users import UserError
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
    else:
        print("xenapi: no terminal to ask for a password; use --password-stdin", file=sys.stderr)
        return 2
    try:
        user = _users(args).add(args.name, args.role, password, args.fullname or "")
    except UserError as e:
        print(f"xenapi: {e}", file=sys.stderr)
        return 1
    print(f"added {user.name} ({user.role})")
    return 0


def cmd_user_list(args) -> int:
    """List local users and their roles.

    Example: xenapi user list --state /var/lib/xenapi
    """
    for user in _users(args).all():
        print(f"{user.name}\t{user.role}\t{user.fullname}")
    return 0


def cmd_user_del(args) -> int:
    """Delete a local user; their sessions end at the server's next check.

    Example: xenapi user del alice
    """
    from auth.users import UserError
    try:
        _users(args).remove(args.name)
    except UserError as e:
        print(f"xenapi: {e}", file=sys.stderr)
        return 1
    print(f"deleted {args.name}")
    return 0


def parser() -> argparse.ArgumentParser:
    from xenapi.model.roles import LADDER
    top = argparse.ArgumentParser(prog="xenapi", description="A Xen-API server for libvirt hosts.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="settings file (see xenapi.conf)")
    common.add_argument("--state", metavar="DIR", help="directory of the SQLite database")
    sub = top.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the server", description=cmd_serve.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--listen", metavar="HOST:PORT", help="HTTP address (default 127.0.0.1:8080)")
    serve.add_argument("--libvirt", metavar="URI", action="append", help="a libvirt host URI; repeat for more hosts")
    serve.add_argument("--unix-socket", metavar="PATH", help="also serve HTTP on this unix socket")
    serve.add_argument("-v", "--verbose", action="store_true", help="log every call, reads too")
    serve.set_defaults(func=cmd_serve)

    user = sub.add_parser("user", help="manage local users").add_subparsers(dest="user_command", required=True)
    add = user.add_parser("add", parents=[common], help="add a user", description=cmd_user_add.__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=LADDER)
    add.add_argument("--fullname")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.set_defaults(func=cmd_user_add)
    lst = user.add_parser("list", parents=[common], help="list users", description=cmd_user_list.__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    lst.set_defaults(func=cmd_user_list)
    rm = user.add_parser("del", parents=[common], help="delete a user", description=cmd_user_del.__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    rm.add_argument("name")
    rm.set_defaults(func=cmd_user_del)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:
        print(f"xenapi: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
