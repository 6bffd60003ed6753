"""The ``customers`` Faust table, and the check after Faust's changelog recovery
that reads any tail it missed (brokers whose ListOffsets answer is stale,
such as Tansu 0.6) up to the high watermark that Fetch reports."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import faust
from faust.types import TP

from ..io.kafka import bootstrap
from .processor import MARKED_TOPICS, reserved_partition

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("journey.worker")


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

    runtime: Runtime

    def partition_for_key(self, key) -> int:
        if isinstance(key, bytes):
            key = key.decode()
        p = reserved_partition(key) if key.startswith("\x00") else None
        return p if p is not None else self.runtime.partition(key)

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
                                    **self.runtime.conn.client_options(),
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
