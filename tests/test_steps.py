"""Multi-step journeys (domain.md section 8), through the real replay: the steps in order, wait,
wait_for at both ends of its window and its timeout, if/else, sends with their step, channel and
offer, next and end, the journey's exit at any step (at the exact deadline too), key routing, the
policy on every send (deferred sends hold the instance), experiments decided at the first send,
loops and the step limit, ids stable across replays, and what ``rules check`` refuses."""

from __future__ import annotations

import pytest
from conftest import T, ev

from journey.core.config import ConfigError
from journey.io.rulefile import config_from

QUIET_OFF = {"quiet_start": "00:00", "quiet_end": "00:00", "max_per_window": 1000, "min_gap": "0s"}


def rules(policy=None, **journeys):
    return {"policy": policy or QUIET_OFF, "journeys": journeys}


RESCUE = {
    "kind": "recovery", "entry": "checkout.started", "key": "checkout_id", "exit": "order.completed",
    "reenter": "7d",
    "steps": [
        {"name": "reminder", "wait": "1h", "send": {"offer": {"type": "reminder", "cart": "{entry.props.checkout_id}"}}},
        {"name": "opened", "wait_for": "message.opened", "within": "1d", "timeout": "discount"},
        {"name": "tips", "send": {"offer": {"type": "tips"}}, "next": "end"},
        {"name": "discount", "if": "customer.orders >= 1", "else": "end",
         "send": {"offer": {"type": "discount", "pct": 10}, "priority": "high", "channel": "sms"}},
    ],
}


def checkout(cid="c1", ts="2026-03-01T10:00:00Z", chk="k1", id="s1", value=80):
    return ev("checkout.started", cid, ts, id=id, checkout_id=chk, value=value)


def order(cid="c1", ts="2026-02-01T10:00:00Z", oid="o0", id=None, **kw):
    return ev("order.completed", cid, ts, id=id or f"ord-{oid}", order_id=oid, revenue=30, **kw)


def opened(cid="c1", ts="2026-03-01T12:00:00Z", id="op1", **kw):
    return ev("message.opened", cid, ts, id=id, **kw)


def steps_of(r, name="rescue"):
    return [(t["data"]["step"], t["time"]) for t in r.of(name)]


def test_reminder_then_an_open_leads_to_tips(run):
    r = run([checkout(), opened(ts="2026-03-01T12:00:00Z")], rules=rules(rescue=RESCUE), until="2026-03-05T00:00:00Z")
    assert steps_of(r) == [("reminder", "2026-03-01T11:00:00Z"), ("tips", "2026-03-01T12:00:00Z")]
    rem, tips = r.of("rescue")
    assert rem["type"] == "journey.recovery.rescue" and rem["data"]["offer"] == {"type": "reminder", "cart": "k1"}
    assert rem["data"]["occasion"] == "k1:s1:reminder" and tips["data"]["occasion"] == "k1:s1:tips"
    assert rem["data"]["channel"] == "email" and rem["data"]["evidence"] == ["s1"]


def test_no_open_within_the_window_goes_to_the_discount_only_for_a_customer_who_ordered(run):
    # a past order: customer.orders >= 1, the discount goes out at the end of the window, by sms, high
    r = run([order(), checkout()], rules=rules(rescue=RESCUE), until="2026-03-05T00:00:00Z")
    assert steps_of(r) == [("reminder", "2026-03-01T11:00:00Z"), ("discount", "2026-03-02T11:00:00Z")]
    d = r.of("rescue")[1]
    assert (d["data"]["channel"], d["data"]["priority"], d["data"]["offer"]) == ("sms", "high",
                                                                                 {"type": "discount", "pct": 10})
    # no order before: the if is false, else = end
    r2 = run([checkout()], rules=rules(rescue=RESCUE), until="2026-03-05T00:00:00Z")
    assert steps_of(r2) == [("reminder", "2026-03-01T11:00:00Z")]
    assert r2.summary["steps"]["rescue"]["discount"]["reached"] == 1


@pytest.mark.parametrize("at,path", [
    ("2026-03-02T11:00:00Z", ["reminder", "tips"]),              # at the end of within: it counts
    ("2026-03-02T11:00:00.001Z", ["reminder", "discount"]),      # just after: the timeout went first
    ("2026-03-01T11:00:00Z", ["reminder", "discount"]),          # at the moment the step was reached: not in (r, r+within]
])
def test_wait_for_window_edges(run, at, path):
    r = run([order(), checkout(), opened(ts=at)], rules=rules(rescue=RESCUE), until="2026-03-05T00:00:00Z")
    assert [s for s, _t in steps_of(r)] == path


