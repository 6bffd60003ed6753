"""Rule configuration: every number of the default rule pack, the contact
policy and the engine, overridable from a TOML or YAML file.

    [policy]
    max_per_window = 3
    [rules.cart_abandoned]
    delay = "45m"

``load_config(path)`` validates the whole file and raises :class:`ConfigError`
listing every problem (``journey rules check FILE`` prints them).
"""

from __future__ import annotations

import copy
import difflib
import tomllib
from pathlib import Path
from types import SimpleNamespace

from .timeutil import TimeError, format_duration, parse_clock, parse_duration, zone


class ConfigError(ValueError):
    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class Param:
    """One configurable value: its kind, default and a line of help."""

    def __init__(self, kind: str, default, help: str = "", choices=None, minimum=None):
        self.kind, self.default, self.help, self.choices, self.minimum = kind, default, help, choices, minimum

    def parse(self, v, path: str):
        k = self.kind
        if k == "duration":
            try:
                return parse_duration(v)
            except TimeError as e:
                raise ValueError(f"{path}: {e}") from None
        if k in ("int", "number"):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (k == "int" and not float(v).is_integer()):
                raise ValueError(f"{path}: expected {'a whole number' if k == 'int' else 'a number'}, got {v!r}")
            if self.minimum is not None and v < self.minimum:
                raise ValueError(f"{path}: must be at least {self.minimum}, got {v!r}")
            return int(v) if k == "int" else float(v)
        if k == "bool":
            if not isinstance(v, bool):
                raise ValueError(f"{path}: expected true or false, got {v!r}")
            return v
        if k == "str":
            if not isinstance(v, str) or not v.strip():
                raise ValueError(f"{path}: expected a non-empty string, got {v!r}")
            if self.choices and v not in self.choices:
                raise ValueError(f"{path}: expected one of {', '.join(self.choices)}, got {v!r}")
            return v
        if k == "path":
            if not isinstance(v, str):
                raise ValueError(f"{path}: expected a file path, got {v!r}")
            return v
        if k == "clock":
            try:
                return parse_clock(v)
            except TimeError as e:
                raise ValueError(f"{path}: {e}") from None
        if k == "timezone":
            try:
                zone(v)
            except TimeError as e:
                raise ValueError(f"{path}: {e}") from None
            return v
        if k == "table":
            if not isinstance(v, dict):
                raise ValueError(f"{path}: expected a table (an object), got {v!r}")
            return v
        if k == "strs":  # a list of strings (may be empty)
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ValueError(f"{path}: expected a list of strings")  # never echo: may hold secrets
            return list(v)
        if k == "ints":  # ascending positive whole numbers
            if (not isinstance(v, list) or not v or any(isinstance(x, bool) or not isinstance(x, int) or x <= 0 for x in v)
                    or v != sorted(set(v))):
                raise ValueError(f"{path}: expected an ascending list of positive whole numbers, got {v!r}")
            return list(v)
        if k == "tiers":  # name -> threshold, ascending
            if (not isinstance(v, dict) or not v
                    or any(isinstance(x, bool) or not isinstance(x, (int, float)) or x <= 0 for x in v.values())):
                raise ValueError(f"{path}: expected a table of tier name = positive amount, got {v!r}")
            vals = list(v.values())
            if vals != sorted(vals) or len(set(vals)) != len(vals):
                raise ValueError(f"{path}: tier thresholds must rise in the order given, got {v!r}")
            return {str(n): float(x) for n, x in v.items()}
        raise AssertionError(k)

    def show(self, value) -> str:
        if self.kind == "duration":
            return format_duration(value)
        if self.kind == "clock":
            return f"{value // 60:02d}:{value % 60:02d}"
        return repr(value)


SECTIONS: dict[str, dict[str, Param]] = {
    "engine": {
        "allowed_lateness": Param("duration", "10s", "how late an event may arrive and still be ordered by event time"),
        "idle_timeout": Param("duration", "5s", "live worker: a partition quiet this long (wall time) has its watermark "
                                                "moved on with the wall clock, so timers fire without new events"),
        "max_record_bytes": Param("int", 1 << 20, "larger records are dead-lettered", minimum=1),
        "dedup_window": Param("duration", "24h", "an event id is remembered this long (event time) after the customer's newest event"),
        "dedup_max_ids": Param("int", 32, "event ids remembered per customer at most", minimum=1),
    },
    "policy": {
        "consent_default": Param("str", "granted", "consent of a customer who never stated it", choices=("granted", "denied")),
        "max_per_window": Param("int", 3, "marketing triggers per customer per window", minimum=1),
        "window": Param("duration", "7d", "the rolling window of the frequency cap"),
        "min_gap": Param("duration", "12h", "least time between two marketing triggers"),
        "quiet_start": Param("clock", "21:00", "customer-local start of quiet hours"),
        "quiet_end": Param("clock", "08:00", "customer-local end of quiet hours (deferred triggers go out then)"),
        "health_floor": Param("number", 30, "below this health, recognition and marketing are held back", minimum=0),
        "open_ticket_max_age": Param("duration", "30d", "a ticket open longer than this no longer gates marketing"),
        "default_timezone": Param("timezone", "UTC", "time zone of a customer who never stated one"),
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
    "stages": {
        "loyal_orders": Param("int", 5, "orders from which a customer counts as loyal", minimum=1),
        "at_risk_after": Param("duration", "90d", "no order for this long: at_risk (without a CLV model)"),
        "lapsed_after": Param("duration", "180d", "no order for this long: lapsed (without a CLV model)"),
    },
}


def _suggest(name: str, options) -> str:
    m = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {m[0]!r}?)" if m else ""


