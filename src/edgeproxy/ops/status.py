"""The status model: what ``edgeproxy status`` shows.

The running server implements ``StatusSource``: one cheap, synchronous ``status()`` call that
returns an ``EdgeStatus`` snapshot (frozen msgspec Structs), built with the functions below from
what the running parts expose (``stream_status``, ``link_queues``, ``ChannelClock``; the parts
are read through Protocols, so this module imports no driver). The admin endpoint serves it as
JSON (``encode_status``; the format is documented in ``docs/status-json.md`` and versioned by its
``format`` key), the CLI decodes it (``decode_status``) and renders the human table
(``render_table``).

Compatibility rule for the JSON: keys are only ever added; a key is never renamed, removed or
given another meaning without bumping ``format`` (``edgeproxy-status/1``).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import msgspec

from edgeproxy.policy.model import AuthMethod
from edgeproxy.s2s import S2SConnection, State

STATUS_FORMAT = "edgeproxy-status/1"


class Role(enum.StrEnum):
    """What a listener is for."""

    EXTERNAL = "external"  # S2S with partners, TCP 5269
    INTERNAL = "internal"  # loopback channel to the gateway, TCP 23456
    ADMIN = "admin"  # this admin endpoint
    SIP = "sip"  # the gateway's SIP listeners (UDP and TCP on each address, TLS), role both


class Transport(enum.StrEnum):
    """What a listener speaks on its address."""

    TCP = "tcp"
    UDP = "udp"
    TLS = "tls"  # TLS from the first byte (SIP over TLS); the S2S port's STARTTLS is tcp


class Direction(enum.StrEnum):
    """Who opened the stream."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"


class StreamState(enum.StrEnum):
    NEGOTIATING = "negotiating"  # TLS / authentication not finished
    ESTABLISHED = "established"
    CLOSING = "closing"


class ChannelState(enum.StrEnum):
    """The loopback channel to the gateway."""

    NOT_CONFIGURED = "not-configured"  # this edge does not serve the channel (yet)
    NOT_CONNECTED = "not-connected"  # listening, no gateway yet
    CONNECTED = "connected"
    DRAINING = "draining"  # shutting down, flushing
    DOWN = "down"  # lost; stanzas for local users are bounced


class ServiceState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"  # graceful shutdown in progress


AUTH_LABELS: dict[AuthMethod, str] = {
    AuthMethod.SASL_OVER_TLS: "SASL EXTERNAL",
    AuthMethod.TLS_DIALBACK: "TLS dialback",
    AuthMethod.TCP_DIALBACK: "TCP dialback",
}
"""How the table names each authentication method (the Lync vocabulary)."""


class ListenerStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    role: Role
    address: str  # "host:port" as bound, e.g. "0.0.0.0:5269" or "[::1]:23456"
    transport: Transport = Transport.TCP


class StreamStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    stream_id: str
    partner: str | None  # the partner's primary domain; None until known
    direction: Direction
    remote_address: str  # "ip:port" of the peer
    state: StreamState = StreamState.ESTABLISHED
    local_domain: str | None = None
    remote_domains: tuple[str, ...] = ()  # domains authenticated on this stream
    auth: AuthMethod | None = None
    tls_version: str | None = None  # "TLSv1.3"; None on a plain stream
    age_seconds: float = 0.0
    stanzas_in: int = 0
    stanzas_out: int = 0
    worker: int | None = None  # the edge worker process that holds it (``[edge] workers`` > 1)


class ChannelStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    state: ChannelState = ChannelState.NOT_CONNECTED
    peer: str | None = None  # the gateway's "ip:port"
    since_seconds: float | None = None  # time in this state
    unacked: int = 0  # frames sent, not yet acknowledged


class QueueStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    name: str  # e.g. "outbound:fabrikam.com", "channel", "router"
    depth: int
    limit: int | None = None


class WorkerState(enum.StrEnum):
    """An edge worker process (``[edge] workers`` above 1), as its supervisor sees it."""

    STARTING = "starting"  # started, not yet listening
    RUNNING = "running"
    RESTARTING = "restarting"  # exited without being asked; started again after a pause
    STOPPING = "stopping"  # asked to stop (graceful drain)
    STOPPED = "stopped"


class WorkerStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    index: int
    pid: int | None
    state: WorkerState
    internal: str = ""  # its loopback channel's listener, "host:port"
    restarts: int = 0  # times it exited without being asked and was started again
    uptime_seconds: float = 0.0
    streams: int = 0


