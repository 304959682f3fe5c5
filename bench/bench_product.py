"""Product path benchmark (issue 21, point 4): a dialback partner → ``edgeproxy serve`` with its
default configuration → the built-in registrar's SIP user agent, and back; side by side, in the
same run, Prosody 0.12 and ejabberd relaying the same partner load to their own c2s user.

What runs where
---------------
* **edgeproxy** (``contoso.test``) is ``edgeproxy serve`` (role both: edge and gateway in one
  process, the channel over loopback) started with the embedded default configuration, as
  ``edgeproxy config show-default`` prints it, changed only where a bench must: the listeners
  (S2S, channel, admin, SIP) on 127.0.0.70 with free ports and the state directory in a
  temporary directory. Its store is made with the CLI as an operator would: the Federated
  partner ``load1.test`` (TCP dialback), the gateway's dialback secret, the global policy
  allowing XMPP federation, and the SIP users bob and alice with a password
  (``user set-password --password-file``, both digest hashes as by default). Names are resolved
  by a private dnsmasq (``EDGEPROXY_DNS_RESOLVER``; the SRV record of load1.test points at the
  partner listener). ``--src DIR`` runs the CLI and the server from another tree (PYTHONPATH).
* **Prosody 0.12** (``fabrikam.test``) and **ejabberd** (``litware.test``) are started by
  ``tests/fixtures/xmpp_servers.py`` as in ``bench/compare.py``, with users alice and bob.
* **The partner** ``load1.test`` runs here (``edgeproxy.loadtest.partner``): ONE initiating S2S
  stream (TCP dialback) per server, and the authoritative listener that answers the server's
  dialback checks and receives what the server sends to load1.test — messages and error
  stanzas (bounces).
* **The users**: for edgeproxy, ``_sip_ua.LightUA`` (our light SIP UA, UDP or TCP) registered
  with digest at the built-in registrar: bob answers every MESSAGE with 200 at once, alice sends
  MESSAGEs reusing the nonce with an incrementing nc; for Prosody/ejabberd, c2s clients
  (``tests/fixtures/c2s.py``) logged in as bob and alice.

Directions (each message's body carries ``#sequence:send-time#``; ``time.perf_counter``)
``xmpp-sip``
    The partner sends N messages open loop (50 per write) on its one stream to bob@<domain>;
    bob receives them (edgeproxy: the SIP UA over ``--transports``; the others: over c2s).
``sip-xmpp``
    alice sends N messages open loop (``--sip-window`` > 0: at most that many unanswered) to
    romeo@load1.test (edgeproxy: SIP MESSAGEs from the UA; the others: over c2s); the partner
    listener receives them over the server's own S2S stream to load1.test.

Per measurement: msg/s = delivered / (last received − first sent); CPU-s per 1,000 sent of the
server's processes (the process and its descendants, ``/proc/<pid>/stat`` utime + stime) from
the first send to the last delivery or bounce seen; p50/p99 latency (send → receipt); delivered
/ sent; bounced (error stanzas the sender's side received; for SIP senders the MESSAGEs answered
with a final failure, 408 = given up after Timer F); retransmissions (xmpp-sip: MESSAGEs the UA
received again, the same Call-ID and CSeq; sip-xmpp: the UA's own Timer E retransmissions);
407s met by the UA; UDP drops (datagrams the kernel dropped for a full receive buffer,
machine-wide ``RcvbufErrors``: over loopback, what a slow reader lost). A measurement ends when all N arrived, or when everything sent is accounted
for, or after ``QUIET`` s without progress, or at ``--timeout``; then ``--settle`` s more for
late retransmissions. Each server session starts with a short warm-up (not counted).

``--runs`` runs (a fresh server each, the server order rotated every run); medians with
min–max. Everything binds 127.0.0.0/8 only and stops by itself.

    .venv/bin/python bench/bench_product.py [--messages 20000] [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]  # tests/fixtures

from _sip_ua import LightUA, open_ua  # noqa: E402
from bench_gateway import (  # noqa: E402
    EDGE_IP,
    Server,
    channel_connected,
    cpu_seconds,
    free_port,
    stop_server,
)
from compare import ejabberdctl_as_ejabberd, raise_nofile  # noqa: E402
from edgeproxy.loadtest.accounting import Ledger  # noqa: E402
from edgeproxy.loadtest.partner import (  # noqa: E402
    OutboundStream,
    PartnerListener,
    listener_snapshot,
    open_stream,
    partner_snapshot,
)
from edgeproxy.loadtest.scenario import MixEntry, Partners, Scenario, StanzaKind, Target, Traffic  # noqa: E402
from edgeproxy.s2s import StanzaReceived  # noqa: E402
from fixtures.c2s import Client  # noqa: E402
from fixtures.dnsmasq import host, srv, start_dnsmasq  # noqa: E402
from fixtures.xmpp_servers import PASSWORD as XMPP_PASSWORD  # noqa: E402
from fixtures.xmpp_servers import start_ejabberd, start_prosody  # noqa: E402

# edgeproxy on bench_gateway's address (its admin helpers use it); the rest 127.0.0.111-115.
PARTNER_IP, UA_IP, PROSODY_IP, EJABBERD_IP, DNS_IP = (f"127.0.0.{n}" for n in range(111, 116))
EDGE_DOMAIN, PROSODY_DOMAIN, EJABBERD_DOMAIN = "contoso.test", "fabrikam.test", "litware.test"
PARTNER = "load1.test"
REMOTE_USER = f"romeo@{PARTNER}"
SECRET = "bench-product-partner-dialback-secret"
#: The edge's pool dialback secret and the SIP users' password (set with the CLI).
GATEWAY_SECRET = "bench-product-gateway-dialback-secret"
SIP_PASSWORD = "bench-product-sip-password"
FILLER = "hello, a short message of ordinary size"
#: Per message: ``#sequence:perf_counter#`` (in the XMPP body and the SIP MESSAGE body).
MARK = re.compile(rb"#(\d+):(\d+\.\d+)#")
#: Bytes of a stream chunk kept to find a mark cut by a read boundary.
MARK_TAIL = 48
#: Partner stanzas per write (like bench_gateway).
BATCH = 50
#: With ``--rate``: seconds between two writes of the paced sender.
PACE_TICK = 0.005
#: Seconds between progress checks; without progress for QUIET s once all is sent, a
#: measurement ends short (the rest is counted lost).
POLL, QUIET = 0.005, 3.0
WARMUP = 20
#: The first sequence number of each measurement: marks of an earlier one are strays.
_BASES = itertools.count(10_000_000, 10_000_000)
SERVERS = ("edgeproxy", "prosody", "ejabberd")
NAMES = {"edgeproxy": "edgeproxy serve (defaults)", "prosody": "Prosody 0.12", "ejabberd": "ejabberd"}


def body(n: int) -> str:
    return f"#{n}:{time.perf_counter():.6f}# {FILLER}"


class Arrivals:
    """Marked messages seen by one receiver: first arrivals of the measurement's sequence
    numbers with their latency, duplicates, and strays (marks of an earlier measurement)."""

    def __init__(self) -> None:
        self.reset(range(0))

    def reset(self, expected: range) -> None:
        self.expected = expected
        self.strays = 0
        self.seen: set[int] = set()
        self.latencies: list[float] = []
        self.duplicates = 0
        self.last = 0.0
        self._tail = b""

    def scan(self, data: bytes, now: float, *, stream: bool = True) -> None:
        """Record the marks in ``data`` (``stream``: a chunk of a byte stream whose last bytes
        may begin a mark the next chunk ends)."""
        chunk = self._tail + data if self._tail else data
        end = 0
        for found in MARK.finditer(chunk):
            seq = int(found[1])
            if seq not in self.expected:
                self.strays += 1
            elif seq in self.seen:
                self.duplicates += 1
            else:
                self.seen.add(seq)
                self.latencies.append(now - float(found[2]))
                self.last = now
            end = found.end()
        if stream:
            self._tail = chunk[max(end, len(chunk) - MARK_TAIL):]

    def message(self, data: bytes, now: float) -> None:
        """Record the mark of one whole message (a SIP MESSAGE's body)."""
        self.scan(data, now, stream=False)


class MarkedListener(PartnerListener):
    """The load-test partner listener (it keeps running the S2S core on every stream: Prosody
    sends its ``db:verify`` on an outgoing stream it has just authenticated), recording the marks
    of the messages it receives and counting error stanzas (bounces)."""

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario, lambda: listener_snapshot(scenario), Ledger())
        self.arrivals = Arrivals()
        self.error_stanzas = 0

    def _observe(self, event: StanzaReceived, now: float) -> None:
        if event.stanza.type == "error":
            if not self.error_stanzas:  # the cause, once per server session
                print(f"  ! first error stanza from the server: {event.stanza.raw[:400]!r}", flush=True)
            self.error_stanzas += 1
        else:
            self.arrivals.message(event.stanza.raw, time.perf_counter())


