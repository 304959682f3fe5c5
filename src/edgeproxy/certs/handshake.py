"""Failed TLS handshakes under trio: the reason in OpenSSL's words, and the alert for the peer.

``trio.SSLStream`` turns an ``ssl.SSLError`` into ``trio.BrokenResourceError`` (the SSL error is
its ``__cause__``); :func:`tls_failure` digs it out as a short readable reason (the certificate
verification message when there is one, else OpenSSL's reason code in words, e.g. ``tlsv13
alert certificate required``). When the handshake fails, trio leaves the alert OpenSSL wrote in
its outgoing buffer, so the peer would only see the connection drop; :func:`send_pending_alert`
sends it (best effort) so that the other side can log *why*.

Every TLS surface runs its handshake with these two: S2S STARTTLS (``net/session.py``), SIP over
TLS (``gateway/sip/transport.py``) and the loopback channel (``loopback/client.py``,
``loopback/server.py``), so a peer is told the same, and the reason in events reads the same.
"""

from __future__ import annotations

import contextlib
import ssl

import trio

#: Seconds to spend sending an alert to a peer we are about to drop.
ALERT_SEND_TIMEOUT = 1.0


def tls_failure(exc: BaseException) -> str:
    """Why a TLS handshake failed (``exc`` from ``do_handshake``, or a timeout)."""
    if isinstance(exc, trio.TooSlowError):
        return "TLS handshake timed out"
    cause = exc if isinstance(exc, ssl.SSLError) else exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError):
        verify = getattr(cause, "verify_message", None)
        if verify:
            return f"certificate verify failed: {verify}"
        if cause.reason:  # "TLSV1_ALERT_UNKNOWN_CA" -> "tlsv1 alert unknown ca"
            return cause.reason.lower().replace("_", " ")
        return str(cause)
    return str(cause or exc) or type(exc).__name__


async def send_pending_alert(tls: trio.SSLStream[trio.SocketStream]) -> None:
    """Best effort: send the alert OpenSSL wrote when the handshake failed (trio's ``SSLStream``
    keeps it in its outgoing buffer, a private attribute checked here before use)."""
    outgoing = getattr(tls, "_outgoing", None)
    if not isinstance(outgoing, ssl.MemoryBIO) or not outgoing.pending:
        return
    with trio.move_on_after(ALERT_SEND_TIMEOUT), contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await tls.transport_stream.send_all(outgoing.read())
