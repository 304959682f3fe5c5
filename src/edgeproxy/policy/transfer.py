"""``config export`` / ``config import``: the whole dynamic configuration as one JSON document.

For moving a configuration between edges of a pool, or keeping a copy. The document is::

    {"configuration": {"gateway": {...}, "partners": [...], "policies": [...], "users": [...]},
     "format": "edgeproxy-policy", "version": 1}

with the field names of ``--json`` output (kebab-case).

Secrets: the gateway's ``dialback-secret`` and each user's ``credentials`` (SIP digest
HA1 hashes, each enough to register as that user) are written only with ``include_secrets``
(``config export --include-secrets``); otherwise the keys are left out altogether, so that the
document can be shared, diffed or kept in version control. An edge joining a pool needs the
pool's dialback secret (docs/spec.md §3): export it with ``--include-secrets`` and treat the
file as a secret. The absence of a key is what says "not in this document":

* no ``dialback-secret`` in ``gateway`` → import keeps the stored dialback secret;
* no ``credentials`` in a user → import keeps the credentials the store holds for that SIP
  address (none for a user the store does not have); ``"credentials": []`` removes them.

Import parses the document first (``import_bytes``: JSON, format, version), then
``ImportDocument.complete`` fills the left-out secrets from the stored configuration, reads
Lync's spellings of the partner choices (``PublicVerified``, ``NotSupported``) and type-checks
every item, naming each problem's item and field in words; the caller validates the result
(the same rules as the commands) and replaces the stored configuration in one write
transaction: an invalid document changes nothing.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgspec

from edgeproxy.names import InvalidName, normalize_sip_address
from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
    User,
)
from edgeproxy.policy.validation import (
    item_label,
    problems_of,
    refuse,
    refuse_all,
    shown,
)

FORMAT = "edgeproxy-policy"
VERSION = 1
DIALBACK_SECRET_KEY = "dialback-secret"
CREDENTIALS_KEY = "credentials"
#: The sections of ``configuration``: (key, the model of one item, the field that names an item).
SECTIONS: tuple[tuple[str, type[msgspec.Struct], str], ...] = (
    ("partners", Partner, "domain"),
    ("policies", AccessPolicy, "identity"),
    ("users", User, "sip"),
)
#: Partner fields that also accept Lync's spellings (``PublicVerified``, ``NotSupported``).
_CHOICE_FIELDS: dict[str, type[PartnerType] | type[Negotiation]] = {
    "type": PartnerType,
    "tls": Negotiation,
    "sasl": Negotiation,
}
_TOP_KEYS = ("configuration", "format", "version")


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
        if not isinstance(users, list):
            return 0
        return sum(1 for u in users if isinstance(u, dict) and CREDENTIALS_KEY not in u)

    def complete(self, stored: Configuration) -> Configuration:
        """The document's configuration, with each left-out secret taken from ``stored`` and
        Lync's spellings of the partner choices replaced by ours; ``ChangeRefused`` listing every
        field that is not valid, in words and naming its item, if it is not a configuration."""
        data = dict(self._data)
        gateway = data.get("gateway")
        if isinstance(gateway, dict) and DIALBACK_SECRET_KEY not in gateway:
            data["gateway"] = {**gateway, DIALBACK_SECRET_KEY: stored.gateway.dialback_secret}
        users = data.get("users")
        if isinstance(users, list):
            stored_credentials = {u.sip: u.credentials for u in stored.users}
            data["users"] = [_with_stored_credentials(u, stored_credentials) for u in users]
        partners = data.get("partners")
        if isinstance(partners, list):
            data["partners"] = [_with_our_spellings(p) for p in partners]
        problems = configuration_problems(data)
        if problems:
            raise refuse_all(problems)
        try:
            return msgspec.convert(data, Configuration)
        except msgspec.ValidationError:  # pragma: no cover - configuration_problems checks all
            raise refuse("not a valid edgeproxy configuration") from None


def configuration_problems(data: dict[str, Any]) -> list[str]:
    """Every field of ``data`` (the ``configuration`` object) that is not valid, in words, each
    after where it is: ``gateway: …``, ``partners[2] (fabrikam.com): connection-limit: …``."""
    sections = ("gateway", *(key for key, _model, _name in SECTIONS))
    problems = [
        f"configuration: unknown section {shown(key)} (the sections are: {', '.join(sections)})"
        for key in data
        if key not in sections
    ]
    if "gateway" not in data:
        problems.append("gateway: missing (it is required)")
    else:
        problems += problems_of(data["gateway"], GatewaySettings, ("gateway",))
    for key, model, name_field in SECTIONS:
        items = data.get(key, [])
        if not isinstance(items, list):
            problems.append(f"{key}: must be a list, got {shown(items)}")
            continue
        for i, item in enumerate(items):
            name = item.get(name_field) if isinstance(item, dict) else None
            problems += problems_of(item, model, (item_label(key, i, name),))
    return problems


def _with_our_spellings(partner: Any) -> Any:
    """A partner object with ``Federated``, ``NotSupported`` … written as ours (``federated``,
    ``not-supported``); a value that names no choice is left for the type check to report."""
    if not isinstance(partner, dict):
        return partner
    fixed = dict(partner)
    for key, choice in _CHOICE_FIELDS.items():
        value = fixed.get(key)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                fixed[key] = choice.parse(value).value
    return fixed


def _with_stored_credentials(user: Any, stored: dict[str, Any]) -> Any:
    if not isinstance(user, dict) or CREDENTIALS_KEY in user or not isinstance(user.get("sip"), str):
        return user  # left for the type check (or already complete)
    try:
        sip = normalize_sip_address(user["sip"])
    except InvalidName:
        return user  # validation refuses it, naming the address
    return {**user, CREDENTIALS_KEY: msgspec.to_builtins(stored.get(sip, ()))}


def import_bytes(data: bytes) -> ImportDocument:
    """Parse an export document; raise ChangeRefused saying, in words, what is wrong with it."""
    try:
        document = msgspec.json.decode(data)
    except msgspec.DecodeError:
        raise refuse(f"not an edgeproxy export document: {_json_error(data)}") from None
    if not isinstance(document, dict):
        raise refuse(
            "not an edgeproxy export document: it must be a JSON object with "
            f"{', '.join(_TOP_KEYS)}"
        )
    unknown = [key for key in document if key not in _TOP_KEYS]
    if unknown:
        raise refuse(
            f"not an edgeproxy export document: unknown key {shown(unknown[0])} "
            f"(the keys are: {', '.join(_TOP_KEYS)})"
        )
    form, version = document.get("format", FORMAT), document.get("version", VERSION)
    if form != FORMAT or version != VERSION:
        raise refuse(
            f"unsupported export format {shown(form)} version {shown(version)} "
            f"(this edgeproxy reads format {FORMAT!r} version {VERSION})"
        )
    configuration = document.get("configuration")
    if not isinstance(configuration, dict):
        raise refuse(
            "not an edgeproxy export document: configuration must be an object, got "
            f"{shown(configuration)}"
        )
    return ImportDocument(configuration)


def _json_error(data: bytes) -> str:
    """Where and why ``data`` is not JSON, in words (line and column)."""
    try:
        json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte {exc.start})"
    except json.JSONDecodeError as exc:
        return f"not valid JSON: {exc.msg.lower()} at line {exc.lineno}, column {exc.colno}"
    return "not valid JSON"
