"""``journey backtest``: two rule configurations over the same log, compared.

The log is read and sorted once; both engines see the same events in the
same order. Trigger ids do not depend on the configuration, so a trigger
present in both runs has the same id: the difference is a set difference
per rule, and for a multi-step journey also per step (the trigger's
``data.step``).
"""

from __future__ import annotations

import sys
from collections import defaultdict

import orjson

from ..core.engine import Engine, ListSink
from ..core.timeline import drive
from ..io.logs import SORT_BUFFER, Reader
from . import workers as workers_mod
from .replay import no_cyclic_gc


class _Tee:
    """Both engines on one timeline; an event that fails in one is counted there and
    still applied to the other (no record stops a backtest)."""

    def __init__(self, engines):
        self.engines = engines
        self.failed = [0] * len(engines)
        for e in engines:
            e.on_timer_error = _ignore

    def fire_due(self, t):
        for e in self.engines:
            e.fire_due(t)

    def apply(self, ev):
        for i, e in enumerate(self.engines):
            try:
                e.apply(ev)
            except Exception:
                self.failed[i] += 1


def _ignore(*_args) -> None:
    pass


def backtest(paths, new_cfg, base_cfg, until: int | None = None, progress=None, workers: int = 1) -> dict:
    """``workers`` > 1: that many processes, one shard of the customers each (``history.workers``),
    the same result."""
    max_bytes = min(new_cfg.engine.max_record_bytes, base_cfg.engine.max_record_bytes)
    keep = new_cfg.keep_props | base_cfg.keep_props
    if workers > 1:
        try:
            return _backtest_workers(paths, new_cfg, base_cfg, until, progress, workers, max_bytes, keep)
        except workers_mod.Mismatch as e:
            print(f"journey backtest: the worker pre-filter reads a record's ids differently from the parser "
                  f"({e}); running on one worker instead", file=sys.stderr)
    new, base = Engine(new_cfg, ListSink()), Engine(base_cfg, ListSink())
    reader = Reader(paths, None, max_bytes, progress, keep=keep)
    with no_cyclic_gc():
        tee = _Tee([new, base])
        drive(tee, reader.events(), until)
    return _compare(new, base, new_cfg, base_cfg, reader.lines, sum(reader.rejected.values()), tee.failed,
                    new.stats, base.stats)


def _backtest_workers(paths, new_cfg, base_cfg, until, progress, n, max_bytes, keep) -> dict:
    job = {"paths": [str(p) for p in paths], "configs": [new_cfg, base_cfg], "max_bytes": max_bytes,
           "sort_buffer": SORT_BUFFER, "future_limit": None, "keep": keep,
           "kinds": ["0.trigger", "0.outcome", "1.trigger"], "until": until, "target": _Tee, "on_error": None}
    results, d = workers_mod.run_sharded(job["paths"], n, job, progress)
    try:
        new, base = _Merged(d, n, 0), _Merged(d, n, 1)
    finally:
        workers_mod.shutil.rmtree(d, ignore_errors=True)
    failed = [sum(r["failed"][i] for r in results) for i in range(2)]
    return _compare(new, base, new_cfg, base_cfg, sum(r["lines"] for r in results),
                    sum(workers_mod.sum_rejected(results).values()), failed,
                    workers_mod.merge_stats(results, 0), workers_mod.merge_stats(results, 1))


class _Merged:
    """An engine's merged outputs, as its ListSink would hold them."""

    def __init__(self, d, n, c):
        self.sink = ListSink()
        self.sink.triggers.extend(orjson.loads(x) for x in workers_mod.merged(d, f"{c}.trigger", n))
        if c == 0:
            self.sink.outcomes.extend(orjson.loads(x) for x in workers_mod.merged(d, f"{c}.outcome", n))


