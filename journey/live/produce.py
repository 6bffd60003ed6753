"""``journey produce``: publish a historical log into the source topics.

Each record goes to the topic its event type belongs to (``topics.STREAM_OF``),
keyed by customer id (the anonymous id for a visitor), with its event time as
the Kafka record timestamp and the original bytes as the value. A record that
does not parse is published too, unkeyed, on ``journey.clickstream``, so the
worker dead-letters it as replay would.

``--until TIME`` then writes a watermark marker (header ``journey-control:
watermark``, value TIME in epoch ms) into every partition of the source
topics and ``journey.internal``: once the worker has read the marker on all
of a partition's topics, its watermark moves to TIME, as ``journey replay
--until`` does.
"""

from __future__ import annotations

import asyncio
import time

from ..core import intake
from ..io import topics
from ..io.kafka import bootstrap, ensure_topics
from ..io.logs import open_log
from ..io.progress import Progress

CONTROL = [("journey-control", b"watermark")]


def records(paths, max_bytes: int = 1 << 20):
    """(topic, key bytes or None, value bytes, timestamp ms or None) for each line of the logs."""
    for path in paths:
        f, _raw = open_log(path)
        with f:
            for line in f:
                line = line.rstrip(b"\r\n")
                if not line.strip():
                    continue
                try:
                    ev = intake.parse(line, max_bytes)
                except intake.Rejected:
                    yield topics.CLICKSTREAM, None, line, None
                    continue
                key = ev.cid if ev.cid is not None else ev.anon
                yield topics.topic_for(ev.type), key.encode(), line, ev.ts


async def produce(paths, broker: str, until: int | None = None, rate: float | None = None,
                  partitions: int = topics.PARTITIONS, progress: Progress | None = None,
                  create: bool = True, on_sent=None) -> dict:
    """Publish the logs; returns counts by topic. ``rate`` caps records per second
    (for steady-load measurements); ``on_sent(ts_wall)`` is called per record."""
    from aiokafka import AIOKafkaProducer

    if create:
        await ensure_topics(broker, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(broker), linger_ms=5, acks="all",
                                max_batch_size=1 << 20, max_request_size=8 << 20)
    await producer.start()
    counts: dict[str, int] = {}
    progress = progress or Progress()
    started = time.monotonic()
    n = 0
    try:
        for topic, key, value, ts in records(paths):
            if rate:
                ahead = n / rate - (time.monotonic() - started)
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
            await producer.send(topic, value=value, key=key, timestamp_ms=ts)
            if on_sent is not None:
                on_sent(key, value)
            counts[topic] = counts.get(topic, 0) + 1
            n += 1
            if n % 5000 == 0:
                progress.update("produce", n, unit="records", rate=n / max(1e-9, time.monotonic() - started))
        await producer.flush()
        if until is not None:
            value = str(until).encode()
            for topic in (*topics.SOURCES, topics.INTERNAL):
                for p in range(partitions):
                    await producer.send(topic, value=value, partition=p, headers=CONTROL)
            await producer.flush()
            counts["watermark markers"] = (len(topics.SOURCES) + 1) * partitions
    finally:
        progress.done()
        await producer.stop()
    return counts
