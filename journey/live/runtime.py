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
from collections import Counter, deque

import faust
import orjson
from faust.types import TP

from ..core import intake
from ..core.config import Config
from ..core.engine import Engine, Stats
from ..core.timeutil import format_time, parse_duration
from ..core.triggers import deadletter_record
from ..io import topics
from ..io.connection import PLAINTEXT
from ..io.kafka import Partitioner
from .gcpolicy import full_gc
from .metrics import LAG_BUCKETS, LATENCY_BUCKETS, Buckets
from .outputs import CONTROL_HEADER, HANDOFFS, JSON, NO_HEADERS, Outputs
from .processor import MARKED_TOPICS, PartitionProcessor
from .rulesync import RULES_KIND, RuleSync
from .settings import Settings
from .table import CustomerTable, _Anchor

log = logging.getLogger("journey.worker")

CONTROL_KINDS = (*HANDOFFS, b"watermark", b"hold", RULES_KIND)
RULES_HEADERS = [(CONTROL_HEADER, RULES_KIND)]
# a Fetch answered this long (ms) after a marker was read was sent after the marker was written
MARKER_FRESH_MS = 1000
DEADLETTER_RAW_MAX = 128 << 10   # bytes of a rejected record kept in its dead letter (JSON escaping may grow
                                 # them up to 6x; a producer batch holds 1 MiB)


def _marker(value: bytes) -> tuple[int, dict, bool]:
    """A watermark marker's ``{"until": ms, "ends": {source topic: offset}, "more": bool}``
    (``journey produce``; ``more``: the publication goes on, its hold stays)."""
    d = orjson.loads(value)
    until, ends, more = d["until"], d.get("ends", {}), d.get("more", False)
    if type(until) is not int or not isinstance(ends, dict) or type(more) is not bool or not all(
            t in topics.SOURCES and type(o) is int and o >= 0 for t, o in ends.items()):
        raise ValueError("not a watermark marker")
    return until, ends, not more


def _merge_stats(into: Stats, other: Stats) -> None:
    into.merge(other)


def _ranges(ps: tuple) -> str:
    """(0, 1, 2, 5) -> "0-2, 5"."""
    out, start = [], None
    for i, p in enumerate(ps):
        if start is None:
            start = p
        if i + 1 == len(ps) or ps[i + 1] != p + 1:
            out.append(str(start) if start == p else f"{start}-{p}")
            start = None
    return ", ".join(out)


