"""SPEC §4 (partner types) and §6 (stanza rules): table-driven engine tests."""

from __future__ import annotations

import pytest

from edgeproxy.policy.engine import (
    Allow,
    AllowTransformed,
    AutoReply,
    Refuse,
    Stanza,
    StanzaKind,
    StorePending,
    decide_inbound,
    decide_outbound,
)
from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Partner,
    PartnerType,
    User,
)
from edgeproxy.policy.snapshot import build_snapshot

MSG, PRES, IQ = StanzaKind.MESSAGE, StanzaKind.PRESENCE, StanzaKind.IQ
DOMAIN_OF = {
    PartnerType.FEDERATED: "fabrikam.com",
    PartnerType.PUBLIC_VERIFIED: "verified.example",
    PartnerType.PUBLIC_UNVERIFIED: "gmail.com",
}


def make_snapshot():
    partners = (
        Partner(
            "fabrikam.com", type=PartnerType.FEDERATED, additional_domains=("corp.fabrikam.com",)
        ),
        Partner("verified.example", type=PartnerType.PUBLIC_VERIFIED),
        Partner("gmail.com", type=PartnerType.PUBLIC_UNVERIFIED),
        Partner("xn--bcher-kva.de", type=PartnerType.FEDERATED),
    )
    policies = (
        AccessPolicy("global", xmpp=True),
        AccessPolicy("site:Branch", xmpp=False),
        AccessPolicy("noxmpp", xmpp=False),
    )
    users = (
        User("sip:alice@contoso.test", contacts=("friend@gmail.com",), pending=()),
        User("sip:bob@contoso.test", policy="noxmpp"),
        User("sip:carol@contoso.test", sba=True),
        User("sip:dave@contoso.test", site="Branch"),
    )
    config = Configuration(
        gateway=GatewaySettings(dialback_secret="s" * 32),
        partners=partners,
        policies=policies,
        users=users,
    )
    return build_snapshot(config, ["contoso.test"])


SNAP = make_snapshot()


def inbound(kind, type_="", frm="someone@fabrikam.com/res", to="alice@contoso.test", **flags):
    domain = frm.split("@")[-1].split("/")[0].lower()
    stream = flags.pop("stream_domains", frozenset({domain}))
    return decide_inbound(
        SNAP, Stanza(kind, type_, frm, to, stream_domains=frozenset(stream), **flags)
    )


def outbound(kind, type_="", to="someone@fabrikam.com", frm="alice@contoso.test/pc", **flags):
    return decide_outbound(SNAP, Stanza(kind, type_, frm, to, **flags))


# -- SPEC §4: every cell of the partner-type table ---------------------------------------------

# Row "may subscribe without the user's approval".
SUBSCRIBE_CELLS = [
    (PartnerType.FEDERATED, "stranger", AutoReply, "subscribed"),
    (PartnerType.PUBLIC_VERIFIED, "stranger", AutoReply, "subscribed"),
    (PartnerType.PUBLIC_UNVERIFIED, "stranger", StorePending, None),
    (PartnerType.PUBLIC_UNVERIFIED, "friend", AutoReply, "subscribed"),
]


@pytest.mark.parametrize(("ptype", "who", "decision", "reply"), SUBSCRIBE_CELLS)
def test_subscription_request_by_partner_type(ptype, who, decision, reply):
    result = inbound(PRES, "subscribe", frm=f"{who}@{DOMAIN_OF[ptype]}")
    assert type(result) is decision
    if reply is not None:
        assert result.reply == reply
        assert result.deliver  # the gateway still sets up the SIP subscription


# Row "may send IM to a local user who has not added them".
IM_CELLS = [
    (PartnerType.FEDERATED, "stranger", None),
    (PartnerType.PUBLIC_VERIFIED, "stranger", None),
    (PartnerType.PUBLIC_UNVERIFIED, "stranger", "service-unavailable"),
    (PartnerType.PUBLIC_UNVERIFIED, "friend", None),
]


@pytest.mark.parametrize(("ptype", "who", "condition"), IM_CELLS)
@pytest.mark.parametrize("msg_type", ["chat", "normal", ""])
def test_message_from_contact_by_partner_type(ptype, who, condition, msg_type):
    result = inbound(MSG, msg_type, frm=f"{who}@{DOMAIN_OF[ptype]}/r")
    if condition is None:
        assert type(result) is Allow
    else:
        assert isinstance(result, Refuse)
        assert result.condition == condition
        assert not result.stream_level and result.bounce


# Row "sees the local user's status note".
STATUS_CELLS = [
    (PartnerType.FEDERATED, Allow),
    (PartnerType.PUBLIC_VERIFIED, AllowTransformed),
    (PartnerType.PUBLIC_UNVERIFIED, AllowTransformed),
]


