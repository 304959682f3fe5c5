"""Simulated partner servers: initiating S2S streams towards the target and the authoritative
listener that answers for the simulated domains. Both run the library's sans-IO
:class:`~edgeproxy.s2s.S2SConnection` with a lean trio driver (no timers: a run is short and
bounded by the runner).

Theory of operation
-------------------
* The harness is, for the simulated domains, an ordinary server: its own policy snapshot says
  "our domains are the simulated ones, the target's domain is a partner allowing TCP dialback"
  (row 17), and all streams share one dialback secret.
* :func:`open_stream` connects, sends the header, and lets the core negotiate dialback
  (XEP-0220 §2.1.1); it returns once :class:`~edgeproxy.s2s.StreamReady` says the pair is
  authenticated, or raises :class:`StreamSetupError`.
* The target checks our key by connecting back to the simulated domain (SRV/A records point at
  :class:`PartnerListener`) with ``db:verify``; the receiving core answers it (XEP-0220 §2.2.2).
* The target delivers replies (echoes, error bounces, iq results) over its own stream to us; the
  listener trusts the target's dialback key without checking it (a load generator is not a
  security boundary: say so, never deploy it as a server) and reports every stanza with a harness
  id to the ledger: ``type='error'`` is a bounce, anything else an echo (delivered).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from edgeproxy.loadtest.accounting import ID_PATTERN, Ledger
from edgeproxy.loadtest.scenario import Scenario
from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
)
from edgeproxy.policy.snapshot import PolicySnapshot, build_snapshot
from edgeproxy.s2s import (
    AuthenticationFailed,
    CloseStream,
    DialbackVerdict,
    DialbackVerifyNeeded,
    Role,
    S2SConnection,
    SendStanza,
    StanzaReceived,
    State,
    StreamClosed,
    StreamErrorReceived,
    StreamReady,
)

log = logging.getLogger("edgeproxy.loadtest")
MAX_READ = 65536


class StreamSetupError(Exception):
    """A simulated stream could not be authenticated."""


def partner_snapshot(scenario: Scenario) -> PolicySnapshot:
    """The simulated servers' own policy: the target's domain is a row-17 partner."""
    row = Partner(
        domain=scenario.target.domain,
        type=PartnerType.FEDERATED,
        tls=Negotiation.NOT_SUPPORTED,
        sasl=Negotiation.NOT_SUPPORTED,
        dialback=True,
        keepalive=False,
    )
    config = Configuration(
        gateway=GatewaySettings(dialback_secret=scenario.partners.secret),
        partners=(row,),
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
    )
    return build_snapshot(config, scenario.partners.domain_names())


@dataclass
class OutboundStream:
    """One authenticated initiating stream from ``local`` to ``remote``."""

    local: str
    remote: str
    conn: S2SConnection
    transport: trio.SocketStream
    setup_seconds: float
    errors: list[str] = field(default_factory=list)
    closed: trio.Event = field(default_factory=trio.Event)

    async def send_raw(self, data: bytes) -> None:
        await self.transport.send_all(data)

    def frame(self, raw: bytes) -> bytes:
        """The bytes for one stanza (checked by the core: the pair must be authenticated)."""
        return self.conn.send(SendStanza(raw, self.local, self.remote))

    async def read_until_closed(self) -> None:
        """Keep reading (keep-alives, stream errors) until the stream ends."""
        try:
            while self.conn.state is not State.CLOSED:
                data = await self.transport.receive_some(MAX_READ)
                self.conn.receive_data(data)
                if out := self.conn.data_to_send():
                    await self.transport.send_all(out)
                while (event := self.conn.next_event()) is not None:
                    if isinstance(event, StreamErrorReceived):
                        self.errors.append(f"stream error {event.condition}: {event.text}")
                if not data:
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.errors.append(f"transport: {exc!r}")
        finally:
            self.closed.set()

    async def aclose(self, grace: float = 2.0) -> None:
        """Close politely (``</stream:stream>``), give the peer ``grace`` s, then drop it."""
        try:
            data = self.conn.send(CloseStream())
            if data:
                await self.transport.send_all(data)
            with trio.move_on_after(grace):
                await self.closed.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self.transport.aclose()


async def open_stream(
    scenario: Scenario, policy: Callable[[], PolicySnapshot], local: str
) -> OutboundStream:
    """Connect to the target and authenticate ``local`` by dialback; bounded by connect_timeout."""
    target = scenario.target
    started = trio.current_time()
    conn = S2SConnection(
        Role.INITIATING,
        policy=policy,
        secret=scenario.partners.secret,
        local_domain=local,
        remote_domain=target.domain,
    )
    with trio.fail_after(scenario.partners.connect_timeout):
        transport = await trio.open_tcp_stream(target.host, target.port)
        try:
            await transport.send_all(conn.initiate())
            while True:
                data = await transport.receive_some(MAX_READ)
                conn.receive_data(data)
                if out := conn.data_to_send():
                    await transport.send_all(out)
                while (event := conn.next_event()) is not None:
                    if isinstance(event, StreamReady) and event.authenticated:
                        return OutboundStream(
                            local, target.domain, conn, transport, trio.current_time() - started
                        )
                    if isinstance(event, AuthenticationFailed | StreamErrorReceived | StreamClosed):
                        raise StreamSetupError(f"{local} -> {target.domain}: {event!r}")
                if not data:
                    raise StreamSetupError(f"{local} -> {target.domain}: connection closed")
        except BaseException:
            await transport.aclose()
            raise


class PartnerListener:
    """The simulated domains' S2S listener: answers ``db:verify`` and receives the target's
    replies (echoes and bounces) for the ledger."""

    def __init__(self, scenario: Scenario, policy: Callable[[], PolicySnapshot], ledger: Ledger) -> None:
        self.scenario = scenario
        self.policy = policy
        self.ledger = ledger
        self.accepted = 0
        self.verifications = 0
        self.errors: list[str] = []

    async def serve(
        self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        p = self.scenario.partners
        listeners = await trio.open_tcp_listeners(p.listen_port, host=p.listen_host)
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, transport: trio.SocketStream) -> None:
        self.accepted += 1
        conn = S2SConnection(Role.RECEIVING, policy=self.policy, secret=self.scenario.partners.secret)
        try:
            async with transport:
                while conn.state is not State.CLOSED:
                    data = await transport.receive_some(MAX_READ)
                    conn.receive_data(data)
                    out = bytearray(conn.data_to_send())
                    now = trio.current_time()
                    while (event := conn.next_event()) is not None:
                        if isinstance(event, StanzaReceived):
                            self._observe(event, now)
                        elif isinstance(event, DialbackVerifyNeeded):
                            self.verifications += 1
                            out += conn.send(
                                DialbackVerdict(event.originating, event.receiving, valid=True)
                            )
                        elif isinstance(event, StreamClosed) and event.error:
                            self.errors.append(f"inbound stream: {event.error}: {event.reason}")
                    out += conn.data_to_send()
                    if out:
                        await transport.send_all(bytes(out))
                    if not data:
                        break
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.errors.append(f"inbound transport: {exc!r}")

    def _observe(self, event: StanzaReceived, now: float) -> None:
        stanza = event.stanza
        sid = stanza.id
        if not sid or not ID_PATTERN.fullmatch(f"id='{sid}'".encode()):
            return  # not ours (e.g. a subscription push of the target's own)
        if stanza.type == "error":
            self.ledger.saw_bounced(sid, now)
        else:
            self.ledger.saw_delivered(sid, now)
