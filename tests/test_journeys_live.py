"""Journeys live = replay: a generated log (which exercises every example journey)
produced with ``journey produce --until T`` gives, through the real worker with the
example journeys on, the same trigger ids as ``journey replay --until T``."""

from __future__ import annotations

import orjson
from conftest import T
from live_support import Worker, assert_trigger_ids, produce_log
from test_journeys import EXAMPLE
from test_live import UNTIL, synthetic

from journey.history.replay import replay
from journey.io.rulefile import load_config


def test_journeys_live_equal_replay(broker, tmp_path):
    log = synthetic(tmp_path, customers=400, events=9000, seed=11)
    out = tmp_path / "r.jsonl"
    replay([log], str(out), until=T(UNTIL), config=load_config(EXAMPLE))
    want = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    rules = {t["data"]["rule"] for t in want}
    assert {"browse_abandoned", "review_thanks"} <= rules, rules   # journeys are in the comparison
    w = Worker(broker, tmp_path, rules=str(EXAMPLE))
    try:
        w.wait_ready()
        produce_log(broker, log, until=T(UNTIL))
        assert_trigger_ids(broker, {t["id"] for t in want})
    finally:
        assert w.stop() == 0, w.log.read_text()[-3000:]
