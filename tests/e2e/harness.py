"""The end-to-end lab: a real Prosody user ⇄ edgeproxy (edge + gateway, one process) ⇄ SIP UAs.

Theory of operation
-------------------
``e2e_lab(workdir, ...)`` is an async context manager that starts, in this order:

1. **dnsmasq** on ``DNS_ADDR`` (own port) answering for both XMPP domains: SRV
   ``_xmpp-server._tcp.contoso.test`` → the edge's S2S port on ``EDGE_ADDR`` and
   ``_xmpp-server._tcp.fabrikam.test`` → Prosody's S2S port on ``PROSODY_ADDR``, plus A records.
   Prosody resolves through it (libunbound forwarded to it, ``fixtures/xmpp_servers.py``); the
   edge through it too (``EDGEPROXY_DNS_RESOLVER``, read by ``EdgeApp.run``; set for the lab's
   lifetime and restored after).
2. **Prosody 0.12** for ``fabrikam.test`` on ``PROSODY_ADDR`` (plain TCP + dialback, c2s with
   PLAIN auth), with the XMPP users ``xmpp_users`` (password ``xmpp_servers.PASSWORD``).
3. **edgeproxy** for ``contoso.test``: ``run_app(role="both")`` in this process — the S2S edge on
   ``EDGE_ADDR``, the loopback channel and the gateway with its built-in SIP registrar (UDP and
   TCP) on ``EDGE_ADDR``; a store under ``workdir/state`` holding the partner row for
   ``fabrikam.test`` (``partner_type``; TCP dialback only), a global access policy with XMPP
   federation on, the SIP users ``sip_users`` (``sip:NAME@contoso.test``, with ``contacts``)
   and the gateway settings (``subscription_refresh_interval``).

It yields an :class:`E2ELab` once the gateway's channel to the edge is connected. SIP user
agents run on ``SIP_UA_ADDR``: they REGISTER at ``lab.sip_address`` and send their requests
there (``lab.sipp(...)`` runs a SIPp scenario; a different UA — baresip — just needs
``lab.sip_host``/``lab.sip_port`` and the domain ``SIP_DOMAIN``). XMPP users log in on Prosody
with ``await lab.login("carol")`` (a ``c2s.Client``, closed at the end). On the way out
everything is stopped (Prosody and dnsmasq by their own PIDs); if the body raised, the tails of
Prosody's and dnsmasq's logs are printed (pytest shows them with the failure).

Addresses (private to these tests): edge 127.0.0.30, Prosody 127.0.0.31, SIP UAs 127.0.0.32,
dnsmasq 127.0.0.33; every port is a free one picked at start.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio
from _sipp import SCENARIOS as GATEWAY_SCENARIOS
from _sipp import run_sipp, sipp_command

from edgeproxy.app import EdgeApp, run_app
from edgeproxy.config import load_config
from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
    User,
)
from edgeproxy.policy.snapshot import PolicySnapshot
from edgeproxy.policy.store import Store
from edgeproxy.tokenizer import Stanza
from fixtures.c2s import Client
from fixtures.dnsmasq import DnsServer, start_dnsmasq, xmpp_server
from fixtures.ports import free_port
from fixtures.sipauth import credentials as sip_credentials
from fixtures.xmpp_servers import PASSWORD, Prosody, start_prosody

EDGE_ADDR = "127.0.0.30"
PROSODY_ADDR = "127.0.0.31"
SIP_UA_ADDR = "127.0.0.32"
DNS_ADDR = "127.0.0.33"
SIP_DOMAIN = "contoso.test"  # edgeproxy's domain: SIP users and their JIDs
XMPP_DOMAIN = "fabrikam.test"  # Prosody's domain
#: SIPp scenarios of these tests; the gateway tests' scenarios are in ``GATEWAY_SCENARIOS``.
SCENARIOS = Path(__file__).resolve().parent / "sipp"
#: Seconds a SIPp run may last at most (SIPp's -timeout; the gateway tests use 15).
SIPP_TIMEOUT = 60
#: Hang guard for the lab's start (Prosody registers its users with prosodyctl first).
START_TIMEOUT = 60


@dataclass
class E2ELab:
    """A running lab (see the module docstring)."""

    app: EdgeApp
    prosody: Prosody
    dns: DnsServer
    sip_host: str
    sip_port: int
    workdir: Path
    nursery: trio.Nursery
    clients: list[Client] = field(default_factory=list)

    @property
    def sip_address(self) -> str:
        """``host:port`` of the gateway's SIP listener (UDP and TCP)."""
        return f"{self.sip_host}:{self.sip_port}"

    @property
    def c2s_address(self) -> tuple[str, int]:
        """Prosody's client-to-server listener (plain TCP, SASL PLAIN allowed)."""
        return self.prosody.address, self.prosody.c2s_port

    def snapshot(self) -> PolicySnapshot:
        """The edge's current policy snapshot (re-read from the store every second)."""
        assert self.app.holder is not None
        return self.app.holder.snapshot

    async def login(self, user: str) -> Client:
        """Log ``user``@fabrikam.test in on Prosody (resource ``interop``, roster fetched,
        initial presence sent)."""
        client = await Client.login(*self.c2s_address, user, XMPP_DOMAIN, PASSWORD)
        self.clients.append(client)
        return client

    async def sipp(
        self, scenario: str | Path, log_name: str, *args: str, tcp: bool = False, port: int | None = None
    ) -> str:
        """Run one SIPp scenario on ``SIP_UA_ADDR`` (local ``port``, default a free one) against
        the gateway; return its log (the ``<log>`` lines); fails unless the scenario succeeds.
        ``scenario``: a file name in ``SCENARIOS`` or ``GATEWAY_SCENARIOS``, or a path.
        ``args``: more SIPp arguments (``-key name value``, ``-s service``)."""
        command = self.sipp_command(scenario, *args, tcp=tcp, port=port)
        return await run_sipp(command, self.workdir / log_name)

    def sipp_command(
        self, scenario: str | Path, *args: str, tcp: bool = False, port: int | None = None
    ) -> list[str]:
        """The SIPp command line ``sipp`` runs (for running it yourself, e.g. expecting failure)."""
        command = sipp_command(str(scenario_path(scenario)), SIP_UA_ADDR, *args,
                               remote=self.sip_address, tcp=tcp)
        if port is not None:
            command[command.index("-p") + 1] = str(port)
        # SIPp's -timeout bounds its whole run: a watcher or UAS lives as long as the test's
        # exchange, on a machine that may be busy (a hang guard, not a speed requirement).
        command[command.index("-timeout") + 1] = str(SIPP_TIMEOUT)
        return command

    async def register(self, user: str, contact_port: int, *, expires: int = 600) -> str:
        """REGISTER ``user``@contoso.test at the built-in registrar with the Contact
        ``sip:user@SIP_UA_ADDR:contact_port`` (where a UAS of the test listens)."""
        return await self.sipp(
            "register.xml", f"register-{user}-{contact_port}.log",
            "-key", "user", user, "-key", "domain", SIP_DOMAIN,
            "-key", "contact_host", SIP_UA_ADDR, "-key", "contact_port", str(contact_port),
            "-key", "expires", str(expires),
        )  # fmt: skip


