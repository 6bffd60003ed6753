"""Customer lifetime value: BG/NBD (Fader, Hardie & Lee 2005) for purchase
counts and P(alive), Gamma-Gamma (Fader, Hardie & Lee 2005b) for spend.

Time is in weeks. Purchases are counted per UTC calendar day: several orders
on one day are one purchase occasion (their revenue is summed), as in the
published CDNOW analyses. For a customer:

* x   = repeat purchase days (distinct purchase days after the first)
* t_x = weeks from the first to the last purchase day
* T   = weeks from the first purchase day to "now"
* m   = mean revenue of the repeat purchase days

The per-customer sufficient statistics ``[first_day, last_day, x,
repeat_cents]`` are kept in customer state (``CustomerState.clv``), updated
by :func:`add_order` in the stream and in batch alike.

This is the stream side (statistics, the model's formulas, the model applied
to customer state); fitting a model to a log is the file shell's
(``journey.history.clvfit``).
"""

from __future__ import annotations

import math

from .timeutil import MS_DAY, MS_WEEK

# -- sufficient statistics (pure Python, on the hot path) -------------------------


def add_order(stats: list | None, ts: int, cents: int) -> list:
    """Fold one completed order into ``[first_day, last_day, x, repeat_cents]``."""
    day = ts // MS_DAY
    if stats is None:
        return [day, day, 0, 0]
    first, last, x, rep = stats
    if day < first:  # a late, earlier order: it becomes the first purchase day
        return [day, last, x + 1, rep]
    if day > last:
        return [first, day, x + 1, rep + cents]
    if day != first:
        stats[3] = rep + cents  # same repeat day: one occasion, more spend
    return stats


def summary(stats: list, now: int) -> tuple[int, float, float, float]:
    """(x, t_x, T, m) at event time ``now`` (ms)."""
    first, last, x, rep = stats
    t_x = (last - first) / 7
    T = (now - first * MS_DAY) / MS_WEEK
    m = rep / 100 / x if x else 0.0
    return x, t_x, T, m


# -- the model ----------------------------------------------------------------------

# fitted parameters outside this range sit at an edge the data did not identify (the
# published CDNOW fit: r=0.24 alpha=4.41 a=0.79 b=2.43, p=6.25 q=3.74 v=15.44)
_PLAUSIBLE = (1e-4, 1e4)
NEEDS = ("the model needs customers with repeat purchases spread over a calibration period long enough to see "
         "some of them stop buying (a year or more of orders; CDNOW's calibration is 39 weeks of 78), and spend "
         "that differs between customers")

