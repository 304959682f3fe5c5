"""The stanzas a scenario sends: a deterministic sequence, identical for every target (fairness).

Stanza ``n`` uses mix entry ``cycle[n % len(cycle)]`` where the cycle repeats each entry ``weight``
times, and comes from user ``u<n % users>`` of its stream's domain. Ids are ``lt<n>`` so that
observers can find them in raw bytes (:data:`edgeproxy.loadtest.accounting.ID_PATTERN`).
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from edgeproxy.loadtest.scenario import MixEntry, StanzaKind

NS_PING = "urn:xmpp:ping"


def mix_cycle(mix: tuple[MixEntry, ...]) -> tuple[MixEntry, ...]:
    """Each entry repeated ``weight`` times, interleaved round-robin (a smooth mix)."""
    cycle: list[MixEntry] = []
    remaining = {i: entry.weight for i, entry in enumerate(mix)}
    while remaining:
        for i in list(remaining):
            cycle.append(mix[i])
            remaining[i] -= 1
            if not remaining[i]:
                del remaining[i]
    return tuple(cycle)


def stanza_id(n: int) -> str:
    return f"lt{n}"


def build_stanza(n: int, entry: MixEntry, from_jid: str) -> bytes:
    """The raw ``jabber:server`` bytes of stanza ``n``."""
    sid, frm, to = stanza_id(n), quoteattr(from_jid), quoteattr(entry.to)
    head = f"from={frm} to={to} id='{sid}'"
    body = escape(f"load test {n} ".ljust(entry.body_bytes, "x")[: max(entry.body_bytes, 1)])
    match entry.kind:
        case StanzaKind.MESSAGE:
            text = f"<message {head} type='chat'><body>{body}</body></message>"
        case StanzaKind.HEADLINE:
            text = f"<message {head} type='headline'><body>{body}</body></message>"
        case StanzaKind.PRESENCE:
            text = f"<presence {head}><status>{body}</status></presence>"
        case StanzaKind.SUBSCRIBE:
            text = f"<presence {head} type='subscribe'/>"
        case StanzaKind.IQ:
            text = f"<iq {head} type='get'><ping xmlns='{NS_PING}'/></iq>"
    return text.encode()
