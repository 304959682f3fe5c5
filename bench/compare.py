"""edgeproxy vs Prosody 0.12 vs ejabberd 23.01 with the same load-test scenario, in one run.

Usage (root, from the repository: it starts the servers with the interop fixtures' helpers)::

    .venv/bin/python bench/compare.py [--stanzas N] [--idle-streams N] [--write-results]

For each server it runs two phases with ``edgeproxy.loadtest``:

1. **relay** — ``bench/scenarios/compare.toml``: simulated partner domains send chat messages
   over TCP-dialback S2S streams to ``bob@<target>``; delivery is seen on the target's side by a
   raw reader (Prosody/ejabberd: a c2s sink logged in as bob; edgeproxy, which has no c2s: its
   local delivery writes each stanza's bytes to a socket the sink reads). CPU seconds of the
   target (from /proc) per 1,000 relayed stanzas, stanzas/s, p50/p99 latency.
2. **idle** — ``--idle-streams`` S2S streams opened and held idle; RSS growth per stream.

The edgeproxy target runs in a subprocess of this script (``--edge-target``), so its CPU and RSS
are its own. Results go to ``bench/out/compare-*.json`` and, with ``--write-results``, a table
into ``bench/RESULTS.md`` under "## Load test comparison".
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "interop")]

from edgeproxy.loadtest import LoadTest, load_scenario  # noqa: E402
from edgeproxy.loadtest.scenario import Scenario, Sink, SinkKind  # noqa: E402

SIM_ADDR = "127.0.0.31"
EDGE_ADDR, PROSODY_ADDR, EJABBERD_ADDR = "127.0.0.10", "127.0.0.22", "127.0.0.23"
SCENARIO = ROOT / "bench" / "scenarios" / "compare.toml"
OUT = ROOT / "bench" / "out"
RESULTS = ROOT / "bench" / "RESULTS.md"
HEADING = "## Load test comparison"
RUN_DATE = "2026-11-22"


# -- the edgeproxy target (subprocess) ---------------------------------------------------------


async def edge_target(listen: int, sink_port: int, resolver: str, sims: list[str]) -> None:
    """An edge for contoso.test whose local delivery writes stanza bytes to the sink socket."""
    from edgeproxy.net.connector import Connector, ConnectorSettings
    from edgeproxy.net.context import EdgeContext
    from edgeproxy.net.edge import EdgeServer
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

    class SocketDelivery:
        def __init__(self) -> None:
            self.stream: trio.SocketStream | None = None
            self.connected = trio.Event()
            self.lock = trio.Lock()

        async def deliver(self, item) -> None:  # type: ignore[no-untyped-def]
            await self.connected.wait()
            assert self.stream is not None
            async with self.lock:
                await self.stream.send_all(item.raw)

        async def accept(self, stream: trio.SocketStream) -> None:
            self.stream = stream
            self.connected.set()
            await trio.sleep_forever()

    nos = Negotiation.NOT_SUPPORTED
    row = Partner(domain=sims[0], additional_domains=tuple(sims[1:]), tls=nos, sasl=nos,
                  dialback=True, type=PartnerType.FEDERATED, connection_limit=100_000)
    config = Configuration(
        gateway=GatewaySettings(dialback_secret="bench-secret", connection_limit=100_000,
                                partner_connection_limit=100_000),
        partners=(row,),
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
        users=(User(sip="sip:bob@contoso.test"),),
    )
    snapshot = build_snapshot(config, ["contoso.test"])
    host, port = resolver.rsplit(":", 1)
    delivery = SocketDelivery()
    ctx = EdgeContext(policy=lambda: snapshot,
                      connector=Connector(ConnectorSettings(resolver=(host, int(port)), timeout=10)),
                      delivery=delivery)
    async with trio.open_nursery() as nursery:
        await nursery.start(EdgeServer(ctx).run, [(EDGE_ADDR, listen)])
        await nursery.start(functools.partial(trio.serve_tcp, delivery.accept, sink_port, host=EDGE_ADDR))
        print("ready", flush=True)


# -- the comparison ----------------------------------------------------------------------------


def raise_nofile(pid: int | None = None) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if pid is None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    else:
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={hard}:{hard}"], check=False)


def aimed(base: Scenario, domain: str, host: str, port: int, sink: Sink, sim_port: int,
          **traffic: object) -> Scenario:
    mix = tuple(msgspec.structs.replace(m, to=m.to.replace("replaced.test", domain))
                for m in base.traffic.mix)
    return msgspec.structs.replace(
        base,
        target=msgspec.structs.replace(base.target, domain=domain, host=host, port=port),
        partners=msgspec.structs.replace(base.partners, listen_port=sim_port),
        traffic=msgspec.structs.replace(base.traffic, mix=mix, **traffic),
        sink=sink,
    )


def idle_variant(s: Scenario, streams: int) -> Scenario:
    per = 100
    count = max(1, streams // per)
    return msgspec.structs.replace(
        s,
        name=f"{s.name}-idle-{streams}",
        partners=msgspec.structs.replace(s.partners, count=count, streams_per_domain=per,
                                         domains=(), connect_rate=150, connect_timeout=60),
        traffic=msgspec.structs.replace(s.traffic, stanzas=count, idle=3.0, drain=5),
    )


def run_one(s: Scenario, pid: int | None) -> dict[str, object]:
    return trio.run(LoadTest(s, pid=pid, progress=sys.stderr if sys.stderr.isatty() else None).run)


def row_of(name: str, relay: dict, idle: dict | None) -> dict[str, object]:  # type: ignore[type-arg]
    proc = relay.get("target_process") or {}
    iproc = (idle or {}).get("target_process") or {}
    return {
        "server": name,
        "sent": relay["sent"], "delivered": relay["delivered"], "bounced": relay["bounced"],
        "lost": relay["lost"],
        "cpu_s_per_1000": proc.get("cpu_s_per_1000"),
        "stanzas_per_s": relay["stanzas_per_s"],
        "p50_ms": relay["latency_ms"]["p50"], "p99_ms": relay["latency_ms"]["p99"],
        "idle_streams": (idle or {}).get("streams", {}).get("ready"),
        "rss_kib_per_idle_stream": iproc.get("rss_kib_per_stream"),
        "setup_p50_ms": relay["streams"]["setup_ms"]["p50"],
    }


def fmt(v: object, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| server | sent / delivered / bounced / lost | CPU s per 1,000 | stanzas/s | p50 ms | p99 ms "
        "| idle streams | RSS KiB per idle stream | stream set-up p50 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['server']} | {r['sent']} / {r['delivered']} / {r['bounced']} / {r['lost']} "
            f"| {fmt(r['cpu_s_per_1000'], '.3f')} | {fmt(r['stanzas_per_s'], '.0f')} "
            f"| {fmt(r['p50_ms'], '.1f')} | {fmt(r['p99_ms'], '.1f')} | {fmt(r['idle_streams'])} "
            f"| {fmt(r['rss_kib_per_idle_stream'], '.1f')} | {fmt(r['setup_p50_ms'], '.1f')} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stanzas", type=int, default=4000)
    parser.add_argument("--idle-streams", type=int, default=1000)
    parser.add_argument("--write-results", action="store_true")
    parser.add_argument("--edge-target", nargs=4, metavar=("LISTEN", "SINK", "RESOLVER", "SIMS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.edge_target:
        raise_nofile()
        listen, sink, resolver, sims = args.edge_target
        trio.run(edge_target, int(listen), int(sink), resolver, sims.split(","))
        return 0

    from ejabberd import start_ejabberd
    from prosody import PASSWORD, free_port, start_prosody

    from fixtures.dnsmasq import host, srv, start_dnsmasq

    raise_nofile()
    base = load_scenario(SCENARIO)
    sims = sorted({d for n in (base.partners.count, max(1, args.idle_streams // 100))
                   for d in msgspec.structs.replace(base.partners, count=n).domain_names()})
    sim_port = free_port(SIM_ADDR)
    edge_port, edge_sink = free_port(EDGE_ADDR), free_port(EDGE_ADDR)
    p_s2s, p_c2s = free_port(PROSODY_ADDR), free_port(PROSODY_ADDR)
    e_s2s, e_c2s = free_port(EJABBERD_ADDR), free_port(EJABBERD_ADDR)
    records = [
        srv("_xmpp-server._tcp.contoso.test", "contoso.test", edge_port), host("contoso.test", EDGE_ADDR),
        srv("_xmpp-server._tcp.fabrikam.test", "fabrikam.test", p_s2s), host("fabrikam.test", PROSODY_ADDR),
        srv("_xmpp-server._tcp.litware.test", "litware.test", e_s2s), host("litware.test", EJABBERD_ADDR),
    ]
    for sim in sims:
        records += [srv(f"_xmpp-server._tcp.{sim}", sim, sim_port), host(sim, SIM_ADDR)]
    work = OUT / "compare-run"
    work.mkdir(parents=True, exist_ok=True)
    dns = start_dnsmasq(work / "dns", records)
    servers: list[object] = []
    edge = None
    results: dict[str, dict[str, object]] = {}
    try:
        edge = subprocess.Popen(
            [sys.executable, __file__, "--edge-target", str(edge_port), str(edge_sink),
             f"{dns.address}:{dns.port}", ",".join(sims)],
            stdout=subprocess.PIPE, stderr=open(work / "edge.log", "wb"),  # noqa: SIM115
        )
        assert edge.stdout is not None and edge.stdout.readline().strip() == b"ready"
        prosody = start_prosody("fabrikam.test", PROSODY_ADDR, (dns.address, dns.port),
                                c2s_port=p_c2s, s2s_port=p_s2s)
        servers.append(prosody)
        raise_nofile(prosody.process.pid)
        ejabberd = start_ejabberd("litware.test", EJABBERD_ADDR, (dns.address, dns.port),
                                  {"litware.test": EJABBERD_ADDR, **{s: SIM_ADDR for s in sims}},
                                  users=("alice", "bob"), c2s_port=e_c2s, s2s_port=e_s2s)
        servers.append(ejabberd)
        e_pid = int((ejabberd.run_dir / "ejabberd.pid").read_text().strip())
        raise_nofile(e_pid)
        targets = [
            ("edgeproxy", "contoso.test", EDGE_ADDR, edge_port, edge.pid,
             Sink(kind=SinkKind.RAW, host=EDGE_ADDR, port=edge_sink)),
            ("Prosody 0.12", "fabrikam.test", PROSODY_ADDR, p_s2s, prosody.process.pid,
             Sink(kind=SinkKind.C2S, host=PROSODY_ADDR, port=p_c2s, password=PASSWORD)),
            ("ejabberd 23.01", "litware.test", EJABBERD_ADDR, e_s2s, e_pid,
             Sink(kind=SinkKind.C2S, host=EJABBERD_ADDR, port=e_c2s, password=PASSWORD)),
        ]
        rows = []
        for name, domain, address, port, pid, sink in targets:
            relay_s = aimed(base, domain, address, port, sink, sim_port, stanzas=args.stanzas)
            print(f"== {name}: relay", file=sys.stderr)
            relay = run_one(relay_s, pid)
            idle = None
            if args.idle_streams:
                print(f"== {name}: {args.idle_streams} idle streams", file=sys.stderr)
                idle = run_one(idle_variant(relay_s, args.idle_streams), pid)
            results[name] = {"relay": relay, "idle": idle}
            rows.append(row_of(name, relay, idle))
            print(table(rows[-1:]), file=sys.stderr)
    finally:
        for server in servers:
            server.stop()  # type: ignore[attr-defined]
        if edge is not None and edge.poll() is None:
            edge.terminate()
            edge.wait(timeout=10)
        dns.stop()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (OUT / f"compare-{stamp}.json").write_text(json.dumps(results, indent=2, default=str))
    text = table(rows)
    print(text)
    if args.write_results:
        write_results(text, " ".join([".venv/bin/python", "bench/compare.py", *sys.argv[1:]]))
    return 0


def write_results(text: str, command: str) -> None:
    body = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    section = (
        f"{HEADING}\n\nRun {RUN_DATE}, command: `{command}` (as root, from the repository).\n\n{text}\n"
    )
    if HEADING in body:
        before, _, after = body.partition(HEADING)
        nxt = after.find("\n## ")
        body = before + section + (after[nxt:] if nxt >= 0 else "")
    else:
        body = body.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(body)


if __name__ == "__main__":
    sys.exit(main())
