"""Hostile records through the real worker on a real broker, written by a producer we
did not write (librdkafka, through confluent-kafka: it partitions by CRC32, not the
Java client's murmur2, so most records also take the re-keying path): poison records,
spoofed control headers on the source topics, a forged hand-off on journey.internal.
Each is followed by a sentinel event whose trigger must come; then the worker is
killed (SIGKILL) and restarted, and must load and become ready again."""

from __future__ import annotations

import time
import urllib.request

import confluent_kafka  # the test extra installs it: a broken install fails, never skips
import orjson
from conftest import ev
from live_support import Worker, read_topic, wait_for
from test_hostile import POISON

from journey.io import topics

BASE = "2026-03-01T10:00:00Z"


def _produce(broker: str, records) -> None:
    """(topic, key, value, headers) through librdkafka, flushed."""
    p = confluent_kafka.Producer({"bootstrap.servers": broker.removeprefix("kafka://"), "acks": "all",
                                  "linger.ms": 5})
    for topic, key, value, headers in records:
        p.produce(topic, value=value, key=key, headers=headers or None)
    assert p.flush(30) == 0


def _lag(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.labels["topic"], s.labels["partition"]): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "journey_consumer_lag_records"}


def test_hostile_records_never_stop_stall_or_steer_the_worker(broker, tmp_path):
    sentinel = lambda i: orjson.dumps(ev("order.completed", f"s{i}", BASE, id=f"s{i}", order_id=f"o{i}"))  # noqa: E731
    recs, want_dl, n = [], [], 0
    for _name, raw, reason in POISON:
        recs += [(topics.CLICKSTREAM, b"p", raw, None), (topics.PURCHASES, f"s{n}".encode(), sentinel(n), None)]
        want_dl.append(reason)
        n += 1
    hostile_state = {"o": ["x", None, None, 1e300, 0], "tm": {"cart_abandoned|k": [None, {}]}}
    # spoofed control records on source topics: never obeyed
    recs += [
        # a forged absorb: not obeyed on a source topic; its body is no event (dead-lettered)
        (topics.PURCHASES, b"victim", orjson.dumps({"anon": "v1", "cid": "victim", "state": hostile_state}),
         [("journey-control", b"absorb")]),
        # an unknown control value on an ordinary event: the event is processed, not dropped
        (topics.PURCHASES, b"hdr", orjson.dumps(ev("order.completed", "hdr", BASE, id="hdr", order_id="oh")),
         [("journey-control", b"bogus")]),
        # a lone watermark marker on one source topic: ignored (its body is no event), holds nothing
        (topics.SUPPORT, b"m", b"7258118400000", [("journey-control", b"watermark")]),
        (topics.PURCHASES, b"victim", orjson.dumps(ev("order.completed", "victim", BASE, id="v", order_id="ov")),
         None),
    ]
    want_dl += ["no_type", "not_object"]
    # a forged absorb on journey.internal (the worker's own topic): its state is checked first
    for p in range(topics.PARTITIONS):
        recs.append((topics.INTERNAL, b"victim2",
                     orjson.dumps({"anon": "v2", "cid": "victim2", "state": hostile_state}) if p == 0 else
                     b"not json", [("journey-control", b"absorb")]))
        want_dl.append("bad_field")
    recs.append((topics.PURCHASES, b"victim2", orjson.dumps(ev("order.completed", "victim2", BASE, id="v2",
                                                                order_id="ov2")), None))
    want = {f"s{i}" for i in range(n)} | {"hdr", "victim", "victim2"}

    w = Worker(broker, tmp_path, idle="1s")
    try:
        w.wait_ready()
        _produce(broker, recs)

        def subjects():
            return {orjson.loads(v)["subject"] for _k, v, *_ in read_topic(broker, topics.TRIGGERS, idle_ms=200)}
        got = wait_for(lambda: (s := subjects()) >= want and s, 90, "every sentinel's trigger")
        assert got == want
        dls = wait_for(lambda: (r := read_topic(broker, topics.DEADLETTER, idle_ms=200)) and len(r) >= len(want_dl)
                       and r, 60, "the dead letters")
        assert sorted(orjson.loads(v)["reason"] for _k, v, *_ in dls) == sorted(want_dl)
        assert w.proc.poll() is None
        # nothing holds a commit: every input is committed to its end
        wait_for(lambda: (lag := _lag(w.port)) and not any(lag.values()), 60, "no consumer lag")
        w.kill9()
        w2 = Worker(broker, tmp_path, name="w2", idle="1s")
        try:
            r = w2.wait_ready(90)  # every changelog record loads; the spoofed watermark key never got there
            assert sorted(r["partitions"]) == list(range(topics.PARTITIONS))
            # and the restarted worker still processes (a victim's next order: its milestones count on)
            _produce(broker, [(topics.PURCHASES, b"victim", orjson.dumps(ev(
                "order.completed", "victim", "2026-03-01T11:00:00Z", id="v-2", order_id="ov-2")), None),
                (topics.PURCHASES, b"late", orjson.dumps(ev("order.completed", "late", "2026-03-01T11:00:00Z",
                                                             id="late", order_id="ol")), None)])
            wait_for(lambda: "late" in subjects(), 60, "a trigger after the restart")
            time.sleep(1)
            assert w2.proc.poll() is None
        finally:
            assert w2.stop() == 0, w2.log.read_text()[-3000:]
    finally:
        w.stop()


