"""The live worker: a Faust app around the same core as ``journey replay``.

The app reads the three source topics and ``journey.internal`` (all
co-partitioned) as raw bytes; its consumer hands each fetch over whole
(``journey.live.batching``) to ``Runtime.handle``. Each record is parsed by
``intake.parse``; a record that fails goes to ``journey.deadletter`` with its
topic, partition and offset. A record found on a partition other than its
customer's is re-keyed through ``journey.internal`` (its event time becomes
the record timestamp). Everything else is offered to the
``PartitionProcessor`` of its partition: one engine and one event-time
timeline per partition, exactly the calls replay makes.

State lives in the Faust table ``customers`` (changelog
``journey-customers-changelog``), one record per customer, written once per
customer per checkpoint (``checkpoint``), always to the customer's own
partition. A record is acknowledged only after its event was applied and the
state and output it caused were handed to the producer; Faust commits the
unbroken acknowledged run after flushing the producer, so the guarantee is
at-least-once, and a redelivered event is recognized by its id (and any
trigger it causes again has the same id).

On assignment, after Faust's changelog recovery, the worker checks each
changelog partition against the high watermark that Fetch reports, and reads
any tail Faust's recovery missed (brokers whose ListOffsets answer is stale,
such as Tansu 0.6); then it loads the partition's customers and rebuilds
their timers.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
import weakref
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass

import faust
import orjson
from faust.streams import _current_event
from faust.types import TP
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import intake, topics
from ..config import Config, load_config
from ..engine import Engine, Stats
from ..timeutil import parse_duration
from ..triggers import deadletter_record
from .batching import BatchApp
from .kafka import Partitioner, bootstrap, ensure_topics, faust_url
from .metrics import LAG_BUCKETS, LATENCY_BUCKETS, Buckets, registry_for
from .processor import MARKED_TOPICS, PartitionProcessor, WATERMARK_KEY

log = logging.getLogger("journey.worker")

ENV_PREFIX = "JOURNEY_"
# journey-origin: live marks triggers a live worker wrote; journey dispatch delivers only those by default
CLOUDEVENTS_JSON = [("content-type", b"application/cloudevents+json"), ("journey-origin", b"live")]
JSON = [("content-type", b"application/json")]
NO_HEADERS: list = []
DEADLETTER_RAW_MAX = 128 << 10   # bytes of a rejected record kept in its dead letter (JSON escaping may grow
                                 # them up to 6x; a producer batch holds 1 MiB)
CONTROL_HEADER = "journey-control"
LINK_HEADERS = [(CONTROL_HEADER, b"link")]
ABSORB_HEADERS = [(CONTROL_HEADER, b"absorb")]
HANDOFFS = (b"link", b"absorb")


@dataclass
class Settings:
    """Worker settings; each may also come from ``JOURNEY_<NAME>`` in the environment."""

    broker: str = "kafka://127.0.0.1:9092"
    store: str = "rocksdb://"
    data_dir: str = "journey-data"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    rules: str | None = None
    lateness: str | None = None      # default: [engine] allowed_lateness of the rules
    idle: str | None = None          # default: [engine] idle_timeout of the rules
    partitions: int = topics.PARTITIONS
    replication: int = 1
    app_id: str = topics.APP_ID
    batch: int = 4000                # records per fetch handed over at once (one step of the loop)
    commit_interval: float = 1.0
    checkpoint: float = 0.5          # seconds between state writes (and acknowledgements)
    fetch_wait: float = 0.05         # the longest a Fetch waits on the broker for new records
    session_timeout: float = 10.0    # a worker that died leaves the group after this long
    gc_gen0: int = 50_000            # allocations between young-generation GC passes (Python's default: 700)
    loglevel: str = "warning"

    @classmethod
    def from_env(cls, environ=None, **overrides) -> "Settings":
        environ = os.environ if environ is None else environ
        s = cls()
        for f in s.__dataclass_fields__.values():
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                setattr(s, f.name, _coerce(f, raw))
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s


def _coerce(f, raw: str):
    t = f.type if isinstance(f.type, str) else f.type.__name__
    if t.startswith("int"):
        return int(raw)
    if t.startswith("float"):
        return float(raw)
    return raw


class _Anchor:
    """Stands for "an event of partition p" where Faust's store wants the current event
    to decide which partition a write belongs to (the RocksDB store keeps one database
    per partition). Only ``message.partition`` is read."""

    class _Msg:
        __slots__ = ("partition", "topic", "__weakref__")

    def __init__(self, partition: int, topic: str):
        self.message = self._Msg()
        self.message.partition = partition
        self.message.topic = topic


class _Record:
    """A changelog record read by the recovery check, shaped as Faust's stores expect."""

    class _Msg:
        __slots__ = ("key", "value", "partition", "offset", "tp", "topic")

    __slots__ = ("key", "value", "message")

    def __init__(self, rec, tp):
        self.key, self.value = rec.key, rec.value
        m = self.message = self._Msg()
        m.key, m.value, m.partition, m.offset, m.tp, m.topic = rec.key, rec.value, tp.partition, rec.offset, tp, tp.topic


