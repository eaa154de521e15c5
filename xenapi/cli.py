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


# Command-line options and the settings they override when given.
_OVERRIDES = {"listen": "listen", "libvirt": "libvirt_uris", "state": "state", "unix_socket": "unix_socket",
              "ssh_listen": "ssh_listen", "tls_cert": "tls_cert", "tls_key": "tls_key",
              "tls_self_signed": "tls_self_signed"}


def _config(args) -> configuration.Config:
    cfg = configuration.load(args.config)
    for option, setting in _OVERRIDES.items():
        if value := getattr(args, option, None):
            setattr(cfg, setting, value)
    return cfg


def _logging(verbose: bool) -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def cmd_serve(args) -> int:
    """Run the server until SIGINT or SIGTERM.

    Example: xenapi serve --listen 127.0.0.1:8080 --libvirt test:///default --state /var/lib/xenapi
    Detected: xenapi serve --libvirt auto --state /var/lib/xenapi
    HTTPS:   xenapi serve --listen 0.0.0.0:443 --tls-self-signed --state /var/lib/xenapi
    """
    _logging(args.verbose)
    from xenapi import tls
    from xenapi.api import Api
    from xenapi.server import Server
    from xenapi.transport.http import HTTPServer

    cfg = _config(args)
    ssl_context = tls.context_for(cfg)       # before anything starts: a bad setting stops here
    server = Server(cfg)
    generated = server.users.ensure_admin(os.environ.get("XENAPI_ADMIN_PASSWORD"))
    if generated:
        print(f"created user root (pool-admin) with password: {generated}", file=sys.stderr, flush=True)
    server.start()
    api = Api(server)
    listeners = [HTTPServer(cfg.listen_address(), api, ssl_context=ssl_context, **cfg.http_limits())]
    if cfg.unix_socket_path():
        try:
            listeners.append(HTTPServer(cfg.unix_socket_path(), api, **cfg.http_limits()))
        except OSError as e:
            if cfg.unix_socket:              # asked for by name: a real error
                raise
            log.warning("event=unix-socket-skipped path=%s reason=%s (`xenapi stdio` needs it: set "
                        "[server] unix_socket)", cfg.unix_socket_path(), e)
    if cfg.ssh_listen:
        from xenapi.transport.ssh import SSHServer, host_key
        listeners.append(SSHServer(server, cfg.ssh_address(), host_key(cfg.ssh_host_key_path()),
                                   allow_passwords=cfg.ssh_allow_passwords, max_connections=cfg.max_connections))
    for listener in listeners:
        listener.start()
        log.info("event=listening scheme=%s address=%s", listener.scheme, listener.address)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    # With a timeout: the kernel may deliver the signal to any thread (libvirt's loop, a
    # connection); Python runs the handler only when the main thread next wakes.
    while not done.wait(0.5):
        pass
    log.info("event=stopping")
    server.drain()
    for listener in listeners:
        listener.shutdown()
    server.stop()
    return 0


def _auth(args):
    """(Users, Keys, AuditLog) on the state's database: the command line writes it beside a running server."""
    from auth.audit import AuditLog
    from auth.keys import Keys
    from auth.users import Users
    from classes import REGISTRY
    from xenapi.store import Store
    cfg = _config(args)
    store = Store(REGISTRY.classes, cfg.database)
    return (Users(store.db, store.db_lock), Keys(store.db, store.db_lock),
            AuditLog(store.db, store.db_lock, cfg.audit_keep))


def _users(args):
    return _auth(args)[0]


def _audit(audit, command: str, name: str, key: str = "") -> None:
    """The audit row of a change made here: via cli, by the Unix account running the command, on
    the user object (and the key's fingerprint)."""
    from auth.audit import local_account
    from xenapi.store import derived_ref, derived_uuid
    objects, uuids = [f"user/{derived_ref('user', name)}"], [derived_uuid("user", name)]
    if key:
        objects, uuids = [*objects, f"ssh_key/{key}"], [*uuids, ""]
    audit.record(user=local_account(), via="cli", address="", method=command, objects=objects, uuids=uuids,
                 outcome="ok")


def cmd_user_add(args) -> int:
    """Add a local user with one of xapi's roles, or role none: a grant-only user, who may do only
    what grants (grant.create) give it.

    Example: echo 's3cret' | xenapi user add alice --role vm-operator --password-stdin
    """
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
    else:
        print("xenapi: no terminal to ask for a password; use --password-stdin", file=sys.stderr)
        return 2
    users, _, audit = _auth(args)
    user = users.add(args.name, args.role, password, args.fullname or "")
    _audit(audit, "user add", user.name)
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
    """Delete a local user and its SSH keys; a running server ends its sessions within a second.

    Example: xenapi user del alice
    """
    users, keys, audit = _auth(args)
    users.remove(args.name)
    keys.remove_user(args.name)
    _audit(audit, "user del", args.name)
    print(f"deleted {args.name}")
    return 0


