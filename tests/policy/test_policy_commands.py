"""The admin commands: options, exit statuses, --json shapes, contact lists (issue 3 §5)."""

from __future__ import annotations

import json

from _policy_helpers import run_cli_subprocess

from edgeproxy.policy import operations as ops
from edgeproxy.policy.store import Store

PARTNER_KEYS = [
    "domain",
    "description",
    "additional-domains",
    "type",
    "tls",
    "sasl",
    "dialback",
    "keepalive",
    "connection-limit",
    "proxy-fqdn",
]


def test_new_partner_gets_the_spec_defaults_and_a_stable_json_shape(cli):
    assert cli("partner", "new", "Fabrikam.COM.").code == 0
    partner = json.loads(cli("partner", "get", "fabrikam.com", "--json").out)
    assert list(partner) == PARTNER_KEYS
    assert partner == {
        "domain": "fabrikam.com",
        "description": "",
        "additional-domains": [],
        "type": "public-unverified",
        "tls": "required",
        "sasl": "required",
        "dialback": True,
        "keepalive": True,
        "connection-limit": None,
        "proxy-fqdn": None,
    }
    assert json.loads(cli("partner", "get", "--json").out) == [partner]


def test_refused_row_through_the_real_command_exits_1_with_the_rule_on_stderr(config_path):
    result = run_cli_subprocess(
        config_path,
        "partner",
        "new",
        "gmail.com",
        "--tls",
        "required",
        "--sasl",
        "not-supported",
        "--no-dialback",
    )
    assert result.code == 1
    assert "refused: SASL or dialback must be enabled" in result.err
    assert run_cli_subprocess(config_path, "partner", "get", "--json").out.strip() == "[]"


def test_usage_errors_exit_2(cli):
    assert cli("partner", "new", "a.example", "--tls", "sometimes").code == 2
    assert cli("partner", "new", "a.example", "--connection-limit", "many").code == 2
    assert cli("partner", "frobnicate").code == 2
    assert cli("policy", "grant", "alice@contoso.test").code == 2


