"""``journey replay``: historical JSON-lines logs through the same core as the live worker.

Reading (``journey.io.logs``): any number of ``.jsonl`` / ``.jsonl.gz`` files
(gzip is recognized by its magic bytes), any mix of the three streams and
both event shapes, in any order. Events are put in event-time order by an
external merge sort: at most ``sort_buffer`` parsed events (default 200,000)
are held in memory at a time; larger inputs are sorted in runs that spill to
temporary files and are merged back. Beyond that, replay holds the customer
states and the timer heap. Rejected lines go to the dead-letter output as
they are read.

Output is deterministic: the same input (in any line order) and rules give
byte-identical trigger, audit and dead-letter files.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import orjson

from ..core import privacy
from ..core.engine import Engine
from ..core.intake import UNPROCESSABLE
from ..core.timeline import drive
from ..core.timeutil import format_time
from ..core.triggers import deadletter_record
from ..io.logs import SORT_BUFFER, Reader
from ..io.progress import Progress
from ..io.rulefile import load_config
from . import workers as workers_mod

_NEWLINE = orjson.OPT_APPEND_NEWLINE


class JsonLines:
    """Writes one JSON object per line; ``-`` is standard output. A file is written beside
    its final name and renamed over it only by ``close(keep=True)``: a replay that fails
    leaves a previous result as it was."""

    def __init__(self, path: str | None):
        self.path = path
        self.count = 0
        self.tmp = None
        if path is None:
            self.f = None
        elif path == "-":
            self.f = sys.stdout.buffer
        else:
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
            self.f = open(self.tmp, "wb", buffering=1 << 20)

    def __call__(self, rec: dict) -> None:
        self.count += 1
        if self.f is not None:
            self.f.write(orjson.dumps(rec, option=_NEWLINE))

    def close(self, keep: bool = True):
        if self.f is None:
            return
        if self.tmp is None:
            self.f.flush()
            return
        self.f.close()
        if keep:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


class FileSink:
    def __init__(self, triggers: JsonLines, audit: JsonLines, transitions: JsonLines,
                 outcomes: JsonLines | None = None):
        self.trigger, self.audit, self.transition = triggers, audit, transitions
        self.wants_transitions = transitions.f is not None
        if outcomes is not None and outcomes.f is not None:
            self.outcome = outcomes


class Counting:
    """Wraps an event iterator to count and show progress."""

    def __init__(self, it, total: int, progress: Progress):
        self.it, self.total, self.progress, self.n = it, total, progress, 0
        self.t0 = time.perf_counter()

    def __iter__(self):
        for ev in self.it:
            self.n += 1
            if not self.n & 4095:
                el = time.perf_counter() - self.t0
                self.progress.update("processing", self.n, self.total, rate=self.n / el if el else None)
            yield ev


def replay(paths, out: str, audit: str | None = None, deadletter: str | None = None, rules: str | None = None,
           until: int | None = None, transitions: str | None = None, progress: Progress | None = None,
           sort_buffer: int = SORT_BUFFER, config=None, keep_engine: list | None = None,
           now: int | None = None, outcomes: str | None = None, workers: int = 1, erased=None) -> dict:
    """Run a replay; returns the summary (see :func:`format_summary`). ``now`` (epoch ms) is
    the present the log was taken at: events more than ``[engine] future_horizon`` after
    it are dead-lettered as ``future_time``, as the live worker does against its clock.
    ``outcomes``: the file of closed experiment exposures (domain.md section 7).
    ``workers`` > 1: that many processes, one shard of the customers each (``history.workers``),
    the same output files byte for byte. ``erased``: customer ids erased before the log
    (``--erased FILE``): their events are dropped from the start, counted, never dead-lettered."""
    erased = list(erased or ())
    if workers > 1 and keep_engine is None:
        cfg = config or load_config(rules)
        try:
            return _replay_workers(paths, out, audit, deadletter, until, transitions, progress or Progress(),
                                   sort_buffer, cfg, now, outcomes, workers, erased)
        except workers_mod.Mismatch as e:
            print(f"journey replay: the worker pre-filter reads a record's ids differently from the parser "
                  f"({e}); replaying on one worker instead", file=sys.stderr)
            config = cfg
    with no_cyclic_gc():
        return _replay(paths, out, audit, deadletter, rules, until, transitions, progress, sort_buffer, config,
                       keep_engine, now, outcomes, erased)


@contextmanager
def no_cyclic_gc():
    """Bulk processing creates millions of long-lived objects and no reference
    cycles; the cyclic collector would rescan them all, repeatedly (about a
    fifth of replay time). Reference counting still frees everything."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _replay(paths, out, audit, deadletter, rules, until, transitions, progress, sort_buffer, config, keep_engine,
            now, outcomes, erased=()):
    cfg = config or load_config(rules)
    progress = progress or Progress()
    t0 = time.perf_counter()
    horizon = cfg.engine.future_horizon
    limit = now + horizon if now is not None and horizon > 0 else None
    reader = Reader(paths, None, cfg.engine.max_record_bytes, progress, sort_buffer, limit,  # inputs checked first
                    cfg.keep_props)
    outs = [JsonLines(out), JsonLines(audit), JsonLines(deadletter), JsonLines(transitions), JsonLines(outcomes)]
    reader.deadletter = outs[2]
    ok = False
    try:
        engine = Engine(cfg, FileSink(outs[0], outs[1], outs[3], outs[4]))
        if erased:
            engine.erased.update(privacy.digests(cfg.privacy.erasure_salt, erased))
            reader.erased = privacy.line_filter(cfg.privacy.erasure_salt, engine.erased)
        if keep_engine is not None:
            keep_engine.append(engine)
        events = reader.events()
        first = next(events, None)  # reading (and sorting) happens here
        t_read = time.perf_counter() - t0
        progress.done()
        stream = Counting(_chain(first, events), reader.valid, progress)
        engine.on_timer_error = _timer_failed  # counted in the engine's stats; replay goes on
        watermark = drive(engine, stream, until, on_error=failed_event(reader, outs[2]))
        progress.done()
        ok = True
    finally:
        for o in outs:
            o.close(keep=ok)
    elapsed = time.perf_counter() - t0
    return _summary(engine.stats.as_dict(), reader.lines, reader.valid, reader.rejected, outs[0].count,
                    engine.customers(), watermark, reader.runs, elapsed, round(t_read, 3), reader.erased_rejects)


