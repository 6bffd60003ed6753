"""What the example journeys cost: replay events/s with and without the journeys
of deploy/journeys.example.toml, and with its multi-step journeys alone (its experiments left out: benchmarks/experiments_bench.py
measures those) on one generated log (pairs run alternately, median ratio),
nanoseconds per CEL evaluation of each example expression (the fast path and the
CEL library), and bytes of state per customer with and without them.

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
from journey.core.timeutil import parse_time  # noqa: E402
from journey.history.bench import state_bytes  # noqa: E402
from journey.history.replay import replay  # noqa: E402
from journey.history.synth import write_log  # noqa: E402
from journey.io.rulefile import config_from, read_table  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "journeys.example.toml"
TARGET = 1.15  # the target: within 15% of the bench without journeys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--customers", type=int, default=20_000, help="customers in the generated log")
    ap.add_argument("--events", type=int, default=400_000, help="events in the generated log")
    ap.add_argument("--pairs", type=int, default=3, help="alternating pairs of runs")
    ap.add_argument("--until", default="end", help="replay up to: \"end\" (the log's last event, as a backtest of history) or a time (timers due by then fire too)")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="journey-jbench-")
    log = os.path.join(d, "events.jsonl")
    write_log(log, a.customers, a.events, 7)
    data = read_table(EXAMPLE)
    data.pop("rules", None)  # the experiment on a built-in rule
    for j in data.get("journeys", {}).values():
        j.pop("experiment", None)
    with_j, without = config_from(data, str(EXAMPLE)), Config()
    # the example's multi-step journeys alone (section 8), against none
    steps_only = dict(data, journeys={n: j for n, j in data.get("journeys", {}).items() if "steps" in j})
    with_steps = config_from(steps_only, str(EXAMPLE))
    configs = {"without": without, "with": with_j, "steps": with_steps}
    until = None if a.until == "end" else parse_time(a.until)
    times = {name: [] for name in configs}
    engines = {}
    order = list(configs)
    for i in range(a.pairs):
        for name in order[i % 3:] + order[:i % 3]:   # each configuration first in turn
            keep = []
            t0 = time.perf_counter()
            replay([log], os.path.join(d, f"{name}.jsonl"), config=configs[name], keep_engine=keep, until=until)
            times[name].append(time.perf_counter() - t0)
            engines[name] = keep[0]
    lines = sum(1 for _ in open(log, "rb"))
    print(f"log: {lines:,} lines, {a.customers:,} customers; replayed up to {a.until}")
    labels = {"without": "no journeys", "with": "every example journey", "steps": "the multi-step journeys"}
    for name in configs:
        t = statistics.median(times[name])
        print(f"replay, {labels[name]:<24}: {lines / t:>10,.0f} events/s (median of {a.pairs})")
    for name in ("with", "steps"):
        ratios = [w / o for w, o in zip(times[name], times["without"])]
        ratio = statistics.median(ratios)
        print(f"{labels[name]} / none: {ratio:.2f}x the time (runs: {', '.join(f'{r:.2f}' for r in ratios)}); "
              f"target {TARGET:.2f}x: {'met' if ratio <= TARGET else 'missed'}")
    inst = _instances(engines["steps"], set(with_steps.journeys))
    print(f"multi-step instances open at the end: {inst['open']:,}, {inst['mean']} bytes each on average "
          f"(serialized), at most {inst['max']}")
    # CEL: each example expression on a typical context
    for jname, j in with_j.journeys.items():
        for label, cond in (("if", j.cond_if), ("when", j.cond_when)):
            if cond is None:
                continue
            props = {"price": 60, "rating": 5, "code": "E500", "product_id": "p1", "ticket_id": "t1", "value": 80,
                     "revenue": 40}
            sources = {"event": ("x", 1772359200000, props), "entry": ("x", 1772359200000, props),
                       "customer": {"stage": "active", "health": 62.0, "orders": 3, "net_spend": 120.0, "tier": "",
                                    "open_tickets": 0, "timezone": "UTC"}}
            n = 20_000
            t0 = time.perf_counter()
            for _ in range(n):  # as the engine does
                cond.evaluate(sources)
            fast = (time.perf_counter() - t0) / n * 1e9
            t0 = time.perf_counter()
            for _ in range(n):  # the library, with a context holding only what the expression names
                cond.run(cond.context(sources))
            lib = (time.perf_counter() - t0) / n * 1e9
            print(f"CEL {jname}.{label}: {fast:,.0f} ns per evaluation ({'fast path' if cond.fast else 'library'}; "
                  f"the library alone {lib:,.0f} ns) ({cond.source})")
    for name in configs:
        print(f"state per customer, {labels[name]}: {state_bytes(engines[name])}")
    return 0


def _instances(engine, names: set) -> dict:
    """Open multi-step instances (timers name|key of those journeys) and their serialized bytes."""
    import orjson

    sizes = [len(k) + len(orjson.dumps(v)) for st in engine.states.values() for k, v in st.timers.items()
             if k.partition("|")[0] in names]
    return {"open": len(sizes), "mean": round(statistics.fmean(sizes)) if sizes else 0,
            "max": max(sizes, default=0)}


if __name__ == "__main__":
    raise SystemExit(main())
