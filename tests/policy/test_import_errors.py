"""``edgeproxy config import`` with documents that are not valid, over the real CLI: every
problem is named by its item (domain, identity or SIP address, else its index) and field, in
words — never msgspec's own text — and nothing is saved unless everything holds. Lync's
spellings of the partner settings are read as ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _policy_helpers import run_cli_subprocess

#: What msgspec's own error text looks like; no message may contain it.
RAW = ("Expected `", "$.", "- at `")


@pytest.fixture
def document(cli) -> dict:
    """The export of a store with one partner, the global policy and one user."""
    assert cli("partner", "new", "fabrikam.com").code == 0
    assert cli("user", "new", "sip:alice@contoso.test").code == 0
    return json.loads(cli("config", "export").out)


def _import(config_path: Path, tmp_path: Path, document: dict | str):
    path = tmp_path / "import.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return run_cli_subprocess(config_path, "config", "import", str(path))


def _assert_refused_and_nothing_changed(cli, result, before: str) -> None:
    assert result.code == 1, result
    assert result.out == ""
    assert not [raw for raw in RAW if raw in result.err], result.err
    assert cli("config", "export").out == before


def test_a_bad_partner_field_is_named_by_index_domain_and_field_in_words(
    cli, config_path, tmp_path, document
):
    before = cli("config", "export").out
    partners = document["configuration"]["partners"]
    partners += [{"domain": "northwind.example"}, {"domain": "gmail.com", "connection-limit": 0}]

    result = _import(config_path, tmp_path, document)

    _assert_refused_and_nothing_changed(cli, result, before)
    assert result.err == (
        "edgeproxy: refused: partners[2] (gmail.com): connection-limit: must be an integer ≥ 1, "
        "got 0\n"
    )


def test_every_problem_is_listed_each_with_its_item(cli, config_path, tmp_path, document):
    before = cli("config", "export").out
    configuration = document["configuration"]
    configuration["gateway"]["keepalive-interval"] = "5m"
    configuration["partners"] += [
        {"description": "no domain", "dialback": "yes"},
        {"domain": "gmail.com", "tls": "sometimes", "conection-limit": 3},
    ]
    configuration["users"][0]["contacts"] = ["bob@example.org", 7]
    configuration["policies"].append({"identity": "gold", "xmpp": 1})

    result = _import(config_path, tmp_path, document)

    _assert_refused_and_nothing_changed(cli, result, before)
    lines = result.err.splitlines()
    assert lines[0] == "edgeproxy: refused: 7 problems, nothing was changed:"
    assert lines[1:] == [
        '  gateway: keepalive-interval: must be an integer ≥ 1, got "5m"',
        "  partners[1]: domain: missing (it is required)",
        '  partners[1]: dialback: must be true or false, got "yes"',
        '  partners[2] (gmail.com): unknown field "conection-limit" (the fields are: domain, '
        "description, additional-domains, type, tls, sasl, dialback, keepalive, "
        "connection-limit, proxy-fqdn)",
        '  partners[2] (gmail.com): tls: must be one of required, optional, not-supported, '
        'got "sometimes"',
        "  policies[1] (gold): xmpp: must be true or false, got 1",
        "  users[0] (sip:alice@contoso.test): contacts[1]: must be text, got 7",
    ]


def test_rule_violations_are_named_by_their_item_too(cli, config_path, tmp_path, document):
    before = cli("config", "export").out
    configuration = document["configuration"]
    configuration["partners"] += [
        {"domain": "gmail.com", "tls": "NotSupported", "sasl": "Optional"},
        {"domain": "northwind.example", "additional-domains": ["FABRIKAM.com"]},
        {"domain": "Fabrikam.com"},
    ]
    configuration["users"][0]["policy"] = "platinum"

    result = _import(config_path, tmp_path, document)

    _assert_refused_and_nothing_changed(cli, result, before)
    assert result.err.splitlines()[1:] == [
        "  partners[1] (gmail.com): SASL needs TLS: with TLS not supported SASL could never be "
        "negotiated (set TLS to required or optional, or SASL to not-supported)",
        "  partners[2] (northwind.example): domain fabrikam.com already belongs to partner "
        "fabrikam.com (a domain belongs to one partner only)",
        "  partners[3] (Fabrikam.com): the same partner as partners[0] (fabrikam.com)",
        "  users[0] (sip:alice@contoso.test): no external access policy platinum",
    ]


def test_a_document_that_is_not_json_says_where(cli, config_path, tmp_path, document):
    before = cli("config", "export").out
    result = _import(config_path, tmp_path, '{"configuration": {\n  "gateway": {,}\n}}')
    _assert_refused_and_nothing_changed(cli, result, before)
    assert "not valid JSON" in result.err and "line 2, column" in result.err


def test_lync_spellings_are_imported_as_ours_with_warnings_naming_the_partner(
    cli, config_path, tmp_path, document
):
    document["configuration"]["partners"] = [
        {"domain": "fabrikam.com", "type": "Federated", "tls": "Optional", "sasl": "Required"},
        {"domain": "gmail.com", "type": "PUBLICUNVERIFIED", "tls": "NotSupported",
         "sasl": "notsupported"},
    ]

    result = _import(config_path, tmp_path, document)

    assert result.code == 0, result
    assert result.err == (
        "edgeproxy: warning: partners[0] (fabrikam.com): SASL is required, but with TLS optional "
        "and dialback on a partner may authenticate by dialback instead, over TLS or over "
        "unencrypted TCP (set TLS to required and dialback off to insist on SASL)\n"
    )
    stored = json.loads(cli("partner", "get", "--json").out)
    assert [(p["type"], p["tls"], p["sasl"]) for p in stored] == [
        ("federated", "optional", "required"),
        ("public-unverified", "not-supported", "not-supported"),
    ]
