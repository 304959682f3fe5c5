"""RFC 2782 order of SRV records (dnspython's processing order, which draws from ``random``:
the tests seed it and put its state back afterwards)."""

import random
from collections import Counter

import pytest

from edgeproxy.dns.srv import SrvRecord, connection_targets, order_records


@pytest.fixture
def seed():
    """``seed(n)``: make the module-level random draws repeatable for this test."""
    state = random.getstate()
    yield random.seed
    random.setstate(state)


def R(priority, weight, target, port=5269):
    return SrvRecord.of(priority, weight, port, target)


def test_lower_priority_always_comes_first_whatever_the_weights(seed):
    records = [R(20, 1000, "backup.test"), R(10, 1, "primary.test"), R(30, 0, "last.test")]
    for n in range(50):
        seed(n)
        order = order_records(records)
        assert [r.target for r in order] == ["primary.test", "backup.test", "last.test"]


def test_weights_share_first_place_proportionally_within_a_priority(seed):
    records = [R(10, 60, "a.test"), R(10, 30, "b.test"), R(10, 10, "c.test")]
    seed(2782)
    firsts = Counter(order_records(records)[0].target for _ in range(20000))
    assert abs(firsts["a.test"] / 20000 - 0.6) < 0.02
    assert abs(firsts["b.test"] / 20000 - 0.3) < 0.02
    assert abs(firsts["c.test"] / 20000 - 0.1) < 0.02


def test_same_seed_gives_same_order(seed):
    records = [R(10, 5, f"h{i}.test") for i in range(8)]
    seed(7)
    first = order_records(records)
    seed(7)
    assert order_records(records) == first


def test_zero_weight_record_rarely_first_when_others_weigh_more(seed):
    records = [R(10, 0, "zero.test"), R(10, 100, "heavy.test")]
    seed(1)
    firsts = Counter(order_records(records)[0].target for _ in range(20000))
    assert 0 < firsts["zero.test"] < 20000 * 0.005  # weight 0 counts as 0.1: 0.1/100.1 ≈ 0.1 %


def test_every_record_appears_exactly_once(seed):
    records = [R(p, w, f"h{p}-{w}.test") for p in (1, 2) for w in (0, 3, 7)]
    seed(3)
    order = order_records(records)
    assert sorted(order) == sorted(records)


def test_single_dot_target_means_service_not_available():
    assert order_records([R(0, 0, ".")]) == []


def test_no_srv_falls_back_to_domain_on_5269():
    assert connection_targets("Fabrikam.TEST.", None) == [("fabrikam.test", 5269)]


def test_srv_targets_keep_their_ports():
    records = [R(10, 0, "xmpp.fabrikam.test.", 5270)]
    assert connection_targets("fabrikam.test", records) == [("xmpp.fabrikam.test", 5270)]
