"""Send time (domain.md section 9): each customer's engagement rhythm, and the hour it picks.

The engagement profile is a histogram of 168 hour-of-week bins in the customer's local time
(Monday 00:00 is bin 0), holding ``message.opened`` (weight 1) and ``message.clicked``
(weight 2), each decayed with a half-life (``[send_time] half_life``, 30 days) of event time.
It is kept as one reference time and the bins' values decayed to it (only the bins that hold
something, rounded to 1/1000 at each update so live and replay hold the same numbers), so it
costs a few dozen bytes for most customers and 168 numbers at most.

A trigger with ``send_time = "optimal"`` due at ``due`` goes out at the start of the hour, in
[due, due + ``send_within``] and outside quiet hours, whose bin scores highest: its decayed
weight plus ``prior_weight`` times the bin's share of ``[send_time] prior`` (default: 168 equal
shares). Ties go to the earliest hour; the due hour itself counts from ``due``.
"""

from __future__ import annotations

from .timeutil import MS_HOUR, local_ms

BINS = 168
WEIGHT = {"message.opened": 1.0, "message.clicked": 2.0}
_EQUAL = (1.0 / BINS,) * BINS


def bin_of(ms: int, tz) -> int:
    """The hour of the week (Monday 00:00 is 0) of ``ms``, customer-local."""
    hours = local_ms(ms, tz) // MS_HOUR
    return ((hours // 24 + 3) % 7) * 24 + hours % 24   # 1970-01-01 was a Thursday (weekday 3)


def record(hist, ts: int, w: float, b: int, half_life: int):
    """The histogram ``[ref, {bin: value}]`` (or None) with weight ``w`` added to bin ``b`` at ``ts``."""
    if hist is None:
        return [ts, {b: round(w, 3)}]
    ref, bins = hist
    if ts > ref:
        f = 2.0 ** (-(ts - ref) / half_life)
        for k in list(bins):
            v = round(bins[k] * f, 3)
            if v < 0.001:
                del bins[k]
            else:
                bins[k] = v
        hist[0] = ref = ts
        add = w
    else:  # an engagement older than the newest one: its weight decayed to the reference time
        add = w * 2.0 ** (-(ref - ts) / half_life)
    v = round(bins.get(b, 0.0) + add, 3)
    if v >= 0.001:
        bins[b] = v
    return hist


def shares(prior) -> tuple:
    """``[send_time] prior`` (168 non-negative numbers, or empty) as shares summing to 1."""
    if not prior:
        return _EQUAL
    total = float(sum(prior))
    return tuple(x / total for x in prior)


def best(hist, due: int, within: int, tz, cfg) -> int | None:
    """The time to send a trigger due at ``due``: ``due`` itself or the start of a later local hour
    within ``within``, outside quiet hours, whose bin scores highest (ties: the earliest). None when
    every candidate is in quiet hours."""
    sc, pol = cfg.send_time, cfg.policy
    qs, qe = pol.quiet_start, pol.quiet_end

    def quiet(local_ms: int) -> bool:
        if qs == qe:
            return False
        m = (local_ms // 60_000) % 1440
        return (m >= qs or m < qe) if qs > qe else (qs <= m < qe)

    off = _offset(due, tz)
    if _offset(due + within, tz) != off:
        off = None   # the offset changes inside the window (daylight saving): each hour the long way
    local = due + off if off is not None else local_ms(due, tz)
    if hist is None and not sc.prior and not quiet(local):
        return due   # no engagement and equal shares: every hour scores the same, the earliest wins
    share = shares(sc.prior)
    pw = sc.prior_weight
    bins, factor = {}, 0.0
    if hist is not None:
        ref, bins = hist
        factor = 2.0 ** (-(due - ref) / sc.half_life) if due > ref else 1.0
    chosen, top = None, None
    t = due
    first = due - local % MS_HOUR + MS_HOUR
    while t <= due + within:
        lm = t + off if off is not None else local_ms(t, tz)
        if not quiet(lm):
            b = ((lm // 86_400_000 + 3) % 7) * 24 + (lm // MS_HOUR) % 24   # 1970-01-01 was a Thursday
            score = bins.get(b, 0.0) * factor + pw * share[b]
            if top is None or score > top + 1e-12:
                chosen, top = t, score
        t = first if t == due else t + MS_HOUR
    return chosen


def _offset(ms: int, tz) -> int:
    return local_ms(ms, tz) - ms