@pytest.mark.parametrize("at,sent", [
    ("2026-03-01T11:00:00Z", []),                  # an exit at the exact deadline of the wait cancels (events first)
    ("2026-03-01T11:00:00.001Z", ["reminder"]),    # just after: the reminder went, the instance ends waiting
    ("2026-03-01T10:00:00Z", []),                  # at the entry's time
])
def test_exit_at_any_step_and_at_the_exact_deadline(run, at, sent):
    # (id x1: at the entry's time, after the entry in replay's tie order, event id)
    r = run([order(), checkout(), order(ts=at, oid="o1", id="x1")], rules=rules(rescue=RESCUE),
            until="2026-03-05T00:00:00Z")
    assert [s for s, _t in steps_of(r)] == sent
    exited = [a for a in r.audit if a["rule"] == "rescue" and a["reason"] == "exited"]
    assert len(exited) == 1 and exited[0]["step"] == ("reminder" if not sent else "opened")
    assert exited[0]["time"] == at


def test_key_routing_of_exit_and_awaited_events(run):
    evs = [order(), checkout(chk="k1", id="s1"), checkout(ts="2026-03-01T10:05:00Z", chk="k2", id="s2"),
           # the open names no checkout: it counts for every open instance
           opened(ts="2026-03-01T12:00:00Z"),
           # an order of k2 only ends k2's instance ... before its reminder
           ev("order.completed", "c1", "2026-03-01T10:30:00Z", id="o-k2", order_id="x", checkout_id="k2")]
    r = run(sorted(evs, key=lambda e: e["ts"]), rules=rules(rescue=RESCUE), until="2026-03-05T00:00:00Z")
    got = sorted((t["data"]["occasion"]) for t in r.of("rescue"))
    assert got == ["k1:s1:reminder", "k1:s1:tips"]


def test_the_policy_on_every_send_and_a_deferred_send_holds_the_instance(run):
    # quiet hours 22:00-08:00 UTC: the reminder due at 23:00 goes at 08:00; the next step waits from then
    j = {"kind": "recovery", "entry": "checkout.started", "key": "checkout_id",
         "steps": [{"name": "first", "wait": "1h", "send": {}}, {"name": "second", "wait": "2h", "send": {}}]}
    pol = {"quiet_start": "22:00", "quiet_end": "08:00", "max_per_window": 1000, "min_gap": "0s",
           "default_timezone": "UTC"}
    r = run([checkout(ts="2026-03-01T22:00:00Z")], rules=rules(policy=pol, j=j), until="2026-03-05T00:00:00Z")
    assert steps_of(r, "j") == [("first", "2026-03-02T08:00:00Z"), ("second", "2026-03-02T10:00:00Z")]
    assert any(a["reason"] == "quiet_hours" and a.get("step") == "first" for a in r.audit_of("j"))
    # a send held back for good (no consent) is audited and the instance goes on
    r2 = run([ev("profile.updated", "c1", "2026-02-01T00:00:00Z", traits={"consent": {"email": False}}),
              checkout(ts="2026-03-01T10:00:00Z")], rules=rules(j=j), until="2026-03-05T00:00:00Z")
    held = [a for a in r2.audit if a["rule"] == "j"]
    assert [(a["step"], a["reason"]) for a in held] == [("first", "no_consent"), ("second", "no_consent")]


def test_an_exit_while_a_send_is_deferred_cancels_it(run):
    j = {"kind": "recovery", "entry": "checkout.started", "key": "checkout_id", "exit": "order.completed",
         "steps": [{"name": "first", "wait": "1h", "send": {}}, {"name": "second", "wait": "2h", "send": {}}]}
    pol = {"quiet_start": "22:00", "quiet_end": "08:00", "max_per_window": 1000, "min_gap": "0s",
           "default_timezone": "UTC"}
    r = run([checkout(ts="2026-03-01T22:00:00Z"), order(ts="2026-03-02T03:00:00Z", oid="o9", checkout_id="k1")],
            rules=rules(policy=pol, j=j), until="2026-03-05T00:00:00Z")
    assert r.of("j") == []
    assert [(a["reason"], a["step"]) for a in r.audit if a["rule"] == "j"] == [("quiet_hours", "first"),
                                                                               ("exited", "first")]


