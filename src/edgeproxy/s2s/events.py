"""Events of the sans-IO S2S core: frozen value types, in the h11/wsproto style.

Two directions:

* **from the peer** — returned by :meth:`S2SConnection.next_event` after ``receive_data``;
  they tell the driver what happened or what it must do (wrap the socket in TLS, verify a
  dialback key with an authoritative server, deliver a stanza, close);
* **to the peer** — passed to :meth:`S2SConnection.send`, which queues the bytes to write for
  :meth:`S2SConnection.data_to_send`.

Every type is a frozen dataclass with slots: cheap, hashable, comparable in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeproxy.policy.model import AuthMethod

if TYPE_CHECKING:
    from edgeproxy.tokenizer import Stanza


class Event:
    """Base of every event."""

    __slots__ = ()


# -- from the peer ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamOpened(Event):
    """The peer's stream header was accepted (RFC 6120 §4.7). ``stream_id`` is the stream's id
    (ours on a receiving stream, the peer's on an initiating one)."""

    to: str | None
    from_: str | None
    stream_id: str
    tls: bool


@dataclass(frozen=True, slots=True)
class StartTls(Event):
    """Write out pending bytes, then run the TLS handshake on the socket (RFC 6120 §5.4.3.3),
    then call :meth:`S2SConnection.tls_established`. Receiving role: we are the TLS server."""

    server_side: bool


@dataclass(frozen=True, slots=True)
class Authenticated(Event):
    """``remote_domain`` may now send stanzas from its addresses to ``local_domain`` (receiving
    role) or we may send from ``local_domain`` to ``remote_domain`` (initiating role)."""

    local_domain: str
    remote_domain: str
    method: AuthMethod


@dataclass(frozen=True, slots=True)
class AuthenticationFailed(Event):
    """Initiating role: the peer refused our SASL EXTERNAL or dialback attempt."""

    local_domain: str
    remote_domain: str
    reason: str


@dataclass(frozen=True, slots=True)
class PeerCertificateRejected(Event):
    """The peer's TLS certificate does not prove ``domain`` (RFC 6125, XEP-0178 §3), so SASL
    EXTERNAL is not offered or is refused; ``reason`` names the cause (expired, not yet valid,
    untrusted issuer, name mismatch, no certificate). The stream goes on: TLS dialback stays
    possible where the partner's row allows it (docs/spec.md §2.1). Receiving role: the peer is not
    offered EXTERNAL; initiating role: we do not attempt EXTERNAL towards that peer."""

    domain: str
    reason: str


@dataclass(frozen=True, slots=True)
class DialbackVerifyNeeded(Event):
    """Receiving role, XEP-0220 §2.1.2: the peer claims ``originating`` with ``key``; ask the
    originating domain's authoritative server (``db:verify``) and answer with
    :class:`DialbackVerdict`."""

    originating: str
    receiving: str
    stream_id: str
    key: str


@dataclass(frozen=True, slots=True)
class DialbackVerifyResponse(Event):
    """Initiating (verification) stream: the authoritative server's answer to our ``db:verify``
    (XEP-0220 §2.2.2). ``valid`` is False for ``type='invalid'`` and ``type='error'``."""

    originating: str
    receiving: str
    stream_id: str
    valid: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StreamReady(Event):
    """Initiating role: negotiation finished. If ``authenticated``, stanzas may be sent; a
    verification-only stream (no authentication wanted) may now carry ``db:verify``."""

    authenticated: bool


@dataclass(frozen=True, slots=True)
class StanzaReceived(Event):
    """An authenticated stanza passed the stream-level checks (RFC 6120 §4.9.3.9 invalid-from,
    §4.9.3.6 host-unknown); it still has to go through the policy engine."""

    stanza: Stanza
    from_domain: str
    to_domain: str


@dataclass(frozen=True, slots=True)
class StreamErrorReceived(Event):
    """The peer sent ``<stream:error/>`` (RFC 6120 §4.9); the stream is over."""

    condition: str
    text: str | None = None


@dataclass(frozen=True, slots=True)
class StreamClosed(Event):
    """The stream is over (our close answered, peer's close received, or a stream error either
    way). ``error`` is the condition we sent, if we ended it with an error."""

    error: str | None = None
    reason: str | None = None


# -- to the peer ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DialbackVerdict(Event):
    """Receiving role: the outcome of the verification asked for by :class:`DialbackVerifyNeeded`.
    ``error`` (a stanza-error condition, e.g. ``remote-server-not-found``) sends
    ``type='error'`` instead of ``valid``/``invalid`` (XEP-0220 §2.4)."""

    originating: str
    receiving: str
    valid: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class VerifyRequest(Event):
    """Verification stream: send ``db:verify`` (XEP-0220 §2.2.1) to an authoritative server."""

    receiving: str
    originating: str
    stream_id: str
    key: str


@dataclass(frozen=True, slots=True)
class SendStanza(Event):
    """Write a stanza's bytes as they are (received bytes are re-used: docs/design.md §2)."""

    raw: bytes
    from_domain: str
    to_domain: str


@dataclass(frozen=True, slots=True)
class KeepAlive(Event):
    """A whitespace keep-alive (RFC 6120 §4.6.1)."""


@dataclass(frozen=True, slots=True)
class CloseStream(Event):
    """Close our half (``</stream:stream>``, RFC 6120 §4.4); with ``condition``, send a stream
    error first (RFC 6120 §4.9.1). ``finish``: with a condition that says nothing against what
    the peer sends (``system-shutdown``), still take what it sent before it read our close —
    the stream waits for the peer's closing tag, as RFC 6120 §4.4 gives the other party "an
    opportunity to finish transmitting any outbound data" — instead of ending at once."""

    condition: str | None = None
    text: str | None = None
    finish: bool = False


FromPeer = (
    StreamOpened
    | StartTls
    | Authenticated
    | AuthenticationFailed
    | DialbackVerifyNeeded
    | DialbackVerifyResponse
    | StreamReady
    | StanzaReceived
    | StreamErrorReceived
    | StreamClosed
)
ToPeer = DialbackVerdict | VerifyRequest | SendStanza | KeepAlive | CloseStream
