"""Send time (domain.md section 9): a trigger with send_time = "optimal" goes at the start of the
customer's most engaged local hour within send_within, never in quiet hours; the due hour counts from
due; ties go to the earliest hour; engagement decays (30-day half-life); the prior; a variant may set
it; a step's send too; and what rules check refuses."""

from __future__ import annotations

import orjson
import pytest
from conftest import T, ev

from journey.core.config import ConfigError
from journey.io.rulefile import config_from

OFF = {"quiet_start": "00:00", "quiet_end": "00:00", "max_per_window": 1000, "min_gap": "0s"}


def opens(at_times, cid="c1", kind="message.opened"):
    return [ev(kind, cid, t, id=f"{kind}-{cid}-{i}", trigger_id=f"t{i}", channel="email")
            for i, t in enumerate(at_times)]


def first_order(ts, cid="c1"):
    return ev("order.completed", cid, ts, id=f"o-{cid}", order_id=f"o-{cid}", revenue=20)


def cfg(policy=None, within=None, **extra):
    fp = {"send_time": "optimal"}
    if within:
        fp["send_within"] = within
    return {"policy": policy or OFF, "rules": {"first_purchase": fp}, **extra}


def sent_at(r, rule="first_purchase"):
    return [t["time"] for t in r.of(rule)]


# Tuesdays 2026-02-03 ... 2026-02-24 (UTC customer): opens at 19:xx
TUESDAY_EVENINGS = [f"2026-02-{d:02d}T19:{m:02d}:00Z" for d in (3, 10, 17, 24) for m in (5, 40)]


def test_without_engagement_the_trigger_goes_at_once(run):
    r = run([first_order("2026-03-03T10:20:00Z")], rules=cfg(), until="2026-03-05T00:00:00Z")
    assert sent_at(r) == ["2026-03-03T10:20:00Z"]
    assert not r.audit_of("first_purchase", "send_time")


def test_the_most_engaged_hour_within_the_window(run):
    r = run(opens(TUESDAY_EVENINGS) + [first_order("2026-03-03T10:20:00Z")], rules=cfg(),
            until="2026-03-05T00:00:00Z")
    (t,) = r.of("first_purchase")
    assert t["time"] == "2026-03-03T19:00:00Z" and t["data"]["deferred_from"] == "2026-03-03T10:20:00Z"
    (a,) = r.audit_of("first_purchase", "send_time")
    assert a["deferred_until"] == "2026-03-03T19:00:00Z" and a["time"] == "2026-03-03T10:20:00Z"


def test_the_due_hour_counts_from_due(run):
    # opens at 10:xx: the due hour (10:20) wins and the trigger goes at once, not at 10:00 or 11:00
    r = run(opens([f"2026-02-{d:02d}T10:05:00Z" for d in (3, 10, 17, 24)]) + [first_order("2026-03-03T10:20:00Z")],
            rules=cfg(), until="2026-03-05T00:00:00Z")
    assert sent_at(r) == ["2026-03-03T10:20:00Z"]


@pytest.mark.parametrize("within,at", [("8h40m", "2026-03-03T19:00:00Z"),    # 19:00 = due + 8h40m: in the window
                                       ("8h39m", "2026-03-03T10:20:00Z")])   # a minute short: not a candidate
def test_the_window_edge(run, within, at):
    r = run(opens(TUESDAY_EVENINGS) + [first_order("2026-03-03T10:20:00Z")], rules=cfg(within=within),
            until="2026-03-05T00:00:00Z")
    assert sent_at(r) == [at]


def test_quiet_hours_are_never_chosen(run):
    # opens at 23:xx; quiet 21:00-08:00: the best hour outside them (the due hour: all others score the same)
    quiet = {**OFF, "quiet_start": "21:00", "quiet_end": "08:00"}
    r = run(opens([f"2026-02-{d:02d}T23:10:00Z" for d in (3, 10, 17, 24)]) + [first_order("2026-03-03T10:20:00Z")],
            rules=cfg(policy=quiet), until="2026-03-05T00:00:00Z")
    assert sent_at(r) == ["2026-03-03T10:20:00Z"]
    # due inside quiet hours: the first hour after them that scores best (ties: the earliest, 08:00)
    r2 = run([first_order("2026-03-03T22:30:00Z")], rules=cfg(policy=quiet), until="2026-03-05T00:00:00Z")
    assert sent_at(r2) == ["2026-03-04T08:00:00Z"]
    assert [a["reason"] for a in r2.audit_of("first_purchase")] == ["send_time"]


