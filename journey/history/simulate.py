"""``journey simulate``: the closed loop that proves the experiment measurement.

A synthetic population (the personas of :mod:`journey.history.synth`) lives through
event time next to the same :class:`~journey.core.engine.Engine` that replay and the
worker run, and *reacts* to the triggers it receives, with a true effect per rule,
arm and relationship stage that is known exactly (the reaction file,
``journey/examples/simulate.example.toml``, documents every key). The engine writes
triggers, audit and outcomes as replay does; the experiment report
(:func:`journey.history.report.format_report`) is computed on those outcomes and
compared, cell by cell, with the truth: the coverage table.

**The loop.** One event-time ordered discrete-event loop: a heap of pending events
(each customer's next organic step, the follow-ups already drawn, reaction orders)
and the engine's own timers. A timer due strictly before the next event fires first,
one due time at a time (at equal times the event comes first, as in
:func:`journey.core.timeline.drive`), so that after every engine call the loop sees
the exposures it just made, at their own time, and can schedule reactions in the
future of everything the engine has done. Organic behaviour is drawn lazily, step
by step, from a per-customer ``random.Random`` derived from the seed; reaction
decisions from ``random.Random("<seed>/<trigger id>")``. No global random, no wall
clock (except for the progress line): the same seed gives byte-identical files.

**The reaction model.** An exposure (a trigger with ``data.experiment``, or an audit
record ``holdout``) of rule R, arm A (``holdout`` for the held out), stage S (as the
engine recorded it for the outcome) has the model probability

    p = clip(base(R, S) + effect(R, A, S), 0, 1)          effect(R, holdout, S) = 0

(``base``/``effect`` of the reaction file's ``open_ticket`` table if the customer has
an open ticket then). From the exposure until its window's end the customer's orders
(the goal, ``order.completed``) belong to the reaction model: with probability p the
customer orders once at a uniformly drawn time in (exposed_at, exposed_at + window],
otherwise not at all in the window. The persona's own orders are dropped while a
window is pending: a session that would have bought becomes a visit (it stops before
the cart), and an order already under way is not placed. So an exposure converts
exactly when its reaction order falls in its window: P(converted) = p.

**Overlapping windows.** A customer may be exposed again while a window is pending
(a deferred trigger delivered, a delivery's review request, a reaction order that is
itself a first purchase). Then one order can convert several windows: any order in
the overlap converts both. The model keeps every window's probability exact by
planning the customer's *next* order T jointly for all pending windows: with the
windows sorted by their end E_1 <= ... <= E_n, T is drawn from the distribution with
P(T <= E_k) = pi_k for each k, uniform between consecutive ends, and no order with
probability 1 - pi_n. For a window already open, pi_k is its conditional probability
of converting given that no order came so far (from the plan in force), so its
probability stays p; for the new window, pi is p. A joint plan exists only if the pi
rise with E (a window ending later cannot be less likely to see an order); when the
new window's p does not fit between its neighbours' pi, it is moved to the nearest
value that does, and that value is its exact probability. Either way each exposure
converts with a probability p' known at its exposure, and conversions beyond are
Bernoulli draws; after the order T every pending window is converted (or had
expired), and the persona's own behaviour resumes.

**The true effect of a cell** (rule, arm, stage) is what the report measures, the
difference of conversion probabilities between the arm and the holdout: the mean of
p' over the arm's closed exposures in that stage, less the mean of p' over the
holdout's. For a cell without overlaps or open tickets this is exactly
``effect(R, A, S)``; otherwise it is the same average of the model's exact
probabilities (how many exposures had theirs moved is counted and printed). The
estimate minus this truth is a sum of Bernoulli noise only, so Newcombe's 95%
interval should cover it in about 95% of cells (the binomial variance of
heterogeneous p' is at most that of their mean, so a little more).

The population is synth's personas with erasure and malformed or redelivered records
left out (they say nothing about an experiment).
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import sys
import time
from pathlib import Path

import orjson

from .. import examples
from ..core import policy
from ..core.config import ConfigError
from ..core.engine import Engine
from ..core.experiments import HOLDOUT, OUTCOME
from ..core.health import STAGES
from ..core.intake import parse
from ..core.params import suggest
from ..core.timeutil import MS_DAY, MS_HOUR, MS_MINUTE, TimeError, format_time, parse_time
from ..core.uplift import MIN_EXPOSURES, Tally
from ..io.progress import Progress
from ..io.rulefile import load_config, read_table
from .replay import JsonLines, no_cyclic_gc
from .report import format_report
from .synth import ZONES, _Customer, _ticket, cart_to_payment, ship_and_deliver

REACTIONS = Path(examples.__file__).with_name("simulate.example.toml")
RULES = Path(examples.__file__).with_name("simulate.rules.toml")
ANY = "*"
GOAL = "order.completed"
TOP_KEYS = ("simulation", "reactions")
SIMULATION_KEYS = ("start", "rules")
RULE_KEYS = ("base", "effect", "open_ticket", "active_hours")
# each customer's favourite hour of the day (UTC): they open their messages around it, and a message
# sent in the hour before, at or after it is more likely to be acted on (a rule's active_hours)
HOURS = (7, 8, 12, 13, 18, 19, 20, 21)
OPEN_P = 0.6          # a customer opens a message they get with this probability, at their favourite hour
CONTEXT_KEYS = ("base", "effect")
DEFAULT_START = "2026-01-01T00:00:00Z"
GAP_DAYS = {"browser": 9, "one_time": 20, "loyal": 9, "steady": 28, "trouble": 14, "promoter": 12,
            "detractor": 14}
# heap priorities at equal event time: a reaction order, then events already drawn, then the
# next organic step (which may look at whether the customer is under a reaction window)
_REACT, _EVENT, _WAKE = 0, 1, 2


# -- the reaction file -------------------------------------------------------------------------
class Reaction:
    """One rule's reaction model: ``p(arm, stage, open_ticket)``."""

    def __init__(self, rule: str, base: dict, effect: dict, ticket_base: dict | None, ticket_effect: dict | None,
                 active_hours: float = 0.0):
        self.rule = rule
        self.active_hours = active_hours
        self.base, self.effect = base, effect
        self.ticket_base = ticket_base if ticket_base is not None else base
        self.ticket_effect = ticket_effect if ticket_effect is not None else effect

    def p(self, arm: str, stage: str, open_ticket: bool = False, active: bool = False) -> float:
        """``active``: the message went out in the customer's active hours (the hour of their favourite
        or either next to it): ``active_hours`` more, for an arm that sends (a holdout gets nothing)."""
        base, effect = (self.ticket_base, self.ticket_effect) if open_ticket else (self.base, self.effect)
        b = base.get(stage, base.get(ANY, 0.0))
        if arm != HOLDOUT:
            e = effect.get(arm, {})
            b += e.get(stage, e.get(ANY, 0.0))
            if active:
                b += self.active_hours
        return min(1.0, max(0.0, b))


