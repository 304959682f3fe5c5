"""A pool member's store: a replica of its primary's, refusing changes to what is replicated and
keeping its own contact and pending lists."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from edgeproxy.policy import operations as ops
from edgeproxy.policy.model import Configuration, GatewaySettings, Partner, SipCredential, User
from edgeproxy.policy.store import ReplicaWriteRefused, Store, replicated_part
from edgeproxy.policy.validation import ChangeRefused

OURS = ("contoso.test",)
PRIMARY = "10.0.0.1:5270"
ALICE = "sip:alice@contoso.test"
HA1 = SipCredential(algorithm="MD5", realm="contoso.test", ha1="0" * 32)


def primary_configuration(tmp_path: Path) -> tuple[int, Configuration]:
    """A primary's store with a partner and a user who has contacts of the primary's own."""
    with Store.open(tmp_path / "primary") as primary:
        ops.new_partner(primary, OURS, Partner(domain="fabrikam.com"))
        ops.new_user(primary, OURS, User(sip=ALICE, credentials=(HA1,)))
        ops.add_contact(primary, OURS, ALICE, "bob@fabrikam.com")
        return primary.read()


def test_a_standalone_store_is_no_replica_and_accepts_changes(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s") as store:
        assert store.replica() is None
        ops.new_partner(store, OURS, Partner(domain="fabrikam.com"))
        assert [p.domain for p in store.read()[1].partners] == ["fabrikam.com"]


def test_a_replica_refuses_a_change_to_the_replicated_content_naming_the_primary(
    tmp_path: Path,
) -> None:
    with Store.open(tmp_path / "m") as store:
        store.join_pool(PRIMARY)
        generation, before = store.read()
        with pytest.raises(ReplicaWriteRefused) as refused:
            ops.new_partner(store, OURS, Partner(domain="fabrikam.com"))
        assert isinstance(refused.value, ChangeRefused)  # the commands and the panel show it
        assert str(refused.value) == (
            "refused: this edge is a member of an edge pool; change the configuration on the"
            f" primary ({PRIMARY})"
        )
        with pytest.raises(ReplicaWriteRefused):
            ops.set_gateway(store, lambda g: msgspec.structs.replace(g, keepalive_interval=7))
        assert store.read() == (generation, before)  # nothing stored, generation unchanged


def test_the_replicator_applies_the_primary_content_and_records_its_generation(
    tmp_path: Path,
) -> None:
    primary_generation, content = primary_configuration(tmp_path)
    with Store.open(tmp_path / "m") as store:
        assert store.join_pool(PRIMARY).primary_generation is None
        own = store.generation()
        store.apply_replica(primary_generation, content)
        generation, copied = store.read()
        assert generation == own + 1
        assert store.replica() is not None
        assert store.replica().primary_generation == primary_generation  # type: ignore[union-attr]
        assert copied.partners == content.partners and copied.gateway == content.gateway
        [alice] = copied.users
        assert alice.credentials == (HA1,)
        assert alice.contacts == ()  # the primary's contact lists are its own


def test_contact_lists_are_per_member_kept_across_replication_and_writable(tmp_path: Path) -> None:
    primary_generation, content = primary_configuration(tmp_path)
    with Store.open(tmp_path / "m") as store:
        store.join_pool(PRIMARY)
        store.apply_replica(primary_generation, content)
        # The member's gateway records its own contacts: that passes on a replica.
        ops.add_contact(store, OURS, ALICE, "carol@fabrikam.com")
        ops.record_pending_request(store, OURS, ALICE, "dave@fabrikam.com")
        renamed = msgspec.structs.replace(content.users[0], name="Alice")
        store.apply_replica(primary_generation + 1, msgspec.structs.replace(content, users=(renamed,)))
        [alice] = store.read()[1].users
        assert (alice.name, alice.contacts, alice.pending) == (
            "Alice", ("carol@fabrikam.com",), ("dave@fabrikam.com",)
        )
        # A user the primary removed takes its per-member lists with it.
        store.apply_replica(primary_generation + 2, msgspec.structs.replace(content, users=()))
        assert store.read()[1].users == ()
        assert store._conn.execute("SELECT count(*) FROM contacts").fetchone() == (0,)


def test_a_change_of_primary_forgets_the_generation_copied_and_leaving_makes_it_writable(
    tmp_path: Path,
) -> None:
    with Store.open(tmp_path / "m") as store:
        store.join_pool(PRIMARY)
        store.apply_replica(41, Configuration(gateway=store.read()[1].gateway))
        assert store.join_pool(PRIMARY).primary_generation == 41  # same primary: kept
        assert store.join_pool("10.0.0.2:5270").primary_generation is None
        assert store.leave_pool() is True and store.replica() is None
        ops.new_partner(store, OURS, Partner(domain="fabrikam.com"))
        assert store.leave_pool() is False


def test_only_a_replica_takes_a_primary_copy(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s") as store:
        generation, content = store.read()
        with pytest.raises(ChangeRefused):
            store.apply_replica(5, content)
        assert store.generation() == generation


def test_replicated_part_leaves_out_the_per_member_lists() -> None:
    user = User(sip=ALICE, contacts=("bob@fabrikam.com",), pending=("eve@fabrikam.com",))
    config = Configuration(gateway=GatewaySettings(dialback_secret="s"), users=(user,))
    assert replicated_part(config).users == (User(sip=ALICE),)