def cmd_user_key_add(args) -> int:
    """Register the SSH public key(s) of FILE (OpenSSH format, - for stdin) for the built-in SSH server.

    Example: xenapi user key add alice ~alice/.ssh/id_ed25519.pub
    """
    from auth.keys import SSHKeyError
    text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    _, keys, audit = _auth(args)
    try:
        added = keys.add(args.name, text)
    except SSHKeyError as e:
        raise SSHKeyError(f"{args.file}: {e}") from e      # the parser names the line, not the file
    for key in added:
        _audit(audit, "user key add", args.name, key.fingerprint)
        print(f"added {key.fingerprint} {key.type} {key.comment}".rstrip())
    return 0


def cmd_user_key_list(args) -> int:
    """List a user's SSH keys: fingerprint, type, comment.

    Example: xenapi user key list alice
    """
    for key in _auth(args)[1].of(args.name):
        print(f"{key.fingerprint}\t{key.type}\t{key.comment}")
    return 0


def cmd_user_key_del(args) -> int:
    """Revoke one of a user's SSH keys by its fingerprint (as `user key list` shows it).

    Example: xenapi user key del alice SHA256:2KZxr5VZr0WKS9Xw1fOcWPUmfLQ7E7nEhr3cMEtOBJc
    """
    _, keys, audit = _auth(args)
    keys.remove(args.name, args.fingerprint)
    _audit(audit, "user key del", args.name, args.fingerprint)
    print(f"deleted {args.fingerprint}")
    return 0


def cmd_stdio(args) -> int:
    """Bare Xen-API on stdin/stdout (docs/ssh.md): XML-RPC documents or JSON-RPC lines in, one
    response per request out, relayed through the running server's unix socket.

    Example: cat calls.xml | xenapi stdio --user alice --state /var/lib/xenapi
    authorized_keys: command="/usr/local/bin/xenapi stdio --user alice",restrict ssh-ed25519 AAAA...
    """
    from xenapi.transport.stdio import relay
    path = _config(args).unix_socket_path()
    if not path:
        print("xenapi stdio: the server has no unix socket (unix_socket = off)", file=sys.stderr)
        return 1
    return relay(path, args.user)


def _command(sub, name: str, func, common: argparse.ArgumentParser, help: str | None = None):
    """A subcommand running ``func``: its docstring (with the Example) is the description."""
    cmd = sub.add_parser(name, parents=[common], help=help or func.__doc__.split("\n")[0], description=func.__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.set_defaults(func=func)
    return cmd


def parser() -> argparse.ArgumentParser:
    from auth.users import ROLES
    top = argparse.ArgumentParser(prog="xenapi", description="A Xen-API server for libvirt hosts.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="settings file (see xenapi.conf)")
    common.add_argument("--state", metavar="DIR", help="directory of the SQLite database")
    sub = top.add_subparsers(dest="command", required=True)

    serve = _command(sub, "serve", cmd_serve, common, "run the server")
    serve.add_argument("--listen", metavar="HOST:PORT", help="HTTP address, HTTPS with --tls-* (default 127.0.0.1:8080)")
    serve.add_argument("--libvirt", metavar="URI", action="append",
                       help="a libvirt host URI, or auto (this machine's: xen:///system or qemu:///system); "
                            "repeat for more hosts")
    serve.add_argument("--unix-socket", metavar="PATH", help="also serve HTTP on this unix socket")
    serve.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate (chain)")
    serve.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    serve.add_argument("--tls-self-signed", action="store_true",
                       help="serve HTTPS with STATE/tls/server.{crt,key}, made on first start")
    serve.add_argument("--ssh-listen", metavar="HOST:PORT", help="run the built-in SSH server (docs/ssh.md)")
    serve.add_argument("-v", "--verbose", action="store_true", help="log every call, reads too")

    user = sub.add_parser("user", help="manage local users").add_subparsers(dest="user_command", required=True)
    add = _command(user, "add", cmd_user_add, common, "add a user")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--fullname")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    _command(user, "list", cmd_user_list, common, "list users")
    _command(user, "del", cmd_user_del, common, "delete a user").add_argument("name")
    key = user.add_parser("key", help="manage users' SSH keys").add_subparsers(dest="key_command", required=True)
    for name, func, positional in (("add", cmd_user_key_add, ("name", "file")), ("list", cmd_user_key_list, ("name",)),
                                   ("del", cmd_user_key_del, ("name", "fingerprint"))):
        cmd = _command(key, name, func, common)
        for arg in positional:
            cmd.add_argument(arg)

    stdio = _command(sub, "stdio", cmd_stdio, common, "Xen-API requests on stdin, responses on stdout")
    stdio.add_argument("--user", metavar="NAME", help="the stream's user, authenticated by the caller (SSH)")
    stdio.add_argument("--unix-socket", metavar="PATH", help="the server's unix socket (default: as the server)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command in ("user", "stdio"):
        # Files these make (a first database) are the account's alone.  Not for serve: the server
        # gives its secrets explicit modes, and some of what it makes must stay readable (an LXC
        # container's root directory is the container's "/").
        os.umask(0o077)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:         # bad input and refusals (UserError, SSHKeyError): one line
        print(f"xenapi: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
