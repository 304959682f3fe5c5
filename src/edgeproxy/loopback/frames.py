"""Loopback channel frames: the wire format between the edge and the translating gateway.

Theory of operation
-------------------
The edge listens on its internal address (SPEC §1, Lync's port 23456); the gateway connects with
a WebSocket. Each WebSocket *binary* message carries exactly one frame, encoded with MessagePack
by msgspec. A frame is one member of a tagged union (msgspec ``tag`` on an ``array_like`` Struct:
the tag is the first array element, so a frame costs one small array, not a map with field names):

``Hello``
    First frame on every connection, from both sides. Carries the protocol ``version`` (a peer
    with another major version is refused), the sender's ``role`` and ``session`` (a random id
    chosen when the process starts: a new session means the peer restarted and lost its state),
    ``received`` — the highest sequence number the sender has received *in order* from the
    other side's session ``peer_session`` — ``window``, the initial flow-control credit, and
    ``nonce``, ``NONCE_BYTES`` fresh random bytes for this connection's proof (version 2).
``Auth``
    Second frame on every connection, from both sides (version 2, issue 14): ``mac``, the
    sender's proof that it knows the channel secret — an HMAC-SHA256 over both Hellos' nonces and
    sessions (``loopback/auth.py``; the exchange is in ``endpoint.py``). Nothing else is accepted
    before both proofs are checked.
``StanzaBatch``
    Stanzas in order, each an ``Item``: ``Routed`` (one stanza: its raw bytes as received plus the
    routing view the tokenizer already computed — kind, from, to, type, id — so the far side
    routes without re-parsing, DESIGN §2) or ``Bounce`` (a stanza that could not be delivered and
    must be answered to its sender with ``condition``; ``ref``, version 3, is the sequence number
    the bounced stanza had as the receiver's own item when the bounce refuses one — a *nack* —
    so a sender waiting for that item's outcome learns it, else ``0``). Every item has a sequence number; the
    numbers of one session increase by exactly one per item across batches and connections; the
    receiver checks that as it walks the items (``reliable.Receiver``), not here, so decoding
    stays a single msgspec call.
``Ack``
    Cumulative: every item with ``seq <= up_to`` has been processed by the receiver, the sender
    may forget it. Unacked items are re-sent after a reconnect; the receiver drops any
    ``seq <= last processed`` as a duplicate (see ``loopback/reliable.py``).
``FlowControl``
    The receiver's current window: the sender keeps at most ``window`` items un-acked in flight
    (``0`` pauses it). Combined with the sender's bounded queue this is the channel's whole
    backpressure story.

Decoding is strict: unknown tags, missing or extra fields, wrong types and values outside the
named limits below raise :class:`FrameError` (a :class:`ProtocolError`: the driver closes the
connection; the sender re-sends unacked items on the next one, so nothing is lost). Everything
msgspec raises while decoding (``DecodeError``, ``ValidationError``, and ``UnicodeDecodeError``
for invalid UTF-8 in a str) becomes a ``FrameError``; ``tests/loopback/test_frames.py`` feeds
random and mutated frames to hold that.

Encoding does not check the limits (msgspec validates on decode only), so a sender could write an
item its peer must refuse — and, refused as a frame, it would be re-sent on every reconnect: a
poison frame that stops the channel. :func:`item_problem` is therefore checked when an item is
*submitted* (``endpoint.ChannelEndpoint.submit``): an item the peer would refuse is bounced to its
sender at once instead of being queued.

Limits (named, with their origin)
``MAX_FRAME_BYTES`` = 8 MiB
    One WebSocket message; checked before decoding. trio-websocket's default ``max_message_size``
    is 1 MiB; we raise both to this value. A full batch of maximum-size stanzas cannot exceed it
    because batches are cut by bytes (``MAX_BATCH_BYTES``) as well as by count.
``MAX_BATCH_ITEMS`` = 1024
    Items in one batch; also the default window (``DEFAULT_WINDOW``).
``MAX_BATCH_BYTES`` = 1 MiB
    Raw stanza bytes the sender packs into one batch (a single larger stanza goes alone).
``MAX_STANZA_BYTES`` = 262144
    One stanza's raw bytes: the tokenizer's ``max_stanza_bytes`` (ejabberd's s2s default).
``MAX_ADDRESS_BYTES`` = 3071
    A JID is at most three 1023-octet parts plus separators (RFC 7622 §3.1). (msgspec counts
    characters of a str, so this bounds characters; the stanza bound holds the bytes.)
``MAX_SHORT`` = 1024
    A stanza ``type``/``id`` and a bounce's condition and text: one JID part (RFC 7622 §3.3).
"""

