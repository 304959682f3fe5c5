"""DNS lookups for the checks, through dnspython with a configurable nameserver and port.

Lookups return values, never raise for DNS answers: a name that does not exist (NXDOMAIN), a name
without records of the type (NODATA) and a failure to get an answer at all (timeout, SERVFAIL,
REFUSED) are different diagnoses, so they are distinct outcomes. An answer that makes dnspython
raise anything else (it should not: it drops unparsable datagrams) is an ``error`` outcome too,
never an exception out of a check. ``Lookup`` blocks (the command-line checks);
``AsyncLookup`` is the same for async code (the S2S connector under trio).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from edgeproxy.config import parse_nameserver
from edgeproxy.dns.srv import SrvRecord, srv_name
from edgeproxy.names import InvalidName

Outcome = Literal["ok", "nxdomain", "nodata", "error"]


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    values: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class SrvAnswer:
    outcome: Outcome
    records: tuple[SrvRecord, ...] = ()
    detail: str = ""


def parse_resolver(text: str) -> tuple[str, int]:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` (port 53 when absent), as ``[dns] resolver`` and
    ``--resolver`` take it; ValueError naming the rule otherwise (a host name is refused)."""
    try:
        return parse_nameserver(text)
    except InvalidName as exc:
        raise ValueError(exc.detail) from None


def _configure(resolver: dns.resolver.Resolver, nameserver: tuple[str, int] | None, timeout: float) -> None:
    if nameserver is not None:
        resolver.nameservers = [nameserver[0]]
        resolver.port = nameserver[1]
    resolver.lifetime = timeout
    resolver.timeout = timeout
    resolver.cache = None


def _new_resolver(
    cls: type[dns.resolver.Resolver], nameserver: tuple[str, int] | None, timeout: float
) -> dns.resolver.Resolver:
    """The system's resolver configuration, or only ``nameserver`` when one is given."""
    if nameserver is None:
        try:
            resolver = cls()
        except dns.resolver.NoResolverConfiguration:
            resolver = cls(configure=False)
            resolver.nameservers = ["127.0.0.1"]
    else:
        resolver = cls(configure=False)
    _configure(resolver, nameserver, timeout)
    return resolver


def _describe(nameserver: tuple[str, int] | None) -> str:
    if nameserver is None:
        return "system resolver"
    host, port = nameserver
    return f"{'[' + host + ']' if ':' in host else host}:{port}"


def _classify(name: str, rdtype: str, via: str, answer: object | BaseException) -> tuple[Outcome, list[object], str]:
    """Turn a dnspython answer or exception into (outcome, rdatas, detail)."""
    if isinstance(answer, dns.resolver.NXDOMAIN):
        return "nxdomain", [], f"{name} does not exist (NXDOMAIN)"
    if isinstance(answer, dns.resolver.NoNameservers):
        return "error", [], f"no nameserver answered for {name} via {via} (SERVFAIL/REFUSED)"
    if isinstance(answer, dns.exception.Timeout):
        return "error", [], f"timeout resolving {name} via {via}"
    if isinstance(answer, BaseException):
        return "error", [], f"cannot resolve {name}: {answer}"
    rrset = getattr(answer, "rrset", None)
    if rrset is None:
        return "nodata", [], f"{name} has no {rdtype} record"
    return "ok", list(rrset), ""


def _srv_answer(result: tuple[Outcome, list[object], str]) -> SrvAnswer:
    outcome, rdatas, detail = result
    records = tuple(
        sorted(SrvRecord.of(r.priority, r.weight, r.port, r.target.to_text()) for r in rdatas)  # type: ignore[attr-defined]
    )
    return SrvAnswer(outcome, records, detail)


def _address_answer(host: str, results: list[tuple[Outcome, list[object], str]]) -> Answer:
    """A and AAAA together: ok if either has records; else the most telling failure."""
    values = tuple(str(r) for _, rdatas, _ in results for r in rdatas)
    if values:
        return Answer("ok", values)
    for wanted in ("error", "nxdomain"):
        for outcome, _, detail in results:
            if outcome == wanted:
                return Answer(outcome, (), detail)
    return Answer("nodata", (), f"{host} has no A/AAAA record")


@dataclass
class Lookup:
    """Blocking lookups (the CLI): the system resolver or one nameserver at ``ip:port``."""

    nameserver: tuple[str, int] | None = None
    timeout: float = 2.0
    _resolver: dns.resolver.Resolver = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._resolver = _new_resolver(dns.resolver.Resolver, self.nameserver, self.timeout)

    def describe(self) -> str:
        return _describe(self.nameserver)

    def _query(self, name: str, rdtype: str) -> tuple[Outcome, list[object], str]:
        try:
            answer: object = self._resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except Exception as exc:  # noqa: BLE001 - DNSException and the unexpected alike: an outcome
            answer = exc
        return _classify(name, rdtype, self.describe(), answer)

    def srv(self, domain: str) -> SrvAnswer:
        return _srv_answer(self._query(srv_name(domain), "SRV"))

    def addresses(self, host: str) -> Answer:
        return _address_answer(host, [self._query(host, t) for t in ("A", "AAAA")])


@dataclass
class AsyncLookup:
    """The same lookups for async code (trio, via dnspython's async backend detection)."""

    nameserver: tuple[str, int] | None = None
    timeout: float = 2.0
    _resolver: dns.asyncresolver.Resolver = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._resolver = _new_resolver(dns.asyncresolver.Resolver, self.nameserver, self.timeout)  # type: ignore[assignment]

    def describe(self) -> str:
        return _describe(self.nameserver)

    async def _query(self, name: str, rdtype: str) -> tuple[Outcome, list[object], str]:
        try:
            answer: object = await self._resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except Exception as exc:  # noqa: BLE001 - DNSException and the unexpected alike: an outcome
            answer = exc
        return _classify(name, rdtype, self.describe(), answer)

    async def srv(self, domain: str) -> SrvAnswer:
        return _srv_answer(await self._query(srv_name(domain), "SRV"))

    async def addresses(self, host: str) -> Answer:
        return _address_answer(host, [await self._query(host, t) for t in ("A", "AAAA")])