def _summary(s: dict, lines: int, valid: int, rejected, triggers: int, customers: int, watermark, runs: int,
             elapsed: float, read_seconds, erased_rejects: int = 0) -> dict:
    """The replay summary (see :func:`format_summary`), from the engine's counters and the reading's."""
    return {
        "lines": lines,
        "valid": valid,
        "rejected_by_reason": dict(sorted(rejected.items())),
        "duplicates": s["duplicates"],
        "after_erasure": s["after_erasure"] + erased_rejects,  # events of erased ids dropped
        "erasures": s["erasures"],
        "events_applied": s["events"],
        "events_by_type": s["events_by_type"],
        "triggers": triggers,
        "triggers_by_rule": s["triggers_by_rule"],
        "suppressed_by_reason": s["suppressed_by_reason"],
        "deferred_by_rule": s["deferred_by_rule"],
        "transitions": s["transitions"],
        "timer_errors": s["timer_errors"],
        "condition_errors": s["condition_errors"],
        "outcomes": s["outcomes"],
        **{k: s[k] for k in ("instances", "steps") if k in s},   # multi-step journeys
        "customers": customers,
        "watermark": watermark,
        "sort_runs": runs,
        "seconds": round(elapsed, 3),
        "read_seconds": read_seconds,
        "events_per_second": round(lines / elapsed) if elapsed else 0,
    }


