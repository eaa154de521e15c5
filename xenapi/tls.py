"""HTTPS for ``xenapi serve``: the server's TLS context, and a self-signed pair made once.

The settings (xenapi.conf ``[tls]``): ``cert`` and ``key`` name PEM files; when they are empty
and ``self_signed`` is on, the server uses ``<state>/tls/server.crt`` and ``server.key``, making
them on first start (as xapi makes its own self-signed certificate on first boot) and reusing them
afterwards, so clients that pinned its fingerprint keep working across restarts.

Keys are ECDSA P-256: every TLS 1.2+ client has it, and making one takes microseconds where RSA
takes a second.  The context accepts TLS 1.2 and 1.3 only, with Python's default cipher list
(forward-secret AEAD ciphers at OpenSSL security level 2).

Every failure the operator can fix (a missing file, a key that does not match, a state directory
we cannot write) is a :class:`TLSError` -- a ValueError, which ``xenapi`` prints as one line.
"""
from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["TLSError", "Pair", "server_context", "self_signed_pair", "fingerprint", "context_for"]

VALID_DAYS = 3650                      # xapi's self-signed certificate lasts ten years too
CERT_NAME, KEY_NAME = "server.crt", "server.key"


class TLSError(ValueError):
    """A TLS setting the server cannot use; the message says which file and why."""


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def server_context(pair: Pair) -> ssl.SSLContext:
    """A server-side context for ``pair``: TLS 1.2 or newer, no client certificates."""
    for what, path in (("certificate", pair.cert), ("key", pair.key)):
        if not path.is_file():
            raise TLSError(f"TLS {what} file {path} does not exist or is not a file")
        if not os.access(path, os.R_OK):
            raise TLSError(f"TLS {what} file {path} is not readable")
    _check_pair(pair)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(pair.cert, pair.key)
    except ssl.SSLError as e:
        raise TLSError(f"cannot use TLS certificate {pair.cert} with key {pair.key}: "
                       f"{e.reason or e.strerror or e}") from None
    return context


def _check_pair(pair: Pair) -> None:
    """Name what is wrong in words (OpenSSL says "PEM lib" or "NO_CERTIFICATE_ASSIGNED")."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    try:
        certificate = x509.load_pem_x509_certificates(pair.cert.read_bytes())[0]
    except ValueError:
        raise TLSError(f"TLS certificate file {pair.cert} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    except TypeError:
        raise TLSError(f"TLS key file {pair.key} is encrypted; give an unencrypted key") from None
    except ValueError:
        raise TLSError(f"TLS key file {pair.key} holds no PEM private key") from None
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*public) != certificate.public_key().public_bytes(*public):
        raise TLSError(f"TLS key {pair.key} does not belong to the certificate {pair.cert}")


def fingerprint(cert: Path) -> str:
    """The certificate's SHA-256 fingerprint as ``AB:CD:...``, what clients pin."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def self_signed_pair(directory: Path, names: list[str]) -> Pair:
    """``directory/server.{crt,key}``, made now for ``names`` if the certificate is missing.

    A key without its certificate is what an interrupted first start leaves: it is replaced.
    A certificate without its key cannot serve and replacing it would change what clients
    pinned, so that is an error for the operator to settle.
    """
    pair = Pair(directory / CERT_NAME, directory / KEY_NAME)
    if pair.cert.exists():
        if not pair.key.exists():
            raise TLSError(f"{pair.cert} exists but its key {pair.key} does not; restore the key, "
                           f"or remove the certificate to have a new pair made")
        return pair
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_pem, cert_pem = _make_pair(names)
        _write_new(pair.key, key_pem, 0o600)        # the key first: the certificate marks completion
        _write_new(pair.cert, cert_pem, 0o644)
    except OSError as e:
        raise TLSError(f"cannot write a self-signed TLS pair into {directory}: {e.strerror or e}") from None
    log.info("event=tls-self-signed-created cert=%s names=%s", pair.cert, ",".join(names))
    return pair


def context_for(config) -> ssl.SSLContext | None:
    """The HTTPS context the settings ask for, or None for plain HTTP."""
    if config.tls_cert or config.tls_key:
        if not (config.tls_cert and config.tls_key):
            raise TLSError("TLS needs both a certificate (tls_cert) and a key (tls_key)")
        pair = Pair(Path(config.tls_cert), Path(config.tls_key))
    elif config.tls_self_signed:
        if config.state == ":memory:":
            raise TLSError("tls_self_signed keeps its pair in the state directory; "
                           "give a state directory or tls_cert and tls_key")
        pair = self_signed_pair(Path(config.state) / "tls", subject_names(config.listen))
    else:
        return None
    context = server_context(pair)
    log.info("event=tls cert=%s sha256=%s", pair.cert, fingerprint(pair.cert))
    return context


def subject_names(listen: str = "") -> list[str]:
    """localhost, the loopback addresses, this machine's names and the listen host if specific."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()]
    host = listen.rpartition(":")[0].strip("[]")
    if host and host not in ("0.0.0.0", "::"):
        names.append(host)
    return list(dict.fromkeys(n for n in names if n))


# -- making a pair ----------------------------------------------------------------------------

def _make_pair(names: list[str]) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname() or "localhost"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xenapi self-signed")])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))     # tolerate a little clock skew
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def _general_name(name: str):
    from cryptography import x509
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` through a private temporary file and a rename, so that no
    reader ever sees half a file and the key is never readable by others, not even briefly."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