def _compare(new, base, new_cfg, base_cfg, lines, rejected, failed, new_stats, base_stats) -> dict:
    by_new = {t["id"]: t for t in new.sink.triggers}
    by_base = {t["id"]: t for t in base.sink.triggers}
    result = {"lines": lines, "rejected": rejected, "unprocessable": failed,
              "rules": {}, "added": [], "removed": []}
    per = defaultdict(lambda: {"baseline": 0, "new": 0, "added": 0, "removed": 0})
    for t in base.sink.triggers:
        per[t["data"]["rule"]]["baseline"] += 1
    for t in new.sink.triggers:
        per[t["data"]["rule"]]["new"] += 1
    for tid, t in by_new.items():
        if tid not in by_base:
            per[t["data"]["rule"]]["added"] += 1
            result["added"].append(t)
    for tid, t in by_base.items():
        if tid not in by_new:
            per[t["data"]["rule"]]["removed"] += 1
            result["removed"].append(t)
    # every rule and journey that fired in either run (built-in rules first, then journeys, each by name),
    # so the rows add up to the totals
    builtin = set(new_cfg.rules) | set(base_cfg.rules)
    result["rules"] = {r: per[r] for r in sorted(per, key=lambda r: (r not in builtin, r))}
    result["steps"] = _by_step(result["rules"], base.sink.triggers, new.sink.triggers, by_base, by_new,
                               new_cfg, base_cfg)
    result["outcomes"] = new.sink.outcomes  # the proposed rules' closed exposures (experiments)
    sup_new = new_stats.suppressed_by_reason()
    sup_base = base_stats.suppressed_by_reason()
    result["suppressed"] = {r: {"baseline": sup_base.get(r, 0), "new": sup_new.get(r, 0)}
                            for r in sorted(set(sup_new) | set(sup_base))}
    return result


def _by_step(rules, base, new, by_base, by_new, new_cfg, base_cfg) -> dict:
    """Multi-step journeys: ``{journey: {step: {baseline, new, added, removed}}}``, the journeys in the
    rules' order, each one's steps in the order written (the proposed file's, then the baseline's)."""
    per: dict = defaultdict(lambda: defaultdict(lambda: {"baseline": 0, "new": 0, "added": 0, "removed": 0}))
    for triggers, col, other, change in ((base, "baseline", by_new, "removed"), (new, "new", by_base, "added")):
        for t in triggers:
            d = t["data"]
            if "step" in d:
                c = per[d["rule"]][d["step"]]
                c[col] += 1
                if t["id"] not in other:
                    c[change] += 1
    out = {}
    for j in (r for r in rules if r in per):
        written = [s.name for cfg in (new_cfg, base_cfg) if j in cfg.journeys for s in cfg.journeys[j].steps]
        place = {name: i for i, name in reversed(list(enumerate(written)))}
        out[j] = {s: dict(per[j][s]) for s in sorted(per[j], key=lambda s: (place.get(s, len(place)), s))}
    return out


def format_backtest(r: dict, examples: int = 3) -> str:
    lines = [f"{'rule':<22}{'baseline':>10}{'new':>10}{'added':>10}{'removed':>10}"]
    for rule, c in r["rules"].items():
        lines.append(f"{rule:<22}{c['baseline']:>10,}{c['new']:>10,}{'+' + format(c['added'], ','):>10}"
                     f"{'-' + format(c['removed'], ','):>10}")
    tb = sum(c["baseline"] for c in r["rules"].values())
    tn = sum(c["new"] for c in r["rules"].values())
    lines.append(f"{'total':<22}{tb:>10,}{tn:>10,}{'+' + format(len(r['added']), ','):>10}"
                 f"{'-' + format(len(r['removed']), ','):>10}")
    if any(r.get("unprocessable", ())):
        lines.append(f"unprocessable events (applying them failed; left out): baseline {r['unprocessable'][1]:,}, "
                     f"new {r['unprocessable'][0]:,}")
    if r.get("steps"):
        w = max(22, *(len(s) + 4 for j in r["steps"].values() for s in j))
        lines.append("")
        lines.append(f"{'by step':<{w}}{'baseline':>10}{'new':>10}{'added':>10}{'removed':>10}")
        for journey, steps in r["steps"].items():
            lines.append(journey)
            for step, c in steps.items():
                lines.append(f"{'  ' + step:<{w}}{c['baseline']:>10,}{c['new']:>10,}"
                             f"{'+' + format(c['added'], ','):>10}{'-' + format(c['removed'], ','):>10}")
    if r["suppressed"]:
        lines.append("")
        lines.append(f"{'suppressed by reason':<22}{'baseline':>10}{'new':>10}")
        for reason, c in r["suppressed"].items():
            lines.append(f"{reason:<22}{c['baseline']:>10,}{c['new']:>10,}")
    for label, items in (("added", r["added"]), ("removed", r["removed"])):
        if items and examples:
            lines.append("")
            lines.append(f"examples {label}:")
            for t in items[:examples]:
                lines.append(f"  {t['time']} {t['data']['rule']:<18} {t['subject']}: {t['data']['reason']}")
    return "\n".join(lines)
