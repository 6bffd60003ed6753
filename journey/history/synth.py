"""A realistic synthetic population, deterministic from a seed.

Personas: browsers who abandon carts, one-time buyers, loyal repeat buyers,
steady modest buyers, customers with support trouble (late deliveries,
slow tickets, poor surveys), promoters and detractors. Clickstream and
support events use the Segment shape, purchases the canonical shape; a
small share of records is redelivered (same id) or malformed, as in real
logs. Used by ``journey bench``, ``journey generate``, the tests and the demo.
"""

from __future__ import annotations

import gzip
import random
import sys

import orjson

from ..core.timeutil import MS_DAY, MS_HOUR, MS_MINUTE, format_time, parse_time
from ..io.topics import CLICKSTREAM as CLICK
from ..io.topics import PURCHASES as PURCHASE
from ..io.topics import STREAM_OF

ZONES = ["UTC", "Europe/Berlin", "Europe/London", "America/New_York", "America/Los_Angeles",
         "Asia/Tokyo", "Asia/Kolkata", "Australia/Sydney", "America/Sao_Paulo"]
PERSONAS = [("browser", 0.32), ("one_time", 0.20), ("loyal", 0.12), ("steady", 0.10),
            ("trouble", 0.12), ("promoter", 0.07), ("detractor", 0.07)]
SEGMENT_NAME = {
    "product.viewed": "Product Viewed", "cart.product_added": "Product Added", "checkout.started": "Checkout Started",
    "app.error": "Error Occurred", "ticket.opened": "Ticket Opened", "ticket.agent_replied": "Ticket Agent Replied",
    "ticket.resolved": "Ticket Resolved", "ticket.reopened": "Ticket Reopened", "survey.answered": "Survey Answered",
    "review.submitted": "Product Reviewed", "referral.sent": "Referral Sent", "customer.erased": "Customer Erased",
}


class _Customer:
    def __init__(self, rng: random.Random, i: int, start: int, span: int):
        self.rng = rng
        self.id = f"cust-{i:07d}"
        self.persona = rng.choices([p for p, _ in PERSONAS], [w for _, w in PERSONAS])[0]
        self.t = start + int(rng.random() * span * 0.3)
        self.end = start + span
        self.out: list[tuple[int, str, dict]] = []
        self.n = 0

    def emit(self, ctype: str, ts: int, **props):
        self.n += 1
        eid = f"{self.id}-{self.n}"
        stream = STREAM_OF.get(ctype, CLICK)
        if ctype == "page.viewed":
            rec = {"type": "page", "userId": self.id, "messageId": eid, "timestamp": format_time(ts),
                   "properties": {"path": "/p"}}
        elif ctype == "profile.updated":
            rec = {"type": "identify", "userId": self.id, "messageId": eid, "timestamp": format_time(ts),
                   "traits": props}
        elif stream == PURCHASE:
            rec = {"id": eid, "customer_id": self.id, "type": ctype, "ts": ts, "props": props}
        else:
            rec = {"type": "track", "event": SEGMENT_NAME[ctype], "userId": self.id, "messageId": eid,
                   "timestamp": format_time(ts), "properties": props}
        self.out.append((ts, stream, rec))


def _session(c: _Customer, buy: bool, value: float):
    r, t = c.rng, c.t
    for _ in range(r.randint(1, 4)):
        c.emit("page.viewed", t)
        t += r.randint(5, 90) * 1000
    pid = f"p{r.randint(1, 500)}"
    c.emit("product.viewed", t, product_id=pid, price=round(value, 2))
    t += r.randint(10, 120) * 1000
    if r.random() < 0.03:
        c.emit("app.error", t, code="E500")
        if c.persona == "trouble":  # trouble comes in storms: two more within minutes
            c.emit("app.error", t + 4 * MS_MINUTE, code="E502")
            c.emit("app.error", t + 9 * MS_MINUTE, code="E503")
    if not buy and r.random() < 0.55:
        return t
    t, paid = cart_to_payment(c, t, buy, value, pid)
    if not paid:
        return t
    oid = f"ord-{c.id}-{c.n}"
    c.emit("order.completed", t, order_id=oid, revenue=round(value, 2), currency="EUR")
    ship_and_deliver(c, c.rng, oid, t, value)
    return t


