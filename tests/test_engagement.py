"""Engagement events (domain.md sections 2 and 9): the message.* types and their Segment names, their
effect on health (delivered, opened, clicked good; bounced, complained bad), an unsubscribe or a spam
complaint refusing consent from its event time on (at the exact time of a trigger too), and journey
explain naming the trigger an engagement answers."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from conftest import T, ev

from journey.core import intake
from journey.core.config import Config
from journey.core.engine import Engine
from journey.core.health import score

QUIET_OFF = {"policy": {"quiet_start": "00:00", "quiet_end": "00:00", "max_per_window": 1000, "min_gap": "0s"}}


def seg(event, cid="c1", ts="2026-03-01T10:00:00Z", id=None, **props):
    return {"type": "track", "event": event, "userId": cid, "timestamp": ts, "messageId": id or f"{event}-{ts}",
            "properties": props}


@pytest.mark.parametrize("name,ctype", [
    ("Email Delivered", "message.delivered"), ("Push Notification Received", "message.delivered"),
    ("Email Opened", "message.opened"), ("Push Notification Tapped", "message.opened"),
    ("Email Link Clicked", "message.clicked"), ("Email Bounced", "message.bounced"),
    ("Email Marked as Spam", "message.complained"), ("Unsubscribed", "message.unsubscribed")])
def test_segment_names_map_to_the_message_types_with_their_fields(name, ctype):
    e = intake.parse(orjson.dumps(seg(name, trigger_id="t-1", channel="email")))
    assert e.type == ctype and e.known and e.touch == "system"
    assert e.f == ({"channel": "email"} if ctype == "message.unsubscribed" else {"trigger_id": "t-1", "channel": "email"})


def _health_after(*types) -> int:
    eng = Engine(Config())
    for i, t in enumerate(types):
        e = intake.parse(orjson.dumps(ev(t, "c1", "2026-03-01T10:00:00Z", id=f"e{i}", trigger_id="t")))
        eng.apply(e)
    st = eng.states["c1"]
    return score(st.hdev, st.hts, T("2026-03-01T10:00:00Z"), eng.cfg.health.half_life)


def test_engagement_moves_health_good_and_bad():
    neutral = _health_after("page.viewed")
    assert neutral == 50
    for good in ("message.delivered", "message.opened", "message.clicked"):
        assert _health_after(good) > neutral, good
    assert _health_after("message.clicked") > _health_after("message.opened") > _health_after("message.delivered")
    for bad in ("message.bounced", "message.complained"):
        assert _health_after(bad) < neutral, bad
    assert _health_after("message.complained") < _health_after("message.bounced")
    assert _health_after("message.unsubscribed") == neutral   # it changes consent, not health


def _checkout(ts="2026-03-01T10:00:00Z"):
    return ev("checkout.started", "c1", ts, id="k1", checkout_id="chk-1", value=40)


@pytest.mark.parametrize("at,sent", [("2026-03-01T10:29:59.999Z", False),   # before the reminder is due
                                     ("2026-03-01T10:30:00Z", False),        # at its exact time: the event first
                                     ("2026-03-01T10:30:00.001Z", True)])    # just after: it went
def test_an_unsubscribe_refuses_its_channel_from_its_event_time_on(run, at, sent):
    evs = [_checkout(), ev("message.unsubscribed", "c1", at, id="u1", channel="Email")]
    r = run(evs, rules=QUIET_OFF, until="2026-03-02T00:00:00Z")
    assert bool(r.of("cart_abandoned")) is sent
    if not sent:
        (a,) = r.audit_of("cart_abandoned")
        assert a["reason"] == "no_consent" and "email" in a["detail"]


def test_an_unsubscribe_without_a_channel_refuses_marketing_and_a_complaint_too(run):
    for unsub in (ev("message.unsubscribed", "c1", "2026-03-01T09:00:00Z", id="u1"),
                  ev("message.complained", "c1", "2026-03-01T09:00:00Z", id="s1", trigger_id="t0", channel="email")):
        r = run([unsub, _checkout()], rules=QUIET_OFF, until="2026-03-02T00:00:00Z")
        assert r.of("cart_abandoned") == []
        held = r.audit_of("cart_abandoned")
        assert held and all(a["reason"] == "no_consent" and "marketing not consented" in a["detail"] for a in held)
    # another channel's unsubscribe leaves email alone
    r = run([ev("message.unsubscribed", "c1", "2026-03-01T09:00:00Z", id="u2", channel="sms"), _checkout()],
            rules=QUIET_OFF, until="2026-03-02T00:00:00Z")
    assert len(r.of("cart_abandoned")) == 1


def test_explain_names_the_trigger_an_engagement_answers(run, tmp_path):
    first = run([_checkout()], rules=QUIET_OFF, until="2026-03-02T00:00:00Z")
    (t,) = first.of("cart_abandoned")
    log = tmp_path / "e.jsonl"
    log.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in [
        _checkout(), seg("Email Opened", ts="2026-03-01T11:00:00Z", id="o1", trigger_id=t["id"], channel="email")]))
    rules = tmp_path / "r.toml"
    rules.write_text('[policy]\nquiet_start = "00:00"\nquiet_end = "00:00"\n')
    p = subprocess.run([sys.executable, "-m", "journey", "explain", "c1", str(log), "--rules", str(rules), "--until",
                        "2026-03-02T00:00:00Z"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stdout.splitlines() if "message.opened" in x)
    assert f"answers trigger {t['id']} (cart_abandoned)" in line


# -- [policy] max_per_day: marketing triggers per customer-local calendar day ----------------------

def _firsts(cid, times, tz=None):
    """A customer who gets one recognition trigger per order (first purchase, then milestones off): orders
    at ``times`` with a trigger each, via an immediate journey."""
    evs = []
    if tz:
        evs.append({"type": "identify", "userId": cid, "timestamp": "2026-02-01T00:00:00Z", "messageId": f"id-{cid}",
                    "traits": {"timezone": tz}})
    evs += [ev("order.completed", cid, t, id=f"{cid}-o{i}", order_id=f"{cid}-o{i}", revenue=10)
            for i, t in enumerate(times)]
    return evs


DAY_CAP = {"policy": {"quiet_start": "00:00", "quiet_end": "00:00", "max_per_window": 100, "min_gap": "0s",
                      "max_per_day": 2},
           "journeys": {"thanks": {"kind": "recognition", "entry": "order.completed", "reenter": "0s"}},
           # the built-in recognitions of orders off: the journey's are the only contacts counted
           "rules": {r: {"enabled": False} for r in ("first_purchase", "order_milestone", "spend_tier")}}


def test_max_per_day_counts_the_customer_local_calendar_day(run):
    # UTC customer: three orders on one day, the third capped; the next day's goes again
    r = run(_firsts("c1", ["2026-03-01T08:00:00Z", "2026-03-01T12:00:00Z", "2026-03-01T20:00:00Z",
                           "2026-03-02T01:00:00Z"]), rules=DAY_CAP, until="2026-03-03T00:00:00Z")
    assert [t["time"] for t in r.of("thanks")] == ["2026-03-01T08:00:00Z", "2026-03-01T12:00:00Z",
                                                  "2026-03-02T01:00:00Z"]
    (a,) = r.audit_of("thanks", "frequency_cap")
    assert a["time"] == "2026-03-01T20:00:00Z" and "today" in a["detail"]


def test_max_per_day_across_a_time_zone_midnight(run):
    # Tokyo (UTC+9): 2026-03-01T14:00Z is 23:00 local, 15:30Z is 00:30 the next local day
    times = ["2026-03-01T10:00:00Z", "2026-03-01T12:00:00Z", "2026-03-01T14:00:00Z", "2026-03-01T15:30:00Z"]
    tokyo = run(_firsts("c1", times, tz="Asia/Tokyo"), rules=DAY_CAP, until="2026-03-03T00:00:00Z")
    assert [t["time"] for t in tokyo.of("thanks")] == [times[0], times[1], times[3]]   # 23:00 local: capped
    # the same times in UTC are one calendar day: only two
    utc = run(_firsts("c1", times), rules=DAY_CAP, until="2026-03-03T00:00:00Z")
    assert [t["time"] for t in utc.of("thanks")] == times[:2]


def test_max_per_day_off_by_default_and_transactional_triggers_are_never_counted(run):
    rules = {**DAY_CAP, "policy": {**DAY_CAP["policy"], "max_per_day": 0}}
    r = run(_firsts("c1", ["2026-03-01T08:00:00Z", "2026-03-01T09:00:00Z", "2026-03-01T10:00:00Z"]),
            rules=rules, until="2026-03-02T00:00:00Z")
    assert len(r.of("thanks")) == 3
    tx = {**DAY_CAP, "journeys": {"thanks": {**DAY_CAP["journeys"]["thanks"], "transactional": True}}}
    r2 = run(_firsts("c1", ["2026-03-01T08:00:00Z", "2026-03-01T09:00:00Z", "2026-03-01T10:00:00Z"]),
             rules=tx, until="2026-03-02T00:00:00Z")
    assert len(r2.of("thanks")) == 3
