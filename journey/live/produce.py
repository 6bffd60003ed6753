"""``journey produce``: publish a historical log into the source topics.

Records go out in event-time order (the same bounded external sort as replay:
a log whose lines are out of order by more than the allowed lateness would
otherwise reach the worker late, and the live result would depend on fetch
sizes); ``as_is`` keeps file order. Each record goes to the topic its event type belongs to (``topics.STREAM_OF``),
keyed by customer id (the anonymous id for a visitor), with its event time as
the Kafka record timestamp and the original bytes as the value. A record that
does not parse is published too, unkeyed, on ``journey.clickstream``, so the
worker dead-letters it as replay would.

``--until TIME`` then writes one watermark marker per partition on
``journey.internal`` (header ``journey-control: watermark``, value
``{"until": ms, "ends": {source topic: offset}}``): once the worker has read
each source topic of that partition up to the offset where these records
ended, its watermark moves to TIME, or to the latest event time published if
that is later, as ``journey replay --until`` does. Workers obey control
records only on ``journey.internal``; on a source topic the header is
ignored.

With ``--until`` (and no ``--rate``) the publication is also *held*: before
its first record it writes a hold record (``journey-control: hold``) on each
partition of ``journey.internal``, and after every ``CHUNK`` records, once
the broker has acknowledged them, a marker ``{"until": ms, "ends": {...},
"more": true}`` whose ``until`` is just before the earliest event time still
to come (the next record's, in event-time order; with ``as_is`` a first pass
over the logs finds it, whatever their order). Until
the final marker, a worker moves event time only with these markers, never
with the events it has read: the topics are written in parallel, so a worker
reading while they are written can find an input read to its end while that
input's records of the same moment are still on their way (months of event
time, when history is published at full speed), and ordering by what it has
read would apply them late, out of order, or drop them as redeliveries. So
a log published while workers run gives the same triggers as replay, and a
worker holds at most about a chunk of events (times the number of chunks it
reads ahead) waiting.
"""

from __future__ import annotations

import asyncio
import time

import orjson

from ..core import intake
from ..io import topics
from ..io.connection import PLAINTEXT, KafkaConnection
from ..io.kafka import bootstrap, broker_wait, ensure_topics, start_client
from ..io.logs import SORT_BUFFER, ExternalSort, LogError, open_log, read_lines
from ..io.progress import Progress

CONTROL = [("journey-control", b"watermark")]
HOLD = [("journey-control", b"hold")]
CHUNK = 10_000   # records between two markers of a held publication


def records(paths, max_bytes: int = 1 << 20, as_is: bool = False, sort_buffer: int = SORT_BUFFER):
    """(topic, key bytes or None, value bytes, timestamp ms or None) for each line of the logs,
    in event-time order (ties: event id, then file order; lines that do not parse first),
    or in file order with ``as_is``."""
    if as_is:
        yield from _records(paths, max_bytes)
        return
    seq = 0

    def keyed():
        nonlocal seq
        for topic, key, line, ts, eid in _records(paths, max_bytes, ids=True):
            seq += 1
            yield (-1 if ts is None else ts, eid, seq, topic, key, line)

    for ts, _eid, _seq, topic, key, line in ExternalSort(sort_buffer)(keyed()):
        yield topic, key, line, (None if ts < 0 else ts)


def _records(paths, max_bytes: int, ids: bool = False):
    for path in paths:
        f, _raw = open_log(path)
        with f:
            for _n, line in read_lines(f, path):
                line = line.rstrip(b"\r\n")
                if not line or line.isspace():  # blank (isspace: no copy, the same whitespace as strip)
                    continue
                try:
                    ev = intake.parse(line, max_bytes)
                except intake.Rejected:
                    yield (topics.CLICKSTREAM, None, line, None, "") if ids else (topics.CLICKSTREAM, None, line, None)
                    continue
                key = ev.cid if ev.cid is not None else ev.anon
                if ids:
                    yield topics.topic_for(ev.type), key.encode(), line, ev.ts, ev.id
                else:
                    yield topics.topic_for(ev.type), key.encode(), line, ev.ts


def chunk_floors(paths, chunk: int = CHUNK) -> list:
    """For each run of ``chunk`` records of the logs (in file order), the earliest event time
    among the records after it (None: no event follows)."""
    mins = []
    m, n = None, 0
    for _topic, _key, _value, ts in records(paths, as_is=True):
        if ts is not None and (m is None or ts < m):
            m = ts
        n += 1
        if n == chunk:
            mins.append(m)
            m, n = None, 0
    if n:
        mins.append(m)
    after, low = [None] * len(mins), None
    for i in range(len(mins) - 1, -1, -1):
        after[i] = low
        if mins[i] is not None and (low is None or mins[i] < low):
            low = mins[i]
    return after


