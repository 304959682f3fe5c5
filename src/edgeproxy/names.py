"""One validation layer for the names edgeproxy is given: domains, certificate names, host:port,
JIDs and SIP addresses.

Every function either returns the canonical form of a name or raises :class:`InvalidName`, whose
message quotes the name and states the rule it breaks, e.g. ``"bad domain": a DNS label may
contain only letters, digits and hyphens (RFC 1035 §2.3.1)``.

* **Domains** (RFC 5890/5891, RFC 1035): mapped with UTS #46 (``Bücher.DE`` and
  ``xn--bcher-kva.de`` are the same domain) and returned as lower-case A-labels without the
  trailing dot. Each label is 1..63 octets of letters, digits and hyphens, neither starting nor
  ending with a hyphen; ``--`` in the 3rd and 4th position only in an A-label (``xn--``) that
  decodes to a valid U-label; the whole name is at most 253 octets; the last label is not all
  digits (RFC 3696 §2), so that an IP address never passes for a domain. An IP address literal
  (``1.2.3.4``, ``::1``, ``[::1]``) is refused with a message saying so.
* **Certificate names** (subjectAltName dNSName): a domain, or a wildcard ``*.`` as the whole
  leftmost label over at least two labels (RFC 6125 §6.4.3, §7.2).
* **host[:port]**: a domain (or, where allowed, an IP address, ``[v6]:port``) and a port 1..65535.
* **JIDs** (RFC 7622): the localpart is enforced with the PRECIS ``UsernameCaseMapped`` profile
  (RFC 8265 §3.3: width-mapped, lower-cased, NFC) minus the characters RFC 7622 §3.3.1 excludes
  (``" & ' / : < > @``); the domainpart follows the domain rule; the resourcepart is enforced with
  the ``OpaqueString`` profile (RFC 8265 §4.2). Each part is at most 1023 octets (RFC 7622 §3.1).
* **SIP addresses** ``sip:user@domain``: the user part follows the JID localpart rule (a SIP user
  is an XMPP user across the gateway), the domain the domain rule.
"""

from __future__ import annotations

import ipaddress
import json
import re
from functools import lru_cache
from typing import Final

import idna
from precis_i18n import get_profile

from edgeproxy.errors import ConfigError

#: RFC 1035 §2.3.4: a label is at most 63 octets, a name at most 255 octets on the wire, which
#: is 253 characters written without the trailing dot.
MAX_LABEL: Final = 63
MAX_DOMAIN: Final = 253
#: RFC 7622 §3.1: each part of a JID is 1..1023 octets of UTF-8.
MAX_JID_PART: Final = 1023
#: RFC 7622 §3.3.1: characters the localpart may not contain beyond the PRECIS profile.
JID_LOCAL_EXCLUDED: Final = frozenset("\"&'/:<>@")

RULE_REQUIRED: Final = "a domain name is required"
RULE_IP: Final = "an IP address is not a domain name: give the DNS name"
RULE_LDH: Final = "a DNS label may contain only letters, digits and hyphens (RFC 1035 §2.3.1)"
RULE_EMPTY_LABEL: Final = "a DNS label cannot be empty: two dots in a row, or a leading dot (RFC 1035 §2.3.1)"
RULE_LABEL_LENGTH: Final = f"a DNS label is at most {MAX_LABEL} characters (RFC 1035 §2.3.4)"
RULE_NAME_LENGTH: Final = f"a domain name is at most {MAX_DOMAIN} characters (RFC 1035 §2.3.4)"
RULE_HYPHEN_ENDS: Final = "a DNS label cannot begin or end with a hyphen (RFC 5891 §4.2.3.1)"
RULE_HYPHEN_34: Final = "a DNS label may have '--' in 3rd and 4th position only as an 'xn--' A-label (RFC 5891 §4.2.3.1)"
RULE_A_LABEL: Final = "an 'xn--' label must be the valid A-label of an internationalized label (RFC 5890 §2.3.2.1)"
RULE_NUMERIC_TLD: Final = "the last label of a domain name cannot be all digits (RFC 3696 §2)"
RULE_WILDCARD: Final = (
    "a wildcard '*' may only be the whole leftmost label, as in *.example.com (RFC 6125 §6.4.3)"
)
RULE_WILDCARD_DEPTH: Final = "a wildcard must stand over at least two labels, as in *.example.com (RFC 6125 §7.2)"
RULE_PORT: Final = "the port must be a number from 1 to 65535"

