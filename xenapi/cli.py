"""The ``xenapi`` command: run the server, manage its local users, and move disks in and out.

Example:
    xenapi serve --listen 127.0.0.1:8080 --state ./state
    echo s3cret | xenapi user add alice --role vm-operator --password-stdin --state ./state
    echo s3cret | xenapi vdi import --user alice --password-stdin --sr "Local storage" disk.qcow2
"""
from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

from xenapi import config as configuration

if TYPE_CHECKING:
    import paramiko

    from xenapi.server import Server
    from xenapi.transport.api import Api
    from xenapi.transport.ssh import SSHServer

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
    from xenapi.server import Server
    from xenapi.transport.http import HTTPServer

    cfg = _config(args)
    ssl_context = tls.context_for(cfg)       # before anything starts: a bad setting stops here
    server = Server(cfg)
    generated = server.users.ensure_admin(os.environ.get("XENAPI_ADMIN_PASSWORD"))
    if generated:
        print(f"created user root (pool-admin) with password: {generated}", file=sys.stderr, flush=True)
    server.start()
    api = http_api(server)
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
        from xenapi.transport.ssh import host_key
        listeners.append(ssh_server(server, cfg.ssh_address(), host_key(cfg.ssh_host_key_path()),
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


def http_api(server: Server) -> Api:
    """The HTTP front of ``server``: the API, the stream upgrade, /metrics and the VDI transfers,
    each handed the parts of the server it uses."""
    from functools import partial

    from xenapi.context import Context
    from xenapi.exporter import Exporter
    from xenapi.services.transfer import TransferParts
    from xenapi.transport.api import Api
    from xenapi.wire import Limits

    transfers = TransferParts(sessions=server.sessions, make_context=partial(Context, server.services),
                              registry=server.registry, access=server.access, store=server.store,
                              storage=server.storage, hosts=server.hosts, reconciler=server.reconciler,
                              tasks=server.tasks, audit=server.audit)
    return Api(server.dispatcher, Limits(max_body_bytes=server.config.max_body_bytes),
               sessions=server.sessions, users=server.users,
               exporter=Exporter(server.store, server.metrics, server.sessions, public=server.config.metrics_public),
               transfers=transfers)


def ssh_server(server: Server, listen: tuple[str, int], key: paramiko.PKey, *, allow_passwords: bool = False,
               max_connections: int = 800) -> SSHServer:
    """The built-in SSH server in front of ``server``, handed the parts of the server it uses."""
    from xenapi.transport.ssh import SSHServer
    from xenapi.wire import Limits

    return SSHServer(listen, key, dispatcher=server.dispatcher, sessions=server.sessions, keys=server.keys,
                     audit=server.audit, limits=Limits(max_body_bytes=server.config.max_body_bytes),
                     allow_passwords=allow_passwords, max_connections=max_connections)


def _auth(args):
    """(Users, Keys, AuditLog) on the state's database: the command line writes it beside a running server."""
    from auth.audit import AuditLog
    from auth.keys import Keys
    from auth.users import Users
    from classes import REGISTRY
    from xenapi.state.store import Store
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
    from xenapi.state.store import derived_ref, derived_uuid
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


# ------------------------------------------------------------------ vdi import / export ---
# These talk to the running server as a Xen-API client would (xenapi.client over --url, a user's
# password): the data goes through PUT /import_raw_vdi and GET /export_raw_vdi, which need a
# session, and a session needs a user's credentials (the unix socket's stream identity is for
# XML, not for these HTTP routes).

_TRANSFER_CHUNK = 1 << 20
_CONTINUE_WAIT = 10.0           # seconds to wait for "100 Continue" before sending the body anyway


def _server_url(args) -> str:
    """--url, else the server this configuration describes (its listen address, https with TLS)."""
    if args.url:
        return args.url
    cfg = _config(args)
    host, port = cfg.listen_address()
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    scheme = "https" if cfg.tls_cert or cfg.tls_self_signed else "http"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def _cafile(args) -> str | None:
    if args.cafile or args.url:
        return args.cafile
    cfg = _config(args)                     # the server's own self-signed certificate, when it is here
    path = os.path.join(cfg.state, "tls", "server.crt")
    return path if cfg.tls_self_signed and os.path.isfile(path) else None


def _login(args):
    """A xenapi.client Session logged in as --user; (session, url, connector for raw HTTP)."""
    from xenapi.client import Session
    from xenapi.client.connections import connector_for
    url = _server_url(args)
    if not url.startswith(("http://", "https://", "unix://")):
        raise ValueError(f"{url}: the disk transfers need http://, https:// or unix://")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.user} at {url}: ")
    else:
        raise ValueError("no terminal to ask for a password; use --password-stdin")
    options = {"ignore_ssl": args.no_verify, "cafile": _cafile(args)}
    session = Session(url, **options)
    session.xenapi.login_with_password(args.user, password, "2.21", "xenapi-cli")
    return session, connector_for(url, **options)


class _Progress:
    """``  37%  123.4/333.0 MiB`` on stderr, redrawn at most five times a second (a terminal only)."""

    def __init__(self, total: int | None, what: str):
        self.total, self.what, self.done, self.shown = total, what, 0, 0.0
        self.live = sys.stderr.isatty()

    def add(self, n: int) -> None:
        self.done += n
        if self.live and time.monotonic() - self.shown >= 0.2:
            self.shown = time.monotonic()
            self._draw()

    def _draw(self) -> None:
        mib = self.done / (1 << 20)
        if self.total:
            line = f"{self.what} {100 * self.done // self.total:3d}%  {mib:.1f}/{self.total / (1 << 20):.1f} MiB"
        else:
            line = f"{self.what} {mib:.1f} MiB"
        print(f"\r{line}", end="", file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.live:
            self._draw()
            print(file=sys.stderr, flush=True)


def _image_format(path: str) -> str:
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == b"QFI\xfb" else "raw"


def _virtual_size(path: str, fmt: str) -> int:
    """The size the disk must have: a qcow2's virtual size (qemu-img info, else its header), a raw
    file's size, rounded up to whole 512-byte sectors."""
    if fmt == "qcow2":
        import json
        import shutil
        import struct
        import subprocess
        if shutil.which("qemu-img"):
            run = subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2", path],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                raise ValueError(f"{path}: {run.stderr.strip() or 'qemu-img info failed'}")
            info = json.loads(run.stdout)
            if info.get("backing-filename"):
                raise ValueError(f"{path} has a backing file: flatten it first (qemu-img convert -O qcow2)")
            size = int(info["virtual-size"])
        else:
            with open(path, "rb") as f:
                head = f.read(32)
            if len(head) < 32 or struct.unpack(">Q", head[8:16])[0]:
                raise ValueError(f"{path}: not a qcow2 image without backing file")
            size = struct.unpack(">Q", head[24:32])[0]
    else:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)       # a block device too
    if size <= 0:
        raise ValueError(f"{path} is empty")
    return -(-size // 512) * 512


def _transfer_path(route: str, vdi: str, session: str, fmt: str) -> str:
    from urllib.parse import urlencode
    return f"/{route}?" + urlencode({"vdi": vdi, "session_id": session, "format": fmt})


def _answer_text(status: int, reason: str, body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    return f"HTTP {status} {reason}" + (f": {text}" if text else "")


def _put_file(connector, target: str, path: str, progress: _Progress) -> tuple[int, str]:
    """PUT the file to ``target`` with ``Expect: 100-continue``, so a refusal comes before the body
    is sent; (status, text of the answer)."""
    import select
    size = os.path.getsize(path) if os.path.isfile(path) else None
    conn = connector.factory(300.0)
    try:
        conn.putrequest("PUT", target, skip_accept_encoding=True)
        conn.putheader("Content-Type", "application/octet-stream")
        if size is not None:
            conn.putheader("Content-Length", str(size))
        else:
            conn.putheader("Transfer-Encoding", "chunked")
        conn.putheader("Expect", "100-continue")
        conn.endheaders()
        sock = conn.sock
        if select.select([sock], [], [], _CONTINUE_WAIT)[0]:
            status, reason, body = _read_interim(sock)
            if status != 100:                   # refused before the body: nothing more to send
                return status, _answer_text(status, reason, body)
        with open(path, "rb") as f:
            while data := f.read(_TRANSFER_CHUNK):
                conn.send(data if size is not None else b"%x\r\n%s\r\n" % (len(data), data))
                progress.add(len(data))
        if size is None:
            conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        return response.status, _answer_text(response.status, response.reason, response.read())
    finally:
        conn.close()


def _read_interim(sock) -> tuple[int, str, bytes]:
    """The answer that came before the body: a 100 Continue, or a final one (with its body)."""
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(1)                     # byte by byte: nothing past the head may be taken
        if not data:
            raise OSError("the server closed the connection")
        head += data
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status, reason = int(parts[1]), parts[2] if len(parts) > 2 else ""
    length = next((int(v) for k, _, v in (line.partition(":") for line in lines[1:])
                   if k.strip().lower() == "content-length" and v.strip().isdigit()), 0)
    body = b""
    while status != 100 and len(body) < length and (data := sock.recv(length - len(body))):
        body += data
    return status, reason, body


def _find_sr(x, wanted: str | None) -> str:
    if not wanted:
        sr = x.pool.get_default_SR(x.pool.get_all()[0])
        if sr == "OpaqueRef:NULL":
            raise ValueError("the pool has no default SR: name one with --sr")
        return sr
    try:
        return x.SR.get_by_uuid(wanted)
    except Exception:
        found = x.SR.get_by_name_label(wanted)
    if len(found) != 1:
        raise ValueError(f"{'no' if not found else 'more than one'} SR with uuid or name {wanted!r}")
    return found[0]


def cmd_vdi_import(args) -> int:
    """Create a VDI of FILE's size in an SR and upload FILE into it (PUT /import_raw_vdi); prints the
    new VDI's uuid.  FILE is a raw disk image (an ISO too) or a qcow2 image without backing file
    (found by its content; --format to say so); the VDI takes the image's virtual size.  If the
    upload fails, the VDI is destroyed again.

    Example: echo s3cret | xenapi vdi import --user root --password-stdin --sr "Local storage" --name web-disk web.qcow2
    Remote:  xenapi vdi import --url https://xen1.example:443 --cafile xen1.crt --user alice debian.iso
    """
    from xenapi.client import Failure
    fmt = args.format or _image_format(args.file)
    size = _virtual_size(args.file, fmt)
    session, connector = _login(args)
    x = session.xenapi
    try:
        vdi = x.VDI.create({"SR": _find_sr(x, args.sr), "virtual_size": str(size), "type": "user",
                            "sharable": False, "read_only": False, "other_config": {},
                            "name_label": args.name or os.path.basename(args.file),
                            "name_description": f"imported from {os.path.basename(args.file)} by xenapi vdi import"})
        progress = _Progress(os.path.getsize(args.file) if os.path.isfile(args.file) else None, "uploading")
        try:
            status, text = _put_file(connector, _transfer_path("import_raw_vdi", vdi, session.handle, fmt),
                                     args.file, progress)
        except BaseException:
            x.VDI.destroy(vdi)
            raise
        progress.end()
        if status != 200:
            x.VDI.destroy(vdi)
            print(f"xenapi vdi import: {text}", file=sys.stderr)
            return 1
        print(x.VDI.get_uuid(vdi))
        return 0
    except Failure as e:
        print(f"xenapi vdi import: {' '.join(map(str, e.details))}", file=sys.stderr)
        return 1
    finally:
        session.logout()


def cmd_vdi_export(args) -> int:
    """Download a VDI's data into FILE (GET /export_raw_vdi): the disk's bytes (raw), or a qcow2
    image (--format qcow2; the default when FILE ends in .qcow2).  FILE - writes to stdout.  A
    download that fails leaves no FILE behind.

    Example: echo s3cret | xenapi vdi export --user root --password-stdin 1b2c3d4e-... backup.qcow2
    """
    from xenapi.client import Failure
    fmt = args.format or ("qcow2" if args.file.endswith(".qcow2") else "raw")
    session, connector = _login(args)
    x = session.xenapi
    partial = None
    try:
        vdi = args.vdi if args.vdi.startswith("OpaqueRef:") else x.VDI.get_by_uuid(args.vdi)
        conn = connector.factory(300.0)
        try:
            conn.request("GET", _transfer_path("export_raw_vdi", vdi, session.handle, fmt))
            response = conn.getresponse()
            if response.status != 200:
                print(f"xenapi vdi export: {_answer_text(response.status, response.reason, response.read())}",
                      file=sys.stderr)
                return 1
            length = response.getheader("Content-Length")
            progress = _Progress(int(length) if length and length.isdigit() else None, "downloading")
            if args.file == "-":
                out = sys.stdout.buffer
            else:
                partial = f"{args.file}.part"
                out = open(partial, "wb")
            with out if args.file != "-" else _keep_open(out):
                while data := response.read(_TRANSFER_CHUNK):
                    out.write(data)
                    progress.add(len(data))
            progress.end()
        finally:
            conn.close()
        if partial:
            os.replace(partial, args.file)
            partial = None
        return 0
    except Failure as e:
        print(f"xenapi vdi export: {' '.join(map(str, e.details))}", file=sys.stderr)
        return 1
    finally:
        if partial and os.path.exists(partial):
            os.unlink(partial)
        session.logout()


class _keep_open:
    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self.f

    def __exit__(self, *exc):
        self.f.flush()
        return False


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

    client = argparse.ArgumentParser(add_help=False, parents=[common])
    client.add_argument("--url", help="the server (default: the one --config describes, e.g. http://127.0.0.1:8080; "
                                      "https://, unix:///path too)")
    client.add_argument("--user", default="root", help="the local user to log in as (default root)")
    client.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    client.add_argument("--cafile", metavar="FILE", help="trust this certificate (an https server's self-signed one)")
    client.add_argument("--no-verify", action="store_true", help="do not check an https server's certificate")
    vdi = sub.add_parser("vdi", help="move a disk's data in and out").add_subparsers(dest="vdi_command", required=True)
    vdi_import = _command(vdi, "import", cmd_vdi_import, client, "upload a disk image into a new VDI")
    vdi_import.add_argument("--sr", metavar="SR", help="the SR's uuid or name (default: the pool's default SR)")
    vdi_import.add_argument("--name", metavar="LABEL", help="the VDI's name (default: the file's name)")
    vdi_import.add_argument("--format", choices=("raw", "qcow2"), help="FILE's format (default: found from its content)")
    vdi_import.add_argument("file", metavar="FILE")
    vdi_export = _command(vdi, "export", cmd_vdi_export, client, "download a VDI's data into a file")
    vdi_export.add_argument("--format", choices=("raw", "qcow2"),
                            help="raw (the disk's bytes) or qcow2 (default: qcow2 if FILE ends in .qcow2, else raw)")
    vdi_export.add_argument("vdi", metavar="VDI-UUID")
    vdi_export.add_argument("file", metavar="FILE", help="where to write (- for stdout)")

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
    from http.client import HTTPException
    from xenapi.client.session import Failure
    try:
        return args.func(args)
    except (ValueError, OSError) as e:         # bad input and refusals (UserError, SSHKeyError): one line
        print(f"xenapi: {e}", file=sys.stderr)
        return 1
    except Failure as e:                       # the server's refusal (vdi import/export)
        print(f"xenapi: {' '.join(map(str, e.details))}", file=sys.stderr)
        return 1
    except HTTPException as e:                 # a transfer cut short (vdi import/export)
        print(f"xenapi: the transfer failed: {e!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