async def produce(paths, broker: str, until: int | None = None, rate: float | None = None,
                  partitions: int = topics.PARTITIONS, progress: Progress | None = None,
                  create: bool = True, on_sent=None, as_is: bool = False, sort_buffer: int = SORT_BUFFER,
                  chunk: int = CHUNK, conn: KafkaConnection = PLAINTEXT) -> dict:
    """Publish the logs; returns counts by topic. ``rate`` caps records per second
    (for steady-load measurements); ``on_sent(key, value)`` is called per record;
    ``as_is`` publishes in file order instead of event-time order; ``chunk``: records
    between two markers of a held publication."""
    from aiokafka import AIOKafkaProducer

    if create:
        await ensure_topics(broker, partitions, timeout=broker_wait(), conn=conn)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(broker), linger_ms=5, acks="all",
                                max_batch_size=1 << 20, max_request_size=8 << 20, **conn.client_options())
    await start_client(producer.start, broker_wait(), conn, broker)
    counts: dict[str, int] = {}
    progress = progress or Progress()
    started = time.monotonic()
    n = 0
    ends: dict[tuple[str, int], int] = {}   # (topic, partition) -> the offset after our last record
    latest = None                           # the latest event time sent

    def sent(fut):
        if not fut.cancelled() and fut.exception() is None:
            md = fut.result()
            slot = (md.topic, md.partition)
            if md.offset + 1 > ends.get(slot, 0):
                ends[slot] = md.offset + 1
    held = until is not None and not rate   # a paced publication is read as live traffic is
    futures: list = []

    async def delivered() -> None:
        # every record sent so far is with the broker (and ``ends`` knows its offset: ``sent``
        # was added before gather's own callback, so it has run)
        if futures:
            await asyncio.gather(*futures)
            futures.clear()

    async def markers(at: int, more: bool) -> None:
        # one per partition, on journey.internal (the only topic whose control records a worker obeys)
        for p in range(partitions):
            body = {"until": at, "ends": {t: ends[(t, p)] for t in topics.SOURCES if (t, p) in ends}}
            if more:
                body["more"] = True
            await producer.send(topics.INTERNAL, value=orjson.dumps(body), partition=p, headers=CONTROL)
    try:
        try:
            # the earliest event time after each chunk: in event-time order, the next record's;
            # in file order, a first pass finds it
            floors = chunk_floors(paths, chunk) if held and as_is else []
        except LogError as e:
            e.nothing_published = True  # found by the first pass, before any record or hold was written
            raise
        if held:
            for p in range(partitions):
                await producer.send(topics.INTERNAL, value=b"{}", partition=p, headers=HOLD)
            await producer.flush()  # before any record: a worker that reads one sees the hold coming
        k = 0  # chunks sent
        boundary = False  # in event-time order: a chunk ended, its marker goes before the next record
        stream = records(paths, as_is=as_is, sort_buffer=sort_buffer)
        while True:
            try:
                item = next(stream, None)  # in event-time order, the sort reads everything first
            except LogError as e:
                e.nothing_published = n == 0
                raise
            if item is None:
                break
            topic, key, value, ts = item
            if boundary and ts is not None:
                boundary = False
                await delivered()
                await markers(ts - 1, more=True)  # every record stamped before this one is written
            if rate:
                ahead = n / rate - (time.monotonic() - started)
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
            if ts is not None and (latest is None or ts > latest):
                latest = ts
            fut = await producer.send(topic, value=value, key=key, timestamp_ms=ts)
            fut.add_done_callback(sent)
            if held:
                futures.append(fut)
            if on_sent is not None:
                on_sent(key, value)
            counts[topic] = counts.get(topic, 0) + 1
            n += 1
            if n % 5000 == 0:
                progress.update("produce", n, unit="records", rate=n / max(1e-9, time.monotonic() - started))
            if held and n % chunk == 0:
                if not as_is:
                    boundary = True
                    continue
                await delivered()
                floor = floors[k] if k < len(floors) else None
                k += 1
                if floor is not None:  # every record stamped before the next one to come is written
                    await markers(floor - 1, more=True)
        await producer.flush()
        await delivered()
        if until is not None:
            for _ in range(3):
                await asyncio.sleep(0)  # let the delivery callbacks of the flushed batches run
            # once a partition has read its source topics up to where these records ended, event
            # time is at ``until``, or at the latest event time sent when that is later (as replay
            # --until: timers due by the log's last event fire too); this one ends the hold
            until = max(until, latest) if latest is not None else until
            await markers(until, more=False)
            await producer.flush()
            counts["watermark markers"] = partitions
    except Exception as e:
        e.records_sent = n   # for the message: how much of the log went out before it failed
        raise
    finally:
        progress.done()
        await producer.stop()
    return counts


def erasure_records(ids, at: int) -> list[tuple[str, bytes, bytes, int]]:
    """``journey erase``: one canonical ``customer.erased`` event per id, stamped ``at``, as
    (topic, key, value, timestamp) for :func:`publish` (on the topic of its type, keyed by the
    id as every event). Each is checked as the worker reads it: ValueError(index, reason)
    for an id it would reject (the message names the position, never the id)."""
    import uuid

    out = []
    for n, cid in enumerate(ids, 1):
        value = orjson.dumps({"id": f"erase-{uuid.uuid4()}", "customer_id": cid, "type": "customer.erased",
                              "ts": at, "props": {}})
        try:
            ev = intake.parse(value)
        except intake.Rejected as r:
            raise ValueError(n, r.reason) from None
        if ev.cid != cid:
            raise ValueError(n, "not a customer id as the worker reads it")
        out.append((topics.topic_for(ev.type), cid.encode(), value, at))
    return out


async def publish(records, broker: str, partitions: int = topics.PARTITIONS, create: bool = True,
                  conn: KafkaConnection = PLAINTEXT) -> int:
    """Publish a few (topic, key, value, timestamp) records and wait until the broker has
    acknowledged every one; returns their number."""
    from aiokafka import AIOKafkaProducer

    if create:
        await ensure_topics(broker, partitions, timeout=broker_wait(), conn=conn)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(broker), linger_ms=5, acks="all", **conn.client_options())
    await start_client(producer.start, broker_wait(), conn, broker)
    try:
        futures = [await producer.send(topic, value=value, key=key, timestamp_ms=ts)
                   for topic, key, value, ts in records]
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(futures)
