"""Rule configuration: every number of the default rule pack, the contact
policy and the engine, overridable from a TOML or YAML file.

    [policy]
    max_per_window = 3
    [rules.cart_abandoned]
    delay = "45m"

``Config(data)`` validates a whole rule file's contents and raises
:class:`ConfigError` listing every problem (``journey rules check FILE``
prints them). Reading the file is the shells' part (``journey.io.rulefile``):
the core reads nothing.
"""

from __future__ import annotations

from .params import ConfigError, Param, section, suggest

__all__ = ["SECTIONS", "Config", "ConfigError", "Param"]


SECTIONS: dict[str, dict[str, Param]] = {
    "engine": {
        "allowed_lateness": Param("duration", "10s", "how late an event may arrive and still be ordered by event time"),
        "idle_timeout": Param("duration", "5s", "live worker: a partition quiet this long (wall time) has its watermark "
                                                "moved on with the wall clock, so timers fire without new events"),
        "max_record_bytes": Param("int", 1 << 20, "larger records are dead-lettered", minimum=1),
        "future_horizon": Param("duration", "1d", "live: an event this far ahead of the wall clock (or of the "
                                                  "partition's watermark, if later) is dead-lettered as future_time "
                                                  "and never moves event time; replay applies it against --now; "
                                                  "0s turns the check off"),
        "dedup_window": Param("duration", "24h", "an event id is remembered this long (event time) after the customer's newest event"),
        "dedup_max_ids": Param("int", 1000, "event ids remembered per customer at most (about 36 bytes each in "
                                            "state); past it, events older than the oldest id remembered count "
                                            "as redeliveries", minimum=1),
    },
    "policy": {
        "consent_default": Param("str", "granted", "consent of a customer who never stated it", choices=("granted", "denied")),
        "max_per_window": Param("int", 3, "marketing triggers per customer per window", minimum=1),
        "window": Param("duration", "7d", "the rolling window of the frequency cap"),
        "min_gap": Param("duration", "12h", "least time between two marketing triggers"),
        "arbitration_window": Param("duration", "0s", "a customer's marketing triggers coming due within this "
                                                      "long of the first are decided together, the best first "
                                                      "(section 9); 0s: off, the first due is decided first"),
        "rank": Param("strs", [], "rules and journeys in the order arbitration prefers them at equal priority "
                                  "(unlisted ones after, in name order)"),
        "max_per_day": Param("int", 0, "marketing triggers per customer per calendar day in the customer's time "
                                       "zone, alongside the rolling cap (0: no daily limit)", minimum=0),
        "quiet_start": Param("clock", "21:00", "customer-local start of quiet hours"),
        "quiet_end": Param("clock", "08:00", "customer-local end of quiet hours (deferred triggers go out then)"),
        "health_floor": Param("number", 30, "below this health, recognition and marketing are held back", minimum=0),
        "open_ticket_max_age": Param("duration", "30d", "a ticket open longer than this no longer gates marketing"),
        "default_timezone": Param("timezone", "UTC", "time zone of a customer who never stated one"),
        "global_holdout": Param("number", 0.0, "share of customers held out of every marketing trigger "
                                               "(audit global_holdout; transactional triggers still go)", minimum=0),
        "global_salt": Param("text", "", "salt of the global holdout: a new salt draws a new group"),
    },
    "send_time": {
        "prior": Param("numbers", [], "168 non-negative numbers, the prior share of each local hour-of-week "
                                      "(Monday 00:00 first); empty: equal shares"),
        "prior_weight": Param("number", 1.0, "weight of the prior against the customer's decayed engagement",
                              minimum=0),
        "half_life": Param("duration", "30d", "an open or click halves in weight this often (event time)"),
    },
    "privacy": {
        "erasure_salt": Param("text", "", "salt of the digests kept of erased ids: SHA-256 of <salt>/<id> "
                                          "(domain.md section 9); changing it forgets every erasure kept"),
    },
    "health": {
        "half_life": Param("duration", "30d", "each touch point's weight halves this often"),
    },
    "clv": {
        "model": Param("path", "", "a fitted model from `journey clv fit` (relative to the rule file); enables "
                                   "P(alive) stages, CLV in the relationship snapshot, and win_back"),
        "horizon": Param("duration", "52w", "horizon of expected purchases and CLV"),
        "annual_discount": Param("number", 0.1, "yearly discount rate of CLV", minimum=0),
        "at_risk_below": Param("number", 0.5, "P(alive) below this: at_risk (customers with repeat purchases)"),
        "lapsed_below": Param("number", 0.2, "P(alive) below this: lapsed"),
    },
    "events": {
        "custom": Param("strs", [], "event types of your own that journeys and experiment goals may name, as they "
                                    "arrive (an event name the catalogue does not know is kept as written)"),
    },
    "stages": {
        "loyal_orders": Param("int", 5, "orders from which a customer counts as loyal", minimum=1),
        "at_risk_after": Param("duration", "90d", "no order for this long: at_risk (without a CLV model)"),
        "lapsed_after": Param("duration", "180d", "no order for this long: lapsed (without a CLV model)"),
    },
}