class Runtime(Outputs):
    """Everything between Faust and the per-partition processors."""

    def __init__(self, settings: Settings, config: Config):
        self.settings = settings
        self.config = config
        self.lateness = parse_duration(settings.lateness) if settings.lateness else config.engine.allowed_lateness
        self.idle = parse_duration(settings.idle) if settings.idle else config.engine.idle_timeout
        self.max_bytes = config.engine.max_record_bytes
        self.future_horizon = config.engine.future_horizon  # 0: no check
        self.partition = Partitioner(settings.partitions)
        self.procs: dict[int, PartitionProcessor] = {}
        self.table: CustomerTable | None = None
        self.recovered_tail = 0
        # partition -> {key: newest value} read by the recovery check: Faust's recovery may
        # still apply records of its last batch after the check (older values over newer),
        # so these win when the partition's customers are loaded
        self.tail: dict[int, dict] = {}
        self.counts = {"events": 0, "rekeyed": 0, "deadletters": 0, "late": 0, "state_writes": 0, "erased": 0}
        self.handoffs: Counter = Counter()      # link / absorb / forward records written
        # for /metrics (journey.live.metrics): counts only, never a customer id
        self.consumed: Counter = Counter()      # (topic, event type) -> events accepted
        self.rejected: Counter = Counter()      # reason -> records rejected
        self.control_deadletters: Counter = Counter()  # kind -> journey.internal control records dead-lettered
        self.deadletters: Counter = Counter()   # topic read from -> dead letters
        self.retired = Stats()                  # counters of partitions this worker gave up
        self.retired_late = 0
        self.retired_bad_states = 0
        self.retired_state_errors = 0
        self.rebalances = 0
        self.latency = Buckets(LATENCY_BUCKETS)
        self.event_lag = Buckets(LAG_BUCKETS)
        probe = Engine(config)
        self.rule_kinds = probe.rule_kinds()
        self.journey_steps = probe.journey_steps()     # multi-step journey -> step names (metric labels)
        self.rulesync = RuleSync(config)               # do the workers of the group run the same rules?
        self.faust_version = faust.__version__
        self.acks: list = []           # tokens of records whose only effect is output, for the next checkpoint
        self.building: dict = {}       # (topic, partition) -> open producer batch
        self.sealed: list = []         # (topic, partition, batch) full, not yet sent
        self.send_lock = asyncio.Lock()
        self.inflight: list = []       # delivery futures of output sent and not yet delivered
        self.pending: deque = deque()  # checkpoints taken, not yet queued: (writes by partition, acks)
        self.commits: asyncio.Queue = asyncio.Queue()  # checkpoints queued behind their output
        self.committer = None          # the task that makes them durable, in order (outputs._commit)
        self.failed = None             # an output the broker would not take (the worker stops)
        self.epochs: dict[int, int] = {}  # partition -> revocations so far (stale checkpoints are dropped)
        self.changelog = topics.changelog(settings.app_id)
        self.checkpoint_s = settings.checkpoint
        self.next_checkpoint = 0.0
        self.ready = False
        # the stuck-partition watch (``watch``): partition -> (wall ms since when, watermark then)
        # while it has records not yet read; partition -> why, for those stuck
        self.stuck_ms = int(settings.stuck_after * 1000)
        self.since: dict[int, tuple[int, int | None]] = {}
        self.stuck: dict[int, str] = {}
        self.stalls = 0                # times a partition became stuck
        self.read: dict = {}      # tp -> offset of the last record handled
        self.start_pos: dict = {}  # tp -> offset reading starts at after an assignment
        self.app = None
        self.conn = PLAINTEXT          # Kafka security settings (the worker sets its own: build_app)
        # the worker's status lines (journey.live.worker sets it): assignment, then caught up; counts
        # and partition numbers only, never a customer id
        self.say = None
        self.said: tuple | None = None    # the partitions the last assignment line named
        self.caught_up = False            # the ready line was said for the current assignment

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
                proc.timeline.on_error = self._event_failed
                proc.engine.on_timer_error = self._timer_failed
                proc.load(items[p])
                self.procs[p] = proc
                log.info("partition %d: %d customer(s) loaded, watermark %s", p, len(proc.engine.states), proc.watermark)
            self._not_run([self.procs[p] for p in sorted(new)])
        self.announce_rules()   # after every rebalance: a worker that joined hears the others
        full_gc()
        self.ready = True
        mine = tuple(sorted(partitions))
        if self.say is not None and mine != self.said:
            self.said, self.caught_up = mine, False
            if mine:
                customers = sum(len(proc.engine.states) for proc in self.procs.values())
                self.say(f"assigned {len(mine)} of {self.settings.partitions} partition(s) ({_ranges(mine)}), "
                         f"{customers:,} customer(s) loaded; catching up on the input")
            else:
                self.say(f"no partition assigned (this group has more workers than the {self.settings.partitions} "
                         "partitions); standing by to take over")

    def announce_rules(self) -> None:
        """This worker's rule fingerprint to every partition of journey.internal (``rulesync``)."""
        value = self.rulesync.announcement()
        for p in range(self.settings.partitions):
            self._emit(topics.INTERNAL, p, None, value, RULES_HEADERS)

    def _not_run(self, procs) -> None:
        """Say so when the state just loaded holds rules or journeys this rule file does not run."""
        total: dict[str, list[int]] = {}
        for proc in procs:
            for name, (customers, pending) in proc.engine.not_run().items():
                t = total.setdefault(name, [0, 0])
                t[0] += customers
                t[1] += pending
        if not total:
            return
        parts = []
        for name, (customers, pending) in sorted(total.items()):
            what = "a disabled rule" if name in self.config.rules else "a journey not in the rule file"
            parts.append(f"{name} ({what}: {customers} customer(s)"
                         + (f", {pending} pending timer(s), deferred trigger(s) or open exposure(s)" if pending else "")
                         + ")")
        log.warning("the saved state of partition(s) %s holds rules or journeys this rule file (%s, fingerprint %s) "
                    "does not run, removed, renamed or disabled since it was written: %s. What is pending of them is "
                    "dropped when due, with no trigger and no audit record; put them back in the rule file to keep "
                    "them",
                    ",".join(str(p.partition) for p in procs), self.config.source, self.rulesync.fingerprint,
                    "; ".join(parts))

    def revoked(self, partitions: set[int]) -> None:
        for p in partitions:
            proc = self.procs.pop(p, None)  # unacknowledged records go to the new owner
            if proc is not None:  # its counts stay in this worker's counters
                _merge_stats(self.retired, proc.engine.stats)
                self.retired_late += proc.timeline.late
                self.retired_bad_states += proc.bad_states
                self.retired_state_errors += proc.state_errors
        if partitions:
            self.read = {tp: o for tp, o in self.read.items() if tp.partition not in partitions}
            self.start_pos = {tp: o for tp, o in self.start_pos.items() if tp.partition not in partitions}
            self.drop(partitions)

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
        horizon = self.future_horizon
        keep = self.config.keep_props
        for tp, recs in batch.items():
            p = tp.partition
            proc = procs.get(p)
            if proc is None:
                continue  # no longer ours: not acknowledged, the new owner reads it again
            # an event stamped this far ahead of the present never moves event time
            wm = proc.timeline.watermark
            future = (max(wall, wm) if wm is not None else wall) + horizon if horizon else 1 << 62
            topic = tp.topic
            self.read[tp] = recs[-1].offset
            touched.add(p)
            offer = proc.timeline.offer
            top = None   # the latest event time among them
            n = 0
            control = topic == internal  # control records are honoured on the worker's own topic only
            for rec in recs:
                if control and rec.headers and self._control(proc, tp, rec):
                    continue
                raw = rec.value
                if raw is None:
                    raw = b""
                try:
                    ev = parse(raw, max_bytes, keep)
                except intake.Rejected as r:
                    if self._erased_raw(raw):  # its dead letter would keep an erased id's bytes
                        acks.append((tp, rec.offset, received))
                        continue
                    self.rejected[r.reason] += 1
                    self._deadletter(r.reason, r.detail, tp, rec.offset, raw)
                    acks.append((tp, rec.offset, received))
                    continue
                except Exception as e:  # parse raises only Rejected; a worker never stops on a record
                    if self._erased_raw(raw):
                        acks.append((tp, rec.offset, received))
                        continue
                    self.rejected[intake.BAD_FIELD] += 1
                    self._deadletter(intake.BAD_FIELD, f"cannot be read ({type(e).__name__})", tp, rec.offset, raw)
                    acks.append((tp, rec.offset, received))
                    continue
                if ev.ts > future:
                    if self._erased_raw(raw):
                        acks.append((tp, rec.offset, received))
                        continue
                    self.rejected[intake.FUTURE_TIME] += 1
                    self._deadletter(intake.FUTURE_TIME, f"stamped {format_time(ev.ts)}, more than the future "
                                     f"horizon ahead of the present ({format_time(future - horizon)})",
                                     tp, rec.offset, raw)
                    acks.append((tp, rec.offset, received))
                    continue
                ev.raw = raw  # kept for a dead letter if applying it fails, and for forwarding a visitor's
                key = ev.cid
                if key is None:  # a visitor: under its customer's id once they are linked
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
            self.markers(proc)
            self.flush(proc)
        if time.monotonic() >= self.next_checkpoint:
            self.checkpoint()

    def _erased_raw(self, raw: bytes) -> bool:
        """A record about to be dead-lettered: does it carry an id erased on a partition of this
        worker? (The rare path only: it hashes.) Then it is dropped and counted instead, as the
        engine drops an erased id's events: a dead letter would keep its bytes."""
        procs = [p for p in list(self.procs.values()) if p.engine.erased]
        if not procs:
            return False
        from ..core.privacy import erasure_hash

        ids = intake.routing_key(raw)
        if ids is None:
            return False
        keys = [k for k in (ids[0], "anon:" + ids[1] if ids[1] is not None else None) if k is not None]
        for proc in procs:
            eng = proc.engine
            if any(erasure_hash(eng.salt, k) in eng.erased for k in keys):
                self.counts["erased"] += 1
                return True
        return False

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
        """A control record of ``journey.internal`` (``journey-control`` header): a visitor
        hand-off or a watermark marker. One that cannot be read or obeyed is dead-lettered,
        never silently dropped."""
        for k, v in rec.headers:
            if k == CONTROL_HEADER:
                token = (tp, rec.offset, None)  # a marker: no event, no latency
                try:
                    if v in HANDOFFS:
                        proc.handoff(v.decode(), orjson.loads(rec.value), token, rec.key)
                    elif v == b"watermark":
                        until, ends, final = _marker(rec.value)
                        proc.mark(until, ends, token, final, seen=int(time.time() * 1000))
                        self.markers(proc)
                    elif v == b"hold":
                        proc.hold_on(token)
                    elif v == RULES_KIND:
                        self.rulesync.heard(rec.value)
                        self.acks.append(token)
                    else:
                        raise ValueError("an unknown journey-control record")
                except Exception as e:
                    self.rejected[intake.BAD_FIELD] += 1
                    what = v.decode(errors="replace")[:20] if isinstance(v, bytes) else "?"
                    self.control_deadletters[v.decode() if v in CONTROL_KINDS else "unknown"] += 1
                    self._deadletter(intake.BAD_FIELD, f"a {what!r} control record that cannot be obeyed "
                                     f"({type(e).__name__})", tp, rec.offset, rec.value or b"")
                    self.acks.append(token)
                return True
        return False

    def _event_failed(self, ev, token, exc) -> None:
        """Applying an event failed (the timeline goes on): its record is dead-lettered with
        its bytes, counted, and acknowledged with the rest."""
        self.rejected[intake.UNPROCESSABLE] += 1
        detail = f"{type(exc).__name__} while applying the event"
        log.warning("an event could not be applied (%s); dead-lettered", type(exc).__name__)
        if token is not None:
            self._deadletter(intake.UNPROCESSABLE, detail, token[0], token[1], ev.raw or b"")

    def _timer_failed(self, _due, exc) -> None:
        log.warning("a timer could not be run (%s); dropped", type(exc).__name__)

    def markers(self, proc) -> None:
        """A waiting watermark marker is reached once every source topic of the partition
        has been read up to the offset the producer's records ended at (markers are reached
        in the order read).

        ``journey produce`` writes a marker only after the broker acknowledged every record
        it names, so a marker that looks past the end of its inputs is almost always a view
        of the inputs older than the marker: the high watermark the client holds for a
        partition is the one of the last Fetch that included it, and the client does not
        fetch a partition again while it still holds unread records of it. A marker is
        therefore given up (dead-lettered: it names offsets never written) only when the
        partition has nothing left to read, the marker has waited for the idle timeout, and
        every input it waits on was fetched again after it was read
        (``MARKER_FRESH_MS`` later) and still ends before the marker's offset."""
        p = proc.partition
        while (marker := proc.marker) is not None:
            _until, ends, token, seen = marker
            short = []
            for topic in topics.SOURCES:
                end = ends.get(topic, 0)
                if end <= 0:
                    continue
                tp = TP(topic, p)
                last = self.read.get(tp)
                at = last + 1 if last is not None else self.start_pos.get(tp, 0)
                if at < end:
                    short.append((tp, at, end))
            if not short:
                proc.marker_reached()
                continue
            if any(self.behind(t, p) for t in MARKED_TOPICS):
                return  # records still to read
            now = int(time.time() * 1000)
            if now - seen < self.idle or not all(
                    (f := self.fetched_at(tp)) is not None and f >= seen + MARKER_FRESH_MS for tp, _a, _e in short):
                return  # the high watermarks held may predate the marker: wait for fresh ones
            proc.drop_marker()
            tp, at, end = short[0]
            log.warning("partition %d: a watermark marker names %s up to offset %d, but the broker reports its "
                        "end at %d %d ms after the marker was read; the marker is dead-lettered (was the topic "
                        "deleted and created again, or the marker written by hand?)", p, tp.topic, end, at, now - seen)
            self.control_deadletters["watermark"] += 1
            self.rejected[intake.BAD_FIELD] += 1
            self._deadletter(intake.BAD_FIELD, f"a watermark marker past the end of its inputs ({tp.topic} "
                             f"ends at {at}, the marker names {end})", token[0], token[1], b"")
            self.acks.append(token)

    def fetched_at(self, tp) -> int | None:
        """Wall time (ms) of the last Fetch answer that included this input (its high
        watermark is from then); None if unknown."""
        try:
            return self.app.consumer._thread._ensure_consumer().last_poll_timestamp(tp)
        except Exception:
            return None

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
        """Per assigned partition: watermark, events waiting for it, the inputs still behind,
        whether a marker is awaited, and why it is stuck if it is (no customer data)."""
        return {str(p): {"watermark": proc.watermark, "waiting": proc.pending(),
                         "behind": [t for t in MARKED_TOPICS if self.behind(t, p)],
                         "marker": proc.marker is not None, "stuck": self.stuck.get(p)}
                for p, proc in sorted(self.procs.items())}

    def tick(self) -> None:
        """Wall-clock watermark for quiet partitions (from a timer on the worker's loop)."""
        wall = int(time.time() * 1000)
        level = True  # every partition has read its inputs to the end the last Fetch reported
        for p, proc in list(self.procs.items()):
            before = proc.watermark
            behind = [t for t in MARKED_TOPICS if self.behind(t, p)]
            level = level and not behind
            proc.settle(lambda topic, behind=behind: topic in behind)
            self.markers(proc)
            if not behind:
                proc.tick(wall)
            if proc.watermark != before:
                self.flush(proc)
            self.watch(p, proc, behind, wall)
        if level and self.procs and not self.caught_up and self.say is not None and self.said:
            self.caught_up = True
            self.say(f"ready: caught up with the input on {len(self.procs)} partition(s); processing events as "
                     "they come")
        for p in [p for p in self.stuck if p not in self.procs]:
            self.stuck.pop(p)
        for p in [p for p in self.since if p not in self.procs]:
            self.since.pop(p)
        if self.rulesync.due():
            self.rulesync.check()   # forgets workers not heard from lately
            self.announce_rules()
        if time.monotonic() >= self.next_checkpoint:
            self.checkpoint()

    def watch(self, p: int, proc, behind: list, wall: int) -> None:
        """A partition is *stuck* when, for ``stuck_after``, its event time has not moved while it
        has records not yet read, or a watermark marker has waited unreached since it was read.
        ``/ready`` then answers 503 naming it, ``journey_partition_stuck`` is 1, and the log says
        why once; it clears as soon as neither holds."""
        wm = proc.watermark
        why = None
        was = self.since.get(p)
        if not behind:
            self.since.pop(p, None)
        elif was is None or was[1] != wm:
            self.since[p] = (wall, wm)
        elif wall - was[0] >= self.stuck_ms:
            why = f"event time has not moved for {(wall - was[0]) // 1000} s with records not yet read on " + \
                ", ".join(behind)
        marker = proc.marker
        if why is None and marker is not None and wall - marker[3] >= self.stuck_ms:
            why = f"a watermark marker read {(wall - marker[3]) // 1000} s ago is not reached (its records not read)"
        if why is None:
            if self.stuck.pop(p, None) is not None:
                log.warning("partition %d: no longer stuck", p)
            return
        if p not in self.stuck:
            self.stalls += 1
            log.warning("partition %d: stuck: %s", p, why)
        self.stuck[p] = why
