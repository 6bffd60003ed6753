"""Recovery rules: fires, does not fire, and the edges of each window."""

import pytest
from conftest import ev


def checkout(ts, cid="c1", chk="chk-1", **kw):
    return ev("checkout.started", cid, ts, checkout_id=chk, value=50, **kw)


def order(ts, cid="c1", oid=None, revenue=20):
    return ev("order.completed", cid, ts, order_id=oid or f"o-{ts}", revenue=revenue)


# -- cart_abandoned --------------------------------------------------------------

def test_cart_fires_at_start_plus_30_minutes(run):
    r = run([checkout("2026-03-01T10:00:00Z"), ev("page.viewed", "c1", "2026-03-01T11:00:00Z")])
    (t,) = r.of("cart_abandoned")
    assert t["time"] == "2026-03-01T10:30:00Z"
    assert t["type"] == "journey.recovery.cart_abandoned" and t["subject"] == "c1"
    assert t["data"]["evidence"] and "chk-1" in t["data"]["reason"]


@pytest.mark.parametrize("order_at,fires", [
    ("2026-03-01T10:29:59Z", False),
    ("2026-03-01T10:30:00Z", False),      # an order exactly at the deadline still saves the cart
    ("2026-03-01T10:30:00.001Z", True),   # just outside the window
    ("2026-03-01T10:35:00Z", True),
])
def test_cart_window_edges(run, order_at, fires):
    r = run([checkout("2026-03-01T10:00:00Z"), order(order_at)], until="2026-03-02T00:00:00Z")
    assert bool(r.of("cart_abandoned")) is fires


def test_cart_order_before_checkout_does_not_save_it(run):
    r = run([order("2026-02-20T09:59:00Z"), checkout("2026-03-01T10:00:00Z")], until="2026-03-01T12:00:00Z")
    assert len(r.of("cart_abandoned")) == 1


def test_newer_checkout_replaces_older(run):
    r = run([checkout("2026-03-01T10:00:00Z", chk="a"), checkout("2026-03-01T10:20:00Z", chk="b")],
            until="2026-03-01T12:00:00Z")
    (t,) = r.of("cart_abandoned")
    assert t["data"]["occasion"] == "b" and t["time"] == "2026-03-01T10:50:00Z"


def test_cart_timer_does_not_fire_without_watermark(run):
    # the watermark stops at the last event; the deadline is not reached
    r = run([checkout("2026-03-01T10:00:00Z"), ev("page.viewed", "c1", "2026-03-01T10:29:59Z")])
    assert r.of("cart_abandoned") == []


def test_cart_delay_is_configurable(run):
    delay = {"rules": {"cart_abandoned": {"delay": "45m"}}}
    r = run([checkout("2026-03-01T10:00:00Z"), order("2026-03-01T10:40:00Z")], rules=delay)
    assert r.of("cart_abandoned") == []          # no trigger at the default 30 min
    r2 = run([checkout("2026-03-01T10:00:00Z")], rules=delay, until="2026-03-01T12:00:00Z")
    (t,) = r2.of("cart_abandoned")
    assert t["time"] == "2026-03-01T10:45:00Z"   # and one at the new delay


# -- payment_failed ---------------------------------------------------------------

@pytest.mark.parametrize("order_at,fires", [
    ("2026-03-01T10:15:00Z", False), ("2026-03-01T10:15:00.001Z", True), (None, True)])
def test_payment_failed_window(run, order_at, fires):
    evs = [ev("payment.failed", "c1", "2026-03-01T10:00:00Z", order_id="o1")]
    if order_at:
        evs.append(order(order_at))
    r = run(evs, until="2026-03-01T12:00:00Z")
    got = r.of("payment_failed")
    assert bool(got) is fires
    if fires:
        assert got[0]["time"] == "2026-03-01T10:15:00Z"


def test_payment_failed_is_transactional_at_night(run):
    # 23:00 UTC is quiet hours, but service messages go out
    r = run([ev("payment.failed", "c1", "2026-03-01T23:00:00Z", order_id="o1")], until="2026-03-02T00:00:00Z")
    assert [t["time"] for t in r.of("payment_failed")] == ["2026-03-01T23:15:00Z"]


# -- support_sla_breach ---------------------------------------------------------------

