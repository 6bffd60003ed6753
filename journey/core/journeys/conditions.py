"""Journey conditions and templates: CEL expressions compiled once at load (``Compiled``), the
``{expression}`` templates of ``reason`` and ``offer`` (``_template``), the values CEL sees
(``customer_snapshot``: the relationship as conditions read it)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from .. import health, policy
from ..celfast import Fallback, compile_fast
from ..timeutil import format_time

_PROP_REF = re.compile(r"\b(?:event|entry|then)\.props\.([A-Za-z_][A-Za-z0-9_]*)|"
                       r"\b(?:event|entry|then)\.props\[\s*['\"]([^'\"]+)['\"]\s*\]")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
