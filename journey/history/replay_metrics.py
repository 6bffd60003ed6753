"""The replay summary as a Prometheus text file (``journey replay --metrics-file``).

A backfill or backtest is a batch job, so its figures are gauges of the last
run (``journey_replay_*``, labelled with the run's name), written atomically
for node-exporter's textfile collector or any scrape of the file. The Grafana
dashboard's "Last replay or backfill" row shows them beside the live numbers.
Labels are bounded sets (rule, kind, reason, event type, a multi-step journey's name and
step names); never a customer id.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from ..core import catalog
from ..core.engine import INSTANCE_OUTCOMES, STEP_OUTCOMES


def write_replay_metrics(path: str, summary: dict, rule_kinds: dict[str, str], run: str = "replay",
                         finished: float | None = None, journey_steps: dict[str, list[str]] | None = None) -> None:
    """``journey_steps``: multi-step journey -> its step names (``Engine.journey_steps``), exported
    from 0 so that a step no instance reached shows in the funnel."""
    reg = CollectorRegistry()

    def gauge(name, doc, labels=()):
        return Gauge(name, doc, ["run", *labels], registry=reg)

    gauge("journey_replay_lines", "Input lines read by the last replay").labels(run).set(summary["lines"])
    gauge("journey_replay_valid_events", "Valid events read by the last replay").labels(run).set(summary["valid"])
    rejected = gauge("journey_replay_rejected", "Lines the last replay rejected (dead letters), by reason",
                     ["reason"])
    for reason, n in summary["rejected_by_reason"].items():
        rejected.labels(run, reason).set(n)
    gauge("journey_replay_duplicates", "Redelivered events the last replay recognized").labels(run).set(
        summary["duplicates"])
    gauge("journey_replay_events_erased", "Events of erased ids the last replay dropped (not dead-lettered)"
          ).labels(run).set(summary.get("after_erasure", 0))
    gauge("journey_replay_erasures", "Customers the last replay erased (customer.erased)").labels(run).set(
        summary.get("erasures", 0))
    events = gauge("journey_replay_events_applied", "Events the last replay applied, by type and touch point",
                   ["type", "touch"])
    for etype, n in summary["events_by_type"].items():
        events.labels(run, etype, catalog.touch_of(etype)).set(n)
    trig = gauge("journey_replay_triggers", "Triggers the last replay produced, by rule and kind", ["rule", "kind"])
    for rule, n in summary["triggers_by_rule"].items():
        trig.labels(run, rule, rule_kinds.get(rule, "unknown")).set(n)
    sup = gauge("journey_replay_suppressions", "Triggers the contact policy suppressed in the last replay, by reason",
                ["reason"])
    for reason, n in summary["suppressed_by_reason"].items():
        sup.labels(run, reason).set(n)
    dfr = gauge("journey_replay_deferrals", "Triggers deferred (quiet hours) in the last replay, by rule", ["rule"])
    for rule, n in summary["deferred_by_rule"].items():
        dfr.labels(run, rule).set(n)
    journey_steps = journey_steps or {}
    inst = gauge("journey_replay_journey_instances",
                 "Instances of multi-step journeys in the last replay, by journey and outcome (entered, finished, "
                 "exited, step_limit, dropped)", ["journey", "outcome"])
    counts = {(j, what): 0 for j in journey_steps for what in INSTANCE_OUTCOMES}
    for j, by in summary.get("instances", {}).items():
        for what, n in by.items():
            counts[(j, what)] = n
    for (j, what), n in sorted(counts.items()):
        inst.labels(run, j, what).set(n)
    steps = gauge("journey_replay_journey_steps",
                  "Steps of multi-step journeys in the last replay, by journey, step and outcome (reached, exited)",
                  ["journey", "step", "outcome"])
    counts = {(j, step, what): 0 for j, names in journey_steps.items() for step in names for what in STEP_OUTCOMES}
    for j, by_step in summary.get("steps", {}).items():
        for step, by in by_step.items():
            for what, n in by.items():
                counts[(j, step, what)] = n
    for (j, step, what), n in sorted(counts.items()):
        steps.labels(run, j, step, what).set(n)
    gauge("journey_replay_customers", "Customers in state at the end of the last replay").labels(run).set(
        summary["customers"])
    if summary.get("watermark") is not None:
        gauge("journey_replay_watermark_seconds", "Event-time watermark the last replay reached (Unix seconds)"
              ).labels(run).set(summary["watermark"] / 1000.0)
    gauge("journey_replay_duration_seconds", "Wall-clock duration of the last replay").labels(run).set(
        summary["seconds"])
    gauge("journey_replay_events_per_second", "Lines per second of the last replay").labels(run).set(
        summary["events_per_second"])
    gauge("journey_replay_finished_timestamp_seconds", "When the last replay finished (Unix seconds)").labels(
        run).set(time.time() if finished is None else finished)
    write_to_textfile(path, reg)