def _section(params: dict[str, Param], given: dict, path: str, problems: list[str]) -> SimpleNamespace:
    ns = SimpleNamespace()
    for name, p in params.items():
        setattr(ns, name, p.parse(copy.deepcopy(p.default), f"{path}.{name}"))  # defaults parse like given values
    if not isinstance(given, dict):
        problems.append(f"{path}: expected a table, got {given!r}")
        return ns
    for name, v in given.items():
        if name not in params:
            problems.append(f"{path}.{name}: unknown setting{_suggest(name, params)}")
            continue
        try:
            setattr(ns, name, params[name].parse(v, f"{path}.{name}"))
        except ValueError as e:
            problems.append(str(e))
    return ns


class Config:
    """A validated configuration. ``rules`` maps rule name -> parameters."""

    def __init__(self, data: dict | None = None, source: str = "defaults"):
        from .rules import REGISTRY  # the registry imports rule modules, which import this one

        data = data or {}
        self.source = source
        problems: list[str] = []
        if not isinstance(data, dict):
            raise ConfigError([f"{source}: expected a table at the top level"])
        for name in data:
            if name not in SECTIONS and name != "rules":
                problems.append(f"{name}: unknown section{_suggest(name, list(SECTIONS) + ['rules'])}")
        for sec, params in SECTIONS.items():
            setattr(self, sec, _section(params, data.get(sec, {}), sec, problems))
        rules_given = data.get("rules", {})
        if not isinstance(rules_given, dict):
            problems.append("rules: expected a table of rule tables")
            rules_given = {}
        for name in rules_given:
            if name not in REGISTRY:
                problems.append(f"rules.{name}: unknown rule{_suggest(name, REGISTRY)}; known rules: {', '.join(REGISTRY)}")
        self.rules = {name: _section(rule.all_params(), rules_given.get(name, {}), f"rules.{name}", problems)
                      for name, rule in REGISTRY.items()}
        if not problems:
            for rule in REGISTRY.values():
                problems.extend(rule.check(self))
        if self.stages.lapsed_after < self.stages.at_risk_after:
            problems.append("stages.lapsed_after: must not be shorter than stages.at_risk_after")
        self.clv_model = None
        if self.clv.model and not problems:
            self.clv_model = _load_model(self.clv.model, source, problems)
        if not 0 < self.clv.lapsed_below <= self.clv.at_risk_below < 1:
            problems.append("clv: need 0 < lapsed_below <= at_risk_below < 1")
        if problems:
            raise ConfigError(problems)

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
        return lines


def _load_model(path: str, source: str, problems: list):
    import orjson

    from .clv import Model

    p = Path(path)
    if not p.is_absolute() and source not in ("defaults", ""):
        p = Path(source).parent / p
    try:
        return Model.from_dict(orjson.loads(p.read_bytes()))
    except OSError as e:
        problems.append(f"clv.model: cannot read {p}: {e.strerror} (create it with: journey clv fit)")
    except (ValueError, orjson.JSONDecodeError) as e:
        problems.append(f"clv.model: {p}: {e}")
    return None


def read_table(path: str | Path) -> dict:
    """A TOML (``.toml``) or YAML (``.yaml``/``.yml``) file as a dict; ConfigError if unreadable."""
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as e:
        raise ConfigError([f"{p}: cannot read: {e.strerror}"]) from None
    yaml_file = p.suffix.lower() in (".yaml", ".yml")
    try:
        if yaml_file:
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text.decode())
    except Exception as e:  # the parsers' own messages say where
        raise ConfigError([f"{p}: not valid {'YAML' if yaml_file else 'TOML'}: {e}"]) from None
    return data


def load_config(path: str | Path | None) -> Config:
    """Load and validate a TOML (``.toml``) or YAML (``.yaml``/``.yml``) rule file."""
    if path is None:
        return Config()
    return Config(read_table(path), source=str(Path(path)))
