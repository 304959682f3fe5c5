import random
from collections import Counter

from edgeproxy.dns.srv import SrvRecord, connection_targets, order_records


def R(priority, weight, target, port=5269):
    return SrvRecord.of(priority, weight, port, target)


def test_lower_priority_always_comes_first_whatever_the_weights():
    records = [R(20, 1000, "backup.test"), R(10, 1, "primary.test"), R(30, 0, "last.test")]
    for seed in range(50):
        order = order_records(records, random.Random(seed))
        assert [r.target for r in order] == ["primary.test", "backup.test", "last.test"]


def test_weights_share_first_place_proportionally_within_a_priority():
    records = [R(10, 60, "a.test"), R(10, 30, "b.test"), R(10, 10, "c.test")]
    rng = random.Random(2782)
    firsts = Counter(order_records(records, rng)[0].target for _ in range(20000))
    assert abs(firsts["a.test"] / 20000 - 0.6) < 0.02
    assert abs(firsts["b.test"] / 20000 - 0.3) < 0.02
    assert abs(firsts["c.test"] / 20000 - 0.1) < 0.02


def test_same_seed_gives_same_order():
    records = [R(10, 5, f"h{i}.test") for i in range(8)]
    assert order_records(records, random.Random(7)) == order_records(records, random.Random(7))


def test_zero_weight_record_rarely_first_when_others_weigh_more():
    records = [R(10, 0, "zero.test"), R(10, 100, "heavy.test")]
    rng = random.Random(1)
    firsts = Counter(order_records(records, rng)[0].target for _ in range(5000))
    assert 0 < firsts["zero.test"] < 5000 * 0.02  # draw of exactly 0 picks it: 1/101


def test_every_record_appears_exactly_once():
    records = [R(p, w, f"h{p}-{w}.test") for p in (1, 2) for w in (0, 3, 7)]
    order = order_records(records, random.Random(3))
    assert sorted(order) == sorted(records)


def test_single_dot_target_means_service_not_available():
    assert order_records([R(0, 0, ".")]) == []


def test_no_srv_falls_back_to_domain_on_5269():
    assert connection_targets("Fabrikam.TEST.", None) == [("fabrikam.test", 5269)]


def test_srv_targets_keep_their_ports():
    records = [R(10, 0, "xmpp.fabrikam.test.", 5270)]
    assert connection_targets("fabrikam.test", records) == [("xmpp.fabrikam.test", 5270)]
