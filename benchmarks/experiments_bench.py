"""What experiments cost: replay events/s with and without experiments on two rules
(cart_abandoned with a holdout and two variants, first_purchase with a holdout; goal
order.completed with a goal_if) on one generated log, pairs run alternately, median
ratio; bytes of state per customer with and without; and the time of
`journey experiments report` on a million outcome records.

    python benchmarks/experiments_bench.py [--customers N] [--events N] [--pairs N] [--outcomes N]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from journey.core.config import Config  # noqa: E402
from journey.history.bench import state_bytes  # noqa: E402
from journey.history.replay import replay  # noqa: E402
from journey.history.report import format_report, tally_files  # noqa: E402
from journey.history.synth import write_log  # noqa: E402

TARGET = 1.10  # the target: experiments on two rules cost at most 10% of replay events/s
EXPERIMENTS = {"rules": {
    "cart_abandoned": {"experiment": {"salt": "b", "holdout": 0.2, "goal": "order.completed",
                                      "goal_if": "event.props.revenue > 0.0", "window": "3d",
                                      "variants": [{"name": "reminder"},
                                                   {"name": "discount", "offer": {"type": "discount", "pct": 10}}]}},
    "first_purchase": {"experiment": {"salt": "b", "holdout": 0.5, "goal": "order.completed", "window": "30d"}},
}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--customers", type=int, default=20_000, help="customers in the generated log")
    ap.add_argument("--events", type=int, default=200_000, help="events in the generated log")
    ap.add_argument("--pairs", type=int, default=3, help="alternating pairs of runs")
    ap.add_argument("--outcomes", type=int, default=1_000_000, help="outcome records for the report's timing")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="journey-xbench-")
    log = os.path.join(d, "events.jsonl")
    write_log(log, a.customers, a.events, 7)
    cfgs = {"without": Config(), "with": Config(EXPERIMENTS)}
    times = {"with": [], "without": []}
    engines = {}
    for i in range(a.pairs):
        order = ("without", "with") if i % 2 == 0 else ("with", "without")
        for name in order:
            keep = []
            t0 = time.perf_counter()
            replay([log], os.path.join(d, f"{name}.jsonl"), config=cfgs[name], keep_engine=keep,
                   until=1798761600000, outcomes=os.path.join(d, f"{name}.outcomes.jsonl"))
            times[name].append(time.perf_counter() - t0)
            engines[name] = keep[0]
    ratios = [w / o for w, o in zip(times["with"], times["without"])]
    ratio = statistics.median(ratios)
    lines = sum(1 for _ in open(log, "rb"))
    n_out = sum(1 for _ in open(os.path.join(d, "with.outcomes.jsonl"), "rb"))
    print(f"log: {lines:,} lines, {a.customers:,} customers; {n_out:,} outcomes with experiments")
    for name in ("without", "with"):
        t = statistics.median(times[name])
        print(f"replay {name:<8} experiments: {lines / t:>10,.0f} events/s (median of {a.pairs})")
    print(f"with / without: {ratio:.3f}x the time (pairs: {', '.join(f'{r:.3f}' for r in ratios)}); "
          f"target {TARGET:.2f}x: {'met' if ratio <= TARGET else 'missed'}")
    for name in ("without", "with"):
        print(f"state per customer, {name} experiments: {state_bytes(engines[name])}")
    # the report on a million outcome records
    rnd = random.Random(1)
    big = os.path.join(d, "million.jsonl")
    stages = ("prospect", "new", "active", "loyal", "at_risk", "lapsed")
    with open(big, "wb") as f:
        for i in range(a.outcomes):
            arm = rnd.choice(("holdout", "reminder", "discount"))
            conv = rnd.random() < 0.1
            f.write(orjson.dumps({"trigger_id": f"t{i}", "customer_id": f"c{i}", "rule": rnd.choice(("r1", "r2")),
                                  "variant": arm, "stage": rnd.choice(stages), "health": rnd.randrange(101),
                                  "exposed_at": "2026-03-01T00:00:00Z", "converted": conv,
                                  "converted_at": "2026-03-02T00:00:00Z" if conv else None,
                                  "value": 20.0 if conv else 0.0, "time": "2026-03-04T00:00:00Z"}) + b"\n")
    t0 = time.perf_counter()
    tally = tally_files([big])
    text = format_report(tally.rows(), "stage", tally.bad)
    el = time.perf_counter() - t0
    print(f"experiments report on {a.outcomes:,} outcome records: {el:.2f} s "
          f"({a.outcomes / el:,.0f} records/s, {len(text.splitlines())} lines of report)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