class EdgeStatus(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One snapshot of the running edge (keyword-only: ``EdgeStatus(version=..., pid=...)``)."""

    format: str = STATUS_FORMAT
    running: bool = True
    version: str
    pid: int
    state: ServiceState = ServiceState.RUNNING
    uptime_seconds: float = 0.0
    domains: tuple[str, ...] = ()
    listeners: tuple[ListenerStatus, ...] = ()
    streams: tuple[StreamStatus, ...] = ()
    channel: ChannelStatus = msgspec.field(default_factory=ChannelStatus)
    queues: tuple[QueueStatus, ...] = ()
    #: The edge worker processes (empty with one process: ``[edge] workers = 1``); the streams,
    #: listeners and queues above are then every worker's together.
    workers: tuple[WorkerStatus, ...] = ()


@runtime_checkable
class StatusSource(Protocol):
    """What the server implements for the admin endpoint: a cheap synchronous snapshot."""

    def status(self) -> EdgeStatus:
        """The current state; called from the trio thread on every ``/status`` and ``/metrics``."""
        ...


# ---------------------------------------------------------------------------------------------
# The snapshot, from the running parts
# ---------------------------------------------------------------------------------------------


class Flag(Protocol):
    """A ``trio.Event`` as the status reads it."""

    def is_set(self) -> bool: ...


class S2SSession(Protocol):
    """What the status and the telemetry (``ops.telemetry``) read of one S2S stream's driver
    (``net.session.S2SSession``)."""

    @property
    def conn(self) -> S2SConnection: ...
    @property
    def ready(self) -> Flag: ...
    @property
    def remote_address(self) -> str: ...
    @property
    def auth_method(self) -> AuthMethod | None: ...
    @property
    def tls_version(self) -> str | None: ...
    @property
    def tls_failure(self) -> str | None: ...
    @property
    def started_at(self) -> float: ...
    @property
    def stanzas_in(self) -> int: ...
    @property
    def stanzas_out(self) -> int: ...
    @property
    def error_sent(self) -> str | None: ...
    @property
    def error_received(self) -> str | None: ...
    @property
    def close_reason(self) -> str | None: ...


class Link(Protocol):
    """What the status reads of one outbound link (``net.pool.OutboundLink``)."""

    @property
    def local(self) -> str: ...
    @property
    def remote(self) -> str: ...
    @property
    def done(self) -> Flag: ...
    def queue_depth(self) -> int: ...


class ChannelCounts(Protocol):
    """What the status reads of the loopback channel (``loopback.endpoint.ChannelStatistics``)."""

    @property
    def connected(self) -> bool: ...
    @property
    def connections(self) -> int: ...
    @property
    def in_flight(self) -> int: ...


def stream_status(stream: S2SSession, direction: Direction, partner: str | None, now: float) -> StreamStatus:
    """One stream's row; ``now`` on the clock of ``stream.started_at`` (trio's)."""
    conn = stream.conn
    if conn.state in (State.CLOSING, State.CLOSED):
        state = StreamState.CLOSING
    elif stream.ready.is_set():
        state = StreamState.ESTABLISHED
    else:
        state = StreamState.NEGOTIATING
    remote = sorted(conn.remote_domains) if direction is Direction.INBOUND else [conn.remote_domain or ""]
    return StreamStatus(
        stream_id=conn.stream_id or "",
        partner=partner,
        direction=direction,
        remote_address=stream.remote_address,
        state=state,
        local_domain=conn.local_domain,
        remote_domains=tuple(d for d in remote if d),
        auth=stream.auth_method,
        tls_version=stream.tls_version,
        age_seconds=round(now - stream.started_at, 3),
        stanzas_in=stream.stanzas_in,
        stanzas_out=stream.stanzas_out,
    )


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def sip_listeners(
    sip: Iterable[tuple[str, int]], tls: Iterable[tuple[str, int]] = ()
) -> list[ListenerStatus]:
    """The gateway's SIP rows: UDP and TCP on each ``sip`` (host, port) as bound, TLS on each
    ``tls`` (host, port)."""
    rows: list[ListenerStatus] = []
    for host, port in sip:
        rows.append(ListenerStatus(Role.SIP, _host_port(host, port), Transport.UDP))
        rows.append(ListenerStatus(Role.SIP, _host_port(host, port), Transport.TCP))
    rows += [ListenerStatus(Role.SIP, _host_port(host, port), Transport.TLS) for host, port in tls]
    return rows


def link_queues(links: Iterable[Link], limit: int) -> list[QueueStatus]:
    """The queue of every running outbound link (``outbound:<local>><remote>``)."""
    return [
        QueueStatus(f"outbound:{link.local}>{link.remote}", link.queue_depth(), limit)
        for link in links
        if not link.done.is_set()
    ]


class ChannelClock:
    """The channel's state as the status shows it, and since when it has been in that state."""

    def __init__(self) -> None:
        self._state = ChannelState.NOT_CONNECTED
        self._since = time.monotonic()

    def status(self, counts: ChannelCounts | None, *, draining: bool) -> ChannelStatus:
        """``counts`` None: this edge serves no channel."""
        if counts is None:
            return ChannelStatus(ChannelState.NOT_CONFIGURED)
        if draining:
            state = ChannelState.DRAINING
        elif counts.connected:
            state = ChannelState.CONNECTED
        elif counts.connections:
            state = ChannelState.DOWN
        else:
            state = ChannelState.NOT_CONNECTED
        if state is not self._state:
            self._state, self._since = state, time.monotonic()
        return ChannelStatus(state, since_seconds=round(time.monotonic() - self._since, 3),
                             unacked=counts.in_flight)


