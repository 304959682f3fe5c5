"""Fuzz harness (e): the PIDF parser of the gateway (``edgeproxy.gateway.translate.parse_pidf``,
what presence.py does with PUBLISH bodies and presence_watch.py with NOTIFY bodies of type
application/pidf+xml).

Invariants (translate.py): ``parse_pidf`` raises only :class:`TranslationError` (too large, a
DTD, malformed, not PIDF); an accepted document never had a DTD (entity expansion is refused
whatever the encoding); the result is one of the SPEC §7 availability values with a matching
show; the XMPP ``<presence/>`` built from it (``presence_element``, with the note as status)
serialises to XML our own tokenizer accepts.
"""

from __future__ import annotations

import contextlib
import xml.parsers.expat

from _harness import Finding, Known, harness

from edgeproxy.gateway.translate import (
    TranslationError,
    parse_pidf,
    presence_element,
    show_for_availability,
)
from edgeproxy.tokenizer import Tokenizer
from edgeproxy.xmpp.serialize import serialize

MAX_LEN = 8192
EXPECTED: tuple[type[BaseException], ...] = (TranslationError,)
# Fixed (604abf6): a UTF-16 document hid its DTD from the byte search (_no_dtd_accepted).
KNOWN: tuple[Known, ...] = ()
HEADER = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" version='1.0'>"
)


def _had_dtd(body: bytes) -> bool:
    seen = False

    def doctype(*_args: object) -> None:
        nonlocal seen
        seen = True

    parser = xml.parsers.expat.ParserCreate()
    parser.StartDoctypeDeclHandler = doctype
    with contextlib.suppress(xml.parsers.expat.ExpatError, ValueError):
        parser.Parse(body, True)
    return seen


def _no_dtd_accepted(body: bytes) -> None:
    if _had_dtd(body):
        raise Finding(f"parse_pidf accepted a document with a DTD: {body[:200]!r}")


@harness(EXPECTED, KNOWN)
def check(data: bytes) -> None:
    info = parse_pidf(data)
    _no_dtd_accepted(data)
    if show_for_availability(info.availability) != (info.available, info.show):
        raise Finding(f"inconsistent PresenceInfo {info!r}")
    element = presence_element("b@fabrikam.test", "a@contoso.test", info, include_status=True)
    raw = serialize(element)
    tokens = Tokenizer().feed(HEADER + raw)
    if len(tokens) != 2:
        raise Finding(f"presence from PIDF is not one stanza: {raw!r}")


TestOneInput = check

_PIDF = (
    "<?xml version='1.0' encoding='UTF-8'?>"
    "<presence xmlns='urn:ietf:params:xml:ns:pidf' xmlns:dm='urn:ietf:params:xml:ns:pidf:data-model'"
    " xmlns:rpid='urn:ietf:params:xml:ns:pidf:rpid' entity='sip:alice@contoso.test'>"
    "<tuple id='t1'><status><basic>open</basic></status></tuple>"
    "<dm:person id='p1'><rpid:activities><rpid:busy/></rpid:activities>"
    "<dm:note>In a meeting &amp; more</dm:note></dm:person>"
    "<note xml:lang='en'>Busy</note></presence>"
)
SEEDS = [
    _PIDF.encode(),
    _PIDF.replace("open", "closed").encode(),
    b"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:a@b'><tuple id='x'><status>"
    b"<basic>open</basic></status><note>&#x263a; away</note></tuple></presence>",
    b"\xff\xfe" + _PIDF.replace("UTF-8", "UTF-16").encode("utf-16-le"),
    b"<?xml version='1.0' encoding='ISO-8859-1'?><presence xmlns='urn:ietf:params:xml:ns:pidf'>"
    b"<note>caf\xe9</note></presence>",
    # found by review, kept as a seed so that the DTD invariant keeps being exercised
    b"\xff\xfe"
    + (
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE p [<!ENTITY a "xxxxxxxxxx">]>'
        '<presence xmlns="urn:ietf:params:xml:ns:pidf"><note>&a;</note></presence>'
    ).encode("utf-16-le"),
]
