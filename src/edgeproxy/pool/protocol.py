"""The replication protocol between a pool's primary and its members: frames, messages, proofs.

Theory of operation
-------------------
A member opens one connection to the primary's ``[pool] listen`` (TLS when ``[pool] tls``) and
keeps it. Every message is one **frame**: a 4-byte big-endian length, then that many bytes of
MessagePack (msgspec, a tagged union of the messages below). The exchange:

1. ``member → Hello(role="member", nonce)``, ``primary → Hello(role="primary", nonce)``: each
   with ``NONCE_BYTES`` fresh random bytes and the protocol ``VERSION``;
2. ``member → Proof(mac)``; the primary checks it (a wrong one: ``Refused`` and the connection
   closes), then ``primary → Proof(mac)``, which the member checks — both prove they hold the
   **pool secret** (``<state-dir>/pool.secret``, the same file on every host of the pool):

       mac = HMAC-SHA256(secret, field(PROOF_LABEL) || field(prover role)
                                 || field(member nonce) || field(primary nonce))

   (``field(x)``: ``x`` after its length in two big-endian bytes). The label fixes the purpose,
   the role defeats a reflection, the verifier's fresh nonce a replay. A certificate the TLS
   trust accepts is therefore not enough to read the store: the secret is needed too, and the
   secret alone does not let anyone read the link (TLS encrypts it);
3. then, as often as it likes, ``member → Fetch(have, wait)``: ``have`` is the primary
   generation its copy is (``NOTHING`` when it has none). The primary answers at once with
   ``Snapshot(generation, configuration)`` when its generation differs; else it holds the
   request until its store changes (a **long poll**) — at most ``wait`` seconds (bounded by
   ``MAX_WAIT``) — and answers ``Snapshot`` or ``Unchanged(generation)``.

Every size is bounded: a frame before the proofs holds at most ``MAX_HANDSHAKE_FRAME`` bytes, a
request ``MAX_HANDSHAKE_FRAME`` too, a snapshot ``MAX_STORE_BYTES``. A frame above its bound,
one that is not a message, or a message out of turn raises :class:`PoolProtocolError` (the
driver closes that connection and reports it). Pure: no I/O, no clock, no trio.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final, Literal

import msgspec

from edgeproxy.errors import ProtocolError
from edgeproxy.policy.model import Configuration

#: The protocol version both Hellos carry; another is refused.
VERSION: Final = 1
#: Random bytes in each Hello.
NONCE_BYTES: Final = 32
#: Domain separation of the proofs (the secret keys nothing else with this label).
PROOF_LABEL: Final = b"edgeproxy pool replication proof v1"
#: Bytes of the length prefix of a frame.
LENGTH_BYTES: Final = 4
#: The largest frame of the handshake and of a member's request (bytes).
MAX_HANDSHAKE_FRAME: Final = 4096
#: The largest store a member accepts from its primary (bytes of one encoded snapshot): 64 MiB,
#: some twenty times a store of 10,000 users with their credentials.
MAX_STORE_BYTES: Final = 64 * 1024 * 1024
#: The longest a primary holds a request for a change (seconds); a member asks for less.
MAX_WAIT: Final = 60.0
#: ``Fetch.have`` of a member without a copy yet.
NOTHING: Final = -1

Role = Literal["primary", "member"]


class PoolProtocolError(ProtocolError):
    """The other side broke the replication protocol; the connection is closed."""


class PoolAuthError(PoolProtocolError):
    """The other side's proof of the pool secret is wrong, or it speaks another version or role."""


class Hello(msgspec.Struct, frozen=True, tag="hello"):
    role: Role
    nonce: bytes
    version: int = VERSION


class Proof(msgspec.Struct, frozen=True, tag="proof"):
    mac: bytes


class Fetch(msgspec.Struct, frozen=True, tag="fetch"):
    have: int
    wait: float


class Unchanged(msgspec.Struct, frozen=True, tag="unchanged"):
    generation: int


class Snapshot(msgspec.Struct, frozen=True, tag="snapshot"):
    generation: int
    configuration: Configuration


