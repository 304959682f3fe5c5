"""The ledger: every stanza sent ends up delivered, bounced or lost — never silently dropped.

Each stanza carries an id ``lt<N>``; observers (the c2s sink, the partner listener receiving
echoes and error bounces, an in-process delivery probe) report ids with the time they saw them.
An id is counted once (its first outcome). When the run ends, whatever is still outstanding is
*lost*, and the lost ids are listed in the result. The identity sent = delivered + bounced + lost
holds by construction and is checked again in :meth:`Ledger.summary`.
"""

from __future__ import annotations

import collections
import math
import re
from dataclasses import dataclass, field

#: Stanza ids the harness generates and observers look for in raw bytes.
ID_PATTERN = re.compile(rb"""id=['"](lt\d+)['"]""")
#: How many lost ids a result lists at most (the count is always exact).
MAX_LISTED_LOST = 100


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[rank]


@dataclass
class Ledger:
    """Outstanding stanzas by id, outcomes, latencies (seconds) and a per-second timeline."""

    sent_at: dict[str, float] = field(default_factory=dict)
    outstanding: set[str] = field(default_factory=set)
    delivered: int = 0
    bounced: int = 0
    unknown_ids: int = 0
    latencies: list[float] = field(default_factory=list)
    #: Bounces by their error condition (RFC 6120 §8.3.3, e.g. ``service-unavailable``;
    #: ``?`` when the error names none).
    bounce_conditions: collections.Counter[str] = field(default_factory=collections.Counter)
    timeline: dict[int, list[int]] = field(default_factory=dict)  # second -> [sent, done]
    #: second (of settling) -> latencies (seconds) of the stanzas settled in that second.
    latency_by_second: dict[int, list[float]] = field(default_factory=dict)
    start: float = 0.0
    #: First send and last settling (harness clock): the span the relay really took.
    first_sent: float | None = None
    last_settled: float | None = None

    def sent(self, stanza_id: str, now: float) -> None:
        if self.first_sent is None:
            self.first_sent = now
        self.sent_at[stanza_id] = now
        self.outstanding.add(stanza_id)
        self._tick(now, 0)

    def _tick(self, now: float, index: int) -> None:
        second = int(now - self.start)
        self.timeline.setdefault(second, [0, 0])[index] += 1

    def _settle(self, stanza_id: str, now: float) -> bool:
        if stanza_id not in self.outstanding:
            if stanza_id not in self.sent_at:
                self.unknown_ids += 1
            return False
        self.outstanding.discard(stanza_id)
        latency = now - self.sent_at[stanza_id]
        self.last_settled = now
        self.latencies.append(latency)
        self.latency_by_second.setdefault(int(now - self.start), []).append(latency)
        self._tick(now, 1)
        return True

    def timeline_rows(self) -> list[dict[str, object]]:
        """Per second of the run: sent, settled, and p50/p99 latency (ms) of what settled."""
        last = max(self.timeline) if self.timeline else 0
        rows: list[dict[str, object]] = []
        for sec in range(last + 1):
            sent, done = self.timeline.get(sec, [0, 0])
            ms = [v * 1000 for v in self.latency_by_second.get(sec, ())]
            rows.append({"second": sec, "sent": sent, "done": done,
                         "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99)})
        return rows

    def saw_delivered(self, stanza_id: str, now: float) -> None:
        if self._settle(stanza_id, now):
            self.delivered += 1

    def saw_bounced(self, stanza_id: str, now: float, condition: str | None = None) -> None:
        """A ``type='error'`` reply for ``stanza_id``, counted under its error ``condition``."""
        if self._settle(stanza_id, now):
            self.bounced += 1
            self.bounce_conditions[condition or "?"] += 1

    def scan_delivered(self, data: bytes, now: float) -> None:
        """Count every harness id found in raw bytes as delivered."""
        for match in ID_PATTERN.finditer(data):
            self.saw_delivered(match.group(1).decode(), now)

    @property
    def sent_count(self) -> int:
        return len(self.sent_at)

    def summary(self) -> dict[str, object]:
        lost = len(self.outstanding)
        total = self.sent_count
        if total != self.delivered + self.bounced + lost:  # pragma: no cover - invariant
            raise AssertionError("ledger out of balance")
        ms = [v * 1000 for v in self.latencies]
        return {
            "sent": total,
            "delivered": self.delivered,
            "bounced": self.bounced,
            "lost": lost,
            "bounced_by_condition": dict(sorted(self.bounce_conditions.items())),
            "lost_ids": sorted(self.outstanding, key=lambda s: int(s[2:]))[:MAX_LISTED_LOST],
            "unknown_ids_seen": self.unknown_ids,
            # first stanza sent -> last one settled; settled / this = the rate end to end
            "settle_span_s": (self.last_settled - self.first_sent
                              if self.last_settled is not None and self.first_sent is not None
                              else None),
            "latency_ms": {
                "p50": percentile(ms, 50),
                "p90": percentile(ms, 90),
                "p99": percentile(ms, 99),
                "max": max(ms) if ms else None,
            },
        }