class Model:
    """Fitted BG/NBD (r, alpha, a, b) and Gamma-Gamma (p, q, v) parameters."""

    def __init__(self, r, alpha, a, b, p=None, q=None, v=None, diagnostics=None):
        self.r, self.alpha, self.a, self.b = r, alpha, a, b
        self.p, self.q, self.v = p, q, v
        self.diagnostics = diagnostics or {}

    def to_dict(self) -> dict:
        return {"bgnbd": {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b},
                "gamma_gamma": None if self.p is None else {"p": self.p, "q": self.q, "v": self.v},
                "time_unit": "week", "purchase_period": "UTC day", "diagnostics": self.diagnostics}

    def problems(self) -> list[str]:
        """Why this model must not be used (empty when it may): a fit that did not converge,
        or parameters at a degenerate edge (the data did not identify them)."""
        out = []
        d = self.diagnostics
        if d.get("bgnbd_converged") is False:
            out.append("the BG/NBD fit did not converge")
        bad = [f"{n}={v:.4g}" for n, v in (("r", self.r), ("alpha", self.alpha), ("a", self.a), ("b", self.b))
               if not (isinstance(v, (int, float)) and math.isfinite(v) and _PLAUSIBLE[0] <= v <= _PLAUSIBLE[1])]
        if bad:
            out.append(f"BG/NBD parameters at a degenerate edge ({', '.join(bad)})")
        if self.p is not None:
            if d.get("gamma_gamma_converged") is False:
                out.append("the Gamma-Gamma fit did not converge")
            bad = [f"{n}={v:.4g}" for n, v in (("p", self.p), ("q", self.q), ("v", self.v))
                   if not (isinstance(v, (int, float)) and math.isfinite(v) and _PLAUSIBLE[0] <= v <= _PLAUSIBLE[1])]
            if bad:
                out.append(f"Gamma-Gamma parameters at a degenerate edge ({', '.join(bad)}): spend does not vary "
                           "between customers enough to fit it")
        for k in ("bgnbd_loglik", "gamma_gamma_loglik"):
            v = d.get(k)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
                out.append(f"{k} is not finite")
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Model:
        try:
            bg = d["bgnbd"]
            gg = d.get("gamma_gamma") or {}
            return cls(float(bg["r"]), float(bg["alpha"]), float(bg["a"]), float(bg["b"]),
                       gg.get("p"), gg.get("q"), gg.get("v"), d.get("diagnostics"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a journey CLV model ({e}); create one with: journey clv fit") from None

    # P(alive | x, t_x, T) -- FHL (2005), eq. 13
    def p_alive(self, x: int, t_x: float, T: float) -> float:
        if x == 0:
            return 1.0
        r, al, a, b = self.r, self.alpha, self.a, self.b
        ln = math.log(a / (b + x - 1)) + (r + x) * math.log((al + T) / (al + t_x))
        return 1.0 / (1.0 + math.exp(ln)) if ln < 700 else 0.0

    def when_p_alive_below(self, x: int, t_x: float, threshold: float) -> float | None:
        """The T (weeks) at which P(alive) falls to ``threshold`` if nothing else
        is bought (None if it never does: x == 0 under BG/NBD)."""
        if x == 0 or not 0 < threshold < 1:
            return None
        r, al, a, b = self.r, self.alpha, self.a, self.b
        k = a / (b + x - 1)
        target = (1 / threshold - 1) / k
        return (al + t_x) * target ** (1 / (r + x)) - al

    # E[X(t) | x, t_x, T] -- FHL (2005), eq. 10
    def expected_purchases(self, t: float, x: int, t_x: float, T: float) -> float:
        """Expected purchases in (T, T + t] (scalar math; about 2 us a call)."""
        from scipy.special import hyp2f1

        if t <= 0:
            return 0.0
        r, al, a, b = self.r, self.alpha, self.a, self.b
        head = (a + b + x - 1) / (a - 1)
        body = 1 - ((al + T) / (al + T + t)) ** (r + x) * float(hyp2f1(r + x, b + x, a + b + x - 1, t / (al + T + t)))
        denom = 1 + ((a / (b + x - 1)) * ((al + T) / (al + t_x)) ** (r + x) if x > 0 else 0.0)
        return head * body / denom

    # E[M | x, m] -- the Gamma-Gamma conditional expected spend per purchase
    def expected_spend(self, x: int, m: float) -> float | None:
        if self.p is None:
            return None
        p, q, v = self.p, self.q, self.v
        return (p * (v + x * m)) / (p * x + q - 1)

    def clv(self, x, t_x, T, m, horizon_weeks: float, annual_discount: float, steps: int = 4) -> float | None:
        """Expected spend over the horizon, discounted per step, with the
        Gamma-Gamma spend estimate."""
        return self.clv_and_purchases(x, t_x, T, m, horizon_weeks, annual_discount, steps)[0]

    def clv_and_purchases(self, x, t_x, T, m, horizon_weeks, annual_discount, steps: int = 4):
        """(CLV, expected purchases) over the horizon: the expected purchases of each of
        ``steps`` periods (quarters of a year's horizon by default), discounted to now,
        times the Gamma-Gamma expected spend per purchase."""
        total, prev = 0.0, 0.0
        for i in range(1, steps + 1):
            t = horizon_weeks * i / steps
            e = self.expected_purchases(t, x, t_x, T)
            total += (e - prev) / (1 + annual_discount) ** (t / 52.0)
            prev = e
        spend = self.expected_spend(x, m)
        return (None if spend is None else total * spend), prev


# -- in the stream -----------------------------------------------------------------------

class StreamModel:
    """The fitted model applied to customer state at event time (used by the engine)."""

    def __init__(self, model: Model, cfg):
        self.m = model
        self.c = cfg.clv
        self.stages = cfg.stages
        self.horizon_w = cfg.clv.horizon / MS_WEEK

    def summary(self, st, now: int):
        return summary(st.clv, now)

    def p_alive(self, st, now: int) -> float:
        x, t_x, T, _m = summary(st.clv, now)
        return self.m.p_alive(x, t_x, T)

    def crossing(self, st, threshold: float) -> int | None:
        """Event time (ms) at which P(alive) falls below ``threshold`` without a new purchase."""
        first, last, x, _rep = st.clv
        T = self.m.when_p_alive_below(x, (last - first) / 7, threshold)
        if T is None:
            return None
        return first * MS_DAY + math.ceil(T * MS_WEEK) + 1

    def stage_times(self, st) -> list[int]:
        if st.clv is None or st.clv[2] == 0:  # one purchase day: BG/NBD keeps P(alive) at 1; use recency
            return [st.last_order + self.stages.at_risk_after, st.last_order + self.stages.lapsed_after]
        return [t for t in (self.crossing(st, self.c.at_risk_below), self.crossing(st, self.c.lapsed_below)) if t]

    def stage(self, eng, st, now: int) -> str:
        from . import health

        if st.orders == 0 or st.clv is None:
            return "prospect"
        if st.clv[2] == 0:
            return health.stage(st.orders, st.last_order, now, self.stages)
        pa = self.p_alive(st, now)
        if pa < self.c.lapsed_below:
            return "lapsed"
        if pa < self.c.at_risk_below:
            return "at_risk"
        return health.stage(st.orders, st.last_order, st.last_order, self.stages)

    def value(self, st, now: int) -> tuple[float, float, float | None]:
        """(P(alive), expected purchases over the horizon, CLV over the horizon)."""
        x, t_x, T, m = summary(st.clv, now)
        if x == 0:
            m = (st.spend / 100) / max(1, st.orders)
        value, purchases = self.m.clv_and_purchases(x, t_x, T, m, self.horizon_w, self.c.annual_discount)
        return self.m.p_alive(x, t_x, T), purchases, value

    def snapshot(self, eng, st, now: int) -> dict:
        if st.clv is None:
            return {"p_alive": None, "expected_purchases": None, "clv": None}
        pa, ep, value = self.value(st, now)
        return {"p_alive": round(pa, 4), "expected_purchases": round(ep, 4),
                "clv": None if value is None else round(value, 2)}
