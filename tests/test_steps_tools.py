"""The tools on multi-step journeys (domain.md section 8), through the real command line: ``journey
explain`` with each instance's path, ``journey backtest`` per journey and step, ``journey rules show``
with the entry and the steps in order."""

from __future__ import annotations

import subprocess
import sys

import orjson
from conftest import ev

POLICY = '[policy]\nquiet_start = "00:00"\nquiet_end = "00:00"\nmax_per_window = 1000\nmin_gap = "0s"\n\n'

# domain.md section 8's example, the reminder's wait a template value
RESCUE = '''[journeys.cart_rescue]
kind = "recovery"
entry = "checkout.started"
key = "checkout_id"
exit = "order.completed"
reenter = "7d"

[[journeys.cart_rescue.steps]]
name = "reminder"
wait = "{wait}"
send = {{ offer = {{ type = "reminder" }} }}

[[journeys.cart_rescue.steps]]
name = "opened"
wait_for = "message.opened"
within = "1d"
timeout = "discount"

[[journeys.cart_rescue.steps]]
name = "tips"
send = {{ offer = {{ type = "tips" }} }}
next = "end"

[[journeys.cart_rescue.steps]]
name = "discount"
if = "customer.orders >= 1"
else = "end"
send = {{ offer = {{ type = "discount", pct = 10 }}, priority = "high" }}
'''


def rules_file(tmp_path, wait="1h", name="rules.toml"):
    f = tmp_path / name
    f.write_text(POLICY + RESCUE.format(wait=wait))
    return f


def log_file(tmp_path, events, name="log.jsonl"):
    f = tmp_path / name
    f.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return f


