"""The Control Panel's store pages over real sockets (in process): every change goes through the
same operations as the CLI, a refusal is shown next to its field and nothing is stored."""

from __future__ import annotations

import html

import trio
from _panel_fixture import PanelRunning

from edgeproxy.policy.model import User
from edgeproxy.policy.store import Store
from edgeproxy.policy.validation import REFUSED_SASL_NEEDS_TLS, WARN_SASL_NOT_ENFORCED

PARTNER = {"domain": "fabrikam.test", "additional_domains": "fabrikam.example\ncorp.fabrikam.test",
           "description": "Fabrikam", "type": "federated", "tls": "required", "sasl": "required",
           "dialback": "on", "keepalive": "on", "connection_limit": "", "proxy_fqdn": ""}


def configuration(panel: PanelRunning):  # type: ignore[no-untyped-def]
    store = Store.open(panel.config.state_dir)
    try:
        return store.read()[1]
    finally:
        store.close()


async def logged_in(panel: PanelRunning):  # type: ignore[no-untyped-def]
    client = panel.client()
    await trio.to_thread.run_sync(lambda: client.login(panel.token))
    return client


async def post(client, path: str, fields: dict[str, str]):  # type: ignore[no-untyped-def]
    def run():  # type: ignore[no-untyped-def]
        csrf = client.get("/ui/").csrf()  # one token per session, on every page
        return client.post(path, {**fields, "csrf": csrf})
    return await trio.to_thread.run_sync(run)


async def test_a_partner_is_created_edited_and_removed(panel: PanelRunning) -> None:
    client = await logged_in(panel)
    assert (await post(client, "/ui/partners/new", PARTNER)).status == 303
    [partner] = configuration(panel).partners
    assert partner.additional_domains == ("fabrikam.example", "corp.fabrikam.test")
    listing = await trio.to_thread.run_sync(lambda: client.get("/ui/partners?q=corp"))
    assert "fabrikam.test" in listing.body
    assert "No partner matches" in (await trio.to_thread.run_sync(lambda: client.get("/ui/partners?q=zzz"))).body
    answer = await post(client, "/ui/partners/fabrikam.test", {**PARTNER, "tls": "optional", "connection_limit": "5"})
    assert answer.status == 303
    notice = (await trio.to_thread.run_sync(lambda: client.get(answer.headers["location"]))).body
    assert html.escape(WARN_SASL_NOT_ENFORCED) in notice  # the warning of the row it landed on
    [partner] = configuration(panel).partners
    assert partner.tls.value == "optional" and partner.connection_limit == 5
    assert (await post(client, "/ui/partners/fabrikam.test/remove", {})).status == 303
    assert configuration(panel).partners == ()
    assert [e["action"] for e in panel.events("EP8014")] == ["created", "changed", "removed"]


async def test_sasl_without_tls_is_refused_next_to_the_negotiation_and_nothing_is_stored(panel: PanelRunning) -> None:
    client = await logged_in(panel)
    answer = await post(client, "/ui/partners/new", {**PARTNER, "tls": "not-supported", "sasl": "required",
                                                     "dialback": ""})
    assert answer.status == 400
    assert f'<p class="error field-error" id="error-negotiation">{html.escape(REFUSED_SASL_NEEDS_TLS.removeprefix("refused: "))}' in answer.body
    assert configuration(panel).partners == ()
    assert panel.events("EP8014") == []


async def test_a_refusal_names_its_field(panel: PanelRunning) -> None:
    client = await logged_in(panel)
    answer = await post(client, "/ui/partners/new", {**PARTNER, "connection_limit": "0"})
    assert answer.status == 400 and 'id="error-connection_limit"' in answer.body
    answer = await post(client, "/ui/partners/new", {**PARTNER, "proxy_fqdn": "proxy.fabrikam.test:99999"})
    assert answer.status == 400 and 'id="error-proxy_fqdn"' in answer.body
    answer = await post(client, "/ui/partners/new", {**PARTNER, "additional_domains": "contoso.test"})
    assert answer.status == 400 and 'id="error-additional_domains"' in answer.body and "own domains" in answer.body
    assert configuration(panel).partners == ()


async def test_the_form_shows_the_matrix_row_and_its_warning(panel: PanelRunning) -> None:
    client = await logged_in(panel)
    answer = await post(client, "/ui/partners/new", {**PARTNER, "tls": "optional", "domain": ""})
    assert answer.status == 400 and 'id="error-domain"' in answer.body
    assert html.escape(WARN_SASL_NOT_ENFORCED) in answer.body


