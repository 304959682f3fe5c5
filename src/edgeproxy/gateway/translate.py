"""XMPP ⇄ SIP translation (pure): addresses, errors, instant messages, presence (SPEC §7).

Theory of operation
-------------------
Nothing here does I/O or keeps state; the gateway service calls these functions with elements
and SIP messages and sends what they return.

Addresses (RFC 7247 §5, XEP-0106)
    A bare JID ``local@domain`` is the SIP AoR ``sip:local@domain``. XMPP localparts can carry
    XEP-0106 escapes (``\\20`` for space, ``\\40`` for ``@`` …) for characters a localpart may
    not contain; SIP user parts percent-encode instead (RFC 3261 §25.1). XMPP→SIP unescapes
    XEP-0106 and percent-encodes what the SIP ``user`` rule does not allow, as UTF-8; SIP→XMPP
    percent-decodes and XEP-0106-escapes the ten characters a localpart cannot hold, then prepares
    the result (RFC 7622). A full JID's resource is the GRUU parameter ``gr`` (RFC 5627 §3.2,
    RFC 7247 §5.3), percent-encoded as a URI parameter value.

Errors (RFC 7247 §8; SPEC §7 lists the pairs that must hold both ways)
    ``SIP_FOR_CONDITION`` (XMPP condition → SIP status) and ``CONDITION_FOR_SIP`` (SIP status →
    XMPP condition). Codes not in the table map by class (**Decision**): 3xx → ``redirect``,
    other 4xx → ``bad-request``, 5xx → ``service-unavailable``... except 500 and 501, 6xx →
    ``service-unavailable``.

Instant messages (RFC 7572)
    ``<message type='chat|normal'>`` with a ``<body>`` ⇄ SIP MESSAGE (RFC 3428) with
    ``Content-Type: text/plain;charset=UTF-8``; ``<subject>`` ⇄ ``Subject``; the language of the
    body (its ``xml:lang`` or the stanza's) ⇄ ``Content-Language`` (RFC 7572 §5, §6). A MESSAGE
    whose complete SIP form would exceed the page-mode ceiling (RFC 3428 §8: 1300 bytes when the
    path is not known to be congestion-controlled) is refused with ``policy-violation``, never
    truncated (SPEC §7). Messages without a body (chat states, receipts) have no SIP form.
    Groupchat is refused with ``service-unavailable`` (SPEC §1).

Presence (RFC 8048; PIDF RFC 3863, RPID RFC 4480)
    ``subscribe`` → SUBSCRIBE (Event: presence) with ``Expires`` = the subscription refresh
    interval; ``unsubscribe`` and ``probe`` → SUBSCRIBE with ``Expires: 0`` (RFC 8048 §4.1, §4.5:
    a probe is a one-time fetch). Availability (SPEC §7, Lync values): XMPP show → Lync value →
    RPID activity in the PIDF; PIDF basic/activities → Lync value → XMPP show. PIDF ``<note>`` ⇄
    ``<status/>``; the note is omitted for partners that must not see it (the policy engine's
    decision, passed in as ``include_note``).
"""

from __future__ import annotations

import pyexpat
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from typing import Final
from urllib.parse import quote, unquote

from edgeproxy.gateway.sip.message import OutgoingRequest, SipRequest
from edgeproxy.gateway.sip.uri import (
    PARAM_SAFE,
    SipUri,
    parse_name_addr,
    parse_uri,
    quote_user,
    unquote_user,
)
from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.jid import InvalidJid, parse_jid
from edgeproxy.xmpp.namespaces import NS_XML

#: RFC 3428 §8: MESSAGE requests over a path not known to be congestion-controlled must stay
#: within 1300 bytes (200 under the IPv4 minimum MTU of 1500).
PAGE_MODE_CEILING: Final = 1300
#: SPEC §3: the gateway refreshes SIP presence subscriptions every 8 hours by default.
DEFAULT_SUBSCRIPTION_EXPIRES: Final = 28800
XML_LANG: Final = f"{{{NS_XML}}}lang"
NS_PIDF: Final = "urn:ietf:params:xml:ns:pidf"
NS_RPID: Final = "urn:ietf:params:xml:ns:pidf:rpid"
NS_DM: Final = "urn:ietf:params:xml:ns:pidf:data-model"
PIDF_CONTENT_TYPE: Final = "application/pidf+xml"
IM_CONTENT_TYPE: Final = "text/plain;charset=UTF-8"
#: A PIDF document larger than this is refused (RPID documents from Lync are about 2 KiB).
MAX_PIDF_BYTES: Final = 16384