class Reactions:
    def __init__(self, rules: dict[str, Reaction], start: int, rules_file: str | None, source: str):
        self.rules, self.start, self.rules_file, self.source = rules, start, rules_file, source


def _by_stage(v, where: str, lo: float, problems: list, need_all: bool) -> dict | None:
    """A number (every stage) or a table stage -> number ("*" for the others)."""
    def number(x, at):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or x != x or not lo <= x <= 1:
            problems.append(f"{at}: expected a number from {lo:g} to 1, got {x!r}")
            return None
        return float(x)

    if not isinstance(v, dict):
        x = number(v, where)
        return None if x is None else {ANY: x}
    out, before = {}, len(problems)
    for k, x in v.items():
        if k != ANY and k not in STAGES:
            problems.append(f"{where}.{k}: unknown stage{suggest(k, (*STAGES, ANY))}; stages: "
                            f"{', '.join(STAGES)}, or \"*\" for the others")
            continue
        x = number(x, f"{where}.{k}")
        if x is not None:
            out[k] = x
    if need_all and ANY not in out and len(problems) == before:
        missing = [s for s in STAGES if s not in out]
        if missing:
            problems.append(f"{where}: no value for {', '.join(missing)} (name them, or add \"*\" = a number "
                            "for the stages not named)")
    return out


def _effects(v, where: str, problems: list) -> dict:
    if not isinstance(v, dict):
        problems.append(f"{where}: expected a table of arm = number or table by stage, e.g. "
                        "effect.treated = { active = 0.05 }")
        return {}
    out = {}
    for arm, e in v.items():
        if arm == HOLDOUT:
            problems.append(f"{where}.{HOLDOUT}: the holdout has no effect by definition (its probability is base)")
            continue
        got = _by_stage(e, f"{where}.{arm}", -1.0, problems, need_all=False)
        if got is not None:
            out[arm] = got
    return out


def _unknown(table: dict, keys, where: str, problems: list) -> None:
    for k in table:
        if k not in keys:
            problems.append(f"{where}{k}: unknown setting{suggest(k, keys)}; known: {', '.join(keys)}")


