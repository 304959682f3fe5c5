"""Fuzz harness (d): the loopback channel's frame decoder ``edgeproxy.loopback.frames``.

The input is one WebSocket binary message. Invariants (frames.py): ``decode_frame`` raises only
:class:`FrameError` (strict decoding: unknown tags, missing or extra fields, wrong types, values
outside the named limits); a decoded frame re-encodes to bytes that decode to an equal frame;
``batch_items`` on a decoded batch takes at least one and at most all of its items.
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

MAX_LEN = 4096
EXPECTED: tuple[type[BaseException], ...] = (FrameError,)
KNOWN: tuple[Known, ...] = ()


@harness(EXPECTED, KNOWN)
def check(data: bytes) -> None:
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
    return [encode_frame(f) for f in frames]