class TranslationError(ValueError):
    """The stanza or SIP request has no acceptable translation.

    ``condition`` is the XMPP stanza error for the XMPP sender; ``sip_status`` the SIP response
    for a SIP sender.
    """

    def __init__(self, message: str, condition: str, sip_status: int | None = None) -> None:
        super().__init__(message)
        self.condition = condition
        self.sip_status = (
            sip_status if sip_status is not None else SIP_FOR_CONDITION.get(condition, 400)
        )


# -- addresses ----------------------------------------------------------------------------------

# XEP-0106 §3.2: the characters a localpart cannot contain, and their escapes.
_XEP0106: Final = {
    " ": "\\20",
    '"': "\\22",
    "&": "\\26",
    "'": "\\27",
    "/": "\\2f",
    ":": "\\3a",
    "<": "\\3c",
    ">": "\\3e",
    "@": "\\40",
    "\\": "\\5c",
}
_XEP0106_REVERSE: Final = {v: k for k, v in _XEP0106.items()}


def xep0106_escape(text: str) -> str:
    """Escape a string for use as a localpart (XEP-0106 §4.2).

    A backslash is escaped only where it would otherwise start a valid escape sequence.
    """
    out: list[str] = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\5c" if text[i : i + 3].lower() in _XEP0106_REVERSE else "\\")
        elif ch in _XEP0106:
            out.append(_XEP0106[ch])
        else:
            out.append(ch)
    return "".join(out)


def xep0106_unescape(text: str) -> str:
    """Undo XEP-0106 escaping (§4.3): only the ten defined sequences are decoded."""
    out: list[str] = []
    i = 0
    while i < len(text):
        seq = text[i : i + 3].lower()
        if text[i] == "\\" and seq in _XEP0106_REVERSE:
            out.append(_XEP0106_REVERSE[seq])
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@lru_cache(maxsize=4096)
def jid_to_sip_uri(jid: str) -> str:
    """``local@domain[/resource]`` → ``sip:local@domain[;gr=resource]`` (RFC 7247 §5.2).

    Pure, and called several times per message with the same few addresses: memoized (a
    bounded LRU; an invalid JID raises each time, exceptions are not cached).
    """
    try:
        parsed = parse_jid(jid)
    except InvalidJid as exc:
        raise TranslationError(f"invalid JID {jid!r}: {exc}", "jid-malformed") from None
    user = ""
    if parsed.localpart is not None:
        user = quote_user(xep0106_unescape(parsed.localpart)) + "@"
    uri = f"sip:{user}{parsed.domain}"
    if parsed.resource is not None:
        uri += ";gr=" + quote(parsed.resource, safe=PARAM_SAFE)
    return uri


#: ``parse_jid`` memoized (``Jid`` is frozen; an invalid JID raises each time).
parse_jid_memo: Final = lru_cache(maxsize=4096)(parse_jid)


@lru_cache(maxsize=4096)
def bare_sip_uri(jid: str) -> str:
    """The AoR of a JID's bare form: ``jid_to_sip_uri`` of ``parse_jid(jid).bare`` (memoized)."""
    try:
        bare = str(parse_jid(jid).bare)
    except InvalidJid as exc:
        raise TranslationError(f"invalid JID {jid!r}: {exc}", "jid-malformed") from None
    return jid_to_sip_uri(bare)