class C2SUser:
    """A logged-in c2s client whose reader records the marks and counts error stanzas."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.arrivals = Arrivals()
        self.errors = 0

    async def read(self) -> None:
        while data := await self.client.stream.receive_some(1 << 20):
            self.arrivals.scan(data, time.perf_counter())
            self.errors += data.count(b"type='error'") + data.count(b'type="error"')


# -- processes ---------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (ejabberd's port programs, anything a server forks)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children[int(fields[1])].append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def tree_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):  # a helper process that ended
            total += cpu_seconds(pid)
    return total


def udp_receive_drops() -> int:
    """Datagrams the kernel dropped for a full receive buffer, machine-wide (``RcvbufErrors`` of
    /proc/net/snmp): over loopback, the datagrams a slow reader lost."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Lab:
    dns: tuple[str, int]
    partner_port: int
    work: Path
    src: str | None


@dataclass
class Running:
    """One started server under test."""

    key: str
    domain: str
    host: str
    s2s_port: int
    pid: int
    stop: Callable[[], None]
    sip: tuple[str, int] | None = None
    c2s_port: int = 0


def set_key(text: str, section: str, key: str, value: str) -> str:
    """``text`` (TOML) with ``key`` of ``[section]`` set to ``value`` (exactly one such line)."""
    lines, current, hits = text.splitlines(keepends=True), "", 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[]")
        elif current == section and re.match(rf"{re.escape(key)}\s*=", stripped):
            lines[i] = f"{key} = {value}\n"
            hits += 1
    if hits != 1:
        raise SystemExit(f"the default configuration has {hits} [{section}] {key} lines")
    return "".join(lines)


