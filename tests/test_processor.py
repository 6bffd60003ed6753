"""The live worker's per-partition logic, without Kafka: input alignment, the wall-clock
watermark of a quiet partition, watermark markers, and acknowledgement only once applied."""

import orjson
from conftest import T, ev

from journey.core import intake
from journey.core.config import Config
from journey.io import topics
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


def test_a_marker_waits_until_reached_then_moves_the_watermark_and_is_acknowledged():
    p = proc()
    p.offer(topics.CLICKSTREAM, parse(ev("checkout.started", "c1", "2026-03-01T10:00:00Z", checkout_id="k")), "a", 0)
    until = T("2026-03-02T00:00:00Z")
    p.mark(until - 1, {topics.CLICKSTREAM: 5}, "m0")
    assert p.watermark is None and "m0" not in p.timeline.released  # waits (the runtime checks the offsets)
    p.mark(until, {topics.CLICKSTREAM: 6}, "m1")                      # markers are reached in order
    assert p.marker[2] == "m0"
    p.marker_reached()
    assert p.watermark == until - 1 and "m0" in p.timeline.released and p.marker[2] == "m1"
    p.marker_reached()
    assert p.watermark == until and p.marker is None
    assert {"a", "m0", "m1"} <= set(p.timeline.released)
    assert any(b"cart_abandoned" in v for _t, _k, v in p.outbox.records)


def test_a_held_publication_moves_event_time_only_with_its_markers():
    # journey produce writes the topics in parallel: here the clickstream of a whole day is read
    # while the purchases input looks read to its end (its records are still on their way)
    p = proc()
    p.hold_on("h")
    p.offer(topics.CLICKSTREAM, parse(ev("checkout.started", "c1", "2026-03-01T10:00:00Z", checkout_id="k")), "a", 0)
    p.offer(topics.CLICKSTREAM, parse(ev("page.viewed", "c2", "2026-03-02T12:00:00Z")), "b", 0)
    p.settle(lambda t: False)
    assert p.watermark is None and p.timeline.released == []       # held: nothing ordered yet
    p.offer(topics.PURCHASES, parse(ev("order.completed", "c1", "2026-03-01T10:20:00Z", order_id="o")), "c", 0)
    p.mark(T("2026-03-02T11:59:59Z"), {topics.CLICKSTREAM: 1, topics.PURCHASES: 1}, "m0", final=False)
    p.marker_reached()
    assert p.watermark == T("2026-03-02T11:59:59Z") and p.hold == "h"  # still held: more to come
    assert [r for r in p.outbox.records if r[0] == topics.TRIGGERS and b"cart_abandoned" in r[2]] == []
    assert sorted(p.timeline.released) == ["a", "c", "m0"]
    p.mark(T("2026-03-03T00:00:00Z"), {topics.CLICKSTREAM: 2, topics.PURCHASES: 1}, "m1")
    p.marker_reached()
    assert p.hold is None and sorted(p.timeline.released) == ["a", "b", "c", "h", "m0", "m1"]
    # after the hold, event time follows the events again
    p.offer(topics.CLICKSTREAM, parse(ev("page.viewed", "c2", "2026-03-04T12:00:00Z")), "d", 0)
    p.settle(lambda t: False)
    assert p.watermark == T("2026-03-04T12:00:00Z") - 10 * SEC


def test_a_hold_whose_final_marker_never_comes_ends_when_the_partition_is_quiet():
    p = proc()
    p.hold_on("h")
    p.offer(topics.CLICKSTREAM, parse(ev("page.viewed", "c2", "2026-03-01T12:00:00Z")), "a", 1_000)
    p.settle(lambda t: False)
    assert p.tick(1_000 + 4 * SEC) is False and p.hold == "h"
    p.mark(T("2026-03-01T11:00:00Z"), {topics.CLICKSTREAM: 1}, "m0", final=False)  # still publishing
    p.marker_reached()
    p.tick(1_000 + 6 * SEC)                                 # its quiet time starts again
    assert p.hold == "h"
    p.tick(1_000 + 12 * SEC)
    assert p.hold is None and "h" in p.timeline.released
    p.settle(lambda t: False)                               # event time follows the events again
    assert p.watermark == T("2026-03-01T12:00:00Z") - 10 * SEC


def test_state_and_watermark_survive_a_reload():
    p = proc()
    p.offer(topics.CLICKSTREAM, parse(ev("checkout.started", "c1", "2026-03-01T10:00:00Z", checkout_id="k")), "a", 0)
    p.offer(topics.CLICKSTREAM, parse(ev("page.viewed", "c2", "2026-03-01T10:05:00Z")), "b", 0)
    p.settle(lambda t: False)
    saved = p.take_dirty()
    q = proc()
    q.load([(k, v) for k, v in saved if v is not None])
    assert q.watermark == p.watermark and q.engine.next_due() == p.engine.next_due()
    q.mark(T("2026-03-01T11:00:00Z"), {})
    q.marker_reached()
    assert any(b"cart_abandoned" in v for _t, _k, v in q.outbox.records)


def test_gc_tuning_freezes_and_a_full_pass_still_collects_frozen_cycles():
    # the worker freezes what lives past a checkpoint (full passes then skip the customer
    # states); a reference cycle that became garbage after it was frozen is collected only by
    # full_gc, which the worker runs after each assignment
    import gc
    import weakref

    from journey.live.gcpolicy import full_gc, tune_gc

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


