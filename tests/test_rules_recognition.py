"""Recognition rules. Orders are spaced 13 h+ apart so the 12 h minimum gap
of the contact policy does not hide what the rule did (the policy has its
own tests)."""

import orjson
import pytest
from conftest import T, ev, identify

from journey.core.timeutil import MS_DAY
from journey.io.rulefile import config_from


def orders(n, cid="c1", start="2026-01-05T12:00:00Z", every=MS_DAY * 3, revenue=10):
    t0 = T(start)
    return [ev("order.completed", cid, t0 + i * every, order_id=f"o{t0 + i * every}", revenue=revenue) for i in range(n)]


NO_WELCOME = {"rules": {"first_purchase": {"enabled": False}}}


def test_first_purchase_once(run):
    r = run(orders(3))
    (t,) = r.of("first_purchase")
    assert t["type"] == "journey.recognition.first_purchase" and t["time"] == "2026-01-05T12:00:00Z"
    assert t["data"]["relationship"]["orders"] == 1 and t["data"]["relationship"]["stage"] == "new"


def test_repeated_order_id_counts_once(run):
    a = ev("order.completed", "c1", "2026-01-05T12:00:00Z", order_id="o1", revenue=10)
    b = ev("order.completed", "c1", "2026-01-06T12:00:00Z", order_id="o1", revenue=10)
    r = run([a, b] + orders(3, start="2026-01-10T12:00:00Z"))
    assert r.of("order_milestone") == []   # 4 distinct orders, not 5


@pytest.mark.parametrize("n,expected", [(4, []), (5, [5]), (9, [5]), (10, [5, 10]), (25, [5, 10, 25])])
def test_order_milestones(run, n, expected):
    r = run(orders(n, every=MS_DAY * 3))
    assert [t["data"]["details"]["milestone"] for t in r.of("order_milestone")] == expected


@pytest.mark.parametrize("revenues,expected", [
    ([499.99], []), ([500], ["silver"]), ([300, 200], ["silver"]), ([2500], ["gold"]),
    ([600, 1500], ["silver", "gold"]), ([6000], ["platinum"]),
])
def test_spend_tiers(run, revenues, expected):
    t0 = T("2026-01-05T12:00:00Z")
    evs = [ev("order.completed", "c1", t0 + i * 2 * MS_DAY, order_id=f"o{i}", revenue=v) for i, v in enumerate(revenues)]
    r = run(evs, rules=NO_WELCOME)
    assert [t["data"]["details"]["tier"] for t in r.of("spend_tier")] == expected


def test_refunds_reduce_net_spend(run):
    t0 = T("2026-01-05T12:00:00Z")
    r = run([ev("order.completed", "c1", t0, order_id="o1", revenue=450),
             ev("order.refunded", "c1", t0 + MS_DAY, order_id="o1", revenue=100),
             ev("order.completed", "c1", t0 + 2 * MS_DAY, order_id="o2", revenue=100)])   # net 450
    assert r.of("spend_tier") == []


def test_spend_tier_thresholds_configurable(run):
    r = run(orders(1, revenue=100), rules={"rules": {"spend_tier": {"tiers": {"bronze": 50, "silver": 500}},
                                            "steady_customer": {"below_tier": "silver"},
                                            "first_purchase": {"enabled": False}}})
    assert [t["data"]["details"]["tier"] for t in r.of("spend_tier")] == ["bronze"]


# -- birthday ---------------------------------------------------------------------

def test_birthday_at_nine_local(run):
    r = run([identify("c1", "2026-01-01T00:00:00Z", birthday="1990-03-10", timezone="Asia/Tokyo"),
             *orders(1, start="2026-02-01T12:00:00Z")], until="2026-12-31T00:00:00Z")
    (t,) = r.of("birthday")
    assert t["time"] == "2026-03-10T00:00:00Z"   # 09:00 in Tokyo (UTC+9)
    assert t["data"]["occasion"] == "2026"


def test_birthday_needs_an_order_in_the_last_365_days(run):
    r = run([identify("c1", "2024-01-01T00:00:00Z", birthday="03-10"),
             *orders(1, start="2025-03-09T12:00:00Z")], until="2026-12-31T00:00:00Z")
    # 2025-03-10: ordered the day before -> fires; 2026-03-10: last order 366 days ago -> not
    assert [t["data"]["occasion"] for t in r.of("birthday")] == ["2025"]


def test_leap_day_birthday_falls_on_28_february(run):
    r = run([identify("c1", "2026-01-01T00:00:00Z", birthday="2000-02-29"),
             *orders(1, start="2026-01-10T12:00:00Z"), *orders(1, start="2027-01-10T12:00:00Z"),
             *orders(1, start="2028-01-10T12:00:00Z")], until="2028-12-31T00:00:00Z")
    assert [t["time"] for t in r.of("birthday")] == [
        "2026-02-28T09:00:00Z", "2027-02-28T09:00:00Z", "2028-02-29T09:00:00Z"]


def test_birthday_set_after_nine_on_the_day_waits_a_year(run):
    r = run([*orders(1, start="2026-01-10T12:00:00Z"),
             identify("c1", "2026-03-10T10:00:00Z", birthday="03-10")], until="2026-12-31T00:00:00Z")
    assert r.of("birthday") == []


