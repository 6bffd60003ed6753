"""What engagement, send time and arbitration cost (domain.md section 9): replay time on journey bench's
log (its default size) with engagement events added (``journey generate --engagement``), with the three
off (the defaults: send_time now, no arbitration window; engagement events are read either way) and on
(send_time = "optimal" on every rule, a 5-minute arbitration window), pairs run alternately, the median
ratio; the same log without its engagement events for reference; and the engagement histogram's bytes
in state.

    python benchmarks/contact_bench.py [--customers N] [--events N] [--pairs N]
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

import orjson  # noqa: E402

from journey.core.config import Config  # noqa: E402
from journey.core.rules import REGISTRY  # noqa: E402
from journey.history.bench import state_bytes  # noqa: E402
from journey.history.replay import replay  # noqa: E402
from journey.history.synth import write_log  # noqa: E402
from journey.io.rulefile import config_from  # noqa: E402

TARGET = 1.10


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--customers", type=int, default=20_000, help="customers (journey bench's default)")
    ap.add_argument("--events", type=int, default=400_000, help="events before engagement (journey bench's default)")
    ap.add_argument("--pairs", type=int, default=3, help="alternating pairs of runs")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="journey-cbench-")
    plain, eng = os.path.join(d, "plain.jsonl"), os.path.join(d, "engagement.jsonl")
    write_log(plain, a.customers, a.events, 7)
    write_log(eng, a.customers, a.events, 7, engagement=True)
    on = config_from({"policy": {"arbitration_window": "5m"},
                      "rules": {name: {"send_time": "optimal"} for name in REGISTRY}})
    runs = {"off": (eng, Config()), "on": (eng, on), "no engagement": (plain, Config())}
    times = {k: [] for k in runs}
    engines = {}
    order = list(runs)
    for i in range(a.pairs):
        for name in order[i % 3:] + order[:i % 3]:
            log, cfg = runs[name]
            keep: list = []
            t0 = time.perf_counter()
            replay([log], os.path.join(d, "t.jsonl"), os.path.join(d, "a.jsonl"), config=cfg, keep_engine=keep,
                   until=1798761600000)
            times[name].append(time.perf_counter() - t0)
            engines[name] = keep[0]
    for name, (log, _cfg) in runs.items():
        lines = sum(1 for _ in open(log, "rb"))
        print(f"replay, {name:<13}: {lines:>9,} lines, {lines / statistics.median(times[name]):>9,.0f} lines/s "
              f"(median of {a.pairs})")
    ratios = [x / y for x, y in zip(times["on"], times["off"])]
    ratio = statistics.median(ratios)
    print(f"on / off: {ratio:.2f}x the time (runs {', '.join(f'{r:.2f}' for r in ratios)}); target {TARGET:.2f}x: "
          f"{'met' if ratio <= TARGET else 'missed'}")
    hist = [len(orjson.dumps(st.to_dict()["eh"])) for st in engines["on"].states.values() if st.eh is not None]
    print(f"engagement histograms: {len(hist):,} customers, {statistics.fmean(hist):.0f} bytes on average, "
          f"at most {max(hist)}")
    for name in runs:
        print(f"state per customer, {name}: {state_bytes(engines[name])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