from __future__ import annotations

import enum
from typing import Annotated, Final

import msgspec

from edgeproxy.errors import ProtocolError

#: 2: the Hello carries a nonce and an ``Auth`` frame follows it (issue 14). A version-1 Hello
#: still decodes (``nonce`` defaults to empty) so that an old peer is refused by its version.
#: Version 3: a ``Bounce`` says which of the receiver's own items it refuses (``ref``).
PROTOCOL_VERSION: Final = 3
#: Random bytes of a Hello's nonce (256 bits: never repeated in practice).
NONCE_BYTES: Final = 32
#: An ``Auth`` frame's ``mac``: an HMAC-SHA256 (32 bytes); empty from a peer without a secret.
MAX_MAC_BYTES: Final = 64
MAX_FRAME_BYTES: Final = 8 * 1024 * 1024
MAX_BATCH_ITEMS: Final = 1024
MAX_BATCH_BYTES: Final = 1024 * 1024
MAX_STANZA_BYTES: Final = 262144
MAX_ADDRESS_BYTES: Final = 3071
MAX_SHORT: Final = 1024
DEFAULT_WINDOW: Final = MAX_BATCH_ITEMS
MAX_WINDOW: Final = 1 << 20

_Seq = Annotated[int, msgspec.Meta(ge=1, le=(1 << 63) - 1)]
_SeqOrZero = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
_Address = Annotated[str, msgspec.Meta(max_length=MAX_ADDRESS_BYTES)]
_Short = Annotated[str, msgspec.Meta(max_length=MAX_SHORT)]
_Raw = Annotated[bytes, msgspec.Meta(min_length=1, max_length=MAX_STANZA_BYTES)]
_Session = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_Window = Annotated[int, msgspec.Meta(ge=0, le=MAX_WINDOW)]


class FrameError(ProtocolError):
    """A frame could not be decoded or broke a limit; the connection is closed."""

    condition = "not-well-formed"


class Role(enum.StrEnum):
    EDGE = "edge"
    GATEWAY = "gateway"


class StanzaKind(enum.StrEnum):
    MESSAGE = "message"
    PRESENCE = "presence"
    IQ = "iq"


# -- sequenced items --------------------------------------------------------------------------


class Routed(
    msgspec.Struct,
    frozen=True,
    array_like=True,
    forbid_unknown_fields=True,
    gc=False,
    tag_field="tag",
    tag="r",
):
    """One stanza with its routing view. ``raw`` is forwarded unchanged when nothing changes it."""

    seq: _Seq
    kind: StanzaKind
    from_: _Address
    to: _Address
    type: _Short
    id: _Short
    raw: _Raw


class Bounce(
    msgspec.Struct,
    frozen=True,
    array_like=True,
    forbid_unknown_fields=True,
    gc=False,
    tag_field="tag",
    tag="b",
):
    """A stanza that was not delivered: its sender must get an error with ``condition``.

    ``condition`` is an RFC 6120 §8.3.3 stanza error condition, ``text`` an optional human text.
    The side that owns the original sender (the edge for XMPP senders) builds the error stanza.
    ``ref``: for a nack, the sequence number of the refused item in the *receiver's* numbering
    (it sent that item); ``0`` for a stanza the sender held itself.
    """

    seq: _Seq
    kind: StanzaKind
    from_: _Address
    to: _Address
    type: _Short
    id: _Short
    raw: _Raw
    condition: _Short
    text: _Short = ""
    ref: _SeqOrZero = 0


Item = Routed | Bounce


# -- frames -----------------------------------------------------------------------------------


