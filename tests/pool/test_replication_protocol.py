"""The sans-IO replication protocol: frames, messages, proofs, bounds."""

from __future__ import annotations

import pytest

from edgeproxy.policy.model import Configuration, GatewaySettings, User
from edgeproxy.policy.store import replicated_part
from edgeproxy.pool import protocol
from edgeproxy.pool.protocol import (
    LENGTH_BYTES,
    MAX_WAIT,
    NONCE_BYTES,
    Fetch,
    FrameReader,
    Hello,
    PoolAuthError,
    PoolProtocolError,
    Proof,
    Refused,
    Snapshot,
    Unchanged,
    check_hello,
    check_proof,
    clamp_wait,
    decode,
    encode,
    expect,
    proof,
)

SECRET = b"pool-secret"
MEMBER = Hello("member", b"\x01" * NONCE_BYTES)
PRIMARY = Hello("primary", b"\x02" * NONCE_BYTES)


def payload(frame: bytes) -> bytes:
    assert int.from_bytes(frame[:LENGTH_BYTES], "big") == len(frame) - LENGTH_BYTES
    return frame[LENGTH_BYTES:]


@pytest.mark.parametrize(
    "message",
    [MEMBER, Proof(b"m" * 32), Fetch(have=-1, wait=25.0), Unchanged(3), Refused("no"),
     Snapshot(4, Configuration(gateway=GatewaySettings(dialback_secret="s")))],
)
def test_every_message_survives_a_frame(message: protocol.Message) -> None:
    assert decode(payload(encode(message))) == message


def test_the_reader_splits_frames_however_the_bytes_arrive() -> None:
    stream = encode(MEMBER) + encode(Unchanged(9)) + encode(Refused("bye"))
    reader = FrameReader()
    got = []
    for i in range(len(stream)):
        got += reader.feed(stream[i : i + 1])
    assert [decode(f) for f in got] == [MEMBER, Unchanged(9), Refused("bye")]
    assert reader.pending == 0


def test_a_frame_above_the_limit_is_refused_from_its_length_prefix_alone() -> None:
    reader = FrameReader(limit=100)
    with pytest.raises(PoolProtocolError, match="101 bytes is above the limit of 100"):
        reader.feed((101).to_bytes(LENGTH_BYTES, "big"))
    assert FrameReader(limit=100).feed((100).to_bytes(LENGTH_BYTES, "big")) == []


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xc1", "malformed frame"),  # not MessagePack
        (b"\x81\xa4type\xa5bogus", "malformed frame"),  # an unknown message
        (protocol._encoder.encode(Hello("member", b"short")), "nonce of 5 bytes"),
        (protocol._encoder.encode(Fetch(have=-2, wait=1.0)), "negative"),
        (protocol._encoder.encode(Fetch(have=0, wait=float("nan"))), "negative"),
    ],
)
def test_a_malformed_message_raises_a_protocol_error(data: bytes, why: str) -> None:
    with pytest.raises(PoolProtocolError, match=why):
        decode(data)


def test_a_snapshot_bigger_than_a_handshake_frame_needs_the_store_limit() -> None:
    users = tuple(User(sip=f"sip:u{i}@contoso.test") for i in range(200))
    frame = protocol.snapshot_frame(1, Configuration(gateway=GatewaySettings(dialback_secret="s"), users=users))
    with pytest.raises(PoolProtocolError):
        FrameReader().feed(frame)
    [data] = FrameReader(protocol.MAX_STORE_BYTES).feed(frame)
    assert isinstance(decode(data), Snapshot)


def test_proofs_check_the_secret_the_role_and_both_nonces() -> None:
    mac = proof(SECRET, "member", MEMBER, PRIMARY)
    check_proof(SECRET, "member", MEMBER, PRIMARY, mac)
    with pytest.raises(PoolAuthError, match="wrong pool secret"):
        check_proof(b"other", "member", MEMBER, PRIMARY, mac)
    with pytest.raises(PoolAuthError):  # reflected: the member's proof is not the primary's
        check_proof(SECRET, "primary", MEMBER, PRIMARY, mac)
    replayed = Hello("primary", b"\x03" * NONCE_BYTES)  # a fresh nonce on another connection
    with pytest.raises(PoolAuthError):
        check_proof(SECRET, "member", MEMBER, replayed, mac)


def test_a_hello_of_another_role_or_version_is_refused() -> None:
    assert check_hello(PRIMARY, "primary") is PRIMARY
    with pytest.raises(PoolAuthError, match="says it is a member"):
        check_hello(MEMBER, "primary")
    with pytest.raises(PoolAuthError, match="version 2"):
        check_hello(Hello("primary", PRIMARY.nonce, version=2), "primary")
    with pytest.raises(PoolProtocolError, match="expected a hello, got a fetch"):
        check_hello(Fetch(-1, 1.0), "primary")


def test_a_refusal_in_place_of_an_answer_says_why() -> None:
    with pytest.raises(PoolAuthError, match="refused by the other side: pool authentication failed"):
        expect(Refused("pool authentication failed"), Proof)
    expect(Proof(b"x"), Proof)


def test_the_primary_holds_a_request_at_most_max_wait() -> None:
    assert clamp_wait(25.0) == 25.0
    assert clamp_wait(10_000.0) == MAX_WAIT
    assert clamp_wait(-1.0) == 0.0


def test_what_a_primary_sends_carries_no_contact_lists() -> None:
    user = User(sip="sip:alice@contoso.test", contacts=("bob@fabrikam.com",), pending=("eve@x.test",))
    config = replicated_part(Configuration(gateway=GatewaySettings(dialback_secret="x"), users=(user,)))
    decoded = decode(payload(protocol.snapshot_frame(7, config)))
    assert isinstance(decoded, Snapshot) and decoded.generation == 7
    assert (decoded.configuration.users[0].contacts, decoded.configuration.users[0].pending) == ((), ())
