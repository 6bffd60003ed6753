"""Journeys (multi-step ones too) and experiments live = replay: a generated log (which exercises every example
journey) produced with ``journey produce --until T`` gives, through the real worker with the
example rule file on (journeys, and experiments with holdouts), the same trigger ids and the
same outcome records on journey.outcomes as ``journey replay --until T --outcomes``."""

from __future__ import annotations

import subprocess
import sys

import orjson
from conftest import T
from live_support import UNTIL, Worker, assert_trigger_ids, produce_log, read_topic, synthetic, wait_for
from test_journeys import EXAMPLE

from journey.history.replay import replay
from journey.io import topics
from journey.io.rulefile import load_config


def test_journeys_live_equal_replay(broker, tmp_path):
    log = synthetic(tmp_path, customers=400, events=9000, seed=11)
    out, oc, audit = tmp_path / "r.jsonl", tmp_path / "o.jsonl", tmp_path / "a.jsonl"
    replay([log], str(out), str(audit), until=T(UNTIL), config=load_config(EXAMPLE), outcomes=str(oc))
    want = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    rules = {t["data"]["rule"] for t in want}
    assert {"browse_abandoned", "review_thanks"} <= rules, rules   # journeys are in the comparison
    # and multi-step ones, several steps of each
    steps = {(t["data"]["rule"], t["data"].get("step")) for t in want}
    assert {("cart_rescue", "reminder"), ("cart_rescue", "discount"), ("post_purchase", "thanks"),
            ("post_purchase", "review"), ("winback_series", "miss_you"), ("winback_series", "offer")} <= steps, steps
    want_oc = sorted(oc.read_bytes().splitlines())
    arms = {(o["rule"], o["variant"]) for o in map(orjson.loads, want_oc)}
    assert {("cart_abandoned", "holdout"), ("cart_abandoned", "discount"), ("browse_abandoned", "holdout"),
            ("browse_abandoned", "treated")} <= arms, arms   # experiments are in the comparison
    assert any(orjson.loads(a)["reason"] == "holdout" for a in audit.read_bytes().splitlines())
    w = Worker(broker, tmp_path, rules=str(EXAMPLE))
    try:
        w.wait_ready()
        produce_log(broker, log, until=T(UNTIL))
        assert_trigger_ids(broker, {t["id"] for t in want})
        outcomes = lambda: sorted(v for _k, v, *_ in read_topic(broker, topics.OUTCOMES, idle_ms=300))
        wait_for(lambda: len(outcomes()) >= len(want_oc), 60, "every outcome")
        assert outcomes() == want_oc
        # the report reads the topic as it reads the file: the same rows
        cmd = [sys.executable, "-m", "journey", "experiments", "report", "--json"]
        runs = [subprocess.run(cmd + args, capture_output=True, timeout=120) for args in (["--broker", broker], [str(oc)])]
        assert all(r.returncode == 0 for r in runs), [r.stderr.decode()[-2000:] for r in runs]
        from_topic, from_file = (orjson.loads(r.stdout) for r in runs)
        assert from_topic == from_file and from_file
    finally:
        assert w.stop() == 0, w.log.read_text()[-3000:]
