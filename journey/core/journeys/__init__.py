"""Journeys: rules that CRM and marketing-operations users write in the rule file
(``[journeys.NAME]``, domain.md section 6), run on the same machinery as the
built-in rules: event time, timers in customer state, the contact policy,
deterministic ids, audit records.

A journey is compiled once, at load, into a :class:`Journey` (a ``Rule``): its
CEL conditions and templates are compiled then, and it listens only to its own
event types (the engine indexes rules by event type). Instances live in
customer state: an absence or sequence instance is a timer (``name|key``) whose
data holds the entry event; count entries and the last start per key are in
``occ[name]``. Bounded: at most 20 open instances per customer and journey (the
oldest is dropped, audited ``instance_limit``), at most ``MAX_KEYS`` remembered
starts, and of an entry event only the props the journey's expressions name.

CEL (the ``common-expression-language`` package): props are JSON values in CEL's
JSON mapping (numbers are doubles); customer counts are ints; times are
timestamps. A condition that fails at run time counts as false and is counted
(``Stats.condition_errors``), never fatal.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from .. import health, policy
from ..catalog import TYPES
from ..celfast import Fallback, compile_fast
from ..params import Param, section, suggest
from ..rules.base import PRIORITIES, RECOGNITION, RECOVERY, Rule
from ..timeutil import format_time

MAX_OPEN = 20        # open instances per customer and journey
MAX_KEYS = 200       # starts remembered per customer and journey (for reenter / enter once)
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_PROP_REF = re.compile(r"\b(?:event|entry|then)\.props\.([A-Za-z_][A-Za-z0-9_]*)|"
                       r"\b(?:event|entry|then)\.props\[\s*['\"]([^'\"]+)['\"]\s*\]")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

SETTINGS = {
    "kind": Param("text", "", "recovery or recognition (required)", choices=(RECOVERY, RECOGNITION)),
    "transactional": Param("bool", False, "a service message: no caps, no quiet hours (consent still checked)"),
    "entry": Param("strs", [], "the event type(s) that start an instance (required)"),
    "if": Param("text", "", "CEL condition on the entry event"),
    "key": Param("text", "", "the prop that names an instance (one per customer without it)"),
    "wait": Param("duration", "0s", "absence: fire this long after entry unless an exit event came"),
    "exit": Param("strs", [], "absence: event types that end the instance unfired"),
    "exit_if": Param("text", "", "absence: CEL condition on the exit event"),
    "then": Param("strs", [], "sequence: the event type(s) that complete it"),
    "then_if": Param("text", "", "sequence: CEL condition on the then event"),
    "within": Param("duration", "0s", "sequence and count: the window"),
    "count": Param("int", 0, "count: entries within the window that fire it (at least 2)"),
    "reenter": Param("duration", "0s", "a new instance may start this long after the previous one started "
                                       "(without it, each customer and key enters once)"),
    "when": Param("text", "", "CEL condition checked when the journey is about to fire"),
    "channel": Param("str", "email", "the channel the trigger asks for"),
    "priority": Param("str", "normal", "priority carried by the trigger", choices=PRIORITIES),
    "offer": Param("table", {}, "offer carried by the trigger (string values are templates)"),
    "reason": Param("text", "", "the trigger's reason (a template)"),
}
_STRS = ("entry", "exit", "then")  # a type or a list of types


class Compiled:
    """One CEL expression, compiled at load."""

    __slots__ = ("source", "program", "fast", "needs", "customer", "fields", "props")

    def __init__(self, source: str, where: str, problems: list):
        import cel

        self.source = source
        # what the expression names, per variable: only that is converted for CEL (each value
        # handed to CEL costs about a microsecond). For event, entry and then: the fields
        # (type, time) and the props named, or None for all props when it uses them whole;
        # for customer: the fields named, or None for all
        self.needs = {}
        for var in ("event", "entry", "then"):
            if not re.search(rf"\b{var}\b", source):
                continue
            fields = {f for f in ("type", "time") if re.search(rf"\b{var}\.{f}\b", source)}
            named = {a or b for a, b in re.findall(rf"\b{var}\.props\.([A-Za-z_][A-Za-z0-9_]*)|"
                                                    rf"\b{var}\.props\[\s*['\"]([^'\"]+)['\"]\s*\]", source)}
            whole = (re.search(rf"\b{var}\.props\b(?!\.[A-Za-z_]|\[\s*['\"])", source) is not None
                     or re.search(rf"\b{var}\b(?!\.)", source) is not None)
            self.needs[var] = (fields, None if whole else named)
        self.customer = "customer" in source  # the customer snapshot is built only when named
        if self.customer:
            whole_c = re.search(r"\bcustomer\b(?!\.)", source) is not None
            self.needs["customer"] = None if whole_c else set(re.findall(r"\bcustomer\.([A-Za-z_]\w*)", source))
        ev = self.needs.get("event")
        self.fields, self.props = (ev if ev is not None else (set(), set()))
        self.program = None
        self.fast = None
        try:
            self.program = cel.compile(source)
        except Exception as e:  # the library's message carries the position
            problems.append(f"{where}: CEL does not parse: {_first_lines(str(e))}")
        else:
            self.fast = compile_fast(source)  # simple expressions skip the library where CEL's answer is plain

    def run(self, ctx: dict):
        return self.program.execute(ctx)

    def evaluate(self, sources: dict):
        """CEL's value of the expression on ``sources`` (see :meth:`context`); raises where
        CEL raises."""
        if self.fast is not None:
            try:
                return self.fast(sources)
            except Fallback:
                pass
        return self.program.execute(self.context(sources))

    def context(self, sources: dict) -> dict:
        """The variables this expression names, from ``sources``: ``event``/``entry``/``then``
        as ``(type, time ms, props)``, ``customer`` as a dict; only what it names."""
        ctx = {}
        for var, need in self.needs.items():
            src = sources.get(var)
            if src is None:
                continue
            if var == "customer":
                ctx[var] = src if need is None else {k: src[k] for k in need if k in src}
                continue
            typ, ts, props = src
            fields, names = need
            out = {"props": _cel_value(props) if names is None else
                   {k: _cel_value(props[k]) for k in names if k in props}}
            if "type" in fields or names is None:
                out["type"] = typ
            if "time" in fields or names is None:
                out["time"] = _ts(ts)
            ctx[var] = out
        return ctx


def _first_lines(msg: str) -> str:
    return " ".join(line.strip() for line in msg.splitlines()[:3] if line.strip())


def _template(text: str, where: str, problems: list) -> list | None:
    """``"viewed {entry.props.product_id}"`` -> parts: str, or ("cel", Compiled), or ("lit", name)."""
    parts, i, n = [], 0, len(text)
    buf = []
    while i < n:
        c = text[i]
        if c == "{":
            j = text.find("}", i + 1)
            if j < 0:
                problems.append(f"{where}: a brace at position {i + 1} does not close")
                return None
            expr = text[i + 1:j].strip()
            if not expr:
                problems.append(f"{where}: an empty {{}} at position {i + 1}")
                return None
            if buf:
                parts.append("".join(buf))
                buf = []
            if expr in ("wait", "within"):
                parts.append(("lit", expr))
            else:
                parts.append(("cel", Compiled(expr, f"{where} (position {i + 1})", problems)))
            i = j + 1
        elif c == "}":
            problems.append(f"{where}: a closing brace at position {i + 1} without an opening one")
            return None
        else:
            buf.append(c)
            i += 1
    if buf:
        parts.append("".join(buf))
    return parts


def _cel_value(v):
    """A JSON value in CEL's JSON mapping: numbers are doubles."""
    if type(v) is int:
        return float(v)
    if type(v) is dict:
        return {k: _cel_value(x) for k, x in v.items() if type(k) is str}
    if type(v) is list:
        return [_cel_value(x) for x in v]
    return v


