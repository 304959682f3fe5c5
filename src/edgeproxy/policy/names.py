"""Normalisation of the names the policy compares: domains, JIDs, SIP addresses.

SPEC §2: domains are compared after IDNA normalisation and lower-casing. We keep the ASCII
(A-label) form, produced by the ``idna`` package with UTS #46 mapping, so that ``Bücher.DE`` and
``xn--bcher-kva.de`` are the same partner domain. A trailing dot (fully qualified form) is dropped.

Localparts of JIDs and SIP addresses are compared lower-cased, an approximation of the PRECIS
UsernameCaseMapped profile (RFC 7622 §3.3) that is exact for the ASCII addresses Lync issues.
"""

from __future__ import annotations

from functools import lru_cache

import idna

from edgeproxy.errors import ConfigError


class InvalidName(ConfigError):
    """A domain, JID or SIP address that cannot be normalised; the message says why."""


@lru_cache(maxsize=4096)
def normalize_domain(text: str) -> str:
    """Return the canonical (A-label, lower-case) form of a domain, or raise InvalidName."""
    name = text.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise InvalidName("refused: a domain name is required")
    if len(name) > 253 and name.isascii():
        raise InvalidName(f"refused: {text!r} is not a valid domain name (too long)")
    try:
        ascii_name = idna.encode(name, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidName(f"refused: {text!r} is not a valid domain name ({exc})") from None
    if len(ascii_name) > 253:
        raise InvalidName(f"refused: {text!r} is not a valid domain name (too long)")
    return ascii_name.lower()


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


def _normalize_localpart(local: str, original: str) -> str:
    local = local.strip()
    if not local or any(c in local for c in "@/ \t\r\n\"&'<>:"):
        raise InvalidName(f"refused: {original!r} has an invalid user part")
    return local.lower()


def normalize_bare_jid(text: str) -> str:
    """``User@Gmail.COM`` → ``user@gmail.com``; a resource is refused (contacts are bare JIDs)."""
    raw = text.strip()
    if raw.startswith("xmpp:"):
        raw = raw[5:]
    if "/" in raw:
        raise InvalidName(f"refused: {text!r} must be a bare JID (no /resource)")
    local, at, domain = raw.rpartition("@")
    if not at:
        raise InvalidName(f"refused: {text!r} is not a JID of the form user@domain")
    return f"{_normalize_localpart(local, text)}@{normalize_domain(domain)}"


def normalize_sip_address(text: str) -> str:
    """``Alice@Contoso.test`` or ``sip:alice@contoso.test`` → ``sip:alice@contoso.test``."""
    raw = text.strip()
    if raw[:4].lower() == "sip:":
        raw = raw[4:]
    local, at, domain = raw.rpartition("@")
    if not at:
        raise InvalidName(f"refused: {text!r} is not a SIP address of the form sip:user@domain")
    return f"sip:{_normalize_localpart(local, text)}@{normalize_domain(domain)}"

