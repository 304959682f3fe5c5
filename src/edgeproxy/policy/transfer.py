"""``config export`` / ``config import``: the whole dynamic configuration as one JSON document.

For moving a configuration between edges of a pool, or keeping a copy. The document is::

    {"configuration": {"gateway": {...}, "partners": [...], "policies": [...], "users": [...]},
     "format": "edgeproxy-policy", "version": 1}

with the field names of ``--json`` output (kebab-case).

Secrets (issue 14): the gateway's ``dialback-secret`` and each user's ``credentials`` (SIP digest
HA1 hashes, each enough to register as that user) are written only with ``include_secrets``
(``config export --include-secrets``); otherwise the keys are left out altogether, so that the
document can be shared, diffed or kept in version control. An edge joining a pool needs the
pool's dialback secret (SPEC §3): export it with ``--include-secrets`` and treat the file as a
secret. The absence of a key is what says "not in this document":

* no ``dialback-secret`` in ``gateway`` → import keeps the stored dialback secret;
* no ``credentials`` in a user → import keeps the credentials the store holds for that SIP
  address (none for a user the store does not have); ``"credentials": []`` removes them.

Import parses the document first (``import_bytes``: JSON, format, version), then
``ImportDocument.complete`` fills the left-out secrets from the stored configuration and
type-checks everything; the caller validates the result (the same rules as the commands) and
replaces the stored configuration in one write transaction: an invalid document changes nothing.
"""

from __future__ import annotations

from typing import Any

import msgspec

from edgeproxy.policy.model import Configuration
from edgeproxy.policy.names import InvalidName, normalize_sip_address
from edgeproxy.policy.validation import ChangeRefused

FORMAT = "edgeproxy-policy"
VERSION = 1
DIALBACK_SECRET_KEY = "dialback-secret"
CREDENTIALS_KEY = "credentials"


class _Document(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    configuration: dict[str, Any]
    format: str = FORMAT
    version: int = VERSION


_decoder = msgspec.json.Decoder(_Document)


def export_bytes(config: Configuration, *, include_secrets: bool = False) -> bytes:
    """Serialise a configuration (fields in model order, pretty-printed, newline-terminated);
    without ``include_secrets`` the dialback secret and the users' credentials are left out."""
    data: dict[str, Any] = msgspec.to_builtins(config)
    if not include_secrets:
        data["gateway"].pop(DIALBACK_SECRET_KEY, None)
        for user in data.get("users", ()):
            user.pop(CREDENTIALS_KEY, None)
    raw = msgspec.json.encode({"configuration": data, "format": FORMAT, "version": VERSION})
    return msgspec.json.format(raw, indent=2) + b"\n"


class ImportDocument:
    """A parsed export document whose secrets may be left out (see the module docstring)."""

    def __init__(self, configuration: dict[str, Any]) -> None:
        self._data = configuration

    @property
    def has_dialback_secret(self) -> bool:
        gateway = self._data.get("gateway")
        return isinstance(gateway, dict) and DIALBACK_SECRET_KEY in gateway

    @property
    def users_without_credentials(self) -> int:
        """How many users leave their credentials out (kept from the store on import)."""
        users = self._data.get("users") or []
        return sum(1 for u in users if isinstance(u, dict) and CREDENTIALS_KEY not in u)

    def complete(self, stored: Configuration) -> Configuration:
        """The document's configuration, with each left-out secret taken from ``stored``;
        ``ChangeRefused`` naming the field if it is not a valid configuration."""
        data = dict(self._data)
        gateway = data.get("gateway")
        if isinstance(gateway, dict) and DIALBACK_SECRET_KEY not in gateway:
            data["gateway"] = {**gateway, DIALBACK_SECRET_KEY: stored.gateway.dialback_secret}
        users = data.get("users")
        if isinstance(users, list):
            stored_credentials = {u.sip: u.credentials for u in stored.users}
            data["users"] = [_with_stored_credentials(u, stored_credentials) for u in users]
        try:
            return msgspec.convert(data, Configuration)
        except msgspec.ValidationError as exc:
            raise ChangeRefused(f"refused: not an edgeproxy export document: {exc}") from None


def _with_stored_credentials(user: Any, stored: dict[str, Any]) -> Any:
    if not isinstance(user, dict) or CREDENTIALS_KEY in user or not isinstance(user.get("sip"), str):
        return user  # left for the type check (or already complete)
    try:
        sip = normalize_sip_address(user["sip"])
    except InvalidName:
        return user  # validation refuses it, naming the address
    return {**user, CREDENTIALS_KEY: msgspec.to_builtins(stored.get(sip, ()))}


def import_bytes(data: bytes) -> ImportDocument:
    """Parse an export document; raise ChangeRefused naming what is wrong with it."""
    try:
        document = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ChangeRefused(f"refused: not an edgeproxy export document: {exc}") from None
    if document.format != FORMAT or document.version != VERSION:
        raise ChangeRefused(
            f"refused: unsupported export format {document.format!r} version {document.version}"
        )
    return ImportDocument(document.configuration)
