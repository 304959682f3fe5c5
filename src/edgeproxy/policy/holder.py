"""``SnapshotHolder``: the running server's view of the store (SPEC §10 "reload", issue 3 §4).

The holder keeps one read connection to the store and the current ``PolicySnapshot``. The
server calls ``reload_if_changed()`` about once a second (from a thread or between stanzas; it
does no trio I/O itself): it asks SQLite for ``PRAGMA data_version`` — a counter that changes only
when *another* connection commits, so the check costs microseconds — and, if it moved, reads the
whole configuration in one transaction and builds a new snapshot. The swap is one attribute
assignment, so a decision in progress keeps using the snapshot it started with; streams are not
dropped. A committed change therefore applies within the poll interval (≤ 2 s).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from edgeproxy.policy.snapshot import PolicySnapshot, build_snapshot
from edgeproxy.policy.store import Store

#: How often the server should call ``reload_if_changed`` (seconds).
POLL_INTERVAL = 1.0


class SnapshotHolder:
    """Holds the current snapshot and rebuilds it when the store has changed."""

    def __init__(self, store: Store, our_domains: Iterable[str]) -> None:
        self._store = store
        self._our_domains = tuple(our_domains)
        self._data_version = store.data_version()
        self._snapshot = self._build()

    @classmethod
    def open(cls, state_dir: Path | str, our_domains: Iterable[str]) -> SnapshotHolder:
        return cls(Store.open(state_dir), our_domains)

    @property
    def snapshot(self) -> PolicySnapshot:
        """The current snapshot (never mutated; replaced as a whole on reload)."""
        return self._snapshot

    def _build(self) -> PolicySnapshot:
        generation, config = self._store.read()
        return build_snapshot(config, self._our_domains, generation=generation)

    def reload_if_changed(self) -> bool:
        """Rebuild the snapshot if another connection committed since the last check."""
        version = self._store.data_version()
        if version == self._data_version:
            return False
        self._data_version = version
        fresh = self._build()
        changed = fresh.generation != self._snapshot.generation
        self._snapshot = fresh
        return changed

    def close(self) -> None:
        self._store.close()