def edgeproxy_cli(lab: Lab, config: Path, *args: str) -> None:
    env = dict(os.environ, **({"PYTHONPATH": lab.src} if lab.src else {}))
    done = subprocess.run([sys.executable, "-m", "edgeproxy", "--config", str(config), *args],
                          capture_output=True, text=True, env=env, timeout=60)
    if done.returncode != 0:
        raise SystemExit(f"edgeproxy {' '.join(args)}: {done.stdout}{done.stderr}")


def start_edgeproxy(lab: Lab, directory: Path) -> Running:
    directory.mkdir(parents=True)
    env = dict(os.environ, EDGEPROXY_LOG_FORMAT="json", EDGEPROXY_DNS_RESOLVER=f"{lab.dns[0]}:{lab.dns[1]}")
    if lab.src:
        env["PYTHONPATH"] = lab.src
    text = subprocess.run([sys.executable, "-m", "edgeproxy", "config", "show-default"], capture_output=True,
                          text=True, check=True, env=env, timeout=60).stdout
    s2s, internal, admin, sip = (free_port(EDGE_IP) for _ in range(4))
    for section, key, value in (
        ("edge", "listen", f'["{EDGE_IP}:{s2s}"]'),
        ("edge", "internal-listen", f'"{EDGE_IP}:{internal}"'),
        ("edge", "state-dir", f'"{directory / "state"}"'),
        ("admin", "listen", f'"{EDGE_IP}:{admin}"'),
        ("gateway", "sip-listen", f'["{EDGE_IP}:{sip}"]'),
    ):
        text = set_key(text, section, key, value)
    config = directory / "edgeproxy.toml"
    config.write_text(text)
    secret, password = directory / "dialback-secret", directory / "sip-password"
    secret.write_text(GATEWAY_SECRET + "\n")
    password.write_text(SIP_PASSWORD + "\n")
    for command in (
        ("partner", "new", PARTNER, "--type", "federated", "--tls", "not-supported", "--sasl", "not-supported",
         "--dialback"),
        ("gateway", "set", "--dialback-secret-file", str(secret)),
        ("policy", "set", "global", "--xmpp", "--federation"),
        ("user", "new", f"sip:bob@{EDGE_DOMAIN}"),
        ("user", "set-password", f"sip:bob@{EDGE_DOMAIN}", "--password-file", str(password)),
        ("user", "new", f"sip:alice@{EDGE_DOMAIN}"),
        ("user", "set-password", f"sip:alice@{EDGE_DOMAIN}", "--password-file", str(password)),
    ):
        edgeproxy_cli(lab, config, *command)
    log = directory / "server.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "edgeproxy", "serve", "--config", str(config), "--role", "both"],
        stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=directory,
    )
    server = Server("edgeproxy", process, s2s, sip, admin, log)
    deadline = time.monotonic() + 60
    while not channel_connected(admin):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_server(server)
            raise RuntimeError(f"edgeproxy serve did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return Running("edgeproxy", EDGE_DOMAIN, EDGE_IP, s2s, process.pid, lambda: stop_server(server),
                   sip=(EDGE_IP, sip))


