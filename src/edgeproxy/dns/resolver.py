"""DNS lookups for the checks, through dnspython with a configurable nameserver and port.

Lookups return values, never raise for DNS answers: a name that does not exist (NXDOMAIN), a name
without records of the type (NODATA) and a failure to get an answer at all (timeout, SERVFAIL,
REFUSED) are different diagnoses, so they are distinct outcomes. The checks run from the command
line, so this is the synchronous resolver; the S2S connector uses its own asynchronous lookup.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

import dns.exception
import dns.rdatatype
import dns.resolver

from edgeproxy.dns.srv import SrvRecord, srv_name

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
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT``."""
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = int(rest.lstrip(":"))
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = int(p)
    ipaddress.ip_address(host)  # ValueError names the bad address
    if not 0 < port < 65536:
        raise ValueError(f"resolver port out of range: {port}")
    return host, port


@dataclass
class Lookup:
    """A resolver: the system's (``/etc/resolv.conf``) or one nameserver at ``ip:port``."""

    nameserver: tuple[str, int] | None = None
    timeout: float = 2.0
    _resolver: dns.resolver.Resolver = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.nameserver is None:
            try:
                self._resolver = dns.resolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                self._resolver = dns.resolver.Resolver(configure=False)
                self._resolver.nameservers = ["127.0.0.1"]
        else:
            self._resolver = dns.resolver.Resolver(configure=False)
            self._resolver.nameservers = [self.nameserver[0]]
            self._resolver.port = self.nameserver[1]
        self._resolver.lifetime = self.timeout
        self._resolver.timeout = self.timeout
        self._resolver.cache = None

    def describe(self) -> str:
        if self.nameserver is None:
            return "system resolver"
        host, port = self.nameserver
        return f"{'[' + host + ']' if ':' in host else host}:{port}"

    def _query(self, name: str, rdtype: str) -> tuple[Outcome, list[object], str]:
        try:
            answer = self._resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return "nxdomain", [], f"{name} does not exist (NXDOMAIN)"
        except dns.resolver.NoNameservers as exc:
            return "error", [], f"no nameserver answered for {name} ({exc.msg if hasattr(exc, 'msg') else exc})"
        except dns.exception.Timeout:
            return "error", [], f"timeout resolving {name} via {self.describe()}"
        except dns.exception.DNSException as exc:
            return "error", [], f"cannot resolve {name}: {exc}"
        rrset = answer.rrset
        if rrset is None:
            return "nodata", [], f"{name} has no {rdtype} record"
        return "ok", list(rrset), ""

    def srv(self, domain: str) -> SrvAnswer:
        outcome, rdatas, detail = self._query(srv_name(domain), "SRV")
        records = tuple(
            sorted(SrvRecord.of(r.priority, r.weight, r.port, r.target.to_text()) for r in rdatas)  # type: ignore[attr-defined]
        )
        return SrvAnswer(outcome, records, detail)

    def addresses(self, host: str) -> Answer:
        """A and AAAA together: ok if either has records."""
        results = [self._query(host, t) for t in ("A", "AAAA")]
        values = tuple(str(r) for _, rdatas, _ in results for r in rdatas)
        if values:
            return Answer("ok", values)
        for outcome in ("error", "nxdomain", "nodata"):
            for o, _, detail in results:
                if o == outcome:
                    return Answer(o, (), detail if o != "nodata" else f"{host} has no A/AAAA record")
        return Answer("nodata", (), f"{host} has no A/AAAA record")
