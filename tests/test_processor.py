"""The live worker's per-partition logic, without Kafka: input alignment, the wall-clock
watermark of a quiet partition, watermark markers, and acknowledgement only once applied."""

import orjson

from conftest import T, ev
from journey import intake, topics
from journey.config import Config
from journey.live.processor import PartitionProcessor

SEC = 1000


def parse(d):
    return intake.parse(orjson.dumps(d))


def proc(idle="5s"):
    return PartitionProcessor(Config({"engine": {"idle_timeout": idle}}), 0, 10 * SEC, 5 * SEC)


def test_a_quiet_partition_fires_the_cart_timer_from_the_wall_clock():
    p = proc()
    wall = 1_000_000
    p.offer(topics.CLICKSTREAM, parse(ev("checkout.started", "c1", "2026-03-01T10:00:00Z", checkout_id="k")), "t1", wall)
    p.settle(lambda t: False)
    assert p.outbox.records == []
    # 30 minutes of event time pass on the wall clock with no traffic at all
    assert p.tick(wall + 4 * SEC) is False                  # not idle long enough yet
    p.tick(wall + 30 * 60 * SEC + 11 * SEC)
    rules = [orjson.loads(v)["data"]["rule"] for t, _k, v in p.outbox.records if t == topics.TRIGGERS]
    assert rules == ["cart_abandoned"]


def test_an_input_still_behind_holds_the_watermark():
    p = proc()
    p.offer(topics.CLICKSTREAM, parse(ev("checkout.started", "c1", "2026-03-01T10:00:00Z", checkout_id="k")), "a", 0)
    p.offer(topics.CLICKSTREAM, parse(ev("page.viewed", "c2", "2026-03-01T12:00:00Z")), "b", 0)
    p.settle(lambda t: t == topics.PURCHASES)               # purchases has unread records, none read yet
    assert p.watermark is None and p.timeline.released == []  # nothing applied, nothing acknowledged
    # the order arrives on the lagging input, before the cart deadline: no trigger
    p.offer(topics.PURCHASES, parse(ev("order.completed", "c1", "2026-03-01T10:20:00Z", order_id="o")), "c", 0)
    p.settle(lambda t: False)
    assert p.watermark == T("2026-03-01T12:00:00Z") - 10 * SEC
    assert [r for r in p.outbox.records if r[0] == topics.TRIGGERS and b"cart_abandoned" in r[2]] == []
    assert sorted(p.timeline.released) == ["a", "c"]        # "b" waits within the lateness


def test_markers_move_the_watermark_once_every_topic_delivered_them_and_are_acknowledged_then():
    p = proc()
    p.offer(topics.CLICKSTREAM, parse(ev("checkout.started", "c1", "2026-03-01T10:00:00Z", checkout_id="k")), "a", 0)
    until = T("2026-03-02T00:00:00Z")
    for i, t in enumerate((topics.CLICKSTREAM, topics.PURCHASES, topics.SUPPORT)):
        p.mark(t, until, f"m{i}")
    assert p.watermark is None and "m0" not in p.timeline.released
    p.mark(topics.INTERNAL, until, "m3")
    assert p.watermark == until
    assert {"a", "m0", "m1", "m2", "m3"} <= set(p.timeline.released)
    assert any(b"cart_abandoned" in v for _t, _k, v in p.outbox.records)


def test_state_and_watermark_survive_a_reload():
    p = proc()
    p.offer(topics.CLICKSTREAM, parse(ev("checkout.started", "c1", "2026-03-01T10:00:00Z", checkout_id="k")), "a", 0)
    p.offer(topics.CLICKSTREAM, parse(ev("page.viewed", "c2", "2026-03-01T10:05:00Z")), "b", 0)
    p.settle(lambda t: False)
    saved = p.take_dirty()
    q = proc()
    q.load([(k, v) for k, v in saved if v is not None])
    assert q.watermark == p.watermark and q.engine.next_due() == p.engine.next_due()
    q.mark(topics.CLICKSTREAM, T("2026-03-01T11:00:00Z"))
    for t in (topics.PURCHASES, topics.SUPPORT, topics.INTERNAL):
        q.mark(t, T("2026-03-01T11:00:00Z"))
    assert any(b"cart_abandoned" in v for _t, _k, v in q.outbox.records)


def test_gc_tuning_freezes_and_a_full_pass_still_collects_frozen_cycles():
    # the worker freezes what lives past a checkpoint (full passes then skip the customer
    # states); a reference cycle that became garbage after it was frozen is collected only by
    # full_gc, which the worker runs after each assignment
    import gc
    import weakref

    from journey.live.worker import full_gc, tune_gc

    class Node:
        pass

    before = gc.get_threshold()
    try:
        a = Node()
        a.me = a
        alive = weakref.ref(a)
        tune_gc(50_000)
        assert gc.get_threshold()[0] == 50_000
        assert gc.get_freeze_count() > 0
        del a
        gc.collect()
        assert alive() is not None, "frozen: an ordinary collection does not see it"
        full_gc()
        assert alive() is None, "full_gc collects frozen garbage"
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
