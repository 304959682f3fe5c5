"""config export / import: moving the whole configuration between edges (issue 3 §5)."""

from __future__ import annotations

import json
import os

from _policy_helpers import write_config

from edgeproxy.cli import main


def populate(cli) -> None:
    steps = [
        (
            "partner",
            "new",
            "fabrikam.com",
            "--type",
            "federated",
            "--additional-domain",
            "corp.fabrikam.com",
            "--description",
            "Fabrikam, Inc.",
            "--connection-limit",
            "5",
        ),
        (
            "partner",
            "new",
            "gmail.com",
            "--tls",
            "not-supported",
            "--sasl",
            "not-supported",
            "--proxy-fqdn",
            "xmpp-server.l.google.com",
            "--no-keepalive",
        ),
        ("partner", "new", "bücher.de", "--tls", "optional", "--type", "public-verified"),
        ("gateway", "set", "--keepalive-interval", "120", "--log-message-bodies"),
        ("policy", "set", "global", "--xmpp", "--description", "everyone"),
        ("policy", "new", "site:Tokyo", "--no-xmpp"),
        ("policy", "new", "gold", "--xmpp", "--federation", "--public-cloud"),
        ("user", "new", "alice@contoso.test", "--name", "Alice", "--site", "Tokyo"),
        ("user", "new", "bob@contoso.test", "--sba"),
        ("policy", "grant", "alice@contoso.test", "gold"),
        ("user", "contact", "add", "alice@contoso.test", "friend@gmail.com"),
    ]
    for step in steps:
        result = cli(*step)
        assert result.code == 0, (step, result)


def views(cli) -> list[str]:
    return [
        cli(*args, "--json").out
        for args in (("partner", "get"), ("gateway", "get"), ("policy", "get"), ("user", "get"))
    ]


def test_export_then_import_into_an_empty_state_gives_an_identical_configuration(
    cli, tmp_path, capsys
):
    populate(cli)
    password = tmp_path / "password"
    password.write_text("alice's password\n")
    assert cli("user", "set-password", "alice@contoso.test", "--password-file", str(password)).code == 0
    exported = tmp_path / "export.json"
    assert cli("config", "export", "--include-secrets", "--out", str(exported)).code == 0
    assert os.stat(exported).st_mode & 0o077 == 0  # holds the dialback secret
    original_views = views(cli)

    other = write_config(tmp_path / "other-edge")

    def other_cli(*args):
        capsys.readouterr()
        code = main([*args, "--config", str(other)])
        out = capsys.readouterr()
        return code, out.out

    assert other_cli("config", "import", str(exported))[0] == 0
    assert other_cli("config", "export", "--include-secrets")[1].encode() == exported.read_bytes()
    other_views = [
        other_cli(*args, "--json")[1]
        for args in (("partner", "get"), ("gateway", "get"), ("policy", "get"), ("user", "get"))
    ]
    assert other_views == original_views


def test_export_document_has_the_documented_shape(cli):
    populate(cli)
    document = json.loads(cli("config", "export").out)
    assert document["format"] == "edgeproxy-policy" and document["version"] == 1
    assert set(document["configuration"]) == {"gateway", "partners", "policies", "users"}


def test_import_replaces_the_previous_configuration(cli, tmp_path):
    populate(cli)
    snapshot = tmp_path / "snap.json"
    cli("config", "export", "--out", str(snapshot))
    cli("partner", "new", "late.example")
    cli("user", "remove", "bob@contoso.test")
    assert cli("config", "import", str(snapshot)).code == 0
    assert [p["domain"] for p in json.loads(cli("partner", "get", "--json").out)] == [
        "fabrikam.com",
        "gmail.com",
        "xn--bcher-kva.de",
    ]


def test_invalid_import_is_refused_and_changes_nothing(cli, tmp_path):
    populate(cli)
    before = views(cli)
    document = json.loads(cli("config", "export").out)
    document["configuration"]["partners"][0]["tls"] = "not-supported"
    document["configuration"]["partners"][0]["dialback"] = False
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    result = cli("config", "import", str(bad))
    assert result.code == 1 and "SASL needs TLS" in result.err
    assert "partners[0] (fabrikam.com)" in result.err

    document = json.loads(cli("config", "export").out)
    document["configuration"]["policies"] = [
        p for p in document["configuration"]["policies"] if p["identity"] != "global"
    ]
    bad.write_text(json.dumps(document))
    result = cli("config", "import", str(bad))
    assert result.code == 1 and "global policy" in result.err

    bad.write_text('{"format": "something-else"}')
    assert cli("config", "import", str(bad)).code == 1
    assert cli("config", "import", str(tmp_path / "missing.json")).code == 1
    assert views(cli) == before
