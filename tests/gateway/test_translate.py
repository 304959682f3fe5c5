"""XMPP ⇄ SIP translation, table-driven (SPEC §7; RFC 7247, RFC 7572, RFC 8048)."""

from __future__ import annotations

import pytest

from edgeproxy.gateway.sip.message import Headers, SipRequest, serialize
from edgeproxy.gateway.translate import (
    CONDITION_FOR_SIP,
    PAGE_MODE_CEILING,
    SIP_FOR_CONDITION,
    XML_LANG,
    PresenceInfo,
    SipContext,
    TranslationError,
    condition_for_sip_status,
    jid_to_sip_uri,
    lync_availability,
    message_to_sip,
    parse_pidf,
    presence_element,
    presence_info,
    presence_to_pidf,
    presence_type_for_subscribe,
    show_for_availability,
    sip_message_to_xmpp,
    sip_status_for_condition,
    sip_uri_to_jid,
    subscribe_expires,
    xep0106_escape,
    xep0106_unescape,
)
from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.errors import ERROR_TYPES

NS = "jabber:server"
CTX = SipContext("call-1", "tag1", "z9hG4bK-1", "127.0.0.1:5060")


@pytest.mark.parametrize(
    ("jid", "uri"),
    [
        ("juliet@contoso.test", "sip:juliet@contoso.test"),
        ("juliet@contoso.test/balcony", "sip:juliet@contoso.test;gr=balcony"),
        ("contoso.test", "sip:contoso.test"),
        ("d\\27artagnan@musketeers.lit", "sip:d'artagnan@musketeers.lit"),
        ("john\\20smith@contoso.test", "sip:john%20smith@contoso.test"),
        ("user\\40host@contoso.test", "sip:user%40host@contoso.test"),
        ("jürgen@contoso.test", "sip:j%C3%BCrgen@contoso.test"),
        ("juliet@contoso.test/a b", "sip:juliet@contoso.test;gr=a%20b"),
    ],
)
def test_addresses_map_both_ways(jid: str, uri: str) -> None:
    assert jid_to_sip_uri(jid) == uri
    assert sip_uri_to_jid(uri) == jid


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("space cadet", "space\\20cadet"),
        ('call me "ishmael"', "call\\20me\\20\\22ishmael\\22"),
        ("at&t guy", "at\\26t\\20guy"),
        ("/.fanboy", "\\2f.fanboy"),
        ("::foo::", "\\3a\\3afoo\\3a\\3a"),
        ("<foo>", "\\3cfoo\\3e"),
        ("user@host", "user\\40host"),
        ("c:\\net", "c\\3a\\net"),
        ("c:\\5commas", "c\\3a\\5c5commas"),
    ],
)
def test_xep0106_examples_round_trip(raw: str, escaped: str) -> None:
    assert xep0106_escape(raw) == escaped
    assert xep0106_unescape(escaped) == raw


def test_sip_uri_with_port_and_parameters_maps_to_the_bare_address() -> None:
    assert (
        sip_uri_to_jid("sip:Bob@SIP.test:5070;transport=tcp") == "bob@sip.test"
    )  # RFC 7622 case-maps the localpart


def test_invalid_jid_is_refused_as_jid_malformed() -> None:
    with pytest.raises(TranslationError) as info:
        jid_to_sip_uri("a@b@c")
    assert info.value.condition == "jid-malformed"


# -- errors -------------------------------------------------------------------------------------

SPEC_PAIRS = [
    ("bad-request", 400),
    ("not-authorized", 401),
    ("forbidden", 403),
    ("item-not-found", 404),
    ("not-acceptable", 406),
    ("remote-server-timeout", 408),
    ("recipient-unavailable", 480),
    ("internal-server-error", 500),
    ("feature-not-implemented", 501),
    ("service-unavailable", 503),
]


@pytest.mark.parametrize(("condition", "status"), SPEC_PAIRS)
def test_spec_error_pairs_hold_both_ways(condition: str, status: int) -> None:
    assert sip_status_for_condition(condition) == status
    assert condition_for_sip_status(status) == condition


