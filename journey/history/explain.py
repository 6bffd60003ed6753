"""``journey explain CUSTOMER PATH...``: why did (or didn't) this customer get a message?

A replay of the log (the same engine and timeline as ``journey replay``) that
records, for one customer, everything the engine did: events applied (time,
type, touch point), timers set, fired and cancelled (a journey instance
starting, exiting, expiring), triggers sent, deferred and held back with their
reasons, and stage changes, as one timeline in event-time order. Events of the
customer's anonymous visits are included once they are linked.

A multi-step journey's instance (domain.md section 8) also has its path: each
step it reached, with the time and what happened there (the wait, the awaited
event that arrived or the timeout, the ``if`` and where it led, the send that
went out, was deferred or held back, the exit, the end, the step limit). The
rows of an instance carry ``instance`` (its occasion), ``step`` and
``step_text`` (the row as its path says it); ``instance_paths(rows)`` groups
them.
"""

from __future__ import annotations

import re
import sys

import orjson

from ..core.engine import DEFERRED, STAGE, Engine
from ..core.experiments import OUTCOME
from ..core.journeys.steps import END
from ..core.timeline import drive
from ..core.timeutil import format_duration, format_time, parse_time
from ..io.logs import Reader
from .replay import no_cyclic_gc


class _Paths:
    """What the steps of the customer's multi-step journey instances did, in words."""

    def __init__(self, config):
        journeys = getattr(config, "journeys", {})
        self.order = {n: j.steps for n, j in journeys.items() if j.multi}  # each journey's steps, in order
        self.steps = {n: {s.name: s for s in steps} for n, steps in self.order.items()}  # by name
        self.event = None  # the event being applied (None while timers fire)
        self.at: dict = {}  # (journey, instance) -> the step it is at (for a row that names none)

    def target(self, journey: str, i: int) -> str:
        return "end" if i == END else self.order[journey][i].name

    def hook(self, journey: str, instance: str, step: str, what: str, now: int) -> str:
        """An ``Engine.on_step`` call, in words."""
        self.at[(journey, instance)] = step
        s = self.steps[journey][step]
        if what == "reached":
            if s.wait_for:
                where = f" where {s.where.source}" if s.where is not None else ""
                return (f"reached: waits for {' or '.join(sorted(s.wait_for))}{where} within "
                        f"{format_duration(s.within)}, until {format_time(now + s.within)}")
            if s.wait:
                return f"reached: waits {format_duration(s.wait)}, until {format_time(now + s.wait)}"
            return "reached"
        if what == "arrived":
            ev = self.event
            return f"{ev.type} arrived (id {ev.id}) -> {self.target(journey, s.next)}"
        if what == "timed_out":
            return (f"timed out: no {' or '.join(sorted(s.wait_for))} within {format_duration(s.within)} -> "
                    f"{self.target(journey, s.timeout)}")
        if what == "if_true":
            return f"if {s.cond.source}: true"
        if what == "if_false":
            return f"if {s.cond.source}: false -> {self.target(journey, s.else_)}"
        if what == "ended":
            return "ended"
        return what

    def trigger(self, rec: dict, extra: dict) -> None:
        d = rec["data"]
        if "step" not in d or d["rule"] not in self.steps:
            return
        late = f", deferred from {d['deferred_from']}" if "deferred_from" in d else ""
        arm = f", experiment {d['experiment']['name']} arm {d['experiment']['variant']}" if "experiment" in d else ""
        extra.update(instance=_instance_of(d["occasion"], d["step"]), step=d["step"],
                     step_text=f"sent ({d['channel']}{arm}{late}): trigger {rec['id']}")

    def audit(self, rec: dict, extra: dict) -> None:
        step, reason = rec.get("step"), rec["reason"]
        if rec["rule"] not in self.steps or (step is None and reason != "instance_limit"):
            return
        instance = _instance_of(rec["occasion"], step) if step else rec["occasion"]
        if step is None:  # the instance ended: the step limit, or more instances open than allowed
            step = self.at.get((rec["rule"], instance), "")
            text = "ended: " + rec["detail"].split("; ", 1)[-1]
        elif reason == "exited" and self.event is not None:
            text = f"exited: {self.event.type} (id {self.event.id}) ended the instance"
        elif reason == "exited":
            text = f"its send dropped (exited: the instance had ended): trigger {rec['trigger_id']}"
        elif rec.get("deferred_until"):
            text = f"deferred ({reason}) until {rec['deferred_until']}: trigger {rec['trigger_id']}"
        else:
            text = f"held back ({reason}): trigger {rec['trigger_id']}"
        extra.update(instance=instance, step=step, step_text=text)


