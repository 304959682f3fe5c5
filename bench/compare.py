"""edgeproxy vs Prosody 0.12 vs ejabberd 23.01 with the same load-test scenario, in one run.

Usage (root, from the repository: it starts the servers with the test fixtures' helpers)::

    .venv/bin/python bench/compare.py [--stanzas N] [--idle-sizes 1000,5000,10000] [--tls]
        [--servers edgeproxy,prosody,ejabberd] [--per-domain 100] [--repeat 3]
        [--half-rate R] [--plots DIR] [--no-relay] [--profile-edge] [--write-results]

(``EDGEPROXY_BENCH_GC=off`` in the environment disables the edge's cyclic GC: a diagnostic for
latency spikes. ``--profile-edge`` adds one relay run under cProfile: bench/out/edge-relay*.)

For each server, with ``edgeproxy.loadtest`` and one fresh server process per measurement (so
that memory freed by an earlier phase cannot be reused by a later one and hide its growth):

1. **relay at the maximum rate** — ``bench/scenarios/compare.toml``: simulated partner domains
   send chat messages over TCP-dialback S2S streams to ``bob@<target>`` open loop (as fast as
   the streams take them); delivery is seen on the target's side by a raw reader
   (Prosody/ejabberd: a c2s sink logged in as bob; edgeproxy, which has no c2s: its local
   delivery writes each stanza's bytes to a socket the sink reads). CPU seconds of the target
   (from /proc) per 1,000 relayed stanzas, stanzas/s, p50/p99 latency.
2. **relay at half of that rate** (same process, right after 1): paced at half the stanzas/s
   measured in 1, for ``HALF_RATE_SECONDS``; p50/p99 latency is the "added latency" figure.
3. **idle streams** at each of ``--idle-sizes``: that many S2S streams (``--per-domain`` streams
   for each of size/per-domain simulated domains, the same set for every server) opened and held
   idle; RSS growth per stream. With ``--tls`` the same again over STARTTLS + dialback (rows 13:
   edgeproxy's partner row requires TLS; Prosody mode starttls; ejabberd s2s_use_starttls
   required). Every server gets the same partners: each simulated domain presents a throw-away
   certificate naming that domain only, with its CA (``edgeproxy.loadtest.partner_tls``), as a
   real partner does; until 2026-12-07 one certificate named every simulated domain (100 names
   at 10,000 streams), which made every server's figure per TLS stream grow with the run.

The edgeproxy target runs in a subprocess of this script (``--edge-target``), so its CPU and RSS
are its own. ejabberd is started as user ``ejabberd`` directly (an ``ejabberdctl`` wrapper first
on PATH) instead of through ``su``: ``su`` runs pam_limits, which resets the open-file limit to
1,024 (this container has no CAP_SYS_RESOURCE, so ``prlimit`` on the running node cannot raise
it), and the Erlang VM sizes its port table from the limit at start-up.

Results go to ``bench/out/compare-*.json``, PNG plots (matplotlib, the optional extra ``plot``)
to ``bench/plots/``, and, with ``--write-results``, a table into ``bench/RESULTS.md`` under
"## Load test comparison" (earlier figures of that section are kept under "Earlier runs").
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import json
import os
import pstats
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from edgeproxy.loadtest import LoadTest, load_scenario  # noqa: E402
from edgeproxy.loadtest.report import write_plot  # noqa: E402
from edgeproxy.loadtest.scenario import Scenario, Security, Sink, SinkKind  # noqa: E402

# 127.0.0.90-99 are this benchmark's (the machine is shared with other test runs).
EDGE_ADDR, PROSODY_ADDR, EJABBERD_ADDR = "127.0.0.90", "127.0.0.91", "127.0.0.92"
SIM_ADDR, DNS_ADDR = "127.0.0.93", "127.0.0.94"
SCENARIO = ROOT / "bench" / "scenarios" / "compare.toml"
OUT = ROOT / "bench" / "out"
PLOTS = ROOT / "bench" / "plots"
RESULTS = ROOT / "bench" / "RESULTS.md"
HEADING = "## Load test comparison"
RUN_DATE = time.strftime("%Y-%m-%d")  # the day of the run (plots, RESULTS heading)
#: How long the half-rate run sends (stanzas = rate × this, at most HALF_RATE_MAX_STANZAS).
HALF_RATE_SECONDS = 10
HALF_RATE_MAX_STANZAS = 100_000
#: Idle-stream set-up pace: ejabberd's listen backlog is 5, so all servers get the same 150/s.
IDLE_CONNECT_RATE = 150
IDLE_HOLD_SECONDS = 5.0
EDGE_DOMAIN, PROSODY_DOMAIN, EJABBERD_DOMAIN = "contoso.test", "fabrikam.test", "litware.test"


# -- the edgeproxy target (subprocess) ---------------------------------------------------------


async def edge_target(listen: int, sink_port: int, resolver: str, sims: list[str],
                      pki: Path | None) -> None:
    """An edge for contoso.test whose local delivery writes stanza bytes to the sink socket."""
    from edgeproxy.certs.contexts import TlsRole, tls_context
    from edgeproxy.config import LimitsSection
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

    # EDGEPROXY_BENCH_SINK=per-stanza: one locked send_all per stanza (the earlier sink).
    PER_STANZA_SINK = os.environ.get("EDGEPROXY_BENCH_SINK") == "per-stanza"

    class SocketDelivery:
        """Local delivery to the sink socket, shaped like the product's ChannelDelivery (which
        queues for the gateway without waiting) and like Prosody's c2s writes (buffered, sent
        when the event loop comes round): ``deliver`` appends the stanza's bytes and returns at
        once; one writer sends everything queued in one write. Bounded: past SINK_BUFFER bytes
        ``deliver`` waits for the writer (the edge stops reading, TCP pushes back)."""

        SINK_BUFFER = 4 * 1024 * 1024

        def __init__(self) -> None:
            self.connected = trio.Event()
            self.stream: trio.SocketStream | None = None
            self.lock = trio.Lock()
            self._pending: list[bytes] = []
            self._bytes = 0
            self._wake = trio.Event()
            self._room = trio.Event()

        async def deliver(self, item) -> None:  # type: ignore[no-untyped-def]
            if PER_STANZA_SINK:  # the sink of the 2026-11-22 runs, for side-by-side figures
                await self.connected.wait()
                assert self.stream is not None
                async with self.lock:
                    await self.stream.send_all(item.raw)
                return
            while self._bytes >= self.SINK_BUFFER:
                if self._room.is_set():
                    self._room = trio.Event()
                await self._room.wait()
            self._pending.append(item.raw)
            self._bytes += len(item.raw)
            self._wake.set()

        async def accept(self, stream: trio.SocketStream) -> None:
            # Each run's sink connects anew: the latest connection is the writer, an earlier
            # one's writer stops (a sink gone at the end of its run is no error of the edge).
            self.stream = stream
            self.connected.set()
            self._wake.set()  # an earlier writer wakes, sees it is not the latest and stops
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while True:
                    await self._wake.wait()
                    if self.stream is not stream:
                        return
                    self._wake = trio.Event()
                    while self._pending and self.stream is stream:
                        chunk = b"".join(self._pending)
                        self._pending.clear()
                        self._bytes = 0
                        self._room.set()
                        await stream.send_all(chunk)

    nos, req = Negotiation.NOT_SUPPORTED, Negotiation.REQUIRED
    row = Partner(domain=sims[0], additional_domains=tuple(sims[1:]),
                  tls=req if pki else nos, sasl=nos,
                  dialback=True, type=PartnerType.FEDERATED, connection_limit=100_000)
    config = Configuration(
        gateway=GatewaySettings(dialback_secret="bench-secret", connection_limit=100_000,
                                partner_connection_limit=100_000),
        partners=(row,),
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
        users=(User(sip=f"sip:bob@{EDGE_DOMAIN}"),),
    )
    snapshot = build_snapshot(config, [EDGE_DOMAIN])
    host, port = resolver.rsplit(":", 1)
    delivery = SocketDelivery()
    tls: dict[str, object] = {}
    if pki is not None:
        files = (pki / f"{EDGE_DOMAIN}.crt", pki / f"{EDGE_DOMAIN}.key", pki / "ca.crt")
        tls = {"server_ssl": tls_context(TlsRole.S2S_SERVER, *files),
               "client_ssl": tls_context(TlsRole.S2S_CLIENT, *files)}
    # All simulated partners connect from one address, up to 64 at a time (the harness's
    # CONNECT_CONCURRENCY): the per-address pre-authentication caps are raised for the bench
    # like the connection limits above, and like Prosody's and ejabberd's bench configurations
    # run without their per-connection limits. The shaper and write timeout stay at default.
    limits = LimitsSection(preauth_per_ip=100_000, preauth_total=100_000, dialback_per_ip=100_000)
    ctx = EdgeContext(policy=lambda: snapshot,
                      connector=Connector(ConnectorSettings(resolver=(host, int(port)), timeout=10)),
                      delivery=delivery, limits=limits, **tls)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(EdgeServer(ctx).run, [(EDGE_ADDR, listen)])
        await nursery.start(functools.partial(trio.serve_tcp, delivery.accept, sink_port, host=EDGE_ADDR))
        print("ready", flush=True)


def edge_target_main(args: list[str], profile: str | None) -> int:
    raise_nofile()
    if os.environ.get("EDGEPROXY_BENCH_GC") == "off":  # diagnostic: are latency spikes GC pauses?
        import gc

        gc.disable()
    listen, sink, resolver, sims_file, pki = args
    sims = Path(sims_file).read_text().split()
    run = functools.partial(trio.run, edge_target, int(listen), int(sink), resolver, sims,
                            Path(pki) if pki != "-" else None)
    if profile is None:
        run()
        return 0
    profiler = cProfile.Profile()

    def dump(signum: int, frame: object) -> None:
        profiler.disable()
        profiler.dump_stats(profile)
        os._exit(0)

    signal.signal(signal.SIGTERM, dump)
    profiler.enable()
    run()
    return 0


# -- servers -----------------------------------------------------------------------------------


def raise_nofile(pid: int | None = None) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if pid is None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    else:
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={hard}:{hard}"], check=False,
                       capture_output=True)


def nofile_of(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return "/".join(line.split()[3:5])
    return "?"


@dataclass
class Running:
    """One started server under test."""

    name: str
    domain: str
    host: str
    port: int
    pid: int
    sink: Sink
    stop: Callable[[], None]


@dataclass
class Lab:
    """What every start needs: DNS, the simulated domains, the certificates."""

    dns: tuple[str, int]
    sims: list[str]
    work: Path
    pki: Path
    sim_port: int


def make_pki(directory: Path, domains: tuple[str, ...]) -> Path:
    """A private CA (``ca.crt``) and ``DOMAIN.crt``/``DOMAIN.key`` for each target domain."""
    from edgeproxy.certs import selfsigned
    from edgeproxy.certs.pem import certificates_pem, private_key_pem

    directory.mkdir(parents=True, exist_ok=True)
    ca = selfsigned.make_authority("edgeproxy compare.py CA")
    (directory / "ca.crt").write_bytes(certificates_pem([ca.certificate]))
    for domain in domains:
        key = selfsigned.new_ec_key()
        cert = selfsigned.issue(ca, key.public_key(), [domain])
        (directory / f"{domain}.crt").write_bytes(certificates_pem([cert]))
        (directory / f"{domain}.key").write_bytes(private_key_pem(key))
    for path in [directory, *directory.iterdir()]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)  # Prosody/ejabberd copy them as others
    return directory


def certs_of(lab: Lab, domain: str) -> tuple[Path, Path, Path]:
    return lab.pki / f"{domain}.crt", lab.pki / f"{domain}.key", lab.pki / "ca.crt"


def start_edge(lab: Lab, tls: bool, profile: str | None = None) -> Running:
    from fixtures.ports import free_port

    port, sink_port = free_port(EDGE_ADDR), free_port(EDGE_ADDR)
    sims_file = lab.work / "sims.txt"
    sims_file.write_text("\n".join(lab.sims))
    cmd = [sys.executable, __file__, "--edge-target", str(port), str(sink_port),
           f"{lab.dns[0]}:{lab.dns[1]}", str(sims_file), str(lab.pki) if tls else "-"]
    if profile:
        cmd += ["--profile-to", profile]
    edge = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            stderr=open(lab.work / "edge.log", "ab"))  # noqa: SIM115
    assert edge.stdout is not None and edge.stdout.readline().strip() == b"ready"

    def stop() -> None:
        if edge.poll() is None:
            edge.terminate()
            edge.wait(timeout=30)

    return Running("edgeproxy", EDGE_DOMAIN, EDGE_ADDR, port, edge.pid,
                   Sink(kind=SinkKind.RAW, host=EDGE_ADDR, port=sink_port), stop)


def start_prosody_target(lab: Lab, tls: bool) -> Running:
    from fixtures.ports import free_port
    from fixtures.xmpp_servers import PASSWORD, start_prosody

    s2s, c2s = free_port(PROSODY_ADDR), free_port(PROSODY_ADDR)
    server = start_prosody(PROSODY_DOMAIN, PROSODY_ADDR, lab.dns, c2s_port=c2s, s2s_port=s2s,
                           mode="starttls" if tls else "plain",
                           certs=certs_of(lab, PROSODY_DOMAIN) if tls else None)
    return Running("Prosody 0.12", PROSODY_DOMAIN, PROSODY_ADDR, s2s, server.process.pid,
                   Sink(kind=SinkKind.C2S, host=PROSODY_ADDR, port=c2s, password=PASSWORD),
                   server.stop)


@contextmanager
def ejabberdctl_as_ejabberd(work: Path) -> Iterator[None]:
    """Put an ``ejabberdctl`` first on PATH that runs the real one as user ejabberd (no ``su``,
    so no pam_limits: the node inherits our raised open-file limit)."""
    import pwd
    import shutil

    real = shutil.which("ejabberdctl") or shutil.which("ejabberdctl", path="/usr/sbin:/sbin")
    assert real, "ejabberdctl not found"
    home = pwd.getpwnam("ejabberd").pw_dir
    wrapper_dir = work / "ejabberdctl-wrapper"
    wrapper_dir.mkdir(parents=True, exist_ok=True)
    wrapper = wrapper_dir / "ejabberdctl"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"export HOME={home}\n"
        'cd "$HOME"\n'
        f'exec setpriv --reuid=ejabberd --regid=ejabberd --init-groups -- {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{wrapper_dir}:{old}"
    try:
        yield
    finally:
        os.environ["PATH"] = old


def start_ejabberd_target(lab: Lab, tls: bool) -> Running:
    from fixtures.ports import free_port
    from fixtures.xmpp_servers import PASSWORD, start_ejabberd

    s2s, c2s = free_port(EJABBERD_ADDR), free_port(EJABBERD_ADDR)
    with ejabberdctl_as_ejabberd(lab.work):
        server = start_ejabberd(
            EJABBERD_DOMAIN, EJABBERD_ADDR, lab.dns,
            {EJABBERD_DOMAIN: EJABBERD_ADDR, **{s: SIM_ADDR for s in lab.sims}},
            users=("alice", "bob"), c2s_port=c2s, s2s_port=s2s,
            mode="starttls" if tls else "plain",
            certs=certs_of(lab, EJABBERD_DOMAIN) if tls else None)
    pid = int((server.run_dir / "ejabberd.pid").read_text().strip())
    return Running("ejabberd 23.01", EJABBERD_DOMAIN, EJABBERD_ADDR, s2s, pid,
                   Sink(kind=SinkKind.C2S, host=EJABBERD_ADDR, port=c2s, password=PASSWORD),
                   server.stop)


def start_edge_workers(lab: Lab, tls: bool, workers: int) -> Running:
    """``edgeproxy serve --role edge`` with ``[edge] workers = N`` and its channel sink
    (``bench/_workers_target.py``); the store holds what ``edge_target`` builds in memory."""
    from _workers_target import start_serve_with_workers, write_config
    from edgeproxy.policy.model import (
        AccessPolicy,
        Configuration,
        GatewaySettings,
        Negotiation,
        Partner,
        PartnerType,
        User,
    )
    from edgeproxy.policy.store import Store
    from fixtures.ports import free_port

    directory = Path(tempfile.mkdtemp(prefix=f"serve-w{workers}-", dir=lab.work))
    nos, req = Negotiation.NOT_SUPPORTED, Negotiation.REQUIRED
    row = Partner(domain=lab.sims[0], additional_domains=tuple(lab.sims[1:]), tls=req if tls else nos, sasl=nos,
                  dialback=True, type=PartnerType.FEDERATED, connection_limit=100_000)
    with Store.open(directory / "state") as store, store.write() as tx:
        tx.replace_all(Configuration(
            gateway=GatewaySettings(dialback_secret="bench-secret", connection_limit=100_000,
                                    partner_connection_limit=100_000),
            partners=(row,), policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
            users=(User(sip=f"sip:bob@{EDGE_DOMAIN}"),)))
    port, admin, sink_port = free_port(EDGE_ADDR), free_port(EDGE_ADDR), free_port(EDGE_ADDR)
    config = write_config(directory, host=EDGE_ADDR, port=port, admin_port=admin, workers=workers,
                          resolver=lab.dns, tls_files=certs_of(lab, EDGE_DOMAIN) if tls else None)
    serve, sink = start_serve_with_workers(directory, config, host=EDGE_ADDR, admin_port=admin,
                                           workers=workers, sink_port=sink_port)

    def stop() -> None:
        for process in (sink, serve):
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=60)

    return Running(f"edgeproxy serve --workers {workers}", EDGE_DOMAIN, EDGE_ADDR, port, serve.pid,
                   Sink(kind=SinkKind.RAW, host=EDGE_ADDR, port=sink_port), stop)


STARTERS: dict[str, Callable[[Lab, bool], Running]] = {
    "edgeproxy": start_edge, "prosody": start_prosody_target, "ejabberd": start_ejabberd_target,
    # the product's own process layout: `serve --role edge`, one process or a supervisor and N
    # worker processes, with a channel sink for the gateway (bench/_workers_target.py)
    **{f"edgeproxy-w{n}": functools.partial(start_edge_workers, workers=n) for n in (1, 2, 3, 4)},
}


@contextmanager
def started(key: str, lab: Lab, tls: bool = False) -> Iterator[Running]:
    server = STARTERS[key](lab, tls)
    try:
        print(f"   {server.name} pid {server.pid}, open files {nofile_of(server.pid)}", file=sys.stderr)
        time.sleep(1.0)  # let it settle before the first sample
        yield server
    finally:
        server.stop()


# -- scenarios ---------------------------------------------------------------------------------


def aimed(base: Scenario, server: Running, sim_port: int, **traffic: object) -> Scenario:
    mix = tuple(msgspec.structs.replace(m, to=m.to.replace("replaced.test", server.domain))
                for m in base.traffic.mix)
    return msgspec.structs.replace(
        base,
        target=msgspec.structs.replace(base.target, domain=server.domain, host=server.host,
                                       port=server.port),
        partners=msgspec.structs.replace(base.partners, listen_port=sim_port,
                                         listen_host=SIM_ADDR),
        traffic=msgspec.structs.replace(base.traffic, mix=mix, **traffic),
        sink=server.sink,
    )


def idle_variant(s: Scenario, streams: int, per_domain: int, tls: bool) -> Scenario:
    count = max(1, streams // per_domain)
    return msgspec.structs.replace(
        s,
        name=f"{s.name}-idle-{streams}{'-tls' if tls else ''}",
        partners=msgspec.structs.replace(
            s.partners, count=count, streams_per_domain=per_domain, domains=(),
            connect_rate=IDLE_CONNECT_RATE, connect_timeout=60,
            security=Security.STARTTLS_DIALBACK if tls else Security.PLAIN),
        traffic=msgspec.structs.replace(s.traffic, stanzas=count, idle=IDLE_HOLD_SECONDS, drain=10),
    )


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine (``/proc/stat``'s first line)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def run_one(s: Scenario, pid: int | None) -> dict[str, object]:
    """One load test; also how busy the whole machine was (cores) and this process's own CPU
    (the load generator and the sink reader) per 1,000 stanzas sent."""
    busy0, total0 = _machine_jiffies()
    own0 = resource.getrusage(resource.RUSAGE_SELF)
    result = trio.run(LoadTest(s, pid=pid, progress=sys.stderr if sys.stderr.isatty() else None).run)
    own1 = resource.getrusage(resource.RUSAGE_SELF)
    busy1, total1 = _machine_jiffies()
    cores = os.cpu_count() or 1
    result["machine_busy_cores"] = cores * (busy1 - busy0) / max(1, total1 - total0)
    own = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
    sent = int(result["sent"]) or 1  # type: ignore[call-overload]
    result["generator_cpu_s_per_1000"] = 1000 * own / sent
    return result


def end_to_end_rate(result: dict[str, object]) -> float:
    """Settled stanzas / (last settled - first sent): what the target really sustained. (The
    runner's ``stanzas_per_s`` divides by the send time or the largest latency, whichever is
    longer, which overstates a run whose backlog drains after the last send.)"""
    span = result.get("settle_span_s")
    settled = int(result["delivered"]) + int(result["bounced"])  # type: ignore[call-overload]
    return settled / span if isinstance(span, float) and span > 0 else float("nan")


def relay_row(name: str, full: dict, half: dict | None) -> dict[str, object]:  # type: ignore[type-arg]
    proc = full.get("target_process") or {}
    return {
        "server": name,
        "sent": full["sent"], "delivered": full["delivered"], "bounced": full["bounced"],
        "lost": full["lost"],
        "cpu_s_per_1000": proc.get("cpu_s_per_1000"),
        "stanzas_per_s": end_to_end_rate(full),
        "busy_cores": full.get("machine_busy_cores"),
        "generator_cpu_s_per_1000": full.get("generator_cpu_s_per_1000"),
        "p50_ms": full["latency_ms"]["p50"], "p99_ms": full["latency_ms"]["p99"],
        "half_rate": (half or {}).get("rate"),
        "half_achieved": end_to_end_rate(half) if half else None,
        "half_sent": (half or {}).get("sent"), "half_lost": (half or {}).get("lost"),
        "half_p50_ms": (half or {}).get("latency_ms", {}).get("p50"),
        "half_p99_ms": (half or {}).get("latency_ms", {}).get("p99"),
        "half_cpu_s_per_1000": ((half or {}).get("target_process") or {}).get("cpu_s_per_1000"),
    }


def median_row(rows: list[dict[str, object]]) -> dict[str, object]:
    """Per figure, the median over repeated runs; "spread" keeps min–max of the key ones."""
    out: dict[str, object] = dict(rows[0])
    for key, value in rows[0].items():
        values = [r[key] for r in rows]
        if isinstance(value, int | float) and not isinstance(value, bool) and None not in values:
            out[key] = statistics.median(values)  # type: ignore[type-var]
            out[f"{key}_range"] = (min(values), max(values))  # type: ignore[type-var]
    for key in ("sent", "delivered", "bounced", "lost", "half_sent", "half_lost"):
        if None not in (values := [r[key] for r in rows]):
            out[key] = sum(values)  # type: ignore[arg-type]
    out["runs"] = len(rows)
    return out


def idle_row(name: str, size: int, tls: bool, idle: dict) -> dict[str, object]:  # type: ignore[type-arg]
    proc = idle.get("target_process") or {}
    samples = proc.get("samples") or {}
    start = (samples.get("start") or {}).get("rss_kib")
    held = (samples.get("streams_idle") or {}).get("rss_kib")
    return {
        "server": name, "streams": size, "tls": tls,
        "ready": idle["streams"]["ready"],
        "setup_errors": len(idle["streams"]["setup_errors"]),
        "rss_start_mib": start / 1024 if start else None,
        "rss_idle_mib": held / 1024 if held else None,
        "kib_per_stream": proc.get("rss_kib_per_stream"),
        "setup_p50_ms": idle["streams"]["setup_ms"]["p50"],
        "check": f"{idle['delivered']}/{idle['sent']}",
    }


def fmt(v: object, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def relay_table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| server | runs | max rate: sent / delivered / bounced / lost (all runs) | CPU s per 1,000 "
        "(min–max) | stanzas per CPU-second | stanzas/s (min–max) "
        "| p50 ms | p99 ms | half rate /s (asked / achieved) | half: sent / lost (all runs) | half: p50 ms | half: p99 ms "
        "| half: CPU s per 1,000 | machine busy, cores | load generator CPU s per 1,000 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cpu = r["cpu_s_per_1000"]
        lines.append(
            f"| {r['server']} | {r.get('runs', 1)} "
            f"| {r['sent']} / {r['delivered']} / {r['bounced']} / {r['lost']} "
            f"| {fmt(cpu, '.3f')} ({span(r, 'cpu_s_per_1000', '.3f')}) "
            f"| {fmt(1000 / cpu if isinstance(cpu, float) and cpu > 0 else None, '.0f')} "
            f"| {fmt(r['stanzas_per_s'], '.0f')} ({span(r, 'stanzas_per_s', '.0f')}) "
            f"| {fmt(r['p50_ms'], '.1f')} | {fmt(r['p99_ms'], '.1f')} "
            f"| {fmt(r['half_rate'], '.0f')} / {fmt(r['half_achieved'], '.0f')} "
            f"| {fmt(r['half_sent'])} / {fmt(r['half_lost'])} "
            f"| {fmt(r['half_p50_ms'], '.2f')} "
            f"| {fmt(r['half_p99_ms'], '.2f')} ({span(r, 'half_p99_ms', '.1f')}) "
            f"| {fmt(r['half_cpu_s_per_1000'], '.3f')} "
            f"| {fmt(r.get('busy_cores'), '.2f')} | {fmt(r.get('generator_cpu_s_per_1000'), '.3f')} |"
        )
    return "\n".join(lines)


def span(row: dict[str, object], key: str, spec: str) -> str:
    low_high = row.get(f"{key}_range")
    if not isinstance(low_high, tuple):
        return "–"
    return f"{format(low_high[0], spec)}–{format(low_high[1], spec)}"


def idle_table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| server | streams | TLS | held (of wanted) | set-up errors | RSS before MiB "
        "| RSS held MiB | RSS KiB per idle stream | set-up p50 ms | stanza check delivered/sent |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['server']} | {r['streams']} | {'STARTTLS' if r['tls'] else 'plain'} "
            f"| {r['ready']} | {r['setup_errors']} | {fmt(r['rss_start_mib'], '.1f')} "
            f"| {fmt(r['rss_idle_mib'], '.1f')} | {fmt(r['kib_per_stream'], '.1f')} "
            f"| {fmt(r['setup_p50_ms'], '.1f')} | {r['check']} |"
        )
    return "\n".join(lines)


def plot_idle(rows: list[dict[str, object]], path: Path) -> str:
    """RSS per idle stream against the number of streams, one line per server and security."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return "idle plot skipped: matplotlib is not installed (pip install 'edgeproxy[plot]')"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=80)
    for (server, tls) in dict.fromkeys((r["server"], r["tls"]) for r in rows):
        pts = [(r["streams"], r["kib_per_stream"]) for r in rows
               if r["server"] == server and r["tls"] == tls and r["kib_per_stream"] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", linestyle="--" if tls else "-",
                    label=f"{server} ({'STARTTLS' if tls else 'plain'})")
    ax.axhline(40, color="grey", linewidth=0.8)
    ax.axhline(80, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("idle S2S streams held")
    ax.set_ylabel("RSS KiB per stream")
    ax.set_title("RSS per idle stream (targets: 40 KiB plain, 80 KiB TLS)", fontsize="medium")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return f"plot written to {path}"


def slug(name: str) -> str:
    return name.split()[0].lower()


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def profile_edge(lab: Lab, base: Scenario, stanzas: int) -> str:
    """One more open-loop relay against a fresh edge under cProfile: where its CPU goes."""
    out = OUT / "edge-relay.pstats"
    server = start_edge(lab, False, profile=str(out))
    try:
        time.sleep(1.0)
        run_one(aimed(base, server, lab.sim_port, stanzas=stanzas), server.pid)
    finally:
        server.stop()
    text = OUT / "edge-relay-profile.txt"
    with text.open("w") as f:
        stats = pstats.Stats(str(out), stream=f)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)
    return str(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stanzas", type=int, default=20000, help="stanzas of the max-rate run")
    parser.add_argument("--idle-sizes", default="1000,5000,10000")
    parser.add_argument("--per-domain", type=int, default=100,
                        help="idle streams per simulated domain")
    parser.add_argument("--tls", action="store_true", help="idle streams over STARTTLS too")
    parser.add_argument("--servers", default="edgeproxy,prosody,ejabberd",
                        help="any of edgeproxy (the edge in this script's subprocess, local delivery to"
                        " the sink), edgeproxy-w1 … edgeproxy-w4 (edgeproxy serve --role edge with that"
                        " many worker processes and a channel sink), prosody, ejabberd")
    parser.add_argument("--no-relay", action="store_true")
    parser.add_argument("--repeat", type=int, default=3,
                        help="relay runs at each rate (figures are their medians)")
    parser.add_argument("--profile-edge", action="store_true")
    parser.add_argument("--write-results", action="store_true")
    parser.add_argument("--half-rate", type=float, default=0.0,
                        help="pace the second relay phase at this rate instead of half the max")
    parser.add_argument("--plots", type=Path, default=PLOTS,
                        help="where run 1's PNGs go (default bench/plots, the recorded run's)")
    parser.add_argument("--edge-target", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.edge_target:
        return edge_target_main(args.edge_target, args.profile_to)

    from fixtures.dnsmasq import host, srv, start_dnsmasq
    from fixtures.ports import free_port

    raise_nofile()
    load_start = uptime()
    keys = args.servers.split(",")
    sizes = [int(n) for n in args.idle_sizes.split(",") if n]
    base = load_scenario(SCENARIO)
    sims = sorted({d for n in (base.partners.count, *(max(1, s // args.per_domain) for s in sizes))
                   for d in msgspec.structs.replace(base.partners, count=n).domain_names()})
    sim_port = free_port(SIM_ADDR)
    work = Path(tempfile.mkdtemp(prefix="compare-", dir=OUT if OUT.exists() else None))
    records = [host(d, a) for d, a in ((EDGE_DOMAIN, EDGE_ADDR), (PROSODY_DOMAIN, PROSODY_ADDR),
                                       (EJABBERD_DOMAIN, EJABBERD_ADDR))]
    for sim in sims:
        records += [srv(f"_xmpp-server._tcp.{sim}", sim, sim_port), host(sim, SIM_ADDR)]
    dns = start_dnsmasq(work / "dns", records, address=DNS_ADDR)
    lab = Lab((dns.address, dns.port), sims, work, make_pki(work / "pki", (
        EDGE_DOMAIN, PROSODY_DOMAIN, EJABBERD_DOMAIN)), sim_port)
    results: dict[str, object] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                  "load_at_start": load_start}
    relay_rows: list[dict[str, object]] = []
    idle_rows: list[dict[str, object]] = []
    plots: Path = args.plots
    plots.mkdir(parents=True, exist_ok=True)
    try:
        for key in keys:
            if not args.no_relay:
                print(f"== {key}: relay", file=sys.stderr)
                with started(key, lab) as server:
                    fulls = [run_one(aimed(base, server, sim_port, stanzas=args.stanzas), server.pid)
                             for _ in range(args.repeat)]
                    max_rate = statistics.median(end_to_end_rate(r) for r in fulls)
                    rate = args.half_rate or max(1.0, max_rate / 2)
                    n = int(min(HALF_RATE_MAX_STANZAS, rate * HALF_RATE_SECONDS))
                    halfs = [run_one(aimed(base, server, sim_port, stanzas=n, rate=rate,
                                           duration=HALF_RATE_SECONDS * 3), server.pid)
                             for _ in range(args.repeat)]
                for half in halfs:
                    half["rate"] = rate
                results[f"{key}-relay-max"], results[f"{key}-relay-half"] = fulls, halfs
                relay_rows.append(median_row([relay_row(server.name, f, h)
                                              for f, h in zip(fulls, halfs, strict=True)]))
                print(relay_table(relay_rows[-1:]), file=sys.stderr)
                for tag, runs in (("max", fulls), ("half", halfs)):
                    for i, res in enumerate(runs, 1):
                        # Run 1's plots are the record (bench/plots, in git); the rest: bench/out.
                        where = plots if i == 1 else OUT / "plots"
                        where.mkdir(parents=True, exist_ok=True)
                        print(write_plot(res, where / f"{key}-relay-{tag}-{i}.png",
                                         title=f"{server.name}: relay at {tag} rate, run {i} "
                                               f"of {len(runs)} ({RUN_DATE})"),
                              file=sys.stderr)
            for tls in (False, True) if args.tls else (False,):
                for size in sizes:
                    print(f"== {key}: {size} idle streams{' (TLS)' if tls else ''}", file=sys.stderr)
                    with started(key, lab, tls) as server:
                        idle = run_one(idle_variant(aimed(base, server, sim_port), size,
                                                    args.per_domain, tls), server.pid)
                    results[f"{key}-idle-{size}{'-tls' if tls else ''}"] = idle
                    idle_rows.append(idle_row(server.name, size, tls, idle))
                    print(idle_table(idle_rows[-1:]), file=sys.stderr)
        if args.profile_edge:
            results["edge_profile"] = profile_edge(lab, base, args.stanzas)
    finally:
        dns.stop()
        results["load_at_end"] = uptime()
        stamp = time.strftime("%Y%m%dT%H%M%S")
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"compare-{stamp}.json").write_text(json.dumps(
            {**results, "relay_rows": relay_rows, "idle_rows": idle_rows}, indent=2, default=str))
    if idle_rows:
        print(plot_idle(idle_rows, plots / "idle-rss.png"), file=sys.stderr)
    text = relay_table(relay_rows) + "\n\n" + idle_table(idle_rows)
    print(text)
    print(f"load: start {load_start}\n      end   {results['load_at_end']}")
    if args.write_results:
        write_results(text, " ".join([".venv/bin/python", "bench/compare.py", *sys.argv[1:]]),
                      load_start, str(results["load_at_end"]))
    return 0


def write_results(text: str, command: str, load_start: str, load_end: str) -> None:
    body = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    section = (
        f"{HEADING}\n\nRun {RUN_DATE}, command: `{command}` (as root, from the repository). "
        f"Load (`uptime`) at start: `{load_start}`; at end: `{load_end}`.\n\n{text}\n"
    )
    if HEADING in body:
        before, _, after = body.partition(HEADING)
        nxt = after.find("\n## ")
        earlier = after[: nxt if nxt >= 0 else len(after)].strip("\n")
        section += "\n### Earlier runs (kept for comparison)\n\n" + earlier.replace(
            "\n### Earlier runs (kept for comparison)\n", "\n") + "\n"
        body = before + section + (after[nxt:] if nxt >= 0 else "")
    else:
        body = body.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(body)


if __name__ == "__main__":
    sys.exit(main())
