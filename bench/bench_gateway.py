"""Gateway end-to-end benchmark (issue 5): XMPP → SIP and SIP → XMPP through edge, loopback
channel and gateway, with SIPp as the SIP user agents.

What runs where
---------------
* **The system under test** is a real ``edgeproxy serve --role both`` *subprocess* (edge and
  gateway in one process, the channel crossing loopback as in production) for ``contoso.test``:
  S2S on 127.0.0.70, the internal (channel) listener, the admin endpoint and the gateway's SIP
  listener (UDP+TCP) on the same address, private ports. A subprocess, not ``run_app`` in this
  process: the load generator must not share the server's interpreter lock, and the server's
  CPU time is then its own (``/proc/<pid>/stat`` utime + stime, 10 ms ticks). Its store has the
  user ``alice`` and the partner ``fabrikam.test`` (TCP dialback, matrix row 17) whose
  authoritative listener is this script. ``--src DIR`` runs the server from another source tree
  (e.g. an exported older commit), so before/after figures come from one run, alternating.
* **The partner** ``fabrikam.test`` runs here: ``--streams`` initiating S2S streams
  (``edgeproxy.loadtest.partner.open_stream``: the library's sans-IO core, dialback) that write
  pre-built stanzas, 50 per write, and the partner listener (``PartnerListener``) that answers the
  edge's ``db:verify`` and counts what the edge delivers to fabrikam.test (messages, errors).
* **SIPp** (separate processes, TCP, ``-t t1``): a UAS on 127.0.0.72 registered as
  ``sip:alice@contoso.test`` at the built-in registrar (Contact ``;transport=tcp``); a UAC on
  127.0.0.73 sending MESSAGEs to ``sip:romeo@fabrikam.test``. Since issue 14 the gateway
  authenticates alice (digest, MD5: ``PASSWORD``): the REGISTER answers a 401 and each MESSAGE
  a 407 (a second request per MESSAGE, so SIP → XMPP figures from before issue 14 are not
  comparable); ``--src`` must be a tree that challenges, as the scenarios expect it.

Rounds (bounded in count and time; everything stops by itself):

``xmpp-sip``
    A fresh UAS with ``-m N`` is started; the partner pushes N ``<message/>`` to
    alice@contoso.test as fast as the streams take them (open loop); the round ends when the UAS
    has answered N MESSAGEs and exits. Rate = N / (UAS exit − first byte sent).
``sip-xmpp``
    A UAC sends N MESSAGEs (``-r`` per second, at most ``-l`` outstanding: the gateway answers 200
    only once the edge has acked the stanza, so ``-l`` is the window); the round ends when the
    partner listener has counted N messages. Rate = N / (that moment − UAC start).

CPU: the server process only, per 1,000 messages, over the same interval. Medians over rounds.

    .venv/bin/python bench/bench_gateway.py [--messages 20000] [--rounds 3] [--src DIR --label L ...]
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import trio

ROOT = Path(__file__).resolve().parents[1]

from edgeproxy.loadtest.accounting import Ledger  # noqa: E402
from edgeproxy.loadtest.partner import (  # noqa: E402
    MAX_READ,
    OutboundStream,
    PartnerListener,
    open_stream,
    partner_snapshot,
)
from edgeproxy.loadtest.scenario import MixEntry, Partners, Scenario, StanzaKind, Target, Traffic  # noqa: E402
from edgeproxy.ops.status import decode_status  # noqa: E402
from edgeproxy.policy.credentials import digest_ha1  # noqa: E402
from edgeproxy.policy.model import (  # noqa: E402
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
    SipCredential,
    User,
)
from edgeproxy.policy.store import Store  # noqa: E402
from edgeproxy.s2s import (  # noqa: E402
    DialbackVerdict,
    DialbackVerifyNeeded,
    Role,
    S2SConnection,
    StanzaReceived,
    State,
)

EDGE_IP, PARTNER_IP, UAS_IP, UAC_IP = "127.0.0.70", "127.0.0.71", "127.0.0.72", "127.0.0.73"
SIPP_DIR = ROOT / "bench" / "sipp"
REGISTER = ROOT / "tests" / "gateway" / "sipp" / "register.xml"
SECRET = "bench-gateway-dialback-secret"
#: alice's SIP password (issue 14): the REGISTER answers a 401, every MESSAGE of the UAC a 407.
PASSWORD = "bench-gateway-sip-password"
BATCH = 50
#: SIPp's "-l": MESSAGEs outstanding at once (the gateway refuses beyond 1,024 handler tasks).
#: SIPp's socket buffers ("-buff_size", default 65,535). With the default, SIPp 3.6.1's UAS
#: meets TCP congestion under the gateway's coalesced bursts and silently loses 200 responses
#: (its "TCP errors (send/recv/cong)" counter; the call still counts as successful), so the
#: gateway's transactions wait for Timer F (32 s). The kernel caps it at net.core.[rw]mem_max.
SIPP_BUFFER = 4 * 1024 * 1024
#: Seconds without arrivals, once the UAC is done, after which a SIP→XMPP round ends short.
QUIET = 2.0
UAC_WINDOW = int(os.environ.get("UAC_WINDOW", "200"))


def free_port(host: str) -> int:
    """A port free for both UDP and TCP on ``host``."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
            return port
    raise OSError("no free port")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sipp_successes(output: str) -> int:
    """Cumulative 'Successful call' count from SIPp's final statistics screen."""
    found = re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", output)
    return int(found[-1]) if found else -1


