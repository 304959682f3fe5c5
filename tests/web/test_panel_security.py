"""The Control Panel's security model over real sockets (an in-process admin listener on
127.0.40.1 with ``[admin] ui = true``): login, sessions, cookies, CSRF, roles, the Host check and
the audit trail. A request without the session cookie or without the CSRF token is refused and
changes nothing."""

from __future__ import annotations

import io
import json

import pytest
import trio
from _panel_client import Client
from _panel_fixture import LISTEN, PanelRunning

from edgeproxy.config import load_config
from edgeproxy.ops.admin import PanelRole, panel_password_path, write_panel_password
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.metrics import Metrics
from edgeproxy.policy.store import Store
from edgeproxy.web.auth import LoginThrottle, Sessions
from edgeproxy.web.server import serve_admin

NEW_PARTNER = {"domain": "fabrikam.test", "additional_domains": "", "description": "", "type": "federated",
               "tls": "required", "sasl": "required", "dialback": "on", "keepalive": "on",
               "connection_limit": "", "proxy_fqdn": ""}


def stored_partners(panel: PanelRunning) -> list[str]:
    store = Store.open(panel.config.state_dir)
    try:
        return [p.domain for p in store.read()[1].partners]
    finally:
        store.close()


async def run(fn):  # type: ignore[no-untyped-def]
    return await trio.to_thread.run_sync(fn)


async def test_pages_need_a_session_a_get_goes_to_the_login_page(panel: PanelRunning) -> None:
    client = panel.client()
    for path in ("/ui/", "/ui/partners", "/ui/gateway", "/ui/users"):
        answer = await run(lambda p=path: client.get(p))
        assert (answer.status, answer.headers["location"]) == (303, "/ui/login"), path
    assert (await run(lambda: client.get("/ui/static/panel.css"))).status == 200  # assets are public


async def test_a_change_without_the_session_cookie_is_refused_and_nothing_is_stored(panel: PanelRunning) -> None:
    client = panel.client()
    await run(lambda: client.login(panel.token))
    csrf = (await run(lambda: client.get("/ui/partners/new"))).csrf()
    stranger = panel.client()  # the same form, the right CSRF token, no session cookie
    answer = await run(lambda: stranger.post("/ui/partners/new", {**NEW_PARTNER, "csrf": csrf}))
    assert answer.status == 403 and "Not logged in" in answer.body
    assert stored_partners(panel) == []


async def test_a_change_without_or_with_a_wrong_csrf_token_is_refused_and_nothing_is_stored(panel: PanelRunning) -> None:
    client = panel.client()
    await run(lambda: client.login(panel.token))
    for fields in (NEW_PARTNER, {**NEW_PARTNER, "csrf": "forged"}):
        answer = await run(lambda f=fields: client.post("/ui/partners/new", f))
        assert answer.status == 403 and "CSRF token is missing or wrong" in answer.body
    assert stored_partners(panel) == []
    # the same request with the session's token is a change, logged with who made it
    csrf = (await run(lambda: client.get("/ui/partners/new"))).csrf()
    answer = await run(lambda: client.post("/ui/partners/new", {**NEW_PARTNER, "csrf": csrf}))
    assert answer.status == 303 and stored_partners(panel) == ["fabrikam.test"]
    [event] = panel.events("EP8014")
    assert event["kind"] == "partner" and event["name"] == "fabrikam.test" and event["action"] == "created"
    assert str(event["who"]).startswith("admin (token, 127.0.0.1:")


async def test_logout_needs_the_csrf_token_too(panel: PanelRunning) -> None:
    client = panel.client()
    await run(lambda: client.login(panel.token))
    assert (await run(lambda: client.post("/ui/logout", {}))).status == 403
    assert (await run(lambda: client.get("/ui/"))).status == 200  # still logged in
    csrf = (await run(lambda: client.get("/ui/"))).csrf()
    assert (await run(lambda: client.post("/ui/logout", {"csrf": csrf}))).status == 303
    assert (await run(lambda: client.get("/ui/"))).headers["location"] == "/ui/login"


async def test_the_session_cookie_is_httponly_samesite_strict_and_a_new_id_per_login(panel: PanelRunning) -> None:
    client = panel.client()
    answer = await run(lambda: client.login(panel.token))
    assert answer.status == 303
    [cookie] = [c for c in answer.cookies if c.startswith("edgeproxy_session=")]
    attributes = [a.strip().lower() for a in cookie.split(";")[1:]]
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/ui" in attributes
    assert "secure" not in attributes  # a plain-HTTP listener; Secure on a TLS one
    first = client.cookies["edgeproxy_session"]
    await run(lambda: client.login(panel.token))
    assert client.cookies["edgeproxy_session"] != first
    stale = Client(LISTEN, panel.endpoint.port, cookies={"edgeproxy_session": first})
    assert (await run(lambda: stale.get("/ui/"))).status == 303  # the old session ended


