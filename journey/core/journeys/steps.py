"""Multi-step journeys (domain.md section 8): an instance walks named steps, on event time.

A step may ``wait`` (a duration after the previous step was done), then check ``if`` (else
jump to ``else``), then ``send`` (a trigger through the contact policy, ``data.step`` = its
name); or it ``wait_for``s an event ``within`` a window (``where`` on it), going to
``timeout`` when none comes. ``next`` names the step that follows (default: the next one;
``"end"`` ends the instance). The journey's ``exit`` ends an instance at any step.

An instance is one timer ``name|key`` in customer state, whose data says where it is:

* ``i`` the step, ``ph`` the phase (``w`` waiting the step's wait, ``f`` waiting for an
  event, ``d`` its send deferred by the policy: parked until the send goes out or is held
  back for good, when the engine calls :meth:`StepJourney.resolved`), ``r`` when the phase
  began, ``c`` the steps taken (at most :data:`MAX_STEPS`), ``v`` the visits of each step
  (a step reached again through a loop adds its visit number to the send's occasion),
  ``x`` set once the instance was exposed to its experiment (at its first send the policy
  lets out), ``o`` the occasion of a deferred send;
* and, as every journey instance, ``s``/``e``/``k``/``n``: the entry's time, id, key and the
  props of it the expressions name.

Every send's occasion is the instance's occasion (section 6) and the step's name (``#visit``
from the second visit), so trigger ids stay pure functions of the input.
"""

from __future__ import annotations

import re

from ..catalog import type_problem
from ..params import Param, section, suggest
from ..rules.base import PRIORITIES, SEND_TIMES
from .conditions import Compiled, Scope, _template
from .shapes import Journey

END = -1
PARK = (1 << 62) - 1    # the due time of a parked instance (waiting on a deferred send): never reached
MAX_STEPS = 50          # steps one instance takes at most
_STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_ .-]{0,63}")

STEP = {
    "name": Param("text", "", "the step's name (required, unique in the journey)"),
    "wait": Param("duration", "0s", "reach the step this long after the previous one was done"),
    "wait_for": Param("strs", [], "wait for one of these event types (with within)"),
    "within": Param("duration", "0s", "wait_for: how long to wait"),
    "where": Param("text", "", "wait_for: CEL condition on the awaited event"),
    "timeout": Param("text", "end", "wait_for: the step to go to when nothing came (or end)"),
    "if": Param("text", "", "CEL condition checked when the step is reached"),
    "else": Param("text", "end", "the step to go to when if is false (or end)"),
    "send": Param("table", {}, "a trigger: channel, priority, offer, reason (each optional)"),
    "next": Param("text", "", "the step that follows (default: the next one written; end ends the instance)"),
}
SEND = {
    "channel": Param("str", "email", "the channel (default: the journey's)"),
    "priority": Param("str", "normal", "the priority (default: the journey's)", choices=PRIORITIES),
    "offer": Param("table", {}, "the offer (default: the journey's; string values are templates)"),
    "reason": Param("text", "", "the reason (a template; default: the journey's)"),
    "send_time": Param("str", "now", "now or optimal (default: the journey's)", choices=SEND_TIMES),
    "send_within": Param("duration", "24h", "send_time optimal: how far past the due time (default: the journey's)"),
}


class Step:
    """One compiled step."""

    __slots__ = ("name", "wait", "raw_wait", "wait_for", "within", "where", "timeout", "cond", "else_",
                 "send", "next", "channel", "priority", "offer", "offer_t", "reason", "reason_t", "wants",
                 "send_time", "send_within")

    def __init__(self):
        self.wait = 0
        self.raw_wait = None
        self.wait_for = frozenset()
        self.within = 0
        self.where = self.cond = None
        self.timeout = self.else_ = self.next = END
        self.send = False
        self.channel = self.priority = None
        self.offer = None
        self.offer_t = {}
        self.reason = ""  # the send's reason as written (its own, else the journey's, else the default)
        self.reason_t = None
        self.wants = False
        self.send_time = self.send_within = None