# -- the server under test ---------------------------------------------------------------------


@dataclass
class Server:
    label: str
    process: subprocess.Popen[bytes]
    s2s_port: int
    sip_port: int
    admin_port: int
    log: Path


def write_setup(directory: Path, partner_port: int, max_queued: int) -> tuple[Path, dict[str, int]]:
    ports = {name: free_port(EDGE_IP) for name in ("s2s", "internal", "admin", "sip")}
    state = directory / "state"
    config = Configuration(
        gateway=GatewaySettings(dialback_secret="contoso-secret"),
        partners=(Partner(domain="fabrikam.test", type=PartnerType.FEDERATED,
                          proxy_fqdn=f"{PARTNER_IP}:{partner_port}", tls=Negotiation.NOT_SUPPORTED,
                          sasl=Negotiation.NOT_SUPPORTED, dialback=True),),
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
        # issue 14: the gateway authenticates its users; SIPp 3.6 knows only MD5
        users=(User(sip="sip:alice@contoso.test", credentials=(SipCredential(
            algorithm="MD5", realm="contoso.test", ha1=digest_ha1("MD5", "alice", "contoso.test", PASSWORD)),)),),
    )
    with Store.open(state) as store, store.write() as tx:
        tx.replace_all(config)
    path = directory / "edgeproxy.toml"
    path.write_text(
        '[edge]\ndomains = ["contoso.test"]\n'
        f'listen = ["{EDGE_IP}:{ports["s2s"]}"]\n'
        f'internal-listen = "{EDGE_IP}:{ports["internal"]}"\n'
        f'state-dir = "{state}"\n'
        '[tls]\ncertificate = "no/edge.pem"\nkey = "no/edge.key"\n'
        f'[admin]\nlisten = "{EDGE_IP}:{ports["admin"]}"\n'
        f'[gateway]\nsip-listen = ["{EDGE_IP}:{ports["sip"]}"]\nmax-queued = {max_queued}\n'
    )
    return path, ports


def channel_connected(admin_port: int) -> bool:
    conn = http.client.HTTPConnection(EDGE_IP, admin_port, timeout=2)
    try:
        conn.request("GET", "/status")
        return decode_status(conn.getresponse().read()).channel.state.value == "connected"
    except OSError:
        return False
    finally:
        conn.close()