def test_config_option_is_accepted_before_the_command_too(config_path, capsys):
    from edgeproxy.cli import main

    assert main(["--config", str(config_path), "partner", "new", "early.example"]) == 0
    capsys.readouterr()
    assert main(["partner", "get", "--json", "--config", str(config_path)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["domain"] == "early.example"


def test_a_domain_belongs_to_one_partner_only_whatever_its_spelling(cli):
    assert cli("partner", "new", "bücher.de").code == 0
    clash = cli("partner", "new", "other.example", "--additional-domain", "XN--BCHER-KVA.DE")
    assert clash.code == 1 and "belongs to partner xn--bcher-kva.de" in clash.err
    assert cli("partner", "new", "BÜCHER.de").code == 1
    assert cli("partner", "new", "contoso.test").code == 1  # our own domain
    assert cli("partner", "new", "bad_domain.example").code == 1


def test_partner_set_edits_additional_domains(cli):
    cli("partner", "new", "fabrikam.com", "--additional-domain", "a.fabrikam.com")

    def domains():
        return json.loads(cli("partner", "get", "fabrikam.com", "--json").out)["additional-domains"]

    assert cli("partner", "set", "fabrikam.com", "--add-domain", "B.fabrikam.com").code == 0
    assert domains() == ["a.fabrikam.com", "b.fabrikam.com"]
    assert cli("partner", "set", "fabrikam.com", "--remove-domain", "a.fabrikam.com").code == 0
    assert domains() == ["b.fabrikam.com"]
    assert cli("partner", "set", "fabrikam.com", "--remove-domain", "zzz.fabrikam.com").code == 1
    assert cli("partner", "set", "fabrikam.com", "--clear-domains").code == 0
    assert domains() == []
    assert cli("partner", "set", "fabrikam.com", "--add-domain", "d.fabrikam.com").code == 0
    # --additional-domain on set replaces the whole list: only with --replace-domains.
    assert cli("partner", "set", "fabrikam.com", "--additional-domain", "c.fabrikam.com").code == 2
    assert domains() == ["d.fabrikam.com"]
    replaced = cli(
        "partner", "set", "fabrikam.com", "--additional-domain", "c.fabrikam.com",
        "--replace-domains",
    )
    assert replaced.code == 0
    assert domains() == ["c.fabrikam.com"]
    # An additional domain finds its partner.
    assert json.loads(cli("partner", "get", "c.fabrikam.com", "--json").out)["domain"] == (
        "fabrikam.com"
    )


def test_partner_set_changes_only_what_is_given_and_can_clear_optional_fields(cli):
    cli(
        "partner",
        "new",
        "fabrikam.com",
        "--connection-limit",
        "7",
        "--proxy-fqdn",
        "x.fabrikam.com",
        "--description",
        "keep me",
    )
    assert cli("partner", "set", "fabrikam.com", "--type", "federated").code == 0
    p = json.loads(cli("partner", "get", "fabrikam.com", "--json").out)
    assert (p["type"], p["connection-limit"], p["proxy-fqdn"], p["description"]) == (
        "federated",
        7,
        "x.fabrikam.com",
        "keep me",
    )
    cli("partner", "set", "fabrikam.com", "--connection-limit", "none", "--proxy-fqdn", "none")
    p = json.loads(cli("partner", "get", "fabrikam.com", "--json").out)
    assert (p["connection-limit"], p["proxy-fqdn"]) == (None, None)
    assert cli("partner", "set", "fabrikam.com", "--connection-limit", "0").code == 1


def test_partner_get_filter_and_remove(cli):
    for d in ("fabrikam.com", "gmail.com", "google.com"):
        cli("partner", "new", d)
    found = json.loads(cli("partner", "get", "--filter", "g*.com", "--json").out)
    assert [p["domain"] for p in found] == ["gmail.com", "google.com"]
    assert "domain: fabrikam.com" in cli("partner", "get").out
    assert cli("partner", "remove", "gmail.com").code == 0
    assert cli("partner", "remove", "gmail.com").code == 1
    assert cli("partner", "get", "gmail.com").code == 1


def test_gateway_get_and_set(cli, tmp_path):
    before = json.loads(cli("gateway", "get", "--json").out)
    assert before["connection-limit"] == 1000 and before["partner-connection-limit"] == 20
    assert before["dialback-secret"] not in cli("gateway", "get").out  # hidden in text output
    secret_file = tmp_path / "dialback.secret"
    secret_file.write_text("a-shared-secret-for-the-pool\nsecond line ignored\n")
    assert (
        cli(
            "gateway",
            "set",
            "--connection-limit",
            "500",
            "--stream-inactivity-timeout",
            "900",
            "--dialback-secret-file",
            str(secret_file),
        ).code
        == 0
    )
    after = json.loads(cli("gateway", "get", "--json").out)
    assert (after["connection-limit"], after["stream-inactivity-timeout"]) == (500, 900)
    assert after["dialback-secret"] == "a-shared-secret-for-the-pool"
    assert after["keepalive-interval"] == before["keepalive-interval"]
    secret_file.write_text("short\n")
    assert cli("gateway", "set", "--dialback-secret-file", str(secret_file)).code == 1
    assert cli("gateway", "set", "--partner-connection-limit", "5000").code == 1
    assert json.loads(cli("gateway", "get", "--json").out) == after


def test_policies_global_site_and_user_scopes(cli):
    assert cli("policy", "new", "global").code == 1  # always exists
    assert cli("policy", "remove", "global").code == 1
    assert "the global policy cannot be removed" in cli("policy", "remove", "global").err
    assert cli("policy", "new", "site:Tokyo", "--xmpp").code == 0
    assert cli("policy", "new", "Site:Tokyo").code == 1  # same identity
    assert cli("policy", "new", "gold", "--xmpp", "--description", "partners").code == 0
    assert cli("policy", "new", "bad:name").code == 1
    listed = json.loads(cli("policy", "get", "--json").out)
    assert [p["identity"] for p in listed] == ["global", "gold", "site:Tokyo"]
    assert list(listed[0]) == ["identity", "xmpp", "federation", "public-cloud", "description"]
    assert cli("policy", "set", "gold", "--no-xmpp").code == 0
    assert json.loads(cli("policy", "get", "gold", "--json").out)["xmpp"] is False
    assert cli("policy", "set", "nope", "--xmpp").code == 1
    assert cli("policy", "remove", "site:Tokyo").code == 0


def test_policy_grant_and_ungrant(cli):
    cli("policy", "new", "gold", "--xmpp")
    cli("user", "new", "alice@contoso.test")
    assert cli("policy", "grant", "alice@contoso.test", "gold").code == 0
    assert json.loads(cli("user", "get", "alice@contoso.test", "--json").out)["policy"] == "gold"
    removed = cli("policy", "remove", "gold")
    assert removed.code == 1 and "granted to 1 user" in removed.err
    assert cli("policy", "grant", "alice@contoso.test", "global").code == 1
    assert cli("policy", "grant", "alice@contoso.test", "missing").code == 1
    assert cli("policy", "grant", "alice@contoso.test", "--none").code == 0
    assert json.loads(cli("user", "get", "alice@contoso.test", "--json").out)["policy"] is None
    assert cli("policy", "remove", "gold").code == 0


def test_users_new_set_get_remove(cli):
    assert cli("user", "new", "Alice@Contoso.test", "--name", "Alice", "--site", "Tokyo").code == 0
    assert cli("user", "new", "sip:alice@contoso.test").code == 1  # exists
    assert cli("user", "new", "eve@elsewhere.test").code == 1  # not our domain
    assert cli("user", "new", "not-an-address").code == 1
    assert cli("user", "set", "alice@contoso.test", "--sba").code == 0
    user = json.loads(cli("user", "get", "sip:alice@contoso.test", "--json").out)
    assert user == {
        "sip": "sip:alice@contoso.test",
        "name": "Alice",
        "site": "Tokyo",
        "sba": True,
        "policy": None,
        "contacts": [],
        "pending": [],
        "password-set": False,
        "password-algorithms": [],
    }
    assert cli("user", "remove", "alice@contoso.test").code == 0
    assert cli("user", "get", "alice@contoso.test").code == 1
    assert cli("user", "set", "alice@contoso.test", "--no-sba").code == 1


def test_adding_a_contact_approves_its_pending_request(cli, state_dir):
    cli("user", "new", "alice@contoso.test")
    with Store.open(state_dir) as store:
        ops.record_pending_request(store, ("contoso.test",), "alice@contoso.test", "Bob@Gmail.com")
    listed = json.loads(cli("user", "contact", "list", "alice@contoso.test", "--json").out)
    assert listed == {"contacts": [], "pending": ["bob@gmail.com"]}
    added = cli("user", "contact", "add", "alice@contoso.test", "bob@gmail.com")
    assert added.code == 0 and "approved" in added.out
    listed = json.loads(cli("user", "contact", "list", "alice@contoso.test", "--json").out)
    assert listed == {"contacts": ["bob@gmail.com"], "pending": []}
    assert cli("user", "contact", "add", "alice@contoso.test", "bob@gmail.com/res").code == 1
    assert cli("user", "contact", "remove", "alice@contoso.test", "BOB@gmail.com").code == 0
    assert cli("user", "contact", "remove", "alice@contoso.test", "bob@gmail.com").code == 1
    assert cli("user", "contact", "list", "nobody@contoso.test").code == 1
