"""The gateway and the policy store: the contact hooks written to it, and its own view of it.

Theory of operation
-------------------
Contact hooks (SPEC §4: a PublicUnverified contact needs the user's authorization)
    The presence agent reports two directory changes through synchronous hooks: a
    PublicUnverified contact's ``subscribe`` kept pending (``on_pending``) and a contact a SIP
    user added by SUBSCRIBEing to it (``on_contact_added``, which also approves that contact's
    pending request). :class:`ContactRecorder` takes them on a bounded queue
    (``MAX_QUEUED_CHANGES``) and one task applies them in order with the store operations
    (``policy.operations.record_pending_request`` / ``add_contact``) on the recorder's own
    store connection, in a worker thread: a write is one SQLite transaction with an fsync and
    never runs on the trio loop. Its own connection matters: the readers notice a commit through
    ``PRAGMA data_version``, which moves only for commits of *other* connections.
    After each committed change ``on_stored`` is awaited: in role ``both`` it reloads the edge's
    snapshot at once (``EdgeApp.refresh_policy``), so the contact's next message is accepted;
    in role ``gateway`` (a process of its own) there is nothing to call, the edge's store poll
    sees the commit within its interval (``policy.holder.POLL_INTERVAL``).
    Idempotent: a change the current snapshot already shows is not written again, and the
    operations themselves keep contact lists as sets. Nothing here ever ends the gateway: a
    change that cannot be stored (unknown user, store unavailable, queue full) is reported with
    event ``EP8006 contact-not-stored`` and dropped; the presence agent still holds it in memory
    until the gateway restarts.

The gateway's own snapshot (role ``gateway``)
    A gateway in its own process reads the same store through its own ``SnapshotHolder``
    (:func:`follow_store` polls it), so its presence agent applies the same policy as the edge —
    without one, the agent would approve every ``subscribe`` the edge delivered, a pending
    PublicUnverified request included.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import trio

from edgeproxy.ops import events
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.policy import operations
from edgeproxy.policy.holder import POLL_INTERVAL, SnapshotHolder
from edgeproxy.policy.snapshot import PolicySnapshot
from edgeproxy.policy.store import Store

log = logging.getLogger(__name__)

#: Contact changes waiting for the store; one per SIP SUBSCRIBE or XMPP subscribe that changes
#: the directory, so a full queue means the store is stuck (each write waits up to
#: ``store.BUSY_TIMEOUT_MS`` for the lock), not a burst worth buffering.
MAX_QUEUED_CHANGES = 1000


class ChangeKind(enum.Enum):
    PENDING = "pending request from"
    CONTACT = "contact"


@dataclass(frozen=True, slots=True)
class ContactChange:
    """One directory change for the store: ``local`` and ``contact`` are bare JIDs."""

    kind: ChangeKind
    local: str
    contact: str

    @property
    def sip(self) -> str:
        """The user's key in the store (RFC 7247 §5: ``alice@contoso.test`` → ``sip:…``)."""
        return f"sip:{self.local}"


def already_recorded(snapshot: PolicySnapshot, change: ContactChange) -> bool:
    """Does ``snapshot`` (the store as last read) already show ``change``?"""
    entry = snapshot.users.get(change.local)
    if entry is None:
        return False
    if change.kind is ChangeKind.CONTACT:
        return change.contact in entry.contacts and change.contact not in entry.user.pending
    return change.contact in entry.user.pending or change.contact in entry.contacts


class ContactRecorder:
    """Writes the presence agent's contact hooks to the store (see the module docstring).

    ``on_pending`` and ``on_contact_added`` are the hooks (synchronous, never blocking, never
    raising); :meth:`run` is the task that writes, usable with ``nursery.start``.
    """

    def __init__(
        self,
        state_dir: Path | str,
        our_domains: Iterable[str],
        *,
        policy: Callable[[], PolicySnapshot] | None = None,
        on_stored: Callable[[], Awaitable[None]] | None = None,
        telemetry: Telemetry | None = None,
        max_queued: int = MAX_QUEUED_CHANGES,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.our_domains = tuple(our_domains)
        self.policy = policy
        self.on_stored = on_stored
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self.max_queued = max_queued
        self._send, self._receive = trio.open_memory_channel[ContactChange](max_queued)
        self._store: Store | None = None
        #: Changes committed, and changes reported as not stored (for status and tests).
        self.stored = 0
        self.failed = 0

    # -- the hooks ----------------------------------------------------------------------------

    def on_pending(self, local: str, contact: str) -> None:
        self._queue(ContactChange(ChangeKind.PENDING, local, contact))

    def on_contact_added(self, local: str, contact: str) -> None:
        self._queue(ContactChange(ChangeKind.CONTACT, local, contact))

    def _queue(self, change: ContactChange) -> None:
        if self.policy is not None and already_recorded(self.policy(), change):
            return
        try:
            self._send.send_nowait(change)
        except trio.WouldBlock:
            self._failed(change, f"{self.max_queued} changes already wait for the store")
        except trio.ClosedResourceError:
            self._failed(change, "the gateway is stopping")

    # -- the writer ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Apply queued changes until cancelled (a write in progress completes first)."""
        task_status.started()
        try:
            async for change in self._receive:
                error = await trio.to_thread.run_sync(self._write, change)
                if error is not None:
                    self._failed(change, error)
                    continue
                self.stored += 1
                log.info("contact hooks: %s %s for %s stored", change.kind.value, change.contact, change.sip)
                if self.on_stored is not None:
                    try:
                        await self.on_stored()
                    except Exception:  # the change is stored: the next poll applies it
                        log.exception("contact hooks: refreshing after %s failed", change)
        finally:
            self._send.close()
            if self._store is not None:
                self._store.close()
                self._store = None

    def _write(self, change: ContactChange) -> Exception | None:
        """Store one change (in a worker thread); the exception if it cannot be stored."""
        try:
            if self._store is None:
                self._store = Store.open(self.state_dir)
            if change.kind is ChangeKind.CONTACT:
                operations.add_contact(self._store, self.our_domains, change.sip, change.contact)
            else:
                operations.record_pending_request(
                    self._store, self.our_domains, change.sip, change.contact
                )
        except Exception as exc:  # ChangeRefused, sqlite3.Error, OSError, or a bug: never fatal
            if isinstance(exc, sqlite3.Error) and self._store is not None:
                self._store.close()  # reopened for the next change
                self._store = None
            return exc
        return None

    def _failed(self, change: ContactChange, error: object) -> None:
        self.failed += 1
        self.telemetry.emit(
            events.CONTACT_NOT_STORED,
            change=change.kind.value,
            contact=change.contact,
            user=change.sip,
            error=error,
        )
        # info, not warning: the event is the report (serve routes warnings into the event log)
        log.info(
            "contact hooks: %s %s for %s not stored: %s",
            change.kind.value, change.contact, change.sip, error,
        )


async def follow_store(
    holder: SnapshotHolder,
    state_dir: Path,
    telemetry: Telemetry,
    *,
    interval: float = POLL_INTERVAL,
) -> None:
    """Reload ``holder`` when the store changed, every ``interval`` s, until cancelled."""
    while True:
        await trio.sleep(interval)
        try:
            await trio.to_thread.run_sync(holder.reload_if_changed)
        except sqlite3.Error as exc:  # the previous snapshot stays in force
            telemetry.emit(events.STORE_UNAVAILABLE, path=str(state_dir), error=exc)