def start_prosody_server(lab: Lab, directory: Path) -> Running:
    s2s, c2s = free_port(PROSODY_IP), free_port(PROSODY_IP)
    server = start_prosody(PROSODY_DOMAIN, PROSODY_IP, lab.dns, c2s_port=c2s, s2s_port=s2s)
    return Running("prosody", PROSODY_DOMAIN, PROSODY_IP, s2s, server.process.pid, server.stop, c2s_port=c2s)


def start_ejabberd_server(lab: Lab, directory: Path) -> Running:
    s2s, c2s = free_port(EJABBERD_IP), free_port(EJABBERD_IP)
    with ejabberdctl_as_ejabberd(lab.work):
        server = start_ejabberd(EJABBERD_DOMAIN, EJABBERD_IP, lab.dns,
                                {EJABBERD_DOMAIN: EJABBERD_IP, PARTNER: PARTNER_IP},
                                users=("alice", "bob"), c2s_port=c2s, s2s_port=s2s)
    pid = int((server.run_dir / "ejabberd.pid").read_text().strip())
    return Running("ejabberd", EJABBERD_DOMAIN, EJABBERD_IP, s2s, pid, server.stop, c2s_port=c2s)


STARTERS: dict[str, Callable[[Lab, Path], Running]] = {
    "edgeproxy": start_edgeproxy, "prosody": start_prosody_server, "ejabberd": start_ejabberd_server,
}


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Result:
    server: str
    run: int
    direction: str
    transport: str
    sent: int
    delivered: int
    bounced: int
    rate: float
    cpu_per_1000: float
    p50_ms: float
    p99_ms: float
    retransmissions: int = 0
    challenges: int = 0
    duplicates: int = 0
    strays: int = 0
    udp_drops: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    bench_cpu_per_1000: float = 0.0
    load: float = 0.0

    @property
    def lost(self) -> int:
        return self.sent - self.delivered - self.bounced


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