class CustomerTable(faust.Table):
    """The ``customers`` table: keys are customer ids (bytes), values state bytes.

    Every key is written to its own partition (``partition_for_key``), whatever
    event is current, and with an anchor event of that partition set, so a batch
    that mixes partitions, or a wall-clock timer, writes each key where it belongs."""

    runtime: "Runtime"

    def partition_for_key(self, key) -> int:
        if isinstance(key, bytes):
            key = key.decode()
        if key.startswith(WATERMARK_KEY):
            return int(key[len(WATERMARK_KEY):])
        return self.runtime.partition(key)

    async def on_recovery_completed(self, active_tps, standby_tps) -> None:
        await self._read_missed_tail(active_tps)
        await super().on_recovery_completed(active_tps, standby_tps)
        self.runtime.assigned({tp.partition for tp in active_tps})

    async def on_rebalance(self, assigned, revoked, newly_assigned, generation_id: int = 0) -> None:
        self.runtime.rebalances += 1
        self.runtime.revoked({tp.partition for tp in revoked})
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    async def _read_missed_tail(self, active_tps) -> None:
        """Apply any changelog records past what Faust's recovery read, up to the high
        watermark reported by Fetch (not ListOffsets, which some brokers answer wrong)."""
        from aiokafka import AIOKafkaConsumer
        from aiokafka.structs import TopicPartition

        if not active_tps:
            return
        app_id = self.runtime.settings.app_id
        recovery = self.app.tables.recovery
        starts = {}
        for tp in active_tps:
            # Faust's recovery applied everything up to the high watermark it asked for;
            # records it saw past that may still sit unapplied in its buffer (seen at
            # offset 1 of a one-batch changelog on Tansu), so read on from there, not
            # from the last offset it saw
            done = recovery.active_highwaters.get(tp)
            persisted = self.persisted_offset(tp)
            start = max(x for x in (done, persisted, -1) if x is not None) + 1
            starts[TopicPartition(tp.topic, tp.partition)] = (start, tp)
        # with the worker's group id, to read its committed offsets (it never joins the group)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap(self.runtime.settings.broker), group_id=app_id,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    fetch_max_bytes=16 << 20, max_partition_fetch_bytes=8 << 20)
        await consumer.start()
        applied = 0
        try:
            # where reading of each input will start: its committed offset, else the log start
            inputs = [TopicPartition(t, tp.partition) for tp in active_tps for t in MARKED_TOPICS]
            consumer.assign(list(starts) + inputs)
            first = await consumer.beginning_offsets(inputs)
            for itp in inputs:
                committed = await consumer.committed(itp)
                self.runtime.start_pos[TP(itp.topic, itp.partition)] = committed if committed is not None else first[itp]
            log.info("input start positions: %s", {f"{t.topic}/{t.partition}": o for t, o in self.runtime.start_pos.items()})
            consumer.assign(list(starts))
            for ktp, (start, _tp) in starts.items():
                consumer.seek(ktp, start)
            pending = set(starts)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while pending and loop.time() < deadline:
                batch = await consumer.getmany(*pending, timeout_ms=200)
                for ktp, recs in batch.items():
                    tp = starts[ktp][1]
                    self.apply_changelog_batch([_Record(r, tp) for r in recs])
                    tail = self.runtime.tail.setdefault(tp.partition, {})
                    for r in recs:
                        tail[r.key] = r.value
                    applied += len(recs)
                for ktp in list(pending):
                    hw = consumer.highwater(ktp)
                    if hw is not None and await consumer.position(ktp) >= hw:
                        pending.discard(ktp)
            if pending:
                log.warning("changelog check: no high watermark from the broker for %s within 60 s",
                            sorted(str(t) for t in pending))
        finally:
            await consumer.stop()
        self.runtime.recovered_tail += applied
        if applied:
            log.warning("changelog check: applied %d record(s) Faust's recovery had not read "
                        "(the broker's ListOffsets answer was behind its Fetch high watermark)", applied)