class StepJourney(Journey):
    """A ``[journeys.NAME]`` table with ``steps``."""

    steps: list

    # -- compiling -------------------------------------------------------------------------
    def _compile_steps(self, given: list, where: str, problems: list, warnings: list) -> list:
        self.steps = []
        texts: list = []
        if not given:
            problems.append(f"{where}.steps: at least one step")
            return texts
        raw = []
        for i, spec in enumerate(given):
            at = f"{where}.steps[{i}]"
            spec = dict(spec)
            if isinstance(spec.get("wait_for"), str):
                spec["wait_for"] = [spec["wait_for"]]
            p = section(STEP, spec, at, problems)
            name = p.name.strip()
            if not name:
                problems.append(f"{at}.name: every step needs a name")
                name = f"#{i}"
            elif not _STEP_NAME.fullmatch(name):
                problems.append(f"{at}.name: {name[:40]!r}: a step name is letters, digits, '_', '-', '.' and "
                                "spaces, starting with a letter or digit (at most 64)")
            elif name == "end":
                problems.append(f"{at}.name: 'end' names the end of an instance; choose another name")
            raw.append((at, spec, p, name))
        names = [r[3] for r in raw]
        index = {}
        for i, n in enumerate(names):
            if n in index:
                problems.append(f"{raw[i][0]}.name: two steps are named {n!r}")
            else:
                index[n] = i

        def target(at: str, setting: str, value: str, default: int) -> int:
            value = (value or "").strip()
            if not value:
                return default
            if value == "end":
                return END
            if value not in index:
                problems.append(f"{at}.{setting}: no step is named {value!r}{suggest(value, index)} "
                                "(or use \"end\")")
                return END
            return index[value]

        for i, (at, spec, p, name) in enumerate(raw):
            s = Step()
            s.name = name
            has = {k for k in ("wait", "wait_for", "if", "send") if k in spec}
            if not has:
                problems.append(f"{at}: a step needs wait, wait_for, if or send")
            if "wait_for" in spec and has - {"wait_for"}:
                problems.append(f"{at}.wait_for: stands alone (a step with wait_for has no wait, if or send)")
            for k in ("within", "where", "timeout"):
                if k in spec and "wait_for" not in spec:
                    problems.append(f"{at}.{k}: only with wait_for")
            if "else" in spec and "if" not in spec:
                problems.append(f"{at}.else: only with if")
            if "wait" in spec and p.wait <= 0:
                problems.append(f"{at}.wait: must be longer than 0s")
            if "wait_for" in spec:
                if not p.wait_for:
                    problems.append(f"{at}.wait_for: name the event type(s) to wait for")
                if p.within <= 0:
                    problems.append(f"{at}.within: wait_for needs a window longer than 0s")
                for t in p.wait_for:
                    why = type_problem(t, self.custom)
                    if why:
                        problems.append(f"{at}.wait_for: {why}")
            s.wait, s.raw_wait = p.wait, spec.get("wait")
            s.wait_for, s.within = frozenset(p.wait_for), p.within
            if p.where:
                s.where = Compiled(p.where, f"{at}.where", problems,
                                   Scope({"event": list(p.wait_for), "customer": None}, warnings, clv=self.clv))
                texts.append(p.where)
            cond = getattr(p, "if")
            if cond:
                s.cond = Compiled(cond, f"{at}.if", problems, self.fire_scope)
                texts.append(cond)
            default_next = i + 1 if i + 1 < len(raw) else END
            s.next = target(at, "next", p.next, default_next)
            s.else_ = target(at, "else", getattr(p, "else"), END)
            s.timeout = target(at, "timeout", p.timeout, END)
            if "send" in spec:
                sp = section(SEND, p.send, f"{at}.send", problems)
                s.send = True
                s.channel = sp.channel if "channel" in p.send else None
                s.priority = sp.priority if "priority" in p.send else None
                s.offer = sp.offer if "offer" in p.send else None
                s.send_time = sp.send_time if "send_time" in p.send else None
                s.send_within = sp.send_within if "send_within" in p.send else None
                # {wait} in a step's own templates shows the step's wait
                own = tuple(x for x in ("wait", "within") if (x == "wait" and "wait" in spec) or
                            (x == "within" and "within" in self.literals))
                for k, v in (s.offer if s.offer is not None else {}).items():
                    if isinstance(v, str):
                        s.offer_t[k] = _template(v, f"{at}.send.offer.{k}", problems, self.fire_scope, own)
                        texts.append(v)
                if sp.reason:
                    s.reason = sp.reason
                    s.reason_t = _template(sp.reason, f"{at}.send.reason", problems, self.fire_scope, own)
                    texts.append(sp.reason)
                elif self.p.reason:
                    s.reason = self.p.reason
                elif _STEP_NAME.fullmatch(name):
                    s.reason = f"{{event.type}} at {{event.time}}, step {name}"
                    s.reason_t = _template(s.reason, at, problems)
            self.steps.append(s)
        if len(self.steps) == len(raw) and not any("no step is named" in x for x in problems):
            loop = _instant_loop(self.steps)
            if loop:
                problems.append(f"{where}.steps: {' -> '.join(loop)} is a loop with no wait or wait_for: an "
                                "instance would go round it at one instant")
        self.summary = f"user journey ({len(self.steps)} steps)"
        return texts

    def _finish_compile(self) -> None:
        """After the journey's own settings are compiled: which sends need the customer snapshot."""
        def named(parts) -> bool:
            return any(isinstance(part, tuple) and part[0] == "cel" and part[1].customer for part in parts or [])
        for s in self.steps:
            reason = s.reason_t if s.reason_t is not None else self.reason_t
            offers = s.offer_t if s.offer is not None else self.offer_t
            s.wants = s.send and ((self.cond_when is not None and self.cond_when.customer) or named(reason)
                                  or any(named(t) for t in offers.values()))

    def describe_steps(self, at: str) -> list[str]:
        """The steps in order, each with its settings in force (a send's defaults filled in from the
        journey, next, else and timeout named), one per line, for ``journey rules show``."""
        def target(i: int) -> str:
            return "end" if i == END else self.steps[i].name

        lines = []
        for i, s in enumerate(self.steps):
            shown: list = [("name", s.name)]
            if s.wait:
                shown.append(("wait", s.wait))
            if s.wait_for:
                shown += [("wait_for", sorted(s.wait_for)), ("within", s.within)]
                if s.where is not None:
                    shown.append(("where", s.where.source))
                shown.append(("timeout", target(s.timeout)))
            if s.cond is not None:
                shown += [("if", s.cond.source), ("else", target(s.else_))]
            lines += [f"{at}.steps[{i}].{k} = {STEP[k].show(v)}" for k, v in shown]
            if s.send:
                send = {"channel": s.channel if s.channel is not None else self.p.channel,
                        "priority": s.priority if s.priority is not None else self.p.priority,
                        "offer": s.offer if s.offer is not None else self.p.offer, "reason": s.reason}
                mode = s.send_time if s.send_time is not None else self.p.send_time
                if mode == "optimal":
                    send["send_time"] = mode
                    send["send_within"] = s.send_within if s.send_within is not None else self.p.send_within
                lines += [f"{at}.steps[{i}].send.{k} = {SEND[k].show(v)}" for k, v in send.items()]
            lines.append(f"{at}.steps[{i}].next = {STEP['next'].show(target(s.next))}")
        return lines

    def _compiled(self):
        yield from super()._compiled()
        for s in self.steps:
            for c in (s.where, s.cond):
                if c is not None:
                    yield c
            for parts in [s.reason_t or [], *[t or [] for t in s.offer_t.values()]]:
                for part in parts:
                    if isinstance(part, tuple) and part[0] == "cel":
                        yield part[1]

    def _awaited(self) -> tuple:
        return tuple(dict.fromkeys(t for s in self.steps for t in sorted(s.wait_for)))

    # -- events ----------------------------------------------------------------------------
    def on_event(self, eng, st, ev, p):
        t = ev.type
        if t in self.exit_types:
            self._exit(eng, st, ev)
        if t in self.awaited:
            self._arrived(eng, st, ev)
        if t in self.entry_types:
            self._entry(eng, st, ev)

    @property
    def awaited(self) -> frozenset:
        a = self.__dict__.get("_awaited_set")
        if a is None:
            a = self.__dict__["_awaited_set"] = frozenset(self._awaited())
        return a

    def _fire(self, eng, st, key: str, eid: str, now: int, entry, then, evidence) -> None:
        """The entry (or the entry that completed the count) starts an instance."""
        if st.timers.get(f"{self.name}|{key}") is not None:
            return  # one open instance per customer and key
        data = {"s": now, "e": eid, "k": key, "n": entry, "i": 0, "ph": "w", "r": now, "c": 0,
                "v": [0] * len(self.steps)}
        eng.stats.instances[(self.name, "entered")] += 1
        self._open(eng, st, key, PARK, data)
        self._go(eng, st, data, 0, now)

    def _exit(self, eng, st, ev) -> None:
        for tk in self._matching(st, ev):
            due, data = st.timers[tk]
            if ev.ts < data["s"]:
                continue
            if self.cond_exit is not None and not self._true(eng, self.cond_exit, self._ctx(eng, st, ev,
                                                                                           self.cond_exit)):
                continue
            st.timers.pop(tk)
            eng.timers_changed = True
            step = self._step_of(data)
            if step is None:
                continue  # an instance of an earlier rule file with fewer steps: ended quietly
            occasion = data.get("o") or self._occasion(data, step)
            if data["ph"] == "d":  # its send waits for the policy: it will not go out
                eng.cancel_timer(st, "_deferred", f"{self.name}|{occasion}")
            eng.audit_occasion(st, self, occasion, ev.ts, "exited",
                               f"{ev.type} ended the instance at step {step.name}", [data["e"], ev.id],
                               step=step.name)
            self._stat(eng, data, step, "exited", ev.ts)
            eng.stats.instances[(self.name, "exited")] += 1

    def _arrived(self, eng, st, ev) -> None:
        """An awaited event: the instances waiting for it go on."""
        for tk in self._matching(st, ev):
            entry = st.timers.get(tk)
            if entry is None:
                continue
            due, data = entry
            if data["ph"] != "f":
                continue
            step = self._step_of(data)
            if step is None:
                st.timers.pop(tk, None)  # an instance of an earlier rule file with fewer steps
                eng.timers_changed = True
                continue
            if ev.type not in step.wait_for or not data["r"] < ev.ts <= due:
                continue
            if step.where is not None and not self._true(eng, step.where, self._ctx(eng, st, ev, step.where)):
                continue
            self._tell(eng, data, step, "arrived", ev.ts)
            self._go(eng, st, data, step.next, ev.ts)

    def on_timer(self, eng, st, key, data, due, p):
        # the engine took the timer out: put it back while the instance goes on (_go ends it otherwise)
        tk = f"{self.name}|{key}"
        st.timers[tk] = [due, data]
        try:
            step = self._step_of(data)
            if step is None:
                st.timers.pop(tk, None)  # an instance of an earlier rule file with fewer steps
                eng.timers_changed = True
                return
            ph = data["ph"]
            if ph == "w":
                self._act(eng, st, data, step, due)
            elif ph == "f":
                self._tell(eng, data, step, "timed_out", due)
                self._go(eng, st, data, step.timeout, due)
        except Exception:
            # a step that fails ends its instance (the engine counts the error), as a failed timer is
            # dropped: left in place, due now, it would fail again and again
            st.timers.pop(tk, None)
            eng.timers_changed = True
            raise

    # -- the machine -------------------------------------------------------------------------
    def _go(self, eng, st, data: dict, target: int, now: int) -> None:
        """The previous step is done at ``now``: go to step ``target``."""
        tk = f"{self.name}|{data['k']}"
        if target == END:
            self._tell(eng, data, self.steps[data["i"]], "ended", now)
            st.timers.pop(tk, None)
            eng.timers_changed = True
            eng.stats.instances[(self.name, "finished")] += 1
            return
        if data["c"] >= MAX_STEPS:
            st.timers.pop(tk, None)
            eng.timers_changed = True
            eng.audit_occasion(st, self, self._base(data), now, "instance_limit",
                               f"the instance took {MAX_STEPS} steps, the most one may take: it ends", [data["e"]])
            eng.stats.instances[(self.name, "step_limit")] += 1
            return
        step = self.steps[target]
        data["c"] += 1
        v = data["v"]
        if len(v) < len(self.steps):  # an instance of an earlier rule file with fewer steps
            v += [0] * (len(self.steps) - len(v))
        v[target] += 1
        data["i"] = target
        data.pop("o", None)
        self._stat(eng, data, step, "reached", now)
        if step.wait_for:
            data["ph"], data["r"] = "f", now
            st.timers[tk] = [now + step.within, data]
        elif step.wait:
            data["ph"], data["r"] = "w", now
            st.timers[tk] = [now + step.wait, data]
        else:
            data["ph"], data["r"] = "w", now
            st.timers[tk] = [now, data]
            self._act(eng, st, data, step, now)
            return
        eng.timers_changed = True

    def _act(self, eng, st, data: dict, step: Step, now: int) -> None:
        """A step reached (its wait over): its condition, then its send, then the next step."""
        sources = None
        if step.cond is not None:
            sources = self._sources(eng, st, data, now, step.cond.customer)
            if not self._true(eng, step.cond, sources):
                self._tell(eng, data, step, "if_false", now)
                self._go(eng, st, data, step.else_, now)
                return
            self._tell(eng, data, step, "if_true", now)
        if step.send:
            verdict = self._send(eng, st, data, step, now, sources)
            if verdict == "postponed":
                tk = f"{self.name}|{data['k']}"
                data["ph"] = "d"
                st.timers[tk] = [PARK, data]
                eng.timers_changed = True
                return
        self._go(eng, st, data, step.next, now)

    def _send(self, eng, st, data: dict, step: Step, now: int, sources) -> str:
        occasion = self._occasion(data, step)
        if sources is None or (self._wants(step) and "customer" not in sources):
            sources = self._sources(eng, st, data, now, self._wants(step))
        reason = self._render(eng, step.reason_t or self.reason_t, sources, step.raw_wait)
        if self.cond_when is not None and not self._true(eng, self.cond_when, sources):
            eng.audit_occasion(st, self, occasion, now, "condition_not_met",
                               f"when ({self.cond_when.source}) was false", [data["e"]], why=reason, step=step.name)
            return "held"
        offer = dict(step.offer if step.offer is not None else self.p.offer)
        templates = step.offer_t if step.offer is not None else self.offer_t
        for k, parts in templates.items():
            offer[k] = self._render(eng, parts, sources, step.raw_wait)
        extra = {"st": step.name, "j": data["k"]}
        if step.channel is not None:
            extra["ch"] = step.channel
        if step.priority is not None:
            extra["pr"] = step.priority
        if step.send_time is not None:
            extra["stm"] = step.send_time
        if step.send_within is not None:
            extra["sw"] = step.send_within
        if data.get("x"):
            extra["nx"] = 1
        verdict = eng.fire(st, self, occasion, now, reason, [data["e"]], offer=offer, step=extra)
        if verdict in ("sent", "held_out"):
            data["x"] = 1
        elif verdict == "postponed":
            data["o"] = occasion
        return verdict

    def resolved(self, eng, st, pd: dict, verdict: str, due: int) -> None:
        """A deferred send of an instance went out (or was held back for good): the instance goes on."""
        entry = st.timers.get(f"{self.name}|{pd['j']}")
        if entry is None:
            return
        data = entry[1]
        if data.get("ph") != "d" or data.get("o") != pd["o"]:
            return
        if verdict == "postponed":
            return  # deferred again: still parked
        if verdict in ("sent", "held_out"):
            data["x"] = 1
        step = self._step_of(data)
        if step is None:  # an instance of an earlier rule file with fewer steps
            st.timers.pop(f"{self.name}|{pd['j']}", None)
            eng.timers_changed = True
            return
        self._go(eng, st, data, step.next, due)

    def still_valid(self, eng, st, pending: dict, now: int, p) -> str | None:
        if "j" not in pending:
            return None
        entry = st.timers.get(f"{self.name}|{pending['j']}")
        if entry is None or entry[1].get("o") != pending["o"]:
            return "exited"  # the instance ended while its send waited
        return None

    # -- helpers -------------------------------------------------------------------------------
    def _step_of(self, data: dict):
        """The step an instance is at, or None when the rule file has no such step any more."""
        i = data.get("i")
        return self.steps[i] if type(i) is int and 0 <= i < len(self.steps) else None

    def _base(self, data: dict) -> str:
        return f"{data['k']}:{data['e']}" if self.p.key else data["e"]

    def _occasion(self, data: dict, step: Step) -> str:
        v = data["v"][data["i"]]
        return f"{self._base(data)}:{step.name}" + (f"#{v}" if v > 1 else "")

    def _wants(self, step: Step) -> bool:
        """Whether a send of this step evaluates anything that names the customer (when, templates)."""
        return step.wants

    def _sources(self, eng, st, data: dict, now: int, customer: bool) -> dict:
        entry = data["n"]
        sources = {"event": entry, "entry": entry, "then": None}
        if customer:
            sources["customer"] = self._customer(eng, st, now)
        return sources

    def _stat(self, eng, data: dict, step: Step, what: str, now: int) -> None:
        eng.stats.steps[(self.name, step.name, what)] += 1
        if eng.on_step is not None:
            eng.on_step(self.name, self._base(data), step.name, what, now)

    def _tell(self, eng, data: dict, step: Step, what: str, now: int) -> None:
        """Only ``eng.on_step`` (journey explain) hears of it, nothing is counted: ``arrived`` (the
        awaited event, the one being applied), ``timed_out``, ``if_true``, ``if_false``, and ``ended``
        (the instance ended after this step: its next, else or timeout is end)."""
        if eng.on_step is not None:
            eng.on_step(self.name, self._base(data), step.name, what, now)


def _instant_loop(steps: list) -> list | None:
    """Step names of a cycle that no wait or wait_for breaks, or None."""
    instant = [not s.wait_for and not s.wait for s in steps]
    edges = {}
    for i, s in enumerate(steps):
        if not instant[i]:
            continue
        out = {s.next}
        if s.cond is not None:
            out.add(s.else_)
        edges[i] = [j for j in out if j != END and instant[j]]
    state = {}
    path: list = []

    def visit(i):
        state[i] = 1
        path.append(i)
        for j in edges.get(i, ()):
            if state.get(j) == 1:
                cyc = path[path.index(j):] + [j]
                return [steps[k].name for k in cyc]
            if state.get(j) is None:
                found = visit(j)
                if found:
                    return found
        path.pop()
        state[i] = 2
        return None
    for i in edges:
        if state.get(i) is None:
            found = visit(i)
            if found:
                return found
    return None