def scenario_path(scenario: str | Path) -> Path:
    path = Path(scenario)
    if path.is_absolute():
        return path
    return SCENARIOS / path if (SCENARIOS / path).exists() else GATEWAY_SCENARIOS / path


def partner_row(partner_type: PartnerType) -> Partner:
    """fabrikam.test over plain TCP with dialback (SPEC §2.1 row 17), of the given type."""
    nos = Negotiation.NOT_SUPPORTED
    return Partner(domain=XMPP_DOMAIN, type=partner_type, tls=nos, sasl=nos, dialback=True)


def lab_configuration(
    partner_type: PartnerType,
    sip_users: Sequence[str],
    contacts: Mapping[str, Sequence[str]],
    refresh_interval: int,
) -> Configuration:
    return Configuration(
        gateway=GatewaySettings(dialback_secret="e2e-dialback-secret",
                                subscription_refresh_interval=refresh_interval),
        partners=(partner_row(partner_type),),
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True, public_cloud=True),),
        users=tuple(User(sip=f"sip:{u}@{SIP_DOMAIN}", contacts=tuple(contacts.get(u, ())),
                         credentials=sip_credentials(u, SIP_DOMAIN))  # issue 14: PASSWORD, MD5
                    for u in sip_users),
    )


def write_edge_config(workdir: Path, edge_port: int, sip_port: int) -> Path:
    """edgeproxy.toml: no certificate (plain TCP dialback only), every listener on EDGE_ADDR."""
    path = workdir / "edgeproxy.toml"
    path.write_text(
        f'[edge]\ndomains = ["{SIP_DOMAIN}"]\nlisten = ["{EDGE_ADDR}:{edge_port}"]\n'
        f'internal-listen = "{EDGE_ADDR}:0"\nstate-dir = "state"\n'
        '[tls]\ncertificate = "no/edge.pem"\nkey = "no/edge.key"\n'
        f'[admin]\nlisten = "{EDGE_ADDR}:0"\n'
        f'[gateway]\nsip-listen = ["{EDGE_ADDR}:{sip_port}"]\n'
    )
    return path