def _merge_stats(into: Stats, other: Stats) -> None:
    into.events.update(other.events)
    into.touch.update(other.touch)
    into.duplicates += other.duplicates
    into.after_erasure += other.after_erasure
    into.triggers.update(other.triggers)
    into.suppressed.update(other.suppressed)
    into.deferred.update(other.deferred)
    into.transitions.update(other.transitions)


class Runtime:
    """Everything between Faust and the per-partition processors."""

    def __init__(self, settings: Settings, config: Config):
        self.settings = settings
        self.config = config
        self.lateness = parse_duration(settings.lateness) if settings.lateness else config.engine.allowed_lateness
        self.idle = parse_duration(settings.idle) if settings.idle else config.engine.idle_timeout
        self.max_bytes = config.engine.max_record_bytes
        self.partition = Partitioner(settings.partitions)
        self.procs: dict[int, PartitionProcessor] = {}
        self.table: CustomerTable | None = None
        self.recovered_tail = 0
        # partition -> {key: newest value} read by the recovery check: Faust's recovery may
        # still apply records of its last batch after the check (older values over newer),
        # so these win when the partition's customers are loaded
        self.tail: dict[int, dict] = {}
        self.counts = {"events": 0, "rekeyed": 0, "deadletters": 0, "late": 0, "state_writes": 0}
        self.handoffs: Counter = Counter()      # link / absorb / forward records written
        # for /metrics (journey.live.metrics): counts only, never a customer id
        self.consumed: Counter = Counter()      # (topic, event type) -> events accepted
        self.rejected: Counter = Counter()      # reason -> records rejected
        self.deadletters: Counter = Counter()   # topic read from -> dead letters
        self.retired = Stats()                  # counters of partitions this worker gave up
        self.retired_late = 0
        self.rebalances = 0
        self.latency = Buckets(LATENCY_BUCKETS)
        self.event_lag = Buckets(LAG_BUCKETS)
        self.rule_kinds = {name: rule.kind for name, (rule, _p) in Engine(config).rules.items()}
        self.faust_version = faust.__version__
        self.acks: list = []           # tokens to acknowledge once the output before them is sent
        self.building: dict = {}       # (topic, partition) -> open producer batch
        self.sealed: list = []         # (topic, partition, batch) full, not yet sent
        self.send_lock = asyncio.Lock()
        self.changelog = topics.changelog(settings.app_id)
        self.checkpoint_s = settings.checkpoint
        self.next_checkpoint = 0.0
        self.ready = False
        self.read: dict = {}      # tp -> offset of the last record handled
        self.start_pos: dict = {}  # tp -> offset reading starts at after an assignment
        self.app = None

    # -- assignment ------------------------------------------------------------------
    def assigned(self, partitions: set[int]) -> None:
        new = partitions - set(self.procs)
        gone = set(self.procs) - partitions
        self.revoked(gone)
        if new:
            items: dict[int, dict] = {p: {} for p in new}
            for k, v in self.table.data.items():
                key = k.decode() if isinstance(k, bytes) else k
                p = self.table.partition_for_key(key)
                if p in items:
                    items[p][key] = v
            for p in new:
                for k, v in self.tail.pop(p, {}).items():
                    items[p][k.decode() if isinstance(k, bytes) else k] = v
            items = {p: [(k, v) for k, v in kv.items() if v is not None] for p, kv in items.items()}
            for p in sorted(new):
                proc = PartitionProcessor(self.config, p, self.lateness, self.idle, partition_of=self.partition)
                proc.anchor = _Anchor(p, self.table.changelog_topic.get_topic_name())
                proc.load(items[p])
                self.procs[p] = proc
                log.info("partition %d: %d customer(s) loaded, watermark %s", p, len(proc.engine.states), proc.watermark)
        full_gc()
        self.ready = True

    def revoked(self, partitions: set[int]) -> None:
        for p in partitions:
            proc = self.procs.pop(p, None)  # unacknowledged records go to the new owner
            if proc is not None:  # its counts stay in this worker's counters
                _merge_stats(self.retired, proc.engine.stats)
                self.retired_late += proc.timeline.late
        if partitions:
            self.read = {tp: o for tp, o in self.read.items() if tp.partition not in partitions}
            self.start_pos = {tp: o for tp, o in self.start_pos.items() if tp.partition not in partitions}
            self.acks = [t for t in self.acks if t[0].partition not in partitions]

    # -- records -----------------------------------------------------------------------
    def handle(self, batch: dict) -> None:
        """Process one fetch, ``{tp: [record, ...]}`` (synchronously: no await, so the
        batch is one step on the event loop). A record's token is ``(tp, offset, time
        received)``."""
        wall = int(time.time() * 1000)
        received = time.monotonic()
        consumed = self.consumed
        lag = self.event_lag
        lag_bounds, lag_counts = lag.bounds, lag.counts
        lag_sum = 0.0
        touched = set()
        procs = self.procs
        part = self.partition
        memo = part.memo
        parse = intake.parse
        max_bytes = self.max_bytes
        internal = topics.INTERNAL
        counts = self.counts
        acks = self.acks
        for tp, recs in batch.items():
            p = tp.partition
            proc = procs.get(p)
            if proc is None:
                continue  # no longer ours: not acknowledged, the new owner reads it again
            topic = tp.topic
            self.read[tp] = recs[-1].offset
            touched.add(p)
            offer = proc.timeline.offer
            top = None   # the latest event time among them
            n = 0
            for rec in recs:
                if rec.headers and self._control(proc, tp, rec):
                    continue
                raw = rec.value
                if raw is None:
                    raw = b""
                try:
                    ev = parse(raw, max_bytes)
                except intake.Rejected as r:
                    self.rejected[r.reason] += 1
                    self._deadletter(r.reason, r.detail, tp, rec.offset, raw)
                    acks.append((tp, rec.offset, received))
                    continue
                key = ev.cid
                if key is None:  # a visitor: under its customer's id once they are linked
                    ev.raw = raw
                    key = proc.engine.aliases.get(ev.anon) or "anon:" + ev.anon
                if topic != internal:
                    want = memo.get(key)
                    if want is None:
                        want = part(key)
                    if want != p:
                        counts["rekeyed"] += 1
                        self._emit(internal, want, key.encode(), raw, NO_HEADERS, timestamp=ev.ts)
                        acks.append((tp, rec.offset, received))
                        continue
                n += 1
                consumed[(topic, ev.type if ev.known else "other")] += 1
                ts = ev.ts
                if top is None or ts > top:
                    top = ts
                behind_s = (wall - ts) / 1000.0
                lag_counts[bisect_left(lag_bounds, behind_s)] += 1
                lag_sum += behind_s
                offer(ev, (tp, rec.offset, received), False)
            if n:
                proc.arrived(topic, top, wall)
            counts["events"] += n
        lag.sum += lag_sum
        for p in touched:
            proc = procs[p]
            proc.settle(lambda topic: self.behind(topic, p))
            self.flush(proc)
        if time.monotonic() >= self.next_checkpoint:
            self.checkpoint()

    def behind(self, topic: str, partition: int) -> bool:
        """Has this input records not read yet? (By the high watermark the last Fetch
        reported; unknown counts as behind.)"""
        tp = TP(topic, partition)
        consumer = self.app.consumer
        try:
            hw = consumer.highwater(tp)
        except Exception:
            return True
        if hw is None:
            return True
        last = self.read.get(tp)
        if last is None:
            start = self.start_pos.get(tp)
            return start is None or start < hw
        return last + 1 < hw

    def _control(self, proc, tp, rec) -> bool:
        for k, v in rec.headers:
            if k == CONTROL_HEADER:
                token = (tp, rec.offset, None)  # a marker: no event, no latency
                if v in HANDOFFS:
                    try:
                        body = orjson.loads(rec.value)
                        proc.handoff(v.decode(), body, token)
                    except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError, ValueError):
                        self.rejected["bad_field"] += 1
                        self._deadletter("bad_field", f"a {v.decode()} hand-off record that cannot be read",
                                         tp, rec.offset, rec.value or b"")
                        self.acks.append(token)
                elif v == b"watermark":
                    try:
                        proc.mark(tp.topic, int(rec.value), token)
                    except (TypeError, ValueError):
                        self.rejected["bad_field"] += 1
                        self._deadletter("bad_field", "watermark marker without an epoch-ms value",
                                         tp, rec.offset, rec.value or b"")
                        self.acks.append(token)
                else:
                    self.acks.append(token)
                return True
        return False

    def _deadletter(self, reason: str, detail: str, tp, offset: int, raw: bytes) -> None:
        """A rejected record to ``journey.deadletter`` (on its source partition), batched like
        all output: acknowledged only once it is with the producer."""
        self.counts["deadletters"] += 1
        self.deadletters[tp.topic] += 1
        if len(raw) > DEADLETTER_RAW_MAX:
            # a record past the size limit: its head is enough to find it (topic, partition and
            # offset say where the whole is), and the dead letter must fit in a producer batch
            detail = f"{detail} (the first {DEADLETTER_RAW_MAX} of {len(raw)} bytes are kept here)"
            raw = raw[:DEADLETTER_RAW_MAX]
        rec = deadletter_record(reason, detail, {"topic": tp.topic, "partition": tp.partition,
                                                 "offset": offset}, raw)
        self._emit(topics.DEADLETTER, tp.partition, None, orjson.dumps(rec), JSON)

    def stats_total(self) -> Stats:
        """The engine counters of every partition this worker holds or held."""
        total = Stats()
        _merge_stats(total, self.retired)
        for proc in list(self.procs.values()):
            _merge_stats(total, proc.engine.stats)
        return total

    def late_total(self) -> int:
        return self.retired_late + sum(p.timeline.late for p in list(self.procs.values()))

    def consumer_lag(self) -> dict:
        """(topic, partition) -> records past the committed offset, by the log end that Fetch
        reported (ListOffsets is not trusted: some brokers answer it stale)."""
        consumer = self.app.consumer
        out = {}
        for p in sorted(self.procs):
            for topic in MARKED_TOPICS:
                tp = TP(topic, p)
                try:
                    hw = consumer.highwater(tp)
                except Exception:
                    hw = None
                done = consumer._committed_offset.get(tp)
                if done is None:
                    done = self.start_pos.get(tp)
                if hw is not None and done is not None:
                    out[(topic, p)] = max(0, hw - done)
        return out

    def describe(self) -> dict:
        """Per assigned partition: watermark, events waiting for it, and the inputs still behind
        (no customer data)."""
        return {str(p): {"watermark": proc.watermark, "waiting": proc.pending(),
                         "behind": [t for t in MARKED_TOPICS if self.behind(t, p)]}
                for p, proc in sorted(self.procs.items())}

    def tick(self) -> None:
        """Wall-clock watermark for quiet partitions (from a timer on the worker's loop)."""
        wall = int(time.time() * 1000)
        for p, proc in list(self.procs.items()):
            before = proc.watermark
            behind = [t for t in MARKED_TOPICS if self.behind(t, p)]
            proc.settle(lambda topic: topic in behind)
            if not behind:
                proc.tick(wall)
            if proc.watermark != before:
                self.flush(proc)
        if time.monotonic() >= self.next_checkpoint:
            self.checkpoint()

    def flush(self, proc: PartitionProcessor) -> None:
        """Batch the output of a step for the producer (sent by ``send_outputs`` right after
        the step: triggers are not held back); the records it applied wait for the next
        checkpoint to be acknowledged."""
        handoffs = proc.engine.handoffs
        if handoffs:
            self._send_handoffs(handoffs)
        recs = proc.outbox.records
        if recs:
            emit = self._emit
            part = self.partition
            for topic, key, value in recs:
                emit(topic, part(key), key.encode(), value,
                     CLOUDEVENTS_JSON if topic == topics.TRIGGERS else JSON)
            recs.clear()
        released = proc.timeline.released
        if released:
            now = time.monotonic()
            lat = self.latency
            bounds, counts = lat.bounds, lat.counts
            total = 0.0
            for token in released:
                t = token[2]
                if t is not None:
                    d = now - t
                    counts[bisect_left(bounds, d)] += 1
                    total += d
            lat.sum += total
            proc.applied.extend(released)
            released.clear()

    def _send_handoffs(self, handoffs: list) -> None:
        """A visitor and its customer on different partitions (``PartitionProcessor.handoff``):
        ``link`` asks the visitor's partition for its state, ``absorb`` carries the state to the
        customer's, ``forward`` takes a later event of the visitor there (its event time kept
        as the record timestamp). All go through ``journey.internal``, keyed as the table is."""
        part = self.partition
        for h in handoffs:
            kind = h[0]
            if kind == "forward":
                _k, cid, ev = h
                self._emit(topics.INTERNAL, part(cid), cid.encode(), ev.raw, NO_HEADERS, timestamp=ev.ts)
            elif kind == "link":
                _k, vkey, anon, cid = h
                self._emit(topics.INTERNAL, part(vkey), vkey.encode(), orjson.dumps({"anon": anon, "cid": cid}),
                           LINK_HEADERS)
            else:
                _k, cid, anon, state = h
                self._emit(topics.INTERNAL, part(cid), cid.encode(),
                           orjson.dumps({"anon": anon, "cid": cid, "state": state}), ABSORB_HEADERS)
            self.handoffs[kind] += 1
        handoffs.clear()

    def _emit(self, topic: str, partition: int, key: bytes, value: bytes, headers, timestamp: int | None = None) -> None:
        """Append one record to the open batch of its topic partition (aiokafka's own batch
        builder: one ``send_batch`` per topic partition per step, not a send per record)."""
        slot = (topic, partition)
        b = self.building.get(slot)
        if b is not None and b.append(timestamp=timestamp, key=key, value=value, headers=headers) is not None:
            return
        if b is not None:
            self.sealed.append((topic, partition, b))
        b = self.building[slot] = self.app.producer._ensure_producer().create_batch()
        if b.append(timestamp=timestamp, key=key, value=value, headers=headers) is None:
            raise ValueError(f"a record of {len(value)} bytes does not fit in a producer batch")

    async def send_outputs(self) -> None:
        """Hand the batched output to the producer, then acknowledge the records made durable
        before it (so an acknowledged record's output is always with the producer, which
        Faust flushes before it commits). Calls are serialized: the drain loop and the
        idle timer both send."""
        async with self.send_lock:
            acks, self.acks = self.acks, []   # their output is all in building/sealed by now
            if self.building:
                self.sealed.extend((t, p, b) for (t, p), b in self.building.items())
                self.building.clear()
            if self.sealed:
                producer = self.app.producer._ensure_producer()
                sealed, self.sealed = self.sealed, []
                for topic, partition, b in sealed:
                    fut = await producer.send_batch(b, topic, partition=partition)
                    if topic == self.changelog:
                        fut.add_done_callback(self._persisted(partition, b.record_count()))
            self._ack(acks)

    def checkpoint(self) -> None:
        """Write every customer state changed since the last checkpoint (one write per
        customer, whatever number of events changed it) to the table's store and, as one
        producer batch per partition, to its changelog; the records applied before it are
        acknowledged once that batch is with the producer (``send_outputs``). Faust commits
        only acknowledged offsets, after flushing the producer, so a committed offset never
        runs ahead of the state.

        The changelog records are written here rather than by ``table[key] = value``:
        Faust's producer buffer gives up flushing after 0.1 s without progress (a busy
        loop), so a commit could pass state still waiting in it."""
        self.next_checkpoint = time.monotonic() + self.checkpoint_s
        data = self.table.data
        changelog = self.changelog
        emit = self._emit
        for proc in self.procs.values():
            dirty = proc.take_dirty()
            if dirty:
                p = proc.partition
                token = _current_event.set(weakref.ref(proc.anchor))
                try:
                    for key, value in dirty:
                        k = key.encode()
                        if value is None:
                            data.pop(k, None)
                        else:
                            data[k] = value
                        emit(changelog, p, k, value, NO_HEADERS)
                finally:
                    _current_event.reset(token)
                self.counts["state_writes"] += len(dirty)
            if proc.applied:
                self.acks.extend(proc.applied)
                proc.applied.clear()
        self.counts["late"] = sum(p.timeline.late for p in self.procs.values())
        # what lives past a checkpoint is mostly customer state: keep it out of the collector's
        # full passes, whose pause grows with the number of customers held (see tune_gc)
        gc.freeze()

    def _persisted(self, partition: int, count: int):
        """Tell the store (RocksDB keeps it) how far the changelog it mirrors was written."""
        tp = TP(self.changelog, partition)

        def done(fut):
            if not fut.cancelled() and fut.exception() is None:
                self.table.data.set_persisted_offset(tp, fut.result().offset + count - 1)
        return done

    def _ack(self, tokens: list) -> None:
        if not tokens:
            return
        by_tp: dict = {}
        for tp, offset, _received in tokens:
            by_tp.setdefault(tp, []).append(offset)
        tokens.clear()
        consumer = self.app.consumer
        for tp, offsets in by_tp.items():
            if tp.partition in self.procs:  # a revoked partition's records go to its new owner
                consumer.ack_offsets(tp, offsets)


