"""Journey conditions and templates: CEL expressions compiled once at load (``Compiled``), the
``{expression}`` templates of ``reason`` and ``offer`` (``_template``), the values CEL sees
(``customer_snapshot``: the relationship as conditions read it)."""

from __future__ import annotations

import difflib
import re
from datetime import UTC, datetime, timedelta

from .. import health, policy
from ..catalog import TYPES, fields_of
from ..celfast import Fallback, compile_fast
from ..timeutil import format_time

_PROP_REF = re.compile(r"\b(?:event|entry|then)\.props\.([A-Za-z_][A-Za-z0-9_]*)|"
                       r"\b(?:event|entry|then)\.props\[\s*['\"]([^'\"]+)['\"]\s*\]")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# what an expression may name (domain.md section 6): the event variables' fields, and the customer's
EVENT_FIELDS = ("type", "time", "props")
CUSTOMER_FIELDS = ("stage", "health", "orders", "net_spend", "tier", "last_order", "open_tickets", "timezone",
                   "p_alive", "clv")
CLV_FIELDS = ("p_alive", "clv")
_VARS = ("event", "entry", "then", "customer")
# names a comprehension macro binds: list.all(x, ...), exists, exists_one, map, filter; cel.bind(x, ...)
_BOUND = re.compile(r"(?:\.\s*(?:all|exists|exists_one|map|filter)|\bcel\s*\.\s*bind)\s*\(\s*([A-Za-z_]\w*)\s*,")
_LEX = re.compile(r"""(?P<str>[rRbB]{0,2}(?:'{3}[\s\S]*?'{3}|"{3}[\s\S]*?"{3}|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))
                  |(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<num>\d[\w.]*)|(?P<ws>\s+)|(?P<p>.)""", re.X)


