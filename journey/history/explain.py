"""``journey explain CUSTOMER PATH...``: why did (or didn't) this customer get a message?

A replay of the log (the same engine and timeline as ``journey replay``) that
records, for one customer, everything the engine did: events applied (time,
type, touch point), timers set, fired and cancelled (a journey instance
starting, exiting, expiring), triggers sent, deferred and held back with their
reasons, and stage changes, as one timeline in event-time order. Events of the
customer's anonymous visits are included once they are linked.
"""

from __future__ import annotations

import sys

import orjson

from ..core.engine import DEFERRED, STAGE, Engine
from ..core.experiments import OUTCOME
from ..core.timeline import drive
from ..core.timeutil import format_time, parse_time
from ..io.logs import Reader
from .replay import no_cyclic_gc


class _Sink:
    wants_transitions = True

    def __init__(self, who: set, out: list):
        self.who, self.out = who, out

    def trigger(self, rec: dict) -> None:
        if rec["subject"] in self.who:
            d = rec["data"]
            arm = f", experiment {d['experiment']['name']} arm {d['experiment']['variant']}" if "experiment" in d else ""
            self.out.append((rec["time"], "trigger",
                             f"{d['rule']} sent ({d['kind']}, {d['channel']}{arm}): {d['reason']}",
                             {"trigger_id": rec["id"], "rule": d["rule"], "reason": d["reason"]}))

    def outcome(self, rec: dict) -> None:
        if rec["customer_id"] in self.who:
            how = (f"converted at {rec['converted_at']} (value {rec['value']:g})" if rec["converted"]
                   else "not converted")
            self.out.append((rec["time"], "outcome",
                             f"{rec['rule']} exposure of {rec['exposed_at']} closed ({rec['variant']}): {how}",
                             {"trigger_id": rec["trigger_id"], "rule": rec["rule"], "variant": rec["variant"],
                              "converted": rec["converted"]}))

    def audit(self, rec: dict) -> None:
        if rec["customer_id"] in self.who:
            what = "deferred" if rec.get("deferred_until") else "held back"
            until = f" until {rec['deferred_until']}" if rec.get("deferred_until") else ""
            self.out.append((rec["time"], what, f"{rec['rule']} {what} ({rec['reason']}){until}: {rec['detail']}",
                             {"trigger_id": rec["trigger_id"], "rule": rec["rule"], "reason": rec["reason"]}))

    def transition(self, rec: dict) -> None:
        if rec["customer_id"] in self.who:
            self.out.append((rec["time"], "stage", f"stage {rec['from']} -> {rec['to']} ({rec['reason']})",
                             {"from": rec["from"], "to": rec["to"]}))


_HIDDEN = (STAGE, DEFERRED, OUTCOME)  # timers shown by what they do (stage, deferred trigger, outcome rows)


def _timer_name(rule) -> str:
    return rule if isinstance(rule, str) else rule.name


class Tracer(Engine):
    """The engine, noting what it does for the customers in ``who``."""

    def __init__(self, config, who: set):
        self.trace: list = []
        self.who = who
        super().__init__(config, _Sink(who, self.trace))
        # a multi-step journey's instance is a timer that parks at a due time that never comes (nor
        # formats as a time) and moves inside the journey: no timer rows for it
        self.hidden = set(_HIDDEN) | {n for n, j in getattr(config, "journeys", {}).items() if j.multi}

    def _note(self, ts: int, what: str, text: str, extra: dict | None = None) -> None:
        self.trace.append((format_time(ts), what, text, extra or {}))

    def apply(self, ev) -> None:
        key = ev.cid if ev.cid is not None else (self.aliases.get(ev.anon) or "anon:" + ev.anon)
        before = self.stats.duplicates
        at = len(self.trace)
        self.trace.append(None)  # the event's row comes before what it caused
        try:
            super().apply(ev)
        except Exception:
            del self.trace[at]
            raise
        mine = key in self.who or (ev.anon is not None and self.aliases.get(ev.anon) in self.who)
        if not mine:
            del self.trace[at]
            return
        st = self.states.get(self.aliases.get(ev.anon, key) if ev.cid is None else key)
        if self.stats.duplicates != before:
            self.trace[at] = (format_time(ev.ts), "duplicate", f"{ev.type} (id {ev.id}) seen before: counted once",
                              {"type": ev.type, "id": ev.id})
            return
        health = self.relationship(st, ev.ts)["health"] if st is not None and st.erased is None else None
        self.trace[at] = (format_time(ev.ts), "event", f"{ev.type} ({ev.touch} touch point), id {ev.id}"
                          + (f"; health {health}" if health is not None else ""),
                          {"type": ev.type, "id": ev.id, "touch": ev.touch, "health": health})

    def set_timer(self, st, rule, key, due, data) -> None:
        name = _timer_name(rule)
        if self.key in self.who and name not in self.hidden:
            new = f"{name}|{key}" not in st.timers
            self._note(self._now(st), "timer", f"{name} {'set' if new else 'moved'}: due {format_time(due)}"
                       + (f" (instance {key})" if key else ""), {"rule": name, "key": key, "due": format_time(due)})
        super().set_timer(st, rule, key, due, data)

    def cancel_timer(self, st, rule, key):
        t = super().cancel_timer(st, rule, key)
        name = _timer_name(rule)
        if t is not None and self.key in self.who and name not in self.hidden:
            self._note(self._now(st), "timer", f"{name} cancelled (due {format_time(t[0])})"
                       + (f", instance {key}" if key else ""), {"rule": name, "key": key})
        return t

    def _run_timers(self, st, upto: int) -> None:
        if self.key in self.who:
            for tk, (due, _d) in sorted(st.timers.items(), key=lambda kv: kv[1][0]):
                name = tk.split("|", 1)[0]
                if due <= upto and name not in self.hidden:
                    self._note(due, "timer", f"{name} due ({tk.split('|', 1)[1] or 'customer'})", {"rule": name})
        super()._run_timers(st, upto)

    @staticmethod
    def _now(st) -> int:
        return st.last_ts or 0


def explain(customer: str, paths, config, until: int | None = None) -> list[dict]:
    """The timeline of one customer, in event-time order."""
    eng = Tracer(config, {customer})
    reader = Reader(paths, None, config.engine.max_record_bytes, keep=config.keep_props)
    eng.on_timer_error = lambda *_: None
    with no_cyclic_gc():
        drive(eng, reader.events(), until, on_error=lambda *_: None)
    rows = [{"time": t, "what": w, "text": x, **extra} for t, w, x, extra in eng.trace]
    # by event time (not by the text: 11:00:00.001Z sorts before 11:00:00Z); stable: within a time, in the
    # order the engine acted
    rows.sort(key=lambda r: parse_time(r["time"]))
    return rows


def cmd_explain(a, config) -> int:
    from ..io.logs import LogError

    try:
        rows = explain(a.customer, a.paths, config, a.until)
    except (FileNotFoundError, LogError) as e:
        print(f"journey explain: {e}", file=sys.stderr)
        return 2 if isinstance(e, FileNotFoundError) else 1
    out = sys.stdout
    if a.json:
        out.buffer.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    if not rows:
        print(f"no events of customer {a.customer!r} in the log", file=sys.stderr)
        return 1
    try:
        for r in rows:
            print(f"{r['time']:<25} {r['what']:<10} {r['text']}")
    except BrokenPipeError:  # piped to head
        sys.stderr.close()
    return 0