def cart_to_payment(c: _Customer, t: int, buy: bool, value: float, pid: str) -> tuple[int, bool]:
    """A session from the cart to the payment: (its last time, whether the order goes
    through). ``journey simulate`` shares it and places the order itself."""
    r = c.rng
    c.emit("cart.product_added", t, product_id=pid, price=round(value, 2))
    t += r.randint(20, 300) * 1000
    chk = f"chk-{c.id}-{c.n}"
    c.emit("checkout.started", t, checkout_id=chk, value=round(value, 2))
    if not buy:
        return t, False
    t += r.randint(1, 20) * MS_MINUTE
    if r.random() < 0.04:
        c.emit("payment.failed", t, checkout_id=chk)
        t += r.randint(2, 30) * MS_MINUTE
        if r.random() < 0.4:
            return t, False
    return t, True


def ship_and_deliver(c: _Customer, r: random.Random, oid: str, t: int, value: float) -> None:
    """An order's shipping, delivery (late for some trouble customers) and, sometimes, refund."""
    ship = t + r.randint(4, 30) * MS_HOUR
    promised = ship + r.randint(2, 4) * MS_DAY
    c.emit("order.shipped", ship, order_id=oid, promised_by=format_time(promised))
    late = c.persona == "trouble" and r.random() < 0.5
    delivered = promised + (r.randint(1, 48) * MS_HOUR if late or r.random() < 0.03 else -r.randint(1, 40) * MS_HOUR)
    c.emit("order.delivered", max(delivered, ship + MS_HOUR), order_id=oid)
    if r.random() < 0.04:
        c.emit("order.refunded", delivered + r.randint(1, 10) * MS_DAY, order_id=oid, revenue=round(value, 2))


def _ticket(c: _Customer, t: int, slow: bool):
    r = c.rng
    tid = f"tk-{c.id}-{c.n}"
    prio = r.choice(["low", "normal", "normal", "high", "urgent"])
    c.emit("ticket.opened", t, ticket_id=tid, priority=prio)
    reply = t + (r.randint(2, 20) * MS_HOUR if slow else r.randint(5, 50) * MS_MINUTE)
    c.emit("ticket.agent_replied", reply, ticket_id=tid)
    resolved = reply + r.randint(1, 30) * MS_HOUR
    c.emit("ticket.resolved", resolved, ticket_id=tid)
    csat = r.choice([1, 2, 2, 3]) if slow else r.choice([3, 4, 5, 5])
    if slow and csat == 1:  # the fix did not hold
        c.emit("ticket.reopened", resolved + 2 * MS_DAY, ticket_id=tid)
    c.emit("survey.answered", reply + r.randint(31, 48) * MS_HOUR, csat=csat)


def _customer_events(c: _Customer, budget: int):
    r = c.rng
    if r.random() < 0.7:
        traits = {"timezone": r.choice(ZONES)}
        if r.random() < 0.6:
            traits["birthday"] = f"{r.randint(1950, 2005)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
        if r.random() < 0.1:
            traits["consent"] = {"marketing": False, "email": True}
        c.emit("profile.updated", c.t, **traits)
    p = c.persona
    gap_days = {"browser": 9, "one_time": 20, "loyal": 9, "steady": 28, "trouble": 14,
                "promoter": 12, "detractor": 14}[p]
    bought = 0
    while c.n < budget and c.t < c.end:
        c.t += int(r.expovariate(1 / (gap_days * MS_DAY))) + r.randint(0, 12) * MS_HOUR
        if c.t >= c.end:
            break
        if p == "browser":
            buy = r.random() < 0.1
        elif p == "one_time":
            buy = bought == 0 and r.random() < 0.5
        else:
            buy = r.random() < 0.7
        value = r.uniform(15, 60) if p == "steady" else r.lognormvariate(4.0, 0.8)
        t = _session(c, buy, value)
        bought += buy
        if p == "trouble" and r.random() < 0.35:
            _ticket(c, t + r.randint(1, 48) * MS_HOUR, slow=r.random() < 0.5)
        elif r.random() < 0.04:
            _ticket(c, t + r.randint(1, 48) * MS_HOUR, slow=r.random() < 0.2)
        if buy and r.random() < 0.15:
            if p == "promoter":
                c.emit("survey.answered", t + 3 * MS_DAY, nps=r.choice([9, 10]))
                if r.random() < 0.4:
                    c.emit("referral.sent", t + 4 * MS_DAY)
            elif p == "detractor":
                c.emit("survey.answered", t + 3 * MS_DAY, nps=r.randint(0, 6))
            else:
                c.emit("review.submitted", t + 5 * MS_DAY, rating=r.choice([1, 3, 4, 5, 5]))
    if r.random() < 0.002:
        c.emit("customer.erased", c.t + MS_DAY)


