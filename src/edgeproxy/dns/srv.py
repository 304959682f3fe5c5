"""Pure RFC 2782 target selection for ``_xmpp-server._tcp`` (RFC 6120 §3.2.1).

Theory of operation:

* Records are tried in ascending **priority**; a client MUST contact the lowest-numbered priority
  it can reach, so all traffic goes to the best pool and the next priority takes over only when
  that pool fails (SPEC §9).
* Within one priority, order is a **weighted random** permutation (RFC 2782 "Usage rules"):
  a record is drawn with a probability proportional to its weight, removed, and the draw repeats.
  Weight-0 records have a very small chance to be picked first when others weigh more.
* A single record with target ``.`` means "service decidedly not available" (RFC 2782):
  no targets, and no fallback.
* No SRV record at all: fall back to the domain itself on port 5269 (RFC 6120 §3.2.1 step 7 /
  §3.2.2 fallback), which :func:`connection_targets` returns.

The ordering itself is dnspython's (``Rdataset.processing_order()`` on ``IN SRV`` rdata, which is
``dns.rdtypes.util.weighted_processing_order``: weight 0 counts as 0.1), drawing from the
``random`` module; tests that need a repeatable order seed it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dns.name
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.IN.SRV

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

    def to_rdata(self) -> dns.rdtypes.IN.SRV.SRV:
        """The record as dnspython's ``IN SRV`` rdata (target absolute)."""
        return dns.rdtypes.IN.SRV.SRV(
            dns.rdataclass.IN, dns.rdatatype.SRV, self.priority, self.weight, self.port,
            dns.name.from_text(self.target),
        )

    @classmethod
    def from_rdata(cls, rdata: dns.rdtypes.IN.SRV.SRV) -> SrvRecord:
        return cls.of(rdata.priority, rdata.weight, rdata.port, rdata.target.to_text())


def srv_name(domain: str) -> str:
    return f"{XMPP_SERVER_SERVICE}.{domain.rstrip('.')}"


def order_records(records: Iterable[SrvRecord]) -> list[SrvRecord]:
    """RFC 2782 order: ascending priority, weighted random within each priority (dnspython's
    processing order); ``[]`` for the lone ``.`` marker. A record listed twice is one record."""
    recs = list(records)
    if len(recs) == 1 and recs[0].is_unavailable_marker:
        return []
    rdataset = dns.rdataset.Rdataset(dns.rdataclass.IN, dns.rdatatype.SRV)
    for rec in recs:
        if not rec.is_unavailable_marker:
            rdataset.add(rec.to_rdata())
    return [SrvRecord.from_rdata(r) for r in rdataset.processing_order()]  # type: ignore[arg-type]


def connection_targets(domain: str, records: Sequence[SrvRecord] | None) -> list[tuple[str, int]]:
    """(host, port) pairs to try in order; ``records=None`` means no SRV record exists."""
    if not records:
        return [(domain.rstrip(".").lower(), XMPP_SERVER_PORT)]
    return [(r.target, r.port) for r in order_records(records)]
