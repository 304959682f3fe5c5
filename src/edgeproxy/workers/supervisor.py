"""The supervisor of the edge workers: ``edgeproxy serve`` with ``[edge] workers`` above 1.

Theory of operation
-------------------
One trio process uses one core. With ``workers = N`` (``serve --workers N``) the process the
operator started becomes a supervisor and runs N edge worker processes
(``workers.worker``), each a whole edge — its own S2S streams, outbound pool, policy snapshot
and loopback channel — on its share of the external listeners (``workers.sockets``: one
``SO_REUSEPORT`` socket per worker, bound here first, so the kernel spreads inbound streams).
With role ``both`` the supervisor also runs **one** gateway (SIP listeners, registrar,
presence) with one loopback channel to each worker (``GatewayService(edges=N)``): the SIP side
cannot be split, since a registration, a subscription or a SIP dialog must be found whatever
worker a stanza arrives on. A stanza from a partner reaches the gateway through the worker
whose stream carried it; a stanza for XMPP leaves through the worker its recipient's domain
hashes to (one domain, one worker: its order is kept, RFC 6120 §10.1).

What the workers share: the store (SQLite in WAL mode; every worker follows it as a single edge
does) and so the dialback secret — a key one worker issued verifies in any other, and a
partner with streams to two workers is served by each (RFC 6120 allows several streams per
domain pair, XEP-0220 §2.4 keys are a function of the secret and the stream) — the channel
secret, the admin token and the certificates.

Start: bind the shared listeners (``EP1001`` and exit 20–22 as for one process), start the
workers and wait until each has reported its listeners (a worker that fails to start has said
why in its own event; the supervisor stops the others and exits with its status), start the
gateway, then the admin endpoint (``[admin] listen``, the Control Panel) and say ``EP1000
started``. Each worker is watched: one that exits without being asked (``EP1011``) is started
again on the same sockets and channel address after a pause
(``ops.workerplan.RestartPause``) and says
``EP1010`` again; the gateway's channel to it reconnects by itself, and the stanzas it had not
acknowledged are sent again.

``/status`` and ``/metrics`` (and ``edgeproxy status``) show every worker together
(``workers.aggregate``): the supervisor reads each worker's own admin endpoint (a free loopback
port) every ``POLL_INTERVAL`` seconds, so figures are at most that old. ``/reload``, SIGHUP and
``edgeproxy reload`` reload every worker (through their ``/reload``: the outcome is theirs);
SIGTERM, SIGINT and ``edgeproxy stop`` stop every worker gracefully (each drains as one edge
does, the gateway still taking what they flush), then the gateway — a second stop request
ends the workers' drains at once. A worker left after ``drain_bound`` + ``STOP_GRACE`` seconds
is killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import msgspec
import trio

from edgeproxy import __version__
from edgeproxy.app import (
    bind_failed,
    open_holder,
    prepare_start,
    sip_tls_address,
    start_gateway,
    start_pool,
)
from edgeproxy.config import EdgeConfig
from edgeproxy.errors import ConfigError
from edgeproxy.names import listen_address
from edgeproxy.ops import events
from edgeproxy.ops.admin import admin_token_path, ensure_admin_token, join_host_port
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.exitcodes import ExitCode, StartupFailed, is_bind_failure, leaf
from edgeproxy.ops.lifecycle import DRAIN_BOUND_SECONDS, ReloadOutcome, serve_signals
from edgeproxy.ops.metrics import Metrics
from edgeproxy.ops.status import (
    EdgeStatus,
    ListenerStatus,
    Role,
    ServiceState,
    WorkerState,
    WorkerStatus,
    decode_status,
    sip_listeners,
)
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.ops.workerplan import RestartPause, worker_argv, worker_channel_addresses
from edgeproxy.web.server import serve_admin
from edgeproxy.workers.aggregate import combined_status, merged_exposition
from edgeproxy.workers.sockets import bind_shared, close_all

#: Seconds between two reads of every worker's /status and /metrics.
POLL_INTERVAL = 1.0
#: Seconds a worker may take from its start to its "ready" line (it opens the store, binds).
READY_TIMEOUT = 60.0
#: Seconds a worker may take past the drain bound to end once asked to stop; then SIGKILL.
STOP_GRACE = 5.0
#: Seconds one request to a worker's admin endpoint may take.
ADMIN_TIMEOUT = 10.0
#: The largest answer read from a worker's admin endpoint (a status of many streams).
ADMIN_ANSWER_LIMIT = 64 * 1024 * 1024


#: What a request to a worker's admin endpoint may meet when the worker is starting, stopping or
#: gone: its caller goes on without the answer.
_UNREACHABLE = (OSError, ValueError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError,
                msgspec.DecodeError)


@dataclass
class _Worker:
    """One worker slot: the process in it now, and what the supervisor knows of it."""

    index: int
    channel: tuple[str, int]
    sockets: list[socket.socket]
    pause: RestartPause = field(default_factory=RestartPause)
    process: trio.Process | None = None
    state: WorkerState = WorkerState.STARTING
    restarts: int = 0
    started_at: float = 0.0
    admin: tuple[str, int] | None = None
    status: EdgeStatus | None = None
    metrics: str = ""

    def row(self) -> WorkerStatus:
        host, port = self.channel
        return WorkerStatus(
            index=self.index,
            pid=self.process.pid if self.process is not None and self.process.returncode is None else None,
            state=self.state,
            internal=join_host_port(host, port),
            restarts=self.restarts,
            uptime_seconds=round(time.monotonic() - self.started_at, 3) if self.started_at else 0.0,
        )


class _CombinedMetrics:
    """The admin endpoint's metrics: the supervisor's own (its gateway's) and every worker's
    last exposition, summed (``aggregate.merged_exposition``); anything else is the own."""

    def __init__(self, own: Metrics, workers: Sequence[_Worker]) -> None:
        self._own = own
        self._workers = workers

    def observe_status(self, status: EdgeStatus) -> None:
        """The workers set their own gauges from their own status."""
        del status

    def render(self) -> bytes:
        return merged_exposition([w.metrics for w in self._workers if w.metrics], own=self._own.render().decode())

    def __getattr__(self, name: str) -> object:
        return getattr(self._own, name)


async def admin_request(
    address: tuple[str, int], method: str, path: str, *, token: str | None = None
) -> tuple[int, bytes]:
    """One HTTP/1.0 request to a worker's admin endpoint: (status, body). Raises ``OSError``
    or ``ValueError`` (a malformed or oversized answer) or ``trio.TooSlowError``."""
    host, port = address
    with trio.fail_after(ADMIN_TIMEOUT):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            head = [f"{method} {path} HTTP/1.0", f"Host: {join_host_port(host, port)}", "Content-Length: 0"]
            if token is not None:
                head.append(f"Authorization: Bearer {token}")
            await stream.send_all(("\r\n".join(head) + "\r\n\r\n").encode())
            answer = bytearray()
            while chunk := await stream.receive_some(65536):
                answer += chunk
                if len(answer) > ADMIN_ANSWER_LIMIT:
                    raise ValueError(f"answer larger than {ADMIN_ANSWER_LIMIT} bytes")
    header, separator, body = bytes(answer).partition(b"\r\n\r\n")
    parts = header.split(b" ", 2)
    if not separator or len(parts) < 2 or not parts[1].isdigit():
        raise ValueError("not an HTTP answer")
    return int(parts[1]), body


class Supervisor:
    """Runs the edge workers and the gateway; implements ``StatusSource`` and ``Control``."""

    def __init__(
        self,
        config: EdgeConfig,
        *,
        workers: int,
        role: str = "both",
        config_path: str | None,
        event_log: EventLog | None = None,
        metrics: Metrics | None = None,
        drain_bound: float = DRAIN_BOUND_SECONDS,
        signals: bool = True,
    ) -> None:
        self.config = config
        self.count = workers
        self.role = role
        self._config_path = config_path
        self.event_log = event_log
        self.metrics = metrics if metrics is not None else Metrics()
        self.telemetry = Telemetry(self.metrics, event_log)
        self.drain_bound = drain_bound
        self._signals = signals
        self.workers: list[_Worker] = []
        self.state = ServiceState.STARTING
        self._started_at = time.monotonic()
        self._stop = trio.Event()
        self._stopping = False
        self._stop_requests = 0
        self._all_sockets: list[list[socket.socket]] = []
        self._listeners: list[ListenerStatus] = []
        self._token = ""
        #: Set once every worker and the gateway have stopped.
        self.stopped = trio.Event()

    # -- running ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED) -> None:
        """Start everything (see the module docstring), run until stopped, stop everything."""
        config = self.config
        tls = prepare_start(config, self.role, self.telemetry)
        open_holder(config, self.telemetry).close()  # the store is checked (and upgraded) once, here
        try:
            self._token = ensure_admin_token(admin_token_path(config))
        except (OSError, ValueError) as exc:
            self.telemetry.emit(events.CERTIFICATE_LOAD_FAILED, what="the admin token",
                                path=str(admin_token_path(config)), error=exc)
            raise StartupFailed(ExitCode.CREDENTIALS_UNUSABLE, f"cannot load the admin token: {exc}") from exc
        try:
            channels = worker_channel_addresses(config.edge.internal_listen, self.count)
        except ConfigError as exc:
            self.telemetry.emit(events.CONFIG_INVALID, path=config.source, error=str(exc))
            raise StartupFailed(ExitCode.CONFIG_INVALID, str(exc)) from exc
        listen = [listen_address(hp) for hp in config.edge.listen]
        try:
            self._all_sockets = bind_shared([(h or None, p) for h, p in listen], self.count)
        except OSError as exc:
            if not is_bind_failure(exc):
                raise
            raise bind_failed(self.telemetry, "external", ", ".join(config.edge.listen), exc) from exc
        self.workers = [_Worker(i, channels[i], self._all_sockets[i]) for i in range(self.count)]
        try:
            async with trio.open_nursery() as nursery:
                if self._signals:
                    await nursery.start(serve_signals, self)
                # one per host, here: the workers follow the store the pool keeps up to date
                await start_pool(nursery, config, self.telemetry)
                await self._start_all()
                self._listeners = [
                    ListenerStatus(Role.EXTERNAL, join_host_port(*sock.getsockname()[:2]))
                    for sock in self._all_sockets[0]
                ]
                sip = ""
                if self.role == "both":
                    sip = await self._start_gateway(nursery, tls)
                await self._start_admin(nursery)
                for worker in self.workers:
                    nursery.start_soon(self._watch, worker)
                nursery.start_soon(self._poll)
                self.state = ServiceState.RUNNING
                fields: dict[str, object] = {"sip": sip} if sip else {}
                self.telemetry.emit(events.STARTED, domains=", ".join(config.edge.domains),
                                    listeners=", ".join(li.address for li in self._listeners
                                                        if li.role is Role.EXTERNAL),
                                    workers=self.count, **fields)
                task_status.started(self)
                await self._stop.wait()
                await self._stop_workers()
                nursery.cancel_scope.cancel()
        finally:
            self._kill_all()
            close_all(self._all_sockets)
            self.stopped.set()

    async def _start_all(self) -> None:
        """Start every worker; a worker that cannot start stops the start (its exit status)."""
        failed: list[int] = []

        async def first_start(worker: _Worker) -> None:
            code = await self._spawn(worker)
            if code is not None:
                failed.append(code)

        async with trio.open_nursery() as starting:
            for worker in self.workers:
                starting.start_soon(first_start, worker)
        if failed:
            self._kill_all()
            code = failed[0]
            raise StartupFailed(code if code in set(ExitCode) else ExitCode.CONFIG_INVALID,
                                f"an edge worker could not start (exit status {code})")

    async def _spawn(self, worker: _Worker) -> int | None:
        """Start ``worker``'s process and wait for its ready line: None once it is running, else
        its exit status (it said why in its own event)."""
        read_end, write_end = os.pipe()
        fds = [sock.fileno() for sock in worker.sockets]
        argv = worker_argv(config=self._config_path, appliance=self.config.edge.appliance, index=worker.index,
                           listen_fds=fds, report_fd=write_end, channel=worker.channel, parent=os.getpid())
        worker.state = WorkerState.STARTING
        worker.status, worker.metrics, worker.admin = None, "", None
        try:
            # its own session: a terminal's ^C reaches the supervisor alone, which stops the
            # workers itself (a worker stopping first would look like a crash)
            worker.process = await trio.lowlevel.open_process(argv, pass_fds=(*fds, write_end),
                                                              stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(write_end)
        worker.started_at = time.monotonic()
        line = b""
        async with trio.lowlevel.FdStream(read_end) as report:
            with trio.move_on_after(READY_TIMEOUT):
                while not line.endswith(b"\n"):
                    chunk = await report.receive_some(4096)
                    if not chunk:
                        break
                    line += chunk
        try:
            ready = json.loads(line)
            host, port = listen_address(ready["channel"])
            worker.channel = (host, port)
            worker.admin = listen_address(ready["admin"])
        except (ValueError, KeyError, TypeError):
            process = worker.process
            if process.returncode is None:
                process.kill()
            code = await process.wait()
            worker.state = WorkerState.STOPPED
            return code if code > 0 else ExitCode.CONFIG_INVALID
        worker.state = WorkerState.RUNNING
        self.telemetry.emit(events.WORKER_STARTED, index=worker.index, pid=worker.process.pid,
                            internal=join_host_port(host, port))
        return None

    async def _watch(self, worker: _Worker) -> None:
        """Restart ``worker`` each time it exits without being asked (see the module docstring)."""
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            if self._stopping:
                worker.state = WorkerState.STOPPED
                return
            ran_for = time.monotonic() - worker.started_at
            pause = worker.pause.after_exit(ran_for)
            worker.state = WorkerState.RESTARTING
            worker.status, worker.metrics = None, ""
            status = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
            self.telemetry.emit(events.WORKER_EXITED, index=worker.index, pid=worker.process.pid, status=status,
                                delay=pause)
            await trio.sleep(pause)
            if self._stopping:
                worker.state = WorkerState.STOPPED
                return
            worker.restarts += 1
            await self._spawn(worker)

    async def _start_gateway(self, nursery: trio.Nursery, tls: object) -> str:
        from edgeproxy.gateway.service import run_gateway  # the gateway is only imported if used

        config, telemetry = self.config, self.telemetry
        sip_tls = sip_tls_address(tls)  # type: ignore[arg-type]
        sip_host, sip_port = await start_gateway(nursery, partial(
            run_gateway, config, telemetry=telemetry, tls=tls,
            edge_addresses=[w.channel for w in self.workers],
        ), config, telemetry, sip_tls)
        self._listeners += sip_listeners([(sip_host, sip_port)], [sip_tls] if sip_tls is not None else [])
        return join_host_port(sip_host, sip_port)

    async def _start_admin(self, nursery: trio.Nursery) -> None:
        metrics = cast(Metrics, _CombinedMetrics(self.metrics, self.workers))
        try:
            endpoint = await nursery.start(partial(serve_admin, self.config, self, metrics, self,
                                                   event_log=self.event_log))
        except (OSError, ConfigError, BaseExceptionGroup) as exc:
            refused, error = leaf(exc, ConfigError), leaf(exc, OSError)
            if refused is not None:
                raise StartupFailed(ExitCode.CONFIG_INVALID, str(refused)) from refused
            if error is None or not is_bind_failure(error):
                raise
            raise bind_failed(None, "admin", self.config.admin.listen, error) from error
        self._listeners.append(ListenerStatus(Role.ADMIN, endpoint.address))

    async def _poll(self) -> None:
        """Read every running worker's /status and /metrics every ``POLL_INTERVAL`` seconds."""
        while True:
            async with trio.open_nursery() as nursery:
                for worker in self.workers:
                    if worker.state is WorkerState.RUNNING and worker.admin is not None:
                        nursery.start_soon(self._read_worker, worker)
            await trio.sleep(POLL_INTERVAL)

    async def _read_worker(self, worker: _Worker) -> None:
        assert worker.admin is not None
        try:
            code, body = await admin_request(worker.admin, "GET", "/status")
            if code == 200:
                worker.status = decode_status(body)
            code, body = await admin_request(worker.admin, "GET", "/metrics")
            if code == 200:
                worker.metrics = body.decode("utf-8", "replace")
        except _UNREACHABLE:
            return  # a worker starting or stopping: the next poll tries again

    # -- Control ----------------------------------------------------------------------------

    async def reload(self) -> ReloadOutcome:
        """Reload every running worker through its /reload; ok when every one was."""
        outcomes: list[tuple[int, ReloadOutcome]] = []

        async def reload_one(worker: _Worker) -> None:
            assert worker.admin is not None
            try:
                _code, body = await admin_request(worker.admin, "POST", "/reload", token=self._token)
                outcomes.append((worker.index, msgspec.json.decode(body, type=ReloadOutcome)))
            except _UNREACHABLE as exc:
                outcomes.append((worker.index, ReloadOutcome(ok=False, message=f"not reached: {exc}")))

        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                if worker.state is WorkerState.RUNNING and worker.admin is not None:
                    nursery.start_soon(reload_one, worker)
        outcomes.sort(key=lambda pair: pair[0])
        if not outcomes:
            return ReloadOutcome(ok=False, message="no edge worker is running")
        first = outcomes[0][1]
        failed = [f"worker {i}: {o.message}" for i, o in outcomes if not o.ok]
        message = "; ".join(failed) if failed else f"{first.message} ({len(outcomes)} workers)"
        return ReloadOutcome(
            ok=not failed, message=message, partners_added=first.partners_added,
            partners_removed=first.partners_removed, streams_closed=sum(o.streams_closed for _, o in outcomes),
        )

    def request_stop(self) -> None:
        """Begin the graceful stop; a second request ends the workers' drains at once."""
        self._stop_requests += 1
        if self._stop_requests > 1:
            self._signal_workers(signal.SIGTERM)
        self._stop.set()

    async def _stop_workers(self) -> None:
        self._stopping = True
        self.state = ServiceState.DRAINING
        close_all(self._all_sockets)  # the workers' copies close as each stops accepting
        for worker in self.workers:
            if worker.state is WorkerState.RUNNING:
                worker.state = WorkerState.STOPPING
        self._signal_workers(signal.SIGTERM)
        with trio.move_on_after(self.drain_bound + STOP_GRACE):
            for worker in self.workers:
                if worker.process is not None:
                    await worker.process.wait()
        self._kill_all()
        self.telemetry.emit(events.WORKERS_STOPPED, count=self.count)

    def _signal_workers(self, signum: int) -> None:
        for worker in self.workers:
            process = worker.process
            if process is not None and process.returncode is None:
                process.send_signal(signum)

    def _kill_all(self) -> None:
        self._stopping = True
        self._signal_workers(signal.SIGKILL)

    # -- StatusSource -----------------------------------------------------------------------

    def status(self) -> EdgeStatus:
        own = EdgeStatus(
            version=__version__,
            pid=os.getpid(),
            state=self.state,
            uptime_seconds=round(time.monotonic() - self._started_at, 3),
            domains=tuple(self.config.edge.domains),
            listeners=tuple(self._listeners),
        )
        return combined_status(own, [(w.row(), w.status) for w in self.workers])