async def start_server(label: str, src: str | None, directory: Path, partner_port: int, max_queued: int) -> Server:
    directory.mkdir(parents=True)
    config, ports = write_setup(directory, partner_port, max_queued)
    env = dict(os.environ, EDGEPROXY_LOG_FORMAT="json")
    if src:
        env["PYTHONPATH"] = src
    log = directory / "server.log"
    profile = ["-m", "cProfile", "-o", str(directory / "server.prof")] if os.environ.get("BENCH_PROFILE") else []
    process = subprocess.Popen(
        [sys.executable, *profile, "-m", "edgeproxy", "serve", "--config", str(config), "--role", "both"],
        stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=directory,
    )
    with trio.fail_after(60):
        while not await trio.to_thread.run_sync(channel_connected, ports["admin"]):
            if process.poll() is not None:
                raise RuntimeError(f"edgeproxy serve ended: {log.read_text()[-2000:]}")
            await trio.sleep(0.2)
    return Server(label, process, ports["s2s"], ports["sip"], ports["admin"], log)


def stop_server(server: Server) -> None:
    """Save the server's /metrics next to its log, then SIGTERM (graceful stop)."""
    conn = http.client.HTTPConnection(EDGE_IP, server.admin_port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        (server.log.parent / "metrics.txt").write_bytes(conn.getresponse().read())
    except OSError:
        pass
    finally:
        conn.close()
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


# -- the partner (this process) ------------------------------------------------------------------


class CountingListener(PartnerListener):
    """The fabrikam.test listener: answers dialback like the load-test partner, then counts the
    messages and error stanzas the edge delivers by scanning the raw bytes (``<message `` and
    ``type="error"``/``type='error'``) instead of parsing every stanza: a partner that parses
    in Python is slower than the edge sends, and the edge would then bounce what its outbound
    link cannot queue (``net.pool.LINK_QUEUE_BOUND``)."""

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario, lambda: partner_snapshot(scenario), Ledger())
        self.messages = 0
        self.error_stanzas = 0
        self.wanted = 0
        self.reached = trio.Event()

    def _observe(self, event: StanzaReceived, now: float) -> None:
        stanza = event.stanza
        if stanza.type == "error":
            self.error_stanzas += 1
        elif stanza.name == "message":
            self.messages += 1
        self._check()

    def _check(self) -> None:
        if self.wanted and self.messages >= self.wanted:
            self.reached.set()

    def expect(self, total: int) -> None:
        self.wanted = total
        self.reached = trio.Event()
        self._check()

    async def _handle(self, transport: trio.SocketStream) -> None:
        conn = S2SConnection(Role.RECEIVING, policy=self.policy, secret=self.scenario.partners.secret)
        try:
            async with transport:
                authenticated = False
                while conn.state is not State.CLOSED and not authenticated:
                    data = await transport.receive_some(MAX_READ)
                    conn.receive_data(data)
                    out = bytearray(conn.data_to_send())
                    while (event := conn.next_event()) is not None:
                        if isinstance(event, StanzaReceived):
                            self._observe(event, 0.0)
                        elif isinstance(event, DialbackVerifyNeeded):
                            # the edge's key on its stream to us: accepted unchecked (a load
                            # generator is no security boundary); stanzas follow on this stream
                            conn.send(DialbackVerdict(event.originating, event.receiving, valid=True))
                            authenticated = True
                    out += conn.data_to_send()
                    if out:
                        await transport.send_all(bytes(out))
                    if not data:
                        return
                if authenticated:
                    await self._count_raw(transport)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.errors.append(f"inbound transport: {exc!r}")

    async def _count_raw(self, transport: trio.SocketStream) -> None:
        patterns = (b"<message ", b"type='error'", b'type="error"')
        tails = [b""] * len(patterns)
        while data := await transport.receive_some(MAX_READ):
            for i, pattern in enumerate(patterns):
                chunk = tails[i] + data
                found = chunk.count(pattern)
                tails[i] = chunk[-(len(pattern) - 1):]
                if i == 0:
                    self.messages += found  # error messages included: reported apart, expected 0
                else:
                    self.error_stanzas += found
            self._check()


