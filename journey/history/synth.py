"""A realistic synthetic population, deterministic from a seed.

Personas: browsers who abandon carts, one-time buyers, loyal repeat buyers,
steady modest buyers, customers with support trouble (late deliveries,
slow tickets, poor surveys), promoters and detractors. Clickstream and
support events use the Segment shape, purchases the canonical shape; a
small share of records is redelivered (same id) or malformed, as in real
logs. Used by ``journey bench``, ``journey generate``, the tests and the demo.
"""

from __future__ import annotations

import functools
import gzip
import random
import sys
from operator import itemgetter

import orjson

from ..core.timeutil import MS_DAY, MS_HOUR, MS_MINUTE, format_time, parse_time
from ..io.topics import CLICKSTREAM as CLICK
from ..io.topics import PURCHASES as PURCHASE
from ..io.topics import STREAM_OF

ZONES = ["UTC", "Europe/Berlin", "Europe/London", "America/New_York", "America/Los_Angeles",
         "Asia/Tokyo", "Asia/Kolkata", "Australia/Sydney", "America/Sao_Paulo"]
PERSONAS = [("browser", 0.32), ("one_time", 0.20), ("loyal", 0.12), ("steady", 0.10),
            ("trouble", 0.12), ("promoter", 0.07), ("detractor", 0.07)]
# (a, b) of the beta distribution of the chance to stop buying after a purchase, per persona
DROPOUT = {"browser": (1.0, 3.0), "one_time": (2.0, 1.0), "loyal": (1.0, 12.0), "steady": (1.0, 20.0),
           "trouble": (1.0, 4.0), "promoter": (1.0, 10.0), "detractor": (1.0, 3.0)}
GAP_DAYS = {"browser": 9, "one_time": 20, "loyal": 9, "steady": 28, "trouble": 14, "promoter": 12, "detractor": 14}
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


def _customer_events(c: _Customer, scale: float, trace: list | None = None):
    """A customer's life. What differs between customers of one persona is what the models
    that ``journey clv fit`` fits assume: how often they come (a gamma-distributed rate), how
    likely they are to stop after a purchase (beta-distributed) and what they spend per order
    (gamma-distributed around a level of their own). ``scale`` stretches the time between
    visits; ``trace`` gets, per visit, the time since the first visit as (unscaled gaps,
    jitter) and the number of events so far (for ``_scale_for``)."""
    r = c.rng
    p = c.persona
    pace = max(0.3, r.gammavariate(2.0, 0.5))
    dropout = r.betavariate(*DROPOUT[p])
    spend = r.uniform(20, 50) if p == "steady" else r.lognormvariate(3.9, 0.5)
    if r.random() < 0.7:
        traits = {"timezone": r.choice(ZONES)}
        if r.random() < 0.6:
            traits["birthday"] = f"{r.randint(1950, 2005)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
        if r.random() < 0.1:
            traits["consent"] = {"marketing": False, "email": True}
        c.emit("profile.updated", c.t, **traits)
    mean_gap = GAP_DAYS[p] * pace * MS_DAY
    gaps = jitter = 0
    if trace is not None:
        trace.append((0.0, 0, c.n))
    bought = 0
    visits = 0
    while c.t < c.end:
        if visits:  # the first visit is when they arrive
            gap, extra = r.expovariate(1 / mean_gap), r.randint(0, 12) * MS_HOUR
            c.t += int(gap * scale) + extra
            if trace is not None:
                gaps, jitter = gaps + gap, jitter + extra
            if c.t >= c.end:
                break
        visits += 1
        if p == "browser":
            buy = r.random() < 0.1
        elif p == "one_time":
            buy = bought == 0 and r.random() < 0.5
        else:
            buy = r.random() < 0.7
        value = r.uniform(0.7, 1.3) * spend if p == "steady" else r.gammavariate(4.0, spend / 4.0)
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
        if trace is not None:
            trace.append((gaps, jitter, c.n))
        if r.random() < (dropout if buy else 0.02):  # their last purchase, or visit: they do not come back
            break
    if r.random() < 0.002:
        c.emit("customer.erased", min(c.t, c.end - MS_DAY) + MS_DAY)  # within the span: not in the future


_PILOT = 400


@functools.lru_cache(maxsize=64)
def _scale_for(per_customer: float, span: int) -> float:
    """The stretch of the time between visits that gives customers ``per_customer`` events
    on average within ``span`` ms: a pilot population (its own seed, so the answer depends
    on the two arguments only) is lived once over three spans, and the visits each stretch
    would keep are counted, by bisection."""
    rng = random.Random(0x6A6F75726E6579)
    lives = []
    for i in range(_PILOT):
        c = _Customer(random.Random(rng.getrandbits(64)), i, 0, span)
        first, c.end = c.t, c.t + 3 * span
        trace: list = []
        _customer_events(c, 1.0, trace)
        lives.append((span - first, trace))

    def mean_events(scale: float) -> float:
        total = 0
        for room, trace in lives:
            kept = 0
            for gaps, jitter, n in trace:
                if gaps * scale + jitter >= room:
                    break
                kept = n
            total += kept
        return total / len(lives)

    lo, hi = 1 / 3, 1000.0
    for _ in range(40):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if mean_events(mid) > per_customer else (lo, mid)
    return (lo * hi) ** 0.5


