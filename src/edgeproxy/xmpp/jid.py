"""JIDs (RFC 7622): split, validate and prepare ``localpart@domainpart/resourcepart``.

Theory of operation
-------------------
RFC 7622 §3.1 splits a JID string in a fixed order: the resourcepart is everything after the
*first* ``/``; of what remains, the localpart is everything before the *first* ``@``; the rest is
the domainpart. Each part is then prepared and enforced:

* **domainpart** (§3.2): an IP literal (``[IPv6]`` or dotted IPv4) is kept as is; otherwise the
  trailing dot is removed and the name is mapped with IDNA2008 + UTS #46 (the ``idna`` package)
  to its lower-case A-label form, which is also the form we compare and route on
  (docs/spec.md §2). At most 1023 octets (§3.2.1); each label at most 63 octets (DNS).
* **localpart** (§3.3, PRECIS UsernameCaseMapped, RFC 8265 §3.3): we do not ship the PRECIS
  tables (``precis-i18n`` is not a dependency), so we enforce a documented *stricter subset*:
  NFC normalisation, Unicode case folding (``str.casefold``, which RFC 8265 §3.3.2 step 2 allows
  as an approximation of the Case Mapping Rule), and refusal of every character that
  UsernameCaseMapped or RFC 7622 §3.3.1 forbids or that we cannot classify cheaply: controls,
  whitespace, symbols outside letters/digits/marks/punctuation, and the twelve characters
  ``" & ' / : < > @`` plus space that RFC 7622 §3.3.1 excludes. Every localpart we accept is a
  valid UsernameCaseMapped string; some exotic valid ones (e.g. symbols) are refused.
* **resourcepart** (§3.4, PRECIS OpaqueString): NFC; no control characters; 1–1023 octets.

Errors raise :class:`InvalidJid` (a ``ProtocolError`` with condition ``jid-malformed``, the
stanza-error condition of RFC 6120 §8.3.3.8; at stream level callers choose their own condition,
e.g. ``invalid-from`` or ``improper-addressing``).
"""

from __future__ import annotations

import ipaddress
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import idna

from edgeproxy.errors import ProtocolError

__all__ = ["Jid", "InvalidJid", "parse_jid", "prepare_domain"]

MAX_PART_OCTETS: Final = 1023
_LOCAL_FORBIDDEN: Final = frozenset("\"&'/:<>@ ")
#: Unicode general categories allowed in a localpart (letters, marks, digits, punctuation).
_LOCAL_CATEGORIES: Final = frozenset(
    ("Ll", "Lu", "Lt", "Lm", "Lo", "Mn", "Mc", "Nd", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po")
)


class InvalidJid(ProtocolError):
    """A JID that RFC 7622 (or our stricter localpart subset) refuses; the message says why."""

    condition = "jid-malformed"


def _octets(part: str) -> int:
    return len(part.encode("utf-8"))


@lru_cache(maxsize=4096)
def prepare_domain(text: str) -> str:
    """The canonical domainpart: IP literal as is, else lower-case A-labels (RFC 7622 §3.2)."""
    if not text:
        raise InvalidJid("empty domainpart")
    if text.startswith("[") and text.endswith("]"):
        try:
            ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            raise InvalidJid(f"{text!r} is not an IPv6 literal") from None
        return text.lower()
    name = text[:-1] if text.endswith(".") else text
    if not name:
        raise InvalidJid("empty domainpart")
    try:
        ipaddress.IPv4Address(name)
        return name
    except ValueError:
        pass
    if name.isascii():
        ascii_name = name.lower()
        labels = ascii_name.split(".")
        if all(
            label
            and len(label) <= 63
            and label[0] != "-"
            and label[-1] != "-"
            and all(c.isalnum() or c == "-" for c in label)
            for label in labels
        ) and not any(label.startswith("xn--") for label in labels):
            return ascii_name
    try:
        ascii_name = idna.encode(name, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidJid(f"{text!r} is not a valid domainpart ({exc})") from None
    if _octets(ascii_name) > MAX_PART_OCTETS:
        raise InvalidJid("domainpart longer than 1023 octets")
    return ascii_name


def prepare_localpart(text: str) -> str:
    """The localpart in our stricter UsernameCaseMapped subset (module docstring)."""
    if not text:
        raise InvalidJid("empty localpart (a JID may not start with '@')")
    prepared = unicodedata.normalize("NFC", text.casefold())
    for char in prepared:
        if char in _LOCAL_FORBIDDEN:
            raise InvalidJid(f"localpart contains forbidden character {char!r}")
        if not char.isascii() and unicodedata.category(char) not in _LOCAL_CATEGORIES:
            raise InvalidJid(f"localpart contains disallowed character U+{ord(char):04X}")
        if char.isascii() and not (char.isalnum() or char in "!#$%()*+,-.;=?[\\]^_`{|}~"):
            raise InvalidJid(f"localpart contains disallowed character U+{ord(char):04X}")
    if _octets(prepared) > MAX_PART_OCTETS:
        raise InvalidJid("localpart longer than 1023 octets")
    return prepared


def prepare_resource(text: str) -> str:
    """The resourcepart (OpaqueString: NFC, no controls, 1–1023 octets; RFC 7622 §3.4)."""
    if not text:
        raise InvalidJid("empty resourcepart (a JID may not end with '/')")
    prepared = unicodedata.normalize("NFC", text)
    for char in prepared:
        if unicodedata.category(char) in ("Cc", "Cs", "Cn"):
            raise InvalidJid(f"resourcepart contains disallowed character U+{ord(char):04X}")
    if _octets(prepared) > MAX_PART_OCTETS:
        raise InvalidJid("resourcepart longer than 1023 octets")
    return prepared


@dataclass(frozen=True, slots=True)
class Jid:
    """A prepared JID; ``str(jid)`` is its canonical form."""

    localpart: str | None
    domain: str
    resource: str | None = None

    @property
    def bare(self) -> Jid:
        return Jid(self.localpart, self.domain)

    @property
    def is_domain(self) -> bool:
        """A domain JID (``example.com``), as used by servers (RFC 6120 §4.7.1)."""
        return self.localpart is None and self.resource is None

    def __str__(self) -> str:
        text = self.domain if self.localpart is None else f"{self.localpart}@{self.domain}"
        return text if self.resource is None else f"{text}/{self.resource}"


def parse_jid(text: str) -> Jid:
    """Split and prepare a JID string (RFC 7622 §3.1); raise :class:`InvalidJid`."""
    rest, slash, resource = text.partition("/")
    local, at, domain = rest.partition("@")
    if not at:
        local, domain = "", rest
    return Jid(
        prepare_localpart(local) if at else None,
        prepare_domain(domain),
        prepare_resource(resource) if slash else None,
    )
