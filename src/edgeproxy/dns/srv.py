"""Pure RFC 2782 target selection for ``_xmpp-server._tcp`` (RFC 6120 §3.2.1).

Theory of operation:

* Records are tried in ascending **priority**; a client MUST contact the lowest-numbered priority
  it can reach, so all traffic goes to the best pool and the next priority takes over only when
  that pool fails (SPEC §9).
* Within one priority, order is a **weighted random** permutation (RFC 2782 "Usage rules"): put
  weight-0 records first, compute running sums of the weights, draw a uniform integer in
  ``[0, total]``, pick the first record whose running sum is >= the draw, remove it and repeat.
  Weight-0 records thus have a very small chance to be picked first when others weigh more.
* A single record with target ``.`` means "service decidedly not available" (RFC 2782):
  no targets, and no fallback.
* No SRV record at all: fall back to the domain itself on port 5269 (RFC 6120 §3.2.1 step 7 /
  §3.2.2 fallback), which :func:`connection_targets` returns.

The random source is a parameter so tests are deterministic (``random.Random(seed)``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby

XMPP_SERVER_PORT = 5269
XMPP_SERVER_SERVICE = "_xmpp-server._tcp"


@dataclass(frozen=True, order=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # absolute host name without the trailing dot, lower case

    @classmethod
    def of(cls, priority: int, weight: int, port: int, target: str) -> SrvRecord:
        return cls(priority, weight, port, target.rstrip(".").lower() or ".")

    @property
    def is_unavailable_marker(self) -> bool:
        return self.target in (".", "")


def srv_name(domain: str) -> str:
    return f"{XMPP_SERVER_SERVICE}.{domain.rstrip('.')}"


def _weighted_order(records: list[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    pending = sorted(records, key=lambda r: (r.weight != 0, r.weight))  # weight 0 first
    ordered: list[SrvRecord] = []
    while pending:
        total = sum(r.weight for r in pending)
        draw = rng.randint(0, total)
        running = 0
        for i, rec in enumerate(pending):
            running += rec.weight
            if running >= draw:
                ordered.append(pending.pop(i))
                break
    return ordered


def order_records(records: Iterable[SrvRecord], rng: random.Random | None = None) -> list[SrvRecord]:
    """RFC 2782 order: ascending priority, weighted random within each priority."""
    rng = rng or random.Random()
    recs = sorted(records, key=lambda r: r.priority)
    if len(recs) == 1 and recs[0].is_unavailable_marker:
        return []
    result: list[SrvRecord] = []
    for _, group in groupby(recs, key=lambda r: r.priority):
        result.extend(_weighted_order([r for r in group if not r.is_unavailable_marker], rng))
    return result


def connection_targets(
    domain: str, records: Sequence[SrvRecord] | None, rng: random.Random | None = None
) -> list[tuple[str, int]]:
    """(host, port) pairs to try in order; ``records=None`` means no SRV record exists."""
    if not records:
        return [(domain.rstrip(".").lower(), XMPP_SERVER_PORT)]
    return [(r.target, r.port) for r in order_records(records, rng)]
