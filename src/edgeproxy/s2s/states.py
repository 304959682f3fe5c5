"""States of an S2S stream and the table of what each state accepts from the peer.

Theory of operation
-------------------
An RFC 6120 server-to-server stream moves through negotiation (§4.3) — optional STARTTLS (§5),
then authentication by SASL EXTERNAL (§6, XEP-0178) or server dialback (XEP-0220) — to an open
stream that carries stanzas. Each stream restart (after TLS, after SASL) goes back to
``AWAIT_HEADER`` with a fresh parser (§4.3.3).

``ACCEPTS`` says, per role and state, which kinds of top-level element are legitimate. Anything
else is refused with the condition of ``UNEXPECTED`` (``not-authorized`` for stanzas before
authentication, RFC 6120 §4.9.3.12; ``policy-violation`` for negotiation elements out of place).
The connection consults the table before dispatching, so every handler may assume its element
arrived in a state that allows it; its handler table (``connection._HANDLERS``) is checked against
this one at import, so a kind accepted here without a handler cannot pass unnoticed. ``<stream:error/>`` and ``</stream:stream>`` are accepted in
every state that has a parser running.
"""

from __future__ import annotations

import enum
from typing import Final


class Role(enum.StrEnum):
    RECEIVING = "receiving"  # the peer connected to us (inbound)
    INITIATING = "initiating"  # we connected to the peer (outbound)


class State(enum.Enum):
    AWAIT_HEADER = "await-header"  # waiting for the peer's stream header
    NEGOTIATING = "negotiating"  # receiving: features sent, waiting for the peer's choice
    AWAIT_FEATURES = "await-features"  # initiating: header received, features next
    AWAIT_PROCEED = "await-proceed"  # initiating: <starttls/> sent
    TLS_HANDSHAKE = "tls-handshake"  # the driver runs TLS; no bytes through the core
    AWAIT_SASL_RESULT = "await-sasl-result"  # initiating: <auth/> sent
    AWAIT_DIALBACK = "await-dialback"  # initiating: <db:result/> sent
    OPEN = "open"  # authenticated (or a verification-only stream that is ready)
    CLOSING = "closing"  # we sent </stream:stream>, waiting for the peer's
    CLOSED = "closed"


class Kind(enum.StrEnum):
    """Classification of a top-level element (see ``classify`` in ``connection``)."""

    FEATURES = "features"
    STARTTLS = "starttls"
    PROCEED = "proceed"
    TLS_FAILURE = "tls-failure"
    SASL_AUTH = "sasl-auth"
    SASL_SUCCESS = "sasl-success"
    SASL_FAILURE = "sasl-failure"
    DB_RESULT = "db-result"
    DB_VERIFY = "db-verify"
    STANZA = "stanza"
    STREAM_ERROR = "stream-error"
    OTHER = "other"


_R, _I = Role.RECEIVING, Role.INITIATING
_ALWAYS: Final = frozenset({Kind.STREAM_ERROR})

ACCEPTS: Final[dict[tuple[Role, State], frozenset[Kind]]] = {
    (_R, State.NEGOTIATING): _ALWAYS
    | {Kind.STARTTLS, Kind.SASL_AUTH, Kind.DB_RESULT, Kind.DB_VERIFY, Kind.STANZA},
    (_R, State.OPEN): _ALWAYS | {Kind.DB_RESULT, Kind.DB_VERIFY, Kind.STANZA},
    (_R, State.CLOSING): _ALWAYS | {Kind.DB_RESULT, Kind.DB_VERIFY, Kind.STANZA},
    (_I, State.AWAIT_FEATURES): _ALWAYS | {Kind.FEATURES},
    (_I, State.AWAIT_PROCEED): _ALWAYS | {Kind.PROCEED, Kind.TLS_FAILURE},
    (_I, State.AWAIT_SASL_RESULT): _ALWAYS | {Kind.SASL_SUCCESS, Kind.SASL_FAILURE},
    (_I, State.AWAIT_DIALBACK): _ALWAYS | {Kind.DB_RESULT, Kind.DB_VERIFY},
    (_I, State.OPEN): _ALWAYS | {Kind.DB_RESULT, Kind.DB_VERIFY},
    (_I, State.CLOSING): _ALWAYS | {Kind.DB_RESULT, Kind.DB_VERIFY},
}


def unexpected_condition(kind: Kind, authenticated: bool) -> str:
    """The stream error for an element the current state does not accept."""
    if kind is Kind.STANZA:
        return "policy-violation" if authenticated else "not-authorized"
    if kind is Kind.OTHER:
        return "unsupported-stanza-type"
    return "policy-violation"