@lru_cache(maxsize=4096)
def sip_uri_to_jid(uri: str) -> str:
    """``sip:user@domain[;gr=x]`` → ``user@domain[/x]`` (RFC 7247 §5.3), prepared (memoized:
    pure, and a SIP user's few addresses come back with every MESSAGE)."""
    try:
        parsed = parse_uri(uri)
        local = xep0106_escape(unquote_user(parsed.user)) if parsed.user else None
        gruu = parsed.param("gr")
        text = f"{local}@{parsed.host}" if local is not None else parsed.host
        if gruu:
            text += "/" + unquote(gruu)
        return str(parse_jid(text))
    except (ValueError, InvalidJid) as exc:
        raise TranslationError(f"no JID for {uri!r}: {exc}", "jid-malformed", 400) from None


# -- errors ---------------------------------------------------------------------------------------

#: XMPP stanza error condition → SIP response (RFC 7247 §8.1; SPEC §7 pairs).
SIP_FOR_CONDITION: Final = {
    "bad-request": 400,
    "conflict": 400,
    "feature-not-implemented": 501,
    "forbidden": 403,
    "gone": 410,
    "internal-server-error": 500,
    "item-not-found": 404,
    "jid-malformed": 400,
    "not-acceptable": 406,
    "not-allowed": 405,
    "not-authorized": 401,
    "policy-violation": 403,
    "recipient-unavailable": 480,
    "redirect": 302,
    "registration-required": 400,
    "remote-server-not-found": 404,
    "remote-server-timeout": 408,
    "resource-constraint": 500,
    "service-unavailable": 503,
    "subscription-required": 400,
    "undefined-condition": 400,
    "unexpected-request": 491,
}

#: SIP response → XMPP stanza error condition (RFC 7247 §8.2; SPEC §7 pairs).
CONDITION_FOR_SIP: Final = {
    400: "bad-request",
    401: "not-authorized",
    402: "bad-request",
    403: "forbidden",
    404: "item-not-found",
    405: "not-allowed",
    406: "not-acceptable",
    407: "not-authorized",
    408: "remote-server-timeout",
    410: "gone",
    413: "policy-violation",
    414: "jid-malformed",
    415: "bad-request",
    416: "bad-request",
    420: "bad-request",
    421: "bad-request",
    423: "bad-request",
    430: "recipient-unavailable",
    439: "recipient-unavailable",
    440: "policy-violation",
    480: "recipient-unavailable",
    481: "item-not-found",
    482: "not-acceptable",
    483: "not-acceptable",
    484: "item-not-found",
    485: "item-not-found",
    486: "recipient-unavailable",
    487: "service-unavailable",
    488: "not-acceptable",
    489: "policy-violation",
    491: "service-unavailable",
    493: "service-unavailable",
    500: "internal-server-error",
    501: "feature-not-implemented",
    502: "remote-server-not-found",
    503: "service-unavailable",
    504: "remote-server-timeout",
    505: "not-acceptable",
    513: "policy-violation",
    600: "service-unavailable",
    603: "service-unavailable",
    604: "item-not-found",
    606: "not-acceptable",
}


def condition_for_sip_status(status: int) -> str:
    if status in CONDITION_FOR_SIP:
        return CONDITION_FOR_SIP[status]
    if 300 <= status < 400:
        return "redirect"
    if 400 <= status < 500:
        return "bad-request"
    return "service-unavailable"


def sip_status_for_condition(condition: str) -> int:
    return SIP_FOR_CONDITION.get(condition, 400)


# -- instant messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SipContext:
    """Per-request values the SIP layer chooses; kept out so translation stays pure.
    ``request_uri``: where the request goes (a registered contact, §16.5); None: the To."""

    call_id: str
    from_tag: str
    branch: str
    via_host: str  # "127.0.0.1:5060"
    transport: str = "UDP"
    cseq: int = 1
    request_uri: str | None = None


def _body_for(message: Element) -> tuple[str, str | None] | None:
    """The body to send and its language: the one in the stanza's language, else the first."""
    bodies = message.findall("body", message.namespace)
    if not bodies:
        return None
    default_lang = message.get(XML_LANG)
    for body in bodies:
        lang = body.get(XML_LANG, default_lang)
        if lang == default_lang:
            return body.text, lang
    first = bodies[0]
    return first.text, first.get(XML_LANG, default_lang)


