"""``journey bench``: replay throughput against the bare JSON parse of the same
file, and bytes of state per customer, on a generated population or on a log
of the user's (``--log``).

Figures are measured in one run, so their ratio is meaningful even on a
noisy machine; absolute numbers are not.
"""

from __future__ import annotations

import gc
import gzip
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import orjson

from .. import core_mode, examples
from .replay import replay
from .synth import write_log


def bare_parse_rate(path: str) -> tuple[int, float]:
    n = 0
    t0 = time.perf_counter()
    loads, err = orjson.loads, orjson.JSONDecodeError
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        for line in f:
            try:
                loads(line)
            except err:
                pass
            n += 1
    return n, time.perf_counter() - t0


def state_bytes(engine) -> dict:
    sizes = sorted(len(s.to_bytes()) for k, s in engine.states.items() if not k.startswith("anon:"))
    if not sizes:
        return {"customers": 0}
    return {
        "customers": len(sizes),
        "mean": round(statistics.fmean(sizes)),
        "p50": sizes[len(sizes) // 2],
        "p99": sizes[min(len(sizes) - 1, int(len(sizes) * 0.99))],
        "max": sizes[-1],
    }


# the benchmark of record runs the product as it ships: the built-in rules, the example journeys (multi-step
# ones included) and their experiments, on a population that answers its messages (engagement events)
EXAMPLE_RULES = os.path.join(os.path.dirname(examples.__file__), "journeys.example.toml")


def workers_bench(log: str, d: str, pairs: int, target: float = 1.6, rules: str | None = None) -> float:
    """Replay events/s with 1 and 2 workers on the same log, in alternating pairs (so that
    load from elsewhere on the machine hits both alike); the ratio of the medians. Each run is a
    process of its own, started fresh as ``journey replay`` is (a process that has just replayed
    the whole log holds a large heap that forked workers would copy page by page)."""
    rates: dict[int, list[float]] = {1: [], 2: []}
    print()
    print(f"replay --workers, {pairs} pair(s) of runs (1 worker, then 2), {os.cpu_count()} core(s):")
    spawn = multiprocessing.get_context("spawn")
    for k in range(pairs):
        for w in ((1, 2) if k % 2 == 0 else (2, 1)):
            with ProcessPoolExecutor(1, mp_context=spawn) as fresh:
                lines, seconds = fresh.submit(_timed_replay, log, d, w, rules).result()
            rates[w].append(lines / seconds)
            print(f"  {w} worker(s)            {rates[w][-1]:>12,.0f} events/s  ({seconds:.2f} s)", flush=True)
    same = all(_same(os.path.join(d, f"w1.{x}.jsonl"), os.path.join(d, f"w2.{x}.jsonl"))
               for x in ("triggers", "audit", "deadletter"))
    r1, r2 = statistics.median(rates[1]), statistics.median(rates[2])
    ratio = r2 / r1
    print(f"2 workers / 1 worker   {ratio:>12.2f}x (medians; target: at least {target}x: "
          f"{'met' if ratio >= target else 'missed'}); outputs byte-identical: {'yes' if same else 'NO'}")
    return ratio


def _timed_replay(log: str, d: str, w: int, rules: str | None) -> tuple[int, float]:
    """One replay with ``w`` workers, in the fresh process it is called in: (lines, seconds)."""
    from ..io.rulefile import load_config

    s = replay([log], os.path.join(d, f"w{w}.triggers.jsonl"), os.path.join(d, f"w{w}.audit.jsonl"),
               os.path.join(d, f"w{w}.deadletter.jsonl"), config=load_config(rules), workers=w)
    return s["lines"], s["seconds"]


def _same(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def run_bench(a) -> int:
    """``a.config``: the configuration of ``a.rules`` (the command line loads it)."""
    if a.log and not os.path.isfile(a.log):
        print(f"journey bench: --log {a.log}: no such file; give a JSON-lines log (.jsonl or .jsonl.gz), or leave "
              "--log out to benchmark a generated one", file=sys.stderr)
        return 2
    rules, config = a.rules or EXAMPLE_RULES, a.config
    d = a.keep or tempfile.mkdtemp(prefix="journey-bench-")
    os.makedirs(d, exist_ok=True)
    log = a.log or os.path.join(d, "events.jsonl")
    # the targets of issue 17: a generated log, and a trigger-heavy real one (the CDNOW purchase log)
    target = 15 if a.log else 12
    try:
        if a.log:
            print(f"reading {a.log} ...", flush=True)
            # a first read counts its lines and leaves the file in the page cache, as a generated log
            # just written is: the timed parse below and the replay both read it warm
            lines = bare_parse_rate(log)[0]
        else:
            print(f"generating {a.events:,} events for {a.customers:,} customers ...", flush=True)
            t0 = time.perf_counter()
            info: dict = {}
            lines = write_log(log, a.customers, a.events, a.seed, engagement=not a.no_engagement, info=info)
            answers = f", {info['engagement']:,} of them answers to messages" if info.get("engagement") else ""
            print(f"  {lines:,} lines{answers}, {os.path.getsize(log) / 1e6:,.0f} MB in "
                  f"{time.perf_counter() - t0:.1f} s")
        n, t_parse = bare_parse_rate(log)
        keep = []
        s = replay([log], os.path.join(d, "triggers.jsonl"), os.path.join(d, "audit.jsonl"),
                   os.path.join(d, "deadletter.jsonl"), config=config, keep_engine=keep,
                   sort_buffer=max(200_000, lines + 1))
        sb = state_bytes(keep[0])
        # the engine (every customer's state) goes before the runs below: kept alive, it would be copied on
        # write into each forked worker and slow every allocation of the runs in this process
        keep.clear()
        gc.collect()
        parse_rate = n / t_parse
        replay_rate = s["lines"] / s["seconds"]
        core_s = s["seconds"] - s["read_seconds"]
        print()
        print(f"bare orjson parse      {parse_rate:>12,.0f} lines/s   ({t_parse:.2f} s)")
        print(f"replay (end to end)    {replay_rate:>12,.0f} events/s  ({s['seconds']:.2f} s: "
              f"read+validate+sort {s['read_seconds']:.2f} s, rules+policy+output {core_s:.2f} s)")
        print(f"  of which the core    {s['valid'] / core_s if core_s else 0:>12,.0f} events/s")
        slower = parse_rate / replay_rate
        print(f"replay / bare parse    {slower:>12.1f}x slower (target: within {target}x: "
              f"{'met' if slower <= target else 'missed'})")
        print(f"triggers               {s['triggers']:>12,}")
        print(f"suppressed             {sum(s['suppressed_by_reason'].values()):>12,}")
        mean = sb.get("mean") or 0
        print(f"state per customer     mean {sb.get('mean')} B, p50 {sb.get('p50')} B, p99 {sb.get('p99')} B, "
              f"max {sb.get('max')} B over {sb['customers']:,} customers (target: mean under 1 KB: "
              f"{'met' if mean < 1024 else 'missed'})")
        if a.log:
            print(f"size run               {a.log}: {lines:,} lines")
        else:
            print(f"size run               {a.customers:,} customers, {a.events:,} events, seed {a.seed}"
                  + ("" if a.no_engagement else ", with engagement"))
        print(f"rules                  {'the built-in rules only' if rules == 'builtin' else rules}")
        mode = core_mode()
        print(f"core                   {mode}" + (" (JOURNEY_PURE=1 runs it as pure Python)"
                                                 if mode.startswith("compiled") else ""))
        if a.worker_pairs:
            workers_bench(log, d, a.worker_pairs, rules=None if rules == "builtin" else rules)
    finally:
        if not a.keep:
            shutil.rmtree(d, ignore_errors=True)
    return 0
