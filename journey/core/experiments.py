"""Experiments: holdouts, variants and conversion goals (domain.md section 7).

An experiment hangs off a built-in rule (``[rules.NAME.experiment]``) or a
journey (``[journeys.NAME.experiment]``). Assignment is a pure function of
(salt, rule, customer id), the same in replay and live:

    u = first 8 bytes of SHA-256("<salt>/<rule>/<customer id>"), big-endian, / 2**64
    holdout if u < holdout, else the variant picked by (u - holdout) / (1 - holdout)
    against the cumulative weights, in the order written

The engine decides the holdout where the contact policy would have sent the
trigger, keeps each exposure (sent or held out) in customer state as a timer
until exposed_at + window, marks it converted by the first goal event in
(exposed_at, exposed_at + window], marks it delivered when an engagement event
(``REACHED``) names its trigger id, and closes it with an outcome record.
"""

from __future__ import annotations

import hashlib

from .catalog import type_problem
from .params import Param, section, suggest
from .rules.base import PRIORITIES, SEND_TIMES

HOLDOUT = "holdout"
TREATED = "treated"          # the one arm of an experiment without variants
GLOBAL = "*"                 # the rule part of the global holdout's unit
OUTCOME = "_outcome"         # timer prefix of an open exposure
MAX_OPEN = 50                # open exposures per customer (more are not measured, and counted)
# engagement events that say a message reached its customer (an exposure's outcome records it as
# delivered); a bounce does not
REACHED = frozenset(("message.delivered", "message.opened", "message.clicked", "message.complained"))

SETTINGS = {
    "name": Param("text", "", "the experiment's name in data.experiment and outcomes (default: the rule's)"),
    "salt": Param("text", "", "part of the assignment hash: a new salt draws new groups"),
    "holdout": Param("number", 0.0, "share of customers held out (0 <= share < 1)", minimum=0),
    "variants": Param("tables", [], "arms: {name, weight, offer, channel, priority}, in order "
                                    "(without them, one arm named treated)"),
    "goal": Param("strs", [], "the event type(s) that count as a conversion (required)"),
    "goal_if": Param("text", "", "CEL condition on the goal event"),
    "window": Param("duration", "0s", "how long after the exposure a goal event counts (required)"),
    "allow_transactional_holdout": Param("bool", False, "allow a holdout on a transactional rule "
                                                        "(holding back a service message is a business decision)"),
}
VARIANT_KEYS = ("name", "weight", "offer", "channel", "priority", "send_time")