def _instance_of(occasion: str, step: str) -> str:
    """A send's occasion is its instance's, ':', the step's name and, from the second visit, '#visit'."""
    base = re.sub(r"#\d+$", "", occasion)
    return base[:-len(step) - 1] if base.endswith(":" + step) else occasion


class _Sink:
    wants_transitions = True

    def __init__(self, who: set, out: list, paths: _Paths):
        self.who, self.out, self.paths = who, out, paths

    def trigger(self, rec: dict) -> None:
        if rec["subject"] in self.who:
            d = rec["data"]
            arm = f", experiment {d['experiment']['name']} arm {d['experiment']['variant']}" if "experiment" in d else ""
            extra = {"trigger_id": rec["id"], "rule": d["rule"], "reason": d["reason"]}
            self.paths.trigger(rec, extra)
            self.out.append((rec["time"], "trigger",
                             f"{d['rule']} sent ({d['kind']}, {d['channel']}{arm}): {d['reason']}", extra))

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
            extra = {"trigger_id": rec["trigger_id"], "rule": rec["rule"], "reason": rec["reason"]}
            self.paths.audit(rec, extra)
            self.out.append((rec["time"], what, f"{rec['rule']} {what} ({rec['reason']}){until}: {rec['detail']}",
                             extra))

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
        self.paths = _Paths(config)
        super().__init__(config, _Sink(who, self.trace, self.paths))
        if self.paths.steps:
            self.on_step = self._on_step
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
        self.paths.event = ev
        try:
            super().apply(ev)
        except Exception as e:
            # replay dead-letters it (unprocessable) and goes on: the timeline says so, never drops it silently
            if key in self.who:
                self.trace[at] = (format_time(ev.ts), "failed", f"{ev.type} (id {ev.id}) could not be applied "
                                  f"({type(e).__name__}): dead-lettered as unprocessable, its effects left out",
                                  {"type": ev.type, "id": ev.id, "error": type(e).__name__})
            else:
                del self.trace[at]
            raise
        finally:
            self.paths.event = None
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
        extra = {"type": ev.type, "id": ev.id, "touch": ev.touch, "health": health}
        answers = ev.f.get("trigger_id") if ev.type.startswith("message.") else None
        if answers:  # an engagement event: the trigger it answers (and its rule, when this run wrote it)
            rule = next((r[3].get("rule") for r in self.trace if r is not None and r[1] == "trigger"
                         and r[3].get("trigger_id") == answers), None)
            extra["answers"] = answers
        self.trace[at] = (format_time(ev.ts), "event", f"{ev.type} ({ev.touch} touch point), id {ev.id}"
                          + (f"; answers trigger {answers}" + (f" ({rule})" if rule else "") if answers else "")
                          + (f"; health {health}" if health is not None else ""), extra)

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

    def _on_step(self, journey: str, instance: str, step: str, what: str, now: int) -> None:
        if self.key not in self.who or what == "exited":  # exited: its audit row says it, with the event
            return
        text = self.paths.hook(journey, instance, step, what, now)
        self._note(now, "step", f"{journey} instance {instance} step {step}: {text}",
                   {"rule": journey, "instance": instance, "step": step, "happened": what, "step_text": text})

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


def instance_paths(rows: list[dict]) -> list[dict]:
    """The multi-step instances' paths from the timeline: ``{rule, instance, rows}`` in the order they
    started, each with its rows in event-time order."""
    out: dict = {}
    for r in rows:
        if "instance" in r:
            out.setdefault((r["rule"], r["instance"]), {"rule": r["rule"], "instance": r["instance"],
                                                        "rows": []})["rows"].append(r)
    return list(out.values())


def format_paths(rows: list[dict]) -> list[str]:
    lines = []
    for p in instance_paths(rows):
        width = max(10, *(len(r["step"]) for r in p["rows"]))
        lines += ["", f"path of {p['rule']} instance {p['instance']}:"]
        lines += [f"  {r['time']:<25} {r['step']:<{width}} {r['step_text']}" for r in p["rows"]]
    return lines


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
        for line in format_paths(rows):
            print(line)
    except BrokenPipeError:  # piped to head
        sys.stderr.close()
    return 0