_LDH: Final = re.compile(r"[a-z0-9-]+")


class InvalidName(ConfigError):
    """A name that breaks a rule. ``str()`` is ``refused: <detail>``; ``detail`` is
    ``"<name>": <rule>`` for messages that put their own context first."""

    def __init__(self, name: str, rule: str) -> None:
        self.name = name
        self.rule = rule
        self.detail = f"{quote(name)}: {rule}"
        super().__init__(f"refused: {self.detail}")


def quote(text: str) -> str:
    """A name as it appears in a message: in double quotes, control characters escaped."""
    return json.dumps(text, ensure_ascii=False)


# -- domains ------------------------------------------------------------------------------------


def ip_literal(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address ``text`` writes (``1.2.3.4``, ``::1``, ``[::1]``), else None."""
    candidate = text.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        return None


def _check_ascii_label(label: str, original: str) -> None:
    """RFC 1035/5891 rules for one lower-case ASCII label; an ``xn--`` label must decode."""
    if not label:
        raise InvalidName(original, RULE_EMPTY_LABEL)
    if not _LDH.fullmatch(label):
        raise InvalidName(original, RULE_WILDCARD if "*" in label else RULE_LDH)
    if len(label) > MAX_LABEL:
        raise InvalidName(original, RULE_LABEL_LENGTH)
    if label[0] == "-" or label[-1] == "-":
        raise InvalidName(original, RULE_HYPHEN_ENDS)
    if label[2:4] == "--":
        if not label.startswith("xn--"):
            raise InvalidName(original, RULE_HYPHEN_34)
        try:
            idna.decode(label)
        except (idna.IDNAError, UnicodeError):
            raise InvalidName(original, RULE_A_LABEL) from None


def _a_label(label: str, original: str) -> str:
    """The A-label of one (UTS #46 mapped) label, checked against the rules above."""
    if label.isascii():
        label = label.lower()
    else:
        try:
            label = idna.alabel(label).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise InvalidName(
                original, f"not a valid internationalized label: {exc} (RFC 5891 §4, RFC 5892)"
            ) from None
    _check_ascii_label(label, original)
    return label


@lru_cache(maxsize=4096)
def normalize_domain(text: str) -> str:
    """The canonical form of a DNS domain name (lower-case A-labels, no trailing dot), or
    InvalidName naming the rule it breaks. An IP address is refused: it is not a domain."""
    name = text.strip()
    if name.endswith(".") and not name.endswith(".."):
        name = name[:-1]
    if not name:
        raise InvalidName(text, RULE_REQUIRED)
    if ip_literal(name) is not None:
        raise InvalidName(text, RULE_IP)
    if len(name) > 4 * MAX_DOMAIN:  # far past any mapping that could shrink it back
        raise InvalidName(text[:64] + "…", RULE_NAME_LENGTH)
    try:
        mapped = idna.uts46_remap(name, std3_rules=False, transitional=False)
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidName(text, f"contains a character no domain name may have: {exc} (UTS #46)") from None
    if ip_literal(mapped) is not None:  # full-width digits map to an address
        raise InvalidName(text, RULE_IP)
    labels = [_a_label(label, text) for label in mapped.split(".")]
    ascii_name = ".".join(labels)
    if len(ascii_name) > MAX_DOMAIN:
        raise InvalidName(text, RULE_NAME_LENGTH)
    if labels[-1].isdigit():
        raise InvalidName(text, RULE_NUMERIC_TLD)
    return ascii_name


def fast_domain(domain: str) -> str:
    """Hot-path domain folding for stanza addresses: lower-case ASCII, IDNA otherwise.

    Returns ``""`` for a domain that cannot be normalised (it then matches nothing).
    """
    if domain.isascii():
        return domain.lower()
    try:
        return normalize_domain(domain)
    except InvalidName:
        return ""


def normalize_host(text: str, *, allow_ip: bool = False) -> str:
    """A host to connect to or bind: a domain, or with ``allow_ip`` an IP address (returned
    in its compressed form, an IPv6 address without brackets)."""
    address = ip_literal(text)
    if address is not None:
        if not allow_ip:
            raise InvalidName(text, RULE_IP)
        return str(address)
    return normalize_domain(text)


def normalize_certificate_name(text: str) -> str:
    """A subjectAltName dNSName: a domain, or ``*.`` + a domain of at least two labels."""
    name = text.strip()
    if name.startswith("*."):
        rest = name[2:]
        if "*" in rest:
            raise InvalidName(text, RULE_WILDCARD)
        try:
            domain = normalize_domain(rest)
        except InvalidName as exc:
            raise InvalidName(text, exc.rule) from None
        if "." not in domain:
            raise InvalidName(text, RULE_WILDCARD_DEPTH)
        return f"*.{domain}"
    if "*" in name:
        raise InvalidName(text, RULE_WILDCARD)
    return normalize_domain(name)


def parse_port(text: str, original: str) -> int:
    """A TCP/UDP port 1..65535 written in decimal digits."""
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise InvalidName(original, RULE_PORT)
    return int(text)


def split_host_port(text: str) -> tuple[str, str | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` → (host, port text or None); a bare
    IPv6 address (more than one colon, no brackets) is a host without port."""
    raw = text.strip()
    if raw.startswith("["):
        host, bracket, rest = raw[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise InvalidName(text, "an IPv6 address with a port is written [address]:port")
        return host, rest[1:] if rest else None
    if raw.count(":") == 1:
        host, _, port = raw.partition(":")
        return host, port
    return raw, None


def listen_address(value: str) -> tuple[str, int]:
    """A configured listen or connect address, ``host:port`` or ``[v6]:port`` → (host without
    brackets, port 0–65535), as written (not normalized); InvalidName when it is not one."""
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidName(value, "not a host:port address")
    return host, int(port)


def normalize_host_port(
    text: str, *, default_port: int | None = None, allow_ip: bool = False
) -> tuple[str, int]:
    """``host[:port]`` → (canonical host, port). Without a port, ``default_port`` (or InvalidName
    when there is none)."""
    host, port = split_host_port(text)
    if port is None:
        if default_port is None:
            raise InvalidName(text, "a port is required: host:port")
        number = default_port
    else:
        number = parse_port(port, text)
    if not host:
        raise InvalidName(text, "a host name is required before the port")
    try:
        return normalize_host(host, allow_ip=allow_ip), number
    except InvalidName as exc:
        raise InvalidName(text, exc.rule) from None


# -- JIDs and SIP addresses ---------------------------------------------------------------------

_USERNAME = get_profile("UsernameCaseMapped")
_OPAQUE = get_profile("OpaqueString")

#: precis_i18n's reasons, said in words.
_PRECIS_REASONS: Final = {
    "DISALLOWED/empty": "cannot be empty",
    "DISALLOWED/spaces": "cannot contain spaces",
    "DISALLOWED/controls": "cannot contain control characters",
    "DISALLOWED/has_compat": "cannot contain compatibility characters (such as ℌ or ﬁ)",
    "DISALLOWED/symbols": "cannot contain symbols",
    "DISALLOWED/punctuation": "cannot contain this punctuation",
    "DISALLOWED/other": "cannot contain this character",
    "DISALLOWED/unassigned": "cannot contain unassigned code points",
    "DISALLOWED/bidi_rule": "mixes right-to-left and left-to-right text in a way the Bidi rule forbids",
}


def _precis(profile: object, part: str, original: str, what: str, rule: str) -> str:
    try:
        result: str = profile.enforce(part)  # type: ignore[attr-defined]
    except UnicodeError as exc:
        reason = exc.args[-1] if exc.args else ""
        words = _PRECIS_REASONS.get(reason, f"is refused ({reason})")
        raise InvalidName(original, f"a {what} {words} ({rule})") from None
    if len(result.encode("utf-8")) > MAX_JID_PART:
        raise InvalidName(original, f"a {what} is at most {MAX_JID_PART} octets (RFC 7622 §3.1)")
    return result


def normalize_localpart(local: str, original: str | None = None) -> str:
    """A JID localpart per RFC 7622 §3.3 (PRECIS UsernameCaseMapped + the excluded characters)."""
    original = local if original is None else original
    if local.isascii() and local.isprintable() and " " not in local and 0 < len(local) <= MAX_JID_PART:
        # printable ASCII is all IdentifierClass (RFC 8264 §9.11) and width mapping and NFC leave
        # it as it is: the profile comes down to lower-casing (as fast as the old approximation)
        result = local.lower()
    else:
        result = _precis(_USERNAME, local, original, "user part", "RFC 7622 §3.3, PRECIS UsernameCaseMapped")
    bad = sorted(set(result) & JID_LOCAL_EXCLUDED)
    if bad:
        raise InvalidName(
            original, f"a user part cannot contain {' '.join(bad)} (RFC 7622 §3.3.1)"
        )
    return result


def normalize_resourcepart(resource: str, original: str | None = None) -> str:
    """A JID resourcepart per RFC 7622 §3.4 (PRECIS OpaqueString)."""
    original = resource if original is None else original
    return _precis(_OPAQUE, resource, original, "resource", "RFC 7622 §3.4, PRECIS OpaqueString")


def _domainpart(domain: str, original: str) -> str:
    try:
        return normalize_domain(domain)
    except InvalidName as exc:
        raise InvalidName(original, f"domain part: {exc.rule}") from None


def normalize_jid(text: str) -> str:
    """A full or bare JID (RFC 7622 §3.2: the resource starts at the first ``/``, the localpart
    ends at the first ``@`` before it) in canonical form."""
    raw = text.strip()
    if raw.startswith("xmpp:"):
        raw = raw[5:]
    bare, slash, resource = raw.partition("/")
    local, at, domain = bare.partition("@")
    if not at:
        local, domain = "", bare
    elif not local:
        raise InvalidName(text, "a user part cannot be empty: write domain or user@domain (RFC 7622 §3.3)")
    result = _domainpart(domain, text)
    if local:
        result = f"{normalize_localpart(local, text)}@{result}"
    if slash:
        result = f"{result}/{normalize_resourcepart(resource, text)}"
    return result


def normalize_bare_jid(text: str) -> str:
    """``User@Gmail.COM`` → ``user@gmail.com``; a resource is refused (contacts are bare JIDs)."""
    raw = text.strip()
    if raw.startswith("xmpp:"):
        raw = raw[5:]
    if "/" in raw:
        raise InvalidName(text, "must be a bare JID user@domain, without /resource")
    local, at, domain = raw.partition("@")
    if not at:
        raise InvalidName(text, "is not a JID of the form user@domain")
    if not local:
        raise InvalidName(text, "a user part cannot be empty (RFC 7622 §3.3)")
    return f"{normalize_localpart(local, text)}@{_domainpart(domain, text)}"


def normalize_sip_address(text: str) -> str:
    """``Alice@Contoso.test`` or ``sip:alice@contoso.test`` → ``sip:alice@contoso.test``."""
    raw = text.strip()
    if raw[:4].lower() == "sip:":
        raw = raw[4:]
    local, at, domain = raw.rpartition("@")
    if not at:
        raise InvalidName(text, "is not a SIP address of the form sip:user@domain")
    if not local:
        raise InvalidName(text, "a user part cannot be empty")
    return f"sip:{normalize_localpart(local, text)}@{_domainpart(domain, text)}"
