"""Sans-IO server-to-server streams (RFC 6120, XEP-0178, XEP-0220, XEP-0185).

Nothing in this package imports trio, opens a socket or reads a clock: the drivers in
``edgeproxy.net`` move bytes and call the cores.
"""

from edgeproxy.s2s.connection import CertificateCheck, LocalProtocolError, S2SConnection
from edgeproxy.s2s.events import (
    Authenticated,
    AuthenticationFailed,
    CloseStream,
    DialbackVerdict,
    DialbackVerifyNeeded,
    DialbackVerifyResponse,
    Event,
    KeepAlive,
    PeerCertificateRejected,
    SendStanza,
    StanzaReceived,
    StartTls,
    StreamClosed,
    StreamErrorReceived,
    StreamOpened,
    StreamReady,
    VerifyRequest,
)
from edgeproxy.s2s.states import Role, State
from edgeproxy.s2s.wire import dialback_key

__all__ = [
    "Authenticated",
    "AuthenticationFailed",
    "CertificateCheck",
    "CloseStream",
    "DialbackVerdict",
    "DialbackVerifyNeeded",
    "DialbackVerifyResponse",
    "Event",
    "KeepAlive",
    "LocalProtocolError",
    "PeerCertificateRejected",
    "Role",
    "S2SConnection",
    "SendStanza",
    "StanzaReceived",
    "StartTls",
    "State",
    "StreamClosed",
    "StreamErrorReceived",
    "StreamOpened",
    "StreamReady",
    "VerifyRequest",
    "dialback_key",
]
