"""Arbitration (domain.md section 9): a customer's marketing triggers coming due within
[policy] arbitration_window of the first are decided together at its close, by priority, then [policy] rank,
then due time, then trigger id; they go out while the caps allow, carrying the close time; the rest are
audited outranked naming the winner and are no contacts. Transactional triggers never wait; a held-out
customer goes through the same arbitration; a step's send waits in it too."""

from __future__ import annotations

import pytest
from conftest import ev

from journey.core.config import ConfigError
from journey.core.triggers import trigger_id
from journey.io.rulefile import config_from


def policy(**kw):
    return {"quiet_start": "00:00", "quiet_end": "00:00", "max_per_window": 1, "min_gap": "0s",
            "arbitration_window": "5m", **kw}


def journeys(lo_priority="normal", hi_priority="high", **extra):
    return {"lo": {"kind": "recovery", "entry": "page.viewed", "priority": lo_priority, "reenter": "0s", **extra},
            "hi": {"kind": "recovery", "entry": "product.viewed", "priority": hi_priority, "reenter": "0s", **extra}}


def page(ts, id="p1"):
    return ev("page.viewed", "c1", ts, id=id)


def product(ts, id="v1"):
    return ev("product.viewed", "c1", ts, id=id, product_id="x")


def test_the_higher_priority_wins_and_the_other_is_outranked_naming_it(run):
    r = run([page("2026-03-01T10:00:00Z"), product("2026-03-01T10:03:00Z")],
            rules={"policy": policy(), "journeys": journeys()}, until="2026-03-02T00:00:00Z")
    (won,) = r.triggers
    assert won["data"]["rule"] == "hi" and won["time"] == "2026-03-01T10:05:00Z"   # the close time
    assert won["data"]["deferred_from"] == "2026-03-01T10:03:00Z"
    (lost,) = r.audit_of("lo", "outranked")
    assert lost["time"] == "2026-03-01T10:05:00Z" and won["id"] in lost["detail"]
    # an outranked trigger is no contact: the cap's one slot is the winner's
    assert r.summary["suppressed_by_reason"]["outranked"] == 1


def test_off_by_default_the_first_due_is_decided_first(run):
    r = run([page("2026-03-01T10:00:00Z"), product("2026-03-01T10:03:00Z")],
            rules={"policy": policy(arbitration_window="0s"), "journeys": journeys()}, until="2026-03-02T00:00:00Z")
    assert [t["data"]["rule"] for t in r.triggers] == ["lo"]
    assert [a["reason"] for a in r.audit_of("hi")] == ["frequency_cap"]


@pytest.mark.parametrize("rank,winner", [([], "hi"),            # equal priority, unlisted: name order (hi < lo)
                                         (["lo"], "lo"),        # listed first
                                         (["hi", "lo"], "hi")])
def test_equal_priority_goes_by_rank_then_name(run, rank, winner):
    r = run([page("2026-03-01T10:00:00Z"), product("2026-03-01T10:03:00Z")],
            rules={"policy": policy(rank=rank), "journeys": journeys(hi_priority="normal")},
            until="2026-03-02T00:00:00Z")
    assert [t["data"]["rule"] for t in r.triggers] == [winner]


def test_then_due_time_then_trigger_id(run):
    # one journey, two instances (reenter 0s), same priority and rank: the earlier due wins
    r = run([page("2026-03-01T10:01:00Z", id="b"), page("2026-03-01T10:00:00Z", id="z")],
            rules={"policy": policy(), "journeys": journeys()}, until="2026-03-02T00:00:00Z")
    assert [t["data"]["occasion"] for t in r.triggers] == ["z"]
    # same due time: the smaller trigger id
    r2 = run([page("2026-03-01T10:00:00Z", id="a"), page("2026-03-01T10:00:00Z", id="b")],
             rules={"policy": policy(), "journeys": journeys()}, until="2026-03-02T00:00:00Z")
    ids = {o: trigger_id("c1", "lo", o) for o in ("a", "b")}
    assert [t["id"] for t in r2.triggers] == [min(ids.values())]


@pytest.mark.parametrize("at,together", [("2026-03-01T10:04:59.999Z", True),    # before the close: in the window
                                         ("2026-03-01T10:05:00Z", False)])      # at the close: a window of its own
def test_the_window_edge(run, at, together):
    r = run([page("2026-03-01T10:00:00Z"), product(at)],
            rules={"policy": policy(max_per_window=5), "journeys": journeys()}, until="2026-03-02T00:00:00Z")
    times = sorted(t["time"] for t in r.triggers)
    assert times == (["2026-03-01T10:05:00Z"] * 2 if together else ["2026-03-01T10:05:00Z", "2026-03-01T10:10:00Z"])


def test_the_caps_allow_more_than_one_winner(run):
    r = run([page("2026-03-01T10:00:00Z"), product("2026-03-01T10:01:00Z"), page("2026-03-01T10:02:00Z", id="p2")],
            rules={"policy": policy(max_per_window=2), "journeys": journeys()}, until="2026-03-02T00:00:00Z")
    assert sorted(t["data"]["occasion"] for t in r.triggers) == ["p1", "v1"]   # hi, then lo's earlier one
    (lost,) = r.audit_of("lo", "outranked")
    assert lost["occasion"] == "p2"


def test_transactional_triggers_never_wait(run):
    tx = journeys()
    tx["lo"]["transactional"] = True
    r = run([page("2026-03-01T10:00:00Z"), product("2026-03-01T10:03:00Z")],
            rules={"policy": policy(), "journeys": tx}, until="2026-03-02T00:00:00Z")
    # the transactional one goes when due and opens no window; the marketing one opens its own at 10:03
    assert sorted((t["data"]["rule"], t["time"]) for t in r.triggers) == [("hi", "2026-03-01T10:08:00Z"),
                                                                          ("lo", "2026-03-01T10:00:00Z")]


def test_a_held_out_customer_goes_through_the_same_arbitration(run):
    j = journeys()
    j["hi"]["experiment"] = {"salt": "s", "holdout": 0.999, "goal": "order.completed", "window": "1d"}
    r = run([page("2026-03-01T10:00:00Z"), product("2026-03-01T10:03:00Z")],
            rules={"policy": policy(), "journeys": j}, until="2026-03-02T00:00:00Z")
    # hi wins the window but is held out: it counts as the one send the cap allows, so lo is outranked
    assert r.triggers == []
    assert [a["reason"] for a in r.audit_of("hi")] == ["holdout"]
    (lost,) = r.audit_of("lo", "outranked")
    assert trigger_id("c1", "hi", "v1") in lost["detail"]


def test_a_step_send_waits_in_the_window_and_its_instance_goes_on(run):
    j = {"kind": "recovery", "entry": "page.viewed",
         "steps": [{"name": "a", "send": {}}, {"name": "b", "wait": "1h", "send": {}}]}
    r = run([page("2026-03-01T10:00:00Z")], rules={"policy": policy(max_per_window=5), "journeys": {"j": j}},
            until="2026-03-02T00:00:00Z")
    assert [(t["data"]["step"], t["time"]) for t in r.triggers] == [("a", "2026-03-01T10:05:00Z"),
                                                                    ("b", "2026-03-01T11:10:00Z")]


def test_rules_check_refuses_an_unknown_name_in_rank():
    with pytest.raises(ConfigError) as e:
        config_from({"policy": {"rank": ["cart_abandonned"]}})
    assert any("'cart_abandonned' is not a rule or a journey (did you mean 'cart_abandoned'?)" in p
               for p in e.value.problems), e.value.problems