def scenario_for(server_port: int, listen_port: int) -> Scenario:
    return Scenario(
        target=Target(domain="contoso.test", host=EDGE_IP, port=server_port),
        partners=Partners(domains=("fabrikam.test",), listen_host=PARTNER_IP, listen_port=listen_port,
                          secret=SECRET, connect_timeout=30),
        traffic=Traffic(stanzas=1, mix=(MixEntry(kind=StanzaKind.MESSAGE, to="alice@contoso.test"),)),
    )


def payloads(streams: int, count: int) -> list[list[bytes]]:
    per = count // streams
    out = []
    for s in range(streams):
        chunks = []
        for start in range(0, per, BATCH):
            chunks.append(b"".join(
                f"<message from='bob{s}@fabrikam.test/r' to='alice@contoso.test' type='chat' id='g{s}-{n}'>"
                f"<body>hello {n}, a short message of ordinary size</body></message>".encode()
                for n in range(start, min(start + BATCH, per))
            ))
        out.append(chunks)
    return out


async def push(stream: OutboundStream, chunks: list[bytes]) -> None:
    for chunk in chunks:
        await stream.send_raw(chunk)


# -- SIPp ----------------------------------------------------------------------------------------


def sipp() -> str:
    for candidate in ("/usr/bin/sipp", "/usr/local/bin/sipp"):
        if Path(candidate).exists():
            return candidate
    raise SystemExit("sipp not found (Debian package sip-tester)")


async def register(server: Server, uas_port: int) -> None:
    done = await trio.run_process(
        [sipp(), "-sf", str(REGISTER), "-i", UAS_IP, "-p", str(free_port(UAS_IP)), "-m", "1",
         "-nostdin", "-timeout", "15", "-timeout_error", "-default_behaviors", "all,-bye",
         "-key", "user", "alice", "-key", "domain", "contoso.test", "-key", "contact_host", UAS_IP,
         "-key", "contact_port", f"{uas_port};transport=tcp", "-key", "expires", "3600",
         "-au", "alice", "-ap", PASSWORD, "-auth_uri", "contoso.test",
         f"{EDGE_IP}:{server.sip_port}"],
        check=False, capture_stdout=True, capture_stderr=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"REGISTER failed: {done.stderr.decode()[-800:]}")


@dataclass
class Round:
    rate: float
    cpu_per_1000: float
    delivered: int
    errors: int


@dataclass
class Session:
    """One server's connections for a series of rounds."""

    server: Server
    listener: CountingListener
    streams: list[OutboundStream]
    uas_port: int
    results: dict[str, list[Round]] = field(default_factory=dict)


async def xmpp_to_sip(session: Session, messages: int, timeout: float) -> Round:
    server, listener = session.server, session.listener
    chunks = payloads(len(session.streams), messages)
    messages = sum(c.count(b"<message ") for s in chunks for c in s)
    errors0 = listener.error_stanzas
    out = session.server.log.parent / "uas.out"
    with out.open("wb") as sink:
        uas = subprocess.Popen(
            [sipp(), "-sf", str(SIPP_DIR / "gw_uas.xml"), "-t", "t1", "-i", UAS_IP, "-p", str(session.uas_port),
             "-m", str(messages), "-nostdin", "-timeout", str(int(timeout)), "-default_behaviors", "all,-bye",
             "-buff_size", str(SIPP_BUFFER)],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
        )
        try:
            await trio.sleep(0.5)  # let SIPp listen
            cpu0, t0 = cpu_seconds(server.process.pid), time.perf_counter()
            async with trio.open_nursery() as nursery:
                for stream, parts in zip(session.streams, chunks, strict=True):
                    nursery.start_soon(push, stream, parts)
            while uas.poll() is None:
                await trio.sleep(0.005)
            t1, cpu1 = time.perf_counter(), cpu_seconds(server.process.pid)
        finally:
            if uas.poll() is None:
                uas.kill()
                uas.wait()
    delivered = sipp_successes(out.read_text(errors="replace"))
    if delivered != messages or listener.error_stanzas != errors0:
        print(f"  ! UAS answered {delivered} of {messages}, {listener.error_stanzas - errors0} error replies; "
              f"its output: {out}", flush=True)
        (out.parent / f"uas-{time.monotonic_ns()}.out").write_bytes(out.read_bytes())
    return Round(messages / (t1 - t0), (cpu1 - cpu0) / messages * 1000, delivered, listener.error_stanzas - errors0)


