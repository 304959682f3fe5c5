"""The composition root: one edge process in one nursery, with graceful shutdown.

Theory of operation
-------------------
``EdgeApp.__init__`` loads what must refuse the start before anything listens (the channel's
TLS files and secret) and builds the local delivery: the loopback ``ChannelDelivery`` or the
in-memory ``MemoryDelivery``. ``EdgeApp.run`` opens the policy ``SnapshotHolder`` (the store under
``[edge] state-dir``, polled every ``poll_interval`` seconds), then ``_assemble`` builds the S2S
side in dependency order, each part given what it needs in its constructor: the TLS contexts
from ``[tls]`` (no certificate: the edge still starts, plain TCP dialback only, event
``EP2006``; expiry checked, ``ops.expiry``), the ``Connector`` (with the telemetry that times its
DNS lookups), the ``EdgeContext`` and the ``EdgeServer`` (its outbound pool, router and inbound
handler). ``run`` then starts, in order: the S2S listeners on ``[edge] listen``, the channel on
``[edge] internal-listen`` (given the edge's router, through which the gateway's stanzas go
out), the signal handler (``serve_signals``) and the admin endpoint (``serve_admin``:
``/metrics``, ``/healthz``, ``/status``, ``/reload``, ``/stop``), and the store poll. It
implements ``StatusSource`` (``status()``, built with ``ops.status``) and ``Control``
(``reload()``, ``request_stop()``) for both.

Reload (SIGHUP, ``edgeproxy reload``, and the store poll): re-read the configuration file, the
certificates and the store; a partner removed from the store has its streams closed with
``policy-violation``; every other stream stays up (same stream id). Settings that need a new
socket or domain (``[edge] listen``, ``domains``) apply at the next start and say so.

Stop (SIGTERM/SIGINT, ``edgeproxy stop``): stop accepting, drain the outbound queues, close every
stream with ``<system-shutdown/>`` (taking what a partner sent before it read that, until its
closing tag, and flushing it to the gateway), bounce what is left, and return — all within ``drain_bound``
seconds (``lifecycle.DRAIN_BOUND_SECONDS``). A second stop request ends the drain at once.

Local delivery: with the loopback channel (the default), ``[edge] internal-listen`` is served by
``ChannelDelivery`` (``net/channel_delivery.py``; role ``internal`` in the status, Lync's 23456):
accepted inbound stanzas go to the gateway over the channel, stanzas from the gateway go out
through the S2S pool (policy ``decide_outbound``), and stanzas the channel cannot carry are
bounced to their XMPP senders (SPEC §6 rule 5). With ``[edge] internal-tls`` the internal listener
requires mutual TLS (``loopback/tls.py``; its files load in ``__init__``, so a bad one refuses the
start) and a refused handshake is event ``EP5003``. With or without mutual TLS the gateway must
prove the channel secret (``<state-dir>/channel.secret``, ``loopback/auth.py``; issue 14): it is
loaded (created at first start, 0600) in ``__init__``, and a secret file that others may read
(event ``EP8007`` with the fix) or that cannot be read (``EP2003``) refuses the start with a
``ConfigError``. Mutual TLS does not replace it: a certificate from the channel's trust anchors
alone does not make a gateway (defence in depth). The status shows the channel state; stop flushes
the channel within the drain bound and bounces what is left. Without the channel
(``channel=False``, or an ``on_delivery`` callback, which the tests use) accepted stanzas go to an
in-memory ``MemoryDelivery`` consumed here, and the channel shows as ``not-configured``.

``run_app`` is ``edgeproxy serve``: role ``both`` (the default) runs this edge and the gateway
(``gateway.service.run_gateway``) in one process, the channel still crossing loopback; ``edge``
and ``gateway`` run one side each.

Start failures: each cause is reported as exactly one event, where the detail is known, and then
raised as ``ops.exitcodes.StartupFailed`` carrying the exit status (``docs/exit-codes.md``); no
other line follows. In order: the gateway's TLS files (``EP2003``, 16); the state dir
(``lifecycle.refuse_unusable_state_dir``: ``EP8011``, 12) and the secrets at rest
(``ops.atrest.refuse_exposed_secrets``: ``EP8007`` per exposed file, 13); the channel's TLS files
and secret (``EP2003``, 16); the store (``open_holder``: ``EP8012`` for a newer schema, 15,
``EP8005`` for any other failure, 14; an older schema is backed up and upgraded, ``EP8013``); the
``[tls]`` certificate and key — both absent is ``EP2006`` and the edge starts without TLS, but
one without the other or a pair that does not load is ``EP2003``, 16; the admin token
(``EP2003``, 16); then each listener (``EP1001`` naming the listener and address: 20 address in
use, 21 not permitted, 22 other), the admin address off loopback (``EP8004``, 11), and the
gateway's SIP listeners — trio reports a task's error inside exception groups, so each step looks
for the ``OSError`` within (``exitcodes.leaf``). ``EP1000 started`` comes only when every
listener is bound, the gateway's too.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import msgspec
import trio

from edgeproxy import __version__
from edgeproxy.certs.contexts import TlsRole, tls_context
from edgeproxy.config import EMBEDDED_DEFAULT, EdgeConfig, load_config
from edgeproxy.errors import ConfigError
from edgeproxy.loopback.auth import load_channel_secret
from edgeproxy.loopback.tls import edge_channel_context
from edgeproxy.names import listen_address
from edgeproxy.net.channel_delivery import ChannelDelivery
from edgeproxy.net.connector import Connector, ConnectorSettings
from edgeproxy.net.context import EdgeContext
from edgeproxy.net.delivery import MEMORY_DELIVERY_BOUND, Delivery, MemoryDelivery
from edgeproxy.net.edge import EdgeServer
from edgeproxy.net.pool import LINK_QUEUE_BOUND
from edgeproxy.ops import events
from edgeproxy.ops.admin import (
    AdminEndpoint,
    admin_token_path,
    ensure_admin_token,
    join_host_port,
)
from edgeproxy.ops.atrest import refuse_exposed_secrets
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.exitcodes import (
    ExitCode,
    StartupFailed,
    bind_failure_code,
    is_bind_failure,
    leaf,
    privileged_port_fix,
)
from edgeproxy.ops.expiry import report_expiry
from edgeproxy.ops.lifecycle import (
    DRAIN_BOUND_SECONDS,
    ReloadOutcome,
    enter_appliance_mode,
    refuse_unusable_state_dir,
    serve_signals,
)
from edgeproxy.ops.metrics import Metrics, Outcome
from edgeproxy.ops.status import (
    ChannelClock,
    EdgeStatus,
    ListenerStatus,
    QueueStatus,
    Role,
    ServiceState,
    StreamStatus,
    link_queues,
    sip_listeners,
    stream_status,
)
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.ops.workerplan import worker_channel_addresses, worker_count
from edgeproxy.policy.holder import POLL_INTERVAL, SnapshotHolder
from edgeproxy.policy.snapshot import PolicySnapshot
from edgeproxy.policy.store import STORE_FILE, SchemaTooNew, SchemaUpgrade, Store
from edgeproxy.secretfiles import SecretFileError, channel_secret_path
from edgeproxy.web.server import serve_admin

if TYPE_CHECKING:
    from edgeproxy.gateway.tls import GatewayTls

log = logging.getLogger("edgeproxy.app")

def _channel_tls_keys(config: EdgeConfig) -> tuple[object, ...]:
    edge = config.edge
    return (edge.internal_listen, edge.internal_tls, edge.internal_certificate, edge.internal_key, edge.internal_trust)


def _partner_domains(snapshot: PolicySnapshot) -> set[str]:
    return {p.domain for p in snapshot.partners}


def _without_source(config: EdgeConfig, error: Exception) -> str:
    """A ConfigError's text without the leading ``<configuration file>: `` (the event names it)."""
    text = str(error)
    prefix = f"{config.source}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _credentials_failed(telemetry: Telemetry, what: str, path: object, error: object) -> StartupFailed:
    """Report a certificate, key, trust bundle or secret that does not load (``EP2003``); the
    ``StartupFailed`` to raise (exit status 16)."""
    telemetry.emit(events.CERTIFICATE_LOAD_FAILED, what=what, path=str(path), error=error)
    return StartupFailed(ExitCode.CREDENTIALS_UNUSABLE, f"cannot load {what} from {path}: {error}")


