"""Loopback frames: round trips (hypothesis) and strict refusal of malformed input."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.loopback.frames import (
    MAX_BATCH_ITEMS,
    MAX_FRAME_BYTES,
    MAX_STANZA_BYTES,
    PROTOCOL_VERSION,
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
    item_problem,
)

text = st.text(max_size=40)
seqs = st.integers(min_value=1, max_value=(1 << 63) - 1)
kinds = st.sampled_from(list(StanzaKind))
raws = st.binary(min_size=1, max_size=300)


@st.composite
def items(draw: st.DrawFn, seq: int) -> Routed | Bounce:
    common = (seq, draw(kinds), draw(text), draw(text), draw(text), draw(text), draw(raws))
    if draw(st.booleans()):
        return Routed(*common)
    return Bounce(*common, condition=draw(text), text=draw(text))


@st.composite
def batches(draw: st.DrawFn) -> StanzaBatch:
    first = draw(st.integers(min_value=1, max_value=1 << 40))
    n = draw(st.integers(min_value=1, max_value=8))
    return StanzaBatch(items=tuple(draw(items(first + i)) for i in range(n)))


frames = st.one_of(
    batches(),
    st.builds(Ack, up_to=st.integers(min_value=0, max_value=1 << 62)),
    st.builds(FlowControl, window=st.integers(min_value=0, max_value=1 << 20)),
    st.builds(
        Hello,
        version=st.integers(min_value=0, max_value=65535),
        role=st.sampled_from(list(Role)),
        session=st.text(min_size=1, max_size=64),
        peer_session=st.text(max_size=64),
        received=st.integers(min_value=0, max_value=1 << 62),
        window=st.integers(min_value=0, max_value=1 << 20),
    ),
)


@given(frames)
def test_every_frame_round_trips_unchanged(frame: object) -> None:
    assert decode_frame(encode_frame(frame)) == frame  # type: ignore[arg-type]


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_to_a_frame_or_raise_frame_error(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        decode_frame(data)


@given(frames, st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
                        min_size=1, max_size=6), st.integers(min_value=0, max_value=3))
def test_mutated_frames_decode_to_a_frame_or_raise_frame_error(
    frame: object, edits: list[tuple[int, int]], cut: int
) -> None:
    """Whatever msgspec raises for a damaged frame (DecodeError, ValidationError, invalid UTF-8)
    reaches the driver as FrameError — the one exception it answers by closing the connection."""
    data = bytearray(encode_frame(frame))  # type: ignore[arg-type]
    for position, value in edits:
        data[position % len(data)] = value
    with contextlib.suppress(FrameError):
        decode_frame(bytes(data[: len(data) - cut]))


@given(
    st.sampled_from([*StanzaKind, "chat"]),
    st.builds(str.__mul__, st.sampled_from("aé€"), st.integers(3068, 3074)),  # around MAX_ADDRESS_BYTES
    st.builds(str.__mul__, st.sampled_from("aé"), st.integers(1021, 1027)),  # around MAX_SHORT
    st.one_of(st.just(b""), st.binary(min_size=1, max_size=20)),
    st.one_of(st.none(), st.tuples(st.builds(str.__mul__, st.just("x"), st.integers(1022, 1026)), st.just(""))),
)
def test_item_problem_refuses_exactly_what_the_peers_decoder_would(
    kind: str, address: str, short: str, raw: bytes, bounce: tuple[str, str] | None
) -> None:
    """Checked at submit, so that no item can become a frame the peer refuses on every re-send."""
    problem = item_problem(kind, address, "b@c", short, "", raw, bounce)
    if problem is not None and kind not in StanzaKind.__members__.values():
        return  # not even encodable as an item
    item = (Routed(1, kind, address, "b@c", short, "", raw) if bounce is None  # type: ignore[arg-type]
            else Bounce(1, kind, address, "b@c", short, "", raw, *bounce))  # type: ignore[arg-type]
    try:
        decode_frame(encode_frame(StanzaBatch((item,))))
    except FrameError:
        assert problem is not None
    else:
        assert problem is None


def _routed(seq: int = 1, raw: bytes = b"<message/>") -> Routed:
    return Routed(seq, StanzaKind.MESSAGE, "a@b", "c@d", "chat", "id1", raw)


def test_non_ascii_addresses_and_bodies_survive_the_round_trip() -> None:
    raw = "<message><body>Grüße, 日本語 ☃</body></message>".encode()
    item = Routed(
        7, StanzaKind.MESSAGE, "jürgen@münchen.example/Ω", "juliet@contoso.test", "chat", "ü1", raw
    )
    assert decode_frame(encode_frame(StanzaBatch(items=(item,)))) == StanzaBatch(items=(item,))


def test_hello_carries_the_protocol_version() -> None:
    hello = Hello(PROTOCOL_VERSION, Role.GATEWAY, "s1", "", 0, 1024)
    assert decode_frame(encode_frame(hello)) == hello


def test_garbage_is_refused_as_malformed() -> None:
    with pytest.raises(FrameError) as info:
        decode_frame(b"\xc1\xff\x00")
    assert info.value.condition == "not-well-formed"


def test_unknown_frame_tag_is_refused() -> None:
    with pytest.raises(FrameError) as info:
        decode_frame(msgspec.msgpack.encode(["nope", 1]))
    assert info.value.condition == "policy-violation"


def test_extra_fields_are_refused() -> None:
    with pytest.raises(FrameError):
        decode_frame(msgspec.msgpack.encode(["ack", 1, 2]))


def test_missing_fields_are_refused() -> None:
    with pytest.raises(FrameError):
        decode_frame(msgspec.msgpack.encode(["hello", 1, "edge"]))


def test_wrong_field_type_is_refused() -> None:
    with pytest.raises(FrameError):
        decode_frame(msgspec.msgpack.encode(["ack", "ten"]))


def test_unknown_role_is_refused() -> None:
    with pytest.raises(FrameError):
        decode_frame(msgspec.msgpack.encode(["hello", 1, "proxy", "s", "", 0, 10]))


def test_sequence_number_zero_is_refused() -> None:
    bad = ["batch", [["r", 0, "message", "a", "b", "", "", b"<x/>"]]]
    with pytest.raises(FrameError):
        decode_frame(msgspec.msgpack.encode(bad))


def test_unknown_stanza_kind_is_refused() -> None:
    bad = ["batch", [["r", 1, "stream", "a", "b", "", "", b"<x/>"]]]
    with pytest.raises(FrameError):
        decode_frame(msgspec.msgpack.encode(bad))


def test_empty_batch_is_refused() -> None:
    with pytest.raises(FrameError):
        decode_frame(msgspec.msgpack.encode(["batch", []]))


def test_empty_raw_stanza_is_refused() -> None:
    bad = ["batch", [["r", 1, "message", "a", "b", "", "", b""]]]
    with pytest.raises(FrameError):
        decode_frame(msgspec.msgpack.encode(bad))


def test_stanza_over_the_size_limit_is_refused() -> None:
    bad = ["batch", [["r", 1, "message", "a", "b", "", "", b"x" * (MAX_STANZA_BYTES + 1)]]]
    with pytest.raises(FrameError):
        decode_frame(msgspec.msgpack.encode(bad))


def test_batch_over_the_item_limit_is_refused() -> None:
    item = ["r", 1, "message", "a", "b", "", "", b"<x/>"]
    with pytest.raises(FrameError):
        decode_frame(msgspec.msgpack.encode(["batch", [item] * (MAX_BATCH_ITEMS + 1)]))


def test_negative_window_is_refused() -> None:
    with pytest.raises(FrameError):
        decode_frame(msgspec.msgpack.encode(["flow", -1]))


def test_frame_over_the_byte_limit_is_refused_before_decoding() -> None:
    with pytest.raises(FrameError, match="MAX_FRAME_BYTES"):
        decode_frame(b"\x00" * (MAX_FRAME_BYTES + 1))


def test_truncated_frame_is_refused() -> None:
    data = encode_frame(StanzaBatch(items=(_routed(),)))
    with pytest.raises(FrameError):
        decode_frame(data[:-3])


def test_batches_are_cut_by_count_and_by_bytes() -> None:
    small = [_routed(i + 1) for i in range(10)]
    assert batch_items(small, max_items=4) == 4
    big = [_routed(i + 1, b"x" * 600) for i in range(10)]
    assert batch_items(big, max_bytes=1300) == 2
    assert batch_items([_routed(1, b"x" * 5000)], max_bytes=1300) == 1
    assert batch_items([]) == 0
