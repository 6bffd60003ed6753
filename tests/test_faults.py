"""Faults, as a platform engineer would inject them before trusting the worker: kill -9
at random moments on both stores, and a killed worker of two. Every trigger id replay
writes must come, none other, and the customer states in the changelog must equal
replay's.

The kill moments are random; the seed is printed in every failure (and can be fixed
with JOURNEY_FAULT_SEED=N). Run them many times: JOURNEY_FAULT_RUNS=20 repeats each."""

from __future__ import annotations

import os
import random
import time

import pytest
from conftest import T
from live_support import UNTIL, Worker, _same_as_replay, produce_log, ready, replayed, synthetic, wait_for

RUNS = int(os.environ.get("JOURNEY_FAULT_RUNS", "1"))


def _seed() -> int:
    return int(os.environ.get("JOURNEY_FAULT_SEED") or random.SystemRandom().randrange(1 << 30))


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_kill9_at_random_moments_loses_and_invents_nothing(broker, tmp_path, store, run):
    seed = _seed()
    rnd = random.Random(seed)
    log = synthetic(tmp_path, customers=1500, events=40000, seed=rnd.randrange(1000))
    keep = []
    want_t, _a, _d = replayed(tmp_path, log, keep=keep)
    produce_log(broker, log, until=T(UNTIL))
    kw = {"store": store, "data_dir": str(tmp_path / "data")} if store != "memory://" else {}
    for k in range(2):  # killed twice mid-stream, at a random moment each time
        w = Worker(broker, tmp_path, name=f"killed{k}", **kw)
        w.wait_ready(90)
        time.sleep(rnd.uniform(0.0, 2.5))
        w.kill9()
    w = Worker(broker, tmp_path, name="last", **kw)
    try:
        w.wait_ready(90)
        _same_as_replay(broker, want_t, keep[0], seed)
    finally:
        w.stop()


# Issue 14 (about 1 run in 20 diverged, on partitions kept and taken over alike): not the
# takeover but the publication racing the workers. produce_log runs while both read, and the
# topics are written in parallel: a worker could find purchases read to its end (high watermark
# 0) with the whole clickstream of its partition in, move event time on, and then apply the
# orders late or drop them as redeliveries. journey produce now holds event time to its markers.
@pytest.mark.parametrize("run", range(RUNS))
def test_a_killed_worker_of_two_is_taken_over_without_divergence(broker, tmp_path, run):
    seed = _seed()
    rnd = random.Random(seed)
    log = synthetic(tmp_path, customers=1500, events=30000, seed=rnd.randrange(1000))
    keep = []
    want_t, _a, _d = replayed(tmp_path, log, keep=keep)
    a, b = Worker(broker, tmp_path, name="a"), Worker(broker, tmp_path, name="b")
    try:
        a.wait_ready(90)
        b.wait_ready(90)
        wait_for(lambda: all(0 < len((ready(x.port) or {}).get("partitions", [])) < 6 for x in (a, b)), 90,
                 "the partitions to be split")
        produce_log(broker, log, until=T(UNTIL))
        time.sleep(rnd.uniform(0.0, 3.0))
        victim = rnd.choice([a, b])
        print(f"seed {seed}: killing {victim.log.name}")
        victim.kill9()
        _same_as_replay(broker, want_t, keep[0], seed, timeout=180, tmp_path=tmp_path)
    finally:
        a.stop()
        b.stop()
