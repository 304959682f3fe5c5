"""Load-testing one's own edge: the simulated domains stored as the edge's partners.

The edge answers a simulated partner over a stream of its own to that partner's domain, and
checks each simulated stream's dialback key by connecting to the domain's authoritative server;
both connections go where the partner row says — its proxy FQDN, else DNS (SRV, then A/AAAA).
Simulated domains (``sim1.test``) are in no DNS, so without a row pointing at the load tester's
listener every stream fails with ``remote-server-not-found`` and no stanza gets an answer.

:func:`partner_rows` makes those rows: one per simulated domain (each its own connection limit),
type Federated, the negotiation row of the scenario's security mode (the same row the harness
uses for the target: :data:`edgeproxy.loadtest.partner.OUTBOUND_ROWS`), and proxy FQDN
``listen-host:listen-port``, so that no DNS is needed. :func:`store_partner_rows` writes them
(adding or replacing), :func:`remove_partner_rows` takes them away again (only rows it made: their
description is :data:`DESCRIPTION`). The running edge applies a store change within its store
poll (``policy.holder.POLL_INTERVAL``), no reload needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from edgeproxy.loadtest.partner import OUTBOUND_ROWS
from edgeproxy.loadtest.scenario import Scenario
from edgeproxy.policy import operations as ops
from edgeproxy.policy.model import Partner, PartnerType
from edgeproxy.policy.store import Store
from edgeproxy.policy.validation import ChangeRefused

#: The description of the rows this module stores: what ``remove_partner_rows`` may remove.
DESCRIPTION = "simulated partner of edgeproxy loadtest"


class ListenPortNeeded(ValueError):
    """``partners.listen-port = 0`` (a port picked at run time) cannot go into a stored row."""


def listener_address(scenario: Scenario) -> str:
    """``host:port`` of the scenario's partner listener, as a proxy FQDN says it."""
    p = scenario.partners
    if p.listen_port == 0:
        raise ListenPortNeeded(
            "partners.listen-port is 0 (any free port): stored partners need a fixed port; "
            "set partners.listen-port in the scenario (e.g. 5270)"
        )
    host = f"[{p.listen_host}]" if ":" in p.listen_host else p.listen_host
    return f"{host}:{p.listen_port}"


def partner_rows(scenario: Scenario) -> list[Partner]:
    """One Federated row per simulated domain, reached at the load tester's listener."""
    tls, sasl, dialback = OUTBOUND_ROWS[scenario.partners.security]
    proxy = listener_address(scenario)
    return [
        Partner(
            domain=domain,
            description=DESCRIPTION,
            type=PartnerType.FEDERATED,
            tls=tls,
            sasl=sasl,
            dialback=dialback,
            keepalive=False,
            proxy_fqdn=proxy,
        )
        for domain in scenario.partners.domain_names()
    ]


@dataclass(frozen=True)
class StoredRows:
    """What :func:`store_partner_rows` did: domains added, replaced, and the store's warnings."""

    added: tuple[str, ...]
    replaced: tuple[str, ...]
    warnings: tuple[str, ...]


def store_partner_rows(store: Store, our_domains: Iterable[str], rows: list[Partner]) -> StoredRows:
    """Add each row, or replace the stored partner of the same domain; raises ``ChangeRefused``
    (nothing more is written) when a row breaks a rule, e.g. a domain another partner lists."""
    ours = tuple(our_domains)
    stored = {p.domain for p in store.read()[1].partners}
    added: list[str] = []
    replaced: list[str] = []
    warnings: list[str] = []
    for row in rows:
        if row.domain in stored:
            done = ops.set_partner(store, ours, row.domain, lambda _current, row=row: row)
            replaced.append(row.domain)
        else:
            done = ops.new_partner(store, ours, row)
            added.append(row.domain)
        warnings += [w for w in _warnings(done) if w not in warnings]
    return StoredRows(tuple(added), tuple(replaced), tuple(warnings))


def _warnings(done: tuple[object, ...]) -> tuple[str, ...]:
    """The warnings of a ``policy.operations`` partner change: its last item when that is the
    tuple of warnings after the record(s), else the whole result (warnings only)."""
    last = done[-1] if done else ()
    return tuple(str(w) for w in (last if isinstance(last, tuple) else done))


def remove_partner_rows(store: Store, domains: Iterable[str]) -> tuple[str, ...]:
    """Remove the rows of ``domains`` that this module stored (see :data:`DESCRIPTION`)."""
    ours = {p.domain: p for p in store.read()[1].partners}
    removed: list[str] = []
    for domain in domains:
        row = ours.get(domain)
        if row is None or row.description != DESCRIPTION:
            continue
        try:
            ops.remove_partner(store, domain)
        except ChangeRefused:
            continue  # removed meanwhile
        removed.append(domain)
    return tuple(removed)