@pytest.mark.parametrize(("ptype", "decision"), STATUS_CELLS)
@pytest.mark.parametrize("presence_type", ["", "unavailable"])
def test_status_note_sent_to_partner_by_type(ptype, decision, presence_type):
    result = outbound(PRES, presence_type, to=f"friend@{DOMAIN_OF[ptype]}", has_status=True)
    assert type(result) is decision
    if decision is AllowTransformed:
        assert result.strip_status


@pytest.mark.parametrize("ptype", list(PartnerType))
def test_presence_without_status_note_goes_out_unchanged(ptype):
    assert type(outbound(PRES, "", to=f"friend@{DOMAIN_OF[ptype]}")) is Allow


def test_probe_from_unauthorized_public_unverified_contact_is_answered_unsubscribed():
    result = inbound(PRES, "probe", frm="stranger@gmail.com")
    assert type(result) is AutoReply
    assert (result.reply, result.deliver) == ("unsubscribed", False)
    assert type(inbound(PRES, "probe", frm="friend@gmail.com")) is Allow
    assert type(inbound(PRES, "probe", frm="someone@fabrikam.com")) is Allow


def test_iq_request_from_unauthorized_public_unverified_contact_is_refused():
    result = inbound(IQ, "get", frm="stranger@gmail.com/r", to="alice@contoso.test/pc")
    assert isinstance(result, Refuse) and result.condition == "service-unavailable"
    assert type(inbound(IQ, "result", frm="stranger@gmail.com/r")) is Allow


def test_contact_is_recognised_whatever_the_case_and_resource():
    assert type(inbound(MSG, "chat", frm="Friend@GMail.com/Home")) is Allow


# -- SPEC §6 rules ------------------------------------------------------------------------------

RULES = [
    # Rule 1: anti-spoofing and addressing (stream level).
    (
        "from-not-authenticated",
        dict(frm="x@gmail.com", stream_domains={"fabrikam.com"}),
        "invalid-from",
        True,
    ),
    (
        "from-additional-domain-not-authenticated",
        dict(frm="x@corp.fabrikam.com", stream_domains={"fabrikam.com"}),
        "invalid-from",
        True,
    ),
    ("to-not-our-domain", dict(to="alice@elsewhere.test"), "host-unknown", True),
    (
        "from-authenticated-but-no-longer-partner",
        dict(frm="x@removed.example", stream_domains={"removed.example"}),
        "policy-violation",
        True,
    ),
    # Rule 2: local user must exist and federate.
    ("unknown-user", dict(to="nobody@contoso.test"), "service-unavailable", False),
    ("user-without-xmpp-access", dict(to="bob@contoso.test"), "service-unavailable", False),
    ("sba-homed-user", dict(to="carol@contoso.test"), "service-unavailable", False),
    ("site-policy-without-xmpp", dict(to="dave@contoso.test"), "service-unavailable", False),
    # Rule 4: unsupported modalities.
    ("groupchat-message", dict(type_="groupchat"), "service-unavailable", False),
    (
        "file-transfer-offer",
        dict(kind=IQ, type_="set", file_transfer=True),
        "feature-not-implemented",
        False,
    ),
    ("jingle", dict(kind=IQ, type_="set", jingle=True), "feature-not-implemented", False),
    ("muc-invitation", dict(type_="normal", muc_invite=True), "feature-not-implemented", False),
    ("message-to-our-domain-itself", dict(to="contoso.test"), "service-unavailable", False),
]


@pytest.mark.parametrize(
    ("case", "fields", "condition", "stream_level"), RULES, ids=[r[0] for r in RULES]
)
def test_inbound_rules_of_spec_section_6(case, fields, condition, stream_level):
    fields = dict(fields)
    kind = fields.pop("kind", MSG)
    type_ = fields.pop("type_", "chat")
    result = inbound(kind, type_, **fields)
    assert isinstance(result, Refuse), case
    assert result.condition == condition
    assert result.stream_level is stream_level
    assert result.rule  # names the rule for the event log


def test_additional_domain_of_a_partner_federates_like_the_primary():
    assert type(inbound(MSG, "chat", frm="x@corp.fabrikam.com")) is Allow


def test_unicode_domain_matches_its_idna_partner():
    frm = "x@BÜCHER.de"
    result = inbound(MSG, "chat", frm=frm, stream_domains={"xn--bcher-kva.de"})
    assert type(result) is Allow


def test_iq_to_our_domain_itself_is_for_the_edge():
    assert type(inbound(IQ, "get", to="contoso.test")) is Allow


def test_refusing_an_error_stanza_sends_no_error_back():
    result = inbound(MSG, "error", to="nobody@contoso.test")
    assert isinstance(result, Refuse)
    assert result.bounce is False
    assert inbound(MSG, "chat", to="nobody@contoso.test").bounce is True


