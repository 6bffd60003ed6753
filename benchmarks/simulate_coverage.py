"""Coverage of the experiment report over many seeds of ``journey simulate``.

    .venv/bin/python benchmarks/simulate_coverage.py [--seeds 20] [--customers 450] [--days 180]
        [--reactions FILE] [--rules FILE]

Per seed, every (rule, arm, stage) cell with at least 100 exposures in the arm and in the
holdout counts: does the report's 95% Newcombe interval cover the true effect, and how far
is the estimate from it in standard errors. Prints the pooled coverage, the mean
standardized error (with its own standard error, from the spread of per-seed means, since
the arms of one rule share a holdout), and the time taken.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from journey.history.simulate import simulate  # noqa: E402


def pooled(results: list[dict]) -> dict:
    cells = [c for r in results for c in r["coverage"] if c["enough"]]
    per_seed = []
    for r in results:
        zs = [c["z"] for c in r["coverage"] if c["enough"] and c["z"] is not None]
        if zs:
            per_seed.append(sum(zs) / len(zs))
    zs = [c["z"] for c in cells if c["z"] is not None]
    mean_z = sum(zs) / len(zs) if zs else float("nan")
    k = len(per_seed)
    m = sum(per_seed) / k if k else float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in per_seed) / (k - 1)) if k > 1 else float("nan")
    return {"cells": len(cells), "covered": sum(c["covered"] for c in cells),
            "coverage": sum(c["covered"] for c in cells) / len(cells) if cells else float("nan"),
            "mean_z": mean_z, "seed_mean_z": m, "seed_mean_z_se": sd / math.sqrt(k) if k > 1 else float("nan"),
            "moved": sum(r["counts"]["moved"] for r in results),
            "exposures": sum(r["counts"]["exposures"] for r in results)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20, help="seeds 1..N (default 20)")
    ap.add_argument("--customers", type=int, default=450, help="customers per seed (default 450)")
    ap.add_argument("--days", type=int, default=180, help="days per seed (default 180)")
    ap.add_argument("--reactions", help="reaction file (default: the packaged example)")
    ap.add_argument("--rules", help="rule file (default: the reaction file's)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    results = []
    for seed in range(1, a.seeds + 1):
        r = simulate(a.customers, a.days, seed, a.reactions, a.rules)
        s = r["summary"]
        print(f"seed {seed:>3}: {s['covered']}/{s['cells']} covered, mean z "
              f"{s['mean_z'] if s['mean_z'] is not None else float('nan'):+.2f}, {r['counts']['seconds']:.1f} s",
              file=sys.stderr)
        results.append(r)
    p = pooled(results)
    print(f"{a.seeds} seeds x {a.customers} customers x {a.days} days: {p['covered']}/{p['cells']} cells covered "
          f"({100 * p['coverage']:.1f}%), mean standardized error {p['mean_z']:+.3f} "
          f"(per-seed means {p['seed_mean_z']:+.3f} +- {p['seed_mean_z_se']:.3f}), "
          f"{p['moved']:,} of {p['exposures']:,} exposures moved by overlap, {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