def test_when_is_checked_at_every_send(run):
    j = {"kind": "recognition", "entry": "order.completed", "when": "customer.orders >= 2",
         "steps": [{"name": "a", "send": {}}, {"name": "b", "wait": "1d", "send": {}}]}
    r = run([order(ts="2026-03-01T10:00:00Z", oid="o1"), order(ts="2026-03-01T12:00:00Z", oid="o2")],
            rules=rules(j=j), until="2026-03-05T00:00:00Z")
    # one instance (no reenter): a at 10:00 with one order: condition_not_met; b a day later: sent
    assert steps_of(r, "j") == [("b", "2026-03-02T10:00:00Z")]
    assert [(a["step"], a["reason"]) for a in r.audit if a["rule"] == "j"] == [("a", "condition_not_met")]


def test_a_loop_takes_its_visit_number_and_ends_at_the_step_limit(run):
    j = {"kind": "recovery", "entry": "checkout.started",
         "steps": [{"name": "nudge", "wait": "1h", "send": {}, "next": "nudge"}]}
    r = run([checkout()], rules=rules(j=j), until="2026-03-10T00:00:00Z")
    occ = [t["data"]["occasion"] for t in r.of("j")]
    assert occ[:3] == ["s1:nudge", "s1:nudge#2", "s1:nudge#3"] and len(occ) == 50 and len(set(occ)) == 50
    assert [a["reason"] for a in r.audit if a["rule"] == "j"] == ["instance_limit"]
    assert r.summary["steps"]["j"]["nudge"]["reached"] == 50


def test_count_entry_then_steps_and_one_instance_at_a_time(run):
    j = {"kind": "recovery", "entry": "product.viewed", "count": 2, "within": "2d", "exit": "order.completed",
         "steps": [{"name": "wait", "wait": "1d", "send": {"reason": "viewed twice, no order within {wait}"}}]}
    evs = [ev("product.viewed", "c1", "2026-03-01T10:00:00Z", id="v1", product_id="p"),
           ev("product.viewed", "c1", "2026-03-02T09:00:00Z", id="v2", product_id="p"),
           ev("product.viewed", "c1", "2026-03-02T10:00:00Z", id="v3", product_id="p"),
           ev("product.viewed", "c1", "2026-03-02T11:00:00Z", id="v4", product_id="p")]
    r = run(evs, rules=rules(j=j), until="2026-03-06T00:00:00Z")
    (t,) = r.of("j")
    assert t["data"]["occasion"] == "v2:wait" and t["time"] == "2026-03-03T09:00:00Z"
    assert t["data"]["reason"] == "viewed twice, no order within 1d"


def test_experiment_decided_at_the_first_send_and_a_held_out_instance_goes_on_silently(run):
    j = dict(RESCUE, experiment={"salt": "s", "holdout": 0.5, "goal": "order.completed", "window": "7d"})
    evs = []
    for i in range(40):
        evs += [order(cid=f"c{i}", ts="2026-02-01T10:00:00Z", oid=f"p{i}"), checkout(cid=f"c{i}", id=f"s{i}")]
    r = run(evs, rules=rules(rescue=j), until="2026-03-20T00:00:00Z")
    held = {a["customer_id"] for a in r.audit if a["reason"] == "holdout"}
    sent = {t["data"]["customer_id"] for t in r.of("rescue")}
    assert held and sent and not held & sent
    # each held-out instance: both would-be sends audited holdout; each instance exposed once
    assert sum(1 for a in r.audit if a["reason"] == "holdout") == 2 * len(held)
    assert len(r.outcomes) == 40 and {o["variant"] for o in r.outcomes} == {"holdout", "treated"}


def test_ids_are_stable_across_replays(run):
    evs = [order(), checkout(), opened(ts="2026-03-01T13:00:00Z")]
    a = run(evs, rules=rules(rescue=RESCUE), until="2026-03-05T00:00:00Z")
    b = run(evs, rules=rules(rescue=RESCUE), until="2026-03-05T00:00:00Z")
    assert [t["id"] for t in a.triggers] == [t["id"] for t in b.triggers] and a.triggers


def _problems(spec) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config_from({"journeys": {"j": spec}})
    return e.value.problems


BASE = {"kind": "recovery", "entry": "checkout.started"}


