"""The live worker against a real Kafka-protocol broker (Tansu on loopback).

Each test starts its own broker on a free port and stops it after; workers run
as child processes (``journey worker``), as an operator runs them.
"""

from __future__ import annotations

import time

import orjson
import pytest
from conftest import T, ev, identify
from live_support import (
    UNTIL,
    Worker,
    _changelog_states,
    _comparable,
    _debug_state_diff,
    produce_log,
    read_topic,
    replayed,
    synthetic,
    trigger_ids,
    wait_for,
)

from journey.io import topics
from journey.io.rulefile import load_config

# a multi-step journey (domain.md section 8) beside the built-in rules, for its metrics
RESCUE = """
[journeys.checkout_rescue]
kind = "recovery"
entry = "checkout.started"
key = "checkout_id"
exit = "order.completed"
reenter = "7d"
steps = [
  { name = "reminder", wait = "1h", send = { offer = { type = "reminder" } } },
  { name = "back", wait_for = "product.viewed", within = "1d", timeout = "discount" },
  { name = "tips", send = { offer = { type = "tips" } }, next = "end" },
  { name = "discount", send = { offer = { type = "discount", pct = 10 } } },
]
"""


def test_end_to_end_triggers_audit_and_deadletters(broker, tmp_path):
    log = tmp_path / "e2e.jsonl"
    lines = [
        orjson.dumps(identify("alice", ts="2026-03-01T09:00:00Z", consent={"marketing": False})),
        orjson.dumps(ev("checkout.started", "bob", "2026-03-01T10:00:00Z", checkout_id="chk-1", revenue=5000)),
        # checkout_rescue: carol's order ends her instance at its first step (exited)
        orjson.dumps(ev("checkout.started", "carol", "2026-03-01T10:30:00Z", checkout_id="chk-2", value=25)),
        # a first order (recognition), and marketing refused for alice: an audit record
        orjson.dumps(ev("order.completed", "carol", "2026-03-01T11:00:00Z", order_id="o-1", revenue=2500)),
        orjson.dumps(ev("order.completed", "alice", "2026-03-01T11:30:00Z", order_id="o-2", revenue=2500)),
        # bob comes back: chk-1 goes on to tips and ends (finished); chk-3 still waits at back at the end
        orjson.dumps(ev("product.viewed", "bob", "2026-03-01T12:00:00Z", product_id="p-1", price=20.0)),
        orjson.dumps(ev("checkout.started", "bob", "2026-03-01T12:30:00Z", checkout_id="chk-3", value=20)),
        b'{"type":"track","event":"Order Completed","userId":"dave"',       # truncated JSON
        b'{"type":"track","event":"Checkout Started","userId":"erin"}',      # no timestamp
    ]
    log.write_bytes(b"\n".join(lines) + b"\n")
    rules = tmp_path / "rules.toml"
    rules.write_text(RESCUE)
    want_t, want_a, want_d = replayed(tmp_path, log, until="2026-03-02T00:00:00Z", config=load_config(str(rules)))
    assert {t["data"]["rule"] for t in want_t} >= {"cart_abandoned", "first_purchase"}
    assert any(a["reason"] == "no_consent" for a in want_a) and len(want_d) == 2

    w = Worker(broker, tmp_path, rules=str(rules))
    try:
        w.wait_ready()
        produce_log(broker, log, until=T("2026-03-02T00:00:00Z"))
        got = wait_for(lambda: (r := read_topic(broker, topics.TRIGGERS)) and len(r) >= len(want_t) and r,
                       60, "the triggers")
        triggers = [orjson.loads(v) for _k, v, *_ in got]
        assert sorted(t["id"] for t in triggers) == sorted(t["id"] for t in want_t)
        by_id = {t["id"]: t for t in want_t}
        for t in triggers:
            assert t == by_id[t["id"]]  # the very same CloudEvent, reason and relationship included
        for key, _v, _p, _o, headers in got:
            assert dict(headers)["content-type"] == b"application/cloudevents+json"
            assert key.decode() == orjson.loads(_v)["subject"]
        audits = wait_for(lambda: (r := read_topic(broker, topics.AUDIT)) and len(r) >= len(want_a) and r, 30, "audit")
        assert sorted(orjson.loads(v)["trigger_id"] for _k, v, *_ in audits) == sorted(a["trigger_id"] for a in want_a)
        dls = wait_for(lambda: (r := read_topic(broker, topics.DEADLETTER)) and len(r) >= 2 and r, 30, "dead letters")
        recs = [orjson.loads(v) for _k, v, *_ in dls]
        assert sorted(r["reason"] for r in recs) == sorted(d["reason"] for d in want_d)
        for r in recs:
            assert r["topic"] == topics.CLICKSTREAM and isinstance(r["offset"], int) and isinstance(r["partition"], int)
            assert r["raw"].encode() in lines
        assert w.proc.poll() is None, "a poison message must not stop the worker"
        _check_metrics(w, want_t, want_d)
    finally:
        assert w.stop() == 0, w.log.read_text()[-3000:]


