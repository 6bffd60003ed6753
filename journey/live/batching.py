"""A batched hand-off inside Faust: the consumer gives each fetched batch to the
worker whole, instead of one message at a time through the conductor, the
topic queue and stream iteration.

Faust's own path costs, per message, two tasks (``wait_first`` on the callback
and the suspend flag), a ``ConsumerMessage``, an ``Event``, a queue put and a
stream step: that is the 5-9k messages/s ceiling of a Faust agent that does
nothing. Everything else stays Faust's: the consumer group and its rebalances,
flow control, the table, its changelog and recovery, offset commits (of the
acknowledged prefix, after the producer is flushed), the web server and the
timers. Only ``_drain_messages`` is replaced; it keeps the original's rules:
no records while flow is stopped (seek back to the committed offsets
instead), only partitions that are active, gaps in the offsets recorded, and
a commit after ``broker_commit_every`` acknowledgements. One difference: the
next fetch is asked of the consumer thread before a batch is processed, so
reading and computing overlap. (aiokafka itself discards a fetch answer
whose partition was seeked meanwhile, as Faust does on assignment; dropping
records here on a generation change would lose the first records read after
an assignment.) Records of other
topics (the table's changelog, read by Faust's recovery) take Faust's own
per-message path.

Records are acknowledged in bulk by offset (``ack_offsets``), into the same
bookkeeping ``Consumer.ack`` keeps, so commits work unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.futures import notify


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, handing whole fetches to the app's ``batch_handler``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._first_read: dict = {}   # tp -> first offset read since the assignment

    def ack_offsets(self, tp, offsets) -> int:
        """Acknowledge records of ``tp`` by offset; returns how many were new."""
        committed = self._committed_offset[tp]
        index = self._acked_index[tp]
        new = [o for o in offsets if o not in index and (committed is None or o >= committed)]
        if new:
            index.update(new)
            self._acked[tp].extend(new)
            self._n_acked += len(new)
            notify(self._waiting_for_ack)
        return len(new)

    def _new_offset(self, tp):
        """The offset to commit for ``tp``: the end of the unbroken run of acknowledged
        offsets that starts exactly at the committed offset (or, with nothing committed
        yet, at the first offset read since the assignment). Faust's own version also
        accepts a run starting one past the committed offset, which would commit over a
        record still waiting unacknowledged (journey acknowledges out of order: a record
        in the reorder buffer waits while later ones are done)."""
        acked = self._acked[tp]
        if not acked:
            return None
        gaps = self._gap[tp]
        if gaps:  # offsets without a record count as acknowledged
            top = max(acked)
            for iv in sorted(gaps.overlap(0, top + 1), key=lambda iv: iv.begin):
                acked.extend(range(iv.begin, iv.end))
            gaps.chop(0, top + 1)
        acked.sort()
        start = self._committed_offset[tp]
        if start is None:
            start = self._first_read.get(tp)
        if start is None or acked[0] > start:
            return None
        end = start
        i = 0
        n = len(acked)
        while i < n and acked[i] <= end:
            if acked[i] == end:
                end += 1
            i += 1
        done = acked[:i]
        del acked[:i]
        self._acked_index[tp].difference_update(done)
        return end if end > start else None

    def _set_fetch_wait(self, ms: int | None) -> None:
        """How long a Fetch may wait on the broker for new records. Faust fixes it at 1.5 s;
        a broker that holds the fetch that long when records trickle in adds it to every
        trigger's latency, so the worker asks for less (an idle worker sends a few more
        fetch requests)."""
        aio = getattr(getattr(self, "_thread", None), "_consumer", None)
        fetcher = getattr(aio, "_fetcher", None)
        if ms is not None and fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
            fetcher._fetch_max_wait_ms = ms

    async def on_partitions_revoked(self, revoked) -> None:
        for tp in revoked:
            self._first_read.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def _drain_messages(self, fetcher) -> None:  # pragma: no cover - exercised by the live tests
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        commit_every = self._commit_every
        app = self.app
        handler = app.batch_handler
        after_batch = app.after_batch
        batch_topics = app.batch_topics
        callback = self.callback
        to_message = self._to_message
        fetch = None
        first_read = self._first_read
        self._set_fetch_wait(app.fetch_wait_ms)
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if fetch is None:
                    fetch = asyncio.ensure_future(self._wait_next_records(1.0))
                records, _active = await fetch
                fetch = None
                await self.sleep(0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:
                    await self.perform_seek()
                    continue
                await app.flow_control.acquire()
                # active now, not when the fetch was asked for: a partition paused meanwhile (a
                # changelog whose recovery ended, an input at a rebalance) is read again from
                # its position when resumed; delivering it now could apply old changelog
                # records over newer ones
                active = None if app.client_only else self._get_active_partitions()
                batch = {}
                for tp, recs in records.items():
                    if not recs or not (active is None or tp in active or tp in self._buffered_partitions):
                        continue
                    if tp.topic not in batch_topics:
                        # anything else (table changelogs during recovery) takes Faust's own path
                        for r in recs:
                            if not self.flow_active:
                                break
                            await self.wait_first(callback(to_message(tp, r)), self.suspend_flow.wait())
                            read_offset[tp] = r.offset
                        continue
                    last = read_offset[tp]
                    if last is not None and recs[0].offset < last:
                        recs = [r for r in recs if r.offset >= last]
                        if not recs:
                            continue
                    prev = last
                    if recs[-1].offset - recs[0].offset + 1 != len(recs) or (
                            prev is not None and recs[0].offset > prev + 1):
                        for r in recs:  # offsets with no record (compaction, transaction markers)
                            if prev is not None and r.offset > prev + 1:
                                await self._add_gap(tp, prev + 1, r.offset - 1)
                            prev = r.offset
                    batch[tp] = recs
                    if tp not in first_read:
                        first_read[tp] = recs[0].offset
                if batch and self.flow_active:
                    # the next fetch goes to the consumer thread first, so it reads while we compute
                    fetch = asyncio.ensure_future(self._wait_next_records(1.0))
                    await asyncio.sleep(0)
                    handler(batch)
                    for tp, recs in batch.items():
                        read_offset[tp] = recs[-1].offset
                if after_batch is not None:
                    await after_batch()
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            if fetch is not None:
                fetch.cancel()


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


class BatchApp(faust.App):
    """A Faust app whose consumer hands over whole batches (see the module doc)."""

    #: ``handler({tp: [aiokafka ConsumerRecord, ...]})``, synchronous
    batch_handler: Callable | None = None
    #: the topics whose records go to ``batch_handler``; others go through Faust's conductor
    batch_topics: frozenset = frozenset()
    #: awaited after each batch (lets the worker wait for the producer to drain)
    after_batch: Callable | None = None
    #: the longest a Fetch waits on the broker for records (ms); None keeps Faust's 1500
    fetch_wait_ms: int | None = None

    def _new_transport(self):
        return BatchTransport(self.conf.broker_consumer, self)