def message_to_sip(
    message: Element, ctx: SipContext, *, ceiling: int = PAGE_MODE_CEILING
) -> OutgoingRequest | None:
    """XMPP message → SIP MESSAGE, as the bytes to send (one template, no header objects);
    None when nothing is to be sent (no body, or an error). The header fields, in order: Via,
    Max-Forwards, From, To, Call-ID, CSeq, Contact (a full JID's GRUU), Subject,
    Content-Language, Content-Type, Content-Length."""
    mtype = message.get("type", "normal")
    if mtype == "error":
        return None
    if mtype == "groupchat":
        raise TranslationError("groupchat is not federated", "service-unavailable")
    if mtype not in ("chat", "normal", "headline"):
        raise TranslationError(f"message type {mtype!r}", "bad-request")
    chosen = _body_for(message)
    if chosen is None:
        return None
    text, lang = chosen
    from_text, to_text = message.get("from") or "", message.get("to") or ""
    from_uri = jid_to_sip_uri(from_text)
    to_uri = jid_to_sip_uri(str(parse_jid_memo(to_text)))  # InvalidJid for a bad 'to', as before
    optional = f"Contact: <{from_uri}>\r\n" if from_uri.find(";gr=") >= 0 else ""
    subject = message.find("subject", message.namespace)
    if subject is not None and subject.text:
        optional += f"Subject: {_header_safe(subject.text)}\r\n"
    if lang:
        optional += f"Content-Language: {_header_safe(lang)}\r\n"
    body = text.encode("utf-8")
    data = (
        f"MESSAGE {ctx.request_uri or to_uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{ctx.transport} {ctx.via_host};branch={ctx.branch};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <{bare_sip_uri(from_text)}>;tag={ctx.from_tag}\r\n"
        f"To: <{bare_sip_uri(to_text)}>\r\n"
        f"Call-ID: {ctx.call_id}\r\n"
        f"CSeq: {ctx.cseq} MESSAGE\r\n"
        f"{optional}"
        f"Content-Type: {IM_CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    if len(data) > ceiling:
        raise TranslationError(
            f"MESSAGE of {len(data)} bytes exceeds the page-mode ceiling of {ceiling}",
            "policy-violation",
        )
    return OutgoingRequest(data, ctx.branch, "MESSAGE")


def _header_safe(text: str) -> str:
    """A header value cannot hold CR/LF (RFC 3261 §7.3.1): fold them to spaces."""
    return " ".join(text.split())


def _content_type_is_text_plain(value: str | None) -> bool:
    if value is None:
        return True  # no Content-Type: accepted as text/plain (**Decision**, lenient)
    media, *params = [p.strip().lower() for p in value.split(";")]
    if media != "text/plain":
        return False
    for param in params:
        key, _, charset = param.partition("=")
        if key.strip() == "charset" and charset.strip().strip('"') not in ("utf-8", "us-ascii"):
            return False
    return True


def sip_message_to_xmpp(
    request: SipRequest, *, stanza_id: str, namespace: str = "jabber:server"
) -> Element:
    """SIP MESSAGE → ``<message type='chat'>`` (RFC 7572 §6)."""
    if not _content_type_is_text_plain(request.headers.get("Content-Type")):
        raise TranslationError(
            "only text/plain MESSAGE bodies are translated", "not-acceptable", 415
        )
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise TranslationError("MESSAGE body is not UTF-8", "bad-request", 400) from None
    from_na = parse_name_addr(request.headers.get("From") or "")
    from_uri = from_na.uri
    contact = request.headers.get("Contact")
    if contact:
        contact_uri = parse_name_addr(contact).uri
        if contact_uri.param("gr") is not None and contact_uri.aor == from_uri.aor:
            from_uri = contact_uri
    attrs = {
        "from": sip_uri_to_jid(_aor_with_gruu(from_uri)),
        "to": sip_uri_to_jid(_aor_with_gruu(parse_uri(request.uri))),
        "type": "chat",
        "id": stanza_id,
    }
    lang = request.headers.get("Content-Language")
    if lang:
        attrs[XML_LANG] = lang.split(",")[0].strip()
    children: list[Element | str] = []
    subject = request.headers.get("Subject")
    if subject:
        children.append(Element("subject", namespace, {}, [subject]))
    children.append(Element("body", namespace, {}, [text]))
    return Element("message", namespace, attrs, children)


def _aor_with_gruu(uri: SipUri) -> str:
    gr = uri.param("gr")
    base = uri.aor
    return f"{base};gr={gr}" if gr else base


# -- presence --------------------------------------------------------------------------------------

#: SPEC §7, XMPP → Lync availability.
LYNC_FOR_SHOW: Final = {None: 3500, "chat": 3500, "away": 15500, "xa": 15500, "dnd": 6500}
LYNC_OFFLINE: Final = 18500


def lync_availability(available: bool, show: str | None) -> int:
    """XMPP presence → Lync availability value (SPEC §7)."""
    if not available:
        return LYNC_OFFLINE
    return LYNC_FOR_SHOW.get(show, 3500)


def show_for_availability(value: int) -> tuple[bool, str | None]:
    """Lync availability → (available, show) (SPEC §7 ranges)."""
    if value < 6000:
        return True, None
    if value < 12000:
        return True, "dnd"
    if value < 15000:
        return True, "away"
    if value < 18000:
        return True, "xa"
    return False, None


#: Lync availability → RPID activity (RFC 4480 §3.2); Available has none.
_ACTIVITY_FOR_SHOW: Final = {"away": "away", "xa": "away", "dnd": "busy"}
#: RPID activity → Lync availability (reverse direction, SPEC §7 values).
_LYNC_FOR_ACTIVITY: Final = {
    "away": 15500,
    "busy": 6500,
    "on-the-phone": 6500,
    "meeting": 6500,
    "appointment": 6500,
    "permanent-absence": 15500,
    "vacation": 15500,
    "sleeping": 15500,
}


@dataclass(frozen=True, slots=True)
class PresenceInfo:
    available: bool
    show: str | None
    note: str | None
    availability: int


def presence_info(presence: Element) -> PresenceInfo:
    """The availability an XMPP ``<presence/>`` carries (available or ``type='unavailable'``)."""
    available = presence.get("type") != "unavailable"
    show_el = presence.find("show", presence.namespace)
    show = show_el.text.strip() if show_el is not None else None
    if show not in (None, "chat", "away", "xa", "dnd"):
        show = None
    status = presence.find("status", presence.namespace)
    note = status.text if status is not None and status.text else None
    return PresenceInfo(
        available, show if available else None, note, lync_availability(available, show)
    )


def presence_to_pidf(entity: str, info: PresenceInfo, *, include_note: bool) -> bytes:
    """A PIDF document (RFC 3863) with an RPID activity (RFC 4480) for the show value."""
    ET.register_namespace("", NS_PIDF)
    # The prefixes of RFC 4480's examples (``dm:``, ``rpid:``), and empty elements written
    # ``<rpid:busy/>``: namespace-aware readers do not care, but UAs that match the text do
    # (baresip 1.0.0 looks for ``<rpid:busy/>``, ``<rpid:away/>``, ``<rpid:on-the-phone/>``).
    ET.register_namespace("dm", NS_DM)
    ET.register_namespace("rpid", NS_RPID)
    root = ET.Element(f"{{{NS_PIDF}}}presence", {"entity": entity})
    tuple_el = ET.SubElement(root, f"{{{NS_PIDF}}}tuple", {"id": "xmpp"})
    status = ET.SubElement(tuple_el, f"{{{NS_PIDF}}}status")
    ET.SubElement(status, f"{{{NS_PIDF}}}basic").text = "open" if info.available else "closed"
    activity = _ACTIVITY_FOR_SHOW.get(info.show or "")
    if info.available and activity:
        person = ET.SubElement(root, f"{{{NS_DM}}}person", {"id": "p1"})
        activities = ET.SubElement(person, f"{{{NS_RPID}}}activities")
        ET.SubElement(activities, f"{{{NS_RPID}}}{activity}")
    if include_note and info.note:
        ET.SubElement(root, f"{{{NS_PIDF}}}note").text = info.note
    # " />" only ever ends an empty element (">" in text and attributes is escaped)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True).replace(b" />", b"/>")


class _DtdFound(Exception):
    pass


def _refuse_dtd(*_args: object) -> None:
    raise _DtdFound


def _declares_a_dtd(body: bytes) -> bool:
    """Whether the document has a DTD, in whatever encoding it declares (a byte search misses
    UTF-16 and single-byte encodings such as cp037: found by fuzzing, docs/fuzzing.md). expat
    stops at the DOCTYPE, before any entity is declared or expanded; other errors are left to
    the real parse."""
    checker = pyexpat.ParserCreate()
    checker.StartDoctypeDeclHandler = _refuse_dtd
    checker.EntityDeclHandler = _refuse_dtd
    try:
        checker.Parse(body, True)
    except _DtdFound:
        return True
    except (pyexpat.ExpatError, ValueError, LookupError):
        return False
    return False


def parse_pidf(body: bytes) -> PresenceInfo:
    """PIDF (+RPID) → availability. Refuses DTDs (entity expansion) and oversized documents."""
    if len(body) > MAX_PIDF_BYTES:
        raise TranslationError("PIDF document too large", "policy-violation", 413)
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body or _declares_a_dtd(body):
        raise TranslationError("PIDF with a DTD", "bad-request", 400)
    try:
        root = ET.fromstring(body)
    except (ET.ParseError, LookupError, ValueError) as exc:  # LookupError: encoding="x-unknown"
        raise TranslationError(f"malformed PIDF: {exc}", "bad-request", 400) from None
    if root.tag != f"{{{NS_PIDF}}}presence":
        raise TranslationError("not a PIDF document", "bad-request", 400)
    open_ = False
    for basic in root.iter(f"{{{NS_PIDF}}}basic"):
        if (basic.text or "").strip() == "open":
            open_ = True
    value = 3500 if open_ else LYNC_OFFLINE
    if open_:
        for activities in root.iter(f"{{{NS_RPID}}}activities"):
            for child in activities:
                local = child.tag.rpartition("}")[2]
                value = max(value, _LYNC_FOR_ACTIVITY.get(local, value))
    note = None
    for note_el in root.iter(f"{{{NS_PIDF}}}note"):
        if note_el.text and note_el.text.strip():
            note = note_el.text.strip()
            break
    if note is None:
        for note_el in root.iter(f"{{{NS_DM}}}note"):
            if note_el.text and note_el.text.strip():
                note = note_el.text.strip()
                break
    available, show = show_for_availability(value)
    return PresenceInfo(available, show, note, value)


def presence_element(
    from_jid: str,
    to_jid: str,
    info: PresenceInfo,
    *,
    include_status: bool,
    namespace: str = "jabber:server",
) -> Element:
    """XMPP ``<presence/>`` for a SIP presentity's state (status only when allowed, SPEC §4)."""
    attrs = {"from": from_jid, "to": to_jid}
    if not info.available:
        attrs["type"] = "unavailable"
    children: list[Element | str] = []
    if info.available and info.show:
        children.append(Element("show", namespace, {}, [info.show]))
    if include_status and info.note:
        children.append(Element("status", namespace, {}, [info.note]))
    return Element("presence", namespace, attrs, children)


# -- subscriptions ---------------------------------------------------------------------------------


def subscribe_expires(
    presence_type: str, *, refresh: int = DEFAULT_SUBSCRIPTION_EXPIRES
) -> int | None:
    """XMPP presence type → the SUBSCRIBE ``Expires`` (RFC 8048 §4); None: no SUBSCRIBE."""
    if presence_type == "subscribe":
        return refresh
    if presence_type in ("unsubscribe", "probe"):
        return 0
    return None


def presence_type_for_subscribe(expires: int, *, existing: bool) -> str:
    """SIP SUBSCRIBE → XMPP presence type (RFC 8048 §5): Expires 0 ends or probes."""
    if expires > 0:
        return "probe" if existing else "subscribe"
    return "unsubscribe" if existing else "probe"