def generate(customers: int, events: int, seed: int = 7, start: int | None = None, span_days: int = 180,
             exact: bool = False, info: dict | None = None):
    """Yield ``(ts, stream, record)`` for a population, in no particular order: at most
    ``events`` (fewer when the customers' half year holds fewer), or, with ``exact``,
    exactly ``events``, adding customers past ``customers`` while short (``info`` gets
    ``customers``, the number used, and ``events``)."""
    rng = random.Random(seed)
    start = parse_time("2026-01-01T00:00:00Z") if start is None else start
    per = max(1, events // max(1, customers))
    produced = 0
    i = 0
    while produced < events and (i < customers or (exact and i < customers + events)):
        left = events - produced
        c = _Customer(random.Random(rng.getrandbits(64)), i, start, span_days * MS_DAY)
        budget = min(left, max(1, int(rng.expovariate(1 / per))) + 2)
        if exact and i < customers:  # leave a few events for every customer still to come
            budget = max(1, min(budget, left - 2 * (customers - i - 1)))
        _customer_events(c, budget)
        out = c.out[:budget] if exact else c.out[:left]
        produced += len(out)
        i += 1
        yield from out
    if info is not None:
        info.update(customers=i, events=produced)


def write_log(path: str, customers: int, events: int, seed: int = 7, start: int | None = None,
              sort: bool = True, noise: bool = True, exact: bool = False, info: dict | None = None) -> int:
    """Write a JSON-lines log (gzip if ``path`` ends in .gz). Sorted by event time
    unless ``sort`` is False. With ``noise``, about 0.3% of records are
    redelivered and 0.05% truncated, on purpose (``info`` gets their counts, and
    ``generate``'s). Returns the number of lines."""
    rng = random.Random(seed + 1)
    info = {} if info is None else info
    items = list(generate(customers, events, seed, start, exact=exact, info=info))
    info.update(redelivered=0, truncated=0)
    if sort:
        items.sort(key=lambda x: x[0])
    opener = gzip.open if path.endswith(".gz") else open
    n = 0
    with opener(path, "wb") as f:
        for _ts, _stream, rec in items:
            line = orjson.dumps(rec)
            f.write(line + b"\n")
            n += 1
            if noise:
                x = rng.random()
                if x < 0.003:
                    f.write(line + b"\n")   # redelivered
                    n += 1
                    info["redelivered"] += 1
                elif x < 0.0035:
                    f.write(line[: len(line) // 2] + b"\n")   # truncated
                    n += 1
                    info["truncated"] += 1
    return n


def main(a) -> int:
    info: dict = {}
    n = write_log(a.out, a.customers, a.events, a.seed, a.start, noise=not a.clean, exact=True, info=info)
    print(f"wrote {n:,} lines to {a.out}: {describe(info, a.customers)}", file=sys.stderr)
    return 0


def describe(info: dict, asked: int) -> str:
    """What a generated log holds, in words (the dirty lines are there on purpose)."""
    more = f" (more than the {asked:,} asked: their half year held too few events)" if info["customers"] > asked else ""
    text = f"{info['events']:,} events of {info['customers']:,} customers{more}"
    if info.get("redelivered") or info.get("truncated"):
        text += (f", plus {info['redelivered']:,} redelivered and {info['truncated']:,} truncated records, on "
                 "purpose (replay counts them as duplicates and rejects; --clean for none)")
    return text