@dataclass
class Load:
    """One measurement's moving parts: how to send, where arrivals are seen, what counts as
    bounced and whether the sender still waits for answers."""

    send: Callable[[range], Awaitable[None]]
    arrivals: Arrivals
    bounced: Callable[[], int]
    busy: Callable[[], bool] = lambda: False


async def measure(load: Load, count: int, pids: list[int], timeout: float, settle: float) -> dict[str, float]:
    arrivals = load.arrivals
    start = next(_BASES)
    seqs = range(start, start + count)
    arrivals.reset(seqs)
    bounced0 = load.bounced()
    sent_done = trio.Event()

    async def sender() -> None:
        await load.send(seqs)
        sent_done.set()

    drops0 = udp_receive_drops()
    cpu0, own0, t0 = tree_cpu(pids), own_cpu(), time.perf_counter()
    cpu1, own1, progress, changed = cpu0, own0, 0, t0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        while True:
            await trio.sleep(POLL)
            now = time.perf_counter()
            done = len(arrivals.seen) + load.bounced() - bounced0
            if done != progress:
                progress, changed, cpu1, own1 = done, now, tree_cpu(pids), own_cpu()
            if len(arrivals.seen) >= count or (sent_done.is_set() and done >= count):
                break
            if sent_done.is_set() and not load.busy() and now - changed > QUIET:
                break
            if now - t0 > timeout:
                print(f"  ! timed out after {timeout:.0f} s", flush=True)
                break
        nursery.cancel_scope.cancel()
    delivered = len(arrivals.seen)
    span = arrivals.last - t0
    with trio.move_on_after(settle):
        while load.busy():
            await trio.sleep(0.05)
    if settle:
        await trio.sleep(settle)
    return {
        "delivered": delivered,
        "bounced": load.bounced() - bounced0,
        "rate": delivered / span if delivered and span > 0 else 0.0,
        "cpu_per_1000": (cpu1 - cpu0) / count * 1000,
        "bench_cpu_per_1000": (own1 - own0) / count * 1000,
        "p50_ms": quantile(arrivals.latencies, 0.50),
        "p99_ms": quantile(arrivals.latencies, 0.99),
        "duplicates": arrivals.duplicates,
        "strays": arrivals.strays,
        "udp_drops": udp_receive_drops() - drops0,
    }


def chunk_size(rate: float) -> int:
    """Messages per write: ``BATCH`` open loop; paced, one write every ``PACE_TICK`` s."""
    return BATCH if not rate else max(1, round(rate * PACE_TICK))


async def pace(t0: float, sent: int, rate: float) -> None:
    """With ``rate`` (msg/s; 0: open loop), wait until ``sent`` messages are due."""
    if rate:
        await trio.sleep_until(t0 + sent / rate)


async def partner_push(stream: OutboundStream, to: str, seqs: range, rate: float = 0.0) -> None:
    """Messages ``seqs`` on the partner's stream: open loop, ``BATCH`` per write, or at ``rate``."""
    step, t0 = chunk_size(rate), trio.current_time()
    for start in range(0, len(seqs), step):
        await pace(t0, start, rate)
        chunk = "".join(
            f"<message from='juliet@{PARTNER}/r' to='{to}' type='chat' id='p{n}'><body>{body(n)}</body></message>"
            for n in seqs[start:start + step])
        await stream.send_raw(chunk.encode())


async def c2s_push(client: Client, seqs: range, rate: float = 0.0) -> None:
    """Messages ``seqs`` from a c2s client to romeo@load1.test: open loop, ``BATCH`` per write,
    or at ``rate``."""
    step, t0 = chunk_size(rate), trio.current_time()
    for start in range(0, len(seqs), step):
        await pace(t0, start, rate)
        await client.send("".join(
            f"<message to='{REMOTE_USER}' type='chat' id='c{n}'><body>{body(n)}</body></message>"
            for n in seqs[start:start + step]))