# Rule 5: nothing dropped silently — every refusal that is not a stream error bounces, except
# for error stanzas (RFC 6120 §8.3.1); every decision is one of the five outcomes.
@pytest.mark.parametrize("kind", list(StanzaKind))
@pytest.mark.parametrize("type_", ["", "chat", "groupchat", "subscribe", "probe", "get", "error"])
@pytest.mark.parametrize("to", ["alice@contoso.test", "bob@contoso.test", "nobody@contoso.test"])
@pytest.mark.parametrize("frm", ["stranger@gmail.com", "x@fabrikam.com"])
def test_every_inbound_stanza_gets_an_explicit_outcome(kind, type_, to, frm):
    result = inbound(kind, type_, frm=frm, to=to)
    assert isinstance(result, Allow | AllowTransformed | Refuse | AutoReply | StorePending)
    if isinstance(result, Refuse) and not result.stream_level:
        assert result.bounce is (type_ != "error")


# -- outbound (SPEC §6, last paragraph) ---------------------------------------------------------

OUTBOUND = [
    ("allowed", dict(), None),
    ("sender-no-xmpp-access", dict(frm="bob@contoso.test"), "forbidden"),
    ("sender-sba", dict(frm="carol@contoso.test"), "forbidden"),
    ("sender-unknown", dict(frm="nobody@contoso.test"), "forbidden"),
    ("target-not-partner", dict(to="x@unknown.example"), "remote-server-not-found"),
    ("groupchat", dict(type_="groupchat"), "service-unavailable"),
    ("file-transfer", dict(kind=IQ, type_="set", file_transfer=True), "feature-not-implemented"),
    ("jingle", dict(kind=IQ, type_="set", jingle=True), "feature-not-implemented"),
]


@pytest.mark.parametrize(("case", "fields", "condition"), OUTBOUND, ids=[o[0] for o in OUTBOUND])
def test_outbound_rules(case, fields, condition):
    fields = dict(fields)
    result = outbound(fields.pop("kind", MSG), fields.pop("type_", "chat"), **fields)
    if condition is None:
        assert type(result) is Allow
    else:
        assert isinstance(result, Refuse) and result.condition == condition, case


# -- SPEC §5: precedence user > site > global, and SBA ------------------------------------------

PRECEDENCE = [
    # (global xmpp, site policy xmpp or None, granted policy xmpp or None, expected)
    (False, None, None, False),
    (True, None, None, True),
    (False, True, None, True),
    (True, False, None, False),
    (False, False, True, True),
    (True, True, False, False),
    (False, None, True, True),
    (True, None, False, False),
]


@pytest.mark.parametrize(("global_xmpp", "site_xmpp", "user_xmpp", "federates"), PRECEDENCE)
@pytest.mark.parametrize("sba", [False, True])
def test_policy_precedence_user_then_site_then_global_and_sba_never(
    global_xmpp, site_xmpp, user_xmpp, federates, sba
):
    policies = [AccessPolicy("global", xmpp=global_xmpp)]
    if site_xmpp is not None:
        policies.append(AccessPolicy("site:Tokyo", xmpp=site_xmpp))
    if user_xmpp is not None:
        policies.append(AccessPolicy("granted", xmpp=user_xmpp))
    user = User(
        "sip:erin@contoso.test",
        site="Tokyo",
        sba=sba,
        policy="granted" if user_xmpp is not None else None,
    )
    snap = build_snapshot(
        Configuration(
            gateway=GatewaySettings(dialback_secret="s" * 32),
            partners=(Partner("fabrikam.com", type=PartnerType.FEDERATED),),
            policies=tuple(policies),
            users=(user,),
        ),
        ["contoso.test"],
    )
    expected = federates and not sba
    assert snap.users["erin@contoso.test"].federates is expected
    got_in = decide_inbound(
        snap,
        Stanza(
            MSG,
            "chat",
            "x@fabrikam.com",
            "erin@contoso.test",
            stream_domains=frozenset({"fabrikam.com"}),
        ),
    )
    got_out = decide_outbound(snap, Stanza(MSG, "chat", "erin@contoso.test", "x@fabrikam.com"))
    assert (type(got_in) is Allow) is expected
    assert (type(got_out) is Allow) is expected


def test_site_policy_applies_only_to_users_of_that_site():
    assert SNAP.users["dave@contoso.test"].policy.identity == "site:Branch"
    assert SNAP.users["alice@contoso.test"].policy.identity == "global"
    assert SNAP.users["bob@contoso.test"].policy.identity == "noxmpp"


def test_kind_given_as_a_plain_string_decides_like_the_enum():
    stanza = Stanza(
        "presence",
        "subscribe",
        "stranger@gmail.com",
        "alice@contoso.test",
        stream_domains=frozenset({"gmail.com"}),
    )
    assert type(decide_inbound(SNAP, stanza)) is StorePending
    out = Stanza("presence", "", "alice@contoso.test", "x@gmail.com", has_status=True)
    assert type(decide_outbound(SNAP, out)) is AllowTransformed