def test_ties_go_to_the_earliest_hour(run):
    # two hours with the same score (the prior's two top shares): 14:00 before 16:00
    prior = [0.0] * 168
    prior[1 * 24 + 14] = prior[1 * 24 + 16] = 1.0   # Tuesday 14:00 and 16:00
    r = run([first_order("2026-03-03T10:20:00Z")], rules=cfg(send_time={"prior": prior}), until="2026-03-05T00:00:00Z")
    assert sent_at(r) == ["2026-03-03T14:00:00Z"]


def test_engagement_decays_with_a_30_day_half_life(run):
    # three opens at 12:xx on a Tuesday 91 days before (3 x 2^-3 = 0.37) against one open at 15:xx a week
    # before (0.85): without the decay the three would win
    old = opens([f"2025-12-02T12:{m:02d}:00Z" for m in (1, 2, 3)])
    recent = opens(["2026-02-24T15:10:00Z"])
    recent[0]["id"] = "recent"
    r = run(old + recent + [first_order("2026-03-03T10:20:00Z")], rules=cfg(), until="2026-03-05T00:00:00Z")
    assert sent_at(r) == ["2026-03-03T15:00:00Z"]
    # a click weighs two opens: a click at 12:xx outweighs a newer open at 15:xx
    click = opens(["2026-02-24T12:10:00Z"], kind="message.clicked")
    r2 = run(click + recent + [first_order("2026-03-03T10:20:00Z")], rules=cfg(), until="2026-03-05T00:00:00Z")
    assert sent_at(r2) == ["2026-03-03T12:00:00Z"]


def test_local_hours_of_the_customers_time_zone(run):
    # a Tokyo customer opening at 20:xx local (11:xx UTC)
    tz = {"type": "identify", "userId": "c1", "timestamp": "2026-01-01T00:00:00Z", "messageId": "tz",
          "traits": {"timezone": "Asia/Tokyo"}}
    r = run([tz] + opens([f"2026-02-{d:02d}T11:10:00Z" for d in (3, 10, 17, 24)]) + [first_order("2026-03-03T02:00:00Z")],
            rules=cfg(), until="2026-03-05T00:00:00Z")
    assert sent_at(r) == ["2026-03-03T11:00:00Z"]   # Tuesday 20:00 in Tokyo


def test_the_prior_shapes_a_customer_without_engagement(run):
    prior = [0.0] * 168
    prior[1 * 24 + 18] = 1.0          # Tuesday 18:00 local
    r = run([first_order("2026-03-03T10:20:00Z")], rules=cfg(send_time={"prior": prior}), until="2026-03-05T00:00:00Z")
    assert sent_at(r) == ["2026-03-03T18:00:00Z"]
    # a weight of 0: the prior does not count, every hour ties, the due hour goes
    r2 = run([first_order("2026-03-03T10:20:00Z")], rules=cfg(send_time={"prior": prior, "prior_weight": 0}),
             until="2026-03-05T00:00:00Z")
    assert sent_at(r2) == ["2026-03-03T10:20:00Z"]


def test_a_journey_sets_send_time_for_its_triggers_and_a_transactional_one_goes_when_due(run):
    j = {"kind": "recognition", "entry": "page.viewed", "send_time": "optimal"}
    evs = opens(TUESDAY_EVENINGS) + [ev("page.viewed", "c1", "2026-03-03T10:20:00Z", id="p")]
    r = run(evs, rules={"policy": OFF, "journeys": {"j": j}}, until="2026-03-05T00:00:00Z")
    assert sent_at(r, "j") == ["2026-03-03T19:00:00Z"]
    # a service message is never held for an hour (as it is never held for quiet hours)
    r2 = run(evs, rules={"policy": OFF, "journeys": {"j": {**j, "transactional": True}}}, until="2026-03-05T00:00:00Z")
    assert sent_at(r2, "j") == ["2026-03-03T10:20:00Z"]