def _replay_workers(paths, out, audit, deadletter, until, transitions, progress, sort_buffer, cfg, now, outcomes,
                    n, erased=()):
    t0 = time.perf_counter()
    horizon = cfg.engine.future_horizon
    limit = now + horizon if now is not None and horizon > 0 else None
    files = {"0.trigger": out, "0.audit": audit, "deadletter": deadletter, "0.transition": transitions,
             "0.outcome": outcomes}
    kinds = [k for k, v in files.items() if v is not None or k == "0.trigger"]
    job = {"paths": [str(p) for p in paths], "configs": [cfg], "max_bytes": cfg.engine.max_record_bytes,
           "sort_buffer": sort_buffer, "future_limit": limit, "keep": cfg.keep_props, "kinds": kinds,
           "until": until, "target": _first_engine, "on_error": failed_event, "erased": erased}
    results, d = workers_mod.run_sharded(job["paths"], n, job, progress)
    t_merge = time.perf_counter()
    outs = {k: JsonLines(v) for k, v in files.items()}
    ok = False
    try:
        for k in kinds:
            o = outs[k]
            if k == "deadletter":
                _write(o, workers_mod.merged(d, "rejects", n))
            _write(o, workers_mod.merged(d, k, n))
        ok = True
    finally:
        for o in outs.values():
            o.close(keep=ok)
        workers_mod.shutil.rmtree(d, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    s = workers_mod.merge_stats(results, 0).as_dict()
    lines = sum(r["lines"] for r in results)
    if os.environ.get("JOURNEY_WORKERS_DEBUG"):
        print(f"workers cpu (pass 1, read, process) s: {[tuple(round(x, 2) for x in r['cpu']) for r in results]}; "
              f"merge {time.perf_counter() - t_merge:.2f} s", file=sys.stderr)
    # sort runs: per worker (each sorts its shard); the read time is not one figure with workers
    return _summary(s, lines, sum(r["valid"] for r in results), workers_mod.sum_rejected(results),
                    outs["0.trigger"].count, sum(r["customers"][0] for r in results), results[0]["watermark"],
                    max(r["runs"] for r in results), elapsed, None, sum(r["erased_rejects"] for r in results))


def _first_engine(engines):
    return engines[0]


def _write(o: JsonLines, lines) -> None:
    f = o.f
    for line in lines:
        o.count += 1
        if f is not None:
            f.write(line + b"\n")


def _timer_failed(_due, _exc) -> None:
    pass


def failed_event(reader: Reader, deadletter):
    """``drive``'s ``on_error``: an event whose application failed is dead-lettered with
    its file, line and bytes (read again), counted as ``unprocessable``, and replay goes
    on (no record can stop it)."""
    def on_error(ev, _token, exc) -> None:
        reader.rejected[UNPROCESSABLE] += 1
        path, n = reader.locate(reader.current)
        deadletter(deadletter_record(UNPROCESSABLE, f"{type(exc).__name__} while applying the event",
                                     {"file": path, "line": n}, reader.line(reader.current)))
    return on_error


def _chain(first, rest):
    if first is None:
        return
    yield first
    yield from rest


def format_summary(s: dict) -> str:
    def table(title, d):
        if not d:
            return [f"  {title}: none"]
        return [f"  {title}:"] + [f"    {k:<28} {v:>10,}" for k, v in d.items()]

    lines = [
        f"read       {s['lines']:,} lines: {s['valid']:,} valid, {sum(s['rejected_by_reason'].values()):,} rejected, "
        f"{s['duplicates']:,} duplicates",
    ]
    lines += table("rejected by reason", s["rejected_by_reason"])
    if s.get("erasures") or s.get("after_erasure"):
        lines += [f"erased     {s.get('erasures', 0):,} erasure(s); {s['after_erasure']:,} event(s) of erased ids "
                  "dropped (not dead-lettered)"]
    lines += [f"triggers   {s['triggers']:,}"] + table("by rule", s["triggers_by_rule"])
    lines += [f"suppressed {sum(s['suppressed_by_reason'].values()):,}"] + table("by reason", s["suppressed_by_reason"])
    if s["deferred_by_rule"]:
        lines += [f"deferred   {sum(s['deferred_by_rule'].values()):,} (quiet hours)"]
    if s.get("outcomes"):
        lines += [f"outcomes   {s['outcomes']:,} exposures closed (experiments)"]
    if s.get("timer_errors"):
        lines += [f"timer errors {s['timer_errors']:,} (timers whose rule failed; dropped)"]
    lines += [f"customers  {s['customers']:,}"]
    if s["watermark"] is not None:
        lines += [f"watermark  {format_time(s['watermark'])}"]
    lines += [f"time       {s['seconds']:.2f} s ({s['events_per_second']:,} events/s; "
              f"{s['sort_runs']} sort run(s))"]
    return "\n".join(lines)
