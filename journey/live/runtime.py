"""The worker's runtime: everything between Faust and the per-partition processors.

``Runtime.handle`` takes one fetch: each record is parsed by ``intake.parse``
(a record that fails goes to ``journey.deadletter`` with its topic, partition
and offset), re-keyed through ``journey.internal`` if it is on another
partition than its customer's, and otherwise offered to the
``PartitionProcessor`` of its partition. Assignment loads a partition's
customers; revocation hands its unacknowledged records to the new owner. The
output half (batches, checkpoints, acknowledgements) is ``outputs.Outputs``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections import Counter

import faust
import orjson
from faust.types import TP

from ..core import intake
from ..core.config import Config
from ..core.engine import Engine, Stats
from ..core.timeutil import parse_duration
from ..core.triggers import deadletter_record
from ..io import topics
from ..io.kafka import Partitioner
from .gcpolicy import full_gc
from .metrics import LAG_BUCKETS, LATENCY_BUCKETS, Buckets
from .outputs import CONTROL_HEADER, HANDOFFS, JSON, NO_HEADERS, Outputs
from .processor import MARKED_TOPICS, PartitionProcessor
from .settings import Settings
from .table import CustomerTable, _Anchor

log = logging.getLogger("journey.worker")

DEADLETTER_RAW_MAX = 128 << 10   # bytes of a rejected record kept in its dead letter (JSON escaping may grow
                                 # them up to 6x; a producer batch holds 1 MiB)


def _merge_stats(into: Stats, other: Stats) -> None:
    into.events.update(other.events)
    into.touch.update(other.touch)
    into.duplicates += other.duplicates
    into.after_erasure += other.after_erasure
    into.triggers.update(other.triggers)
    into.suppressed.update(other.suppressed)
    into.deferred.update(other.deferred)
    into.transitions.update(other.transitions)


class Runtime(Outputs):
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
            proc.settle(lambda topic, p=p: self.behind(topic, p))
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
            proc.settle(lambda topic, behind=behind: topic in behind)
            if not behind:
                proc.tick(wall)
            if proc.watermark != before:
                self.flush(proc)
        if time.monotonic() >= self.next_checkpoint:
            self.checkpoint()