class Hello(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, tag="hello"):
    version: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    role: Role
    session: _Session
    peer_session: Annotated[str, msgspec.Meta(max_length=64)]
    received: _SeqOrZero
    window: _Window
    nonce: Annotated[bytes, msgspec.Meta(max_length=NONCE_BYTES)] = b""


class Auth(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, tag="auth"):
    """The sender's proof of the channel secret (``loopback/auth.py``)."""

    mac: Annotated[bytes, msgspec.Meta(max_length=MAX_MAC_BYTES)]


class StanzaBatch(
    msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, gc=False, tag="batch"
):
    items: Annotated[
        tuple[Routed | Bounce, ...], msgspec.Meta(min_length=1, max_length=MAX_BATCH_ITEMS)
    ]


class Ack(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, tag="ack"):
    up_to: _SeqOrZero


class FlowControl(
    msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, tag="flow"
):
    window: _Window


Frame = Hello | Auth | StanzaBatch | Ack | FlowControl

# One encoder and one decoder for the process (msgspec's advice: they cache type information).
_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(Frame)


def encode_frame(frame: Frame) -> bytes:
    """Encode one frame (MessagePack)."""
    return _ENCODER.encode(frame)


def decode_frame(data: bytes | bytearray | memoryview) -> Frame:
    """Decode one frame strictly; raise :class:`FrameError` on anything malformed."""
    if len(data) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(data)} bytes exceeds MAX_FRAME_BYTES={MAX_FRAME_BYTES}")
    try:
        frame = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise FrameError(f"invalid frame: {exc}", "policy-violation") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec reports invalid UTF-8 in a str field (e.g. a union tag) as UnicodeDecodeError
        raise FrameError(f"malformed frame: {exc}") from None
    return frame


def item_problem(
    kind: object, from_: str, to: str, type: str, id: str, raw: bytes, bounce: tuple[str, str] | None = None
) -> str | None:
    """Why the peer's decoder would refuse this item (the limits above), or None if it would not."""
    if not isinstance(kind, StanzaKind):  # per stanza: the enum lookup only when needed
        try:
            StanzaKind(kind)
        except ValueError:
            return f"kind {kind!r} is not message, presence or iq"
    if not 1 <= len(raw) <= MAX_STANZA_BYTES:
        return f"stanza of {len(raw)} bytes (1 to MAX_STANZA_BYTES={MAX_STANZA_BYTES})"
    if (len(from_) > MAX_ADDRESS_BYTES or len(to) > MAX_ADDRESS_BYTES
            or len(type) > MAX_SHORT or len(id) > MAX_SHORT):
        for name, value, limit in (("from", from_, MAX_ADDRESS_BYTES), ("to", to, MAX_ADDRESS_BYTES),
                                   ("type", type, MAX_SHORT), ("id", id, MAX_SHORT)):
            if len(value) > limit:
                return f"{name} of {len(value)} characters exceeds {limit}"
    if bounce is not None and (len(bounce[0]) > MAX_SHORT or len(bounce[1]) > MAX_SHORT):
        return f"bounce condition or text longer than {MAX_SHORT} characters"
    return None


def batch_items(
    queue: list[Item], *, max_items: int = MAX_BATCH_ITEMS, max_bytes: int = MAX_BATCH_BYTES
) -> int:
    """How many leading items of ``queue`` go into the next batch (at least one if any)."""
    total = 0
    count = 0
    for item in queue[:max_items]:
        total += len(item.raw)
        if count and total > max_bytes:
            break
        count += 1
    return count


__all__ = [
    "DEFAULT_WINDOW",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_ITEMS",
    "MAX_FRAME_BYTES",
    "MAX_MAC_BYTES",
    "MAX_STANZA_BYTES",
    "NONCE_BYTES",
    "PROTOCOL_VERSION",
    "Ack",
    "Auth",
    "Bounce",
    "FlowControl",
    "Frame",
    "FrameError",
    "Hello",
    "Item",
    "Role",
    "Routed",
    "StanzaBatch",
    "StanzaKind",
    "batch_items",
    "decode_frame",
    "item_problem",
    "encode_frame",
]
