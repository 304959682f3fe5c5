"""SnapshotHolder: a running server picks up committed changes without restart (issue 3 §4)."""

from __future__ import annotations

import time

from _policy_helpers import run_cli_subprocess

from edgeproxy.policy import operations as ops
from edgeproxy.policy.engine import Allow, Refuse, Stanza, StanzaKind, decide_inbound
from edgeproxy.policy.holder import POLL_INTERVAL, SnapshotHolder
from edgeproxy.policy.model import AccessPolicy, Partner, PartnerType, User
from edgeproxy.policy.store import Store

OURS = ("contoso.test",)


def test_unchanged_store_keeps_the_same_snapshot_object(tmp_path):
    holder = SnapshotHolder.open(tmp_path, OURS)
    first = holder.snapshot
    assert holder.reload_if_changed() is False
    assert holder.snapshot is first
    holder.close()


def test_change_committed_by_the_cli_in_another_process_is_seen_within_two_seconds(
    config_path, state_dir
):
    with Store.open(state_dir) as store:
        ops.new_partner(store, OURS, Partner("fabrikam.com", type=PartnerType.FEDERATED))
        ops.set_policy(store, "global", lambda p: AccessPolicy("global", xmpp=True))
        ops.new_user(store, OURS, User("sip:alice@contoso.test"))
    holder = SnapshotHolder.open(state_dir, OURS)
    old = holder.snapshot
    stanza = Stanza(
        StanzaKind.MESSAGE,
        "chat",
        "x@fabrikam.com",
        "alice@contoso.test",
        stream_domains=frozenset({"fabrikam.com"}),
    )
    assert type(decide_inbound(old, stanza)) is Allow

    assert run_cli_subprocess(config_path, "policy", "set", "global", "--no-xmpp").code == 0
    committed_at = time.monotonic()
    while not holder.reload_if_changed():
        assert time.monotonic() - committed_at < 2.0, "change not seen within 2 s"
        time.sleep(POLL_INTERVAL / 10)
    assert isinstance(decide_inbound(holder.snapshot, stanza), Refuse)
    assert holder.snapshot.generation > old.generation
    # A decision already holding the old snapshot keeps its view (the swap is atomic).
    assert type(decide_inbound(old, stanza)) is Allow
    holder.close()


def test_refused_cli_change_does_not_trigger_a_reload(config_path, state_dir):
    assert run_cli_subprocess(config_path, "partner", "new", "fabrikam.com").code == 0
    holder = SnapshotHolder.open(state_dir, OURS)
    result = run_cli_subprocess(
        config_path, "partner", "set", "fabrikam.com", "--tls", "not-supported", "--no-dialback"
    )
    assert result.code == 1
    assert holder.reload_if_changed() is False
    holder.close()


def test_poll_interval_is_well_inside_the_two_second_budget():
    assert POLL_INTERVAL <= 1.0