def reactions_from(data, source: str = "reactions") -> Reactions:
    """Validate a reaction file's contents; ConfigError lists every problem."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a table at the top level"])
    _unknown(data, TOP_KEYS, "", problems)
    sim = data.get("simulation", {})
    start, rules_file = parse_time(DEFAULT_START), None
    if not isinstance(sim, dict):
        problems.append("simulation: expected a table")
        sim = {}
    _unknown(sim, SIMULATION_KEYS, "simulation.", problems)
    if "start" in sim:
        try:
            start = parse_time(sim["start"])
        except (TimeError, TypeError) as e:
            problems.append(f"simulation.start: {e}")
    if "rules" in sim:
        if not isinstance(sim["rules"], str) or not sim["rules"].strip():
            problems.append("simulation.rules: expected a file path")
        else:
            rules_file = sim["rules"]
    given = data.get("reactions", {})
    rules: dict[str, Reaction] = {}
    if not isinstance(given, dict) or not given:
        problems.append("reactions: missing (one [reactions.RULE] table per rule with an experiment)")
        given = {}
    for rule, t in given.items():
        where = f"reactions.{rule}"
        if not isinstance(t, dict):
            problems.append(f"{where}: expected a table")
            continue
        _unknown(t, RULE_KEYS, f"{where}.", problems)
        if "base" not in t:
            problems.append(f"{where}.base: missing (the holdout's probability of an order within the window)")
            continue
        base = _by_stage(t["base"], f"{where}.base", 0.0, problems, need_all=True)
        effect = _effects(t.get("effect", {}), f"{where}.effect", problems)
        tb = te = None
        if "open_ticket" in t:
            ot = t["open_ticket"]
            if not isinstance(ot, dict):
                problems.append(f"{where}.open_ticket: expected a table with base and/or effect")
            else:
                _unknown(ot, CONTEXT_KEYS, f"{where}.open_ticket.", problems)
                if "base" in ot:
                    tb = _by_stage(ot["base"], f"{where}.open_ticket.base", 0.0, problems, need_all=True)
                if "effect" in ot:
                    te = _effects(ot["effect"], f"{where}.open_ticket.effect", problems)
        active = t.get("active_hours", 0.0)
        if isinstance(active, bool) or not isinstance(active, (int, float)) or not -1 <= active <= 1:
            problems.append(f"{where}.active_hours: a number from -1 to 1 (the change of the probability for a "
                            f"message sent in the customer's active hours), got {active!r}")
            active = 0.0
        if base is not None:
            rules[rule] = Reaction(rule, base, effect, tb, te, float(active))
    if problems:
        raise ConfigError([f"{source}: {p}" for p in problems])
    return Reactions(rules, start, rules_file, source)


def load_reactions(path: str | Path | None) -> Reactions:
    p = Path(path) if path is not None else REACTIONS
    return reactions_from(read_table(p), str(p))


def check_against(reactions: Reactions, cfg) -> None:
    """The reaction file and the rule file must describe the same experiments."""
    problems = []
    exps = cfg.experiments
    if not exps:
        problems.append(f"{cfg.source}: no experiment (simulate measures experiments: add "
                        "[rules.NAME.experiment] or [journeys.NAME.experiment])")
    for rule, exp in exps.items():
        if rule not in reactions.rules:
            problems.append(f"{reactions.source}: reactions.{rule}: missing; the rule file has an experiment on "
                            f"{rule}, so the model needs its base (and effects)")
        if exp.goal != {GOAL} or exp.goal_if is not None:
            problems.append(f"{cfg.source}: {rule}.experiment: simulate models conversion as one "
                            f"{GOAL}; the goal must be \"{GOAL}\" without goal_if")
    for rule, r in reactions.rules.items():
        exp = exps.get(rule)
        if exp is None:
            problems.append(f"{reactions.source}: reactions.{rule}: the rule file has no experiment on it"
                            f"{suggest(rule, exps)}")
            continue
        arms = [a.name for a in exp.arms]
        for eff, where in ((r.effect, "effect"), (r.ticket_effect, "open_ticket.effect")):
            for arm in eff:
                if arm not in arms:
                    problems.append(f"{reactions.source}: reactions.{rule}.{where}.{arm}: not an arm of the "
                                    f"experiment{suggest(arm, arms)}; arms: {', '.join(arms)}")
    if problems:
        raise ConfigError(problems)


# -- the joint plan of a customer's next order ---------------------------------------------------
class Plan:
    """The customer's next order T for the pending windows: knots (E_k, F_k) with
    F_k = P(T <= E_k), F rising; T uniform on the whole milliseconds between knots."""

    __slots__ = ("t0", "knots", "at")

    def __init__(self, t0: int, knots: list[tuple[int, float]], u: float):
        self.t0, self.knots = t0, knots
        a, fa = t0, 0.0
        self.at = None
        for e, f in knots:
            if u < f:
                frac = (u - fa) / (f - fa)
                self.at = min(e, a + 1 + int(frac * (e - a)))
                break
            a, fa = e, f

    def cdf(self, t: int) -> float:
        a, fa = self.t0, 0.0
        if t <= a:
            return 0.0
        for e, f in self.knots:
            if t <= e:
                return fa + (f - fa) * (t - a) / (e - a)
            a, fa = e, f
        return fa

    def pending(self, now: int) -> bool:
        """Does the plan still own the customer's orders at ``now``?"""
        if self.at is not None:
            return now < self.at
        return now <= self.knots[-1][0]

    def conditional(self, now: int) -> list[tuple[int, float]]:
        """Each open window's probability of converting, given no order up to ``now``."""
        f0 = self.cdf(now)
        rest = 1.0 - f0
        if rest <= 1e-15:
            return []
        return [(e, max(0.0, (f - f0) / rest)) for e, f in self.knots if e > now]


