"""Users' SSH public keys, for the built-in SSH server.  Kept in SQLite beside the users.

A key belongs to one user: its SHA-256 fingerprint (as ``ssh-keygen -l`` prints it) is the
primary key.  Lookups read the database every time, so ``xenapi user key add|del`` run from the
command line takes effect at the next connection while the server runs.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time
from dataclasses import dataclass

import sqlite_utils

# OpenSSH public key types a key may have (the built-in server's paramiko verifies these).
KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")


@dataclass(frozen=True)
class PublicKey:
    user: str
    type: str
    blob: bytes                           # the key in SSH wire format
    comment: str
    fingerprint: str
    added: float = 0.0

    @property
    def openssh(self) -> str:
        """The key as one ``authorized_keys``-style line."""
        line = f"{self.type} {base64.b64encode(self.blob).decode('ascii')}"
        return f"{line} {self.comment}" if self.comment else line


class SSHKeyError(ValueError):
    """A key file that cannot be used, or a key/user that does not exist."""


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a key's wire form."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def parse(text: str) -> list[tuple[str, bytes, str]]:
    """(type, blob, comment) of each key line of an OpenSSH public key file (``id_ed25519.pub``,
    or ``authorized_keys`` lines without options).  Blank lines and ``#`` comments are skipped."""
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 2 or parts[0] not in KEY_TYPES:
            raise SSHKeyError(f"line {number}: not an OpenSSH public key (types: {', '.join(KEY_TYPES)})")
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raise SSHKeyError(f"line {number}: the key is not valid base64") from None
        if _wire_type(blob) != parts[0] or not _loads(parts[0], blob):
            raise SSHKeyError(f"line {number}: the key data is not a {parts[0]} key")
        keys.append((parts[0], blob, parts[2] if len(parts) > 2 else ""))
    if not keys:
        raise SSHKeyError("no public key found")
    return keys


def _loads(kind: str, blob: bytes) -> bool:
    """Whether paramiko (which verifies the signatures at login) reads the key material back
    unchanged: it pads a truncated key instead of refusing it."""
    import paramiko                       # here, not at import: it costs start-up a tenth of a second
    try:
        return paramiko.PKey.from_type_string(kind, blob).asbytes() == blob
    except Exception:                     # paramiko raises a variety (SSHException, ValueError, ...)
        return False


def _wire_type(blob: bytes) -> str | None:
    """The type name a wire-format key starts with (a uint32 length, then the name)."""
    if len(blob) < 4:
        return None
    n = int.from_bytes(blob[:4], "big")
    return blob[4:4 + n].decode("ascii", "replace") if 0 < n <= 64 and len(blob) >= 4 + n else None


class Keys:
    def __init__(self, db: sqlite_utils.Database, lock: threading.RLock):
        self._db = db
        self._lock = lock                 # the connection's lock: shared with the store and Users
        db["ssh_keys"].create({"fingerprint": str, "user": str, "type": str, "blob": bytes, "comment": str,
                               "added": float}, pk="fingerprint", if_not_exists=True)
        db["ssh_keys"].create_index(["user"], if_not_exists=True)

    def add(self, user: str, text: str) -> list[PublicKey]:
        """Register every key of ``text`` (a public key file) for ``user``; all or none."""
        parsed = parse(text)
        with self._lock:
            if not self._user_exists(user):
                raise SSHKeyError(f"no user {user!r}")
            rows = []
            for kind, blob, comment in parsed:
                fp = fingerprint(blob)
                owner = self.owner(fp)
                if owner is not None:
                    raise SSHKeyError(f"key {fp} is already registered to {owner}")
                rows.append({"fingerprint": fp, "user": user, "type": kind, "blob": blob,
                             "comment": comment, "added": time.time()})
            self._db["ssh_keys"].insert_all(rows)
        return [self._key(r) for r in rows]

    def remove(self, user: str, fp: str) -> None:
        with self._lock:
            if self.owner(fp) != user:
                raise SSHKeyError(f"user {user!r} has no key {fp}")
            self._db["ssh_keys"].delete(fp)

    def remove_user(self, user: str) -> int:
        """Forget every key of ``user`` (the user is being deleted)."""
        with self._lock:
            return self._db.execute("DELETE FROM ssh_keys WHERE user = ?", [user]).rowcount

    def of(self, user: str) -> list[PublicKey]:
        with self._lock:
            rows = list(self._db.query("SELECT * FROM ssh_keys WHERE user = ? ORDER BY added", [user]))
        return [self._key(r) for r in rows]

    def owner(self, fp: str) -> str | None:
        with self._lock:
            rows = list(self._db.query("SELECT user FROM ssh_keys WHERE fingerprint = ?", [fp]))
        return rows[0]["user"] if rows else None

    def allows(self, user: str, blob: bytes) -> bool:
        """Whether the key ``blob`` (wire form) logs in as ``user``: registered to that user, who exists."""
        with self._lock:
            rows = list(self._db.query(
                "SELECT k.blob FROM ssh_keys k JOIN users u ON u.name = k.user "
                "WHERE k.fingerprint = ? AND k.user = ?", [fingerprint(blob), user]))
        return bool(rows) and rows[0]["blob"] == blob

    def _user_exists(self, user: str) -> bool:
        return bool(list(self._db.query("SELECT 1 FROM users WHERE name = ?", [user])))

    @staticmethod
    def _key(row: dict) -> PublicKey:
        return PublicKey(row["user"], row["type"], row["blob"], row["comment"], row["fingerprint"], row["added"])