@pytest.mark.parametrize(
    ("status", "condition"),
    [
        (302, "redirect"),
        (486, "recipient-unavailable"),
        (488, "not-acceptable"),
        (504, "remote-server-timeout"),
        (603, "service-unavailable"),
        (499, "bad-request"),
        (599, "service-unavailable"),
        (699, "service-unavailable"),
    ],
)
def test_other_sip_statuses_map_by_table_or_class(status: int, condition: str) -> None:
    assert condition_for_sip_status(status) == condition


def test_every_mapped_condition_is_a_stanza_error_condition() -> None:
    assert set(CONDITION_FOR_SIP.values()) <= set(ERROR_TYPES)
    assert set(SIP_FOR_CONDITION) == set(ERROR_TYPES)


# -- instant messages ---------------------------------------------------------------------------


def _message(body: str | None = "hello", **attrs: str) -> Element:
    base = {"from": "romeo@montague.example/orchard", "to": "juliet@contoso.test", "type": "chat"}
    base.update(attrs)
    children: list[Element | str] = []
    if body is not None:
        children.append(Element("body", NS, {}, [body]))
    return Element("message", NS, base, children)


def _sent(message: Element, ctx: SipContext = CTX) -> SipRequest:
    """What ``message_to_sip`` sends, read back."""
    outgoing = message_to_sip(message, ctx)
    assert outgoing is not None
    return outgoing.parsed()


def test_chat_message_becomes_a_sip_message_with_utf8_text() -> None:
    outgoing = message_to_sip(_message("Grüße ☃"), CTX)
    assert outgoing is not None
    assert (outgoing.branch, outgoing.method) == ("z9hG4bK-1", "MESSAGE")
    parsed = outgoing.parsed()
    assert parsed.method == "MESSAGE"
    assert parsed.uri == "sip:juliet@contoso.test"
    assert parsed.headers.get("Content-Type") == "text/plain;charset=UTF-8"
    assert parsed.body.decode() == "Grüße ☃"
    assert parsed.headers.get("From") == "<sip:romeo@montague.example>;tag=tag1"
    assert parsed.headers.get("Contact") == "<sip:romeo@montague.example;gr=orchard>"
    assert parsed.headers.get("To") == "<sip:juliet@contoso.test>"
    # the template writes what serialize() would write for the same header fields
    assert outgoing.data == serialize(parsed)
    assert [name for name, _ in parsed.headers.items] == [
        "Via", "Max-Forwards", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Type", "Content-Length"
    ]
    assert parsed.headers.get("Via") == "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-1;rport"


def test_the_request_goes_to_the_given_request_uri() -> None:
    ctx = SipContext("c", "t", "z9hG4bK-2", "127.0.0.1:5060", "TCP", request_uri="sip:juliet@10.0.0.9:5070")
    parsed = _sent(_message("hi"), ctx)
    assert parsed.uri == "sip:juliet@10.0.0.9:5070"
    assert parsed.headers.get("To") == "<sip:juliet@contoso.test>"
    assert parsed.headers.get("Via") == "SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK-2;rport"


def test_subject_and_language_become_headers() -> None:
    message = _message("Bonjour", **{XML_LANG: "fr"})
    message.append(Element("subject", NS, {}, ["Rendez-vous\nce soir"]))
    request = _sent(message)
    assert request.headers.get("Subject") == "Rendez-vous ce soir"
    assert request.headers.get("Content-Language") == "fr"


def test_a_language_cannot_add_a_header_line() -> None:
    request = _sent(_message("hi", **{XML_LANG: "en\r\nX-Injected: 1"}))
    assert request.headers.get("Content-Language") == "en X-Injected: 1"
    assert request.headers.get("X-Injected") is None


def test_body_in_the_stanza_language_is_chosen() -> None:
    message = Element(
        "message",
        NS,
        {"from": "a@x.test", "to": "b@contoso.test", XML_LANG: "en"},
        [
            Element("body", NS, {XML_LANG: "de"}, ["Hallo"]),
            Element("body", NS, {}, ["Hello"]),
        ],
    )
    assert _sent(message).body == b"Hello"


def test_message_over_the_page_mode_ceiling_is_refused_not_truncated() -> None:
    fits = message_to_sip(_message("x" * 900), CTX)
    assert fits is not None and len(fits.data) <= PAGE_MODE_CEILING
    with pytest.raises(TranslationError) as info:
        message_to_sip(_message("x" * 1300), CTX)
    assert info.value.condition == "policy-violation"