async def sip_to_xmpp(session: Session, messages: int, rate: int, timeout: float) -> Round:
    server, listener = session.server, session.listener
    listener.expect(listener.messages + messages)
    errors0 = listener.error_stanzas
    cmd = [sipp(), "-sf", str(SIPP_DIR / "gw_uac.xml"), "-t", "t1", "-i", UAC_IP, "-p", str(free_port(UAC_IP)),
           "-m", str(messages), "-r", str(rate), "-rp", "1000", "-l", str(UAC_WINDOW), "-nostdin",
           "-buff_size", str(SIPP_BUFFER),
           "-timeout", str(int(timeout)), "-default_behaviors", "all,-bye", "-s", "romeo",
           "-key", "from_user", "alice", "-key", "from_domain", "contoso.test", "-key", "domain", "fabrikam.test",
           "-au", "alice", "-ap", PASSWORD, "-auth_uri", "romeo@fabrikam.test",
           f"{EDGE_IP}:{server.sip_port}"]
    out = session.server.log.parent / "uac.out"
    start = listener.messages
    with out.open("wb") as sink:
        cpu0, t0 = cpu_seconds(server.process.pid), time.perf_counter()
        uac = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
        try:
            # Until all N arrived, or SIPp is done and nothing arrived for QUIET s (the edge
            # bounced the rest: counted as not delivered). t1 = the last arrival.
            seen, t1, cpu1 = listener.messages, t0, cpu0
            deadline = t0 + timeout
            while listener.messages - start < messages and time.perf_counter() < deadline:
                await trio.sleep(0.005)
                if listener.messages != seen:
                    seen, t1, cpu1 = listener.messages, time.perf_counter(), cpu_seconds(server.process.pid)
                elif uac.poll() is not None and time.perf_counter() - t1 > QUIET:
                    break
            if listener.messages != seen or t1 == t0:
                t1, cpu1 = time.perf_counter(), cpu_seconds(server.process.pid)
            while uac.poll() is None and time.perf_counter() - t1 < 10:
                await trio.sleep(0.01)
        finally:
            if uac.poll() is None:
                uac.kill()
                uac.wait()
    got = min(listener.messages - start, messages)
    ok = sipp_successes(out.read_text(errors="replace"))
    if got != messages:
        print(f"  ! partner got {got} of {messages} (SIPp: {ok} answered 200); the rest was bounced by the edge",
              flush=True)
    return Round(got / (t1 - t0), (cpu1 - cpu0) / max(got, 1) * 1000, got, listener.error_stanzas - errors0)


async def open_session(label: str, src: str | None, directory: Path, args: argparse.Namespace,
                       nursery: trio.Nursery) -> Session:
    listen_port = free_port(PARTNER_IP)
    server = await start_server(label, src, directory, listen_port, args.max_queued)
    scenario = scenario_for(server.s2s_port, listen_port)
    listener = CountingListener(scenario)
    await nursery.start(listener.serve)
    policy = partner_snapshot(scenario)
    streams = [await open_stream(scenario, lambda: policy, "fabrikam.test") for _ in range(args.streams)]
    for stream in streams:
        nursery.start_soon(stream.read_until_closed)
    uas_port = free_port(UAS_IP)
    await register(server, uas_port)
    return Session(server, listener, streams, uas_port, {"xmpp-sip": [], "sip-xmpp": []})


