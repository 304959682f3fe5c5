"""A CLI change made on the pool's primary is in effect on its member within 2 s.

The lab of ``_netns_lab`` in its replicated form: pool A is the primary (``[pool] role =
"primary"``), pool B its member (mutual TLS on the pool link, one pool secret); only A is set up
by the CLI, B serves A's store. DNS sends Prosody to B alone, so every message of
alice@fabrikam.test crosses the member. The partner row of fabrikam.test is removed on A with
``edgeproxy partner remove``, then made again with ``edgeproxy partner new``: 2 s after each
command, B's behaviour must be the new one — alice's message bounces while fabrikam.test is no
partner, and reaches carol through B once it is one again. B's ``partner get`` shows when its
copy changed (also within 2 s).
"""

from __future__ import annotations

import json
from pathlib import Path

import trio
from _netns_lab import DIALBACK_SECRET, PARTNER, PoolEdge, pool_lab, wait_until
from test_pool_failover import collect_errors, deliver, send_batch

from edgeproxy.tokenizer import Stanza

#: The acceptance bound: seconds from the CLI command's end on the primary to the member's
#: behaviour.
IN_EFFECT_WITHIN = 2.0
#: Seconds alice's message may take to come back as an error from the member.
BOUNCE_TIMEOUT = 15
#: Hang guard of the test.
TEST_BOUND = 100
PARTNER_ROW = ("--type", "federated", "--tls", "not-supported", "--sasl", "not-supported", "--dialback")


def member_has_partner(member: PoolEdge) -> bool:
    """Whether the member's copy of the store has fabrikam.test (``partner get`` on the member)."""
    rows = json.loads(member.cli("partner", "get", "--json").stdout)
    return any(row["domain"] == PARTNER for row in rows)


async def change_on_primary(primary: PoolEdge, member: PoolEdge, *args: str, present: bool) -> float:
    """Run ``edgeproxy ARGS`` on the primary; return when the command ended (trio clock), once
    the member's ``partner get`` shows the change — which must come within ``IN_EFFECT_WITHIN``
    (each look takes a CLI run, ~0.3 s: the measure is that coarse)."""
    primary.cli(*args)
    done = trio.current_time()
    while member_has_partner(member) != present:
        elapsed = trio.current_time() - done
        assert elapsed < IN_EFFECT_WITHIN, f"`edgeproxy {' '.join(args)}` not on the member after {elapsed:.2f} s"
        await trio.sleep(0.05)
    elapsed = trio.current_time() - done
    assert elapsed <= IN_EFFECT_WITHIN, f"`edgeproxy {' '.join(args)}` on the member after {elapsed:.2f} s"
    return done


async def test_cli_change_on_the_primary_is_in_effect_on_the_member_within_2s(tmp_path: Path) -> None:
    with trio.fail_after(TEST_BOUND):
        async with pool_lab(tmp_path, priorities={"b": 10}, replicated=True) as lab:
            a, b = lab.pools["a"], lab.pools["b"]
            alice = await lab.login()
            errors: list[Stanza] = []
            lab.nursery.start_soon(collect_errors, alice, errors)

            # the member was set up by nothing but the copy: the dialback secret came with it
            gateway = json.loads(b.cli("gateway", "get", "--json").stdout)
            assert gateway["dialback-secret"] == DIALBACK_SECRET
            first = await send_batch(alice, "replicated", 1)
            await deliver(lab, first, errors, "with the store the member got from the primary")
            assert lab.ua.bodies_from(b.address) == first

            done = await change_on_primary(a, b, "partner", "remove", PARTNER, present=False)
            await trio.sleep_until(done + IN_EFFECT_WITHIN)
            refused = await send_batch(alice, "removed", 1)
            await wait_until(lambda: errors, BOUNCE_TIMEOUT, "alice's message to a pool that has no"
                             " partner fabrikam.test comes back as an error")
            assert [e.id for e in errors] == ["removed-0"], [e.raw for e in errors]
            assert refused[0] not in {r.body for r in lab.ua.received}
            errors.clear()

            done = await change_on_primary(a, b, "partner", "new", PARTNER, *PARTNER_ROW, present=True)
            await trio.sleep_until(done + IN_EFFECT_WITHIN)
            again = await send_batch(alice, "partner-again", 1)
            await deliver(lab, again, errors, "after the partner was made again on the primary")
            assert lab.ua.bodies_from(b.address) == [*first, *again]
            assert lab.ua.bodies_from(a.address) == []