@pytest.mark.parametrize("steps,needle", [
    ([{"name": "a", "send": {}, "next": "tipz"}, {"name": "tips", "send": {}}], "no step is named 'tipz' (did you mean 'tips'?)"),
    ([{"name": "a", "if": "true", "else": "nowhere"}], "no step is named 'nowhere'"),
    ([{"name": "a", "wait_for": "message.opened", "within": "1d", "timeout": "b"}], "no step is named 'b'"),
    ([{"name": "a", "send": {}}, {"name": "a", "send": {}}], "two steps are named 'a'"),
    ([{"name": "a"}], "a step needs wait, wait_for, if or send"),
    ([{"name": "a", "send": {}, "next": "b"}, {"name": "b", "if": "true", "next": "a"}],
     "a -> b -> a is a loop with no wait or wait_for"),
    ([{"name": "a", "wait_for": "message.opened", "within": "1d", "send": {}}], "wait_for: stands alone"),
    ([{"name": "a", "wait_for": "message.opened"}], "wait_for needs a window"),
    ([{"name": "a", "send": {}, "within": "1d"}], "within: only with wait_for"),
    ([{"name": "a", "send": {"chanel": "sms"}}], "unknown setting (did you mean 'channel'?)"),
    ([{"name": "a", "if": "event.props.x >"}], "CEL does not parse"),
    ([], "at least one step"),
])
def test_rules_check_refuses(steps, needle):
    probs = _problems({**BASE, "steps": steps})
    assert any(needle in p for p in probs), probs


@pytest.mark.parametrize("extra,needle", [({"wait": "1h", "exit": "order.completed"}, "a shape setting beside steps"),
                                          ({"then": "order.completed", "within": "1d"}, "a shape setting beside steps"),
                                          ({"within": "1d"}, "only with count")])
def test_a_shape_setting_beside_steps_is_refused(extra, needle):
    probs = _problems({**BASE, **extra, "steps": [{"name": "a", "send": {}}]})
    assert any(needle in p for p in probs), probs


def test_a_loop_broken_by_a_wait_is_accepted():
    config_from({"journeys": {"j": {**BASE, "steps": [{"name": "a", "wait": "1d", "send": {}, "next": "b"},
                                                      {"name": "b", "if": "true", "next": "a"}]}}})


# -- the example file's multi-step journeys: each path a marketer wrote, taken and not ------------

@pytest.fixture
def example():
    from test_journeys import EXAMPLE

    from journey.io.rulefile import read_table

    t = read_table(EXAMPLE)
    t["policy"] = QUIET_OFF
    return t


def test_example_cart_rescue(run, example):
    paths = {
        "opened": [checkout(), opened(ts="2026-03-01T15:00:00Z")],
        "returning": [order(), checkout()],
        "new": [checkout()],
        "ordered": [order(), checkout(), order(ts="2026-03-01T10:30:00Z", oid="o1", checkout_id="k1")],
        "small cart": [order(), checkout(value=40)],
    }
    got = {k: [s for s, _t in steps_of(run(v, rules=example, until="2026-03-05T00:00:00Z"), "cart_rescue")]
           for k, v in paths.items()}
    assert got == {"opened": ["reminder", "tips"], "returning": ["reminder", "discount"], "new": ["reminder"],
                   "ordered": [], "small cart": []}


def test_example_post_purchase(run, example):
    o = ev("order.completed", "c1", "2026-03-01T10:00:00Z", id="o1", order_id="A", revenue=40)
    delivered = ev("order.delivered", "c1", "2026-03-04T10:00:00Z", order_id="A")
    r = run([o, delivered], rules=example, until="2026-04-01T00:00:00Z")
    assert steps_of(r, "post_purchase") == [("thanks", "2026-03-01T10:00:00Z"), ("review", "2026-03-11T10:00:00Z")]
    ticket = ev("ticket.opened", "c1", "2026-03-06T10:00:00Z", ticket_id="t1", priority="normal")
    r2 = run([o, delivered, ticket], rules=example, until="2026-04-01T00:00:00Z")
    assert [s for s, _t in steps_of(r2, "post_purchase")] == ["thanks"]   # a ticket open: no review request
    refund = ev("order.refunded", "c1", "2026-03-05T10:00:00Z", order_id="A", revenue=40)
    r3 = run([o, delivered, refund], rules=example, until="2026-04-01T00:00:00Z")
    assert [s for s, _t in steps_of(r3, "post_purchase")] == ["thanks"]
    assert [a["step"] for a in r3.audit_of("post_purchase", "exited")] == ["settle"]


