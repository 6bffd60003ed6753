"""Segment's own Python SDK (segment-analytics-python) pointed at ``journey intake``: the events reach
the worker and give replay's triggers for the same events, through a Kafka outage in the middle (the SDK
retries the 503s) and a batch sent twice (the worker counts each message once)."""

from __future__ import annotations

import asyncio

import orjson
from intake_support import Intake
from live_support import UNTIL, Worker, _same_as_replay, read_topic, replayed, synthetic

from journey.core import intake
from journey.core.timeutil import parse_time
from journey.intake.segment import as_segment
from journey.io import topics
from journey.io.kafka import bootstrap
from journey.live.produce import CONTROL, HOLD


def _control(broker: str, records: list) -> None:
    """(partition, headers, value) records on journey.internal, acknowledged."""
    from aiokafka import AIOKafkaProducer

    async def go():
        p = AIOKafkaProducer(bootstrap_servers=bootstrap(broker), acks="all")
        await p.start()
        try:
            for part, headers, value in records:
                await (await p.send(topics.INTERNAL, value, partition=part, headers=headers))
        finally:
            await p.stop()
    asyncio.run(go())


def _ends(broker: str) -> dict:
    """(topic, partition) -> the offset after its last record, for every source topic."""
    ends = {}
    for t in topics.SOURCES:
        for _k, _v, p, off, _h in read_topic(broker, t, idle_ms=300):
            ends[(t, p)] = max(ends.get((t, p), 0), off + 1)
    return ends


def test_the_segment_sdk_reaches_replays_triggers_through_an_outage(wire, tmp_path):
    import segment.analytics as sa

    from journey.demo import sdk_send

    seed = 5
    log = synthetic(tmp_path, customers=120, events=2400, seed=seed)
    msgs = []
    for line in log.read_bytes().splitlines():
        try:
            intake.parse(line)
        except intake.Rejected:
            continue    # the synthetic log's broken lines: an SDK cannot send those
        msgs.append(as_segment(orjson.loads(line)))
    # what the SDK is handed, as a log: replay reads the same events
    seg = tmp_path / "segment.jsonl"
    seg.write_bytes(b"\n".join(orjson.dumps(m) for m in msgs) + b"\n")
    keep: list = []
    want_t, _a, want_d = replayed(tmp_path, seg, keep=keep)
    assert not want_d and len(want_t) > 30
    assert sorted(t["id"] for t in replayed(tmp_path, log)[0]) == sorted(t["id"] for t in want_t), \
        "the Segment messages stand for the same events as the log"

    it = Intake(wire.url, tmp_path, keys="sdk-key", args=("--ack-timeout", "2"))
    w = None
    try:
        it.wait_ready()   # it creates the topics
        w = Worker(wire.url, tmp_path)
        w.wait_ready()
        # history at full speed: the worker holds event time until the final marker (as `journey produce`)
        _control(wire.url, [(p, HOLD, b"{}") for p in range(topics.PARTITIONS)])
        errors = []
        client = sa.Client("sdk-key", host=it.url, gzip=True, max_retries=10, upload_size=100,
                           upload_interval=0.05, on_error=lambda e, batch: errors.append((type(e).__name__, len(batch))))
        half = len(msgs) // 2
        for m in msgs[:half]:
            sdk_send(client, m)
        client.flush()
        wire.refuse(4)      # Kafka gone for 4 s: the intake answers 503, the SDK retries
        for m in msgs[half:]:
            sdk_send(client, m)
        client.flush()
        client.join()
        assert not errors, f"the SDK gave up on messages: {errors}"
        # a batch the sender sends again (it never saw the answer): on the topics twice, counted once
        status, answer, _h = it.post("/v1/batch", {"batch": msgs[:40]}, key="sdk-key")
        assert (status, answer["accepted"]) == (200, 40)
        wire.wait_over(20)
        on_topics = [orjson.loads(v)["messageId"] for t in topics.SOURCES
                     for _k, v, *_ in read_topic(wire.url, t, idle_ms=300)]
        assert set(on_topics) == {m["messageId"] for m in msgs}
        assert len(on_topics) >= len(msgs) + 40
        ends = _ends(wire.url)
        until = parse_time(UNTIL)
        _control(wire.url, [(p, CONTROL, orjson.dumps({"until": until, "ends": {
            t: ends[(t, p)] for t in topics.SOURCES if (t, p) in ends}})) for p in range(topics.PARTITIONS)])
        _same_as_replay(wire.url, want_t, keep[0], seed, tmp_path=tmp_path)
        m = it.metrics()
        assert "journey_intake_requests_total{endpoint=\"batch\",status=\"503\"}" in m, \
            "the outage was seen by the intake"
    finally:
        if w is not None:
            assert w.stop() == 0, w.log.read_text()[-3000:]
        assert it.stop() == 0, it.log.read_text()[-3000:]
