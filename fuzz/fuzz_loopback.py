"""Fuzz harness (d): the loopback channel's frame decoder ``edgeproxy.loopback.frames``, and
what ``loopback.reliable`` does with the frames it decodes.

Input layout: a mode byte, then either one WebSocket binary message (mode even) or a sequence
of messages, each prefixed by its length in one byte (mode odd), fed to one side of the channel
(a ``reliable.Sender`` with a few stanzas in flight and a ``reliable.Receiver``): ``Hello`` →
``on_connected``, ``StanzaBatch`` → ``accept`` + ``mark_processed``/``complete``, ``Ack`` →
``on_ack``, ``FlowControl`` → ``on_window``.

Invariants (frames.py, reliable.py): decoding and the sequencing raise only :class:`FrameError`
(strict decoding: unknown tags, missing or extra fields, wrong types, values outside the named
limits; an ack for items never sent, a gap in the sequence numbers); a decoded frame re-encodes
to bytes that decode to an equal frame; ``batch_items`` on a decoded batch takes at least one
and at most all of its items; while the peer session stays the same, the receiver hands each
sequence number over at most once.
"""

from __future__ import annotations

from _harness import Finding, Known, harness

from edgeproxy.loopback.frames import (
    Ack,
    Bounce,
    FlowControl,
    FrameError,
    Hello,
    Role,
    Routed,
    StanzaBatch,
    StanzaKind,
    batch_items,
    decode_frame,
    encode_frame,
)
from edgeproxy.loopback.reliable import Receiver, Sender

MAX_LEN = 4096
EXPECTED: tuple[type[BaseException], ...] = (FrameError,)
KNOWN: tuple[Known, ...] = ()


def _decode(data: bytes) -> object:
    frame = decode_frame(data)
    encoded = encode_frame(frame)
    try:
        again = decode_frame(encoded)
    except FrameError as exc:
        raise Finding(f"a decoded frame does not decode after encoding: {frame!r}: {exc}") from exc
    if again != frame:
        raise Finding(f"round trip changed the frame: {frame!r} -> {again!r}")
    if isinstance(frame, StanzaBatch):
        n = batch_items(list(frame.items))
        if not 1 <= n <= len(frame.items):
            raise Finding(f"batch_items() = {n} for {len(frame.items)} items")
    return frame


def _messages(data: bytes) -> list[bytes]:
    if not data or not data[0] & 1:
        return [data[1:]]
    out, i = [], 1
    while i < len(data):
        n = data[i]
        out.append(data[i + 1 : i + 1 + n])
        i += 1 + n
    return out


@harness(EXPECTED, KNOWN)
def check(data: bytes) -> None:
    sender, receiver = Sender("s-edge"), Receiver()
    for n in range(3):
        sender.submit(StanzaKind.MESSAGE, "a@contoso.test", "b@fabrikam.test", "chat", f"m{n}",
                      b"<message/>")
    sender.next_batch()
    # (peer session, seq) handed over since the peer session last changed: the receiver keeps
    # only the current peer session's progress, so A, B, A again starts over (sessions are
    # random per process start: a session never comes back).
    handed: set[tuple[str, int]] = set()
    session = ""
    for message in _messages(data):
        frame = _decode(message)
        if isinstance(frame, Hello):
            if frame.session != session:
                handed.clear()
            session = frame.session
            sender.on_connected(frame)
            receiver.on_connected(frame)
            sender.next_batch()
        elif isinstance(frame, StanzaBatch):
            for item in receiver.accept(frame):
                if (session, item.seq) in handed:
                    raise Finding(f"seq {item.seq} of session {session!r} handed over twice")
                handed.add((session, item.seq))
                if item.seq % 2:
                    receiver.mark_processed(item.seq)
                else:
                    receiver.complete(item.seq)
        elif isinstance(frame, Ack):
            sender.on_ack(frame.up_to)
            sender.next_batch()
        elif isinstance(frame, FlowControl):
            sender.on_window(frame.window)
            sender.next_batch()
    sender.on_disconnected()
    receiver.on_disconnected(handling_survives=bool(data[:1]) and data[0] & 2 == 2)
    sender.drain()


TestOneInput = check


def generated_seeds() -> list[bytes]:
    """Valid frames of every kind (MessagePack: generated, not committed)."""
    routed = Routed(1, StanzaKind.MESSAGE, "a@fabrikam.test", "b@contoso.test", "chat", "m1",
                    b"<message/>")
    bounce = Bounce(2, StanzaKind.PRESENCE, "b@contoso.test", "a@fabrikam.test", "", "",
                    b"<presence/>", "service-unavailable", "gone")
    frames = [
        Hello(1, Role.EDGE, "s1", "", 0, 1024),
        Hello(1, Role.GATEWAY, "g" * 64, "s1", 17, 0),
        StanzaBatch((routed,)),
        StanzaBatch((routed, bounce)),
        Ack(5),
        FlowControl(0),
    ]
    single = [b"\x00" + encode_frame(f) for f in frames]
    hello = encode_frame(Hello(1, Role.GATEWAY, "s-gw", "s-edge", 2, 16))
    sequence = b"\x01" + b"".join(
        bytes([len(m)]) + m
        for m in (hello, encode_frame(StanzaBatch((routed, bounce))), encode_frame(Ack(3)),
                  encode_frame(FlowControl(1)), encode_frame(StanzaBatch((bounce,))))
    )
    return [*single, sequence]