def build_app(settings: Settings, config: Config | None = None) -> tuple[faust.App, Runtime]:
    config = config if config is not None else (load_config(settings.rules) if settings.rules else Config())
    rt = Runtime(settings, config)
    store = settings.store
    app = BatchApp(
        settings.app_id,
        broker=faust_url(settings.broker),
        store=store,
        datadir=settings.data_dir,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        topic_allow_declare=True,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval,
        broker_commit_every=1 << 62,  # commits come from the interval timer, not the drain loop
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=max(0.5, settings.session_timeout / 5),
        broker_rebalance_timeout=settings.session_timeout,
        stream_wait_empty=False,
        table_standby_replicas=0,
        web_enabled=True,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
        producer_acks=-1,
        producer_linger_ms=5,
        producer_max_batch_size=1 << 20,
        consumer_max_fetch_size=8 << 20,
        broker_max_poll_records=settings.batch,  # one fetch = one batch: keeps the loop responsive
    )
    table = CustomerTable(app, name=topics.TABLE, partitions=settings.partitions, beacon=app.tables.beacon,
                          key_type=bytes, value_type=bytes, help="per-customer state")
    table.runtime = rt
    app.tables.add(table)
    rt.table = table
    rt.app = app
    def raw_topic(*names):
        # bytes in, bytes out: decoding is ours (a typed stream dies on a bad record)
        return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw", partitions=settings.partitions)

    source = raw_topic(*topics.SOURCES, topics.INTERNAL)

    # no agent: the consumer hands each fetch to the runtime whole (journey.live.batching)
    app.topics.add(source)
    app.batch_handler = rt.handle
    app.fetch_wait_ms = int(settings.fetch_wait * 1000)
    app.batch_topics = frozenset((*topics.SOURCES, topics.INTERNAL))

    async def after_batch():
        await rt.send_outputs()
        producer_buffer = app.producer.buffer
        if producer_buffer.size > 10_000:
            await producer_buffer.wait_until_ebb()

    app.after_batch = after_batch

    @app.timer(interval=0.25, name="journey.idle_watermarks")
    async def idle_watermarks():
        if rt.ready:
            rt.tick()
            await rt.send_outputs()

    @app.page("/health")
    async def health(web, request):
        return web.json({"status": "ok"})

    registry = registry_for(rt)

    @app.page("/metrics")
    async def metrics(web, request):
        # the exposition format 0.0.4 (aiohttp sets the charset itself)
        return web.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4")

    @app.page("/ready")
    async def ready(web, request):
        body = {"ready": rt.ready, "partitions": sorted(rt.procs), "detail": rt.describe(), "counts": rt.counts}
        return web.json(body, status=200 if rt.ready else 503)

    return app, rt