class Scope:
    """What an expression may name where it is written: ``sees`` maps each variable it sees to the
    event types that variable can be (``customer``: None), and ``literals`` are the template
    words beside them (``{wait}``, ``{within}``), for did-you-mean. Near misses of a prop name
    that the catalogue knows for those types go to ``warnings`` (props are free: any prop an
    event carries may be named)."""

    __slots__ = ("sees", "warnings", "literals", "clv")

    def __init__(self, sees: dict, warnings: list | None = None, literals: tuple = (), clv: bool = True):
        """``clv``: a CLV model is configured (without one, customer.p_alive and customer.clv are never set)."""
        self.sees, self.warnings, self.literals, self.clv = sees, warnings, literals, clv

    def template(self, literals: tuple) -> Scope:
        return Scope(self.sees, self.warnings, literals, self.clv)

    def check(self, source: str, program, where: str, problems: list) -> None:
        """Problems for every name the expression uses that it cannot see: an unknown variable,
        a variable this setting does not see, an unknown field of event/entry/then/customer."""
        bound = set(_BOUND.findall(source))
        seen = ", ".join(v for v in _VARS if v in self.sees)
        for name in program.variables():
            if name in self.sees or name in bound:
                continue
            if name in _VARS:
                why = (f"names {name}, which is not set here" if name != "then" else
                       "names then, which only a sequence journey (then/within) sets")
                problems.append(f"{where}: {why}; here an expression may name {seen}")
            else:
                near = difflib.get_close_matches(name, [v for v in _VARS if v in self.sees] + list(self.literals),
                                                 n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                problems.append(f"{where}: unknown name {name!r}{hint}; here an expression may name {seen}"
                                + (f" (or {' or '.join('{' + x + '}' for x in self.literals)} alone)"
                                   if self.literals else ""))
        toks = [(m.lastgroup, m.group()) for m in _LEX.finditer(source) if m.lastgroup != "ws"]
        done = set()
        for i, (kind, text) in enumerate(toks):
            if kind != "name" or text not in self.sees or text in bound or (i and toks[i - 1][1] == "."):
                continue
            field, j = _member(toks, i + 1)
            if field is None:
                continue
            allowed = CUSTOMER_FIELDS if text == "customer" else EVENT_FIELDS
            if text == "customer" and field in CLV_FIELDS and not self.clv:
                if (text, field) not in done:
                    done.add((text, field))
                    problems.append(f"{where}: customer.{field} is set only with a CLV model ([clv] model, "
                                    "fitted by journey clv fit); without one the expression always fails")
                continue
            if field not in allowed:
                if (text, field) not in done:
                    done.add((text, field))
                    near = difflib.get_close_matches(field, allowed, n=1)
                    hint = f" (did you mean {text}.{near[0]}?)" if near else ""
                    problems.append(f"{where}: {text}.{field} is not a field{hint}; {text} has "
                                    f"{', '.join(allowed)}")
                continue
            if field != "props" or self.warnings is None:
                continue
            prop, _ = _member(toks, j)
            types = self.sees.get(text) or ()
            if prop is None or not types or any(t not in TYPES for t in types):
                continue
            known = sorted({f for t in types for f in fields_of(t)})
            if prop in known or (text, prop) in done:
                continue
            done.add((text, prop))
            near = difflib.get_close_matches(prop, known, n=1, cutoff=0.75)
            if near:
                self.warnings.append(f"{where}: {text}.props.{prop}: {' and '.join(types)} events carry no such "
                                     f"prop in the catalogue (did you mean {text}.props.{near[0]}?); a prop an "
                                     "event lacks makes a condition false and shows ? in a template")


def _member(toks: list, i: int) -> tuple[str | None, int]:
    """The member named at ``toks[i]`` (``.name`` or ``["name"]``) and the index after it."""
    if i + 1 < len(toks) and toks[i][1] == "." and toks[i + 1][0] == "name":
        return toks[i + 1][1], i + 2
    if i + 2 < len(toks) and toks[i][1] == "[" and toks[i + 1][0] == "str" and toks[i + 2][1] == "]":
        lit = toks[i + 1][1].lstrip("rRbB")
        q = 3 if lit[:3] in ('"' * 3, "'" * 3) else 1
        return lit[q:-q], i + 3
    return None, i


class Compiled:
    """One CEL expression, compiled at load."""

    __slots__ = ("source", "program", "fast", "needs", "customer", "fields", "props")

    def __init__(self, source: str, where: str, problems: list, scope: Scope | None = None):
        """``scope``: what the expression may name where it is written (checked at load when given)."""
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
            if scope is not None:
                scope.check(source, self.program, where, problems)

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


def _template(text: str, where: str, problems: list, scope: Scope | None = None,
              literals: tuple = ("wait", "within")) -> list | None:
    """``"viewed {entry.props.product_id}"`` -> parts: str, or ("cel", Compiled), or ("lit", name).
    ``literals``: the words that stand alone in braces here (``{wait}``, ``{within}``; one the
    journey does not set would show nothing, so it is a problem); ``scope``: what the expressions
    may name."""
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
                if expr not in literals:
                    problems.append(f"{where} (position {i + 1}): {{{expr}}} shows nothing here: the journey "
                                    f"sets no {expr}" + (f" (it has {', '.join('{' + x + '}' for x in literals)})"
                                                         if literals else ""))
                parts.append(("lit", expr))
            else:
                parts.append(("cel", Compiled(expr, f"{where} (position {i + 1})", problems,
                                              scope.template(literals) if scope is not None else None)))
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


def customer_snapshot(eng, st, now: int, fields=None) -> dict:
    """``customer`` in CEL: the relationship as the conditions see it. ``fields``: only these (the
    names an expression uses; None: all), since some cost (health decays, open tickets, CLV)."""
    def need(k: str) -> bool:
        return fields is None or k in fields
    c = {}
    if need("stage"):
        c["stage"] = st.stage
    if need("health"):
        c["health"] = float(health.score(st.hdev, st.hts, now, eng.cfg.health.half_life))
    if need("orders"):
        c["orders"] = st.orders
    if need("net_spend"):
        c["net_spend"] = st.spend / 100
    if need("tier"):
        tier = ""
        for n, threshold in eng.cfg.rules["spend_tier"].tiers.items():
            if st.spend / 100 >= threshold:
                tier = n
        c["tier"] = tier
    if need("open_tickets"):
        c["open_tickets"] = len(policy.open_tickets(st, now, eng.cfg.policy.open_ticket_max_age))
    if need("timezone"):
        c["timezone"] = st.tz or eng.cfg.policy.default_timezone
    if need("last_order") and st.last_order is not None:
        c["last_order"] = _ts(st.last_order)
    if (need("p_alive") or need("clv")) and eng.clv is not None and st.clv is not None:
        pa, _ep, value = eng.clv.value(st, now)
        c["p_alive"] = float(pa)
        if value is not None:
            c["clv"] = float(value)
    return c