@dataclass
class Session:
    running: Running
    listener: MarkedListener
    stream: OutboundStream
    pids: list[int]


def scenario_for(running: Running, lab: Lab) -> Scenario:
    return Scenario(
        target=Target(domain=running.domain, host=running.host, port=running.s2s_port),
        partners=Partners(domains=(PARTNER,), listen_host=PARTNER_IP, listen_port=lab.partner_port,
                          secret=SECRET, connect_timeout=30),
        traffic=Traffic(stanzas=1, mix=(MixEntry(kind=StanzaKind.MESSAGE, to=f"bob@{running.domain}"),)),
    )


async def run_load(session: Session, load: Load, args: argparse.Namespace, label: tuple[str, int, str, str],
                   extra: Callable[[], dict[str, object]]) -> Result:
    """Warm-up is a label with run -1: measured, printed, not kept."""
    server, run, direction, transport = label
    count = WARMUP if run < 0 else args.messages
    with trio.fail_after(args.timeout + 2 * args.settle + 60):
        before = extra()
        figures = await measure(load, count, session.pids, args.timeout, 0.5 if run < 0 else args.settle)
        after = extra()
    deltas = {k: v - before[k] for k, v in after.items() if isinstance(v, int)}
    statuses = {str(k): v for k, v in (after["statuses"] - before["statuses"]).items()}  # type: ignore[operator]
    result = Result(server, run, direction, transport, count, int(figures["delivered"]), int(figures["bounced"]),
                    figures["rate"], figures["cpu_per_1000"], figures["p50_ms"], figures["p99_ms"],
                    retransmissions=deltas.get("retransmissions", 0), challenges=deltas.get("challenges", 0),
                    duplicates=int(figures["duplicates"]), strays=int(figures["strays"]), udp_drops=int(figures["udp_drops"]), statuses=statuses,
                    bench_cpu_per_1000=figures["bench_cpu_per_1000"], load=os.getloadavg()[0])
    what = "warm-up" if run < 0 else f"run {run + 1}"
    print(f"  [{NAMES[server]}] {direction} {transport:4} {what}: {result.rate:8,.0f} msg/s  "
          f"CPU {result.cpu_per_1000:.3f} s/1,000  p50 {result.p50_ms:.1f} ms  p99 {result.p99_ms:.1f} ms  "
          f"delivered {result.delivered}/{result.sent}  bounced {result.bounced}  "
          f"retrans {result.retransmissions}  407s {result.challenges}  dup {result.duplicates}  "
          f"strays {result.strays}  "
          f"UDP drops {result.udp_drops}  "
          f"statuses {statuses or '-'}  bench CPU {result.bench_cpu_per_1000:.3f} s/1,000  "
          f"load {result.load:.2f}", flush=True)
    return result


def ua_figures(ua: LightUA, **more: int) -> dict[str, object]:
    return {"retransmissions": ua.retransmissions_received + ua.retransmitted, "challenges": ua.challenged,
            "statuses": collections.Counter(ua.finals), **more}


