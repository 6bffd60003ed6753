"""Journeys written in the rule file (domain.md section 6): each shape fires and does
not fire, both window edges, keyed exits, reenter, ``when`` at fire time, templates,
the instance limit, run-time condition errors, and ``journey rules check``."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ev

from journey.core.config import ConfigError
from journey.io.rulefile import config_from

QUIET_OFF = {"quiet_start": "00:00", "quiet_end": "00:00", "max_per_window": 1000, "min_gap": "0s"}  # caps off too


def rules(**journeys):
    return {"policy": QUIET_OFF, "journeys": journeys}


BROWSE = {"kind": "recovery", "entry": "product.viewed", "if": "event.props.price >= 50.0", "key": "product_id",
          "wait": "2h", "exit": ["cart.product_added", "order.completed"], "reenter": "7d",
          "offer": {"type": "browse_reminder", "product": "{entry.props.product_id}"},
          "reason": "viewed {entry.props.product_id}, nothing added within {wait}"}


def view(cid, ts, pid, price=60, **kw):
    return ev("product.viewed", cid, ts, product_id=pid, price=price, **kw)


def test_absence_fires_after_wait_with_templates_and_its_own_type(run):
    r = run([view("c1", "2026-03-01T10:00:00Z", "p1", id="v1")], rules=rules(browse=BROWSE),
            until="2026-03-02T00:00:00Z")
    (t,) = r.of("browse")
    assert t["type"] == "journey.recovery.browse" and t["time"] == "2026-03-01T12:00:00Z"
    assert t["data"]["reason"] == "viewed p1, nothing added within 2h"
    assert t["data"]["offer"] == {"type": "browse_reminder", "product": "p1"}
    assert t["data"]["occasion"] == "p1:v1" and t["data"]["evidence"] == ["v1"]


def test_absence_if_false_starts_nothing(run):
    r = run([view("c1", "2026-03-01T10:00:00Z", "p1", price=10)], rules=rules(browse=BROWSE),
            until="2026-03-02T00:00:00Z")
    assert r.of("browse") == []


@pytest.mark.parametrize("exit_at,fires", [("2026-03-01T12:00:00Z", False),       # at the deadline: cancels
                                           ("2026-03-01T12:00:00.001Z", True),    # just after: too late
                                           ("2026-03-01T10:00:00Z", False)])     # at entry time: cancels
def test_absence_window_edges(run, exit_at, fires):
    evs = [view("c1", "2026-03-01T10:00:00Z", "p1", id="v1"),
           ev("cart.product_added", "c1", exit_at, id="x1", product_id="p1", price=60)]
    r = run(evs, rules=rules(browse=BROWSE), until="2026-03-02T00:00:00Z")
    assert bool(r.of("browse")) is fires


def test_keyed_exit_counts_for_its_own_instance_and_an_unkeyed_one_for_all(run):
    evs = [view("c1", "2026-03-01T10:00:00Z", "p1"), view("c1", "2026-03-01T10:01:00Z", "p2"),
           ev("cart.product_added", "c1", "2026-03-01T10:30:00Z", product_id="p2", price=60)]
    r = run(evs, rules=rules(browse=BROWSE), until="2026-03-02T00:00:00Z")
    assert [t["data"]["offer"]["product"] for t in r.of("browse")] == ["p1"]
    evs2 = evs[:2] + [ev("order.completed", "c1", "2026-03-01T10:30:00Z", order_id="o1")]  # no product_id
    r2 = run(evs2, rules=rules(browse=BROWSE), until="2026-03-02T00:00:00Z")
    assert r2.of("browse") == []


def test_reenter_and_enter_once(run):
    evs = [view("c1", "2026-03-01T10:00:00Z", "p1", id="a"), view("c1", "2026-03-03T10:00:00Z", "p1", id="b"),
           view("c1", "2026-03-09T10:00:00Z", "p1", id="c")]
    r = run(evs, rules=rules(browse=BROWSE), until="2026-03-20T00:00:00Z")
    # b starts within 7 days of a: no new instance; c is 8 days after a: one
    assert [t["data"]["occasion"] for t in r.of("browse")] == ["p1:a", "p1:c"]
    once = {k: v for k, v in BROWSE.items() if k != "reenter"}
    r2 = run(evs, rules=rules(browse=once), until="2026-03-20T00:00:00Z")
    assert [t["data"]["occasion"] for t in r2.of("browse")] == ["p1:a"]


def test_reenter_0s_written_out_lets_a_new_instance_start_once_the_previous_ended(run):
    # section 6: a new instance may start once reenter has passed since the previous start; 0s
    # written out is not "enter once". While an instance is open, entries start no other.
    evs = [view("c1", "2026-03-01T10:00:00Z", "p1", id="a"), view("c1", "2026-03-01T11:00:00Z", "p1", id="b"),
           view("c1", "2026-03-01T12:00:00Z", "p1", id="c"), view("c1", "2026-03-01T12:00:00.001Z", "p1", id="d")]
    r = run(evs, rules=rules(browse={**BROWSE, "reenter": "0s"}), until="2026-03-02T00:00:00Z")
    # a's instance is open until 12:00 (b starts nothing); at 12:00 c comes first and a is still open
    # (events before timers); d, 1 ms later, starts a new one
    assert [t["data"]["occasion"] for t in r.of("browse")] == ["p1:a", "p1:d"]
    count = {"kind": "recovery", "entry": "app.error", "count": 2, "within": "1h", "reenter": "0s"}
    errs = [ev("app.error", "c1", f"2026-03-01T10:0{i}:00Z", id=f"e{i}", code="x") for i in range(4)]
    r2 = run(errs, rules=rules(errors=count), until="2026-03-02T00:00:00Z")
    assert [t["data"]["occasion"] for t in r2.of("errors")] == ["e1", "e3"]


REOPENED = {"kind": "recovery", "transactional": True, "entry": "ticket.resolved", "key": "ticket_id",
            "then": "ticket.reopened", "within": "7d", "reason": "ticket {entry.props.ticket_id} reopened"}


@pytest.mark.parametrize("then_at,fires", [("2026-03-08T10:00:00Z", True),        # exactly at entry + within
                                           ("2026-03-08T10:00:00.001Z", False),
                                           ("2026-03-01T10:00:00Z", False)])     # at entry time: not after it
def test_sequence_fires_at_the_then_event_within_the_window(run, then_at, fires):
    evs = [ev("ticket.resolved", "c1", "2026-03-01T10:00:00Z", id="r1", ticket_id="t1"),
           ev("ticket.reopened", "c1", then_at, id="o1", ticket_id="t1")]
    r = run(evs, rules=rules(reopened=REOPENED), until="2026-03-20T00:00:00Z")
    got = r.of("reopened")
    assert bool(got) is fires
    if fires:
        assert got[0]["time"] == then_at.replace(".000", "") and got[0]["data"]["evidence"] == ["r1", "o1"]
        assert got[0]["data"]["reason"] == "ticket t1 reopened"


def test_sequence_then_of_another_key_does_not_count(run):
    evs = [ev("ticket.resolved", "c1", "2026-03-01T10:00:00Z", ticket_id="t1"),
           ev("ticket.reopened", "c1", "2026-03-02T10:00:00Z", ticket_id="t2")]
    r = run(evs, rules=rules(reopened=REOPENED), until="2026-03-20T00:00:00Z")
    assert r.of("reopened") == []


STORM = {"kind": "recovery", "transactional": True, "entry": "app.error", "count": 3, "within": "1h",
         "reenter": "1d", "reason": "three errors, the last {entry.props.code}"}


@pytest.mark.parametrize("third,fires", [("2026-03-01T11:00:00Z", True), ("2026-03-01T11:00:00.001Z", False)])
def test_count_fires_at_the_entry_that_completes_it(run, third, fires):
    evs = [ev("app.error", "c1", "2026-03-01T10:00:00Z", id="e1", code="A"),
           ev("app.error", "c1", "2026-03-01T10:30:00Z", id="e2", code="B"),
           ev("app.error", "c1", third, id="e3", code="C")]
    r = run(evs, rules=rules(storm=STORM))
    got = r.of("storm")
    assert bool(got) is fires
    if fires:
        assert got[0]["data"]["occasion"] == "e3" and got[0]["data"]["reason"] == "three errors, the last C"


def test_count_entries_are_used_up_and_reenter_counts_from_the_fire(run):
    evs = [ev("app.error", "c1", f"2026-03-01T10:0{i}:00Z", id=f"e{i}", code="X") for i in range(6)]
    r = run(evs, rules=rules(storm=STORM))
    assert [t["data"]["occasion"] for t in r.of("storm")] == ["e2"]   # e3-e5 are within a day of e2
    later = evs + [ev("app.error", "c1", f"2026-03-02T11:0{i}:00Z", id=f"f{i}", code="X") for i in range(3)]
    r2 = run(later, rules=rules(storm=STORM))
    assert [t["data"]["occasion"] for t in r2.of("storm")] == ["e2", "f2"]


def test_immediate_journey_and_when_checked_at_fire_time(run):
    thanks = {"kind": "recognition", "entry": "review.submitted", "if": "event.props.rating >= 4.0",
              "when": "customer.orders >= 2", "reason": "thanks for {entry.props.rating} stars"}
    one = [ev("order.completed", "c1", "2026-03-01T09:00:00Z", order_id="o1"),
           ev("review.submitted", "c1", "2026-03-01T10:00:00Z", id="rv", rating=5)]
    r = run(one, rules=rules(thanks=thanks))
    assert r.of("thanks") == []
    (a,) = r.audit_of("thanks", "condition_not_met")
    assert a["trigger_id"] and a["customer_id"] == "c1"
    two = [ev("order.completed", "c1", "2026-03-01T08:00:00Z", order_id="o0")] + one
    r2 = run(two, rules=rules(thanks=thanks))
    (t,) = r2.of("thanks")
    assert t["type"] == "journey.recognition.thanks" and t["data"]["reason"] == "thanks for 5 stars"
    assert t["time"] == "2026-03-01T10:00:00Z"


def test_the_oldest_of_more_than_20_open_instances_is_dropped_and_audited(run):
    evs = [view("c1", f"2026-03-01T10:{i:02d}:00Z", f"p{i}", id=f"v{i}") for i in range(21)]
    r = run(evs, rules=rules(browse=BROWSE), until="2026-03-02T00:00:00Z")
    assert len(r.of("browse")) == 20
    (a,) = r.audit_of("browse", "instance_limit")
    from journey.core.triggers import trigger_id

    assert a["trigger_id"] == trigger_id("c1", "browse", "p0:v0")
    assert "p0" not in {t["data"]["offer"]["product"] for t in r.of("browse")}


def test_a_condition_that_fails_at_run_time_is_false_and_counted(run):
    j = {**BROWSE, "if": "event.props.colour == 'red'"}   # no such prop: a run-time error
    r = run([view("c1", "2026-03-01T10:00:00Z", "p1"), view("c1", "2026-03-01T10:05:00Z", "p2")],
            rules=rules(browse=j), until="2026-03-02T00:00:00Z")
    assert r.of("browse") == [] and r.deadletter == []
    assert r.summary["condition_errors"] == {"browse": 2}   # counted (the worker exports it as a metric)


def test_ids_are_a_pure_function_of_customer_journey_and_occasion(run):
    evs = [view("c1", "2026-03-01T10:00:00Z", "p1", id="v1")]
    a = run(evs, rules=rules(browse=BROWSE), until="2026-03-02T00:00:00Z").of("browse")
    b = run(evs + evs, rules=rules(browse=BROWSE), until="2026-03-03T00:00:00Z").of("browse")
    assert [t["id"] for t in a] == [t["id"] for t in b]


@pytest.mark.parametrize("spec,needle", [
    ({"kind": "recovery", "entry": "product.viewed", "wiat": "2h"}, "wiat: unknown setting (did you mean 'wait'?)"),
    ({"entry": "product.viewed"}, "kind: missing"),
    ({"kind": "recovery"}, "entry: missing"),
    ({"kind": "recovery", "entry": "app.error", "wait": "1h", "exit": ["x"], "count": 3, "within": "1h"},
     "more than one shape"),
    ({"kind": "recovery", "entry": "app.error", "count": 1, "within": "1h"}, "count: must be at least 2"),
    ({"kind": "recovery", "entry": "app.error", "wait": "2 hours", "exit": ["order.completed"]}, "not a duration"),
    ({"kind": "recovery", "entry": "app.error", "if": "event.props.code =="}, "CEL does not parse"),
    ({"kind": "recovery", "entry": "app.error", "reason": "code {event.props.code"}, "does not close"),
    ({"kind": "recovery", "entry": "app.error", "reason": "code {event.props.}"}, "CEL does not parse"),
    ({"kind": "nope", "entry": "app.error"}, "expected one of recovery, recognition"),
    ({"kind": "recovery", "entry": "app.error", "within": "1h"}, "within: a window needs then"),
])
def test_rules_check_reports_every_problem(spec, needle):
    with pytest.raises(ConfigError) as e:
        config_from({"journeys": {"j": spec}})
    assert any(needle in p and p.startswith("journeys.j") for p in e.value.problems), e.value.problems


def test_a_journey_may_not_take_a_built_in_rules_name():
    with pytest.raises(ConfigError) as e:
        config_from({"journeys": {"cart_abandoned": {"kind": "recovery", "entry": "app.error"}}})
    assert "built-in rule" in str(e.value)


def test_rules_check_lists_every_problem_of_every_journey(tmp_path):
    f = tmp_path / "j.toml"
    f.write_text('[journeys.a]\nentry = "app.error"\n[journeys.b]\nkind = "recovery"\nentry = "app.error"\n'
                 'if = "event.props.x >"\n')
    p = subprocess.run([sys.executable, "-m", "journey", "rules", "check", str(f)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1
    assert "journeys.a.kind: missing" in p.stderr and "journeys.b.if: CEL does not parse" in p.stderr
    assert "1:" in p.stderr  # the position


def test_rules_show_prints_journeys():
    cfg = config_from(rules(browse=BROWSE))
    lines = cfg.describe()
    assert "journeys.browse  (absence)" in lines and "journeys.browse.wait = 2h" in lines


# -- the example journeys of deploy/journeys.example.toml: each fires, and does not -------

EXAMPLE = __import__("pathlib").Path(__file__).resolve().parents[1] / "deploy" / "journeys.example.toml"


@pytest.fixture
def example(tmp_path):
    """The example file with the contact policy's caps and quiet hours off (so each journey's
    own logic is what is tested)."""
    f = tmp_path / "rules.toml"
    f.write_text('[policy]\nquiet_start = "00:00"\nquiet_end = "00:00"\nmax_per_window = 1000\nmin_gap = "0s"\n\n'
                 + EXAMPLE.read_text())
    from journey.io.rulefile import read_table

    return read_table(f)


def test_the_example_file_passes_rules_check():
    p = subprocess.run([sys.executable, "-m", "journey", "rules", "check", str(EXAMPLE)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "7 journey(s)" in p.stdout and "warning" not in p.stderr, p.stderr


def test_example_browse_abandoned(run, example):
    base = [ev("order.completed", "c1", "2026-03-01T08:00:00Z", order_id="o1")]
    fires = base + [view("c1", "2026-03-01T10:00:00Z", "p7", price=80)]
    r = run(fires, rules=example, until="2026-03-02T00:00:00Z")
    (t,) = r.of("browse_abandoned")
    assert t["data"]["offer"] == {"type": "browse_reminder", "product": "p7"}
    added = fires + [ev("cart.product_added", "c1", "2026-03-01T11:00:00Z", product_id="p7", price=80)]
    assert run(added, rules=example, until="2026-03-02T00:00:00Z").of("browse_abandoned") == []
    cheap = base + [view("c1", "2026-03-01T10:00:00Z", "p7", price=20)]
    assert run(cheap, rules=example, until="2026-03-02T00:00:00Z").of("browse_abandoned") == []


def test_example_ticket_reopened(run, example):
    evs = [ev("ticket.opened", "c1", "2026-03-01T09:00:00Z", ticket_id="t1", priority="normal"),
           ev("ticket.resolved", "c1", "2026-03-01T10:00:00Z", ticket_id="t1")]
    (t,) = run(evs + [ev("ticket.reopened", "c1", "2026-03-04T10:00:00Z", ticket_id="t1")],
               rules=example).of("ticket_reopened")
    assert t["data"]["priority"] == "high" and t["data"]["offer"]["ticket"] == "t1"
    assert run(evs + [ev("ticket.reopened", "c1", "2026-03-09T10:00:00Z", ticket_id="t1")],
               rules=example).of("ticket_reopened") == []


def test_example_error_storm(run, example):
    errs = [ev("app.error", "c1", f"2026-03-01T10:{m:02d}:00Z", code=f"E{m}") for m in (0, 20, 40)]
    (t,) = run(errs, rules=example).of("error_storm")
    assert t["data"]["reason"] == "three app errors within 1h, the last E40"
    spread = [ev("app.error", "c1", f"2026-03-01T{h:02d}:00:00Z", code="E") for h in (10, 11, 12)]
    assert run(spread, rules=example).of("error_storm") == []


def test_example_review_thanks(run, example):
    orders = [ev("order.completed", "c1", f"2026-03-0{d}T10:00:00Z", order_id=f"o{d}") for d in (1, 2)]
    review = [ev("review.submitted", "c1", "2026-03-05T10:00:00Z", rating=5)]
    (t,) = run(orders + review, rules=example).of("review_thanks")
    assert t["data"]["reason"] == "a 5-star review from a customer with 2 orders"
    assert run(orders[:1] + review, rules=example).of("review_thanks") == []


def test_explain_tells_why_a_customer_did_or_did_not_get_a_message(tmp_path):
    import orjson
    from conftest import identify

    log = tmp_path / "e.jsonl"
    log.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in [
        ev("checkout.started", "c1", "2026-03-01T10:00:00Z", id="k1", checkout_id="chk-1"),
        identify("c2", ts="2026-03-01T09:00:00Z", consent={"marketing": False}),
        ev("checkout.started", "c2", "2026-03-01T10:00:00Z", id="k2", checkout_id="chk-2"),
        ev("page.viewed", "c3", "2026-03-01T10:00:00Z")]))

    def explain(*args):
        return subprocess.run([sys.executable, "-m", "journey", "explain", *args, str(log), "--until",
                               "2026-03-02T00:00:00Z"], capture_output=True, text=True, timeout=60)
    p = explain("c1")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "event      checkout.started" in lines[0]
    assert any("cart_abandoned set: due 2026-03-01T10:30:00Z" in x for x in lines)
    assert any("trigger    cart_abandoned sent" in x for x in lines)
    p2 = explain("c2", "--json")
    rows = orjson.loads(p2.stdout)
    held = [r for r in rows if r["what"] == "held back"]
    assert held and held[0]["reason"] == "no_consent" and held[0]["rule"] == "cart_abandoned"
    assert "c1" not in p2.stdout and "c3" not in p2.stdout   # one customer only
    p3 = explain("nobody")
    assert p3.returncode == 1 and "no events of customer 'nobody'" in p3.stderr