def joint(open_: list[tuple[int, float]], end: int, p: float) -> tuple[list[tuple[int, float]], float]:
    """Add a window ending at ``end`` with probability ``p`` to the open ones; returns the
    knots and the probability the new window really has (p, or the nearest value a joint
    plan allows)."""
    lo = max((f for e, f in open_ if e <= end), default=0.0)
    hi = min((f for e, f in open_ if e >= end), default=1.0)
    q = min(max(p, lo), hi)
    merged: dict[int, float] = {e: f for e, f in open_}
    merged[end] = q if end not in merged else merged[end]
    return sorted(merged.items()), q


# -- the population ----------------------------------------------------------------------------
class _Person(_Customer):
    """A synth customer that also carries its reaction plan."""

    def __init__(self, rng, i, start, span):
        super().__init__(rng, i, start, span)
        self.plan: Plan | None = None
        self.version = 0  # bumps with every new plan: a superseded reaction order is skipped
        self.orders = 0

    def emit(self, ctype: str, ts: int, **props):
        """The canonical shape for every stream (synth mixes in Segment's; the engine sees the
        same events either way, and this one is cheaper to make and to parse)."""
        self.n += 1
        rec = {"id": f"{self.id}-{self.n}", "customer_id": self.id, "type": ctype, "ts": ts}
        if ctype == "profile.updated":
            rec["traits"] = props
        else:
            rec["props"] = props
        self.out.append((ts, None, rec))


def _life(sim, c: _Person):
    """The persona's organic behaviour (synth's model), one step at a time: yields the time
    of its next step, and at each step checks whether a reaction window owns the customer's
    orders (then a session stops before the cart)."""
    r = c.rng
    p = c.persona
    yield c.t
    if r.random() < 0.7:
        traits = {"timezone": r.choice(ZONES)}
        if r.random() < 0.6:
            traits["birthday"] = f"{r.randint(1950, 2005)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
        if r.random() < 0.1:
            traits["consent"] = {"marketing": False, "email": True}
        c.emit("profile.updated", c.t, **traits)
    gap = GAP_DAYS[p] * MS_DAY
    while True:
        c.t += int(r.expovariate(1 / gap)) + r.randint(0, 12) * MS_HOUR
        if c.t >= c.end:
            return
        if p == "browser":
            buy = r.random() < 0.1
        elif p == "one_time":
            buy = c.orders == 0 and r.random() < 0.5
        else:
            buy = r.random() < 0.7
        value = r.uniform(15, 60) if p == "steady" else r.lognormvariate(4.0, 0.8)
        t = c.t
        yield t
        for k in range(r.randint(1, 2)):  # synth draws 1-4 page views; they matter to no rule here
            if k:
                t += r.randint(5, 90) * 1000
                yield t
            c.emit("page.viewed", t)
        t += r.randint(5, 90) * 1000
        yield t
        pid = f"p{r.randint(1, 500)}"
        c.emit("product.viewed", t, product_id=pid, price=round(value, 2))
        t += r.randint(10, 120) * 1000
        if r.random() < 0.03:
            yield t
            c.emit("app.error", t, code="E500")
            if p == "trouble":
                c.emit("app.error", t + 4 * MS_MINUTE, code="E502")
                c.emit("app.error", t + 9 * MS_MINUTE, code="E503")
        session_end = t
        if not (not buy and r.random() < 0.55):
            yield t
            if not sim.owned(c, t):
                session_end = _cart_and_order(sim, c, t, buy, value, pid)
        if p == "trouble" and r.random() < 0.35:
            _ticket(c, session_end + r.randint(1, 48) * MS_HOUR, slow=r.random() < 0.5)
        elif r.random() < 0.04:
            _ticket(c, session_end + r.randint(1, 48) * MS_HOUR, slow=r.random() < 0.2)
        c.t = max(c.t, session_end)