def test_ceiling_counts_utf8_bytes_not_characters() -> None:
    with pytest.raises(TranslationError):
        message_to_sip(_message("☃" * 400), CTX)  # 1200 bytes of body


@pytest.mark.parametrize(
    ("msg", "outcome"),
    [
        (_message(None), None),
        (_message("x", type="error"), None),
        (_message("x", type="groupchat"), "service-unavailable"),
        (_message("x", type="bogus"), "bad-request"),
    ],
)
def test_messages_without_a_sip_form(msg: Element, outcome: str | None) -> None:
    if outcome is None:
        assert message_to_sip(msg, CTX) is None
    else:
        with pytest.raises(TranslationError) as info:
            message_to_sip(msg, CTX)
        assert info.value.condition == outcome


def _sip_message(body: bytes, **headers: str) -> SipRequest:
    h = Headers()
    h.add("From", "<sip:alice@sip.test>;tag=9")
    h.add("To", "<sip:juliet@contoso.test>")
    for name, value in headers.items():
        h.add(name.replace("_", "-"), value)
    return SipRequest("MESSAGE", "sip:juliet@contoso.test", h, body)


def test_sip_message_becomes_a_chat_message() -> None:
    request = _sip_message(
        "日本語 ok".encode(),
        Content_Type="text/plain;charset=UTF-8",
        Subject="Hi",
        Content_Language="ja",
    )
    element = sip_message_to_xmpp(request, stanza_id="s1")
    assert element.attrs == {
        "from": "alice@sip.test",
        "to": "juliet@contoso.test",
        "type": "chat",
        "id": "s1",
        XML_LANG: "ja",
    }
    assert element.find("body", NS).text == "日本語 ok"  # type: ignore[union-attr]
    assert element.find("subject", NS).text == "Hi"  # type: ignore[union-attr]


def test_sip_message_from_a_gruu_contact_gets_a_resource() -> None:
    request = _sip_message(b"x", Contact="<sip:alice@sip.test;gr=phone1>")
    assert sip_message_to_xmpp(request, stanza_id="s").get("from") == "alice@sip.test/phone1"


@pytest.mark.parametrize(
    ("ctype", "body", "status"),
    [
        ("text/html", b"<b>x</b>", 415),
        ("text/plain;charset=ISO-8859-1", b"x", 415),
        ("text/plain", b"\xff\xfe", 400),
    ],
)
def test_untranslatable_sip_messages_are_refused(ctype: str, body: bytes, status: int) -> None:
    with pytest.raises(TranslationError) as info:
        sip_message_to_xmpp(_sip_message(body, Content_Type=ctype), stanza_id="s")
    assert info.value.sip_status == status


# -- presence -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("available", "show", "value"),
    [
        (True, None, 3500),
        (True, "chat", 3500),
        (True, "away", 15500),
        (True, "xa", 15500),
        (True, "dnd", 6500),
        (False, None, 18500),
    ],
)
def test_xmpp_show_maps_to_lync_availability(available: bool, show: str | None, value: int) -> None:
    assert lync_availability(available, show) == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, (True, None)),
        (3500, (True, None)),
        (5999, (True, None)),
        (6000, (True, "dnd")),
        (11999, (True, "dnd")),
        (12000, (True, "away")),
        (14999, (True, "away")),
        (15000, (True, "xa")),
        (17999, (True, "xa")),
        (18000, (False, None)),
        (18500, (False, None)),
    ],
)
def test_lync_availability_maps_to_xmpp_show(value: int, expected: tuple[bool, str | None]) -> None:
    assert show_for_availability(value) == expected


@pytest.mark.parametrize(
    ("show", "available", "expected_show"),
    [(None, True, None), ("dnd", True, "dnd"), ("away", True, "xa"), (None, False, None)],
)
def test_presence_survives_a_pidf_round_trip(
    show: str | None, available: bool, expected_show: str | None
) -> None:
    # away → 15500 → (15000–17999) → xa: SPEC §7 folds away and xa into Lync "Away".
    info = PresenceInfo(available, show, "In a meeting", lync_availability(available, show))
    back = parse_pidf(presence_to_pidf("sip:juliet@contoso.test", info, include_note=True))
    assert (back.available, back.show, back.note) == (available, expected_show, "In a meeting")


