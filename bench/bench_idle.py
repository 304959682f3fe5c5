"""Idle streams and refusals (issue 21, point 3): what a refused stream costs the edge, and whether
memory comes back after thousands of idle streams have come and gone.

What runs where
---------------
* **The system under test** is a real ``edgeproxy serve --role both`` subprocess
  (``tests/fixtures/serve.py``: default configuration, every listener on 127.0.21.1, private
  ports) whose store has the partners below (Federated, TCP dialback, ``proxy-fqdn`` = the
  partner listener) — and nothing else changed but, for the retention phase only, the total
  connection limit (SPEC §3, default 1,000) raised above ``--streams``. ``--src DIR`` runs it
  from another source tree (PYTHONPATH), ``--label`` names it; several trees alternate.
* **The partners** run here: the load-test partner simulator (``edgeproxy.loadtest.partner``)
  opens authenticated idle streams for simulated domains (``open_stream``: TCP dialback), and
  its listener on 127.0.21.2 answers the edge's ``db:verify``. Streams that only need a header
  are raw sockets from 127.0.22.1-N (``--sources``, 16).

Phases (every loop has a count and a timeout):

``refusals``
    One server per tree, all running at once, with the default limits. (1) ``full.test``'s
    slots are filled (its ``partner-connection-limit``, 20, authenticated streams), then
    ``--refusals`` raw streams whose header claims full.test are opened, ``--concurrency`` at a
    time over the source addresses (below ``preauth-per-ip``): each is refused at its header.
    (2) 20 raw sockets from one address hold its ``preauth-per-ip`` slots; ``--refusals`` more
    from that address are refused at accept. (3) Authenticated streams of simulated domains fill
    the total limit (1,000); ``--refusals`` more are refused at accept. Each wave is cut into
    ``--batches`` that alternate between the trees (ABBA…), so that each sees the same load of
    this shared machine. For each: the serve process's CPU (``/proc/<pid>/stat`` utime+stime,
    10 ms ticks) per refused stream over its batches, its idle CPU rate over the same time
    subtracted (reported), the wall time, what the clients saw, and the server's
    ``edgeproxy_limit_reached_total{limit}`` delta (that the refusals were the intended ones).
    The figure depends on the arrival pattern too (a busier server amortises its wake-ups over
    more connections): compare trees within one run.
``retention``
    A fresh server; ``--cycles`` times: ``--streams`` authenticated idle streams opened
    (``--per-domain`` per simulated domain: the default per-partner limit, so no partner limit
    refuses them), held ``--hold`` s, closed (``</stream:stream>``, all at once), then once the
    edge reports no inbound stream and ``--settle`` s passed, VmRSS. Reported: RSS at start,
    held and after each close; after the last close / after the first (the goal: within 5 %);
    KiB per held stream; CPU per stream opened and closed. Trees run one after the other (the
    order reversed every other ``--rounds``).

Diagnostics (a ``sitecustomize`` on the server's PYTHONPATH, bench only): ``--probe`` makes the
server write, on SIGUSR1 after each cycle (and while the first cycle's streams are held), its
live objects counted by type (``gc.get_objects``, after ``gc.collect``), pymalloc's arenas
(``sys._debugmallocstats``) and, with ``--tracemalloc N``, a tracemalloc snapshot (N frames);
printed: RSS by kind of mapping, objects per held stream, the growth from the first cycle to
the last. ``--trim`` has the server call glibc's
``malloc_trim(0)`` (SIGUSR2) after each cycle's sample and samples RSS again: whether what is not
given back is free memory malloc keeps or live memory. ``BENCH_PROFILE=1`` runs the server's
main thread under cProfile (``server.prof`` in its directory, written at its exit; ``--keep``).

    .venv/bin/python bench/bench_idle.py [--phases refusals retention] [--refusals 5000]
        [--streams 5000] [--cycles 5] [--src DIR --label L ...] [--probe] [--trim] [--json F]
        [--tls] [--trim-held]

``--tls`` runs the retention phase over STARTTLS + dialback: the partner rows require TLS, the
edge has a certificate of a private CA, and each simulated domain presents a throw-away
certificate naming that domain only (as the load test generates them). With ``--probe`` a probe before the
streams are opened gives, per held stream: RSS by mapping, glibc's bytes in use and free
(``mallinfo2``), pymalloc's bytes in use, every SSLContext's session-cache entries and, with
``--tracemalloc``, the Python allocations by line; ``--trim-held`` runs ``malloc_trim(0)`` while
the first cycle's streams are held and reads RSS again.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tests/fixtures: start_serve

from edgeproxy.config import LimitsSection  # noqa: E402
from edgeproxy.loadtest.accounting import Ledger  # noqa: E402
from edgeproxy.loadtest.partner import (  # noqa: E402
    OutboundStream,
    PartnerListener,
    StreamSetupError,
    listener_snapshot,  # noqa: E402
    open_stream,
    partner_snapshot,
)
from edgeproxy.loadtest.partner_tls import PartnerTls  # noqa: E402
from edgeproxy.loadtest.scenario import (  # noqa: E402
    MixEntry,
    Partners,
    Scenario,
    Security,
    StanzaKind,
    Target,
    Traffic,
)
from edgeproxy.policy.model import (  # noqa: E402
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
)
from fixtures.ports import free_port  # noqa: E402
from fixtures.serve import DOMAIN, EdgeCertificates, ServeProcess, start_serve  # noqa: E402

EDGE_IP, PARTNER_IP, CLIENT_NET = "127.0.21.1", "127.0.21.2", "127.0.22"
SECRET = "bench-idle-dialback-secret"
FULL = "full.test"
#: The defaults the refusal phase runs against (GatewaySettings, [limits]).
PARTNER_LIMIT = GatewaySettings(dialback_secret="-").partner_connection_limit
TOTAL_LIMIT = GatewaySettings(dialback_secret="-").connection_limit
PREAUTH_PER_IP = LimitsSection().preauth_per_ip
WAVES = ("partner-connection", "preauth-per-ip", "connection")
#: Seconds one raw refused stream, one stream set-up, one close may take at most.
STREAM_TIMEOUT = 30.0
HEADER = (
    "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    " xmlns:db='jabber:server:dialback' from='{from_}' to='" + DOMAIN + "' version='1.0'>"
)
PROBE_SITECUSTOMIZE = '''\
"""bench_idle's probe in the server (bench only): SIGUSR1 dumps live objects by type (and a
tracemalloc snapshot when tracing), SIGUSR2 runs gc and glibc's malloc_trim(0); with
BENCH_IDLE_PROFILE the main thread runs under cProfile, saved at exit."""
import atexit, collections, cProfile, ctypes, gc, json, os, signal, sys, time, tracemalloc

if os.environ.get("BENCH_IDLE_PROFILE"):
    _profile = cProfile.Profile()
    _profile.enable()
    atexit.register(lambda: (_profile.disable(), _profile.dump_stats(os.environ["BENCH_IDLE_PROFILE"])))

_DIR = os.environ.get("BENCH_IDLE_PROBE")
if _DIR:
    if int(os.environ.get("BENCH_IDLE_TRACEMALLOC", "0")):
        tracemalloc.start(int(os.environ["BENCH_IDLE_TRACEMALLOC"]))
    _seq = [0]

    def _dump(signum, frame):
        _seq[0] += 1
        gc.collect()
        counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        path = os.path.join(_DIR, "probe-%d" % _seq[0])
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(path + ".tm")
        with open(path + ".malloc.txt", "w") as out:  # pymalloc's arenas and pools (C stderr)
            saved = os.dup(2)
            os.dup2(out.fileno(), 2)
            try:
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
        payload = {"objects": sum(counts.values()), "types": dict(counts), "mallinfo2": _mallinfo2(),
                   "ssl_sessions": _ssl_sessions()}
        with open(path + ".json.part", "w") as out:  # renamed when whole: the bench polls for .json
            json.dump(payload, out)
        os.replace(path + ".json.part", path + ".json")

    class _MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    def _mallinfo2():
        """glibc's main-arena counters (bytes): arena = sbrk heap, hblkhd = mmapped blocks,
        uordblks = in use, fordblks = free in the heap."""
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        return {n: getattr(info, n) for n, _ in _MallInfo2._fields_}

    def _ssl_sessions():
        """Sessions cached by every live SSLContext (OpenSSL's session cache)."""
        import ssl
        return [o.session_stats()["number"] for o in gc.get_objects() if isinstance(o, ssl.SSLContext)]

    def _trim(signum, frame):
        gc.collect()
        began = time.process_time()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        spent = time.process_time() - began
        _seq[0] += 1
        with open(os.path.join(_DIR, "trim-%d" % _seq[0]), "w") as out:
            out.write(repr(spent))

    signal.signal(signal.SIGUSR1, _dump)
    signal.signal(signal.SIGUSR2, _trim)
'''


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def inbound_streams(serve: ServeProcess) -> int:
    """Established inbound streams, from the edge's ``edgeproxy_streams`` gauge."""
    _, text = serve.http_get("/metrics")
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith("edgeproxy_streams{") and 'direction="inbound"' in line:
            total += float(line.rpartition(" ")[2])
    return int(total)


def memory_map(pid: int) -> dict[str, int]:
    """Resident KiB by kind of mapping (``/proc/<pid>/smaps``): the brk heap, other anonymous
    memory (pymalloc arenas, large mallocs, thread arenas) and file-backed."""
    kinds: Counter[str] = Counter()
    kind = "file"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0]:
            name = head[5] if len(head) > 5 else ""
            kind = "heap" if name == "[heap]" else "anon" if not name or name.startswith("[anon") else "file"
        elif head and head[0] == "Rss:":
            kinds[f"{kind}_kib"] += int(head[1])
    return dict(kinds)


def pymalloc_summary(path: Path) -> dict[str, int]:
    """The totals of ``sys._debugmallocstats()`` (arenas, bytes in used and free blocks)."""
    wanted = {"# arenas allocated current": "arenas", "# bytes in allocated blocks": "used_bytes",
              "# bytes in available blocks": "free_bytes", "# bytes in unused pools": "unused_pool_bytes"}
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() in wanted:
            out[wanted[key.strip()]] = int(value.strip().replace(",", ""))
    return out


def limit_count(serve: ServeProcess, limit: str) -> int:
    return int(serve.metric("edgeproxy_limit_reached_total", limit=limit))


def sim_domains(count: int) -> tuple[str, ...]:
    return tuple(f"sim{n}.test" for n in range(1, count + 1))


def store_for(domains: tuple[str, ...], listen_port: int, *, total_limit: int | None = None,
              partner_limit: int | None = None, tls: bool = False) -> Configuration:
    gateway = GatewaySettings(dialback_secret="contoso-secret")
    if total_limit is not None:
        gateway = GatewaySettings(dialback_secret="contoso-secret", connection_limit=total_limit)
    return Configuration(
        gateway=gateway,
        partners=tuple(
            Partner(domain=d, type=PartnerType.FEDERATED, proxy_fqdn=f"{PARTNER_IP}:{listen_port}",
                    tls=Negotiation.REQUIRED if tls else Negotiation.NOT_SUPPORTED,
                    sasl=Negotiation.NOT_SUPPORTED, dialback=True,
                    connection_limit=partner_limit)
            for d in domains
        ),
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
    )


def scenario_for(domains: tuple[str, ...], s2s_port: int, listen_port: int, tls: bool = False) -> Scenario:
    """The simulator's scenario; ``tls``: STARTTLS then dialback (a throw-away certificate per
    simulated domain naming that domain, as the load test generates them)."""
    return Scenario(
        target=Target(domain=DOMAIN, host=EDGE_IP, port=s2s_port),
        partners=Partners(domains=domains, listen_host=PARTNER_IP, listen_port=listen_port,
                          secret=SECRET, connect_timeout=STREAM_TIMEOUT,
                          security=Security.STARTTLS_DIALBACK if tls else Security.PLAIN),
        traffic=Traffic(stanzas=1, mix=(MixEntry(kind=StanzaKind.MESSAGE, to=f"bob@{DOMAIN}"),)),
    )


class Tree:
    """One source tree under test: its label and PYTHONPATH (None: this checkout)."""

    def __init__(self, label: str, src: str | None) -> None:
        self.label, self.src = label, src


def serve_env(tree: Tree, workdir: Path, args: argparse.Namespace) -> dict[str, str]:
    paths = [tree.src] if tree.src else []
    env: dict[str, str] = {}
    if args.probe or args.trim or os.environ.get("BENCH_PROFILE"):
        probe = workdir / "probe"
        probe.mkdir(parents=True, exist_ok=True)
        (probe / "sitecustomize.py").write_text(PROBE_SITECUSTOMIZE)
        paths.insert(0, str(probe))
        if args.probe or args.trim:
            env["BENCH_IDLE_PROBE"] = str(probe)
            env["BENCH_IDLE_TRACEMALLOC"] = str(args.tracemalloc)
        if os.environ.get("BENCH_PROFILE"):
            env["BENCH_IDLE_PROFILE"] = str(workdir / "server.prof")
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


async def start(tree: Tree, workdir: Path, store: Configuration, args: argparse.Namespace) -> ServeProcess:
    env = serve_env(tree, workdir, args)
    certificates = EdgeCertificates(workdir / "pki") if getattr(args, "tls", False) else None
    return await trio.to_thread.run_sync(lambda: start_serve(workdir, address=EDGE_IP, store=store, env=env,
                                                             certificates=certificates))


async def probe(serve: ServeProcess, sig: int, name: str, timeout: float = 60.0) -> Path | None:
    """Signal the server's probe and wait (bounded) for the file it writes."""
    directory = serve.workdir / "probe"
    before = set(directory.iterdir())
    os.kill(serve.pid, sig)
    with trio.move_on_after(timeout):
        while True:
            new = [p for p in set(directory.iterdir()) - before if p.name.startswith(name)]
            done = [p for p in new if p.suffix in (".json", "")]
            if done:
                await trio.sleep(0.2)  # the writer closes the file
                return done[0]
            await trio.sleep(0.05)
    return None


# -- raw streams (refusals) --------------------------------------------------------------------


async def refused_stream(port: int, source: str, header: bytes) -> str:
    """Open one raw stream, send ``header``, read until the edge closes: what it answered."""
    data = b""
    try:
        with trio.fail_after(STREAM_TIMEOUT):
            stream = await trio.open_tcp_stream(EDGE_IP, port, local_address=source)
            async with stream:
                await stream.send_all(header)
                while len(data) < 65536:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    data += chunk
    except trio.TooSlowError:
        return "timeout"
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        if isinstance(cause, OSError) and cause.errno == errno.ECONNRESET and b"resource-constraint" in data:
            return "resource-constraint"
        if isinstance(cause, OSError) and cause.errno == errno.ECONNRESET:
            return "reset"
        return f"error {type(cause).__name__}"
    if b"<resource-constraint" in data:
        return "resource-constraint"
    return "other: " + data[-120:].decode(errors="replace")


async def run_pool(count: int, concurrency: int, job: Callable[[int], Awaitable[None]]) -> None:
    """``job(0..count-1)``, at most ``concurrency`` at once."""
    jobs = iter(range(count))

    async def worker() -> None:
        for i in jobs:
            await job(i)

    async with trio.open_nursery() as nursery:
        for _ in range(min(concurrency, count)):
            nursery.start_soon(worker)


@dataclass
class RefusalTarget:
    """One tree's server in the refusal phase, with the streams it holds."""

    tree: Tree
    serve: ServeProcess
    scenario: Scenario
    held: list[OutboundStream]
    idle_rate: float = 0.0


async def refusal_wave(targets: list[RefusalTarget], limit: str, args: argparse.Namespace, sources: list[str],
                       claim: str, concurrency: int) -> dict[str, dict[str, object]]:
    """``args.refusals`` refused streams per target, in ``args.batches`` batches that alternate
    between the targets (ABBA…), so that every tree sees the same machine load."""
    header = HEADER.format(from_=claim).encode()
    per_batch = max(1, args.refusals // args.batches)
    acc = {t.tree.label: {"cpu": 0.0, "idle": 0.0, "wall": 0.0, "n": 0, "outcomes": Counter[str](),
                          "limit0": limit_count(t.serve, limit)} for t in targets}
    for batch in range(args.batches):
        for target in targets if batch % 2 == 0 else targets[::-1]:
            row = acc[target.tree.label]
            outcomes: Counter[str] = row["outcomes"]  # type: ignore[assignment]
            port = target.serve.s2s_port

            async def one(i: int, port: int = port, outcomes: Counter[str] = outcomes) -> None:
                outcomes[await refused_stream(port, sources[i % len(sources)], header)] += 1

            cpu0, t0 = cpu_seconds(target.serve.pid), time.perf_counter()
            with trio.fail_after(STREAM_TIMEOUT + per_batch):
                await run_pool(per_batch, concurrency, one)
            await trio.sleep(0.1)  # the edge's side of the last ones
            t1, cpu1 = time.perf_counter(), cpu_seconds(target.serve.pid)
            row["cpu"] += cpu1 - cpu0  # type: ignore[operator]
            row["idle"] += target.idle_rate * (t1 - t0)  # type: ignore[operator]
            row["wall"] += t1 - t0  # type: ignore[operator]
            row["n"] += per_batch  # type: ignore[operator]
    rows: dict[str, dict[str, object]] = {}
    for target in targets:
        row = acc[target.tree.label]
        n, cpu, idle = int(row["n"]), float(row["cpu"]), float(row["idle"])  # type: ignore[arg-type]
        rows[target.tree.label] = out = {
            "limit": limit, "streams": n, "wall_s": round(float(row["wall"]), 3),  # type: ignore[arg-type]
            "cpu_s": round(cpu, 3), "idle_cpu_s": round(idle, 3),
            "cpu_ms_per_refusal": round((cpu - idle) / n * 1000, 4),
            "limit_reached_delta": limit_count(target.serve, limit) - int(row["limit0"]),  # type: ignore[call-overload]
            "client_saw": dict(row["outcomes"]),  # type: ignore[call-overload]
        }
        print(f"  [{target.tree.label}] {limit:19} {n:6,} refused in {out['wall_s']:6.2f} s  CPU {cpu:.2f} s"
              f" (idle {idle:.2f})  = {out['cpu_ms_per_refusal']:.3f} ms each  "
              f"limit_reached +{out['limit_reached_delta']:,}  clients saw {out['client_saw']}", flush=True)
    return rows


async def idle_cpu_rate(serve: ServeProcess, seconds: float = 2.0) -> float:
    cpu0, t0 = cpu_seconds(serve.pid), time.perf_counter()
    await trio.sleep(seconds)
    return (cpu_seconds(serve.pid) - cpu0) / (time.perf_counter() - t0)


# -- authenticated streams -----------------------------------------------------------------------


async def open_many(scenario: Scenario, domains: tuple[str, ...], per_domain: int, count: int,
                    concurrency: int, nursery: trio.Nursery,
                    tls: PartnerTls | None = None) -> tuple[list[OutboundStream], list[str]]:
    """``count`` authenticated streams, ``per_domain`` for each domain in turn; each gets a
    reader task in ``nursery`` (so a close is answered)."""
    policy = partner_snapshot(scenario)
    streams: list[OutboundStream] = []
    errors: list[str] = []

    async def one(i: int) -> None:
        try:
            stream = await open_stream(scenario, lambda: policy, domains[i // per_domain], tls)
        except (StreamSetupError, OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            errors.append(repr(exc)[:200])
            return
        streams.append(stream)
        nursery.start_soon(stream.read_until_closed)

    await run_pool(count, concurrency, one)
    return streams, errors


async def close_all(streams: list[OutboundStream], concurrency: int = 1000) -> None:
    async def one(i: int) -> None:
        await streams[i].aclose(grace=5.0)

    with trio.move_on_after(STREAM_TIMEOUT + 10):
        await run_pool(len(streams), concurrency, one)


async def wait_inbound(serve: ServeProcess, wanted: int, timeout: float) -> int:
    """Poll the gauge until it shows ``wanted`` inbound streams (bounded); the last value."""
    n = -1
    with trio.move_on_after(timeout):
        while (n := await trio.to_thread.run_sync(inbound_streams, serve)) != wanted:
            await trio.sleep(0.2)
    return n


# -- phases --------------------------------------------------------------------------------------


async def refusals(trees: list[Tree], workdir: Path, args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """The refusal phase for every tree at once (module docstring): one server per tree."""
    fill_domains = sim_domains(math.ceil((TOTAL_LIMIT - PARTNER_LIMIT) / PARTNER_LIMIT))
    domains = (FULL, *fill_domains)
    sources = [f"{CLIENT_NET}.{n}" for n in range(1, args.sources + 1)]
    targets: list[RefusalTarget] = []
    waves: dict[str, list[dict[str, object]]] = {t.label: [] for t in trees}
    try:
        async with trio.open_nursery() as nursery:
            for i, tree in enumerate(trees):
                listen_port = free_port(PARTNER_IP)
                serve = await start(tree, workdir / f"{i}-{tree.label}", store_for(domains, listen_port), args)
                scenario = scenario_for(domains, serve.s2s_port, listen_port)
                targets.append(RefusalTarget(tree, serve, scenario, []))
                await nursery.start(PartnerListener(scenario, lambda s=scenario: partner_snapshot(s), Ledger()).serve)
                with trio.fail_after(STREAM_TIMEOUT * 4):
                    held, errors = await open_many(scenario, (FULL,), PARTNER_LIMIT, PARTNER_LIMIT, 8, nursery)
                assert not errors and len(held) == PARTNER_LIMIT, errors[:3]
                targets[-1].held = held
            for target in targets:
                target.idle_rate = await idle_cpu_rate(target.serve)
            print(f"refusals: {', '.join(f'[{t.tree.label}] idle CPU {t.idle_rate * 1000:.2f} ms/s' for t in targets)};"
                  f" load {os.getloadavg()[0]:.2f}", flush=True)

            def record(rows: dict[str, dict[str, object]]) -> None:
                for label, row in rows.items():
                    waves[label].append(row)

            if "partner-connection" in args.waves:  # a header claiming a partner whose slots are full
                record(await refusal_wave(targets, "partner-connection", args, sources, FULL, args.concurrency))
            if "preauth-per-ip" in args.waves:  # an address holding its unauthenticated slots
                holders = [await trio.open_tcp_stream(EDGE_IP, t.serve.s2s_port, local_address=sources[0])
                           for t in targets for _ in range(PREAUTH_PER_IP)]
                await trio.sleep(0.3)
                record(await refusal_wave(targets, "preauth-per-ip", args, sources[:1], FULL,
                                          min(args.concurrency, PREAUTH_PER_IP)))
                for h in holders:
                    await h.aclose()
                await trio.sleep(0.5)
            if "connection" in args.waves:  # authenticated streams of the other partners fill the total
                for target in targets:
                    with trio.fail_after(STREAM_TIMEOUT + TOTAL_LIMIT):
                        more, errors = await open_many(target.scenario, fill_domains, PARTNER_LIMIT,
                                                       TOTAL_LIMIT - len(target.held), args.open_concurrency, nursery)
                    target.held += more
                    if errors:
                        print(f"  ! [{target.tree.label}] {len(errors)} fill streams failed, e.g. {errors[0]}", flush=True)
                record(await refusal_wave(targets, "connection", args, sources, fill_domains[0], args.concurrency))
            for target in targets:
                await close_all(target.held)
            nursery.cancel_scope.cancel()
    finally:
        for target in targets:
            await trio.to_thread.run_sync(target.serve.stop)
    return {t.tree.label: {"idle_cpu_ms_per_s": round(t.idle_rate * 1000, 3), "waves": waves[t.tree.label]}
            for t in targets}


async def retention(tree: Tree, workdir: Path, args: argparse.Namespace) -> dict[str, object]:
    per_domain = args.per_domain
    domains = sim_domains(math.ceil(args.streams / per_domain))
    listen_port = free_port(PARTNER_IP)
    store = store_for(domains, listen_port, total_limit=max(TOTAL_LIMIT, args.streams + 100),
                      partner_limit=per_domain if per_domain > PARTNER_LIMIT else None, tls=args.tls)
    serve = await start(tree, workdir, store, args)
    scenario = scenario_for(domains, serve.s2s_port, listen_port, tls=args.tls)
    partner_tls = PartnerTls.for_scenario(scenario)
    cycles: list[dict[str, object]] = []
    probes: list[dict[str, object]] = []
    try:
        async with trio.open_nursery() as nursery:
            listener_policy = listener_snapshot(scenario) if args.tls else partner_snapshot(scenario)
            await nursery.start(PartnerListener(scenario, lambda: listener_policy, Ledger(), partner_tls).serve)
            await trio.sleep(args.settle)
            start_rss, start_fds = serve.rss_kib(), serve.fd_count()
            start_probe = await probe(serve, signal.SIGUSR1, "probe-") if args.probe else None
            start_map = memory_map(serve.pid) if args.probe else None
            start_rss = serve.rss_kib() if args.probe else start_rss  # after the probe's own allocations
            print(f"[{tree.label}] retention: {args.streams:,} streams x {args.cycles} cycles, "
                  f"{len(domains)} domains; RSS at start {start_rss / 1024:.1f} MiB; load {os.getloadavg()[0]:.2f}",
                  flush=True)
            for cycle in range(1, args.cycles + 1):
                cpu0, t0 = cpu_seconds(serve.pid), time.perf_counter()
                row_extra: dict[str, object] = {}
                with trio.fail_after(STREAM_TIMEOUT + args.streams):
                    streams, errors = await open_many(scenario, domains, per_domain, args.streams,
                                                      args.open_concurrency, nursery, partner_tls)
                t_open = time.perf_counter() - t0
                established = await wait_inbound(serve, len(streams), 30)
                await trio.sleep(args.hold)
                held_rss, cpu1 = serve.rss_kib(), cpu_seconds(serve.pid)
                if args.probe and cycle == 1:
                    held_probe = await probe(serve, signal.SIGUSR1, "probe-")
                    if held_probe is not None:
                        report_held(held_probe, len(streams))
                        if start_probe is not None and start_map is not None:
                            report_held_native(start_probe, held_probe, start_map, memory_map(serve.pid),
                                               held_rss - start_rss, len(streams))
                    if args.trim_held:  # how much of the held RSS is memory malloc holds free
                        await probe(serve, signal.SIGUSR2, "trim-")
                        await trio.sleep(0.5)
                        trimmed_rss = serve.rss_kib()
                        print(f"  held, after malloc_trim(0): RSS {trimmed_rss / 1024:.1f} MiB, "
                              f"{(trimmed_rss - start_rss) / max(len(streams), 1):.1f} KiB per held stream "
                              f"(before the trim {(held_rss - start_rss) / max(len(streams), 1):.1f})", flush=True)
                        row_extra["rss_held_trimmed_kib"] = trimmed_rss
                    cpu1 = cpu_seconds(serve.pid)
                t1 = time.perf_counter()
                await close_all(streams)
                left = await wait_inbound(serve, 0, 60)
                with trio.move_on_after(30):  # the edge's sockets gone too
                    while serve.fd_count() > start_fds + 5:
                        await trio.sleep(0.2)
                cpu2 = cpu_seconds(serve.pid)
                await trio.sleep(args.settle)
                after_rss = serve.rss_kib()
                row: dict[str, object] = {
                    "cycle": cycle, "opened": len(streams), "setup_errors": len(errors),
                    "established_seen": established, "left_after_close": left,
                    "open_s": round(t_open, 2), "rss_held_kib": held_rss, "rss_after_kib": after_rss,
                    "fds_after": serve.fd_count(),
                    "cpu_ms_per_stream_open": round((cpu1 - cpu0) / max(len(streams), 1) * 1000, 3),
                    "cpu_ms_per_stream_close": round((cpu2 - cpu1) / max(len(streams), 1) * 1000, 3),
                    "close_s": round(time.perf_counter() - t1, 2),
                    **row_extra,
                }
                if args.probe:
                    found = await probe(serve, signal.SIGUSR1, "probe-")
                    if found is not None:
                        data = json.loads(found.read_text())
                        probes.append({"cycle": cycle, "file": str(found), **data})
                        row["gc_objects"] = data["objects"]
                        row["pymalloc"] = pymalloc_summary(found.with_suffix(".malloc.txt"))
                        row["rss_by_mapping"] = memory_map(serve.pid)
                if args.trim:
                    trimmed = await probe(serve, signal.SIGUSR2, "trim-")
                    await trio.sleep(0.5)
                    row["rss_after_trim_kib"] = serve.rss_kib()
                    row["trim_cpu_ms"] = round(float(trimmed.read_text() or "nan") * 1000, 2) if trimmed else None
                cycles.append(row)
                print(f"  cycle {cycle}: {len(streams):,} opened in {t_open:.1f} s ({len(errors)} failed), "
                      f"RSS held {held_rss / 1024:.1f} MiB, after close {after_rss / 1024:.1f} MiB"
                      + (f", after malloc_trim {row['rss_after_trim_kib'] / 1024:.1f} MiB"
                         f" (trim took {row['trim_cpu_ms']} ms CPU)" if args.trim else "")
                      + (f", {row['gc_objects']:,} gc objects, pymalloc {row['pymalloc']}, RSS by mapping "
                         f"{row['rss_by_mapping']}" if "gc_objects" in row else "")
                      + f"; CPU {row['cpu_ms_per_stream_open']:.2f} ms/stream open, "
                      f"{row['cpu_ms_per_stream_close']:.2f} ms close; left {left}", flush=True)
                if errors:
                    print(f"    e.g. {errors[0]}", flush=True)
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(serve.stop)
    first, last = cycles[0], cycles[-1]
    opened = int(first["opened"]) or 1  # type: ignore[call-overload]
    summary = {
        "rss_start_kib": start_rss,
        "rss_after_last_over_first": round(int(last["rss_after_kib"]) / int(first["rss_after_kib"]), 4),  # type: ignore[call-overload]
        "kib_per_held_stream": round((int(first["rss_held_kib"]) - start_rss) / opened, 2),  # type: ignore[call-overload]
        "cycles": cycles,
    }
    print(f"  => after cycle {last['cycle']} / after cycle 1: {summary['rss_after_last_over_first']:.3f}; "
          f"{summary['kib_per_held_stream']:.1f} KiB per held stream", flush=True)
    if len(probes) >= 2:
        summary["growth"] = report_growth(probes[0], probes[-1])
    return summary


def report_held(found: Path, streams: int) -> None:
    """What the held streams are made of: live objects by type per stream (and the
    tracemalloc lines holding most, when tracing)."""
    data = json.loads(found.read_text())
    top = sorted(data["types"].items(), key=lambda kv: -kv[1])[:12]
    print(f"  held: {data['objects']:,} gc objects, pymalloc {pymalloc_summary(found.with_suffix('.malloc.txt'))};"
          f" per stream: {', '.join(f'{t} {n / streams:.1f}' for t, n in top)}", flush=True)
    snapshot = found.with_suffix(".tm")
    if snapshot.exists():
        for stat in tracemalloc.Snapshot.load(str(snapshot)).statistics("lineno")[:15]:
            print(f"    {stat}", flush=True)


def report_held_native(before: Path, held: Path, map_before: dict[str, int], map_held: dict[str, int],
                       rss_kib: int, streams: int) -> None:
    """Where the held streams' RSS is, per stream (KiB): by mapping, glibc malloc in use and free,
    pymalloc in use, tracemalloc's Python allocations by line (from the probe before opening)."""
    a, b = json.loads(before.read_text()), json.loads(held.read_text())
    per = 1024 * streams
    print(f"  per held stream: RSS {rss_kib * 1024 / per:.1f} KiB; by mapping "
          + ", ".join(f"{k} {(map_held.get(k, 0) - map_before.get(k, 0)) * 1024 / per:.1f}"
                      for k in sorted(set(map_held) | set(map_before))), flush=True)
    if "mallinfo2" in a and "mallinfo2" in b:
        m0, m1 = a["mallinfo2"], b["mallinfo2"]
        print("  per held stream, glibc malloc (KiB): " + ", ".join(
            f"{k} {(m1[k] - m0[k]) / per:.1f}" for k in ("arena", "uordblks", "fordblks", "hblkhd")), flush=True)
        print(f"  OpenSSL session caches (entries per context): {b.get('ssl_sessions')}", flush=True)
    p0 = pymalloc_summary(before.with_suffix(".malloc.txt"))
    p1 = pymalloc_summary(held.with_suffix(".malloc.txt"))
    print(f"  per held stream, pymalloc used {(p1.get('used_bytes', 0) - p0.get('used_bytes', 0)) / per:.1f} KiB,"
          f" arenas {(p1.get('arenas', 0) - p0.get('arenas', 0)) * 256 / streams:.1f} KiB", flush=True)
    old, new = before.with_suffix(".tm"), held.with_suffix(".tm")
    if old.exists() and new.exists():
        diff = tracemalloc.Snapshot.load(str(new)).compare_to(tracemalloc.Snapshot.load(str(old)), "lineno")
        total = sum(d.size_diff for d in diff)
        print(f"  tracemalloc: {total / per:.1f} KiB per held stream traced (Python allocations); top lines:",
              flush=True)
        for stat in diff[:15]:
            print(f"    {stat.size_diff / streams:8.0f} B/stream  {stat.count_diff / streams:6.1f} blocks  "
                  f"{stat.traceback}", flush=True)


def report_growth(first: dict, last: dict) -> dict[str, int]:  # type: ignore[type-arg]
    """Live objects by type that grew from the first probe to the last (and tracemalloc lines)."""
    grew = {t: n - first["types"].get(t, 0) for t, n in last["types"].items() if n > first["types"].get(t, 0)}
    top = dict(sorted(grew.items(), key=lambda kv: -kv[1])[:15])
    print(f"  live objects {first['objects']:,} -> {last['objects']:,}; grew: {top}", flush=True)
    old, new = Path(str(first["file"])).with_suffix(".tm"), Path(str(last["file"])).with_suffix(".tm")
    if old.exists() and new.exists():
        diff = tracemalloc.Snapshot.load(str(new)).compare_to(tracemalloc.Snapshot.load(str(old)), "lineno")
        for stat in diff[:12]:
            print(f"    {stat}", flush=True)
    return top


async def main(args: argparse.Namespace) -> None:
    trees = [Tree(label, src) for label, src in zip(args.label, args.src, strict=True)] or [Tree("current", None)]
    print(f"bench_idle: phases {args.phases}, {args.rounds} round(s), trees {[t.label for t in trees]}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)
    results: dict[str, dict[str, list[object]]] = {t.label: {p: [] for p in args.phases} for t in trees}
    tmp = Path(tempfile.mkdtemp(prefix="bench-idle-", dir=args.workdir))
    try:
        for n in range(args.rounds):
            if "refusals" in args.phases:
                for label, result in (await refusals(trees, tmp / f"{n}-refusals", args)).items():
                    results[label]["refusals"].append(result)
            if "retention" in args.phases:
                for i, tree in enumerate(trees if n % 2 == 0 else trees[::-1]):
                    results[tree.label]["retention"].append(await retention(tree, tmp / f"{n}-{i}-retention", args))
    finally:
        if args.keep:
            print(f"server directories kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("summary (median, min-max over rounds):")
    for label, phases in results.items():
        for row in phases.get("refusals", [])[:1]:
            for wave in row["waves"]:  # type: ignore[index]
                name = wave["limit"]
                costs = [w["cpu_ms_per_refusal"] for r in phases["refusals"] for w in r["waves"] if w["limit"] == name]  # type: ignore[index]
                print(f"  {label:10} refused over {name:19} {statistics.median(costs):.3f} ms CPU each"
                      f" ({min(costs):.3f}-{max(costs):.3f}, {len(costs)} runs)")
        if retained := phases.get("retention"):
            ratios = [r["rss_after_last_over_first"] for r in retained]  # type: ignore[index]
            per = [r["kib_per_held_stream"] for r in retained]  # type: ignore[index]
            print(f"  {label:10} RSS after the last cycle / after the first {statistics.median(ratios):.3f}"
                  f" ({min(ratios):.3f}-{max(ratios):.3f}); {statistics.median(per):.1f} KiB per held stream")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", nargs="+", default=["refusals", "retention"], choices=["refusals", "retention"])
    parser.add_argument("--refusals", type=int, default=5000, help="streams refused per limit")
    parser.add_argument("--waves", nargs="+", default=list(WAVES), choices=WAVES, help="limits the refusals phase tests")
    parser.add_argument("--batches", type=int, default=10,
                        help="batches each wave is cut into, alternating between the trees")
    parser.add_argument("--concurrency", type=int, default=32, help="raw streams in flight at once")
    parser.add_argument("--sources", type=int, default=16, help="source addresses 127.0.22.1..N for raw streams")
    parser.add_argument("--streams", type=int, default=5000, help="idle streams per retention cycle")
    parser.add_argument("--per-domain", type=int, default=PARTNER_LIMIT, help="idle streams per simulated domain")
    parser.add_argument("--open-concurrency", type=int, default=16,
                        help="stream set-ups in flight (all from one address: below preauth-per-ip 20)")
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--hold", type=float, default=3.0, help="seconds the streams are held idle")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after a close before RSS is read")
    parser.add_argument("--rounds", type=int, default=1, help="repetitions (trees alternate within one)")
    parser.add_argument("--src", action="append", default=[], help="source dir (PYTHONPATH) of a tree to compare")
    parser.add_argument("--label", action="append", default=[], help="label of each --src")
    parser.add_argument("--probe", action="store_true", help="live objects by type after each cycle (SIGUSR1)")
    parser.add_argument("--tracemalloc", type=int, default=0, help="with --probe: tracemalloc frames (0: off)")
    parser.add_argument("--trim", action="store_true", help="malloc_trim(0) in the server after each cycle")
    parser.add_argument("--trim-held", action="store_true",
                        help="with --probe: malloc_trim(0) while the first cycle's streams are held, RSS again")
    parser.add_argument("--tls", action="store_true",
                        help="retention over STARTTLS + dialback (partner rows require TLS, the edge has a"
                             " certificate of a private CA; each simulated domain one naming that domain only)")
    parser.add_argument("--json", help="write every result to this file")
    parser.add_argument("--workdir", help="where the temporary server directories go (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the server directories (event logs)")
    trio.run(main, parser.parse_args())
