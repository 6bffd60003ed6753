"""Experiments (domain.md section 7): assignment by the published formula, the holdout
decided where the policy would have sent, data.experiment, the global holdout, outcomes
on event time (window edges, goal_if, value), erasure, and ``journey rules check``."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys

import pytest
from conftest import T, ev

from journey.core.config import ConfigError
from journey.core.experiments import unit
from journey.io.rulefile import config_from

QUIET_OFF = {"quiet_start": "00:00", "quiet_end": "00:00"}
EXP = {"salt": "2026-12", "holdout": 0.2,
       "variants": [{"name": "reminder", "weight": 1},
                    {"name": "discount", "weight": 1, "offer": {"type": "discount", "pct": 10},
                     "channel": "sms", "priority": "urgent"}],
       "goal": "order.completed", "window": "3d"}


def rules(exp=EXP, policy=None, **rule):
    return {"policy": {**QUIET_OFF, **(policy or {})}, "rules": {"cart_abandoned": {**rule, "experiment": exp}}}


def reference_arm(salt, rule, cid, holdout, weights):
    """The formula of domain.md section 7, written out independently."""
    u = int(hashlib.sha256(f"{salt}/{rule}/{cid}".encode()).hexdigest()[:16], 16) / 2 ** 64
    if u < holdout:
        return "holdout"
    x = (u - holdout) / (1 - holdout)
    total, acc = sum(w for _n, w in weights), 0
    for name, w in weights:
        acc += w
        if x < acc / total:
            return name
    return weights[-1][0]


def cart(cid, ts, chk="k1", **kw):
    return ev("checkout.started", cid, ts, checkout_id=chk, value=80, **kw)


def order(cid, ts, revenue=80.0, oid=None, **kw):
    return ev("order.completed", cid, ts, order_id=oid or f"o-{cid}-{ts}", revenue=revenue, **kw)


def test_unit_is_the_published_formula():
    for cid in ("c1", "zoë", "42", "a/b"):
        h = hashlib.sha256(f"s/cart_abandoned/{cid}".encode()).digest()
        assert unit("s", "cart_abandoned", cid) == int.from_bytes(h[:8], "big") / 2 ** 64
    assert 0 <= unit("", "*", "x") < 1


def test_assignment_matches_the_formula_for_many_ids():
    cfg = config_from(rules())
    exp = cfg.experiments["cart_abandoned"]
    counts = {"holdout": 0, "reminder": 0, "discount": 0}
    for i in range(4000):
        cid = f"cust-{i}"
        arm = exp.assign(cid)
        got = "holdout" if arm is None else arm.name
        assert got == reference_arm("2026-12", "cart_abandoned", cid, 0.2, [("reminder", 1), ("discount", 1)])
        counts[got] += 1
    assert 700 < counts["holdout"] < 900 and 1450 < counts["reminder"] < 1750 and 1450 < counts["discount"] < 1750


def test_uneven_weights_and_a_new_salt_draws_new_groups():
    e1 = config_from(rules({**EXP, "variants": [{"name": "a", "weight": 3}, {"name": "b", "weight": 1}]})) \
        .experiments["cart_abandoned"]
    e2 = config_from(rules({**EXP, "salt": "2027-01", "variants": [{"name": "a", "weight": 3},
                                                                    {"name": "b", "weight": 1}]})) \
        .experiments["cart_abandoned"]
    ids = [f"c{i}" for i in range(3000)]
    arms1 = ["holdout" if e1.assign(c) is None else e1.assign(c).name for c in ids]
    arms2 = ["holdout" if e2.assign(c) is None else e2.assign(c).name for c in ids]
    assert 1500 < arms1.count("a") < 2100 and 450 < arms1.count("b") < 750
    assert sum(x != y for x, y in zip(arms1, arms2)) > 800  # new groups


def _arm_of(cid, exp=EXP):
    return config_from(rules(exp)).experiments["cart_abandoned"].assign(cid)


def _ids_by_arm(n=400, exp=EXP):
    out = {}
    for i in range(n):
        a = _arm_of(f"c{i}", exp)
        out.setdefault("holdout" if a is None else a.name, []).append(f"c{i}")
    return out


def test_a_held_out_customer_gets_no_trigger_and_no_contact(run):
    held = _ids_by_arm()["holdout"][0]
    # a cart at 10:00 (held out at 10:30), then another cart the next day: with max 1 per
    # window, a contact would cap the second; the held-out one is no contact
    evs = [cart(held, "2026-03-01T10:00:00Z", "k1"), cart(held, "2026-03-02T10:00:00Z", "k2")]
    r = run(evs, rules(policy={"max_per_window": 1}), until="2026-03-10T00:00:00Z")
    assert r.of("cart_abandoned") == []
    hold = r.audit_of("cart_abandoned", "holdout")
    assert len(hold) == 2 and [a["occasion"] for a in hold] == ["k1", "k2"]
    assert r.audit_of(reason="frequency_cap") == []
    assert hold[0]["experiment"] == {"name": "cart_abandoned", "variant": "holdout", "salt": "2026-12"}
    # the would-be trigger id: the same as a sent trigger's for that occasion
    free = run(evs, {"policy": QUIET_OFF}, until="2026-03-10T00:00:00Z")
    assert [t["id"] for t in free.of("cart_abandoned")][0] == hold[0]["trigger_id"]
    assert {o["variant"] for o in r.outcomes} == {"holdout"} and len(r.outcomes) == 2


def test_a_sent_trigger_carries_its_variant_and_the_variants_overrides(run):
    arms = _ids_by_arm()
    d, m = arms["discount"][0], arms["reminder"][0]
    r = run([cart(d, "2026-03-01T10:00:00Z"), cart(m, "2026-03-01T10:00:00Z")], rules(),
            until="2026-03-10T00:00:00Z")
    by = {t["subject"]: t["data"] for t in r.of("cart_abandoned")}
    assert by[d]["experiment"] == {"name": "cart_abandoned", "variant": "discount", "salt": "2026-12"}
    assert by[d]["offer"] == {"type": "discount", "pct": 10}
    assert by[d]["channel"] == "sms" and by[d]["priority"] == "urgent"
    assert by[m]["experiment"]["variant"] == "reminder"
    assert by[m]["offer"] == {"type": "cart_reminder"} and by[m]["channel"] == "email"


def test_the_holdout_is_decided_after_the_policy(run):
    """A customer the policy suppresses is neither sent nor held out: no exposure."""
    held = _ids_by_arm()["holdout"][0]
    evs = [ev("ticket.opened", held, "2026-03-01T09:00:00Z", ticket_id="t1"), cart(held, "2026-03-01T10:00:00Z")]
    r = run(evs, rules(), until="2026-03-10T00:00:00Z")
    assert [a["reason"] for a in r.audit_of("cart_abandoned")] == ["open_complaint"]
    assert r.outcomes == []


def test_a_deferred_trigger_is_held_out_at_its_delivery(run):
    held = _ids_by_arm()["holdout"][0]
    cfg = rules(policy={"quiet_start": "21:00", "quiet_end": "08:00"})
    r = run([cart(held, "2026-03-01T22:00:00Z")], cfg, until="2026-03-10T00:00:00Z")
    reasons = [(a["reason"], a["time"]) for a in r.audit_of("cart_abandoned")]
    assert reasons == [("quiet_hours", "2026-03-01T22:30:00Z"), ("holdout", "2026-03-02T08:00:00Z")]
    assert r.outcomes[0]["exposed_at"] == "2026-03-02T08:00:00Z"


@pytest.mark.parametrize("at,converted", [("2026-03-01T10:30:00Z", False),        # at the exposure: not after it
                                          ("2026-03-01T10:30:00.001Z", True),
                                          ("2026-03-04T10:30:00Z", True),         # the window's last instant
                                          ("2026-03-04T10:30:00.001Z", False)])
def test_conversion_window_edges(run, at, converted):
    cid = _ids_by_arm()["reminder"][0]
    r = run([cart(cid, "2026-03-01T10:00:00Z"), ev("page.viewed", cid, at)], rules({**EXP, "goal": "page.viewed"}),
            until="2026-03-10T00:00:00Z")
    (o,) = r.outcomes
    assert o["exposed_at"] == "2026-03-01T10:30:00Z" and o["time"] == "2026-03-04T10:30:00Z"
    assert o["converted"] is converted
    assert o["converted_at"] == (at if converted else None)
    assert o["value"] == 0
    assert o["variant"] == "reminder" and o["rule"] == "cart_abandoned"
    assert o["trigger_id"] == r.of("cart_abandoned")[0]["id"] and o["customer_id"] == cid
    assert o["stage"] == "prospect" and isinstance(o["health"], (int, float))


def test_an_order_converts_with_its_revenue_and_a_repeated_order_id_does_not(run):
    cid = _ids_by_arm()["reminder"][0]
    r = run([order(cid, "2026-02-01T10:00:00Z", oid="o1"), cart(cid, "2026-03-01T10:00:00Z"),
             order(cid, "2026-03-02T10:00:00Z", revenue=42.5, oid="o1"),   # the same order again
             order(cid, "2026-03-03T10:00:00Z", revenue=42.5, oid="o2")], rules(), until="2026-03-10T00:00:00Z")
    (o,) = r.outcomes
    assert o["converted_at"] == "2026-03-03T10:00:00Z" and o["value"] == 42.5 and o["stage"] == "new"


def test_first_goal_event_counts_and_goal_if_filters(run):
    cid = _ids_by_arm()["reminder"][0]
    exp = {**EXP, "goal_if": "event.props.revenue > 50.0"}
    evs = [cart(cid, "2026-03-01T10:00:00Z"), order(cid, "2026-03-02T10:00:00Z", revenue=20.0),
           order(cid, "2026-03-02T12:00:00Z", revenue=60.0), order(cid, "2026-03-03T12:00:00Z", revenue=70.0)]
    r = run(evs, rules(exp), until="2026-03-10T00:00:00Z")
    (o,) = r.outcomes
    assert o["converted_at"] == "2026-03-02T12:00:00Z" and o["value"] == 60.0


def test_outcome_waits_for_the_window_on_event_time(run):
    cid = _ids_by_arm()["reminder"][0]
    r = run([cart(cid, "2026-03-01T10:00:00Z")], rules(), until="2026-03-04T10:29:59Z")
    assert r.outcomes == []  # the window is still open at the end of the log
    r = run([cart(cid, "2026-03-01T10:00:00Z")], rules(), until="2026-03-04T10:30:00Z")
    assert len(r.outcomes) == 1 and r.outcomes[0]["converted"] is False


def test_an_erased_customers_open_exposure_is_dropped(run):
    cid = _ids_by_arm()["reminder"][0]
    evs = [cart(cid, "2026-03-01T10:00:00Z"), ev("customer.erased", cid, "2026-03-02T00:00:00Z")]
    r = run(evs, rules(), until="2026-03-10T00:00:00Z")
    assert len(r.of("cart_abandoned")) == 1 and r.outcomes == []


def test_global_holdout_holds_marketing_only(run):
    cfg = {"policy": {**QUIET_OFF, "global_holdout": 0.5, "global_salt": "g1"}}
    ids = [f"c{i}" for i in range(40)]
    held = {c for c in ids if unit("g1", "*", c) < 0.5}
    assert 5 < len(held) < 35
    evs = [cart(c, "2026-03-01T10:00:00Z") for c in ids]
    evs += [ev("payment.failed", c, "2026-03-01T11:00:00Z", order_id="o1") for c in ids]
    r = run(evs, cfg, until="2026-03-10T00:00:00Z")
    assert {t["subject"] for t in r.of("cart_abandoned")} == set(ids) - held
    assert {a["customer_id"] for a in r.audit_of("cart_abandoned", "global_holdout")} == held
    assert {t["subject"] for t in r.of("payment_failed")} == set(ids)  # transactional: never


def test_experiment_on_a_journey(run):
    j = {"kind": "recovery", "entry": "app.error", "experiment": {**EXP, "variants": [], "holdout": 0.5}}
    ids = [f"c{i}" for i in range(30)]
    r = run([ev("app.error", c, "2026-03-01T10:00:00Z", code="E1") for c in ids],
            {"policy": QUIET_OFF, "journeys": {"oops": j}}, until="2026-03-10T00:00:00Z")
    sent = {t["subject"] for t in r.of("oops")}
    held = {a["customer_id"] for a in r.audit_of("oops", "holdout")}
    assert sent | held == set(ids) and not sent & held and sent and held
    assert {t["data"]["experiment"]["variant"] for t in r.of("oops")} == {"treated"}
    assert all(reference_arm("2026-12", "oops", c, 0.5, [("treated", 1)]) == "holdout" for c in held)
    assert len(r.outcomes) == 30


def test_replay_twice_writes_identical_outcomes(run):
    rnd = random.Random(5)
    evs = []
    for i in range(200):
        c = f"c{i}"
        t0 = T("2026-03-01T00:00:00Z") + rnd.randrange(86400_000)
        evs.append(cart(c, t0))
        if rnd.random() < 0.5:
            evs.append(order(c, t0 + 3600_000 + rnd.randrange(5 * 86400_000)))  # after the cart fired
    a = run(evs, rules(), until="2026-03-20T00:00:00Z")
    b = run(evs, rules(), until="2026-03-20T00:00:00Z")
    assert a.outcomes == b.outcomes and len(a.outcomes) == 200


@pytest.mark.parametrize("exp,problem", [
    ({**EXP, "holdout": 1.0}, "holdout: a share in [0, 1)"),
    ({**EXP, "holdout": -0.1}, "holdout: must be at least 0"),
    ({**EXP, "variants": [{"name": "a", "weight": 0}]}, "weight: must be a positive number"),
    ({**EXP, "variants": [{"name": "a"}, {"name": "a"}]}, "'a' is used twice"),
    ({**EXP, "variants": [{"name": "a", "colour": "red"}]}, "variants[0].colour: unknown setting"),
    ({k: v for k, v in EXP.items() if k != "goal"}, "goal: missing"),
    ({k: v for k, v in EXP.items() if k != "window"}, "window: missing"),
    ({**EXP, "goal_if": "event.props.revenue >"}, "goal_if: CEL does not parse"),
    ({**EXP, "hodlout": 0.1}, "hodlout: unknown setting (did you mean 'holdout'?)"),
])
def test_rules_check_reports_experiment_problems(exp, problem):
    with pytest.raises(ConfigError) as e:
        config_from(rules(exp))
    assert any(problem in p for p in e.value.problems), e.value.problems


def test_a_holdout_on_a_transactional_rule_needs_an_explicit_yes():
    exp = {**EXP, "variants": [], "goal": "order.completed"}
    with pytest.raises(ConfigError) as e:
        config_from({"rules": {"payment_failed": {"experiment": exp}}})
    assert "allow_transactional_holdout" in str(e.value)
    for spec in ({"experiment": {**exp, "allow_transactional_holdout": True}},
                 {"allow_transactional_holdout": True, "experiment": exp}):
        e = config_from({"rules": {"payment_failed": spec}}).experiments["payment_failed"]
        assert (e.rule, e.holdout) == ("payment_failed", exp["holdout"]) and exp["holdout"] > 0
    e = config_from({"rules": {"payment_failed": {"experiment": {**exp, "holdout": 0}}}}).experiments["payment_failed"]
    assert e.holdout == 0  # no holdout: fine without the yes


def test_rules_check_and_show_on_the_command_line(tmp_path):
    f = tmp_path / "r.toml"
    f.write_text('[rules.cart_abandoned.experiment]\nsalt = "s"\nholdout = 0.2\ngoal = "order.completed"\n'
                 'window = "3d"\nvariants = [{ name = "a", weight = 1 }, { name = "a", weight = 2 }]\n')
    p = subprocess.run([sys.executable, "-m", "journey", "rules", "check", str(f)], capture_output=True, text=True)
    assert p.returncode != 0 and "used twice" in p.stderr + p.stdout
    f.write_text('[rules.cart_abandoned.experiment]\nsalt = "s"\nholdout = 0.2\ngoal = "order.completed"\n'
                 'window = "3d"\n')
    p = subprocess.run([sys.executable, "-m", "journey", "rules", "show", str(f)], capture_output=True, text=True)
    assert p.returncode == 0 and "rules.cart_abandoned.experiment.holdout = 0.2" in p.stdout
