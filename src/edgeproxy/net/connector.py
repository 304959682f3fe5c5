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
connection wins and the others are cancelled. The whole connect — address lookups and attempts —
is bounded by ``timeout``.

DNS answers are input from outside (issue 13): what a partner's zone — or anyone who can answer
our queries — says must never take the edge down. dnspython already drops datagrams it cannot
parse (a query then times out) and turns rcodes into exceptions; on top of that:

* an SRV record whose target is not a host name (``valid_host_name``: LDH labels, underscores
  tolerated, at most 63 octets per label and 253 in all — a name with escaped bytes, spaces or
  ``*``) or whose port is 0 is skipped; an answer with records of which none is usable fails the
  lookup (:class:`UnusableAnswer`, a ``DNSException``: counted and logged like any DNS failure,
  EP4001) — there is no fallback to the domain's address, as there was an SRV answer;
* a huge answer is cut: at most ``MAX_SRV_TARGETS`` records (lowest priorities first) and
  ``MAX_ADDRESSES_PER_TARGET`` addresses each are tried;
* each lookup (the SRV answer, each target's addresses) runs inside the failure boundary
  (``ops.boundary``, ``Surface.DNS_ANSWER``): anything unexpected that dnspython or our code
  raises is reported (EP1007) and the lookup fails cleanly. ``connect`` raises only
  :class:`ConnectFailed` (the pool bounces with remote-server-not-found / -timeout).

Telemetry (``telemetry``, optional): contained failures are reported there (EP1007); each lookup
is timed (``edgeproxy_dns_lookup*`` by record type and outcome) and a failed one is ``EP4001``;
a connect that fails is ``EP4002``.

Limits (named, with their origin)
``MAX_SRV_TARGETS`` = 16
    Targets tried per connect. Real deployments publish a handful; 16 staggered attempts at the
    default ``attempt_delay`` (0.25 s) already take 4 s, and each target costs two address lookups.
``MAX_ADDRESSES_PER_TARGET`` = 8
    A and AAAA addresses tried per target (a round-robin host lists a few).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
import trio

from edgeproxy.dns.srv import XMPP_SERVER_PORT, SrvRecord, connection_targets, srv_name
from edgeproxy.names import split_host_port
from edgeproxy.ops.boundary import Surface, contain

if TYPE_CHECKING:
    from edgeproxy.ops.telemetry import Telemetry

log = logging.getLogger("edgeproxy.net.connector")

MAX_SRV_TARGETS = 16
MAX_ADDRESSES_PER_TARGET = 8
#: RFC 1035 §2.3.4 sizes; letters, digits, hyphen (RFC 952/1123) and the underscore some zones use.
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_T = TypeVar("_T")


def valid_host_name(name: str) -> bool:
    """A name a connection can be made to: LDH labels (underscore tolerated), 253 octets at most."""
    name = name.rstrip(".").lower()
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


class UnusableAnswer(dns.exception.DNSException):
    """The DNS answer had records, none of which can be used (see the module docstring)."""


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

    def __init__(self, settings: ConnectorSettings | None = None, *, telemetry: Telemetry | None = None) -> None:
        self.settings = settings or ConnectorSettings()
        self._telemetry = telemetry
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
        return usable_srv_records(srv_name(domain), [(r.priority, r.weight, r.port, r.target.to_text()) for r in answer])

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

    async def _contained(self, name: str, lookup: Callable[[], Awaitable[_T]]) -> _T:
        """Run one lookup in the failure boundary: its result, ``DNSException``/``OSError`` as
        they are (expected failures), anything else reported (EP1007) and raised as
        :class:`UnusableAnswer`."""
        result: list[_T] = []
        expected: list[Exception] = []

        async def run() -> None:
            try:
                result.append(await lookup())
            except (dns.exception.DNSException, OSError) as exc:
                expected.append(exc)

        if not await contain(Surface.DNS_ANSWER, name, self._telemetry, run, answer_name="lookup failed"):
            raise UnusableAnswer(f"the DNS answer for {name} could not be used")
        if expected:
            raise expected[0]
        return result[0]

    async def _timed(self, rtype: str, name: str, lookup: Callable[[], Awaitable[_T]]) -> _T:
        """One lookup, its duration and outcome counted, a failure reported (EP4001)."""
        if self._telemetry is None:
            return await lookup()
        started = time.monotonic()
        try:
            result = await lookup()
        except (dns.exception.DNSException, OSError) as exc:
            outcome = "timeout" if isinstance(exc, dns.exception.Timeout) else "error"
            self._telemetry.dns_lookup(rtype, name, outcome, time.monotonic() - started, error=exc)
            raise
        self._telemetry.dns_lookup(rtype, name, "ok" if result else "nodata", time.monotonic() - started)
        return result

    async def targets(self, domain: str, proxy_fqdn: str | None = None) -> list[tuple[str, int]]:
        """(host, port) to try, in order (SPEC §6 outbound)."""
        if proxy_fqdn:
            host, port = split_host_port(proxy_fqdn)
            return [(host, int(port) if port else XMPP_SERVER_PORT)]
        name = srv_name(domain)
        try:
            records = await self._contained(name, partial(self._timed, "SRV", domain, partial(self.srv_records, domain)))
        except (dns.exception.DNSException, OSError) as exc:
            raise ConnectFailed(f"DNS lookup for {name} failed: {exc}") from None
        return connection_targets(domain, records)[:MAX_SRV_TARGETS]

    async def connect(self, domain: str, proxy_fqdn: str | None = None) -> trio.SocketStream:
        """A connected stream to the best reachable target; raises :class:`ConnectFailed`."""
        try:
            with trio.move_on_after(self.settings.timeout) as scope:
                return await self._connect(domain, proxy_fqdn)
            assert scope.cancelled_caught
            raise ConnectFailed(f"connecting to {domain} timed out", timeout=True)
        except ConnectFailed as exc:
            if self._telemetry is not None:
                self._telemetry.connect_failed(domain, str(exc), proxy_fqdn or "SRV")
            raise

    async def _connect(self, domain: str, proxy_fqdn: str | None) -> trio.SocketStream:
        targets = await self.targets(domain, proxy_fqdn)
        if not targets:
            raise ConnectFailed(f"{domain} publishes no XMPP server service (SRV '.')")
        endpoints: list[tuple[str, int]] = []
        for host, port in targets:
            try:
                found = await self._contained(host, partial(self._timed, "A", host, partial(self.addresses, host)))
            except (dns.exception.DNSException, OSError):
                continue
            endpoints.extend((addr, port) for addr in found[:MAX_ADDRESSES_PER_TARGET])
        if not endpoints:
            raise ConnectFailed(f"no address for any target of {domain}: {targets}")
        return await self._staggered(endpoints)

    async def _staggered(self, endpoints: Sequence[tuple[str, int]]) -> trio.SocketStream:
        winner: list[trio.SocketStream] = []
        errors: list[str] = []

        async def attempt(addr: str, port: int, failed: trio.Event, done: trio.CancelScope) -> None:
            try:
                stream = await trio.open_tcp_stream(addr, port)
            except (OSError, ValueError, OverflowError) as exc:  # refused; an address or port trio refuses
                errors.append(f"{addr}:{port}: {getattr(exc, 'strerror', None) or exc}")
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


def usable_srv_records(name: str, records: Sequence[tuple[int, int, int, str]]) -> list[SrvRecord]:
    """The records of an SRV answer a connection can use (see the module docstring).

    A lone ``.`` target ("no service", RFC 2782) is kept; raises :class:`UnusableAnswer` when the
    answer has records and none is usable.
    """
    if len(records) == 1 and records[0][3].rstrip(".") == "":
        return [SrvRecord.of(*records[0])]
    usable = [SrvRecord.of(*r) for r in records if 0 < r[2] <= 65535 and valid_host_name(r[3])]
    if len(usable) < len(records):
        skipped = [r for r in records if not (0 < r[2] <= 65535 and valid_host_name(r[3]))]
        log.warning("SRV answer for %s: %d records skipped (not a host name or port 0), e.g. %.100s:%d",
                    name, len(skipped), skipped[0][3], skipped[0][2])
    if records and not usable:
        raise UnusableAnswer(f"no usable record in the SRV answer for {name} ({len(records)} records)")
    if len(usable) > MAX_SRV_TARGETS:  # cut before the (quadratic) weighted ordering
        log.warning("SRV answer for %s: %d records, only the best %d are used", name, len(usable), MAX_SRV_TARGETS)
        usable = sorted(usable, key=lambda r: r.priority)[:MAX_SRV_TARGETS]
    return usable


def _trio_backend():  # type: ignore[no-untyped-def]
    import dns.asyncbackend

    return dns.asyncbackend.get_backend("trio")