def unit(salt: str, rule: str, customer_id: str) -> float:
    """The customer's position in [0, 1) for (salt, rule)."""
    h = hashlib.sha256(f"{salt}/{rule}/{customer_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 18446744073709551616.0


class Arm:
    __slots__ = ("name", "upto", "offer", "channel", "priority", "send_time")

    def __init__(self, name, upto, offer=None, channel=None, priority=None, send_time=None):
        self.name, self.upto, self.offer, self.channel, self.priority = name, upto, offer, channel, priority
        self.send_time = send_time  # "now" or "optimal": overrides the rule's (section 9)


class Experiment:
    """One rule's experiment, validated."""

    def __init__(self, rule: str, given, transactional: bool, allow_rule: bool, where: str,
                 problems: list, warnings: list, custom=frozenset(), clv: bool = True):
        self.rule = rule
        if isinstance(given, dict) and isinstance(given.get("goal"), str):
            given = {**given, "goal": [given["goal"]]}
        before = len(problems)
        p = section(SETTINGS, given, where, problems)
        self.name = p.name or rule
        self.salt = p.salt
        self.holdout = p.holdout
        self.window = p.window
        self.goal = frozenset(p.goal)
        if len(problems) == before:
            if not p.holdout < 1:
                problems.append(f"{where}.holdout: a share in [0, 1), got {p.holdout!r}")
            if not p.goal:
                problems.append(f"{where}.goal: missing (the event type, or types, that count as a conversion)")
            if p.window <= 0:
                problems.append(f"{where}.window: missing (how long after the exposure a goal counts, e.g. \"3d\")")
            if p.holdout > 0 and transactional and not (p.allow_transactional_holdout or allow_rule):
                problems.append(f"{where}.holdout: {rule} is transactional (a service message); holding it back "
                                "needs allow_transactional_holdout = true in this table")
            if "salt" not in given:
                warnings.append(f"{where}.salt: not set; the assignment uses an empty salt (set one, e.g. "
                                "\"2026-12\", to be able to draw new groups later)")
        for t in p.goal:
            why = type_problem(t, custom)
            if why:
                problems.append(f"{where}.goal: {why}")
        self.arms = self._arms(p.variants, where, problems)
        self.goal_if = None
        if p.goal_if:
            from .journeys import Compiled, Scope  # CEL is compiled only where a rule file uses it

            self.goal_if = Compiled(p.goal_if, f"{where}.goal_if", problems,
                                    Scope({"event": sorted(self.goal), "customer": None}, warnings, clv=clv))

    def _arms(self, variants: list, where: str, problems: list) -> list[Arm]:
        if not variants:
            return [Arm(TREATED, 1.0)]
        names, weights, arms = set(), [], []
        for i, v in enumerate(variants):
            at = f"{where}.variants[{i}]"
            for k in v:
                if k not in VARIANT_KEYS:
                    problems.append(f"{at}.{k}: unknown setting{suggest(k, VARIANT_KEYS)}")
            name = v.get("name")
            if not isinstance(name, str) or not name.strip():
                problems.append(f"{at}.name: missing (each variant needs a name)")
                name = f"#{i}"
            elif name in names:
                problems.append(f"{at}.name: {name!r} is used twice; variant names are unique")
            elif name == HOLDOUT:
                problems.append(f"{at}.name: {HOLDOUT!r} names the held-out group; choose another")
            names.add(name)
            w = v.get("weight", 1)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0 or w != w:
                problems.append(f"{at}.weight: must be a positive number, got {w!r}")
                w = 1
            weights.append(float(w))
            offer, channel, priority = v.get("offer"), v.get("channel"), v.get("priority")
            if offer is not None and not isinstance(offer, dict):
                problems.append(f"{at}.offer: expected a table (an object)")
                offer = None
            if channel is not None and (not isinstance(channel, str) or not channel.strip()):
                problems.append(f"{at}.channel: expected a non-empty string")
                channel = None
            if priority is not None and priority not in PRIORITIES:
                problems.append(f"{at}.priority: expected one of {', '.join(PRIORITIES)}, got {priority!r}")
                priority = None
            send_time = v.get("send_time")
            if send_time is not None and send_time not in SEND_TIMES:
                problems.append(f"{at}.send_time: expected one of {', '.join(SEND_TIMES)}, got {send_time!r}")
                send_time = None
            arms.append(Arm(name, 0.0, offer, channel, priority, send_time))
        total, acc = sum(weights), 0.0
        for arm, w in zip(arms, weights):
            acc += w
            arm.upto = acc / total
        arms[-1].upto = 1.0  # no rounding gap at the top
        return arms

    def assign(self, customer_id: str) -> Arm | None:
        """The customer's arm; None for the holdout."""
        u = unit(self.salt, self.rule, customer_id)
        h = self.holdout
        if u < h:
            return None
        x = (u - h) / (1 - h)
        for arm in self.arms:
            if x < arm.upto:
                return arm
        return self.arms[-1]

    def tag(self, arm: Arm | None) -> dict:
        """``data.experiment`` (and the audit's) for an arm."""
        return {"name": self.name, "variant": arm.name if arm is not None else HOLDOUT, "salt": self.salt}

    def describe(self, where: str) -> list[str]:
        lines = [f"{where}.salt = {self.salt!r}", f"{where}.holdout = {self.holdout!r}",
                 f"{where}.goal = {sorted(self.goal)!r}", f"{where}.window = {SETTINGS['window'].show(self.window)}"]
        if self.goal_if is not None:
            lines.append(f"{where}.goal_if = {self.goal_if.source!r}")
        for a, lo in zip(self.arms, [0.0] + [a.upto for a in self.arms]):
            over = {k: getattr(a, k) for k in ("offer", "channel", "priority", "send_time") if getattr(a, k) is not None}
            lines.append(f"{where}.arm {a.name}: {100 * (a.upto - lo) * (1 - self.holdout):.1f}% of customers"
                         + (f", {over}" if over else ""))
        return lines


def parse(rule: str, given, transactional: bool, allow_rule: bool, where: str, problems: list,
          warnings: list, custom=frozenset(), clv: bool = True) -> Experiment | None:
    if not isinstance(given, dict):
        problems.append(f"{where}: expected a table")
        return None
    return Experiment(rule, given, transactional, allow_rule, where, problems, warnings, custom, clv)