# -- anniversary ------------------------------------------------------------------

def test_anniversary_of_first_order(run):
    r = run([*orders(1, start="2025-04-02T15:00:00Z"), *orders(1, start="2026-01-10T12:00:00Z"),
             identify("c1", "2026-01-11T00:00:00Z", timezone="Europe/Berlin")],
            until="2027-12-31T00:00:00Z")
    got = r.of("anniversary")
    assert [(t["time"], t["data"]["details"]["years"]) for t in got] == [("2026-04-02T07:00:00Z", 1)]
    # 2027: the last order (2026-01-10) is more than 365 days before -> no second anniversary


def test_yearly_timers_stop_for_customers_who_cannot_qualify_and_an_order_rearms_them():
    """No dead timers: a customer whose last order is too old to qualify at the next birthday
    or anniversary keeps neither timer; ordering again brings both back, and they fire."""
    from conftest import T

    from journey.core.engine import Engine
    from journey.core.intake import parse
    from journey.core.timeline import drive

    evs = [identify("c1", "2024-01-01T00:00:00Z", birthday="1990-06-10"), *orders(1, start="2024-02-01T12:00:00Z")]
    eng = Engine(config_from({}))
    drive(eng, [parse(orjson.dumps(e)) for e in evs], until=T("2026-01-01T00:00:00Z"))
    st = eng.states["c1"]
    assert not [k for k in st.timers if k.split("|")[0] in ("birthday", "anniversary")], st.timers
    assert eng.timers_pending() == 0 or all(k.startswith("_stage") for k in st.timers)
    later = orders(1, start="2026-03-01T12:00:00Z")
    drive(eng, [parse(orjson.dumps(e)) for e in later], until=T("2027-03-01T00:00:00Z"))
    fired = [t["data"]["rule"] + ":" + t["data"]["occasion"] for t in eng.sink.triggers]
    assert "birthday:2026" in fired and "anniversary:3" in fired, fired


# -- advocate ---------------------------------------------------------------------

@pytest.mark.parametrize("etype,props,fires", [
    ("survey.answered", {"nps": 9}, True), ("survey.answered", {"nps": 8}, False),
    ("review.submitted", {"rating": 5}, True), ("review.submitted", {"rating": 4}, False),
    ("referral.sent", {}, True),
])
def test_advocate(run, etype, props, fires):
    r = run([ev(etype, "c1", "2026-03-01T12:00:00Z", **props)])
    assert bool(r.of("advocate")) is fires


# -- steady_customer --------------------------------------------------------------

def test_steady_customer_three_consecutive_months(run):
    r = run([ev("order.completed", "c1", ts, order_id=ts, revenue=30) for ts in
             ("2026-01-20T12:00:00Z", "2026-02-03T12:00:00Z", "2026-03-15T12:00:00Z", "2026-04-15T12:00:00Z")])
    (t,) = r.of("steady_customer")  # once per streak, not again in April
    assert t["time"] == "2026-03-15T12:00:00Z" and t["data"]["occasion"] == "2026-01"


def test_steady_customer_gap_resets_the_streak(run):
    r = run([ev("order.completed", "c1", ts, order_id=ts, revenue=30) for ts in
             ("2026-01-20T12:00:00Z", "2026-02-03T12:00:00Z", "2026-04-15T12:00:00Z", "2026-05-15T12:00:00Z")])
    assert r.of("steady_customer") == []


def test_steady_customer_not_for_gold_tier(run):
    r = run([ev("order.completed", "c1", ts, order_id=ts, revenue=900) for ts in
             ("2026-01-20T12:00:00Z", "2026-02-03T12:00:00Z", "2026-03-15T12:00:00Z")])   # 2700 >= gold
    assert r.of("steady_customer") == []


def test_steady_customer_months_are_customer_local(run):
    # 2026-01-31T23:30 UTC is already February in Berlin
    r = run([identify("c1", "2026-01-01T00:00:00Z", timezone="Europe/Berlin"),
             *[ev("order.completed", "c1", ts, order_id=ts, revenue=30) for ts in
               ("2025-12-20T12:00:00Z", "2026-01-31T23:30:00Z", "2026-03-15T12:00:00Z")]])
    assert r.of("steady_customer") == []  # Dec, Feb, Mar: not consecutive locally


def test_repeated_order_id_does_not_count_twice_in_health(run):
    once = run([ev("order.completed", "c1", "2026-01-05T12:00:00Z", order_id="o1", revenue=10),
                ev("referral.sent", "c1", "2026-01-06T12:00:00Z")])
    twice = run([ev("order.completed", "c1", "2026-01-05T12:00:00Z", order_id="o1", revenue=10),
                 ev("order.completed", "c1", "2026-01-05T12:30:00Z", order_id="o1", revenue=10),
                 ev("referral.sent", "c1", "2026-01-06T12:00:00Z")])
    h = lambda r: r.of("advocate")[0]["data"]["relationship"]["health"]
    assert h(once) == h(twice)
    assert twice.of("advocate")[0]["data"]["relationship"]["orders"] == 1
