"""Engagement, send time and arbitration live = replay (domain.md section 9): a generated log whose
customers answer their messages (opens at their own hours, clicks, unsubscribes), with send_time =
"optimal" on two rules, a 5-minute arbitration window with a rank, and a daily cap, gives through the
real worker the same trigger records and customer states as replay."""

from __future__ import annotations

from live_support import UNTIL, Worker, _same_as_replay, produce_log, replayed

from journey.core.timeutil import parse_time
from journey.history.synth import write_log
from journey.io.rulefile import load_config

RULES = """
[policy]
arbitration_window = "5m"
rank = ["cart_abandoned", "first_purchase"]
max_per_day = 2

[rules.first_purchase]
send_time = "optimal"

[rules.cart_abandoned]
send_time = "optimal"
send_within = "12h"
"""


def test_engagement_send_time_and_arbitration_live_equal_replay(broker, tmp_path):
    seed = 13
    log = tmp_path / "log.jsonl"
    write_log(str(log), customers=300, events=6000, seed=seed, engagement=True)
    rules = tmp_path / "contact.toml"
    rules.write_text(RULES)
    keep: list = []
    want_t, want_a, _d = replayed(tmp_path, log, keep=keep, config=load_config(str(rules)))
    reasons = {a["reason"] for a in want_a}
    assert {"send_time", "outranked", "no_consent"} <= reasons, reasons   # all three are in the comparison
    assert any(t["data"].get("deferred_from") for t in want_t)
    assert any(st.eh for st in keep[0].states.values())
    w = Worker(broker, tmp_path, rules=str(rules))
    try:
        w.wait_ready()
        produce_log(broker, log, until=parse_time(UNTIL))
        _same_as_replay(broker, want_t, keep[0], seed, tmp_path=tmp_path)
    finally:
        assert w.stop() == 0, w.log.read_text()[-3000:]