def _ts(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _show(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, datetime):
        return format_time(int((v - _EPOCH).total_seconds() * 1000))
    return str(v)


def customer_snapshot(eng, st, now: int) -> dict:
    """``customer`` in CEL: the relationship as the conditions see it."""
    tiers = eng.cfg.rules["spend_tier"].tiers
    tier = ""
    for n, threshold in tiers.items():
        if st.spend / 100 >= threshold:
            tier = n
    c = {"stage": st.stage, "health": float(health.score(st.hdev, st.hts, now, eng.cfg.health.half_life)),
         "orders": st.orders, "net_spend": st.spend / 100, "tier": tier,
         "open_tickets": len(policy.open_tickets(st, now, eng.cfg.policy.open_ticket_max_age)),
         "timezone": st.tz or eng.cfg.policy.default_timezone}
    if st.last_order is not None:
        c["last_order"] = _ts(st.last_order)
    if eng.clv is not None and st.clv is not None:
        pa, _ep, value = eng.clv.value(st, now)
        c["p_alive"] = float(pa)
        if value is not None:
            c["clv"] = float(value)
    return c


class Journey(Rule):
    """One ``[journeys.NAME]`` table, compiled."""

    def __init__(self, name: str, spec: dict, problems: list, warnings: list):
        self.name = name
        where = f"journeys.{name}"
        given = dict(spec) if isinstance(spec, dict) else spec
        if isinstance(given, dict):
            for k in _STRS:  # a type or a list of types
                if isinstance(given.get(k), str):
                    given[k] = [given[k]]
        before = len(problems)
        p = section(SETTINGS, given, where, problems)
        self.p = p
        if isinstance(given, dict):
            if "kind" not in given:
                problems.append(f"{where}.kind: missing (recovery or recognition)")
            if not given.get("entry"):
                problems.append(f"{where}.entry: missing (the event type, or types, that start it)")
        self.kind = p.kind or RECOVERY
        # reenter: None when not written (each customer and key enters once); a written duration,
        # 0s included, lets a new instance start that long after the previous one started
        self.reenter = p.reenter if isinstance(given, dict) and "reenter" in given else None
        self.transactional = p.transactional
        self.default_priority = p.priority
        self.default_offer = p.offer
        shape = self._shape_of(given if isinstance(given, dict) else {})
        self.summary = f"user journey ({shape})"
        self.shape = shape
        if shape == "several":
            problems.append(f"{where}: more than one shape: use wait/exit (absence), then/within (sequence) "
                            "or count/within (count), or none of them (immediate)")
        if shape == "within":
            problems.append(f"{where}.within: a window needs then (a sequence) or count (a count)")
        if shape == "absence" and p.wait <= 0:
            problems.append(f"{where}.wait: must be longer than 0s")
        if shape == "absence" and not p.exit:
            problems.append(f"{where}.exit: an absence journey needs the event type(s) that end it")
        if shape in ("sequence", "count") and p.within <= 0:
            problems.append(f"{where}.within: a {shape} journey needs a window longer than 0s")
        if shape == "count" and p.count < 2:
            problems.append(f"{where}.count: must be at least 2, got {p.count}")
        if shape != "absence" and (given.get("exit_if") if isinstance(given, dict) else None):
            problems.append(f"{where}.exit_if: only for an absence journey (wait/exit)")
        if shape != "sequence" and (given.get("then_if") if isinstance(given, dict) else None):
            problems.append(f"{where}.then_if: only for a sequence journey (then/within)")
        for setting in _STRS:
            for t in getattr(p, setting):
                if t not in TYPES:
                    warnings.append(f"{where}.{setting}: {t!r} is not a known event type{suggest(t, TYPES)} "
                                    "(unknown types are legal input, so this is only a warning)")
        cond_if = getattr(p, "if")
        self.cond_if = Compiled(cond_if, f"{where}.if", problems) if cond_if else None
        self.cond_exit = Compiled(p.exit_if, f"{where}.exit_if", problems) if p.exit_if else None
        self.cond_then = Compiled(p.then_if, f"{where}.then_if", problems) if p.then_if else None
        self.cond_when = Compiled(p.when, f"{where}.when", problems) if p.when else None
        reason = p.reason or self._default_reason()
        self.reason_t = _template(reason, f"{where}.reason", problems)
        self.offer_t = {}
        for k, v in p.offer.items():
            if isinstance(v, str):
                self.offer_t[k] = _template(v, f"{where}.offer.{k}", problems)
        # the props an instance keeps of its entry (and then) event: only those the expressions name
        texts = [cond_if, p.when, reason] + [v for v in p.offer.values() if isinstance(v, str)]
        self.keep = sorted({a or b for t in texts for a, b in _PROP_REF.findall(t or "")})
        self.wants_customer = (self.cond_when is not None and self.cond_when.customer) or any(
            isinstance(part, tuple) and part[0] == "cel" and part[1].customer
            for parts in [self.reason_t or [], *[t or [] for t in self.offer_t.values()]] for part in parts)
        self.raw_wait = spec.get("wait") if isinstance(spec, dict) else None
        self.raw_within = spec.get("within") if isinstance(spec, dict) else None
        self.events = tuple(dict.fromkeys([*p.entry, *p.exit, *p.then]))
        self.entry_types = frozenset(p.entry)
        self.exit_types = frozenset(p.exit)
        self.then_types = frozenset(p.then)
        self.ok = len(problems) == before

    @staticmethod
    def _shape_of(given: dict) -> str:
        shapes = [s for s, keys in (("absence", ("wait", "exit")), ("sequence", ("then",)), ("count", ("count",)))
                  if any(k in given for k in keys)]
        if len(shapes) > 1:
            return "several"
        if not shapes and "within" in given:
            return "within"  # within alone names no shape
        return shapes[0] if shapes else "immediate"

    def _default_reason(self) -> str:
        return {"immediate": "{event.type} at {event.time}",
                "absence": "{event.type} at {event.time}, then nothing within {wait}",
                "sequence": "{event.type}, then {then.type} within {within}",
                "count": "{event.type} reached the count within {within}"}.get(self.shape, "journey")

    def all_params(self):  # journeys are configured by their own table, not [rules]
        return {}

    # -- CEL context --------------------------------------------------------------------
    def _ctx(self, eng, st, ev, cond: Compiled) -> dict:
        """The sources of a condition on the event being applied (the customer only if named)."""
        props = (ev.props if ev.props is not None else ev.f) or {}
        return {"event": (ev.type, ev.ts, props),
                "customer": self._customer(eng, st, ev.ts) if cond.customer else None}

    def _kept(self, ev) -> dict:
        props = ev.props if ev.props is not None else ev.f
        if not props:
            return {}
        return {k: props[k] for k in self.keep if k in props}

    def _customer(self, eng, st, now: int) -> dict:
        return customer_snapshot(eng, st, now)

    def _true(self, eng, cond: Compiled, sources: dict) -> bool:
        try:
            return cond.evaluate(sources) is True
        except Exception:  # a missing prop, a type error: false, and counted
            eng.stats.condition_errors[self.name] += 1
            return False

    def _render(self, eng, parts, sources: dict) -> str:
        out = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
            elif part[0] == "lit":
                raw = self.raw_wait if part[1] == "wait" else self.raw_within
                out.append(str(raw) if raw is not None else "")
            else:
                try:
                    out.append(_show(part[1].evaluate(sources)))
                except Exception:
                    eng.stats.condition_errors[self.name] += 1
                    out.append("?")
        return "".join(out)

    # -- instances -------------------------------------------------------------------------
    def _key(self, ev) -> str | None:
        """The instance key of an event (None: it does not carry the key prop)."""
        if not self.p.key:
            return ""
        props = ev.props if ev.props is not None else ev.f
        v = (props or {}).get(self.p.key)
        if v is None or isinstance(v, (dict, list)):
            return None
        return _show(v)

    def _book(self, st) -> dict:
        b = st.occ.get(self.name)
        if b is None:
            b = st.occ[self.name] = {"s": {}}
        return b

    def _may_start(self, st, key: str, ts: int) -> bool:
        if st.timers.get(f"{self.name}|{key}") is not None:
            return False  # an instance of this key is open
        last = self._book(st)["s"].get(key)
        if last is None:
            return True
        return self.reenter is not None and ts - last >= self.reenter

    def _started(self, eng, st, key: str, ts: int) -> None:
        starts = self._book(st)["s"]
        starts.pop(key, None)
        starts[key] = ts
        if len(starts) > MAX_KEYS:
            del starts[next(iter(starts))]

    def _open(self, eng, st, key: str, due: int, data) -> None:
        prefix = self.name + "|"
        open_ = [(v[1]["s"], k) for k, v in st.timers.items() if k.startswith(prefix)]
        if len(open_) >= MAX_OPEN:
            _s, oldest = min(open_)
            t = st.timers.pop(oldest)
            d = t[1]
            eng.audit_occasion(st, self, f"{d['k']}:{d['e']}", d["s"], "instance_limit",
                               f"more than {MAX_OPEN} open instances: the oldest is dropped", [d["e"]])
        eng.set_timer(st, self, key, due, data)

    def on_event(self, eng, st, ev, p):
        t = ev.type
        if t in self.exit_types:
            self._exit(eng, st, ev)
        if t in self.then_types:
            self._then(eng, st, ev)
        if t in self.entry_types:
            self._entry(eng, st, ev)

    def _entry(self, eng, st, ev) -> None:
        key = self._key(ev)
        if key is None:
            return  # an entry without the key prop names no instance
        if self.cond_if is not None:
            ctx = self._ctx(eng, st, ev, self.cond_if)
            if not self._true(eng, self.cond_if, ctx):
                return
        shape = self.shape
        if shape == "count":
            self._count(eng, st, ev, key)
            return
        if not self._may_start(st, key, ev.ts):
            return
        self._started(eng, st, key, ev.ts)
        entry = [ev.type, ev.ts, self._kept(ev)]
        if shape == "immediate":
            self._fire(eng, st, key, ev.id, ev.ts, entry, None, [ev.id])
        elif shape == "absence":
            self._open(eng, st, key, ev.ts + self.p.wait, {"s": ev.ts, "e": ev.id, "k": key, "n": entry})
        else:  # sequence: ends unfired at entry + within
            self._open(eng, st, key, ev.ts + self.p.within, {"s": ev.ts, "e": ev.id, "k": key, "n": entry})

    def _count(self, eng, st, ev, key: str) -> None:
        b = self._book(st)
        last = b["s"].get(key)
        if last is not None and (self.reenter is None or ev.ts - last < self.reenter):
            return
        counts = b.setdefault("c", {})
        seen = [x for x in counts.get(key, []) if x[0] >= ev.ts - self.p.within]
        seen.append([ev.ts, ev.id])
        seen = seen[-(self.p.count - 1):] if len(seen) < self.p.count else seen
        if len(seen) >= self.p.count:
            counts.pop(key, None)  # entries up to it are used up
            self._started(eng, st, key, ev.ts)
            self._fire(eng, st, key, ev.id, ev.ts, [ev.type, ev.ts, self._kept(ev)], None, [x[1] for x in seen])
            return
        counts[key] = seen
        if len(counts) > MAX_KEYS:
            del counts[next(iter(counts))]

    def _matching(self, st, ev):
        """Open instances an exit or then event counts for (by its key prop, else all)."""
        prefix = self.name + "|"
        key = self._key(ev) if self.p.key else ""
        if self.p.key and key is not None:
            tk = prefix + key
            return [tk] if tk in st.timers else []
        return [k for k in st.timers if k.startswith(prefix)]

    def _exit(self, eng, st, ev) -> None:
        if self.shape != "absence":
            return
        for tk in self._matching(st, ev):
            due, data = st.timers[tk]
            if not data["s"] <= ev.ts <= due:
                continue
            if self.cond_exit is not None:
                ctx = self._ctx(eng, st, ev, self.cond_exit)
                if not self._true(eng, self.cond_exit, ctx):
                    continue
            eng.cancel_timer(st, self, tk[len(self.name) + 1:])

    def _then(self, eng, st, ev) -> None:
        if self.shape != "sequence":
            return
        for tk in self._matching(st, ev):
            due, data = st.timers[tk]
            if not data["s"] < ev.ts <= due:
                continue
            if self.cond_then is not None:
                ctx = self._ctx(eng, st, ev, self.cond_then)
                if not self._true(eng, self.cond_then, ctx):
                    continue
            eng.cancel_timer(st, self, tk[len(self.name) + 1:])
            self._fire(eng, st, data["k"], data["e"], ev.ts, data["n"], [ev.type, ev.ts, self._kept(ev)],
                       [data["e"], ev.id])

    def on_timer(self, eng, st, key, data, due, p):
        if self.shape == "absence":
            self._fire(eng, st, data["k"], data["e"], due, data["n"], None, [data["e"]])
        # a sequence instance whose window ended: it ends unfired

    def _fire(self, eng, st, key: str, eid: str, now: int, entry, then, evidence) -> None:
        occasion = f"{key}:{eid}" if self.p.key else eid
        sources = {"event": entry, "entry": entry, "then": then}
        if self.wants_customer:
            sources["customer"] = self._customer(eng, st, now)
        reason = self._render(eng, self.reason_t, sources)
        if self.cond_when is not None and not self._true(eng, self.cond_when, sources):
            eng.audit_occasion(st, self, occasion, now, "condition_not_met",
                               f"when ({self.cond_when.source}) was false", evidence, why=reason)
            return
        offer = dict(self.p.offer)
        for k, parts in self.offer_t.items():
            offer[k] = self._render(eng, parts, sources)
        eng.fire(st, self, occasion, now, reason, evidence, offer=offer)


def parse_journeys(given, rule_names, problems: list, warnings: list) -> dict[str, Journey]:
    """The ``[journeys]`` section: name -> compiled journey (problems and warnings listed)."""
    if given is None:
        return {}
    if not isinstance(given, dict):
        problems.append("journeys: expected a table of journey tables")
        return {}
    out = {}
    for name, spec in given.items():
        if name in rule_names:
            problems.append(f"journeys.{name}: a built-in rule has this name; choose another")
            continue
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            problems.append(f"journeys.{name}: a name is lower-case letters, digits and _, starting with a letter")
            continue
        if not isinstance(spec, dict):
            problems.append(f"journeys.{name}: expected a table")
            continue
        out[name] = Journey(name, spec, problems, warnings)
    return out

