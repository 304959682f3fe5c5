"""The primary's side: serve the store to the pool members on ``[pool] listen``.

One task (:class:`Publisher`) follows the store — ``PRAGMA data_version`` every
``CHECK_INTERVAL`` seconds, the whole configuration read again only when another connection
committed and its generation moved — and encodes each new generation once, whatever the number
of members. Each member connection is served by :func:`serve_member`: the TLS handshake and the
proofs (``link``), then the member's ``Fetch`` requests, each answered at once when the member's
copy is older, else held until the store changes or the wait the member asked for (at most
``MAX_WAIT``) is over: a change made on the primary reaches the members within about
``CHECK_INTERVAL`` plus the time to send it.

Bounded: ``MAX_CONNECTIONS`` connections at once (``Admission``), a request
frame of ``MAX_HANDSHAKE_FRAME`` bytes, ``IDLE_TIMEOUT`` seconds between two requests. Failure
boundary: whatever one connection does or raises ends that connection only, with an event —
``EP8504`` refused (TLS, proof, version, role), ``EP8505`` a malformed, oversized, out-of-turn
or missing frame, ``EP1007`` anything else — and never reaches the listener. When every slot is
taken, a newcomer evicts the oldest connection that has not authenticated yet (``Admission``).
"""

from __future__ import annotations

import logging
import ssl
from typing import Final

import trio

from edgeproxy.ops import events
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.policy.store import Store, replicated_part
from edgeproxy.pool.link import TlsRefused, open_as_primary
from edgeproxy.pool.protocol import (
    MAX_STORE_BYTES,
    Fetch,
    PoolAuthError,
    PoolProtocolError,
    Refused,
    Unchanged,
    clamp_wait,
    encode,
    expect,
    snapshot_frame,
)

log = logging.getLogger(__name__)

#: Seconds between two looks at the store's ``data_version``.
CHECK_INTERVAL: Final = 0.1
#: Member connections served at once.
MAX_CONNECTIONS: Final = 64
#: Seconds a member may stay silent between two requests (it asks again at once normally).
IDLE_TIMEOUT: Final = 120.0
#: What a connection beyond ``MAX_CONNECTIONS`` is told.
TOO_MANY: Final = f"{MAX_CONNECTIONS} pool connections already open"


class Publisher:
    """The store's current generation and its ``Snapshot`` frame, and the wait for a newer one."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._data_version: int | None = None
        self.generation = -2  # nothing read yet (no member has it: NOTHING is -1)
        self.frame = b""
        self._changed = trio.Event()

    def _read(self) -> tuple[int, bytes] | None:
        version = self._store.data_version()
        if version == self._data_version:
            return None
        self._data_version = version
        generation, config = self._store.read()
        if generation == self.generation:
            return None
        return generation, snapshot_frame(generation, replicated_part(config))

    async def refresh(self) -> bool:
        """Read the store if it changed; True when its generation moved (members are woken)."""
        fresh = await trio.to_thread.run_sync(self._read)
        if fresh is None:
            return False
        self.generation, self.frame = fresh
        if len(self.frame) > MAX_STORE_BYTES:
            log.warning(
                "pool: the store at generation %d is %d bytes encoded, above the %d a member accepts:"
                " the members keep their copies", self.generation, len(self.frame), MAX_STORE_BYTES,
            )
        self._changed.set()
        self._changed = trio.Event()
        return True

    async def follow(self) -> None:
        """Refresh every ``CHECK_INTERVAL`` seconds, until cancelled."""
        while True:
            await trio.sleep(CHECK_INTERVAL)
            try:
                await self.refresh()
            except Exception:  # a locked or broken store now: the members wait, we try again
                log.exception("pool: reading the store failed")

    async def answer(self, have: int, wait: float) -> bytes:
        """The frame answering ``Fetch(have, wait)``: the snapshot once the generation differs
        from ``have``, else ``Unchanged`` after ``wait`` seconds."""
        with trio.move_on_after(wait):
            while self.generation == have:
                await self._changed.wait()
        if self.generation != have:
            return self.frame
        return encode(Unchanged(self.generation))


class Admission:
    """The primary's connection slots: at most ``limit`` connections at once. When all are taken,
    a new connection evicts the oldest one that has not authenticated yet (it is closed), and is
    refused itself only when every slot holds an authenticated member: whoever reaches the port
    without the pool secret cannot keep the members out by holding connections open."""

    def __init__(self, limit: int = MAX_CONNECTIONS) -> None:
        self.limit = limit
        self.open = 0
        self.opening: list[trio.CancelScope] = []  # unauthenticated, oldest first
        self._evicted: set[trio.CancelScope] = set()

    def admit(self, scope: trio.CancelScope) -> bool:
        """Take a slot for the connection ``scope`` runs (evicting the oldest unauthenticated one
        when none is free); False when every slot holds an authenticated member."""
        if self.open >= self.limit:
            if not self.opening:
                return False
            oldest = self.opening.pop(0)
            oldest.cancel()
            self._evicted.add(oldest)  # its slot is handed over now
            self.open -= 1
        self.open += 1
        self.opening.append(scope)
        return True

    def authenticated(self, scope: trio.CancelScope) -> None:
        """The connection proved the secret: it can no longer be evicted."""
        self.opening.remove(scope)

    def release(self, scope: trio.CancelScope) -> None:
        """The connection ended: its slot is free (unless it went to the one that evicted it)."""
        if scope in self.opening:
            self.opening.remove(scope)
        if scope in self._evicted:
            self._evicted.discard(scope)
        else:
            self.open -= 1


async def serve_member(stream: trio.SocketStream, context: ssl.SSLContext | None, secret: bytes,
                       publisher: Publisher, telemetry: Telemetry, admission: Admission) -> None:
    """Serve one member connection until it ends; never raises (reported as events)."""
    peer = _peer(stream)
    scope = trio.CancelScope()
    admitted = admission.admit(scope)
    try:
        if not admitted:
            await stream.send_all(encode(Refused(TOO_MANY)))
            telemetry.emit(events.POOL_REFUSED, direction="from", peer=peer, reason=TOO_MANY)
            return
        with scope:
            link = await open_as_primary(stream, context, secret)
            admission.authenticated(scope)
            while True:
                with trio.fail_after(IDLE_TIMEOUT):
                    request = await link.receive()
                expect(request, Fetch)
                assert isinstance(request, Fetch)
                await link.send_frame(await publisher.answer(request.have, clamp_wait(request.wait)))
        if scope.cancelled_caught:
            telemetry.emit(events.POOL_REFUSED, direction="from", peer=peer,
                           reason=f"closed before it authenticated: all {admission.limit} connections were taken")
    except (TlsRefused, PoolAuthError) as exc:
        telemetry.emit(events.POOL_REFUSED, direction="from", peer=peer, reason=str(exc))
    except PoolProtocolError as exc:
        telemetry.emit(events.POOL_PROTOCOL_ERROR, direction="from", peer=peer, reason=str(exc))
    except trio.TooSlowError:
        telemetry.emit(events.POOL_PROTOCOL_ERROR, direction="from", peer=peer,
                       reason="no request in time")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.debug("pool: connection from %s ended: %s", peer, exc)
    except Exception as exc:  # a bug: this connection only
        log.debug("pool: connection from %s failed", peer, exc_info=True)
        telemetry.emit_input_failed("pool-connection", peer, repr(exc), "connection closed")
    finally:
        if admitted:
            admission.release(scope)
        await trio.aclose_forcefully(stream)


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
