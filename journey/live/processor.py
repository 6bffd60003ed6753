"""One partition's share of the live worker: the same engine and timeline as
replay, for the customers whose events are read from that partition.

No Kafka here. The worker hands records in with ``offer``; the processor
collects what must leave: records to produce (``outbox``), customer states
to persist (``take_dirty``) and the tokens of records whose events have been
applied (``timeline.released``), which the worker acknowledges only after
the state and output they caused were handed to the producer. A record
waiting in the reorder buffer is never acknowledged, so a crash redelivers
it.

The watermark of a partition is the latest event time seen on it less the
allowed lateness, but never past what an input still behind can deliver: the
partition's records come from four topics (three sources and
``journey.internal``) that Kafka hands over at different paces, so while an
input has unread records (its offset is below the high watermark), the
watermark stays at or below that input's latest event time less the
lateness (as Flink aligns watermarks, and Kafka Streams waits on lagging
inputs). An input with nothing unread does not hold the others back. When
the partition has been quiet for ``idle_ms`` of wall time, the watermark
moves on with the wall clock (event time is assumed to pass as fast as wall
time), so a timer fires without further traffic.
"""

from __future__ import annotations

import logging
from collections import deque

import orjson

from ..core.engine import Engine
from ..core.privacy import erasure_hash
from ..core.state import CustomerState
from ..core.timeline import Timeline
from ..io import topics

log = logging.getLogger("journey.worker")

# the worker's own table keys: no customer id can take them (intake rejects ids with control characters)
WATERMARK_KEY = "\x00watermark:"
# an erased key's digest (domain.md section 9): "\x00erased:<partition>:<sha-256 hex>", no id in it
ERASED_KEY = "\x00erased:"
MARKED_TOPICS = (*topics.SOURCES, topics.INTERNAL)


def watermark_key(partition: int) -> str:
    """The table key holding a partition's watermark (it lives on that partition)."""
    return f"{WATERMARK_KEY}{partition}"


def erased_key(partition: int, digest: str) -> str:
    """The table key that keeps an erasure on the partition of the key erased."""
    return f"{ERASED_KEY}{partition}:{digest}"


def reserved_partition(key: str) -> int | None:
    """The partition a worker's own table key lives on (None: a customer's key)."""
    if key.startswith(WATERMARK_KEY):
        return int(key[len(WATERMARK_KEY):])
    if key.startswith(ERASED_KEY):
        return int(key[len(ERASED_KEY):].split(":", 1)[0])
    return None


class Outbox:
    """The engine's sink on the live path: records to produce, in order."""

    wants_transitions = False

    def __init__(self):
        self.records: list[tuple[str, str, bytes]] = []

    def trigger(self, rec: dict) -> None:
        self.records.append((topics.TRIGGERS, rec["subject"], orjson.dumps(rec)))

    def audit(self, rec: dict) -> None:
        self.records.append((topics.AUDIT, rec["customer_id"], orjson.dumps(rec)))

    def outcome(self, rec: dict) -> None:
        self.records.append((topics.OUTCOMES, rec["customer_id"], orjson.dumps(rec)))

    def transition(self, rec: dict) -> None:  # pragma: no cover - wants_transitions is False
        pass