def test_an_oversized_record_is_dead_lettered_and_the_worker_carries_on(broker, tmp_path):
    # a record past [engine] max_record_bytes, and past what a dead letter keeps of it
    import asyncio

    from aiokafka import AIOKafkaProducer

    from journey.io.kafka import bootstrap
    from journey.live.runtime import DEADLETTER_RAW_MAX

    rules = tmp_path / "rules.toml"
    rules.write_text("[engine]\nmax_record_bytes = 1000\n")
    big = orjson.dumps(ev("page.viewed", "zed", "2026-03-01T10:00:00Z", id="big", note="x" * 300_000))
    order = orjson.dumps(ev("order.completed", "zed", "2026-03-01T10:01:00Z", id="o", order_id="o-9", revenue=10))

    async def send():
        p = AIOKafkaProducer(bootstrap_servers=bootstrap(broker), max_request_size=4 << 20)
        await p.start()
        try:
            await p.send_and_wait(topics.CLICKSTREAM, big, key=b"zed")
            await p.send_and_wait(topics.PURCHASES, order, key=b"zed")
        finally:
            await p.stop()

    w = Worker(broker, tmp_path, rules=str(rules), idle="1s")
    try:
        w.wait_ready()
        asyncio.run(send())
        dls = wait_for(lambda: read_topic(broker, topics.DEADLETTER, idle_ms=200), 30, "the dead letter")
        (rec,) = [orjson.loads(v) for _k, v, *_ in dls]
        assert rec["reason"] == "too_large" and rec["topic"] == topics.CLICKSTREAM
        assert big.startswith(rec["raw"].encode()) and len(rec["raw"]) == DEADLETTER_RAW_MAX
        assert f"the first {DEADLETTER_RAW_MAX} of {len(big)} bytes" in rec["detail"]
        got = wait_for(lambda: read_topic(broker, topics.TRIGGERS, idle_ms=200), 30, "the next event's trigger")
        assert [orjson.loads(v)["subject"] for _k, v, *_ in got] == ["zed"]
        assert w.proc.poll() is None
    finally:
        assert w.stop() == 0, w.log.read_text()[-3000:]


