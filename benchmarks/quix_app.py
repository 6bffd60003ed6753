"""The peer for live_bench.py: a Quix Streams app doing a per-customer state update.

    python benchmarks/quix_app.py BOOTSTRAP STATE_DIR EXPECTED [GROUP]

Reads the three journey source topics from the start, parses each record as
JSON, and per customer (the record key) keeps an event count and the latest
event time in Quix's RocksDB state, with changelog topics, at-least-once,
committing every second (Quix coalesces state writes per checkpoint). It
prints ``PROGRESS <events> <monotonic seconds>`` about every 0.5 s and stops
once EXPECTED events were processed.
"""

from __future__ import annotations

import sys
import time

from quixstreams import Application
from quixstreams.models import TopicConfig

SOURCES = ("journey.clickstream", "journey.purchases", "journey.support")


def main() -> None:
    bootstrap, state_dir, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
    group = sys.argv[4] if len(sys.argv) > 4 else "bench-quix"
    app = Application(broker_address=bootstrap, consumer_group=group, auto_offset_reset="earliest",
                      state_dir=state_dir, commit_interval=1.0, loglevel="WARNING",
                      use_changelog_topics=True, processing_guarantee="at-least-once")
    seen = {"n": 0, "last": time.monotonic(), "printed": 0.0, "customers": set()}

    def update(value: dict, state) -> None:
        n = state.get("n", 0) + 1
        state.set("n", n)
        ts = value.get("ts") or value.get("timestamp")
        if ts is not None:
            state.set("ts", ts)
        seen["n"] += 1
        now = time.monotonic()
        if now - seen["printed"] >= 0.5:
            seen["printed"] = now
            print(f"PROGRESS {seen['n']} {now:.6f}", flush=True)
        if seen["n"] >= expected:
            print(f"PROGRESS {seen['n']} {now:.6f}", flush=True)
            app.stop()

    cfg = TopicConfig(num_partitions=6, replication_factor=1, extra_config={"retention.ms": "-1"})
    for name in SOURCES:
        topic = app.topic(name, key_deserializer="str", value_deserializer="json", config=cfg)
        app.dataframe(topic).update(update, stateful=True)
    app.run()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
