"""Output and checkpoints of the runtime: every record the worker writes
(triggers, audit, dead letters, re-keyed events, hand-offs, the changelog) is
appended to one producer batch per topic partition and sent after each step;
state is written once per customer per checkpoint, and the records applied
before it are acknowledged only once the output they caused is with the
producer."""

from __future__ import annotations

import gc
import time
import weakref
from bisect import bisect_left

import orjson
from faust.streams import _current_event
from faust.types import TP

from ..io import topics
from .processor import PartitionProcessor

# journey-origin: live marks triggers a live worker wrote; journey dispatch delivers only those by default
CLOUDEVENTS_JSON = [("content-type", b"application/cloudevents+json"), ("journey-origin", b"live")]
JSON = [("content-type", b"application/json")]
NO_HEADERS: list = []
CONTROL_HEADER = "journey-control"
LINK_HEADERS = [(CONTROL_HEADER, b"link")]
ABSORB_HEADERS = [(CONTROL_HEADER, b"absorb")]
HANDOFFS = (b"link", b"absorb")


class Outputs:
    """The output half of :class:`journey.live.runtime.Runtime` (which sets up
    ``acks``, ``building``, ``sealed``, ``send_lock``, ``changelog``, ``procs``,
    ``table`` and ``app``)."""

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
