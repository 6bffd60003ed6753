"""The live worker's own cost per event, without Kafka.

    python benchmarks/handle_bench.py [--customers N] [--events N] [--runs N]

Feeds a generated log to the worker's ``Runtime.handle`` in fetch-sized batches
(parse, re-key check, reorder buffer, rules, contact policy, output batching and
the state checkpoint, exactly the code the live worker runs), with the consumer,
producer and table replaced by stand-ins that do nothing. The rate it prints is
the ceiling of one worker process on this machine; the gap to
``live_bench.py``'s figure is the Kafka client (aiokafka decodes records in
Faust's consumer thread, under the same interpreter lock) and the broker.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka.producer.message_accumulator import BatchBuilder  # noqa: E402
from aiokafka.structs import ConsumerRecord  # noqa: E402
from faust.types import TP  # noqa: E402

from journey.core import intake
from journey.core.config import Config  # noqa: E402
from journey.history.synth import write_log  # noqa: E402
from journey.io import topics  # noqa: E402
from journey.io.kafka import Partitioner  # noqa: E402
from journey.live.gcpolicy import tune_gc  # noqa: E402
from journey.live.runtime import Runtime  # noqa: E402
from journey.live.settings import Settings  # noqa: E402

BATCH = 4000


class _Consumer:
    def __init__(self, ends):
        self.ends = ends

    def highwater(self, tp):
        return self.ends.get(tp, 0)

    def ack_offsets(self, tp, offsets):
        return len(offsets)


class _Producer:
    def _ensure_producer(self):
        return self

    def create_batch(self):
        return BatchBuilder(1 << 20, 0, is_transactional=False)


def records(path: str) -> tuple[dict, dict]:
    """The log as the worker would read it: per source topic partition, in order."""
    part = Partitioner(topics.PARTITIONS)
    by_tp: dict = {}
    for line in Path(path).read_bytes().splitlines():
        ev = intake.parse(line)
        tp = TP(topics.topic_for(ev.type), part(ev.key))
        recs = by_tp.setdefault(tp, [])
        recs.append(ConsumerRecord(tp.topic, tp.partition, len(recs), ev.ts, 0, ev.key.encode(), line, None, 0,
                                   len(line), []))
    return by_tp, {tp: len(r) for tp, r in by_tp.items()}


def run(by_tp: dict, ends: dict) -> tuple[int, float]:
    from journey.live.processor import PartitionProcessor
    from journey.live.table import _Anchor

    rt = Runtime(Settings(), Config())
    rt.app = SimpleNamespace(consumer=_Consumer(ends), producer=_Producer())
    rt.table = SimpleNamespace(data={})
    for p in range(topics.PARTITIONS):
        proc = PartitionProcessor(rt.config, p, rt.lateness, rt.idle, partition_of=rt.partition)
        proc.anchor = _Anchor(p, "changelog")
        rt.procs[p] = proc
        for t in (*topics.SOURCES, topics.INTERNAL):
            rt.start_pos[TP(t, p)] = 0
    pos = {tp: 0 for tp in by_tp}
    n = 0
    t0 = time.perf_counter()
    while pos:
        batch, room = {}, BATCH
        for tp in list(pos):  # a fetch: up to 700 records of each partition, 4000 in all
            i = pos[tp]
            take = by_tp[tp][i:i + min(room, 700)]
            if take:
                batch[tp] = take
                room -= len(take)
                pos[tp] = i + len(take)
                n += len(take)
            if pos[tp] >= len(by_tp[tp]):
                del pos[tp]
            if room <= 0:
                break
        rt.handle(batch)
        rt.sealed.clear()
        rt.building.clear()
        rt._ack(rt.acks)
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=20000)
    ap.add_argument("--events", type=int, default=200000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        log = str(Path(d) / "log.jsonl")
        write_log(log, a.customers, a.events, seed=7, noise=False)
        by_tp, ends = records(log)
    tune_gc(Settings().gc_gen0)  # as the worker runs
    print(f"Runtime.handle without Kafka, {a.events:,} events, {a.customers:,} customers:")
    for _ in range(a.runs):
        n, dt = run(by_tp, ends)
        print(f"  {n / dt:>10,.0f} events/s  ({dt / n * 1e6:.1f} us per event)", flush=True)


if __name__ == "__main__":
    main()