def test_a_variant_sets_send_time_and_a_step_send_too(run):
    exp = {"salt": "s", "holdout": 0.0, "goal": "order.completed", "window": "7d",
           "variants": [{"name": "now", "send_time": "now"}, {"name": "optimal", "send_time": "optimal"}]}
    evs = []
    for i in range(30):
        evs += opens(TUESDAY_EVENINGS, cid=f"c{i}") + [first_order("2026-03-03T10:20:00Z", cid=f"c{i}")]
    r = run(evs, rules={"policy": OFF, "rules": {"first_purchase": {"experiment": exp}}}, until="2026-03-10T00:00:00Z")
    by_arm = {}
    for t in r.of("first_purchase"):
        by_arm.setdefault(t["data"]["experiment"]["variant"], set()).add(t["time"])
    assert by_arm == {"now": {"2026-03-03T10:20:00Z"}, "optimal": {"2026-03-03T19:00:00Z"}}
    j = {"kind": "recovery", "entry": "checkout.started",
         "steps": [{"name": "a", "send": {"send_time": "optimal"}}, {"name": "b", "wait": "1h", "send": {}}]}
    r2 = run(opens(TUESDAY_EVENINGS) + [ev("checkout.started", "c1", "2026-03-03T10:20:00Z", id="k", checkout_id="x")],
             rules={"policy": OFF, "journeys": {"j": j}}, until="2026-03-05T00:00:00Z")
    # the step's send waits for its hour, and the next step's wait counts from then
    assert [(t["data"]["step"], t["time"]) for t in r2.of("j")] == [("a", "2026-03-03T19:00:00Z"),
                                                                     ("b", "2026-03-03T20:00:00Z")]


@pytest.mark.parametrize("data,needle", [
    ({"rules": {"first_purchase": {"send_time": "best"}}}, "send_time: expected one of now, optimal"),
    ({"rules": {"first_purchase": {"send_within": "soon"}}}, "send_within"),
    ({"send_time": {"prior": [1.0] * 100}}, "168 non-negative numbers"),
    ({"send_time": {"prior": [-1.0] + [1.0] * 167}}, "168 non-negative numbers"),
    ({"send_time": {"half_life": "0s"}}, "half_life: must be longer than 0s"),
    ({"rules": {"first_purchase": {"experiment": {"goal": "order.completed", "window": "1d", "variants": [
        {"name": "a", "send_time": "later"}]}}}}, "send_time: expected one of now, optimal"),
    ({"journeys": {"j": {"kind": "recovery", "entry": "checkout.started", "steps": [
        {"name": "a", "send": {"send_time": "soonest"}}]}}}, "send_time: expected one of now, optimal"),
])
def test_rules_check_refuses_bad_send_time_settings(data, needle):
    with pytest.raises(ConfigError) as e:
        config_from(data)
    assert any(needle in p for p in e.value.problems), e.value.problems


def test_the_histogram_is_compact_in_state():
    from journey.core import intake
    from journey.core.engine import Engine

    eng = Engine(config_from({}))
    # an open in every hour of the week for four weeks: 168 bins, the most there can be
    for k in range(168 * 4):
        e = ev("message.opened", "c1", T("2026-02-02T00:30:00Z") + k * 3_600_000, id=f"m{k}", trigger_id="t")
        eng.apply(intake.parse(orjson.dumps(e)))
    st = eng.states["c1"]
    assert len(st.eh[1]) == 168
    size = len(orjson.dumps(st.to_dict()["eh"]))
    assert size < 2500, size
    from journey.core.state import CustomerState

    assert CustomerState.from_bytes(st.to_bytes()).eh == st.eh   # a restored state picks the same hours


def test_rules_show_prints_the_send_time_settings():
    cfg = config_from({"rules": {"first_purchase": {"send_time": "optimal", "send_within": "6h", "experiment": {
        "goal": "order.completed", "window": "7d", "variants": [{"name": "a", "send_time": "now"}]}}},
        "policy": {"arbitration_window": "5m", "rank": ["first_purchase"], "max_per_day": 2}})
    lines = cfg.describe()
    for want in ("rules.first_purchase.send_time = 'optimal'", "rules.first_purchase.send_within = 6h",
                 "policy.arbitration_window = 5m", "policy.rank = ['first_purchase']", "policy.max_per_day = 2",
                 "send_time.prior_weight = 1.0", "send_time.half_life = 30d"):
        assert want in lines, (want, [x for x in lines if "send" in x or "policy" in x])
    assert any("arm a:" in x and "'send_time': 'now'" in x for x in lines)


def test_hours_across_a_daylight_saving_change(run):
    # Berlin moves to summer time on 2026-03-29 (02:00 -> 03:00): opens on Sundays at 10:xx local; a trigger
    # due on Saturday evening goes at Sunday 10:00 local, 08:00 UTC after the change (09:00 UTC before it)
    tz = {"type": "identify", "userId": "c1", "timestamp": "2026-01-01T00:00:00Z", "messageId": "tz",
          "traits": {"timezone": "Europe/Berlin"}}
    sundays = [f"2026-03-{d:02d}T09:10:00Z" for d in (1, 8, 15, 22)]    # 10:10 local in winter time
    r = run([tz] + opens(sundays) + [first_order("2026-03-28T19:00:00Z")], rules=cfg(),
            until="2026-03-31T00:00:00Z")
    assert sent_at(r) == ["2026-03-29T08:00:00Z"]