def bind_failed(
    telemetry: Telemetry | None, role: str, address: str, error: OSError
) -> StartupFailed:
    """Report a listener that could not bind (``EP1001``; none when ``telemetry`` is None: the
    caller's callee reported it); the ``StartupFailed`` to raise (exit status 20, 21 or 22). A
    port below 1024 that may not be bound says how to grant CAP_NET_BIND_SERVICE."""
    fix = privileged_port_fix(address, error)
    detail = f"{error}; {fix}" if fix is not None else error
    if telemetry is not None:
        telemetry.emit(events.BIND_FAILED, role=role, address=address, error=detail)
    return StartupFailed(bind_failure_code(error), f"cannot bind {role} listener on {address}: {detail}")


def open_holder(config: EdgeConfig, telemetry: Telemetry) -> SnapshotHolder:
    """The store for the start, and its first snapshot. An older schema is backed up and
    upgraded (``EP8013`` says where the copy is); a newer one is ``EP8012``, any other failure to
    open or read it ``EP8005``: either raises ``StartupFailed``."""

    def upgraded(upgrade: SchemaUpgrade) -> None:
        telemetry.emit(events.STORE_UPGRADED, path=str(upgrade.path), from_version=upgrade.from_version,
                       to_version=upgrade.to_version, backup=str(upgrade.backup))

    store: Store | None = None
    try:
        store = Store.open(config.state_dir, on_upgrade=upgraded)
        return SnapshotHolder(store, config.edge.domains)
    except SchemaTooNew as exc:
        telemetry.emit(events.STORE_TOO_NEW, path=str(exc.path), version=exc.version, known=exc.known)
        raise StartupFailed(ExitCode.STORE_TOO_NEW, str(exc)) from exc
    except (sqlite3.Error, OSError, ValueError) as exc:
        if store is not None:
            store.close()
        path = config.state_dir / STORE_FILE
        telemetry.emit(events.STORE_UNAVAILABLE, path=str(path), error=exc)
        raise StartupFailed(ExitCode.STORE_UNAVAILABLE, f"store {path} unavailable: {exc}") from exc


