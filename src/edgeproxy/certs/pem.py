"""Reading and writing PEM files: certificate lists, private keys, atomic writes with a mode."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from edgeproxy.errors import EdgeproxyError

PrivateKey = (
    rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
)


class CertificateError(EdgeproxyError):
    """A certificate or key file cannot be used; the message says why."""


def load_certificates(data: bytes, source: str) -> list[x509.Certificate]:
    """Every certificate in a PEM (or a single DER) blob, in file order."""
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise CertificateError(f"{source}: not a certificate file ({exc})") from None
    if not certs:
        raise CertificateError(f"{source}: no certificate in file")
    return certs


def read_certificates(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read {path}: {exc.strerror}") from None
    return load_certificates(data, str(path))


def read_private_key(path: Path, passphrase: bytes | None = None) -> PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        if passphrase is None:
            raise CertificateError(
                f"key {path} is encrypted: pass --passphrase-file"
            ) from None
        raise CertificateError(f"key {path} is not encrypted, but a passphrase was given") from None
    except ValueError as exc:
        raise CertificateError(f"key {path}: cannot load private key ({exc})") from None
    if not isinstance(key, PrivateKey):
        raise CertificateError(f"key {path}: unsupported key type {type(key).__name__}")
    return key


def read_passphrase(path: str | None) -> bytes | None:
    """The first line of a passphrase file (None when no file was given)."""
    if path is None:
        return None
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read passphrase file {path}: {exc.strerror}") from None
    phrase = text.splitlines()[0] if text.strip() else b""
    if not phrase:
        raise CertificateError(f"passphrase file {path} is empty")
    return phrase


def certificates_pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def private_key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM (exportable), encrypted with the best available cipher when a passphrase is set."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def public_key_der(key_or_cert: PrivateKey | x509.Certificate | x509.CertificateSigningRequest) -> bytes:
    pub = key_or_cert.public_key()
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def write_temp(directory: Path, name: str, data: bytes, mode: int) -> Path:
    """Write ``data`` to a new temporary file beside ``name`` with ``mode`` from the start; fsync."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_atomic(path: Path, data: bytes, mode: int = 0o644, *, overwrite: bool = True) -> None:
    """Replace ``path`` atomically (temp file + os.replace); never a half-written file."""
    if not overwrite and path.exists():
        raise CertificateError(f"{path} exists; refusing to overwrite it (use --force)")
    tmp = write_temp(path.parent, path.name, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
