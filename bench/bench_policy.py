"""Policy engine benchmark (issue 3 "Performance target"; results in bench/RESULTS.md).

On a snapshot of 1,000 partners (each with one additional domain) and 10,000 users (5 contacts
each, spread over 10 sites, some with granted policies, some SBA-homed):

* stanza decisions per second on one core, over a realistic mix of inbound messages, presence,
  subscriptions and iq plus outbound presence with status notes (target ≥ 300,000/s);
* snapshot rebuild time, the way the running server does it (read the whole store in one
  transaction + build the indexes), and the index build alone (target ≤ 200 ms).

usage: python bench/bench_policy.py [--rounds N] [--rebuilds N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from edgeproxy.policy import operations as ops
from edgeproxy.policy.engine import Stanza, StanzaKind, decide_inbound, decide_outbound
from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
    User,
)
from edgeproxy.policy.snapshot import build_snapshot
from edgeproxy.policy.store import Store

OURS = ("contoso.test",)
N_PARTNERS = 1_000
N_USERS = 10_000


def make_configuration(rng: random.Random) -> Configuration:
    types = list(PartnerType)
    partners = tuple(
        Partner(
            f"partner{i}.example",
            additional_domains=(f"corp.partner{i}.example",),
            type=types[i % 3],
            tls=Negotiation.REQUIRED if i % 2 else Negotiation.OPTIONAL,
        )
        for i in range(N_PARTNERS)
    )
    policies = (
        AccessPolicy("global", xmpp=True),
        *(AccessPolicy(f"site:site{s}", xmpp=s != 9) for s in range(10)),
        *(AccessPolicy(f"tier{t}", xmpp=t % 2 == 0) for t in range(5)),
    )
    users = tuple(
        User(
            f"sip:user{u}@contoso.test",
            name=f"User {u}",
            site=f"site{u % 10}",
            sba=u % 97 == 0,
            policy=f"tier{u % 5}" if u % 7 == 0 else None,
            contacts=tuple(
                f"c{rng.randrange(100)}@partner{rng.randrange(N_PARTNERS)}.example"
                for _ in range(5)
            ),
        )
        for u in range(N_USERS)
    )
    return Configuration(
        gateway=GatewaySettings(dialback_secret="b" * 64),
        partners=partners,
        policies=policies,
        users=users,
    )


def make_workload(rng: random.Random, size: int) -> list[tuple[bool, Stanza]]:
    kinds = [
        (StanzaKind.MESSAGE, "chat"),
        (StanzaKind.MESSAGE, "chat"),
        (StanzaKind.MESSAGE, "chat"),
        (StanzaKind.PRESENCE, ""),
        (StanzaKind.PRESENCE, "unavailable"),
        (StanzaKind.PRESENCE, "subscribe"),
        (StanzaKind.PRESENCE, "probe"),
        (StanzaKind.IQ, "get"),
    ]
    work = []
    for _ in range(size):
        p = rng.randrange(N_PARTNERS)
        domain = f"partner{p}.example" if rng.random() < 0.8 else f"corp.partner{p}.example"
        user = f"user{rng.randrange(N_USERS + 200)}@contoso.test"  # ~2% unknown users
        remote = f"c{rng.randrange(100)}@{domain}/res"
        kind, type_ = rng.choice(kinds)
        if rng.random() < 0.25:  # outbound: local user → contact
            work.append((False, Stanza(kind, type_, f"{user}/pc", remote, has_status=True)))
        else:
            stanza = Stanza(kind, type_, remote, user, stream_domains=frozenset({domain}))
            work.append((True, stanza))
    return work


def bench_decisions(snapshot, work: list[tuple[bool, Stanza]]) -> tuple[float, float]:
    """Decisions per CPU second and per wall second, inbound and outbound in two passes."""
    inbound_work = [stanza for is_inbound, stanza in work if is_inbound]
    outbound_work = [stanza for is_inbound, stanza in work if not is_inbound]
    inbound = decide_inbound
    outbound = decide_outbound
    start, cpu_start = time.perf_counter(), time.process_time()
    for stanza in inbound_work:
        inbound(snapshot, stanza)
    for stanza in outbound_work:
        outbound(snapshot, stanza)
    cpu = time.process_time() - cpu_start
    wall = time.perf_counter() - start
    return len(work) / cpu, len(work) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds of 200,000 decisions")
    parser.add_argument("--rebuilds", type=int, default=10)
    args = parser.parse_args()
    rng = random.Random(2026)
    config = make_configuration(rng)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp))
        t0 = time.perf_counter()
        ops.import_configuration(store, OURS, config)
        load = time.perf_counter() - t0
        builds: list[float] = []
        rebuilds: list[float] = []
        rebuilds_cpu: list[float] = []
        snapshot = None
        for _ in range(args.rebuilds):
            t0, c0 = time.perf_counter(), time.process_time()
            generation, stored = store.read()
            c1 = time.process_time()
            snapshot = build_snapshot(stored, OURS, generation=generation)
            t2, c2 = time.perf_counter(), time.process_time()
            rebuilds.append(t2 - t0)
            rebuilds_cpu.append(c2 - c0)
            builds.append(c2 - c1)
        store.close()
    assert snapshot is not None
    work = make_workload(rng, 200_000)
    bench_decisions(snapshot, work[:20_000])  # warm up
    measured = [bench_decisions(snapshot, work) for _ in range(args.rounds)]
    rates = [cpu for cpu, _wall in measured]
    wall_rates = [wall for _cpu, wall in measured]
    print(
        f"snapshot: {len(snapshot.partners)} partners, {len(snapshot.users)} users, "
        f"{len(snapshot.partner_by_domain)} partner domains"
    )
    print(f"store import (one transaction): {load * 1000:.0f} ms")
    print(
        "snapshot rebuild (store read + index build): "
        f"median {statistics.median(rebuilds_cpu) * 1000:.1f} ms CPU, "
        f"{statistics.median(rebuilds) * 1000:.1f} ms wall (max {max(rebuilds) * 1000:.1f} ms); "
        "target <= 200 ms"
    )
    print(f"index build alone: median {statistics.median(builds) * 1000:.1f} ms CPU")
    print(
        f"stanza decisions: {statistics.median(rates):,.0f} per CPU second, median of "
        f"{len(rates)} rounds (best {max(rates):,.0f}, worst {min(rates):,.0f}; "
        "target >= 300,000/s; one thread)"
    )
    print(
        f"  wall clock: median {statistics.median(wall_rates):,.0f}/s (includes time the OS "
        "gave other processes)"
    )


if __name__ == "__main__":
    main()