def _sip_listener_in_the_way(config: EdgeConfig, tls_address: tuple[str, int] | None) -> tuple[str, str]:
    """Which of the gateway's SIP listeners could not bind, as (role, address), found by binding
    each address once more after the gateway gave up (its own sockets are closed by then): the
    TLS one first (the UDP and TCP ones were bound before it), then UDP (bound before TCP), then
    TCP. ``("sip", <sip-listen>)`` when every address binds now."""
    host, port = listen_address(config.gateway.sip_listen[0])
    candidates: list[tuple[str, socket.SocketKind, str, int]] = []
    if tls_address is not None:
        candidates.append(("sip-tls", socket.SOCK_STREAM, *tls_address))
    candidates += [("sip-udp", socket.SOCK_DGRAM, host, port), ("sip-tcp", socket.SOCK_STREAM, host, port)]
    for role, kind, probe_host, probe_port in candidates:
        if probe_port == 0:
            continue  # any free port: not the one in the way
        try:
            family = socket.AF_INET6 if ":" in probe_host else socket.AF_INET
            with socket.socket(family, kind) as probe:
                if kind == socket.SOCK_STREAM:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as trio's listeners
                probe.bind((probe_host, probe_port))
        except OSError:
            return role, join_host_port(probe_host, probe_port)
    return "sip", config.gateway.sip_listen[0]