@pytest.mark.parametrize("prio,deadline", [("high", "11:00"), ("urgent", "11:00"), ("normal", "18:00"), ("low", "18:00")])
def test_sla_deadline_by_priority(run, prio, deadline):
    r = run([ev("ticket.opened", "c1", "2026-03-01T10:00:00Z", ticket_id="t1", priority=prio)],
            until="2026-03-02T00:00:00Z")
    (t,) = r.of("support_sla_breach")
    assert t["time"] == f"2026-03-01T{deadline}:00Z"


@pytest.mark.parametrize("reply,at,fires", [
    ("ticket.agent_replied", "2026-03-01T11:00:00Z", False),   # exactly at the deadline
    ("ticket.resolved", "2026-03-01T10:59:00Z", False),
    ("ticket.agent_replied", "2026-03-01T11:00:00.001Z", True),
])
def test_sla_reply_edges(run, reply, at, fires):
    r = run([ev("ticket.opened", "c1", "2026-03-01T10:00:00Z", ticket_id="t1", priority="high"),
             ev(reply, "c1", at, ticket_id="t1")], until="2026-03-02T00:00:00Z")
    assert bool(r.of("support_sla_breach")) is fires


def test_sla_reply_on_other_ticket_does_not_count(run):
    r = run([ev("ticket.opened", "c1", "2026-03-01T10:00:00Z", ticket_id="t1", priority="high"),
             ev("ticket.agent_replied", "c1", "2026-03-01T10:10:00Z", ticket_id="t2")], until="2026-03-02T00:00:00Z")
    assert len(r.of("support_sla_breach")) == 1


def test_reopened_ticket_gets_a_new_sla(run):
    r = run([ev("ticket.opened", "c1", "2026-03-01T10:00:00Z", ticket_id="t1", priority="urgent"),
             ev("ticket.resolved", "c1", "2026-03-01T10:30:00Z", ticket_id="t1"),
             ev("ticket.reopened", "c1", "2026-03-02T10:00:00Z", ticket_id="t1")], until="2026-03-03T00:00:00Z")
    (t,) = r.of("support_sla_breach")
    assert t["time"] == "2026-03-02T11:00:00Z"   # the priority is remembered from the opening


# -- service_recovery -------------------------------------------------------------------

@pytest.mark.parametrize("props,fires", [
    ({"csat": 2}, True), ({"csat": 3}, False), ({"nps": 6}, True), ({"nps": 7}, False),
])
def test_service_recovery_on_surveys(run, props, fires):
    r = run([ev("survey.answered", "c1", "2026-03-01T10:00:00Z", **props)])
    assert bool(r.of("service_recovery")) is fires


@pytest.mark.parametrize("rating,fires", [(1, True), (2, True), (3, False), (5, False)])
def test_service_recovery_on_reviews(run, rating, fires):
    r = run([ev("review.submitted", "c1", "2026-03-01T10:00:00Z", rating=rating)])
    got = r.of("service_recovery")
    assert bool(got) is fires
    if fires:
        assert got[0]["time"] == "2026-03-01T10:00:00Z" and got[0]["data"]["priority"] == "high"


# -- delivery_late ----------------------------------------------------------------------

@pytest.mark.parametrize("delivered,fires", [
    ("2026-03-05T12:00:00Z", False), ("2026-03-05T12:00:00.001Z", True), (None, True)])
def test_delivery_late_edges(run, delivered, fires):
    evs = [ev("order.shipped", "c1", "2026-03-02T10:00:00Z", order_id="o1", promised_by="2026-03-05T12:00:00Z")]
    if delivered:
        evs.append(ev("order.delivered", "c1", delivered, order_id="o1"))
    r = run(evs, until="2026-03-06T00:00:00Z")
    got = r.of("delivery_late")
    assert bool(got) is fires
    if fires:
        assert got[0]["time"] == "2026-03-05T12:00:00Z"


def test_delivery_promise_as_a_date_is_the_end_of_that_local_day(run):
    r = run([ev("profile.updated", "c1", "2026-03-01T00:00:00Z", timezone="America/New_York"),
             ev("order.shipped", "c1", "2026-03-02T10:00:00Z", order_id="o1", promised_by="2026-03-05")],
            until="2026-03-07T00:00:00Z")
    (t,) = r.of("delivery_late")
    assert t["time"] == "2026-03-06T04:59:59.999Z"


def test_no_promise_no_timer(run):
    r = run([ev("order.shipped", "c1", "2026-03-02T10:00:00Z", order_id="o1")], until="2026-04-01T00:00:00Z")
    assert r.of("delivery_late") == []