class PartitionProcessor:
    def __init__(self, config, partition: int, lateness_ms: int, idle_ms: int, partition_of=None):
        self.partition = partition
        self.idle_ms = idle_ms
        self.outbox = Outbox()
        self.engine = Engine(config, self.outbox)
        self.engine.dirty = set()
        self.engine.erased_new = []             # digests to persist at the next checkpoint
        self.erasures = 0                       # erasures checkpointed since the store was last compacted
        if partition_of is not None:
            # keys of other partitions: a visitor and its customer may live apart (see handoff)
            self.engine.owns = lambda key: partition_of(key) == partition
            self.engine.handoffs = []
        self.timeline = Timeline(self.engine, lateness_ms)
        self.last_arrival: int | None = None   # wall ms of the last record
        self.wm_saved: int | None = None
        self.anchor = None                      # the worker's handle for this partition
        # watermark markers waiting, in the order read: (until, ends, token, final, wall ms read at)
        self.marks: deque = deque()
        # a publication in progress (``journey produce`` holds event time to its markers): the
        # token of its hold record, or True; None when event time follows the events
        self.hold = None
        self.bad_states = 0                     # changelog records that could not be loaded (skipped)
        self.state_errors = 0                   # states that could not be written (kept in memory)
        self.applied: list = []                 # tokens applied, waiting for the next checkpoint
        self.latest: dict[str, int] = {}        # latest event time read, by topic
        self.quiet_base: int | None = None      # the watermark when the partition last settled

    # -- state ---------------------------------------------------------------------
    def load(self, items) -> None:
        """Load persisted state: ``(key, bytes)`` pairs of this partition (the
        watermark and erasure keys included), then rebuild the timers from it."""
        engine = self.engine
        states = engine.states
        for key, raw in items:
            try:
                if key.startswith(WATERMARK_KEY):
                    wm = int(raw)
                    self.timeline.watermark = self.wm_saved = wm
                    self.timeline.max_ts = wm + self.timeline.lateness
                    continue
                if key.startswith(ERASED_KEY):
                    digest = key[len(ERASED_KEY):].split(":", 1)[1]
                    if len(digest) != 64:
                        raise ValueError("not a digest")
                    engine.erased.add(digest)
                    continue
                st = CustomerState.from_bytes(raw)
                if st.erased is not None:
                    # an erasure marker of an older version, under the id: the digest replaces it
                    # (the marker gets a tombstone at the next checkpoint)
                    engine.mark_erased(key)
                    engine.dirty.add(key)
                    continue
                fwd, anons = st.fwd, list(st.anons)
                if (fwd is not None and type(fwd) is not str) or not all(type(a) is str for a in anons):
                    raise ValueError("bad aliases")
            except Exception:  # a record that cannot be read never stops a partition from loading
                self.bad_states += 1
                log.warning("partition %d: skipped a changelog record that cannot be read (%d so far)",
                            self.partition, self.bad_states)
                continue
            states[key] = st
            if fwd is not None:  # a visitor handed off to a customer elsewhere
                self.engine.aliases[key[len("anon:"):]] = fwd
            for anon in anons:
                self.engine.aliases[anon] = key
        self.engine.rebuild_timers()

    def take_dirty(self) -> list[tuple[str, bytes | None]]:
        """States changed since the last call, as ``(key, bytes or None for deleted)``;
        the watermark too when it moved."""
        dirty = self.engine.dirty
        states = self.engine.states
        out = []
        for key in dirty:
            st = states.get(key)
            try:
                out.append((key, st.to_bytes() if st is not None else None))
            except Exception:  # never expected (intake bounds every value); never fatal
                self.state_errors += 1
                log.error("partition %d: a customer state could not be written (%d so far); it stays in "
                          "memory and is written at its next change", self.partition, self.state_errors)
        dirty.clear()
        new = self.engine.erased_new
        if new:
            out += [(erased_key(self.partition, h), b"1") for h in new]
            self.erasures += len(new)
            new.clear()
        wm = self.timeline.watermark
        if wm is not None and wm != self.wm_saved:
            self.wm_saved = wm
            out.append((watermark_key(self.partition), str(wm).encode()))
        return out

    # -- a visitor and its customer on different partitions ---------------------------
    def handoff(self, kind: str, body: dict, token, key: bytes | None = None) -> None:
        """A hand-off record read from ``journey.internal``:

        * ``link`` (on the visitor's partition): the visitor ``anon`` is customer ``cid``;
          its state is sent on to the customer's partition as an ``absorb``, and later
          events of the visitor are forwarded there.
        * ``absorb`` (on the customer's partition): merge the visitor's state.
        * ``erase`` (on the visitor's partition, keyed by the visitor's key, the value only its
          digest): its customer was erased; its forwarding stub goes, its digest stays.

        Like an event, the record is acknowledged only after the state it changed is
        written (the next checkpoint)."""
        engine = self.engine
        if kind == "erase":
            vkey = key.decode() if key is not None else None
            if (vkey is None or not vkey.startswith("anon:") or type(body.get("h")) is not str
                    or erasure_hash(engine.salt, vkey) != body["h"]):
                raise ValueError("an erase hand-off names a visitor key and its digest")
            engine.erase_visitor(vkey)
            if token is not None:
                self.timeline.released.append(token)
            return
        anon, cid = body["anon"], body["cid"]
        if type(anon) is not str or type(cid) is not str or not anon or not cid:
            raise ValueError("a hand-off names its visitor and customer as strings")
        if kind == "link":
            old = engine.hand_off(anon, cid)
            if old is not None:
                engine.handoffs.append(("absorb", cid, anon, old.to_dict()))
        else:
            engine.absorb_visitor(cid, anon, CustomerState.checked(body["state"]))
        if token is not None:
            self.timeline.released.append(token)

    # -- time ----------------------------------------------------------------------
    def offer(self, topic: str, ev, token, wall_ms: int) -> None:
        """Take one event read from ``topic``; call ``settle`` after a batch. (The worker
        offers a fetch's events to ``timeline.offer(ev, token, False)`` itself, then
        calls ``arrived`` once with their latest time.)"""
        self.timeline.offer(ev, token, auto=False)
        self.arrived(topic, ev.ts, wall_ms)

    def arrived(self, topic: str, latest_ts: int, wall_ms: int) -> None:
        """Events up to ``latest_ts`` were read from ``topic`` at ``wall_ms``."""
        self.last_arrival = wall_ms
        self.quiet_base = None
        m = self.latest.get(topic)
        if m is None or latest_ts > m:
            self.latest[topic] = latest_ts

    def settle(self, behind) -> None:
        """Move the watermark as far as the inputs allow; ``behind(topic)`` tells whether
        that input of the partition still has unread records."""
        latest = self.latest
        tl = self.timeline
        if tl.max_ts is None or self.hold is not None:
            return  # (held: event time moves with the publication's markers)
        bound = tl.max_ts
        for topic in MARKED_TOPICS:
            if behind(topic):
                m = latest.get(topic)
                if m is None:
                    return  # an input that has not delivered yet: nothing can be ordered
                if m < bound:
                    bound = m
        before = tl.watermark
        tl.advance(bound - tl.lateness)
        if tl.watermark != before or self.quiet_base is None:
            # the watermark that events set: the wall-clock tick counts quiet time from it (it
            # must not restart from a watermark the tick itself moved, or event time would run
            # ever faster than the clock: the worker settles before every tick)
            self.quiet_base = tl.watermark

    def mark(self, until: int, ends: dict, token=None, final: bool = True, seen: int = 0) -> None:
        """A watermark marker (``journey produce --until``) read on ``journey.internal``:
        once this partition has read each source topic up to ``ends[topic]`` (the offsets
        the producer's records ended at), event time has reached ``until``. Markers are
        reached in the order they were read; a marker's token is held until it is reached
        (a restart reads it again). A ``final`` one ends the publication's hold. ``seen``:
        the wall time (ms) it was read at (the worker gives up a marker only on evidence
        fetched after that)."""
        self.marks.append((until, ends, token, final, seen))
        if self.hold is not None:
            self.last_arrival = None  # the publication is still going: its quiet time starts again

    @property
    def marker(self):
        """The marker waited for: ``(until, ends, token, seen)``, or None."""
        if not self.marks:
            return None
        until, ends, token, _final, seen = self.marks[0]
        return until, ends, token, seen

    def marker_reached(self) -> None:
        """The waiting marker's inputs are all read: move event time to its ``until``."""
        until, _ends, token, final, _seen = self.marks.popleft()
        self.timeline.advance(until)
        self.quiet_base = self.timeline.watermark
        if token is not None:
            self.timeline.released.append(token)
        if final:
            self.release_hold()

    def drop_marker(self):
        """Give up the waiting marker (it names offsets never written); returns its token."""
        _until, _ends, token, final, _seen = self.marks.popleft()
        if final:
            self.release_hold()
        return token

    def hold_on(self, token=None) -> None:
        """A publication starts (``journey produce`` writes a hold record on each partition of
        ``journey.internal`` before its first record): until its final marker is reached,
        event time moves only with its markers, never with the events read. The producer
        writes the topics in parallel, so an input can look read to its end (nothing unread
        by the high watermark last fetched) while its records of the same moment are still
        on their way; ordering by the events read would apply them late, out of order, or
        (older than the customer's newest event by more than the dedup window) drop them.
        The hold record is acknowledged only once the hold ends, so a restart or a new owner
        reads it again."""
        old = self.hold
        if old is not None and old is not True and (token is None or old[:2] != token[:2]):
            self.timeline.released.append(old)  # a newer publication's hold takes over (not the
            # same record read again after a seek back: that one stays unacknowledged)
        self.hold = token if token is not None else True
        self.last_arrival = None  # quiet time (after which a hold without its final marker ends) from now

    def release_hold(self) -> None:
        hold, self.hold = self.hold, None
        if hold is not None and hold is not True:
            self.timeline.released.append(hold)

    def tick(self, wall_ms: int) -> bool:
        """Advance a quiet partition's watermark with the wall clock; True if it moved."""
        tl = self.timeline
        if tl.max_ts is None:
            return False
        if self.last_arrival is None:
            self.last_arrival = wall_ms
        quiet = wall_ms - self.last_arrival
        if quiet < self.idle_ms:
            return False
        if self.hold is not None:
            # nothing more to read and quiet for the idle timeout: the publication's final
            # marker is not coming (its producer died); event time follows the events again
            log.warning("partition %d: a publication's hold ended without its final marker (quiet for "
                        "%d ms)", self.partition, quiet)
            self.release_hold()
        before = tl.watermark
        base = self.quiet_base if self.quiet_base is not None else tl.max_ts - tl.lateness
        tl.advance(base + quiet)
        return tl.watermark != before

    @property
    def watermark(self) -> int | None:
        return self.timeline.watermark

    def pending(self) -> int:
        """Events waiting in the reorder buffer."""
        return len(self.timeline.buffer)
