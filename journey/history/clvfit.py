"""``journey clv fit`` and ``journey clv score``: BG/NBD and Gamma-Gamma fitted by
maximum likelihood to the purchase statistics of a log (read by the replay
reader through the same engine as the stream), and customers scored with a
fitted model. The model's formulas and the stream side are in
``journey.core.clv``."""

from __future__ import annotations

from ..core.clv import NEEDS, Model, summary
from ..core.config import Config
from ..core.engine import Engine
from ..core.rules import REGISTRY
from ..core.timeline import drive
from ..core.timeutil import MS_DAY, MS_WEEK, TimeError, parse_duration, parse_time
from ..io.logs import Reader
from .replay import no_cyclic_gc

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

    class _Quiet:
        wants_transitions = False
        trigger = audit = transition = staticmethod(lambda rec: None)

    end_day = at // MS_DAY
    engine = Engine(Config({"rules": {name: {"enabled": False} for name in REGISTRY}}), _Quiet())
    reader = Reader(paths, None, progress=progress)
    with no_cyclic_gc():
        engine.on_timer_error = _ignore
        drive(engine, (ev for ev in reader.events() if ev.ts // MS_DAY <= end_day), on_error=_ignore)
    return {k: st.clv for k, st in engine.states.items() if st.clv is not None and not st.anon and st.erased is None}


def _ignore(*_args) -> None:
    """An event or timer that fails is left out of the statistics (no record stops a fit)."""


def parse_day(value: str) -> int:
    """A date (``1997-09-30``, midnight UTC) or an ISO-8601 time, as epoch ms."""

    v = value.strip()
    if len(v) == 10 and v[4] == "-" and v[7] == "-":
        v += "T00:00:00Z"
    return parse_time(v)


def cmd_fit(a) -> int:
    import sys
    import time

    import orjson

    try:
        end = parse_day(a.calibration_end)
    except TimeError:
        print(f"journey clv fit: --calibration-end {a.calibration_end!r} is not a date; use YYYY-MM-DD "
              "(e.g. 1997-09-30) or an ISO-8601 time", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    stats = stats_from_log(a.paths, end)
    t1 = time.perf_counter()
    try:
        model = fit(stats, end)
    except ValueError as e:
        print(f"journey clv fit: {e}", file=sys.stderr)
        return 1
    t2 = time.perf_counter()
    refused = model.problems()
    if refused:
        print(f"journey clv fit: the model is refused, nothing was written: {'; '.join(refused)}. "
              f"{NEEDS[0].upper()}{NEEDS[1:]} ({model.diagnostics['customers']:,} customers, "
              f"{model.diagnostics['repeat_customers']:,} with repeat purchases here)", file=sys.stderr)
        return 1
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


    try:
        model = Model.from_dict(orjson.loads(open(a.model, "rb").read()))
    except (OSError, ValueError) as e:
        print(f"journey clv score: {a.model}: {e}", file=sys.stderr)
        return 2
    if model.problems():
        print(f"journey clv score: {a.model} is refused: {'; '.join(model.problems())}. Fit it again (journey clv "
              "fit) on more history", file=sys.stderr)
        return 1
    try:
        at = parse_day(a.at)
    except TimeError:
        print(f"journey clv score: --at {a.at!r} is not a date; use YYYY-MM-DD (e.g. 1998-06-30) or an ISO-8601 "
              "time", file=sys.stderr)
        return 2
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