_ENCODER = msgspec.json.Encoder(order="deterministic")
_DECODER = msgspec.json.Decoder(EdgeStatus)


def encode_status(status: EdgeStatus) -> bytes:
    """The stable JSON form (``docs/status-json.md``): every key present, deterministic order."""
    return _ENCODER.encode(status)


def decode_status(data: bytes | str) -> EdgeStatus:
    """Parse the JSON form; unknown (newer) keys are ignored. Raises ``msgspec.DecodeError``."""
    return _DECODER.decode(data)


# ---------------------------------------------------------------------------------------------
# The human table
# ---------------------------------------------------------------------------------------------


def format_age(seconds: float | None) -> str:
    """``42s``, ``5m03s``, ``2h07m``, ``3d04h``."""
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return out


def auth_label(method: AuthMethod | None) -> str:
    return AUTH_LABELS[method] if method is not None else "-"


def render_table(status: EdgeStatus, *, admin: str | None = None) -> str:
    """The ``edgeproxy status`` human output."""
    where = f" (admin {admin})" if admin else ""
    lines = [
        f"edgeproxy {status.version}: {status.state.value}{where}, pid {status.pid}, "
        f"up {format_age(status.uptime_seconds)}",
        f"domains: {', '.join(status.domains) or '-'}",
        "",
        "Listeners",
    ]
    lines += _table(["ROLE", "ADDRESS", "TRANSPORT"],
                    [[li.role.value, li.address, li.transport.value] for li in status.listeners])
    established = [s for s in status.streams if s.state is StreamState.ESTABLISHED]
    partners = sorted({s.partner for s in established if s.partner})
    lines += ["", f"Streams ({len(established)} established with {len(partners)} partners, "
              f"{len(status.streams) - len(established)} other)"]
    ordered = sorted(status.streams, key=lambda s: (s.partner or "~", s.direction.value, s.stream_id))
    rows = [
        [
            s.partner or "?", s.direction.value, s.remote_address, auth_label(s.auth),
            s.tls_version or "none", format_age(s.age_seconds), str(s.stanzas_in), str(s.stanzas_out),
            s.state.value, s.stream_id,
        ]
        for s in ordered
    ]
    lines += _table(["PARTNER", "DIR", "REMOTE", "AUTH", "TLS", "AGE", "IN", "OUT", "STATE", "STREAM"], rows)
    ch = status.channel
    peer = f" from {ch.peer}" if ch.peer else ""
    lines += ["", f"Gateway channel: {ch.state.value}{peer} for {format_age(ch.since_seconds)}, "
              f"{ch.unacked} unacknowledged"]
    lines += ["", "Queues"]
    lines += _table(
        ["QUEUE", "DEPTH", "LIMIT"],
        [[q.name, str(q.depth), "-" if q.limit is None else str(q.limit)] for q in status.queues],
    )
    if status.workers:
        lines += ["", f"Edge workers ({len(status.workers)})"]
        lines += _table(
            ["WORKER", "PID", "STATE", "CHANNEL", "STREAMS", "UP", "RESTARTS"],
            [[str(w.index), str(w.pid or "-"), w.state.value, w.internal or "-", str(w.streams),
              format_age(w.uptime_seconds), str(w.restarts)] for w in status.workers],
        )
    return "\n".join(lines) + "\n"