@asynccontextmanager
async def e2e_lab(
    workdir: Path,
    *,
    partner_type: PartnerType = PartnerType.FEDERATED,
    sip_users: Sequence[str] = ("alice", "bob"),
    xmpp_users: Sequence[str] = ("carol", "dave"),
    contacts: Mapping[str, Sequence[str]] | None = None,
    refresh_interval: int = 28800,
) -> AsyncIterator[E2ELab]:
    """Start the lab (see the module docstring); ``contacts``: SIP user → the XMPP contacts
    (bare JIDs) the user has authorized (matters for PublicUnverified)."""
    workdir.mkdir(parents=True, exist_ok=True)
    edge_port, sip_port = free_port(EDGE_ADDR), free_port(EDGE_ADDR, udp_too=True)
    p_s2s, p_c2s = free_port(PROSODY_ADDR), free_port(PROSODY_ADDR)
    dns = start_dnsmasq(workdir / "dns", [
        *xmpp_server(SIP_DOMAIN, EDGE_ADDR, edge_port),
        *xmpp_server(XMPP_DOMAIN, PROSODY_ADDR, p_s2s),
    ], address=DNS_ADDR)
    prosody: Prosody | None = None
    saved_resolver = os.environ.get("EDGEPROXY_DNS_RESOLVER")
    try:
        prosody = await trio.to_thread.run_sync(partial(
            start_prosody, XMPP_DOMAIN, PROSODY_ADDR, (dns.address, dns.port),
            users=tuple(xmpp_users), c2s_port=p_c2s, s2s_port=p_s2s,
        ))
        config_path = write_edge_config(workdir, edge_port, sip_port)
        with Store.open(workdir / "state") as store, store.write() as tx:
            tx.replace_all(lab_configuration(partner_type, sip_users, contacts or {}, refresh_interval))
        os.environ["EDGEPROXY_DNS_RESOLVER"] = dns.resolver
        async with trio.open_nursery() as nursery:
            with trio.fail_after(START_TIMEOUT):
                app = await nursery.start(partial(run_app, load_config(config_path), role="both",
                                                  signals=False))
                assert isinstance(app, EdgeApp)
                await wait_for(lambda: app.status().channel.state.value == "connected")
            lab = E2ELab(app, prosody, dns, EDGE_ADDR, sip_port, workdir, nursery)
            try:
                yield lab
            finally:
                # Cancel the tasks the test started in lab.nursery first (a task still reading a
                # client would otherwise see ClosedResourceError), then close the clients.
                nursery.cancel_scope.cancel()
                for client in lab.clients:
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        await client.aclose()
    except BaseException:
        if prosody is not None:
            print("---- prosody.log (tail) ----\n" + prosody.log_text()[-8000:])
        print("---- dnsmasq.log (tail) ----\n" + _tail(dns.workdir / "dnsmasq.log", 2000))
        raise
    finally:
        if saved_resolver is None:
            os.environ.pop("EDGEPROXY_DNS_RESOLVER", None)
        else:
            os.environ["EDGEPROXY_DNS_RESOLVER"] = saved_resolver
        if prosody is not None:
            prosody.stop()
        dns.stop()


def _tail(path: Path, size: int) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


async def wait_for(predicate: Callable[[], object], step: float = 0.05) -> None:
    """Poll ``predicate`` until it is true (wrap in ``trio.fail_after`` as the hang guard)."""
    while not predicate():
        await trio.sleep(step)


async def expect_stanza(client: Client, predicate: Callable[[Stanza], bool]) -> Stanza:
    """The next stanza the client receives that satisfies ``predicate`` (others are skipped)."""
    while True:
        stanza = await client.next()
        if predicate(stanza):
            return stanza


def child_text(stanza: Stanza, name: str) -> str | None:
    """Text of the ``jabber:client`` child ``name`` of a received stanza, or None."""
    child = stanza.element().find(name, "jabber:client")
    return child.text if child is not None else None
