"""The Control Panel on a pool member: a change to what the primary replicates is refused on the
page, naming the primary, and nothing is stored (the store's one refusal, shown like any other)."""

from __future__ import annotations

import html
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "web"))
from _panel_fixture import PanelRunning, panel  # noqa: E402, F401 - the fixture

from edgeproxy.policy.store import Store  # noqa: E402

PRIMARY = "10.0.0.1:5270"
REFUSAL = f"this edge is a member of an edge pool; change the configuration on the primary ({PRIMARY})"
PARTNER = {"domain": "fabrikam.test", "additional_domains": "", "description": "", "type": "federated",
           "tls": "required", "sasl": "required", "dialback": "on", "keepalive": "on",
           "connection_limit": "", "proxy_fqdn": ""}


async def test_a_partner_new_in_the_panel_of_a_member_is_refused_naming_the_primary(panel: PanelRunning) -> None:  # noqa: F811
    with Store.open(panel.config.state_dir) as store:
        store.join_pool(PRIMARY)
        generation = store.generation()
    client = panel.client()
    await trio.to_thread.run_sync(lambda: client.login(panel.token))

    def post(path: str, fields: dict[str, str]):  # type: ignore[no-untyped-def]
        csrf = client.get("/ui/").csrf()
        return client.post(path, {**fields, "csrf": csrf})

    answer = await trio.to_thread.run_sync(post, "/ui/partners/new", PARTNER)
    assert answer.status == 400 and html.escape(REFUSAL) in answer.body
    answer = await trio.to_thread.run_sync(post, "/ui/policies/new", {"identity": "federated", "xmpp": "on"})
    assert answer.status == 400 and html.escape(REFUSAL) in answer.body
    with Store.open(panel.config.state_dir) as store:
        assert store.generation() == generation and store.read()[1].partners == ()
    assert panel.events("EP8014") == []  # no change to audit
