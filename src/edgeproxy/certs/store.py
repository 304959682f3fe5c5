"""Where the edge's certificate lives, and installing a new one.

The running edge loads ``tls.certificate`` (the leaf followed by its chain, the file form
``ssl.SSLContext.load_cert_chain`` wants) and ``tls.key`` from the configuration; relative paths
resolve against the configuration's directory (for the embedded default, ``./certs/``). Installing
writes those files plus ``chain.pem`` (the intermediates alone, for inspection) beside the
certificate, and ``edge-ca.pem`` / ``edge-ca.key`` for a self-signed lab CA.

Atomicity: every new file is first written completely to a temporary file in the same directory
(key files with mode 0600 from creation), fsync'ed, and only then moved over the old one with
``os.replace``. A refusal or a crash before that point leaves the installed files untouched; the
key is replaced before the certificate so that a reload between the two renames never pairs a
new certificate with an old key for longer than one rename.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgeproxy.certs.pem import write_atomic, write_temp
from edgeproxy.config import EdgeConfig


@dataclass(frozen=True)
class CertPaths:
    certificate: Path
    key: Path
    chain: Path
    ca_certificate: Path
    ca_key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> CertPaths:
        return cls(
            directory / "edge.pem",
            directory / "edge.key",
            directory / "chain.pem",
            directory / "edge-ca.pem",
            directory / "edge-ca.key",
        )


def configured_paths(config: EdgeConfig) -> CertPaths:
    cert = config.path(config.tls.certificate)
    return CertPaths(
        certificate=cert,
        key=config.path(config.tls.key),
        chain=cert.parent / "chain.pem",
        ca_certificate=cert.parent / "edge-ca.pem",
        ca_key=cert.parent / "edge-ca.key",
    )


def install_files(files: list[tuple[Path, bytes, int]]) -> None:
    """Install several files: all written to temporaries first, then renamed in list order."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data, mode in files:
            staged.append((write_temp(path.parent, path.name, data, mode), path))
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    for directory in {p.parent for p, _, _ in files}:
        _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- friendly names: recorded by `cert request`, shown by `cert show` --------------------------


def _names_file(config: EdgeConfig) -> Path:
    return config.state_dir / "certs" / "friendly-names.json"


def key_fingerprint(public_key_der: bytes) -> str:
    return hashlib.sha256(public_key_der).hexdigest()


def record_friendly_name(config: EdgeConfig, public_key_der: bytes, name: str) -> None:
    path = _names_file(config)
    names = _load_names(path)
    names[key_fingerprint(public_key_der)] = name
    write_atomic(path, json.dumps(names, indent=2, sort_keys=True).encode() + b"\n", 0o644)


def friendly_name(config: EdgeConfig, public_key_der: bytes) -> str | None:
    return _load_names(_names_file(config)).get(key_fingerprint(public_key_der))


def _load_names(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