class EdgeApp:
    """One running edge; implements ``StatusSource`` and ``Control`` (see the module docstring)."""

    def __init__(
        self,
        config: EdgeConfig,
        *,
        event_log: EventLog | None = None,
        metrics: Metrics | None = None,
        drain_bound: float = DRAIN_BOUND_SECONDS,
        poll_interval: float = POLL_INTERVAL,
        admin: bool = True,
        signals: bool = True,
        on_delivery: Callable[[Delivery], None] | None = None,
        channel: bool | None = None,
        announce: bool = True,
        listen_sockets: Sequence[socket.socket] = (),
    ) -> None:
        """``channel``: serve the loopback channel on ``[edge] internal-listen`` (default: yes,
        unless ``on_delivery`` is given, which takes accepted stanzas in-process instead).
        ``announce``: emit ``EP1000 started`` once every listener is bound (``run_app`` says it
        itself for role ``both``, after the gateway's listeners too). ``listen_sockets``: the
        external listeners, bound by someone else (an edge worker's share: ``edgeproxy.workers``),
        served instead of binding ``[edge] listen``."""
        self.config = config
        self._announce = announce
        self.metrics = metrics if metrics is not None else Metrics()
        self.event_log = event_log
        self.telemetry = Telemetry(self.metrics, event_log)
        self.drain_bound = drain_bound
        self.poll_interval = poll_interval
        self._serve_admin = admin
        self._serve_signals = signals
        self._listen_sockets = tuple(listen_sockets)
        self._on_delivery = on_delivery
        self.delivery = MemoryDelivery()
        use_channel = on_delivery is None if channel is None else channel
        #: Mutual TLS on the internal listener ([edge] internal-tls); a file that does not load
        #: is EP2003 and StartupFailed (a ConfigError) here, before anything listens (or is
        #: written to the state dir).
        try:
            self._channel_ssl = edge_channel_context(config) if use_channel else None
        except ConfigError as exc:
            self.telemetry.emit(events.CERTIFICATE_LOAD_FAILED, what="the loopback channel's TLS files named in",
                                path=config.source, error=_without_source(config, exc))
            raise StartupFailed(ExitCode.CREDENTIALS_UNUSABLE, str(exc)) from exc
        self.channel: ChannelDelivery | None = (
            ChannelDelivery(self.telemetry, outage_bound=config.gateway.outage_bound,
                            max_queued=config.gateway.max_queued, queue_wait=config.gateway.queue_wait,
                            secret=self._channel_secret(config))
            if use_channel else None
        )
        self.internal_address: str | None = None
        self._channel_clock = ChannelClock()
        #: Woken each time the in-memory consumer has taken a delivery (the stop waits on it).
        self._taken = trio.lowlevel.ParkingLot()
        self.state = ServiceState.STARTING
        self.admin_endpoint: AdminEndpoint | None = None
        self.edge: EdgeServer | None = None
        self.holder: SnapshotHolder | None = None
        self.local_deliveries = 0
        self._started_at = time.monotonic()
        self._stop = trio.Event()
        #: Set once ``run`` has finished its graceful shutdown.
        self.stopped = trio.Event()
        self._drain_scope: trio.CancelScope | None = None
        self._reload_lock = trio.Lock()
        self._listener_addresses: list[str] = []
        #: The gateway's SIP listeners (role ``both``: set once the gateway has bound them).
        self.sip_listeners: list[ListenerStatus] = []

    def _channel_secret(self, config: EdgeConfig) -> bytes:
        """The loopback channel's secret (issue 14), created at first start. One that others may
        read is EP8007 and its ``SecretFileError``; one that cannot be read (or is empty) is
        EP2003 and a ``ConfigError``: either refuses the start."""
        path = channel_secret_path(config.state_dir)
        try:
            return load_channel_secret(config.state_dir)
        except SecretFileError as exc:
            self.telemetry.emit(events.SECRET_EXPOSED, what="channel secret", path=str(exc.path),
                                mode=f"{exc.mode:04o}", allowed=f"{exc.allowed:04o}", fix=exc.fix)
            raise
        except (OSError, ValueError) as exc:
            self.telemetry.emit(events.CERTIFICATE_LOAD_FAILED, what="the loopback channel secret",
                                path=str(path), error=exc)
            raise StartupFailed(ExitCode.CREDENTIALS_UNUSABLE,
                                f"the loopback channel secret {path} cannot be used: {exc}") from None

    # -- TLS --------------------------------------------------------------------------------

    def _tls_contexts(self, config: EdgeConfig) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
        """Contexts from ``[tls]``; (None, None) with a warning when there is no certificate.
        Raises ``ssl.SSLError``/``OSError``/``ValueError`` for files that exist but do not load."""
        cert, key = config.path(config.tls.certificate), config.path(config.tls.key)
        trust = config.path(config.tls.trust) if config.tls.trust else None
        if not (cert.exists() and key.exists()):
            self.telemetry.emit(events.TLS_UNAVAILABLE, path=str(cert))
            return None, None
        contexts = tls_context(TlsRole.S2S_SERVER, cert, key, trust), tls_context(TlsRole.S2S_CLIENT, cert, key, trust)
        report_expiry(cert, self.telemetry)
        return contexts

    # -- assembly ---------------------------------------------------------------------------

    def _start_tls_contexts(self) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
        """The ``[tls]`` contexts at start: none (``EP2006``) when neither the certificate nor the
        key exists; a certificate without its key (or the reverse), or a pair that does not load,
        is ``EP2003`` and ``StartupFailed`` — never a silent start without the TLS configured."""
        config = self.config
        cert, key = config.path(config.tls.certificate), config.path(config.tls.key)
        try:
            present = {cert: cert.exists(), key: key.exists()}
            if any(present.values()) and not all(present.values()):
                missing = next(path for path, exists in present.items() if not exists)
                other = key if missing == cert else cert
                raise _credentials_failed(self.telemetry, "certificate and key", missing,
                                          f"does not exist, but {other} does (give both, or neither)")
            return self._tls_contexts(config)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise _credentials_failed(self.telemetry, "certificate and key", cert, exc) from exc

    def _assemble(self, holder: SnapshotHolder) -> EdgeServer:
        """The S2S side, built in dependency order (see the module docstring)."""
        config = self.config
        server_ssl, client_ssl = self._start_tls_contexts()
        # [dns] resolver, or its EDGEPROXY_DNS_RESOLVER override (None: the system's)
        connector = Connector(ConnectorSettings(resolver=config.dns_resolver()), telemetry=self.telemetry)
        ctx = EdgeContext(
            policy=lambda: holder.snapshot,
            connector=connector,
            delivery=self.channel if self.channel is not None else self.delivery,
            server_ssl=server_ssl,
            client_ssl=client_ssl,
            limits=config.limits,
        )
        return EdgeServer(ctx, self.telemetry)

    # -- running ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[EdgeApp] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until stopped (``request_stop``, a stop signal or ``POST /stop``); then drain.

        ``nursery.start``-compatible: reports the app once every listener is bound. Raises
        ``StartupFailed`` (a ``ConfigError``) for what stops the start, each reported as one
        event first (the module docstring): a listener that cannot bind is ``EP1001``.
        """
        config = self.config
        self.holder = holder = open_holder(config, self.telemetry)
        try:
            await self._run(holder, task_status)
        finally:
            holder.close()

    async def _run(self, holder: SnapshotHolder, task_status: trio.TaskStatus[EdgeApp]) -> None:
        config = self.config
        if self.event_log is not None:
            self.event_log.log_message_bodies = holder.snapshot.gateway.log_message_bodies
        self.edge = edge = self._assemble(holder)
        if self._serve_admin:
            token = admin_token_path(config)
            try:
                ensure_admin_token(token)
            except (OSError, ValueError) as exc:
                raise _credentials_failed(self.telemetry, "the admin token", token, exc) from exc
        listen = [listen_address(hp) for hp in config.edge.listen]
        async with trio.open_nursery() as nursery:
            if self._serve_signals:
                # before any listener accepts: a SIGTERM from then on is a graceful stop (taken
                # once the start is complete), never the default action that kills the process
                await nursery.start(serve_signals, _CountingControl(self))
            if self.channel is None:
                nursery.start_soon(self._consume_deliveries)
            try:
                listeners = await nursery.start(
                    partial(edge.run, sockets=self._listen_sockets), [(h or None, p) for h, p in listen]
                )
            except (OSError, BaseExceptionGroup) as exc:
                error = leaf(exc, OSError)
                if error is None or not is_bind_failure(error):
                    raise
                raise bind_failed(self.telemetry, "external", ", ".join(config.edge.listen), error) from error
            self._listener_addresses = [
                join_host_port(*listener.socket.getsockname()[:2]) for listener in listeners
            ]
            if self.channel is not None:
                internal_host, internal_port = listen_address(config.edge.internal_listen)
                try:
                    bound = await nursery.start(partial(
                        self.channel.run, internal_host, internal_port, edge.router, ssl_context=self._channel_ssl))
                except (OSError, BaseExceptionGroup) as exc:
                    error = leaf(exc, OSError)
                    if error is None or not is_bind_failure(error):
                        raise
                    raise bind_failed(self.telemetry, "internal", config.edge.internal_listen, error) from error
                self.internal_address = join_host_port(*bound)
            if self._serve_admin:
                try:
                    self.admin_endpoint = await nursery.start(
                        partial(serve_admin, config, self, self.metrics, self, event_log=self.event_log)
                    )
                except (OSError, ConfigError, BaseExceptionGroup) as exc:
                    # serve_admin reported it: EP1001 (a bind) or EP8004 (off loopback)
                    refused, error = leaf(exc, ConfigError), leaf(exc, OSError)
                    if refused is not None:
                        raise StartupFailed(ExitCode.CONFIG_INVALID, str(refused)) from refused
                    if error is None or not is_bind_failure(error):
                        raise
                    raise bind_failed(None, "admin", config.admin.listen, error) from error
            nursery.start_soon(self._poll)
            self.state = ServiceState.RUNNING
            if self._announce:
                self.announce_started()
            task_status.started(self)
            await self._stop.wait()
            await self._shutdown()
            nursery.cancel_scope.cancel()
        self.stopped.set()

    def announce_started(self, sip: str | None = None) -> None:
        """``EP1000 started``: every listener is bound (``sip``: the gateway's, with role both)."""
        fields: dict[str, object] = {}
        if sip is not None:
            fields["sip"] = sip
        self.telemetry.emit(events.STARTED, domains=", ".join(self.config.edge.domains),
                            listeners=", ".join(self._listener_addresses), **fields)

    async def _consume_deliveries(self) -> None:
        """Take accepted stanzas off the in-memory local delivery (no channel configured)."""
        while True:
            item = await self.delivery.receive()
            self.local_deliveries += 1
            if self._on_delivery is not None:
                self._on_delivery(item)
            log.debug("local delivery (no gateway channel): %s %s -> %s", item.kind, item.from_jid, item.to_jid)
            self._taken.unpark_all()

    async def _poll(self) -> None:
        while True:
            await trio.sleep(self.poll_interval)
            await self.refresh_policy()

    async def refresh_policy(self) -> None:
        """Apply the store now if another connection changed it (one step of the store poll).

        The gateway's contact hooks call it after each write (role ``both``), so that a contact
        a user added is authorized at once rather than at the next poll. Does nothing once the
        stop has begun (the holder closes with the edge).
        """
        if self.holder is None or self._stop.is_set():
            return
        async with self._reload_lock:
            old = self.holder.snapshot
            try:
                changed = await trio.to_thread.run_sync(self.holder.reload_if_changed)
            except sqlite3.Error as exc:
                self.telemetry.emit(events.STORE_UNAVAILABLE, path=str(self.config.state_dir), error=exc)
                return
            if changed:
                await self._apply(old, self.holder.snapshot, "store changed")

    # -- Control ----------------------------------------------------------------------------

    async def reload(self) -> ReloadOutcome:
        """Re-read configuration, certificates and store; never raises for a refused change."""
        assert self.holder is not None and self.edge is not None
        async with self._reload_lock:
            old = self.holder.snapshot
            notes: list[str] = []
            try:
                fresh = self.config
                if self.config.source != EMBEDDED_DEFAULT:
                    fresh = load_config(self.config.source, appliance=self.config.edge.appliance)
                contexts = self._tls_contexts(fresh)
                await trio.to_thread.run_sync(self.holder.reload_if_changed)
            except (ConfigError, ssl.SSLError, OSError, ValueError, sqlite3.Error) as exc:
                self.telemetry.emit(events.RELOAD_FAILED, error=exc)
                return ReloadOutcome(ok=False, message=f"reload refused: {exc}")
            if (fresh.edge.listen, fresh.edge.domains) != (self.config.edge.listen, self.config.edge.domains):
                notes.append("[edge] listen and domains apply at the next start")
            if _channel_tls_keys(fresh) != _channel_tls_keys(self.config):
                notes.append("the loopback channel's TLS settings apply at the next start")
            self.config = fresh
            self.edge.ctx.server_ssl, self.edge.ctx.client_ssl = contexts
            self.edge.ctx.limits = fresh.limits
            return await self._apply(old, self.holder.snapshot, "; ".join(notes) or "reloaded")

    async def _apply(self, old: PolicySnapshot, new: PolicySnapshot, message: str) -> ReloadOutcome:
        """Apply a new snapshot: close the streams of partners that are gone (policy-violation)."""
        assert self.edge is not None
        if self.event_log is not None:
            self.event_log.log_message_bodies = new.gateway.log_message_bodies
        added = tuple(sorted(_partner_domains(new) - _partner_domains(old)))
        removed = tuple(sorted(_partner_domains(old) - _partner_domains(new)))
        doomed = [
            session for session, _direction in self.edge.sessions()
            if session.ready.is_set() and self.telemetry.partner_of(lambda: new, session) is None
        ]
        async with trio.open_nursery() as nursery:
            for session in doomed:
                nursery.start_soon(session.close, "policy-violation", "no longer a federation partner")
        self.telemetry.emit(events.CONFIG_RELOADED, added=list(added) or "none",
                            removed=list(removed) or "none", closed=len(doomed))
        return ReloadOutcome(ok=True, message=message, partners_added=added, partners_removed=removed,
                             streams_closed=len(doomed))

    def request_stop(self) -> None:
        """Begin the graceful shutdown; a second request ends the drain at once."""
        if self._stop.is_set():
            if self._drain_scope is not None:
                self._drain_scope.cancel()
            return
        self._stop.set()

    async def _shutdown(self) -> None:
        assert self.edge is not None
        edge = self.edge
        self.state = ServiceState.DRAINING
        started = trio.current_time()
        deadline = started + self.drain_bound
        close_grace = min(2.0, self.drain_bound / 4)
        self.telemetry.emit(events.SHUTDOWN_STARTED, reason="stop requested", bound_seconds=self.drain_bound)
        delivered, bounced = self.telemetry.delivered, self.telemetry.bounced
        channel = self.channel
        if channel is not None and not channel.statistics().connected:
            # No gateway to flush to: bounce what the channel holds while the pool may still
            # open the links the bounces need.
            with trio.move_on_at(deadline - close_grace):
                await channel.bounce_queued()
        edge.stop_accepting()
        with trio.CancelScope() as self._drain_scope:
            if channel is not None:
                # Flush the channel to the gateway (its replies still go out), then bounce what
                # it did not take in time, before the outbound queues drain.
                with trio.move_on_at(deadline - close_grace):
                    await channel.flush()
                with trio.move_on_at(deadline - close_grace):
                    await channel.bounce_queued()
            drained = await edge.drain(deadline - close_grace)
        streams = len(edge.sessions())
        with trio.move_on_at(deadline):
            await edge.close_streams(max(0.1, deadline - trio.current_time() - 0.1))
        if channel is not None and self._drain_scope is not None and not self._drain_scope.cancel_called:
            # What partners sent before they read our system-shutdown was still taken (RFC 6120
            # §4.4): it goes to the gateway too, or is bounced, before the channel closes.
            with trio.move_on_at(deadline):
                await channel.flush()
            with trio.move_on_at(deadline):
                await channel.bounce_queued()
        # Let the consumer take what the drain and the bounces delivered locally.
        with trio.move_on_at(deadline):
            while self.delivery.statistics().current_buffer_used:
                await self._taken.park()
        delivered = self.telemetry.delivered - delivered
        bounced = self.telemetry.bounced - bounced
        if drained:
            self.telemetry.emit(events.SHUTDOWN_COMPLETE, delivered=delivered, bounced=bounced)
        else:
            self.telemetry.emit(events.SHUTDOWN_TIMEOUT, bound_seconds=self.drain_bound, bounced=bounced,
                                streams=streams)

    # -- StatusSource -----------------------------------------------------------------------

    def status(self) -> EdgeStatus:
        """A synchronous snapshot of the running edge (rows built by ``ops.status``)."""
        listeners = [ListenerStatus(Role.EXTERNAL, a) for a in self._listener_addresses]
        if self.channel is not None:
            listeners.append(ListenerStatus(Role.INTERNAL, self.internal_address or ""))
        if self.admin_endpoint is not None:
            listeners.append(ListenerStatus(Role.ADMIN, self.admin_endpoint.address))
        listeners += self.sip_listeners
        streams: list[StreamStatus] = []
        queues: list[QueueStatus] = []
        if self.edge is not None:
            now, policy = trio.current_time(), self.edge.ctx.policy
            streams = [
                stream_status(session, direction, self.telemetry.partner_of(policy, session), now)
                for session, direction in self.edge.sessions()
            ]
            queues = link_queues(self.edge.pool.links.values(), LINK_QUEUE_BOUND)
        if self.channel is not None:
            queues.append(QueueStatus("channel", self.channel.statistics().queued, self.channel.max_queued))
        else:
            queues.append(QueueStatus("local-delivery", self.delivery.statistics().current_buffer_used,
                                      MEMORY_DELIVERY_BOUND))
        channel = self.channel.statistics() if self.channel is not None else None
        return EdgeStatus(
            version=__version__,
            pid=os.getpid(),
            state=self.state,
            uptime_seconds=round(time.monotonic() - self._started_at, 3),
            domains=tuple(self.config.edge.domains),
            listeners=tuple(listeners),
            streams=tuple(streams),
            channel=self._channel_clock.status(channel, draining=self.state is ServiceState.DRAINING),
            queues=tuple(queues),
        )


class _CountingControl:
    """What the signal handler calls: the app, with signal-driven reloads counted in the metrics
    (the admin endpoint counts its own)."""

    def __init__(self, app: EdgeApp) -> None:
        self._app = app

    async def reload(self) -> ReloadOutcome:
        outcome = await self._app.reload()
        self._app.metrics.reload(Outcome.OK if outcome.ok else Outcome.FAILED)
        return outcome

    def request_stop(self) -> None:
        self._app.request_stop()


#: What ``edgeproxy serve --role`` accepts.
ROLES = ("both", "edge", "gateway")


async def run_app(
    config: EdgeConfig,
    *,
    role: str = "both",
    event_log: EventLog | None = None,
    metrics: Metrics | None = None,
    signals: bool = True,
    drain_bound: float = DRAIN_BOUND_SECONDS,
    task_status: trio.TaskStatus[EdgeApp | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``edgeproxy serve``: run the edge, the gateway or both until stopped.

    ``both``: the edge first, then the gateway connected to the edge's bound internal address
    (port 0 works), with the edge's policy snapshot; the contacts the gateway's hooks store
    (SPEC §4) are applied to the edge at once (``EdgeApp.refresh_policy``); when the edge has
    stopped (its graceful shutdown flushed the channel), the gateway is cancelled. ``gateway``:
    only the gateway, following the store itself, until cancelled. ``task_status`` gets the
    ``EdgeApp`` (None for ``gateway``); ``signals``:
    the edge handles SIGTERM/SIGINT/SIGHUP (off for in-process tests and ``edgeproxy.run``);
    ``drain_bound``: seconds the graceful shutdown may take (``EdgeApp``).
    """
    from edgeproxy.gateway.service import run_gateway  # the gateway is only imported if used

    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}, expected one of {', '.join(ROLES)}")
    telemetry = Telemetry(metrics, event_log)
    tls = prepare_start(config, role, telemetry)
    sip_tls = sip_tls_address(tls)
    if role == "gateway":
        # A process of its own: the gateway follows the store itself, and the edge's store poll
        # picks up the contacts its hooks write. The store is checked (and upgraded) here first.
        # With several edge workers it keeps one channel to each (``[edge] workers``).
        open_holder(config, telemetry).close()
        edges = worker_channel_addresses(
            config.gateway.edge_address or config.edge.internal_listen, worker_count(config.edge.workers)
        )
        async with trio.open_nursery() as nursery:
            await start_gateway(nursery, partial(run_gateway, config, telemetry=telemetry, tls=tls,
                                                 edge_addresses=edges), config, telemetry, sip_tls)
            task_status.started(None)
        return
    try:
        app = EdgeApp(config, event_log=event_log, metrics=metrics, channel=True, signals=signals,
                      announce=role != "both", drain_bound=drain_bound)
    except SecretFileError as exc:  # the channel secret (EP8007)
        raise StartupFailed(ExitCode.SECRET_EXPOSED, str(exc)) from exc
    async with trio.open_nursery() as nursery:
        # the pool first: a member applies the primary's store before the edge reads it (the
        # store is checked, and upgraded, before the pool opens it: EP8005, EP8012, EP8013)
        open_holder(config, app.telemetry).close()
        await start_pool(nursery, config, app.telemetry, on_applied=app.refresh_policy)
        await nursery.start(app.run)
        if role == "both":
            assert app.holder is not None and app.internal_address is not None
            holder = app.holder
            gateway_config = msgspec.structs.replace(
                config, gateway=msgspec.structs.replace(config.gateway, edge_address=app.internal_address)
            )
            sip_host, sip_port = await start_gateway(nursery, partial(
                run_gateway, gateway_config, policy=lambda: holder.snapshot,
                on_stored=app.refresh_policy, telemetry=app.telemetry, tls=tls,
            ), config, app.telemetry, sip_tls)
            app.sip_listeners = sip_listeners([(sip_host, sip_port)], [sip_tls] if sip_tls is not None else [])
            app.announce_started(sip=join_host_port(sip_host, sip_port))
        task_status.started(app)
        await app.stopped.wait()
        nursery.cancel_scope.cancel()


def prepare_start(config: EdgeConfig, role: str, telemetry: Telemetry) -> GatewayTls | None:
    """What every ``serve`` checks before anything listens, in order (each refusal one event and
    ``StartupFailed``): the gateway's TLS files (roles ``both`` and ``gateway``; returned, loaded),
    the state dir, appliance mode, the secrets at rest."""
    from edgeproxy.gateway.tls import gateway_tls

    # The gateway's TLS files are loaded before anything starts (or is written to the state dir).
    try:
        tls = gateway_tls(config) if role in ("both", "gateway") else None
    except ConfigError as exc:
        telemetry.emit(events.CERTIFICATE_LOAD_FAILED, what="the gateway's TLS files named in",
                       path=config.source, error=_without_source(config, exc))
        raise StartupFailed(ExitCode.CREDENTIALS_UNUSABLE, str(exc)) from exc
    # The state dir must be usable (EP8011); a state dir or secret file others can read refuses
    # the start (EP8007 for each).
    refuse_unusable_state_dir(config, telemetry)
    if config.edge.appliance:
        enter_appliance_mode(config, telemetry)
    try:
        refuse_exposed_secrets(config, telemetry)
    except SecretFileError as exc:
        raise StartupFailed(ExitCode.SECRET_EXPOSED, str(exc)) from exc
    return tls


async def start_pool(
    nursery: trio.Nursery,
    config: EdgeConfig,
    telemetry: Telemetry,
    *,
    on_applied: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """This host's part of an edge pool (``[pool] role``; ``pool.service.run_pool``), started in
    ``nursery``. A refused pool setting (a member without the pool secret, a TLS file that does
    not load) is ``EP8010`` and exit 11; a replication listener that cannot bind ``EP1001``."""
    from edgeproxy.pool.service import run_pool  # only what the role needs is imported

    try:
        await nursery.start(partial(run_pool, config, telemetry, on_applied=on_applied))
    except (ConfigError, OSError, BaseExceptionGroup) as exc:
        refused, error = leaf(exc, ConfigError), leaf(exc, OSError)
        if refused is not None:
            telemetry.emit(events.CONFIG_INVALID, path=config.source, error=_without_source(config, refused))
            raise StartupFailed(ExitCode.CONFIG_INVALID, str(refused)) from refused
        if error is None or not is_bind_failure(error):
            raise
        raise bind_failed(telemetry, "pool", config.pool.listen, error) from error


def sip_tls_address(tls: GatewayTls | None) -> tuple[str, int] | None:
    """The gateway's SIP-over-TLS listener address, if it has one."""
    return (tls.sip.host, tls.sip.port) if tls is not None and tls.sip is not None else None


async def start_gateway(
    nursery: trio.Nursery,
    gateway: Callable[..., Awaitable[None]],
    config: EdgeConfig,
    telemetry: Telemetry,
    sip_tls: tuple[str, int] | None,
) -> tuple[str, int]:
    """Start the gateway in ``nursery``; its SIP address. A SIP listener that cannot bind is
    ``EP1001`` naming it (``_sip_listener_in_the_way``) and ``StartupFailed``."""
    try:
        address: tuple[str, int] = await nursery.start(gateway)
    except (OSError, BaseExceptionGroup) as exc:
        error = leaf(exc, OSError)
        if error is None or not is_bind_failure(error):
            raise
        role, where = _sip_listener_in_the_way(config, sip_tls)
        raise bind_failed(telemetry, role, where, error) from error
    return address
