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

    @classmethod
    def from_dict(cls, d: dict) -> "Model":
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


# -- fitting ----------------------------------------------------------------------------

def bgnbd_loglik(params, x, tx, T, w):
    import numpy as np
    from scipy.special import betaln, gammaln

    r, al, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(al)
    a2 = betaln(a, b + x) - betaln(a, b) - (r + x) * np.log(al + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a3 = np.where(x > 0, betaln(a + 1, np.maximum(b + x - 1, 1e-12)) - betaln(a, b) - (r + x) * np.log(al + tx),
                      -np.inf)
    return float(np.sum(w * (a1 + np.logaddexp(a2, a3))))


def gg_loglik(params, x, m, w):
    import numpy as np
    from scipy.special import gammaln

    p, q, v = params
    px = p * x
    return float(np.sum(w * (gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(v)
                             + (px - 1) * np.log(m) + px * np.log(x) - (px + q) * np.log(x * m + v))))


def _fit(negll, n_params):
    import numpy as np
    from scipy.optimize import minimize

    best = None
    for start in (np.zeros(n_params), np.full(n_params, 0.5), np.full(n_params, -0.5)):
        res = minimize(lambda lp: negll(np.exp(lp)), start, method="Nelder-Mead",
                       options={"xatol": 1e-9, "fatol": 1e-9, "maxiter": 20000, "maxfev": 40000})
        res = minimize(lambda lp: negll(np.exp(lp)), res.x, method="BFGS", options={"gtol": 1e-8})
        if best is None or res.fun < best.fun:
            best = res
    return best


def fit(stats: dict, calibration_end: int) -> Model:
    """Fit both models to the customers' statistics at ``calibration_end`` (ms)."""
    import numpy as np

    rows = [summary(s, calibration_end) for s in stats.values()]
    if len(rows) < 10:
        raise ValueError(f"only {len(rows)} customers with orders before the calibration end; need at least 10")
    # identical (x, t_x, T) rows weigh together (many customers share them)
    agg: dict = {}
    for x, tx, T, _m in rows:
        key = (x, round(tx, 9), round(T, 9))
        agg[key] = agg.get(key, 0) + 1
    x = np.array([k[0] for k in agg], float)
    tx = np.array([k[1] for k in agg], float)
    T = np.array([k[2] for k in agg], float)
    w = np.array(list(agg.values()), float)
    res = _fit(lambda p: -bgnbd_loglik(p, x, tx, T, w), 4)
    r, al, a, b = map(float, np.exp(res.x))
    diag = {"customers": len(rows), "repeat_customers": int(sum(1 for row in rows if row[0] > 0)),
            "bgnbd_loglik": -float(res.fun), "bgnbd_converged": bool(res.success) or _stationary(res),
            "bgnbd_iterations": int(res.nit)}
    rep = [(row[0], row[3]) for row in rows if row[0] > 0 and row[3] > 0]
    p = q = v = None
    if len(rep) >= 10:
        gx = np.array([k[0] for k in rep], float)
        gm = np.array([k[1] for k in rep], float)
        gres = _fit(lambda prm: -gg_loglik(prm, gx, gm, np.ones_like(gx)), 3)
        p, q, v = map(float, np.exp(gres.x))
        diag.update({"gamma_gamma_customers": len(rep), "gamma_gamma_loglik": -float(gres.fun),
                     "gamma_gamma_converged": bool(gres.success) or _stationary(gres)})
    return Model(r, al, a, b, p, q, v, diag)


def _stationary(res) -> bool:
    """BFGS reports "precision loss" at an optimum whose gradient is down to
    finite-difference noise; accept a gradient (in log-parameters) below
    1e-3 + 1e-7 * |log-likelihood|."""
    import numpy as np

    jac = getattr(res, "jac", None)
    return jac is not None and bool(np.all(np.abs(jac) <= 1e-3 + 1e-7 * abs(res.fun)))


# -- batch: statistics from a log, fit and score commands ----------------------------------

def stats_from_log(paths, at: int, progress=None) -> dict:
    """Each customer's statistics from a log, counting orders up to the end of the
    UTC day of ``at``. The log goes through the replay reader and the same engine
    as the stream (with no rules), so validation, dedup of events and orders,
    anonymous stitching and erasure are exactly the stream's: an erased customer
    is not fitted or scored."""
    from .config import Config
    from .engine import Engine
    from .replay import Reader, no_cyclic_gc
    from .rules import REGISTRY
    from .timeline import drive

    class _Quiet:
        wants_transitions = False
        trigger = audit = transition = staticmethod(lambda rec: None)

    end_day = at // MS_DAY
    engine = Engine(Config({"rules": {name: {"enabled": False} for name in REGISTRY}}), _Quiet())
    reader = Reader(paths, None, progress=progress)
    with no_cyclic_gc():
        drive(engine, (ev for ev in reader.events() if ev.ts // MS_DAY <= end_day))
    return {k: st.clv for k, st in engine.states.items() if st.clv is not None and not st.anon and st.erased is None}


def parse_day(value: str) -> int:
    """A date (``1997-09-30``, midnight UTC) or an ISO-8601 time, as epoch ms."""
    from .timeutil import parse_time

    v = value.strip()
    if len(v) == 10 and v[4] == "-" and v[7] == "-":
        v += "T00:00:00Z"
    return parse_time(v)


def cmd_fit(a) -> int:
    import sys
    import time

    import orjson

    end = parse_day(a.calibration_end)
    t0 = time.perf_counter()
    stats = stats_from_log(a.paths, end)
    t1 = time.perf_counter()
    try:
        model = fit(stats, end)
    except ValueError as e:
        print(f"journey clv fit: {e}", file=sys.stderr)
        return 1
    t2 = time.perf_counter()
    model.diagnostics.update({"calibration_end": a.calibration_end, "read_seconds": round(t1 - t0, 3),
                              "fit_seconds": round(t2 - t1, 3)})
    with open(a.out, "wb") as f:
        f.write(orjson.dumps(model.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    d = model.diagnostics
    print(f"BG/NBD       r={model.r:.4f} alpha={model.alpha:.4f} a={model.a:.4f} b={model.b:.4f}  "
          f"log-likelihood {d['bgnbd_loglik']:.2f}  ({'converged' if d['bgnbd_converged'] else 'NOT CONVERGED'})",
          file=sys.stderr)
    if model.p is not None:
        print(f"Gamma-Gamma  p={model.p:.4f} q={model.q:.4f} v={model.v:.4f}  "
              f"log-likelihood {d['gamma_gamma_loglik']:.2f}  on {d['gamma_gamma_customers']:,} repeat customers",
              file=sys.stderr)
    print(f"customers    {d['customers']:,} ({d['repeat_customers']:,} with repeat purchases); "
          f"read {t1 - t0:.2f} s, fit {t2 - t1:.2f} s -> {a.out}", file=sys.stderr)
    return 0


def cmd_score(a) -> int:
    import csv
    import sys

    import orjson

    from .timeutil import parse_duration

    try:
        model = Model.from_dict(orjson.loads(open(a.model, "rb").read()))
    except (OSError, ValueError) as e:
        print(f"journey clv score: {a.model}: {e}", file=sys.stderr)
        return 2
    at = parse_day(a.at)
    horizon = parse_duration(a.horizon) / MS_WEEK
    stats = stats_from_log(a.paths, at)
    out = open(a.out, "w", newline="") if a.out != "-" else sys.stdout
    w = csv.writer(out)
    w.writerow(["customer_id", "x", "t_x", "T", "mean_repeat_spend", "p_alive", "expected_purchases", "clv"])
    for cid in sorted(stats):
        x, t_x, T, m = summary(stats[cid], at)
        value, purchases = model.clv_and_purchases(x, t_x, T, m, horizon, a.discount)
        w.writerow([cid, x, f"{t_x:.4f}", f"{T:.4f}", f"{m:.2f}", f"{model.p_alive(x, t_x, T):.6f}",
                    f"{purchases:.6f}", "" if value is None else f"{value:.2f}"])
    if out is not sys.stdout:
        out.close()
    return 0