async def test_a_wrong_secret_is_refused_logged_and_throttled(panel: PanelRunning) -> None:
    client = panel.client()
    answer = await run(lambda: client.login("not-the-token"))
    assert answer.status == 403 and "Wrong token or password" in answer.body
    assert "edgeproxy_session" not in client.cookies
    [denied] = panel.events("EP8003")
    assert denied["path"] == "/ui/login" and denied["reason"] == "wrong credential"
    for _ in range(5):
        last = await run(lambda: client.login("still-wrong"))
    assert last.status == 429
    assert (await run(lambda: client.login(panel.token))).status == 429  # even the right one, for a minute


async def test_a_login_form_without_its_csrf_cookie_is_refused(panel: PanelRunning) -> None:
    client = panel.client()
    form = await run(lambda: client.get("/ui/login"))
    client.cookies.clear()
    answer = await run(lambda: client.post("/ui/login", {"csrf": form.csrf(), "secret": panel.token}))
    assert answer.status == 403 and "edgeproxy_session" not in client.cookies


async def test_the_read_only_role_sees_the_lists_and_changes_nothing(panel: PanelRunning) -> None:
    write_panel_password(panel_password_path(panel.config, PanelRole.READ_ONLY), "look-but-do-not-touch")
    client = panel.client()
    assert (await run(lambda: client.login("look-but-do-not-touch"))).status == 303
    for path in ("/ui/", "/ui/partners", "/ui/policies", "/ui/users", "/ui/gateway"):
        page = await run(lambda p=path: client.get(p))
        assert page.status == 200, path
        assert 'id="commit"' not in page.body and 'id="new-partner"' not in page.body
    csrf = (await run(lambda: client.get("/ui/"))).csrf()
    answer = await run(lambda: client.post("/ui/partners/new", {**NEW_PARTNER, "csrf": csrf}))
    assert answer.status == 403 and "read-only" in answer.body
    assert stored_partners(panel) == []
    [login] = panel.events("EP8015")
    assert login["role"] == "read-only" and login["method"] == "password"


async def test_an_admin_password_logs_in_as_admin(panel: PanelRunning) -> None:
    write_panel_password(panel_password_path(panel.config, PanelRole.ADMIN), "correct horse battery")
    client = panel.client()
    assert (await run(lambda: client.login("correct horse battery"))).status == 303
    assert 'id="new-partner"' in (await run(lambda: client.get("/ui/partners"))).body


async def test_the_panel_answers_only_under_its_own_names(panel: PanelRunning) -> None:
    client = Client(LISTEN, panel.endpoint.port, host_header=f"evil.example:{panel.endpoint.port}")
    assert (await run(lambda: client.get("/ui/login"))).status == 421
    assert (await run(lambda: client.post("/ui/login", {"secret": panel.token}))).status == 421