async def test_gateway_settings_are_changed_and_refused_like_the_cli(panel: PanelRunning) -> None:
    client = await logged_in(panel)
    page = await trio.to_thread.run_sync(lambda: client.get("/ui/gateway"))
    assert page.status == 200
    fields = {"connection_limit": "500", "partner_connection_limit": "10", "keepalive_interval": "300",
              "stream_establishment_timeout": "60", "stream_inactivity_timeout": "600",
              "subscription_refresh_interval": "28800"}
    assert (await post(client, "/ui/gateway", fields)).status == 303
    assert configuration(panel).gateway.connection_limit == 500
    answer = await post(client, "/ui/gateway", {**fields, "partner_connection_limit": "600"})
    assert answer.status == 400 and 'id="error-partner_connection_limit"' in answer.body
    answer = await post(client, "/ui/gateway", {**fields, "dialback_secret": "short"})
    assert answer.status == 400 and 'id="error-dialback_secret"' in answer.body
    assert configuration(panel).gateway.partner_connection_limit == 10


async def test_a_policy_is_created_and_granted(panel: PanelRunning) -> None:
    store = Store.open(panel.config.state_dir)
    with store.write() as tx:
        tx.put_user(User(sip="sip:bob@contoso.test", name="Bob"))
    store.close()
    client = await logged_in(panel)
    answer = await post(client, "/ui/policies/new", {"identity": "xmpp-users", "xmpp": "on", "description": "XMPP"})
    assert answer.status == 303
    answer = await post(client, "/ui/policies/grant", {"sip": "sip:bob@contoso.test", "policy": "xmpp-users"})
    assert answer.status == 303
    config = configuration(panel)
    assert [p.identity for p in config.policies if p.identity == "xmpp-users"] == ["xmpp-users"]
    assert config.users[0].policy == "xmpp-users"
    answer = await post(client, "/ui/policies/new", {"identity": "bad:name:here"})
    assert answer.status == 400 and 'id="error-identity"' in answer.body
    users = await trio.to_thread.run_sync(lambda: client.get("/ui/users"))
    assert "sip:bob@contoso.test" in users.body


async def test_a_users_contacts_and_sip_password_are_changed_like_the_cli(panel: PanelRunning) -> None:
    store = Store.open(panel.config.state_dir)
    with store.write() as tx:
        tx.put_user(User(sip="sip:carol@contoso.test", pending=("dan@fabrikam.test",)))
    store.close()
    client = await logged_in(panel)
    page = await trio.to_thread.run_sync(lambda: client.get("/ui/users/sip:carol@contoso.test"))
    assert page.status == 200 and "dan@fabrikam.test" in page.body
    answer = await post(client, "/ui/users/sip:carol@contoso.test/contacts", {"jid": "dan@fabrikam.test"})
    assert answer.status == 303
    [carol] = configuration(panel).users
    assert carol.contacts == ("dan@fabrikam.test",) and carol.pending == ()
    answer = await post(client, "/ui/users/sip:carol@contoso.test/contacts", {"jid": "not a jid"})
    assert answer.status == 400 and 'id="error-jid"' in answer.body
    answer = await post(client, "/ui/users/sip:carol@contoso.test/password",
                        {"password": "s3cret-pass", "password_again": "s3cret-pass"})
    assert answer.status == 303 and configuration(panel).users[0].credentials
    answer = await post(client, "/ui/users/sip:carol@contoso.test/password",
                        {"password": "one", "password_again": "two"})
    assert answer.status == 400 and "the two passwords differ" in answer.body
    assert (await post(client, "/ui/users/sip:carol@contoso.test/password", {"clear": "1"})).status == 303
    assert configuration(panel).users[0].credentials == ()
    actions = [e["action"] for e in panel.events("EP8014")]
    assert actions == ["contact dan@fabrikam.test added (its pending request approved)",
                       "SIP password set (digest hashes only)", "SIP password cleared"]
    assert not any("s3cret-pass" in str(e) for e in panel.events("EP8014"))


async def test_a_refused_primary_domain_is_shown_next_to_it(panel: PanelRunning) -> None:
    client = await logged_in(panel)
    for domain in ("contoso.test", "not a domain"):
        answer = await post(client, "/ui/partners/new", {**PARTNER, "domain": domain, "additional_domains": ""})
        assert answer.status == 400 and 'id="error-domain"' in answer.body, domain
    assert configuration(panel).partners == ()


def test_the_row_numbers_are_the_documented_ones() -> None:
    """docs/spec.md §2.1 numbers the rows SASL-major, then TLS, then dialback on/off."""
    import re
    from pathlib import Path

    from edgeproxy.policy.model import Negotiation
    from edgeproxy.web.pages import matrix_row_number

    spec = (Path(__file__).resolve().parents[2] / "docs" / "spec.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| ([a-z-]+) \| ([a-z-]+) \| (on|off) \|", spec, re.MULTILINE)
    assert len(rows) == 18
    for number, tls, sasl, dialback in rows:
        assert matrix_row_number(Negotiation(tls), Negotiation(sasl), dialback == "on") == int(number)