def tune_gc(gen0: int) -> None:
    """Python's cyclic garbage collector, set for a process holding many long-lived
    customer states and allocating a few dozen short-lived objects per event.

    * Young passes every ``gen0`` allocations instead of 700: with the default, the
      collector took about a quarter of the worker's time.
    * Full passes walk every tracked object, and the customer states are most of them
      (about 20 per customer: a pause of about 0.2 s per 13,000 customers, 1 s and more
      for a large partition, in the middle of the stream). So what exists at each
      checkpoint is frozen (``gc.freeze``: moved out of the collector's sight; it is
      still freed by reference counting as usual), and full passes only see what is
      newer. The one thing freezing could keep is a reference cycle that becomes garbage
      after it was frozen; measured, the worker makes none in steady state (only at
      start-up, about 800 objects), and ``full_gc`` collects everything after each
      assignment, while processing is stopped anyway."""
    gc.freeze()
    _g0, g1, g2 = gc.get_threshold()
    gc.set_threshold(max(1, gen0), g1, g2)


def full_gc() -> None:
    """A complete collection, frozen objects included, then freeze again (after an assignment)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def run(settings: Settings) -> int:
    """Create missing topics, then run the worker until SIGINT/SIGTERM."""
    logging.basicConfig(level=getattr(logging, settings.loglevel.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(settings.rules) if settings.rules else Config()
    status = asyncio.run(ensure_topics(settings.broker, settings.partitions, settings.app_id, settings.replication))
    for name, what in status.items():
        if what not in ("created", "exists"):
            raise SystemExit(f"journey worker: topic {name} {what}")
    asyncio.set_event_loop(asyncio.new_event_loop())
    app, _rt = build_app(settings, config)
    tune_gc(settings.gc_gen0)
    worker = faust.Worker(app, loglevel=settings.loglevel.upper(), quiet=True,
                          override_logging=False)
    worker.execute_from_commandline()
    return 0
