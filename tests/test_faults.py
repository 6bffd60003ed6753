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
from live_support import Worker, produce_log, read_topic, ready, trigger_ids, wait_for
from test_live import UNTIL, _changelog_states, _comparable, _debug_state_diff, replayed, synthetic

RUNS = int(os.environ.get("JOURNEY_FAULT_RUNS", "1"))


def _seed() -> int:
    return int(os.environ.get("JOURNEY_FAULT_SEED") or random.SystemRandom().randrange(1 << 30))


def _dump_divergence(broker, tmp_path, want_t, engine, seed) -> str:
    """On a divergence: every missing and extra trigger, with its customer, rule, time and
    partition, and the changelog state of each customer concerned next to replay's, written
    to ``divergence.json`` beside the workers' logs (the file named in the failure)."""
    import orjson

    from journey.io import topics
    from journey.io.kafka import Partitioner

    part = Partitioner(6)
    want = {t["id"]: t for t in want_t}
    got = {}
    for _k, v, p, off, _h in read_topic(broker, topics.TRIGGERS):
        t = orjson.loads(v)
        got.setdefault(t["id"], (t, p, off))
    row = lambda t: {"id": t["id"], "subject": t["subject"], "rule": t["data"]["rule"], "time": t["time"],
                     "partition": part(t["subject"]), "reason": t["data"].get("reason")}
    missing = [row(t) for i, t in want.items() if i not in got]
    extra = [{**row(t), "offset": off} for i, (t, _p, off) in got.items() if i not in want]
    who = {r["subject"] for r in missing + extra}
    states = _changelog_states(broker)
    out = {"seed": seed, "missing": missing, "extra": extra,
           "states": {k: {"live": orjson.loads(_comparable(states[k])) if k in states else None,
                          "replay": orjson.loads(_comparable(engine.states[k])) if k in engine.states else None}
                      for k in sorted(who)[:40]}}
    path = tmp_path / "divergence.json"
    path.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    return str(path)


def _same_as_replay(broker, want_t, engine, seed, timeout=150, tmp_path=None):
    want = {t["id"] for t in want_t}
    try:
        wait_for(lambda: set(trigger_ids(broker, idle_ms=200)) >= want, timeout, f"every trigger (seed {seed})")
    except AssertionError as e:
        got = set(trigger_ids(broker))
        lost = [t for t in want_t if t["id"] not in got]
        where = _dump_divergence(broker, tmp_path, want_t, engine, seed) if tmp_path is not None else ""
        raise AssertionError(f"{e}: {len(lost)} of {len(want)} missing, {len(got - want)} extra; first missing: "
                             f"{[(t['subject'], t['data']['rule'], t['time']) for t in lost[:5]]} {where}") from None
    time.sleep(1.5)
    got = trigger_ids(broker)
    missing, extra = want - set(got), set(got) - want
    if (missing or extra) and tmp_path is not None:
        _dump_divergence(broker, tmp_path, want_t, engine, seed)
    assert not missing and not extra, f"seed {seed}: {len(missing)} trigger(s) lost, {len(extra)} invented"
    expected = {k: _comparable(s) for k, s in engine.states.items()}

    def states_equal():
        states = _changelog_states(broker)
        return set(states) == set(expected) and all(_comparable(s) == expected[k] for k, s in states.items())
    try:
        wait_for(states_equal, 30, "the changelog to settle", every=1.0)
    except AssertionError:
        states = _changelog_states(broker)
        diffs = {k: _debug_state_diff(_comparable(s), expected.get(k, b"{}")) for k, s in states.items()
                 if _comparable(s) != expected.get(k)}
        raise AssertionError(f"seed {seed}: {len(diffs)} state(s) differ from replay, "
                             f"{len(set(expected) - set(states))} missing: {list(diffs.items())[:3]}") from None


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
