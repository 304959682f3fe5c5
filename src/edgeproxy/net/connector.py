"""Outbound connections to a partner's server: SRV lookup, RFC 2782 order, failover.

Theory of operation
-------------------
RFC 6120 §3.2: look up ``_xmpp-server._tcp.<domain>`` SRV records and try the targets in
RFC 2782 order (ascending priority, weighted random within a priority; ``edgeproxy.dns.srv``);
when there is no SRV record (NXDOMAIN / NODATA) fall back to the domain itself on port 5269; a
lone ``.`` target means "no service" (RFC 2782) and nothing is tried. A partner with a proxy
FQDN (SPEC §2) is reached at that host (``host`` or ``host:port``) instead of through SRV.

Lookups go through dnspython's asynchronous resolver on the trio backend, optionally pointed
at one nameserver (``resolver=("127.0.0.153", 53)``: the lab and the tests); host names are
resolved with A records through the same nameserver, so a test zone is honoured end to end.
Attempts are *staggered*: each target gets ``attempt_delay`` seconds alone before the next one
starts in parallel (happy-eyeballs style, RFC 8305 §5 applied to SRV targets); the first
connection wins and the others are cancelled. The whole connect is bounded by ``timeout``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
import trio

from edgeproxy.dns.srv import XMPP_SERVER_PORT, SrvRecord, connection_targets, srv_name


class ConnectFailed(Exception):
    """No target could be reached; ``timeout`` tells remote-server-timeout from -not-found."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


@dataclass(frozen=True)
class ConnectorSettings:
    resolver: tuple[str, int] | None = None  # None: the system's resolv.conf
    attempt_delay: float = 0.25
    timeout: float = 20.0
    dns_timeout: float = 5.0


class Connector:
    """Opens TCP streams to XMPP server domains; see the module docstring."""

    def __init__(self, settings: ConnectorSettings | None = None) -> None:
        self.settings = settings or ConnectorSettings()
        self._resolver = dns.asyncresolver.Resolver(configure=self.settings.resolver is None)
        if self.settings.resolver is not None:
            host, port = self.settings.resolver
            self._resolver.nameservers = [host]
            self._resolver.port = port
        self._resolver.lifetime = self.settings.dns_timeout

    async def srv_records(self, domain: str) -> list[SrvRecord] | None:
        """The SRV records, or None when the domain has none (fall back to A on 5269)."""
        try:
            answer = await self._resolver.resolve(srv_name(domain), "SRV", backend=_trio_backend())
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return [SrvRecord.of(r.priority, r.weight, r.port, r.target.to_text()) for r in answer]

    async def addresses(self, host: str) -> list[str]:
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        if self.settings.resolver is None:
            infos = await trio.socket.getaddrinfo(host, None, type=trio.socket.SOCK_STREAM)
            return list(dict.fromkeys(str(info[4][0]) for info in infos))
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(host, rdtype, backend=_trio_backend())
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            found.extend(r.address for r in answer)
        return found

    async def targets(self, domain: str, proxy_fqdn: str | None = None) -> list[tuple[str, int]]:
        """(host, port) to try, in order (SPEC §6 outbound)."""
        if proxy_fqdn:
            host, _, port = proxy_fqdn.rpartition(":") if ":" in proxy_fqdn else (proxy_fqdn, "", "")
            return [(host, int(port) if port else XMPP_SERVER_PORT)]
        try:
            records = await self.srv_records(domain)
        except dns.exception.DNSException as exc:
            raise ConnectFailed(f"DNS lookup for {srv_name(domain)} failed: {exc}") from None
        return connection_targets(domain, records)

    async def connect(self, domain: str, proxy_fqdn: str | None = None) -> trio.SocketStream:
        """A connected stream to the best reachable target; raises :class:`ConnectFailed`."""
        targets = await self.targets(domain, proxy_fqdn)
        if not targets:
            raise ConnectFailed(f"{domain} publishes no XMPP server service (SRV '.')")
        endpoints: list[tuple[str, int]] = []
        for host, port in targets:
            try:
                endpoints.extend((addr, port) for addr in await self.addresses(host))
            except (dns.exception.DNSException, OSError):
                continue
        if not endpoints:
            raise ConnectFailed(f"no address for any target of {domain}: {targets}")
        with trio.move_on_after(self.settings.timeout) as scope:
            return await self._staggered(endpoints)
        assert scope.cancelled_caught
        raise ConnectFailed(f"connecting to {domain} timed out", timeout=True)

    async def _staggered(self, endpoints: Sequence[tuple[str, int]]) -> trio.SocketStream:
        winner: list[trio.SocketStream] = []
        errors: list[str] = []

        async def attempt(addr: str, port: int, failed: trio.Event, done: trio.CancelScope) -> None:
            try:
                stream = await trio.open_tcp_stream(addr, port)
            except OSError as exc:
                errors.append(f"{addr}:{port}: {exc.strerror or exc}")
                failed.set()
                return
            if winner:
                await stream.aclose()
                return
            winner.append(stream)
            done.cancel()

        async with trio.open_nursery() as nursery:
            for addr, port in endpoints:
                failed = trio.Event()
                nursery.start_soon(attempt, addr, port, failed, nursery.cancel_scope)
                # The next target starts after the delay, or at once if this one failed.
                with trio.move_on_after(self.settings.attempt_delay):
                    await failed.wait()
        if winner:
            return winner[0]
        raise ConnectFailed("; ".join(errors) or "no connection")


def _trio_backend():  # type: ignore[no-untyped-def]
    import dns.asyncbackend

    return dns.asyncbackend.get_backend("trio")