async def edgeproxy_rounds(session: Session, args: argparse.Namespace, run: int) -> list[Result]:
    running, listener = session.running, session.listener
    assert running.sip is not None
    results = []
    for transport in args.transports:
        ua_args = {"transport": transport, "host": UA_IP, "server": running.sip}
        async with open_ua("bob", EDGE_DOMAIN, SIP_PASSWORD, **ua_args) as bob, \
                open_ua("alice", EDGE_DOMAIN, SIP_PASSWORD, **ua_args) as alice:
            for ua in (bob, alice):
                with trio.fail_after(40):
                    status = await ua.register()
                if status != 200:
                    raise RuntimeError(f"REGISTER of {ua.aor} over {transport}: {status}")
            inbox = Arrivals()
            bob.on_message = inbox.message
            loads = {
                "xmpp-sip": (Load(lambda seqs: partner_push(session.stream, f"bob@{EDGE_DOMAIN}", seqs, args.rate), inbox,
                                  lambda: listener.error_stanzas),
                             lambda: ua_figures(bob)),
                "sip-xmpp": (Load(lambda seqs: alice.send_messages(f"sip:{REMOTE_USER}", len(seqs), lambda i: body(seqs[i]),
                                                      window=args.sip_window, rate=args.rate),
                                  listener.arrivals,
                                  lambda: sum(v for k, v in alice.finals.items() if k >= 300) + listener.error_stanzas,
                                  lambda: alice.outstanding() > 0),
                             lambda: ua_figures(alice)),
            }
            for direction in args.directions:
                load, extra = loads[direction]
                for n in (-1, run):  # the warm-up, then the measurement
                    result = await run_load(session, load, args, ("edgeproxy", n, direction, transport), extra)
                results.append(result)
            with trio.fail_after(40):
                await bob.register(expires=0)  # the next transport's bob is the only binding
                await alice.register(expires=0)
    return results


async def xmpp_server_rounds(session: Session, args: argparse.Namespace, run: int) -> list[Result]:
    running, listener = session.running, session.listener
    results = []
    async with trio.open_nursery() as nursery:
        users = {}
        for name in ("bob", "alice"):
            with trio.fail_after(30):
                client = await Client.login(running.host, running.c2s_port, name, running.domain, XMPP_PASSWORD)
            users[name] = C2SUser(client)
            nursery.start_soon(users[name].read)
        bob, alice = users["bob"], users["alice"]
        loads = {
            "xmpp-sip": Load(lambda seqs: partner_push(session.stream, f"bob@{running.domain}", seqs, args.rate), bob.arrivals,
                             lambda: listener.error_stanzas),
            "sip-xmpp": Load(lambda seqs: c2s_push(alice.client, seqs, args.rate), listener.arrivals, lambda: alice.errors),
        }
        for direction in args.directions:
            for n in (-1, run):  # the warm-up, then the measurement
                result = await run_load(session, loads[direction], args, (running.key, n, direction, "c2s"),
                                        lambda: {"statuses": collections.Counter()})
            results.append(result)
        nursery.cancel_scope.cancel()
    for user in users.values():
        with trio.move_on_after(5):
            await user.client.aclose()
    return results


async def server_session(key: str, lab: Lab, args: argparse.Namespace, run: int) -> list[Result]:
    directory = lab.work / f"run{run}-{key}"
    running = await trio.to_thread.run_sync(STARTERS[key], lab, directory)
    try:
        pids = await trio.to_thread.run_sync(process_tree, running.pid)
        print(f"== run {run + 1}: {NAMES[key]} (pids {pids})", flush=True)
        async with trio.open_nursery() as nursery:
            scenario = scenario_for(running, lab)
            listener = MarkedListener(scenario)
            await nursery.start(listener.serve)
            policy = partner_snapshot(scenario)
            stream = await open_stream(scenario, lambda: policy, PARTNER)
            nursery.start_soon(stream.read_until_closed)
            session = Session(running, listener, stream, pids)
            rounds = edgeproxy_rounds if key == "edgeproxy" else xmpp_server_rounds
            results = await rounds(session, args, run)
            with trio.move_on_after(5):
                await stream.aclose()
            nursery.cancel_scope.cancel()
        return results
    finally:
        await trio.to_thread.run_sync(running.stop)


# -- reporting ---------------------------------------------------------------------------------


def spread(values: list[float], spec: str) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, spec)
    return f"{format(med, spec)} ({format(min(values), spec)}–{format(max(values), spec)})"


def total(results: list[Result], name: str, applies: bool) -> str:
    return f"{sum(getattr(r, name) for r in results):,}" if applies else "–"