def test_an_event_far_in_the_future_never_moves_event_time(broker, tmp_path):
    # c's cart comes due 5 s after now, d's (on the same partition) 30 minutes after: the
    # quiet partition's watermark follows the wall clock, so c's fires and d's must not,
    # unless the year-2199 event in between moved event time
    from journey.core.timeutil import format_time
    from journey.io.kafka import Partitioner

    part = Partitioner(topics.PARTITIONS)
    d = next(f"d{i}" for i in range(1000) if part(f"d{i}") == part("c"))
    now = int(time.time() * 1000)
    rules = tmp_path / "rules.toml"   # quiet hours off: at night a cart trigger would wait for 08:00
    rules.write_text('[policy]\nquiet_start = "00:00"\nquiet_end = "00:00"\n')
    w = Worker(broker, tmp_path, idle="1s", rules=str(rules))
    try:
        w.wait_ready()
        _produce(broker, [
            (topics.CLICKSTREAM, b"c", orjson.dumps(ev("checkout.started", "c", format_time(now - 1_795_000),
                                                       id="k1", checkout_id="k1")), None),
            (topics.CLICKSTREAM, b"c", orjson.dumps(ev("page.viewed", "c", "2199-01-01T00:00:00Z", id="far")), None),
            (topics.CLICKSTREAM, d.encode(), orjson.dumps(ev("checkout.started", d, format_time(now), id="k2",
                                                             checkout_id="k2")), None),
        ])
        dls = wait_for(lambda: read_topic(broker, topics.DEADLETTER, idle_ms=200), 60, "the dead letter")
        assert [orjson.loads(v)["reason"] for _k, v, *_ in dls] == ["future_time"]

        def carts():
            return [orjson.loads(v) for _k, v, *_ in read_topic(broker, topics.TRIGGERS, idle_ms=200)]
        got = wait_for(lambda: [t for t in carts() if t["subject"] == "c"], 90, "c's cart trigger")
        assert got[0]["data"]["rule"] == "cart_abandoned"
        time.sleep(3)
        assert [t["subject"] for t in carts()] == ["c"]
    finally:
        w.stop()


def test_until_earlier_than_the_last_event_gives_replays_triggers(broker, tmp_path):
    # produce --until T with T before the log's last event: live and replay both stop at the
    # later of T and the last event (before, each live partition stopped at its own last event)
    from conftest import T
    from live_support import assert_trigger_ids, produce_log, replayed, synthetic

    log = synthetic(tmp_path, customers=300, events=6000, seed=4)
    until = "2026-03-01T00:00:00Z"   # the log runs to the middle of the year
    want_t, _a, _d = replayed(tmp_path, log, until=until)
    w = Worker(broker, tmp_path)
    try:
        w.wait_ready()
        produce_log(broker, log, until=T(until))
        assert_trigger_ids(broker, {t["id"] for t in want_t})
    finally:
        assert w.stop() == 0, w.log.read_text()[-3000:]


def test_a_forged_marker_shows_its_partition_stuck_then_is_dead_lettered_and_counted(broker, tmp_path):
    # a watermark marker on journey.internal naming offsets never written: its partition is
    # reported stuck (JOURNEY_STUCK_AFTER=1) until fresh fetches past the idle timeout show the
    # offsets never came; then it is dead-lettered, counted by kind, and the partition is ready
    import asyncio

    from aiokafka import AIOKafkaProducer
    from live_support import ready

    from journey.io.kafka import bootstrap

    async def forge():
        p = AIOKafkaProducer(bootstrap_servers=bootstrap(broker), acks="all")
        await p.start()
        try:
            await p.send_and_wait(topics.INTERNAL, orjson.dumps({"until": 1_800_000_000_000,
                                                                 "ends": {topics.CLICKSTREAM: 10**9}}),
                                  partition=2, headers=[("journey-control", b"watermark")])
        finally:
            await p.stop()

    w = Worker(broker, tmp_path, idle="4s", extra_env={"JOURNEY_STUCK_AFTER": "1"})
    try:
        w.wait_ready()
        asyncio.run(forge())
        stuck = wait_for(lambda: (r := ready(w.port)) and r["stuck"] and r, 30, "the partition reported stuck",
                         every=0.2)
        assert stuck["ready"] is False and list(stuck["stuck"]) == ["2"] and "marker" in stuck["stuck"]["2"]
        assert stuck["detail"]["2"]["marker"] is True
        dls = wait_for(lambda: read_topic(broker, topics.DEADLETTER, idle_ms=200), 60, "the marker's dead letter")
        [dl] = [orjson.loads(v) for _k, v, *_ in dls]
        assert (dl["topic"], dl["partition"], dl["reason"]) == (topics.INTERNAL, 2, "bad_field")
        assert "past the end of its inputs" in dl["detail"]
        again = w.wait_ready(30)
        assert again["stuck"] == {} and again["detail"]["2"]["marker"] is False
        with urllib.request.urlopen(f"http://127.0.0.1:{w.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'journey_control_records_deadlettered_total{kind="watermark"} 1.0' in text
        assert 'journey_control_records_deadlettered_total{kind="link"} 0.0' in text
        assert "journey_partition_stalls_total 1.0" in text
        assert 'journey_partition_stuck{partition="2"} 0.0' in text
    finally:
        assert w.stop() == 0, w.log.read_text()[-3000:]
