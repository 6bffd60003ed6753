"""The contact policy: quiet hours, consent, gates, caps, erasure, anonymous visitors."""

import pytest
from conftest import T, ev, identify

from journey.core.timeutil import MS_HOUR

REQUIRED_AUDIT = {"trigger_id", "customer_id", "rule", "reason", "time"}


def referral(ts, cid="c1"):
    return ev("referral.sent", cid, ts)


@pytest.mark.parametrize("tz,at,deferred_to", [
    ("UTC", "2026-03-01T21:00:00Z", "2026-03-02T08:00:00Z"),            # quiet starts at 21:00 sharp
    ("UTC", "2026-03-02T07:59:59Z", "2026-03-02T08:00:00Z"),
    ("Asia/Tokyo", "2026-03-01T13:00:00Z", "2026-03-01T23:00:00Z"),     # 22:00 JST -> 08:00 JST
    ("Asia/Kolkata", "2026-03-01T16:00:00Z", "2026-03-02T02:30:00Z"),   # 21:30 IST -> 08:00 IST
    ("America/New_York", "2026-03-08T03:00:00Z", "2026-03-08T12:00:00Z"),  # 22:00 EST; 08:00 is EDT after the change
    ("America/New_York", "2026-11-01T02:00:00Z", "2026-11-01T13:00:00Z"),  # 22:00 EDT; 08:00 is EST after the change
])
def test_quiet_hours_defer_to_local_morning(run, tz, at, deferred_to):
    r = run([identify("c1", "2026-01-01T00:00:00Z", timezone=tz), referral(at)], until="2026-12-31T00:00:00Z")
    (a,) = r.audit_of("advocate", "quiet_hours")
    assert REQUIRED_AUDIT <= a.keys() and a["deferred_until"] == deferred_to
    (t,) = r.of("advocate")
    assert t["time"] == deferred_to and t["id"] == a["trigger_id"]
    assert t["data"]["deferred_from"] == at


@pytest.mark.parametrize("at", ["2026-03-01T20:59:59Z", "2026-03-01T08:00:00Z"])
def test_outside_quiet_hours_goes_now(run, at):
    r = run([referral(at)])
    assert [t["time"] for t in r.of("advocate")] == [at]
    assert r.audit == []


def test_deferred_cart_bought_meanwhile_is_dropped(run):
    r = run([ev("checkout.started", "c1", "2026-03-01T21:00:00Z", checkout_id="k1"),
             ev("order.completed", "c1", "2026-03-02T07:00:00Z", order_id="o1", revenue=10)],
            until="2026-03-03T00:00:00Z")
    assert r.of("cart_abandoned") == []
    reasons = [a["reason"] for a in r.audit_of("cart_abandoned")]
    assert reasons == ["quiet_hours", "resolved_before_delivery"]
    assert r.audit_of("cart_abandoned")[1]["time"] == "2026-03-02T08:00:00Z"


def test_transactional_ignores_quiet_hours_and_caps(run):
    r = run([referral("2026-03-01T12:00:00Z"),
             ev("survey.answered", "c1", "2026-03-01T23:00:00Z", csat=1),
             ev("survey.answered", "c1", "2026-03-01T23:30:00Z", csat=2)])
    assert [t["time"] for t in r.of("service_recovery")] == ["2026-03-01T23:00:00Z", "2026-03-01T23:30:00Z"]


def test_marketing_consent_refused(run):
    r = run([identify("c1", "2026-01-01T00:00:00Z", consent={"marketing": False}),
             referral("2026-03-01T12:00:00Z"), ev("survey.answered", "c1", "2026-03-01T13:00:00Z", csat=1)])
    assert r.of("advocate") == [] and len(r.of("service_recovery")) == 1
    (a,) = r.audit_of("advocate", "no_consent")
    assert REQUIRED_AUDIT <= a.keys()


def test_channel_consent_refused_blocks_even_service_messages(run):
    r = run([identify("c1", "2026-01-01T00:00:00Z", consent={"email": False}),
             ev("survey.answered", "c1", "2026-03-01T13:00:00Z", csat=1)])
    assert r.of("service_recovery") == [] and r.audit_of("service_recovery", "no_consent")


def test_channel_is_configurable_and_consent_follows_it(run):
    r = run([identify("c1", "2026-01-01T00:00:00Z", consent={"email": False, "sms": True}),
             ev("survey.answered", "c1", "2026-03-01T13:00:00Z", csat=1)],
            rules={"rules": {"service_recovery": {"channel": "sms"}}})
    (t,) = r.of("service_recovery")
    assert t["data"]["channel"] == "sms"


def test_consent_default_denied_needs_opt_in(run):
    denied = {"policy": {"consent_default": "denied"}}
    r = run([referral("2026-03-01T12:00:00Z"), referral("2026-03-01T12:00:00Z", cid="c2"),
             identify("c2", "2026-01-01T00:00:00Z", consent={"marketing": True, "email": True})], rules=denied)
    assert [t["subject"] for t in r.of("advocate")] == ["c2"]
    assert [a["customer_id"] for a in r.audit_of("advocate", "no_consent")] == ["c1"]


