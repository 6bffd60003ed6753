"""Relationship health (0..100) and stage.

Health is explainable by construction: every touch point whose outcome was
good or bad adds a signed weight (the table below, configurable), and every
contribution halves in influence each ``half_life`` (30 days by default), so
health decays toward the neutral 50 when nothing happens:

    health(t) = clamp(50 + sum_i w_i * 2 ** (-(t - t_i) / half_life), 0, 100)

It is kept as one running value (the sum, decayed to the time of the last
update), clamped to [-50, 50] at each update, so it costs two numbers per
customer. Below ``health_floor`` (30) the relationship counts as poor.
"""

from __future__ import annotations

GOOD, BAD = 1, -1

# event type -> weight; surveys and reviews are scored from their values.
WEIGHTS: dict[str, float] = {
    "order.completed": 6,
    "order.refunded": -8,
    "order.cancelled": -6,
    "payment.failed": -6,
    "app.error": -3,
    "ticket.opened": -8,
    "ticket.reopened": -12,
    "ticket.agent_replied": 3,
    "ticket.resolved": 6,
    "referral.sent": 10,
    "order.delivered": 3,
    # engagement with the messages journey triggered (section 9): system touch points
    "message.delivered": 1,
    "message.opened": 2,
    "message.clicked": 4,
    "message.bounced": -3,
    "message.complained": -15,
    # outcomes raised by rules, not by events
    "delivery.late": -10,
    "ticket.sla_breached": -12,
}
URGENT_TICKET_EXTRA = -4  # a high/urgent ticket weighs more


def weight_of(ev) -> float:
    """The health weight of one event (0 for neutral touch points)."""
    t = ev.type
    w = WEIGHTS.get(t)
    if w is not None:
        if t == "ticket.opened" and ev.f.get("priority") in ("high", "urgent"):
            return w + URGENT_TICKET_EXTRA
        return w
    if t == "survey.answered":
        f = ev.f
        w = 0.0
        if "csat" in f:
            w += (f["csat"] - 3) * 8  # 1 -> -16 ... 5 -> +16
        if "nps" in f:
            n = f["nps"]
            w += 12 if n >= 9 else (2 if n >= 7 else -6 - (6 - n) * 2)  # 0 -> -18
        return w
    if t == "review.submitted" and "rating" in ev.f:
        return (ev.f["rating"] - 3) * 8
    return 0.0


def decayed(dev: float, since_ms: int, half_life_ms: int) -> float:
    if since_ms <= 0 or dev == 0.0:
        return dev
    return dev * 0.5 ** (since_ms / half_life_ms)


def add(dev: float, dev_ts: int | None, w: float, ts: int, half_life_ms: int) -> tuple[float, int]:
    """Add a contribution ``w`` at ``ts`` to the running deviation; returns (dev, ts)."""
    if dev_ts is not None and ts > dev_ts:
        dev = decayed(dev, ts - dev_ts, half_life_ms)
        dev_ts = ts
    elif dev_ts is None:
        dev_ts = ts
    dev = max(-50.0, min(50.0, dev + w))
    return dev, dev_ts


def score(dev: float, dev_ts: int | None, now: int, half_life_ms: int) -> int:
    if dev_ts is None:
        return 50
    return int(round(max(0.0, min(100.0, 50 + decayed(dev, now - dev_ts, half_life_ms)))))


STAGES = ("prospect", "new", "active", "loyal", "at_risk", "lapsed")


def stage(orders: int, last_order: int | None, now: int, cfg) -> str:
    """The relationship stage from the purchase history at ``now``.

    prospect: no order; new: one order; active: two or more; loyal: at least
    ``loyal_orders``; at_risk / lapsed: no order for ``at_risk_after`` /
    ``lapsed_after`` (or, with a CLV model, P(alive) below its thresholds).
    """
    if orders == 0 or last_order is None:
        return "prospect"
    since = now - last_order
    if since >= cfg.lapsed_after:
        return "lapsed"
    if since >= cfg.at_risk_after:
        return "at_risk"
    if orders == 1:
        return "new"
    if orders >= cfg.loyal_orders:
        return "loyal"
    return "active"
