"""One load-test run, phase by phase, each bounded in time:

1. start the partner listener (``db:verify`` answers, replies) and, if configured, log the sink in;
2. open N × M streams, paced at ``connect_rate`` per second, in the scenario's security mode
   (plain dialback, STARTTLS + dialback, STARTTLS + SASL EXTERNAL); each stream's set-up time,
   split into TCP connect and TLS handshake, its TLS version and method go into the result;
3. sample the target's CPU/RSS (idle streams; optionally after ``idle`` seconds);
4. send ``stanzas`` over the ready streams, paced at ``rate`` (0: as fast as they take them),
   stopping after ``duration`` seconds at the latest;
5. wait up to ``drain`` seconds for outstanding stanzas; what is left is *lost*, and listed;
6. sample again, close the streams, return the result (a JSON-ready dict).

With ``progress`` (the CLI passes stderr only when it is a terminal) a one-line (carriage-return) progress
bar of settled stanzas is redrawn every ``PROGRESS_INTERVAL`` seconds; no dependency.
"""

from __future__ import annotations

import collections
import math
import sys
import time
from collections.abc import Callable
from typing import TextIO

import trio

from edgeproxy.loadtest.accounting import Ledger, percentile
from edgeproxy.loadtest.partner import (
    OutboundStream,
    PartnerListener,
    StreamSetupError,
    listener_snapshot,
    open_stream,
    partner_snapshot,
)
from edgeproxy.loadtest.partner_tls import PartnerTls
from edgeproxy.loadtest.procstats import ProcSample, try_sample
from edgeproxy.loadtest.scenario import MixEntry, Scenario, SinkKind
from edgeproxy.loadtest.sink import C2SSink, DeliveryProbe
from edgeproxy.loadtest.stanzas import build_stanza, mix_cycle
from edgeproxy.s2s import LocalProtocolError

#: Open loop: stanzas written to one stream in one ``send_all``.
OPEN_LOOP_BATCH = 32
PROGRESS_INTERVAL = 0.5
#: Width of the progress bar (characters) on a terminal.
PROGRESS_BAR = 24
DRAIN_POLL = 0.01
CONNECT_CONCURRENCY = 64