def _cart_and_order(sim, c: _Person, t: int, buy: bool, value: float, pid: str) -> int:
    """The rest of a session from the cart on; returns the session's last time. The order is
    not drawn here but when its time comes (``Simulation._organic_order``): a reaction window
    may own the customer's orders by then."""
    t, paid = cart_to_payment(c, t, buy, value, pid)
    if paid:
        sim.push(t, _WAKE, ("order", c, value))
    return t


def _fulfil(c: _Person, r: random.Random, oid: str, t: int, value: float) -> None:
    """Shipping, delivery, sometimes a refund (synth's model), and a review or survey."""
    ship_and_deliver(c, r, oid, t, value)
    if r.random() < 0.15:
        if c.persona == "promoter":
            c.emit("survey.answered", t + 3 * MS_DAY, nps=r.choice([9, 10]))
            if r.random() < 0.4:
                c.emit("referral.sent", t + 4 * MS_DAY)
        elif c.persona == "detractor":
            c.emit("survey.answered", t + 3 * MS_DAY, nps=r.randint(0, 6))
        else:
            c.emit("review.submitted", t + 5 * MS_DAY, rating=r.choice([1, 3, 4, 5, 5]))


# -- the simulation ------------------------------------------------------------------------------
class _Sink:
    """Writes the engine's output and notes the exposures it makes."""

    def __init__(self, sim, out: JsonLines, audit: JsonLines, outcomes: JsonLines):
        self.sim, self.out, self.audit_file, self.outcomes = sim, out, audit, outcomes
        self.wants_transitions = False
        self.new: list[tuple[str, str]] = []  # (trigger id, customer id) exposed since the last look

    def trigger(self, rec: dict) -> None:
        self.out(rec)
        self.sim.answer(rec)
        if "experiment" in rec["data"]:
            self.new.append((rec["id"], rec["subject"]))

    def audit(self, rec: dict) -> None:
        self.audit_file(rec)
        if rec["reason"] == HOLDOUT:
            self.new.append((rec["trigger_id"], rec["customer_id"]))

    def transition(self, rec: dict) -> None:
        pass

    def outcome(self, rec: dict) -> None:
        self.outcomes(rec)
        self.sim.closed(rec)


