"""One stanza on its own: parse its raw bytes, and the routing parts of its addresses.

Theory of operation
-------------------
A stanza that travels without its stream (over the loopback channel, in a queue) is kept as the
exact bytes the tokenizer checked. :func:`read_stanza` feeds them to a fresh tokenizer behind a
``jabber:server`` stream header (RFC 6120 §4.8.3: the default namespace of server-to-server
streams) and returns the tokenizer's :class:`~edgeproxy.tokenizer.Stanza` (its routing view,
its ``raw`` bytes, ``element()`` for the tree); :func:`parse_stanza` is its element.

:func:`bare_of`, :func:`domainpart` and :func:`domain_of` split a JID string as RFC 7622 §3.1
does — the resourcepart is everything after the first ``/`` (so it may hold ``@`` and ``/``), the
localpart everything before the first ``@`` of what remains — with no PRECIS preparation and no
validation: they give the keys of routing, queues and telemetry on the hot path.
:func:`domain_of` lower-cases (ASCII domains compare that way, docs/spec.md §2); :func:`domainpart`
leaves the text as written, for callers that fold it themselves (IDNA:
``edgeproxy.names.fast_domain``). :func:`edgeproxy.xmpp.jid.parse_jid` prepares and
validates a JID.
"""

from __future__ import annotations

from typing import Final

from edgeproxy.tokenizer import Element, Stanza, Tokenizer

__all__ = [
    "NotOneStanza",
    "bare_of",
    "domain_of",
    "domainpart",
    "parse_stanza",
    "read_stanza",
    "without_status",
]

#: The stream context a stanza's bytes are parsed in (RFC 6120 §4.8.3, §4.8.5).
STREAM_HEADER: Final = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>"
)


class NotOneStanza(ValueError):
    """The bytes end before their first stanza is complete (or hold none)."""


def read_stanza(raw: bytes) -> Stanza:
    """The first stanza in ``raw``, as the tokenizer sees it; ``stanza.raw == raw`` says that
    ``raw`` is that stanza and nothing else (then it may be forwarded as it is).

    Raises ``TokenizerError`` when ``raw`` is not well-formed, :class:`NotOneStanza` when it
    holds no complete stanza.
    """
    global _primed
    tokenizer, _primed = _primed, None  # taken: an error leaves it behind, a new one is made
    if tokenizer is None:
        tokenizer = Tokenizer()
        tokenizer.feed(STREAM_HEADER)
    tokens = tokenizer.feed(raw)
    for token in tokens:
        if isinstance(token, Stanza):
            if (
                len(tokens) == 1
                and not tokenizer.buffered_bytes
                and not tokenizer.halted
                and tokenizer.depth == 1
            ):
                _primed = tokenizer  # between two stanzas, nothing kept: ready for the next
            return token
    raise NotOneStanza("not one complete stanza")


#: A tokenizer inside a ``jabber:server`` stream header, between two stanzas, kept by
#: :func:`read_stanza` for the next call (a new one and its header cost ~1 µs per stanza).
_primed: Tokenizer | None = None


def parse_stanza(raw: bytes) -> Element:
    """The element of the first stanza in ``raw`` (errors as :func:`read_stanza`)."""
    return read_stanza(raw).element()


def without_status(element: Element) -> Element:
    """The stanza without its top-level ``<status/>`` notes (the policy's transformation for
    partners that must not see them, docs/spec.md §4)."""
    kept = [c for c in element.children if not (isinstance(c, Element) and c.name == "status")]
    return Element(element.name, element.namespace, dict(element.attrs), kept)


def bare_of(jid: str) -> str:
    """``local@domain`` or ``domain``: the JID without its resourcepart, as written."""
    return jid.partition("/")[0]


def domainpart(jid: str) -> str:
    """The domainpart of a JID string, as written (not lower-cased, not IDNA-mapped)."""
    rest = bare_of(jid)
    return rest[rest.find("@") + 1 :]


def domain_of(jid: str | None) -> str:
    """The lower-cased domainpart of a JID string (``""`` for None): the key links, queues and
    telemetry use for a stanza address."""
    return domainpart(jid or "").lower()