def cli(*args):
    return subprocess.run([sys.executable, "-m", "journey", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def checkout(cid, ts, chk, id):
    return ev("checkout.started", cid, ts, id=id, checkout_id=chk, value=40)


def order(cid, ts, id, **kw):
    return ev("order.completed", cid, ts, id=id, order_id=id, revenue=30, **kw)


# -- journey explain ----------------------------------------------------------------------------

def explain(tmp_path, events, customer="c1", *more):
    p = cli("explain", customer, log_file(tmp_path, events), "--rules", rules_file(tmp_path),
            "--until", "2026-03-05T00:00:00Z", *more)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_explain_keeps_the_events_that_start_a_multi_step_instance(tmp_path):
    out = explain(tmp_path, [checkout("c1", "2026-03-01T10:00:00Z", "k1", "s1")])
    lines = out.splitlines()
    assert any(x.startswith("2026-03-01T10:00:00Z") and "event      checkout.started" in x for x in lines), out
    assert any(x.startswith("2026-03-01T11:00:00Z") and "trigger    cart_rescue sent" in x for x in lines), out


def test_explain_orders_rows_by_event_time_to_the_millisecond(tmp_path):
    # the reminder at 11:00:00Z comes before an event a millisecond later (as text, "…00.001Z" < "…00Z")
    out = explain(tmp_path, [checkout("c1", "2026-03-01T10:00:00Z", "k1", "s1"),
                             ev("page.viewed", "c1", "2026-03-01T11:00:00.001Z", id="pv")])
    times = [x.split()[0] for x in out.split("\n\n")[0].splitlines()]  # the timeline (the paths follow)
    assert "2026-03-01T11:00:00.001Z" in times
    assert times.index("2026-03-01T11:00:00Z") < times.index("2026-03-01T11:00:00.001Z"), out


def path_block(out: str, instance: str) -> list[str]:
    """The lines of one instance's path (without the header), spaces collapsed."""
    lines = out.splitlines()
    at = lines.index(f"path of cart_rescue instance {instance}:")
    block = []
    for x in lines[at + 1:]:
        if not x.startswith("  "):
            break
        block.append(" ".join(x.split()))
    return block


def test_explain_shows_each_instance_path(tmp_path):
    from journey.core.triggers import trigger_id

    def tid(cid, occasion):
        return trigger_id(cid, "cart_rescue", occasion)

    evs = [
        # c1 ordered before and gave no email consent: both sends held back; no open, so the discount
        ev("profile.updated", "c1", "2026-02-01T00:00:00Z", id="p1", traits={"consent": {"email": False}}),
        order("c1", "2026-02-01T10:00:00Z", "o1"),
        checkout("c1", "2026-03-01T10:00:00Z", "k1", "s1"),
        # c2: the reminder goes out, then the order ends the instance while it waits for the open
        checkout("c2", "2026-03-01T10:00:00Z", "k2", "s2"),
        order("c2", "2026-03-01T15:00:00Z", "o2", checkout_id="k2"),
        # c3: opens the reminder: tips (next = end)
        checkout("c3", "2026-03-01T10:00:00Z", "k3", "s3"),
        ev("message.opened", "c3", "2026-03-01T12:00:00Z", id="m3"),
        # c4: no order before: no open, the discount's if is false, else = end
        checkout("c4", "2026-03-01T10:00:00Z", "k4", "s4"),
    ]
    c1 = explain(tmp_path, evs, "c1")
    assert path_block(c1, "k1:s1") == [
        "2026-03-01T10:00:00Z reminder reached: waits 1h, until 2026-03-01T11:00:00Z",
        f"2026-03-01T11:00:00Z reminder held back (no_consent): trigger {tid('c1', 'k1:s1:reminder')}",
        "2026-03-01T11:00:00Z opened reached: waits for message.opened within 1d, until 2026-03-02T11:00:00Z",
        "2026-03-02T11:00:00Z opened timed out: no message.opened within 1d -> discount",
        "2026-03-02T11:00:00Z discount reached",
        "2026-03-02T11:00:00Z discount if customer.orders >= 1: true",
        f"2026-03-02T11:00:00Z discount held back (no_consent): trigger {tid('c1', 'k1:s1:discount')}",
        "2026-03-02T11:00:00Z discount ended",
    ], c1
    # the same rows in the timeline, among the events
    assert ("2026-03-02T11:00:00Z step cart_rescue instance k1:s1 step opened: timed out: no message.opened "
            "within 1d -> discount") in [" ".join(x.split()) for x in c1.splitlines()]
    c2 = explain(tmp_path, evs, "c2")
    assert path_block(c2, "k2:s2") == [
        "2026-03-01T10:00:00Z reminder reached: waits 1h, until 2026-03-01T11:00:00Z",
        f"2026-03-01T11:00:00Z reminder sent (email): trigger {tid('c2', 'k2:s2:reminder')}",
        "2026-03-01T11:00:00Z opened reached: waits for message.opened within 1d, until 2026-03-02T11:00:00Z",
        "2026-03-01T15:00:00Z opened exited: order.completed (id o2) ended the instance",
    ], c2
    c3 = explain(tmp_path, evs, "c3")
    assert path_block(c3, "k3:s3")[3:] == [
        "2026-03-01T12:00:00Z opened message.opened arrived (id m3) -> tips",
        "2026-03-01T12:00:00Z tips reached",
        f"2026-03-01T12:00:00Z tips sent (email): trigger {tid('c3', 'k3:s3:tips')}",
        "2026-03-01T12:00:00Z tips ended",
    ], c3
    c4 = explain(tmp_path, evs, "c4")
    assert path_block(c4, "k4:s4")[3:] == [
        "2026-03-02T11:00:00Z opened timed out: no message.opened within 1d -> discount",
        "2026-03-02T11:00:00Z discount reached",
        "2026-03-02T11:00:00Z discount if customer.orders >= 1: false -> end",
        "2026-03-02T11:00:00Z discount ended",
    ], c4
    # a customer without a multi-step instance: no paths
    c5 = explain(tmp_path, evs + [ev("page.viewed", "c5", "2026-03-01T10:00:00Z", id="v5")], "c5")
    assert "path of" not in c5 and "step " not in c5


NUDGE = '''[policy]
quiet_start = "22:00"
quiet_end = "08:00"
default_timezone = "UTC"
max_per_window = 1000
min_gap = "0s"

[journeys.nudge]
kind = "recovery"
entry = "checkout.started"
exit = "order.completed"
steps = [ { name = "nudge", wait = "1h", send = {}, next = "nudge" } ]
'''


def test_explain_json_path_of_a_deferred_send_and_the_step_limit(tmp_path):
    from journey.core.triggers import trigger_id

    rules = tmp_path / "nudge.toml"
    rules.write_text(NUDGE)
    log = log_file(tmp_path, [checkout("c1", "2026-03-01T20:00:00Z", "k1", "s1"),
                              checkout("c2", "2026-03-01T20:00:00Z", "k2", "s2"),
                              order("c2", "2026-03-02T03:00:00Z", "o2")])
    p = cli("explain", "c1", log, "--rules", rules, "--until", "2026-03-10T00:00:00Z", "--json")
    assert p.returncode == 0, p.stderr
    rows = [r for r in orjson.loads(p.stdout) if r.get("instance") == "s1"]
    assert {r["rule"] for r in rows} == {"nudge"} and {r["step"] for r in rows} == {"nudge"}
    # 21:00 sent; 22:00 (the second visit) deferred by the quiet hours to 08:00, and sent then
    texts = [(r["time"], r["step_text"]) for r in rows]
    assert texts[:6] == [
        ("2026-03-01T20:00:00Z", "reached: waits 1h, until 2026-03-01T21:00:00Z"),
        ("2026-03-01T21:00:00Z", f"sent (email): trigger {trigger_id('c1', 'nudge', 's1:nudge')}"),
        ("2026-03-01T21:00:00Z", "reached: waits 1h, until 2026-03-01T22:00:00Z"),
        ("2026-03-01T22:00:00Z", "deferred (quiet_hours) until 2026-03-02T08:00:00Z: trigger "
                                 f"{trigger_id('c1', 'nudge', 's1:nudge#2')}"),
        ("2026-03-02T08:00:00Z", "sent (email, deferred from 2026-03-01T22:00:00Z): trigger "
                                 f"{trigger_id('c1', 'nudge', 's1:nudge#2')}"),
        ("2026-03-02T08:00:00Z", "reached: waits 1h, until 2026-03-02T09:00:00Z"),
    ], texts[:6]
    assert [r["happened"] for r in rows if r["what"] == "step"][:2] == ["reached", "reached"]
    # the 50th step's send, then the end at the limit
    assert sum(1 for r in rows if r.get("happened") == "reached") == 50
    assert rows[-1]["step_text"] == "ended: the instance took 50 steps, the most one may take: it ends"
    assert rows[-1]["what"] == "held back" and rows[-1]["reason"] == "instance_limit"
    # c2's order ends its instance while the second send waits for the quiet hours to end
    p2 = cli("explain", "c2", log, "--rules", rules, "--until", "2026-03-10T00:00:00Z", "--json")
    rows2 = [r for r in orjson.loads(p2.stdout) if r.get("instance") == "s2"]
    assert [r["step_text"].split(":")[0] for r in rows2] == ["reached", "sent (email)", "reached",
                                                               "deferred (quiet_hours) until 2026-03-02T08",
                                                               "exited"]
    assert rows2[-1]["time"] == "2026-03-02T03:00:00Z"
    assert rows2[-1]["step_text"] == "exited: order.completed (id o2) ended the instance"


# -- journey backtest ---------------------------------------------------------------------------

def test_backtest_compares_a_multi_step_journey_per_step(tmp_path):
    """The proposed file waits 3h before the reminder instead of 1h."""
    log = log_file(tmp_path, [
        # c1 orders at 12:00: with 1h the reminder went out at 11:00; with 3h the order ends the instance first
        checkout("c1", "2026-03-01T10:00:00Z", "k1", "s1"),
        order("c1", "2026-03-01T12:00:00Z", "o1", checkout_id="k1"),
        # c2 (an order before) opens at 12:00: with 1h, after the reminder: tips; with 3h, before it: the
        # open does not count, the wait for it times out, the discount goes out instead
        order("c2", "2026-02-01T10:00:00Z", "o2"),
        checkout("c2", "2026-03-01T10:00:00Z", "k2", "s2"),
        ev("message.opened", "c2", "2026-03-01T12:00:00Z", id="m2"),
    ])
    base, new = rules_file(tmp_path, "1h", "base.toml"), rules_file(tmp_path, "3h", "new.toml")
    summary = tmp_path / "summary.json"
    p = cli("backtest", log, "--rules", new, "--baseline", base, "--until", "2026-03-05T00:00:00Z",
            "--workers", "1", "--summary-json", summary)
    assert p.returncode == 0, p.stderr
    want = {"reminder": {"baseline": 2, "new": 1, "added": 0, "removed": 1},
            "tips": {"baseline": 1, "new": 0, "added": 0, "removed": 1},
            "discount": {"baseline": 0, "new": 1, "added": 1, "removed": 0}}
    s = orjson.loads(summary.read_bytes())
    assert s["steps"] == {"cart_rescue": want}
    assert list(s["steps"]["cart_rescue"]) == ["reminder", "tips", "discount"]  # in the order written
    assert s["rules"]["cart_rescue"] == {"baseline": 3, "new": 2, "added": 1, "removed": 2}
    assert "added" not in s and "removed" not in s  # the triggers themselves: --diff
    # the text report: the steps under their journey, below the rules
    text = p.stdout.split("\n\n")
    (section,) = [x for x in text if x.startswith("by step")]
    assert section.splitlines()[1:] == [
        "cart_rescue",
        f"{'  reminder':<22}{2:>10}{1:>10}{'+0':>10}{'-1':>10}",
        f"{'  tips':<22}{1:>10}{0:>10}{'+0':>10}{'-1':>10}",
        f"{'  discount':<22}{0:>10}{1:>10}{'+1':>10}{'-0':>10}",
    ], p.stdout
    # the same comparison from the worker processes
    p3 = cli("backtest", log, "--rules", new, "--baseline", base, "--until", "2026-03-05T00:00:00Z",
             "--workers", "2", "--summary-json", tmp_path / "s3.json")
    assert p3.returncode == 0, p3.stderr
    assert orjson.loads((tmp_path / "s3.json").read_bytes())["steps"] == s["steps"]


def test_backtest_without_multi_step_journeys_has_no_step_section(tmp_path):
    log = log_file(tmp_path, [checkout("c1", "2026-03-01T10:00:00Z", "k1", "s1")])
    f = tmp_path / "plain.toml"
    f.write_text(POLICY)
    p = cli("backtest", log, "--rules", f, "--until", "2026-03-05T00:00:00Z", "--workers", "1",
            "--summary-json", tmp_path / "s.json")
    assert p.returncode == 0, p.stderr
    assert "by step" not in p.stdout and orjson.loads((tmp_path / "s.json").read_bytes())["steps"] == {}


# -- journey rules show -------------------------------------------------------------------------

VIEWS = '''
[journeys.views]
kind = "recovery"
entry = "product.viewed"
count = 2
within = "2d"
channel = "sms"
offer = { type = "browse", product = "{entry.props.product_id}" }
reason = "viewed twice"
steps = [
  { name = "look", wait_for = ["product.viewed", "cart.product_added"], within = "6h", where = "event.props.price > 10.0" },
  { name = "nudge", wait = "30m", send = { channel = "push" } },
]
'''


def test_rules_show_lists_the_entry_then_the_steps_in_order_with_their_settings(tmp_path):
    f = rules_file(tmp_path)
    f.write_text(f.read_text() + VIEWS)
    p = cli("rules", "show", f)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert [x for x in lines if x.startswith("journeys.cart_rescue")] == [
        "journeys.cart_rescue  (multi-step, 4 steps)",
        # the entry (and the journey's defaults for its sends)
        "journeys.cart_rescue.kind = 'recovery'",
        "journeys.cart_rescue.transactional = False",
        "journeys.cart_rescue.entry = ['checkout.started']",
        "journeys.cart_rescue.key = 'checkout_id'",
        "journeys.cart_rescue.exit = ['order.completed']",
        "journeys.cart_rescue.reenter = 7d",
        "journeys.cart_rescue.channel = 'email'",
        "journeys.cart_rescue.priority = 'normal'",
        # the steps, in the order written; next, else and timeout named (end when they end the instance)
        "journeys.cart_rescue.steps[0].name = 'reminder'",
        "journeys.cart_rescue.steps[0].wait = 1h",
        "journeys.cart_rescue.steps[0].send.channel = 'email'",
        "journeys.cart_rescue.steps[0].send.priority = 'normal'",
        "journeys.cart_rescue.steps[0].send.offer = {'type': 'reminder'}",
        "journeys.cart_rescue.steps[0].send.reason = '{event.type} at {event.time}, step reminder'",
        "journeys.cart_rescue.steps[0].next = 'opened'",
        "journeys.cart_rescue.steps[1].name = 'opened'",
        "journeys.cart_rescue.steps[1].wait_for = ['message.opened']",
        "journeys.cart_rescue.steps[1].within = 1d",
        "journeys.cart_rescue.steps[1].timeout = 'discount'",
        "journeys.cart_rescue.steps[1].next = 'tips'",
        "journeys.cart_rescue.steps[2].name = 'tips'",
        "journeys.cart_rescue.steps[2].send.channel = 'email'",
        "journeys.cart_rescue.steps[2].send.priority = 'normal'",
        "journeys.cart_rescue.steps[2].send.offer = {'type': 'tips'}",
        "journeys.cart_rescue.steps[2].send.reason = '{event.type} at {event.time}, step tips'",
        "journeys.cart_rescue.steps[2].next = 'end'",
        "journeys.cart_rescue.steps[3].name = 'discount'",
        "journeys.cart_rescue.steps[3].if = 'customer.orders >= 1'",
        "journeys.cart_rescue.steps[3].else = 'end'",
        "journeys.cart_rescue.steps[3].send.channel = 'email'",
        "journeys.cart_rescue.steps[3].send.priority = 'high'",
        "journeys.cart_rescue.steps[3].send.offer = {'type': 'discount', 'pct': 10}",
        "journeys.cart_rescue.steps[3].send.reason = '{event.type} at {event.time}, step discount'",
        "journeys.cart_rescue.steps[3].next = 'end'",
    ], p.stdout
    views = [x for x in lines if x.startswith("journeys.views")]
    assert views[0] == "journeys.views  (multi-step, 2 steps, entry by count)"
    assert "journeys.views.count = 2" in views and "journeys.views.within = 2d" in views
    assert views[views.index("journeys.views.steps[0].name = 'look'"):] == [
        "journeys.views.steps[0].name = 'look'",
        "journeys.views.steps[0].wait_for = ['cart.product_added', 'product.viewed']",
        "journeys.views.steps[0].within = 6h",
        "journeys.views.steps[0].where = 'event.props.price > 10.0'",
        "journeys.views.steps[0].timeout = 'end'",
        "journeys.views.steps[0].next = 'nudge'",
        "journeys.views.steps[1].name = 'nudge'",
        "journeys.views.steps[1].wait = 30m",
        # the step's own channel; the journey's priority, offer and reason
        "journeys.views.steps[1].send.channel = 'push'",
        "journeys.views.steps[1].send.priority = 'normal'",
        "journeys.views.steps[1].send.offer = {'type': 'browse', 'product': '{entry.props.product_id}'}",
        "journeys.views.steps[1].send.reason = 'viewed twice'",
        "journeys.views.steps[1].next = 'end'",
    ], p.stdout
    assert not any(".steps = " in x for x in lines)  # not the raw list


def test_explain_says_when_an_event_could_not_be_applied(tmp_path, monkeypatch):
    """An event whose application fails is dead-lettered by replay; explain shows a row for it rather than
    leaving it out of the timeline."""
    import orjson
    from conftest import ev

    from journey.core.config import Config
    from journey.core.rules.cart_abandoned import CartAbandoned
    from journey.history.explain import explain

    def boom(*_a, **_k):
        raise RuntimeError("a rule failed")
    monkeypatch.setattr(CartAbandoned, "on_event", boom)
    log = tmp_path / "f.jsonl"
    log.write_bytes(orjson.dumps(ev("checkout.started", "c1", "2026-03-01T10:00:00Z", id="k1", checkout_id="x")) + b"\n")
    rows = explain("c1", [str(log)], Config(), None)
    failed = [r for r in rows if r["what"] == "failed"]
    assert len(failed) == 1 and failed[0]["id"] == "k1" and failed[0]["error"] == "RuntimeError", rows
