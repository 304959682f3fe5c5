"""Bytes of the S2S negotiation: stream headers, features, TLS/SASL/dialback elements, errors.

Theory of operation
-------------------
Only a handful of fixed elements are ever written during negotiation, so they are built here as
bytes (attribute values escaped) rather than as trees; stanzas themselves are forwarded as the
bytes received. References:

* stream header — RFC 6120 §4.7 (``from``, ``to``, ``id``, ``version='1.0'``), plus
  ``xmlns:db`` so that dialback may be used (XEP-0220 §2.1.1);
* features — RFC 6120 §4.3.2; ``<starttls/>`` (§5.4.1, ``<required/>`` when mandatory),
  ``<mechanisms><mechanism>EXTERNAL</mechanism></mechanisms>`` (§6.4.1, XEP-0178 §3),
  ``<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>`` (XEP-0220 §2.4.1);
* stream errors — RFC 6120 §4.9.2: ``<stream:error><COND xmlns='…streams'/><text/>``, then
  ``</stream:stream>``;
* dialback keys — XEP-0185 §3 as docs/spec.md §11.4 fixes them:
  ``hex(HMAC-SHA256(key=hex(SHA256(secret)), receiving + ' ' + originating + ' ' + id))``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final
from xml.sax.saxutils import escape

from edgeproxy.xmpp.namespaces import (
    NS_DIALBACK,
    NS_DIALBACK_FEATURE,
    NS_SASL,
    NS_SERVER,
    NS_STANZAS,
    NS_STREAM_ERRORS,
    NS_STREAMS,
    NS_TLS,
)

CLOSE: Final = b"</stream:stream>"
STARTTLS: Final = f"<starttls xmlns='{NS_TLS}'/>".encode()
PROCEED: Final = f"<proceed xmlns='{NS_TLS}'/>".encode()
TLS_FAILURE: Final = f"<failure xmlns='{NS_TLS}'/>".encode()
SASL_SUCCESS: Final = f"<success xmlns='{NS_SASL}'/>".encode()
KEEPALIVE: Final = b" "
_APOS: Final = {"'": "&apos;", '"': "&quot;"}

def dialback_key(secret: str, receiving: str, originating: str, stream_id: str) -> str:
    """XEP-0185 §3 key (docs/spec.md §11.4): HMAC-SHA256 keyed with hex SHA-256 of the secret,
    in hex."""
    hashed = hashlib.sha256(secret.encode("utf-8")).hexdigest().encode("ascii")
    message = f"{receiving} {originating} {stream_id}".encode()
    return hmac.new(hashed, message, hashlib.sha256).hexdigest()


def keys_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _attrs(**values: str | None) -> str:
    return "".join(
        f" {name.rstrip('_')}='{escape(value, _APOS)}'" for name, value in values.items() if value
    )


def stream_header(*, from_: str | None, to: str | None, stream_id: str | None) -> bytes:
    """An s2s stream header (RFC 6120 §4.7, XEP-0220 §2.1.1 ``xmlns:db``)."""
    return (
        f"<?xml version='1.0'?><stream:stream xmlns='{NS_SERVER}' xmlns:stream='{NS_STREAMS}'"
        f" xmlns:db='{NS_DIALBACK}'{_attrs(from_=from_, to=to, id=stream_id)} version='1.0'>"
    ).encode()


def features(*, starttls: bool, starttls_required: bool, sasl_external: bool, dialback: bool) -> bytes:
    """``<stream:features/>`` with exactly the offered features (RFC 6120 §4.3.2)."""
    parts = ["<stream:features>"]
    if starttls:
        parts.append(
            f"<starttls xmlns='{NS_TLS}'><required/></starttls>"
            if starttls_required
            else f"<starttls xmlns='{NS_TLS}'/>"
        )
    if sasl_external:
        parts.append(f"<mechanisms xmlns='{NS_SASL}'><mechanism>EXTERNAL</mechanism></mechanisms>")
    if dialback:
        parts.append(f"<dialback xmlns='{NS_DIALBACK_FEATURE}'><errors/></dialback>")
    parts.append("</stream:features>")
    return "".join(parts).encode()


def stream_error(condition: str, text: str | None = None) -> bytes:
    """``<stream:error/>`` followed by the closing tag (RFC 6120 §4.9.1.1)."""
    body = f"<{condition} xmlns='{NS_STREAM_ERRORS}'/>"
    if text:
        body += f"<text xmlns='{NS_STREAM_ERRORS}'>{escape(text)}</text>"
    return f"<stream:error>{body}</stream:error>".encode() + CLOSE


def sasl_auth_external(authzid: str | None) -> bytes:
    """``<auth mechanism='EXTERNAL'>``: ``=`` for an empty authzid (RFC 6120 §6.4.2)."""
    import base64

    payload = "=" if not authzid else base64.b64encode(authzid.encode("utf-8")).decode("ascii")
    return f"<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>{payload}</auth>".encode()


def sasl_failure(condition: str) -> bytes:
    return f"<failure xmlns='{NS_SASL}'><{condition}/></failure>".encode()


def db_result_request(*, from_: str, to: str, key: str) -> bytes:
    """Originating → receiving: claim ``from_`` with ``key`` (XEP-0220 §2.1.1)."""
    return f"<db:result{_attrs(from_=from_, to=to)}>{escape(key)}</db:result>".encode()


def _db_answer(name: str, valid: bool, error: str | None, **attrs: str | None) -> bytes:
    """A ``db:result`` or ``db:verify`` answer: ``valid``/``invalid``, or an error (§2.4)."""
    if error is not None:
        return (
            f"<db:{name}{_attrs(**attrs)} type='error'>"
            f"<error type='cancel'><{error} xmlns='{NS_STANZAS}'/></error></db:{name}>"
        ).encode()
    return f"<db:{name}{_attrs(**attrs, type='valid' if valid else 'invalid')}/>".encode()


def db_result_response(*, from_: str, to: str, valid: bool, error: str | None = None) -> bytes:
    """Receiving → originating: the verdict (XEP-0220 §2.1.3), or an error (§2.4)."""
    return _db_answer("result", valid, error, from_=from_, to=to)


def db_verify_request(*, from_: str, to: str, stream_id: str, key: str) -> bytes:
    """Receiving → authoritative (XEP-0220 §2.2.1)."""
    return f"<db:verify{_attrs(from_=from_, to=to, id=stream_id)}>{escape(key)}</db:verify>".encode()


def db_verify_response(
    *, from_: str, to: str, stream_id: str, valid: bool, error: str | None = None
) -> bytes:
    """Authoritative → receiving (XEP-0220 §2.2.2), or an error (§2.4)."""
    return _db_answer("verify", valid, error, from_=from_, to=to, id=stream_id)
