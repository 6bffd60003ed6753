"""Settings of a configuration file: one configurable value (:class:`Param`),
a table of them checked at once (:func:`section`), and the error that lists
every problem (:class:`ConfigError`). The rule configuration
(``journey.core.config``), the rules' own parameters and the dispatcher's
routing file are all built from these."""

from __future__ import annotations

import copy
import difflib
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
        if k == "text":  # any string, may be empty (a condition, a template); choices if given
            if not isinstance(v, str):
                raise ValueError(f"{path}: expected a string, got {v!r}")
            if self.choices and v and v not in self.choices:
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
        if k == "tables":  # a list of tables (may be empty)
            if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
                raise ValueError(f"{path}: expected a list of tables, e.g. [{{ name = \"a\", weight = 1 }}]")
            return [dict(x) for x in v]
        if k == "numbers":  # a list of numbers (may be empty)
            if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, (int, float)) or x != x
                                              for x in v):
                raise ValueError(f"{path}: expected a list of numbers")
            return [float(x) for x in v]
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


def suggest(name: str, options) -> str:
    m = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {m[0]!r}?)" if m else ""


def section(params: dict[str, Param], given: dict, path: str, problems: list[str]) -> SimpleNamespace:
    ns = SimpleNamespace()
    for name, p in params.items():
        setattr(ns, name, p.parse(copy.deepcopy(p.default), f"{path}.{name}"))  # defaults parse like given values
    if not isinstance(given, dict):
        problems.append(f"{path}: expected a table, got {given!r}")
        return ns
    for name, v in given.items():
        if name not in params:
            problems.append(f"{path}.{name}: unknown setting{suggest(name, params)}")
            continue
        try:
            setattr(ns, name, params[name].parse(v, f"{path}.{name}"))
        except ValueError as e:
            problems.append(str(e))
    return ns
