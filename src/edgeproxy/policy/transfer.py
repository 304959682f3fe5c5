"""``config export`` / ``config import``: the whole dynamic configuration as one JSON document.

For moving a configuration between edges of a pool (SPEC §3: the dialback secret must be shared
by every edge of a pool, so it is included — treat the file as a secret). The document is::

    {"format": "edgeproxy-policy", "version": 1,
     "configuration": {"gateway": {...}, "partners": [...], "policies": [...], "users": [...]}}

with the field names of ``--json`` output (kebab-case). Import validates the whole document
first (the same rules as the commands), then replaces the stored configuration in one write
transaction: an invalid document changes nothing.
"""

from __future__ import annotations

import msgspec

from edgeproxy.policy.model import Configuration
from edgeproxy.policy.validation import ChangeRefused

FORMAT = "edgeproxy-policy"
VERSION = 1


class ExportDocument(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    configuration: Configuration
    format: str = FORMAT
    version: int = VERSION


_encoder = msgspec.json.Encoder(order="deterministic")
_decoder = msgspec.json.Decoder(ExportDocument)


def export_bytes(config: Configuration) -> bytes:
    """Serialise a configuration (deterministic key order, pretty-printed, newline-terminated)."""
    raw = _encoder.encode(ExportDocument(configuration=config))
    return msgspec.json.format(raw, indent=2) + b"\n"


def import_bytes(data: bytes) -> Configuration:
    """Parse an export document; raise ChangeRefused naming what is wrong with it."""
    try:
        document = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ChangeRefused(f"refused: not an edgeproxy export document: {exc}") from None
    if document.format != FORMAT or document.version != VERSION:
        raise ChangeRefused(
            f"refused: unsupported export format {document.format!r} version {document.version}"
        )
    return document.configuration
