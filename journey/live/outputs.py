"""Output and checkpoints of the runtime: every record the worker writes
(triggers, audit, dead letters, re-keyed events, hand-offs, the changelog) is
appended to one producer batch per topic partition and sent after each step;
state is written once per customer per checkpoint, and the records applied
before it are acknowledged only once the output they caused is with the
producer."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import weakref
from bisect import bisect_left
from collections import deque

import orjson
from faust.streams import _current_event
from faust.types import TP

from ..io import topics
from .processor import PartitionProcessor

log = logging.getLogger("journey.worker")

# journey-origin: live marks triggers a live worker wrote; journey dispatch delivers only those by default
CLOUDEVENTS_JSON = [("content-type", b"application/cloudevents+json"), ("journey-origin", b"live")]
JSON = [("content-type", b"application/json")]
NO_HEADERS: list = []
CONTROL_HEADER = "journey-control"
LINK_HEADERS = [(CONTROL_HEADER, b"link")]
ABSORB_HEADERS = [(CONTROL_HEADER, b"absorb")]
ERASE_HEADERS = [(CONTROL_HEADER, b"erase")]
HANDOFFS = (b"link", b"absorb", b"erase")


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
            elif kind == "erase":  # the value holds the digest only (a dead letter of it keeps no id)
                _k, vkey, digest = h
                self._emit(topics.INTERNAL, part(vkey), vkey.encode(), orjson.dumps({"h": digest}), ERASE_HEADERS)
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
        """Hand the batched output to the producer, and queue the checkpoints taken since the
        last call behind it (``_commit``). Calls are serialized: the drain loop and the idle
        timer both send."""
        async with self.send_lock:
            if self.building:
                self.sealed.extend((t, p, b) for (t, p), b in self.building.items())
                self.building.clear()
            if self.sealed:
                producer = self.app.producer._ensure_producer()
                sealed, self.sealed = self.sealed, []
                inflight = self.inflight
                for topic, partition, b in sealed:
                    inflight.append(await producer.send_batch(b, topic, partition=partition))
            while self.pending:
                writes, acks, epochs, compact = self.pending.popleft()
                # every output sent so far (this checkpoint's records caused some of it) must be
                # delivered before the state that follows from them is written anywhere
                deps = [f for f in self.inflight if not f.done() or f.cancelled() or f.exception() is not None]
                self.inflight = [f for f in deps if not f.done()]
                self.commits.put_nowait((writes, acks, deps, epochs, compact))
            if self.committer is None or self.committer.done():
                self.committer = asyncio.ensure_future(self._committer())

    def checkpoint(self) -> None:
        """Take every customer state changed since the last checkpoint (one write per
        customer, whatever number of events changed it) and the records applied before it;
        ``send_outputs`` queues it behind the output sent so far, and ``_commit`` makes it
        durable in order: first the outputs are delivered (acknowledged by the broker), then
        the states go to the changelog, then, once that is delivered too, to the table's
        local store (RocksDB), and only then are the records acknowledged (Faust commits
        acknowledged offsets). So a state that knows an event, on either store, always comes
        with every trigger and record that event caused, and a kill -9 at any moment loses
        none: what was not durable is read and applied again.

        The changelog records are written here rather than by ``table[key] = value``:
        Faust's producer buffer gives up flushing after 0.1 s without progress (a busy
        loop), so a commit could pass state still waiting in it."""
        self.next_checkpoint = time.monotonic() + self.checkpoint_s
        writes: dict[int, list] = {}
        compact: dict[int, list] = {}     # partition -> keys deleted by an erasure (the store is compacted)
        acks, self.acks = self.acks, []   # records whose only effect is output (dead letters, re-keyed)
        for proc in self.procs.values():
            dirty = proc.take_dirty()
            if dirty:
                writes[proc.partition] = [(key.encode(), value) for key, value in dirty]
            if proc.erasures:  # an erasure: once written, the store's files must lose the id's bytes
                compact[proc.partition] = [k for k, v in writes.get(proc.partition, ()) if v is None]
                proc.erasures = 0
                self.counts["state_writes"] += len(dirty)
            if proc.applied:
                acks.extend(proc.applied)
                proc.applied.clear()
        if writes or acks:
            # with the assignment epoch of each partition: a checkpoint of a partition revoked
            # (and perhaps assigned back) since is dropped whole, never written late
            self.pending.append((writes, acks, dict(self.epochs), compact))
        self.counts["late"] = sum(p.timeline.late for p in self.procs.values())
        # what lives past a checkpoint is mostly customer state: keep it out of the collector's
        # full passes, whose pause grows with the number of customers held (see tune_gc)
        gc.freeze()

    async def _committer(self) -> None:
        """Make queued checkpoints durable, one at a time, in the order they were taken."""
        while True:
            writes, acks, deps, epochs, compact = await self.commits.get()
            try:
                await self._commit(writes, acks, deps, epochs, compact)
            except Exception as e:  # an output the broker would not take: nothing after it is safe
                log.critical("output could not be delivered (%s: %s); stopping, so that a restart reads "
                             "the records again from the last committed offset", type(e).__name__, e)
                self.failed = e
                await self.app.crash(e)
                return

    async def _commit(self, writes: dict, acks: list, deps: list, epochs: dict, compact=()) -> None:
        if deps:
            await asyncio.gather(*deps)
        current = self.epochs
        writes = {p: w for p, w in writes.items() if p in self.procs and current.get(p) == epochs.get(p)}
        acks = [t for t in acks if t[0].partition in self.procs
                and current.get(t[0].partition) == epochs.get(t[0].partition)]
        producer = self.app.producer._ensure_producer()
        sent = []
        for p, items in writes.items():
            if p not in self.procs:
                continue  # revoked meanwhile: its new owner reads those records again
            b = producer.create_batch()
            n = 0
            for k, v in items:
                if b.append(timestamp=None, key=k, value=v, headers=NO_HEADERS) is None:
                    sent.append((p, n, await producer.send_batch(b, self.changelog, partition=p)))
                    b, n = producer.create_batch(), 0
                    if b.append(timestamp=None, key=k, value=v, headers=NO_HEADERS) is None:
                        raise ValueError(f"a state of {len(v)} bytes does not fit in a producer batch")
                n += 1
            if n:
                sent.append((p, n, await producer.send_batch(b, self.changelog, partition=p)))
        if sent:
            await asyncio.gather(*(f for _p, _n, f in sent))
        data = self.table.data
        for p, items in writes.items():
            proc = self.procs.get(p)
            if proc is None or self.epochs.get(p) != epochs.get(p):
                continue
            token = _current_event.set(weakref.ref(proc.anchor))
            try:
                for k, v in items:
                    if v is None:
                        data.pop(k, None)
                    else:
                        data[k] = v
            finally:
                _current_event.reset(token)
        for p, n, fut in sent:
            if p in self.procs and self.epochs.get(p) == epochs.get(p):  # how far the changelog the store
                # mirrors was written (RocksDB keeps it)
                data.set_persisted_offset(TP(self.changelog, p), fut.result().offset + n - 1)
        for p, keys in sorted(compact.items()):
            if keys and p in self.procs and self.epochs.get(p) == epochs.get(p):
                await self._compact(p, keys)
        self._ack([t for t in acks if self.epochs.get(t[0].partition) == epochs.get(t[0].partition)])

    async def _compact(self, partition: int, keys: list) -> None:
        """After an erasure is written: flush the partition's RocksDB database and compact the
        ranges of the keys deleted, so their values (and the keys) leave its write-ahead log and
        table files, then reopen it, so that a new MANIFEST (which names keys as file bounds)
        replaces the old (domain.md section 9). The memory store keeps nothing on disk."""
        store = self.table.data
        dbs = getattr(store, "_dbs", None)
        if not isinstance(dbs, dict) or partition not in dbs:
            return
        db = dbs[partition]
        try:
            await asyncio.to_thread(_flush_and_compact, db, keys)
            if dbs.get(partition) is db:  # (not closed by a revocation meanwhile)
                db.close()
                dbs[partition] = store._open_for_partition(partition)
        except Exception as e:  # never fatal: the next erasure compacts again
            log.error("partition %d: the state store could not be compacted after an erasure (%s)", partition,
                      type(e).__name__)

    def drop(self, partitions: set[int]) -> None:
        """Revoked partitions: their unsent state writes and acknowledgements are dropped (the
        new owner reads the records again); a stale write of ours must never land after its."""
        if not partitions:
            return
        for p in partitions:
            self.epochs[p] = self.epochs.get(p, 0) + 1
        self.building = {(t, p): b for (t, p), b in self.building.items()
                         if not (t == self.changelog and p in partitions)}
        self.acks = [t for t in self.acks if t[0].partition not in partitions]
        self.pending = deque((({p: w for p, w in writes.items() if p not in partitions},
                               [t for t in acks if t[0].partition not in partitions], epochs,
                               {p: k for p, k in compact.items() if p not in partitions})
                              for writes, acks, epochs, compact in self.pending))

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


def _flush_and_compact(db, keys: list) -> None:
    """Memtables to table files (the write-ahead log that held the values becomes obsolete and
    is deleted), then a compaction of each key's range down to the last level, rewriting the
    files there too (so the deleted values and the deletion markers, which hold the key, go)."""
    import rocksdict

    db.flush(True)
    db.flush_wal(True)
    opt = rocksdict.CompactOptions()
    opt.set_bottommost_level_compaction(rocksdict.BottommostLevelCompaction.force())
    for k in sorted(set(keys)):
        db.compact_range(k, k, opt)