# -- a visitor and its customer on different partitions ------------------------------------

def _visitor(anon, type_, ts, id, **props):
    return {"id": id, "anonymous_id": anon, "type": type_, "ts": ts, "props": props}


def _apart(part, cid):
    """A visitor id whose state lives on another partition than ``cid``'s."""
    return next(f"v{i}" for i in range(1000) if part(f"anon:v{i}") != part(cid))


def _live(events, until, deliver_twice=False):
    """The events through one PartitionProcessor per partition, routed as the worker routes
    them (by key, with the hand-offs going through journey.internal), applied as they come."""
    from journey.io.kafka import Partitioner

    part = Partitioner(topics.PARTITIONS)
    cfg = Config()
    procs = {p: PartitionProcessor(cfg, p, 0, 5 * SEC, partition_of=part) for p in range(topics.PARTITIONS)}

    def step(p):
        procs[p].settle(lambda t: False)
        moved = True
        while moved:
            moved = False
            for pr in procs.values():
                out, pr.engine.handoffs[:] = list(pr.engine.handoffs), []
                for h in out:
                    moved = True
                    if h[0] == "forward":
                        e = intake.parse(h[2].raw)
                        procs[part(h[1])].offer(topics.INTERNAL, e, None, 0)
                        procs[part(h[1])].settle(lambda t: False)
                    elif h[0] == "link":
                        procs[part(h[1])].handoff("link", {"anon": h[2], "cid": h[3]}, None)
                    else:
                        body = {"cid": h[1], "anon": h[2], "state": h[3]}
                        for _ in range(2 if deliver_twice else 1):
                            procs[part(h[1])].handoff("absorb", body, None)

    for d in events:
        e = parse(d)
        e.raw = orjson.dumps(d)
        key = e.cid or procs[part("anon:" + e.anon)].engine.aliases.get(e.anon) or "anon:" + e.anon
        p = part(key)
        procs[p].offer(topics.CLICKSTREAM, e, None, 0)
        step(p)
    for p in procs:
        procs[p].timeline.advance(until)
        step(p)
    triggers = sorted(orjson.loads(v)["id"] for pr in procs.values()
                      for t, _k, v in pr.outbox.records if t == topics.TRIGGERS)
    states = {k: s for pr in procs.values() for k, s in pr.engine.states.items()}
    return triggers, states, part


def _replayed(events, until):
    from journey.core.engine import Engine
    from journey.core.timeline import drive

    engine = Engine(Config())
    drive(engine, sorted((parse(d) for d in events), key=lambda e: (e.ts, e.id)), until)
    return sorted(t["id"] for t in engine.sink.triggers), engine.states


def test_a_visitor_on_another_partition_is_handed_to_its_customer_as_replay_attributes_it():
    from journey.io.kafka import Partitioner

    cid = "c-handoff"
    anon = _apart(Partitioner(topics.PARTITIONS), cid)
    events = [
        _visitor(anon, "product.viewed", "2026-03-01T10:00:00Z", "a1", product_id="p1"),
        _visitor(anon, "cart.product_added", "2026-03-01T10:01:00Z", "a2", product_id="p1", price=20),
        _visitor(anon, "checkout.started", "2026-03-01T10:02:00Z", "a3", checkout_id="k1", value=20),
        {"type": "identify", "userId": cid, "anonymousId": anon, "messageId": "i1",
         "timestamp": "2026-03-01T10:05:00Z", "traits": {"timezone": "Europe/Berlin"}},
        # read on the visitor's partition after the hand-off: forwarded to the customer
        _visitor(anon, "page.viewed", "2026-03-01T10:06:00Z", "a4"),
    ]
    until = T("2026-03-03T00:00:00Z")
    want_t, want_s = _replayed(events, until)
    got_t, got_s, part = _live(events, until)
    assert want_t, "the scenario must trigger something (an abandoned checkout)"
    assert got_t == want_t
    assert got_s[cid].merged == [anon]
    got = got_s[cid].to_dict()
    got.pop("mg")
    assert got == want_s[cid].to_dict()
    # the visitor's own partition keeps only a forwarding stub
    assert got_s["anon:" + anon].to_dict() == {"fw": cid}
    assert part("anon:" + anon) != part(cid)

    # a hand-off delivered twice (at-least-once) is absorbed once
    again_t, again_s, _ = _live(events, until, deliver_twice=True)
    assert again_t == want_t and again_s[cid].to_dict() == got_s[cid].to_dict()


def test_the_idle_watermark_follows_the_wall_clock_at_its_pace_however_often_it_settles():
    # the worker settles every partition before each tick (4 a second): the watermark of a
    # quiet partition must still move as fast as the wall clock, not faster
    p = proc(idle=1 * SEC)
    t0 = T("2026-03-01T10:00:00Z")
    p.offer(topics.CLICKSTREAM, parse(ev("checkout.started", "c1", "2026-03-01T10:00:00Z", checkout_id="k")), "a", t0)
    p.settle(lambda t: False)
    for i in range(1, 241):  # a minute of ticks
        p.settle(lambda t: False)
        p.tick(t0 + i * 250)
    assert p.watermark == t0 - 10 * SEC + 60 * SEC
