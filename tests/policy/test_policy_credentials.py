"""SIP digest credentials in the store and the CLI (issue 14): set-password / clear-password,
secrets never on argv nor in `user get`, config export/import with and without secrets."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3

import pytest
from _policy_helpers import write_config

from edgeproxy.cli import main
from edgeproxy.policy import operations as ops
from edgeproxy.policy import store as store_module
from edgeproxy.policy.credentials import credentials_for, digest_ha1, password_matches
from edgeproxy.policy.model import SipCredential, User
from edgeproxy.policy.snapshot import build_snapshot
from edgeproxy.policy.store import MIGRATIONS, Store
from edgeproxy.policy.validation import ChangeRefused

OURS = ("contoso.test",)
ALICE = "sip:alice@contoso.test"
PASSWORD = "correct horse battery staple"


def stored_user(state_dir, sip: str = ALICE) -> User:
    with Store.open(state_dir) as store:
        _generation, config = store.read()
    return next(u for u in config.users if u.sip == sip)


def expected_ha1(algorithm: str, text: str) -> str:
    h = hashlib.md5 if algorithm == "MD5" else hashlib.sha256
    return h(text.encode()).hexdigest()


@pytest.fixture
def alice(cli):
    assert cli("user", "new", "alice@contoso.test", "--name", "Alice").code == 0


@pytest.fixture
def no_prompt(monkeypatch):
    def refuse_to_prompt(prompt: str = "") -> str:
        raise AssertionError(f"unexpected prompt {prompt!r}")

    monkeypatch.setattr("getpass.getpass", refuse_to_prompt)


def prompts(monkeypatch, *answers: str) -> list[str]:
    """Make getpass answer ``answers`` in turn; return the list of prompts it was asked."""
    asked: list[str] = []
    queue = list(answers)

    def fake_getpass(prompt: str = "") -> str:
        asked.append(prompt)
        return queue.pop(0)

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    return asked


# -- hashing -----------------------------------------------------------------------------------


def test_ha1_is_the_rfc_digest_of_username_realm_password():
    # RFC 2617 §3.5: HA1 of Mufasa / testrealm@host.com / "Circle Of Life".
    assert digest_ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life") == (
        "939e7578ed9e3c518a452acee763bce9"
    )
    # RFC 7616 §3.9.1: the responses of both algorithms, computed from our HA1.
    nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    for algorithm, response in (
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ):
        ha1 = digest_ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
        ha2 = expected_ha1(algorithm, "GET:/dir/index.html")
        got = expected_ha1(algorithm, f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}")
        assert got == response


def test_credentials_use_the_user_part_and_the_sip_domain_as_realm():
    creds = credentials_for(ALICE, PASSWORD)
    assert [c.algorithm for c in creds] == ["MD5", "SHA-256"]
    for c in creds:
        assert c.realm == "contoso.test"
        assert c.ha1 == expected_ha1(c.algorithm, f"alice:contoso.test:{PASSWORD}")
        assert password_matches(c, ALICE, PASSWORD)
        assert not password_matches(c, ALICE, PASSWORD + "x")
    with pytest.raises(ValueError, match="empty"):
        credentials_for(ALICE, "")


# -- store -------------------------------------------------------------------------------------


def test_store_round_trip_keeps_credentials_and_the_snapshot_carries_them(tmp_path):
    user = User(sip=ALICE, credentials=credentials_for(ALICE, PASSWORD))
    with Store.open(tmp_path) as store:
        with store.write() as tx:
            tx.put_user(user)
            tx.put_user(User(sip="sip:bob@contoso.test"))
        generation, config = store.read()
    assert config.users[0] == user
    assert config.users[1].credentials == ()
    snapshot = build_snapshot(config, OURS, generation=generation)
    assert snapshot.users["alice@contoso.test"].user.credentials == user.credentials


def test_removing_a_user_removes_its_credentials(tmp_path):
    with Store.open(tmp_path) as store:
        ops.new_user(store, OURS, User(sip=ALICE))
        ops.set_password(store, OURS, ALICE, PASSWORD)
        ops.remove_user(store, ALICE)
        ops.new_user(store, OURS, User(sip=ALICE))
        _generation, config = store.read()
    assert config.users[0].credentials == ()
    conn = sqlite3.connect(tmp_path / store_module.STORE_FILE)
    assert conn.execute("SELECT count(*) FROM credentials").fetchone()[0] == 0
    conn.close()


def test_a_schema_1_store_is_migrated_and_its_users_can_get_a_password(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:1])
    with Store.open(tmp_path) as old:
        assert old.schema_version() == 1
        with old.write() as tx:
            # The schema-1 row mapping, written by hand: the current one knows credentials.
            tx._conn.execute(  # noqa: SLF001
                "INSERT INTO users (sip, name, site, sba, policy) VALUES (?, 'Alice', '', 0, NULL)",
                (ALICE,),
            )
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    with Store.open(tmp_path) as store:
        assert store.schema_version() == len(MIGRATIONS) == 3
        _generation, config = store.read()
        assert config.users == (User(sip=ALICE, name="Alice"),)
        ops.set_password(store, OURS, ALICE, PASSWORD)
    assert stored_user(tmp_path).credentials == credentials_for(ALICE, PASSWORD)


def test_user_set_and_pending_requests_keep_the_credentials(tmp_path):
    with Store.open(tmp_path) as store:
        ops.new_user(store, OURS, User(sip=ALICE))
        ops.set_password(store, OURS, ALICE, PASSWORD)
        ops.set_user(store, OURS, ALICE, lambda u: User(**{**_fields(u), "name": "A"}))
        ops.record_pending_request(store, OURS, ALICE, "bob@gmail.com")
    assert stored_user(tmp_path).credentials == credentials_for(ALICE, PASSWORD)


def _fields(user: User) -> dict[str, object]:
    return {f: getattr(user, f) for f in user.__struct_fields__}


def test_malformed_or_duplicate_credentials_are_refused(tmp_path):
    good = credentials_for(ALICE, PASSWORD)
    bad_cases = [
        (SipCredential("MD5", "contoso.test", "ABCDEF" * 5 + "AB"),),  # upper case
        (SipCredential("SHA-256", "contoso.test", "ab" * 16),),  # MD5 length
        (good[0], good[0]),
        (SipCredential("MD5", "", good[0].ha1),),
    ]
    with Store.open(tmp_path) as store:
        ops.new_user(store, OURS, User(sip=ALICE))
        for credentials in bad_cases:
            with pytest.raises(ChangeRefused, match="refused:"):
                ops.set_user(store, OURS, ALICE, lambda u, c=credentials: User(sip=u.sip, credentials=c))
    assert stored_user(tmp_path).credentials == ()


# -- user set-password / clear-password ----------------------------------------------------------


def test_set_password_from_a_file_stores_only_the_hashes(cli, alice, state_dir, tmp_path, no_prompt):
    secret = tmp_path / "password.txt"
    secret.write_text(f"{PASSWORD}\nnot part of it\n")
    result = cli("user", "set-password", "Alice@Contoso.test", "--password-file", str(secret))
    assert result.code == 0, result
    assert PASSWORD not in result.out + result.err
    creds = stored_user(state_dir).credentials
    assert {c.algorithm: c.ha1 for c in creds} == {
        "MD5": expected_ha1("MD5", f"alice:contoso.test:{PASSWORD}"),
        "SHA-256": expected_ha1("SHA-256", f"alice:contoso.test:{PASSWORD}"),
    }
    files = [state_dir / store_module.STORE_FILE, state_dir / (store_module.STORE_FILE + "-wal")]
    raw = b"".join(f.read_bytes() for f in files if f.exists())
    assert PASSWORD.encode() not in raw and expected_ha1("MD5", f"alice:contoso.test:{PASSWORD}").encode() in raw


@pytest.mark.parametrize(
    ("option", "stored"),
    [(None, ("MD5", "SHA-256")), ("both", ("MD5", "SHA-256")), ("md5", ("MD5",)), ("sha-256", ("SHA-256",))],
)
def test_set_password_algorithms_chooses_the_hashes_stored(
    cli, alice, state_dir, tmp_path, no_prompt, option, stored
):
    secret = tmp_path / "password.txt"
    secret.write_text(f"{PASSWORD}\n")
    cli("user", "set-password", ALICE, "--password-file", str(secret))  # both, then replaced
    extra = () if option is None else ("--algorithms", option)
    result = cli("user", "set-password", ALICE, "--password-file", str(secret), *extra)
    assert result.code == 0, result
    assert f"digest hashes only: {', '.join(stored)})" in result.out
    creds = stored_user(state_dir).credentials
    assert tuple(c.algorithm for c in creds) == stored
    assert all(c.realm == "contoso.test" for c in creds)
    assert {c.algorithm: c.ha1 for c in creds} == {
        a: expected_ha1(a, f"alice:contoso.test:{PASSWORD}") for a in stored
    }


def test_set_password_refuses_an_unknown_algorithm_and_keeps_the_old_hashes(
    cli, alice, state_dir, tmp_path, no_prompt
):
    secret = tmp_path / "password.txt"
    secret.write_text(f"{PASSWORD}\n")
    result = cli("user", "set-password", ALICE, "--password-file", str(secret), "--algorithms", "sha-1")
    assert result.code != 0
    assert stored_user(state_dir).credentials == ()


def test_set_password_md5_only_for_a_missing_user_or_an_empty_password_is_refused(
    cli, alice, state_dir, tmp_path, no_prompt
):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    result = cli("user", "set-password", ALICE, "--password-file", str(empty), "--algorithms", "md5")
    assert result.code == 1 and "empty" in result.err
    assert cli("user", "set-password", "bob@contoso.test", "--algorithms", "md5").code == 1
    assert stored_user(state_dir).credentials == ()


def test_set_password_reads_standard_input_with_dash(cli, alice, state_dir, monkeypatch, no_prompt):
    monkeypatch.setattr("sys.stdin", io.StringIO("from-stdin\r\n"))
    assert cli("user", "set-password", ALICE, "--password-file", "-").code == 0
    assert stored_user(state_dir).credentials == credentials_for(ALICE, "from-stdin")


def test_set_password_at_the_prompt_asks_twice(cli, alice, state_dir, monkeypatch):
    asked = prompts(monkeypatch, "typed twice", "typed twice")
    assert cli("user", "set-password", ALICE).code == 0
    assert len(asked) == 2
    assert stored_user(state_dir).credentials == credentials_for(ALICE, "typed twice")


def test_two_different_entries_at_the_prompt_are_refused_and_nothing_is_saved(
    cli, alice, state_dir, monkeypatch
):
    prompts(monkeypatch, "first", "second")
    result = cli("user", "set-password", ALICE)
    assert result.code == 1 and "differ" in result.err
    assert stored_user(state_dir).credentials == ()


def test_an_empty_password_is_refused_saying_why(cli, alice, state_dir, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    result = cli("user", "set-password", ALICE, "--password-file", str(empty))
    assert result.code == 1 and "empty" in result.err and "register as the user" in result.err
    prompts(monkeypatch, "", "")
    assert cli("user", "set-password", ALICE).code == 1
    assert stored_user(state_dir).credentials == ()


def test_a_password_for_a_user_that_does_not_exist_is_refused_before_asking(cli, state_dir, no_prompt):
    result = cli("user", "set-password", "bob@contoso.test")
    assert result.code == 1
    assert "no user sip:bob@contoso.test" in result.err and "user new" in result.err
    with Store.open(state_dir) as store:
        assert store.read()[1].users == ()
        with pytest.raises(ChangeRefused, match="no user"):
            ops.set_password(store, OURS, "bob@contoso.test", PASSWORD)


def test_an_unreadable_password_file_is_refused(cli, alice, state_dir, tmp_path):
    result = cli("user", "set-password", ALICE, "--password-file", str(tmp_path / "missing"))
    assert result.code == 1 and "cannot read the password" in result.err
    assert stored_user(state_dir).credentials == ()


def test_the_password_is_never_taken_from_argv(cli, alice, state_dir, no_prompt):
    assert cli("user", "set-password", ALICE, PASSWORD).code == 2
    for option in ("--pass", "--password-f"):  # no abbreviation of --password-file
        assert cli("user", "set-password", ALICE, option, PASSWORD).code == 2, option
    result = cli("user", "set-password", ALICE, "--password", PASSWORD)
    assert result.code == 2 and "--password-file PATH" in result.err
    assert PASSWORD not in result.err
    assert stored_user(state_dir).credentials == ()


def test_user_get_shows_whether_a_password_is_set_never_the_hashes(cli, alice, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD)
    cli("user", "set-password", ALICE, "--password-file", str(secret))
    ha1s = [c.ha1 for c in credentials_for(ALICE, PASSWORD)]
    one = cli("user", "get", ALICE, "--json").out
    listed = cli("user", "get", "--json").out
    text = cli("user", "get", ALICE).out + cli("user", "get").out
    for output in (one, listed, text):
        assert "credentials" not in output and not any(h in output for h in ha1s)
    user = json.loads(one)
    assert list(user)[-2:] == ["password-set", "password-algorithms"]
    assert (user["password-set"], user["password-algorithms"]) == (True, ["MD5", "SHA-256"])
    assert json.loads(listed) == [user]
    assert "password-set: true" in text and "password-algorithms: MD5, SHA-256" in text


def test_clear_password_removes_the_credentials(cli, alice, state_dir, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD)
    cli("user", "set-password", ALICE, "--password-file", str(secret))
    cleared = cli("user", "clear-password", ALICE)
    assert cleared.code == 0 and "cleared" in cleared.out
    assert stored_user(state_dir).credentials == ()
    assert json.loads(cli("user", "get", ALICE, "--json").out)["password-set"] is False
    again = cli("user", "clear-password", ALICE)
    assert again.code == 0 and "had no password" in again.out
    assert cli("user", "clear-password", "bob@contoso.test").code == 1


def test_a_new_password_replaces_the_old_one(cli, alice, state_dir, tmp_path):
    secret = tmp_path / "pw"
    for password in ("the first one", "the second one"):
        secret.write_text(password)
        assert cli("user", "set-password", ALICE, "--password-file", str(secret)).code == 0
    assert stored_user(state_dir).credentials == credentials_for(ALICE, "the second one")


# -- dialback secret -----------------------------------------------------------------------------


def test_the_dialback_secret_on_argv_is_a_usage_error_naming_the_new_options(cli, no_prompt):
    before = cli("gateway", "get", "--json").out
    result = cli("gateway", "set", "--dialback-secret", "a-shared-secret-for-the-pool")
    assert result.code == 2
    assert "--dialback-secret-file" in result.err and "--dialback-secret-prompt" in result.err
    assert cli("gateway", "get", "--json").out == before


def test_the_dialback_secret_from_a_prompt_asks_twice(cli, monkeypatch):
    asked = prompts(monkeypatch, "typed-dialback-secret-1", "typed-dialback-secret-1")
    assert cli("gateway", "set", "--dialback-secret-prompt").code == 0
    assert len(asked) == 2
    gateway = json.loads(cli("gateway", "get", "--json").out)
    assert gateway["dialback-secret"] == "typed-dialback-secret-1"
    prompts(monkeypatch, "typed-dialback-secret-2", "typed-dialback-secret-3")
    assert cli("gateway", "set", "--dialback-secret-prompt").code == 1
    assert json.loads(cli("gateway", "get", "--json").out) == gateway


def test_the_dialback_secret_from_standard_input(cli, monkeypatch, no_prompt):
    monkeypatch.setattr("sys.stdin", io.StringIO("secret-from-standard-input\n"))
    assert cli("gateway", "set", "--dialback-secret-file", "-").code == 0
    gateway = json.loads(cli("gateway", "get", "--json").out)
    assert gateway["dialback-secret"] == "secret-from-standard-input"


# -- config export / import --------------------------------------------------------------------


@pytest.fixture
def alice_with_password(cli, alice, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD)
    assert cli("user", "set-password", ALICE, "--password-file", str(secret)).code == 0


def test_export_leaves_the_secrets_out_unless_asked(cli, alice_with_password, state_dir):
    dialback = json.loads(cli("gateway", "get", "--json").out)["dialback-secret"]
    ha1s = [c.ha1 for c in credentials_for(ALICE, PASSWORD)]
    plain = cli("config", "export").out
    assert dialback not in plain and not any(h in plain for h in ha1s)
    document = json.loads(plain)
    assert "dialback-secret" not in document["configuration"]["gateway"]
    assert "credentials" not in document["configuration"]["users"][0]
    assert document["configuration"]["users"][0]["name"] == "Alice"

    full = json.loads(cli("config", "export", "--include-secrets").out)["configuration"]
    assert full["gateway"]["dialback-secret"] == dialback
    assert full["users"][0]["credentials"] == [
        {"algorithm": c.algorithm, "realm": c.realm, "ha1": c.ha1}
        for c in stored_user(state_dir).credentials
    ]


def other_edge(tmp_path, capsys):
    path = write_config(tmp_path / "other-edge")

    def run(*args: str):
        capsys.readouterr()
        code = main([*args, "--config", str(path)])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run, path.parent / "state"


def test_import_with_secrets_carries_the_dialback_secret_and_passwords(
    cli, alice_with_password, tmp_path, capsys
):
    exported = tmp_path / "full.json"
    assert cli("config", "export", "--include-secrets", "--out", str(exported)).code == 0
    dialback = json.loads(cli("gateway", "get", "--json").out)["dialback-secret"]
    run, other_state = other_edge(tmp_path, capsys)
    code, out, _err = run("config", "import", str(exported))
    assert code == 0 and "kept from this store" not in out
    assert json.loads(run("gateway", "get", "--json")[1])["dialback-secret"] == dialback
    creds = stored_user(other_state).credentials
    assert creds and all(password_matches(c, ALICE, PASSWORD) for c in creds)


def test_import_without_secrets_keeps_the_stored_ones(cli, alice_with_password, tmp_path, capsys):
    exported = tmp_path / "plain.json"
    assert cli("config", "export", "--out", str(exported)).code == 0
    run, other_state = other_edge(tmp_path, capsys)
    other_dialback = json.loads(run("gateway", "get", "--json")[1])["dialback-secret"]
    code, out, _err = run("config", "import", str(exported))
    assert code == 0 and "kept from this store: the dialback secret" in out
    assert json.loads(run("gateway", "get", "--json")[1])["dialback-secret"] == other_dialback
    assert stored_user(other_state).credentials == ()  # a user new to that store: no password

    # Back into the edge it came from: alice keeps her password.
    imported = cli("config", "import", str(exported))
    assert imported.code == 0 and "passwords of 1 user(s)" in imported.out
    assert json.loads(cli("user", "get", ALICE, "--json").out)["password-set"] is True


def test_import_with_empty_credentials_removes_the_password(cli, alice_with_password, tmp_path):
    document = json.loads(cli("config", "export", "--include-secrets").out)
    document["configuration"]["users"][0]["credentials"] = []
    path = tmp_path / "cleared.json"
    path.write_text(json.dumps(document))
    assert cli("config", "import", str(path)).code == 0
    assert json.loads(cli("user", "get", ALICE, "--json").out)["password-set"] is False


def test_import_of_malformed_credentials_is_refused_and_changes_nothing(
    cli, alice_with_password, tmp_path, state_dir
):
    before = cli("config", "export", "--include-secrets").out
    for credential in (
        {"algorithm": "SHA-1", "realm": "contoso.test", "ha1": "ab" * 20},
        {"algorithm": "MD5", "realm": "contoso.test", "ha1": "not hex at all, 32 characters.."},
        {"algorithm": "MD5", "realm": "contoso.test"},
    ):
        document = json.loads(before)
        document["configuration"]["users"][0]["credentials"] = [credential]
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(document))
        result = cli("config", "import", str(path))
        assert result.code == 1 and "refused" in result.err, credential
    assert cli("config", "export", "--include-secrets").out == before
