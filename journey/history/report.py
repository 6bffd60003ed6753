"""``journey experiments report``: the measured effect of each rule's experiment, from
outcome files (``journey replay --outcomes``) or records read from ``journey.outcomes``.

Figures per rule and arm, and per rule, arm and stage (or health band): exposures,
conversions, conversion rate, revenue per exposure, and the uplift over the holdout
with Newcombe's 95% interval (``journey.core.uplift``)."""

from __future__ import annotations

import time

import orjson

from ..core.uplift import MIN_EXPOSURES, Tally, summary_lines
from ..io.logs import LogError, open_log
from ..io.progress import Progress


def tally_files(paths, progress: Progress | None = None, delivered_ids=None) -> Tally:
    """Fold every outcome record of the files (plain or .gz) into a tally; a line that is
    not an outcome record is counted (``Tally.bad``) and skipped. ``delivered_ids``: trigger
    ids known delivered (``delivered_ids_of``)."""
    tally = Tally(delivered_ids)
    progress = progress or Progress(enabled=False)
    n = 0
    t0 = time.perf_counter()
    for path in paths:
        f, raw = open_log(path)
        try:
            try:
                for line in f:
                    n += 1
                    if not n & 65535:
                        el = time.perf_counter() - t0
                        progress.update("reading outcomes", n, None, rate=n / el if el else None)
                    try:
                        rec = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        tally.bad += 1
                        continue
                    if isinstance(rec, dict):
                        tally.add(rec)
                    else:
                        tally.bad += 1
            except (OSError, EOFError) as e:
                raise LogError(f"{path}: cannot be read to its end after {n:,} lines ({e})") from None
        finally:
            raw.close()
    progress.done()
    return tally


def tally_values(values, delivered_ids=None) -> Tally:
    """The same, for raw record values (the topic)."""
    tally = Tally(delivered_ids)
    for v in values:
        try:
            rec = orjson.loads(v) if v is not None else None
        except orjson.JSONDecodeError:
            rec = None
        if isinstance(rec, dict):
            tally.add(rec)
        else:
            tally.bad += 1
    return tally


def delivered_ids_of(values) -> set[str]:
    """The trigger ids of ``journey.dispatch.delivered`` record values (the dispatcher's
    record of what an endpoint accepted)."""
    ids = set()
    for v in values:
        try:
            rec = orjson.loads(v) if v is not None else None
        except orjson.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("trigger_id"), str):
            ids.add(rec["trigger_id"])
    return ids


def format_report(rows: list[dict], by: str = "stage", bad: int = 0, min_exposures: int = MIN_EXPOSURES) -> str:
    if not rows:
        return ("no outcome records: run an experiment (an experiment table on a rule or journey, see "
                "docs/experiments.md) and replay with --outcomes FILE, or read the topic with --broker")
    head = f"{'rule':<20}{'arm':<14}{by.replace('_', ' '):<11}{'exposures':>10}{'conv':>8}{'rate':>8}" \
           f"{'value/exp':>11}{'uplift':>9}  95% CI"
    lines = [head, "-" * len(head)]
    last = None
    key = "health_band" if by == "health" else "stage"
    for r in rows:
        if last is not None and (r["rule"], r.get(key) is None) != last:
            lines.append("")
        last = (r["rule"], r.get(key) is None)
        group = r.get(key) or "all"
        up = "" if r["uplift"] is None else f"{100 * r['uplift']:+.1f}"
        ci = "" if r["uplift"] is None else f"{100 * r['ci_low']:+.1f} to {100 * r['ci_high']:+.1f}"
        lines.append(f"{r['rule']:<20}{r['arm']:<14}{group:<11}{r['exposures']:>10,}{r['conversions']:>8,}"
                     f"{100 * r['rate']:>7.1f}%{r['value_per_exposure']:>11.2f}{up:>9}  {ci}")
    lines.append("")
    lines.append("uplift: conversion rate minus the holdout's, in percentage points (Newcombe's hybrid score "
                 "interval)")
    lines += summary_lines(rows, min_exposures)
    if bad:
        lines.append(f"{bad:,} record(s) were not outcome records and were skipped")
    return "\n".join(lines)