class Refused(msgspec.Struct, frozen=True, tag="refused"):
    reason: str


Message = Hello | Proof | Fetch | Unchanged | Snapshot | Refused

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(message: Message) -> bytes:
    """One frame: the length prefix and the message."""
    payload = _encoder.encode(message)
    return len(payload).to_bytes(LENGTH_BYTES, "big") + payload


def snapshot_frame(generation: int, configuration: Configuration) -> bytes:
    """A ``Snapshot`` frame (the primary encodes each generation once for every member)."""
    return encode(Snapshot(generation, configuration))


def decode(payload: bytes) -> Message:
    """The message in a frame's payload; :class:`PoolProtocolError` when it is not one."""
    try:
        message = _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PoolProtocolError(f"malformed frame: {exc}") from None
    if isinstance(message, Hello) and len(message.nonce) != NONCE_BYTES:
        raise PoolProtocolError(f"malformed hello: a nonce of {len(message.nonce)} bytes")
    if isinstance(message, Fetch) and not (message.have >= NOTHING and message.wait >= 0):
        raise PoolProtocolError("malformed fetch: a negative generation or wait")
    return message


class FrameReader:
    """Splits received bytes into frame payloads, refusing a frame above ``limit`` bytes as soon
    as its length prefix is read (nothing of it is buffered)."""

    def __init__(self, limit: int = MAX_HANDSHAKE_FRAME) -> None:
        self.limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the payloads completed by it (in order)."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= LENGTH_BYTES:
            size = int.from_bytes(self._buffer[:LENGTH_BYTES], "big")
            if size > self.limit:
                raise PoolProtocolError(f"frame of {size} bytes is above the limit of {self.limit}")
            if len(self._buffer) < LENGTH_BYTES + size:
                break
            frames.append(bytes(self._buffer[LENGTH_BYTES : LENGTH_BYTES + size]))
            del self._buffer[: LENGTH_BYTES + size]
        return frames

    @property
    def pending(self) -> int:
        """Bytes received and not yet part of a complete frame."""
        return len(self._buffer)


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def proof(secret: bytes, prover: Role, member: Hello, primary: Hello) -> bytes:
    """The MAC ``prover`` sends on the connection whose Hellos are ``member`` and ``primary``."""
    message = b"".join(
        _field(part) for part in (PROOF_LABEL, prover.encode("ascii"), member.nonce, primary.nonce)
    )
    return hmac.new(secret, message, hashlib.sha256).digest()


def check_proof(secret: bytes, prover: Role, member: Hello, primary: Hello, mac: bytes) -> None:
    """Raise :class:`PoolAuthError` unless ``mac`` is ``prover``'s proof for these Hellos."""
    if not hmac.compare_digest(proof(secret, prover, member, primary), mac):
        raise PoolAuthError(f"wrong pool secret: the {prover}'s proof does not match")


def check_hello(hello: Message, expected: Role) -> Hello:
    """``hello`` when it is the other side's Hello (role ``expected``, our version); else
    :class:`PoolAuthError` (another role or version) or :class:`PoolProtocolError`."""
    expect(hello, Hello)
    assert isinstance(hello, Hello)
    if hello.version != VERSION:
        raise PoolAuthError(f"protocol version {hello.version}, this edge speaks {VERSION}")
    if hello.role != expected:
        raise PoolAuthError(f"the other side says it is a {hello.role}, expected a {expected}")
    return hello


def expect(message: Message, kind: type[msgspec.Struct]) -> None:
    """Raise :class:`PoolProtocolError` unless ``message`` is a ``kind`` (a ``Refused`` says why)."""
    if isinstance(message, Refused) and kind is not Refused:
        raise PoolAuthError(f"refused by the other side: {message.reason}")
    if not isinstance(message, kind):
        raise PoolProtocolError(
            f"expected a {kind.__name__.lower()}, got a {type(message).__name__.lower()}"
        )


def clamp_wait(requested: float) -> float:
    """How long the primary holds a request that asks for ``requested`` seconds."""
    return min(max(requested, 0.0), MAX_WAIT)