class Config:
    """A validated configuration. ``rules`` maps rule name -> parameters."""

    def __init__(self, data: dict | None = None, source: str = "defaults", load_model=None):
        """``load_model(path, source)`` returns the fitted CLV model that ``[clv] model``
        names, or raises ValueError saying why not (the shells read the file)."""
        from .rules import REGISTRY  # the registry imports rule modules, which import this one

        data = data or {}
        self.source = source
        problems: list[str] = []
        if not isinstance(data, dict):
            raise ConfigError([f"{source}: expected a table at the top level"])
        for name in data:
            if name not in SECTIONS and name not in ("rules", "journeys"):
                problems.append(f"{name}: unknown section{suggest(name, list(SECTIONS) + ['rules', 'journeys'])}")
        for sec, params in SECTIONS.items():
            setattr(self, sec, section(params, data.get(sec, {}), sec, problems))
        rules_given = data.get("rules", {})
        if not isinstance(rules_given, dict):
            problems.append("rules: expected a table of rule tables")
            rules_given = {}
        for name in rules_given:
            if name not in REGISTRY:
                problems.append(f"rules.{name}: unknown rule{suggest(name, REGISTRY)}; known rules: {', '.join(REGISTRY)}")
        # experiments are tables of their own inside a rule's or a journey's table
        rules_given, exp_rules = _split_experiments(rules_given)
        journeys_given, exp_journeys = _split_experiments(data.get("journeys"))
        self.rules = {name: section(rule.all_params(), rules_given.get(name, {}), f"rules.{name}", problems)
                      for name, rule in REGISTRY.items()}
        if not problems:
            for rule in REGISTRY.values():
                problems.extend(rule.check(self))
        from .catalog import custom_type_problem
        from .journeys import parse_journeys  # compiles CEL: only where a rule file has journeys

        for t in self.events.custom:
            why = custom_type_problem(t)
            if why:
                problems.append(f"events.custom: {why}")
        custom = frozenset(self.events.custom)
        self.warnings: list[str] = []
        clv = bool(self.clv.model)  # customer.p_alive and customer.clv are set only with a model
        self.journeys = parse_journeys(journeys_given, REGISTRY, problems, self.warnings, custom, clv) \
            if journeys_given is not None else {}
        from . import experiments

        self.experiments = {}
        for sec, given_exps, owners in (("rules", exp_rules, REGISTRY), ("journeys", exp_journeys, self.journeys)):
            for name, (given, allow) in given_exps.items():
                owner = owners.get(name)
                if owner is None:
                    continue  # an unknown rule or a journey that did not parse: reported above
                transactional = owner.transactional
                if allow is not None and not isinstance(allow, bool):
                    problems.append(f"{sec}.{name}.allow_transactional_holdout: expected true or false")
                    allow = False
                exp = experiments.parse(name, given, transactional, bool(allow), f"{sec}.{name}.experiment",
                                        problems, self.warnings, custom, clv)
                if exp is not None:
                    self.experiments[name] = exp
        if self.send_time.prior and (len(self.send_time.prior) != 168 or any(x < 0 for x in self.send_time.prior)
                                     or not sum(self.send_time.prior) > 0):
            problems.append("send_time.prior: 168 non-negative numbers (one per local hour of the week, Monday "
                            f"00:00 first), not all zero; got {len(self.send_time.prior)}")
        names = set(REGISTRY) | set(self.journeys)
        for r in self.policy.rank:
            if r not in names:
                problems.append(f"policy.rank: {r!r} is not a rule or a journey{suggest(r, sorted(names))}")
        if len(set(self.policy.rank)) != len(self.policy.rank):
            problems.append("policy.rank: a name is listed twice")
        if self.send_time.half_life <= 0:
            problems.append("send_time.half_life: must be longer than 0s")
        if not 0 <= self.policy.global_holdout < 1:
            problems.append(f"policy.global_holdout: a share in [0, 1), got {self.policy.global_holdout!r}")
        # the event types whose props journeys and goal conditions read (intake keeps them for
        # those types only)
        self.keep_props = frozenset(t for j in self.journeys.values() for t in j.events) | frozenset(
            t for e in self.experiments.values() if e.goal_if is not None for t in e.goal)
        if self.stages.lapsed_after < self.stages.at_risk_after:
            problems.append("stages.lapsed_after: must not be shorter than stages.at_risk_after")
        self.clv_model = None
        if self.clv.model and not problems:
            if load_model is None:
                problems.append("clv.model: a model file is read only from a rule file (journey.io.rulefile)")
            else:
                try:
                    self.clv_model = load_model(self.clv.model, source)
                except ValueError as e:
                    problems.append(f"clv.model: {e}")
        if not 0 < self.clv.lapsed_below <= self.clv.at_risk_below < 1:
            problems.append("clv: need 0 < lapsed_below <= at_risk_below < 1")
        if problems:
            raise ConfigError(problems)

    def fingerprint(self) -> str:
        """The rules in force in 12 hex digits: SHA-256 of :meth:`describe` (every setting, the
        defaults included), so two files that differ only in comments, layout, the order of tables,
        TOML or YAML, or in spelling a default out, have the same one; the order of the journeys
        counts (the engine runs them in that order). ``journey rules check`` prints
        it; a worker logs it at start and exports it (``journey_rules_info``)."""
        import hashlib

        return hashlib.sha256("\n".join(self.describe()).encode()).hexdigest()[:12]

    def describe(self) -> list[str]:
        """Every setting in force, one per line, for ``journey rules show``."""
        from .rules import REGISTRY

        lines = []
        for sec, params in SECTIONS.items():
            for name, p in params.items():
                lines.append(f"{sec}.{name} = {p.show(getattr(getattr(self, sec), name))}")
        for rname, rule in REGISTRY.items():
            for name, p in rule.all_params().items():
                lines.append(f"rules.{rname}.{name} = {p.show(getattr(self.rules[rname], name))}")
        from .journeys import SETTINGS

        for name, exp in self.experiments.items():
            sec = "journeys" if name in self.journeys else "rules"
            lines.extend(exp.describe(f"{sec}.{name}.experiment"))
        for jname, j in self.journeys.items():
            if j.multi:  # the entry's settings, then the steps in order (each with its own)
                entry = ", entry by count" if j.shape == "count" else ""
                n = len(j.steps)
                lines.append(f"journeys.{jname}  (multi-step, {n} step{'s' if n != 1 else ''}{entry})")
            else:
                lines.append(f"journeys.{jname}  ({j.shape})")
            for name, p in SETTINGS.items():
                v = getattr(j.p, name)
                if (v in ("", [], {}, 0) and name not in ("kind", "transactional")) or name == "steps":
                    continue
                if name in ("send_time", "send_within") and j.p.send_time == "now":
                    continue  # the default: sends go when due
                lines.append(f"journeys.{jname}.{name} = {p.show(v)}")
            if j.multi:
                lines.extend(j.describe_steps(f"journeys.{jname}"))
        return lines


def _split_experiments(tables):
    """``{name: table}`` -> (the tables without their experiment, ``{name: (experiment,
    allow_transactional_holdout or None)}``)."""
    if not isinstance(tables, dict):
        return tables, {}
    rest, exps = {}, {}
    for name, t in tables.items():
        if isinstance(t, dict) and ("experiment" in t or "allow_transactional_holdout" in t):
            t = dict(t)
            exp, allow = t.pop("experiment", None), t.pop("allow_transactional_holdout", None)
            if exp is not None:
                exps[name] = (exp, allow)
        rest[name] = t
    return rest, exps