def summary(rounds: list[Round]) -> str:
    rates = [r.rate for r in rounds]
    return (f"{statistics.median(rates):8,.0f} msg/s (min {min(rates):,.0f}, max {max(rates):,.0f})  "
            f"CPU {statistics.median(r.cpu_per_1000 for r in rounds):.3f} s/1,000  "
            f"delivered {sum(r.delivered for r in rounds):,}  errors {sum(r.errors for r in rounds)}")


async def main(args: argparse.Namespace) -> None:
    trees: list[tuple[str, str | None]] = list(zip(args.label, args.src, strict=True)) or [("current", None)]
    results: dict[str, dict[str, list[Round]]] = {label: {"xmpp-sip": [], "sip-xmpp": []} for label, _ in trees}
    directions = args.directions
    print(f"gateway end to end: {args.messages:,} messages per round, {args.rounds} rounds x {args.cycles} cycles, "
          f"{args.streams} S2S streams, SIPp over TCP (UAC -r {args.rate} -l {UAC_WINDOW}); "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    tmp = tempfile.mkdtemp(prefix="bench-gateway-", dir=args.workdir)
    try:
        for cycle in range(args.cycles):
            for n, (label, src) in enumerate(trees):
                async with trio.open_nursery() as nursery:
                    session = await open_session(label, src, Path(tmp) / f"{cycle}-{n}", args, nursery)
                    try:
                        for _ in range(args.rounds):
                            with trio.fail_after(args.timeout + 30):
                                if "xmpp-sip" in directions:
                                    r = await xmpp_to_sip(session, args.messages, args.timeout)
                                    results[label]["xmpp-sip"].append(r)
                                    print(f"  [{label}] xmpp->sip {r.rate:8,.0f} msg/s  CPU {r.cpu_per_1000:.3f} s/1,000"
                                          f"  delivered {r.delivered}  errors {r.errors}  "
                                          f"load {os.getloadavg()[0]:.2f}", flush=True)
                                if "sip-xmpp" in directions:
                                    r = await sip_to_xmpp(session, args.messages, args.rate, args.timeout)
                                    results[label]["sip-xmpp"].append(r)
                                    print(f"  [{label}] sip->xmpp {r.rate:8,.0f} msg/s  CPU {r.cpu_per_1000:.3f} s/1,000"
                                          f"  delivered {r.delivered}  errors {r.errors}  "
                                          f"load {os.getloadavg()[0]:.2f}", flush=True)
                    finally:
                        for stream in session.streams:
                            with trio.move_on_after(5):
                                await stream.aclose()
                        stop_server(session.server)
                        nursery.cancel_scope.cancel()
    finally:
        if args.keep:
            print(f"server directories kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("medians:")
    for label, by_direction in results.items():
        for direction, rounds in by_direction.items():
            if rounds:
                print(f"  {label:10} {direction}  {summary(rounds)}")
    if args.json:
        Path(args.json).write_text(msgspec.json.encode(results).decode())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000, help="messages per round and direction")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server start")
    parser.add_argument("--cycles", type=int, default=1, help="server starts per source tree (alternating)")
    parser.add_argument("--streams", type=int, default=2, help="S2S streams from the partner")
    parser.add_argument("--rate", type=int, default=10_000, help="SIPp UAC MESSAGEs per second (offered)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a round may take at most")
    parser.add_argument("--max-queued", type=int, default=50_000,
                        help="[gateway] max-queued (an open-loop burst above the default 10,000 would be bounced)")
    parser.add_argument("--directions", nargs="+", default=["xmpp-sip", "sip-xmpp"], choices=["xmpp-sip", "sip-xmpp"])
    parser.add_argument("--src", action="append", default=[], help="source dir (PYTHONPATH) of a tree to compare")
    parser.add_argument("--label", action="append", default=[], help="label of each --src")
    parser.add_argument("--json", help="write all rounds to this file")
    parser.add_argument("--workdir", help="where the temporary server directories go (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the server directories (logs, SIPp output)")
    trio.run(main, parser.parse_args())