class Simulation:
    def __init__(self, cfg, reactions: Reactions, customers: int, days: int, seed: int,
                 out: JsonLines, audit: JsonLines, outcomes: JsonLines, progress: Progress | None = None):
        self.cfg, self.reactions, self.seed = cfg, reactions, seed
        self.n_customers, self.days = customers, days
        self.start = reactions.start
        self.end = self.start + days * MS_DAY
        self.until = self.end + max(e.window for e in cfg.experiments.values())
        self.sink = _Sink(self, out, audit, outcomes)
        self.engine = Engine(cfg, self.sink)
        self.keep = cfg.keep_props
        self.progress = progress or Progress(enabled=False)
        self.heap: list = []
        self._seq = 0
        self.people: dict[str, _Person] = {}
        self.lives: dict[str, object] = {}
        self.open: dict[str, tuple[str, str, str, float, float]] = {}  # tid -> (rule, arm, stage, p, p')
        self.truth: dict[tuple, list] = {}  # (rule, arm, stage) -> [closed, sum p', sum p, moved]
        self.tally = Tally()
        self.counts = {"events": 0, "exposures": 0, "overlapping": 0, "moved": 0, "reaction_orders": 0,
                       "organic_orders_dropped": 0, "untracked": 0}

    # the heap
    def push(self, ts: int, pri: int, item) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (ts, pri, self._seq, item))

    def _drain(self, c: _Person) -> None:
        for ts, _stream, rec in c.out:
            self.push(ts, _EVENT, ("event", rec))
        c.out.clear()

    def owned(self, c: _Person, now: int) -> bool:
        """Does a reaction window own the customer's orders at ``now``?"""
        return c.plan is not None and c.plan.pending(now)

    # the run
    def run(self) -> dict:
        master = random.Random(f"{self.seed}/population")
        span = self.days * MS_DAY
        for i in range(self.n_customers):
            c = _Person(random.Random(master.getrandbits(64)), i, self.start, span)
            c.hour = random.Random(f"{self.seed}/hour/{c.id}").choice(HOURS)
            self.people[c.id] = c
            life = _life(self, c)
            self.lives[c.id] = life
            self.push(next(life), _WAKE, ("wake", c))
        eng, heap, until = self.engine, self.heap, self.until
        t_first = self.start
        step = 0
        while True:
            te = heap[0][0] if heap else None
            nd = eng.next_due()
            if nd is not None and nd <= until and (te is None or nd < te):
                eng.fire_due(nd)
                if self.sink.new:
                    self._exposures()
                continue
            if te is None or te > until:
                break
            ts, _pri, _seq, item = heapq.heappop(heap)
            kind = item[0]
            if kind == "event":
                self._apply(item[1])
            elif kind == "wake":
                c = item[1]
                try:
                    nxt = next(self.lives[c.id])
                except StopIteration:
                    nxt = None
                self._drain(c)
                if nxt is not None:
                    self.push(nxt, _WAKE, ("wake", c))
            elif kind == "order":
                self._organic_order(item[1], item[2], ts)
            else:  # "react"
                self._reaction_order(item[1], item[2], ts)
            step += 1
            if not step & 8191:
                self.progress.update("simulating", ts - t_first, until - t_first)
        self.progress.done()
        return self.result()

    def _apply(self, rec: dict) -> None:
        ev = parse(orjson.dumps(rec), keep=self.keep)
        self.counts["events"] += 1
        self.engine.apply(ev)
        if self.sink.new:
            self._exposures()

    def _organic_order(self, c: _Person, value: float, ts: int) -> None:
        if self.owned(c, ts):
            self.counts["organic_orders_dropped"] += 1
            return
        self._order(c, c.rng, value, ts)

    def _order(self, c: _Person, r: random.Random, value: float, ts: int) -> None:
        c.orders += 1
        oid = f"ord-{c.id}-{c.n + 1}"
        c.emit("order.completed", ts, order_id=oid, revenue=round(value, 2), currency="EUR")
        _fulfil(c, r, oid, ts, value)
        self._drain(c)

    def _reaction_order(self, c: _Person, version: int, ts: int) -> None:
        if version != c.version or c.plan is None or c.plan.at != ts:
            return  # superseded by a newer plan
        c.plan = None  # every pending window converts (or had expired): the persona is back
        self.counts["reaction_orders"] += 1
        r = random.Random(f"{self.seed}/order/{c.id}/{ts}")
        value = r.uniform(15, 60) if c.persona == "steady" else r.lognormvariate(4.0, 0.8)
        self._order(c, r, value, ts)

    def _exposures(self) -> None:
        new, self.sink.new = self.sink.new, []
        states = self.engine.states
        max_age = self.cfg.policy.open_ticket_max_age
        for tid, cid in new:
            st = states.get(cid)
            tm = st.timers.get(f"{OUTCOME}|{tid}") if st is not None else None
            c = self.people.get(cid)
            if tm is None or c is None:
                self.counts["untracked"] += 1  # not measured (over the engine's cap of open exposures)
                continue
            end, (rule, arm, stage, _h, exposed, _conv, _cents) = tm
            ticket = bool(policy.open_tickets(st, exposed, max_age))
            active = (exposed // MS_HOUR - c.hour) % 24 in (0, 1, 23)   # the favourite hour or one next to it
            p = self.reactions.rules[rule].p(arm, stage, ticket, active)
            self.counts["exposures"] += 1
            if c.plan is not None and c.plan.pending(exposed):
                self.counts["overlapping"] += 1
                knots, q = joint(c.plan.conditional(exposed), end, p)
            else:
                knots, q = [(end, p)], p
            if abs(q - p) > 1e-12:
                self.counts["moved"] += 1
            u = random.Random(f"{self.seed}/{tid}").random()
            c.plan = Plan(exposed, knots, u)
            c.version += 1
            if c.plan.at is not None:
                self.push(c.plan.at, _REACT, ("react", c, c.version))
            self.open[tid] = (rule, arm, stage, p, q)

    def answer(self, rec: dict) -> None:
        """A trigger the customer got: they open it (with OPEN_P) at their favourite hour, the same day if
        it is still to come, else the next; the engine learns their hours from it (send time)."""
        c = self.people.get(rec.get("subject"))
        if c is None:
            return
        r = random.Random(f"{self.seed}/open/{rec['id']}")
        if r.random() >= OPEN_P:
            return
        at = parse_time(rec["time"])
        day = at // MS_DAY * MS_DAY
        t = day + c.hour * MS_HOUR + r.randint(0, 59) * 60_000
        if t <= at:
            t += MS_DAY
        self.push(t, _EVENT, ("event", {"id": f"open-{rec['id']}", "customer_id": c.id, "type": "message.opened",
                                        "ts": t, "props": {"trigger_id": rec["id"], "channel": "email"}}))

    def closed(self, rec: dict) -> None:
        """An outcome record: fold it into the report's tally and the truth."""
        self.tally.add(rec)
        got = self.open.pop(rec["trigger_id"], None)
        if got is None:
            return
        rule, arm, stage, p, q = got
        t = self.truth.get((rule, arm, stage))
        if t is None:
            t = self.truth[(rule, arm, stage)] = [0, 0.0, 0.0, 0]
        t[0] += 1
        t[1] += q
        t[2] += p
        t[3] += abs(q - p) > 1e-12

    def result(self) -> dict:
        rows = self.tally.rows("stage")
        return {"rows": rows, "coverage": coverage(rows, self.truth), "counts": dict(self.counts),
                "bad": self.tally.bad, "stats": self.engine.stats.as_dict()}


def coverage(rows: list[dict], truth: dict, min_exposures: int = MIN_EXPOSURES) -> list[dict]:
    """Per (rule, arm, stage): the true effect, the estimate, its interval, and whether the
    interval covers the truth. ``enough``: at least ``min_exposures`` in the arm and the holdout."""
    by = {(r["rule"], r["arm"], r["stage"]): r for r in rows if r["stage"] is not None and "health_band" not in r}
    out = []
    for (rule, arm, stage), r in by.items():
        if arm == HOLDOUT or r["uplift"] is None:
            continue
        h = by.get((rule, HOLDOUT, stage))
        ta, th = truth.get((rule, arm, stage)), truth.get((rule, HOLDOUT, stage))
        if h is None or ta is None or th is None:
            continue
        true = ta[1] / ta[0] - th[1] / th[0]
        model = ta[2] / ta[0] - th[2] / th[0]
        n1, n2, p1, p2 = r["exposures"], h["exposures"], r["rate"], h["rate"]
        se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
        out.append({"rule": rule, "arm": arm, "stage": stage, "exposures": n1, "holdout_exposures": n2,
                    "true_effect": true, "model_effect": model, "estimate": r["uplift"], "ci_low": r["ci_low"],
                    "ci_high": r["ci_high"], "covered": r["ci_low"] <= true <= r["ci_high"],
                    "z": (r["uplift"] - true) / se if se > 0 else None,
                    "moved": ta[3] + th[3], "enough": n1 >= min_exposures and n2 >= min_exposures})
    out.sort(key=lambda c: (c["rule"], c["arm"], STAGES.index(c["stage"]) if c["stage"] in STAGES else 99))
    return out


def coverage_summary(cells: list[dict]) -> dict:
    ok = [c for c in cells if c["enough"]]
    zs = [c["z"] for c in ok if c["z"] is not None]
    return {"cells": len(ok), "covered": sum(c["covered"] for c in ok),
            "coverage": sum(c["covered"] for c in ok) / len(ok) if ok else None,
            "mean_z": sum(zs) / len(zs) if zs else None}


def simulate(customers: int = 5000, days: int = 180, seed: int = 7, reactions: str | Path | None = None,
             rules: str | Path | None = None, out: str | None = None, audit: str | None = None,
             outcomes: str | None = None, progress: Progress | None = None) -> dict:
    """Run a simulation; ConfigError if the reaction or rule file has problems. Returns the
    report's rows, the coverage cells and counts."""
    rx = load_reactions(reactions)
    if rules is None:
        src = Path(reactions) if reactions is not None else REACTIONS
        rules = (src.parent / rx.rules_file) if rx.rules_file else RULES
    cfg = load_config(rules)
    check_against(rx, cfg)
    files = [JsonLines(out), JsonLines(audit), JsonLines(outcomes)]
    ok = False
    t0 = time.perf_counter()
    try:
        with no_cyclic_gc():
            res = Simulation(cfg, rx, customers, days, seed, *files, progress=progress).run()
        ok = True
    finally:
        for f in files:
            f.close(keep=ok)
    res["counts"]["triggers"] = files[0].count
    res["counts"]["seconds"] = round(time.perf_counter() - t0, 2)
    res["summary"] = coverage_summary(res["coverage"])
    res["setup"] = {"customers": customers, "days": days, "seed": seed, "start": format_time(rx.start),
                    "reactions": str(reactions or REACTIONS), "rules": str(rules)}
    return res


def format_coverage(res: dict) -> str:
    cells = res["coverage"]
    head = f"{'rule':<20}{'arm':<12}{'stage':<10}{'n arm':>7}{'n hold':>8}{'true':>8}{'estimate':>10}" \
           f"  {'95% CI':<17}covered"
    lines = ["coverage of the true effect (percentage points; cells with fewer than "
             f"{MIN_EXPOSURES} exposures in the arm or the holdout are shown in brackets and not counted)",
             head, "-" * len(head)]
    for c in cells:
        ci = f"{100 * c['ci_low']:+.1f} to {100 * c['ci_high']:+.1f}"
        cov = "yes" if c["covered"] else "NO"
        if not c["enough"]:
            cov = f"({cov})"
        lines.append(f"{c['rule']:<20}{c['arm']:<12}{c['stage']:<10}{c['exposures']:>7,}{c['holdout_exposures']:>8,}"
                     f"{100 * c['true_effect']:>+8.1f}{100 * c['estimate']:>+10.1f}  {ci:<17}{cov}")
    s = res["summary"]
    k = res["counts"]
    lines.append("")
    if s["cells"]:
        lines.append(f"covered: {s['covered']} of {s['cells']} cells ({100 * s['coverage']:.0f}%; about 95% expected); "
                     f"mean standardized error (estimate - true) / SE: {s['mean_z']:+.2f}")
    else:
        lines.append("covered: no cell has enough exposures yet (use more --customers or --days)")
    lines.append(f"{k['exposures']:,} exposures, {k['overlapping']:,} of them while another window was pending "
                 f"({k['moved']:,} had their probability moved to fit a joint plan; the true effect counts "
                 "what they had)")
    return "\n".join(lines)


# -- the command line ----------------------------------------------------------------------------
def add_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser(
        "simulate", help="a synthetic population that reacts to its triggers: does the report find the true effect?",
        description="Run a synthetic population (the personas of journey generate) through the engine on event "
                    "time, deterministically from a seed. Customers react to the experiment triggers they receive "
                    "(and to being held out) as the reaction file says, with a known true effect per rule, arm and "
                    "stage. Writes triggers, audit and outcomes like journey replay, then prints the experiment "
                    "report and, per cell, whether its 95% interval covers the true effect.")
    s.add_argument("--customers", type=int, default=5000, metavar="N", help="customers simulated (default 5000)")
    s.add_argument("--days", type=int, default=180, metavar="D",
                   help="days of organic behaviour; windows still open then are followed to their end "
                        "(default 180)")
    s.add_argument("--seed", type=int, default=7, metavar="S", help="seed of the population and the reactions "
                                                                     "(default 7)")
    s.add_argument("--reactions", metavar="FILE",
                   help="the reaction model (TOML or YAML; default: the packaged "
                        "journey/examples/simulate.example.toml, which documents every key)")
    s.add_argument("--rules", metavar="FILE",
                   help="a rule file with experiments (default: the one the reaction file's [simulation] rules "
                        "names; for the packaged example, journey/examples/simulate.rules.toml)")
    s.add_argument("--out", metavar="FILE", help="write the triggers (JSON lines; default: not written)")
    s.add_argument("--audit", metavar="FILE", help="write the audit records (JSON lines; default: not written)")
    s.add_argument("--outcomes", metavar="FILE",
                   help="write the outcome records, for journey experiments report (JSON lines; default: not written)")
    s.add_argument("--json", action="store_true",
                   help="print the report rows, the coverage cells and the counts as JSON instead of text")
    s.set_defaults(func=cmd_simulate)
    return s


def cmd_simulate(a) -> int:
    if a.customers < 1 or a.days < 1:
        print("journey simulate: --customers and --days must be at least 1", file=sys.stderr)
        return 2
    try:
        res = simulate(a.customers, a.days, a.seed, a.reactions, a.rules, a.out, a.audit, a.outcomes,
                       progress=Progress())
    except ConfigError as e:
        print("journey simulate: the reaction or rule file has problems:", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    if a.json:
        doc = {"setup": res["setup"], "counts": res["counts"], "summary": res["summary"], "report": res["rows"],
               "coverage": res["coverage"]}
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    k, su = res["counts"], res["setup"]
    print(f"simulated {su['customers']:,} customers over {su['days']} days from {su['start']} (seed {su['seed']}): "
          f"{k['events']:,} events, {k['triggers']:,} triggers, {k['reaction_orders']:,} reaction orders, "
          f"{k['seconds']:.1f} s")
    print()
    print(format_report(res["rows"], bad=res["bad"]))
    print()
    print(format_coverage(res))
    return 0