class LoadTest:
    """A scenario against one target; :meth:`run` returns the result dict."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        pid: int | None = None,
        progress: TextIO | None = None,
    ) -> None:
        self.scenario = scenario
        self.pid = pid
        self.ledger = Ledger()
        self.snapshot = partner_snapshot(scenario)
        self.listener_policy = listener_snapshot(scenario)
        #: Certificates of the simulated domains (None in plain mode).
        self.tls = PartnerTls.for_scenario(scenario)
        self.listener = PartnerListener(scenario, lambda: self.listener_policy, self.ledger, self.tls)
        self.streams: list[OutboundStream] = []
        self.setup_errors: list[str] = []
        self.listen_port: int | None = None
        self._progress = progress
        self._phase = "starting"
        self._sent_done = False
        #: Stanzas never written because their stream had ended (not counted as sent).
        self.unsent = 0

    def delivery_probe(self) -> DeliveryProbe:
        """A local-delivery stand-in for an in-process edgeproxy, reporting to this run."""
        return DeliveryProbe(self.ledger)

    async def start_listener(self, nursery: trio.Nursery) -> int:
        """Start the partner listener (before the target needs it); returns its port."""
        if self.listen_port is None:
            listeners = await nursery.start(self.listener.serve)
            self.listen_port = int(listeners[0].socket.getsockname()[1])
        return self.listen_port

    async def run(self) -> dict[str, object]:
        s = self.scenario
        wall_start = time.time()
        self.ledger.start = trio.current_time()
        samples: dict[str, ProcSample | None] = {"start": try_sample(self.pid)}
        async with trio.open_nursery() as nursery:
            await self.start_listener(nursery)
            sink = None
            if s.sink.kind is not SinkKind.NONE:
                sink = C2SSink(s.sink, s.target.domain, self.ledger)
                await sink.login()
                nursery.start_soon(sink.run)
            if self._progress is not None:
                nursery.start_soon(self._report_progress)
            self._phase = "connecting"
            t0 = trio.current_time()
            await self._open_streams(nursery)
            setup_total = trio.current_time() - t0
            samples["streams_open"] = try_sample(self.pid)
            if s.traffic.idle:
                self._phase = "idle"
                await trio.sleep(s.traffic.idle)
                samples["streams_idle"] = try_sample(self.pid)
            self._phase = "sending"
            send_start = trio.current_time()
            with trio.move_on_after(s.traffic.duration):
                await self._send_all()
            send_end = trio.current_time()
            self._phase = "draining"
            with trio.move_on_after(s.traffic.drain):
                while self.ledger.outstanding:
                    await trio.sleep(DRAIN_POLL)
            samples["end"] = try_sample(self.pid)
            self._phase = "closing"
            with trio.move_on_after(5):
                async with trio.open_nursery() as closing:
                    for stream in self.streams:
                        closing.start_soon(stream.aclose)
            nursery.cancel_scope.cancel()
        if sink is not None:
            await sink.aclose()
        if self._progress is not None:
            self._phase = "done"
            self._draw_progress()
            self._progress.write("\n")
        return self._result(wall_start, setup_total, send_start, send_end, samples)

    async def _open_streams(self, nursery: trio.Nursery) -> None:
        p = self.scenario.partners
        locals_ = [d for d in p.domain_names() for _ in range(p.streams_per_domain)]
        limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)
        start = trio.current_time()

        async def one(i: int, local: str) -> None:
            await trio.sleep_until(start + i / p.connect_rate)
            async with limiter:
                try:
                    stream = await open_stream(self.scenario, lambda: self.snapshot, local, self.tls)
                except (OSError, StreamSetupError, trio.TooSlowError) as exc:
                    self.setup_errors.append(f"{local}: {exc!r}")
                    return
            self.streams.append(stream)
            nursery.start_soon(stream.read_until_closed)

        async with trio.open_nursery() as connecting:
            for i, local in enumerate(locals_):
                connecting.start_soon(one, i, local)

    async def _send_all(self) -> None:
        streams = list(self.streams)
        if not streams:
            return
        traffic = self.scenario.traffic
        cycle = mix_cycle(traffic.mix)
        users = self.scenario.partners.users_per_domain
        start = trio.current_time()

        async def sender(k: int, stream: OutboundStream) -> None:
            numbers = range(k, traffic.stanzas, len(streams))
            batch: list[bytes] = []
            for n in numbers:
                if traffic.rate > 0:
                    due = start + n / traffic.rate
                    if batch and due > trio.current_time():
                        await self._flush(stream, batch)
                    await trio.sleep_until(due)
                raw = build_stanza(n, cycle[n % len(cycle)], f"u{n % users}@{stream.local}/lt")
                try:
                    batch.append(stream.frame(raw))
                except LocalProtocolError as exc:  # the target closed this stream
                    stream.errors.append(f"stream ended before stanza lt{n}: {exc}")
                    self.unsent += len(numbers[numbers.index(n):])
                    break
                self.ledger.sent(f"lt{n}", trio.current_time())
                if len(batch) >= OPEN_LOOP_BATCH or traffic.rate > 0:
                    await self._flush(stream, batch)
            await self._flush(stream, batch)

        async with trio.open_nursery() as sending:
            for k, stream in enumerate(streams):
                sending.start_soon(sender, k, stream)
        self._sent_done = True

    @staticmethod
    async def _flush(stream: OutboundStream, batch: list[bytes]) -> None:
        if not batch:
            return
        data = b"".join(batch)
        batch.clear()
        try:
            await stream.send_raw(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            stream.errors.append(f"send: {exc!r}")

    def _draw_progress(self) -> None:
        """Redraw the progress line: a bar of settled (delivered + bounced) out of all stanzas
        (lost ones never fill it), the phase and the counts."""
        assert self._progress is not None
        total = self.scenario.traffic.stanzas
        led = self.ledger
        done = led.delivered + led.bounced
        filled = min(PROGRESS_BAR, PROGRESS_BAR * done // total) if total else 0
        bar = "#" * filled + "." * (PROGRESS_BAR - filled)
        self._progress.write(
            f"\r[{bar}] {self._phase:<10} streams {len(self.streams)} "
            f"sent {led.sent_count}/{total} delivered {led.delivered} "
            f"bounced {led.bounced} outstanding {len(led.outstanding)}   "
        )
        self._progress.flush()

    async def _report_progress(self) -> None:
        while True:
            self._draw_progress()
            await trio.sleep(PROGRESS_INTERVAL)

    def _result(
        self,
        wall_start: float,
        setup_total: float,
        send_start: float,
        send_end: float,
        samples: dict[str, ProcSample | None],
    ) -> dict[str, object]:
        s = self.scenario
        summary = self.ledger.summary()
        settled = self.ledger.delivered + self.ledger.bounced
        setups = [st.setup_seconds * 1000 for st in self.streams]
        relay_seconds = max(send_end - send_start, 1e-9)
        if self.ledger.latencies:
            relay_seconds = max(relay_seconds, max(self.ledger.latencies))
        result: dict[str, object] = {
            "scenario": s.name,
            "target": {"domain": s.target.domain, "host": s.target.host, "port": s.target.port},
            "partners": {
                "domains": list(s.partners.domain_names()),
                "listen": _host_port(s.partners.listen_host, self.listen_port or s.partners.listen_port),
            },
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall_start)),
            "streams": {
                "security": str(s.partners.security),
                "wanted": len(s.partners.domain_names()) * s.partners.streams_per_domain,
                "ready": len(self.streams),
                "setup_errors": self.setup_errors[:50],
                "setup_total_s": setup_total,
                "setup_ms": {
                    "p50": percentile(setups, 50),
                    "p99": percentile(setups, 99),
                    "max": max(setups) if setups else None,
                },
                **_setup_phases(self.streams),
                "errors": [e for st in self.streams for e in st.errors][:50],
                "inbound_accepted": self.listener.accepted,
                "dialback_verifications": self.listener.verifications,
                "db_verify_answers": dict(self.listener.verify_answers),
                "inbound_tls_versions": dict(self.listener.tls_versions),
                "inbound_auth_methods": dict(self.listener.auth_methods),
                "inbound_certificate_notes": self.listener.certificate_notes,
                "inbound_errors": self.listener.errors[:50],
            },
            **summary,
            "lost_by_kind": _lost_by_kind(self.ledger.outstanding, mix_cycle(s.traffic.mix)),
            "unsent": self.unsent,
            "send_seconds": send_end - send_start,
            "stanzas_per_s": settled / relay_seconds if settled else 0.0,
            "timeline": self.ledger.timeline_rows(),
        }
        result["target_process"] = _process_figures(self.pid, samples, settled, len(self.streams))
        return result


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _lost_by_kind(lost: set[str], cycle: tuple[MixEntry, ...]) -> dict[str, int]:
    """Lost stanzas counted by the mix entry that made them (``"presence to bob@contoso.test"``):
    stanza ``lt<n>`` came from ``cycle[n % len(cycle)]`` (:mod:`edgeproxy.loadtest.stanzas`)."""
    counts: collections.Counter[str] = collections.Counter()
    for stanza_id in lost:
        entry = cycle[int(stanza_id[2:]) % len(cycle)]
        counts[f"{entry.kind} to {entry.to}"] += 1
    return dict(counts.most_common())


def _setup_phases(streams: list[OutboundStream]) -> dict[str, object]:
    """How the ready streams were set up: security, TLS versions, methods, phase times (ms)."""

    def spread(values: list[float]) -> dict[str, float | None]:
        return {"p50": percentile(values, 50), "p99": percentile(values, 99), "max": max(values, default=None)}

    handshakes = [st.tls_seconds * 1000 for st in streams if st.tls_seconds is not None]
    return {
        "tls_versions": dict(collections.Counter(st.tls_version or "none" for st in streams)),
        "auth_methods": dict(collections.Counter(st.auth_method or "?" for st in streams)),
        "tcp_connect_ms": spread([st.connect_seconds * 1000 for st in streams]),
        "tls_handshake_ms": spread(handshakes) if handshakes else None,
    }


def _process_figures(
    pid: int | None, samples: dict[str, ProcSample | None], settled: int, streams: int
) -> dict[str, object] | None:
    if pid is None:
        return None
    start, opened, end = samples.get("start"), samples.get("streams_open"), samples.get("end")
    idle = samples.get("streams_idle") or opened
    figures: dict[str, object] = {
        "pid": pid,
        "samples": {k: (v.__dict__ if v else None) for k, v in samples.items()},
    }
    if start and idle and streams:
        figures["rss_kib_per_stream"] = (idle.rss_kib - start.rss_kib) / streams
    if opened and end:
        cpu = end.cpu_seconds - opened.cpu_seconds
        figures["cpu_seconds_traffic"] = cpu
        figures["cpu_s_per_1000"] = cpu / settled * 1000 if settled else math.nan
    return figures


def run_scenario(
    scenario: Scenario,
    *,
    pid: int | None = None,
    progress: TextIO | None = None,
    hook: Callable[[LoadTest], None] | None = None,
) -> dict[str, object]:
    """Run synchronously (CLI): a progress line goes to ``progress`` (stderr on a TTY)."""
    if progress is None and sys.stderr.isatty():
        progress = sys.stderr
    test = LoadTest(scenario, pid=pid, progress=progress)
    if hook is not None:
        hook(test)
    return trio.run(test.run)
