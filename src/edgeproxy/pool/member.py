"""The member's side: follow the primary's store and apply each new generation.

:class:`Follower` keeps one connection to ``[pool] primary`` and asks again and again
``Fetch(have=<primary generation copied>, wait=LONG_POLL)``: the primary answers when its store
changed (a long poll), so a change reaches the member in well under a second. A ``Snapshot`` is
applied in one transaction (``Store.apply_replica``: the member's own contact and pending lists
kept), recorded, reported (``EP8502``) and handed to ``on_applied`` (the edge applies it at
once). Every answer is recorded in ``<state-dir>/pool-sync.json`` for ``edgeproxy pool status``.

When the primary cannot be reached, refuses us or breaks the protocol, the member goes on
serving its last copy (its store is untouched), says so once per outage (``EP8503``; ``EP8504``
/ ``EP8505`` for a refusal or a broken frame each time) and tries again every ``[pool] interval``
seconds. Bounded: a snapshot of at most ``MAX_STORE_BYTES``, an answer within ``LONG_POLL +
ANSWER_GRACE`` seconds, a connection attempt within ``CONNECT_TIMEOUT``.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import trio

from edgeproxy.ops import events
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.policy.store import Store
from edgeproxy.pool.link import HANDSHAKE_TIMEOUT, Link, TlsRefused, open_as_member
from edgeproxy.pool.protocol import (
    MAX_STORE_BYTES,
    NOTHING,
    Fetch,
    PoolAuthError,
    PoolProtocolError,
    Snapshot,
    Unchanged,
)
from edgeproxy.pool.syncstate import SyncState, read_sync_state, write_sync_state

log = logging.getLogger(__name__)

#: Seconds the member asks the primary to hold a request while nothing changes.
LONG_POLL: Final = 25.0
#: Seconds beyond ``LONG_POLL`` the member waits for an answer before it gives the link up.
ANSWER_GRACE: Final = 10.0
#: Seconds for the TCP connection to the primary.
CONNECT_TIMEOUT: Final = 10.0
#: Seconds for the connection and the handshake of the first attempt, which ``edgeproxy serve``
#: waits for before it starts (an unreachable primary must not hold the start up for long).
FIRST_ATTEMPT_TIMEOUT: Final = 3.0


class Follower:
    """A member following its primary: ``run`` until cancelled."""

    def __init__(self, store: Store, state_dir: Path, primary: tuple[str, int], address: str,
                 context: ssl.SSLContext | None, secret: bytes, telemetry: Telemetry, *,
                 interval: float, on_applied: Callable[[], Awaitable[None]] | None = None,
                 max_store_bytes: int = MAX_STORE_BYTES) -> None:
        self.store = store
        self.state_dir = state_dir
        self.host, self.port = primary
        self.address = address
        self.context = context
        self.secret = secret
        self.telemetry = telemetry
        self.interval = interval
        self.on_applied = on_applied
        self.max_store_bytes = max_store_bytes
        replica = store.join_pool(address)
        self.have = NOTHING if replica.primary_generation is None else replica.primary_generation
        previous = read_sync_state(state_dir)
        self.state = previous if previous is not None and previous.primary == address else SyncState(address)
        self._outage = False

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the primary forever; ``task_status.started()`` after the first attempt
        (a copy received, nothing new, or the primary unreachable: we serve our copy)."""
        started = False

        def first_attempt_done() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        while True:
            await self.attempt(first_attempt_done, opening=FIRST_ATTEMPT_TIMEOUT if not started else None)
            first_attempt_done()
            await trio.sleep(self.interval)

    async def attempt(self, answered: Callable[[], None] = lambda: None, *,
                      opening: float | None = None) -> None:
        """One connection: open it (within ``opening`` seconds when given), then fetch until it
        fails; every failure is reported here. The first request of a connection is answered at
        once (``wait`` 0: a restarted member learns at once that its copy is current), the next
        ones are long polls."""
        link: Link | None = None
        try:
            with trio.fail_after(opening if opening is not None else CONNECT_TIMEOUT + HANDSHAKE_TIMEOUT):
                with trio.fail_after(CONNECT_TIMEOUT):
                    stream = await trio.open_tcp_stream(self.host, self.port)
                try:
                    link = await open_as_member(stream, self.context, self.host, self.secret, self.max_store_bytes)
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
            wait = 0.0
            while True:
                await link.send(Fetch(self.have, wait))
                wait = LONG_POLL
                with trio.fail_after(LONG_POLL + ANSWER_GRACE):
                    answer = await link.receive()
                await self.handle(answer)
                answered()
        except (TlsRefused, PoolAuthError) as exc:
            self.telemetry.emit(events.POOL_REFUSED, direction="to", peer=self.address, reason=str(exc))
            self.failed(str(exc))
        except PoolProtocolError as exc:
            self.telemetry.emit(events.POOL_PROTOCOL_ERROR, direction="to", peer=self.address, reason=str(exc))
            self.failed(str(exc))
        except trio.TooSlowError:
            self.failed("no answer in time")
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.failed(str(exc) or type(exc).__name__)
        except ApplyFailed as exc:
            self.failed(str(exc))
        finally:
            if link is not None:
                await link.aclose()

    async def handle(self, answer: object) -> None:
        """Apply a ``Snapshot`` or note an ``Unchanged``; ``PoolProtocolError`` for anything else."""
        now = time.time()
        if isinstance(answer, Unchanged):
            self.record(last_answer=now)
            return
        if not isinstance(answer, Snapshot):
            raise PoolProtocolError(f"expected a snapshot or unchanged, got a {type(answer).__name__.lower()}")
        try:
            await trio.to_thread.run_sync(self.store.apply_replica, answer.generation, answer.configuration)
        except Exception as exc:  # a constraint the copy breaks, a full disk: keep the old copy
            self.telemetry.emit(events.POOL_APPLY_FAILED, generation=answer.generation, error=exc,
                                current=self.have)
            raise ApplyFailed(f"applying generation {answer.generation} failed: {exc}") from None
        self.have = answer.generation
        self.record(last_answer=now, last_applied=now)
        self.telemetry.emit(events.POOL_COPY_APPLIED, generation=answer.generation, primary=self.address)
        if self.on_applied is not None:
            try:
                await self.on_applied()
            except Exception:  # stored: the edge's own poll of the store applies it
                log.exception("pool: applying the new copy to the running edge failed")

    def record(self, **fields: float) -> None:
        """Note an answer of the primary (the end of an outage, if there was one)."""
        if self._outage:
            self._outage = False
            log.info("pool: the primary %s is reached again", self.address)
        self.state = SyncState(
            self.address,
            last_answer=fields.get("last_answer", self.state.last_answer),
            last_applied=fields.get("last_applied", self.state.last_applied),
        )
        self._save()

    def failed(self, error: str) -> None:
        """Note that the primary is not answering (reported once per outage)."""
        if not self._outage:
            self._outage = True
            self.telemetry.emit(events.POOL_PRIMARY_UNREACHABLE, primary=self.address, error=error,
                                generation=self.have if self.have != NOTHING else "none")
        since = self.state.error_since if self.state.error else time.time()
        self.state = SyncState(self.address, self.state.last_answer, self.state.last_applied,
                               error=error, error_since=since)
        self._save()

    def _save(self) -> None:
        try:
            write_sync_state(self.state_dir, self.state)
        except OSError as exc:  # only a report: the replication goes on
            log.debug("pool: cannot record the sync state: %s", exc)


class ApplyFailed(Exception):
    """The copy received could not be applied (reported already); the link is given up."""