def _check_metrics(w, want_t, want_d):
    """/metrics: valid exposition text whose numbers agree with what the worker produced,
    and no customer id anywhere in it."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{w.port}/metrics", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            return r.read().decode()

    def value(fams, name, **labels):
        samples = [s for f in fams.values() for s in f.samples if s.name == name]
        assert samples, f"{name} is not exported"   # a renamed metric fails, never reads as 0
        return sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))

    text = scrape()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    label_values = {v for f in fams.values() for smp in f.samples for v in smp.labels.values()}
    assert not label_values & {"alice", "bob", "carol", "dave", "erin"}, "no customer id in a label"
    assert value(fams, "journey_triggers_total") == len(want_t)
    for rule in {t["data"]["rule"] for t in want_t}:
        kind = next(t["data"]["kind"] for t in want_t if t["data"]["rule"] == rule)
        assert value(fams, "journey_triggers_total", rule=rule, kind=kind) == sum(
            1 for t in want_t if t["data"]["rule"] == rule)
    assert value(fams, "journey_events_rejected_total") == len(want_d)
    assert value(fams, "journey_deadletters_total", topic=topics.CLICKSTREAM) == len(want_d)
    assert value(fams, "journey_events_consumed_total", topic=topics.PURCHASES, type="order.completed",
                 touch="product") == 2
    assert value(fams, "journey_processing_latency_seconds_count") == value(fams, "journey_events_applied_total") + (
        value(fams, "journey_events_duplicate_total"))
    assert value(fams, "journey_suppressions_total", reason="no_consent") >= 1
    assert len([s for s in fams["journey_watermark_seconds"].samples]) == 6
    assert value(fams, "journey_customers") == value(fams, "journey_customers_by_stage") == 3, (
        fams["journey_customers_by_stage"].samples, fams["journey_customers"].samples)
    assert value(fams, "journey_build_info") == 1
    # the multi-step journey: 3 instances entered (bob chk-1 and chk-3, carol chk-2); carol's exited at
    # reminder, bob's chk-1 finished after tips, chk-3 still waits at back; discount never reached (0,
    # exported all the same); no step limit
    j = "checkout_rescue"
    assert {(s.labels["outcome"], s.value) for s in fams["journey_journey_instances"].samples
            if s.labels["journey"] == j} == {("entered", 3), ("finished", 1), ("exited", 1), ("step_limit", 0),
                                                            ("dropped", 0)}
    assert {(s.labels["step"], s.labels["outcome"]): s.value for s in fams["journey_journey_steps"].samples
            if s.labels["journey"] == j} == {
        ("reminder", "reached"): 3, ("reminder", "exited"): 1, ("back", "reached"): 2, ("back", "exited"): 0,
        ("tips", "reached"): 1, ("tips", "exited"): 0, ("discount", "reached"): 0, ("discount", "exited"): 0}
    assert fams["journey_journey_steps"].type == "counter"


# rocksdb:// is killed mid-stream (twice, sharing its data directory) in tests/test_faults.py
@pytest.mark.parametrize("store", ["memory://"])
def test_kill9_restart_loses_nothing(broker, tmp_path, store):
    # memory://: state comes back from the changelog alone. rocksdb://: both runs share a data
    # directory, so the restarted worker starts from what the killed one left on disk (written
    # ahead of its last commit) and reads the changelog on from the offset the store recorded.
    # The first half of the log is in the topics before the worker starts, the second half
    # is produced while it is dead (a producer racing the worker at thousands of simulated
    # hours per second would make events arrive later than any lateness: that is not the
    # case this test is about). The worker is killed once it has checkpointed state, with
    # events still unacknowledged in its reorder buffer.
    log = synthetic(tmp_path, customers=1500, events=40000, seed=3)
    keep = []
    want_t, _a, _d = replayed(tmp_path, log, keep=keep)
    engine = keep[0]
    lines = log.read_bytes().splitlines(keepends=True)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_bytes(b"".join(lines[:len(lines) // 2]))
    second.write_bytes(b"".join(lines[len(lines) // 2:]))
    produce_log(broker, first)
    kw = {"store": store, "data_dir": str(tmp_path / "data")} if store != "memory://" else {}
    w = Worker(broker, tmp_path, name="first", **kw)
    w.wait_ready()
    wait_for(lambda: len(trigger_ids(broker, idle_ms=100)) >= 30, 60, "some triggers before the kill", every=0.05)
    # state must be in the changelog already, so the restart has to recover it
    wait_for(lambda: len(read_topic(broker, topics.changelog(), idle_ms=100)) > 0, 60, "a checkpoint", every=0.05)
    w.kill9()
    before = set(trigger_ids(broker))
    assert before and len(before) < len(want_t), "the kill must come mid-stream"
    produce_log(broker, second, until=T(UNTIL))
    w2 = Worker(broker, tmp_path, name="second", **kw)
    try:
        w2.wait_ready()
        want = {t["id"] for t in want_t}
        wait_for(lambda: set(trigger_ids(broker)) >= want, 120, "every trigger after the restart")
        time.sleep(1.5)
        got = trigger_ids(broker)
        assert set(got) == want, "no trigger lost, none with a new id"
        states = _changelog_states(broker)
        expected = {k: _comparable(s) for k, s in engine.states.items()}
        assert set(states) == set(expected)
        diffs = {k: _debug_state_diff(_comparable(s), expected[k]) for k, s in states.items()
                 if _comparable(s) != expected[k]}
        assert not diffs, f"{len(diffs)} state(s) differ from replay: {list(diffs.items())[:3]}"
    finally:
        w2.stop()


def test_a_log_published_while_the_worker_reads_it_gives_replays_triggers_in_any_order(broker, tmp_path):
    # journey produce writes the three topics in parallel, so a worker reading meanwhile can
    # find an input read to its end while its records of the same moment are still on their
    # way. Here the extreme: the log is in topic order (the whole year of clickstream first,
    # then purchases, then support) and goes out in chunks of 500 records, each acknowledged
    # before the next, so the worker reads months of clickstream while purchases is empty.
    # Ordered by what it had read, it would apply the orders late or drop them as redeliveries
    # (cart_abandoned instead of first_purchase); held to the producer's markers, it equals replay.
    import asyncio

    from journey.core import intake
    from journey.live.produce import produce

    log = synthetic(tmp_path, seed=11)
    order = {topics.CLICKSTREAM: 0, topics.PURCHASES: 1, topics.SUPPORT: 2}
    lines = log.read_bytes().splitlines(keepends=True)
    by_topic = tmp_path / "by_topic.jsonl"

    def topic(line):
        try:
            return topics.topic_for(intake.parse(line).type)
        except intake.Rejected:
            return topics.CLICKSTREAM  # produce publishes a line it cannot read there
    by_topic.write_bytes(b"".join(sorted(lines, key=lambda x: order[topic(x)])))
    want_t, _a, _d = replayed(tmp_path, by_topic)
    w = Worker(broker, tmp_path, name="w")
    try:
        w.wait_ready()
        asyncio.run(produce([by_topic], broker, until=T(UNTIL), chunk=500, as_is=True))  # file order: the worst case
        want = {t["id"] for t in want_t}
        wait_for(lambda: set(trigger_ids(broker)) >= want, 90, "every trigger")
        time.sleep(1.5)
        got = set(trigger_ids(broker))
        assert got == want, f"{len(want - got)} lost, {len(got - want)} invented"
    finally:
        w.stop()


def test_two_workers_split_partitions(broker, tmp_path):
    log = synthetic(tmp_path, seed=5)
    want_t, _a, _d = replayed(tmp_path, log)
    a, b = Worker(broker, tmp_path, name="a"), Worker(broker, tmp_path, name="b")
    try:
        a.wait_ready()
        b.wait_ready()

        def split():
            ra, rb = a.wait_ready(), b.wait_ready()
            pa, pb = set(ra["partitions"]), set(rb["partitions"])
            return (pa, pb) if pa and pb and not (pa & pb) and pa | pb == set(range(topics.PARTITIONS)) else None

        pa, pb = wait_for(split, 60, "the two workers to share the partitions")
        produce_log(broker, log, until=T(UNTIL))
        want = {t["id"] for t in want_t}
        wait_for(lambda: set(trigger_ids(broker)) >= want, 90, "all triggers from the two workers")
        time.sleep(1.5)
        assert set(trigger_ids(broker)) == want
        # both did work: triggers came from partitions of each
        parts = {p for _k, _v, p, *_ in read_topic(broker, topics.TRIGGERS)}
        assert parts & pa and parts & pb
    finally:
        a.stop()
        b.stop()


def test_visitors_on_other_partitions_are_attributed_to_their_customers(broker, tmp_path):
    # Visitors browse and start checkouts anonymously, then log in (identify with both ids).
    # Most visitors hash to another partition than their customer: the worker hands their
    # state over through journey.internal, and later events of a visitor are forwarded. The
    # log is produced in two steps, so the hand-offs are done before event time reaches the
    # visitors' cart timers (as live, where a hand-off takes milliseconds and a cart waits an
    # hour); then triggers and customer states equal replay's.
    from journey.io.kafka import Partitioner

    part = Partitioner(topics.PARTITIONS)
    first, later = [], []
    n = 30
    for i in range(n):
        anon, cid = f"visitor-{i}", f"cust-h{i}"
        t0 = T("2026-03-01T10:00:00Z") + i * 60_000
        def v(type_, dt, id_, anon=anon, t0=t0, **p):
            return {"id": id_, "anonymous_id": anon, "type": type_, "ts": t0 + dt, "props": p}
        first += [v("product.viewed", 0, f"{anon}-1", product_id="p1"),
                  v("cart.product_added", 30_000, f"{anon}-2", product_id="p1", price=20),
                  v("checkout.started", 60_000, f"{anon}-3", checkout_id=f"k{i}", value=20),
                  identify(cid, t0 + 300_000, id=f"{anon}-login", timezone="Europe/Berlin")]
        first[-1]["anonymousId"] = anon
        later.append(v("page.viewed", 2 * 3600_000, f"{anon}-4"))
        if i % 2:
            later.append(ev("order.completed", cid, t0 + 600_000, id=f"{cid}-o", order_id=f"o{i}", revenue=20))
    apart = sum(part("anon:" + f"visitor-{i}") != part(f"cust-h{i}") for i in range(n))
    assert apart >= n // 2, "most visitors must live on another partition than their customer"
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in first + later))
    keep = []
    want_t, _a, _d = replayed(tmp_path, log, keep=keep)
    engine = keep[0]
    assert want_t, "abandoned checkouts of the visitors who did not order"

    (tmp_path / "first.jsonl").write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in first))
    (tmp_path / "later.jsonl").write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in later))
    w = Worker(broker, tmp_path, name="w")
    try:
        w.wait_ready()
        # event time to 10:40 (every login is before; the first cart timer is due after 11:00)
        produce_log(broker, tmp_path / "first.jsonl", until=T("2026-03-01T10:40:00Z"))

        def linked():
            heads = [dict(h).get("journey-control") for *_r, h in read_topic(broker, topics.INTERNAL, idle_ms=200)]
            return heads.count(b"link") >= apart

        def idle():
            detail = w.wait_ready()["detail"].values()
            return all(not d["behind"] and not d["waiting"] for d in detail)
        wait_for(linked, 60, "the customers' partitions to ask for their visitors", every=0.3)
        time.sleep(1.0)
        wait_for(idle, 30, "the hand-offs to be read", every=0.3)
        produce_log(broker, tmp_path / "later.jsonl", until=T(UNTIL))
        want = {t["id"] for t in want_t}
        wait_for(lambda: set(trigger_ids(broker)) >= want, 60, "every trigger")
        time.sleep(1.5)
        assert set(trigger_ids(broker)) == want
        states = _changelog_states(broker)
        for i in range(n):
            cid, anon = f"cust-h{i}", f"visitor-{i}"
            got = orjson.loads(_comparable(states[cid]))
            assert got.pop("mg", [anon]) == [anon]
            assert got == orjson.loads(_comparable(engine.states[cid])), cid
            if part("anon:" + anon) != part(cid):
                assert states["anon:" + anon].fwd == cid  # later events of the visitor go to the customer
    finally:
        w.stop()
