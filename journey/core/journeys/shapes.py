"""A journey of one shape (domain.md section 6): immediate, absence, sequence or count, compiled
from its table, listening only to its own event types, firing through the engine's contact
policy."""

from __future__ import annotations

from ..catalog import type_problem
from ..params import section
from ..rules.base import RECOVERY, Rule
from .conditions import _PROP_REF, Compiled, Scope, _show, _template, customer_snapshot
from .instances import MAX_KEYS, Instances
from .settings import _STRS, SETTINGS


class Journey(Instances, Rule):
    """One ``[journeys.NAME]`` table, compiled."""

    def __init__(self, name: str, spec: dict, problems: list, warnings: list, custom=frozenset(), clv: bool = True):
        """``custom``: the event types of the rule file's own (``[events] custom``); ``clv``: a CLV model
        is configured (``customer.p_alive`` and ``customer.clv`` are set)."""
        self.name = name
        self.custom = custom
        self.clv = clv
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
        steps = self.multi = isinstance(given, dict) and "steps" in given
        if steps:  # section 8: the steps replace the shape; count/within may describe the entry
            shape = self.shape = "count" if "count" in given else "immediate"
            for k in ("wait", "then", "then_if"):
                if k in given:
                    problems.append(f"{where}.{k}: a shape setting beside steps: a multi-step journey waits in "
                                    "its steps (wait, wait_for)")
            if "within" in given and "count" not in given:
                problems.append(f"{where}.within: beside steps, only with count (the entry's window)")
            if given.get("exit_if") and not p.exit:
                problems.append(f"{where}.exit_if: needs exit (the event types that end an instance)")
        elif shape == "several":
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
        if not steps and shape != "absence" and (given.get("exit_if") if isinstance(given, dict) else None):
            problems.append(f"{where}.exit_if: only for an absence journey (wait/exit)")
        if shape != "sequence" and (given.get("then_if") if isinstance(given, dict) else None):
            problems.append(f"{where}.then_if: only for a sequence journey (then/within)")
        for setting in _STRS:
            for t in getattr(p, setting):
                why = type_problem(t, custom)
                if why:
                    problems.append(f"{where}.{setting}: {why}")
        # what each expression sees (domain.md section 6): a condition on an event sees it and the
        # customer; when and the templates see the entry (as event and entry), a sequence's then,
        # and the customer
        def on(types):
            return Scope({"event": list(types), "customer": None}, warnings, clv=clv)

        fire = {"event": list(p.entry), "entry": list(p.entry), "customer": None}
        if shape == "sequence":
            fire["then"] = list(p.then)
        self.fire_scope = Scope(fire, warnings, clv=clv)
        given_d = given if isinstance(given, dict) else {}
        # {wait} and {within} show the journey's own (a step's wait in its sends)
        self.literals = tuple(x for x in ("wait", "within") if x in given_d or (x == "wait" and steps))
        cond_if = getattr(p, "if")
        self.cond_if = Compiled(cond_if, f"{where}.if", problems, on(p.entry)) if cond_if else None
        self.cond_exit = Compiled(p.exit_if, f"{where}.exit_if", problems, on(p.exit)) if p.exit_if else None
        self.cond_then = Compiled(p.then_if, f"{where}.then_if", problems, on(p.then)) if p.then_if else None
        self.cond_when = Compiled(p.when, f"{where}.when", problems, self.fire_scope) if p.when else None
        reason = p.reason or self._default_reason()
        self.reason_t = _template(reason, f"{where}.reason", problems, self.fire_scope, self.literals)
        self.offer_t = {}
        for k, v in p.offer.items():
            if isinstance(v, str):
                self.offer_t[k] = _template(v, f"{where}.offer.{k}", problems, self.fire_scope, self.literals)
        # the props an instance keeps of its entry (and then) event: only those the expressions name
        texts = [cond_if, p.when, reason] + [v for v in p.offer.values() if isinstance(v, str)]
        if steps:
            texts += self._compile_steps(p.steps, where, problems, warnings)
        self.keep = sorted({a or b for t in texts for a, b in _PROP_REF.findall(t or "")})
        self.wants_customer = (self.cond_when is not None and self.cond_when.customer) or any(
            isinstance(part, tuple) and part[0] == "cel" and part[1].customer
            for parts in [self.reason_t or [], *[t or [] for t in self.offer_t.values()]] for part in parts)
        self.raw_wait = spec.get("wait") if isinstance(spec, dict) else None
        self.raw_within = spec.get("within") if isinstance(spec, dict) else None
        self.events = tuple(dict.fromkeys([*p.entry, *p.exit, *p.then, *self._awaited()]))
        self.entry_types = frozenset(p.entry)
        self.exit_types = frozenset(p.exit)
        self.then_types = frozenset(p.then)
        if steps:
            self._finish_compile()
        # the customer fields any expression of the journey names (None: one uses the customer whole)
        names: set | None = set()
        for c in self._compiled():
            need = c.needs.get("customer", set()) if c.customer else set()
            if need is None:
                names = None
                break
            names |= need
        self.customer_fields = names
        self.ok = len(problems) == before

    def _compiled(self):
        """Every compiled expression of the journey (conditions and template parts)."""
        for c in (self.cond_if, self.cond_exit, self.cond_then, self.cond_when):
            if c is not None:
                yield c
        for parts in [self.reason_t or [], *[t or [] for t in self.offer_t.values()]]:
            for part in parts:
                if isinstance(part, tuple) and part[0] == "cel":
                    yield part[1]

    def _compile_steps(self, steps: list, where: str, problems: list, warnings: list) -> list:
        """A multi-step journey's steps (``steps.StepJourney``); returns the texts of their expressions."""
        problems.append(f"{where}.steps: not expected here")
        return []

    def _awaited(self) -> tuple:
        """The event types the steps wait for (none without steps)."""
        return ()

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
                "customer": self._customer(eng, st, ev.ts, cond.needs["customer"]) if cond.customer else None}

    def _kept(self, ev) -> dict:
        props = ev.props if ev.props is not None else ev.f
        if not props:
            return {}
        return {k: props[k] for k in self.keep if k in props}

    def _customer(self, eng, st, now: int, fields="all") -> dict:
        """The customer snapshot: ``fields`` named (None: all), by default those any of the journey's
        expressions name."""
        return customer_snapshot(eng, st, now, self.customer_fields if fields == "all" else fields)

    def _true(self, eng, cond: Compiled, sources: dict) -> bool:
        try:
            return cond.evaluate(sources) is True
        except Exception:  # a missing prop, a type error: false, and counted
            eng.stats.condition_errors[self.name] += 1
            return False

    def _render(self, eng, parts, sources: dict, wait=None) -> str:
        """A template's text; ``wait``: what ``{wait}`` shows (a step's own wait), else the journey's."""
        out = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
            elif part[0] == "lit":
                raw = (wait if wait is not None else self.raw_wait) if part[1] == "wait" else self.raw_within
                out.append(str(raw) if raw is not None else "")
            else:
                try:
                    out.append(_show(part[1].evaluate(sources)))
                except Exception:
                    eng.stats.condition_errors[self.name] += 1
                    out.append("?")
        return "".join(out)

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
        if st.timers.get(f"{self.name}|{key}") is not None:
            return  # an instance of this key is open (a multi-step journey with a count entry)
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