async def test_the_panel_is_off_unless_configured(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from _ops_fakes import FakeEdge, write_ops_config

    config = load_config(write_ops_config(tmp_path / "edge", listen=f"{LISTEN}:0"))
    edge = FakeEdge()
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(lambda task_status: serve_admin(
            config, edge, Metrics(), edge, event_log=EventLog(io.StringIO()), task_status=task_status))
        client = Client(LISTEN, endpoint.port)
        assert (await run(lambda: client.get("/ui/login"))).status == 404
        assert (await run(lambda: client.get("/healthz"))).status == 200
        nursery.cancel_scope.cancel()


async def test_pages_carry_the_security_headers(panel: PanelRunning) -> None:
    client = panel.client()
    page = await run(lambda: client.get("/ui/login"))
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
    css = await run(lambda: client.get("/ui/static/panel.css"))
    assert css.headers["content-type"].startswith("text/css") and css.headers["x-content-type-options"] == "nosniff"


# -- the pieces, without sockets ---------------------------------------------------------------


def test_sessions_expire_when_idle_and_at_the_absolute_bound() -> None:
    now = [0.0]
    sessions = Sessions(clock=lambda: now[0], idle=60, absolute=300)
    s = sessions.create(PanelRole.ADMIN, "token", "peer")
    now[0] = 59
    assert sessions.get(s.id) is s
    now[0] = 59 + 61
    assert sessions.get(s.id) is None  # idle
    s = sessions.create(PanelRole.ADMIN, "token", "peer")
    for t in range(150, 301, 50):
        now[0] = t
        assert sessions.get(s.id) is s
    now[0] = 421
    assert sessions.get(s.id) is None  # absolute: more than 300 s after the login


def test_the_session_table_is_bounded_the_oldest_goes_first() -> None:
    sessions = Sessions(limit=3)
    made = [sessions.create(PanelRole.READ_ONLY, "password", str(i)) for i in range(5)]
    assert len(sessions) == 3
    assert sessions.get(made[0].id) is None and sessions.get(made[1].id) is None
    assert sessions.get(made[4].id) is made[4]


def test_login_failures_are_counted_per_source_within_the_window() -> None:
    now = [0.0]
    throttle = LoginThrottle(clock=lambda: now[0], limit=2, window=60)
    throttle.failed("a")
    throttle.failed("a")
    assert throttle.blocked("a") and not throttle.blocked("b")
    now[0] = 61
    assert not throttle.blocked("a")


def test_the_event_log_keeps_recent_warnings_for_the_dashboard() -> None:
    from edgeproxy.ops import events

    log = EventLog(io.StringIO(), output="json")
    log.emit(events.ADMIN_DENIED, method="POST", path="/stop", peer="p", reason="no token")
    log.emit(events.CONFIG_RELOADED, added="", removed="", closed=0)  # info: not kept
    assert [e["id"] for e in log.recent_warnings()] == ["EP8003"]
    log.close()


@pytest.mark.parametrize("stored", ["", "scrypt$1$2", "bcrypt$x$y$z$a$b", "scrypt$1048576$8$1$AA==$AA=="])
def test_a_password_line_that_is_not_ours_never_matches(stored: str) -> None:
    from edgeproxy.ops.admin import verify_password

    assert verify_password(stored, "anything") is False


def test_the_password_file_is_private(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import stat

    from edgeproxy.ops.admin import read_panel_password, verify_password

    path = tmp_path / "state" / "ui-admin.password"
    write_panel_password(path, "a good password")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = read_panel_password(path)
    assert stored is not None and "a good password" not in stored and verify_password(stored, "a good password")
    assert json.dumps(stored)  # one ASCII line


async def test_a_body_over_the_bound_is_refused_with_413_even_chunked(panel: PanelRunning) -> None:
    import contextlib
    import socket

    def send(chunked: bool) -> bytes:
        body = b"secret=" + b"a" * 70_000
        head = "POST /ui/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        if chunked:
            payload = head.encode() + b"Transfer-Encoding: chunked\r\n\r\n"
            for i in range(0, len(body), 8192):
                piece = body[i:i + 8192]
                payload += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
            payload += b"0\r\n\r\n"
        else:
            payload = head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        with socket.create_connection((LISTEN, panel.endpoint.port), timeout=5) as s:
            with contextlib.suppress(OSError):  # the server may answer and close before the end
                s.sendall(payload)
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except OSError:
                pass
        return data

    for chunked in (False, True):
        answer = await run(lambda c=chunked: send(c))
        assert answer.startswith(b"HTTP/1.1 413"), (chunked, answer[:200])
    assert panel.events("EP1007") == []


async def test_a_password_file_others_may_read_is_not_used(panel: PanelRunning) -> None:
    path = panel_password_path(panel.config, PanelRole.ADMIN)
    write_panel_password(path, "correct horse battery")
    path.chmod(0o644)
    client = panel.client()
    answer = await run(lambda: client.login("correct horse battery"))
    assert answer.status == 403 and "edgeproxy_session" not in client.cookies
    assert panel.events("EP1007") == []


async def test_a_link_cannot_put_words_on_a_page(panel: PanelRunning) -> None:
    client = panel.client()
    assert "Send your token" not in (await run(lambda: client.get("/ui/login?notice=Send+your+token"))).body
    await run(lambda: client.login(panel.token))
    assert "Send your token" not in (await run(lambda: client.get("/ui/?notice=Send+your+token"))).body


def test_the_panel_is_off_by_default_and_on_in_the_embedded_default_on_loopback() -> None:
    from edgeproxy.config import AdminSection, EdgeConfig, default_config_text, parse_config

    assert AdminSection().ui is False
    embedded: EdgeConfig = parse_config(default_config_text(), source="<embedded default>", base_dir="/tmp")
    assert embedded.admin.ui is True and embedded.admin.listen.startswith("127.0.0.1:")
