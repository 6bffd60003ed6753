"""What the example journeys cost: replay events/s with and without
deploy/journeys.example.toml on one generated log (pairs run alternately, median
ratio), nanoseconds per CEL evaluation of each example expression, and bytes of
state per customer with and without them.

    python benchmarks/journeys_bench.py [--customers N] [--events N] [--pairs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from journey.core.config import Config  # noqa: E402
from journey.history.bench import state_bytes  # noqa: E402
from journey.history.replay import replay  # noqa: E402
from journey.history.synth import write_log  # noqa: E402
from journey.io.rulefile import load_config  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "journeys.example.toml"
TARGET = 1.15  # the target: within 15% of the bench without journeys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--customers", type=int, default=20_000, help="customers in the generated log")
    ap.add_argument("--events", type=int, default=400_000, help="events in the generated log")
    ap.add_argument("--pairs", type=int, default=3, help="alternating pairs of runs")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="journey-jbench-")
    log = os.path.join(d, "events.jsonl")
    write_log(log, a.customers, a.events, 7)
    with_j, without = load_config(EXAMPLE), Config()
    times = {"with": [], "without": []}
    engines = {}
    for i in range(a.pairs):
        for name, cfg in (("without", without), ("with", with_j)) if i % 2 == 0 else (("with", with_j),
                                                                                    ("without", without)):
            keep = []
            t0 = time.perf_counter()
            replay([log], os.path.join(d, f"{name}.jsonl"), config=cfg, keep_engine=keep, until=1798761600000)
            times[name].append(time.perf_counter() - t0)
            engines[name] = keep[0]
    ratios = [w / o for w, o in zip(times["with"], times["without"])]
    ratio = statistics.median(ratios)
    lines = sum(1 for _ in open(log, "rb"))
    print(f"log: {lines:,} lines, {a.customers:,} customers")
    for name in ("without", "with"):
        t = statistics.median(times[name])
        print(f"replay {name:<8} journeys: {lines / t:>10,.0f} events/s (median of {a.pairs})")
    print(f"with / without: {ratio:.2f}x the time (pairs: {', '.join(f'{r:.2f}' for r in ratios)}); "
          f"target {TARGET:.2f}x: {'met' if ratio <= TARGET else 'missed'}")
    # CEL: each example expression on a typical context
    for jname, j in with_j.journeys.items():
        for label, cond in (("if", j.cond_if), ("when", j.cond_when)):
            if cond is None:
                continue
            props = {"price": 60, "rating": 5, "code": "E500", "product_id": "p1", "ticket_id": "t1"}
            sources = {"event": ("x", 1772359200000, props), "entry": ("x", 1772359200000, props),
                       "customer": {"stage": "active", "health": 62.0, "orders": 3, "net_spend": 120.0, "tier": "",
                                    "open_tickets": 0, "timezone": "UTC"}}
            n = 20_000
            t0 = time.perf_counter()
            for _ in range(n):  # as the engine does: the context holds only what the expression names
                cond.run(cond.context(sources))
            print(f"CEL {jname}.{label}: {(time.perf_counter() - t0) / n * 1e9:,.0f} ns per evaluation "
                  f"({cond.source})")
    for name in ("without", "with"):
        print(f"state per customer, {name} journeys: {state_bytes(engines[name])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
