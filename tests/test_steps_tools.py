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
    times = [x.split()[0] for x in out.splitlines()]
    assert "2026-03-01T11:00:00.001Z" in times
    assert times.index("2026-03-01T11:00:00Z") < times.index("2026-03-01T11:00:00.001Z"), out