def test_note_is_left_out_when_the_partner_may_not_see_it() -> None:
    info = PresenceInfo(True, None, "secret plans", 3500)
    body = presence_to_pidf("sip:juliet@contoso.test", info, include_note=False)
    assert b"secret plans" not in body
    assert parse_pidf(body).note is None


def test_pidf_from_a_sip_ua_maps_to_xmpp_presence() -> None:
    body = (
        b"<?xml version='1.0' encoding='UTF-8'?>"
        b"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:alice@sip.test'>"
        b"<tuple id='t1'><status><basic>open</basic></status></tuple>"
        b"<dm:person xmlns:dm='urn:ietf:params:xml:ns:pidf:data-model'"
        b" xmlns:rpid='urn:ietf:params:xml:ns:pidf:rpid' id='p'>"
        b"<rpid:activities><rpid:busy/></rpid:activities></dm:person>"
        b"<note>On the phone \xe2\x98\x8e</note></presence>"
    )
    info = parse_pidf(body)
    assert (info.available, info.show, info.note, info.availability) == (
        True,
        "dnd",
        "On the phone ☎",
        6500,
    )
    federated = presence_element(
        "alice@sip.test", "romeo@montague.example", info, include_status=True
    )
    assert federated.find("show", NS).text == "dnd"  # type: ignore[union-attr]
    assert federated.find("status", NS).text == "On the phone ☎"  # type: ignore[union-attr]
    public = presence_element("alice@sip.test", "romeo@gmail.example", info, include_status=False)
    assert public.find("status", NS) is None


def test_closed_pidf_is_unavailable_presence() -> None:
    body = (
        b"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:a@b'>"
        b"<tuple id='t'><status><basic>closed</basic></status></tuple></presence>"
    )
    element = presence_element("a@b", "c@d", parse_pidf(body), include_status=True)
    assert element.get("type") == "unavailable"


@pytest.mark.parametrize(
    "body",
    [
        b"<presence",
        b"<other xmlns='x'/>",
        b"<!DOCTYPE x [<!ENTITY a 'aaaa'>]><presence xmlns='urn:ietf:params:xml:ns:pidf'/>",
        b"<presence xmlns='urn:ietf:params:xml:ns:pidf'>" + b" " * 20000 + b"</presence>",
    ],
)
def test_bad_pidf_is_refused(body: bytes) -> None:
    with pytest.raises(TranslationError):
        parse_pidf(body)


def test_xmpp_presence_reads_show_and_status() -> None:
    presence = Element(
        "presence",
        NS,
        {"from": "a@x", "to": "b@y"},
        [Element("show", NS, {}, ["away"]), Element("status", NS, {}, ["lunch"])],
    )
    assert presence_info(presence) == PresenceInfo(True, "away", "lunch", 15500)


@pytest.mark.parametrize(
    ("ptype", "expires"),
    [("subscribe", 28800), ("unsubscribe", 0), ("probe", 0), ("subscribed", None), ("", None)],
)
def test_subscription_presence_maps_to_subscribe_expires(ptype: str, expires: int | None) -> None:
    assert subscribe_expires(ptype) == expires


@pytest.mark.parametrize(
    ("expires", "existing", "ptype"),
    [
        (3600, False, "subscribe"),
        (3600, True, "probe"),
        (0, True, "unsubscribe"),
        (0, False, "probe"),
    ],
)
def test_sip_subscribe_maps_to_presence_type(expires: int, existing: bool, ptype: str) -> None:
    assert presence_type_for_subscribe(expires, existing=existing) == ptype


@pytest.mark.parametrize(
    "body",
    [
        b"<?xml version='1.0' encoding='x-unknown'?><presence/>",  # LookupError inside expat
        b"<?xml version='1.0' encoding='utf-16'?><presence/>",
        b"<presence xmlns='urn:ietf:params:xml:ns:pidf'><tuple>",
        b"\xff\xfe\x00",
    ],
)
def test_malformed_pidf_is_a_translation_error_with_400(body: bytes) -> None:
    with pytest.raises(TranslationError) as info:
        parse_pidf(body)
    assert info.value.sip_status == 400