def test_example_winback_series(run, example):
    earlier = ev("order.completed", "c1", "2025-12-01T10:00:00Z", id="o0", order_id="Z", revenue=40)
    first = ev("order.completed", "c1", "2026-01-01T10:00:00Z", id="o1", order_id="A", revenue=40)
    # a first-time buyer is not in it (if: customer.orders >= 2)
    assert run([first], rules=example, until="2026-06-01T00:00:00Z").of("winback_series") == []
    r = run([earlier, first], rules=example, until="2026-06-01T00:00:00Z")
    assert steps_of(r, "winback_series") == [("miss_you", "2026-03-02T10:00:00Z"), ("offer", "2026-04-01T10:00:00Z")]
    first = [earlier, first]
    again = ev("order.completed", "c1", "2026-02-15T10:00:00Z", id="o2", order_id="B", revenue=40)
    r2 = run([*first, again], rules=example, until="2026-06-01T00:00:00Z")
    # the second order ended the first series and started another: 60 and 90 days after it
    assert [(t["data"]["occasion"], t["time"]) for t in r2.of("winback_series")] == [
        ("o2:miss_you", "2026-04-16T10:00:00Z"), ("o2:offer", "2026-05-16T10:00:00Z")]


def test_more_than_20_open_instances_drop_the_oldest_counted_and_audited(run):
    j = {"kind": "recovery", "entry": "checkout.started", "key": "checkout_id",
         "steps": [{"name": "later", "wait": "30d", "send": {}}]}
    evs = [checkout(ts=f"2026-03-01T10:{m:02d}:00Z", chk=f"k{m}", id=f"s{m}") for m in range(21)]
    r = run(evs, rules=rules(j=j), until="2026-03-05T00:00:00Z")
    assert [a["occasion"] for a in r.audit_of("j", "instance_limit")] == ["k0:s0"]
    assert r.summary["instances"]["j"] == {"entered": 21, "dropped": 1}


@pytest.mark.timeout(60)
def test_a_step_that_fails_ends_its_instance_and_processing_goes_on(run, monkeypatch):
    """A failure inside a step (a bug, a state no step expected) must not stop or spin the replay: the
    instance ends, the error is counted, every other customer goes on."""
    from journey.core.journeys.steps import StepJourney

    real = StepJourney._send

    def flaky(self, eng, st, data, step, now, sources):
        if data["k"] == "bad":
            raise RuntimeError("a step failed")
        return real(self, eng, st, data, step, now, sources)
    monkeypatch.setattr(StepJourney, "_send", flaky)
    r = run([checkout(chk="bad", id="s1"), checkout(chk="good", id="s2")], rules=rules(rescue=RESCUE),
            until="2026-03-05T00:00:00Z")
    assert r.summary["timer_errors"] == 1
    assert [t["data"]["occasion"] for t in r.of("rescue")] == ["good:s2:reminder"]


def test_instances_survive_a_rule_file_with_fewer_steps(tmp_path):
    """A worker restarted with a new rule file finds instances at steps the file no longer has: they end
    quietly; no event of that customer is dead-lettered for it."""
    import orjson

    from journey.core import intake
    from journey.core.engine import Engine

    def engine(steps):
        return Engine(config_from({"policy": QUIET_OFF, "journeys": {"j": {
            "kind": "recovery", "entry": "checkout.started", "exit": "order.completed",
            "steps": steps}}}))
    three = [{"name": "a", "wait": "1h", "send": {}}, {"name": "b", "wait_for": "message.opened", "within": "1d"},
             {"name": "c", "wait": "1h", "send": {}}]
    old = engine(three)
    old.apply(intake.parse(orjson.dumps(checkout(ts="2026-03-01T10:00:00Z"))))
    old.fire_due(T("2026-03-01T11:00:00Z"))          # a sent; waiting for the open at step b (index 1)
    state = old.states["c1"].to_bytes()
    new = engine([{"name": "a", "wait": "1h", "send": {}}])     # one step now
    from journey.core.state import CustomerState

    new.states["c1"] = CustomerState.from_bytes(state)
    new.rebuild_timers()
    new.apply(intake.parse(orjson.dumps(opened(ts="2026-03-01T12:00:00Z"))))   # awaited type: no longer awaited
    new.apply(intake.parse(orjson.dumps(order(ts="2026-03-01T12:30:00Z", oid="o5"))))   # the exit
    new.fire_due(T("2026-03-05T00:00:00Z"))
    assert new.stats.timer_errors == 0
    assert not any(k.startswith("j|") for k in new.states["c1"].timers)