def test_open_complaint_holds_back_recognition_not_recovery(run):
    r = run([ev("ticket.opened", "c1", "2026-03-01T10:00:00Z", ticket_id="t1"),
             referral("2026-03-01T11:00:00Z"),
             ev("survey.answered", "c1", "2026-03-01T11:30:00Z", csat=2),
             ev("ticket.resolved", "c1", "2026-03-01T12:00:00Z", ticket_id="t1"),
             referral("2026-03-01T13:00:00Z")])
    assert r.audit_of("advocate", "open_complaint")
    assert [t["time"] for t in r.of("advocate")] == ["2026-03-01T13:00:00Z"]
    assert len(r.of("service_recovery")) == 1


def test_poor_relationship_gate(run):
    r = run([ev("survey.answered", "c1", "2026-03-01T10:00:00Z", csat=1),
             ev("review.submitted", "c1", "2026-03-01T10:10:00Z", rating=1),
             referral("2026-03-01T11:00:00Z")])
    (a,) = r.audit_of("advocate", "poor_relationship")
    assert "health" in a["detail"]
    # health decays toward neutral: two half-lives later the same gesture goes out
    r2 = run([ev("survey.answered", "c1", "2026-03-01T10:00:00Z", csat=1),
              ev("review.submitted", "c1", "2026-03-01T10:10:00Z", rating=1),
              referral("2026-05-01T11:00:00Z")])
    assert len(r2.of("advocate")) == 1


def test_frequency_cap_three_per_seven_days(run):
    t0 = T("2026-03-02T10:00:00Z")
    r = run([referral(t0 + i * 24 * MS_HOUR) for i in range(5)])
    assert len(r.of("advocate")) == 3
    assert [a["reason"] for a in r.audit_of("advocate")] == ["frequency_cap", "frequency_cap"]


def test_frequency_cap_window_rolls(run):
    t0 = T("2026-03-02T10:00:00Z")
    day = 24 * MS_HOUR
    r = run([referral(t0), referral(t0 + day), referral(t0 + 2 * day),
             referral(t0 + 7 * day - 1),    # the first is still inside the 7-day window: capped
             referral(t0 + 7 * day + 1)])   # now it has left: sent
    assert [t["time"] for t in r.of("advocate")][3:] == ["2026-03-09T10:00:00.001Z"]
    assert len(r.audit_of("advocate", "frequency_cap")) == 1


def test_minimum_gap(run):
    t0 = T("2026-03-02T08:00:00Z")
    r = run([referral(t0), referral(t0 + 12 * MS_HOUR - 1), referral(t0 + 12 * MS_HOUR)])
    assert [t["time"] for t in r.of("advocate")] == ["2026-03-02T08:00:00Z", "2026-03-02T20:00:00Z"]
    (a,) = r.audit_of("advocate", "frequency_cap")
    assert a["time"] == "2026-03-02T19:59:59.999Z"


def test_erasure_deletes_state_and_stops_triggers(run):
    r = run([ev("checkout.started", "c1", "2026-03-01T10:00:00Z", checkout_id="k1"),
             ev("customer.erased", "c1", "2026-03-01T10:10:00Z"),
             ev("order.completed", "c1", "2026-03-01T11:00:00Z", order_id="o1", revenue=10),
             ev("survey.answered", "c1", "2026-03-01T12:00:00Z", csat=1)], until="2026-03-02T00:00:00Z")
    (t,) = r.triggers  # only the record that tells the systems downstream
    assert t["type"] == "journey.privacy.erased" and t["subject"] == "c1" and t["time"] == "2026-03-01T10:10:00Z"
    assert r.summary["after_erasure"] == 2


def test_erasure_of_a_deferred_trigger_is_audited(run):
    r = run([referral("2026-03-01T22:00:00Z"), ev("customer.erased", "c1", "2026-03-02T01:00:00Z")],
            until="2026-03-03T00:00:00Z")
    assert [t["type"] for t in r.triggers] == ["journey.privacy.erased"]
    assert [a["reason"] for a in r.audit] == ["quiet_hours", "erased"]


def test_anonymous_cart_is_attributed_after_identify(run):
    anon_checkout = {"type": "track", "event": "Checkout Started", "anonymousId": "a1", "messageId": "m1",
                     "timestamp": "2026-03-01T10:00:00Z", "properties": {"checkout_id": "k1"}}
    link = {"type": "identify", "anonymousId": "a1", "userId": "c7", "messageId": "m2",
            "timestamp": "2026-03-01T10:10:00Z", "traits": {}}
    r = run([anon_checkout, link], until="2026-03-01T12:00:00Z")
    (t,) = r.of("cart_abandoned")
    assert t["subject"] == "c7"
    r2 = run([anon_checkout], until="2026-03-01T12:00:00Z")
    assert r2.triggers == [] and [a["reason"] for a in r2.audit] == ["unidentified"]
