"""The built-in SIP registrar for our SIP domains (RFC 3261 §10.3), pure and in memory.

Theory of operation
-------------------
SPEC §7: the gateway embeds a registrar so that real SIP user agents can register and chat with
no other server. :meth:`Registrar.handle_register` processes one REGISTER following §10.3:

1. the Request-URI's host must be one of our domains (else 404: we are not this domain's
   registrar, and we do not proxy REGISTER);
2. the To header gives the address of record (AoR), which must be in our domains too (404);
3. ``Contact: *`` with ``Expires: 0`` removes every binding of the AoR (400 if it comes with any
   other Contact or a non-zero expiry);
4. each Contact's expiry is its ``expires`` parameter, else the ``Expires`` header, else
   ``default_expires``; 0 removes that binding; a non-zero value under ``min_expires`` is answered
   ``423 Interval Too Brief`` with ``Min-Expires`` (step 7); values over ``max_expires`` are
   lowered to it (a registrar may shorten, never lengthen);
5. a binding already known with the same Call-ID and a CSeq not lower than this request's is a
   stale or reordered request: it is left alone (step 7);
6. the 200 response lists every current binding with its remaining ``expires`` — over TCP and
   TLS. **Deviation** (issue 13): over UDP it lists only the bindings the request itself named
   (none for a query or a removal). §10.3 step 8 says "all current bindings", but the registrar
   has no authentication yet (issue 14: digest), so a 250-byte REGISTER from a spoofed source
   would make us send up to ``max_bindings_per_aor`` long Contacts to that source (measured:
   a 15 KB answer, 57x amplification). A UA that wants the whole list asks over TCP/TLS; the
   transport's ``UDP_AMPLIFICATION_FACTOR`` caps whatever is still too large.

Numbers (``Expires``, the ``expires`` parameter) are ASCII delta-seconds (``message.parse_uint``);
anything else is a 400 with a Warning naming it.

Bindings expire lazily: ``lookup`` ignores and removes expired ones. ``lookup`` returns the
contacts to which a request for the AoR goes; an empty list means the caller answers ``480
Temporarily Unavailable`` (SPEC §7, issue 5).

Limits (named, with their origin)
``max_bindings_per_aor`` = 10 — contacts one user may register (Kamailio's ``max_contacts`` is
    unlimited by default; Lync allows 8 endpoints per user). Over it: 403.
``max_aors`` = 100,000 — users with bindings; over it: 503 (bounded memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeproxy.gateway.sip.message import (
    SipParseError,
    SipRequest,
    SipResponse,
    parse_uint,
    response_to,
    warning_text,
)
from edgeproxy.gateway.sip.uri import SipUri, parse_name_addr, parse_uri, split_header_list

DEFAULT_EXPIRES = 3600  # RFC 3261 §10.2.1.1 suggests 3600 s when the UA asks for none
MIN_EXPIRES = 60  # §10.3 step 7 example; Kamailio's default min_expires is 60 too
MAX_EXPIRES = 86400
MAX_BINDINGS_PER_AOR = 10
MAX_AORS = 100_000


@dataclass(slots=True)
class Binding:
    contact: SipUri
    expires_at: float
    call_id: str
    cseq: int
    source: tuple[str, int] | None = None  # where the REGISTER came from (NAT/rport use)
    transport: str = "udp"

    def remaining(self, now: float) -> int:
        return max(0, int(self.expires_at - now + 0.5))


class Registrar:
    """Bindings of our users' AoRs to contact URIs."""

    def __init__(
        self,
        domains: tuple[str, ...] | list[str],
        *,
        default_expires: int = DEFAULT_EXPIRES,
        min_expires: int = MIN_EXPIRES,
        max_expires: int = MAX_EXPIRES,
        max_bindings_per_aor: int = MAX_BINDINGS_PER_AOR,
        max_aors: int = MAX_AORS,
    ) -> None:
        self.domains = frozenset(d.lower() for d in domains)
        self.default_expires = default_expires
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.max_bindings_per_aor = max_bindings_per_aor
        self.max_aors = max_aors
        self._bindings: dict[str, list[Binding]] = {}

    def is_local(self, uri: SipUri) -> bool:
        return uri.host.lower() in self.domains

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """Current bindings of ``aor`` (``sip:user@domain``), newest first."""
        bindings = self._bindings.get(aor)
        if not bindings:
            return []
        alive = [b for b in bindings if b.expires_at > now]
        if len(alive) != len(bindings):
            if alive:
                self._bindings[aor] = alive
            else:
                del self._bindings[aor]
        if len(alive) == 1:
            return alive
        return sorted(alive, key=lambda b: -b.expires_at)

    def handle_register(
        self,
        request: SipRequest,
        now: float,
        *,
        source: tuple[str, int] | None = None,
        transport: str = "udp",
        full_list: bool | None = None,
    ) -> SipResponse:
        """Process one REGISTER (see the module docstring). ``full_list``: the 200 lists every
        binding (step 8) rather than only those the request named; by default over TCP/TLS
        only (the UDP deviation above)."""
        if full_list is None:
            full_list = transport in ("tcp", "tls")
        try:
            return self._register(request, now, source, transport, full_list)
        except SipParseError as exc:
            response = response_to(request, exc.status, to_tag="reg")
            response.headers.add("Warning", warning_text(str(exc)))
            return response

    def _register(
        self,
        request: SipRequest,
        now: float,
        source: tuple[str, int] | None,
        transport: str,
        full_list: bool,
    ) -> SipResponse:
        if not self.is_local(parse_uri(request.uri)):
            return response_to(request, 404, "Domain Not Served Here", to_tag="reg")
        aor_uri = parse_name_addr(request.headers.get("To") or "").uri
        if not self.is_local(aor_uri) or aor_uri.user is None:
            return response_to(request, 404, to_tag="reg")
        aor = aor_uri.aor
        call_id = request.call_id
        cseq = request.cseq[0]
        header_text = request.headers.get("Expires")
        header_expires = parse_uint(header_text, "Expires") if header_text is not None else None
        contacts = [c for v in request.headers.get_all("Contact") for c in split_header_list(v)]
        if any(c.strip() == "*" for c in contacts):
            if len(contacts) != 1 or header_expires != 0:
                raise SipParseError("Contact: * needs Expires: 0 and no other Contact")
            self._bindings.pop(aor, None)
            return self._ok(request, aor, now, None if full_list else set())
        current = {str(b.contact): b for b in self.lookup(aor, now)}
        named: set[str] = set()
        for value in contacts:
            contact = parse_name_addr(value)
            raw = contact.params.get("expires")
            if raw is not None:
                expires = parse_uint(raw, "expires parameter")
            elif header_expires is not None:
                expires = header_expires
            else:
                expires = self.default_expires
            named.add(str(contact.uri))
            if 0 < expires < self.min_expires:
                response = response_to(request, 423, to_tag="reg")
                response.headers.add("Min-Expires", str(self.min_expires))
                return response
            expires = min(expires, self.max_expires)
            key = str(contact.uri)
            existing = current.get(key)
            if existing is not None and existing.call_id == call_id and existing.cseq >= cseq:
                continue  # stale or reordered REGISTER (§10.3 step 7)
            if expires == 0:
                current.pop(key, None)
                continue
            current[key] = Binding(contact.uri, now + expires, call_id, cseq, source, transport)
        if len(current) > self.max_bindings_per_aor:
            return response_to(request, 403, "Too Many Contacts", to_tag="reg")
        if current:
            if aor not in self._bindings and len(self._bindings) >= self.max_aors:
                return response_to(request, 503, "Registrar Full", to_tag="reg")
            self._bindings[aor] = list(current.values())
        else:
            self._bindings.pop(aor, None)
        return self._ok(request, aor, now, None if full_list else named)

    def _ok(self, request: SipRequest, aor: str, now: float, named: set[str] | None) -> SipResponse:
        """200 with the AoR's bindings: all of them, or (``named``) only those the request named."""
        response = response_to(request, 200, to_tag="reg")
        for binding in self.lookup(aor, now):
            if named is None or str(binding.contact) in named:
                response.headers.add("Contact", f"<{binding.contact}>;expires={binding.remaining(now)}")
        return response

    def statistics(self) -> dict[str, int]:
        return {
            "aors": len(self._bindings),
            "bindings": sum(len(b) for b in self._bindings.values()),
        }