def table(results: list[Result]) -> str:
    groups: dict[tuple[str, str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.server, r.direction, r.transport), []).append(r)
    lines = [
        "| server | direction | transport | runs | msg/s median (min–max) | CPU-s per 1,000 (min–max) "
        "| p50 ms | p99 ms (min–max) | delivered / sent | bounced | retransmissions | UDP drops | 407s |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    def order(key: tuple[str, str, str]) -> tuple[int, str, str]:
        return SERVERS.index(key[0]), key[2] != "udp", key[1] != "xmpp-sip"

    for (server, direction, transport), rs in sorted(groups.items(), key=lambda item: order(item[0])):
        sip = server == "edgeproxy"
        lines.append(
            f"| {NAMES[server]} | {direction} | {transport} | {len(rs)} "
            f"| {spread([r.rate for r in rs], ',.0f')} | {spread([r.cpu_per_1000 for r in rs], '.3f')} "
            f"| {statistics.median(r.p50_ms for r in rs):.1f} | {spread([r.p99_ms for r in rs], '.1f')} "
            f"| {sum(r.delivered for r in rs):,} / {sum(r.sent for r in rs):,} | {sum(r.bounced for r in rs):,} "
            f"| {total(rs, 'retransmissions', sip)} | {total(rs, 'udp_drops', sip and transport == 'udp')} "
            f"| {total(rs, 'challenges', sip and direction == 'sip-xmpp')} |")
    return "\n".join(lines)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


async def main(args: argparse.Namespace) -> None:
    raise_nofile()
    started, load_start = time.strftime("%Y-%m-%d %H:%M:%S"), uptime()
    print(f"product path: {args.messages:,} messages per measurement, {args.runs} runs, servers {args.servers}, "
          f"directions {args.directions}, SIP over {args.transports}; {load_start}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-product-", dir=args.workdir))
    partner_port = free_port(PARTNER_IP)
    records = [srv(f"_xmpp-server._tcp.{PARTNER}", PARTNER, partner_port), host(PARTNER, PARTNER_IP)]
    dns = await trio.to_thread.run_sync(start_dnsmasq, work / "dns", records, DNS_IP)
    lab = Lab((dns.address, dns.port), partner_port, work, args.src)
    results: list[Result] = []
    try:
        for run in range(args.runs):
            order = args.servers[run % len(args.servers):] + args.servers[:run % len(args.servers)]
            for key in order:
                results += await server_session(key, lab, args, run)
    finally:
        dns.stop()
        if args.keep:
            print(f"server directories kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    load_end = uptime()
    text = table(results)
    print(text)
    print(f"load: start {load_start}\n      end   {load_end}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "started": started, "command": " ".join([sys.executable, *sys.argv]), "load_start": load_start,
            "load_end": load_end, "table": text,
            "results": [dict(asdict(r), lost=r.lost) for r in results]}, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000, help="messages per measurement")
    parser.add_argument("--runs", type=int, default=3, help="runs (a fresh server each; server order rotated)")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--directions", nargs="+", default=["xmpp-sip", "sip-xmpp"], choices=["xmpp-sip", "sip-xmpp"])
    parser.add_argument("--transports", nargs="+", default=["udp", "tcp"], choices=["udp", "tcp"],
                        help="SIP transports of the UA (edgeproxy)")
    parser.add_argument("--sip-window", type=int, default=0,
                        help="MESSAGEs the SIP UA leaves unanswered at most (0: open loop)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="messages per second, paced (0: open loop, the default) — for latency below saturation")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a measurement may take at most")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds after a measurement for late answers and retransmissions")
    parser.add_argument("--src", help="source dir (PYTHONPATH) of the edgeproxy tree to test")
    parser.add_argument("--json", help="write every measurement and the table to this file")
    parser.add_argument("--workdir", help="where the temporary directories go (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the server directories (logs, metrics)")
    trio.run(main, parser.parse_args())