def generate(customers: int, events: int, seed: int = 7, start: int | None = None, span_days: int = 180,
             exact: bool = False, info: dict | None = None):
    """Yield ``(ts, stream, record)`` for a population over ``span_days``, in no
    particular order. The time between visits is set so that ``customers`` live about
    ``events`` events; the log ends when it holds ``events`` (the latest are cut, as a
    real log ends at some time), or holds fewer where their lives did not fill it; with
    ``exact``, customers past ``customers`` are added while short (``info`` gets
    ``customers``, the number with events, and ``events``)."""
    start = parse_time("2026-01-01T00:00:00Z") if start is None else start
    span = span_days * MS_DAY
    # aim 5% above: the pilot's estimate is off by a few percent either way, and a log cut a few days
    # early (below) keeps the customers asked, where one short of events would need more customers
    scale = _scale_for(1.05 * events / max(1, customers), span)
    for attempt in range(4):
        rng = random.Random(seed)
        items: list = []
        i = 0
        while i < customers or (exact and attempt == 3 and len(items) < events and i < customers + events):
            c = _Customer(random.Random(rng.getrandbits(64)), i, start, span)
            _customer_events(c, scale)
            items += c.out
            i += 1
        if not exact or len(items) >= events or attempt == 3:
            break
        # short (a small population lives further from the pilot's mean): the same customers, visiting
        # more often; the last attempt adds customers instead
        scale *= 0.95 * len(items) / events
    if len(items) > events:
        items.sort(key=itemgetter(0))
        del items[events:]
    if info is not None:
        info.update(customers=len({rec.get("userId") or rec.get("customer_id") for _, _, rec in items}),
                    events=len(items))
    return iter(items)


def with_engagement(items: list, seed: int = 7) -> list:
    """The population answering the messages it would get (section 2's ``message.*`` types, as a messaging
    system reports them): after an order or a checkout, a delivery an hour later (85%); an open (45%) at
    the customer's own favourite hour of the day (UTC, a few hours' spread) within two days; a click after
    some opens (35% of them); now and then a bounce, a spam complaint or an unsubscribe. Drawn from a
    generator of their own (per customer), so the other events are those ``generate`` gives."""
    by: dict = {}
    for ts, _stream, rec in items:
        if rec.get("type") in ("order.completed", "checkout.started") or rec.get("event") in (
                "Order Completed", "Checkout Started"):
            cid = rec.get("customer_id") or rec.get("userId")
            if cid:
                by.setdefault(cid, []).append(ts)
    out = list(items)
    for cid, times in by.items():
        r = random.Random(f"{seed}/engagement/{cid}")
        hour = r.choice((7, 8, 12, 13, 18, 19, 20, 21))
        for n, t in enumerate(times):
            def emit(kind: str, at: int, k: int = n, cid: str = cid, **props) -> None:
                out.append((at, "", {"id": f"eng-{cid}-{k}-{kind}", "customer_id": cid, "type": kind,
                                     "ts": at, "props": {"channel": "email", **props}}))
            if r.random() < 0.85:
                emit("message.delivered", t + MS_HOUR)
            if r.random() < 0.45:
                day = (t // MS_DAY + 1 + r.randint(0, 1)) * MS_DAY
                at = day + ((hour + r.choice((-1, 0, 0, 0, 1))) % 24) * MS_HOUR + r.randint(0, 59) * 60_000
                emit("message.opened", at)
                if r.random() < 0.35:
                    emit("message.clicked", at + r.randint(1, 10) * 60_000)
            x = r.random()
            if x < 0.01:
                emit("message.bounced", t + 2 * MS_HOUR)
            elif x < 0.013:
                emit("message.complained", t + 3 * MS_HOUR)
            elif x < 0.02:
                emit("message.unsubscribed", t + 4 * MS_HOUR)
    return out


def write_log(path: str, customers: int, events: int, seed: int = 7, start: int | None = None,
              sort: bool = True, noise: bool = True, exact: bool = False, info: dict | None = None,
              span_days: int = 180, engagement: bool = False) -> int:
    """Write a JSON-lines log (gzip if ``path`` ends in .gz). Sorted by event time
    unless ``sort`` is False. With ``noise``, about 0.3% of records are
    redelivered and 0.05% truncated, on purpose (``info`` gets their counts, and
    ``generate``'s). With ``engagement``, the customers answer their messages
    (:func:`with_engagement`). Returns the number of lines."""
    rng = random.Random(seed + 1)
    info = {} if info is None else info
    items = list(generate(customers, events, seed, start, span_days, exact=exact, info=info))
    if engagement:
        items = with_engagement(items, seed)
        info["engagement"] = len(items) - info.get("events", 0)
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
    for flag, value in (("--customers", a.customers), ("--events", a.events), ("--days", a.days)):
        if value < 1:
            print(f"journey generate: {flag} must be 1 or more (got {value})", file=sys.stderr)
            return 2
    info: dict = {}
    n = write_log(a.out, a.customers, a.events, a.seed, a.start, noise=not a.clean, exact=True, info=info,
                  span_days=a.days, engagement=getattr(a, "engagement", False))
    print(f"wrote {n:,} lines to {a.out}: {describe(info, a.customers, a.days)}", file=sys.stderr)
    return 0


def describe(info: dict, asked: int, days: int = 180) -> str:
    """What a generated log holds, in words (the dirty lines are there on purpose)."""
    n = info["customers"]
    more = (f" (more than the {asked:,} asked: their {days} days held too few events)" if n > asked
            else f" ({asked - n:,} of the {asked:,} had no event in the log)" if n < asked else "")
    text = f"{info['events']:,} events of {info['customers']:,} customers{more}"
    if info.get("engagement"):
        text += f", and {info['engagement']:,} engagement events (message.*) answering their messages"
    if info.get("redelivered") or info.get("truncated"):
        text += (f", plus {info['redelivered']:,} redelivered and {info['truncated']:,} truncated records, on "
                 "purpose (replay counts them as duplicates and rejects; --clean for none)")
    return text
